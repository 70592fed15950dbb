//! The open file: the write-back state of a file open on this mount, and the registry of open
//! files ([`OpenFiles`]).
//!
//! Every inode open on this mount has one [`FileState`], shared by all its handles. It holds the
//! *base* (the version and chunk list the dirty data applies to), the file's local size, and per
//! touched slot one of: a dirty buffer (`BytesMut`, up to 4 MiB), an upload in flight, or an
//! uploaded chunk waiting for the commit.
//!
//! Memory is bounded: a slot buffer that fills up is uploaded at once (pipelining), with at most
//! [`MAX_UPLOADS_PER_FILE`] uploads per file and [`super::MAX_UPLOADS_TOTAL`] per mount in
//! flight — a writer that gets ahead waits (backpressure); at most
//! [`MAX_DIRTY_SLOTS_PER_FILE`] partly filled buffers are kept per file before the oldest is
//! uploaded early.
//!
//! Durability contract: `flush` (close) and `fsync` return Ok only after every chunk is
//! acknowledged as durable by its replicas ([`super::upload`]) AND `CommitWrite` made the new
//! version durable in Raft ([`super::commit`]). Any failure (upload, conflict, no space) is
//! logged and returned, and the dirty data of that file is dropped — the file stays at its last
//! committed version, never a mix.
use super::commit::{self, Base, NewVersion};
use super::read_plan::{self, Local};
use super::reader::{self, StoredChunk};
use super::slots::{self, SlotRange};
use super::upload::{self, Uploaded};
use super::{DataPlane, MAX_DIRTY_SLOTS_PER_FILE, MAX_UPLOADS_PER_FILE};
use crate::errno::Errno;
use bytes::{Bytes, BytesMut};
use cairn_common::CHUNK_SIZE;
use cairn_proto::{Attr, SetAttrRequest, Timestamp};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

enum Slot {
    Dirty(BytesMut),
    Uploading {
        data: Bytes,
        task: JoinHandle<Result<Uploaded, Errno>>,
    },
    Uploaded(Uploaded),
}

impl Slot {
    /// The slot as a read sees it.
    fn as_local(&self) -> Local<'_> {
        match self {
            Slot::Dirty(buf) => Local::Bytes(buf),
            Slot::Uploading { data, .. } => Local::Bytes(data),
            Slot::Uploaded(u) => Local::Chunk(&u.chunk),
        }
    }
}

struct FileData {
    base: Option<Base>,
    /// The local size; meaningful while `slots` is not empty.
    size: u64,
    slots: BTreeMap<u64, Slot>,
    mtime: Option<Timestamp>,
    /// A background upload failed; reported by the next write or flush.
    error: Option<Errno>,
    /// A write-back of this file failed and its uncommitted data was dropped. Sticky until the
    /// last handle is released: every later write, flush and fsync fails with it, so the
    /// writer learns of the loss and no later flush commits the rest of its data as a partial
    /// version. (A FLUSH can come from any close of the file — e.g. a forked child closing its
    /// copy of the descriptor — not only from the writer's own close.)
    failed: Option<Errno>,
    /// Set by an open with `O_TRUNC`: the committed version being replaced. `base` is then an
    /// empty version, and the commit turns every slot of the replaced one that was not
    /// rewritten into a hole. Until that commit the file keeps its old content for everyone.
    replaced: Option<Base>,
}

impl FileData {
    /// The slots of `kind` (by index, in order).
    fn slots_where(&self, kind: fn(&Slot) -> bool) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|(_, s)| kind(s))
            .map(|(i, _)| *i)
            .collect()
    }

    /// Every slot as an uploaded chunk, for the commit (EIO if one is not uploaded).
    fn uploaded(&self) -> Result<BTreeMap<u64, Uploaded>, Errno> {
        let mut uploaded = BTreeMap::new();
        for (i, s) in &self.slots {
            match s {
                Slot::Uploaded(u) => {
                    uploaded.insert(*i, u.clone());
                }
                _ => return Err(Errno::EIO),
            }
        }
        Ok(uploaded)
    }
}

fn is_dirty(s: &Slot) -> bool {
    matches!(s, Slot::Dirty(_))
}

fn is_uploading(s: &Slot) -> bool {
    matches!(s, Slot::Uploading { .. })
}

const NO_SIZE: u64 = u64::MAX;

