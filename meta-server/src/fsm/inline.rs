//! Small files inline: chunks of at most [`INLINE_MAX`] bytes kept in the metadata (the `inline`
//! column family, replicated by Raft) instead of on chunk servers.
//!
//! A mount that closes a file of at most `INLINE_MAX` bytes sends its content with the commit
//! (`CommitInline`): one Raft entry makes it durable on a majority's synced logs, with no
//! placement round trip and no chunk-server fsyncs. A reader gets the bytes in the slot page
//! (`GetChunks`), so a small file is read without a chunk-server round trip either.
//!
//! An inline chunk is an ordinary chunk to the rest of the state: a slot references it by id,
//! its record in `chunks` counts the references (with `inline` set and no replicas), and files
//! with the same content share it. Its id is `ChunkId::inline_of(bytes)` (keyed blake3), so it
//! can never be the id of a chunk on chunk servers, and readers verify the bytes against it
//! as they verify chunks. It differs in how it ends: at its last reference the record and the
//! bytes are deleted in the same entry (`Tx::decref`) — no copy exists outside this state, so
//! there is nothing for the garbage collector to find, mark or sweep. Repair and fsck skip the
//! replica count of inline chunks (Raft replicates them); fsck verifies their bytes.
//!
//! A file that grows past `INLINE_MAX` is committed with regular chunks by its next close,
//! which drops its reference to the inline chunk.
use super::schema::{fs_err, CF_INLINE};
use super::tx::Tx;
use super::{ChunkRecord, Fsm};
use crate::command::{CommandResult, CommitInline, FsError, InlineChunk};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use cairn_common::{ChunkId, INLINE_MAX};

/// `InvalidArgument` unless `c` may be kept inline: 1 to `INLINE_MAX` bytes, and its id is
/// that of its bytes.
pub fn check_inline_chunk(c: &InlineChunk) -> Result<(), FsError> {
    if c.data.is_empty() || c.data.len() > INLINE_MAX {
        return Err(fs_err(
            ErrorKind::InvalidArgument,
            format!(
                "inline chunk {} has {} bytes (1 to {INLINE_MAX} may be kept inline)",
                c.id,
                c.data.len()
            ),
        ));
    }
    if ChunkId::inline_of(&c.data) != c.id {
        return Err(fs_err(
            ErrorKind::InvalidArgument,
            format!("inline chunk {}: its bytes do not hash to its id", c.id),
        ));
    }
    Ok(())
}

impl Fsm {
    /// The bytes of inline chunk `id` as stored (unverified), if it is kept.
    pub fn inline_data(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self.raw_get(CF_INLINE, id.as_bytes())?)
    }
}

impl Tx<'_> {
    /// Stores (`Some`) or deletes (`None`) the bytes of inline chunk `id`.
    pub(super) fn set_inline(&mut self, id: ChunkId, data: Option<Vec<u8>>) {
        self.kv_put(CF_INLINE, id.as_bytes().to_vec(), data);
    }
}

impl CommitInline {
    /// Stores the inline chunks not kept yet (with no reference), applies the commit, which
    /// references them, and refuses the whole entry if any of them is left unreferenced (a
    /// chunk with no reference would never be deleted).
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        for c in &self.inline {
            check_inline_chunk(c)?;
            match tx.chunk(&c.id)? {
                // Already kept (another file with the same content, or listed twice).
                Some(r) if r.inline => {}
                Some(_) => {
                    return Err(fs_err(
                        ErrorKind::InvalidArgument,
                        format!("chunk {} is stored on chunk servers, not inline", c.id),
                    ))
                }
                None => {
                    tx.set_chunk(
                        c.id,
                        Some(ChunkRecord {
                            stored_len: c.data.len() as u32,
                            replicas: Vec::new(),
                            refs: 0,
                            collecting: None,
                            suspect: Vec::new(),
                            inline: true,
                        }),
                    );
                    tx.set_inline(c.id, Some(c.data.clone()));
                }
            }
        }
        let reply = self.write.apply(tx)?;
        for c in &self.inline {
            if tx.chunk(&c.id)?.is_none_or(|r| r.refs == 0) {
                return Err(fs_err(
                    ErrorKind::InvalidArgument,
                    format!("inline chunk {} is not referenced by the commit", c.id),
                ));
            }
        }
        Ok(reply)
    }
}
