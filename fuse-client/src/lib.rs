//! `cairn`: the FUSE client and admin commands of the Cairn file system.
//!
//! - [`fs`]: fuser's `Filesystem`: every request runs on the tokio runtime; metadata calls go to
//!   the Raft leader through `cairn_common::MetaClient`.
//! - [`data::writer`]: per-inode dirty buffers, chunk uploads with client fan-out replication
//!   (pipelined, bounded), commit of a new file version on flush/fsync/close.
//! - [`data::reader`]: verified whole-chunk reads with replica failover and an LRU chunk cache.
//! - [`data::slots`]: the pure offset/slot arithmetic both use.
//! - [`errno`]: the one mapping from wire errors to errno.
//! - [`procs`]: process ids behind FUSE requests (which close may commit a file).
//! - [`session`]: this mount's session in the cluster (owner of its locks and of files kept
//!   open after unlink), renewed in the background.
//! - [`mount`]: `cairn mount` (mount, signal handling, drain, unmount).
//! - [`status`]: `cairn status [--json]`.
//! - [`admin`]: `cairn fsck`, `cairn scrub [--now]`, `cairn chunk drain`.
//! - [`transfer`]: `cairn put`, `cairn get` (resumable copies) and `cairn uploads list|abort`.
pub mod admin;
pub mod data;
pub mod errno;
pub mod fs;
pub mod mount;
pub mod procs;
pub mod session;
pub mod status;
pub mod transfer;
