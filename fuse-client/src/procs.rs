//! What the kernel tells us about the processes behind FUSE requests.

/// The process (thread group) id of kernel task `tid`, from `/proc/<tid>/status`; `None` when
/// the task no longer exists or the file cannot be read. FUSE requests carry the id of the
/// calling *task* (thread), so two threads of one process carry different ids.
pub fn tgid(tid: u32) -> Option<u32> {
    if tid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether a task waiting in a blocking FUSE request (F_SETLKW, flock) should give up: it no
/// longer exists, or it has a signal pending that it does not block. The kernel cannot
/// interrupt such a request by itself (fuser does not handle INTERRUPT), so the lock wait polls
/// this and answers EINTR, as a local lock wait would.
pub fn interrupted(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    if status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .is_some_and(|s| s.trim_start().starts_with('Z'))
    {
        return true;
    }
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    pending & !mask("SigBlk:") & !mask("SigIgn:") != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_map_to_their_process() {
        let me = std::process::id();
        assert_eq!(tgid(me), Some(me));
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            done_rx.recv().unwrap();
        });
        let live = rx.recv().unwrap();
        assert_ne!(live, me);
        assert_eq!(
            tgid(live),
            Some(me),
            "a live thread belongs to this process"
        );
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert_eq!(tgid(0), None);
    }

    #[test]
    fn a_live_task_is_not_interrupted_and_a_gone_one_is() {
        assert!(!interrupted(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(interrupted(pid), "a reaped process counts as gone");
    }
}
