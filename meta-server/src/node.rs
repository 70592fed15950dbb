//! `MetaNode`: the handle the gRPC services use to reach Raft and the state machine.
//!
//! STUB — signatures fixed, bodies to be implemented by the Raft layer.
use crate::command::{Command, Reply};
use crate::error::MetaError;
use crate::fsm::Fsm;
use std::sync::Arc;

pub struct MetaNode {
    pub id: u64,
    pub addr: String,
    fsm: Arc<Fsm>,
}

impl MetaNode {
    /// The local state machine, for reads. Call [`MetaNode::linearizable_read`] first when the
    /// read must reflect every write acknowledged before it.
    pub fn fsm(&self) -> &Fsm {
        &self.fsm
    }

    /// Proposes `cmd` through Raft and returns its result once it is committed (durable on a
    /// majority) and applied. `NotLeader { leader }` when this node is not the leader;
    /// `Fs(..)` when the state machine refused the command.
    pub async fn write(&self, cmd: Command) -> Result<Reply, MetaError> {
        let _ = cmd;
        todo!()
    }

    /// Waits until this node, as leader, has confirmed its leadership with a quorum and applied
    /// everything committed so far (read index). `NotLeader` otherwise.
    pub async fn linearizable_read(&self) -> Result<(), MetaError> {
        todo!()
    }

    /// The current leader (id, address) as this node knows it.
    pub fn leader(&self) -> Option<(u64, String)> {
        todo!()
    }

    pub fn is_leader(&self) -> bool {
        todo!()
    }

    /// Voting members and learners of the cluster: (id, address).
    pub fn members(&self) -> Vec<(u64, String)> {
        todo!()
    }

    /// This node's own view: role, term, last applied / last log index.
    pub fn local_status(&self) -> cairn_proto::MetaNodeStatus {
        todo!()
    }
}
