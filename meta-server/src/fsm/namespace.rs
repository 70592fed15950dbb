//! The namespace: directory entries and the commands that change them (`Create`, `Link`,
//! `Unlink`, `Rmdir`, `Rename`), with the POSIX rules each follows, and the reads of names
//! (lookup, listing, readlink).
use super::inodes::Inode;
use super::schema::{corrupt, fs_err, named_key, storage, CF_DENTRIES};
use super::tx::Tx;
use super::Fsm;
use crate::command::{
    CommandResult, Create, FsError, Keep, Kind, Link, Rename, Reply, Rmdir, Time, Unlink,
    RENAME_EXCHANGE, RENAME_NOREPLACE,
};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use cairn_common::ROOT_INO;
use rocksdb::{Direction, IteratorMode};

/// Longest symlink target (PATH_MAX).
pub const SYMLINK_MAX: usize = 4096;
/// Most hard links one inode may have.
pub const LINK_MAX: u32 = 65_000;
/// Deepest directory nesting the subtree walk of `rename` follows before declaring the tree
/// corrupt (a loop in `parent` pointers must not hang the state machine).
const MAX_DEPTH: usize = 1 << 16;

/// A directory entry's value: the child and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dentry {
    pub ino: u64,
    pub kind: Kind,
}

impl Dentry {
    pub fn encode(&self) -> [u8; 9] {
        let mut v = [0u8; 9];
        v[..8].copy_from_slice(&self.ino.to_be_bytes());
        v[8] = self.kind.to_byte();
        v
    }

    pub fn decode(v: &[u8]) -> Result<Dentry, FsError> {
        let (ino, kind) = match v {
            [ino @ .., k] if ino.len() == 8 => (ino, *k),
            _ => return Err(corrupt(format!("dentry value of {} bytes", v.len()))),
        };
        let ino = u64::from_be_bytes(ino.try_into().map_err(corrupt)?);
        let kind = Kind::from_byte(kind).ok_or_else(|| corrupt(format!("kind byte {kind}")))?;
        Ok(Dentry { ino, kind })
    }
}

/// One page of a directory listing.
#[derive(Clone, Debug, PartialEq)]
pub struct DirPage {
    pub dir: Inode,
    /// (name, child) in name order.
    pub entries: Vec<(Vec<u8>, Inode)>,
    /// True when no entry follows the last one returned.
    pub eof: bool,
}

pub(super) fn validate_name(name: &[u8]) -> Result<(), FsError> {
    cairn_common::name::validate_name(name).map_err(|k| {
        fs_err(
            k,
            format!("invalid name {:?}", String::from_utf8_lossy(name)),
        )
    })
}

fn not_found(parent: u64, name: &[u8]) -> FsError {
    fs_err(
        ErrorKind::NotFound,
        format!("{:?} not found in {parent}", String::from_utf8_lossy(name)),
    )
}

fn exists(name: &[u8]) -> FsError {
    fs_err(
        ErrorKind::AlreadyExists,
        format!("{:?} exists", String::from_utf8_lossy(name)),
    )
}

// --- reads ---------------------------------------------------------------------------------------

impl Fsm {
    fn get_dir(&self, ino: u64) -> Result<Inode, MetaError> {
        let dir = self.get(ino)?;
        if !dir.is_dir() {
            return Err(MetaError::fs(
                ErrorKind::NotDir,
                format!("inode {ino} is not a directory"),
            ));
        }
        Ok(dir)
    }

