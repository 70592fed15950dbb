//! The commands replicated through the Raft log, and their results: the format of a log entry,
//! in one place.
//!
//! Each [`Command`] is one log entry (a [`Batch`] or [`Once`] wraps others in the same entry;
//! a [`Group`] carries the independent commands of many writers, proposed together by
//! [`crate::proposer`]) and is applied by [`crate::fsm::Fsm::apply`] as one RocksDB write batch,
//! so it takes effect entirely or not at all. Every command is a struct of its own; the state machine module of
//! its area applies it (`fsm/namespace.rs` applies [`Rename`], `fsm/uploads.rs` applies
//! [`CommitUpload`], …). Commands carry everything their effect depends on (including `now`,
//! stamped by the leader when it proposes them), so every replica computes the same state.
//!
//! In the log and on the wire a command is encoded by [`crate::raft::codec`] (postcard, not
//! self-describing): a field may carry `#[serde(default)]` but never `skip_serializing_if`,
//! and no enum may be untagged. No command larger than [`MAX_COMMAND_BYTES`] encoded is ever
//! proposed ([`crate::node::MetaNode::write`] refuses it); the service's request bounds
//! (`service/checks.rs`) keep every legitimate request well below it.
use cairn_common::error::ErrorKind;
use cairn_common::ChunkId;
use serde::{Deserialize, Serialize};

pub use cairn_common::{Kind, Time};

/// Linux `renameat2` flag: fail if the target exists.
pub const RENAME_NOREPLACE: u32 = 1;
/// Linux `renameat2` flag: atomically swap source and target (both must exist).
pub const RENAME_EXCHANGE: u32 = 2;
/// setxattr flag: fail if the attribute exists.
pub const XATTR_CREATE: u32 = 1;
/// setxattr flag: fail if the attribute does not exist.
pub const XATTR_REPLACE: u32 = 2;

/// Largest encoded command ever proposed (a log entry is this plus its log id). The largest
/// requests the service accepts — an unlink listing 65536 open inodes, a commit of 4096 slots,
/// a 64 KiB xattr — encode to well under it.
pub const MAX_COMMAND_BYTES: usize = 1024 * 1024;

/// One log entry's command. Each variant names the struct that holds its arguments (see the
/// struct for what it does).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    // Namespace (fsm/namespace.rs) and attributes (fsm/inodes.rs).
    Create(Create),
    Link(Link),
    Unlink(Unlink),
    Rmdir(Rmdir),
    Rename(Rename),
    SetAttr(SetAttr),
    // File content (fsm/content.rs).
    CommitWrite(CommitWrite),
    // Chunk servers and replicas (fsm/servers.rs).
    RegisterChunkServer(RegisterChunkServer),
    DropReplica(DropReplica),
    AddReplica(AddReplica),
    SuspectReplica(SuspectReplica),
    RemoveReplica(RemoveReplica),
    SetDraining(SetDraining),
    // Garbage collection (fsm/gc.rs).
    GcBegin(GcBegin),
    GcSwept(GcSwept),
    GcPrune(GcPrune),
    GcOrphans(GcOrphans),
    // Exactly-once request ids (fsm/requests.rs) and batches (fsm/mod.rs).
    Once(Once),
    PruneRequests(PruneRequests),
    Batch(Batch),
    // Extended attributes (fsm/xattrs.rs).
    SetXattr(SetXattr),
    RemoveXattr(RemoveXattr),
    // Mount sessions and their orphans (fsm/sessions.rs).
    OpenSession(OpenSession),
    RenewSession(RenewSession),
    CloseSession(CloseSession),
    ReleaseOrphan(ReleaseOrphan),
    // Advisory locks (fsm/locks.rs).
    SetLock(SetLock),
    ReleaseLocks(ReleaseLocks),
    // Upload sessions (fsm/uploads.rs).
    OpenUpload(OpenUpload),
    RecordUpload(RecordUpload),
    AbortUpload(AbortUpload),
    CommitUpload(CommitUpload),
    // Group commit (fsm/mod.rs, crate::proposer). After the others, so older variants keep
    // their tags; new variants go last.
    Group(Group),
    // A commit of a small file's content kept inline (fsm/inline.rs).
    CommitInline(CommitInline),
}

// --- namespace -------------------------------------------------------------------------------

/// mkdir, mknod, create, symlink.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Create {
    pub parent: u64,
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub symlink_target: Vec<u8>,
    /// Fail with EEXIST if the name exists (else an existing regular file is returned).
    pub exclusive: bool,
    pub now: Time,
}

