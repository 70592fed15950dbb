//! Registration with the metadata cluster and periodic heartbeats.
//!
//! On start the server sends `RegisterChunkServer{uuid, addr}` until it succeeds (with
//! backoff), keeps the returned id (and writes it to `server.id` for operators), then sends a
//! `Heartbeat` with its capacity, chunk count and scrub figures every interval. Failures are logged and
//! retried; a heartbeat answered `not-found` (the cluster no longer knows this id) triggers a
//! new registration. [`MetaClient`] follows the Raft leader. The loop ends when `shutdown` is
//! cancelled; it may be interrupted at any await point, as every step is idempotent.
//!
//! [`BadReplicaReporter`] is the second worker of this module: it takes the copies the store
//! found corrupt (a bounded queue fed by [`crate::store::FileStore::report_corruption_to`]) and
//! sends `ReportBadReplica` for each, retrying with backoff, so the cluster stops placing reads
//! on them. It too stops when `shutdown` is cancelled; reports still queued then are lost,
//! which is harmless (clients that meet the missing copy report it too).
use crate::scrub::Scrub;
use crate::store::{write_file_durably, ChunkStore, CorruptChunk};
use cairn_common::{ErrorKind, MetaClient};
use cairn_proto::{HeartbeatRequest, RegisterChunkServerRequest, ReportBadReplicaRequest};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Reports of corrupt copies waiting to be sent; further ones are dropped (and logged).
pub const BAD_REPLICA_QUEUE: usize = 1024;
/// Longest pause between two attempts to send one report.
const MAX_REPORT_BACKOFF: Duration = Duration::from_secs(5);

/// Everything the heartbeat loop needs.
pub struct Heartbeat {
    pub meta: MetaClient,
    pub store: Arc<dyn ChunkStore>,
    /// Its figures go in every heartbeat.
    pub scrub: Arc<Scrub>,
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
            scrub: Some(self.scrub.stats()),
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

/// Tells the metadata cluster about local copies that failed verification.
pub struct BadReplicaReporter {
    pub meta: MetaClient,
    /// The id the heartbeat loop registered (0 until then; reports wait for it).
    pub server_id: Arc<AtomicU64>,
    pub reports: mpsc::Receiver<CorruptChunk>,
}

impl BadReplicaReporter {
    /// A reporter and the sender to give the store (queue of [`BAD_REPLICA_QUEUE`]).
    pub fn new(
        meta: MetaClient,
        server_id: Arc<AtomicU64>,
    ) -> (BadReplicaReporter, mpsc::Sender<CorruptChunk>) {
        let (tx, rx) = mpsc::channel(BAD_REPLICA_QUEUE);
        let r = BadReplicaReporter {
            meta,
            server_id,
            reports: rx,
        };
        (r, tx)
    }

    /// Sends queued reports one at a time until `shutdown` is cancelled (or every sender is
    /// gone). May be interrupted at any await point: a report is idempotent.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let report = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.reports.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
            };
            if !self.send(&report, &shutdown).await {
                return;
            }
        }
    }

    /// Sends one report, retrying transient failures with backoff. False on shutdown.
    async fn send(&self, report: &CorruptChunk, shutdown: &CancellationToken) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            let id = self.server_id.load(Ordering::Relaxed);
            let sent = if id == 0 {
                Err(cairn_common::error::status(
                    ErrorKind::Unavailable,
                    "not registered with the metadata cluster yet",
                ))
            } else {
                let req = ReportBadReplicaRequest {
                    server_id: id,
                    chunk_id: report.id.as_bytes().to_vec(),
                    reason: report.reason.clone(),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    r = self.meta.call(|mut c| {
                        let req = req.clone();
                        async move { c.report_bad_replica(req).await }
                    }) => r.map(|_| ()),
                }
            };
            match sent {
                Ok(()) => {
                    tracing::info!(server_id = id, chunk = %report.id, reason = %report.reason, "bad replica reported to the metadata cluster");
                    return true;
                }
                Err(e) => match ErrorKind::from_status(&e) {
                    ErrorKind::Unavailable
                    | ErrorKind::Io
                    | ErrorKind::Internal
                    | ErrorKind::NotLeader => {
                        tracing::warn!(server_id = id, chunk = %report.id, error = %e.message(), retry_in = ?backoff, "bad-replica report failed; retrying");
                    }
                    // NotFound: the cluster does not know the chunk (e.g. it was never committed),
                    // so there is no replica to drop. Anything else will not change by retrying.
                    _ => {
                        tracing::warn!(server_id = id, chunk = %report.id, error = %e.message(), "bad-replica report refused; dropped");
                        return true;
                    }
                },
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_REPORT_BACKOFF);
        }
    }
}