    fn dentry_target(&self, d: Dentry) -> Result<Inode, MetaError> {
        self.get_opt(d.ino)?.ok_or_else(|| {
            MetaError::from(corrupt(format!("dentry points at missing inode {}", d.ino)))
        })
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode, MetaError> {
        validate_name(name)?;
        self.get_dir(parent)?;
        let d = self
            .raw_get(CF_DENTRIES, &named_key(parent, name))?
            .ok_or_else(|| not_found(parent, name))?;
        self.dentry_target(Dentry::decode(&d)?)
    }

    /// Up to `limit` entries of directory `ino` whose names sort strictly after `after`.
    pub fn readdir(&self, ino: u64, after: &[u8], limit: usize) -> Result<DirPage, MetaError> {
        let dir = self.get_dir(ino)?;
        let prefix = ino.to_be_bytes();
        let start = named_key(ino, after);
        let mut entries = Vec::new();
        let mut eof = true;
        for item in self.iter_prefix(CF_DENTRIES, &prefix, &start)? {
            let (k, v) = item?;
            let name = &k[8..];
            if !after.is_empty() && name == after {
                continue;
            }
            if entries.len() >= limit {
                eof = false;
                break;
            }
            entries.push((name.to_vec(), self.dentry_target(Dentry::decode(&v)?)?));
        }
        Ok(DirPage { dir, entries, eof })
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, MetaError> {
        let i = self.get(ino)?;
        if i.kind != Kind::Symlink {
            return Err(MetaError::fs(
                ErrorKind::InvalidArgument,
                format!("inode {ino} is not a symlink"),
            ));
        }
        Ok(i.symlink)
    }

    /// A name of `child` in directory `dir` (a scan of that directory's entries only).
    pub fn name_in(&self, dir: u64, child: u64) -> Result<Option<Vec<u8>>, MetaError> {
        let prefix = dir.to_be_bytes();
        for item in self.iter_prefix(CF_DENTRIES, &prefix, &prefix)? {
            let (k, v) = item?;
            if Dentry::decode(&v)?.ino == child {
                return Ok(Some(k[8..].to_vec()));
            }
        }
        Ok(None)
    }

    /// Calls `f(parent, name, child)` for every directory entry (path resolution of files,
    /// which have no parent pointer, uses it).
    pub fn for_each_dentry(&self, mut f: impl FnMut(u64, &[u8], u64)) -> Result<(), MetaError> {
        let snap = self.db.snapshot();
        let mode = IteratorMode::From(&[], Direction::Forward);
        for item in snap.iterator_cf(self.cf(CF_DENTRIES)?, mode) {
            let (k, v) = item.map_err(storage)?;
            let parent = super::schema::u64_at(&k, 0, "dentry")?;
            f(parent, &k[8..], Dentry::decode(&v)?.ino);
        }
        Ok(())
    }
}

// --- commands ------------------------------------------------------------------------------------

impl Create {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        Ok(Reply::Attr(tx.create(self)?))
    }
}

impl Link {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let (ino, new_parent, new_name, now) =
            (self.ino, self.new_parent, &self.new_name, self.now);
        validate_name(new_name)?;
        let mut i = tx.must_inode(ino)?;
        if i.is_dir() {
            return Err(fs_err(
                ErrorKind::NotPermitted,
                format!("cannot hard-link directory {ino}"),
            ));
        }
        if i.nlink == 0 {
            // An orphan (unlinked while open) cannot get a name back.
            return Err(fs_err(
                ErrorKind::NotFound,
                format!("inode {ino} has been unlinked"),
            ));
        }
        tx.must_dir(new_parent)?;
        if tx.dentry(new_parent, new_name)?.is_some() {
            return Err(exists(new_name));
        }
        if i.nlink >= LINK_MAX {
            return Err(fs_err(
                ErrorKind::TooManyLinks,
                format!("inode {ino} has too many links"),
            ));
        }
        i.nlink += 1;
        i.ctime = now;
        tx.put_inode(i.clone());
        tx.put_dentry(new_parent, new_name, Dentry { ino, kind: i.kind });
        tx.touch_dir(new_parent, now, 0)?;
        Ok(Reply::Attr(i))
    }
}

impl Unlink {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let orphan = tx.remove_name(self.parent, &self.name, false, self.now, &self.keep)?;
        Ok(Reply::Unlinked { orphan })
    }
}

impl Rmdir {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        tx.remove_name(self.parent, &self.name, true, self.now, &Keep::default())?;
        Ok(Reply::Empty)
    }
}

