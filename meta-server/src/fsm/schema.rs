//! The state machine's storage schema: its column families, the encoding of keys and values,
//! and the errors of reading them.
//!
//! | CF         | key                                  | value                                   |
//! |------------|--------------------------------------|-----------------------------------------|
//! | `inodes`   | ino (u64 BE)                         | [`Inode`] (JSON)                        |
//! | `slots`    | ino (u64 BE) ++ slot index (u64 BE)  | [`SlotChunk`] (binary, 40 bytes)        |
//! | `dentries` | parent ino (u64 BE) ++ name bytes    | child ino (u64 BE) ++ [`Kind`] byte     |
//! | `chunks`   | [`ChunkId`] (32 bytes)               | [`ChunkRecord`] (JSON)                  |
//! | `servers`  | `i` ++ id (u64 BE) / `u` ++ uuid     | [`ServerRecord`] (JSON) / id (u64 BE)   |
//! | `counters` | counter name (see [`Counter`])       | u64 BE                                  |
//! | `gc`       | [`ChunkId`]                          | [`Time`] it became unreferenced (JSON)  |
//! | `repair`   | [`ChunkId`]                          | [`Time`] it last lost a replica (JSON)  |
//! | `gone`     | [`ChunkId`]                          | [`Gone`] tombstone (JSON)               |
//! | `requests` | client (u64 BE) ++ seq (u64 BE)      | recorded reply of a mutation (JSON)     |
//! | `xattrs`   | ino (u64 BE) ++ name                 | value bytes                             |
//! | `sessions` | session id (u64 BE)                  | [`SessionRecord`] (JSON)                |
//! | `locks`    | ino (u64 BE)                         | `Vec<`[`HeldLock`]`>` (JSON)            |
//! | `orphans`  | session (u64 BE) ++ ino (u64 BE)     | empty: an open file with no name left   |
//! | `uploads`  | id (u64 BE) ++ 0 / ++ 1 ++ slot (BE) | [`UploadHeader`] / [`SlotChunk`] (JSON) |
//! | `upload_targets` | ino (u64 BE) ++ upload id (u64 BE) | empty: uploads replacing that inode |
//! | `inline`   | [`ChunkId`] of an inline chunk       | its bytes (at most 64 KiB; see `inline.rs`) |
//! | `digest`   | `applied`                            | index (u64 BE) ++ digest of the applied state (see `store::digest`) |
//!
//! Keys of one area are built in that area's module; this one holds what every area shares.
//!
//! Values are JSON except where size matters: a file's slots are the largest table (one row per
//! 4 MiB of every file: 262 144 rows for 1 TiB), so a slot is 40 bytes of binary (see
//! `content.rs`) rather than some 110 of JSON. They live in their own column family, apart from
//! the inode, so an attribute change of a huge file rewrites a small record, a reader pages
//! through a file's slots by key range and a truncation deletes a key range.
//!
//! [`Inode`]: super::Inode
//! [`ChunkRecord`]: super::ChunkRecord
//! [`ServerRecord`]: super::ServerRecord
//! [`Gone`]: super::Gone
//! [`SessionRecord`]: super::SessionRecord
//! [`HeldLock`]: super::HeldLock
//! [`UploadHeader`]: super::UploadHeader
//! [`SlotChunk`]: crate::command::SlotChunk
//! [`Kind`]: crate::command::Kind
//! [`Time`]: crate::command::Time
//! [`ChunkId`]: cairn_common::ChunkId
use crate::command::FsError;
use cairn_common::error::ErrorKind;
use serde::{de::DeserializeOwned, Serialize};

pub const CF_INODES: &str = "inodes";
pub const CF_SLOTS: &str = "slots";
pub const CF_DENTRIES: &str = "dentries";
pub const CF_CHUNKS: &str = "chunks";
pub const CF_SERVERS: &str = "servers";
pub const CF_COUNTERS: &str = "counters";
pub const CF_GC: &str = "gc";
pub const CF_REPAIR: &str = "repair";
pub const CF_GONE: &str = "gone";
pub const CF_REQUESTS: &str = "requests";
pub const CF_XATTRS: &str = "xattrs";
pub const CF_SESSIONS: &str = "sessions";
pub const CF_LOCKS: &str = "locks";
pub const CF_ORPHANS: &str = "orphans";
pub const CF_UPLOADS: &str = "uploads";
pub const CF_UPLOAD_TARGETS: &str = "upload_targets";
pub const CF_INLINE: &str = "inline";
/// Written by the Raft state machine, not by commands: the digest of the applied state.
pub const CF_DIGEST: &str = "digest";

