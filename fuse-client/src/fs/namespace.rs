//! Namespace operations: looking names up, attributes of inodes, creating, linking, renaming
//! and removing entries, reading symlinks, and the file system's capacity (statfs).
use super::attr::TTL;
use super::reply::Statfs;
use super::state::Core;
use crate::errno::{Errno, OrErrno};
use cairn_common::name::validate_name;
use cairn_common::Kind;
use cairn_proto as pb;
use fuser::FileAttr;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Directories as the metadata cluster returned them with an entry change made through this
/// mount (create, unlink, …), and when. The kernel drops a directory's attributes at every such
/// change and asks for them again right away (to check permissions for the next one);
/// answering from here within the attribute TTL saves a round trip per create or unlink, and is
/// no staler than the kernel's own attribute cache.
#[derive(Default)]
pub(super) struct FreshDirs {
    map: Mutex<HashMap<u64, (Instant, pb::Attr)>>,
}

impl FreshDirs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Instant, pb::Attr)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers a directory's attributes as returned with an entry change.
    pub(super) fn note(&self, parent: Option<pb::Attr>) {
        if let Some(p) = parent {
            let mut m = self.lock();
            // Bounded: entries older than the TTL are useless anyway.
            if m.len() > 4096 {
                m.retain(|_, (t, _)| t.elapsed() < TTL);
            }
            m.insert(p.ino, (Instant::now(), p));
        }
    }

    pub(super) fn forget(&self, ino: u64) {
        self.lock().remove(&ino);
    }

    /// The attributes of directory `ino` if noted within the TTL.
    fn get(&self, ino: u64) -> Option<pb::Attr> {
        self.lock()
            .get(&ino)
            .filter(|(t, _)| t.elapsed() < TTL)
            .map(|(_, a)| *a)
    }
}

/// A new directory entry: where, and who creates it.
pub struct NewEntry {
    pub parent: u64,
    pub name: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
}

impl NewEntry {
    /// The wire's request to create this entry as a `kind` with permission bits `mode`.
    pub(super) fn request(
        self,
        kind: Kind,
        mode: u32,
        rdev: u32,
        symlink_target: Vec<u8>,
        exclusive: bool,
    ) -> pb::CreateRequest {
        pb::CreateRequest {
            parent: self.parent,
            name: self.name,
            kind: kind.to_wire() as i32,
            mode,
            uid: self.uid,
            gid: self.gid,
            rdev,
            symlink_target,
            exclusive,
        }
    }
}

impl Core {
    pub async fn lookup(&self, parent: u64, name: Vec<u8>) -> Result<FileAttr, Errno> {
        validate_name(&name).map_err(Errno::from)?;
        let a = self.meta().lookup(parent, &name).await.or_errno("lookup")?;
        Ok(self.to_fuse(&a))
    }

    pub async fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        if let Some(a) = self.fresh_dirs.get(ino) {
            return Ok(self.to_fuse(&a));
        }
        let a = self.meta().get_attr(ino).await.or_errno("getattr")?;
        Ok(self.to_fuse(&a))
    }

    /// Creates an entry; its attributes.
    pub(super) async fn create(&self, req: pb::CreateRequest) -> Result<pb::Attr, Errno> {
        validate_name(&req.name).map_err(Errno::from)?;
        let (attr, parent) = self.meta().create(req).await.or_errno("create")?;
        self.fresh_dirs.note(parent);
        Ok(attr)
    }

    pub async fn mknod(&self, at: NewEntry, mode: u32, rdev: u32) -> Result<FileAttr, Errno> {
        // mknod(2) makes no symlink (it has no target); the kernel refuses one itself.
        let kind = Kind::from_mode(mode)
            .filter(|k| *k != Kind::Symlink)
            .ok_or(Errno::EINVAL)?;
        let a = self
            .create(at.request(kind, mode & 0o7777, rdev, Vec::new(), true))
            .await?;
        Ok(self.to_fuse(&a))
    }

    pub async fn mkdir(&self, at: NewEntry, mode: u32) -> Result<FileAttr, Errno> {
        let req = at.request(Kind::Directory, mode & 0o7777, 0, Vec::new(), true);
        let a = self.create(req).await?;
        Ok(self.to_fuse(&a))
    }

    pub async fn symlink(&self, at: NewEntry, target: Vec<u8>) -> Result<FileAttr, Errno> {
        let a = self
            .create(at.request(Kind::Symlink, 0o777, 0, target, true))
            .await?;
        Ok(self.to_fuse(&a))
    }

    pub async fn link(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: Vec<u8>,
    ) -> Result<FileAttr, Errno> {
        validate_name(&new_name).map_err(Errno::from)?;
        let (attr, parent) = self
            .meta()
            .link(ino, new_parent, &new_name)
            .await
            .or_errno("link")?;
        self.fresh_dirs.note(parent);
        Ok(self.to_fuse(&attr))
    }

    pub async fn unlink(&self, parent: u64, name: Vec<u8>) -> Result<(), Errno> {
        validate_name(&name).map_err(Errno::from)?;
        let req = pb::UnlinkRequest {
            parent,
            session: self.session.id(),
            open_inodes: self.keep_open(parent, &name).await,
            name,
        };
        let r = self.meta().unlink(req).await.or_errno("unlink")?;
        self.session.note_orphan(r.orphan);
        self.fresh_dirs.note(r.parent);
        Ok(())
    }

    pub async fn rmdir(&self, parent: u64, name: Vec<u8>) -> Result<(), Errno> {
        validate_name(&name).map_err(Errno::from)?;
        let r = self.meta().rmdir(parent, &name).await.or_errno("rmdir")?;
        self.fresh_dirs.note(r.parent);
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        flags: u32,
    ) -> Result<(), Errno> {
        validate_name(&name).map_err(Errno::from)?;
        validate_name(&new_name).map_err(Errno::from)?;
        let open_inodes = self.keep_open(new_parent, &new_name).await;
        let req = pb::RenameRequest {
            parent,
            name,
            new_parent,
            new_name,
            flags,
            session: self.session.id(),
            open_inodes,
        };
        self.fresh_dirs.forget(parent);
        self.fresh_dirs.forget(new_parent);
        let r = self.meta().rename(req).await.or_errno("rename")?;
        self.session.note_orphan(r.orphan);
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
        let Ok(a) = self.lookup(parent, name.to_vec()).await else {
            // No such name (the unlink itself reports that).
            return Vec::new();
        };
        // The attributes are made for the kernel: its inode number, back to Cairn's.
        let ino = self.inos.to_cairn(a.ino);
        if self.files.get(ino).is_some() {
            vec![ino]
        } else {
            // Not open here.
            Vec::new()
        }
    }

    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        self.meta().readlink(ino).await.or_errno("readlink")
    }

    pub async fn statfs(&self) -> Result<Statfs, Errno> {
        const BS: u64 = 4096;
        let s = self.meta().stat_fs().await.or_errno("statfs")?;
        // Capacity as a user sees it: raw bytes divided by the replication factor.
        let rep = u64::from(s.replication.max(1));
        let free = s.free_bytes / rep / BS;
        Ok(Statfs {
            blocks: s.total_bytes / rep / BS,
            bfree: free,
            bavail: free,
            files: s.files,
            ffree: u64::from(u32::MAX),
            bsize: BS as u32,
            namelen: 255,
            frsize: BS as u32,
        })
    }
}
