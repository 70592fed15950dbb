//! Raft between the meta nodes: the openraft type configuration, and its transport over gRPC.
//!
//! - this module: the type configuration. Log entries carry a [`Command`]; applying one yields
//!   a [`CommandResult`]. Nodes are identified by a `u64` and reached at the address in their
//!   [`openraft::BasicNode`]. A snapshot is a file, read and written in pieces (see
//!   `store::snapshot`).
//! - [`codec`]: the binary encoding of log entries, log-store records and RPCs;
//! - [`network`]: the client side of Raft RPCs (openraft's network factory over tonic);
//! - [`service`]: the server side (the tonic `RaftService`, forwarding to the local Raft).
//!
//! The log and state-machine storage openraft drives are in `crate::store`.
//!
//! Sizes are bounded end to end: no command larger than
//! [`MAX_COMMAND_BYTES`](crate::command::MAX_COMMAND_BYTES) is ever proposed, and one
//! AppendEntries carries at most [`MAX_APPEND_BYTES`] of entries plus one (the log store's
//! `limited_get_log_entries` stops there), so every Raft RPC fits in a gRPC message
//! ([`cairn_proto::MAX_MESSAGE_BYTES`]).
pub mod codec;
pub mod network;
pub mod service;

use crate::command::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Raft types of the Cairn metadata cluster.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::store::snapshot::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Most bytes of encoded entries one AppendEntries carries, unless a single entry is larger
/// (it then travels alone). With entries of at most
/// [`MAX_COMMAND_BYTES`](crate::command::MAX_COMMAND_BYTES), an AppendEntries stays below
/// 4 MiB + 1 MiB, well inside [`cairn_proto::MAX_MESSAGE_BYTES`].
pub const MAX_APPEND_BYTES: usize = 4 * 1024 * 1024;

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
