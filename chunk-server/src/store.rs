//! The chunk store: durable, verified, content-addressed chunk files on a local disk.
//!
//! # On-disk layout (under the data directory)
//!
//! ```text
//! server.uuid                     random identity, created once (temp + fsync + rename)
//! server.id                       id the metadata cluster assigned (informational)
//! chunks/<2 hex>/<64 hex>         one file per chunk; the subdirectory is the id's first byte
//! tmp/<64 hex>.<random>.tmp       chunk files being written; anything here at startup is
//!                                 the leftover of a crashed put and is deleted
//! quarantine/<64 hex>.<unix ns>   chunks that failed verification, moved aside (never deleted)
//! ```
//!
//! # Chunk file format (version 1), all integers little-endian
//!
//! ```text
//! offset  size      field
//! 0       8         magic "CAIRNCK1"
//! 8       4         format version (1)
//! 12      4         stored length L of the chunk data (<= CHUNK_SIZE)
//! 16      4         block count N = ceil(L / BLOCK_SIZE)
//! 20      32        chunk id (blake3 of the whole data), so a misplaced file is detected
//! 52      32 * N    blake3 of each BLOCK_SIZE block of the data (the last may be short)
//! 52+32N  32        blake3 of bytes [0, 52+32N) — the header's own checksum
//! 84+32N  L         the data
//! ```
//!
//! A reader validates the magic, version, lengths and header checksum, then reads only the
//! blocks that cover the requested range and checks each against its hash. Any mismatch is
//! [`StoreError::Corrupt`]: the caller never receives wrong bytes, and the whole chunk is moved
//! to `quarantine/` so the cluster can re-replicate it from a good copy. [`ChunkStore::verify`]
//! (the scrub, and `ReplicateChunk`'s check of a local copy) reads a whole chunk the same way
//! without taking the id's lock. A move to quarantine only moves the inode that was found
//! corrupt, so a good copy a concurrent put wrote in its place stays. Every copy found corrupt
//! (on a read, a verify, or by a put that finds a rotten existing copy) is also queued once as
//! a [`CorruptChunk`] to the sink set with [`FileStore::report_corruption_to`], from which
//! [`crate::heartbeat::BadReplicaReporter`] tells the metadata cluster to stop listing it.
//!
//! # Durability contract
//!
//! [`ChunkStore::put`] returns `Ok` only once the chunk file's data and its directory entry
//! are on stable storage (see [`FileStore::write_chunk_durably`]). A crash at any earlier point
//! leaves at most a file in `tmp/`, which the next [`FileStore::open`] deletes.
//! [`ChunkStore::delete`] returns `Ok` only once the removal is durable (see
//! [`FileStore::remove_chunk_durably`]).
use bytes::{Bytes, BytesMut};
use cairn_common::chunk::block_hashes;
use cairn_common::error::{status, ErrorKind};
use cairn_common::{ChunkId, BLOCK_SIZE, CHUNK_SIZE};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Magic bytes opening every chunk file.
pub const MAGIC: &[u8; 8] = b"CAIRNCK1";
/// The chunk file format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the fixed part of the header (magic, version, length, block count, id).
const FIXED_HEADER: usize = 8 + 4 + 4 + 4 + 32;
/// Number of lock stripes serialising writers (put, delete, quarantine) of the same id.
const LOCK_STRIPES: usize = 64;

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

    /// Wraps an I/O error with a verb-phrase context; ENOSPC / EDQUOT become `NoSpace`.
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
    /// longer than [`CHUNK_SIZE`].
    fn put(&self, id: ChunkId, data: Bytes) -> Result<PutOutcome>;
    /// Returns `(bytes, stored_len)`: exactly the verified bytes `[offset, offset + len)` of the
    /// chunk (`len == 0`: to the end) and the chunk's full length.
    fn get(&self, id: ChunkId, offset: u64, len: u64) -> Result<(Bytes, u64)>;
    /// The stored length if the chunk is present with a valid header.
    fn has(&self, id: ChunkId) -> Result<Option<u64>>;
    /// Every stored chunk id.
    fn list(&self) -> Result<Box<dyn Iterator<Item = Result<ChunkId>> + Send + '_>>;
    /// The stored chunk ids whose first byte is `shard` (one fan-out directory), so a walker
    /// of the whole store (the scrub) holds one shard's ids at a time, never all of them.
    fn list_shard(&self, shard: u8) -> Result<Vec<ChunkId>>;
    /// Reads a stored chunk back in full and checks its header, every block hash and its id.
    /// A copy that fails is quarantined and reported, like a failed read. Takes no lock that a
    /// put or get of the chunk waits on while it reads.
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

