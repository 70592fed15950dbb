//! [`FileStore`]: the chunk store on a local file system — one file per chunk, written and
//! deleted durably, read verified, quarantined when found corrupt.
//!
//! # On-disk layout (under the data directory)
//!
//! ```text
//! server.uuid                     random identity, created once (temp + fsync + rename)
//! server.id                       id the metadata cluster assigned (informational)
//! chunks/<2 hex>/<64 hex>         one file per chunk (see `format.rs`); the subdirectory is
//!                                 the id's first byte
//! tmp/<64 hex>.<random>.tmp       chunk files being written; anything here at startup is
//!                                 the leftover of a crashed put and is deleted
//! quarantine/<64 hex>.<unix ns>   chunks that failed verification, moved aside (never deleted)
//! ```
//!
//! Every file and directory becomes durable through [`cairn_common::durable`]; where a chunk is
//! made durable is [`FileStore::write_chunk_durably`], where it is durably removed
//! [`FileStore::remove_chunk_durably`]. Writers of one id (put, delete, quarantine) are
//! serialised by a striped lock; readers take none. A move to quarantine only moves the inode
//! that was found corrupt, so a good copy a concurrent put wrote in its place stays.
use super::format::{self, Header};
use super::gc_marks::GcMarks;
use super::{
    ChunkRead, ChunkStore, CorruptChunk, PutOutcome, Result, StoreError, StoreOptions, StoreStats,
    Verification, VerifyReport,
};
use bytes::Bytes;
use cairn_common::block_tree::BlockCv;
use cairn_common::durable::{self, TempFile};
use cairn_common::{ChunkId, CHUNK_SIZE};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Number of lock stripes serialising writers (put, delete, quarantine) of the same id.
const LOCK_STRIPES: usize = 64;

/// The chunk store on a local file system. See the module docs for the layout.
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
    /// Garbage-collection marks. Set and cleared under the id's stripe lock, so a put and a
    /// marked delete of one id never interleave (see [`ChunkStore::mark_for_gc`]).
    gc_marks: GcMarks,
}

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

