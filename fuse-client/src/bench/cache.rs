//! What "cold" means for the rows that read (`read-cold`, `seq-read`, `rand-read`): before the
//! timed reads, the files are out of the kernel's caches.
//!
//! 1. `sync()`: dirty pages are written back first, because `POSIX_FADV_DONTNEED` drops only
//!    clean pages (for dirty ones it merely starts write-back);
//! 2. `posix_fadvise(POSIX_FADV_DONTNEED)` on each file drops its pages; any user may do this;
//! 3. as root, also `echo 3 > /proc/sys/vm/drop_caches`, which drops cached dentries and inodes
//!    too, so that opens and lookups reach the file system again. Where that is refused (not
//!    root, or a container with a read-only /proc/sys) the row's note says so and the figure is
//!    "page cache dropped, dentries and inodes possibly warm".
//!
//! A FUSE file system may keep caches of its own that none of this reaches: Cairn's client
//! keeps recently read chunks in memory. On a Cairn mount "cold" therefore means "not in the
//! kernel's caches"; the client's chunk cache may still serve the read, as it would for an
//! application reading a file it wrote a moment ago.
use anyhow::{Context, Result};
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Evicts `paths` from the kernel caches as described above, with the global drop only when
/// `drop_caches`; returns the note for the row ("" when the global drop ran too).
pub(super) fn evict(paths: &[PathBuf], drop_caches: bool) -> Result<String> {
    nix::unistd::sync();
    for path in paths {
        let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
        posix_fadvise(f.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
            .with_context(|| format!("posix_fadvise(DONTNEED) {}", path.display()))?;
    }
    if !drop_caches {
        return Ok("cold: page cache dropped per file (--no-drop-caches)".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Ok("cold: page cache dropped per file (not root: no drop_caches)".into());
    }
    match std::fs::write("/proc/sys/vm/drop_caches", "3") {
        Ok(()) => Ok(String::new()),
        Err(e) => Ok(format!(
            "cold: page cache dropped per file (drop_caches refused: {e})"
        )),
    }
}
