//! The namespace state machine: inodes, dentries, chunk records and chunk servers, on RocksDB.
//!
//! STUB — to be implemented. Signatures used by the Raft layer (`store::state_machine`) are
//! fixed: `STATE_CFS`, `Fsm::open`, `Fsm::apply`.
use crate::command::{Command, CommandResult};
use crate::error::MetaError;
use rocksdb::{WriteBatch, DB};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Column families holding the replicated state. A snapshot is exactly their contents.
pub const STATE_CFS: &[&str] = &["inodes", "dentries", "chunks", "servers", "counters", "gc"];

/// One inode at its current version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Inode {
    pub ino: u64,
}

pub struct Fsm {
    db: Arc<DB>,
}

impl Fsm {
    /// Wraps the state column families of `db` (which must already exist).
    pub fn open(db: Arc<DB>) -> Result<Fsm, MetaError> {
        Ok(Fsm { db })
    }

    /// Applies one command: reads the current state from the DB, puts every change into
    /// `batch` (written atomically by the caller together with `last_applied`).
    pub fn apply(&self, cmd: &Command, batch: &mut WriteBatch) -> CommandResult {
        let _ = (&self.db, cmd, batch);
        todo!("fsm apply")
    }
}
