//! Directory listings: the handles of open directories, fetching entries page by page, and
//! filling fuser's READDIR and READDIRPLUS replies ([`Listing`]).
//!
//! A listing's position (the kernel's cookie) is an index into the entries fetched so far:
//! 1 = ".", 2 = "..", 3 + i = entry i. Entries are fetched lazily, a page at a time, only as far
//! as the kernel's buffer reaches. Listings are read by Cairn inode; every inode number put into
//! a reply is the kernel's ([`super::InoMap`]), and the mount root is its own "..".
use super::attr::{wire_file_type, TTL};
use super::state::Core;
use crate::errno::{Errno, OrErrno};
use cairn_proto as pb;
use fuser::{FileType, ReplyDirectory, ReplyDirectoryPlus};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Directory entries fetched per ReadDir call.
const READDIR_PAGE: u32 = 512;

/// A directory listing being read: entries fetched so far (cookie = index + 3).
#[derive(Default)]
pub(super) struct DirHandle {
    entries: Vec<pb::DirEntry>,
    eof: bool,
    dir: Option<pb::Attr>,
    parent: u64,
}

type Shared = Arc<tokio::sync::Mutex<DirHandle>>;

/// The listings of the directories open on this mount, by handle.
#[derive(Default)]
pub(super) struct DirHandles {
    map: Mutex<HashMap<u64, Shared>>,
}

impl DirHandles {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Shared>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listing of handle `fh` (a new one if it has none yet).
    pub(super) fn handle(&self, fh: u64) -> Shared {
        self.lock().entry(fh).or_default().clone()
    }

    pub(super) fn close(&self, fh: u64) {
        self.lock().remove(&fh);
    }
}

/// Where a listing goes: fuser's READDIR or READDIRPLUS reply. Each `add_*` returns true when
/// the reply is full.
pub(super) trait Listing {
    /// Adds "." (`pos` 0) or ".." (`pos` 1) of directory `ino` (a Cairn inode).
    fn add_dot(&mut self, core: &Core, h: &DirHandle, ino: u64, pos: usize) -> Result<bool, Errno>;

    /// Adds entry `e` at cookie `next` (or skips it).
    fn add_entry(&mut self, core: &Core, e: &pb::DirEntry, next: i64) -> bool;
}

fn dot_name(pos: usize) -> &'static str {
    if pos == 0 {
        "."
    } else {
        ".."
    }
}

impl Listing for ReplyDirectory {
    fn add_dot(&mut self, core: &Core, h: &DirHandle, ino: u64, pos: usize) -> Result<bool, Errno> {
        let target = if pos == 0 {
            core.inos.to_fuse(ino)
        } else {
            core.inos.dotdot(ino, h.parent)
        };
        Ok(self.add(target, (pos + 1) as i64, FileType::Directory, dot_name(pos)))
    }

    fn add_entry(&mut self, core: &Core, e: &pb::DirEntry, next: i64) -> bool {
        let (child, kind) = e
            .attr
            .as_ref()
            .map(|a| (core.inos.to_fuse(a.ino), wire_file_type(a.kind)))
            .unwrap_or((0, FileType::RegularFile));
        self.add(child, next, kind, OsStr::from_bytes(&e.name))
    }
}

impl Listing for ReplyDirectoryPlus {
    fn add_dot(&mut self, core: &Core, h: &DirHandle, ino: u64, pos: usize) -> Result<bool, Errno> {
        let dir = h.dir.as_ref().ok_or(Errno::EIO)?;
        let mut attr = core.to_fuse(dir);
        if pos == 1 {
            attr.ino = core.inos.dotdot(ino, h.parent);
        }
        let next = (pos + 1) as i64;
        Ok(self.add(attr.ino, next, dot_name(pos), &Duration::ZERO, &attr, 0))
    }

    fn add_entry(&mut self, core: &Core, e: &pb::DirEntry, next: i64) -> bool {
        // An entry without attributes cannot be given with them: skipped.
        let Some(a) = e.attr.as_ref() else {
            return false;
        };
        let attr = core.to_fuse(a);
        self.add(attr.ino, next, OsStr::from_bytes(&e.name), &TTL, &attr, 0)
    }
}

impl Core {
    /// Lists directory `ino` through handle `h` from cookie `offset` into `out`, until `out` is
    /// full or the directory ends.
    pub(super) async fn list_dir(
        &self,
        ino: u64,
        h: &Shared,
        offset: i64,
        out: &mut impl Listing,
    ) -> Result<(), Errno> {
        let mut h = h.lock().await;
        let mut pos = offset.max(0) as usize;
        loop {
            if pos < 2 {
                if h.dir.is_none() {
                    self.fill_dir(ino, &mut h, 1).await?;
                }
                if out.add_dot(self, &h, ino, pos)? {
                    break;
                }
                pos += 1;
                continue;
            }
            let i = pos - 2;
            self.fill_dir(ino, &mut h, i + 1).await?;
            let Some(e) = h.entries.get(i) else { break };
            if out.add_entry(self, e, (pos + 1) as i64) {
                break;
            }
            pos += 1;
        }
        Ok(())
    }

    /// Makes sure entries up to `index` (exclusive) are fetched, if the directory has them.
    async fn fill_dir(&self, ino: u64, h: &mut DirHandle, index: usize) -> Result<(), Errno> {
        while h.entries.len() < index && !h.eof {
            let after = h.entries.last().map(|e| e.name.clone()).unwrap_or_default();
            let r = self
                .meta()
                .read_dir(ino, &after, READDIR_PAGE)
                .await
                .or_errno("readdir")
                // A directory removed (by another mount) while open here lists as a local
                // file system's removed directory does: ENOENT. A listing retries no path
                // walk, so a stale handle's ESTALE would only be a stranger answer.
                .map_err(|e| if e == Errno::ESTALE { Errno::ENOENT } else { e })?;
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
}
