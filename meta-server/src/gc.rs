//! The garbage collector: deletes chunks no file references any more, after a grace period.
//!
//! Runs on every meta node and acts only on a leader that has held office for longer than the
//! heartbeat timeout (like repair, behind [`LeaderOnly`]). Each round takes up to [`ROUND`] chunks that have been
//! unreferenced for longer than `--gc-grace` (on the log clock, [`crate::log_clock`]) (or whose collection is under way) and:
//!
//! 1. asks every up server listing a copy to **mark** it (`MarkChunks`);
//! 2. commits `GcBegin` for them: a new GC epoch; only chunks still unreferenced are accepted;
//! 3. asks each marked server to delete the accepted chunks **if still marked**
//!    (`DeleteChunks { only_marked }`), each deletion durable before the reply;
//! 4. commits `GcSwept` per chunk for the servers that answered; a chunk with no listed copy
//!    left becomes a tombstone (`gone`).
//!
//! # Why nothing referenced is ever deleted
//!
//! A commit referencing a chunk carries the GC epoch (*ticket*) of the placement its upload
//! began with, and the state machine refuses it when the chunk's collection began in a later
//! epoch (`GcBegin`, or a tombstone in `gone`, or — for tombstones already pruned — any ticket
//! below the floor). So a commit that is accepted for a chunk under collection had its
//! placement after `GcBegin`, hence after step 1: its puts came after the marks and cleared
//! them (a put clears the mark under the same lock the marked delete takes), so step 3 spares
//! its copies, and the commit revives the chunk on exactly those copies. A commit with an older
//! ticket is refused and its data is not published. A chunk referenced again before step 2 is
//! not accepted by `GcBegin` and nothing is deleted (the marks expire). PrepareWrite never
//! answers "already stored" for an unreferenced chunk, so a writer always puts such a chunk
//! again (which also protects it from a collection under way).
//!
//! # Uploads that were never committed
//!
//! Copies that no chunk record knows (a client died between its puts and its commit) are found
//! by listing each server's inventory every `--gc-orphan-scan` (1 hour), skipping copies
//! younger than `--gc-orphan-age` (1 day: a file being written keeps its uploaded chunks
//! uncommitted until it is closed, so this must exceed the longest write). The same protocol applies: mark on that server, then `GcOrphans` gives each
//! still-unknown id a tombstone in a new epoch (so a commit of an upload placed earlier is
//! refused), then the marked copies are deleted.
//!
//! Tombstones are pruned after `--gc-ticket-horizon` (1 day); commits whose tickets are
//! older than the pruned epochs are refused (an upload left uncommitted for a day).
use crate::command::{Command, GcBegin, GcOrphans, GcPrune, GcSwept, PruneRequests, Reply, Time};
use crate::error::MetaError;
use crate::leader::{LeaderOnly, LeaderState};
use crate::node::MetaNode;
use cairn_common::worker::{Worker, WorkerState};
use cairn_common::{ChunkClients, ChunkId};
use cairn_proto as pb;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most chunks one round handles.
const ROUND: usize = 1000;
/// How long the results of mutations are kept by request id (see `Command::Once`).
pub const REQUEST_ID_TTL: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct GcConfig {
    /// How long a chunk stays unreferenced before it is collected.
    pub grace: Duration,
    /// Pause between rounds.
    pub interval: Duration,
    /// How long tombstones (and so uncommitted uploads) are kept.
    pub horizon: Duration,
    /// Pause between two scans of the chunk servers' inventories for orphans.
    pub orphan_scan: Duration,
    /// How old an unknown copy must be to count as an abandoned upload.
    pub orphan_age: Duration,
}

/// What the collector did since this node started leading.
#[derive(Default)]
pub struct GcStats {
    pub collected: AtomicU64,
    /// Copies of uploads never committed, deleted.
    pub orphans_collected: AtomicU64,
    pub failures: AtomicU64,
}

impl GcStats {
    /// Chunks and orphan copies collected, together.
    pub fn collected_total(&self) -> u64 {
        self.collected.load(Ordering::Relaxed) + self.orphans_collected.load(Ordering::Relaxed)
    }
}

pub struct Collector {
    node: Arc<MetaNode>,
    leader: Arc<LeaderState>,
    cfg: GcConfig,
    chunks: ChunkClients,
    last_prune: Option<Instant>,
    last_orphan_scan: Option<Instant>,
}

