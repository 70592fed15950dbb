//! Read planning: what a read of a byte range of a file is made of, and putting it together.
//!
//! A read of an open file sees, slot by slot, this mount's own data first (a dirty buffer, a
//! chunk being uploaded or uploaded but not yet committed) and then the committed version's
//! chunks; holes and bytes past a chunk's `len` read as zeros. [`plan`] turns that into
//! [`Piece`]s in file order (plus the chunks a sequential reader will want next), without any
//! I/O; [`execute`] fetches what a plan needs — whole chunks for a sequential reader, the
//! blocks a random reader needs ([`super::reader`], verified either way) — and assembles the
//! bytes.
use super::reader::{fetch_chunk, fetch_part, StoredChunk};
use super::slots::{self, SlotRange};
use super::{DataPlane, READ_AHEAD_CHUNKS};
use crate::errno::Errno;
use bytes::Bytes;
use cairn_common::CHUNK_SIZE;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One piece of a read, in file order.
#[derive(Debug, Clone)]
pub enum Piece {
    Zeros(usize),
    Data(Bytes),
    /// `[off, off + len)` of a stored chunk; the range lies within the chunk's `len`.
    Chunk {
        chunk: StoredChunk,
        off: usize,
        len: usize,
    },
}

/// What this mount holds for a slot of an open file, ahead of the committed version.
pub enum Local<'a> {
    /// Bytes in memory (a dirty buffer, or a chunk being uploaded): the slot from offset 0.
    Bytes(&'a [u8]),
    /// A chunk stored on its replicas but not committed yet.
    Chunk(&'a StoredChunk),
}

/// The pieces of a read of `[offset, offset + len)` of a file of `size` bytes whose committed
/// chunks are `base` and whose slots this mount holds are given by `local`, and the committed
/// chunks to prefetch if the reader is sequential: the next one once the read is past the middle
/// of a chunk, and [`READ_AHEAD_CHUNKS`] once the reader is past its first chunk.
pub fn plan<'a>(
    local: impl Fn(u64) -> Option<Local<'a>>,
    base: &BTreeMap<u64, StoredChunk>,
    size: u64,
    offset: u64,
    len: u64,
) -> (Vec<Piece>, Vec<StoredChunk>) {
    let n = slots::clamp_read(offset, len, size);
    let mut pieces = Vec::new();
    let mut last_slot = None;
    for r in slots::split(offset, n) {
        let in_file = slots::len_in_file(r.slot, size);
        match local(r.slot) {
            Some(Local::Bytes(data)) => {
                let visible = data.len().min(in_file);
                data_pieces(&data[..visible], r, &mut pieces)
            }
            Some(Local::Chunk(c)) => chunk_pieces(c, in_file, r, &mut pieces),
            None => match base.get(&r.slot) {
                Some(c) => {
                    chunk_pieces(c, in_file, r, &mut pieces);
                    last_slot = Some(r.slot);
                }
                None => pieces.push(Piece::Zeros(r.len)),
            },
        }
    }
    let chunk = CHUNK_SIZE as u64;
    let depth = if offset >= chunk {
        READ_AHEAD_CHUNKS
    } else if (offset + n) % chunk > chunk / 2 {
        1
    } else {
        0
    };
    let prefetch = match last_slot {
        Some(s) if depth > 0 => base
            .range(s + 1..=s + depth)
            .map(|(_, c)| c.clone())
            .collect(),
        _ => Vec::new(),
    };
    (pieces, prefetch)
}

fn data_pieces(visible: &[u8], r: SlotRange, out: &mut Vec<Piece>) {
    let end = (r.off + r.len).min(visible.len());
    if r.off < end {
        out.push(Piece::Data(Bytes::copy_from_slice(&visible[r.off..end])));
    }
    let got = end.saturating_sub(r.off);
    if got < r.len {
        out.push(Piece::Zeros(r.len - got));
    }
}

fn chunk_pieces(c: &StoredChunk, in_file: usize, r: SlotRange, out: &mut Vec<Piece>) {
    let visible = in_file.min(c.len as usize);
    let end = (r.off + r.len).min(visible);
    if r.off < end {
        out.push(Piece::Chunk {
            chunk: c.clone(),
            off: r.off,
            len: end - r.off,
        });
    }
    let got = end.saturating_sub(r.off);
    if got < r.len {
        out.push(Piece::Zeros(r.len - got));
    }
}

