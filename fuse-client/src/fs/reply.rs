//! How an operation's result becomes a FUSE reply: [`FuseReply`], implemented once for each
//! fuser reply type, so that every `Filesystem` method ends in the one
//! [`FuseReply::finish`] (`Ok` → the type's answer, `Err(errno)` → `reply.error`).
use super::attr::TTL;
use crate::errno::Errno;
use fuser::{
    FileAttr, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
};

/// A fuser reply, answered with an operation's value or an errno.
pub trait FuseReply: Send + 'static {
    /// What a successful operation answers with.
    type Value;

    /// Answers with `value`.
    fn send(self, value: Self::Value);

    /// Answers with an errno.
    fn send_error(self, e: Errno);

    /// Answers with the outcome of an operation.
    fn finish(self, r: Result<Self::Value, Errno>)
    where
        Self: Sized,
    {
        match r {
            Ok(v) => self.send(v),
            Err(e) => self.send_error(e),
        }
    }
}

/// getxattr/listxattr's answer: the size when the caller asked for it, else the bytes.
pub enum Xattr {
    Size(u32),
    Data(Vec<u8>),
}

/// statfs(2)'s figures, in `bsize` blocks.
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A lock as fcntl(F_GETLK) reports it (`typ`: `F_RDLCK`, `F_WRLCK` or `F_UNLCK`).
pub struct LockInfo {
    pub start: u64,
    pub end: u64,
    pub typ: i32,
    pub pid: u32,
}

/// Implements [`FuseReply`] for a reply type: `value => answer`.
macro_rules! fuse_reply {
    ($reply:ty, $value:ty, |$r:ident, $v:pat_param| $send:expr) => {
        impl FuseReply for $reply {
            type Value = $value;
            fn send(self, value: $value) {
                let ($r, $v) = (self, value);
                $send
            }
            fn send_error(self, e: Errno) {
                self.error(e.code())
            }
        }
    };
}

fuse_reply!(ReplyEmpty, (), |r, ()| r.ok());
fuse_reply!(ReplyData, Vec<u8>, |r, data| r.data(&data));
fuse_reply!(ReplyEntry, FileAttr, |r, attr| r.entry(&TTL, &attr, 0));
fuse_reply!(ReplyAttr, FileAttr, |r, attr| r.attr(&TTL, &attr));
fuse_reply!(ReplyOpen, u64, |r, fh| r.opened(fh, 0));
fuse_reply!(ReplyWrite, u32, |r, written| r.written(written));
fuse_reply!(ReplyCreate, (FileAttr, u64), |r, (attr, fh)| r
    .created(&TTL, &attr, 0, fh, 0));
fuse_reply!(ReplyLock, LockInfo, |r, l| r
    .locked(l.start, l.end, l.typ, l.pid));
fuse_reply!(ReplyDirectory, (), |r, ()| r.ok());
fuse_reply!(ReplyDirectoryPlus, (), |r, ()| r.ok());
fuse_reply!(ReplyStatfs, Statfs, |r, s| r.statfs(
    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize
));
fuse_reply!(ReplyXattr, Xattr, |r, x| match x {
    Xattr::Size(n) => r.size(n),
    Xattr::Data(d) => r.data(&d),
});
