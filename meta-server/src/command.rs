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
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl From<cairn_proto::Timestamp> for Time {
    fn from(t: cairn_proto::Timestamp) -> Time {
        Time {
            secs: t.secs,
            nanos: t.nanos,
        }
    }
}

impl From<Time> for cairn_proto::Timestamp {
    fn from(t: Time) -> cairn_proto::Timestamp {
        cairn_proto::Timestamp {
            secs: t.secs,
            nanos: t.nanos,
        }
    }
}

impl Time {
    /// The wall clock now (the leader stamps commands with it).
    pub fn now() -> Time {
        cairn_common::time::now().into()
    }

    /// The wall clock `d` ago (the epoch if that is earlier).
    pub fn ago(d: std::time::Duration) -> Time {
        Time::from_system(
            std::time::SystemTime::now()
                .checked_sub(d)
                .unwrap_or(std::time::UNIX_EPOCH),
        )
    }

    /// `t` as a `Time` (times before the epoch become the epoch).
    pub fn from_system(t: std::time::SystemTime) -> Time {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Time {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    /// The kind a wire `FileKind` names; `None` for `UNSPECIFIED` and unknown values.
    pub fn from_proto(k: i32) -> Option<Kind> {
        use cairn_proto::FileKind as F;
        Some(match F::try_from(k).ok()? {
            F::Unspecified => return None,
            F::Regular => Kind::Regular,
            F::Directory => Kind::Directory,
            F::Symlink => Kind::Symlink,
            F::Fifo => Kind::Fifo,
            F::Socket => Kind::Socket,
            F::CharDevice => Kind::CharDevice,
            F::BlockDevice => Kind::BlockDevice,
        })
    }

    pub fn to_proto(self) -> cairn_proto::FileKind {
        use cairn_proto::FileKind as F;
        match self {
            Kind::Regular => F::Regular,
            Kind::Directory => F::Directory,
            Kind::Symlink => F::Symlink,
            Kind::Fifo => F::Fifo,
            Kind::Socket => F::Socket,
            Kind::CharDevice => F::CharDevice,
            Kind::BlockDevice => F::BlockDevice,
        }
    }
}

/// Linux `renameat2` flag: fail if the target exists.
pub const RENAME_NOREPLACE: u32 = 1;
/// Linux `renameat2` flag: atomically swap source and target (both must exist).
pub const RENAME_EXCHANGE: u32 = 2;

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
    /// The GC epoch of the placement the chunk was uploaded with (`PrepareWriteReply.ticket`).
    #[serde(default)]
    pub ticket: u64,
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
        /// The caller's session and the inodes it has open (see [`Keep`]).
        #[serde(default)]
        keep: Keep,
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
        /// For a replaced target, as in `Unlink`.
        #[serde(default)]
        keep: Keep,
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
        /// The upload session the chunks were recorded in (0: none); it ends with the commit.
        #[serde(default)]
        upload: u64,
    },
    /// Register a chunk server (idempotent per uuid) and record its current address.
    RegisterChunkServer {
        uuid: String,
        addr: String,
    },
    /// `server`'s copy of chunk `id` failed verification: stop listing it as a replica
    /// (idempotent). The chunk record and its reference count are kept; the chunk is queued
    /// in `repair` so it can be brought back to full replication.
    DropReplica {
        id: ChunkId,
        server: u64,
        now: Time,
    },
    /// Repair copied chunk `id` to `server` (verified on receipt, durable there): list it as a
    /// replica (idempotent) and clear the chunk's `repair` entry.
    AddReplica {
        id: ChunkId,
        server: u64,
    },
    /// `server`'s copy of `id` is surplus (the chunk has enough healthy replicas elsewhere): stop
    /// listing it, before the copy is deleted. Refused when it would leave no replica listed.
    RemoveReplica {
        id: ChunkId,
        server: u64,
    },
    /// Mark a chunk server draining (no new chunks; repair moves its replicas away) or not.
    SetDraining {
        server: u64,
        draining: bool,
    },
    /// Garbage collection: start collecting those of `ids` that are still unreferenced, in a
    /// new GC epoch. From then on a commit may reference them only with a ticket of this epoch
    /// or later (its upload happened after the chunk servers marked their copies).
    GcBegin {
        ids: Vec<ChunkId>,
        now: Time,
    },
    /// Garbage collection: `servers` deleted (or no longer hold) their copies of `id`. When no
    /// listed copy is left the record becomes a tombstone in `gone`.
    GcSwept {
        id: ChunkId,
        servers: Vec<u64>,
        now: Time,
    },
    /// Forget tombstones older than `before`; commits whose tickets predate them are refused.
    GcPrune {
        before: Time,
    },
    /// Garbage collection of copies the cluster never knew (uploads that were never
    /// committed): in a new GC epoch, give each of `ids` that has no chunk record a tombstone,
    /// so a commit of an upload placed before now is refused. Returns the ids accepted.
    GcOrphans {
        ids: Vec<ChunkId>,
        now: Time,
    },
    /// Apply `cmd` at most once for request id (`client`, `seq`): if that id already succeeded,
    /// return its recorded reply instead (the client retried after losing the reply).
    Once {
        client: u64,
        seq: u64,
        now: Time,
        cmd: Box<Command>,
    },
    /// Forget request ids recorded before `before` (clients stop retrying long before).
    PruneRequests {
        before: Time,
    },
    /// Apply these in order as one entry: all or nothing; the reply is the last one's.
    Batch {
        cmds: Vec<Command>,
    },
    /// setxattr(2). `flags`: [`XATTR_CREATE`], [`XATTR_REPLACE`].
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
        now: Time,
    },
    RemoveXattr {
        ino: u64,
        name: Vec<u8>,
        now: Time,
    },
    /// A mount starts: it will own locks and orphans. Replies `Session`.
    OpenSession {
        host: String,
        mountpoint: String,
        pid: u32,
        now: Time,
    },
    RenewSession {
        session: u64,
        now: Time,
    },
    /// Ends a session: drops its locks and deletes its orphans. With `idle_before` (expiry by
    /// the leader), only if the session was last renewed before then: a renewal wins the race.
    CloseSession {
        session: u64,
        idle_before: Option<Time>,
        now: Time,
    },
    /// The last handle of an orphan of `session` closed: delete the inode (idempotent).
    ReleaseOrphan {
        session: u64,
        ino: u64,
        now: Time,
    },
    /// Take, change or drop (`LockType::Unlock`) an advisory lock on a byte range. Refused with
    /// `WouldBlock` when another owner holds a conflicting lock.
    SetLock {
        ino: u64,
        session: u64,
        owner: u64,
        lock: LockRange,
    },
    /// Drop every lock `owner` of `session` holds on `ino`.
    ReleaseLocks {
        ino: u64,
        session: u64,
        owner: u64,
    },
    /// Start an upload session for a new version of `target`. Replies `Upload`.
    OpenUpload {
        target: UploadTarget,
        base_version: u64,
        label: String,
        host: String,
        now: Time,
    },
    /// Chunks durable on their replicas join upload `upload` (which holds a reference to each).
    RecordUpload {
        upload: u64,
        updates: Vec<SlotUpdate>,
        now: Time,
    },
    /// Drop an upload and its references. With `idle_before` (expiry), only if no chunk was
    /// recorded since then.
    AbortUpload {
        upload: u64,
        idle_before: Option<Time>,
        now: Time,
    },
    /// The file named by the upload's target gets exactly the recorded slots and `size`:
    /// created (base version 0) or replaced (still at the base version). Ends the upload.
    CommitUpload {
        upload: u64,
        size: u64,
        mtime: Option<Time>,
        mode: u32,
        uid: u32,
        gid: u32,
        now: Time,
    },
}

