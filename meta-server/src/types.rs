//! The openraft type configuration of the metadata cluster.
//!
//! Log entries carry a [`Command`]; applying one yields a [`CommandResult`]. Nodes are
//! identified by a `u64` and reached at the address in their [`openraft::BasicNode`]. A
//! snapshot travels and is held in memory as one serialized blob (see `store::state_machine`).
use crate::command::{Command, CommandResult};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// Raft types of the Cairn metadata cluster.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
