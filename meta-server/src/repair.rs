//! The repair worker: keeps every referenced chunk at its replication factor.
//!
//! It runs on every meta node and acts only on the leader, and only once the leader has held
//! office for longer than the heartbeat timeout (it runs behind [`LeaderOnly`]): the liveness
//! table ([`Placement`](crate::placement::Placement)) lives in the leader's memory, and a new leader must hear every server's heartbeat before it may conclude
//! that a replica is gone (otherwise every election would look like a mass failure).
//!
//! Each scan pages through the whole chunk table and classifies every referenced chunk by its
//! listed replicas:
//! - *healthy* replicas are on servers that are up and not draining;
//! - fewer healthy replicas than the factor: **under-replicated** (none at all: **missing**). The
//!   chunk is copied server to server: the target (placed by the one placement rule,
//!   [`LeaderState::place_new_copies`]) fetches it from a surviving replica with `ReplicateChunk`, verifies
//!   the bytes against the chunk id and stores them durably; only then does the worker commit
//!   `AddReplica`. The most endangered chunks go first, and copies are rate-limited.
//! - more replicas on up servers than needed, or a replica on a draining server once the healthy
//!   ones suffice: **over-replicated**. The surplus copy is first unlisted (`RemoveReplica`, so
//!   no reader is sent there any more) and then deleted from its server (`DeleteChunks`).
//!   Replicas on servers that are down are left alone: if the server comes back, its copies count
//!   again and the surplus is trimmed then.
//!
//! - a listed copy marked **suspect** (reported bad by `ReportBadReplica`, which only marks): its
//!   own server is asked to verify it now (`ChunkService.VerifyChunk`). Intact: it is trusted
//!   again (`AddReplica`); corrupt (quarantined by that check) or absent: it is dropped
//!   (`DropReplica`) and the next scan re-replicates the chunk from a good copy. A chunk with a
//!   suspect copy on an up server is only verified in that scan, and judged in the next one;
//!   suspect copies never count as healthy nor serve as copy sources.
//!
//! Chunks with no references are garbage and left to GC. Failures are counted and retried on
//! the next scan; nothing here is durable state (the chunk table is the work list), so a leader
//! change or a crash only costs a rescan.
use crate::command::{AddReplica, Command, DropReplica, RemoveReplica, Time};
use crate::error::MetaError;
use crate::fsm::{ChunkRecord, ServerRecord};
use crate::leader::{LeaderOnly, LeaderState};
use crate::node::MetaNode;
use cairn_common::rate::RateLimiter;
use cairn_common::time::unix_ms;
use cairn_common::worker::{Worker, WorkerState};
use cairn_common::{ChunkClients, ChunkId};
use cairn_proto as pb;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Chunk records read per page of a scan.
const SCAN_PAGE: usize = 1024;
/// Most copies and removals planned by one scan; the rest wait for the next.
const MAX_PLANNED: usize = 50_000;

/// Settings of the repair worker.
#[derive(Clone, Debug)]
pub struct RepairConfig {
    /// Replicas per chunk.
    pub replication: usize,
    /// Pause between scans.
    pub interval: Duration,
    /// Bytes per second copied server to server (0: unlimited).
    pub rate_bytes: u64,
    /// Copies in flight at once.
    pub concurrency: usize,
}

/// Figures for `cairn status` and fsck; updated by the worker, read by the service.
#[derive(Default)]
pub struct RepairStats {
    copied: AtomicU64,
    bytes_copied: AtomicU64,
    removed: AtomicU64,
    failures: AtomicU64,
    last: Mutex<ScanSummary>,
}

/// What the last complete scan found.
#[derive(Clone, Debug, Default)]
pub struct ScanSummary {
    pub under_replicated: u64,
    pub missing: u64,
    pub over_replicated: u64,
    /// Replicas listed per server id.
    pub listed: HashMap<u64, u64>,
    pub finished_unix_ms: u64,
}

impl RepairStats {
    pub fn last_scan(&self) -> ScanSummary {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn to_proto(&self) -> pb::RepairStatus {
        let s = self.last_scan();
        pb::RepairStatus {
            under_replicated: s.under_replicated,
            missing: s.missing,
            over_replicated: s.over_replicated,
            replicas_copied: self.copied.load(Ordering::Relaxed),
            bytes_copied: self.bytes_copied.load(Ordering::Relaxed),
            replicas_removed: self.removed.load(Ordering::Relaxed),
            last_scan_unix_ms: s.finished_unix_ms,
            failures: self.failures.load(Ordering::Relaxed),
            // Filled in by the service from the state machine and the collector.
            gc_pending: 0,
            gc_collected: 0,
        }
    }
}

/// How one chunk stands against the replication factor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// `healthy` good replicas (0 = missing); copy from `sources` (up servers listing it).
    Under {
        healthy: usize,
        sources: Vec<u64>,
    },
    /// Remove these replicas (all on up servers), keeping `replication` healthy ones.
    Over {
        remove: Vec<u64>,
    },
}