/// Column families holding the replicated state. A snapshot is exactly their contents.
pub const STATE_CFS: &[&str] = &[
    CF_INODES,
    CF_SLOTS,
    CF_DENTRIES,
    CF_CHUNKS,
    CF_SERVERS,
    CF_COUNTERS,
    CF_GC,
    CF_REPAIR,
    CF_GONE,
    CF_REQUESTS,
    CF_XATTRS,
    CF_SESSIONS,
    CF_LOCKS,
    CF_ORPHANS,
    CF_UPLOADS,
    CF_UPLOAD_TARGETS,
    CF_INLINE,
    CF_DIGEST,
];

/// The named counters of the `counters` column family (each a u64, 0 until first set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    /// The next inode number to hand out.
    NextIno,
    /// The next chunk-server id to hand out.
    NextServerId,
    /// How many inodes exist (statfs).
    Inodes,
    /// The current garbage-collection epoch (raised by every `GcBegin`).
    GcEpoch,
    /// Tickets below this are refused for chunks the state machine does not know: tombstones
    /// of collections in epochs below it were pruned.
    GcFloor,
    /// The last mount-session id handed out.
    LastSession,
    /// The last upload id handed out.
    LastUpload,
    /// The layout of the state (see [`LAYOUT`]); 0 in a database older than the first change.
    Layout,
}

/// The layout this code reads and writes. 2: a file's slots are rows of the `slots` column
/// family (layout 0/1 kept them inside the inode record; `Fsm::open` moves them).
pub const LAYOUT: u64 = 2;

impl Counter {
    /// The counter's key (part of the on-disk format).
    pub fn key(self) -> &'static str {
        match self {
            Counter::NextIno => "next_ino",
            Counter::NextServerId => "next_server_id",
            Counter::Inodes => "inodes",
            Counter::GcEpoch => "gc_epoch",
            Counter::GcFloor => "gc_floor",
            Counter::LastSession => "next_session",
            Counter::LastUpload => "next_upload",
            Counter::Layout => "layout",
        }
    }
}

/// A deterministic refusal of kind `kind`.
pub fn fs_err(kind: ErrorKind, message: impl Into<String>) -> FsError {
    FsError::new(kind, message)
}

/// Stored state that cannot be decoded (or a RocksDB error while reading it).
pub fn corrupt(what: impl std::fmt::Display) -> FsError {
    tracing::error!(error = %what, "corrupt or unreadable metadata state");
    fs_err(ErrorKind::Corrupt, format!("metadata state: {what}"))
}

/// A RocksDB failure inside the state machine.
pub fn storage(e: rocksdb::Error) -> FsError {
    tracing::error!(error = %e, "rocksdb failure in the state machine");
    fs_err(ErrorKind::Internal, format!("storage: {e}"))
}

pub fn decode_u64(v: &[u8]) -> Result<u64, FsError> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| corrupt(format!("u64 value of {} bytes", v.len())))?;
    Ok(u64::from_be_bytes(arr))
}

/// The big-endian u64 at `key[at..at + 8]` (ids inside composite keys).
pub fn u64_at(key: &[u8], at: usize, what: &str) -> Result<u64, FsError> {
    key.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(format!("{what} key of {} bytes", key.len())))
}

pub fn decode_json<T: DeserializeOwned>(v: &[u8]) -> Result<T, FsError> {
    serde_json::from_slice(v).map_err(corrupt)
}

pub fn encode_json<T: Serialize>(t: &T) -> Vec<u8> {
    // Serializing our own plain structs (string keys, no non-finite floats) cannot fail.
    serde_json::to_vec(t).unwrap_or_default()
}

/// `a` ++ `b` as big-endian u64s: the key of a (parent, child) pair.
pub fn pair_key(a: u64, b: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(&b.to_be_bytes());
    k
}

/// `a` (big-endian u64) ++ `bytes`: the key of a name under an inode.
pub fn named_key(a: u64, bytes: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + bytes.len());
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(bytes);
    k
}