/// Per-inode write/read state shared by all handles of the inode on this mount.
pub struct FileState {
    pub ino: u64,
    data: tokio::sync::Mutex<FileData>,
    /// The local size while dirty (NO_SIZE when clean), readable without the lock (getattr).
    dirty_size: AtomicU64,
    handles: AtomicUsize,
    /// Kernel task ids that wrote the data not yet committed (see [`FileState::flush_concerns`]).
    writers: std::sync::Mutex<HashSet<u32>>,
    /// The upload session of the dirty data (opened by the first chunk stored before the
    /// commit; see [`upload::record_upload`]).
    upload: Arc<tokio::sync::Mutex<Option<u64>>>,
    /// Where the last read of this file ended: a read that starts near it continues a
    /// sequential reader (see [`is_sequential`]).
    read_end: AtomicU64,
}

/// How far from where the last read ended a read may start and still count as sequential: the
/// kernel's readahead sends several reads at once, which may arrive out of order.
const SEQUENTIAL_WINDOW: u64 = 2 * 1024 * 1024;

/// Whether a read at `offset` continues a reader whose last read ended at `last_end`: it starts
/// the file, or starts within [`SEQUENTIAL_WINDOW`] of that end. Random readers fetch only the
/// blocks they read; sequential ones whole chunks, and ahead.
fn is_sequential(offset: u64, last_end: u64) -> bool {
    offset == 0 || offset.abs_diff(last_end) <= SEQUENTIAL_WINDOW
}

impl FileState {
    pub fn new(ino: u64) -> FileState {
        FileState {
            ino,
            data: tokio::sync::Mutex::new(FileData {
                base: None,
                size: 0,
                slots: BTreeMap::new(),
                mtime: None,
                error: None,
                failed: None,
                replaced: None,
            }),
            dirty_size: AtomicU64::new(NO_SIZE),
            handles: AtomicUsize::new(0),
            writers: Default::default(),
            upload: Default::default(),
            read_end: AtomicU64::new(0),
        }
    }

