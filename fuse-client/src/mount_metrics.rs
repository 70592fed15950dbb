//! What a mount serves on its HTTP port (`cairn mount --metrics-listen`, see
//! [`cairn_common::metrics`]), and the one place the mount's figures are recorded:
//!
//! - `cairn_fuse_ops_total{op,outcome}` and `cairn_fuse_op_duration_seconds{op}`: every FUSE
//!   operation by type ([`fuse_op`]);
//! - `cairn_mount_cache_lookups_total{result}` (hit, miss, joined: a fetch already under way),
//!   so the hit ratio is hit / all ([`cache_lookup`]); `cairn_mount_cache_bytes` (at scrape);
//! - `cairn_mount_uploads_in_flight` ([`UploadInFlight`]);
//! - `cairn_mount_commit_conflicts_total{resolved}` ([`commit_conflict`]).
//!
//! The mount's HTTP port itself (its probe: cache size at scrape, `/readyz` once mounted) is
//! set up by [`crate::mount`].
use metrics::{counter, gauge, histogram};
use std::time::Instant;

/// Counts and times one FUSE operation `op` that started at `started`.
pub fn fuse_op(op: &'static str, ok: bool, started: Instant) {
    let outcome = if ok { "ok" } else { "error" };
    counter!("cairn_fuse_ops_total", "op" => op, "outcome" => outcome).increment(1);
    histogram!("cairn_fuse_op_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
}

/// How a lookup in the chunk cache went.
#[derive(Clone, Copy)]
pub enum CacheResult {
    Hit,
    Miss,
    /// Another reader's fetch of the same chunk was under way: this one waits for it.
    Joined,
}

pub fn cache_lookup(r: CacheResult) {
    let result = match r {
        CacheResult::Hit => "hit",
        CacheResult::Miss => "miss",
        CacheResult::Joined => "joined",
    };
    counter!("cairn_mount_cache_lookups_total", "result" => result).increment(1);
}

/// A commit refused because the file changed (`resolved`: it was harmless and went through).
pub fn commit_conflict(resolved: bool) {
    let resolved = if resolved { "yes" } else { "no" };
    counter!("cairn_mount_commit_conflicts_total", "resolved" => resolved).increment(1);
}

/// Counts one chunk upload in flight while it lives.
pub struct UploadInFlight(());

impl UploadInFlight {
    pub fn start() -> UploadInFlight {
        gauge!("cairn_mount_uploads_in_flight").increment(1.0);
        UploadInFlight(())
    }
}

impl Drop for UploadInFlight {
    fn drop(&mut self) {
        gauge!("cairn_mount_uploads_in_flight").decrement(1.0);
    }
}
