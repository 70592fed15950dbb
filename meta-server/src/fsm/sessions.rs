//! Mount sessions and their orphans.
//!
//! A **session** is one running mount (`OpenSession`). It renews itself every few seconds
//! (`RenewSession`); when it stops (clean unmount: `CloseSession`; crash or partition: the
//! leader's reaper expires it, see `crate::reaper`), its locks are dropped and its orphans
//! deleted, so a dead mount never blocks other mounts forever or leaks space.
//!
//! An **orphan** is a file whose last name was removed while the session had it open: it stays
//! (nlink 0, readable and writable through the open descriptors) until the session releases it
//! (`ReleaseOrphan`, the last close) or ends.
use super::schema::{decode_json, fs_err, pair_key, u64_at, Counter, CF_ORPHANS, CF_SESSIONS};
use super::tx::Tx;
use super::Fsm;
use crate::command::{
    CloseSession, CommandResult, FsError, OpenSession, ReleaseOrphan, RenewSession, Reply, Time,
};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub id: u64,
    pub host: String,
    pub mountpoint: String,
    pub pid: u32,
    pub opened: Time,
    /// Wall time of the last renewal, as the leader stamped it: shown to people, never compared.
    pub renewed: Time,
    /// The log index of the entry that opened or last renewed the session: expiry compares this
    /// with the log clock (see `crate::log_clock`), never the wall times.
    #[serde(default)]
    pub renewed_index: u64,
}

impl Fsm {
    /// Every open session.
    pub fn sessions(&self) -> Result<Vec<SessionRecord>, MetaError> {
        self.scan(CF_SESSIONS, &[])?
            .values()
            .map(|v| decode_json(v).map_err(MetaError::from))
            .collect()
    }

    /// How many orphans (unlinked files still open) the sessions hold, in total.
    pub fn orphan_count(&self) -> Result<u64, MetaError> {
        Ok(self.scan(CF_ORPHANS, &[])?.len() as u64)
    }
}

impl OpenSession {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let id = tx.counter(Counter::LastSession)? + 1;
        tx.set_counter(Counter::LastSession, id);
        let rec = SessionRecord {
            id,
            host: self.host.clone(),
            mountpoint: self.mountpoint.clone(),
            pid: self.pid,
            opened: self.now,
            renewed: self.now,
            renewed_index: tx.index(),
        };
        tx.kv_put_json(CF_SESSIONS, id.to_be_bytes().to_vec(), &rec);
        Ok(Reply::Session(id))
    }
}

impl RenewSession {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let mut rec = tx.must_session(self.session)?;
        rec.renewed = rec.renewed.max(self.now);
        rec.renewed_index = tx.index();
        tx.kv_put_json(CF_SESSIONS, self.session.to_be_bytes().to_vec(), &rec);
        Ok(Reply::Empty)
    }
}

impl CloseSession {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let id = self.session;
        let Some(rec) = tx.session(id)? else {
            return Ok(Reply::Empty);
        };
        if self.idle_through.is_some_and(|i| rec.renewed_index > i) {
            // Renewed after the leader decided to expire it: the mount is alive.
            return Ok(Reply::Empty);
        }
        tx.drop_session_locks(id)?;
        for (k, _) in tx.kv_scan(CF_ORPHANS, &id.to_be_bytes())? {
            let ino = u64_at(&k, 8, "orphan")?;
            tx.kv_put(CF_ORPHANS, k, None);
            tx.delete_orphan(ino, self.now)?;
        }
        tx.kv_put(CF_SESSIONS, id.to_be_bytes().to_vec(), None);
        Ok(Reply::Empty)
    }
}

impl ReleaseOrphan {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let key = pair_key(self.session, self.ino);
        if tx.kv_get(CF_ORPHANS, &key)?.is_none() {
            return Ok(Reply::Empty);
        }
        tx.kv_put(CF_ORPHANS, key, None);
        tx.delete_orphan(self.ino, self.now)?;
        Ok(Reply::Empty)
    }
}

impl Tx<'_> {
    fn session(&mut self, id: u64) -> Result<Option<SessionRecord>, FsError> {
        self.kv_get_json(CF_SESSIONS, &id.to_be_bytes())
    }

    pub(super) fn session_exists(&mut self, id: u64) -> Result<bool, FsError> {
        Ok(id != 0 && self.session(id)?.is_some())
    }

    pub(super) fn must_session(&mut self, id: u64) -> Result<SessionRecord, FsError> {
        self.session(id)?.ok_or_else(|| {
            fs_err(
                ErrorKind::NotFound,
                format!("session {id} does not exist (it ended or expired)"),
            )
        })
    }

    /// Keeps `ino` (whose last name just went) as an orphan of `session`.
    pub(super) fn add_orphan(&mut self, session: u64, ino: u64) {
        self.kv_put(CF_ORPHANS, pair_key(session, ino), Some(Vec::new()));
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
}