/// The chunk store on a local file system. See the module docs for the layout and format.
pub struct FileStore {
    root: PathBuf,
    chunks: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    opts: StoreOptions,
    uuid: String,
    chunk_count: AtomicU64,
    stored_bytes: AtomicU64,
    /// Serialises put / delete / quarantine of ids sharing a stripe, so concurrent puts of one
    /// id write it once and counters stay exact. A std mutex: it is only held on blocking
    /// threads, never across an `.await`.
    stripes: Vec<Mutex<()>>,
    /// Where corrupt copies are reported (set once the metadata cluster is configured).
    corruption_sink: OnceLock<mpsc::Sender<CorruptChunk>>,
    /// Garbage-collection marks: id -> when marked. Set and cleared under the id's stripe lock,
    /// so a put and a marked delete of one id never interleave (see [`ChunkStore::mark_for_gc`]).
    gc_marks: Mutex<HashMap<ChunkId, Instant>>,
}

/// A garbage-collection mark older than this is ignored (and dropped): the meta leader that set
/// it has long given up on that round.
pub const GC_MARK_TTL: Duration = Duration::from_secs(600);

/// An open chunk file, with the inode it was opened as (so a corrupt copy is quarantined
/// only if it is still the one under the chunk's name) and its length at open.
struct OpenChunk {
    file: File,
    ino: u64,
    file_len: u64,
}

/// What a move to quarantine did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quarantined {
    /// The file is in `quarantine/`.
    Moved,
    /// The move failed (logged); the copy is still reported.
    Failed,
    /// Nothing to move: the file is gone, or was replaced by another copy since it was seen.
    Gone,
}

/// The parsed, verified header of a chunk file.
struct Header {
    len: u64,
    block_hashes: Vec<[u8; 32]>,
    /// Where the data starts in the file.
    data_offset: u64,
}

fn header_len(blocks: usize) -> usize {
    FIXED_HEADER + 32 * blocks + 32
}

/// Where the data of a chunk of `len` bytes starts in its file (the header's length).
pub fn data_offset(len: usize) -> u64 {
    header_len(block_count(len)) as u64
}

fn block_count(len: usize) -> usize {
    len.div_ceil(BLOCK_SIZE)
}

/// Encodes the header of a chunk file for `data` (see the module docs).
fn encode_header(id: ChunkId, len: usize, hashes: &[[u8; 32]]) -> Vec<u8> {
    let mut h = Vec::with_capacity(header_len(hashes.len()));
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
    h.extend_from_slice(id.as_bytes());
    for b in hashes {
        h.extend_from_slice(b);
    }
    let own = blake3::hash(&h);
    h.extend_from_slice(own.as_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("fsync directory {}", dir.display()), e))
}

/// Creates `dir` if missing; if it was created, fsyncs its parent so the new entry is durable.
fn ensure_dir_durably(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {
            let parent = dir.parent().unwrap_or(Path::new("/"));
            fsync_dir(parent)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::io(
            format!("create directory {}", dir.display()),
            e,
        )),
    }
}

/// Writes `contents` to `path` atomically and durably: temp file, fsync, rename, fsync dir.
/// Used for the small identity files.
pub(crate) fn write_file_durably(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension(format!("tmp.{:016x}", rand::random::<u64>()));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| StoreError::io(format!("create {}", tmp.display()), e))?;
        f.write_all(contents)
            .and_then(|()| f.sync_all())
            .map_err(|e| StoreError::io(format!("write {}", tmp.display()), e))?;
        fs::rename(&tmp, path)
            .map_err(|e| StoreError::io(format!("rename into {}", path.display()), e))?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Removes a temp file when dropped, unless disarmed after the rename succeeded.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::error!(path = %self.path.display(), error = %e, "remove temp chunk file");
                }
            }
        }
    }
}

