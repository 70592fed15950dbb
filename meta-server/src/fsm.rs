//! The namespace state machine: inodes, dentries, chunk records and chunk servers, on RocksDB.
//!
//! [`Fsm::apply`] is the only writer. It reads the current state from the DB through a small
//! per-command overlay ([`Tx`]) so that a command which touches the same key twice (a rename
//! within one directory, two slots of one file sharing a chunk) sees its own changes, and only
//! when the whole command succeeded are the changes put into the caller's write batch. A
//! refused command therefore changes nothing, and an accepted one takes effect atomically with
//! the Raft `last_applied` the caller writes in the same batch.
//!
//! Layout (one column family each, all listed in [`STATE_CFS`]; a snapshot is their contents):
//!
//! | CF         | key                                  | value                                   |
//! |------------|--------------------------------------|-----------------------------------------|
//! | `inodes`   | ino (u64 BE)                         | [`Inode`] (JSON)                        |
//! | `dentries` | parent ino (u64 BE) ++ name bytes    | child ino (u64 BE) ++ kind byte         |
//! | `chunks`   | [`ChunkId`] (32 bytes)               | [`ChunkRecord`] (JSON)                  |
//! | `servers`  | `i` ++ id (u64 BE) / `u` ++ uuid     | [`ServerRecord`] (JSON) / id (u64 BE)   |
//! | `counters` | `next_ino`, `next_server_id`, `inodes` | u64 BE                                |
//! | `gc`       | [`ChunkId`]                          | [`Time`] it became unreferenced (JSON)  |
//! | `repair`   | [`ChunkId`]                          | [`Time`] it last lost a replica (JSON)  |
//! | `gone`     | [`ChunkId`]                          | [`Gone`] tombstone (JSON)               |
//! | `requests` | client (u64 BE) ++ seq (u64 BE)      | recorded reply of a mutation (JSON)     |
//! | `xattrs`   | ino (u64 BE) ++ name                 | value bytes                             |
//! | `sessions` | session id (u64 BE)                  | [`SessionRecord`] (JSON)                |
//! | `locks`    | ino (u64 BE)                         | `Vec<`[`HeldLock`]`>` (JSON)            |
//! | `orphans`  | session (u64 BE) ++ ino (u64 BE)     | empty: an open file with no name left   |
//! | `uploads`  | id (u64 BE) ++ 0 / ++ 1 ++ slot (BE) | [`UploadHeader`] / [`SlotChunk`] (JSON) |
//! | `upload_targets` | ino (u64 BE) ++ upload id (u64 BE) | empty: uploads replacing that inode |
//!
//! Determinism: `apply` depends only on the DB state and the command (the leader stamps `now`
//! into it), so every replica computes the same state.
use crate::command::{
    Command, CommandResult, FsError, Keep, Kind, Reply, SlotChunk, SlotUpdate, Time,
    RENAME_EXCHANGE, RENAME_NOREPLACE,
};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use cairn_common::{ChunkId, CHUNK_SIZE, ROOT_INO};
use rocksdb::{ColumnFamily, Direction, IteratorMode, WriteBatch, DB};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Column families holding the replicated state. A snapshot is exactly their contents.
pub const STATE_CFS: &[&str] = &[
    "inodes",
    "dentries",
    "chunks",
    "servers",
    "counters",
    "gc",
    "repair",
    "gone",
    "requests",
    "xattrs",
    "sessions",
    "locks",
    "orphans",
    "uploads",
    "upload_targets",
];

const CF_INODES: &str = "inodes";
const CF_DENTRIES: &str = "dentries";
const CF_CHUNKS: &str = "chunks";
const CF_SERVERS: &str = "servers";
const CF_COUNTERS: &str = "counters";
const CF_GC: &str = "gc";
const CF_REPAIR: &str = "repair";
const CF_GONE: &str = "gone";
const CF_REQUESTS: &str = "requests";
const CF_XATTRS: &str = "xattrs";
const CF_SESSIONS: &str = "sessions";
const CF_LOCKS: &str = "locks";
const CF_ORPHANS: &str = "orphans";
const CF_UPLOADS: &str = "uploads";
const CF_UPLOAD_TARGETS: &str = "upload_targets";

mod sessions;
mod uploads;
pub use sessions::{check_xattr_name, HeldLock, SessionRecord};
pub use uploads::UploadHeader;

/// The recorded result of a mutation applied under a request id (`requests` column family).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct RequestRecord {
    at: Time,
    reply: Reply,
}

fn request_key(client: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&client.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

const NEXT_INO: &str = "next_ino";
const NEXT_SERVER_ID: &str = "next_server_id";
const INODE_COUNT: &str = "inodes";
/// The current garbage-collection epoch (raised by every `GcBegin`).
const GC_EPOCH: &str = "gc_epoch";
/// Tickets below this are refused for chunks the state machine does not know: tombstones of
/// collections in epochs below it were pruned.
const GC_FLOOR: &str = "gc_floor";

/// Longest symlink target (PATH_MAX).
pub const SYMLINK_MAX: usize = 4096;
/// Most hard links one inode may have.
pub const LINK_MAX: u32 = 65_000;
/// Deepest directory nesting the subtree walk of `rename` follows before declaring the tree
/// corrupt (a loop in `parent` pointers must not hang the state machine).
const MAX_DEPTH: usize = 1 << 16;

const CHUNK: u64 = CHUNK_SIZE as u64;

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
    /// Regular files: the non-hole slots. Slot i covers bytes [i*CHUNK_SIZE, (i+1)*CHUNK_SIZE).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<u64, SlotChunk>,
}

impl Inode {
    /// Bytes of chunk data the file references.
    pub fn stored_bytes(&self) -> u64 {
        self.slots.values().map(|s| u64::from(s.len)).sum()
    }

    pub fn to_attr(&self) -> cairn_proto::Attr {
        cairn_proto::Attr {
            ino: self.ino,
            kind: self.kind.to_proto() as i32,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            nlink: self.nlink,
            atime: Some(self.atime.into()),
            mtime: Some(self.mtime.into()),
            ctime: Some(self.ctime.into()),
            version: self.version,
            rdev: self.rdev,
            stored_bytes: self.stored_bytes(),
        }
    }

    fn is_dir(&self) -> bool {
        self.kind == Kind::Directory
    }
}

/// What the cluster knows about one chunk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChunkRecord {
    pub stored_len: u32,
    /// Chunk servers holding it durably, sorted, no duplicates.
    pub replicas: Vec<u64>,
    /// File slots referencing it (over all inodes). 0: queued in `gc`.
    pub refs: u64,
    /// Set by `GcBegin` (the GC epoch) while the chunk is being deleted; `replicas` then lists
    /// the copies not yet deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collecting: Option<u64>,
}

impl ChunkRecord {
    /// Referenced or revivable: not being garbage-collected.
    pub fn is_live(&self) -> bool {
        self.collecting.is_none()
    }
}

/// A collected chunk, remembered so that a commit of an upload older than its collection is
/// refused (the upload's copies may have been deleted).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone {
    pub epoch: u64,
    pub at: Time,
}

/// A registered chunk server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServerRecord {
    pub id: u64,
    pub uuid: String,
    pub addr: String,
    /// Set by `cairn chunk drain`: the server gets no new chunks and repair moves its replicas
    /// to other servers, then removes them here.
    #[serde(default)]
    pub draining: bool,
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