/// Classifies a chunk listed on `replicas`. `up`, `draining` and `free` (bytes) describe the
/// servers.
pub fn judge(
    replicas: &[u64],
    replication: usize,
    up: impl Fn(u64) -> bool,
    draining: impl Fn(u64) -> bool,
    free: impl Fn(u64) -> u64,
) -> Verdict {
    let available: Vec<u64> = replicas.iter().copied().filter(|s| up(*s)).collect();
    let healthy: Vec<u64> = available
        .iter()
        .copied()
        .filter(|s| !draining(*s))
        .collect();
    if healthy.len() < replication {
        return Verdict::Under {
            healthy: healthy.len(),
            sources: available,
        };
    }
    // Enough healthy copies: every draining copy is surplus, and so are healthy ones past the
    // factor; those go from the fullest servers (ties: the highest id), which keeps disks even.
    let mut remove: Vec<u64> = available.iter().copied().filter(|s| draining(*s)).collect();
    let mut by_room = healthy;
    by_room.sort_by_key(|s| (std::cmp::Reverse(free(*s)), *s));
    remove.extend(by_room.into_iter().skip(replication));
    if remove.is_empty() {
        Verdict::Healthy
    } else {
        Verdict::Over { remove }
    }
}

/// One planned action.
#[derive(Clone, Debug)]
enum Task {
    Copy {
        id: ChunkId,
        rec: ChunkRecord,
        healthy: usize,
        sources: Vec<u64>,
    },
    Trim {
        id: ChunkId,
        remove: Vec<u64>,
    },
    /// Ask each of `servers` to verify its suspect copy.
    Verify {
        id: ChunkId,
        servers: Vec<u64>,
    },
}

pub struct Repairer {
    node: Arc<MetaNode>,
    leader: Arc<LeaderState>,
    cfg: RepairConfig,
    chunks: ChunkClients,
}

impl Repairer {
    /// The worker, gated to a settled leader.
    pub fn worker(
        node: Arc<MetaNode>,
        leader: Arc<LeaderState>,
        cfg: RepairConfig,
    ) -> LeaderOnly<Repairer> {
        let settle = leader.settle_time();
        let repairer = Repairer {
            node: node.clone(),
            leader,
            cfg,
            chunks: ChunkClients::new(),
        };
        LeaderOnly::new(node, settle, repairer)
    }
}

impl Worker for Repairer {
    type Error = MetaError;

    fn name(&self) -> String {
        "repair".into()
    }