impl Rename {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let Rename {
            parent,
            ref name,
            new_parent,
            ref new_name,
            flags,
            now,
            ref keep,
        } = *self;
        validate_name(name)?;
        validate_name(new_name)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(fs_err(
                ErrorKind::InvalidArgument,
                format!("bad rename flags {flags:#x}"),
            ));
        }
        tx.must_dir(parent)?;
        tx.must_dir(new_parent)?;
        let src = tx
            .dentry(parent, name)?
            .ok_or_else(|| not_found(parent, name))?;
        let dst = tx.dentry(new_parent, new_name)?;
        if parent == new_parent && name == new_name {
            return if flags & RENAME_NOREPLACE != 0 {
                Err(fs_err(
                    ErrorKind::AlreadyExists,
                    "rename onto itself with NOREPLACE",
                ))
            } else {
                Ok(Reply::Empty)
            };
        }
        if flags & RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or_else(|| not_found(new_parent, new_name))?;
            tx.exchange(
                (parent, name.as_slice(), src),
                (new_parent, new_name.as_slice(), dst),
                now,
            )?;
            return Ok(Reply::Empty);
        }
        let src_is_dir = src.kind == Kind::Directory;
        if let Some(dst) = dst {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(exists(new_name));
            }
            if dst.ino == src.ino {
                // Two hard links of one file: POSIX says do nothing.
                return Ok(Reply::Empty);
            }
            let dst_is_dir = dst.kind == Kind::Directory;
            match (src_is_dir, dst_is_dir) {
                (true, false) => {
                    return Err(fs_err(
                        ErrorKind::NotDir,
                        format!("{} is not a directory", dst.ino),
                    ))
                }
                (false, true) => {
                    return Err(fs_err(
                        ErrorKind::IsDir,
                        format!("{} is a directory", dst.ino),
                    ))
                }
                (true, true) => {
                    if !tx.dir_is_empty(dst.ino)? {
                        return Err(fs_err(
                            ErrorKind::NotEmpty,
                            format!("directory {} is not empty", dst.ino),
                        ));
                    }
                }
                (false, false) => {}
            }
        }
        if src_is_dir && parent != new_parent {
            tx.refuse_subtree(src.ino, new_parent)?;
        }

        // Replace the target, if any.
        let mut d_new = 0i32;
        let mut orphan = 0;
        if let Some(dst) = dst {
            let victim = tx.must_inode(dst.ino)?;
            if victim.is_dir() {
                // The replaced directory's ".." no longer counts toward new_parent.
                d_new -= 1;
            }
            orphan = tx.drop_link(victim, now, keep)?;
        }
        tx.del_dentry(parent, name);
        tx.put_dentry(new_parent, new_name, src);
        let mut s = tx.must_inode(src.ino)?;
        s.ctime = now;
        let mut d_old = 0i32;
        if s.is_dir() {
            s.parent = new_parent;
            if parent != new_parent {
                d_old -= 1;
                d_new += 1;
            }
        }
        tx.put_inode(s);
        if parent == new_parent {
            tx.touch_dir(parent, now, d_old + d_new)?;
        } else {
            tx.touch_dir(parent, now, d_old)?;
            tx.touch_dir(new_parent, now, d_new)?;
        }
        Ok(Reply::Unlinked { orphan })
    }
}

/// One side of a rename: the directory, the name in it and its entry.
type Side<'n> = (u64, &'n [u8], Dentry);