impl Collector {
    /// The worker, gated to a settled leader.
    pub fn worker(
        node: Arc<MetaNode>,
        leader: Arc<LeaderState>,
        cfg: GcConfig,
    ) -> LeaderOnly<Collector> {
        let settle = leader.settle_time();
        let collector = Collector {
            node: node.clone(),
            leader,
            cfg,
            chunks: ChunkClients::new(),
            last_prune: None,
            last_orphan_scan: None,
        };
        LeaderOnly::new(node, settle, collector)
    }

    fn stats(&self) -> &GcStats {
        &self.leader.gc
    }
}

impl Worker for Collector {
    type Error = MetaError;

    fn name(&self) -> String {
        "gc".into()
    }

    /// A round; the orphan scan when it is due (hourly); pruning of old tombstones and request
    /// ids every minute. Each step's failure is counted and logged; the others still run.
    async fn work(&mut self) -> Result<WorkerState, MetaError> {
        if let Err(e) = self.round().await {
            self.stats().failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "gc round failed; retrying on the next one");
        }
        if self
            .last_orphan_scan
            .is_none_or(|t| t.elapsed() >= self.cfg.orphan_scan)
        {
            self.last_orphan_scan = Some(Instant::now());
            if let Err(e) = self.collect_orphans().await {
                self.stats().failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "gc: orphan scan failed; retrying on the next one");
            }
        }
        if self
            .last_prune
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
        {
            self.last_prune = Some(Instant::now());
            let before = Time::ago(self.cfg.horizon);
            if let Err(e) = self.node.write(Command::GcPrune(GcPrune { before })).await {
                tracing::warn!(error = %e, "gc: pruning tombstones failed");
            }
            // Clients retry a call for 30 s at most: request ids applied more than 10 minutes
            // ago by the log clock will never be seen again.
            if let Some(before_index) = self.node.applied_before(REQUEST_ID_TTL) {
                let prune = Command::PruneRequests(PruneRequests {
                    before: Time::ago(REQUEST_ID_TTL),
                    before_index,
                });
                if let Err(e) = self.node.write(prune).await {
                    tracing::warn!(error = %e, "gc: pruning request ids failed");
                }
            }
        }
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.cfg.interval).await
    }
}

impl Collector {
    /// One round: mark, begin, delete marked, record.
    pub async fn round(&self) -> Result<(), MetaError> {
        let fsm = self.node.fsm();
        // The grace is counted on the log clock (see `crate::log_clock`): a wall-clock step on
        // this leader cannot shorten it.
        let through = self.node.applied_before(self.cfg.grace);
        let candidates = fsm.gc_candidates(through, Time::ago(self.cfg.grace), ROUND)?;
        if candidates.is_empty() {
            return Ok(());
        }
        let addrs = self.leader.addrs(&fsm.servers()?);
        let now = Instant::now();

        // 1. Mark on every up server listing a copy.
        let mut per_server: BTreeMap<u64, Vec<ChunkId>> = BTreeMap::new();
        for (id, rec) in &candidates {
            for s in &rec.replicas {
                if self.leader.placement.is_up(*s, now) {
                    per_server.entry(*s).or_default().push(*id);
                }
            }
        }
        let mut marked: BTreeMap<u64, Vec<ChunkId>> = BTreeMap::new();
        for (server, ids) in per_server {
            let Some(addr) = addrs.get(&server) else {
                continue;
            };
            let req = pb::MarkChunksRequest {
                ids: ids.iter().map(|i| i.as_bytes().to_vec()).collect(),
            };
            match self.client(addr)?.mark_chunks(req).await {
                Ok(_) => {
                    marked.insert(server, ids);
                }
                Err(e) => {
                    tracing::warn!(server, error = %e.message(), "gc: mark failed; server skipped this round")
                }
            }
        }

        // 2. Begin: a new epoch; only still-unreferenced chunks are accepted.
        let ids: Vec<ChunkId> = candidates.iter().map(|(id, _)| *id).collect();
        let (epoch, accepted) = match self
            .node
            .write(Command::GcBegin(GcBegin {
                ids,
                now: Time::now(),
            }))
            .await?
        {
            Reply::GcBegun { epoch, ids } => (epoch, ids),
            other => return Err(MetaError::Storage(format!("GcBegin answered {other:?}"))),
        };
        let accepted: std::collections::HashSet<ChunkId> = accepted.into_iter().collect();

        // 3. Delete what is still marked.
        let mut swept: BTreeMap<ChunkId, Vec<u64>> = BTreeMap::new();
        for (server, ids) in marked {
            let ids: Vec<ChunkId> = ids.into_iter().filter(|i| accepted.contains(i)).collect();
            if ids.is_empty() {
                continue;
            }
            let Some(addr) = addrs.get(&server) else {
                continue;
            };
            let req = pb::DeleteChunksRequest {
                ids: ids.iter().map(|i| i.as_bytes().to_vec()).collect(),
                only_marked: true,
            };
            match self.client(addr)?.delete_chunks(req).await {
                Ok(_) => {
                    for id in ids {
                        swept.entry(id).or_default().push(server);
                    }
                }
                Err(e) => {
                    tracing::warn!(server, error = %e.message(), "gc: delete failed; retried next round")
                }
            }
        }

        // 4. Record the deletions.
        for (id, servers) in swept {
            self.node
                .write(Command::GcSwept(GcSwept {
                    id,
                    servers,
                    now: Time::now(),
                }))
                .await?;
            if self.node.fsm().gone(&id)?.is_some() {
                self.stats().collected.fetch_add(1, Ordering::Relaxed);
            }
        }
        tracing::info!(epoch, chunks = accepted.len(), "gc: round done");
        Ok(())
    }