    async fn work(&mut self) -> Result<WorkerState, MetaError> {
        if let Err(e) = self.scan_and_repair().await {
            self.leader.repair.failures.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        Ok(WorkerState::Idle)
    }

    /// Every `interval`, or at once when a drain asks for a scan.
    async fn wait_for_work(&mut self) {
        tokio::select! {
            _ = tokio::time::sleep(self.cfg.interval) => {}
            _ = self.leader.repair_kicked() => {}
        }
    }
}

impl Repairer {
    /// One scan of the chunk table, then the copies and removals it planned.
    pub async fn scan_and_repair(&self) -> Result<(), MetaError> {
        let fsm = self.node.fsm();
        let server_list = fsm.servers()?;
        let servers: BTreeMap<u64, &ServerRecord> = server_list.iter().map(|s| (s.id, s)).collect();
        let placement = &self.leader.placement;
        let now = Instant::now();
        let up = |id: u64| placement.is_up(id, now);
        let draining = |id: u64| servers.get(&id).is_some_and(|s| s.draining);
        let free = |id: u64| placement.get(id).map_or(0, |s| s.load.free_bytes);

        let mut summary = ScanSummary::default();
        let mut tasks = Vec::new();
        let mut after: Option<ChunkId> = None;
        loop {
            let page = fsm.chunk_page(after.as_ref(), SCAN_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            for (id, rec) in page {
                for r in &rec.replicas {
                    *summary.listed.entry(*r).or_default() += 1;
                }
                // Inline chunks live in the replicated state itself: nothing to copy.
                if rec.refs == 0 || rec.inline {
                    continue;
                }
                let suspects: Vec<u64> = rec.suspect.iter().copied().filter(|s| up(*s)).collect();
                if !suspects.is_empty() {
                    if tasks.len() < MAX_PLANNED {
                        tasks.push(Task::Verify {
                            id,
                            servers: suspects,
                        });
                    }
                    continue;
                }
                match judge(&rec.trusted(), self.cfg.replication, up, draining, free) {
                    Verdict::Healthy => {}
                    Verdict::Under { healthy, sources } => {
                        summary.under_replicated += 1;
                        if sources.is_empty() {
                            summary.missing += 1;
                            tracing::error!(chunk = %id, listed = ?rec.replicas, "no replica of a referenced chunk is reachable");
                        } else if tasks.len() < MAX_PLANNED {
                            tasks.push(Task::Copy {
                                id,
                                rec,
                                healthy,
                                sources,
                            });
                        }
                    }
                    Verdict::Over { remove } => {
                        summary.over_replicated += 1;
                        if tasks.len() < MAX_PLANNED {
                            tasks.push(Task::Trim { id, remove });
                        }
                    }
                }
            }
            // Let other tasks run between pages of a large table.
            tokio::task::yield_now().await;
        }
        summary.finished_unix_ms = unix_ms();
        *self
            .leader
            .repair
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = summary;
        if tasks.is_empty() {
            return Ok(());
        }
        // Verifications (a read may depend on them) and the fewest healthy replicas first; trims
        // last.
        tasks.sort_by_key(|t| match t {
            Task::Verify { .. } => 0,
            Task::Copy { healthy, .. } => *healthy,
            Task::Trim { .. } => usize::MAX,
        });
        tracing::info!(tasks = tasks.len(), "repair: starting");
        let addrs = self.leader.addrs(&server_list);
        let limiter = RateLimiter::new(self.cfg.rate_bytes);
        futures::stream::iter(tasks)
            .for_each_concurrent(self.cfg.concurrency.max(1), |t| {
                let (addrs, server_list, limiter) = (&addrs, &server_list, &limiter);
                async move {
                    if !self.node.is_leader() {
                        return;
                    }
                    let r = match t {
                        Task::Copy {
                            id, rec, sources, ..
                        } => {
                            self.copy(id, &rec, &sources, addrs, server_list, limiter)
                                .await
                        }
                        Task::Trim { id, remove } => self.trim(id, &remove, addrs).await,
                        Task::Verify { id, servers } => self.verify(id, &servers, addrs).await,
                    };
                    if let Err(e) = r {
                        self.leader.repair.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "repair task failed; retrying on the next scan");
                    }
                }
            })
            .await;
        Ok(())
    }

    /// Copies `id` to as many new servers as it lacks healthy replicas.
    async fn copy(
        &self,
        id: ChunkId,
        rec: &ChunkRecord,
        sources: &[u64],
        addrs: &HashMap<u64, String>,
        servers: &[ServerRecord],
        limiter: &RateLimiter,
    ) -> Result<(), String> {
        let now = Instant::now();
        let draining = |id: &u64| servers.iter().any(|s| s.id == *id && s.draining);
        let healthy = sources
            .iter()
            .filter(|s| !draining(s) && self.leader.placement.is_up(**s, now))
            .count();
        let need = self.cfg.replication.saturating_sub(healthy);
        let targets = self
            .leader
            .place_new_copies(need, &rec.replicas, servers, &[]);
        if targets.is_empty() {
            return Err(format!("chunk {id}: no server can take another replica"));
        }
        let source_addrs: Vec<String> = sources
            .iter()
            .filter_map(|s| addrs.get(s).cloned())
            .collect();
        for (target, target_addr) in targets {
            limiter.take(rec.stored_len as u64).await;
            let mut client = self
                .chunks
                .get(&target_addr)
                .map_err(|s| s.message().to_string())?;
            client
                .replicate_chunk(pb::ReplicateChunkRequest {
                    id: id.as_bytes().to_vec(),
                    sources: source_addrs.clone(),
                })
                .await
                .map_err(|s| {
                    format!(
                        "chunk {id}: copy to server {target} failed: {}",
                        s.message()
                    )
                })?;
            // DURABILITY: listed only after the target stored a verified copy durably.
            self.node
                .write(Command::AddReplica(AddReplica { id, server: target }))
                .await
                .map_err(|e| format!("chunk {id}: list replica on {target}: {e}"))?;
            self.leader.repair.copied.fetch_add(1, Ordering::Relaxed);
            self.leader
                .repair
                .bytes_copied
                .fetch_add(rec.stored_len as u64, Ordering::Relaxed);
            tracing::info!(chunk = %id, target, "repair: replica copied");
        }
        Ok(())
    }

