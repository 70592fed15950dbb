//! The replicated state machine (openraft storage v2 [`RaftStateMachine`]) over [`Fsm`].
//!
//! Every log entry is applied as ONE RocksDB write batch holding the namespace changes that
//! [`Fsm::apply`] computed plus the new `last_applied` (and, for membership entries, the new
//! membership) in `sm_meta`. The batch is written WITHOUT sync: the log entry was synced before it
//! was applied, so after a crash openraft re-applies whatever the state machine lost; and the log
//! store syncs the shared WAL before it purges entries (see [`super::log`]).
//!
//! Snapshots are exactly the contents of [`STATE_CFS`] (read through one RocksDB snapshot, so they
//! are consistent) encoded as a blob (format below). The current snapshot is also kept as a file
//! `<data-dir>/snapshot/current` (temp file + fsync + rename + fsync dir) so that it survives a
//! restart. Installing a snapshot replaces the state column families in one synced batch.
//!
//! Blob format (all integers big-endian):
//! `"CAIRNSD1"`, then per column family: `u32 name_len, name, u64 count, count × (u32 key_len,
//! key, u32 value_len, value)`, then a 32-byte blake3 hash of everything before it.
use super::{cf, CF_SM_META};
use crate::command::Reply;
use crate::fsm::{Fsm, STATE_CFS};
use crate::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StorageIOError,
};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"last_membership";
const BLOB_MAGIC: &[u8; 8] = b"CAIRNSD1";
const FILE_MAGIC: &[u8; 8] = b"CAIRNSF1";
const SNAPSHOT_FILE: &str = "current";

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(
            ErrorSubject::StateMachine,
            verb,
            AnyError::error(e.to_string()),
        ),
    }
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(
            ErrorSubject::Snapshot(None),
            verb,
            AnyError::error(e.to_string()),
        ),
    }
}

/// The state machine store handed to openraft.
pub struct StateMachineStore {
    db: Arc<DB>,
    fsm: Arc<Fsm>,
    snapshot_dir: PathBuf,
}

/// Builds snapshots; created by openraft through [`RaftStateMachine::get_snapshot_builder`].
pub struct SnapshotBuilder {
    db: Arc<DB>,
    snapshot_dir: PathBuf,
}

impl StateMachineStore {
    /// `snapshot_dir` holds the current snapshot file; it is created if missing.
    pub fn new(
        db: Arc<DB>,
        fsm: Arc<Fsm>,
        snapshot_dir: PathBuf,
    ) -> Result<Self, crate::error::MetaError> {
        fs::create_dir_all(&snapshot_dir)
            .map_err(|e| crate::error::MetaError::Storage(format!("create snapshot dir: {e}")))?;
        Ok(StateMachineStore {
            db,
            fsm,
            snapshot_dir,
        })
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(db: &DB, key: &[u8]) -> Result<Option<T>, String> {
    let cf = cf(db, CF_SM_META).map_err(|e| e.to_string())?;
    match db.get_pinned_cf(cf, key).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| e.to_string()),
    }
}

