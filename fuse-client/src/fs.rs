//! The FUSE file system: fuser's `Filesystem` on top of the meta service and the data plane.
//!
//! fuser calls every method on one thread; each method hands its work to the tokio runtime
//! (`self.spawn(async move { .. reply.xxx(..) })`) so a slow chunk fetch never blocks an `ls`
//! elsewhere. Helpers return `Result<T, Errno>`; only these methods call `reply.error`.
//! Cairn inode numbers are the FUSE inode numbers (root = 1).
use crate::data::writer::OpenFiles;
use crate::data::DataPlane;
use crate::errno::Errno;
use crate::session::Session;
use cairn_common::name::validate_name;
use cairn_proto as pb;
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, Notifier, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// How long the kernel may cache attributes and entries.
const TTL: Duration = Duration::from_secs(1);
/// Directory entries fetched per ReadDir call.
const READDIR_PAGE: u32 = 512;

/// Everything a request needs; shared by all in-flight requests.
pub struct Core {
    pub dp: Arc<DataPlane>,
    pub files: OpenFiles,
    pub session: Arc<Session>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirHandle>>>>,
    next_fh: AtomicU64,
    /// Tells the kernel to drop cached attributes (set once mounted).
    notifier: OnceLock<Notifier>,
    /// The content version of each inode as the kernel last got its attributes from us.
    seen: Mutex<HashMap<u64, u64>>,
    /// `security.capability` of files open on this mount (`None`: it has none). The kernel
    /// asks for it before *every* write (to drop file capabilities on write), which would
    /// otherwise cost a metadata round trip per write.
    caps: Mutex<HashMap<u64, Option<Vec<u8>>>>,
    /// Directories as the metadata cluster returned them with an entry change made through
    /// this mount (create, unlink, …), and when. The kernel drops a directory's attributes at
    /// every such change and asks for them again right away (to check permissions for the next
    /// one); answering from here within the attribute TTL saves a round trip per create or
    /// unlink, and is no staler than the kernel's own attribute cache.
    fresh_dirs: Mutex<HashMap<u64, (std::time::Instant, pb::Attr)>>,
}

/// The attribute the kernel reads before every write.
const CAPS_XATTR: &[u8] = b"security.capability";

/// A directory listing being read: entries fetched so far (cookie = index + 3).
#[derive(Default)]
struct DirHandle {
    entries: Vec<pb::DirEntry>,
    eof: bool,
    dir: Option<pb::Attr>,
    parent: u64,
}

impl Core {
    pub fn new(dp: Arc<DataPlane>, session: Arc<Session>) -> Arc<Core> {
        Arc::new(Core {
            dp,
            files: OpenFiles::default(),
            session,
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            notifier: OnceLock::new(),
            seen: Mutex::new(HashMap::new()),
            caps: Mutex::new(HashMap::new()),
            fresh_dirs: Mutex::new(HashMap::new()),
        })
    }

