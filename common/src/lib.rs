//! Pieces every Cairn binary shares.
//!
//! - [`error`]: the error kinds that travel on the wire (`cairn-error` status metadata), and the
//!   one mapping from a kind to a POSIX errno.
//! - [`chunk`]: chunk identity (blake3 content hash), the chunk and block sizes, and the
//!   per-block hashing used to verify partial reads.
//! - [`name`]: validation of directory-entry names (no `/`, no NUL, at most 255 bytes).
//! - [`meta_client`]: a client for the metadata cluster that follows the Raft leader and retries
//!   across leader changes.
//! - [`chunk_client`]: a pool of connections to chunk servers.
//! - [`time`]: conversions between `SystemTime` and the wire `Timestamp`.
pub mod chunk;
pub mod chunk_client;
pub mod error;
pub mod meta_client;
pub mod name;
pub mod time;

pub use chunk::{ChunkId, BLOCK_SIZE, CHUNK_SIZE};
pub use chunk_client::ChunkClients;
pub use error::ErrorKind;
pub use meta_client::MetaClient;

/// The inode number of the root directory.
pub const ROOT_INO: u64 = 1;
