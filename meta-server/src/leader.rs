//! Leader-only state: what the meta leader keeps in memory and nothing replicates, owned in one
//! place and shared by the service and the workers.
//!
//! - the chunk-server liveness table and replica placement ([`Placement`], fed by heartbeats);
//! - each server's last scrub figures (from heartbeats, shown by `cairn status`);
//! - the repair worker's and the garbage collector's figures;
//! - the repair kick (a drain request asks for a scan at once).
//!
//! Nothing here is durable: after an election the new leader starts empty and every server
//! looks down until its next heartbeat (1 s). That is why placement waits out a warm-up
//! ([`LeaderState::warming_up`]) and why leader-only workers run behind a gate
//! ([`LeaderOnly`]) that opens once the leader has held office long enough to have heard from
//! every live server.
//!
//! [`LeaderState::place_new_copies`] is THE rule for where a new copy of a chunk may go; both a
//! client's `PrepareWrite` and the repair worker use it.
use crate::error::MetaError;
use crate::fsm::ServerRecord;
use crate::gc::GcStats;
use crate::node::MetaNode;
use crate::placement::Placement;
use crate::repair::RepairStats;
use cairn_common::worker::{Worker, WorkerState};
use cairn_proto as pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a new leader waits to hear from every chunk server (they heartbeat every second)
/// before it places chunks on fewer servers than the replication factor.
const WARM_UP: Duration = Duration::from_millis(2500);

pub struct LeaderState {
    node: Arc<MetaNode>,
    heartbeat_timeout: Duration,
    /// Chunk-server liveness and load, from heartbeats.
    pub placement: Placement,
    /// The scrub figures of each server's last heartbeat.
    scrub: Mutex<HashMap<u64, pb::ScrubStats>>,
    /// The HTTP (metrics) address each server's last heartbeat named.
    metrics_addrs: Mutex<HashMap<u64, String>>,
    /// The repair worker's figures.
    pub repair: RepairStats,
    /// The garbage collector's figures.
    pub gc: GcStats,
    repair_kick: Notify,
}

impl LeaderState {
    /// `heartbeat_timeout`: a chunk server silent for this long is down.
    pub fn new(node: Arc<MetaNode>, heartbeat_timeout: Duration) -> Arc<LeaderState> {
        Arc::new(LeaderState {
            node,
            heartbeat_timeout,
            placement: Placement::new(heartbeat_timeout),
            scrub: Mutex::default(),
            metrics_addrs: Mutex::default(),
            repair: RepairStats::default(),
            gc: GcStats::default(),
            repair_kick: Notify::new(),
        })
    }

    /// How long a leader must have held office before leader-only workers trust its liveness
    /// table: one heartbeat timeout, and a margin.
    pub fn settle_time(&self) -> Duration {
        self.heartbeat_timeout + Duration::from_secs(1)
    }

    /// Records the scrub figures of server `id`'s latest heartbeat.
    pub fn note_scrub(&self, id: u64, stats: pb::ScrubStats) {
        self.scrub
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, stats);
    }

    /// Records the HTTP (metrics) address server `id` named in its latest heartbeat.
    pub fn note_metrics_addr(&self, id: u64, addr: String) {
        let mut m = self.metrics_addrs.lock().unwrap_or_else(|e| e.into_inner());
        if addr.is_empty() {
            m.remove(&id);
        } else {
            m.insert(id, addr);
        }
    }

    /// The HTTP (metrics) address of server `id`, if it named one.
    pub fn metrics_addr(&self, id: u64) -> String {
        let m = self.metrics_addrs.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&id).cloned().unwrap_or_default()
    }

    /// The latest scrub figures of every server that sent some.
    pub fn scrub_figures(&self) -> HashMap<u64, pb::ScrubStats> {
        self.scrub.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks the repair worker for a scan now.
    pub fn kick_repair(&self) {
        self.repair_kick.notify_one();
    }

    /// Resolves when a scan was asked for (a permit is kept if nobody waits yet).
    pub async fn repair_kicked(&self) {
        self.repair_kick.notified().await
    }

    /// True while this leader may not yet have heard from every chunk server: the liveness
    /// table lives in the leader's memory, so after an election every server looks down until
    /// its next heartbeat (1 s) reaches the new leader. During that window a placement on too
    /// few servers for a commit would fail the write, so callers are told to retry instead.
    pub fn warming_up(&self, now: Instant) -> Result<bool, MetaError> {
        let Some(since) = self.node.leader_since() else {
            return Ok(false);
        };
        // Live servers heartbeat every second: after WARM_UP every one of them has been heard.
        if now.saturating_duration_since(since) >= WARM_UP.min(self.heartbeat_timeout) {
            return Ok(false);
        }
        let registered = self.node.fsm().servers()?.len();
        Ok(self.placement.up_servers(now).len() < registered)
    }

    /// The current address of each of `servers` (the last heartbeat's, else the registered
    /// one), by id.
    pub fn addrs(&self, servers: &[ServerRecord]) -> HashMap<u64, String> {
        servers
            .iter()
            .map(|s| (s.id, self.placement.current_addr(s.id, &s.addr)))
            .collect()
    }

    /// Where `need` new copies of a chunk go: up servers with room, drawn by free space —
    /// never a server that already holds the chunk (`holders`) nor a draining one (it is being
    /// emptied); servers in `avoid` (ones that failed this client recently) only when no other
    /// will do. Returns (id, address); fewer than `need` when not enough servers qualify.
    pub fn place_new_copies(
        &self,
        need: usize,
        holders: &[u64],
        servers: &[ServerRecord],
        avoid: &[u64],
    ) -> Vec<(u64, String)> {
        let mut forbid: Vec<u64> = holders.to_vec();
        forbid.extend(servers.iter().filter(|s| s.draining).map(|s| s.id));
        self.placement.place_forbidding(need, avoid, &forbid)
    }
}

/// A worker that acts only on a leader that has held office for `settle` (its liveness table
/// is trustworthy by then); on a follower, or a leader too new, each round is idle.
pub struct LeaderOnly<W> {
    node: Arc<MetaNode>,
    settle: Duration,
    inner: W,
}

impl<W> LeaderOnly<W> {
    pub fn new(node: Arc<MetaNode>, settle: Duration, inner: W) -> LeaderOnly<W> {
        LeaderOnly {
            node,
            settle,
            inner,
        }
    }
}

impl<W: Worker> Worker for LeaderOnly<W> {
    type Error = W::Error;

    fn name(&self) -> String {
        self.inner.name()
    }

    async fn work(&mut self) -> Result<WorkerState, W::Error> {
        match self.node.leader_since() {
            Some(since) if since.elapsed() >= self.settle => self.inner.work().await,
            _ => Ok(WorkerState::Idle),
        }
    }

    async fn wait_for_work(&mut self) {
        self.inner.wait_for_work().await
    }
}