impl FileStore {
    /// Opens (creating if needed) the store in `root`: creates the directories durably,
    /// deletes leftovers of crashed puts in `tmp/`, loads or creates `server.uuid`, and counts
    /// the stored chunks.
    pub fn open(root: impl Into<PathBuf>, opts: StoreOptions) -> Result<FileStore> {
        let root: PathBuf = root.into();
        if !root.exists() {
            fs::create_dir_all(&root).map_err(|e| {
                StoreError::io(format!("create data directory {}", root.display()), e)
            })?;
            // The data directory's own entry must be durable before any chunk in it is acked.
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsync_dir(parent)?;
            }
        }
        let chunks = root.join("chunks");
        let tmp = root.join("tmp");
        let quarantine = root.join("quarantine");
        for d in [&chunks, &tmp, &quarantine] {
            ensure_dir_durably(d)?;
        }
        // All 256 fan-out directories exist before the first put, so a put never races with
        // another put over creating (and fsyncing) its subdirectory.
        for b in 0..=255u8 {
            ensure_dir_durably(&chunks.join(format!("{b:02x}")))?;
        }

        // A crash before rename leaves a temp file here; it was never acknowledged, so it goes.
        let mut removed = 0u64;
        for entry in
            fs::read_dir(&tmp).map_err(|e| StoreError::io(format!("list {}", tmp.display()), e))?
        {
            let entry = entry.map_err(|e| StoreError::io("list tmp", e))?;
            let p = entry.path();
            let r = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(|e| StoreError::io(format!("remove leftover {}", p.display()), e))?;
            removed += 1;
        }
        if removed > 0 {
            fsync_dir(&tmp)?;
            tracing::warn!(removed, "deleted leftover temp files of interrupted puts");
        }

        let uuid = load_or_create_uuid(&root)?;

        let store = FileStore {
            root,
            chunks,
            tmp,
            quarantine,
            opts,
            uuid,
            chunk_count: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            corruption_sink: OnceLock::new(),
            gc_marks: Mutex::new(HashMap::new()),
        };
        let (mut count, mut bytes) = (0u64, 0u64);
        for b in 0..=255u8 {
            let sub = store.chunks.join(format!("{b:02x}"));
            for entry in fs::read_dir(&sub)
                .map_err(|e| StoreError::io(format!("list {}", sub.display()), e))?
            {
                let entry = entry.map_err(|e| StoreError::io("list chunks", e))?;
                let name = entry.file_name();
                if ChunkId::from_hex(&name.to_string_lossy()).is_err() {
                    tracing::warn!(path = %entry.path().display(), "ignoring stray file in chunk directory");
                    continue;
                }
                let md = entry
                    .metadata()
                    .map_err(|e| StoreError::io("stat chunk", e))?;
                count += 1;
                bytes += md.len();
            }
        }
        store.chunk_count.store(count, Ordering::Relaxed);
        store.stored_bytes.store(bytes, Ordering::Relaxed);
        tracing::info!(root = %store.root.display(), chunks = count, bytes, uuid = %store.uuid, "chunk store opened");
        Ok(store)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This server's persistent random identity.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Where the chunk `id` lives once stored.
    pub fn chunk_path(&self, id: ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunks.join(&hex[..2]).join(hex)
    }

    /// The temp-file directory (for tests).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Queues every copy found corrupt from now on to `sink` (without blocking: when the
    /// bounded queue is full the report is dropped with a warning — the copy is quarantined
    /// either way). Only the first sink set is kept; returns false if one was already set.
    pub fn report_corruption_to(&self, sink: mpsc::Sender<CorruptChunk>) -> bool {
        self.corruption_sink.set(sink).is_ok()
    }

