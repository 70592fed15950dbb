//! Coalesced read index: one leadership confirmation serves every linearizable read that was
//! waiting when it started.
//!
//! A linearizable read (lookup, getattr, readdir, …) must see every write acknowledged before
//! it arrived, so the leader confirms with a quorum that it still leads and waits until it has
//! applied everything committed so far (openraft's `ensure_linearizable`: one heartbeat round).
//! Doing that round per read made concurrent readers queue behind each other's rounds. Here
//! one task runs the rounds: it takes every read queued, runs **one** round, and answers them
//! all with its outcome; reads that arrive meanwhile wait for the next round.
//!
//! Why it stays linearizable: a read is answered only by a round that *started after the read
//! arrived* (the queue is drained before the round begins), so the round's read index covers
//! every write acknowledged before the read arrived — exactly what a round of its own gives.
use crate::error::MetaError;
use crate::raft::{Node, NodeId, Raft};
use openraft::error::{CheckIsLeaderError, ForwardToLeader, RaftError};
use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<Result<(), MetaError>>;

/// Most reads queued at once; more wait for room (each holds one RPC of a client).
const QUEUE: usize = 4096;

pub struct ReadIndex {
    tx: mpsc::Sender<Waiter>,
}

impl ReadIndex {
    /// Starts the task that runs the rounds (it ends when this handle is dropped). Must be
    /// called inside a tokio runtime.
    pub fn start(raft: Raft) -> ReadIndex {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, rx));
        ReadIndex { tx }
    }

    /// Returns once this node, as leader, has confirmed its leadership with a quorum in a round
    /// that began after this call, and has applied everything committed before it. `NotLeader`
    /// otherwise.
    pub async fn wait(&self) -> Result<(), MetaError> {
        let (tx, rx) = oneshot::channel();
        let gone = || MetaError::Raft("the read-index task has stopped".into());
        self.tx.send(tx).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Waiter>) {
    while let Some(first) = rx.recv().await {
        // Everyone queued now arrived before this round starts: it answers them all.
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
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