/// Dumps every state column family plus `sm_meta`, as of one RocksDB snapshot.
fn dump_state(db: &DB) -> Result<(Option<LogId>, StoredMembership, Vec<u8>), String> {
    let snap = db.snapshot();
    let meta_cf = cf(db, CF_SM_META).map_err(|e| e.to_string())?;
    let get = |key: &[u8]| -> Result<Option<Vec<u8>>, String> {
        snap.get_cf(meta_cf, key).map_err(|e| e.to_string())
    };
    let last_applied: Option<LogId> = match get(KEY_LAST_APPLIED)? {
        None => None,
        Some(b) => serde_json::from_slice(&b).map_err(|e| e.to_string())?,
    };
    let membership: StoredMembership = match get(KEY_MEMBERSHIP)? {
        None => StoredMembership::default(),
        Some(b) => serde_json::from_slice(&b).map_err(|e| e.to_string())?,
    };
    let mut blob = Vec::with_capacity(1024);
    blob.extend_from_slice(BLOB_MAGIC);
    for name in STATE_CFS {
        let handle = cf(db, name).map_err(|e| e.to_string())?;
        blob.extend_from_slice(&(name.len() as u32).to_be_bytes());
        blob.extend_from_slice(name.as_bytes());
        let count_at = blob.len();
        blob.extend_from_slice(&0u64.to_be_bytes());
        let mut count = 0u64;
        for item in snap.iterator_cf(handle, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| e.to_string())?;
            put_bytes(&mut blob, &k)?;
            put_bytes(&mut blob, &v)?;
            count += 1;
        }
        blob[count_at..count_at + 8].copy_from_slice(&count.to_be_bytes());
    }
    let hash = blake3::hash(&blob);
    blob.extend_from_slice(hash.as_bytes());
    Ok((last_applied, membership, blob))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> Result<(), String> {
    let len = u32::try_from(b.len()).map_err(|_| "key or value longer than 4 GiB".to_string())?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// A bounds-checked reader over a snapshot blob.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("snapshot blob is truncated".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// The parsed content of a snapshot blob: (column family, key/value pairs).
type StateDump<'a> = Vec<(&'static str, Vec<(&'a [u8], &'a [u8])>)>;

/// Verifies the checksum and parses the whole blob before anything is changed.
fn parse_blob(blob: &[u8]) -> Result<StateDump<'_>, String> {
    if blob.len() < BLOB_MAGIC.len() + 32 {
        return Err("snapshot blob is too short".into());
    }
    let (body, hash) = blob.split_at(blob.len() - 32);
    if blake3::hash(body).as_bytes() != hash {
        return Err("snapshot blob checksum mismatch".into());
    }
    let mut r = Reader { buf: body };
    if r.take(BLOB_MAGIC.len())? != BLOB_MAGIC {
        return Err("snapshot blob has a bad magic".into());
    }
    let mut out = Vec::new();
    while !r.buf.is_empty() {
        let name = r.bytes()?;
        let name = STATE_CFS
            .iter()
            .copied()
            .find(|n| n.as_bytes() == name)
            .ok_or_else(|| {
                format!(
                    "snapshot names unknown column family {:?}",
                    String::from_utf8_lossy(name)
                )
            })?;
        let count = r.u64()?;
        let mut kvs = Vec::new();
        for _ in 0..count {
            let k = r.bytes()?;
            let v = r.bytes()?;
            kvs.push((k, v));
        }
        out.push((name, kvs));
    }
    Ok(out)
}

/// Writes the snapshot file durably: temp file, fsync, rename over `current`, fsync the dir.
fn save_snapshot_file(dir: &Path, meta: &SnapshotMeta, blob: &[u8]) -> std::io::Result<()> {
    let meta_json = serde_json::to_vec(meta)?;
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(FILE_MAGIC)?;
        f.write_all(&(meta_json.len() as u64).to_be_bytes())?;
        f.write_all(&meta_json)?;
        f.write_all(blob)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    fs::File::open(dir)?.sync_all()
}

