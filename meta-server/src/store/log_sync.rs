//! The log syncer: one thread that makes appended log entries durable in groups.
//!
//! [`super::LogStore::append`] writes entries to RocksDB **without** sync — readable at once,
//! as openraft requires of `append` — and hands the entries' completion callback here. This
//! thread takes every callback queued, syncs the WAL once (`flush_wal(true)`: everything written
//! before the call is on disk when it returns) and completes them all, in order. So:
//!
//! - one fsync serves every append that arrived while the previous one ran (group commit: many
//!   concurrent writers, one disk flush);
//! - openraft's core loop no longer waits for the leader's own fsync before it replicates: the
//!   leader's flush and the followers' (network, then their flush) overlap.
//!
//! DURABILITY: a callback is completed with `Ok` only by a WAL sync that began after its
//! entries were written, and openraft counts an entry as persisted (for the commit quorum, for
//! the leader's own vote in it, for a follower's reply) only through that callback. A failed
//! sync completes every waiting callback with the error: openraft treats it as a storage error
//! and stops the node; nothing is acknowledged.
use crate::raft::TypeConfig;
use openraft::storage::LogFlushed;
use rocksdb::DB;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Weak};

/// The sending side; the thread ends when every clone of it is gone.
#[derive(Clone)]
pub struct LogSyncer {
    tx: Sender<LogFlushed<TypeConfig>>,
}

impl LogSyncer {
    /// Starts the syncer thread of `db`.
    /// It holds the database weakly: a node that shut down closes its database at once.
    pub fn start(db: &Arc<DB>) -> std::io::Result<LogSyncer> {
        let (tx, rx) = channel();
        let db = Arc::downgrade(db);
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || run(&db, rx))?;
        Ok(LogSyncer { tx })
    }

    /// Completes `callback` once everything written to the database so far is synced.
    pub fn after_sync(&self, callback: LogFlushed<TypeConfig>) -> Result<(), String> {
        self.tx
            .send(callback)
            .map_err(|_| "the log syncer thread is gone".to_string())
    }
}

fn run(db: &Weak<DB>, rx: Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        // Everything queued now was written before this sync starts: one flush covers it all.
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let synced = match db.upgrade() {
            Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
            None => Err("the database is closed".to_string()),
        };
        match synced {
            Ok(()) => {
                for callback in group {
                    callback.log_io_completed(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "syncing the Raft log failed; this node stops");
                for callback in group {
                    callback.log_io_completed(Err(std::io::Error::other(format!(
                        "sync the Raft log: {e}"
                    ))));
                }
            }
        }
    }
}
