//! The chunk store: durable, verified, content-addressed chunks behind one trait.
//!
//! This module holds what every backend shares: the [`ChunkStore`] trait, its error
//! [`StoreError`] (and the one mapping to the wire), and the types its methods return. The parts:
//!
//! - [`format`]: the chunk file format — the header with the blake3 chaining value of every
//!   64 KiB block (bound to the chunk id), its encoding, and the verified reads (header, a block
//!   range, a whole chunk).
//! - [`file_store`]: [`FileStore`], the store on a local file system — directory layout, the
//!   durable write and delete paths, quarantine of corrupt copies, free-space checks, crash
//!   recovery of `tmp/` at startup, the server identity file.
//! - [`gc_marks`]: the garbage-collection marks that keep a put racing a collection safe.
//!
//! # Corruption
//!
//! A reader never receives wrong bytes: any mismatch the format's checks find is
//! [`StoreError::Corrupt`], and the copy is moved to quarantine (never deleted) so the cluster
//! can re-replicate it from a good one. [`ChunkStore::verify`] (the scrub, and
//! `ReplicateChunk`'s check of a local copy) reads a whole chunk the same way without taking the
//! id's lock. Every copy found corrupt (on a read, a verify, or by a put that finds a rotten
//! existing copy) is also queued once as a [`CorruptChunk`] to the sink set with
//! [`FileStore::report_corruption_to`], from which [`crate::heartbeat::BadReplicaReporter`]
//! tells the metadata cluster to stop listing it.
//!
//! # Durability contract
//!
//! [`ChunkStore::put`] returns `Ok` only once the chunk file's data and its directory entry
//! are on stable storage: in [`FileStore`] that is one function,
//! `FileStore::write_chunk_durably` in `store/file_store.rs`, built on
//! [`cairn_common::durable`]. A crash at any earlier point leaves at most a file in `tmp/`,
//! which the next [`FileStore::open`] deletes. [`ChunkStore::delete`] returns `Ok` only once
//! the removal is durable (`FileStore::remove_chunk_durably`).
pub mod file_store;
pub mod format;
pub mod gc_marks;

pub use file_store::FileStore;
pub use format::{data_offset, FORMAT_VERSION, MAGIC};
pub use gc_marks::GC_MARK_TTL;

use bytes::Bytes;
use cairn_common::durable::DurableError;
use cairn_common::error::{status, ErrorKind};
use cairn_common::ChunkId;
use std::io;
use std::time::SystemTime;

/// Errors of the chunk store. [`From<StoreError> for tonic::Status`] is the one mapping to the
/// wire.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {id} not found")]
    NotFound { id: ChunkId },
    #[error("chunk {id} is corrupt: {reason}")]
    Corrupt { id: ChunkId, reason: String },
    #[error("no space left on the chunk store: {reason}")]
    NoSpace { reason: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("i/o error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// The wire error kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::Corrupt { .. } => ErrorKind::Corrupt,
            StoreError::NoSpace { .. } => ErrorKind::NoSpace,
            StoreError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            StoreError::Io { .. } => ErrorKind::Io,
        }
    }

    /// Wraps an I/O error with a verb-phrase context; ENOSPC / EDQUOT (by `raw_os_error()`)
    /// become `NoSpace`.
    fn io(context: impl Into<String>, source: io::Error) -> StoreError {
        let context = context.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace {
                reason: format!("{context}: {source}"),
            },
            _ => StoreError::Io { context, source },
        }
    }
}

