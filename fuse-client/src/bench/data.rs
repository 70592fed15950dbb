//! The data rows: throughput of large files, where a file system's data path (on Cairn: the
//! chunk uploads to three replicas, the verified chunk reads) shows rather than its metadata.
use super::{cache, close, fill_random, splitmix64, stamp, timed, Measured, Workspace};
use anyhow::{ensure, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MIB: usize = 1024 * 1024;

/// The size of one random read, and the alignment `O_DIRECT` asks for.
const BLOCK: usize = 4096;

/// Writers of `par-write`.
const WRITERS: u64 = 4;

/// Writes `--data-mib` MiB to one file in 1 MiB writes, then fsync and close, timed.
pub(super) fn seq_write(ws: &mut Workspace) -> Result<Measured> {
    let path = ws.root.join("seq");
    let mib = ws.opts.data_mib;
    let ((), secs) = timed(|| write_file(&path, mib, ws.salt, 1))?;
    ws.big_file = Some(path);
    Ok(Measured::rate(mib, secs, ""))
}

/// Writes `mib` MiB of content unique to (`salt`, `file_no`) to `path`, fsyncs and closes it.
fn write_file(path: &Path, mib: u64, salt: u64, file_no: u64) -> Result<()> {
    let mut buf = vec![0u8; MIB];
    fill_random(&mut buf, salt ^ file_no);
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    for i in 0..mib {
        // Every MiB differs, so every 4 MiB chunk is new to a deduplicating store.
        stamp(&mut buf, salt, (file_no << 32) | i);
        f.write_all(&buf)
            .with_context(|| format!("write {}", path.display()))?;
    }
    f.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    close(f, path)
}

/// The sequential file, written now (untimed) when `seq-write` did not run.
fn ensure_big_file(ws: &mut Workspace) -> Result<PathBuf> {
    if let Some(path) = &ws.big_file {
        return Ok(path.clone());
    }
    let path = ws.root.join("seq");
    write_file(&path, ws.opts.data_mib, ws.salt, 1)?;
    ws.big_file = Some(path.clone());
    Ok(path)
}

/// Reads the sequential file whole in 1 MiB reads after evicting it from the page cache.
pub(super) fn seq_read(ws: &mut Workspace) -> Result<Measured> {
    let path = ensure_big_file(ws)?;
    let note = cache::evict(std::slice::from_ref(&path), ws.opts.drop_caches)?;
    let expected = ws.opts.data_mib * MIB as u64;
    let mut buf = vec![0u8; MIB];
    let (total, secs) = timed(|| {
        let mut f = File::open(&path).with_context(|| format!("open {}", path.display()))?;
        let mut total = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("read {}", path.display()))?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        close(f, &path)?;
        Ok(total)
    })?;
    ensure!(
        total == expected,
        "read {}: {total} bytes, expected {expected}",
        path.display()
    );
    Ok(Measured::rate(ws.opts.data_mib, secs, note))
}

/// A 4 KiB buffer aligned as `O_DIRECT` requires.
#[repr(C, align(4096))]
struct Aligned([u8; BLOCK]);

/// `--files` reads of 4 KiB at random aligned offsets of the sequential file, opened with
/// `O_DIRECT` so that each read reaches the file system instead of the page cache.
pub(super) fn rand_read(ws: &mut Workspace) -> Result<Measured> {
    let path = ensure_big_file(ws)?;
    let mut note = cache::evict(std::slice::from_ref(&path), ws.opts.drop_caches)?;
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
    {
        Ok(f) => f,
        // Some file systems (tmpfs before Linux 6.6, …) refuse O_DIRECT; the page cache was
        // evicted above, so buffered reads still start cold.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            note = join_notes("O_DIRECT refused (EINVAL): buffered reads", &note);
            File::open(&path).with_context(|| format!("open {}", path.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("open {} with O_DIRECT", path.display())),
    };
    let blocks = ws.opts.data_mib * (MIB / BLOCK) as u64;
    let reads = ws.opts.files as u64;
    let mut buf = Box::new(Aligned([0; BLOCK]));
    let mut rng = ws.salt;
    let ((), secs) = timed(|| {
        for _ in 0..reads {
            let offset = (splitmix64(&mut rng) % blocks) * BLOCK as u64;
            let n = f
                .read_at(&mut buf.0, offset)
                .with_context(|| format!("read {} at {offset}", path.display()))?;
            ensure!(
                n == BLOCK,
                "read {} at {offset}: {n} bytes, expected {BLOCK}",
                path.display()
            );
        }
        Ok(())
    })?;
    close(f, &path)?;
    Ok(Measured::rate(reads, secs, note))
}

/// Four threads each write a file of a quarter of `--data-mib` (at least 1 MiB) and fsync it;
/// the figure is their aggregate throughput. The files are removed afterwards, untimed.
pub(super) fn par_write(ws: &mut Workspace) -> Result<Measured> {
    let mib = (ws.opts.data_mib / WRITERS).max(1);
    let paths: Vec<PathBuf> = (0..WRITERS)
        .map(|t| ws.root.join(format!("par-write{t}")))
        .collect();
    let salt = ws.salt;
    let ((), secs) = timed(|| {
        std::thread::scope(|s| {
            let writers: Vec<_> = paths
                .iter()
                .zip(2..)
                .map(|(path, file_no)| s.spawn(move || write_file(path, mib, salt, file_no)))
                .collect();
            writers
                .into_iter()
                .try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })
    })?;
    for path in &paths {
        std::fs::remove_file(path).with_context(|| format!("unlink {}", path.display()))?;
    }
    Ok(Measured::rate(mib * WRITERS, secs, ""))
}

/// `a; b`, leaving out an empty part.
fn join_notes(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (_, true) => a.to_owned(),
        (true, false) => b.to_owned(),
        (false, false) => format!("{a}; {b}"),
    }
}
