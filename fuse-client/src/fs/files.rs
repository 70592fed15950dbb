//! Open files: open (close-to-open, deferred `O_TRUNC`), create, read, write, flush (close),
//! fsync, release, the attribute changes that must follow a file's dirty data (setattr,
//! fallocate), and flushing every dirty file at unmount.
//!
//! The data itself is [`crate::data::open_file::FileState`]'s business; this module decides
//! *when* a file's data is committed, from the kernel's requests.
use super::attr::SetAttr;
use super::namespace::NewEntry;
use super::state::Core;
use crate::data::open_file::FileState;
use crate::errno::{Errno, OrErrno};
use cairn_common::Kind;
use fuser::FileAttr;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The content version of each inode as the kernel last got its attributes from us.
#[derive(Default)]
pub(super) struct SeenVersions {
    map: Mutex<HashMap<u64, u64>>,
}

impl SeenVersions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kernel now has the attributes of `version` of `ino`.
    pub(super) fn note(&self, ino: u64, version: u64) {
        self.lock().insert(ino, version);
    }

    /// The kernel dropped the inode and, with it, the attributes it had cached.
    pub(super) fn forget(&self, ino: u64) {
        self.lock().remove(&ino);
    }

    /// Whether the kernel may hold attributes of a version of `ino` other than `version`.
    fn is_stale(&self, ino: u64, version: u64) -> bool {
        self.lock().get(&ino).is_some_and(|v| *v != version)
    }
}

impl Core {
    /// open(2) of `ino` by task `opener`, with its `flags`.
    pub async fn open(&self, ino: u64, flags: i32, opener: u32) -> Result<(), Errno> {
        self.refresh_on_open(ino).await?;
        if flags & libc::O_TRUNC != 0 {
            if let Err(e) = self.truncate_on_open(ino, opener).await {
                // The kernel sends no RELEASE for an open that failed.
                self.files.release(ino);
                return Err(e);
            }
        }
        Ok(())
    }

    /// CLOSE-TO-OPEN: an open sees the content committed by every close that finished before
    /// it, on any mount. The kernel drops a file's page cache at open (we never reply
    /// KEEP_CACHE), and the file's chunk list is re-read here; but the kernel may still hold
    /// the file's attributes (size) for up to the TTL, and it reads only up to the size it
    /// knows. So when the committed version differs from the one the kernel last got from us,
    /// its cached attributes are invalidated before the open is answered.
    async fn refresh_on_open(&self, ino: u64) -> Result<(), Errno> {
        let f = self.files.open(ino);
        let fresh = match f.open_fresh(&self.dp).await {
            Ok(v) => v,
            Err(e) => {
                self.files.release(ino);
                return Err(e);
            }
        };
        if let Some(version) = fresh {
            if self.seen.is_stale(ino, version) {
                if let Some(n) = self.notifier.get() {
                    // Attributes only (offset < 0); ENOENT just means the kernel has none.
                    let _ = n.inval_inode(self.inos.to_fuse(ino), -1, 0);
                }
                self.seen.note(ino, version);
            }
        }
        Ok(())
    }

    /// `O_TRUNC` of an open (the kernel passes it with `FUSE_ATOMIC_O_TRUNC` instead of a
    /// separate truncate): deferred to the close's commit, see `FileState::truncate_on_open`.
    async fn truncate_on_open(&self, ino: u64, opener: u32) -> Result<(), Errno> {
        let f = self.file(ino)?;
        f.truncate_on_open(&self.dp).await?;
        // The truncation is the opener's change: only its close (or the last) commits it.
        f.note_writer(opener);
        Ok(())
    }

    /// creat(2)/open(O_CREAT) of a regular file: creates it and opens it.
    pub async fn create_file(
        &self,
        at: NewEntry,
        mode: u32,
        flags: i32,
    ) -> Result<FileAttr, Errno> {
        let exclusive = flags & libc::O_EXCL != 0;
        let a = self
            .create(at.request(Kind::Regular, mode & 0o7777, 0, Vec::new(), exclusive))
            .await?;
        let f = self.files.open(a.ino);
        if exclusive {
            // A new inode (an existing name fails an exclusive create): no attributes yet.
            self.caps.note_new_file(a.ino);
        }
        if a.size == 0 {
            f.set_empty_base(a.version).await;
        } else {
            f.refresh_if_clean().await;
            // The name existed already (create without O_EXCL raced with another creator):
            // O_TRUNC applies as for an open.
            if flags & libc::O_TRUNC != 0 {
                if let Err(e) = f.truncate_on_open(&self.dp).await {
                    self.files.release(a.ino);
                    return Err(e);
                }
            }
        }
        Ok(self.to_fuse(&a))
    }

    /// The file and offset of a READ, checked on fuser's thread.
    pub fn start_read(&self, ino: u64, offset: i64) -> Result<(Arc<FileState>, u64), Errno> {
        let f = self.file(ino)?;
        let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        Ok((f, offset))
    }