/// A failed step of a durable write or delete: the step and the path are the context, and the
/// OS error decides the case as for any I/O error (ENOSPC / EDQUOT are `NoSpace`).
impl From<DurableError> for StoreError {
    fn from(e: DurableError) -> StoreError {
        StoreError::io(format!("{} {}", e.step, e.path.display()), e.source)
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> tonic::Status {
        status(e.kind(), e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The chunk was written and is durable.
    Stored,
    /// An intact copy was already stored; nothing was written.
    AlreadyPresent,
}

/// Space and content of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Size of the file system holding the data directory.
    pub capacity_bytes: u64,
    /// Bytes in use on that file system (by anyone).
    pub used_bytes: u64,
    /// Bytes available to us on that file system (before the reserve).
    pub free_bytes: u64,
    /// Chunks stored.
    pub chunk_count: u64,
    /// Bytes of chunk files (headers included) stored.
    pub stored_bytes: u64,
}

/// A content-addressed chunk store. Methods block on disk I/O: async callers run them on
/// `tokio::task::spawn_blocking` (see `service.rs`). A fault-injecting backend can wrap
/// [`FileStore`] behind this trait; `tests/store.rs` holds the suite every backend must pass.
pub trait ChunkStore: Send + Sync + 'static {
    /// Stores `data` under `id` durably. Refuses data that does not hash to `id` and data
    /// longer than [`cairn_common::CHUNK_SIZE`].
    fn put(&self, id: ChunkId, data: Bytes) -> Result<PutOutcome>;
    /// Returns `(bytes, stored_len)`: exactly the verified bytes `[offset, offset + len)` of the
    /// chunk (`len == 0`: to the end) and the chunk's full length.
    fn get(&self, id: ChunkId, offset: u64, len: u64) -> Result<(Bytes, u64)> {
        self.read(id, offset, len, false)
            .map(|r| (r.data, r.stored_len))
    }
    /// [`ChunkStore::get`], and with `want_proof` the chunk's block chaining values (when the
    /// copy has them: see [`ChunkRead::block_cvs`]).
    fn read(&self, id: ChunkId, offset: u64, len: u64, want_proof: bool) -> Result<ChunkRead>;
    /// The stored length if the chunk is present with a valid header.
    fn has(&self, id: ChunkId) -> Result<Option<u64>>;
    /// Every stored chunk id.
    fn list(&self) -> Result<Box<dyn Iterator<Item = Result<ChunkId>> + Send + '_>>;
    /// The stored chunk ids whose first byte is `shard` (one fan-out directory), so a walker
    /// of the whole store (the scrub) holds one shard's ids at a time, never all of them.
    fn list_shard(&self, shard: u8) -> Result<Vec<ChunkId>>;
    /// Reads a stored chunk back in full and checks its header, every block hash and its id.
    /// A copy that fails is quarantined and reported, like a failed read. Takes no lock that a
    /// put or get of the chunk waits on while it reads; an intact copy in an older chunk format
    /// is then rewritten in the current one, durably, under the id's lock.
    fn verify(&self, id: ChunkId) -> Result<VerifyReport>;
    /// Removes a chunk durably (surplus replicas). `NotFound` if it is not stored.
    fn delete(&self, id: ChunkId) -> Result<()>;
    /// Garbage collection, step one: marks the stored chunks among `ids` as about to be
    /// deleted and returns how many were marked. A put of a marked id clears its mark.
    fn mark_for_gc(&self, ids: &[ChunkId]) -> Result<u64>;
    /// Garbage collection, step two: deletes `id` durably if it is still marked (no put since
    /// the mark). `Ok(true)` if it was deleted.
    fn delete_if_marked(&self, id: ChunkId) -> Result<bool>;
    /// When the stored copy of `id` was written (`None` if not stored).
    fn stored_at(&self, id: ChunkId) -> Result<Option<SystemTime>>;
    /// Space and content counters.
    fn stats(&self) -> Result<StoreStats>;
}

/// What [`ChunkStore::read`] returns.
#[derive(Debug, Clone)]
pub struct ChunkRead {
    /// Exactly the verified bytes asked for.
    pub data: Bytes,
    /// The chunk's full length.
    pub stored_len: u64,
    /// When asked for: the blake3 chaining value of every 64 KiB block, 32 bytes each,
    /// already checked against the chunk id (`cairn_common::block_tree`), so the reader can
    /// verify single blocks. Empty for a chunk of one block (it is its own proof) and for a
    /// copy in chunk format 1.
    pub block_cvs: Vec<u8>,
}

/// What [`ChunkStore::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Header, every block and the chunk id check out; `len` bytes of data.
    Intact { len: u64 },
    /// No copy to verify: never stored, or deleted or replaced while it was being read (the
    /// replacement was verified by the put that wrote it).
    Absent,
    /// The copy failed verification; it was moved to quarantine (or the move was attempted,
    /// see the log) and reported to the corruption sink.
    Corrupt { reason: String },
}

/// The outcome of [`ChunkStore::verify`] and the bytes of file it read (for rate limiting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub outcome: Verification,
    pub bytes_read: u64,
}

/// A local copy of a chunk that failed verification (it has been moved to quarantine, or the
/// move was attempted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptChunk {
    pub id: ChunkId,
    pub reason: String,
}

/// Options of a [`FileStore`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Free space kept in reserve: a put is refused with `NoSpace` when the file system's
    /// available bytes minus this reserve are fewer than the chunk file needs.
    pub reserve_bytes: u64,
    /// Whether to make that early free-space check at all. Tests turn it off to reach the
    /// operating system's own ENOSPC path.
    pub check_free_space: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            reserve_bytes: 64 * 1024 * 1024,
            check_free_space: true,
        }
    }
}
