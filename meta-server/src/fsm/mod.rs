//! The namespace state machine on RocksDB: what every replica computes from the Raft log.
//!
//! [`Fsm::apply`] is the only writer: it runs one [`Command`] in a transaction ([`tx::Tx`]) and
//! puts the changes into the caller's write batch. Each command applies itself in the module of
//! its area; each area also owns its records, its keys and its reads (the service calls
//! `MetaNode::linearizable_read` before reading):
//!
//! - [`schema`]: the column families, key and value encodings, counters;
//! - [`tx`]: the per-command overlay over the database;
//! - [`inodes`]: inode records and attributes (`SetAttr`), inode deletion;
//! - [`namespace`]: directory entries (`Create`, `Link`, `Unlink`, `Rmdir`, `Rename`), lookups
//!   and listings;
//! - [`content`]: file versions and slots, one row per slot (`CommitWrite`, truncation, pages
//!   of a file's slots);
//! - [`chunks`]: chunk records and reference counting;
//! - [`inline`]: small files' chunks kept in the metadata (`CommitInline`);
//! - [`gc`]: garbage-collection epochs and tombstones (`GcBegin`, `GcSwept`, `GcPrune`,
//!   `GcOrphans`);
//! - [`servers`]: chunk servers and the replicas they hold (`RegisterChunkServer`,
//!   `SetDraining`, `SuspectReplica`, `AddReplica`, `RemoveReplica`, `DropReplica`);
//! - [`xattrs`], [`locks`], [`sessions`] (mount sessions and their orphans), [`uploads`]
//!   (upload sessions);
//! - [`requests`]: exactly-once request ids (`Once`, `PruneRequests`).
//!
//! Determinism: `apply` depends only on the DB state and the command (the leader stamps `now`
//! into it), so every replica computes the same state.
mod chunks;
mod content;
mod gc;
mod inline;
mod inodes;
mod locks;
mod namespace;
mod requests;
pub mod schema;
mod servers;
mod sessions;
mod tx;
mod uploads;
mod xattrs;

pub use chunks::ChunkRecord;
pub use content::{SlotLocation, SlotPage, MAX_FILE_SIZE};
pub use gc::{Gone, Queued};
pub use inline::check_inline_chunk;
pub use inodes::Inode;
pub use locks::{HeldLock, LOCKS_PER_INODE_MAX};
pub use namespace::{DirPage, LINK_MAX, SYMLINK_MAX};
pub use schema::STATE_CFS;
pub use servers::ServerRecord;
pub use sessions::SessionRecord;
pub use uploads::{UploadHeader, UploadPage, UploadSummary, LABEL_MAX};
pub use xattrs::{check_xattr_name, XATTR_NAME_MAX, XATTR_SIZE_MAX, XATTR_TOTAL_MAX};

use crate::command::{Batch, Command, CommandResult, FsError, Group, Reply};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use rocksdb::{ColumnFamily, Direction, IteratorMode, WriteBatch, DB};
use schema::{decode_u64, fs_err, storage, Counter};
use std::collections::BTreeMap;
use std::sync::Arc;
use tx::Tx;

/// A key and its value as RocksDB returns them.
type RawEntry = (Box<[u8]>, Box<[u8]>);

pub struct Fsm {
    db: Arc<DB>,
}

impl Fsm {
    /// Wraps the state column families of `db` (which must already exist), creates the root
    /// directory if it is absent (the same root on every replica) and brings a state of an
    /// older layout to the current one (see [`schema::LAYOUT`]).
    pub fn open(db: Arc<DB>) -> Result<Fsm, MetaError> {
        for cf in STATE_CFS {
            if db.cf_handle(cf).is_none() {
                return Err(MetaError::Storage(format!(
                    "column family {cf:?} is missing"
                )));
            }
        }
        let fsm = Fsm { db };
        let mut batch = WriteBatch::default();
        if fsm.init_root(&mut batch)? {
            fsm.db.write(batch)?;
            tracing::info!("created the root directory");
        } else if fsm.read_counter(Counter::Layout)? < schema::LAYOUT {
            let moved = fsm.migrate_slots(&mut batch)?;
            fsm.db.write(batch)?;
            tracing::info!(
                inodes = moved,
                layout = schema::LAYOUT,
                "moved file slots out of the inode records"
            );
        }
        Ok(fsm)
    }

    /// Applies one command, the log entry at `index`: reads the current state from the DB,
    /// puts every change into `batch` (written atomically by the caller together with
    /// `last_applied`) and hashes them into `effects` (the state digest, `store::digest`). On
    /// error nothing is put into `batch` or `effects`.
    ///
    /// An error is either the command's own refusal (a result, the same on every replica) or a
    /// failure of this node's storage ([`FsError::is_storage_failure`]): then the entry was not
    /// applied and the caller must stop the node rather than go on with a state that may differ
    /// from its peers'.
    pub fn apply(
        &self,
        cmd: &Command,
        index: u64,
        batch: &mut WriteBatch,
        effects: &mut blake3::Hasher,
    ) -> CommandResult {
        let mut tx = Tx::new(self, index);
        let reply = cmd.apply(&mut tx)?;
        tx.flush(batch, effects)?;
        Ok(reply)
    }

    // --- raw access, shared by the areas' reads ------------------------------------------------