impl FileStore {
    /// Opens (creating if needed) the store in `root`: creates the directories durably,
    /// deletes leftovers of crashed puts in `tmp/`, loads or creates `server.uuid`, and counts
    /// the stored chunks.
    pub fn open(root: impl Into<PathBuf>, opts: StoreOptions) -> Result<FileStore> {
        let root: PathBuf = root.into();
        if !root.exists() {
            // The data directory's own entry must be durable before any chunk in it is acked.
            durable::create_dir_all(&root)?;
        }
        let chunks = root.join("chunks");
        let tmp = root.join("tmp");
        let quarantine = root.join("quarantine");
        for d in [&chunks, &tmp, &quarantine] {
            durable::create_dir(d)?;
        }
        // All 256 fan-out directories exist before the first put, so a put never races with
        // another put over creating (and fsyncing) its subdirectory.
        for b in 0..=255u8 {
            durable::create_dir(&chunks.join(format!("{b:02x}")))?;
        }

        // A crash before rename leaves a temp file here; it was never acknowledged, so it goes.
        // One directory fsync covers every removal.
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
            durable::fsync_dir(&tmp)?;
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
            gc_marks: GcMarks::default(),
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

    /// Writes a new chunk file so that it is durable before this returns: the one place a
    /// chunk is made durable. The steps are [`cairn_common::durable`]'s, each for a reason:
    ///
    /// 1. Write header + data to a [`TempFile`] in `tmp/` with a random suffix: a crash or
    ///    error midway never leaves a partial file under the chunk's final name; concurrent
    ///    writers never share a temp file; the temp file is deleted on any failure (ENOSPC
    ///    included).
    /// 2. fsync the temp file: its data and length are on disk before it gets its name, so
    ///    after a crash the final name never points at unwritten blocks.
    /// 3. `rename` into `chunks/<2 hex>/`: atomic, so readers see either no chunk or all of it.
    /// 4. fsync `chunks/<2 hex>/`: the rename itself (the new directory entry) is durable; the
    ///    subdirectory's own entry in `chunks/` was made durable when it was created.
    ///
    /// Steps 2–4 are [`TempFile::publish`]. Only then may the caller acknowledge the put.
    fn write_chunk_durably(&self, id: ChunkId, data: &[u8], cvs: &[BlockCv]) -> Result<u64> {
        let header = format::encode_header(id, data.len(), cvs);
        let total = (header.len() + data.len()) as u64;
        self.check_space(total)?;

        let final_path = self.chunk_path(id);
        let subdir = final_path.parent().unwrap_or(&self.chunks);
        // The fan-out directory was created at open; recreate it durably if someone removed it.
        durable::create_dir(subdir)?;

        // Step 1: `tmp/<64 hex>.<random>.tmp`, removed on drop unless published.
        let mut tmp = TempFile::create_in(&self.tmp, &id.to_hex())?;
        tmp.write_all(&header)?;
        tmp.write_all(data)?;
        // Steps 2–4: fsync, atomic rename, fsync of the fan-out directory.
        tmp.publish(&final_path)?;
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
        let h = format::read_header(id, &c.file, c.file_len);
        let h = self.quarantine_on_corrupt(id, Some(c.ino), h)?;
        Ok((c, h))
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
        // A move between two directories: the rename, then both directories fsynced, so after
        // a crash the copy is in exactly one of them (the file itself is not rewritten).
        let moved = fs::rename(&path, &dest)
            .map_err(|e| StoreError::io("move chunk to quarantine", e))
            .and_then(|()| durable::fsync_dir(&self.quarantine).map_err(StoreError::from))
            .and_then(|()| {
                durable::fsync_dir(path.parent().unwrap_or(&self.chunks)).map_err(StoreError::from)
            });
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

    /// Fully verifies a stored chunk (header, every block, id); a corrupt copy is quarantined.
    /// `Ok(false)`: no intact copy is stored. The caller holds the id's stripe lock.
    fn verify_existing_locked(&self, id: ChunkId) -> Result<bool> {
        let c = match self.open_chunk(id) {
            Ok(c) => c,
            Err(StoreError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        match format::check_whole(id, &c.file, c.file_len) {
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

    /// Rewrites the intact copy of `id` (inode `ino`, just verified: `data`) in the current
    /// chunk format, so that readers get a block proof for it. Durable like a put (the new file
    /// replaces the old one atomically); skipped when the copy was replaced or deleted since it
    /// was read. A failure is logged and changes nothing: the old file stays readable.
    fn upgrade_to_current_format(&self, id: ChunkId, ino: u64, data: &[u8]) {
        let _lock = self.stripe(id);
        match fs::metadata(self.chunk_path(id)) {
            Ok(md) if md.ino() == ino => {}
            _ => return,
        }
        let result = format::hash_for_put(id, data)
            .map_err(|_| StoreError::InvalidArgument("verified data changed".into()))
            .and_then(|cvs| self.write_chunk_durably(id, data, &cvs));
        match result {
            // Same header length in both formats: the stored byte count is unchanged.
            Ok(_) => tracing::debug!(chunk = %id, "chunk rewritten in the current format"),
            Err(e) => {
                tracing::warn!(chunk = %id, error = %e, "could not rewrite a chunk in the current format")
            }
        }
    }

    /// Removes a chunk file so that the removal is durable before this returns
    /// ([`durable::remove_durably`]): `unlink`, then fsync the fan-out directory — an unlink is
    /// only a change to the directory, and until the directory is synced a crash can bring the
    /// file back (a surplus replica the metadata cluster already forgot, or garbage it was
    /// told is gone). The caller holds the id's stripe lock. Returns the bytes freed.
    fn remove_chunk_durably(&self, id: ChunkId) -> Result<u64> {
        let path = self.chunk_path(id);
        let size = match fs::metadata(&path) {
            Ok(md) => md.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { id })
            }
            Err(e) => return Err(StoreError::io("stat chunk file", e)),
        };
        durable::remove_durably(&path)?;
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
        // One pass over the bytes: the block chaining values, combined into the id.
        let cvs = format::hash_for_put(id, &data).map_err(|actual| {
            StoreError::InvalidArgument(format!(
                "data does not hash to chunk id {id} (it hashes to {actual})"
            ))
        })?;
        let _lock = self.stripe(id);
        // GC SAFETY: a put clears the id's mark before anything else, under the stripe lock, so
        // the copy it leaves (new or already present) is never taken by a marked delete that
        // was decided before this put. The meta cluster refuses commits of uploads older than
        // the collection, so the marked delete of a copy put *before* the mark loses nothing.
        self.gc_marks.clear(id);
        if self.verify_existing_locked(id)? {
            return Ok(PutOutcome::AlreadyPresent);
        }
        let written = self.write_chunk_durably(id, &data, &cvs)?;
        self.chunk_count.fetch_add(1, Ordering::Relaxed);
        self.stored_bytes.fetch_add(written, Ordering::Relaxed);
        tracing::debug!(chunk = %id, len = data.len(), "chunk stored");
        Ok(PutOutcome::Stored)
    }

    fn read(&self, id: ChunkId, offset: u64, len: u64, want_proof: bool) -> Result<ChunkRead> {
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
        let r = format::read_range(id, &c.file, &h, offset, end);
        let data = self.quarantine_on_corrupt(id, Some(c.ino), r)?;
        let block_cvs = match h.block_cvs() {
            Some(cvs) if want_proof => cvs.concat(),
            _ => Vec::new(),
        };
        Ok(ChunkRead {
            data,
            stored_len: h.len,
            block_cvs,
        })
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
        let outcome = match format::check_whole(id, &c.file, c.file_len) {
            Ok(checked) => {
                if checked.version == format::FORMAT_V1 {
                    self.upgrade_to_current_format(id, c.ino, &checked.data);
                }
                Verification::Intact { len: checked.len }
            }
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
        self.gc_marks.expire();
        let mut marked = 0;
        for &id in ids {
            let _lock = self.stripe(id);
            if self.chunk_path(id).exists() {
                self.gc_marks.mark(id);
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
        if !self.gc_marks.take_fresh(id) {
            return Ok(false);
        }
        match self.delete_locked(id) {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
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
            durable::write_atomically(&path, format!("{uuid}\n").as_bytes())?;
            tracing::info!(%uuid, "created server identity");
            Ok(uuid)
        }
        Err(e) => Err(StoreError::io(format!("read {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scrub_rewrites_a_version_1_chunk_in_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), StoreOptions::default()).unwrap();
        let data: Vec<u8> = (0..3 * cairn_common::BLOCK_SIZE + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let id = ChunkId::of(&data);
        store.put(id, Bytes::from(data.clone())).unwrap();
        // What an older server left: the same chunk in format 1.
        let path = store.chunk_path(id);
        let mut v1 = format::encode_v1_header(id, &data);
        v1.extend_from_slice(&data);
        fs::write(&path, &v1).unwrap();
        let version =
            |p: &Path| u32::from_le_bytes(fs::read(p).unwrap()[8..12].try_into().unwrap());
        assert_eq!(version(&path), format::FORMAT_V1);
        // Readable, but without a block proof.
        let r = store.read(id, 0, 0, true).unwrap();
        assert_eq!((&r.data[..], r.block_cvs.len()), (&data[..], 0));

        let report = store.verify(id).unwrap();
        assert_eq!(
            report.outcome,
            Verification::Intact {
                len: data.len() as u64
            }
        );
        assert_eq!(version(&path), format::FORMAT_VERSION);
        let r = store.read(id, 65536, 100, true).unwrap();
        assert_eq!(&r.data[..], &data[65536..65636]);
        let cvs = cairn_common::block_tree::VerifiedCvs::check(id, data.len() as u64, &r.block_cvs)
            .expect("a proof bound to the id");
        cvs.check_blocks(1, 1, &data[65536..131072]).unwrap();
        assert_eq!(store.stats().unwrap().chunk_count, 1);
    }
}
