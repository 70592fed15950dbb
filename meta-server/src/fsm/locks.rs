//! Advisory locks (`SetLock`, `ReleaseLocks`, and the conflict read behind `F_GETLK`).
//!
//! Locks follow POSIX `fcntl` rules per (session, kernel lock owner): an owner's own locks
//! never conflict with each other and are split or merged by new requests over their range;
//! locks of different owners conflict when their ranges overlap and either is a write lock.
//! `flock` arrives from the kernel as a whole-file lock whose owner is the open file, which
//! gives flock semantics under the same rules. A session that ends drops its locks
//! ([`Tx::drop_session_locks`]).
use super::schema::{decode_json, fs_err, CF_LOCKS};
use super::tx::Tx;
use super::Fsm;
use crate::command::{CommandResult, FsError, LockRange, LockType, ReleaseLocks, Reply, SetLock};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use serde::{Deserialize, Serialize};

/// Most locks one inode may carry (bounds the JSON record and the conflict scan).
pub const LOCKS_PER_INODE_MAX: usize = 4096;

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
}

impl SetLock {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let (ino, session, owner, want) = (self.ino, self.session, self.owner, &self.lock);
        check_lock(want)?;
        tx.must_inode(ino)?;
        tx.must_session(session)?;
        let held = tx.locks(ino)?;
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
        tx.put_locks(ino, next);
        Ok(Reply::Empty)
    }
}

impl ReleaseLocks {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let held = tx.locks(self.ino)?;
        let left: Vec<HeldLock> = held
            .iter()
            .filter(|h| !h.same_owner(self.session, self.owner))
            .copied()
            .collect();
        if left.len() != held.len() {
            tx.put_locks(self.ino, left);
        }
        Ok(Reply::Empty)
    }
}

impl Tx<'_> {
    fn locks(&mut self, ino: u64) -> Result<Vec<HeldLock>, FsError> {
        Ok(self
            .kv_get_json(CF_LOCKS, &ino.to_be_bytes())?
            .unwrap_or_default())
    }

    fn put_locks(&mut self, ino: u64, held: Vec<HeldLock>) {
        if held.is_empty() {
            self.kv_put(CF_LOCKS, ino.to_be_bytes().to_vec(), None);
        } else {
            self.kv_put_json(CF_LOCKS, ino.to_be_bytes().to_vec(), &held);
        }
    }

    /// Drops every lock on `ino` (the inode is being deleted).
    pub(super) fn forget_locks(&mut self, ino: u64) -> Result<(), FsError> {
        if self.kv_get(CF_LOCKS, &ino.to_be_bytes())?.is_some() {
            self.kv_put(CF_LOCKS, ino.to_be_bytes().to_vec(), None);
        }
        Ok(())
    }

    /// Drops every lock `session` holds, on every inode (the session ended).
    pub(super) fn drop_session_locks(&mut self, session: u64) -> Result<(), FsError> {
        for (k, v) in self.kv_scan(CF_LOCKS, &[])? {
            let held: Vec<HeldLock> = decode_json(&v)?;
            let left: Vec<HeldLock> = held
                .iter()
                .filter(|h| h.session != session)
                .copied()
                .collect();
            if left.len() != held.len() {
                let ino = super::schema::u64_at(&k, 0, "lock")?;
                self.put_locks(ino, left);
            }
        }
        Ok(())
    }
}