fn load_snapshot_file(dir: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String> {
    let path = dir.join(SNAPSHOT_FILE);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("read {}: {e}", path.display())),
    };
    let mut r = Reader { buf: &data };
    if r.take(FILE_MAGIC.len())? != FILE_MAGIC {
        return Err(format!("{} has a bad magic", path.display()));
    }
    let meta_len = usize::try_from(r.u64()?).map_err(|e| e.to_string())?;
    let meta: SnapshotMeta =
        serde_json::from_slice(r.take(meta_len)?).map_err(|e| e.to_string())?;
    let blob = r.buf.to_vec();
    // Refuse a corrupt file now rather than ship it to a follower.
    parse_blob(&blob)?;
    Ok(Some((meta, blob)))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        let res =
            tokio::task::spawn_blocking(move || -> Result<(SnapshotMeta, Vec<u8>), String> {
                let (last_applied, membership, blob) = dump_state(&db)?;
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let snapshot_id = match &last_applied {
                    Some(l) => format!("{}-{}-{nanos}", l.leader_id, l.index),
                    None => format!("none-{nanos}"),
                };
                let meta = SnapshotMeta {
                    last_log_id: last_applied,
                    last_membership: membership,
                    snapshot_id,
                };
                save_snapshot_file(&dir, &meta, &blob)
                    .map_err(|e| format!("save snapshot: {e}"))?;
                Ok((meta, blob))
            })
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let (meta, blob) = res.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        tracing::info!(snapshot = %meta, bytes = blob.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(blob)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let last_applied: Option<LogId> = read_meta::<Option<LogId>>(&self.db, KEY_LAST_APPLIED)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
            .flatten();
        let membership: StoredMembership = read_meta(&self.db, KEY_MEMBERSHIP)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
            .unwrap_or_default();
        Ok((last_applied, membership))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<crate::command::CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let meta_cf = cf(&self.db, CF_SM_META).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let mut replies = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let apply_err = |e: String| StorageError::IO {
                source: StorageIOError::new(
                    ErrorSubject::Apply(log_id),
                    ErrorVerb::Write,
                    AnyError::error(e),
                ),
            };
            let mut batch = WriteBatch::default();
            let reply = match entry.payload {
                EntryPayload::Blank => Ok(Reply::Empty),
                EntryPayload::Normal(cmd) => {
                    let res = self.fsm.apply(&cmd, &mut batch);
                    if res.is_err() {
                        // A refused command changes nothing, whatever it put into the batch.
                        batch.clear();
                    }
                    res
                }
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(log_id), m);
                    let bytes =
                        serde_json::to_vec(&stored).map_err(|e| apply_err(e.to_string()))?;
                    batch.put_cf(meta_cf, KEY_MEMBERSHIP, bytes);
                    Ok(Reply::Empty)
                }
            };
            let applied = serde_json::to_vec(&log_id).map_err(|e| apply_err(e.to_string()))?;
            batch.put_cf(meta_cf, KEY_LAST_APPLIED, applied);
            // Not synced on purpose: see the module docs. The next entry reads this state.
            self.db.write(batch).map_err(|e| apply_err(e.to_string()))?;
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let blob = snapshot.into_inner();
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        let meta = meta.clone();
        let signature = meta.signature();
        let res = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let dump = parse_blob(&blob)?;
            let mut batch = WriteBatch::default();
            // Replace the whole state: delete every current key, then load the snapshot's.
            for name in STATE_CFS {
                let handle = cf(&db, name).map_err(|e| e.to_string())?;
                for item in db.iterator_cf(handle, IteratorMode::Start) {
                    let (k, _) = item.map_err(|e| e.to_string())?;
                    batch.delete_cf(handle, k);
                }
            }
            for (name, kvs) in &dump {
                let handle = cf(&db, name).map_err(|e| e.to_string())?;
                for (k, v) in kvs {
                    batch.put_cf(handle, k, v);
                }
            }
            let meta_cf = cf(&db, CF_SM_META).map_err(|e| e.to_string())?;
            let applied = serde_json::to_vec(&meta.last_log_id).map_err(|e| e.to_string())?;
            let membership =
                serde_json::to_vec(&meta.last_membership).map_err(|e| e.to_string())?;
            batch.put_cf(meta_cf, KEY_LAST_APPLIED, applied);
            batch.put_cf(meta_cf, KEY_MEMBERSHIP, membership);
            let mut opts = WriteOptions::default();
            // Synced: the log entries this snapshot replaces may be purged right after.
            opts.set_sync(true);
            db.write_opt(batch, &opts).map_err(|e| e.to_string())?;
            save_snapshot_file(&dir, &meta, &blob).map_err(|e| format!("save snapshot: {e}"))?;
            tracing::info!(snapshot = %meta, bytes = blob.len(), "installed snapshot");
            Ok(())
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        res.map_err(|e| StorageError::IO {
            source: StorageIOError::new(
                ErrorSubject::Snapshot(Some(signature)),
                ErrorVerb::Write,
                AnyError::error(e),
            ),
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let dir = self.snapshot_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || load_snapshot_file(&dir))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(loaded.map(|(meta, blob)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(blob)),
        }))
    }
}