/// One non-hole slot of a file with where its chunk lives.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotLocation {
    pub index: u64,
    pub chunk: SlotChunk,
    /// Server ids holding the chunk (empty if the chunk record is missing).
    pub replicas: Vec<u64>,
}

fn fs_err(kind: ErrorKind, message: impl Into<String>) -> FsError {
    FsError::new(kind, message)
}

fn corrupt(what: impl std::fmt::Display) -> FsError {
    tracing::error!(error = %what, "corrupt or unreadable metadata state");
    fs_err(ErrorKind::Corrupt, format!("metadata state: {what}"))
}

fn storage(e: rocksdb::Error) -> FsError {
    tracing::error!(error = %e, "rocksdb failure in the state machine");
    fs_err(ErrorKind::Internal, format!("storage: {e}"))
}

fn dentry_key(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&parent.to_be_bytes());
    k.extend_from_slice(name);
    k
}

fn kind_byte(k: Kind) -> u8 {
    match k {
        Kind::Regular => 1,
        Kind::Directory => 2,
        Kind::Symlink => 3,
        Kind::Fifo => 4,
        Kind::Socket => 5,
        Kind::CharDevice => 6,
        Kind::BlockDevice => 7,
    }
}

fn kind_from_byte(b: u8) -> Option<Kind> {
    Some(match b {
        1 => Kind::Regular,
        2 => Kind::Directory,
        3 => Kind::Symlink,
        4 => Kind::Fifo,
        5 => Kind::Socket,
        6 => Kind::CharDevice,
        7 => Kind::BlockDevice,
        _ => return None,
    })
}

/// A directory entry's value: the child and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dentry {
    ino: u64,
    kind: Kind,
}

impl Dentry {
    fn encode(&self) -> [u8; 9] {
        let mut v = [0u8; 9];
        v[..8].copy_from_slice(&self.ino.to_be_bytes());
        v[8] = kind_byte(self.kind);
        v
    }

    fn decode(v: &[u8]) -> Result<Dentry, FsError> {
        if v.len() != 9 {
            return Err(corrupt(format!("dentry value of {} bytes", v.len())));
        }
        let ino = u64::from_be_bytes(v[..8].try_into().map_err(corrupt)?);
        let kind = kind_from_byte(v[8]).ok_or_else(|| corrupt(format!("kind byte {}", v[8])))?;
        Ok(Dentry { ino, kind })
    }
}

fn decode_u64(v: &[u8]) -> Result<u64, FsError> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| corrupt(format!("u64 value of {} bytes", v.len())))?;
    Ok(u64::from_be_bytes(arr))
}

fn decode_json<T: DeserializeOwned>(v: &[u8]) -> Result<T, FsError> {
    serde_json::from_slice(v).map_err(corrupt)
}

fn encode_json<T: Serialize>(t: &T) -> Vec<u8> {
    // Serializing our own plain structs (string keys, no non-finite floats) cannot fail.
    serde_json::to_vec(t).unwrap_or_default()
}