    fn fresh_dirs(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, (std::time::Instant, pb::Attr)>> {
        self.fresh_dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers a directory's attributes as returned with an entry change.
    fn note_parent(&self, parent: Option<pb::Attr>) {
        if let Some(p) = parent {
            let mut m = self.fresh_dirs();
            // Bounded: entries older than the TTL are useless anyway.
            if m.len() > 4096 {
                m.retain(|_, (t, _)| t.elapsed() < TTL);
            }
            m.insert(p.ino, (std::time::Instant::now(), p));
        }
    }

    fn forget_dir(&self, ino: u64) {
        self.fresh_dirs().remove(&ino);
    }

    fn caps(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Option<Vec<u8>>>> {
        self.caps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// getxattr, with `security.capability` of open files answered from [`Core::caps`].
    async fn getxattr(&self, ino: u64, name: Vec<u8>) -> Result<Vec<u8>, Errno> {
        let cacheable = name == CAPS_XATTR && self.files.get(ino).is_some();
        if cacheable {
            if let Some(v) = self.caps().get(&ino) {
                return v.clone().ok_or(Errno(libc::ENODATA));
            }
        }
        let r = self
            .meta("getxattr", |mut c| {
                let name = name.clone();
                async move { c.get_xattr(pb::GetXattrRequest { ino, name }).await }
            })
            .await;
        if cacheable {
            match &r {
                Ok(v) => self.caps().insert(ino, Some(v.value.clone())),
                Err(e) if e.0 == libc::ENODATA => self.caps().insert(ino, None),
                Err(_) => None,
            };
        }
        r.map(|v| v.value)
    }

    /// Hands over the mounted session's notifier (see [`Core::open`]).
    pub fn set_notifier(&self, n: Notifier) {
        let _ = self.notifier.set(n);
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// CLOSE-TO-OPEN: an open sees the content committed by every close that finished before
    /// it, on any mount. The kernel drops a file's page cache at open (we never reply
    /// KEEP_CACHE), and the file's chunk list is re-read here; but the kernel may still hold
    /// the file's attributes (size) for up to the TTL, and it reads only up to the size it
    /// knows. So when the committed version differs from the one the kernel last got from us,
    /// its cached attributes are invalidated before the open is answered.
    async fn open(&self, ino: u64) -> Result<(), Errno> {
        let f = self.files.open(ino);
        let fresh = match f.open_fresh(&self.dp).await {
            Ok(v) => v,
            Err(e) => {
                self.files.release(ino);
                return Err(e);
            }
        };
        if let Some(version) = fresh {
            let stale = self.seen().get(&ino).is_some_and(|v| *v != version);
            if stale {
                if let Some(n) = self.notifier.get() {
                    // Attributes only (offset < 0); ENOENT just means the kernel has none.
                    let _ = n.inval_inode(ino, -1, 0);
                }
                self.seen().insert(ino, version);
            }
        }
        Ok(())
    }

    /// `O_TRUNC` of an open (the kernel passes it with `FUSE_ATOMIC_O_TRUNC` instead of a
    /// separate truncate): deferred to the close's commit, see `FileState::truncate_on_open`.
    async fn truncate_on_open(&self, ino: u64, opener: u32) -> Result<(), Errno> {
        let f = self.files.get(ino).ok_or(Errno::EBADF)?;
        f.truncate_on_open(&self.dp).await?;
        // The truncation is the opener's change: only its close (or the last) commits it.
        f.note_writer(opener);
        Ok(())
    }

    /// The inodes this mount has open, for an unlink or rename that may remove the last name of
    /// `parent`/`name`: all of them while there are few (no extra round trip); with more, only
    /// the named inode if it is open (one lookup), so the request stays small and within the
    /// cluster's bound however many files are open.
    async fn keep_open(&self, parent: u64, name: &[u8]) -> Vec<u64> {
        const LIST_ALL_MAX: usize = 1024;
        let open = self.files.all();
        if open.len() <= LIST_ALL_MAX {
            return open.iter().map(|f| f.ino).collect();
        }
        match self.lookup(parent, name.to_vec()).await {
            Ok(a) if self.files.get(a.ino).is_some() => vec![a.ino],
            // Not open here, or no such name (the unlink itself reports that).
            _ => Vec::new(),
        }
    }

    fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
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

    async fn meta<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, Errno>
    where
        F: Fn(cairn_common::meta_client::MetaRpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.dp.meta.call(f).await.map_err(|s| {
            tracing::debug!(op, error = %s.message(), "meta call failed");
            Errno::from(&s)
        })
    }

    /// `attr` with this mount's view: the dirty size of a file being written.
    fn to_fuse(&self, a: &pb::Attr) -> FileAttr {
        if a.kind == pb::FileKind::Regular as i32 {
            self.seen().insert(a.ino, a.version);
        }
        let mut attr = to_file_attr(a);
        if let Some(f) = self.files.get(a.ino) {
            if let Some(size) = f.dirty_size() {
                attr.size = size;
                attr.blocks = size.div_ceil(512);
            }
        }
        attr
    }

    async fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let fresh = self
            .fresh_dirs()
            .get(&ino)
            .filter(|(t, _)| t.elapsed() < TTL)
            .map(|(_, a)| *a);
        if let Some(a) = fresh {
            return Ok(self.to_fuse(&a));
        }
        let r = self
            .meta("getattr", |mut c| async move {
                c.get_attr(pb::GetAttrRequest { ino }).await
            })
            .await?;
        let a = r.attr.ok_or(Errno::EIO)?;
        Ok(self.to_fuse(&a))
    }

    async fn lookup(&self, parent: u64, name: Vec<u8>) -> Result<FileAttr, Errno> {
        validate_name(&name).map_err(Errno::from)?;
        let r = self
            .meta("lookup", |mut c| {
                let name = name.clone();
                async move { c.lookup(pb::LookupRequest { parent, name }).await }
            })
            .await?;
        let a = r.attr.ok_or(Errno::EIO)?;
        Ok(self.to_fuse(&a))
    }

    async fn create(&self, req: pb::CreateRequest) -> Result<pb::Attr, Errno> {
        validate_name(&req.name).map_err(Errno::from)?;
        let r = self
            .meta("create", |mut c| {
                let req = req.clone();
                async move { c.create(req).await }
            })
            .await?;
        self.note_parent(r.parent);
        r.attr.ok_or(Errno::EIO)
    }

    #[allow(clippy::too_many_arguments)]
    async fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr, Errno> {
        self.forget_dir(ino);
        let (atime, atime_now) = time_arg(atime);
        let (mtime, mtime_now) = time_arg(mtime);
        let req = pb::SetAttrRequest {
            ino,
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime,
            mtime,
            atime_now,
            mtime_now,
        };
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
        let r = self
            .meta("setattr", |mut c| async move { c.set_attr(req).await })
            .await;
        if let Some(f) = &file {
            f.invalidate().await;
        }
        let a = r?.attr.ok_or(Errno::EIO)?;
        Ok(self.to_fuse(&a))
    }

    /// fallocate(2). Cairn stores no preallocated blocks (space is taken when data is
    /// written), so the default mode extends the size when the range ends past it (the new
    /// bytes read as zeros and store nothing), `KEEP_SIZE` only updates ctime, and
    /// `PUNCH_HOLE` writes zeros over the range (all-zero chunks are stored once per cluster,
    /// content addressing deduplicates them). Other modes are not supported.
    async fn fallocate(&self, ino: u64, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        let end = offset.checked_add(length).ok_or(Errno(libc::EFBIG))?;
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        let size = self.getattr(ino).await?.size;
        match mode {
            0 if end > size => {
                self.setattr(ino, None, None, None, Some(end), None, None)
                    .await?;
            }
            0 | libc::FALLOC_FL_KEEP_SIZE => {
                self.setattr(ino, None, None, None, None, None, None)
                    .await?;
            }
            m if m == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE => {
                let f = self.files.get(ino).ok_or(Errno::EBADF)?;
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

    /// Makes sure entries up to `index` (exclusive) are fetched, if the directory has them.
    async fn fill_dir(&self, ino: u64, h: &mut DirHandle, index: usize) -> Result<(), Errno> {
        while h.entries.len() < index && !h.eof {
            let after = h.entries.last().map(|e| e.name.clone()).unwrap_or_default();
            let r = self
                .meta("readdir", |mut c| {
                    let after = after.clone();
                    async move {
                        c.read_dir(pb::ReadDirRequest {
                            ino,
                            after,
                            limit: READDIR_PAGE,
                        })
                        .await
                    }
                })
                .await?;
            if r.entries.is_empty() && !r.eof {
                tracing::error!(inode = ino, "ReadDir returned an empty page before eof");
                return Err(Errno::EIO);
            }
            h.entries.extend(r.entries);
            h.eof = r.eof;
            if r.dir.is_some() {
                h.dir = r.dir;
            }
            h.parent = r.parent;
        }
        Ok(())
    }

    fn dir_handle(&self, fh: u64) -> Arc<tokio::sync::Mutex<DirHandle>> {
        let mut d = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        d.entry(fh).or_default().clone()
    }
}

/// A FUSE lock request as the wire's lock.
fn lock_arg(typ: i32, start: u64, end: u64, pid: u32) -> Result<pb::FileLock, Errno> {
    let typ = match typ {
        libc::F_RDLCK => pb::LockType::Read,
        libc::F_WRLCK => pb::LockType::Write,
        libc::F_UNLCK => pb::LockType::Unlock,
        _ => return Err(Errno::EINVAL),
    };
    if start > end {
        return Err(Errno::EINVAL);
    }
    Ok(pb::FileLock {
        typ: typ as i32,
        start,
        end,
        pid,
    })
}

/// Answers getxattr/listxattr: the size when asked for it (size 0), ERANGE when the caller's
/// buffer is too small, else the bytes.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32)
    } else if value.len() > size as usize {
        reply.error(libc::ERANGE)
    } else {
        reply.data(value)
    }
}

fn time_arg(t: Option<TimeOrNow>) -> (Option<pb::Timestamp>, bool) {
    match t {
        None => (None, false),
        Some(TimeOrNow::Now) => (None, true),
        Some(TimeOrNow::SpecificTime(t)) => (Some(cairn_common::time::to_wire(t)), false),
    }
}

fn file_type(kind: i32) -> FileType {
    match pb::FileKind::try_from(kind) {
        Ok(pb::FileKind::Directory) => FileType::Directory,
        Ok(pb::FileKind::Symlink) => FileType::Symlink,
        Ok(pb::FileKind::Fifo) => FileType::NamedPipe,
        Ok(pb::FileKind::Socket) => FileType::Socket,
        Ok(pb::FileKind::CharDevice) => FileType::CharDevice,
        Ok(pb::FileKind::BlockDevice) => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn ts(t: &Option<pb::Timestamp>) -> SystemTime {
    t.as_ref()
        .map(cairn_common::time::from_wire)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The FUSE attributes of a Cairn inode.
pub fn to_file_attr(a: &pb::Attr) -> FileAttr {
    FileAttr {
        ino: a.ino,
        size: a.size,
        // Sparse files: only stored data counts (holes take no space).
        blocks: a.stored_bytes.div_ceil(512),
        atime: ts(&a.atime),
        mtime: ts(&a.mtime),
        ctime: ts(&a.ctime),
        crtime: ts(&a.ctime),
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 128 * 1024,
        flags: 0,
    }
}

/// The wire kind of a mknod mode.
fn kind_of_mode(mode: u32) -> Result<pb::FileKind, Errno> {
    Ok(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => pb::FileKind::Regular,
        libc::S_IFIFO => pb::FileKind::Fifo,
        libc::S_IFSOCK => pb::FileKind::Socket,
        libc::S_IFCHR => pb::FileKind::CharDevice,
        libc::S_IFBLK => pb::FileKind::BlockDevice,
        libc::S_IFDIR => pb::FileKind::Directory,
        _ => return Err(Errno::EINVAL),
    })
}

/// fuser's `Filesystem`, handing every request to the runtime.
pub struct CairnFs {
    core: Arc<Core>,
    rt: tokio::runtime::Handle,
}

impl CairnFs {
    pub fn new(core: Arc<Core>, rt: tokio::runtime::Handle) -> CairnFs {
        CairnFs { core, rt }
    }

    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Core>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f(self.core.clone()));
    }
}

fn bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

impl Filesystem for CairnFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        use fuser::consts::*;
        // Large requests: fewer round trips per 4 MiB chunk.
        let _ = config
            .set_max_write(1 << 20)
            .or_else(|n| config.set_max_write(n));
        let _ = config
            .set_max_readahead(1 << 20)
            .or_else(|n| config.set_max_readahead(n));
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        for cap in [
            FUSE_BIG_WRITES,
            FUSE_ASYNC_READ,
            FUSE_DO_READDIRPLUS,
            FUSE_READDIRPLUS_AUTO,
            FUSE_PARALLEL_DIROPS,
            // O_TRUNC comes with the open, so it can be part of the close's commit.
            FUSE_ATOMIC_O_TRUNC,
            // fcntl and flock locks go to the cluster, so they hold across mounts.
            FUSE_POSIX_LOCKS,
            FUSE_FLOCK_LOCKS,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!(cap, "kernel lacks capability");
            }
        }
        tracing::info!("FUSE session initialised");
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let name = bytes(name);
        self.spawn(|core| async move {
            match core.lookup(parent, name).await {
                Ok(a) => reply.entry(&TTL, &a, 0),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        self.spawn(|core| async move {
            match core.getattr(ino).await {
                Ok(a) => reply.attr(&TTL, &a),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        self.spawn(|core| async move {
            match core.setattr(ino, mode, uid, gid, size, atime, mtime).await {
                Ok(a) => reply.attr(&TTL, &a),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        self.spawn(|core| async move {
            let r = core
                .meta("readlink", |mut c| async move {
                    c.readlink(pb::ReadlinkRequest { ino }).await
                })
                .await;
            match r {
                Ok(r) => reply.data(&r.target),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (uid, gid, name) = (req.uid(), req.gid(), bytes(name));
        self.spawn(|core| async move {
            let r = async {
                let kind = kind_of_mode(mode)?;
                let a = core
                    .create(pb::CreateRequest {
                        parent,
                        name,
                        kind: kind as i32,
                        mode: mode & 0o7777,
                        uid,
                        gid,
                        rdev,
                        symlink_target: Vec::new(),
                        exclusive: true,
                    })
                    .await?;
                Ok::<_, Errno>(core.to_fuse(&a))
            }
            .await;
            match r {
                Ok(a) => reply.entry(&TTL, &a, 0),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (uid, gid, name) = (req.uid(), req.gid(), bytes(name));
        self.spawn(|core| async move {
            let r = core
                .create(pb::CreateRequest {
                    parent,
                    name,
                    kind: pb::FileKind::Directory as i32,
                    mode: mode & 0o7777,
                    uid,
                    gid,
                    rdev: 0,
                    symlink_target: Vec::new(),
                    exclusive: true,
                })
                .await;
            match r {
                Ok(a) => reply.entry(&TTL, &core.to_fuse(&a), 0),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = bytes(name);
        self.spawn(|core| async move {
            let r = async {
                validate_name(&name).map_err(Errno::from)?;
                let req = pb::UnlinkRequest {
                    parent,
                    session: core.session.id(),
                    open_inodes: core.keep_open(parent, &name).await,
                    name,
                };
                let r = core
                    .meta("unlink", |mut c| {
                        let req = req.clone();
                        async move { c.unlink(req).await }
                    })
                    .await?;
                core.session.note_orphan(r.orphan);
                core.note_parent(r.parent);
                Ok::<_, Errno>(())
            }
            .await;
            match r {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = bytes(name);
        self.spawn(|core| async move {
            let r = async {
                validate_name(&name).map_err(Errno::from)?;
                let r = core
                    .meta("rmdir", |mut c| {
                        let name = name.clone();
                        async move { c.rmdir(pb::RmdirRequest { parent, name }).await }
                    })
                    .await?;
                core.note_parent(r.parent);
                Ok::<_, Errno>(())
            }
            .await;
            match r {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (uid, gid, name) = (req.uid(), req.gid(), bytes(link_name));
        let target = target.as_os_str().as_bytes().to_vec();
        self.spawn(|core| async move {
            let r = core
                .create(pb::CreateRequest {
                    parent,
                    name,
                    kind: pb::FileKind::Symlink as i32,
                    mode: 0o777,
                    uid,
                    gid,
                    rdev: 0,
                    symlink_target: target,
                    exclusive: true,
                })
                .await;
            match r {
                Ok(a) => reply.entry(&TTL, &core.to_fuse(&a), 0),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let (name, new_name) = (bytes(name), bytes(newname));
        self.spawn(|core| async move {
            let r = async {
                validate_name(&name).map_err(Errno::from)?;
                validate_name(&new_name).map_err(Errno::from)?;
                let open_inodes = core.keep_open(newparent, &new_name).await;
                let req = pb::RenameRequest {
                    parent,
                    name,
                    new_parent: newparent,
                    new_name,
                    flags,
                    session: core.session.id(),
                    open_inodes,
                };
                core.forget_dir(parent);
                core.forget_dir(newparent);
                let r = core
                    .meta("rename", |mut c| {
                        let req = req.clone();
                        async move { c.rename(req).await }
                    })
                    .await?;
                core.session.note_orphan(r.orphan);
                Ok::<_, Errno>(())
            }
            .await;
            match r {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let new_name = bytes(newname);
        self.spawn(|core| async move {
            let r = async {
                validate_name(&new_name).map_err(Errno::from)?;
                let r = core
                    .meta("link", |mut c| {
                        let new_name = new_name.clone();
                        async move {
                            c.link(pb::LinkRequest {
                                ino,
                                new_parent: newparent,
                                new_name,
                            })
                            .await
                        }
                    })
                    .await?;
                core.note_parent(r.parent);
                r.attr.ok_or(Errno::EIO)
            }
            .await;
            match r {
                Ok(a) => reply.entry(&TTL, &core.to_fuse(&a), 0),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn open(&mut self, req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let fh = self.core.fh();
        let opener = req.pid();
        self.spawn(|core| async move {
            let r = async {
                core.open(ino).await?;
                if flags & libc::O_TRUNC != 0 {
                    if let Err(e) = core.truncate_on_open(ino, opener).await {
                        // The kernel sends no RELEASE for an open that failed.
                        core.files.release(ino);
                        return Err(e);
                    }
                }
                Ok::<_, Errno>(())
            }
            .await;
            match r {
                Ok(()) => reply.opened(fh, 0),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(f) = self.core.files.get(ino) else {
            reply.error(libc::EBADF);
            return;
        };
        let Ok(offset) = u64::try_from(offset) else {
            reply.error(libc::EINVAL);
            return;
        };
        self.spawn(|core| async move {
            match f.read(&core.dp, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn write(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some(f) = self.core.files.get(ino) else {
            reply.error(libc::EBADF);
            return;
        };
        let Ok(offset) = u64::try_from(offset) else {
            reply.error(libc::EINVAL);
            return;
        };
        f.note_writer(req.pid());
        let data = data.to_vec();
        self.spawn(|core| async move {
            match f.write(&core.dp, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn flush(&mut self, req: &Request<'_>, ino: u64, _fh: u64, lock_owner: u64, reply: ReplyEmpty) {
        let f = self.core.files.get(ino);
        let closer = req.pid();
        self.spawn(|core| async move {
            let r = match f {
                // A close by a process that wrote none of the dirty data (e.g. a forked child
                // closing its inherited descriptor) does not publish the writer's data.
                Some(f) if !f.flush_concerns(closer) => Ok(()),
                Some(f) => f.flush(&core.dp).await,
                None => Ok(()),
            };
            // POSIX: closing any descriptor of a file drops the process's locks on it.
            let unlocked = core.session.release_locks(ino, lock_owner).await;
            let r = r.and(unlocked);
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // RELEASE comes asynchronously after the close that ended the description, possibly
        // after another description of the file was opened and written. Only the last handle
        // commits here (the safety net for a writer whose close did not): flushing while other
        // handles are open could publish their half-written data. Their own close does it.
        let left = self.core.files.release(ino);
        let f = self.core.files.get(ino);
        self.spawn(|core| async move {
            let mut r = match f {
                Some(f) if left == 0 => f.flush(&core.dp).await,
                _ => Ok(()),
            };
            // flock locks belong to the open file and go with its last descriptor.
            if let Some(owner) = lock_owner {
                r = r.and(core.session.release_locks(ino, owner).await);
            }
            if left == 0 {
                core.files.forget_if_unused(ino);
                if core.files.get(ino).is_none() {
                    core.caps().remove(&ino);
                    r = r.and(core.session.release_orphan(ino).await);
                }
            }
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let f = self.core.files.get(ino);
        self.spawn(|core| async move {
            let r = match f {
                Some(f) => f.flush(&core.dp).await,
                None => Ok(()),
            };
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn opendir(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        let fh = self.core.fh();
        let _ = self.core.dir_handle(fh);
        reply.opened(fh, 0);
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let h = self.core.dir_handle(fh);
        self.spawn(|core| async move {
            let mut h = h.lock().await;
            let start = offset.max(0) as usize;
            // Cookies: 1 = ".", 2 = "..", 3 + i = entry i.
            let mut pos = start;
            loop {
                if pos < 2 {
                    if h.dir.is_none() {
                        if let Err(e) = core.fill_dir(ino, &mut h, 1).await {
                            return reply.error(e.0);
                        }
                    }
                    let (name, target) = if pos == 0 {
                        (".", ino)
                    } else {
                        ("..", h.parent.max(1))
                    };
                    if reply.add(target, (pos + 1) as i64, FileType::Directory, name) {
                        break;
                    }
                    pos += 1;
                    continue;
                }
                let i = pos - 2;
                if let Err(e) = core.fill_dir(ino, &mut h, i + 1).await {
                    return reply.error(e.0);
                }
                let Some(e) = h.entries.get(i) else { break };
                let (child, kind) = e
                    .attr
                    .as_ref()
                    .map(|a| (a.ino, file_type(a.kind)))
                    .unwrap_or((0, FileType::RegularFile));
                if reply.add(child, (pos + 1) as i64, kind, OsStr::from_bytes(&e.name)) {
                    break;
                }
                pos += 1;
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let h = self.core.dir_handle(fh);
        self.spawn(|core| async move {
            let mut h = h.lock().await;
            let mut pos = offset.max(0) as usize;
            loop {
                if pos < 2 {
                    if h.dir.is_none() {
                        if let Err(e) = core.fill_dir(ino, &mut h, 1).await {
                            return reply.error(e.0);
                        }
                    }
                    let Some(dir) = h.dir.as_ref() else {
                        return reply.error(libc::EIO);
                    };
                    let mut attr = core.to_fuse(dir);
                    let name = if pos == 0 { "." } else { ".." };
                    if pos == 1 {
                        attr.ino = h.parent.max(1);
                    }
                    if reply.add(attr.ino, (pos + 1) as i64, name, &Duration::ZERO, &attr, 0) {
                        break;
                    }
                    pos += 1;
                    continue;
                }
                let i = pos - 2;
                if let Err(e) = core.fill_dir(ino, &mut h, i + 1).await {
                    return reply.error(e.0);
                }
                let Some(e) = h.entries.get(i) else { break };
                let Some(a) = e.attr.as_ref() else {
                    pos += 1;
                    continue;
                };
                let attr = core.to_fuse(a);
                if reply.add(
                    a.ino,
                    (pos + 1) as i64,
                    OsStr::from_bytes(&e.name),
                    &TTL,
                    &attr,
                    0,
                ) {
                    break;
                }
                pos += 1;
            }
            reply.ok();
        });
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.core
            .dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        self.spawn(|core| async move {
            match core
                .meta("statfs", |mut c| async move {
                    c.stat_fs(pb::StatFsRequest {}).await
                })
                .await
            {
                Ok(s) => {
                    const BS: u64 = 4096;
                    // Capacity as a user sees it: raw bytes divided by the replication factor.
                    let rep = u64::from(s.replication.max(1));
                    let blocks = s.total_bytes / rep / BS;
                    let free = s.free_bytes / rep / BS;
                    reply.statfs(
                        blocks,
                        free,
                        free,
                        s.files,
                        u64::from(u32::MAX),
                        BS as u32,
                        255,
                        BS as u32,
                    )
                }
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        // The kernel checks permissions itself (default_permissions).
        reply.ok();
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (uid, gid, name) = (req.uid(), req.gid(), bytes(name));
        let fh = self.core.fh();
        self.spawn(|core| async move {
            let r = core
                .create(pb::CreateRequest {
                    parent,
                    name,
                    kind: pb::FileKind::Regular as i32,
                    mode: mode & 0o7777,
                    uid,
                    gid,
                    rdev: 0,
                    symlink_target: Vec::new(),
                    exclusive: flags & libc::O_EXCL != 0,
                })
                .await;
            match r {
                Ok(a) => {
                    let f = core.files.open(a.ino);
                    if a.size == 0 {
                        f.set_empty_base(a.version).await;
                    } else {
                        f.refresh_if_clean().await;
                        // The name existed already (create without O_EXCL raced with another
                        // creator): O_TRUNC applies as for an open.
                        if flags & libc::O_TRUNC != 0 {
                            if let Err(e) = f.truncate_on_open(&core.dp).await {
                                core.files.release(a.ino);
                                return reply.error(e.0);
                            }
                        }
                    }
                    reply.created(&TTL, &core.to_fuse(&a), 0, fh, 0)
                }
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, _nlookup: u64) {
        // The kernel dropped the inode and, with it, the attributes it had cached.
        self.core.seen().remove(&ino);
    }

    fn getlk(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let want = match lock_arg(typ, start, end, pid) {
            Ok(l) => l,
            Err(e) => return reply.error(e.0),
        };
        self.spawn(|core| async move {
            match core.session.get_lock(ino, lock_owner, want).await {
                Ok(l) => {
                    let typ = match pb::LockType::try_from(l.typ) {
                        Ok(pb::LockType::Read) => libc::F_RDLCK,
                        Ok(pb::LockType::Write) => libc::F_WRLCK,
                        _ => libc::F_UNLCK,
                    };
                    reply.locked(l.start, l.end, typ, l.pid)
                }
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn setlk(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let want = match lock_arg(typ, start, end, pid) {
            Ok(l) => l,
            Err(e) => return reply.error(e.0),
        };
        let waiter = req.pid();
        self.spawn(|core| async move {
            // F_SETLKW / blocking flock: the cluster answers at once, so wait here by retrying,
            // giving up with EINTR when the waiting process is killed or gets a signal.
            let mut pause = Duration::from_millis(2);
            loop {
                match core.session.set_lock(ino, lock_owner, want).await {
                    Err(e) if sleep && e.0 == libc::EAGAIN => {
                        if crate::procs::interrupted(waiter) {
                            return reply.error(libc::EINTR);
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(100));
                    }
                    Ok(()) => return reply.ok(),
                    Err(e) => return reply.error(e.0),
                }
            }
        });
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        if position != 0 {
            return reply.error(libc::EINVAL);
        }
        let req = pb::SetXattrRequest {
            ino,
            name: bytes(name),
            value: value.to_vec(),
            flags: flags as u32,
        };
        self.spawn(|core| async move {
            let r = core
                .meta("setxattr", |mut c| {
                    let req = req.clone();
                    async move { c.set_xattr(req).await }
                })
                .await;
            core.caps().remove(&ino);
            match r {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let name = bytes(name);
        self.spawn(|core| async move {
            match core.getxattr(ino, name).await {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        self.spawn(|core| async move {
            let r = core
                .meta("listxattr", |mut c| async move {
                    c.list_xattr(pb::ListXattrRequest { ino }).await
                })
                .await;
            match r {
                Ok(r) => {
                    let mut list = Vec::new();
                    for n in r.names {
                        list.extend_from_slice(&n);
                        list.push(0);
                    }
                    reply_xattr(reply, size, &list)
                }
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn removexattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = bytes(name);
        self.spawn(|core| async move {
            let r = core
                .meta("removexattr", |mut c| {
                    let name = name.clone();
                    async move { c.remove_xattr(pb::RemoveXattrRequest { ino, name }).await }
                })
                .await;
            core.caps().remove(&ino);
            match r {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let (Ok(offset), Ok(length)) = (u64::try_from(offset), u64::try_from(length)) else {
            return reply.error(libc::EINVAL);
        };
        self.spawn(|core| async move {
            match core.fallocate(ino, offset, length, mode).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }
}
