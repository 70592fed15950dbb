//! Registration with the metadata cluster and periodic heartbeats, and the reports of corrupt
//! copies: the two [`Worker`]s that talk to the metadata cluster.
//!
//! [`HeartbeatWorker`]: on start the server sends `RegisterChunkServer{uuid, addr}` until it
//! succeeds (with backoff), keeps the returned id (and writes it to `server.id` for operators),
//! then sends a `Heartbeat` with its capacity, chunk count and scrub figures every interval.
//! Failures are logged and retried; a heartbeat answered `not-found` (the cluster no longer knows
//! this id) triggers a new registration at once. [`MetaClient`] follows the Raft leader.
//!
//! [`BadReplicaReporter`]: it takes the copies the store found corrupt (a bounded queue fed by
//! [`crate::store::FileStore::report_corruption_to`]) and sends `ReportBadReplica` for each,
//! retrying with backoff, so the cluster stops placing reads on them. Reports still queued at
//! shutdown are lost, which is harmless (clients that meet the missing copy report it too).
//!
//! Both stop at shutdown at their next await (the [`cairn_common::worker`] rule): every step
//! they take is idempotent (a registration, a heartbeat, a report) or atomic on its own (the
//! durable write of `server.id`).
use crate::scrub::Scrub;
use crate::store::{ChunkStore, CorruptChunk};
use cairn_common::durable;
use cairn_common::worker::{Worker, WorkerState};
use cairn_common::{ErrorKind, MetaClient};
use cairn_proto::{HeartbeatRequest, RegisterChunkServerRequest, ReportBadReplicaRequest};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Reports of corrupt copies waiting to be sent; further ones are dropped (and logged).
pub const BAD_REPLICA_QUEUE: usize = 1024;
/// Pause after a first failed attempt (registration, or one report), doubled after each further
/// failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two attempts to register, or to send one report.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Everything the heartbeat worker needs.
pub struct Heartbeat {
    pub meta: MetaClient,
    pub store: Arc<dyn ChunkStore>,
    /// Its figures go in every heartbeat.
    pub scrub: Arc<Scrub>,
    pub uuid: String,
    /// The advertised address.
    pub addr: String,
    /// The address of its HTTP port (/metrics, …), or empty.
    pub metrics_addr: String,
    pub interval: Duration,
    /// Where the assigned id is published (shared with the service's `Info`).
    pub server_id: Arc<AtomicU64>,
    /// `server.id` in the data directory.
    pub id_file: PathBuf,
}

impl Heartbeat {
    /// The worker that registers and then beats every [`Heartbeat::interval`].
    pub fn worker(self) -> HeartbeatWorker {
        HeartbeatWorker {
            hb: self,
            phase: Phase::Register {
                backoff: FIRST_BACKOFF,
            },
        }
    }

    /// One registration attempt; on success the id is published (and written to `server.id`).
    async fn register(&self) -> Result<u64, tonic::Status> {
        let req = RegisterChunkServerRequest {
            uuid: self.uuid.clone(),
            addr: self.addr.clone(),
        };
        let reply = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.register_chunk_server(req).await }
            })
            .await?;
        let id = reply.server_id;
        self.server_id.store(id, Ordering::Relaxed);
        tracing::info!(server_id = id, uuid = %self.uuid, addr = %self.addr, "registered with the metadata cluster");
        let path = self.id_file.clone();
        let written = tokio::task::spawn_blocking(move || {
            durable::write_atomically(&path, format!("{id}\n").as_bytes())
        })
        .await;
        // Informational only: the cluster maps our uuid to the id.
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not write server.id"),
            Err(e) => tracing::warn!(error = %e, "could not write server.id"),
        }
        Ok(id)
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
            scrub: Some(self.scrub.stats(stats.chunk_count)),
            metrics_addr: self.metrics_addr.clone(),
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

/// Where the heartbeat worker is.
enum Phase {
    /// Not registered: the next round registers; after a failure it waits `backoff`.
    Register { backoff: Duration },
    /// Registered as `id`: a heartbeat at every tick.
    Beat {
        id: u64,
        ticker: tokio::time::Interval,
    },
}

/// The heartbeat [`Worker`]: one round is one registration attempt or one heartbeat.
pub struct HeartbeatWorker {
    hb: Heartbeat,
    phase: Phase,
}

impl Worker for HeartbeatWorker {
    type Error = Infallible;

    fn name(&self) -> String {
        "heartbeat".into()
    }