    fn writers(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.writers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that task `tid` (the caller of a WRITE) wrote data to this file.
    pub fn note_writer(&self, tid: u32) {
        self.writers().insert(tid);
    }

    /// Whether a FLUSH sent for a close by task `tid` must commit this file's dirty data.
    ///
    /// The kernel sends FLUSH for *every* close of a descriptor, including a forked child
    /// closing the copy it inherited (every `fork` + `exec` of a process that has the file open
    /// does this). Committing then would publish the writer's half-written data as a version
    /// other readers see. So a close by a process that wrote none of the dirty data does not
    /// commit; the writer's own close, fsync or the last release does. Whenever this cannot be
    /// told for sure (a task id that no longer exists, nothing recorded) it commits.
    pub fn flush_concerns(&self, tid: u32) -> bool {
        let writers: Vec<u32> = self.writers().iter().copied().collect();
        if writers.is_empty() {
            return true;
        }
        let Some(closer) = crate::procs::tgid(tid) else {
            return true;
        };
        writers
            .into_iter()
            .any(|w| crate::procs::tgid(w).is_none_or(|g| g == closer))
    }

    /// The size getattr must report while this file has uncommitted data.
    pub fn dirty_size(&self) -> Option<u64> {
        match self.dirty_size.load(Ordering::Acquire) {
            NO_SIZE => None,
            s => Some(s),
        }
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty_size().is_some()
    }

    /// Close-to-open: a new open of a clean file re-reads the chunk list.
    pub async fn refresh_if_clean(&self) {
        let mut d = self.data.lock().await;
        if d.slots.is_empty() && d.error.is_none() && d.failed.is_none() {
            d.base = None;
        }
    }

    /// At open: a clean file re-reads its chunk list (close-to-open) and returns the committed
    /// version. `None` while this mount has uncommitted data for it (that data's base stays).
    pub async fn open_fresh(&self, dp: &Arc<DataPlane>) -> Result<Option<u64>, Errno> {
        let mut d = self.data.lock().await;
        if !d.slots.is_empty() || d.error.is_some() || d.failed.is_some() {
            return Ok(None);
        }
        let base = commit::load_base(dp, self.ino).await?;
        let version = base.version;
        d.base = Some(base);
        Ok(Some(version))
    }

    /// `open(O_TRUNC)`: this mount's view of the file becomes empty, but nothing is committed:
    /// the truncation is part of the next version, committed with its data by the close.
    ///
    /// ATOMIC OVERWRITE: `cp` over an existing file opens it with `O_TRUNC`. Committing the
    /// truncation at once (as a separate `setattr`) would leave an empty or partial file for
    /// everyone if the copy were interrupted. Deferred, the file shows its whole old content
    /// until the close commits the whole new one.
    pub async fn truncate_on_open(&self, dp: &Arc<DataPlane>) -> Result<(), Errno> {
        let mut d = self.data.lock().await;
        if let Some(e) = d.failed {
            return Err(e);
        }
        // Earlier unwritten data of this mount is superseded by the truncation.
        let in_flight: Vec<u64> = d.slots.keys().copied().collect();
        for slot in in_flight {
            harvest(self.ino, &mut d, slot).await;
        }
        d.slots.clear();
        d.error = None;
        let replaced = match d.replaced.take() {
            Some(r) => r,
            None => ensure_base(dp, self.ino, &mut d).await?.clone(),
        };
        d.base = Some(Base::empty(replaced.version));
        d.replaced = Some(replaced);
        d.size = 0;
        d.mtime = Some(cairn_common::time::now());
        self.dirty_size.store(0, Ordering::Release);
        Ok(())
    }

    /// Forget the base after a metadata change made elsewhere (truncate, setattr).
    pub async fn invalidate(&self) {
        let mut d = self.data.lock().await;
        if d.slots.is_empty() {
            d.base = None;
        }
    }

    /// Sets the base of a newly created, empty file (saves a GetChunks).
    pub async fn set_empty_base(&self, version: u64) {
        let mut d = self.data.lock().await;
        if d.slots.is_empty() {
            d.base = Some(Base::empty(version));
        }
    }

    /// Writes `data` at `offset` into the dirty buffers.
    pub async fn write(&self, dp: &Arc<DataPlane>, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(Errno(libc::EFBIG))?;
        let mut d = self.data.lock().await;
        if let Some(e) = d.failed.or(d.error) {
            return Err(e);
        }
        let base_size = ensure_base(dp, self.ino, &mut d).await?.size;
        if d.slots.is_empty() {
            d.size = base_size;
        }
        let mut pos = 0usize;
        for r in slots::split(offset, data.len() as u64) {
            let piece = &data[pos..pos + r.len];
            pos += r.len;
            self.write_slot(dp, &mut d, r, piece).await?;
        }
        d.size = d.size.max(end);
        d.mtime = Some(cairn_common::time::now());
        self.dirty_size.store(d.size, Ordering::Release);
        Ok(data.len() as u32)
    }

    async fn write_slot(
        &self,
        dp: &Arc<DataPlane>,
        d: &mut FileData,
        r: SlotRange,
        data: &[u8],
    ) -> Result<(), Errno> {
        if !matches!(d.slots.get(&r.slot), Some(Slot::Dirty(_))) {
            let buf = self.open_slot(dp, d, r).await?;
            d.slots.insert(r.slot, Slot::Dirty(buf));
            self.limit_dirty_slots(dp, d, r.slot).await?;
        }
        let full = match d.slots.get_mut(&r.slot) {
            Some(Slot::Dirty(buf)) => {
                slots::apply_write(buf, r.off, data);
                buf.len() == CHUNK_SIZE
            }
            _ => return Err(Errno::EIO),
        };
        if full {
            self.start_upload(dp, d, r.slot, true).await?;
        }
        Ok(())
    }

    /// A dirty buffer for a slot that has none, holding the slot's current bytes when the write
    /// does not overwrite them all.
    async fn open_slot(
        &self,
        dp: &Arc<DataPlane>,
        d: &mut FileData,
        r: SlotRange,
    ) -> Result<BytesMut, Errno> {
        let (existing, source): (usize, Option<Result<Bytes, StoredChunk>>) =
            match d.slots.remove(&r.slot) {
                Some(Slot::Uploading { data, .. }) => (data.len(), Some(Ok(data))),
                Some(Slot::Uploaded(u)) => (u.chunk.len as usize, Some(Err(u.chunk))),
                Some(Slot::Dirty(buf)) => return Ok(buf),
                None => match d.base.as_ref().and_then(|b| b.slots.get(&r.slot)) {
                    Some(c) => (
                        slots::existing_len(r.slot, d.size, c.len),
                        Some(Err(c.clone())),
                    ),
                    None => (0, None),
                },
            };
        let needed = existing.max(r.off + r.len);
        let mut buf = BytesMut::with_capacity(slots::initial_capacity(needed, r.len));
        if slots::needs_load(existing, r.off, r.len) {
            let bytes = match source {
                Some(Ok(b)) => b,
                Some(Err(chunk)) => reader::fetch_chunk(dp, &chunk).await?,
                None => Bytes::new(),
            };
            let mut out = Vec::new();
            slots::read_padded(&bytes, 0, existing, &mut out);
            buf.extend_from_slice(&out);
        }
        Ok(buf)
    }

    /// Uploads the oldest partly filled buffer when a file holds too many.
    async fn limit_dirty_slots(
        &self,
        dp: &Arc<DataPlane>,
        d: &mut FileData,
        keep: u64,
    ) -> Result<(), Errno> {
        let dirty: Vec<u64> = d
            .slots_where(is_dirty)
            .into_iter()
            .filter(|i| *i != keep)
            .collect();
        if dirty.len() >= MAX_DIRTY_SLOTS_PER_FILE {
            self.start_upload(dp, d, dirty[0], true).await?;
        }
        Ok(())
    }

    /// Freezes a dirty buffer and uploads it in the background (or, at the last flush of a
    /// small file, keeps it for the commit). With `bounded`, first waits until fewer than
    /// MAX_UPLOADS_PER_FILE uploads of this file are in flight.
    async fn start_upload(
        &self,
        dp: &Arc<DataPlane>,
        d: &mut FileData,
        slot: u64,
        bounded: bool,
    ) -> Result<(), Errno> {
        if bounded {
            loop {
                let in_flight = d.slots_where(is_uploading);
                if in_flight.len() < MAX_UPLOADS_PER_FILE {
                    break;
                }
                harvest(self.ino, d, in_flight[0]).await;
            }
        }
        let Some(Slot::Dirty(buf)) = d.slots.remove(&slot) else {
            return Ok(());
        };
        let data = buf.freeze();
        // SMALL FILES INLINE: the last flush of a file of at most `inline_max` bytes (one
        // slot) sends its bytes with the commit instead of to chunk servers; the commit's Raft
        // entry makes them durable. Uploads while the file is still being written (`bounded`)
        // always go to chunk servers: they are recorded in the upload session, which holds
        // chunks only.
        // Nothing is sent now, so the slot is ready at once: no upload permit, no task.
        if !bounded
            && !data.is_empty()
            && d.size <= dp.inline_max as u64
            && data.len() <= dp.inline_max
        {
            d.slots
                .insert(slot, Slot::Uploaded(upload::Uploaded::inline(data)));
            return Ok(());
        }
        let permit = dp
            .upload_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Errno::ESHUTDOWN)?;
        // A chunk stored while the file is still being written is recorded in the file's
        // upload session, so it survives this mount (see `record_upload`). Chunks stored by the
        // flush itself are committed right away and need no record.
        let session = bounded.then(|| {
            let base = d.base.as_ref().map(|b| b.version).unwrap_or(0);
            (self.upload.clone(), base)
        });
        let task = {
            let dp = dp.clone();
            let data = data.clone();
            let ino = self.ino;
            tokio::spawn(async move {
                let r = upload::upload_chunk(&dp, ino, slot, data).await;
                drop(permit);
                if let (Ok(u), Some((session, base))) = (&r, session) {
                    upload::record_upload(&dp, ino, base, &session, slot, u).await;
                }
                r
            })
        };
        d.slots.insert(slot, Slot::Uploading { data, task });
        Ok(())
    }

