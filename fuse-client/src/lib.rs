//! `cairn`: the FUSE client and admin commands of the Cairn file system.
//!
//! The mount:
//! - [`mount`]: `cairn mount` — mounting, signal handling, draining dirty files, unmounting,
//!   and the mount's background tasks; [`mount_cli`]: mount options, the `mount.fuse.cairn`
//!   helper of `mount -t fuse.cairn` and fstab, `--background`, `cairn umount`; [`mount_sys`]:
//!   the kernel mount itself (type `fuse.cairn`, the cluster as its source); [`mount_metrics`]:
//!   the mount's figures and its HTTP port (`--metrics-listen`); [`mount_subdir`]: the
//!   `subdir=` option (a directory of the namespace as the mount's root), its path checked and
//!   resolved to an inode before mounting.
//! - [`fs`]: fuser's `Filesystem` as thin adapters onto the mount's operations (`fs::Core`),
//!   grouped by area (namespace, files, directories, xattrs, locks, attribute conversion); the
//!   one reply helper turns each operation's `Result<T, Errno>` into the FUSE reply, and
//!   `fs::InoMap` is the one translation between the kernel's inode numbers and Cairn's.
//! - [`mount_session`]: this mount's session in the cluster (owner of its locks and of files
//!   kept open after unlink), renewed in the background by a worker.
//! - [`data`]: file data. The write side is [`data::open_file`] (per-inode dirty buffers and
//!   write-back state), [`data::upload`] (chunk uploads with client fan-out replication,
//!   placement retries, the upload session) and [`data::commit`] (the committed version and
//!   `CommitWrite` with conflict handling); the read side is [`data::read_plan`] (what a read
//!   of a byte range is made of) and [`data::reader`] (verified whole-chunk reads with replica
//!   failover and an LRU chunk cache); [`data::slots`] is the pure offset/slot arithmetic.
//! - [`procs`]: process ids behind FUSE requests (which close may commit a file, whether a lock
//!   waiter was interrupted).
//!
//! Shared by the mount and the commands:
//! - [`meta`]: every metadata call as a typed method on one client ([`meta::Meta`]).
//! - [`errno`]: the one mapping from wire errors to errno.
//! - [`out`]: the commands' stdout (quiet exit on a closed pipe) and log lines that keep clear
//!   of progress bars.
//!
//! The other commands:
//! - [`bench`]: `cairn bench <dir>` (one fixed metadata and data workload, run on a mount or a
//!   local disk alike) and `cairn bench --compare` of two results.
//! - [`cluster`]: which cluster a command talks to (`--meta`, `CAIRN_META`, cluster files, the
//!   mount the current directory is in).
//! - [`status`]: `cairn status [--json] [--watch]`: the cluster report of
//!   `cairn_common::cluster_report`, judged by `cairn_common::health`, fetched and shown.
//! - [`admin`]: `cairn fsck`, `cairn scrub [--now]`, `cairn chunk drain`.
//! - [`transfer`]: `cairn put`, `cairn get` (resumable copies of files, and with `-r` of whole
//!   trees) and `cairn uploads list|abort`.
pub mod admin;
pub mod bench;
pub mod cluster;
pub mod data;
pub mod errno;
pub mod fs;
pub mod meta;
pub mod mount;
pub mod mount_cli;
pub mod mount_metrics;
pub mod mount_session;
pub mod mount_subdir;
pub mod mount_sys;
pub mod out;
pub mod procs;
pub mod status;
pub mod transfer;