    fn notify_corrupt(&self, id: ChunkId, reason: &str) {
        let Some(sink) = self.corruption_sink.get() else {
            return;
        };
        let report = CorruptChunk {
            id,
            reason: reason.to_owned(),
        };
        match sink.try_send(report) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(chunk = %id, "bad-replica report queue is full; report dropped")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(chunk = %id, "bad-replica reporter stopped; report dropped")
            }
        }
    }

    /// The quarantine directory (for tests and operators).
    pub fn quarantine_dir(&self) -> &Path {
        &self.quarantine
    }

    fn gc_marks(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, Instant>> {
        self.gc_marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes `id` durably and updates the counters. The caller holds the id's stripe lock.
    fn delete_locked(&self, id: ChunkId) -> Result<()> {
        let size = self.remove_chunk_durably(id)?;
        self.chunk_count.fetch_sub(1, Ordering::Relaxed);
        self.stored_bytes.fetch_sub(size, Ordering::Relaxed);
        tracing::debug!(chunk = %id, "chunk deleted");
        Ok(())
    }

    fn stripe(&self, id: ChunkId) -> std::sync::MutexGuard<'_, ()> {
        self.stripes[id.0[0] as usize % LOCK_STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses early when the file system cannot take `needed` bytes on top of the reserve.
    fn check_space(&self, needed: u64) -> Result<()> {
        if !self.opts.check_free_space {
            return Ok(());
        }
        let free = statvfs(&self.root)?.free_bytes;
        let usable = free.saturating_sub(self.opts.reserve_bytes);
        if usable < needed {
            return Err(StoreError::NoSpace {
                reason: format!(
                    "{needed} bytes needed, {free} free, {} reserved",
                    self.opts.reserve_bytes
                ),
            });
        }
        Ok(())
    }

    /// Writes a new chunk file so that it is durable before this returns.
    ///
    /// Each step exists for a reason:
    /// 1. Write header + data to a temp file in `tmp/` with a random suffix: a crash or error
    ///    midway never leaves a partial file under the chunk's final name; concurrent writers
    ///    never share a temp file. The [`TempGuard`] deletes it on any failure (ENOSPC included).
    /// 2. `sync_all` the temp file: its data and length are on disk before it gets its name,
    ///    so after a crash the final name never points at unwritten blocks.
    /// 3. `rename` into `chunks/<2 hex>/`: atomic, so readers see either no chunk or all of it.
    /// 4. fsync `chunks/<2 hex>/`: the rename itself (the new directory entry) is durable; the
    ///    subdirectory's own entry in `chunks/` was made durable when it was created.
    ///
    /// Only then may the caller acknowledge the put.
    fn write_chunk_durably(&self, id: ChunkId, data: &[u8], hashes: &[[u8; 32]]) -> Result<u64> {
        let header = encode_header(id, data.len(), hashes);
        let total = (header.len() + data.len()) as u64;
        self.check_space(total)?;

        let final_path = self.chunk_path(id);
        let subdir = final_path.parent().unwrap_or(&self.chunks).to_path_buf();
        // The fan-out directory was created at open; recreate it durably if someone removed it.
        ensure_dir_durably(&subdir)?;

        // Step 1: temp file with a random suffix.
        let tmp_path = self.tmp.join(format!(
            "{}.{:016x}.tmp",
            id.to_hex(),
            rand::random::<u64>()
        ));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(|e| StoreError::io("create temp chunk file", e))?;
        let mut guard = TempGuard {
            path: tmp_path,
            armed: true,
        };
        file.write_all(&header)
            .and_then(|()| file.write_all(data))
            .map_err(|e| StoreError::io("write temp chunk file", e))?;
        // Step 2: data durable before the file gets its name.
        file.sync_all()
            .map_err(|e| StoreError::io("fsync temp chunk file", e))?;
        drop(file);
        // Step 3: atomic publish.
        fs::rename(&guard.path, &final_path)
            .map_err(|e| StoreError::io("rename chunk file into place", e))?;
        guard.armed = false;
        // Step 4: the directory entry is durable.
        fsync_dir(&subdir)?;
        Ok(total)
    }

    /// Opens a chunk file (`NotFound` if it is not stored).
    fn open_chunk(&self, id: ChunkId) -> Result<OpenChunk> {
        let path = self.chunk_path(id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { id })
            }
            Err(e) => return Err(StoreError::io("open chunk file", e)),
        };
        let md = file
            .metadata()
            .map_err(|e| StoreError::io("stat chunk file", e))?;
        Ok(OpenChunk {
            file,
            ino: md.ino(),
            file_len: md.len(),
        })
    }

    /// Opens a chunk file and reads and verifies its header. A corrupt header quarantines
    /// the file that was opened (not a good copy that may have replaced it since).
    fn open_verified(&self, id: ChunkId) -> Result<(OpenChunk, Header)> {
        let c = self.open_chunk(id)?;
        let h = self.read_header(id, &c);
        let h = self.quarantine_on_corrupt(id, Some(c.ino), h)?;
        Ok((c, h))
    }

    /// Reads and verifies the header of an open chunk file.
    fn read_header(&self, id: ChunkId, c: &OpenChunk) -> Result<Header> {
        let file_len = c.file_len;
        let mut file = &c.file;
        let corrupt = |reason: String| StoreError::Corrupt { id, reason };
        let mut fixed = [0u8; FIXED_HEADER];
        match file.read_exact(&mut fixed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(corrupt(format!(
                    "file of {file_len} bytes is shorter than a header"
                )))
            }
            Err(e) => return Err(StoreError::io("read chunk header", e)),
        }
        if &fixed[..8] != MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        let version = u32_at(&fixed, 8);
        if version != FORMAT_VERSION {
            return Err(corrupt(format!("unknown format version {version}")));
        }
        let len = u32_at(&fixed, 12) as usize;
        let blocks = u32_at(&fixed, 16) as usize;
        if len > CHUNK_SIZE || blocks != block_count(len) {
            return Err(corrupt(format!(
                "implausible length {len} / {blocks} blocks"
            )));
        }
        if fixed[20..52] != id.0 {
            return Err(corrupt("header names a different chunk id".into()));
        }
        let mut rest = vec![0u8; 32 * blocks + 32];
        match file.read_exact(&mut rest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(corrupt("truncated header".into()))
            }
            Err(e) => return Err(StoreError::io("read chunk header", e)),
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&fixed);
        hasher.update(&rest[..32 * blocks]);
        if hasher.finalize().as_bytes() != &rest[32 * blocks..] {
            return Err(corrupt("header checksum mismatch".into()));
        }
        let data_offset = header_len(blocks) as u64;
        if file_len != data_offset + len as u64 {
            return Err(corrupt(format!(
                "file is {file_len} bytes, header says {}",
                data_offset + len as u64
            )));
        }
        let block_hashes = rest[..32 * blocks]
            .chunks_exact(32)
            .map(|c| {
                let mut a = [0u8; 32];
                a.copy_from_slice(c);
                a
            })
            .collect();
        Ok(Header {
            len: len as u64,
            block_hashes,
            data_offset,
        })
    }

    /// Reads and verifies the blocks covering `[offset, end)`; returns exactly those bytes.
    fn read_verified(
        &self,
        id: ChunkId,
        file: &File,
        h: &Header,
        offset: u64,
        end: u64,
    ) -> Result<Bytes> {
        if offset == end {
            return Ok(Bytes::new());
        }
        let bs = BLOCK_SIZE as u64;
        let first = offset / bs;
        let last = (end - 1) / bs; // inclusive
        let span_start = first * bs;
        let span_end = ((last + 1) * bs).min(h.len);
        let mut buf = BytesMut::zeroed((span_end - span_start) as usize);
        file.read_exact_at(&mut buf, h.data_offset + span_start)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => StoreError::Corrupt {
                    id,
                    reason: "data shorter than its header says".into(),
                },
                _ => StoreError::io("read chunk data", e),
            })?;
        for (i, block) in buf.chunks(BLOCK_SIZE).enumerate() {
            let index = first as usize + i;
            if blake3::hash(block).as_bytes() != &h.block_hashes[index] {
                return Err(StoreError::Corrupt {
                    id,
                    reason: format!("block {index} checksum mismatch"),
                });
            }
        }
        // The whole chunk was read: check it against its id too (catches a consistent but
        // wrong header + data pair).
        if span_start == 0 && span_end == h.len && ChunkId::of(&buf) != id {
            return Err(StoreError::Corrupt {
                id,
                reason: "data does not hash to the chunk id".into(),
            });
        }
        let buf = buf.freeze();
        Ok(buf.slice((offset - span_start) as usize..(end - span_start) as usize))
    }

    /// Moves a chunk that failed verification to `quarantine/` (never deletes it), logs it and
    /// reports it. `seen` is the inode that was found corrupt: a file replaced since (by a put
    /// of a good copy) is left alone.
    fn quarantine(&self, id: ChunkId, seen: Option<u64>, reason: &str) -> Quarantined {
        let _lock = self.stripe(id);
        self.move_to_quarantine(id, seen, reason)
    }

    /// [`FileStore::quarantine`] for a caller that holds the id's stripe lock.
    fn move_to_quarantine(&self, id: ChunkId, seen: Option<u64>, reason: &str) -> Quarantined {
        let path = self.chunk_path(id);
        let md = match fs::metadata(&path) {
            Ok(md) => md,
            Err(_) => return Quarantined::Gone, // already gone
        };
        if seen.is_some_and(|ino| ino != md.ino()) {
            return Quarantined::Gone;
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dest = self.quarantine.join(format!("{}.{nanos}", id.to_hex()));
        let moved = fs::rename(&path, &dest)
            .map_err(|e| StoreError::io("move chunk to quarantine", e))
            .and_then(|()| fsync_dir(&self.quarantine))
            .and_then(|()| fsync_dir(path.parent().unwrap_or(&self.chunks)));
        let result = match moved {
            Ok(()) => {
                self.chunk_count.fetch_sub(1, Ordering::Relaxed);
                self.stored_bytes.fetch_sub(md.len(), Ordering::Relaxed);
                tracing::error!(chunk = %id, reason, dest = %dest.display(), "corrupt chunk quarantined");
                Quarantined::Moved
            }
            Err(e) => {
                tracing::error!(chunk = %id, reason, error = %e, "corrupt chunk could not be quarantined");
                Quarantined::Failed
            }
        };
        // Reported once per copy: a copy already moved (or replaced) returned early above.
        self.notify_corrupt(id, reason);
        result
    }

    /// Quarantines on `Corrupt` and passes every result through.
    fn quarantine_on_corrupt<T>(&self, id: ChunkId, ino: Option<u64>, r: Result<T>) -> Result<T> {
        if let Err(StoreError::Corrupt { reason, .. }) = &r {
            self.quarantine(id, ino, reason);
        }
        r
    }

    /// Checks an open chunk file in full: header, every block hash, and the whole data
    /// against the id. Returns the data length. Quarantines nothing (the caller decides).
    fn check_whole(&self, id: ChunkId, c: &OpenChunk) -> Result<u64> {
        let h = self.read_header(id, c)?;
        if h.len == 0 {
            // read_verified reads no block of an empty chunk; check its id here.
            if ChunkId::of(&[]) != id {
                return Err(StoreError::Corrupt {
                    id,
                    reason: "empty data does not hash to the chunk id".into(),
                });
            }
            return Ok(0);
        }
        // A read of the whole chunk also checks it against the id (see read_verified).
        self.read_verified(id, &c.file, &h, 0, h.len)?;
        Ok(h.len)
    }

    /// Fully verifies a stored chunk (header, every block, id); a corrupt copy is quarantined.
    /// `Ok(false)`: no intact copy is stored. The caller holds the id's stripe lock.
    fn verify_existing_locked(&self, id: ChunkId) -> Result<bool> {
        let c = match self.open_chunk(id) {
            Ok(c) => c,
            Err(StoreError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        match self.check_whole(id, &c) {
            Ok(_) => Ok(true),
            Err(StoreError::Corrupt { reason, .. }) => {
                self.move_to_quarantine(id, Some(c.ino), &reason);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The chunk ids in fan-out directory `shard`; stray names are skipped (and logged).
    fn read_shard(&self, shard: u8) -> Result<Vec<ChunkId>> {
        let sub = self.chunks.join(format!("{shard:02x}"));
        let rd = match fs::read_dir(&sub) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(format!("list {}", sub.display()), e)),
        };
        let mut ids = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| StoreError::io("list chunk directory", e))?;
            match ChunkId::from_hex(&entry.file_name().to_string_lossy()) {
                Ok(id) => ids.push(id),
                Err(_) => {
                    tracing::debug!(path = %entry.path().display(), "ignoring stray file in chunk directory")
                }
            }
        }
        Ok(ids)
    }

    /// Removes a chunk file so that the removal is durable before this returns: `unlink`, then
    /// fsync the fan-out directory — an unlink is only a change to the directory, and until
    /// the directory is synced a crash can bring the file back (a surplus replica the
    /// metadata cluster already forgot, or garbage it was told is gone). The caller holds the
    /// id's stripe lock. Returns the bytes freed.
    fn remove_chunk_durably(&self, id: ChunkId) -> Result<u64> {
        let path = self.chunk_path(id);
        let size = match fs::metadata(&path) {
            Ok(md) => md.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { id })
            }
            Err(e) => return Err(StoreError::io("stat chunk file", e)),
        };
        fs::remove_file(&path).map_err(|e| StoreError::io("remove chunk file", e))?;
        fsync_dir(path.parent().unwrap_or(&self.chunks))?;
        Ok(size)
    }
}

