//! Pieces every Cairn binary shares.
//!
//! - [`error`]: the error kinds that travel on the wire (`cairn-error` status metadata), and the
//!   one mapping from a kind to a POSIX errno.
//! - [`chunk`]: chunk identity (blake3 content hash), the chunk and block sizes, and the
//!   per-block hashing used to verify partial reads.
//! - [`block_tree`]: a chunk's blake3 tree cut at its 64 KiB blocks — the block chaining values
//!   that verify any block of a chunk against the chunk id without the rest of the chunk.
//! - [`name`]: validation of directory-entry names (no `/`, no NUL, at most 255 bytes).
//! - [`meta_client`]: a client for the metadata cluster that follows the Raft leader and retries
//!   across leader changes.
//! - [`chunk_client`]: a pool of connections to chunk servers; [`channel`]: the one recipe of a
//!   connection between Cairn processes (connect timeout, keepalive probe of silent peers).
//! - [`time`]: [`Time`], wall-clock time as stored and sent, and its one conversion to and
//!   from `SystemTime` and the wire `Timestamp`.
//! - [`kind`]: [`Kind`], an inode's kind, and its one conversion to each encoding (wire,
//!   directory entry byte, mode bits).
//! - [`durable`]: the one durable-write helper (temp file, fsync, rename, directory fsync).
//! - [`worker`]: the one shape of a background job ([`worker::Worker`]) and the task set that
//!   starts and stops a process's tasks with a deadline.
//! - [`rate`]: the byte-rate limiter of background I/O (scrub, repair).
//! - [`cluster_report`]: the cluster as `cairn status` and the status page show it, judged by
//!   [`health`] (`HEALTH_OK` / `WARN` / `ERR` and the reasons); [`units`]: sizes and durations
//!   as people read them.
//! - [`config_file`]: server settings from a TOML file under the command line, and the
//!   parsers of durations, sizes and rates written with units.
//! - [`systemd`]: readiness notifications for `Type=notify` units.
//! - [`metrics`]: the HTTP port of every process (`/metrics`, `/healthz`, `/readyz`), the one
//!   Prometheus recorder, and the gRPC call metrics layer.
pub mod block_tree;
pub mod channel;
pub mod chunk;
pub mod chunk_client;
pub mod cluster_report;
pub mod config_file;
pub mod durable;
pub mod error;
pub mod health;
pub mod kind;
pub mod meta_client;
pub mod metrics;
pub mod name;
pub mod rate;
pub mod systemd;
pub mod time;
pub mod units;
pub mod worker;

pub use chunk::{ChunkId, BLOCK_SIZE, CHUNK_SIZE, INLINE_MAX};
pub use chunk_client::ChunkClients;
pub use error::ErrorKind;
pub use kind::Kind;
pub use meta_client::MetaClient;
pub use time::Time;

/// The inode number of the root directory.
pub const ROOT_INO: u64 = 1;
