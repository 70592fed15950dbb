//! The state a mount holds in the cluster beyond the namespace: extended attributes, mount
//! sessions, the advisory locks they own and the files they keep open after their last name is
//! gone (orphans).
//!
//! A **session** is one running mount. It renews itself every few seconds; when it stops (clean
//! unmount: `CloseSession`; crash or partition: the leader expires it, see
//! [`crate::sessions`]), its locks are dropped and its orphans deleted, so a dead mount never
//! blocks other mounts forever or leaks space.
//!
//! **Locks** follow POSIX `fcntl` rules per (session, kernel lock owner): an owner's own locks
//! never conflict with each other and are split or merged by new requests over their range;
//! locks of different owners conflict when their ranges overlap and either is a write lock.
//! `flock` arrives from the kernel as a whole-file lock whose owner is the open file, which gives
//! flock semantics under the same rules.
use super::{
    decode_json, encode_json, fs_err, Fsm, Tx, CF_LOCKS, CF_ORPHANS, CF_SESSIONS, CF_XATTRS,
};
use crate::command::{
    CommandResult, FsError, LockRange, LockType, Reply, Time, XATTR_CREATE, XATTR_REPLACE,
};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use serde::{Deserialize, Serialize};

/// Longest attribute name (Linux XATTR_NAME_MAX).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest attribute value (Linux XATTR_SIZE_MAX).
pub const XATTR_SIZE_MAX: usize = 64 * 1024;
/// Most bytes of names and values one inode may carry.
pub const XATTR_TOTAL_MAX: usize = 1024 * 1024;
/// Most locks one inode may carry (bounds the JSON record and the conflict scan).
pub const LOCKS_PER_INODE_MAX: usize = 4096;
/// Counter of session ids.
const NEXT_SESSION: &str = "next_session";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub id: u64,
    pub host: String,
    pub mountpoint: String,
    pub pid: u32,
    pub opened: Time,
    pub renewed: Time,
}

/// A lock held on a byte range `start..=end` of one inode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldLock {
    pub session: u64,
    pub owner: u64,
    pub write: bool,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

