//! The Raft log and vote store (openraft storage v2 [`RaftLogStorage`]).
//!
//! Entries live in column family `raft_log` under their big-endian index, so RocksDB's key order
//! is log order. The vote, the committed log id and the last purged log id live in `raft_meta`.
//! Every value is in the binary encoding of [`crate::raft::codec`] (a format byte, then
//! postcard). A value that does not decode — another format, a torn or corrupt value — is a
//! storage error, which stops the node: an entry is never skipped or guessed at.
//!
//! Reads for replication are bounded: [`RaftLogReader::limited_get_log_entries`] stops after
//! [`MAX_APPEND_BYTES`] of encoded entries (but always returns at least one), so one
//! AppendEntries never outgrows a gRPC message however many entries a follower lacks.
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
use crate::raft::codec;
use crate::raft::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote, MAX_APPEND_BYTES};
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
        codec::decode(&bytes)
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
            codec::encode(value).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, e))?;
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
            Some(Ok((key, value))) => {
                let index = key_index(&key)?;
                Ok(Some(*decode_entry(index, &value)?.get_log_id()))
            }
        }
    }

    /// The entries of `range` in order; with a `budget`, stops before the entry that would
    /// take the encoded bytes read past it (the first entry is always returned).
    fn read_entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        budget: Option<usize>,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = cf(&self.db, CF_RAFT_LOG)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
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
            bytes = bytes.saturating_add(value.len());
            if budget.is_some_and(|b| bytes > b) && !entries.is_empty() {
                break;
            }
            entries.push(decode_entry(index, &value)?);
        }
        Ok(entries)
    }
}

/// The entry stored at `index`: a value that does not decode is a storage error naming it.
fn decode_entry(index: u64, value: &[u8]) -> Result<Entry, StorageError> {
    let entry: Entry = codec::decode(value)
        .map_err(|e| io_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, e))?;
    if entry.get_log_id().index != index {
        let e = format!(
            "entry under key {index} has index {}",
            entry.get_log_id().index
        );
        return Err(io_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, e));
    }
    Ok(entry)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(range, None)
    }

    /// For replication: at most [`MAX_APPEND_BYTES`] of entries (at least one), so one
    /// AppendEntries fits in a gRPC message. openraft sends the rest in the next one.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(start..end, Some(MAX_APPEND_BYTES))
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
            codec::encode(&committed).map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
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
            let value = codec::encode(&entry)
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
        let purged =
            codec::encode(&log_id).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, SetXattr, Time};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64, value_len: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::SetXattr(SetXattr {
                ino: 2,
                name: b"user.x".to_vec(),
                value: vec![7; value_len],
                flags: 0,
                now: Time::now(),
            })),
        }
    }

    fn store() -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::open_db(&dir.path().join("db")).unwrap();
        (dir, LogStore::new(db))
    }

    fn put_raw(store: &LogStore, index: u64, value: &[u8]) {
        let cf = cf(&store.db, CF_RAFT_LOG).unwrap();
        store.db.put_cf(cf, index_key(index), value).unwrap();
    }

    #[tokio::test]
    async fn replication_reads_stop_at_the_byte_budget_but_never_return_nothing() {
        let (_dir, mut store) = store();
        // 40 entries of ~256 KiB: 10 MiB, more than one AppendEntries may carry.
        for i in 1..=40 {
            put_raw(&store, i, &codec::encode(&entry(i, 256 * 1024)).unwrap());
        }
        let all = store.try_get_log_entries(1..41).await.unwrap();
        assert_eq!(all.len(), 40, "unbounded reads return the whole range");

        let first = store.limited_get_log_entries(1, 41).await.unwrap();
        let bytes: usize = first.iter().map(|e| codec::encode(e).unwrap().len()).sum();
        assert!(bytes <= MAX_APPEND_BYTES, "{bytes} bytes in one read");
        assert!(
            first.len() >= 10 && first.len() < 40,
            "{} entries",
            first.len()
        );
        let next = first.len() as u64 + 1;
        let rest = store.limited_get_log_entries(next, 41).await.unwrap();
        assert_eq!(
            rest[0].log_id.index, next,
            "the next read starts where it stopped"
        );

        // An entry larger than the budget still travels, alone.
        put_raw(
            &store,
            41,
            &codec::encode(&entry(41, MAX_APPEND_BYTES + 1)).unwrap(),
        );
        let big = store.limited_get_log_entries(41, 42).await.unwrap();
        assert_eq!(big.len(), 1);
    }

    #[tokio::test]
    async fn an_undecodable_entry_is_a_loud_storage_error() {
        let (_dir, mut store) = store();
        put_raw(&store, 1, &codec::encode(&entry(1, 10)).unwrap());
        // A JSON entry of an older node, a torn value, and an entry under the wrong key.
        let json = serde_json::to_vec(&entry(2, 10)).unwrap();
        put_raw(&store, 2, &json);
        let mut torn = codec::encode(&entry(3, 100)).unwrap();
        torn.truncate(50);
        put_raw(&store, 3, &torn);
        put_raw(&store, 4, &codec::encode(&entry(5, 10)).unwrap());
        for bad in 2..=4u64 {
            let err = store.try_get_log_entries(bad..bad + 1).await.unwrap_err();
            assert!(
                err.to_string().contains(&bad.to_string()),
                "error names the index: {err}"
            );
            // A read across it fails as a whole: nothing after it is returned without it.
            assert!(store.try_get_log_entries(1..=bad).await.is_err());
        }
        assert!(
            store.get_log_state().await.is_err(),
            "the last entry is checked too"
        );
        assert_eq!(store.try_get_log_entries(1..2).await.unwrap().len(), 1);
    }
}
