//! The FUSE file system: fuser's `Filesystem` as thin adapters onto [`Core`]'s operations.
//!
//! fuser calls every method on one thread. Each method takes what it needs from the request,
//! does the little that must happen in request order on that thread (allocating a handle,
//! recording a writer, dropping a handle), and hands the operation to the tokio runtime with
//! [`CairnFs::spawn_reply`], so a slow chunk fetch never blocks an `ls` elsewhere. Operations
//! return `Result<T, Errno>`; [`reply::FuseReply`] is the one place a result becomes a reply.
//!
//! Inode numbers: the kernel's root is always 1; it is the Cairn root, or with `subdir=` the
//! sub-directory the mount shows. [`InoMap`] is the one translation: each method here turns
//! every inode number of its request (`ino`, `parent`, `newparent`) into the Cairn inode first
//! ([`CairnFs::ino`]), and the numbers the kernel gets back are made where replies are built
//! ([`Core`]'s attribute conversion, the listings of [`dirs`], the attribute invalidation of
//! [`files`]). Everything between speaks Cairn numbers.
//!
//! The operations, by area:
//! - [`namespace`]: lookup, getattr, create/mknod/mkdir/symlink, link, unlink, rmdir, rename,
//!   readlink, statfs;
//! - [`files`]: open, create, read, write, flush, release, fsync, setattr, fallocate;
//! - [`dirs`]: directory handles and listings (readdir, readdirplus);
//! - [`xattrs`]: extended attributes;
//! - [`locks`]: fcntl and flock locks;
//! - [`attr`]: attribute and file-type conversion;
//! - [`ino_map`]: the kernel's inode numbers and the cluster's;
//! - [`state`]: the shared state they all use ([`Core`]).
mod attr;
mod dirs;
mod files;
mod ino_map;
mod locks;
mod namespace;
mod reply;
mod state;
mod xattrs;

pub use self::attr::SetAttr;
pub use self::ino_map::InoMap;
pub use self::namespace::NewEntry;
pub use self::state::Core;

use self::dirs::Listing;
use self::reply::FuseReply;
use crate::errno::Errno;
use cairn_proto as pb;
use fuser::{
    Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow,
};
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// fuser's `Filesystem`, handing every request to the runtime.
pub struct CairnFs {
    core: Arc<Core>,
    rt: tokio::runtime::Handle,
}

impl CairnFs {
    pub fn new(core: Arc<Core>, rt: tokio::runtime::Handle) -> CairnFs {
        CairnFs { core, rt }
    }

