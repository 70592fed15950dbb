//! The session reaper: ends mount sessions that stopped renewing (the mount crashed, was killed
//! or lost the network), which releases their locks and deletes the files they kept open after
//! unlink (see `fsm::sessions`).
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
}

impl Reaper {
    pub async fn run(self, shutdown: CancellationToken) {
        let tick = (self.ttl / 4).max(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let Some(since) = self.node.leader_since() else {
                continue;
            };
            if since.elapsed() < self.ttl {
                continue;
            }
            if let Err(e) = self.reap().await {
                tracing::warn!(error = %e, "session expiry failed; retrying");
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
}