/// A new hard link `new_parent`/`new_name` to `ino`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ino: u64,
    pub new_parent: u64,
    pub new_name: Vec<u8>,
    pub now: Time,
}

/// Removes a non-directory name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Unlink {
    pub parent: u64,
    pub name: Vec<u8>,
    pub now: Time,
    /// The caller's session and the inodes it has open (see [`Keep`]).
    #[serde(default)]
    pub keep: Keep,
}

/// Removes an empty directory.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Rmdir {
    pub parent: u64,
    pub name: Vec<u8>,
    pub now: Time,
}

/// rename(2) / renameat2(2).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Rename {
    pub parent: u64,
    pub name: Vec<u8>,
    pub new_parent: u64,
    pub new_name: Vec<u8>,
    /// [`RENAME_NOREPLACE`], [`RENAME_EXCHANGE`].
    pub flags: u32,
    pub now: Time,
    /// For a replaced target, as in [`Unlink`].
    #[serde(default)]
    pub keep: Keep,
}

/// chmod, chown, utimens, truncate: each field that is set changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SetAttr {
    pub ino: u64,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    pub now: Time,
}

/// Which inodes an unlink or rename must keep when their last name goes: those the calling
/// mount (`session`) still has open. They stay, with nlink 0, as orphans of the session until it
/// releases them (last close) or ends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Keep {
    pub session: u64,
    pub open: Vec<u64>,
}

// --- file content ----------------------------------------------------------------------------

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

/// Commits a new version of a file's content (see `CommitWriteRequest` in the proto).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CommitWrite {
    pub ino: u64,
    pub base_version: u64,
    pub size: u64,
    pub updates: Vec<SlotUpdate>,
    pub mtime: Option<Time>,
    pub now: Time,
    /// The upload session the chunks were recorded in (0: none); it ends with the commit.
    #[serde(default)]
    pub upload: u64,
    /// The slots recorded in `upload` are part of the new version, applied before `updates`
    /// (which win for a slot in both): a commit of more slots than one request carries.
    #[serde(default)]
    pub apply_upload: bool,
    /// Every slot of the base version not named (in `updates` or the applied upload) becomes a
    /// hole: the new version holds only the slots given.
    #[serde(default)]
    pub replace: bool,
}

/// A chunk kept inline, in the metadata (`inline` column family) instead of on chunk servers:
/// at most [`INLINE_MAX`](cairn_common::INLINE_MAX) bytes, id `ChunkId::inline_of(data)`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InlineChunk {
    pub id: ChunkId,
    pub data: Vec<u8>,
}

/// `write`, whose updates may reference the chunks of `inline` with no replicas: they are
/// stored in the metadata with the commit, in the same entry (see `fsm/inline.rs`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CommitInline {
    pub write: CommitWrite,
    pub inline: Vec<InlineChunk>,
}

// --- chunk servers and replicas --------------------------------------------------------------

/// Registers a chunk server (idempotent per uuid) and records its current address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegisterChunkServer {
    pub uuid: String,
    pub addr: String,
}

/// `server` itself found its copy of chunk `id` corrupt or absent (repair asked it to verify a
/// suspect copy, `ChunkService.VerifyChunk`): stop listing it as a replica (idempotent), even
/// the last one — the copy is really gone. The chunk record and its reference count are kept;
/// the chunk is queued in `repair` so it can be brought back to full replication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DropReplica {
    pub id: ChunkId,
    pub server: u64,
    pub now: Time,
}

/// `server`'s copy of chunk `id` was reported bad (`ReportBadReplica`: by its server, by a
/// reader, or by anyone): mark it suspect (idempotent). It stays listed — a report alone never
/// delists a copy, so it can never make a readable chunk unreadable — but readers try it after
/// the trusted copies and it does not count as healthy; the chunk is queued in `repair`, whose
/// verification by the copy's own server decides (`AddReplica` or `DropReplica`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SuspectReplica {
    pub id: ChunkId,
    pub server: u64,
    pub now: Time,
}

/// `server` holds a verified copy of chunk `id` (repair copied it there, verified on receipt
/// and durable; or its server verified a suspect copy intact): list it as a replica, trusted
/// (not suspect), idempotently, and clear the chunk's `repair` entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AddReplica {
    pub id: ChunkId,
    pub server: u64,
}

