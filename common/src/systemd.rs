//! Readiness for systemd (`Type=notify` units in `packaging/systemd/`): a process tells the
//! service manager it is ready once it serves, and that it is stopping when a shutdown starts.
//! Outside systemd (`NOTIFY_SOCKET` unset) both do nothing.

/// `READY=1`: the process serves now.
pub fn notify_ready() {
    notify(sd_notify::NotifyState::Ready, "ready");
}

/// `STOPPING=1`: a graceful shutdown has started.
pub fn notify_stopping() {
    notify(sd_notify::NotifyState::Stopping, "stopping");
}

fn notify(state: sd_notify::NotifyState<'_>, what: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, what, "could not notify systemd");
    }
}