/// What an upload session will replace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum UploadTarget {
    /// An existing file (writes through a mount).
    Inode(u64),
    /// A name, which may not exist yet (`cairn put`).
    Name { parent: u64, name: Vec<u8> },
}

/// setxattr flag: fail if the attribute exists.
pub const XATTR_CREATE: u32 = 1;
/// setxattr flag: fail if the attribute does not exist.
pub const XATTR_REPLACE: u32 = 2;

/// Which inodes an unlink or rename must keep when their last name goes: those the calling
/// mount (`session`) still has open. They stay, with nlink 0, as orphans of the session until it
/// releases them (last close) or ends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Keep {
    pub session: u64,
    pub open: Vec<u64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockType {
    Read,
    Write,
    Unlock,
}

/// A byte range lock request: `start..=end` (`end` = u64::MAX: to the end of the file).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRange {
    pub typ: LockType,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

/// What a successfully applied command returns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Reply {
    /// For entries that carry no command (blank, membership).
    Empty,
    Attr(crate::fsm::Inode),
    ServerId(u64),
    /// `GcBegin`: the epoch it opened and the ids it accepted.
    GcBegun {
        epoch: u64,
        ids: Vec<ChunkId>,
    },
    /// `OpenSession`: the new session's id.
    Session(u64),
    /// `Unlink`, `Rename`: the inode kept as an orphan of the caller's session (0: none).
    Unlinked {
        orphan: u64,
    },
    /// `OpenUpload`: the new upload's id.
    Upload(u64),
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
