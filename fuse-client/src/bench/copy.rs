//! The `copy` row: `cp -r <copy-src> <bench dir>/copy/`, done in Rust so that it runs the same
//! on every machine — a tree of many small files (the default, /usr/include, is thousands of
//! headers) is the workload where metadata latency dominates.
//!
//! Like `cp -r` without `-p`: file content and permission bits are copied, symbolic links are
//! recreated as links (not followed), owners and times are not kept.
use super::{close, timed, Measured, Workspace};
use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What a copy made.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) files: u64,
    pub(super) dirs: u64,
    pub(super) symlinks: u64,
    pub(super) bytes: u64,
}

/// Copies the copy source into the bench directory; the figure is the seconds it took.
pub(super) fn run(ws: &mut Workspace) -> Result<Measured> {
    let src = ws.opts.copy_src.clone();
    let name = src.file_name().unwrap_or("tree".as_ref());
    let dest = ws.subdir("copy")?.join(name);
    let mut tally = Tally::default();
    let ((), secs) = timed(|| copy_tree(&src, &dest, &mut tally))?;
    Ok(Measured {
        value: secs,
        count: tally.files,
        note: format!(
            "{} files, {} dirs, {} symlinks, {:.1} MiB from {}",
            tally.files,
            tally.dirs,
            tally.symlinks,
            tally.bytes as f64 / (1024.0 * 1024.0),
            src.display()
        ),
    })
}

/// Copies `src` (a directory, file or symlink) to the new path `dest`.
pub(super) fn copy_tree(src: &Path, dest: &Path, tally: &mut Tally) -> Result<()> {
    let meta = fs::symlink_metadata(src).with_context(|| format!("lstat {}", src.display()))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::create_dir(dest).with_context(|| format!("mkdir {}", dest.display()))?;
        let entries = fs::read_dir(src).with_context(|| format!("open dir {}", src.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("read dir {}", src.display()))?;
            copy_tree(&entry.path(), &dest.join(entry.file_name()), tally)?;
        }
        // The mode last, as cp does: a read-only source directory must stay writable here
        // until its entries are in.
        fs::set_permissions(dest, meta.permissions())
            .with_context(|| format!("chmod {}", dest.display()))?;
        tally.dirs += 1;
    } else if kind.is_symlink() {
        let target = fs::read_link(src).with_context(|| format!("readlink {}", src.display()))?;
        std::os::unix::fs::symlink(&target, dest)
            .with_context(|| format!("symlink {}", dest.display()))?;
        tally.symlinks += 1;
    } else if kind.is_file() {
        tally.bytes += copy_file(src, dest, meta.permissions().mode())?;
        tally.files += 1;
    } else {
        bail!(
            "copy {}: not a regular file, directory or symlink",
            src.display()
        );
    }
    Ok(())
}

/// Copies one regular file's content, created with `mode` (less the umask, as `cp` does), and
/// checks its close; returns the bytes copied.
fn copy_file(src: &Path, dest: &Path, mode: u32) -> Result<u64> {
    let mut from = File::open(src).with_context(|| format!("open {}", src.display()))?;
    let mut to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o7777)
        .open(dest)
        .with_context(|| format!("create {}", dest.display()))?;
    let bytes = std::io::copy(&mut from, &mut to)
        .with_context(|| format!("copy {} to {}", src.display(), dest.display()))?;
    close(to, dest)?;
    Ok(bytes)
}
