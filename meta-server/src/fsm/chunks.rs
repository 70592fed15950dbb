//! Chunk records and reference counting: which servers hold a chunk and how many file slots
//! (and upload sessions) reference it. A chunk whose count drops to zero is queued for garbage
//! collection; a reference to a chunk under collection is accepted only from an upload placed
//! after the collection began (the GC ticket, see `crate::gc`). Inline chunks (see `inline.rs`)
//! have records here too, with no replicas; they are deleted with their last reference.
use super::schema::{corrupt, decode_json, fs_err, CF_CHUNKS};
use super::tx::Tx;
use super::Fsm;
use crate::command::{FsError, SlotChunk, Time};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use cairn_common::ChunkId;
use serde::{Deserialize, Serialize};

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
    /// Listed replicas reported bad (`SuspectReplica`) and not yet re-verified by their server:
    /// a subset of `replicas`, sorted. Still listed (readers try them after the trusted ones),
    /// not counted healthy; repair's verification trusts (`AddReplica`) or drops
    /// (`DropReplica`) each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspect: Vec<u64>,
    /// Kept inline: the bytes are in the `inline` column family, replicated by Raft; never
    /// on chunk servers (`replicas` stays empty), never queued for GC.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inline: bool,
}

impl ChunkRecord {
    /// Referenced or revivable: not being garbage-collected.
    pub fn is_live(&self) -> bool {
        self.collecting.is_none()
    }

    /// Whether `server`'s listed copy is suspect.
    pub fn is_suspect(&self, server: u64) -> bool {
        self.suspect.binary_search(&server).is_ok()
    }

    /// The listed replicas that are not suspect.
    pub fn trusted(&self) -> Vec<u64> {
        self.replicas
            .iter()
            .copied()
            .filter(|s| !self.is_suspect(*s))
            .collect()
    }

    /// Stops listing `server` (trusted or suspect); false if it was not listed.
    pub fn unlist(&mut self, server: u64) -> bool {
        self.suspect.retain(|s| *s != server);
        match self.replicas.binary_search(&server) {
            Ok(pos) => {
                self.replicas.remove(pos);
                true
            }
            Err(_) => false,
        }
    }
}

/// `replicas` sorted, without duplicates.
fn sorted(replicas: &[u64]) -> Vec<u64> {
    let mut r = replicas.to_vec();
    r.sort_unstable();
    r.dedup();
    r
}

impl Fsm {
    pub(super) fn chunk_record(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, FsError> {
        self.raw_get(CF_CHUNKS, id.as_bytes())?
            .map(|v| decode_json(&v))
            .transpose()
    }

    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, MetaError> {
        Ok(self.chunk_record(id)?)
    }

    /// Up to `limit` chunk records with ids strictly after `after` (from the start if `None`),
    /// in id order: the repair worker and fsck page through the chunk table with it.
    pub fn chunk_page(
        &self,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<(ChunkId, ChunkRecord)>, MetaError> {
        let start = after.map(|id| id.as_bytes().to_vec()).unwrap_or_default();
        let mut out = Vec::new();
        for item in self.iter_prefix(CF_CHUNKS, &[], &start)? {
            let (k, v) = item?;
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
}

impl Tx<'_> {
    /// A slot now references chunk `c`, stored on `replicas` by an upload placed with `ticket`.
    ///
    /// GC SAFETY: a chunk being collected (or collected) since an epoch after `ticket` is
    /// refused: the upload happened before the chunk servers marked their copies, so the copies
    /// it relies on may be deleted. With a later ticket the upload's puts came after the marks
    /// (which they cleared), so its copies survive and the chunk is revived on exactly them.
    pub(super) fn incref(
        &mut self,
        c: &SlotChunk,
        replicas: &[u64],
        ticket: u64,
    ) -> Result<(), FsError> {
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
            Some(ChunkRecord {
                collecting: Some(epoch),
                ..
            }) => {
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
                self.set_gc(c.id, None);
                ChunkRecord {
                    stored_len: c.stored_len,
                    replicas: sorted(replicas),
                    refs: 1,
                    collecting: None,
                    suspect: Vec::new(),
                    inline: false,
                }
            }
            Some(mut r) => {
                if r.inline && !replicas.is_empty() {
                    return Err(fs_err(
                        ErrorKind::InvalidArgument,
                        format!("chunk {} is kept inline: it has no replicas", c.id),
                    ));
                }
                if r.stored_len != c.stored_len {
                    return Err(fs_err(
                        ErrorKind::InvalidArgument,
                        format!(
                            "chunk {} is stored with {} bytes, not {}",
                            c.id, r.stored_len, c.stored_len
                        ),
                    ));
                }
                if r.refs == 0 && !r.inline {
                    self.set_gc(c.id, None);
                }
                r.refs += 1;
                r.replicas.extend_from_slice(replicas);
                r.replicas = sorted(&r.replicas);
                // A put stored (and verified) the chunk again on these: no longer suspect.
                r.suspect.retain(|s| !replicas.contains(s));
                r
            }
            None => {
                if replicas.is_empty() {
                    return Err(fs_err(
                        ErrorKind::InvalidArgument,
                        format!("new chunk {} has no replicas", c.id),
                    ));
                }
                self.check_ticket_of_unknown(&c.id, ticket)?;
                ChunkRecord {
                    stored_len: c.stored_len,
                    replicas: sorted(replicas),
                    refs: 1,
                    collecting: None,
                    suspect: Vec::new(),
                    inline: false,
                }
            }
        };
        self.set_chunk(c.id, Some(rec));
        Ok(())
    }

    /// A slot no longer references `id`; at 0 references the chunk is queued for deletion (an
    /// inline chunk is deleted at once: no copy of it exists outside this state).
    pub(super) fn decref(&mut self, id: &ChunkId, now: Time) -> Result<(), FsError> {
        match self.chunk(id)? {
            Some(mut r) => {
                if r.refs == 0 {
                    tracing::error!(chunk = %id, "chunk reference count underflow");
                } else {
                    r.refs -= 1;
                }
                if r.refs == 0 && r.inline {
                    self.set_chunk(*id, None);
                    self.set_inline(*id, None);
                    return Ok(());
                }
                if r.refs == 0 {
                    self.set_gc(*id, Some(now));
                }
                self.set_chunk(*id, Some(r));
            }
            None => tracing::error!(chunk = %id, "decref of an unknown chunk"),
        }
        Ok(())
    }
}
