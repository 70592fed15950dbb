//! The chunked write path, with client fan-out replication and commit on flush/fsync/close.
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
//! acknowledged as durable by its replicas AND `CommitWrite` made the new version durable in
//! Raft. Any failure (upload, conflict, no space) is logged and returned, and the dirty data of
//! that file is dropped — the file stays at its last committed version, never a mix.
use super::reader::{self, Piece, StoredChunk};
use super::slots::{self, SlotRange};
use super::{DataPlane, MAX_DIRTY_SLOTS_PER_FILE, MAX_UPLOADS_PER_FILE};
use crate::errno::Errno;
use bytes::{Bytes, BytesMut};
use cairn_common::{ChunkId, ErrorKind, CHUNK_SIZE};
use cairn_proto::{
    Attr, ChunkLocation, ChunkRef, CommitWriteRequest, GetChunksRequest, PrepareWriteRequest,
    PutChunkRequest, SetAttrRequest, SlotUpdate, Timestamp,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// A committed version of a file: what dirty data applies to.
#[derive(Debug, Clone)]
pub struct Base {
    pub version: u64,
    pub size: u64,
    pub slots: BTreeMap<u64, StoredChunk>,
}

impl Base {
    /// The file's content identity: size and (slot, chunk id, len) list.
    fn same_content(&self, other: &Base) -> bool {
        self.size == other.size
            && self.slots.len() == other.slots.len()
            && self
                .slots
                .iter()
                .zip(other.slots.iter())
                .all(|((i, a), (j, b))| i == j && a.id == b.id && a.len == b.len)
    }
}

/// A chunk durable on its replicas, not yet part of a committed version.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The chunk with every location known to hold it (for reads before the commit).
    pub chunk: StoredChunk,
    /// The servers this upload stored it on. Replicas the cluster already listed are not
    /// repeated: a stale "already stored" answer could name a copy repair has since removed or
    /// one found corrupt, and re-listing it would advertise a copy that is not there.
    pub replicas: Vec<u64>,
    /// The GC ticket of the first placement (before any put): echoed in the commit so the
    /// cluster can refuse it if the chunk was collected after this upload began.
    pub ticket: u64,
}

impl Uploaded {
    /// This chunk as the update of slot `index` (in a commit or an upload record).
    pub fn to_update(&self, index: u64) -> SlotUpdate {
        SlotUpdate {
            index,
            chunk: Some(ChunkRef {
                id: self.chunk.id.as_bytes().to_vec(),
                len: self.chunk.len,
                stored_len: self.chunk.stored_len,
            }),
            replicas: self.replicas.clone(),
            ticket: self.ticket,
        }
    }
}

