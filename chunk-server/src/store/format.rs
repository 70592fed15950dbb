//! The chunk file format: the header that makes a chunk file self-verifying, its encoding, and
//! the reads that check it (the header, a range of blocks, a whole chunk).
//!
//! # Version 2 (written since 2026-12), all integers little-endian
//!
//! ```text
//! offset  size      field
//! 0       8         magic "CAIRNCK1"
//! 8       4         format version (2)
//! 12      4         stored length L of the chunk data (<= CHUNK_SIZE)
//! 16      4         block count N = ceil(L / BLOCK_SIZE)
//! 20      32        chunk id (blake3 of the whole data), so a misplaced file is detected
//! 52      32 * N    blake3 chaining value of each BLOCK_SIZE block: the block hashed as the
//!                   subtree at its place in the chunk's blake3 tree (cairn_common::block_tree)
//! 52+32N  32        blake3 of bytes [0, 52+32N) — the header's own checksum
//! 84+32N  L         the data
//! ```
//!
//! For N >= 2 the chaining values combine into the chunk id, and [`read_header`] checks that
//! they do: every block read is then verified against the id through its chaining value, the
//! whole chunk is verified in one pass over its bytes, and the values can be handed to a reader
//! ([`Header::block_cvs`]) so that it verifies a single block the same way. A chunk of one block
//! is checked against its id directly.
//!
//! # Version 1 (read, no longer written)
//!
//! The same layout with version 1 and, per block, the plain blake3 hash of the block's bytes.
//! Those hashes are not bound to the id, so a read of the whole chunk also hashes it whole, and
//! a reader cannot be given a proof for a single block ([`Header::block_cvs`] is `None`: it
//! fetches the whole chunk). The scrub rewrites a verified version-1 file as version 2.
//!
//! A reader validates the magic, version, lengths and header checksum ([`read_header`]), then
//! reads only the blocks that cover the requested range and checks each against its hash
//! ([`read_range`]). Any mismatch is [`StoreError::Corrupt`]: the caller never receives wrong
//! bytes. The functions here only read and check; what happens to a corrupt copy (quarantine)
//! is [`super::FileStore`]'s business.
use super::{Result, StoreError};
use bytes::{Bytes, BytesMut};
use cairn_common::block_tree::{self, BlockCv};
use cairn_common::{ChunkId, BLOCK_SIZE, CHUNK_SIZE};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// Magic bytes opening every chunk file.
pub const MAGIC: &[u8; 8] = b"CAIRNCK1";
/// The chunk file format version this code writes (it also reads [`FORMAT_V1`]).
pub const FORMAT_VERSION: u32 = 2;
/// The first format: plain per-block hashes, not bound to the chunk id.
pub const FORMAT_V1: u32 = 1;
/// Bytes of the fixed part of the header (magic, version, length, block count, id).
const FIXED_HEADER: usize = 8 + 4 + 4 + 4 + 32;

/// The parsed, verified header of a chunk file.
pub(super) struct Header {
    pub(super) len: u64,
    pub(super) version: u32,
    /// Per block: its chaining value (version 2) or its plain hash (version 1).
    block_hashes: Vec<[u8; 32]>,
    /// Where the data starts in the file.
    data_offset: u64,
}

impl Header {
    /// The chaining values of the blocks, verified against the chunk id when the header was
    /// read: a proof a reader can check single blocks against. `None` for a chunk of fewer than
    /// two blocks (its one block is the chunk) and for a version-1 file.
    pub(super) fn block_cvs(&self) -> Option<&[BlockCv]> {
        (self.version == FORMAT_VERSION && self.block_hashes.len() >= 2)
            .then_some(&self.block_hashes[..])
    }

    /// Whether block `index` (its bytes in `block`) matches the header.
    fn block_matches(&self, index: usize, block: &[u8]) -> bool {
        let expected = &self.block_hashes[index];
        if self.version == FORMAT_V1 {
            blake3::hash(block).as_bytes() == expected
        } else {
            block_tree::block_cv(index, block).as_ref() == Some(expected)
        }
    }

    /// Whether a read of every block must also hash the data whole against the id: when the
    /// block hashes are not bound to the id (version 1, or a single block).
    fn whole_check_needed(&self) -> bool {
        self.block_cvs().is_none()
    }
}

fn header_len(blocks: usize) -> usize {
    FIXED_HEADER + 32 * blocks + 32
}

/// Where the data of a chunk of `len` bytes starts in its file (the header's length).
pub fn data_offset(len: usize) -> u64 {
    header_len(block_count(len)) as u64
}

fn block_count(len: usize) -> usize {
    len.div_ceil(BLOCK_SIZE)
}

