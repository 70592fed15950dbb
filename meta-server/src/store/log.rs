//! The Raft log and vote store (openraft storage v2 [`RaftLogStorage`]).
//!
//! Entries live in column family `raft_log` under their big-endian index, so RocksDB's key order
//! is log order; values are JSON. The vote, the committed log id and the last purged log id live
//! in `raft_meta`.
//!
//! Durability contract (openraft relies on it for safety):
//! - `save_vote` returns only after the vote is synced to the WAL;
//! - `append` reports completion through its callback only after the entries are synced;
//! - `save_committed` is deliberately not synced (see there);
//! - `purge` first syncs the WAL, because the state-machine writes produced by the purged
//!   entries were written without sync (see [`super`]).

// `StorageError` is openraft's type, dictated by the storage traits; the helpers return it too.
#![allow(clippy::result_large_err)]
use super::{cf, CF_RAFT_LOG, CF_RAFT_META};
use crate::raft::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogId, RaftLogReader,
    StorageIOError,
};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The Raft log store. Cloning it is cheap; every clone reads the same database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        io_err(
            ErrorSubject::Logs,
            ErrorVerb::Read,
            "log key is not 8 bytes",
        )
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::error(e.to_string())),
    }
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

impl LogStore {
    pub fn new(db: Arc<DB>) -> LogStore {
        LogStore { db }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let subject = || ErrorSubject::Store;
        let cf = cf(&self.db, CF_RAFT_META).map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
        let Some(bytes) = self
            .db
            .get_pinned_cf(cf, key)
            .map_err(|e| io_err(subject(), ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io_err(subject(), ErrorVerb::Read, e))
    }

    /// Writes one `raft_meta` key and syncs it before returning.
    async fn put_meta_synced<T: Serialize>(
        &self,
        key: &'static [u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, e))?;
        let db = self.db.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let cf = cf(&db, CF_RAFT_META).map_err(|e| e.to_string())?;
            db.put_cf_opt(cf, key, bytes, &synced())
                .map_err(|e| e.to_string())
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_err(subject, ErrorVerb::Write, e)),
            Err(e) => Err(io_err(subject, ErrorVerb::Write, e)),
        }
    }

    /// Writes `batch` with sync=true on the blocking pool: returns once it is durable.
    async fn write_synced(&self, batch: WriteBatch) -> Result<(), String> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.write_opt(batch, &synced()))
            .await
            .map_err(|e| format!("log write task failed: {e}"))?
            .map_err(|e| e.to_string())
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let cf = cf(&self.db, CF_RAFT_LOG)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        match self.db.iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(Err(e)) => Err(io_err(ErrorSubject::Logs, ErrorVerb::Read, e)),
            Some(Ok((_, value))) => {
                let entry: Entry = serde_json::from_slice(&value)
                    .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Ok(Some(*entry.get_log_id()))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = cf(&self.db, CF_RAFT_LOG)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let mut entries = Vec::new();
        let iter = self.db.iterator_cf(
            cf,
            IteratorMode::From(&index_key(start), Direction::Forward),
        );
        for item in iter {
            let (key, value) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let index = key_index(&key)?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = serde_json::from_slice(&value)
                .map_err(|e| io_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // DURABILITY: synced before returning; a node must never forget whom it voted for.
        self.put_meta_synced(KEY_VOTE, vote, ErrorSubject::Vote)
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Lets a restarted node re-apply up to the known commit point at once. openraft calls
        // this on every commit advance, on the leader before it answers the client, so it is
        // NOT synced: it is an optimisation, not a safety record (openraft's own docs: not
        // saving it does not affect correctness). Losing it in a crash only means the node
        // learns the commit point from the leader again. It can never point past this node's
        // durable log: it is written after the synced append of the entries it names, into the
        // same WAL, and RocksDB recovers a WAL prefix.
        let subject = || ErrorSubject::Store;
        let bytes =
            serde_json::to_vec(&committed).map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        let cf = cf(&self.db, CF_RAFT_META).map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        // Unsynced: a memtable insert plus a buffered WAL append, cheap enough to do inline.
        self.db
            .put_cf(cf, KEY_COMMITTED, bytes)
            .map_err(|e| io_err(subject(), ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = cf(&self.db, CF_RAFT_LOG)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let log_id = *entry.get_log_id();
            let value = serde_json::to_vec(&entry)
                .map_err(|e| io_err(ErrorSubject::Log(log_id), ErrorVerb::Write, e))?;
            batch.put_cf(cf, index_key(log_id.index), value);
        }
        // DURABILITY: the batch is written with sync=true and the callback fires only after the
        // write returned, so openraft never counts an entry as persisted (for commit quorum or
        // for the leader's own ack) before it is on disk.
        match self.write_synced(batch).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.clone())));
                Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(index = log_id.index, "truncate log");
        let cf = cf(&self.db, CF_RAFT_LOG)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(cf, index_key(u64::MAX));
        // Synced: a truncated (conflicting) entry must not reappear after a crash.
        self.write_synced(batch)
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(index = log_id.index, "purge log");
        // The state machine writes its effects without sync (the log is the durable record).
        // Before the entries that produced those effects disappear, make the WAL durable: state
        // machine and log share it, so this syncs every applied effect up to here.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush_wal(true))
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;

        let log_cf = cf(&self.db, CF_RAFT_LOG)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        let meta_cf = cf(&self.db, CF_RAFT_META)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        let purged = serde_json::to_vec(&log_id)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(meta_cf, KEY_LAST_PURGED, purged);
        batch.delete_range_cf(
            log_cf,
            index_key(0),
            index_key(log_id.index.saturating_add(1)),
        );
        if log_id.index == u64::MAX {
            batch.delete_cf(log_cf, index_key(u64::MAX));
        }
        self.write_synced(batch)
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
