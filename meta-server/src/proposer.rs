//! Group commit: the writes that arrive while earlier ones are being appended are proposed
//! together, as one Raft entry.
//!
//! openraft 0.9 appends each proposed entry to the leader's log — one synced RocksDB write,
//! one fsync — inside its core loop, one entry after the other, before it replicates it. With
//! one entry per command, concurrent writers therefore queued behind one fsync each. Here one
//! task proposes for everybody: at most [`IN_FLIGHT`] proposals are in Raft at once, and the
//! commands that arrive while they are take the next free slot *together*, as one
//! [`Group`] entry. One append (one fsync on the leader, one on each follower) then serves
//! every writer in it. A writer alone is proposed at once, as before, and its entry is its
//! command itself (no group).
//!
//! What does not change: a command is acknowledged only once its entry is committed — on a
//! majority's synced logs — and applied, with its own result ([`crate::command::Reply::Group`]
//! keeps one per command; a refused command changes nothing and does not affect the others).
//! Exactly-once request ids stay per command (each keeps its own `Once` wrapper inside the
//! group). A group never exceeds [`MAX_COMMAND_BYTES`] encoded nor [`MAX_GROUP`] commands, so
//! it is replicated like any other entry.
use crate::command::{Command, Group, Reply, MAX_COMMAND_BYTES};
use crate::error::MetaError;
use crate::raft::Raft;
use crate::read_index::not_leader;
use openraft::error::{ClientWriteError, RaftError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Proposals in Raft at once. Two let the leader append the next entry while the previous one
/// is being replicated and applied; more would only make smaller groups (openraft appends one
/// entry at a time anyway).
pub const IN_FLIGHT: usize = 2;
/// Most commands in one group: bounds the work of applying one entry.
pub const MAX_GROUP: usize = 256;
/// Most writes queued at once; more wait for room (each holds one RPC of a client).
const QUEUE: usize = 4096;
/// What a group's encoding adds to its commands' (the variant tag and the length of the list),
/// with room to spare.
const GROUP_OVERHEAD: usize = 16;

type Outcome = Result<Reply, MetaError>;

/// A command waiting to be proposed: its encoded size and who waits for its result.
struct Pending {
    cmd: Command,
    len: usize,
    reply: oneshot::Sender<Outcome>,
}

pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the task that proposes (it ends when this handle is dropped). Must be called
    /// inside a tokio runtime.
    pub fn start(raft: Raft) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, rx));
        Proposer { tx }
    }

    /// Proposes `cmd`, whose encoding is `len` bytes (at most [`MAX_COMMAND_BYTES`]), alone or
    /// in a group, and returns its own result once its entry is committed and applied.
    pub async fn write(&self, cmd: Command, len: usize) -> Outcome {
        let (reply, rx) = oneshot::channel();
        let gone = || MetaError::Raft("the proposer has stopped".into());
        self.tx
            .send(Pending { cmd, len, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // A command that did not fit in the last group starts the next one.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // While every slot is taken, writes pile up in the queue: they form the next group.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.len + GROUP_OVERHEAD;
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            let Ok(p) = rx.try_recv() else { break };
            if bytes + p.len > MAX_COMMAND_BYTES {
                carried = Some(p);
                break;
            }
            bytes += p.len;
            group.push(p);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, group).await;
            drop(slot);
        });
    }
}

/// Proposes `group` as one entry and answers each writer with its own result.
async fn propose(raft: &Raft, mut group: Vec<Pending>) {
    if group.len() == 1 {
        let p = group.remove(0);
        // A writer that gave up (its RPC was cancelled) is simply not answered.
        let _ = p.reply.send(client_write(raft, p.cmd).await);
        return;
    }
    let (cmds, waiters): (Vec<Command>, Vec<oneshot::Sender<Outcome>>) =
        group.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let n = cmds.len();
    match client_write(raft, Command::Group(Group { cmds })).await {
        Ok(Reply::Group(results)) if results.len() == n => {
            for (w, r) in waiters.into_iter().zip(results) {
                let _ = w.send(r.map_err(MetaError::from));
            }
        }
        Ok(other) => {
            let e = MetaError::Storage(format!(
                "a group of {n} commands was answered with {other:?}"
            ));
            for w in waiters {
                let _ = w.send(Err(e.clone()));
            }
        }
        // Not committed as a whole (not the leader any more, shutting down): every command
        // gets the same answer, as each would have alone.
        Err(e) => {
            for w in waiters {
                let _ = w.send(Err(e.clone()));
            }
        }
    }
}

/// One entry through Raft: its result once committed (durable on a majority) and applied.
async fn client_write(raft: &Raft, cmd: Command) -> Outcome {
    match raft.client_write(cmd).await {
        Ok(resp) => Ok(resp.data?),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(not_leader(f)),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(MetaError::Raft(e.to_string()))
        }
        Err(RaftError::Fatal(e)) => Err(MetaError::Raft(e.to_string())),
    }
}