    /// Collects copies no chunk record knows (uploads never committed) that are older than the
    /// grace, server by server: list the inventory, mark, `GcOrphans` (tombstones in a new
    /// epoch, refusing commits of older uploads), delete what is still marked.
    pub async fn collect_orphans(&self) -> Result<(), MetaError> {
        let now = Instant::now();
        let placement = &self.leader.placement;
        let servers: Vec<(u64, String)> = self
            .node
            .fsm()
            .servers()?
            .into_iter()
            .filter(|s| placement.is_up(s.id, now))
            .map(|s| (s.id, placement.current_addr(s.id, &s.addr)))
            .collect();
        for (server, addr) in servers {
            let mut after = Vec::new();
            loop {
                let page = self
                    .client(&addr)?
                    .list_chunks(pb::ListChunksRequest {
                        after: after.clone(),
                        limit: ROUND as u32,
                        min_age_secs: self.cfg.orphan_age.as_secs(),
                    })
                    .await
                    .map_err(|s| {
                        MetaError::Storage(format!("inventory of server {server}: {}", s.message()))
                    })?
                    .into_inner();
                if let Some(last) = page.ids.last() {
                    after = last.clone();
                }
                let mut orphans = Vec::new();
                for raw in &page.ids {
                    let Ok(id) = ChunkId::from_bytes(raw) else {
                        continue;
                    };
                    if self.node.fsm().chunk(&id)?.is_none() {
                        orphans.push(id);
                    }
                }
                if !orphans.is_empty() {
                    self.collect_orphans_on(server, &addr, orphans).await?;
                }
                if page.done || page.ids.is_empty() {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn collect_orphans_on(
        &self,
        server: u64,
        addr: &str,
        ids: Vec<ChunkId>,
    ) -> Result<(), MetaError> {
        let raw = |ids: &[ChunkId]| ids.iter().map(|i| i.as_bytes().to_vec()).collect();
        self.client(addr)?
            .mark_chunks(pb::MarkChunksRequest { ids: raw(&ids) })
            .await
            .map_err(|s| MetaError::Storage(format!("mark on server {server}: {}", s.message())))?;
        let accepted = match self
            .node
            .write(Command::GcOrphans(GcOrphans {
                ids,
                now: Time::now(),
            }))
            .await?
        {
            Reply::GcBegun { ids, .. } => ids,
            other => return Err(MetaError::Storage(format!("GcOrphans answered {other:?}"))),
        };
        if accepted.is_empty() {
            return Ok(());
        }
        let r = self
            .client(addr)?
            .delete_chunks(pb::DeleteChunksRequest {
                ids: raw(&accepted),
                only_marked: true,
            })
            .await
            .map_err(|s| MetaError::Storage(format!("delete on server {server}: {}", s.message())))?
            .into_inner();
        self.stats()
            .orphans_collected
            .fetch_add(r.deleted, Ordering::Relaxed);
        tracing::info!(
            server,
            orphans = r.deleted,
            "gc: uncommitted uploads collected"
        );
        Ok(())
    }

    fn client(
        &self,
        addr: &str,
    ) -> Result<pb::chunk_service_client::ChunkServiceClient<tonic::transport::Channel>, MetaError>
    {
        self.chunks
            .get(addr)
            .map_err(|s| MetaError::Storage(format!("chunk server {addr}: {}", s.message())))
    }
}
