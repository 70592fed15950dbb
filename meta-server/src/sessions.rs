//! The session reaper: ends mount sessions that stopped renewing (the mount crashed, was killed
//! or lost the network), which releases their locks and deletes the files they kept open after
//! unlink (see `fsm::sessions`); and aborts upload sessions nobody recorded a chunk into for
//! `--upload-ttl-secs` (their chunks become garbage; see `fsm::uploads`).
//!
//! Runs on every node and acts only on a leader that has held office for at least one TTL: a
//! new leader cannot tell a dead mount from one that could not renew during the election, so it
//! first gives every live mount a full TTL to reach it. The expiry itself is a `CloseSession`
//! with `idle_before`, so a renewal committed in between wins.
use crate::command::{Command, Time};
use crate::node::MetaNode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Reaper {
    pub node: Arc<MetaNode>,
    /// Sessions not renewed for this long end.
    pub ttl: Duration,
    /// Uploads idle for this long are aborted.
    pub upload_ttl: Duration,
}

impl Reaper {
    pub async fn run(self, shutdown: CancellationToken) {
        let tick = (self.ttl.min(self.upload_ttl) / 4).max(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let Some(since) = self.node.leader_since() else {
                continue;
            };
            // Each kind of session gets one full TTL of this leader to show it is alive.
            if since.elapsed() >= self.ttl {
                if let Err(e) = self.reap().await {
                    tracing::warn!(error = %e, "session expiry failed; retrying");
                }
            }
            if since.elapsed() >= self.upload_ttl {
                if let Err(e) = self.reap_uploads().await {
                    tracing::warn!(error = %e, "upload expiry failed; retrying");
                }
            }
        }
    }

    async fn reap(&self) -> Result<(), crate::error::MetaError> {
        let now = Time::now();
        let ttl = Time::ago(self.ttl);
        for s in self.node.fsm().sessions()? {
            if s.renewed >= ttl {
                continue;
            }
            tracing::warn!(
                session = s.id,
                host = %s.host,
                mountpoint = %s.mountpoint,
                pid = s.pid,
                "mount session expired: releasing its locks and open unlinked files"
            );
            self.node
                .write(Command::CloseSession {
                    session: s.id,
                    idle_before: Some(ttl),
                    now,
                })
                .await?;
        }
        Ok(())
    }

    async fn reap_uploads(&self) -> Result<(), crate::error::MetaError> {
        let before = Time::ago(self.upload_ttl);
        for (h, slots) in self.node.fsm().uploads()? {
            if h.touched >= before {
                continue;
            }
            tracing::warn!(
                upload = h.id,
                host = %h.host,
                label = %h.label,
                chunks = slots.len(),
                "upload session expired: aborting it, its chunks become garbage"
            );
            self.node
                .write(Command::AbortUpload {
                    upload: h.id,
                    idle_before: Some(before),
                    now: Time::now(),
                })
                .await?;
        }
        Ok(())
    }
}