    async fn work(&mut self) -> Result<WorkerState, Infallible> {
        let id = match &self.phase {
            Phase::Register { backoff } => {
                match self.hb.register().await {
                    Ok(id) => {
                        let mut ticker = tokio::time::interval(self.hb.interval);
                        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        // Idle: the ticker's first tick is immediate, so the first heartbeat
                        // follows at once.
                        self.phase = Phase::Beat { id, ticker };
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.message(), retry_in = ?backoff, "registration failed; retrying");
                    }
                }
                return Ok(WorkerState::Idle);
            }
            Phase::Beat { id, .. } => *id,
        };
        match self.hb.beat(id).await {
            Ok(()) => tracing::trace!(server_id = id, "heartbeat sent"),
            Err(e) if ErrorKind::from_status(&e) == ErrorKind::NotFound => {
                tracing::warn!(server_id = id, error = %e.message(), "metadata cluster does not know this server; registering again");
                self.phase = Phase::Register {
                    backoff: FIRST_BACKOFF,
                };
                return Ok(WorkerState::Busy);
            }
            Err(e) => {
                tracing::warn!(server_id = id, error = %e.message(), "heartbeat failed; will retry")
            }
        }
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        match &mut self.phase {
            Phase::Register { backoff } => {
                tokio::time::sleep(*backoff).await;
                *backoff = (*backoff * 2).min(MAX_BACKOFF);
            }
            Phase::Beat { ticker, .. } => {
                ticker.tick().await;
            }
        }
    }
}

/// Tells the metadata cluster about local copies that failed verification: a [`Worker`] whose
/// round sends the report at hand once.
pub struct BadReplicaReporter {
    pub meta: MetaClient,
    /// The id the heartbeat worker registered (0 until then; reports wait for it).
    pub server_id: Arc<AtomicU64>,
    pub reports: mpsc::Receiver<CorruptChunk>,
    /// The report being sent, and the pause before its next attempt.
    pending: Option<Pending>,
    /// Every sender is gone: no report will come any more.
    closed: bool,
}

struct Pending {
    report: CorruptChunk,
    backoff: Duration,
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
            pending: None,
            closed: false,
        };
        (r, tx)
    }

    /// Sends `p`'s report once. True when it is done with (sent, or refused for good); false
    /// when a transient failure calls for another attempt after `p.backoff`.
    async fn send(&self, p: &Pending) -> bool {
        let report = &p.report;
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
            self.meta
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.report_bad_replica(req).await }
                })
                .await
                .map(|_| ())
        };
        match sent {
            Ok(()) => {
                tracing::info!(server_id = id, chunk = %report.id, reason = %report.reason, "bad replica reported to the metadata cluster");
                true
            }
            Err(e) => match ErrorKind::from_status(&e) {
                ErrorKind::Unavailable
                | ErrorKind::Io
                | ErrorKind::Internal
                | ErrorKind::NotLeader => {
                    tracing::warn!(server_id = id, chunk = %report.id, error = %e.message(), retry_in = ?p.backoff, "bad-replica report failed; retrying");
                    false
                }
                // NotFound: the cluster does not know the chunk (e.g. it was never committed),
                // so there is no replica to drop. Anything else will not change by retrying.
                _ => {
                    tracing::warn!(server_id = id, chunk = %report.id, error = %e.message(), "bad-replica report refused; dropped");
                    true
                }
            },
        }
    }
}

impl Worker for BadReplicaReporter {
    type Error = Infallible;

    fn name(&self) -> String {
        "bad-replica reporter".into()
    }

    /// Sends the report at hand once (a report is idempotent, so a round may be dropped at any
    /// await). Done once every sender is gone.
    async fn work(&mut self) -> Result<WorkerState, Infallible> {
        if self.closed {
            return Ok(WorkerState::Done);
        }
        if let Some(p) = &self.pending {
            if self.send(p).await {
                self.pending = None;
            }
        }
        Ok(WorkerState::Idle)
    }

    /// Waits out the backoff of a report being retried, or for the next report.
    async fn wait_for_work(&mut self) {
        match &mut self.pending {
            Some(p) => {
                tokio::time::sleep(p.backoff).await;
                p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
            }
            None => match self.reports.recv().await {
                Some(report) => {
                    self.pending = Some(Pending {
                        report,
                        backoff: FIRST_BACKOFF,
                    })
                }
                None => self.closed = true,
            },
        }
    }
}
