//! Garbage-collection state: the GC epoch, chunks under collection and tombstones of collected
//! ones (`GcBegin`, `GcSwept`, `GcPrune`, `GcOrphans`), and the collector's reads. The protocol
//! itself (mark, begin, marked delete, swept) and why it never deletes a referenced chunk are in
//! `crate::gc`.
use super::chunks::ChunkRecord;
use super::schema::{corrupt, decode_json, fs_err, Counter, CF_GC, CF_GONE};
use super::tx::Tx;
use super::Fsm;
use crate::command::{CommandResult, FsError, GcBegin, GcOrphans, GcPrune, GcSwept, Reply, Time};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use cairn_common::ChunkId;
use serde::{Deserialize, Serialize};

/// A collected chunk, remembered so that a commit of an upload older than its collection is
/// refused (the upload's copies may have been deleted).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone {
    pub epoch: u64,
    pub at: Time,
}

/// A chunk's entry in the GC queue: since when it is unreferenced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queued {
    /// The wall time it became unreferenced, as the leader stamped it: shown, not compared
    /// (except for entries queued before `index` was kept, which have nothing else).
    #[serde(flatten)]
    pub at: Time,
    /// The log index of the entry that unreferenced it: the grace is counted from here on the
    /// log clock (see `crate::log_clock`). 0 in entries queued before it was kept.
    #[serde(default)]
    pub index: u64,
}

impl Queued {
    /// Whether the grace is over, given the last index the log clock applied a grace ago
    /// (`None`: this node has not run that long) and the wall time a grace ago (for old entries).
    fn past_grace(&self, through: Option<u64>, before: Time) -> bool {
        match (self.index, through) {
            (_, None) => false,
            (0, Some(_)) => self.at < before,
            (index, Some(through)) => index <= through,
        }
    }
}

impl Fsm {
    /// The current GC epoch: the ticket PrepareWrite hands out.
    pub fn gc_epoch(&self) -> Result<u64, MetaError> {
        Ok(self.read_counter(Counter::GcEpoch)?)
    }

    /// Up to `limit` chunks whose grace is over (they became unreferenced by an entry at or
    /// below `through`, the index the log clock applied a grace ago; older entries: before the
    /// wall time `before`) or that are being collected, with their records: the GC worker's
    /// work list.
    pub fn gc_candidates(
        &self,
        through: Option<u64>,
        before: Time,
        limit: usize,
    ) -> Result<Vec<(ChunkId, ChunkRecord)>, MetaError> {
        let mut out = Vec::new();
        for item in self.iter_prefix(CF_GC, &[], &[])? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let id = ChunkId::from_bytes(&k).map_err(corrupt)?;
            let queued: Queued = decode_json(&v)?;
            let Some(rec) = self.chunk(&id)? else {
                continue;
            };
            if rec.refs == 0 && (rec.collecting.is_some() || queued.past_grace(through, before)) {
                out.push((id, rec));
            }
        }
        Ok(out)
    }

    /// Chunks queued in `gc` (unreferenced, waiting or being collected).
    pub fn gc_pending(&self) -> Result<u64, MetaError> {
        let mut n = 0;
        for item in self.iter_prefix(CF_GC, &[], &[])? {
            item?;
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
        self.time_queue(CF_GC)
    }

    /// The chunk ids of `cf` with the time stored for each.
    pub(super) fn time_queue(&self, cf: &str) -> Result<Vec<(ChunkId, Time)>, MetaError> {
        let mut out = Vec::new();
        for item in self.iter_prefix(cf, &[], &[])? {
            let (k, v) = item?;
            let id = ChunkId::from_bytes(&k).map_err(corrupt)?;
            out.push((id, decode_json(&v)?));
        }
        Ok(out)
    }
}

impl GcBegin {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let epoch = tx.counter(Counter::GcEpoch)? + 1;
        let mut accepted = Vec::new();
        for id in &self.ids {
            let Some(mut r) = tx.chunk(id)? else {
                continue;
            };
            if r.refs > 0 {
                continue;
            }
            r.collecting = Some(epoch);
            tx.set_chunk(*id, Some(r));
            accepted.push(*id);
        }
        Ok(tx.open_gc_epoch(epoch, accepted))
    }
}

impl GcSwept {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let id = self.id;
        let Some(mut r) = tx.chunk(&id)? else {
            return Ok(Reply::Empty);
        };
        let Some(epoch) = r.collecting else {
            // Revived by a commit meanwhile: nothing to do.
            return Ok(Reply::Empty);
        };
        for s in &self.servers {
            r.unlist(*s);
        }
        if r.replicas.is_empty() {
            tx.set_chunk(id, None);
            tx.set_gc(id, None);
            tx.set_repair(id, None);
            tx.set_gone(
                id,
                Some(Gone {
                    epoch,
                    at: self.now,
                }),
            );
        } else {
            tx.set_chunk(id, Some(r));
        }
        Ok(Reply::Empty)
    }
}

impl GcOrphans {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let epoch = tx.counter(Counter::GcEpoch)? + 1;
        let mut accepted = Vec::new();
        for id in &self.ids {
            if tx.chunk(id)?.is_some() {
                continue;
            }
            tx.set_gone(
                *id,
                Some(Gone {
                    epoch,
                    at: self.now,
                }),
            );
            accepted.push(*id);
        }
        Ok(tx.open_gc_epoch(epoch, accepted))
    }
}

impl GcPrune {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let mut floor = tx.counter(Counter::GcFloor)?;
        let mut old = Vec::new();
        for item in tx.fsm().iter_prefix(CF_GONE, &[], &[])? {
            let (k, v) = item?;
            let g: Gone = decode_json(&v)?;
            if g.at < self.before {
                old.push((ChunkId::from_bytes(&k).map_err(corrupt)?, g.epoch));
            }
        }
        // A tombstone of epoch e refused tickets below e; the floor keeps refusing them.
        for (id, epoch) in old {
            tx.set_gone(id, None);
            floor = floor.max(epoch);
        }
        tx.set_counter(Counter::GcFloor, floor);
        Ok(Reply::Empty)
    }
}

impl Tx<'_> {
    /// Makes `epoch` (the current one plus one) current if any chunk entered collection in it.
    fn open_gc_epoch(&mut self, epoch: u64, accepted: Vec<ChunkId>) -> Reply {
        if !accepted.is_empty() {
            self.set_counter(Counter::GcEpoch, epoch);
        }
        Reply::GcBegun {
            epoch,
            ids: accepted,
        }
    }

    /// GC SAFETY for a chunk the state machine has no record of: an upload placed with
    /// `ticket` may reference it only if no collection of it (a tombstone), and no pruned
    /// collection (the floor), began in a later epoch. Clears an outdated tombstone.
    pub(super) fn check_ticket_of_unknown(
        &mut self,
        id: &ChunkId,
        ticket: u64,
    ) -> Result<(), FsError> {
        if let Some(g) = self.gone(id)? {
            if ticket < g.epoch {
                return Err(fs_err(
                    ErrorKind::Conflict,
                    format!(
                        "chunk {id} was garbage-collected in epoch {}, after this upload's \
                         placement (ticket {ticket}); upload it again",
                        g.epoch
                    ),
                ));
            }
            self.set_gone(*id, None);
        }
        let floor = self.counter(Counter::GcFloor)?;
        if ticket < floor {
            return Err(fs_err(
                ErrorKind::Conflict,
                format!(
                    "upload of chunk {id} is too old (ticket {ticket}, oldest accepted \
                     {floor}); upload it again"
                ),
            ));
        }
        Ok(())
    }
}
