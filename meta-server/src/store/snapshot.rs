//! The snapshot format: the state machine's column families as one checksummed blob, and the
//! snapshot file that keeps the current one across restarts.
//!
//! Snapshots are exactly the contents of [`STATE_CFS`] (read through one RocksDB snapshot, so
//! they are consistent). Blob format (all integers big-endian): `"CAIRNSD1"`, then per column
//! family: `u32 name_len, name, u64 count, count × (u32 key_len, key, u32 value_len, value)`,
//! then a 32-byte blake3 hash of everything before it.
//!
//! The file `<data-dir>/snapshot/current` is `"CAIRNSF1"`, `u64` length of the JSON
//! [`SnapshotMeta`], the meta, then the blob; it is written with the durable-write helper.
//! Installing a blob replaces the state column families in one synced batch ([`install`]).
use super::state_machine::{KEY_LAST_APPLIED, KEY_MEMBERSHIP};
use super::{cf, CF_SM_META};
use crate::fsm::STATE_CFS;
use crate::raft::{LogId, SnapshotMeta, StoredMembership};
use cairn_common::durable;
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use std::fs;
use std::path::Path;

const BLOB_MAGIC: &[u8; 8] = b"CAIRNSD1";
const FILE_MAGIC: &[u8; 8] = b"CAIRNSF1";
const SNAPSHOT_FILE: &str = "current";

/// Dumps every state column family plus `sm_meta`, as of one RocksDB snapshot.
pub(super) fn dump_state(db: &DB) -> Result<(Option<LogId>, StoredMembership, Vec<u8>), String> {
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
pub(super) type StateDump<'a> = Vec<(&'static str, Vec<(&'a [u8], &'a [u8])>)>;

/// Verifies the checksum and parses the whole blob before anything is changed.
pub(super) fn parse_blob(blob: &[u8]) -> Result<StateDump<'_>, String> {
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

/// Writes the snapshot file durably (see `cairn_common::durable`: temp file, fsync, rename over
/// `current`, fsync the directory). The log entries it replaces may be purged once this
/// returns, so it must survive a crash.
pub(super) fn save_snapshot_file(
    dir: &Path,
    meta: &SnapshotMeta,
    blob: &[u8],
) -> Result<(), String> {
    let meta_json = serde_json::to_vec(meta).map_err(|e| e.to_string())?;
    let mut header = Vec::with_capacity(FILE_MAGIC.len() + 8 + meta_json.len());
    header.extend_from_slice(FILE_MAGIC);
    header.extend_from_slice(&(meta_json.len() as u64).to_be_bytes());
    header.extend_from_slice(&meta_json);
    let mut tmp = durable::TempFile::create_in(dir, SNAPSHOT_FILE).map_err(|e| e.to_string())?;
    tmp.write_all(&header).map_err(|e| e.to_string())?;
    tmp.write_all(blob).map_err(|e| e.to_string())?;
    tmp.publish(&dir.join(SNAPSHOT_FILE))
        .map_err(|e| e.to_string())
}

pub(super) fn load_snapshot_file(dir: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String> {
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

/// Replaces the whole state with the snapshot `blob` (checked first) and records `meta` as
/// applied, in one synced batch, then keeps the blob as the current snapshot file.
pub(super) fn install(db: &DB, dir: &Path, meta: &SnapshotMeta, blob: &[u8]) -> Result<(), String> {
    let dump = parse_blob(blob)?;
    let mut batch = WriteBatch::default();
    // Replace the whole state: delete every current key, then load the snapshot's.
    for name in STATE_CFS {
        let handle = cf(db, name).map_err(|e| e.to_string())?;
        for item in db.iterator_cf(handle, IteratorMode::Start) {
            let (k, _) = item.map_err(|e| e.to_string())?;
            batch.delete_cf(handle, k);
        }
    }
    for (name, kvs) in &dump {
        let handle = cf(db, name).map_err(|e| e.to_string())?;
        for (k, v) in kvs {
            batch.put_cf(handle, k, v);
        }
    }
    let meta_cf = cf(db, CF_SM_META).map_err(|e| e.to_string())?;
    let applied = serde_json::to_vec(&meta.last_log_id).map_err(|e| e.to_string())?;
    let membership = serde_json::to_vec(&meta.last_membership).map_err(|e| e.to_string())?;
    batch.put_cf(meta_cf, KEY_LAST_APPLIED, applied);
    batch.put_cf(meta_cf, KEY_MEMBERSHIP, membership);
    let mut opts = WriteOptions::default();
    // Synced: the log entries this snapshot replaces may be purged right after.
    opts.set_sync(true);
    db.write_opt(batch, &opts).map_err(|e| e.to_string())?;
    save_snapshot_file(dir, meta, blob)
}