/// Checks that `data` is chunk `id` and returns its block chaining values: one pass over the
/// bytes, which is all a put hashes.
pub(super) fn hash_for_put(id: ChunkId, data: &[u8]) -> std::result::Result<Vec<BlockCv>, ChunkId> {
    let cvs = block_tree::block_cvs(data);
    let actual =
        block_tree::id_from_cvs(&cvs, data.len() as u64).unwrap_or_else(|| ChunkId::of(data));
    if actual == id {
        Ok(cvs)
    } else {
        Err(actual)
    }
}

/// Encodes the version-2 header of the chunk file of `id`, `len` bytes of data whose blocks
/// have the chaining values `cvs` ([`hash_for_put`]).
pub(super) fn encode_header(id: ChunkId, len: usize, cvs: &[BlockCv]) -> Vec<u8> {
    encode_header_version(FORMAT_VERSION, id, len, cvs)
}

/// A version-1 header for `data` (chunk `id`): what older servers wrote, for tests of the
/// upgrade path.
#[cfg(test)]
pub(super) fn encode_v1_header(id: ChunkId, data: &[u8]) -> Vec<u8> {
    let hashes: Vec<[u8; 32]> = data
        .chunks(BLOCK_SIZE)
        .map(|b| *blake3::hash(b).as_bytes())
        .collect();
    encode_header_version(FORMAT_V1, id, data.len(), &hashes)
}

fn encode_header_version(version: u32, id: ChunkId, len: usize, hashes: &[[u8; 32]]) -> Vec<u8> {
    let mut h = Vec::with_capacity(header_len(hashes.len()));
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
    h.extend_from_slice(id.as_bytes());
    for b in hashes {
        h.extend_from_slice(b);
    }
    let own = blake3::hash(&h);
    h.extend_from_slice(own.as_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Reads and verifies the header of chunk file `file` of `file_len` bytes (read from its
/// start), stored as chunk `id`.
pub(super) fn read_header(id: ChunkId, mut file: &File, file_len: u64) -> Result<Header> {
    let corrupt = |reason: String| StoreError::Corrupt { id, reason };
    let mut fixed = [0u8; FIXED_HEADER];
    match file.read_exact(&mut fixed) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(corrupt(format!(
                "file of {file_len} bytes is shorter than a header"
            )))
        }
        Err(e) => return Err(StoreError::io("read chunk header", e)),
    }
    if &fixed[..8] != MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    let version = u32_at(&fixed, 8);
    if version != FORMAT_VERSION && version != FORMAT_V1 {
        return Err(corrupt(format!("unknown format version {version}")));
    }
    let len = u32_at(&fixed, 12) as usize;
    let blocks = u32_at(&fixed, 16) as usize;
    if len > CHUNK_SIZE || blocks != block_count(len) {
        return Err(corrupt(format!(
            "implausible length {len} / {blocks} blocks"
        )));
    }
    if fixed[20..52] != id.0 {
        return Err(corrupt("header names a different chunk id".into()));
    }
    let mut rest = vec![0u8; 32 * blocks + 32];
    match file.read_exact(&mut rest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(corrupt("truncated header".into()))
        }
        Err(e) => return Err(StoreError::io("read chunk header", e)),
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&fixed);
    hasher.update(&rest[..32 * blocks]);
    if hasher.finalize().as_bytes() != &rest[32 * blocks..] {
        return Err(corrupt("header checksum mismatch".into()));
    }
    let data_offset = header_len(blocks) as u64;
    if file_len != data_offset + len as u64 {
        return Err(corrupt(format!(
            "file is {file_len} bytes, header says {}",
            data_offset + len as u64
        )));
    }
    let block_hashes = rest[..32 * blocks]
        .chunks_exact(32)
        .map(|c| {
            let mut a = [0u8; 32];
            a.copy_from_slice(c);
            a
        })
        .collect::<Vec<_>>();
    // Version 2: the chaining values must combine into the id, so that every block checked
    // against them is checked against the id.
    if version == FORMAT_VERSION
        && blocks >= 2
        && block_tree::id_from_cvs(&block_hashes, len as u64) != Some(id)
    {
        return Err(corrupt(
            "block hashes do not combine to the chunk id".into(),
        ));
    }
    Ok(Header {
        len: len as u64,
        version,
        block_hashes,
        data_offset,
    })
}

