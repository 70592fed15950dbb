//! Verifying part of a chunk: the blake3 tree of a chunk, cut at its [`BLOCK_SIZE`] blocks.
//!
//! blake3 hashes its input as a binary tree over 1 KiB leaves. A 64 KiB block that starts at a
//! multiple of 64 KiB is a whole subtree of that tree, so its *chaining value* ([`block_cv`],
//! the subtree's non-root hash) commits to exactly its bytes at exactly its place, and the
//! chaining values of all blocks of a chunk combine into the root hash — the chunk id
//! ([`id_from_cvs`]). A reader that holds a chunk's id and its block chaining values (2 KiB for
//! a 4 MiB chunk) checks the values once against the id and then any block against its value:
//! a 64 KiB read is verified end to end without the rest of the chunk, and a whole chunk is
//! verified in one pass over its bytes (block by block, never hashed twice).
//!
//! Chunk files store these values (chunk format v2) and `GetChunk` returns them on request.
//! A chunk of at most one block has no inner tree: it is checked against its id directly.
use crate::{ChunkId, BLOCK_SIZE};
use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};
use blake3::hazmat::{HasherExt, Mode};

/// The chaining value of one block: blake3 of the block as the subtree at its place in the chunk.
pub type BlockCv = [u8; 32];

/// The number of blocks of a chunk of `len` bytes (the last may be short).
pub fn block_count(len: u64) -> usize {
    len.div_ceil(BLOCK_SIZE as u64) as usize
}

/// The chaining value of `block`, block number `index` of its chunk: `None` when the block is
/// empty or longer than [`BLOCK_SIZE`] (no block of a chunk is either).
pub fn block_cv(index: usize, block: &[u8]) -> Option<BlockCv> {
    if block.is_empty() || block.len() > BLOCK_SIZE {
        return None;
    }
    let mut h = blake3::Hasher::new();
    // A multiple of 64 KiB: a leaf boundary, and the start of a subtree of at least 64 KiB.
    h.set_input_offset(index as u64 * BLOCK_SIZE as u64);
    h.update(block);
    Some(h.finalize_non_root())
}

/// The chaining values of every block of `data` (none for empty data).
pub fn block_cvs(data: &[u8]) -> Vec<BlockCv> {
    data.chunks(BLOCK_SIZE)
        .enumerate()
        .filter_map(|(i, b)| block_cv(i, b))
        .collect()
}

/// The chunk id that the block chaining values `cvs` of a chunk of `len` bytes combine into;
/// `None` when the chunk has fewer than two blocks (its id is the plain hash of its one block)
/// or `cvs` does not hold one value per block.
pub fn id_from_cvs(cvs: &[BlockCv], len: u64) -> Option<ChunkId> {
    if cvs.len() < 2 || cvs.len() != block_count(len) {
        return None;
    }
    let (left, right) = split(cvs, len);
    let root = merge_subtrees_root(&left, &right, Mode::Hash);
    Some(ChunkId(*root.as_bytes()))
}

/// The chaining values of the two children of the subtree made of the blocks `cvs`, `len` bytes.
/// blake3's left child is the largest power of two of bytes below `len`: for `len` above one
/// block, a whole number of blocks.
fn split(cvs: &[BlockCv], len: u64) -> (BlockCv, BlockCv) {
    let left_len = left_subtree_len(len);
    let left_blocks = (left_len / BLOCK_SIZE as u64) as usize;
    (
        subtree(&cvs[..left_blocks], left_len),
        subtree(&cvs[left_blocks..], len - left_len),
    )
}

fn subtree(cvs: &[BlockCv], len: u64) -> BlockCv {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let (left, right) = split(cvs, len);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
}

/// Why part of a chunk failed its check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("{got} bytes of block hashes, expected {expected}")]
    WrongHashCount { got: usize, expected: usize },
    #[error("block hashes do not combine to the chunk id")]
    WrongRoot,
    #[error("{got} bytes for blocks {first}..={last}, expected {expected}")]
    WrongLength {
        first: usize,
        last: usize,
        got: usize,
        expected: usize,
    },
    #[error("block {0} does not match its hash")]
    BadBlock(usize),
}

/// The block chaining values of chunk `id` of `len` bytes (more than one block), as sent on the
/// wire (32 bytes each, concatenated), once checked against the id.
#[derive(Debug, Clone)]
pub struct VerifiedCvs {
    cvs: Vec<BlockCv>,
    len: u64,
}