    /// Reads `[offset, offset + len)` as this mount sees it: dirty and uploaded data first,
    /// then the base version's chunks; holes and bytes past a chunk's `len` are zeros.
    pub async fn read(&self, dp: &Arc<DataPlane>, offset: u64, len: u32) -> Result<Vec<u8>, Errno> {
        let last_end = self.read_end.swap(offset + len as u64, Ordering::Relaxed);
        let sequential = is_sequential(offset, last_end);
        let (pieces, prefetch) = {
            let mut d = self.data.lock().await;
            let base_size = ensure_base(dp, self.ino, &mut d).await?.size;
            let size = if d.slots.is_empty() {
                base_size
            } else {
                d.size
            };
            plan_read(&d, size, offset, len as u64)
        };
        if sequential {
            for next in prefetch {
                reader::prefetch(dp, next);
            }
        }
        read_plan::execute(dp, pieces, !sequential).await
    }

    /// Uploads every dirty slot, waits for all uploads, and commits the new version.
    pub async fn flush(&self, dp: &Arc<DataPlane>) -> Result<(), Errno> {
        self.flush_then(dp, None).await.map(|_| ())
    }

    /// [`FileState::flush`], applying the attribute change `then` in the same commit when there
    /// is data to commit. Returns the inode's attributes after it when it was applied (`None`:
    /// nothing was committed, or the change could not travel with the commit; the caller
    /// applies it by itself).
    pub async fn flush_then(
        &self,
        dp: &Arc<DataPlane>,
        then: Option<SetAttrRequest>,
    ) -> Result<Option<Attr>, Errno> {
        let mut d = self.data.lock().await;
        if let Some(e) = d.failed {
            return Err(e);
        }
        if d.slots.is_empty() && d.error.is_none() && d.replaced.is_none() {
            return Ok(None);
        }
        for slot in d.slots_where(is_dirty) {
            if let Err(e) = self.start_upload(dp, &mut d, slot, false).await {
                d.error.get_or_insert(e);
            }
        }
        for slot in d.slots_where(is_uploading) {
            harvest(self.ino, &mut d, slot).await;
        }
        let upload = self.upload.lock().await.take();
        let result = match d.error.take() {
            Some(e) => Err(e),
            None => self.commit(dp, &mut d, then, upload).await,
        };
        if let (Err(_), Some(upload)) = (&result, upload) {
            upload::abort_upload(dp, self.ino, upload).await;
        }
        if let Err(e) = result {
            tracing::error!(
                inode = self.ino,
                errno = e.0,
                dirty_slots = d.slots.len(),
                "write-back failed; uncommitted data of this file is dropped"
            );
            d.base = None;
            d.failed = Some(e);
        }
        d.replaced = None;
        d.slots.clear();
        d.mtime = None;
        self.dirty_size.store(NO_SIZE, Ordering::Release);
        self.writers().clear();
        result
    }