    /// Runs `op` (the FUSE operation `name`) on the runtime and answers `reply` with its
    /// result; the operation is counted and timed ([`crate::mount_metrics::fuse_op`]).
    fn spawn_reply<R, F, Fut>(&self, name: &'static str, reply: R, op: F)
    where
        R: FuseReply,
        F: FnOnce(Arc<Core>) -> Fut,
        Fut: Future<Output = Result<R::Value, Errno>> + Send + 'static,
    {
        let op = op(self.core.clone());
        let started = std::time::Instant::now();
        self.rt.spawn(async move {
            let r = op.await;
            crate::mount_metrics::fuse_op(name, r.is_ok(), started);
            reply.finish(r)
        });
    }

    /// Lists Cairn directory `ino` (handle `fh`) from cookie `offset` into `out` on the runtime.
    fn spawn_listing<L>(&self, name: &'static str, mut out: L, ino: u64, fh: u64, offset: i64)
    where
        L: Listing + FuseReply<Value = ()>,
    {
        let h = self.core.dirs.handle(fh);
        let core = self.core.clone();
        let started = std::time::Instant::now();
        self.rt.spawn(async move {
            let r = core.list_dir(ino, &h, offset, &mut out).await;
            crate::mount_metrics::fuse_op(name, r.is_ok(), started);
            out.finish(r)
        });
    }

    /// The Cairn inode of the kernel's inode `ino`: every inode number of a request goes
    /// through here before anything else sees it (see [`InoMap`]).
    fn ino(&self, ino: u64) -> u64 {
        self.core.inos.to_cairn(ino)
    }

    /// Who creates `name` in the kernel's directory `parent`: the requesting user.
    fn new_entry(&self, req: &Request<'_>, parent: u64, name: &OsStr) -> NewEntry {
        NewEntry {
            parent: self.ino(parent),
            name: bytes(name),
            uid: req.uid(),
            gid: req.gid(),
        }
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
        let parent = self.ino(parent);
        let name = bytes(name);
        self.spawn_reply("lookup", reply, move |core| async move {
            core.lookup(parent, name).await
        });
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, _nlookup: u64) {
        self.core.seen.forget(self.ino(ino));
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let ino = self.ino(ino);
        self.spawn_reply("getattr", reply, move |core| async move {
            core.getattr(ino).await
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
        let ino = self.ino(ino);
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        self.spawn_reply("setattr", reply, move |core| async move {
            core.setattr(ino, change).await
        });
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        let ino = self.ino(ino);
        self.spawn_reply("readlink", reply, move |core| async move {
            core.readlink(ino).await
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
        let at = self.new_entry(req, parent, name);
        self.spawn_reply("mknod", reply, move |core| async move {
            core.mknod(at, mode, rdev).await
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
        let at = self.new_entry(req, parent, name);
        self.spawn_reply("mkdir", reply, move |core| async move {
            core.mkdir(at, mode).await
        });
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let parent = self.ino(parent);
        let name = bytes(name);
        self.spawn_reply("unlink", reply, move |core| async move {
            core.unlink(parent, name).await
        });
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let parent = self.ino(parent);
        let name = bytes(name);
        self.spawn_reply("rmdir", reply, move |core| async move {
            core.rmdir(parent, name).await
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
        let at = self.new_entry(req, parent, link_name);
        let target = bytes(target.as_os_str());
        self.spawn_reply("symlink", reply, move |core| async move {
            core.symlink(at, target).await
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
        let (parent, newparent) = (self.ino(parent), self.ino(newparent));
        let (name, new_name) = (bytes(name), bytes(newname));
        self.spawn_reply("rename", reply, move |core| async move {
            core.rename(parent, name, newparent, new_name, flags).await
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
        let (ino, newparent) = (self.ino(ino), self.ino(newparent));
        let new_name = bytes(newname);
        self.spawn_reply("link", reply, move |core| async move {
            core.link(ino, newparent, new_name).await
        });
    }

    fn open(&mut self, req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let ino = self.ino(ino);
        let fh = self.core.fh();
        let opener = req.pid();
        self.spawn_reply("open", reply, move |core| async move {
            core.open(ino, flags, opener).await.map(|()| fh)
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
        let started = self.core.start_read(self.ino(ino), offset);
        self.spawn_reply("read", reply, move |core| async move {
            let (f, offset) = started?;
            f.read(&core.dp, offset, size).await
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
        let started = self.core.start_write(self.ino(ino), offset, req.pid());
        let data = data.to_vec();
        self.spawn_reply("write", reply, move |core| async move {
            let (f, offset) = started?;
            f.write(&core.dp, offset, &data).await
        });
    }

    fn flush(&mut self, req: &Request<'_>, ino: u64, _fh: u64, lock_owner: u64, reply: ReplyEmpty) {
        let ino = self.ino(ino);
        let file = self.core.files.get(ino);
        let closer = req.pid();
        self.spawn_reply("flush", reply, move |core| async move {
            core.flush(file, ino, lock_owner, closer).await
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
        let ino = self.ino(ino);
        // The handle goes here, in request order; whether it was the last decides the rest
        // (see `Core::release`).
        let left = self.core.files.release(ino);
        let file = self.core.files.get(ino);
        self.spawn_reply("release", reply, move |core| async move {
            core.release(ino, file, left, lock_owner).await
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
        let file = self.core.files.get(self.ino(ino));
        self.spawn_reply(
            "fsync",
            reply,
            move |core| async move { core.fsync(file).await },
        );
    }

    fn opendir(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        let fh = self.core.fh();
        let _ = self.core.dirs.handle(fh);
        reply.send(fh);
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        reply: ReplyDirectory,
    ) {
        self.spawn_listing("readdir", reply, self.ino(ino), fh, offset);
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        reply: ReplyDirectoryPlus,
    ) {
        self.spawn_listing("readdirplus", reply, self.ino(ino), fh, offset);
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.core.dirs.close(fh);
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        // The cluster's capacity, whatever the inode: a sub-directory mount shows the whole
        // cluster's, as an NFS export of a directory shows its disk's.
        self.spawn_reply(
            "statfs",
            reply,
            move |core| async move { core.statfs().await },
        );
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
        let at = self.new_entry(req, parent, name);
        let fh = self.core.fh();
        self.spawn_reply("create", reply, move |core| async move {
            let attr = core.create_file(at, mode, flags).await?;
            Ok((attr, fh))
        });
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
        let ino = self.ino(ino);
        let want = locks::lock_arg(typ, start, end, pid);
        self.spawn_reply("getlk", reply, move |core| async move {
            core.getlk(ino, lock_owner, want?).await
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
        let ino = self.ino(ino);
        let want = locks::lock_arg(typ, start, end, pid);
        let waiter = req.pid();
        self.spawn_reply("setlk", reply, move |core| async move {
            core.setlk(ino, lock_owner, want?, sleep, waiter).await
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
        let req = pb::SetXattrRequest {
            ino: self.ino(ino),
            name: bytes(name),
            value: value.to_vec(),
            flags: flags as u32,
        };
        self.spawn_reply("setxattr", reply, move |core| async move {
            if position != 0 {
                return Err(Errno::EINVAL);
            }
            core.setxattr(req).await
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
        let ino = self.ino(ino);
        let name = bytes(name);
        self.spawn_reply("getxattr", reply, move |core| async move {
            core.getxattr(ino, name, size).await
        });
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        let ino = self.ino(ino);
        self.spawn_reply("listxattr", reply, move |core| async move {
            core.listxattr(ino, size).await
        });
    }

    fn removexattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        let ino = self.ino(ino);
        let name = bytes(name);
        self.spawn_reply("removexattr", reply, move |core| async move {
            core.removexattr(ino, name).await
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
        let ino = self.ino(ino);
        let range = (u64::try_from(offset), u64::try_from(length));
        self.spawn_reply("fallocate", reply, move |core| async move {
            let (Ok(offset), Ok(length)) = range else {
                return Err(Errno::EINVAL);
            };
            core.fallocate(ino, offset, length, mode).await
        });
    }
}