/// `server`'s copy of `id` is surplus (the chunk has enough healthy replicas elsewhere): stop
/// listing it, before the copy is deleted. Refused when it would leave no replica listed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RemoveReplica {
    pub id: ChunkId,
    pub server: u64,
}

/// Marks a chunk server draining (no new chunks; repair moves its replicas away) or not.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SetDraining {
    pub server: u64,
    pub draining: bool,
}

// --- garbage collection ----------------------------------------------------------------------

/// Starts collecting those of `ids` that are still unreferenced, in a new GC epoch. From then
/// on a commit may reference them only with a ticket of this epoch or later (its upload
/// happened after the chunk servers marked their copies).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GcBegin {
    pub ids: Vec<ChunkId>,
    pub now: Time,
}

/// `servers` deleted (or no longer hold) their copies of `id`. When no listed copy is left the
/// record becomes a tombstone in `gone`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GcSwept {
    pub id: ChunkId,
    pub servers: Vec<u64>,
    pub now: Time,
}

/// Forgets tombstones older than `before`; commits whose tickets predate them are refused.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GcPrune {
    pub before: Time,
}

/// Garbage collection of copies the cluster never knew (uploads that were never committed): in
/// a new GC epoch, gives each of `ids` that has no chunk record a tombstone, so a commit of an
/// upload placed before now is refused. Replies the ids accepted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GcOrphans {
    pub ids: Vec<ChunkId>,
    pub now: Time,
}

// --- request ids and batches -----------------------------------------------------------------

/// How deep commands may nest inside one another when decoded. The deepest command ever
/// proposed is a [`Group`] holding a [`Once`] around a [`Batch`] (3); anything deeper did not
/// come from a meta node.
pub const MAX_NESTING: usize = 8;

/// Bounded decoding of the commands that hold commands ([`Once`], [`Batch`], [`Group`]).
///
/// The derived decoder recurses once per level, and postcard has no depth limit of its own: a
/// forged Raft payload of commands nested a million deep (a few bytes a level) overflowed the
/// stack of the thread decoding it, and a stack overflow aborts the process — one request
/// killed the meta node. Each nested level is counted here (per thread: a value is decoded on
/// one thread, start to end) and a value deeper than [`MAX_NESTING`] is malformed. The
/// encoding is unchanged.
mod nesting {
    use super::{Command, MAX_NESTING};
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};
    use std::cell::Cell;

    thread_local! {
        static DEPTH: Cell<usize> = const { Cell::new(0) };
    }

    /// One level of nesting, counted while it is decoded.
    struct Level;

    impl Level {
        fn enter<E: Error>() -> Result<Level, E> {
            DEPTH.with(|d| {
                let depth = d.get() + 1;
                if depth > MAX_NESTING {
                    return Err(E::custom(format!(
                        "commands nest deeper than {MAX_NESTING} levels"
                    )));
                }
                d.set(depth);
                Ok(Level)
            })
        }
    }

    impl Drop for Level {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }

    pub(super) fn boxed<'de, D: Deserializer<'de>>(d: D) -> Result<Box<Command>, D::Error> {
        let _level = Level::enter()?;
        Box::<Command>::deserialize(d)
    }

    pub(super) fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Command>, D::Error> {
        let _level = Level::enter()?;
        Vec::<Command>::deserialize(d)
    }
}

/// Applies `cmd` at most once for request id (`client`, `seq`): if that id already succeeded,
/// its recorded reply is returned instead (the client retried after losing the reply).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Once {
    pub client: u64,
    pub seq: u64,
    pub now: Time,
    #[serde(deserialize_with = "nesting::boxed")]
    pub cmd: Box<Command>,
}

/// Forgets request ids no client retries any more: those applied by entries below
/// `before_index` (the leader picks an index its log clock applied long enough ago, see
/// `crate::log_clock`). Records kept before they carried their index fall back to the wall
/// time `before`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PruneRequests {
    pub before: Time,
    pub before_index: u64,
}

/// Applies `cmds` in order as one entry: all or nothing; the reply is the last one's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    #[serde(deserialize_with = "nesting::list")]
    pub cmds: Vec<Command>,
}

/// Independent commands of different writers, proposed as one entry so that one log append
/// (one fsync on each node) serves them all ([`crate::proposer`]). Unlike a [`Batch`], each
/// applies on its own, in order, with its own result ([`Reply::Group`]): a refused one changes
/// nothing and does not stop the ones after it; a later one sees the earlier ones' changes.
/// A group is never nested, and never wrapped in a [`Once`] or a [`Batch`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Group {
    #[serde(deserialize_with = "nesting::list")]
    pub cmds: Vec<Command>,
}

