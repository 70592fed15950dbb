//! Raft between the meta nodes: the openraft type configuration, and its transport over gRPC.
//!
//! - this module: the type configuration. Log entries carry a [`Command`]; applying one yields
//!   a [`CommandResult`]. Nodes are identified by a `u64` and reached at the address in their
//!   [`openraft::BasicNode`]. A snapshot travels and is held in memory as one serialized blob
//!   (see `store::snapshot`).
//! - [`network`]: the client side of Raft RPCs (openraft's network factory over tonic);
//! - [`service`]: the server side (the tonic `RaftService`, forwarding to the local Raft).
//!
//! The log and state-machine storage openraft drives are in `crate::store`.
pub mod network;
pub mod service;

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
