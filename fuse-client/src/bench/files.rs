//! The per-file rows: each times `--files` operations of one kind, one after the other on one
//! thread (except `create-par`), which is what makes a file system's per-operation latency —
//! a round trip to the metadata leader, a Raft commit — visible.
use super::{cache, close, fill_random, stamp, timed, Measured, Workspace};
use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The size of each small file.
const SMALL: usize = 4096;

/// Threads (and directories) of `create-par`.
const THREADS: usize = 8;

/// Creates `--files` files of 4 KiB each (create, write, close), timed.
pub(super) fn create_write(ws: &mut Workspace) -> Result<Measured> {
    let (paths, secs) = write_small_files(ws)?;
    ws.small_files = paths;
    Ok(Measured::rate(ws.small_files.len() as u64, secs, ""))
}

/// Writes the small files the stat, read and unlink rows work on, returning them and the
/// seconds it took.
fn write_small_files(ws: &Workspace) -> Result<(Vec<PathBuf>, f64)> {
    let dir = ws.subdir("small")?;
    let paths: Vec<PathBuf> = (0..ws.opts.files)
        .map(|i| dir.join(format!("f{i}")))
        .collect();
    let mut buf = vec![0u8; SMALL];
    fill_random(&mut buf, ws.salt);
    let ((), secs) = timed(|| {
        for (i, path) in paths.iter().enumerate() {
            stamp(&mut buf, ws.salt, i as u64);
            let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
            f.write_all(&buf)
                .with_context(|| format!("write {}", path.display()))?;
            close(f, path)?;
        }
        Ok(())
    })?;
    Ok((paths, secs))
}

/// The small files, written now (untimed) when `create` did not run (rows run once each, in
/// order, and `unlink`, which removes them, is the last row to use them).
fn ensure_small_files(ws: &mut Workspace) -> Result<()> {
    if ws.small_files.is_empty() {
        ws.small_files = write_small_files(ws)?.0;
    }
    Ok(())
}

/// Creates `--files` empty files from 8 threads at once, each in a directory of its own: how
/// far the file system's creates scale with concurrent callers.
pub(super) fn create_parallel(ws: &mut Workspace) -> Result<Measured> {
    let files = ws.opts.files;
    let dirs = (0..THREADS)
        .map(|t| ws.subdir(&format!("par{t}")))
        .collect::<Result<Vec<_>>>()?;
    let ((), secs) = timed(|| {
        std::thread::scope(|s| {
            let workers: Vec<_> = dirs
                .iter()
                .enumerate()
                .map(|(t, dir)| {
                    // The files split as evenly as they go: the first `files % THREADS`
                    // threads make one more.
                    let count = files / THREADS + usize::from(t < files % THREADS);
                    s.spawn(move || create_empty(dir, count))
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })
    })?;
    Ok(Measured::rate(files as u64, secs, ""))
}

/// Creates and closes `count` empty files in `dir`.
fn create_empty(dir: &Path, count: usize) -> Result<()> {
    for i in 0..count {
        let path = dir.join(format!("e{i}"));
        let f = File::create(&path).with_context(|| format!("create {}", path.display()))?;
        close(f, &path)?;
    }
    Ok(())
}

/// `stat` of every small file.
pub(super) fn stat(ws: &mut Workspace) -> Result<Measured> {
    ensure_small_files(ws)?;
    let ((), secs) = timed(|| {
        for path in &ws.small_files {
            fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        }
        Ok(())
    })?;
    Ok(Measured::rate(ws.small_files.len() as u64, secs, ""))
}

/// Reads every small file whole (open, read, close) after dropping them from the page cache.
pub(super) fn read_cold(ws: &mut Workspace) -> Result<Measured> {
    ensure_small_files(ws)?;
    let note = cache::evict(&ws.small_files, ws.opts.drop_caches)?;
    let mut buf = Vec::with_capacity(SMALL);
    let ((), secs) = timed(|| {
        for path in &ws.small_files {
            let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
            buf.clear();
            f.read_to_end(&mut buf)
                .with_context(|| format!("read {}", path.display()))?;
            anyhow::ensure!(
                buf.len() == SMALL,
                "read {}: {} bytes, expected {SMALL}",
                path.display(),
                buf.len()
            );
            close(f, path)?;
        }
        Ok(())
    })?;
    Ok(Measured::rate(ws.small_files.len() as u64, secs, note))
}

/// Unlinks every small file.
pub(super) fn unlink(ws: &mut Workspace) -> Result<Measured> {
    ensure_small_files(ws)?;
    let paths = std::mem::take(&mut ws.small_files);
    let ((), secs) = timed(|| {
        for path in &paths {
            fs::remove_file(path).with_context(|| format!("unlink {}", path.display()))?;
        }
        Ok(())
    })?;
    Ok(Measured::rate(paths.len() as u64, secs, ""))
}

/// Makes `--files` empty directories in one parent, timed.
pub(super) fn mkdir(ws: &mut Workspace) -> Result<Measured> {
    let (dirs, secs) = make_dirs(ws)?;
    ws.dirs = dirs;
    Ok(Measured::rate(ws.dirs.len() as u64, secs, ""))
}

/// Makes the directories `rmdir` removes, returning them and the seconds it took.
fn make_dirs(ws: &Workspace) -> Result<(Vec<PathBuf>, f64)> {
    let parent = ws.subdir("dirs")?;
    let dirs: Vec<PathBuf> = (0..ws.opts.files)
        .map(|i| parent.join(format!("d{i}")))
        .collect();
    let ((), secs) = timed(|| {
        for dir in &dirs {
            fs::create_dir(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        }
        Ok(())
    })?;
    Ok((dirs, secs))
}

/// Removes the empty directories `mkdir` made (or makes them first, untimed).
pub(super) fn rmdir(ws: &mut Workspace) -> Result<Measured> {
    if ws.dirs.is_empty() {
        ws.dirs = make_dirs(ws)?.0;
    }
    let dirs = std::mem::take(&mut ws.dirs);
    let ((), secs) = timed(|| {
        for dir in &dirs {
            fs::remove_dir(dir).with_context(|| format!("rmdir {}", dir.display()))?;
        }
        Ok(())
    })?;
    Ok(Measured::rate(dirs.len() as u64, secs, ""))
}

/// Renames `--files` directories, each holding one file, to new names in the same parent.
pub(super) fn rename_dir(ws: &mut Workspace) -> Result<Measured> {
    let parent = ws.subdir("rename")?;
    let names: Vec<(PathBuf, PathBuf)> = (0..ws.opts.files)
        .map(|i| (parent.join(format!("a{i}")), parent.join(format!("b{i}"))))
        .collect();
    for (from, _) in &names {
        fs::create_dir(from).with_context(|| format!("mkdir {}", from.display()))?;
        let file = from.join("f");
        let f = File::create(&file).with_context(|| format!("create {}", file.display()))?;
        close(f, &file)?;
    }
    let ((), secs) = timed(|| {
        for (from, to) in &names {
            fs::rename(from, to)
                .with_context(|| format!("rename {} to {}", from.display(), to.display()))?;
        }
        Ok(())
    })?;
    Ok(Measured::rate(names.len() as u64, secs, ""))
}
