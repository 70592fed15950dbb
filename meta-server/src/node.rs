//! `MetaNode`: the handle the gRPC services use to reach Raft and the state machine.
use crate::command::{Command, Reply};
use crate::error::MetaError;
use crate::fsm::Fsm;
use crate::log_clock::LogClock;
use crate::proposer::Proposer;
use crate::raft::Raft;
use crate::read_index::ReadIndex;
use crate::store::digest::{Digest, Digests};
use openraft::ServerState;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct MetaNode {
    pub id: u64,
    /// The address peers and clients reach this node at (its advertised address).
    pub addr: String,
    fsm: Arc<Fsm>,
    raft: Raft,
    /// The digests of the applied state (kept by the state machine).
    digests: Arc<Digests>,
    /// (term, when this node became leader in it), kept by a task watching Raft's metrics.
    leader_since: Arc<Mutex<Option<(u64, Instant)>>>,
    /// When this node applied which index, fed by the same task: expiries are timed with it.
    log_clock: Arc<LogClock>,
    /// Linearizable reads, one leadership confirmation for all that wait together.
    read_index: ReadIndex,
    /// Writes, proposed together when they arrive together (group commit).
    proposer: Proposer,
    /// host:port of this node's HTTP port (/metrics, …), once it serves one.
    metrics_addr: std::sync::OnceLock<String>,
}

impl MetaNode {
    /// Must be called inside a tokio runtime: it starts the task that notes when this node
    /// becomes leader and what it has applied when (it ends when Raft shuts down).
    pub fn new(
        id: u64,
        addr: String,
        fsm: Arc<Fsm>,
        raft: Raft,
        digests: Arc<Digests>,
        log_clock: Arc<LogClock>,
        read_lease: Option<std::time::Duration>,
    ) -> MetaNode {
        let leader_since = Arc::new(Mutex::new(None));
        let mut metrics = raft.metrics();
        let since = leader_since.clone();
        let clock = log_clock.clone();
        tokio::spawn(async move {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    if let Some(applied) = m.last_applied {
                        clock.applied(applied.index);
                    }
                    let leading = m.state == ServerState::Leader && m.current_leader == Some(id);
                    let mut s = since.lock().unwrap_or_else(|e| e.into_inner());
                    *s = match (*s, leading) {
                        (Some((term, t)), true) if term == m.current_term => Some((term, t)),
                        (_, true) => Some((m.current_term, Instant::now())),
                        (_, false) => None,
                    };
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
        let read_index = ReadIndex::start(raft.clone(), read_lease);
        let proposer = Proposer::start(raft.clone());
        MetaNode {
            id,
            addr,
            fsm,
            raft,
            digests,
            leader_since,
            log_clock,
            read_index,
            proposer,
            metrics_addr: std::sync::OnceLock::new(),
        }
    }

    /// The last index this node had applied `age` ago by its monotonic clock (`None` if it
    /// was not running then): every entry at or below it was committed at least `age` ago.
    /// See [`crate::log_clock`].
    pub fn applied_before(&self, age: std::time::Duration) -> Option<u64> {
        self.log_clock.applied_before(age)
    }

    /// When this node became the leader, if it is the leader.
    pub fn leader_since(&self) -> Option<Instant> {
        self.leader_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|(_, t)| t)
    }

    /// The local state machine, for reads. Call [`MetaNode::linearizable_read`] first when the
    /// read must reflect every write acknowledged before it.
    pub fn fsm(&self) -> &Fsm {
        &self.fsm
    }

    /// The openraft handle (membership changes, metrics, tests).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Proposes `cmd` through Raft and returns its result once it is committed (durable on a
    /// majority) and applied. `NotLeader { leader }` when this node is not the leader;
    /// `Fs(..)` when the state machine refused the command.
    ///
    /// When leadership is lost while the command is in flight the result is `NotLeader` even
    /// though the command may still commit under the new leader: callers that retry must be
    /// prepared to find its effect already there.
    ///
    /// A command larger than [`MAX_COMMAND_BYTES`](crate::command::MAX_COMMAND_BYTES) is
    /// refused (`TooBig`) before it reaches the log: an oversized entry could not be replicated.
    ///
    /// Commands written concurrently share log entries (see [`crate::proposer`]); each still
    /// gets its own result, only once its entry is committed and applied.
    pub async fn write(&self, cmd: Command) -> Result<Reply, MetaError> {
        let len = cmd.check_size()?;
        self.proposer.write(cmd, len).await
    }

    /// Waits until a read of this node's state machine sees every write acknowledged before
    /// this call: at once under the leader's lease, otherwise once this node, as leader, has
    /// confirmed its leadership with a quorum and applied everything committed so far (read
    /// index; concurrent reads share one round). `NotLeader` otherwise. See
    /// [`crate::read_index`].
    pub async fn linearizable_read(&self) -> Result<(), MetaError> {
        self.read_index.wait().await
    }

    /// Leadership confirmation rounds run for reads since start (reads under the lease run
    /// none).
    pub fn read_rounds(&self) -> u64 {
        self.read_index.rounds()
    }

    /// The current leader (id, address) as this node knows it.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Some((id, addr))
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Voting members and learners of the cluster: (id, address).
    pub fn members(&self) -> Vec<(u64, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// This node's digest of its applied state at log index `index`, waiting up to `wait` for
    /// the entry to be applied; `None` if it was applied too long ago to be remembered (or not
    /// within `wait`).
    pub async fn digest_at(&self, index: u64, wait: std::time::Duration) -> Option<Digest> {
        if self.digests.last().0 < index {
            let _ = self
                .raft
                .wait(Some(wait))
                .applied_index_at_least(Some(index), "digest")
                .await;
        }
        self.digests.at(index)
    }

    /// Notes the address of this node's HTTP port, for `cairn status`.
    pub fn set_metrics_addr(&self, addr: String) {
        let _ = self.metrics_addr.set(addr);
    }

    /// This node's own view: role, term, last applied / last log index, applied digest.
    pub fn local_status(&self) -> cairn_proto::MetaNodeStatus {
        let m = self.raft.metrics();
        let m = m.borrow();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower | ServerState::Candidate => "follower",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "down",
        };
        cairn_proto::MetaNodeStatus {
            id: self.id,
            addr: self.addr.clone(),
            role: role.to_string(),
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_digest: self.digests.last().1.to_vec(),
            metrics_addr: self.metrics_addr.get().cloned().unwrap_or_default(),
        }
    }
}
