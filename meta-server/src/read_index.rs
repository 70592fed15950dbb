//! Linearizable reads: answered under the leader's lease when it holds, otherwise by a
//! coalesced read index — one leadership confirmation serves every read that was waiting when
//! it started.
//!
//! A linearizable read (lookup, getattr, readdir, …) must see every write acknowledged before
//! it arrived. Two ways to know that this node's state machine has them all:
//!
//! **The lease** (no network at all). openraft 0.9 followers refuse to vote for anyone for the
//! leader lease (`election_timeout_max`) after they last accepted an AppendEntries from the
//! leader, and start no election of their own before it. The leader tracks the *sending* time
//! of the newest heartbeat or append a quorum acknowledged (`millis_since_quorum_ack`). Until
//! that time plus [`lease_window`] — half the followers' lease, the other half being the
//! margin for clock-rate drift and for this task seeing the metrics late — no other node can
//! have become leader, so no write was acknowledged anywhere but here. Every write this leader
//! acknowledged was applied before its ack (openraft answers `client_write` after the apply),
//! and once this leader has applied an entry of its own term, everything earlier leaders
//! committed is applied too. So a read answered from the local state machine then is
//! linearizable. A watcher task turns each metrics report into "the lease holds until
//! instant X" (or no lease); a read checks that instant against the clock when it arrives.
//! (The leader itself could still grant a vote to a candidate that reaches it — an
//! asymmetric partition — but then it stops being leader, and that candidate must yet win an
//! election and commit entries before any write could be acknowledged there: milliseconds of
//! round trips and fsyncs, against the microseconds the metrics take to say so.)
//!
//! **The read index**, when the lease does not hold (no quorum acknowledged recently: a
//! follower is slow or gone, or leadership is new): the leader confirms with a quorum that it
//! still leads and waits until it has applied everything committed so far (openraft's
//! `ensure_linearizable`: one heartbeat round). Doing that round per read made concurrent
//! readers queue behind each other's rounds. Here one task runs the rounds: it takes every
//! read queued, runs **one** round, and answers them all with its outcome; reads that arrive
//! meanwhile wait for the next round. A read is answered only by a round that *started after
//! the read arrived* (the queue is drained before the round begins), so the round's read
//! index covers every write acknowledged before the read arrived — exactly what a round of
//! its own gives.
use crate::error::MetaError;
use crate::raft::{Node, NodeId, Raft};
use openraft::error::{CheckIsLeaderError, ForwardToLeader, RaftError};
use openraft::ServerState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<Result<(), MetaError>>;

/// Most reads queued at once; more wait for room (each holds one RPC of a client).
const QUEUE: usize = 4096;

/// How long after the sending time of a quorum-acknowledged heartbeat the leader answers reads
/// under its lease: half the followers' lease (`election_timeout_max`), so that clock-rate
/// drift and a late look at the metrics have the other half as margin. With the defaults
/// (heartbeats every 100 ms, lease 400 ms) an idle leader's lease holds throughout.
pub fn lease_window(config: &openraft::Config) -> Duration {
    Duration::from_millis(config.election_timeout_max / 2)
}

pub struct ReadIndex {
    tx: mpsc::Sender<Waiter>,
    /// Until when this node's lease lets it answer reads without a round (`None`: no lease).
    lease: Arc<Mutex<Option<Instant>>>,
    /// Confirmation rounds run so far (for tests and status).
    rounds: Arc<AtomicU64>,
}

impl ReadIndex {
    /// Starts the task that runs the rounds (it ends when this handle is dropped) and, when
    /// `lease` is given, the task that keeps the lease from Raft's metrics (it ends with Raft).
    /// Must be called inside a tokio runtime.
    pub fn start(raft: Raft, lease: Option<Duration>) -> ReadIndex {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rounds = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(raft.clone(), rx, rounds.clone()));
        let until = Arc::new(Mutex::new(None));
        if let Some(window) = lease {
            tokio::spawn(keep_lease(raft, window, until.clone()));
        }
        ReadIndex {
            tx,
            lease: until,
            rounds,
        }
    }

    /// Returns once a read on this node's state machine is linearizable: at once while this
    /// node holds the leader's lease, otherwise once it, as leader, has confirmed its
    /// leadership with a quorum in a round that began after this call and has applied
    /// everything committed before it. `NotLeader` otherwise.
    pub async fn wait(&self) -> Result<(), MetaError> {
        if self.lease_holds() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let gone = || MetaError::Raft("the read-index task has stopped".into());
        self.tx.send(tx).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Whether the lease holds now (read the clock after the read arrived, so it covers it).
    fn lease_holds(&self) -> bool {
        let until = *self.lease.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|u| Instant::now() < u)
    }

    /// Confirmation rounds run since start.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
}

/// Turns every metrics report into the instant the lease ends (see the module docs), until
/// Raft shuts down.
async fn keep_lease(raft: Raft, window: Duration, until: Arc<Mutex<Option<Instant>>>) {
    let mut metrics = raft.metrics();
    loop {
        let next = {
            let m = metrics.borrow_and_update();
            // The report says how old the quorum's ack was when the report was made. Counting
            // that age from now, when this task sees the report, dates the ack later than it
            // was by the time the report waited for this task: the window's margin covers it.
            let seen = Instant::now();
            let leading = m.state == ServerState::Leader && m.current_leader == Some(m.id);
            let own_term_applied = m
                .last_applied
                .is_some_and(|l| l.leader_id.term == m.current_term);
            match m.millis_since_quorum_ack {
                // `as_millis` truncates: add one.
                Some(ms) if leading && own_term_applied => seen
                    .checked_sub(Duration::from_millis(ms + 1))
                    .map(|acked| acked + window),
                _ => None,
            }
        };
        *until.lock().unwrap_or_else(|e| e.into_inner()) = next;
        if metrics.changed().await.is_err() {
            *until.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return;
        }
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Waiter>, rounds: Arc<AtomicU64>) {
    while let Some(first) = rx.recv().await {
        // Everyone queued now arrived before this round starts: it answers them all.
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        rounds.fetch_add(1, Ordering::Relaxed);
        let outcome = confirm(&raft).await;
        for w in waiters {
            // A reader that gave up (its RPC was cancelled) is simply not answered.
            let _ = w.send(outcome.clone());
        }
    }
}

/// One round: leadership confirmed by a quorum, and applied up to the read index.
async fn confirm(raft: &Raft) -> Result<(), MetaError> {
    match raft.ensure_linearizable().await {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(not_leader(f)),
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
            Err(MetaError::Raft(format!("leadership not confirmed: {e}")))
        }
        Err(RaftError::Fatal(e)) => Err(MetaError::Raft(e.to_string())),
    }
}

pub(crate) fn not_leader(f: ForwardToLeader<NodeId, Node>) -> MetaError {
    MetaError::NotLeader {
        leader: f.leader_node.map(|n| n.addr),
    }
}
