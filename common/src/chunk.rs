//! Chunk identity and checksums.
//!
//! A chunk is at most [`CHUNK_SIZE`] bytes of file data. Its identity, [`ChunkId`], is the blake3
//! hash of its bytes, so a chunk can be verified end to end by anyone holding its id, and a chunk
//! the cluster already stores is never sent twice. For partial reads a chunk's hash is also cut at
//! its [`BLOCK_SIZE`] blocks ([`crate::block_tree`]); a reader of one block verifies just that
//! block, and still against the id.
use std::fmt;

/// File data is cut into chunks of this size (4 MiB). Large enough that per-chunk metadata and
/// RPC overhead are negligible next to the data (a 1 GiB file is 256 chunks), small enough that
/// a client buffers a few chunks per open file in bounded memory, and that a resumed upload
/// re-sends little.
pub const CHUNK_SIZE: usize = 4 * 1024 * 1024;

/// Chunks are checksummed per block of this size (64 KiB), so a 4 KiB read verifies 64 KiB,
/// not 4 MiB.
pub const BLOCK_SIZE: usize = 64 * 1024;

/// The largest chunk kept *inline*, in the metadata cluster instead of on chunk servers
/// (64 KiB): the content of a file this small travels in its commit's Raft entry, so writing it
/// costs no placement round trip and no chunk fsyncs, and reading it no chunk-server round trip.
pub const INLINE_MAX: usize = 64 * 1024;

/// The blake3 hash of a chunk's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

/// A chunk id that is not 32 bytes / 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid chunk id: {0}")]
pub struct InvalidChunkId(pub String);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// The id of `data` kept inline (see [`INLINE_MAX`]): blake3 in key-derivation mode, so an
    /// inline id never equals the id of a chunk stored on chunk servers (the two are kept and
    /// collected differently), and the bytes are verified against it the same way.
    pub fn inline_of(data: &[u8]) -> ChunkId {
        ChunkId(blake3::derive_key("cairn 2026 inline chunk v1", data))
    }

    /// Parses an id received from the network: exactly 32 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<ChunkId, InvalidChunkId> {
        let arr: [u8; 32] = b
            .try_into()
            .map_err(|_| InvalidChunkId(format!("{} bytes, expected 32", b.len())))?;
        Ok(ChunkId(arr))
    }

    /// Parses 64 lowercase or uppercase hex digits.
    pub fn from_hex(s: &str) -> Result<ChunkId, InvalidChunkId> {
        let mut arr = [0u8; 32];
        hex::decode_to_slice(s, &mut arr).map_err(|e| InvalidChunkId(format!("{s:?}: {e}")))?;
        Ok(ChunkId(arr))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form for logs; full form via Display.
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

/// Hex in human-readable formats (the JSON of the state machine's records), the 32 raw bytes in
/// binary ones (the Raft log and RPCs, where hex would double every id).
impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <String as serde::Deserialize>::deserialize(d)?;
            ChunkId::from_hex(&s).map_err(serde::de::Error::custom)
        } else {
            d.deserialize_bytes(RawIdVisitor)
        }
    }
}

struct RawIdVisitor;

impl serde::de::Visitor<'_> for RawIdVisitor {
    type Value = ChunkId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the 32 bytes of a chunk id")
    }

    fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<ChunkId, E> {
        ChunkId::from_bytes(b).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips_through_hex_and_bytes() {
        let id = ChunkId::of(b"hello");
        assert_eq!(ChunkId::from_hex(&id.to_hex()).unwrap(), id);
        assert_eq!(ChunkId::from_bytes(id.as_bytes()).unwrap(), id);
        let json = serde_json_like(&id);
        assert_eq!(json.len(), 64);
    }

    fn serde_json_like(id: &ChunkId) -> String {
        id.to_string()
    }

    #[test]
    fn malformed_ids_are_rejected() {
        assert!(ChunkId::from_bytes(&[0u8; 31]).is_err());
        assert!(ChunkId::from_bytes(&[0u8; 33]).is_err());
        assert!(ChunkId::from_hex("../../etc/passwd").is_err());
        assert!(ChunkId::from_hex(&"g".repeat(64)).is_err());
    }
}