fn server_id_key(id: u64) -> Vec<u8> {
    let mut k = vec![b'i'];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn server_uuid_key(uuid: &str) -> Vec<u8> {
    let mut k = vec![b'u'];
    k.extend_from_slice(uuid.as_bytes());
    k
}

fn validate_name(name: &[u8]) -> Result<(), FsError> {
    cairn_common::name::validate_name(name).map_err(|k| {
        fs_err(
            k,
            format!("invalid name {:?}", String::from_utf8_lossy(name)),
        )
    })
}

pub struct Fsm {
    db: Arc<DB>,
}

impl Fsm {
    /// Wraps the state column families of `db` (which must already exist) and creates the root
    /// directory if it is absent. Every replica creates the identical root (fixed time 0), so
    /// state stays identical across replicas.
    pub fn open(db: Arc<DB>) -> Result<Fsm, MetaError> {
        for cf in STATE_CFS {
            if db.cf_handle(cf).is_none() {
                return Err(MetaError::Storage(format!(
                    "column family {cf:?} is missing"
                )));
            }
        }
        let fsm = Fsm { db };
        fsm.ensure_root()?;
        Ok(fsm)
    }

    fn ensure_root(&self) -> Result<(), MetaError> {
        if self.get_opt(ROOT_INO)?.is_some() {
            return Ok(());
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
            slots: BTreeMap::new(),
        };
        let mut b = WriteBatch::default();
        b.put_cf(
            self.cf(CF_INODES)?,
            ROOT_INO.to_be_bytes(),
            encode_json(&root),
        );
        b.put_cf(
            self.cf(CF_COUNTERS)?,
            NEXT_INO,
            (ROOT_INO + 1).to_be_bytes(),
        );
        b.put_cf(self.cf(CF_COUNTERS)?, INODE_COUNT, 1u64.to_be_bytes());
        b.put_cf(self.cf(CF_COUNTERS)?, NEXT_SERVER_ID, 1u64.to_be_bytes());
        self.db.write(b)?;
        tracing::info!("created the root directory");
        Ok(())
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, FsError> {
        self.db.cf_handle(name).ok_or_else(|| {
            fs_err(
                ErrorKind::Internal,
                format!("column family {name:?} missing"),
            )
        })
    }

    fn raw_get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, FsError> {
        self.db.get_cf(self.cf(cf)?, key).map_err(storage)
    }

    /// Applies one command: reads the current state from the DB, puts every change into
    /// `batch` (written atomically by the caller together with `last_applied`). On error nothing
    /// is put into `batch`.
    pub fn apply(&self, cmd: &Command, batch: &mut WriteBatch) -> CommandResult {
        match cmd {
            Command::Once {
                client,
                seq,
                now,
                cmd,
            } => {
                if matches!(**cmd, Command::Once { .. } | Command::PruneRequests { .. }) {
                    return Err(fs_err(
                        ErrorKind::InvalidArgument,
                        "a request id cannot wrap this command",
                    ));
                }
                // EXACTLY ONCE: a retry of a mutation that already succeeded (its reply was
                // lost with the leader that sent it) gets the recorded reply and changes
                // nothing. Failures are not recorded: they changed nothing, so a retry may run.
                let key = request_key(*client, *seq);
                if let Some(v) = self.raw_get(CF_REQUESTS, &key)? {
                    let rec: RequestRecord = decode_json(&v)?;
                    return Ok(rec.reply);
                }
                let mut tx = Tx::new(self);
                let reply = tx.run(cmd)?;
                tx.flush(batch)?;
                let rec = RequestRecord {
                    at: *now,
                    reply: reply.clone(),
                };
                batch.put_cf(self.cf(CF_REQUESTS)?, key, encode_json(&rec));
                Ok(reply)
            }
            Command::PruneRequests { before } => {
                let cf = self.cf(CF_REQUESTS)?;
                for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                    let (k, v) = item.map_err(storage)?;
                    let rec: RequestRecord = decode_json(&v)?;
                    if rec.at < *before {
                        batch.delete_cf(cf, k);
                    }
                }
                Ok(Reply::Empty)
            }
            cmd => {
                let mut tx = Tx::new(self);
                let reply = tx.run(cmd)?;
                tx.flush(batch)?;
                Ok(reply)
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Reads (the service calls `MetaNode::linearizable_read` first).
    // ---------------------------------------------------------------------------------------

    /// The entries of `cf` whose key starts with `prefix`.
    fn scan(&self, cf: &str, prefix: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, FsError> {
        let mut out = BTreeMap::new();
        let mode = IteratorMode::From(prefix, Direction::Forward);
        for item in self.db.iterator_cf(self.cf(cf)?, mode) {
            let (k, v) = item.map_err(storage)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.insert(k.to_vec(), v.to_vec());
        }
        Ok(out)
    }

    /// The inode `ino`, if it exists.
    pub fn get_opt(&self, ino: u64) -> Result<Option<Inode>, MetaError> {
        Ok(self
            .raw_get(CF_INODES, &ino.to_be_bytes())?
            .map(|v| decode_json(&v))
            .transpose()?)
    }

    /// The inode `ino`; `NotFound` if it does not exist.
    pub fn get(&self, ino: u64) -> Result<Inode, MetaError> {
        self.get_opt(ino)?
            .ok_or_else(|| MetaError::fs(ErrorKind::NotFound, format!("inode {ino} not found")))
    }

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

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode, MetaError> {
        validate_name(name)?;
        self.get_dir(parent)?;
        let d = self
            .raw_get(CF_DENTRIES, &dentry_key(parent, name))?
            .ok_or_else(|| {
                MetaError::fs(
                    ErrorKind::NotFound,
                    format!("{:?} not found in {parent}", String::from_utf8_lossy(name)),
                )
            })?;
        let d = Dentry::decode(&d)?;
        self.get_opt(d.ino)?.ok_or_else(|| {
            MetaError::from(corrupt(format!("dentry points at missing inode {}", d.ino)))
        })
    }

    /// Up to `limit` entries of directory `ino` whose names sort strictly after `after`.
    pub fn readdir(&self, ino: u64, after: &[u8], limit: usize) -> Result<DirPage, MetaError> {
        let dir = self.get_dir(ino)?;
        let prefix = ino.to_be_bytes();
        let start = if after.is_empty() {
            prefix.to_vec()
        } else {
            dentry_key(ino, after)
        };
        let mut entries = Vec::new();
        let mut eof = true;
        let iter = self.db.iterator_cf(
            self.cf(CF_DENTRIES)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(storage)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let name = &k[8..];
            if !after.is_empty() && name == after {
                continue;
            }
            if entries.len() >= limit {
                eof = false;
                break;
            }
            let d = Dentry::decode(&v)?;
            let child = self.get_opt(d.ino)?.ok_or_else(|| {
                MetaError::from(corrupt(format!("dentry points at missing inode {}", d.ino)))
            })?;
            entries.push((name.to_vec(), child));
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

    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, MetaError> {
        Ok(self
            .raw_get(CF_CHUNKS, id.as_bytes())?
            .map(|v| decode_json(&v))
            .transpose()?)
    }

    /// The inode and, for each non-hole slot in index order, where its chunk lives.
    pub fn chunk_locations(&self, ino: u64) -> Result<(Inode, Vec<SlotLocation>), MetaError> {
        let inode = self.get(ino)?;
        let mut out = Vec::with_capacity(inode.slots.len());
        for (&index, chunk) in &inode.slots {
            let replicas = match self.chunk(&chunk.id)? {
                Some(r) => r.replicas,
                None => {
                    tracing::error!(inode = ino, chunk = %chunk.id, "slot references unknown chunk");
                    Vec::new()
                }
            };
            out.push(SlotLocation {
                index,
                chunk: *chunk,
                replicas,
            });
        }
        Ok((inode, out))
    }

    /// Up to `limit` chunk records with ids strictly after `after` (from the start if `None`),
    /// in id order: the repair worker and fsck page through the chunk table with it.
    pub fn chunk_page(
        &self,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<(ChunkId, ChunkRecord)>, MetaError> {
        let mode = match after {
            Some(id) => IteratorMode::From(id.as_bytes(), Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_CHUNKS)?, mode) {
            let (k, v) = item.map_err(storage)?;
            let id = ChunkId::from_bytes(&k).map_err(corrupt)?;
            if Some(&id) == after {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            out.push((id, decode_json(&v)?));
        }
        Ok(out)
    }

    /// Calls `f` for every inode (fsck). Reads one consistent RocksDB snapshot.
    pub fn for_each_inode(&self, mut f: impl FnMut(Inode)) -> Result<(), MetaError> {
        let snap = self.db.snapshot();
        for item in snap.iterator_cf(self.cf(CF_INODES)?, IteratorMode::Start) {
            let (_, v) = item.map_err(storage)?;
            f(decode_json(&v)?);
        }
        Ok(())
    }

    /// Calls `f(parent, name, child)` for every directory entry (fsck builds paths with it).
    pub fn for_each_dentry(&self, mut f: impl FnMut(u64, &[u8], u64)) -> Result<(), MetaError> {
        let snap = self.db.snapshot();
        for item in snap.iterator_cf(self.cf(CF_DENTRIES)?, IteratorMode::Start) {
            let (k, v) = item.map_err(storage)?;
            if k.len() < 8 {
                return Err(corrupt(format!("dentry key of {} bytes", k.len())).into());
            }
            let mut parent = [0u8; 8];
            parent.copy_from_slice(&k[..8]);
            f(u64::from_be_bytes(parent), &k[8..], Dentry::decode(&v)?.ino);
        }
        Ok(())
    }

    /// Every registered chunk server, by id.
    pub fn servers(&self) -> Result<Vec<ServerRecord>, MetaError> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_SERVERS)?,
            IteratorMode::From(b"i", Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(storage)?;
            if k.first() != Some(&b'i') {
                break;
            }
            out.push(decode_json(&v)?);
        }
        Ok(out)
    }

    pub fn server(&self, id: u64) -> Result<Option<ServerRecord>, MetaError> {
        Ok(self
            .raw_get(CF_SERVERS, &server_id_key(id))?
            .map(|v| decode_json(&v))
            .transpose()?)
    }

    /// Counter `name` (0 until first set).
    fn read_counter(&self, name: &str) -> Result<u64, FsError> {
        Ok(self
            .raw_get(CF_COUNTERS, name.as_bytes())?
            .map(|v| decode_u64(&v))
            .transpose()?
            .unwrap_or(0))
    }

    /// Number of inodes (for statfs).
    pub fn inode_count(&self) -> Result<u64, MetaError> {
        Ok(self.read_counter(INODE_COUNT)?)
    }

    /// The current GC epoch: the ticket PrepareWrite hands out.
    pub fn gc_epoch(&self) -> Result<u64, MetaError> {
        Ok(self.read_counter(GC_EPOCH)?)
    }

    /// Up to `limit` unreferenced chunks that became so before `before` (or are being
    /// collected), with their records: the GC worker's work list.
    pub fn gc_candidates(
        &self,
        before: Time,
        limit: usize,
    ) -> Result<Vec<(ChunkId, ChunkRecord)>, MetaError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_GC)?, IteratorMode::Start) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(storage)?;
            let id = ChunkId::from_bytes(&k).map_err(corrupt)?;
            let since: Time = decode_json(&v)?;
            let Some(rec) = self.chunk(&id)? else {
                continue;
            };
            if rec.refs == 0 && (rec.collecting.is_some() || since < before) {
                out.push((id, rec));
            }
        }
        Ok(out)
    }

    /// Chunks queued in `gc` (unreferenced, waiting or being collected).
    pub fn gc_pending(&self) -> Result<u64, MetaError> {
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(CF_GC)?, IteratorMode::Start) {
            item.map_err(storage)?;
            n += 1;
        }
        Ok(n)
    }

    /// Whether chunk `id` was collected (a tombstone remains).
    pub fn gone(&self, id: &ChunkId) -> Result<Option<Gone>, MetaError> {
        Ok(self
            .raw_get(CF_GONE, id.as_bytes())?
            .map(|v| decode_json(&v))
            .transpose()?)
    }

    /// Chunks queued for deletion (unreferenced), with the time they became unreferenced.
    pub fn gc_queue(&self) -> Result<Vec<(ChunkId, Time)>, MetaError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_GC)?, IteratorMode::Start) {
            let (k, v) = item.map_err(storage)?;
            let id = ChunkId::from_bytes(&k).map_err(corrupt)?;
            out.push((id, decode_json(&v)?));
        }
        Ok(out)
    }

    /// Chunks that lost a replica (a copy failed verification), with the time of the latest
    /// loss, until repair lists a new copy (`AddReplica`). Shown by fsck as corrupt copies still
    /// waiting for repair; the repair worker itself works from the full chunk table.
    pub fn repair_queue(&self) -> Result<Vec<(ChunkId, Time)>, MetaError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_REPAIR)?, IteratorMode::Start)
        {
            let (k, v) = item.map_err(storage)?;
            let id = ChunkId::from_bytes(&k).map_err(corrupt)?;
            out.push((id, decode_json(&v)?));
        }
        Ok(out)
    }

    /// Up to three dentry keys of directory `ino` from the DB (see `Tx::dir_is_empty`).
    fn first_dentry_keys(&self, ino: u64) -> Result<Vec<Vec<u8>>, FsError> {
        let prefix = ino.to_be_bytes();
        let mut keys = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_DENTRIES)?,
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in iter {
            let (k, _) = item.map_err(storage)?;
            if !k.starts_with(&prefix) {
                break;
            }
            keys.push(k.to_vec());
            if keys.len() > 2 {
                break;
            }
        }
        Ok(keys)
    }
}

