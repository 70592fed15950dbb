//! The chunk file format: the header that makes a chunk file self-verifying, its encoding, and
//! the reads that check it (the header, a range of blocks, a whole chunk).
//!
//! # Version 1, all integers little-endian
//!
//! ```text
//! offset  size      field
//! 0       8         magic "CAIRNCK1"
//! 8       4         format version (1)
//! 12      4         stored length L of the chunk data (<= CHUNK_SIZE)
//! 16      4         block count N = ceil(L / BLOCK_SIZE)
//! 20      32        chunk id (blake3 of the whole data), so a misplaced file is detected
//! 52      32 * N    blake3 of each BLOCK_SIZE block of the data (the last may be short)
//! 52+32N  32        blake3 of bytes [0, 52+32N) — the header's own checksum
//! 84+32N  L         the data
//! ```
//!
//! A reader validates the magic, version, lengths and header checksum ([`read_header`]), then
//! reads only the blocks that cover the requested range and checks each against its hash
//! ([`read_range`]). Any mismatch is [`StoreError::Corrupt`]: the caller never receives wrong
//! bytes. The functions here only read and check; what happens to a corrupt copy (quarantine)
//! is [`super::FileStore`]'s business.
use super::{Result, StoreError};
use bytes::{Bytes, BytesMut};
use cairn_common::{ChunkId, BLOCK_SIZE, CHUNK_SIZE};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// Magic bytes opening every chunk file.
pub const MAGIC: &[u8; 8] = b"CAIRNCK1";
/// The chunk file format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the fixed part of the header (magic, version, length, block count, id).
const FIXED_HEADER: usize = 8 + 4 + 4 + 4 + 32;

/// The parsed, verified header of a chunk file.
pub(super) struct Header {
    pub(super) len: u64,
    block_hashes: Vec<[u8; 32]>,
    /// Where the data starts in the file.
    data_offset: u64,
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

/// Encodes the header of the chunk file of `id`, `len` bytes of data whose blocks hash to
/// `hashes` ([`cairn_common::chunk::block_hashes`]).
pub(super) fn encode_header(id: ChunkId, len: usize, hashes: &[[u8; 32]]) -> Vec<u8> {
    let mut h = Vec::with_capacity(header_len(hashes.len()));
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
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
    if version != FORMAT_VERSION {
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
        .collect();
    Ok(Header {
        len: len as u64,
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
        if blake3::hash(block).as_bytes() != &h.block_hashes[index] {
            return Err(StoreError::Corrupt {
                id,
                reason: format!("block {index} checksum mismatch"),
            });
        }
    }
    // The whole chunk was read: check it against its id too (catches a consistent but
    // wrong header + data pair).
    if span_start == 0 && span_end == h.len && ChunkId::of(&buf) != id {
        return Err(StoreError::Corrupt {
            id,
            reason: "data does not hash to the chunk id".into(),
        });
    }
    let buf = buf.freeze();
    Ok(buf.slice((offset - span_start) as usize..(end - span_start) as usize))
}

/// Checks chunk file `file` of `file_len` bytes in full: header, every block hash, and the
/// whole data against the id. Returns the data length.
pub(super) fn check_whole(id: ChunkId, file: &File, file_len: u64) -> Result<u64> {
    let h = read_header(id, file, file_len)?;
    if h.len == 0 {
        // read_range reads no block of an empty chunk; check its id here.
        if ChunkId::of(&[]) != id {
            return Err(StoreError::Corrupt {
                id,
                reason: "empty data does not hash to the chunk id".into(),
            });
        }
        return Ok(0);
    }
    // A read of the whole chunk also checks it against the id (see read_range).
    read_range(id, file, &h, 0, h.len)?;
    Ok(h.len)
}
