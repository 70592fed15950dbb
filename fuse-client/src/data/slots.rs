//! Pure arithmetic of the chunked file layout: which slots a byte range touches, what a dirty
//! slot buffer holds, and how short chunks and holes read as zeros.
//!
//! Slot `i` covers file bytes `[i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE)`. A dirty slot buffer holds
//! the slot's bytes from offset 0 up to its length; bytes of the slot past the buffer (and past a
//! stored chunk's `len`) read as zeros.
use bytes::BytesMut;
use cairn_common::CHUNK_SIZE;

const CHUNK: u64 = CHUNK_SIZE as u64;

/// One slot's share of a byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRange {
    pub slot: u64,
    /// Offset inside the slot.
    pub off: usize,
    pub len: usize,
}

impl SlotRange {
    /// File offset of the first byte.
    pub fn file_offset(&self) -> u64 {
        self.slot * CHUNK + self.off as u64
    }
}

pub fn slot_start(slot: u64) -> u64 {
    slot * CHUNK
}

/// Splits `[offset, offset + len)` into per-slot pieces, in order.
pub fn split(offset: u64, len: u64) -> Vec<SlotRange> {
    let mut out = Vec::new();
    let mut pos = offset;
    let end = offset.saturating_add(len);
    while pos < end {
        let slot = pos / CHUNK;
        let off = (pos % CHUNK) as usize;
        let n = (end - pos).min(CHUNK - off as u64) as usize;
        out.push(SlotRange { slot, off, len: n });
        pos += n as u64;
    }
    out
}

/// How many bytes of slot `slot` a file of `size` bytes has (the last slot may be short; slots
/// past the end have none).
pub fn len_in_file(slot: u64, size: u64) -> usize {
    size.saturating_sub(slot_start(slot)).min(CHUNK) as usize
}

/// How many bytes of slot `slot` belong to a file of `size` bytes whose stored chunk (if any)
/// holds `chunk_len` valid bytes: the bytes a rewrite of the slot must preserve.
pub fn existing_len(slot: u64, size: u64, chunk_len: u32) -> usize {
    len_in_file(slot, size).min(chunk_len as usize)
}

/// True when writing `[off, off + len)` into a slot that already holds `existing` bytes needs
/// those bytes first (the write does not cover them all).
pub fn needs_load(existing: usize, off: usize, len: usize) -> bool {
    existing > 0 && !(off == 0 && len >= existing)
}

/// Writes `data` at `off` into a slot buffer, zero-filling any gap between the buffer's end and
/// `off` (a hole inside the slot).
pub fn apply_write(buf: &mut BytesMut, off: usize, data: &[u8]) {
    debug_assert!(off + data.len() <= CHUNK_SIZE);
    let end = off + data.len();
    if buf.len() < off {
        buf.resize(off, 0);
    }
    if buf.len() < end {
        let overlap = buf.len() - off;
        buf[off..].copy_from_slice(&data[..overlap]);
        buf.extend_from_slice(&data[overlap..]);
    } else {
        buf[off..end].copy_from_slice(data);
    }
}

/// Copies `[off, off + len)` of a slot whose first `data.len()` bytes are `data` into `out`;
/// bytes past `data` are zeros.
pub fn read_padded(data: &[u8], off: usize, len: usize, out: &mut Vec<u8>) {
    let end = off + len;
    let have_end = end.min(data.len());
    if off < have_end {
        out.extend_from_slice(&data[off..have_end]);
    }
    let written = have_end.saturating_sub(off);
    out.resize(out.len() + (len - written), 0);
}

/// Clamps a read of `len` bytes at `offset` to a file of `size` bytes.
pub fn clamp_read(offset: u64, len: u64, size: u64) -> u64 {
    if offset >= size {
        0
    } else {
        len.min(size - offset)
    }
}