/// Reads and verifies the blocks covering `[offset, end)` of the data of chunk `id` (whose
/// header `h` was read by [`read_header`]); returns exactly those bytes.
pub(super) fn read_range(
    id: ChunkId,
    file: &File,
    h: &Header,
    offset: u64,
    end: u64,
) -> Result<Bytes> {
    if offset == end {
        return Ok(Bytes::new());
    }
    let bs = BLOCK_SIZE as u64;
    let first = offset / bs;
    let last = (end - 1) / bs; // inclusive
    let span_start = first * bs;
    let span_end = ((last + 1) * bs).min(h.len);
    let mut buf = BytesMut::zeroed((span_end - span_start) as usize);
    file.read_exact_at(&mut buf, h.data_offset + span_start)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => StoreError::Corrupt {
                id,
                reason: "data shorter than its header says".into(),
            },
            _ => StoreError::io("read chunk data", e),
        })?;
    for (i, block) in buf.chunks(BLOCK_SIZE).enumerate() {
        let index = first as usize + i;
        if !h.block_matches(index, block) {
            return Err(StoreError::Corrupt {
                id,
                reason: format!("block {index} checksum mismatch"),
            });
        }
    }
    // The whole chunk was read and its block hashes are not bound to the id: check it against
    // the id too (catches a consistent but wrong header + data pair).
    if span_start == 0 && span_end == h.len && h.whole_check_needed() && ChunkId::of(&buf) != id {
        return Err(StoreError::Corrupt {
            id,
            reason: "data does not hash to the chunk id".into(),
        });
    }
    let buf = buf.freeze();
    Ok(buf.slice((offset - span_start) as usize..(end - span_start) as usize))
}

/// A chunk file checked in full.
pub(super) struct Checked {
    pub(super) len: u64,
    pub(super) version: u32,
    /// The chunk's data, verified.
    pub(super) data: Bytes,
}

/// Checks chunk file `file` of `file_len` bytes in full: header, every block hash, and the
/// whole data against the id (through the block chaining values, or hashed whole).
pub(super) fn check_whole(id: ChunkId, file: &File, file_len: u64) -> Result<Checked> {
    let h = read_header(id, file, file_len)?;
    if h.len == 0 {
        // read_range reads no block of an empty chunk; check its id here.
        if ChunkId::of(&[]) != id {
            return Err(StoreError::Corrupt {
                id,
                reason: "empty data does not hash to the chunk id".into(),
            });
        }
    }
    // A read of the whole chunk also checks it against the id (see read_range).
    let data = read_range(id, file, &h, 0, h.len)?;
    Ok(Checked {
        len: h.len,
        version: h.version,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// A chunk file of `data` in format `version`, opened from its start.
    fn file_of(version: u32, data: &[u8]) -> (File, u64, ChunkId) {
        let id = ChunkId::of(data);
        let header = if version == FORMAT_V1 {
            encode_v1_header(id, data)
        } else {
            encode_header(id, data.len(), &hash_for_put(id, data).unwrap())
        };
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&header).unwrap();
        f.write_all(data).unwrap();
        let len = f.stream_position().unwrap();
        f.rewind().unwrap();
        (f, len, id)
    }

    #[test]
    fn version_1_files_stay_readable_without_a_block_proof() {
        let d = data(3 * BLOCK_SIZE + 11, 1);
        let (f, len, id) = file_of(FORMAT_V1, &d);
        let h = read_header(id, &f, len).unwrap();
        assert!(h.block_cvs().is_none());
        let part = read_range(id, &f, &h, BLOCK_SIZE as u64 + 5, 2 * BLOCK_SIZE as u64).unwrap();
        assert_eq!(&part[..], &d[BLOCK_SIZE + 5..2 * BLOCK_SIZE]);
        let mut f2 = f.try_clone().unwrap();
        f2.rewind().unwrap();
        let c = check_whole(id, &f2, len).unwrap();
        assert_eq!((c.len, c.version, &c.data[..]), (d.len() as u64, 1, &d[..]));
    }

    #[test]
    fn version_2_block_values_are_bound_to_the_id() {
        let d = data(2 * BLOCK_SIZE + 1, 2);
        let (f, len, id) = file_of(FORMAT_VERSION, &d);
        let h = read_header(id, &f, len).unwrap();
        let cvs = h.block_cvs().expect("a proof for a chunk of 3 blocks");
        assert_eq!(block_tree::id_from_cvs(cvs, d.len() as u64), Some(id));
        // A put refuses data that is not the id's.
        assert_eq!(hash_for_put(id, &d[1..]), Err(ChunkId::of(&d[1..])));
        // A header whose values are self-consistent (own checksum right) but belong to other
        // data is refused: the values do not combine to the id.
        let other = data(d.len(), 3);
        let forged =
            encode_header_version(FORMAT_VERSION, id, d.len(), &block_tree::block_cvs(&other));
        let mut g = tempfile::tempfile().unwrap();
        g.write_all(&forged).unwrap();
        g.write_all(&other).unwrap();
        g.rewind().unwrap();
        let err = read_header(id, &g, len)
            .err()
            .expect("forged header refused");
        assert!(err.to_string().contains("combine"), "{err}");
        // A single-block chunk is checked against its id when read whole.
        let small = data(1000, 4);
        let (f, len, id) = file_of(FORMAT_VERSION, &small);
        let h = read_header(id, &f, len).unwrap();
        assert!(h.block_cvs().is_none());
        assert_eq!(&read_range(id, &f, &h, 0, 1000).unwrap()[..], &small[..]);
    }
}