    /// Commits the uploaded slots as a new version on top of the base.
    /// With `then`, the attribute change is applied in the same entry; its result is returned.
    async fn commit(
        &self,
        dp: &Arc<DataPlane>,
        d: &mut FileData,
        then: Option<SetAttrRequest>,
        upload: Option<u64>,
    ) -> Result<Option<Attr>, Errno> {
        let version = NewVersion {
            ino: self.ino,
            base: d.base.clone().ok_or(Errno::EIO)?,
            replaced: d.replaced.clone(),
            uploaded: d.uploaded()?,
            size: d.size,
            mtime: d.mtime,
            then,
            upload,
        };
        let (base, attr) = commit::commit(dp, version).await?;
        d.base = Some(base);
        Ok(attr)
    }
}

/// Loads the base (GetChunks) if this file has none yet.
async fn ensure_base<'a>(
    dp: &Arc<DataPlane>,
    ino: u64,
    d: &'a mut FileData,
) -> Result<&'a Base, Errno> {
    if d.base.is_none() {
        d.base = Some(commit::load_base(dp, ino).await?);
    }
    d.base.as_ref().ok_or(Errno::EIO)
}

/// The read plan of `[offset, offset + len)` of a file of `size` bytes in state `d`.
fn plan_read(
    d: &FileData,
    size: u64,
    offset: u64,
    len: u64,
) -> (Vec<read_plan::Piece>, Vec<StoredChunk>) {
    let empty = BTreeMap::new();
    let base = d.base.as_ref().map(|b| &b.slots).unwrap_or(&empty);
    read_plan::plan(
        |slot| d.slots.get(&slot).map(Slot::as_local),
        base,
        size,
        offset,
        len,
    )
}

/// Waits for the upload of `slot` and records its outcome.
async fn harvest(ino: u64, d: &mut FileData, slot: u64) {
    let Some(Slot::Uploading { task, .. }) = d.slots.remove(&slot) else {
        return;
    };
    match task.await {
        Ok(Ok(u)) => {
            d.slots.insert(slot, Slot::Uploaded(u));
        }
        Ok(Err(e)) => {
            d.error.get_or_insert(e);
        }
        Err(e) => {
            tracing::error!(inode = ino, slot, error = %e, "upload task failed");
            d.error.get_or_insert(Errno::EIO);
        }
    }
}