impl ChunkStore for FileStore {
    fn put(&self, id: ChunkId, data: Bytes) -> Result<PutOutcome> {
        if data.len() > CHUNK_SIZE {
            return Err(StoreError::InvalidArgument(format!(
                "chunk of {} bytes exceeds the maximum of {CHUNK_SIZE}",
                data.len()
            )));
        }
        let hashes = block_hashes(&data);
        // The id is the blake3 of the whole data; blake3 is fast enough that hashing twice
        // (blocks, whole) costs little next to the fsync.
        let actual = ChunkId::of(&data);
        if actual != id {
            return Err(StoreError::InvalidArgument(format!(
                "data does not hash to chunk id {id} (it hashes to {actual})"
            )));
        }
        let _lock = self.stripe(id);
        // GC SAFETY: a put clears the id's mark before anything else, under the stripe lock, so
        // the copy it leaves (new or already present) is never taken by a marked delete that
        // was decided before this put. The meta cluster refuses commits of uploads older than
        // the collection, so the marked delete of a copy put *before* the mark loses nothing.
        self.gc_marks().remove(&id);
        if self.verify_existing_locked(id)? {
            return Ok(PutOutcome::AlreadyPresent);
        }
        let written = self.write_chunk_durably(id, &data, &hashes)?;
        self.chunk_count.fetch_add(1, Ordering::Relaxed);
        self.stored_bytes.fetch_add(written, Ordering::Relaxed);
        tracing::debug!(chunk = %id, len = data.len(), "chunk stored");
        Ok(PutOutcome::Stored)
    }