/// Runs a read plan: fetches what it needs (concurrently) and assembles the bytes. A `random`
/// reader's chunk pieces fetch only the blocks they cover; a sequential reader's fetch (or find
/// cached) whole chunks.
pub async fn execute(
    dp: &Arc<DataPlane>,
    pieces: Vec<Piece>,
    random: bool,
) -> Result<Vec<u8>, Errno> {
    let fetches = pieces.iter().map(|p| async move {
        match p {
            Piece::Chunk { chunk, off, len } if random => {
                fetch_part(dp, chunk, *off, *len).await.map(Some)
            }
            Piece::Chunk { chunk, .. } => fetch_chunk(dp, chunk).await.map(|d| Some((d, 0))),
            _ => Ok(None),
        }
    });
    let fetched = futures::future::try_join_all(fetches).await?;
    let total: usize = pieces
        .iter()
        .map(|p| match p {
            Piece::Zeros(n) => *n,
            Piece::Data(d) => d.len(),
            Piece::Chunk { len, .. } => *len,
        })
        .sum();
    let mut out = Vec::with_capacity(total);
    for (p, data) in pieces.iter().zip(fetched) {
        match (p, data) {
            (Piece::Zeros(n), _) => out.resize(out.len() + n, 0),
            (Piece::Data(d), _) => out.extend_from_slice(d),
            (Piece::Chunk { off, len, .. }, Some((data, start))) => {
                slots::read_padded(&data, off - start, *len, &mut out)
            }
            (Piece::Chunk { .. }, None) => return Err(Errno::EIO),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::ChunkId;

    const C: u64 = CHUNK_SIZE as u64;

    fn chunk(tag: &[u8], len: u32) -> StoredChunk {
        StoredChunk::for_test(tag, len)
    }

    /// A plan of a file this mount holds nothing of.
    fn plan_base(
        base: &BTreeMap<u64, StoredChunk>,
        size: u64,
        offset: u64,
        len: u64,
    ) -> (Vec<Piece>, Vec<StoredChunk>) {
        plan(|_| None, base, size, offset, len)
    }

    #[test]
    fn reads_combine_dirty_buffers_base_chunks_and_holes() {
        let mut base = BTreeMap::new();
        base.insert(0, chunk(b"a", CHUNK_SIZE as u32));
        base.insert(2, chunk(b"c", 10)); // short chunk: the rest of slot 2 is zeros
        let dirty = b"dirty".to_vec();
        let local = |slot: u64| (slot == 1).then_some(Local::Bytes(&dirty[..]));
        let (pieces, _) = plan(local, &base, 3 * C, C - 2, 12);
        let kinds: Vec<String> = pieces
            .iter()
            .map(|p| match p {
                Piece::Zeros(n) => format!("z{n}"),
                Piece::Data(b) => format!("d{}", String::from_utf8_lossy(b)),
                Piece::Chunk { off, len, .. } => format!("c{off}+{len}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                format!("c{}+2", CHUNK_SIZE - 2),
                "ddirty".into(),
                "z5".into()
            ]
        );

        let (pieces, _) = plan(local, &base, 3 * C, 2 * C + 5, 100);
        assert!(matches!(pieces[0], Piece::Chunk { off: 5, len: 5, .. }));
        assert!(matches!(pieces[1], Piece::Zeros(95)));

        // A read past the end returns nothing; one crossing it is cut.
        assert!(plan(local, &base, 3 * C, 3 * C, 10).0.is_empty());
        let (p, _) = plan(local, &base, 3 * C, 3 * C - 4, 10);
        assert!(matches!(p[0], Piece::Zeros(4)));
    }

    #[test]
    fn a_truncated_chunk_reads_only_up_to_the_file_size() {
        let mut base = BTreeMap::new();
        base.insert(0, chunk(b"x", 100));
        let (p, _) = plan_base(&base, 4, 0, 4096);
        assert_eq!(p.len(), 1);
        assert!(matches!(p[0], Piece::Chunk { off: 0, len: 4, .. }));
    }

    #[test]
    fn sequential_reads_prefetch_the_next_chunk_then_further_ahead() {
        let mut base = BTreeMap::new();
        for s in 0..8u64 {
            base.insert(s, chunk(&[s as u8], CHUNK_SIZE as u32));
        }
        let ids = |v: Vec<StoredChunk>| v.iter().map(|c| c.id).collect::<Vec<_>>();
        // The first half of the first chunk: nothing yet (a reader of a file's head only).
        assert!(plan_base(&base, 8 * C, 0, 4096).1.is_empty());
        // Past its middle: the next chunk.
        let next = plan_base(&base, 8 * C, C - 8192, 4096).1;
        assert_eq!(ids(next), vec![ChunkId::of(&[1])]);
        // Past the first chunk: READ_AHEAD_CHUNKS ahead, as far as the file goes.
        let ahead = plan_base(&base, 8 * C, 2 * C, 4096).1;
        assert_eq!(
            ids(ahead),
            (3..3 + READ_AHEAD_CHUNKS as u8)
                .map(|s| ChunkId::of(&[s]))
                .collect::<Vec<_>>()
        );
        assert_eq!(plan_base(&base, 8 * C, 7 * C, 4096).1.len(), 0);
    }

    #[tokio::test]
    async fn plans_assemble_data_zeros_and_short_chunks() {
        let dp = DataPlane::new(crate::meta::Meta::new(vec![]));
        let chunk = chunk(b"0123456789", 10);
        dp.cache.insert(chunk.id, Bytes::from_static(b"0123456789"));
        let out = execute(
            &dp,
            vec![
                Piece::Data(Bytes::from_static(b"ab")),
                Piece::Zeros(3),
                Piece::Chunk {
                    chunk: chunk.clone(),
                    off: 8,
                    len: 4,
                },
            ],
            false,
        )
        .await
        .unwrap();
        assert_eq!(out, b"ab\0\0\089\0\0");
    }
}
