//! The commands replicated through the Raft log, and their results.
//!
//! Each [`Command`] is one log entry and is applied by [`crate::fsm::Fsm::apply`] as one RocksDB
//! write batch, so it takes effect entirely or not at all. Commands carry everything their
//! effect depends on (including `now`, stamped by the leader when it proposes them), so every
//! replica computes the same state.
use cairn_common::error::ErrorKind;
use cairn_common::ChunkId;
use serde::{Deserialize, Serialize};

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// One non-hole slot of a file: which chunk holds slot `index`'s bytes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotChunk {
    pub id: ChunkId,
    /// Bytes of the chunk that belong to the file; the rest of the slot reads as zeros.
    pub len: u32,
    /// The chunk's stored length.
    pub stored_len: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SlotUpdate {
    pub index: u64,
    /// `None` turns the slot into a hole.
    pub chunk: Option<SlotChunk>,
    /// Chunk servers that acknowledged the chunk durably.
    pub replicas: Vec<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// mkdir, mknod, create, symlink.
    Create {
        parent: u64,
        name: Vec<u8>,
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        symlink_target: Vec<u8>,
        exclusive: bool,
        now: Time,
    },
    Link {
        ino: u64,
        new_parent: u64,
        new_name: Vec<u8>,
        now: Time,
    },
    Unlink {
        parent: u64,
        name: Vec<u8>,
        now: Time,
    },
    Rmdir {
        parent: u64,
        name: Vec<u8>,
        now: Time,
    },
    Rename {
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        /// RENAME_NOREPLACE = 1, RENAME_EXCHANGE = 2.
        flags: u32,
        now: Time,
    },
    SetAttr {
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Time>,
        mtime: Option<Time>,
        now: Time,
    },
    /// Commit a new version of a file's content (see `CommitWriteRequest` in the proto).
    CommitWrite {
        ino: u64,
        base_version: u64,
        size: u64,
        updates: Vec<SlotUpdate>,
        mtime: Option<Time>,
        now: Time,
    },
    /// Register a chunk server (idempotent per uuid) and record its current address.
    RegisterChunkServer { uuid: String, addr: String },
}

/// What a successfully applied command returns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Reply {
    /// For entries that carry no command (blank, membership).
    Empty,
    Attr(crate::fsm::Inode),
    ServerId(u64),
}

/// A deterministic failure decided by the state machine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct FsError {
    pub kind: ErrorKind,
    pub message: String,
}

impl FsError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> FsError {
        FsError {
            kind,
            message: message.into(),
        }
    }
}

/// The response type of the Raft state machine.
pub type CommandResult = Result<Reply, FsError>;