    /// The file and offset of a WRITE by task `writer`, checked on fuser's thread. The writer
    /// is recorded here, in request order, so that the FLUSH of its close (which follows) knows
    /// the data is its own (see `FileState::flush_concerns`).
    pub fn start_write(
        &self,
        ino: u64,
        offset: i64,
        writer: u32,
    ) -> Result<(Arc<FileState>, u64), Errno> {
        let (f, offset) = self.start_read(ino, offset)?;
        f.note_writer(writer);
        Ok((f, offset))
    }

    /// FLUSH, sent for every close(2) of a descriptor of `ino` by task `closer`.
    pub async fn flush(
        &self,
        file: Option<Arc<FileState>>,
        ino: u64,
        lock_owner: u64,
        closer: u32,
    ) -> Result<(), Errno> {
        let r = match file {
            // A close by a process that wrote none of the dirty data (e.g. a forked child
            // closing its inherited descriptor) does not publish the writer's data.
            Some(f) if !f.flush_concerns(closer) => Ok(()),
            Some(f) => f.flush(&self.dp).await,
            None => Ok(()),
        };
        // POSIX: closing any descriptor of a file drops the process's locks on it.
        let unlocked = self.session.release_locks(ino, lock_owner).await;
        r.and(unlocked)
    }

    /// RELEASE of a handle of `ino`, after it was dropped from the open files (`left` handles
    /// remain; `file` is the state as it was then).
    ///
    /// RELEASE comes asynchronously after the close that ended the description, possibly after
    /// another description of the file was opened and written. Only the last handle commits
    /// here (the safety net for a writer whose close did not): flushing while other handles
    /// are open could publish their half-written data. Their own close does it.
    pub async fn release(
        &self,
        ino: u64,
        file: Option<Arc<FileState>>,
        left: usize,
        lock_owner: Option<u64>,
    ) -> Result<(), Errno> {
        let mut r = match file {
            Some(f) if left == 0 => f.flush(&self.dp).await,
            _ => Ok(()),
        };
        // flock locks belong to the open file and go with its last descriptor.
        if let Some(owner) = lock_owner {
            r = r.and(self.session.release_locks(ino, owner).await);
        }
        if left == 0 {
            self.files.forget_if_unused(ino);
            if self.files.get(ino).is_none() {
                self.caps.forget(ino);
                r = r.and(self.session.release_orphan(ino).await);
            }
        }
        r
    }

    /// fsync(2): commits the file's dirty data.
    pub async fn fsync(&self, file: Option<Arc<FileState>>) -> Result<(), Errno> {
        match file {
            Some(f) => f.flush(&self.dp).await,
            None => Ok(()),
        }
    }

    pub async fn setattr(&self, ino: u64, change: SetAttr) -> Result<FileAttr, Errno> {
        self.fresh_dirs.forget(ino);
        let req = change.request(ino);
        // Dirty data is committed first, so the attribute change applies on top of it (a
        // truncate cuts the written data; cp -a's futimens is not overwritten by close). A
        // change without a size travels in the same commit (one Raft entry for both).
        let file = self.files.get(ino);
        if let Some(f) = &file {
            let then = req.size.is_none().then_some(req);
            if let Some(a) = f.flush_then(&self.dp, then).await? {
                f.invalidate().await;
                return Ok(self.to_fuse(&a));
            }
        }
        let r = self.meta().set_attr(req).await.or_errno("setattr");
        if let Some(f) = &file {
            f.invalidate().await;
        }
        Ok(self.to_fuse(&r?))
    }

    /// fallocate(2). Cairn stores no preallocated blocks (space is taken when data is
    /// written), so the default mode extends the size when the range ends past it (the new
    /// bytes read as zeros and store nothing), `KEEP_SIZE` only updates ctime, and
    /// `PUNCH_HOLE` writes zeros over the range (all-zero chunks are stored once per cluster,
    /// content addressing deduplicates them). Other modes are not supported.
    pub async fn fallocate(
        &self,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        let end = offset.checked_add(length).ok_or(Errno(libc::EFBIG))?;
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        let size = self.getattr(ino).await?.size;
        match mode {
            0 if end > size => {
                let grow = SetAttr {
                    size: Some(end),
                    ..SetAttr::default()
                };
                self.setattr(ino, grow).await?;
            }
            0 | libc::FALLOC_FL_KEEP_SIZE => {
                self.setattr(ino, SetAttr::default()).await?;
            }
            m if m == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE => {
                let f = self.file(ino)?;
                let zeros = vec![0u8; 1 << 20];
                let mut pos = offset;
                let stop = end.min(size);
                while pos < stop {
                    let n = (stop - pos).min(zeros.len() as u64) as usize;
                    f.write(&self.dp, pos, &zeros[..n]).await?;
                    pos += n as u64;
                }
            }
            _ => return Err(Errno(libc::EOPNOTSUPP)),
        }
        Ok(())
    }

    /// Flushes every dirty file (unmount, SIGTERM). Returns how many failed.
    pub async fn drain(&self) -> usize {
        let mut failed = 0;
        for f in self.files.all() {
            if f.is_dirty() {
                if let Err(e) = f.flush(&self.dp).await {
                    tracing::error!(inode = f.ino, errno = e.0, "flush on shutdown failed");
                    failed += 1;
                }
            }
        }
        failed
    }
}