enum Slot {
    Dirty(BytesMut),
    Uploading {
        data: Bytes,
        task: JoinHandle<Result<Uploaded, Errno>>,
    },
    Uploaded(Uploaded),
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
    /// commit; see [`record_upload`]).
    upload: Arc<tokio::sync::Mutex<Option<u64>>>,
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
        let base = load_base(dp, self.ino).await?;
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
        d.base = Some(Base {
            version: replaced.version,
            size: 0,
            slots: BTreeMap::new(),
        });
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
            d.base = Some(Base {
                version,
                size: 0,
                slots: BTreeMap::new(),
            });
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
            .slots
            .iter()
            .filter(|(i, s)| matches!(s, Slot::Dirty(_)) && **i != keep)
            .map(|(i, _)| *i)
            .collect();
        if dirty.len() >= MAX_DIRTY_SLOTS_PER_FILE {
            self.start_upload(dp, d, dirty[0], true).await?;
        }
        Ok(())
    }

    /// Freezes a dirty buffer and uploads it in the background. With `bounded`, first waits
    /// until fewer than MAX_UPLOADS_PER_FILE uploads of this file are in flight.
    async fn start_upload(
        &self,
        dp: &Arc<DataPlane>,
        d: &mut FileData,
        slot: u64,
        bounded: bool,
    ) -> Result<(), Errno> {
        if bounded {
            loop {
                let in_flight: Vec<u64> = d
                    .slots
                    .iter()
                    .filter(|(_, s)| matches!(s, Slot::Uploading { .. }))
                    .map(|(i, _)| *i)
                    .collect();
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
                let r = upload_chunk(&dp, ino, slot, data).await;
                drop(permit);
                if let (Ok(u), Some((session, base))) = (&r, session) {
                    record_upload(&dp, ino, base, &session, slot, u).await;
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
        let (pieces, prefetch) = {
            let mut d = self.data.lock().await;
            let base = ensure_base(dp, self.ino, &mut d).await?;
            let size = base.size;
            let size = if d.slots.is_empty() { size } else { d.size };
            plan_read(&d, size, offset, len as u64)
        };
        if let Some(next) = prefetch {
            reader::prefetch(dp, next);
        }
        reader::execute(dp, pieces).await
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
        let dirty: Vec<u64> = d
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Dirty(_)))
            .map(|(i, _)| *i)
            .collect();
        for slot in dirty {
            if let Err(e) = self.start_upload(dp, &mut d, slot, false).await {
                d.error.get_or_insert(e);
            }
        }
        let uploading: Vec<u64> = d
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Uploading { .. }))
            .map(|(i, _)| *i)
            .collect();
        for slot in uploading {
            harvest(self.ino, &mut d, slot).await;
        }
        let upload = self.upload.lock().await.take();
        let result = match d.error.take() {
            Some(e) => Err(e),
            None => commit(dp, self.ino, &mut d, then, upload).await,
        };
        if let (Err(_), Some(upload)) = (&result, upload) {
            abort_upload(dp, self.ino, upload).await;
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
}

/// Loads the base (GetChunks) if this file has none yet.
async fn ensure_base<'a>(
    dp: &Arc<DataPlane>,
    ino: u64,
    d: &'a mut FileData,
) -> Result<&'a Base, Errno> {
    if d.base.is_none() {
        d.base = Some(load_base(dp, ino).await?);
    }
    d.base.as_ref().ok_or(Errno::EIO)
}

/// The current committed version of `ino` and its chunk list.
pub async fn load_base(dp: &Arc<DataPlane>, ino: u64) -> Result<Base, Errno> {
    let reply = dp
        .meta
        .call(|mut c| async move { c.get_chunks(GetChunksRequest { ino }).await })
        .await
        .map_err(|s| {
            tracing::debug!(inode = ino, error = %s.message(), "GetChunks failed");
            Errno::from(&s)
        })?;
    let attr = reply.attr.ok_or_else(|| {
        tracing::error!(inode = ino, "GetChunks reply without attributes");
        Errno::EIO
    })?;
    if reply.chunk_size as usize != CHUNK_SIZE {
        tracing::error!(
            inode = ino,
            chunk_size = reply.chunk_size,
            "unexpected chunk size"
        );
        return Err(Errno::EIO);
    }
    let mut slots = BTreeMap::new();
    for s in reply.slots {
        let Some(c) = s.chunk else { continue };
        let id = ChunkId::from_bytes(&c.id).map_err(|e| {
            tracing::error!(inode = ino, slot = s.index, error = %e, "bad chunk id from meta");
            Errno::EIO
        })?;
        slots.insert(
            s.index,
            StoredChunk {
                id,
                len: c.len,
                stored_len: c.stored_len,
                locations: Arc::from(s.locations),
            },
        );
    }
    Ok(Base {
        version: attr.version,
        size: attr.size,
        slots,
    })
}

