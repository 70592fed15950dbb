//! The reapers: end mount sessions that stopped renewing (the mount crashed, was killed or lost
//! the network), which releases their locks and deletes the files they kept open after unlink
//! (see `fsm::sessions`); and abort upload sessions nobody recorded a chunk into for
//! `--upload-ttl` (their chunks become garbage; see `fsm::uploads`).
//!
//! They run on every node and act only on a leader that has held office for at least one TTL
//! (each behind [`LeaderOnly`] with its own TTL as the settle time): a new leader cannot tell a
//! dead mount from one that could not renew during the election, so it first gives every live
//! mount a full TTL to reach it.
//!
//! Idleness is measured on the log clock ([`crate::log_clock`]), never by comparing wall
//! times: a session or upload is idle for a TTL when the entry that last renewed (touched) it
//! is at or below the index this node had applied a TTL ago by its own monotonic clock. A
//! clock step on the leader, or clocks that differ between meta nodes, cannot expire a live
//! mount nor keep a dead one. The expiry itself is a `CloseSession` / `AbortUpload` with
//! `idle_through` that index, so a renewal (or a recorded chunk) committed in between wins.
use crate::command::{AbortUpload, CloseSession, Command, Time};
use crate::error::MetaError;
use crate::leader::LeaderOnly;
use crate::node::MetaNode;
use cairn_common::worker::{Worker, WorkerState};
use std::sync::Arc;
use std::time::Duration;

/// Uploads read per page by the upload reaper.
const REAP_PAGE: usize = 256;

/// Ends mount sessions not renewed for `ttl`.
pub struct SessionReaper {
    node: Arc<MetaNode>,
    ttl: Duration,
    tick: Duration,
}

/// Aborts upload sessions idle for `ttl`.
pub struct UploadReaper {
    node: Arc<MetaNode>,
    ttl: Duration,
    tick: Duration,
}

/// How often the reapers look: a quarter of the shorter TTL (at least every 250 ms).
fn tick(session_ttl: Duration, upload_ttl: Duration) -> Duration {
    (session_ttl.min(upload_ttl) / 4).max(Duration::from_millis(250))
}

/// Both reapers, gated to a leader that has held office for one of their TTLs.
pub fn workers(
    node: &Arc<MetaNode>,
    session_ttl: Duration,
    upload_ttl: Duration,
) -> (LeaderOnly<SessionReaper>, LeaderOnly<UploadReaper>) {
    let tick = tick(session_ttl, upload_ttl);
    let sessions = SessionReaper {
        node: node.clone(),
        ttl: session_ttl,
        tick,
    };
    let uploads = UploadReaper {
        node: node.clone(),
        ttl: upload_ttl,
        tick,
    };
    (
        LeaderOnly::new(node.clone(), session_ttl, sessions),
        LeaderOnly::new(node.clone(), upload_ttl, uploads),
    )
}

impl Worker for SessionReaper {
    type Error = MetaError;

    fn name(&self) -> String {
        "session reaper".into()
    }

    async fn work(&mut self) -> Result<WorkerState, MetaError> {
        let Some(idle_through) = self.node.applied_before(self.ttl) else {
            // This node has not run for a TTL yet: it cannot tell an idle session.
            return Ok(WorkerState::Idle);
        };
        for s in self.node.fsm().sessions()? {
            if s.renewed_index > idle_through {
                continue;
            }
            tracing::warn!(
                session = s.id,
                host = %s.host,
                mountpoint = %s.mountpoint,
                pid = s.pid,
                last_renewed = ?s.renewed,
                "mount session expired: releasing its locks and open unlinked files"
            );
            self.node
                .write(Command::CloseSession(CloseSession {
                    session: s.id,
                    idle_through: Some(idle_through),
                    now: Time::now(),
                }))
                .await?;
        }
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.tick).await
    }
}

impl Worker for UploadReaper {
    type Error = MetaError;

    fn name(&self) -> String {
        "upload reaper".into()
    }

    async fn work(&mut self) -> Result<WorkerState, MetaError> {
        let Some(idle_through) = self.node.applied_before(self.ttl) else {
            // This node has not run for a TTL yet: it cannot tell an idle upload.
            return Ok(WorkerState::Idle);
        };
        // Page by page, each read off the runtime threads: there may be many uploads.
        let mut after = 0;
        loop {
            let node = self.node.clone();
            let (page, done) =
                tokio::task::spawn_blocking(move || node.fsm().upload_page(after, REAP_PAGE))
                    .await
                    .map_err(|e| MetaError::Storage(format!("upload scan task: {e}")))??;
            for u in &page {
                let (h, slots) = (&u.header, u.slots);
                after = h.id;
                if h.touched_index > idle_through {
                    continue;
                }
                tracing::warn!(
                    upload = h.id,
                    host = %h.host,
                    label = %h.label,
                    chunks = slots,
                    "upload session expired: aborting it, its chunks become garbage"
                );
                self.node
                    .write(Command::AbortUpload(AbortUpload {
                        upload: h.id,
                        idle_through: Some(idle_through),
                        now: Time::now(),
                    }))
                    .await?;
            }
            if done || page.is_empty() {
                return Ok(WorkerState::Idle);
            }
        }
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.tick).await
    }
}