/// A key and its value, as stored.
type KeyValue = (Vec<u8>, Vec<u8>);

/// The changes of one command, layered over the DB. Reads see earlier writes of the same
/// command; `flush` puts them into the batch. `None` values are deletions.
struct Tx<'a> {
    fsm: &'a Fsm,
    inodes: BTreeMap<u64, Option<Inode>>,
    dentries: BTreeMap<Vec<u8>, Option<Dentry>>,
    chunks: BTreeMap<ChunkId, Option<ChunkRecord>>,
    gc: BTreeMap<ChunkId, Option<Time>>,
    repair: BTreeMap<ChunkId, Time>,
    /// Chunks whose `repair` entry is cleared (a replica was added back).
    repair_done: Vec<ChunkId>,
    gone: BTreeMap<ChunkId, Option<Gone>>,
    servers: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    counters: BTreeMap<&'static str, u64>,
    /// The smaller column families (xattrs, sessions, locks, orphans): (cf, key) → value.
    kv: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a> Tx<'a> {
    fn new(fsm: &'a Fsm) -> Tx<'a> {
        Tx {
            fsm,
            inodes: BTreeMap::new(),
            dentries: BTreeMap::new(),
            chunks: BTreeMap::new(),
            gc: BTreeMap::new(),
            repair: BTreeMap::new(),
            repair_done: Vec::new(),
            gone: BTreeMap::new(),
            servers: BTreeMap::new(),
            counters: BTreeMap::new(),
            kv: BTreeMap::new(),
        }
    }

    fn flush(self, b: &mut WriteBatch) -> Result<(), FsError> {
        let f = self.fsm;
        let cf = f.cf(CF_INODES)?;
        for (ino, v) in &self.inodes {
            match v {
                Some(i) => b.put_cf(cf, ino.to_be_bytes(), encode_json(i)),
                None => b.delete_cf(cf, ino.to_be_bytes()),
            }
        }
        let cf = f.cf(CF_DENTRIES)?;
        for (k, v) in &self.dentries {
            match v {
                Some(d) => b.put_cf(cf, k, d.encode()),
                None => b.delete_cf(cf, k),
            }
        }
        let cf = f.cf(CF_CHUNKS)?;
        for (id, v) in &self.chunks {
            match v {
                Some(r) => b.put_cf(cf, id.as_bytes(), encode_json(r)),
                None => b.delete_cf(cf, id.as_bytes()),
            }
        }
        let cf = f.cf(CF_GC)?;
        for (id, v) in &self.gc {
            match v {
                Some(t) => b.put_cf(cf, id.as_bytes(), encode_json(t)),
                None => b.delete_cf(cf, id.as_bytes()),
            }
        }
        let cf = f.cf(CF_REPAIR)?;
        for id in &self.repair_done {
            b.delete_cf(cf, id.as_bytes());
        }
        for (id, t) in &self.repair {
            b.put_cf(cf, id.as_bytes(), encode_json(t));
        }
        let cf = f.cf(CF_GONE)?;
        for (id, v) in &self.gone {
            match v {
                Some(g) => b.put_cf(cf, id.as_bytes(), encode_json(g)),
                None => b.delete_cf(cf, id.as_bytes()),
            }
        }
        let cf = f.cf(CF_SERVERS)?;
        for (k, v) in &self.servers {
            match v {
                Some(v) => b.put_cf(cf, k, v),
                None => b.delete_cf(cf, k),
            }
        }
        let cf = f.cf(CF_COUNTERS)?;
        for (k, v) in &self.counters {
            b.put_cf(cf, k, v.to_be_bytes());
        }
        for ((cf, k), v) in &self.kv {
            let cf = f.cf(cf)?;
            match v {
                Some(v) => b.put_cf(cf, k, v),
                None => b.delete_cf(cf, k),
            }
        }
        Ok(())
    }

    fn kv_get(&mut self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, FsError> {
        if let Some(v) = self.kv.get(&(cf, key.to_vec())) {
            return Ok(v.clone());
        }
        self.fsm.raw_get(cf, key)
    }

    fn kv_put(&mut self, cf: &'static str, key: Vec<u8>, v: Option<Vec<u8>>) {
        self.kv.insert((cf, key), v);
    }

    /// The entries of `cf` whose key starts with `prefix`, as this transaction sees them.
    fn kv_scan(&mut self, cf: &'static str, prefix: &[u8]) -> Result<Vec<KeyValue>, FsError> {
        let mut out = self.fsm.scan(cf, prefix)?;
        for ((c, k), v) in self.kv.range((cf, prefix.to_vec())..) {
            if *c != cf || !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out.into_iter().collect())
    }

    // --- overlay accessors -------------------------------------------------------------------

    fn inode(&mut self, ino: u64) -> Result<Option<Inode>, FsError> {
        if let Some(v) = self.inodes.get(&ino) {
            return Ok(v.clone());
        }
        let v = self
            .fsm
            .raw_get(CF_INODES, &ino.to_be_bytes())?
            .map(|v| decode_json::<Inode>(&v))
            .transpose()?;
        self.inodes.insert(ino, v.clone());
        Ok(v)
    }

    fn must_inode(&mut self, ino: u64) -> Result<Inode, FsError> {
        self.inode(ino)?
            .ok_or_else(|| fs_err(ErrorKind::NotFound, format!("inode {ino} not found")))
    }

    fn must_dir(&mut self, ino: u64) -> Result<Inode, FsError> {
        let d = self.must_inode(ino)?;
        if !d.is_dir() {
            return Err(fs_err(
                ErrorKind::NotDir,
                format!("inode {ino} is not a directory"),
            ));
        }
        Ok(d)
    }

    fn put_inode(&mut self, i: Inode) {
        self.inodes.insert(i.ino, Some(i));
    }

    fn dentry(&mut self, parent: u64, name: &[u8]) -> Result<Option<Dentry>, FsError> {
        let k = dentry_key(parent, name);
        if let Some(v) = self.dentries.get(&k) {
            return Ok(*v);
        }
        let v = self
            .fsm
            .raw_get(CF_DENTRIES, &k)?
            .map(|v| Dentry::decode(&v))
            .transpose()?;
        self.dentries.insert(k, v);
        Ok(v)
    }

    fn put_dentry(&mut self, parent: u64, name: &[u8], d: Dentry) {
        self.dentries.insert(dentry_key(parent, name), Some(d));
    }

    fn del_dentry(&mut self, parent: u64, name: &[u8]) {
        self.dentries.insert(dentry_key(parent, name), None);
    }

    fn dir_is_empty(&mut self, ino: u64) -> Result<bool, FsError> {
        let prefix = ino.to_be_bytes();
        // Entries this command added under `ino`.
        if self
            .dentries
            .iter()
            .any(|(k, v)| v.is_some() && k.starts_with(&prefix) && k.len() > 8)
        {
            return Ok(false);
        }
        // Entries in the DB not deleted by this command. A command deletes at most two
        // entries, so three DB keys are enough to decide.
        let keys = self.fsm.first_dentry_keys(ino)?;
        Ok(keys
            .iter()
            .all(|k| matches!(self.dentries.get(k), Some(None))))
    }

    fn counter(&mut self, name: &'static str) -> Result<u64, FsError> {
        if let Some(v) = self.counters.get(name) {
            return Ok(*v);
        }
        let v = self.fsm.read_counter(name)?;
        self.counters.insert(name, v);
        Ok(v)
    }

    fn set_counter(&mut self, name: &'static str, v: u64) {
        self.counters.insert(name, v);
    }

    fn gone(&mut self, id: &ChunkId) -> Result<Option<Gone>, FsError> {
        if let Some(v) = self.gone.get(id) {
            return Ok(*v);
        }
        let v = self
            .fsm
            .raw_get(CF_GONE, id.as_bytes())?
            .map(|v| decode_json::<Gone>(&v))
            .transpose()?;
        self.gone.insert(*id, v);
        Ok(v)
    }

    fn chunk(&mut self, id: &ChunkId) -> Result<Option<ChunkRecord>, FsError> {
        if let Some(v) = self.chunks.get(id) {
            return Ok(v.clone());
        }
        let v = self
            .fsm
            .raw_get(CF_CHUNKS, id.as_bytes())?
            .map(|v| decode_json::<ChunkRecord>(&v))
            .transpose()?;
        self.chunks.insert(*id, v.clone());
        Ok(v)
    }

    fn server_raw(&mut self, key: Vec<u8>) -> Result<Option<Vec<u8>>, FsError> {
        if let Some(v) = self.servers.get(&key) {
            return Ok(v.clone());
        }
        let v = self.fsm.raw_get(CF_SERVERS, &key)?;
        self.servers.insert(key, v.clone());
        Ok(v)
    }

    // --- reference counting --------------------------------------------------------------------

    /// A slot now references `c`; `replicas` hold it durably.
    /// A slot now references chunk `c`, stored on `replicas` by an upload placed with `ticket`.
    ///
    /// GC SAFETY: a chunk being collected (or collected) since an epoch after `ticket` is
    /// refused: the upload happened before the chunk servers marked their copies, so the copies
    /// it relies on may be deleted. With a later ticket the upload's puts came after the marks
    /// (which they cleared), so its copies survive and the chunk is revived on exactly them.
    fn incref(&mut self, c: &SlotChunk, replicas: &[u64], ticket: u64) -> Result<(), FsError> {
        let too_old = |epoch: u64| {
            fs_err(
                ErrorKind::Conflict,
                format!(
                    "chunk {} was garbage-collected in epoch {epoch}, after this upload's \
                     placement (ticket {ticket}); upload it again",
                    c.id
                ),
            )
        };
        let rec = match self.chunk(&c.id)? {
            Some(r) if r.collecting.is_some() => {
                let epoch = r.collecting.unwrap_or(0);
                if ticket < epoch {
                    return Err(too_old(epoch));
                }
                if replicas.is_empty() {
                    return Err(fs_err(
                        ErrorKind::InvalidArgument,
                        format!("chunk {} is being collected and was not stored again", c.id),
                    ));
                }
                // Revived on the copies of this upload only; the old ones are being deleted.
                let mut replicas = replicas.to_vec();
                replicas.sort_unstable();
                replicas.dedup();
                self.gc.insert(c.id, None);
                ChunkRecord {
                    stored_len: c.stored_len,
                    replicas,
                    refs: 1,
                    collecting: None,
                }
            }
            Some(mut r) => {
                if r.stored_len != c.stored_len {
                    return Err(fs_err(
                        ErrorKind::InvalidArgument,
                        format!(
                            "chunk {} is stored with {} bytes, not {}",
                            c.id, r.stored_len, c.stored_len
                        ),
                    ));
                }
                if r.refs == 0 {
                    self.gc.insert(c.id, None);
                }
                r.refs += 1;
                r.replicas.extend_from_slice(replicas);
                r.replicas.sort_unstable();
                r.replicas.dedup();
                r
            }
            None => {
                if replicas.is_empty() {
                    return Err(fs_err(
                        ErrorKind::InvalidArgument,
                        format!("new chunk {} has no replicas", c.id),
                    ));
                }
                if let Some(g) = self.gone(&c.id)? {
                    if ticket < g.epoch {
                        return Err(too_old(g.epoch));
                    }
                    self.gone.insert(c.id, None);
                }
                let floor = self.counter(GC_FLOOR)?;
                if ticket < floor {
                    return Err(fs_err(
                        ErrorKind::Conflict,
                        format!(
                            "upload of chunk {} is too old (ticket {ticket}, oldest accepted \
                             {floor}); upload it again",
                            c.id
                        ),
                    ));
                }
                let mut replicas = replicas.to_vec();
                replicas.sort_unstable();
                replicas.dedup();
                ChunkRecord {
                    stored_len: c.stored_len,
                    replicas,
                    refs: 1,
                    collecting: None,
                }
            }
        };
        self.chunks.insert(c.id, Some(rec));
        Ok(())
    }

    /// Makes `epoch` (the current one plus one) current if any chunk entered collection in it.
    fn open_gc_epoch(&mut self, epoch: u64, accepted: Vec<ChunkId>) -> Reply {
        if !accepted.is_empty() {
            self.set_counter(GC_EPOCH, epoch);
        }
        Reply::GcBegun {
            epoch,
            ids: accepted,
        }
    }

    fn gc_begin(&mut self, ids: &[ChunkId]) -> CommandResult {
        let epoch = self.counter(GC_EPOCH)? + 1;
        let mut accepted = Vec::new();
        for id in ids {
            let Some(mut r) = self.chunk(id)? else {
                continue;
            };
            if r.refs > 0 {
                continue;
            }
            r.collecting = Some(epoch);
            self.chunks.insert(*id, Some(r));
            accepted.push(*id);
        }
        Ok(self.open_gc_epoch(epoch, accepted))
    }

    fn gc_swept(&mut self, id: &ChunkId, servers: &[u64], now: Time) -> CommandResult {
        let Some(mut r) = self.chunk(id)? else {
            return Ok(Reply::Empty);
        };
        let Some(epoch) = r.collecting else {
            // Revived by a commit meanwhile: nothing to do.
            return Ok(Reply::Empty);
        };
        r.replicas.retain(|s| !servers.contains(s));
        if r.replicas.is_empty() {
            self.chunks.insert(*id, None);
            self.gc.insert(*id, None);
            self.repair_done.push(*id);
            self.gone.insert(*id, Some(Gone { epoch, at: now }));
        } else {
            self.chunks.insert(*id, Some(r));
        }
        Ok(Reply::Empty)
    }

    fn gc_orphans(&mut self, ids: &[ChunkId], now: Time) -> CommandResult {
        let epoch = self.counter(GC_EPOCH)? + 1;
        let mut accepted = Vec::new();
        for id in ids {
            if self.chunk(id)?.is_some() {
                continue;
            }
            self.gone.insert(*id, Some(Gone { epoch, at: now }));
            accepted.push(*id);
        }
        Ok(self.open_gc_epoch(epoch, accepted))
    }

    fn gc_prune(&mut self, before: Time) -> CommandResult {
        let mut floor = self.counter(GC_FLOOR)?;
        let cf = self.fsm.cf(CF_GONE)?;
        let mut old = Vec::new();
        for item in self.fsm.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(storage)?;
            let g: Gone = decode_json(&v)?;
            if g.at < before {
                old.push((ChunkId::from_bytes(&k).map_err(corrupt)?, g.epoch));
            }
        }
        // A tombstone of epoch e refused tickets below e; the floor keeps refusing them.
        for (id, epoch) in old {
            self.gone.insert(id, None);
            floor = floor.max(epoch);
        }
        self.set_counter(GC_FLOOR, floor);
        Ok(Reply::Empty)
    }

    /// A slot no longer references `id`; at 0 references the chunk is queued for deletion.
    fn decref(&mut self, id: &ChunkId, now: Time) -> Result<(), FsError> {
        match self.chunk(id)? {
            Some(mut r) => {
                if r.refs == 0 {
                    tracing::error!(chunk = %id, "chunk reference count underflow");
                } else {
                    r.refs -= 1;
                }
                if r.refs == 0 {
                    self.gc.insert(*id, Some(now));
                }
                self.chunks.insert(*id, Some(r));
            }
            None => tracing::error!(chunk = %id, "decref of an unknown chunk"),
        }
        Ok(())
    }

    /// Drops one link of `i` (already unlinked from its directory). When no link is left the
    /// inode is deleted, unless `keep` says the caller's mount still has it open: then it stays
    /// as an orphan of that session, whose ino is returned.
    fn drop_link(&mut self, mut i: Inode, now: Time, keep: &Keep) -> Result<u64, FsError> {
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

    fn delete_inode(&mut self, i: Inode, now: Time) -> Result<(), FsError> {
        for s in i.slots.values() {
            self.decref(&s.id, now)?;
        }
        self.forget_inode_extras(i.ino, now)?;
        self.inodes.insert(i.ino, None);
        let n = self.counter(INODE_COUNT)?;
        self.set_counter(INODE_COUNT, n.saturating_sub(1));
        Ok(())
    }

    fn touch_dir(&mut self, ino: u64, now: Time, nlink_delta: i32) -> Result<(), FsError> {
        let mut d = self.must_inode(ino)?;
        d.mtime = now;
        d.ctime = now;
        d.nlink = d.nlink.saturating_add_signed(nlink_delta);
        self.put_inode(d);
        Ok(())
    }

    /// Drops slots wholly past `size` and clips the one holding the new end.
    fn truncate_slots(&mut self, i: &mut Inode, size: u64, now: Time) -> Result<(), FsError> {
        let first_gone = size.div_ceil(CHUNK);
        let gone: Vec<u64> = i.slots.range(first_gone..).map(|(k, _)| *k).collect();
        for k in gone {
            if let Some(s) = i.slots.remove(&k) {
                self.decref(&s.id, now)?;
            }
        }
        if size > 0 {
            let last = (size - 1) / CHUNK;
            if let Some(s) = i.slots.get_mut(&last) {
                let end = size - last * CHUNK;
                if u64::from(s.len) > end {
                    s.len = end as u32;
                }
            }
        }
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

    // --- commands ------------------------------------------------------------------------------

    fn run(&mut self, cmd: &Command) -> CommandResult {
        match cmd {
            Command::Create {
                parent,
                name,
                kind,
                mode,
                uid,
                gid,
                rdev,
                symlink_target,
                exclusive,
                now,
            } => self.create(
                *parent,
                name,
                *kind,
                NewAttrs {
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                    rdev: *rdev,
                },
                symlink_target,
                *exclusive,
                *now,
            ),
            Command::Link {
                ino,
                new_parent,
                new_name,
                now,
            } => self.link(*ino, *new_parent, new_name, *now),
            Command::Unlink {
                parent,
                name,
                now,
                keep,
            } => self.unlink(*parent, name, false, *now, keep),
            Command::Rmdir { parent, name, now } => {
                self.unlink(*parent, name, true, *now, &Keep::default())
            }
            Command::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
                now,
                keep,
            } => self.rename(*parent, name, *new_parent, new_name, *flags, *now, keep),
            Command::SetXattr {
                ino,
                name,
                value,
                flags,
                now,
            } => self.set_xattr(*ino, name, value, *flags, *now),
            Command::RemoveXattr { ino, name, now } => self.remove_xattr(*ino, name, *now),
            Command::OpenSession {
                host,
                mountpoint,
                pid,
                now,
            } => self.open_session(host, mountpoint, *pid, *now),
            Command::RenewSession { session, now } => self.renew_session(*session, *now),
            Command::CloseSession {
                session,
                idle_before,
                now,
            } => self.close_session(*session, *idle_before, *now),
            Command::ReleaseOrphan { session, ino, now } => {
                self.release_orphan(*session, *ino, *now)
            }
            Command::SetLock {
                ino,
                session,
                owner,
                lock,
            } => self.set_lock(*ino, *session, *owner, lock),
            Command::ReleaseLocks {
                ino,
                session,
                owner,
            } => self.release_locks(*ino, *session, *owner),
            Command::SetAttr {
                ino,
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
                now,
            } => {
                let mut i = self.must_inode(*ino)?;
                if let Some(sz) = size {
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
                    if *sz != i.size {
                        self.truncate_slots(&mut i, *sz, *now)?;
                        i.size = *sz;
                        i.version += 1;
                    }
                    i.mtime = *now;
                }
                if let Some(m) = mode {
                    i.mode = m & 0o7777;
                }
                if let Some(u) = uid {
                    i.uid = *u;
                }
                if let Some(g) = gid {
                    i.gid = *g;
                }
                if let Some(t) = atime {
                    i.atime = *t;
                }
                if let Some(t) = mtime {
                    i.mtime = *t;
                }
                i.ctime = *now;
                self.put_inode(i.clone());
                Ok(Reply::Attr(i))
            }
            Command::CommitWrite {
                ino,
                base_version,
                size,
                updates,
                mtime,
                now,
                upload,
            } => {
                let reply = self.commit_write(*ino, *base_version, *size, updates, *mtime, *now)?;
                if *upload != 0 {
                    self.end_upload(*upload, *now)?;
                }
                // Other uploads of this file were based on an older version: their commits
                // can only fail now (conflict). Typically the session of a mount that died
                // mid-copy, whose rerun just committed. They stop holding chunks.
                self.end_uploads_of(*ino, *now)?;
                Ok(reply)
            }
            Command::OpenUpload {
                target,
                base_version,
                label,
                host,
                now,
            } => self.open_upload(target, *base_version, label, host, *now),
            Command::RecordUpload {
                upload,
                updates,
                now,
            } => self.record_upload(*upload, updates, *now),
            Command::AbortUpload {
                upload,
                idle_before,
                now,
            } => self.abort_upload(*upload, *idle_before, *now),
            Command::CommitUpload {
                upload,
                size,
                mtime,
                mode,
                uid,
                gid,
                now,
            } => self.commit_upload(
                *upload,
                *size,
                *mtime,
                NewAttrs {
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                    rdev: 0,
                },
                *now,
            ),
            Command::RegisterChunkServer { uuid, addr } => {
                if uuid.is_empty() || addr.is_empty() {
                    return Err(fs_err(
                        ErrorKind::InvalidArgument,
                        "chunk server uuid and address must be non-empty",
                    ));
                }
                let id = match self.server_raw(server_uuid_key(uuid))? {
                    Some(v) => decode_u64(&v)?,
                    None => {
                        let id = self.counter(NEXT_SERVER_ID)?.max(1);
                        self.set_counter(NEXT_SERVER_ID, id + 1);
                        self.servers
                            .insert(server_uuid_key(uuid), Some(id.to_be_bytes().to_vec()));
                        id
                    }
                };
                // A re-registration (restart, new address) keeps the drain flag.
                let draining = match self.server_raw(server_id_key(id))? {
                    Some(v) => decode_json::<ServerRecord>(&v)?.draining,
                    None => false,
                };
                let rec = ServerRecord {
                    id,
                    uuid: uuid.clone(),
                    addr: addr.clone(),
                    draining,
                };
                self.servers
                    .insert(server_id_key(id), Some(encode_json(&rec)));
                Ok(Reply::ServerId(id))
            }
            Command::DropReplica { id, server, now } => self.drop_replica(id, *server, *now),
            Command::AddReplica { id, server } => self.add_replica(id, *server),
            Command::RemoveReplica { id, server } => self.remove_replica(id, *server),
            Command::GcBegin { ids, .. } => self.gc_begin(ids),
            Command::GcSwept { id, servers, now } => self.gc_swept(id, servers, *now),
            Command::GcPrune { before } => self.gc_prune(*before),
            Command::GcOrphans { ids, now } => self.gc_orphans(ids, *now),
            // Handled by `Fsm::apply` before a transaction starts.
            Command::Once { .. } | Command::PruneRequests { .. } => Err(fs_err(
                ErrorKind::InvalidArgument,
                "request-id commands are not nested",
            )),
            Command::Batch { cmds } => {
                let mut reply = Reply::Empty;
                for c in cmds {
                    if matches!(c, Command::Batch { .. }) {
                        return Err(fs_err(ErrorKind::InvalidArgument, "nested batch"));
                    }
                    // Later commands see the earlier ones' changes (one transaction).
                    reply = self.run(c)?;
                }
                Ok(reply)
            }
            Command::SetDraining { server, draining } => {
                let Some(v) = self.server_raw(server_id_key(*server))? else {
                    return Err(fs_err(
                        ErrorKind::NotFound,
                        format!("chunk server {server} is not registered"),
                    ));
                };
                let mut rec: ServerRecord = decode_json(&v)?;
                rec.draining = *draining;
                self.servers
                    .insert(server_id_key(*server), Some(encode_json(&rec)));
                Ok(Reply::Empty)
            }
        }
    }

    /// `InvalidArgument` unless `server` is a registered chunk server.
    fn require_registered(&mut self, server: u64) -> Result<(), FsError> {
        if self.server_raw(server_id_key(server))?.is_none() {
            return Err(fs_err(
                ErrorKind::InvalidArgument,
                format!("chunk server {server} is not registered"),
            ));
        }
        Ok(())
    }

    /// Lists `server` as holding `id` (repair stored a verified copy there). A chunk that no
    /// longer exists is `NotFound`: the copy is then garbage on that server.
    fn add_replica(&mut self, id: &ChunkId, server: u64) -> CommandResult {
        self.require_registered(server)?;
        let Some(mut rec) = self.chunk(id)? else {
            return Err(fs_err(ErrorKind::NotFound, format!("unknown chunk {id}")));
        };
        if let Err(pos) = rec.replicas.binary_search(&server) {
            rec.replicas.insert(pos, server);
            self.chunks.insert(*id, Some(rec));
        }
        self.repair_done.push(*id);
        Ok(Reply::Empty)
    }

    /// Stops listing `server`'s surplus copy of `id`. Never removes the last listed replica.
    fn remove_replica(&mut self, id: &ChunkId, server: u64) -> CommandResult {
        let Some(mut rec) = self.chunk(id)? else {
            return Err(fs_err(ErrorKind::NotFound, format!("unknown chunk {id}")));
        };
        let Ok(pos) = rec.replicas.binary_search(&server) else {
            return Ok(Reply::Empty);
        };
        if rec.replicas.len() == 1 {
            return Err(fs_err(
                ErrorKind::Conflict,
                format!("server {server} holds the only listed replica of chunk {id}"),
            ));
        }
        rec.replicas.remove(pos);
        self.chunks.insert(*id, Some(rec));
        Ok(Reply::Empty)
    }

    /// Stops listing `server` as a replica of `id` (its copy is corrupt). Idempotent: a server
    /// that is not (or no longer) listed changes nothing. Never removes the chunk record nor
    /// touches its reference count: files still reference the chunk, and the other replicas
    /// (or repair) still serve it.
    fn drop_replica(&mut self, id: &ChunkId, server: u64, now: Time) -> CommandResult {
        self.require_registered(server)?;
        let Some(mut rec) = self.chunk(id)? else {
            return Err(fs_err(ErrorKind::NotFound, format!("unknown chunk {id}")));
        };
        let Some(pos) = rec.replicas.iter().position(|&r| r == server) else {
            return Ok(Reply::Empty);
        };
        rec.replicas.remove(pos);
        if rec.replicas.is_empty() {
            tracing::error!(chunk = %id, server, "chunk lost its last listed replica");
        }
        self.chunks.insert(*id, Some(rec));
        // Hook for repair: the chunk is now below its replication factor.
        self.repair.insert(*id, now);
        Ok(Reply::Empty)
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        kind: Kind,
        a: NewAttrs,
        target: &[u8],
        exclusive: bool,
        now: Time,
    ) -> CommandResult {
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
                return Ok(Reply::Attr(self.must_inode(d.ino)?));
            }
            return Err(fs_err(
                ErrorKind::AlreadyExists,
                format!("{:?} exists", String::from_utf8_lossy(name)),
            ));
        }
        if kind == Kind::Directory && dir.nlink >= LINK_MAX {
            return Err(fs_err(
                ErrorKind::TooManyLinks,
                format!("directory {parent} is full"),
            ));
        }
        let ino = self.counter(NEXT_INO)?.max(ROOT_INO + 1);
        self.set_counter(NEXT_INO, ino + 1);
        let count = self.counter(INODE_COUNT)?;
        self.set_counter(INODE_COUNT, count + 1);
        let is_dir = kind == Kind::Directory;
        let inode = Inode {
            ino,
            kind,
            mode: a.mode & 0o7777,
            uid: a.uid,
            gid: a.gid,
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
            rdev: a.rdev,
            symlink: target.to_vec(),
            parent: if is_dir { parent } else { 0 },
            slots: BTreeMap::new(),
        };
        self.put_inode(inode.clone());
        self.put_dentry(parent, name, Dentry { ino, kind });
        self.touch_dir(parent, now, if is_dir { 1 } else { 0 })?;
        Ok(Reply::Attr(inode))
    }

    fn link(&mut self, ino: u64, new_parent: u64, new_name: &[u8], now: Time) -> CommandResult {
        validate_name(new_name)?;
        let mut i = self.must_inode(ino)?;
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
        self.must_dir(new_parent)?;
        if self.dentry(new_parent, new_name)?.is_some() {
            return Err(fs_err(
                ErrorKind::AlreadyExists,
                format!("{:?} exists", String::from_utf8_lossy(new_name)),
            ));
        }
        if i.nlink >= LINK_MAX {
            return Err(fs_err(
                ErrorKind::TooManyLinks,
                format!("inode {ino} has too many links"),
            ));
        }
        i.nlink += 1;
        i.ctime = now;
        self.put_inode(i.clone());
        self.put_dentry(new_parent, new_name, Dentry { ino, kind: i.kind });
        self.touch_dir(new_parent, now, 0)?;
        Ok(Reply::Attr(i))
    }

    fn unlink(
        &mut self,
        parent: u64,
        name: &[u8],
        rmdir: bool,
        now: Time,
        keep: &Keep,
    ) -> CommandResult {
        validate_name(name)?;
        self.must_dir(parent)?;
        let d = self.dentry(parent, name)?.ok_or_else(|| {
            fs_err(
                ErrorKind::NotFound,
                format!("{:?} not found in {parent}", String::from_utf8_lossy(name)),
            )
        })?;
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
        let orphan = self.drop_link(child, now, keep)?;
        Ok(if rmdir {
            Reply::Empty
        } else {
            Reply::Unlinked { orphan }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
        now: Time,
        keep: &Keep,
    ) -> CommandResult {
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
        self.must_dir(parent)?;
        self.must_dir(new_parent)?;
        let src = self.dentry(parent, name)?.ok_or_else(|| {
            fs_err(
                ErrorKind::NotFound,
                format!("{:?} not found in {parent}", String::from_utf8_lossy(name)),
            )
        })?;
        let dst = self.dentry(new_parent, new_name)?;
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
        let src_is_dir = src.kind == Kind::Directory;

        if flags & RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or_else(|| {
                fs_err(
                    ErrorKind::NotFound,
                    format!(
                        "{:?} not found in {new_parent}",
                        String::from_utf8_lossy(new_name)
                    ),
                )
            })?;
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
            let mut s = self.must_inode(src.ino)?;
            if s.is_dir() {
                s.parent = new_parent;
            }
            s.ctime = now;
            self.put_inode(s);
            let mut t = self.must_inode(dst.ino)?;
            if t.is_dir() {
                t.parent = parent;
            }
            t.ctime = now;
            self.put_inode(t);
            self.touch_dir(parent, now, d_old)?;
            if parent != new_parent {
                self.touch_dir(new_parent, now, d_new)?;
            }
            return Ok(Reply::Empty);
        }

        if let Some(dst) = dst {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(fs_err(
                    ErrorKind::AlreadyExists,
                    format!("{:?} exists", String::from_utf8_lossy(new_name)),
                ));
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
                    if !self.dir_is_empty(dst.ino)? {
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
            self.refuse_subtree(src.ino, new_parent)?;
        }

        // Replace the target, if any.
        let mut d_new = 0i32;
        let mut orphan = 0;
        if let Some(dst) = dst {
            let victim = self.must_inode(dst.ino)?;
            if victim.is_dir() {
                // The replaced directory's ".." no longer counts toward new_parent.
                d_new -= 1;
            }
            orphan = self.drop_link(victim, now, keep)?;
        }
        self.del_dentry(parent, name);
        self.put_dentry(new_parent, new_name, src);
        let mut s = self.must_inode(src.ino)?;
        s.ctime = now;
        let mut d_old = 0i32;
        if s.is_dir() {
            s.parent = new_parent;
            if parent != new_parent {
                d_old -= 1;
                d_new += 1;
            }
        }
        self.put_inode(s);
        if parent == new_parent {
            self.touch_dir(parent, now, d_old + d_new)?;
        } else {
            self.touch_dir(parent, now, d_old)?;
            self.touch_dir(new_parent, now, d_new)?;
        }
        Ok(Reply::Unlinked { orphan })
    }

    fn commit_write(
        &mut self,
        ino: u64,
        base_version: u64,
        size: u64,
        updates: &[SlotUpdate],
        mtime: Option<Time>,
        now: Time,
    ) -> CommandResult {
        let mut i = self.must_inode(ino)?;
        match i.kind {
            Kind::Regular => {}
            Kind::Directory => {
                return Err(fs_err(ErrorKind::IsDir, format!("{ino} is a directory")))
            }
            k => {
                return Err(fs_err(
                    ErrorKind::InvalidArgument,
                    format!("cannot write to {k:?} {ino}"),
                ))
            }
        }
        if i.version != base_version {
            return Err(fs_err(
                ErrorKind::Conflict,
                format!(
                    "inode {ino} is at version {}, not {base_version}",
                    i.version
                ),
            ));
        }
        for u in updates {
            if let Some(c) = &u.chunk {
                check_slot_chunk(u.index, c)?;
                if u.index.checked_mul(CHUNK).is_none_or(|start| start >= size) {
                    return Err(fs_err(
                        ErrorKind::InvalidArgument,
                        format!("slot {} lies past the new size {size}", u.index),
                    ));
                }
                self.incref(c, &u.replicas, u.ticket)?;
            }
            let old = match u.chunk {
                Some(c) => i.slots.insert(u.index, c),
                None => i.slots.remove(&u.index),
            };
            if let Some(old) = old {
                self.decref(&old.id, now)?;
            }
        }
        self.truncate_slots(&mut i, size, now)?;
        i.size = size;
        i.version += 1;
        i.mtime = mtime.unwrap_or(now);
        i.ctime = now;
        self.put_inode(i.clone());
        Ok(Reply::Attr(i))
    }
}

/// `InvalidArgument` unless chunk `c` fits slot `index` (`len` within the stored bytes, the stored
/// bytes within a chunk).
fn check_slot_chunk(index: u64, c: &SlotChunk) -> Result<(), FsError> {
    if c.len > c.stored_len || c.stored_len as usize > CHUNK_SIZE {
        return Err(fs_err(
            ErrorKind::InvalidArgument,
            format!(
                "slot {index}: len {} / stored_len {} out of range",
                c.len, c.stored_len
            ),
        ));
    }
    Ok(())
}

/// The caller-chosen attributes of a new inode.
#[derive(Clone, Copy)]
struct NewAttrs {
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
}
