//! Inode records and their attributes: the [`Inode`] type, attribute changes (`SetAttr`:
//! chmod, chown, utimens, truncate), deleting an inode with everything that hangs off it, and
//! the inode reads.
use super::schema::{encode_json, fs_err, Counter, CF_COUNTERS, CF_INODES, LAYOUT};
use super::tx::Tx;
use super::Fsm;
use crate::command::{CommandResult, FsError, Kind, Reply, SetAttr, Time};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use cairn_common::ROOT_INO;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

/// One inode at its current version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Inode {
    pub ino: u64,
    pub kind: Kind,
    /// Permission bits only (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    /// Starts at 1, +1 on every content change (write commit, size change).
    pub version: u64,
    pub rdev: u32,
    /// Symlink target (empty for other kinds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub symlink: Vec<u8>,
    /// For directories: the directory holding it (the root is its own parent). 0 for other
    /// kinds, which may have several parents (hard links).
    pub parent: u64,
    /// Regular files: bytes of chunk data the file references (the sum of its slots' `len`;
    /// the slots themselves are rows of the `slots` column family, see `content.rs`).
    #[serde(default)]
    pub stored_bytes: u64,
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Directory
    }
}

/// The answer to a call that addresses inode `ino` by number when no such inode exists: a
/// stale handle (`ErrorKind::Stale`, ESTALE), never a missing name (`NotFound`, ENOENT).
/// Inode numbers are never reused, so the caller's number names an inode that was deleted: a
/// kernel's cached entry of a file that a rename replaced, a directory another mount removed.
/// The kernel answers ESTALE by walking the path again (`LOOKUP_REVAL`), which finds the
/// name's current inode, or reports the name missing with ENOENT.
pub(super) fn no_inode(ino: u64) -> FsError {
    fs_err(
        ErrorKind::Stale,
        format!("inode {ino} does not exist (stale handle)"),
    )
}

impl Fsm {
    /// Creates the root directory if it is absent; true if it did. Every replica creates the
    /// identical root (fixed time 0), so state stays identical across replicas.
    pub(super) fn init_root(&self, b: &mut WriteBatch) -> Result<bool, MetaError> {
        if self.get_opt(ROOT_INO)?.is_some() {
            return Ok(false);
        }
        let root = Inode {
            ino: ROOT_INO,
            kind: Kind::Directory,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2,
            atime: Time::default(),
            mtime: Time::default(),
            ctime: Time::default(),
            version: 1,
            rdev: 0,
            symlink: Vec::new(),
            parent: ROOT_INO,
            stored_bytes: 0,
        };
        let counters = self.cf(CF_COUNTERS)?;
        b.put_cf(
            self.cf(CF_INODES)?,
            ROOT_INO.to_be_bytes(),
            encode_json(&root),
        );
        b.put_cf(
            counters,
            Counter::NextIno.key(),
            (ROOT_INO + 1).to_be_bytes(),
        );
        b.put_cf(counters, Counter::Inodes.key(), 1u64.to_be_bytes());
        b.put_cf(counters, Counter::NextServerId.key(), 1u64.to_be_bytes());
        b.put_cf(counters, Counter::Layout.key(), LAYOUT.to_be_bytes());
        Ok(true)
    }

    /// The inode `ino`, if it exists.
    pub fn get_opt(&self, ino: u64) -> Result<Option<Inode>, MetaError> {
        Ok(self
            .raw_get(CF_INODES, &ino.to_be_bytes())?
            .map(|v| super::schema::decode_json(&v))
            .transpose()?)
    }

    /// The inode `ino`; `Stale` if it does not exist (see [`no_inode`]).
    pub fn get(&self, ino: u64) -> Result<Inode, MetaError> {
        Ok(self.get_opt(ino)?.ok_or_else(|| no_inode(ino))?)
    }

    /// Calls `f` for every inode (fsck). Reads one consistent RocksDB snapshot.
    pub fn for_each_inode(&self, mut f: impl FnMut(Inode)) -> Result<(), MetaError> {
        let snap = self.db.snapshot();
        for item in snap.iterator_cf(self.cf(CF_INODES)?, rocksdb::IteratorMode::Start) {
            let (_, v) = item.map_err(super::schema::storage)?;
            f(super::schema::decode_json(&v)?);
        }
        Ok(())
    }

    /// Number of inodes (for statfs).
    pub fn inode_count(&self) -> Result<u64, MetaError> {
        Ok(self.read_counter(Counter::Inodes)?)
    }
}

impl SetAttr {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let ino = self.ino;
        let mut i = tx.must_inode(ino)?;
        if let Some(sz) = self.size {
            match i.kind {
                Kind::Regular => {}
                Kind::Directory => {
                    return Err(fs_err(ErrorKind::IsDir, format!("{ino} is a directory")))
                }
                _ => {
                    return Err(fs_err(
                        ErrorKind::InvalidArgument,
                        format!("cannot set the size of {:?} {ino}", i.kind),
                    ))
                }
            }
            if sz != i.size {
                tx.truncate_slots(&mut i, sz, self.now)?;
                i.size = sz;
                i.version += 1;
            }
            i.mtime = self.now;
        }
        if let Some(m) = self.mode {
            i.mode = m & 0o7777;
        }
        if let Some(u) = self.uid {
            i.uid = u;
        }
        if let Some(g) = self.gid {
            i.gid = g;
        }
        if let Some(t) = self.atime {
            i.atime = t;
        }
        if let Some(t) = self.mtime {
            i.mtime = t;
        }
        i.ctime = self.now;
        tx.put_inode(i.clone());
        Ok(Reply::Attr(i))
    }
}

impl Tx<'_> {
    /// Hands out a new inode number and counts the new inode.
    pub(super) fn new_ino(&mut self) -> Result<u64, FsError> {
        let ino = self.counter(Counter::NextIno)?.max(ROOT_INO + 1);
        self.set_counter(Counter::NextIno, ino + 1);
        let count = self.counter(Counter::Inodes)?;
        self.set_counter(Counter::Inodes, count + 1);
        Ok(ino)
    }

    /// Deletes inode `i`: its chunk references, its attributes, locks and uploads, its record.
    pub(super) fn delete_inode(&mut self, i: Inode, now: Time) -> Result<(), FsError> {
        self.drop_slots(i.ino, now)?;
        self.end_uploads_of(i.ino, now)?;
        self.forget_xattrs(i.ino)?;
        self.forget_locks(i.ino)?;
        self.del_inode(i.ino);
        let n = self.counter(Counter::Inodes)?;
        self.set_counter(Counter::Inodes, n.saturating_sub(1));
        Ok(())
    }
}
