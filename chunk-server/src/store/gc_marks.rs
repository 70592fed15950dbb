//! Garbage-collection marks: which chunks the meta leader said it is about to delete, and when.
//!
//! Collection is two steps ([`super::ChunkStore::mark_for_gc`], then
//! [`super::ChunkStore::delete_if_marked`]); a put of a marked id clears its mark in between, so
//! a copy stored again after the leader decided to collect it survives. The marks live in memory
//! only: after a restart nothing is marked, and a marked delete deletes nothing (the leader's
//! next round marks again). [`super::FileStore`] sets, clears and takes a mark under the id's
//! stripe lock, so a put and a marked delete of one id never interleave.
use cairn_common::ChunkId;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A garbage-collection mark older than this is ignored (and dropped): the meta leader that set
/// it has long given up on that round.
pub const GC_MARK_TTL: Duration = Duration::from_secs(600);

/// Marks: id -> when marked. A std mutex: it is only held for a map operation, never across an
/// `.await`.
#[derive(Default)]
pub(super) struct GcMarks(Mutex<HashMap<ChunkId, Instant>>);

impl GcMarks {
    fn lock(&self) -> MutexGuard<'_, HashMap<ChunkId, Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the marks older than [`GC_MARK_TTL`].
    pub(super) fn expire(&self) {
        self.lock().retain(|_, at| at.elapsed() < GC_MARK_TTL);
    }

    /// Marks `id` now.
    pub(super) fn mark(&self, id: ChunkId) {
        self.lock().insert(id, Instant::now());
    }

    /// Clears the mark of `id` (a put stored it again).
    pub(super) fn clear(&self, id: ChunkId) {
        self.lock().remove(&id);
    }

    /// Takes the mark of `id`: true if it was marked less than [`GC_MARK_TTL`] ago. A mark is
    /// used once.
    pub(super) fn take_fresh(&self, id: ChunkId) -> bool {
        self.lock()
            .remove(&id)
            .is_some_and(|at| at.elapsed() < GC_MARK_TTL)
    }
}
