//! Registration with the metadata cluster and periodic heartbeats.
//!
//! On start the server sends `RegisterChunkServer{uuid, addr}` until it succeeds (with
//! backoff), keeps the returned id (and writes it to `server.id` for operators), then sends a
//! `Heartbeat` with its capacity and chunk count every interval. Failures are logged and
//! retried; a heartbeat answered `not-found` (the cluster no longer knows this id) triggers a
//! new registration. [`MetaClient`] follows the Raft leader. The loop ends when `shutdown` is
//! cancelled; it may be interrupted at any await point, as every step is idempotent.
use crate::store::{write_file_durably, ChunkStore};
use cairn_common::{ErrorKind, MetaClient};
use cairn_proto::{HeartbeatRequest, RegisterChunkServerRequest};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything the heartbeat loop needs.
pub struct Heartbeat {
    pub meta: MetaClient,
    pub store: Arc<dyn ChunkStore>,
    pub uuid: String,
    /// The advertised address.
    pub addr: String,
    pub interval: Duration,
    /// Where the assigned id is published (shared with the service's `Info`).
    pub server_id: Arc<AtomicU64>,
    /// `server.id` in the data directory.
    pub id_file: PathBuf,
}

impl Heartbeat {
    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        'register: loop {
            let Some(id) = self.register(&shutdown).await else {
                return;
            };
            let mut ticker = tokio::time::interval(self.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let sent = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = self.beat(id) => r,
                };
                match sent {
                    Ok(()) => tracing::trace!(server_id = id, "heartbeat sent"),
                    Err(e) if ErrorKind::from_status(&e) == ErrorKind::NotFound => {
                        tracing::warn!(server_id = id, error = %e.message(), "metadata cluster does not know this server; registering again");
                        continue 'register;
                    }
                    Err(e) => {
                        tracing::warn!(server_id = id, error = %e.message(), "heartbeat failed; will retry")
                    }
                }
            }
        }
    }

    /// Registers until it succeeds; `None` on shutdown.
    async fn register(&self, shutdown: &CancellationToken) -> Option<u64> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let req = RegisterChunkServerRequest {
                uuid: self.uuid.clone(),
                addr: self.addr.clone(),
            };
            let r = tokio::select! {
                _ = shutdown.cancelled() => return None,
                r = self.meta.call(|mut c| {
                    let req = req.clone();
                    async move { c.register_chunk_server(req).await }
                }) => r,
            };
            match r {
                Ok(reply) => {
                    let id = reply.server_id;
                    self.server_id.store(id, Ordering::Relaxed);
                    tracing::info!(server_id = id, uuid = %self.uuid, addr = %self.addr, "registered with the metadata cluster");
                    let path = self.id_file.clone();
                    let written = tokio::task::spawn_blocking(move || {
                        write_file_durably(&path, format!("{id}\n").as_bytes())
                    })
                    .await;
                    // Informational only: the cluster maps our uuid to the id.
                    match written {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "could not write server.id"),
                        Err(e) => tracing::warn!(error = %e, "could not write server.id"),
                    }
                    return Some(id);
                }
                Err(e) => {
                    tracing::warn!(error = %e.message(), retry_in = ?backoff, "registration failed; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn beat(&self, id: u64) -> Result<(), tonic::Status> {
        let store = self.store.clone();
        let stats = tokio::task::spawn_blocking(move || store.stats())
            .await
            .map_err(|e| tonic::Status::internal(format!("stats task failed: {e}")))?
            .map_err(tonic::Status::from)?;
        let req = HeartbeatRequest {
            server_id: id,
            addr: self.addr.clone(),
            capacity_bytes: stats.capacity_bytes,
            used_bytes: stats.used_bytes,
            free_bytes: stats.free_bytes,
            chunk_count: stats.chunk_count,
        };
        self.meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.heartbeat(req).await }
            })
            .await
            .map(|_| ())
    }
}