/// A capacity for a new slot buffer: a whole chunk for large sequential writes (no regrowth
/// copies), just enough otherwise (small files stay small).
pub fn initial_capacity(needed: usize, write_len: usize) -> usize {
    if write_len >= 128 * 1024 {
        CHUNK_SIZE
    } else {
        needed.next_power_of_two().clamp(4096, CHUNK_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cuts_at_slot_boundaries() {
        assert!(split(5, 0).is_empty());
        assert_eq!(
            split(10, 20),
            vec![SlotRange {
                slot: 0,
                off: 10,
                len: 20
            }]
        );
        let r = split(CHUNK - 3, 10);
        assert_eq!(
            r,
            vec![
                SlotRange {
                    slot: 0,
                    off: CHUNK_SIZE - 3,
                    len: 3
                },
                SlotRange {
                    slot: 1,
                    off: 0,
                    len: 7
                }
            ]
        );
        let r = split(CHUNK, 2 * CHUNK + 1);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].slot, 1);
        assert_eq!(
            r[2],
            SlotRange {
                slot: 3,
                off: 0,
                len: 1
            }
        );
        assert_eq!(r.iter().map(|s| s.len as u64).sum::<u64>(), 2 * CHUNK + 1);
        assert_eq!(r[1].file_offset(), 2 * CHUNK);
    }

    #[test]
    fn existing_len_respects_size_and_chunk_len() {
        assert_eq!(existing_len(0, 100, 100), 100);
        // Truncated file: the chunk is longer than what belongs to the file.
        assert_eq!(existing_len(0, 10, 100), 10);
        // Extended file: bytes past the chunk's len are a hole, not data to keep.
        assert_eq!(existing_len(0, 1000, 100), 100);
        assert_eq!(existing_len(1, CHUNK + 5, CHUNK_SIZE as u32), 5);
        assert_eq!(existing_len(2, CHUNK + 5, CHUNK_SIZE as u32), 0);
        assert_eq!(existing_len(0, 10 * CHUNK, CHUNK_SIZE as u32), CHUNK_SIZE);
    }

    #[test]
    fn loading_is_needed_only_for_partial_overwrites() {
        assert!(!needs_load(0, 100, 5));
        assert!(!needs_load(100, 0, 100));
        assert!(!needs_load(100, 0, 4096));
        assert!(needs_load(100, 0, 99));
        assert!(needs_load(100, 1, 200));
        assert!(needs_load(100, 100, 5));
    }

    #[test]
    fn writes_merge_into_the_buffer_and_fill_gaps_with_zeros() {
        let mut b = BytesMut::new();
        apply_write(&mut b, 0, b"hello");
        assert_eq!(&b[..], b"hello");
        apply_write(&mut b, 3, b"LOWORLD");
        assert_eq!(&b[..], b"helLOWORLD");
        apply_write(&mut b, 1, b"E");
        assert_eq!(&b[..], b"hElLOWORLD");
        apply_write(&mut b, 13, b"!");
        assert_eq!(&b[..], b"hElLOWORLD\0\0\0!");
        let mut full = BytesMut::new();
        apply_write(&mut full, CHUNK_SIZE - 1, b"x");
        assert_eq!(full.len(), CHUNK_SIZE);
        assert!(full[..CHUNK_SIZE - 1].iter().all(|&c| c == 0));
    }

    #[test]
    fn short_chunks_read_as_zeros_past_their_end() {
        let mut out = Vec::new();
        read_padded(b"abcdef", 2, 3, &mut out);
        assert_eq!(out, b"cde");
        out.clear();
        read_padded(b"abcdef", 4, 5, &mut out);
        assert_eq!(out, b"ef\0\0\0");
        out.clear();
        read_padded(b"abc", 10, 4, &mut out);
        assert_eq!(out, b"\0\0\0\0");
        out.clear();
        read_padded(b"", 0, 2, &mut out);
        assert_eq!(out, b"\0\0");
    }

    #[test]
    fn reads_stop_at_end_of_file() {
        assert_eq!(clamp_read(0, 100, 50), 50);
        assert_eq!(clamp_read(50, 100, 50), 0);
        assert_eq!(clamp_read(60, 100, 50), 0);
        assert_eq!(clamp_read(10, 5, 50), 5);
    }

    #[test]
    fn buffers_start_small_for_small_writes() {
        assert_eq!(initial_capacity(10, 10), 4096);
        assert_eq!(initial_capacity(5000, 5000), 8192);
        assert_eq!(initial_capacity(1 << 20, 1 << 20), CHUNK_SIZE);
    }

    #[test]
    fn slots_cover_the_file_and_the_last_one_is_short() {
        assert_eq!(len_in_file(0, 10), 10);
        assert_eq!(len_in_file(0, 3 * CHUNK), CHUNK_SIZE);
        assert_eq!(len_in_file(2, 2 * CHUNK + 5), 5);
        assert_eq!(len_in_file(3, 2 * CHUNK + 5), 0);
    }
}
