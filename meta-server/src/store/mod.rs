//! Raft storage on one RocksDB instance.
//!
//! The Raft log, the vote and the replicated state machine share one database (one WAL), each in
//! its own column families:
//!
//! - `raft_log`: log entries, keyed by big-endian index (see [`log`]);
//! - `raft_meta`: vote, committed log id, last purged log id (see [`log`]);
//! - `sm_meta`: last applied log id and last membership of the state machine (see
//!   [`state_machine`]; snapshots of the state and their file: [`snapshot`]);
//! - every name in [`crate::fsm::STATE_CFS`]: the namespace itself, owned by [`crate::fsm`].
//!
//! Sharing the WAL is what lets the state machine write without `fsync`: the log entry that
//! produced a change was synced before it was applied, and any later synced write (or an explicit
//! `flush_wal(true)` before purging) makes every earlier write durable too.
pub mod digest;
pub mod log;
pub mod snapshot;
pub mod state_machine;

use crate::error::MetaError;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};
use std::path::Path;
use std::sync::Arc;

pub use log::LogStore;
pub use state_machine::StateMachineStore;

/// Raft log entries, keyed by big-endian u64 index.
pub const CF_RAFT_LOG: &str = "raft_log";
/// Vote, committed and last purged log ids.
pub const CF_RAFT_META: &str = "raft_meta";
/// Last applied log id and last membership of the state machine.
pub const CF_SM_META: &str = "sm_meta";
/// `sm_meta` key of the last applied log id (written with every applied entry and by a
/// snapshot install).
const KEY_LAST_APPLIED: &[u8] = b"last_applied";
/// `sm_meta` key of the last membership.
const KEY_MEMBERSHIP: &[u8] = b"last_membership";

/// Opens (creating if missing) the node's database with every column family Raft and the state
/// machine need.
pub fn open_db(path: &Path) -> Result<Arc<DB>, MetaError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_RAFT_LOG, CF_RAFT_META, CF_SM_META]
        .iter()
        .chain(crate::fsm::STATE_CFS.iter())
        .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, path, cfs)?;
    Ok(Arc::new(db))
}

/// The column family `name`, which [`open_db`] created.
pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily, MetaError> {
    db.cf_handle(name)
        .ok_or_else(|| MetaError::Storage(format!("column family {name} is missing")))
}