/// The [`FileState`]s of this mount by inode, with how many handles each has open.
#[derive(Default)]
pub struct OpenFiles {
    map: Mutex<HashMap<u64, Arc<FileState>>>,
}

impl OpenFiles {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<FileState>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state of `ino` with one more open handle.
    pub fn open(&self, ino: u64) -> Arc<FileState> {
        let mut m = self.lock();
        let f = m
            .entry(ino)
            .or_insert_with(|| Arc::new(FileState::new(ino)))
            .clone();
        f.handles.fetch_add(1, Ordering::AcqRel);
        f
    }

    pub fn get(&self, ino: u64) -> Option<Arc<FileState>> {
        self.lock().get(&ino).cloned()
    }

    /// Drops one handle and returns how many are left; forgets the state when it was the last
    /// one and nothing is dirty.
    pub fn release(&self, ino: u64) -> usize {
        let mut m = self.lock();
        let Some(f) = m.get(&ino) else {
            return 0;
        };
        let left = f.handles.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        if left == 0 && !f.is_dirty() {
            m.remove(&ino);
        }
        left
    }

    /// Forgets the state of `ino` if no handle is open and nothing is dirty (after the flush
    /// of a last release).
    pub fn forget_if_unused(&self, ino: u64) {
        let mut m = self.lock();
        if m.get(&ino)
            .is_some_and(|f| f.handles.load(Ordering::Acquire) == 0 && !f.is_dirty())
        {
            m.remove(&ino);
        }
    }

    pub fn all(&self) -> Vec<Arc<FileState>> {
        self.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_near_where_the_last_one_ended_are_sequential() {
        assert!(is_sequential(0, 123 << 20));
        assert!(is_sequential(4096, 4096));
        // Readahead reads that arrive a little out of order.
        assert!(is_sequential(3 << 20, 4 << 20));
        assert!(is_sequential(5 << 20, 4 << 20));
        // Jumps are random reads.
        assert!(!is_sequential(700 << 20, 4096));
        assert!(!is_sequential(4096, 700 << 20));
    }
    use crate::meta::Meta;

    #[tokio::test]
    async fn writes_buffer_locally_and_report_the_dirty_size() {
        let dp = DataPlane::new(Meta::new(vec![]));
        let f = FileState::new(9);
        f.set_empty_base(1).await;
        assert_eq!(f.dirty_size(), None);
        assert_eq!(f.write(&dp, 10, b"hello").await, Ok(5));
        assert_eq!(f.dirty_size(), Some(15));
        assert_eq!(f.write(&dp, 0, b"ab").await, Ok(2));
        let got = f.read(&dp, 0, 100).await.unwrap();
        assert_eq!(got, b"ab\0\0\0\0\0\0\0\0hello");
        let got = f.read(&dp, 11, 2).await.unwrap();
        assert_eq!(got, b"el");
    }

    /// A failed write-back poisons the file until its last handle is released: the writer's
    /// next write and flush fail too, and nothing written afterwards is committed.
    #[tokio::test]
    async fn a_failed_write_back_stays_failed_until_the_last_release() {
        // No meta servers: every commit fails at once.
        let dp = DataPlane::new(Meta::new(vec![]));
        let files = OpenFiles::default();
        let f = files.open(9);
        f.set_empty_base(1).await;
        assert_eq!(f.write(&dp, 0, b"first").await, Ok(5));
        let e = f.flush(&dp).await.unwrap_err();
        assert_eq!(
            f.dirty_size(),
            None,
            "the dropped data is not reported as dirty"
        );
        assert_eq!(f.write(&dp, 5, b"second").await, Err(e));
        assert_eq!(f.flush(&dp).await, Err(e));
        assert_eq!(f.dirty_size(), None);
        files.release(9);
        assert!(files.get(9).is_none(), "forgotten at the last release");
        let g = files.open(9);
        g.set_empty_base(1).await;
        assert_eq!(
            g.write(&dp, 0, b"again").await,
            Ok(5),
            "a new open starts clean"
        );
    }

    #[test]
    fn open_files_are_forgotten_after_the_last_clean_release() {
        let files = OpenFiles::default();
        let a = files.open(5);
        let b = files.open(5);
        assert!(Arc::ptr_eq(&a, &b));
        files.release(5);
        assert!(files.get(5).is_some());
        files.release(5);
        assert!(files.get(5).is_none());
    }
}
