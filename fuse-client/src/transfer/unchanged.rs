//! Whether a local file already holds exactly the bytes of a remote file's version: what lets a
//! rerun of `cairn put -r` / `cairn get -r` skip the files an earlier run completed.
//!
//! The check is by content, never by size and mtime alone: the local file is read and each
//! chunk-sized slot hashed (blake3) and compared with the chunk id the remote version records
//! for that slot (chunk ids are the blake3 of their content); a hole must read as zeros. Sizes
//! are compared first, so a file that grew or shrank costs nothing to rule out. A slot that
//! cannot be checked by hash — its chunk is stored longer than the file uses (left by a
//! truncation) — counts as different: the file is copied again rather than risk keeping
//! different bytes. Reading is much cheaper than sending, and nothing is written.
use super::Conn;
use crate::data::commit::Base;
use crate::data::reader::StoredChunk;
use crate::data::slots;
use anyhow::{anyhow, Context};
use cairn_common::{ChunkId, CHUNK_SIZE};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

const CHUNK: u64 = CHUNK_SIZE as u64;

/// True when `buf`, one slot of the local file, is `chunk`'s content followed by zeros, checked
/// by hash. A chunk stored longer than the file uses cannot be checked so: false.
pub fn slot_holds(buf: &[u8], chunk: &StoredChunk) -> bool {
    let keep = chunk.len as usize;
    chunk.len == chunk.stored_len
        && keep <= buf.len()
        && ChunkId::of(&buf[..keep]) == chunk.id
        && buf[keep..].iter().all(|&b| b == 0)
}

/// True when the local file at `path` holds exactly version `base`'s bytes (see the module
/// documentation). Each slot read takes a permit of `conn.chunks`, as a copy's chunks do.
pub async fn local_holds(conn: &Conn, path: &Path, base: &Base) -> anyhow::Result<bool> {
    let file = match File::open(path) {
        Ok(f) => Arc::new(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot open", path.display())),
    };
    let len = file
        .metadata()
        .with_context(|| format!("{}: cannot stat", path.display()))?
        .len();
    if len != base.size {
        return Ok(false);
    }
    for slot in 0..base.size.div_ceil(CHUNK) {
        let _permit = conn
            .chunks
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| anyhow!("chunk budget: {e}"))?;
        let want = base.slots.get(&slot).cloned();
        let n = slots::len_in_file(slot, base.size);
        let f = file.clone();
        let same = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            let mut buf = vec![0u8; n];
            f.read_exact_at(&mut buf, slot * CHUNK)?;
            Ok(match &want {
                Some(chunk) => slot_holds(&buf, chunk),
                None => buf.iter().all(|&b| b == 0),
            })
        })
        .await
        .map_err(|e| anyhow!("comparing {}: {e}", path.display()))?
        .with_context(|| format!("{}: cannot read", path.display()))?;
        if !same {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_holds_a_chunk_only_if_its_hash_matches_and_the_rest_is_zeros() {
        let data = b"chunk bytes".to_vec();
        let chunk = StoredChunk::for_test(&data, data.len() as u32);
        let mut slot = data.clone();
        slot.extend_from_slice(&[0, 0]);
        assert!(slot_holds(&data, &chunk));
        assert!(slot_holds(&slot, &chunk));
        let mut bad = data.clone();
        bad[0] ^= 1;
        assert!(!slot_holds(&bad, &chunk), "one flipped bit");
        slot.push(1);
        assert!(!slot_holds(&slot, &chunk), "bytes past the chunk are zeros");
        assert!(!slot_holds(&data[..3], &chunk), "too short");
        let mut truncated = chunk.clone();
        truncated.stored_len += 1;
        assert!(
            !slot_holds(&data, &truncated),
            "a chunk longer than the file uses cannot be checked by hash"
        );
    }
}