impl HeldLock {
    fn same_owner(&self, session: u64, owner: u64) -> bool {
        self.session == session && self.owner == owner
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    /// Whether this lock stops `owner` of `session` from taking `want`.
    fn blocks(&self, session: u64, owner: u64, want: &LockRange) -> bool {
        !self.same_owner(session, owner)
            && self.overlaps(want.start, want.end)
            && (self.write || want.typ == LockType::Write)
    }
}

fn xattr_key(ino: u64, name: &[u8]) -> Vec<u8> {
    let mut k = ino.to_be_bytes().to_vec();
    k.extend_from_slice(name);
    k
}

fn orphan_key(session: u64, ino: u64) -> Vec<u8> {
    let mut k = session.to_be_bytes().to_vec();
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// Checks an attribute name: length, and a namespace Cairn stores. `system.` attributes (POSIX
/// ACLs) would have to be enforced, which the mount does not do, so they are refused rather than
/// stored and ignored.
pub fn check_xattr_name(name: &[u8]) -> Result<(), FsError> {
    if name.is_empty() {
        return Err(fs_err(ErrorKind::InvalidArgument, "empty attribute name"));
    }
    if name.len() > XATTR_NAME_MAX {
        return Err(fs_err(
            ErrorKind::OutOfRange,
            format!("attribute name longer than {XATTR_NAME_MAX} bytes"),
        ));
    }
    if name.contains(&0) {
        return Err(fs_err(
            ErrorKind::InvalidArgument,
            "attribute name contains NUL",
        ));
    }
    const STORED: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];
    if !STORED
        .iter()
        .any(|p| name.starts_with(p) && name.len() > p.len())
    {
        return Err(fs_err(
            ErrorKind::NotSupported,
            format!(
                "attribute namespace of {:?} is not supported",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    Ok(())
}

fn check_lock(l: &LockRange) -> Result<(), FsError> {
    if l.start > l.end {
        return Err(fs_err(
            ErrorKind::InvalidArgument,
            format!("lock range {}..={} is empty", l.start, l.end),
        ));
    }
    Ok(())
}

impl Fsm {
    /// The value of attribute `name` of `ino` (`NoData` if it has none; `NotFound` if the inode
    /// does not exist).
    pub fn xattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, MetaError> {
        self.get(ino)?;
        check_xattr_name(name)?;
        self.raw_get(CF_XATTRS, &xattr_key(ino, name))?
            .ok_or_else(|| {
                fs_err(
                    ErrorKind::NoData,
                    format!("no attribute {:?}", String::from_utf8_lossy(name)),
                )
                .into()
            })
    }

    /// The names of `ino`'s attributes, in byte order.
    pub fn xattr_names(&self, ino: u64) -> Result<Vec<Vec<u8>>, MetaError> {
        self.get(ino)?;
        Ok(self
            .scan(CF_XATTRS, &ino.to_be_bytes())?
            .into_keys()
            .map(|k| k[8..].to_vec())
            .collect())
    }

    /// The first lock on `ino` that stops `owner` of `session` from taking `want`.
    pub fn lock_conflict(
        &self,
        ino: u64,
        session: u64,
        owner: u64,
        want: &LockRange,
    ) -> Result<Option<HeldLock>, MetaError> {
        check_lock(want)?;
        self.get(ino)?;
        let held: Vec<HeldLock> = match self.raw_get(CF_LOCKS, &ino.to_be_bytes())? {
            Some(v) => decode_json(&v)?,
            None => Vec::new(),
        };
        Ok(held.into_iter().find(|h| h.blocks(session, owner, want)))
    }

    /// Every open session.
    pub fn sessions(&self) -> Result<Vec<SessionRecord>, MetaError> {
        self.scan(CF_SESSIONS, &[])?
            .values()
            .map(|v| decode_json(v).map_err(MetaError::from))
            .collect()
    }

    /// How many orphans (unlinked files still open) each session holds, in total.
    pub fn orphan_count(&self) -> Result<u64, MetaError> {
        Ok(self.scan(CF_ORPHANS, &[])?.len() as u64)
    }
}

impl Tx<'_> {
    // --- extended attributes ------------------------------------------------------------------

    pub(super) fn set_xattr(
        &mut self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
        now: Time,
    ) -> CommandResult {
        check_xattr_name(name)?;
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
            return Err(fs_err(
                ErrorKind::InvalidArgument,
                format!("bad setxattr flags {flags:#x}"),
            ));
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(fs_err(
                ErrorKind::TooBig,
                format!("attribute value larger than {XATTR_SIZE_MAX} bytes"),
            ));
        }
        let mut i = self.must_inode(ino)?;
        let key = xattr_key(ino, name);
        let exists = self.kv_get(CF_XATTRS, &key)?.is_some();
        if exists && flags & XATTR_CREATE != 0 {
            return Err(fs_err(
                ErrorKind::AlreadyExists,
                format!("attribute {:?} exists", String::from_utf8_lossy(name)),
            ));
        }
        if !exists && flags & XATTR_REPLACE != 0 {
            return Err(fs_err(
                ErrorKind::NoData,
                format!("no attribute {:?}", String::from_utf8_lossy(name)),
            ));
        }
        let others: usize = self
            .kv_scan(CF_XATTRS, &ino.to_be_bytes())?
            .iter()
            .filter(|(k, _)| *k != key)
            .map(|(k, v)| k.len() - 8 + v.len())
            .sum();
        if others + name.len() + value.len() > XATTR_TOTAL_MAX {
            return Err(fs_err(
                ErrorKind::NoSpace,
                format!("inode {ino} would carry more than {XATTR_TOTAL_MAX} bytes of attributes"),
            ));
        }
        self.kv_put(CF_XATTRS, key, Some(value.to_vec()));
        i.ctime = now;
        self.put_inode(i);
        Ok(Reply::Empty)
    }

    pub(super) fn remove_xattr(&mut self, ino: u64, name: &[u8], now: Time) -> CommandResult {
        check_xattr_name(name)?;
        let mut i = self.must_inode(ino)?;
        let key = xattr_key(ino, name);
        if self.kv_get(CF_XATTRS, &key)?.is_none() {
            return Err(fs_err(
                ErrorKind::NoData,
                format!("no attribute {:?}", String::from_utf8_lossy(name)),
            ));
        }
        self.kv_put(CF_XATTRS, key, None);
        i.ctime = now;
        self.put_inode(i);
        Ok(Reply::Empty)
    }

    /// Drops what hangs off an inode being deleted: its attributes, locks and uploads.
    pub(super) fn forget_inode_extras(&mut self, ino: u64, now: Time) -> Result<(), FsError> {
        self.end_uploads_of(ino, now)?;
        for (k, _) in self.kv_scan(CF_XATTRS, &ino.to_be_bytes())? {
            self.kv_put(CF_XATTRS, k, None);
        }
        if self.kv_get(CF_LOCKS, &ino.to_be_bytes())?.is_some() {
            self.kv_put(CF_LOCKS, ino.to_be_bytes().to_vec(), None);
        }
        Ok(())
    }

    // --- sessions -----------------------------------------------------------------------------

    fn session(&mut self, id: u64) -> Result<Option<SessionRecord>, FsError> {
        self.kv_get(CF_SESSIONS, &id.to_be_bytes())?
            .map(|v| decode_json(&v))
            .transpose()
    }

    pub(super) fn session_exists(&mut self, id: u64) -> Result<bool, FsError> {
        Ok(id != 0 && self.session(id)?.is_some())
    }

    fn must_session(&mut self, id: u64) -> Result<SessionRecord, FsError> {
        self.session(id)?.ok_or_else(|| {
            fs_err(
                ErrorKind::NotFound,
                format!("session {id} does not exist (it ended or expired)"),
            )
        })
    }

    pub(super) fn open_session(
        &mut self,
        host: &str,
        mountpoint: &str,
        pid: u32,
        now: Time,
    ) -> CommandResult {
        let id = self.counter(NEXT_SESSION)? + 1;
        self.set_counter(NEXT_SESSION, id);
        let rec = SessionRecord {
            id,
            host: host.to_owned(),
            mountpoint: mountpoint.to_owned(),
            pid,
            opened: now,
            renewed: now,
        };
        self.kv_put(
            CF_SESSIONS,
            id.to_be_bytes().to_vec(),
            Some(encode_json(&rec)),
        );
        Ok(Reply::Session(id))
    }

    pub(super) fn renew_session(&mut self, id: u64, now: Time) -> CommandResult {
        let mut rec = self.must_session(id)?;
        rec.renewed = rec.renewed.max(now);
        self.kv_put(
            CF_SESSIONS,
            id.to_be_bytes().to_vec(),
            Some(encode_json(&rec)),
        );
        Ok(Reply::Empty)
    }

    pub(super) fn close_session(
        &mut self,
        id: u64,
        idle_before: Option<Time>,
        now: Time,
    ) -> CommandResult {
        let Some(rec) = self.session(id)? else {
            return Ok(Reply::Empty);
        };
        if idle_before.is_some_and(|b| rec.renewed >= b) {
            // Renewed after the leader decided to expire it: the mount is alive.
            return Ok(Reply::Empty);
        }
        for (k, v) in self.kv_scan(CF_LOCKS, &[])? {
            let held: Vec<HeldLock> = decode_json(&v)?;
            let left: Vec<HeldLock> = held.iter().filter(|h| h.session != id).copied().collect();
            if left.len() != held.len() {
                self.kv_put(CF_LOCKS, k, (!left.is_empty()).then(|| encode_json(&left)));
            }
        }
        for (k, _) in self.kv_scan(CF_ORPHANS, &id.to_be_bytes())? {
            let ino = u64::from_be_bytes(
                k[8..16]
                    .try_into()
                    .map_err(|_| super::corrupt("orphan key"))?,
            );
            self.kv_put(CF_ORPHANS, k, None);
            self.delete_orphan(ino, now)?;
        }
        self.kv_put(CF_SESSIONS, id.to_be_bytes().to_vec(), None);
        Ok(Reply::Empty)
    }

    // --- orphans ------------------------------------------------------------------------------

    pub(super) fn add_orphan(&mut self, session: u64, ino: u64) {
        self.kv_put(CF_ORPHANS, orphan_key(session, ino), Some(Vec::new()));
    }

    /// Deletes orphan `ino` if it still has no name.
    fn delete_orphan(&mut self, ino: u64, now: Time) -> Result<(), FsError> {
        if let Some(i) = self.inode(ino)? {
            if i.nlink == 0 && !i.is_dir() {
                self.delete_inode(i, now)?;
            }
        }
        Ok(())
    }

    pub(super) fn release_orphan(&mut self, session: u64, ino: u64, now: Time) -> CommandResult {
        let key = orphan_key(session, ino);
        if self.kv_get(CF_ORPHANS, &key)?.is_none() {
            return Ok(Reply::Empty);
        }
        self.kv_put(CF_ORPHANS, key, None);
        self.delete_orphan(ino, now)?;
        Ok(Reply::Empty)
    }

    // --- locks --------------------------------------------------------------------------------

    fn locks(&mut self, ino: u64) -> Result<Vec<HeldLock>, FsError> {
        Ok(match self.kv_get(CF_LOCKS, &ino.to_be_bytes())? {
            Some(v) => decode_json(&v)?,
            None => Vec::new(),
        })
    }

    fn put_locks(&mut self, ino: u64, held: Vec<HeldLock>) {
        let v = (!held.is_empty()).then(|| encode_json(&held));
        self.kv_put(CF_LOCKS, ino.to_be_bytes().to_vec(), v);
    }

    pub(super) fn set_lock(
        &mut self,
        ino: u64,
        session: u64,
        owner: u64,
        want: &LockRange,
    ) -> CommandResult {
        check_lock(want)?;
        self.must_inode(ino)?;
        self.must_session(session)?;
        let held = self.locks(ino)?;
        if want.typ != LockType::Unlock {
            if let Some(h) = held.iter().find(|h| h.blocks(session, owner, want)) {
                return Err(fs_err(
                    ErrorKind::WouldBlock,
                    format!(
                        "pid {} holds a {} lock on bytes {}..={} of inode {ino}",
                        h.pid,
                        if h.write { "write" } else { "read" },
                        h.start,
                        h.end
                    ),
                ));
            }
        }
        // The owner's own locks over the range are replaced: cut them back to what lies outside.
        let mut next = Vec::with_capacity(held.len() + 2);
        for h in held {
            if !h.same_owner(session, owner) || !h.overlaps(want.start, want.end) {
                next.push(h);
                continue;
            }
            if h.start < want.start {
                next.push(HeldLock {
                    end: want.start - 1,
                    ..h
                });
            }
            if h.end > want.end {
                next.push(HeldLock {
                    start: want.end + 1,
                    ..h
                });
            }
        }
        if want.typ != LockType::Unlock {
            let mut new = HeldLock {
                session,
                owner,
                write: want.typ == LockType::Write,
                start: want.start,
                end: want.end,
                pid: want.pid,
            };
            // Merge with the owner's adjacent locks of the same type.
            next.retain(|h| {
                let adjacent = h.same_owner(session, owner)
                    && h.write == new.write
                    && (h.end.checked_add(1) == Some(new.start)
                        || new.end.checked_add(1) == Some(h.start));
                if adjacent {
                    new.start = new.start.min(h.start);
                    new.end = new.end.max(h.end);
                }
                !adjacent
            });
            next.push(new);
        }
        if next.len() > LOCKS_PER_INODE_MAX {
            return Err(fs_err(
                ErrorKind::NoSpace,
                format!("inode {ino} would carry more than {LOCKS_PER_INODE_MAX} locks"),
            ));
        }
        next.sort_by_key(|h| (h.start, h.session, h.owner));
        self.put_locks(ino, next);
        Ok(Reply::Empty)
    }

    pub(super) fn release_locks(&mut self, ino: u64, session: u64, owner: u64) -> CommandResult {
        let held = self.locks(ino)?;
        let left: Vec<HeldLock> = held
            .iter()
            .filter(|h| !h.same_owner(session, owner))
            .copied()
            .collect();
        if left.len() != held.len() {
            self.put_locks(ino, left);
        }
        Ok(Reply::Empty)
    }
}