impl VerifiedCvs {
    /// Checks `raw` against chunk `id` of `len` bytes.
    pub fn check(id: ChunkId, len: u64, raw: &[u8]) -> Result<VerifiedCvs, ProofError> {
        let expected = 32 * block_count(len);
        if raw.len() != expected || expected < 64 {
            return Err(ProofError::WrongHashCount {
                got: raw.len(),
                expected,
            });
        }
        let cvs: Vec<BlockCv> = raw
            .chunks_exact(32)
            .map(|c| {
                let mut a = [0u8; 32];
                a.copy_from_slice(c);
                a
            })
            .collect();
        if id_from_cvs(&cvs, len) != Some(id) {
            return Err(ProofError::WrongRoot);
        }
        Ok(VerifiedCvs { cvs, len })
    }

    /// Checks `data`: the bytes of blocks `first..=last`, whole (the chunk's last block may be
    /// short).
    pub fn check_blocks(&self, first: usize, last: usize, data: &[u8]) -> Result<(), ProofError> {
        let bs = BLOCK_SIZE as u64;
        let start = first as u64 * bs;
        let end = ((last as u64 + 1) * bs).min(self.len);
        let expected = end.saturating_sub(start) as usize;
        if last >= self.cvs.len() || first > last || data.len() != expected {
            return Err(ProofError::WrongLength {
                first,
                last,
                got: data.len(),
                expected,
            });
        }
        for (i, block) in data.chunks(BLOCK_SIZE).enumerate() {
            let index = first + i;
            if block_cv(index, block) != Some(self.cvs[index]) {
                return Err(ProofError::BadBlock(index));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CHUNK_SIZE;

    /// `len` bytes that differ per position and per length.
    fn bytes(len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| ((i ^ len as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
            .collect()
    }

    #[test]
    fn block_values_combine_to_the_plain_blake3_id_for_every_shape_of_chunk() {
        let b = BLOCK_SIZE;
        for len in [
            b + 1,
            2 * b - 1,
            2 * b,
            2 * b + 1,
            3 * b,
            3 * b + 7,
            5 * b + 1000,
            33 * b - 1,
            63 * b + 1,
            CHUNK_SIZE - 1,
            CHUNK_SIZE,
        ] {
            let data = bytes(len);
            let cvs = block_cvs(&data);
            assert_eq!(cvs.len(), block_count(len as u64));
            assert_eq!(
                id_from_cvs(&cvs, len as u64),
                Some(ChunkId::of(&data)),
                "len {len}"
            );
        }
        // One block (or none): no inner tree.
        assert_eq!(id_from_cvs(&block_cvs(&bytes(b)), b as u64), None);
        assert!(block_cvs(&[]).is_empty());
    }

    #[test]
    fn a_block_is_verified_alone_and_a_wrong_one_is_refused() {
        let len = 3 * BLOCK_SIZE + 5;
        let data = bytes(len);
        let id = ChunkId::of(&data);
        let raw: Vec<u8> = block_cvs(&data).concat();
        let v = VerifiedCvs::check(id, len as u64, &raw).unwrap();
        let block = |i: usize| &data[i * BLOCK_SIZE..((i + 1) * BLOCK_SIZE).min(len)];
        v.check_blocks(1, 1, block(1)).unwrap();
        v.check_blocks(2, 3, &data[2 * BLOCK_SIZE..]).unwrap();
        // The same bytes claimed for another place.
        assert_eq!(v.check_blocks(2, 2, block(1)), Err(ProofError::BadBlock(2)));
        // One flipped bit.
        let mut bad = block(0).to_vec();
        bad[100] ^= 1;
        assert_eq!(v.check_blocks(0, 0, &bad), Err(ProofError::BadBlock(0)));
        // Short, long, or past the end.
        assert!(v.check_blocks(3, 3, &block(3)[..4]).is_err());
        assert!(v.check_blocks(0, 0, &data[..BLOCK_SIZE + 1]).is_err());
        assert!(v.check_blocks(4, 4, b"").is_err());
        // Values of another chunk, a truncated list, or a forged one.
        let other = bytes(len + 1);
        let other_raw: Vec<u8> = block_cvs(&other[..len]).concat();
        assert_eq!(
            VerifiedCvs::check(id, len as u64, &other_raw).unwrap_err(),
            ProofError::WrongRoot
        );
        assert!(VerifiedCvs::check(id, len as u64, &raw[..raw.len() - 32]).is_err());
        let mut forged = raw.clone();
        forged[40] ^= 1;
        assert_eq!(
            VerifiedCvs::check(id, len as u64, &forged).unwrap_err(),
            ProofError::WrongRoot
        );
    }

    #[test]
    fn bad_block_shapes_give_no_value_instead_of_panicking() {
        assert_eq!(block_cv(0, b""), None);
        assert_eq!(block_cv(1, &vec![0u8; BLOCK_SIZE + 1]), None);
        assert!(block_cv(63, &[1u8; 3]).is_some());
    }
}