/// The pieces of a read of `[offset, offset + len)` of a file of `size` bytes, and the chunk
/// after the last one read (to prefetch).
fn plan_read(d: &FileData, size: u64, offset: u64, len: u64) -> (Vec<Piece>, Option<StoredChunk>) {
    let n = slots::clamp_read(offset, len, size);
    let mut pieces = Vec::new();
    let mut last_slot = None;
    let empty = BTreeMap::new();
    let base_slots = d.base.as_ref().map(|b| &b.slots).unwrap_or(&empty);
    for r in slots::split(offset, n) {
        let in_file = slots::existing_len(r.slot, size, u32::MAX);
        match d.slots.get(&r.slot) {
            Some(Slot::Dirty(buf)) => data_pieces(&buf[..buf.len().min(in_file)], r, &mut pieces),
            Some(Slot::Uploading { data, .. }) => {
                let visible = data.len().min(in_file);
                data_pieces(&data[..visible], r, &mut pieces)
            }
            Some(Slot::Uploaded(u)) => chunk_pieces(&u.chunk, in_file, r, &mut pieces),
            None => match base_slots.get(&r.slot) {
                Some(c) => {
                    chunk_pieces(c, in_file, r, &mut pieces);
                    last_slot = Some(r.slot);
                }
                None => pieces.push(Piece::Zeros(r.len)),
            },
        }
    }
    let prefetch = last_slot
        .and_then(|s| base_slots.get(&(s + 1)))
        .filter(|_| (offset + n) % CHUNK_SIZE as u64 > CHUNK_SIZE as u64 / 2)
        .cloned();
    (pieces, prefetch)
}

fn data_pieces(visible: &[u8], r: SlotRange, out: &mut Vec<Piece>) {
    let end = (r.off + r.len).min(visible.len());
    if r.off < end {
        out.push(Piece::Data(Bytes::copy_from_slice(&visible[r.off..end])));
    }
    let got = end.saturating_sub(r.off);
    if got < r.len {
        out.push(Piece::Zeros(r.len - got));
    }
}

fn chunk_pieces(c: &StoredChunk, in_file: usize, r: SlotRange, out: &mut Vec<Piece>) {
    let visible = in_file.min(c.len as usize);
    let end = (r.off + r.len).min(visible);
    if r.off < end {
        out.push(Piece::Chunk {
            chunk: c.clone(),
            off: r.off,
            len: end - r.off,
        });
    }
    let got = end.saturating_sub(r.off);
    if got < r.len {
        out.push(Piece::Zeros(r.len - got));
    }
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

/// Commits the uploaded slots as a new version on top of the base.
/// With `then`, the attribute change is applied in the same entry; its result is returned.
async fn commit(
    dp: &Arc<DataPlane>,
    ino: u64,
    d: &mut FileData,
    then: Option<SetAttrRequest>,
    upload: Option<u64>,
) -> Result<Option<Attr>, Errno> {
    let base = d.base.clone().ok_or(Errno::EIO)?;
    // After open(O_TRUNC) the version being replaced, whose slots all go.
    let replaced = d.replaced.clone();
    let mut uploaded = BTreeMap::new();
    for (i, s) in &d.slots {
        match s {
            Slot::Uploaded(u) => {
                uploaded.insert(*i, u.clone());
            }
            _ => return Err(Errno::EIO),
        }
    }
    let mut updates: Vec<SlotUpdate> = uploaded.iter().map(|(i, u)| u.to_update(*i)).collect();
    if let Some(r) = &replaced {
        updates.extend(
            r.slots
                .keys()
                .filter(|i| !uploaded.contains_key(*i))
                .map(|i| SlotUpdate {
                    index: *i,
                    chunk: None,
                    replicas: Vec::new(),
                    ticket: 0,
                }),
        );
    }
    // What the file was before this commit (to recognise a retried commit of ours).
    let before = replaced.unwrap_or_else(|| base.clone());
    let mut req = CommitWriteRequest {
        ino,
        base_version: base.version,
        size: d.size,
        updates,
        mtime: d.mtime.or_else(|| Some(cairn_common::time::now())),
        then_set_attr: then,
        upload: upload.unwrap_or(0),
    };
    let expected = apply_updates(&base, d.size, &uploaded);
    for attempt in 0..2 {
        let r = req.clone();
        let res = dp
            .meta
            .call(|mut c| {
                let r = r.clone();
                async move { c.commit_write(r).await }
            })
            .await;
        match res {
            Ok(reply) => {
                let version = reply.attr.as_ref().map(|a| a.version).unwrap_or(0);
                tracing::debug!(inode = ino, version, size = d.size, "committed");
                d.base = Some(Base {
                    version,
                    ..expected
                });
                return Ok(reply.attr.filter(|_| req.then_set_attr.is_some()));
            }
            Err(s) if ErrorKind::from_status(&s) == ErrorKind::Conflict && attempt == 0 => {
                // Either our own commit was applied but its reply lost (meta retried it), or
                // the version moved without a content change (e.g. a metadata update): both
                // are safe to resolve; a real concurrent content change is an error.
                let fresh = load_base(dp, ino).await?;
                if fresh.same_content(&expected) {
                    d.base = Some(fresh);
                    // Whether `then` went with it is unknown here: the caller applies it.
                    return Ok(None);
                }
                if fresh.same_content(&before) {
                    req.base_version = fresh.version;
                    continue;
                }
                tracing::error!(
                    inode = ino,
                    base_version = base.version,
                    now = fresh.version,
                    "file changed by another client since it was opened"
                );
                return Err(Errno::from(&s));
            }
            Err(s) => {
                tracing::error!(inode = ino, error = %s.message(), "CommitWrite failed");
                return Err(Errno::from(&s));
            }
        }
    }
    Err(Errno::EIO)
}

/// Records chunk `u` of slot `slot` in the file's upload session, opening the session first if
/// this is its first chunk.
///
/// RESUMABLE WRITES: the session holds a reference to every chunk stored before the commit, so
/// if this mount dies mid-write the chunks stay (GC spares them) and count as stored: the same
/// copy run again sends only the chunks that never reached the cluster. The file itself keeps
/// its old version until a commit (the session never changes it). A failed record costs only
/// that protection: the commit lists every chunk anyway.
async fn record_upload(
    dp: &Arc<DataPlane>,
    ino: u64,
    base_version: u64,
    session: &tokio::sync::Mutex<Option<u64>>,
    slot: u64,
    u: &Uploaded,
) {
    let mut id = session.lock().await;
    if id.is_none() {
        let req = cairn_proto::OpenUploadRequest {
            ino,
            parent: 0,
            name: Vec::new(),
            base_version,
            label: "write through a mount".into(),
            host: dp.writer_label.get().cloned().unwrap_or_default(),
        };
        match dp
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.open_upload(req).await }
            })
            .await
        {
            Ok(r) => *id = Some(r.upload),
            Err(s) => {
                tracing::warn!(inode = ino, error = %s.message(), "cannot open an upload session");
                return;
            }
        }
    }
    let Some(upload) = *id else { return };
    let req = cairn_proto::RecordUploadRequest {
        upload,
        updates: vec![u.to_update(slot)],
    };
    let r = dp
        .meta
        .call(|mut c| {
            let req = req.clone();
            async move { c.record_upload(req).await }
        })
        .await;
    if let Err(s) = r {
        tracing::warn!(inode = ino, upload, slot, error = %s.message(), "cannot record a chunk in the upload session");
    }
}