    pub(crate) fn cf(&self, name: &str) -> Result<&ColumnFamily, FsError> {
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

    /// The entries of `cf` from `start` on, in key order, while their key starts with `prefix`.
    fn iter_prefix<'a>(
        &'a self,
        cf: &str,
        prefix: &'a [u8],
        start: &[u8],
    ) -> Result<impl Iterator<Item = Result<RawEntry, FsError>> + 'a, FsError> {
        let mode = IteratorMode::From(start, Direction::Forward);
        Ok(self
            .db
            .iterator_cf(self.cf(cf)?, mode)
            .map(|item| item.map_err(storage))
            .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(prefix))))
    }

    /// The entries of `cf` whose key starts with `prefix`.
    fn scan(&self, cf: &str, prefix: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, FsError> {
        let mut out = BTreeMap::new();
        for item in self.iter_prefix(cf, prefix, prefix)? {
            let (k, v) = item?;
            out.insert(k.to_vec(), v.to_vec());
        }
        Ok(out)
    }

    /// Up to `n` keys of `cf` starting with `prefix`.
    fn first_keys(&self, cf: &str, prefix: &[u8], n: usize) -> Result<Vec<Vec<u8>>, FsError> {
        self.iter_prefix(cf, prefix, prefix)?
            .take(n)
            .map(|item| item.map(|(k, _)| k.to_vec()))
            .collect()
    }

    /// Counter `c` (0 until first set).
    fn read_counter(&self, c: Counter) -> Result<u64, FsError> {
        Ok(self
            .raw_get(schema::CF_COUNTERS, c.key().as_bytes())?
            .map(|v| decode_u64(&v))
            .transpose()?
            .unwrap_or(0))
    }
}

impl Command {
    /// Applies this command to `tx`: each command is applied by the module of its area.
    fn apply(&self, tx: &mut Tx) -> CommandResult {
        match self {
            Command::Create(c) => c.apply(tx),
            Command::Link(c) => c.apply(tx),
            Command::Unlink(c) => c.apply(tx),
            Command::Rmdir(c) => c.apply(tx),
            Command::Rename(c) => c.apply(tx),
            Command::SetAttr(c) => c.apply(tx),
            Command::CommitWrite(c) => c.apply(tx),
            Command::RegisterChunkServer(c) => c.apply(tx),
            Command::DropReplica(c) => c.apply(tx),
            Command::AddReplica(c) => c.apply(tx),
            Command::SuspectReplica(c) => c.apply(tx),
            Command::RemoveReplica(c) => c.apply(tx),
            Command::SetDraining(c) => c.apply(tx),
            Command::GcBegin(c) => c.apply(tx),
            Command::GcSwept(c) => c.apply(tx),
            Command::GcPrune(c) => c.apply(tx),
            Command::GcOrphans(c) => c.apply(tx),
            Command::Once(c) => c.apply(tx),
            Command::PruneRequests(c) => c.apply(tx),
            Command::Batch(c) => c.apply(tx),
            Command::SetXattr(c) => c.apply(tx),
            Command::RemoveXattr(c) => c.apply(tx),
            Command::OpenSession(c) => c.apply(tx),
            Command::RenewSession(c) => c.apply(tx),
            Command::CloseSession(c) => c.apply(tx),
            Command::ReleaseOrphan(c) => c.apply(tx),
            Command::SetLock(c) => c.apply(tx),
            Command::ReleaseLocks(c) => c.apply(tx),
            Command::OpenUpload(c) => c.apply(tx),
            Command::RecordUpload(c) => c.apply(tx),
            Command::AbortUpload(c) => c.apply(tx),
            Command::CommitUpload(c) => c.apply(tx),
            Command::Group(c) => c.apply(tx),
            Command::CommitInline(c) => c.apply(tx),
        }
    }

    /// Whether this command manages request ids itself (or holds commands that do) and so
    /// cannot be nested in another.
    fn is_request_bookkeeping(&self) -> bool {
        matches!(
            self,
            Command::Once(_) | Command::PruneRequests(_) | Command::Group(_)
        )
    }
}

impl Group {
    /// Applies the commands in order, each on its own: a refusal undoes that command's changes
    /// only (back to the savepoint taken before it) and becomes its result; the others go on.
    /// A failure of this node's storage is not a result: it fails the whole entry (the node
    /// stops, see `store::state_machine`).
    fn apply(&self, tx: &mut Tx) -> CommandResult {
        let mut results = Vec::with_capacity(self.cmds.len());
        for c in &self.cmds {
            if matches!(c, Command::Group(_)) {
                return Err(fs_err(ErrorKind::InvalidArgument, "nested group"));
            }
            let before = tx.savepoint();
            match c.apply(tx) {
                Ok(reply) => results.push(Ok(reply)),
                Err(e) if e.is_storage_failure() => return Err(e),
                Err(e) => {
                    tx.rollback(before);
                    results.push(Err(e));
                }
            }
        }
        Ok(Reply::Group(results))
    }
}

impl Batch {
    /// Applies the commands in order, in this one transaction: later ones see the earlier
    /// ones' changes, and a refusal anywhere refuses the whole batch.
    fn apply(&self, tx: &mut Tx) -> CommandResult {
        let mut reply = Reply::Empty;
        for c in &self.cmds {
            if matches!(c, Command::Batch(_)) {
                return Err(fs_err(ErrorKind::InvalidArgument, "nested batch"));
            }
            if c.is_request_bookkeeping() {
                return Err(fs_err(
                    ErrorKind::InvalidArgument,
                    "request-id commands are not nested",
                ));
            }
            reply = c.apply(tx)?;
        }
        Ok(reply)
    }
}