impl Tx<'_> {
    /// Creates `c.name` in `c.parent` (mkdir, mknod, create, symlink). A non-exclusive create
    /// of a regular file that exists returns the existing file.
    pub(super) fn create(&mut self, c: &Create) -> Result<Inode, FsError> {
        let Create {
            parent,
            ref name,
            kind,
            mode,
            uid,
            gid,
            rdev,
            symlink_target: ref target,
            exclusive,
            now,
        } = *c;
        validate_name(name)?;
        if kind == Kind::Symlink {
            if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
                return Err(fs_err(
                    ErrorKind::InvalidArgument,
                    "symlink target must be 1..=4096 bytes without NUL",
                ));
            }
        } else if !target.is_empty() {
            return Err(fs_err(
                ErrorKind::InvalidArgument,
                "only symlinks have a target",
            ));
        }
        let dir = self.must_dir(parent)?;
        if let Some(d) = self.dentry(parent, name)? {
            if !exclusive && kind == Kind::Regular && d.kind == Kind::Regular {
                return self.must_inode(d.ino);
            }
            return Err(exists(name));
        }
        if kind == Kind::Directory && dir.nlink >= LINK_MAX {
            return Err(fs_err(
                ErrorKind::TooManyLinks,
                format!("directory {parent} is full"),
            ));
        }
        let ino = self.new_ino()?;
        let is_dir = kind == Kind::Directory;
        let inode = Inode {
            ino,
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            size: if kind == Kind::Symlink {
                target.len() as u64
            } else {
                0
            },
            nlink: if is_dir { 2 } else { 1 },
            atime: now,
            mtime: now,
            ctime: now,
            version: 1,
            rdev,
            symlink: target.to_vec(),
            parent: if is_dir { parent } else { 0 },
            stored_bytes: 0,
        };
        self.put_inode(inode.clone());
        self.put_dentry(parent, name, Dentry { ino, kind });
        self.touch_dir(parent, now, if is_dir { 1 } else { 0 })?;
        Ok(inode)
    }

    /// unlink (`rmdir` false) or rmdir of `parent`/`name`; returns the inode kept as an orphan
    /// of the caller's session (0: none).
    fn remove_name(
        &mut self,
        parent: u64,
        name: &[u8],
        rmdir: bool,
        now: Time,
        keep: &Keep,
    ) -> Result<u64, FsError> {
        validate_name(name)?;
        self.must_dir(parent)?;
        let d = self
            .dentry(parent, name)?
            .ok_or_else(|| not_found(parent, name))?;
        let child = self.must_inode(d.ino)?;
        if rmdir {
            if !child.is_dir() {
                return Err(fs_err(
                    ErrorKind::NotDir,
                    format!("{} is not a directory", d.ino),
                ));
            }
            if !self.dir_is_empty(d.ino)? {
                return Err(fs_err(
                    ErrorKind::NotEmpty,
                    format!("directory {} is not empty", d.ino),
                ));
            }
        } else if child.is_dir() {
            return Err(fs_err(
                ErrorKind::IsDir,
                format!("{} is a directory", d.ino),
            ));
        }
        self.del_dentry(parent, name);
        self.touch_dir(parent, now, if rmdir { -1 } else { 0 })?;
        self.drop_link(child, now, keep)
    }

    /// RENAME_EXCHANGE: the two entries swap their targets.
    fn exchange(&mut self, a: Side, b: Side, now: Time) -> Result<(), FsError> {
        let ((parent, name, src), (new_parent, new_name, dst)) = (a, b);
        let src_is_dir = src.kind == Kind::Directory;
        let dst_is_dir = dst.kind == Kind::Directory;
        if src_is_dir {
            self.refuse_subtree(src.ino, new_parent)?;
        }
        if dst_is_dir {
            self.refuse_subtree(dst.ino, parent)?;
        }
        self.put_dentry(parent, name, dst);
        self.put_dentry(new_parent, new_name, src);
        let (mut d_old, mut d_new) = (0i32, 0i32);
        if parent != new_parent {
            if src_is_dir {
                d_old -= 1;
                d_new += 1;
            }
            if dst_is_dir {
                d_old += 1;
                d_new -= 1;
            }
        }
        for (ino, holder) in [(src.ino, new_parent), (dst.ino, parent)] {
            let mut i = self.must_inode(ino)?;
            if i.is_dir() {
                i.parent = holder;
            }
            i.ctime = now;
            self.put_inode(i);
        }
        self.touch_dir(parent, now, d_old)?;
        if parent != new_parent {
            self.touch_dir(new_parent, now, d_new)?;
        }
        Ok(())
    }

    /// Drops one link of `i` (already unlinked from its directory). When no link is left the
    /// inode is deleted, unless `keep` says the caller's mount still has it open: then it stays
    /// as an orphan of that session, whose ino is returned.
    pub(super) fn drop_link(
        &mut self,
        mut i: Inode,
        now: Time,
        keep: &Keep,
    ) -> Result<u64, FsError> {
        if i.is_dir() {
            // A directory has exactly one name; removing it removes the directory.
            self.delete_inode(i, now)?;
            return Ok(0);
        }
        i.nlink = i.nlink.saturating_sub(1);
        i.ctime = now;
        if i.nlink == 0 {
            if keep.open.contains(&i.ino) && self.session_exists(keep.session)? {
                let ino = i.ino;
                self.put_inode(i);
                self.add_orphan(keep.session, ino);
                return Ok(ino);
            }
            self.delete_inode(i, now)?;
            return Ok(0);
        }
        self.put_inode(i);
        Ok(0)
    }

    /// A directory's entries changed: new mtime and ctime, `nlink_delta` subdirectories.
    fn touch_dir(&mut self, ino: u64, now: Time, nlink_delta: i32) -> Result<(), FsError> {
        let mut d = self.must_inode(ino)?;
        d.mtime = now;
        d.ctime = now;
        d.nlink = d.nlink.saturating_add_signed(nlink_delta);
        self.put_inode(d);
        Ok(())
    }

    /// Fails with `InvalidArgument` when `dir` lies in the subtree of `ancestor`.
    fn refuse_subtree(&mut self, ancestor: u64, dir: u64) -> Result<(), FsError> {
        let mut cur = dir;
        for _ in 0..MAX_DEPTH {
            if cur == ancestor {
                return Err(fs_err(
                    ErrorKind::InvalidArgument,
                    format!("cannot move directory {ancestor} into its own subtree"),
                ));
            }
            if cur == ROOT_INO {
                return Ok(());
            }
            cur = self.must_inode(cur)?.parent;
        }
        Err(corrupt(format!(
            "directory {dir} is deeper than {MAX_DEPTH}"
        )))
    }
}