/// Drops the upload session of data that will not be committed (best effort: it expires
/// otherwise).
async fn abort_upload(dp: &Arc<DataPlane>, ino: u64, upload: u64) {
    let r = dp
        .meta
        .call(|mut c| async move {
            c.abort_upload(cairn_proto::AbortUploadRequest { upload })
                .await
        })
        .await;
    if let Err(s) = r {
        tracing::warn!(inode = ino, upload, error = %s.message(), "cannot abort the upload session; it will expire");
    }
}

/// The chunk list after committing `uploaded` on `base` with `size`.
fn apply_updates(base: &Base, size: u64, uploaded: &BTreeMap<u64, Uploaded>) -> Base {
    let mut slots: BTreeMap<u64, StoredChunk> = base
        .slots
        .iter()
        .filter(|(i, _)| slots::slot_start(**i) < size)
        .map(|(i, c)| (*i, c.clone()))
        .collect();
    for (i, u) in uploaded {
        slots.insert(*i, u.chunk.clone());
    }
    Base {
        version: base.version,
        size,
        slots,
    }
}

/// Stores one chunk on its replicas: PrepareWrite for placements, PutChunk to every target in
/// parallel, replacements for failed targets. Succeeds with `replication` durable replicas, or
/// at least `min_replication` when no more replacements can be found.
pub async fn upload_chunk(
    dp: &Arc<DataPlane>,
    ino: u64,
    slot: u64,
    data: Bytes,
) -> Result<Uploaded, Errno> {
    let id = ChunkId::of(&data);
    let cref = ChunkRef {
        id: id.as_bytes().to_vec(),
        len: data.len() as u32,
        stored_len: data.len() as u32,
    };
    let mut have: Vec<ChunkLocation> = Vec::new();
    // The servers this upload stored the chunk on; only these are reported in the commit (see
    // `Uploaded::replicas`).
    let mut stored: Vec<u64> = Vec::new();
    let mut exclude = dp.recently_failed();
    let mut replication = 1usize;
    let mut min_replication = 1usize;
    let mut last_kind = ErrorKind::Unavailable;
    let mut ticket: Option<u64> = None;
    for _round in 0..4 {
        let req = PrepareWriteRequest {
            chunks: vec![cref.clone()],
            exclude_servers: exclude.clone(),
        };
        let reply = dp
            .meta
            .call(|mut c| {
                let r = req.clone();
                async move { c.prepare_write(r).await }
            })
            .await
            .map_err(|s| {
                tracing::error!(inode = ino, slot, chunk = %id, error = %s.message(), "PrepareWrite failed");
                Errno::from(&s)
            })?;
        // The first placement's ticket: every put of this upload comes after it.
        ticket.get_or_insert(reply.ticket);
        replication = (reply.replication as usize).max(1);
        min_replication = (reply.min_replication as usize).clamp(1, replication);
        let Some(p) = reply.placements.into_iter().find(|p| p.id == cref.id) else {
            tracing::error!(inode = ino, slot, chunk = %id, "PrepareWrite returned no placement");
            return Err(Errno::EIO);
        };
        for e in p.existing {
            if !have.iter().any(|h| h.server_id == e.server_id) {
                have.push(e);
            }
        }
        let targets: Vec<ChunkLocation> = p
            .targets
            .into_iter()
            .filter(|t| !have.iter().any(|h| h.server_id == t.server_id))
            .take(replication.saturating_sub(have.len()))
            .collect();
        if have.len() >= replication || targets.is_empty() {
            break;
        }
        let puts = targets.iter().map(|t| {
            let data = data.clone();
            async move {
                let mut client = dp.chunks.get(&t.addr)?;
                client
                    .put_chunk(PutChunkRequest {
                        id: id.as_bytes().to_vec(),
                        data,
                    })
                    .await
            }
        });
        let results = futures::future::join_all(puts).await;
        for (t, r) in targets.into_iter().zip(results) {
            match r {
                Ok(_) => {
                    dp.mark_ok(t.server_id);
                    stored.push(t.server_id);
                    have.push(t);
                }
                Err(s) => {
                    last_kind = ErrorKind::from_status(&s);
                    tracing::warn!(inode = ino, slot, chunk = %id, server = t.server_id, addr = %t.addr,
                        error = %s.message(), "PutChunk failed; asking for a replacement");
                    dp.mark_failed(t.server_id);
                    exclude.push(t.server_id);
                }
            }
        }
        if have.len() >= replication {
            break;
        }
    }
    if have.len() < min_replication {
        tracing::error!(inode = ino, slot, chunk = %id, replicas = have.len(), min_replication,
            "chunk could not be stored on enough replicas");
        return Err(if last_kind == ErrorKind::NoSpace {
            Errno::from(ErrorKind::NoSpace)
        } else {
            Errno::EIO
        });
    }
    if have.len() < replication {
        tracing::warn!(inode = ino, slot, chunk = %id, replicas = have.len(), replication,
            "chunk stored under-replicated");
    }
    Ok(Uploaded {
        ticket: ticket.unwrap_or(0),
        replicas: stored,
        chunk: StoredChunk {
            id,
            len: cref.len,
            stored_len: cref.stored_len,
            locations: Arc::from(have),
        },
    })
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

    fn chunk(tag: &[u8], len: u32) -> StoredChunk {
        StoredChunk {
            id: ChunkId::of(tag),
            len,
            stored_len: len,
            locations: Arc::from(Vec::new()),
        }
    }

    fn data_with(base: Option<Base>, size: u64) -> FileData {
        FileData {
            base,
            size,
            slots: BTreeMap::new(),
            mtime: None,
            error: None,
            failed: None,
            replaced: None,
        }
    }

    #[test]
    fn reads_combine_dirty_buffers_base_chunks_and_holes() {
        const C: u64 = CHUNK_SIZE as u64;
        let mut base = Base {
            version: 3,
            size: 3 * C,
            slots: BTreeMap::new(),
        };
        base.slots.insert(0, chunk(b"a", CHUNK_SIZE as u32));
        base.slots.insert(2, chunk(b"c", 10)); // short chunk: the rest of slot 2 is zeros
        let mut d = data_with(Some(base), 3 * C);
        d.slots
            .insert(1, Slot::Dirty(BytesMut::from(&b"dirty"[..])));
        let (pieces, _) = plan_read(&d, 3 * C, C - 2, 12);
        let kinds: Vec<String> = pieces
            .iter()
            .map(|p| match p {
                Piece::Zeros(n) => format!("z{n}"),
                Piece::Data(b) => format!("d{}", String::from_utf8_lossy(b)),
                Piece::Chunk { off, len, .. } => format!("c{off}+{len}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                format!("c{}+2", CHUNK_SIZE - 2),
                "ddirty".into(),
                "z5".into()
            ]
        );

        let (pieces, _) = plan_read(&d, 3 * C, 2 * C + 5, 100);
        assert!(matches!(pieces[0], Piece::Chunk { off: 5, len: 5, .. }));
        assert!(matches!(pieces[1], Piece::Zeros(95)));

        // A read past the end returns nothing; one crossing it is cut.
        assert!(plan_read(&d, 3 * C, 3 * C, 10).0.is_empty());
        let (p, _) = plan_read(&d, 3 * C, 3 * C - 4, 10);
        assert!(matches!(p[0], Piece::Zeros(4)));
    }

    #[test]
    fn a_truncated_chunk_reads_only_up_to_the_file_size() {
        let mut base = Base {
            version: 1,
            size: 4,
            slots: BTreeMap::new(),
        };
        base.slots.insert(0, chunk(b"x", 100));
        let d = data_with(Some(base), 4);
        let (p, _) = plan_read(&d, 4, 0, 4096);
        assert_eq!(p.len(), 1);
        assert!(matches!(p[0], Piece::Chunk { off: 0, len: 4, .. }));
    }

    #[test]
    fn sequential_reads_prefetch_the_next_chunk() {
        const C: u64 = CHUNK_SIZE as u64;
        let mut base = Base {
            version: 1,
            size: 2 * C,
            slots: BTreeMap::new(),
        };
        base.slots.insert(0, chunk(b"0", CHUNK_SIZE as u32));
        base.slots.insert(1, chunk(b"1", CHUNK_SIZE as u32));
        let d = data_with(Some(base), 2 * C);
        assert!(plan_read(&d, 2 * C, 0, 4096).1.is_none());
        let next = plan_read(&d, 2 * C, C - 8192, 4096).1.expect("prefetch");
        assert_eq!(next.id, ChunkId::of(b"1"));
    }

    #[test]
    fn commits_replace_slots_and_drop_those_past_the_end() {
        let mut base = Base {
            version: 1,
            size: 3 * CHUNK_SIZE as u64,
            slots: BTreeMap::new(),
        };
        for i in 0..3 {
            base.slots.insert(i, chunk(&[i as u8], CHUNK_SIZE as u32));
        }
        let mut up = BTreeMap::new();
        up.insert(
            1,
            Uploaded {
                chunk: chunk(b"new", 7),
                replicas: vec![1, 2, 3],
                ticket: 0,
            },
        );
        let after = apply_updates(&base, CHUNK_SIZE as u64 + 7, &up);
        assert_eq!(after.slots.len(), 2);
        assert_eq!(after.slots[&1].id, ChunkId::of(b"new"));
        assert!(!after.same_content(&base));
        assert!(after.same_content(&after.clone()));
    }

    #[tokio::test]
    async fn writes_buffer_locally_and_report_the_dirty_size() {
        let dp = DataPlane::new(cairn_common::MetaClient::new(vec![]));
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
        let dp = DataPlane::new(cairn_common::MetaClient::new(vec![]));
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