    /// Has each of `servers` verify its suspect copy of `id`, then trusts it again or drops it.
    async fn verify(
        &self,
        id: ChunkId,
        servers: &[u64],
        addrs: &HashMap<u64, String>,
    ) -> Result<(), String> {
        use pb::verify_chunk_reply::Outcome;
        for &server in servers {
            let Some(addr) = addrs.get(&server) else {
                continue;
            };
            let mut client = self.chunks.get(addr).map_err(|s| s.message().to_string())?;
            let r = client
                .verify_chunk(pb::VerifyChunkRequest {
                    id: id.as_bytes().to_vec(),
                })
                .await
                .map_err(|s| format!("chunk {id}: verify on server {server}: {}", s.message()))?
                .into_inner();
            let outcome = Outcome::try_from(r.outcome).map_err(|_| {
                format!(
                    "chunk {id}: server {server} answered verification outcome {}",
                    r.outcome
                )
            })?;
            let cmd = match outcome {
                Outcome::Intact => {
                    tracing::info!(chunk = %id, server, "repair: suspect copy verified intact, trusted again");
                    Command::AddReplica(AddReplica { id, server })
                }
                Outcome::Absent | Outcome::Corrupt => {
                    tracing::warn!(chunk = %id, server, ?outcome, reason = %r.reason, "repair: suspect copy is bad, dropped");
                    Command::DropReplica(DropReplica {
                        id,
                        server,
                        now: Time::now(),
                    })
                }
            };
            self.node
                .write(cmd)
                .await
                .map_err(|e| format!("chunk {id}: record verification on {server}: {e}"))?;
        }
        Ok(())
    }

    /// Unlists, then deletes, surplus replicas of `id`.
    async fn trim(
        &self,
        id: ChunkId,
        remove: &[u64],
        addrs: &HashMap<u64, String>,
    ) -> Result<(), String> {
        for &server in remove {
            // Unlist first: from the moment the entry commits, no reader is sent to the copy,
            // so deleting it cannot fail a read that would not fall back to another replica.
            self.node
                .write(Command::RemoveReplica(RemoveReplica { id, server }))
                .await
                .map_err(|e| format!("chunk {id}: unlist replica on {server}: {e}"))?;
            let Some(addr) = addrs.get(&server) else {
                continue;
            };
            let mut client = self.chunks.get(addr).map_err(|s| s.message().to_string())?;
            client
                .delete_chunks(pb::DeleteChunksRequest {
                    ids: vec![id.as_bytes().to_vec()],
                    only_marked: false,
                })
                .await
                .map_err(|s| {
                    format!(
                        "chunk {id}: delete surplus copy on {server}: {}",
                        s.message()
                    )
                })?;
            self.leader.repair.removed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(chunk = %id, server, "repair: surplus replica removed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge_with(replicas: &[u64], up: &[u64], draining: &[u64]) -> Verdict {
        // Server s has s GiB free: higher ids are emptier.
        judge(
            replicas,
            3,
            |s| up.contains(&s),
            |s| draining.contains(&s),
            |s| s << 30,
        )
    }

    #[test]
    fn chunks_are_judged_by_their_healthy_replicas() {
        assert_eq!(judge_with(&[1, 2, 3], &[1, 2, 3], &[]), Verdict::Healthy);
        // One server down: two healthy copies, both usable as sources.
        assert_eq!(
            judge_with(&[1, 2, 3], &[1, 3, 4], &[]),
            Verdict::Under {
                healthy: 2,
                sources: vec![1, 3]
            }
        );
        // Nothing reachable: missing.
        assert_eq!(
            judge_with(&[1, 2], &[3, 4], &[]),
            Verdict::Under {
                healthy: 0,
                sources: vec![]
            }
        );
        // A draining copy is not healthy but still a source.
        assert_eq!(
            judge_with(&[1, 2, 3], &[1, 2, 3], &[3]),
            Verdict::Under {
                healthy: 2,
                sources: vec![1, 2, 3]
            }
        );
        // Once enough healthy copies exist, the draining one goes.
        assert_eq!(
            judge_with(&[1, 2, 3, 4], &[1, 2, 3, 4], &[3]),
            Verdict::Over { remove: vec![3] }
        );
        // A server that came back after repair: one copy is surplus, taken from the fullest
        // server.
        assert_eq!(
            judge_with(&[1, 2, 3, 4], &[1, 2, 3, 4], &[]),
            Verdict::Over { remove: vec![1] }
        );
        assert_eq!(
            judge_with(&[1, 2, 3, 4, 5], &[1, 2, 3, 4, 5], &[]),
            Verdict::Over { remove: vec![2, 1] }
        );
        // A copy on a down server is neither healthy nor removed.
        assert_eq!(judge_with(&[1, 2, 3, 4], &[1, 2, 3], &[]), Verdict::Healthy);
    }
}