// --- extended attributes ---------------------------------------------------------------------

/// setxattr(2). `flags`: [`XATTR_CREATE`], [`XATTR_REPLACE`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SetXattr {
    pub ino: u64,
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    pub flags: u32,
    pub now: Time,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RemoveXattr {
    pub ino: u64,
    pub name: Vec<u8>,
    pub now: Time,
}

// --- mount sessions and orphans --------------------------------------------------------------

/// A mount starts: it will own locks and orphans. Replies [`Reply::Session`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OpenSession {
    pub host: String,
    pub mountpoint: String,
    pub pid: u32,
    pub now: Time,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RenewSession {
    pub session: u64,
    pub now: Time,
}

/// Ends a session: drops its locks and deletes its orphans. With `idle_through` (expiry by the
/// leader), only if the session was last renewed by an entry at or below that log index: a
/// renewal committed in between wins the race.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CloseSession {
    pub session: u64,
    pub idle_through: Option<u64>,
    pub now: Time,
}

/// The last handle of an orphan of `session` closed: delete the inode (idempotent).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReleaseOrphan {
    pub session: u64,
    pub ino: u64,
    pub now: Time,
}

// --- advisory locks --------------------------------------------------------------------------

/// Takes, changes or drops ([`LockType::Unlock`]) an advisory lock on a byte range. Refused
/// with `WouldBlock` when another owner holds a conflicting lock.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SetLock {
    pub ino: u64,
    pub session: u64,
    pub owner: u64,
    pub lock: LockRange,
}

/// Drops every lock `owner` of `session` holds on `ino`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReleaseLocks {
    pub ino: u64,
    pub session: u64,
    pub owner: u64,
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

// --- upload sessions -------------------------------------------------------------------------

/// Starts an upload session for a new version of `target`. Replies [`Reply::Upload`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OpenUpload {
    pub target: UploadTarget,
    pub base_version: u64,
    pub label: String,
    pub host: String,
    pub now: Time,
}

/// Chunks durable on their replicas join upload `upload` (which holds a reference to each).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RecordUpload {
    pub upload: u64,
    pub updates: Vec<SlotUpdate>,
    pub now: Time,
}

/// Drops an upload and its references. With `idle_through` (expiry), only if it was last
/// touched (begun, or a chunk recorded) by an entry at or below that log index.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AbortUpload {
    pub upload: u64,
    pub idle_through: Option<u64>,
    pub now: Time,
}

/// The file named by the upload's target gets exactly the recorded slots and `size`: created
/// (base version 0) or replaced (still at the base version). Ends the upload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CommitUpload {
    pub upload: u64,
    pub size: u64,
    pub mtime: Option<Time>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub now: Time,
}

/// What an upload session will replace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum UploadTarget {
    /// An existing file (writes through a mount).
    Inode(u64),
    /// A name, which may not exist yet (`cairn put`).
    Name { parent: u64, name: Vec<u8> },
}

// --- results ---------------------------------------------------------------------------------

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
    /// `Group`: each command's own result, in the group's order.
    Group(Vec<CommandResult>),
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

    /// Whether this is a failure of the node's own storage (a RocksDB error, a stored value
    /// that does not decode) rather than a refusal the command itself decided. The state
    /// machine reports those, and only those, with `Internal` and `Corrupt`
    /// (`fsm::schema::{storage, corrupt}`). Such an error is not a command result: the entry
    /// was not applied, and the node must stop (see `store::state_machine`).
    pub fn is_storage_failure(&self) -> bool {
        matches!(self.kind, ErrorKind::Internal | ErrorKind::Corrupt)
    }
}

/// The response type of the Raft state machine.
pub type CommandResult = Result<Reply, FsError>;

impl Command {
    /// Refuses a command too large for one log entry (`TooBig`), before it is proposed; else
    /// its encoded size.
    pub fn check_size(&self) -> Result<usize, FsError> {
        let len = crate::raft::codec::encoded_len(self)
            .map_err(|e| FsError::new(ErrorKind::InvalidArgument, e.to_string()))?;
        if len > MAX_COMMAND_BYTES {
            return Err(FsError::new(
                ErrorKind::TooBig,
                format!("request of {len} bytes exceeds the largest log entry ({MAX_COMMAND_BYTES} bytes)"),
            ));
        }
        Ok(len)
    }
}