    fn get(&self, id: ChunkId, offset: u64, len: u64) -> Result<(Bytes, u64)> {
        let (c, h) = self.open_verified(id)?;
        let end = if len == 0 {
            h.len
        } else {
            offset.saturating_add(len)
        };
        if offset > h.len || end > h.len {
            return Err(StoreError::InvalidArgument(format!(
                "range {offset}+{len} is past the end of chunk {id} ({} bytes)",
                h.len
            )));
        }
        let r = self.read_verified(id, &c.file, &h, offset, end);
        let data = self.quarantine_on_corrupt(id, Some(c.ino), r)?;
        Ok((data, h.len))
    }

    fn has(&self, id: ChunkId) -> Result<Option<u64>> {
        match self.open_verified(id) {
            Ok((_, h)) => Ok(Some(h.len)),
            // A corrupt copy was quarantined by open_verified: it is not here any more.
            Err(StoreError::NotFound { .. }) | Err(StoreError::Corrupt { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self) -> Result<Box<dyn Iterator<Item = Result<ChunkId>> + Send + '_>> {
        let iter = (0..=255u8).flat_map(move |shard| {
            let ids: Box<dyn Iterator<Item = Result<ChunkId>> + Send> = match self.read_shard(shard)
            {
                Ok(ids) => Box::new(ids.into_iter().map(Ok)),
                Err(e) => Box::new(std::iter::once(Err(e))),
            };
            ids
        });
        Ok(Box::new(iter))
    }

    fn list_shard(&self, shard: u8) -> Result<Vec<ChunkId>> {
        self.read_shard(shard)
    }

    fn verify(&self, id: ChunkId) -> Result<VerifyReport> {
        // No stripe lock while reading: puts and gets of this chunk go on meanwhile. The file
        // stays readable through its open handle even if it is deleted or replaced; the
        // quarantine below checks the inode, so only the copy that was read is moved.
        let c = match self.open_chunk(id) {
            Ok(c) => c,
            Err(StoreError::NotFound { .. }) => {
                return Ok(VerifyReport {
                    outcome: Verification::Absent,
                    bytes_read: 0,
                })
            }
            Err(e) => return Err(e),
        };
        let outcome = match self.check_whole(id, &c) {
            Ok(len) => Verification::Intact { len },
            Err(StoreError::Corrupt { reason, .. }) => {
                match self.quarantine(id, Some(c.ino), &reason) {
                    Quarantined::Moved | Quarantined::Failed => Verification::Corrupt { reason },
                    // Deleted, or replaced by a put (which verifies what it writes), since it
                    // was opened: the copy that was read is no longer this server's copy.
                    Quarantined::Gone => Verification::Absent,
                }
            }
            Err(e) => return Err(e),
        };
        Ok(VerifyReport {
            outcome,
            // At most the whole file (less when the header already failed).
            bytes_read: c.file_len,
        })
    }

    fn delete(&self, id: ChunkId) -> Result<()> {
        let _lock = self.stripe(id);
        self.delete_locked(id)
    }

    fn mark_for_gc(&self, ids: &[ChunkId]) -> Result<u64> {
        self.gc_marks().retain(|_, at| at.elapsed() < GC_MARK_TTL);
        let mut marked = 0;
        for &id in ids {
            let _lock = self.stripe(id);
            if self.chunk_path(id).exists() {
                self.gc_marks().insert(id, Instant::now());
                marked += 1;
            }
        }
        Ok(marked)
    }

    fn stored_at(&self, id: ChunkId) -> Result<Option<SystemTime>> {
        match fs::metadata(self.chunk_path(id)) {
            Ok(m) => m
                .modified()
                .map(Some)
                .map_err(|e| StoreError::io(format!("mtime of chunk {id}"), e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("stat chunk {id}"), e)),
        }
    }

    fn delete_if_marked(&self, id: ChunkId) -> Result<bool> {
        let _lock = self.stripe(id);
        match self.gc_marks().remove(&id) {
            Some(at) if at.elapsed() < GC_MARK_TTL => match self.delete_locked(id) {
                Ok(()) => Ok(true),
                Err(StoreError::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            },
            _ => Ok(false),
        }
    }

    fn stats(&self) -> Result<StoreStats> {
        let fs = statvfs(&self.root)?;
        Ok(StoreStats {
            chunk_count: self.chunk_count.load(Ordering::Relaxed),
            stored_bytes: self.stored_bytes.load(Ordering::Relaxed),
            ..fs
        })
    }
}

/// Capacity / used / free of the file system holding `path`.
fn statvfs(path: &Path) -> Result<StoreStats> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| {
        StoreError::io(
            format!("statvfs {}", path.display()),
            io::Error::from_raw_os_error(e as i32),
        )
    })?;
    let frag = s.fragment_size() as u64;
    let capacity = s.blocks() as u64 * frag;
    let free_all = s.blocks_free() as u64 * frag;
    Ok(StoreStats {
        capacity_bytes: capacity,
        used_bytes: capacity.saturating_sub(free_all),
        free_bytes: s.blocks_available() as u64 * frag,
        chunk_count: 0,
        stored_bytes: 0,
    })
}

/// Loads `server.uuid`, or creates it (random, durably) on first start.
fn load_or_create_uuid(root: &Path) -> Result<String> {
    let path = root.join("server.uuid");
    match fs::read_to_string(&path) {
        Ok(s) => {
            let s = s.trim().to_owned();
            if s.is_empty() {
                return Err(StoreError::InvalidArgument(format!(
                    "{} is empty; remove it to generate a new identity",
                    path.display()
                )));
            }
            Ok(s)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let b: [u8; 16] = rand::random();
            let h = hex::encode(b);
            let uuid = format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            );
            write_file_durably(&path, format!("{uuid}\n").as_bytes())?;
            tracing::info!(%uuid, "created server identity");
            Ok(uuid)
        }
        Err(e) => Err(StoreError::io(format!("read {}", path.display()), e)),
    }
}
