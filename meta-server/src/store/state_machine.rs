//! The replicated state machine (openraft storage v2 [`RaftStateMachine`]) over [`Fsm`].
//!
//! Every log entry is applied as ONE RocksDB write batch holding the namespace changes that
//! [`Fsm::apply`] computed plus the new `last_applied` (and, for membership entries, the new
//! membership) in `sm_meta`. The batch is written WITHOUT sync: the log entry was synced before it
//! was applied, so after a crash openraft re-applies whatever the state machine lost; and the log
//! store syncs the shared WAL before it purges entries (see [`super::log`]). The same batch
//! carries the digest of the applied state ([`super::digest`]).
//!
//! FATAL ERRORS. A command the state machine refuses (ENOENT, EEXIST, a conflict, …) is a
//! result: the same on every replica, it changes nothing and the entry counts as applied. A
//! failure of this node's own storage while applying — RocksDB failing a read or the write, a
//! stored value that does not decode — is not: the entry is NOT applied, `apply` returns a
//! `StorageError`, openraft stops this node's Raft core, and the process exits with an error
//! (see `crate::start_with_listener`). Skipping the entry instead would let this replica's
//! state differ from the others' (and a leader with a wrong view would act on it, e.g. collect
//! chunks that are still referenced). After a restart the node replays the entry from its log.
//!
//! Snapshots (their format and files, building, receiving and installing one in pieces) are in
//! [`super::snapshot`].
use super::digest::Digests;
use super::snapshot::{SnapshotFile, Snapshots};
use super::{cf, CF_SM_META, KEY_LAST_APPLIED, KEY_MEMBERSHIP};
use crate::command::Reply;
use crate::fsm::Fsm;
use crate::raft::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StorageIOError,
};
use rocksdb::{WriteBatch, DB};
use std::path::PathBuf;
use std::sync::Arc;

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
    snapshots: Arc<Snapshots>,
    digests: Arc<Digests>,
    /// TEST HOOK (`--test-fail-apply-at`): applying the entry at this index fails as a storage
    /// error would.
    fail_apply_at: Option<u64>,
}

/// Builds snapshots; created by openraft through [`RaftStateMachine::get_snapshot_builder`].
pub struct SnapshotBuilder {
    snapshots: Arc<Snapshots>,
}

impl StateMachineStore {
    /// `snapshot_dir` holds the snapshot files; it is created if missing, and a snapshot
    /// install that a crash interrupted is finished here, before openraft reads any state.
    /// `digests` is kept up to date with every applied entry (and reloaded after a snapshot
    /// install, including one finished here).
    pub fn new(
        db: Arc<DB>,
        fsm: Arc<Fsm>,
        snapshot_dir: PathBuf,
        digests: Arc<Digests>,
    ) -> Result<Self, crate::error::MetaError> {
        let snapshots = Snapshots::open(db.clone(), snapshot_dir)
            .map_err(|e| crate::error::MetaError::Storage(format!("snapshot store: {e}")))?;
        // Opening may have finished an install a crash interrupted: its state has its own digest.
        digests
            .reload(&db)
            .map_err(|e| crate::error::MetaError::Storage(format!("read the state digest: {e}")))?;
        Ok(StateMachineStore {
            db,
            fsm,
            snapshots: Arc::new(snapshots),
            digests,
            fail_apply_at: None,
        })
    }

    /// TEST HOOK: make applying the entry at `index` fail like a storage error.
    pub fn fail_apply_at(mut self, index: Option<u64>) -> Self {
        self.fail_apply_at = index;
        self
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

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let snapshots = self.snapshots.clone();
        let (meta, file) = tokio::task::spawn_blocking(move || snapshots.build())
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        tracing::info!(snapshot = %meta, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
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
            let apply_err = |e: String| {
                tracing::error!(index = log_id.index, error = %e, "storage failure while applying a log entry; this node stops");
                StorageError::IO {
                    source: StorageIOError::new(
                        ErrorSubject::Apply(log_id),
                        ErrorVerb::Write,
                        AnyError::error(e),
                    ),
                }
            };
            if self.fail_apply_at == Some(log_id.index) {
                return Err(apply_err(
                    "injected storage failure (test hook --test-fail-apply-at)".into(),
                ));
            }
            let mut batch = WriteBatch::default();
            let mut effects = blake3::Hasher::new();
            let reply = match entry.payload {
                EntryPayload::Blank => Ok(Reply::Empty),
                EntryPayload::Normal(cmd) => {
                    match self.fsm.apply(&cmd, log_id.index, &mut batch, &mut effects) {
                        // FATAL: see the module docs. The entry is not applied.
                        Err(e) if e.is_storage_failure() => return Err(apply_err(e.to_string())),
                        res => res,
                    }
                }
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(log_id), m);
                    let bytes =
                        serde_json::to_vec(&stored).map_err(|e| apply_err(e.to_string()))?;
                    batch.put_cf(meta_cf, KEY_MEMBERSHIP, bytes);
                    Ok(Reply::Empty)
                }
            };
            let digest = self
                .digests
                .next(&self.db, &mut batch, log_id.index, &effects.finalize())
                .map_err(apply_err)?;
            let applied = serde_json::to_vec(&log_id).map_err(|e| apply_err(e.to_string()))?;
            batch.put_cf(meta_cf, KEY_LAST_APPLIED, applied);
            // Not synced on purpose: see the module docs. The next entry reads this state.
            self.db.write(batch).map_err(|e| apply_err(e.to_string()))?;
            self.digests.applied(log_id.index, digest);
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let file = self
            .snapshots
            .incoming()
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        self.snapshots
            .install(meta, *snapshot)
            .await
            // The snapshot carries the digest of its state; the chain goes on from there.
            .and_then(|()| self.digests.reload(&self.db))
            .map_err(|e| StorageError::IO {
                source: StorageIOError::new(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Write,
                    AnyError::error(e),
                ),
            })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let snapshots = self.snapshots.clone();
        let loaded = tokio::task::spawn_blocking(move || snapshots.current())
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(loaded.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
