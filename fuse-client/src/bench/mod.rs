//! `cairn bench <dir>`: one fixed workload of metadata and data operations, run on any directory
//! — a Cairn mount or a local disk — so the two can be compared row by row (`scripts/bench` runs
//! it on both and prints them side by side).
//!
//! The bench uses only the ordinary file system calls a program would make (std, plus libc for
//! `O_DIRECT`, `fsync` and dropping the page cache): it measures what an application on the
//! mount sees, not Cairn's internals. It works in a fresh sub-directory of `<dir>` that it
//! removes at the end, also when a row fails.
//!
//! - this module: the options, the catalogue of rows and the runner;
//! - [`files`]: the per-file rows (create, stat, cold read, unlink, mkdir, rmdir, rename);
//! - [`data`]: the data rows (sequential write and read, random `O_DIRECT` reads, parallel
//!   writers);
//! - [`copy`]: the `cp -r` row's recursive copy;
//! - [`cache`]: what "cold" means — dropping the page cache for the files a row reads;
//! - [`report`]: the result, its table, and `--compare` of two `--json` results.
mod cache;
mod copy;
mod data;
mod files;
mod report;

pub use report::{compare_files, compare_table, Report, Row};

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What to run, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Files (and directories) each per-file row works on.
    pub files: usize,
    /// Size of the sequential file in MiB; each of the 4 parallel writers writes a quarter.
    pub data_mib: u64,
    /// The tree the `copy` row copies.
    pub copy_src: PathBuf,
    /// Leave out the data rows (seq-write, seq-read, rand-read, par-write).
    pub skip_data: bool,
    /// Leave out the `copy` row.
    pub skip_copy: bool,
    /// Run only these rows (ids as in [`ROWS`]); empty: all.
    pub rows: Vec<String>,
    /// As root, also drop the whole machine's page, dentry and inode caches before the cold
    /// reads (see [`cache`]); off, only the bench's own files are evicted.
    pub drop_caches: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            files: 1000,
            data_mib: 1024,
            copy_src: PathBuf::from("/usr/include"),
            skip_data: false,
            skip_copy: false,
            rows: Vec::new(),
            drop_caches: true,
        }
    }
}

/// Which `--skip-*` flag leaves a row out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Copy,
    Meta,
    Data,
}

/// One row of the bench: what it measures and the function that measures it.
struct Spec {
    /// Stable name, for `--rows` and the JSON.
    id: &'static str,
    label: &'static str,
    unit: &'static str,
    group: Group,
    run: fn(&mut Workspace) -> Result<Measured>,
}

/// Every row, in the order they run. The order matters only for speed: a row that needs files
/// (stat needs the created files, seq-read the written file) reuses what an earlier row left,
/// and makes them itself, untimed, when that row was not selected.
const ROWS: &[Spec] = &[
    Spec {
        id: "copy",
        label: "cp -r of the copy source",
        unit: "s",
        group: Group::Copy,
        run: copy::run,
    },
    Spec {
        id: "create",
        label: "create + write 4 KiB + close",
        unit: "files/s",
        group: Group::Meta,
        run: files::create_write,
    },
    Spec {
        id: "create-par",
        label: "create + close, 8 threads in 8 dirs",
        unit: "files/s",
        group: Group::Meta,
        run: files::create_parallel,
    },
    Spec {
        id: "stat",
        label: "stat of existing files",
        unit: "ops/s",
        group: Group::Meta,
        run: files::stat,
    },
    Spec {
        id: "read-cold",
        label: "read whole 4 KiB file, cold",
        unit: "files/s",
        group: Group::Meta,
        run: files::read_cold,
    },
    Spec {
        id: "unlink",
        label: "unlink",
        unit: "files/s",
        group: Group::Meta,
        run: files::unlink,
    },
    Spec {
        id: "mkdir",
        label: "mkdir",
        unit: "ops/s",
        group: Group::Meta,
        run: files::mkdir,
    },
    Spec {
        id: "rmdir",
        label: "rmdir",
        unit: "ops/s",
        group: Group::Meta,
        run: files::rmdir,
    },
    Spec {
        id: "rename-dir",
        label: "rename of a non-empty directory",
        unit: "ops/s",
        group: Group::Meta,
        run: files::rename_dir,
    },
    Spec {
        id: "seq-write",
        label: "sequential write + fsync",
        unit: "MiB/s",
        group: Group::Data,
        run: data::seq_write,
    },
    Spec {
        id: "seq-read",
        label: "sequential read, cold",
        unit: "MiB/s",
        group: Group::Data,
        run: data::seq_read,
    },
    Spec {
        id: "rand-read",
        label: "4 KiB random reads, O_DIRECT",
        unit: "IOPS",
        group: Group::Data,
        run: data::rand_read,
    },
    Spec {
        id: "par-write",
        label: "4 parallel writers + fsync",
        unit: "MiB/s",
        group: Group::Data,
        run: data::par_write,
    },
];

/// The ids `--rows` accepts, comma separated (for help texts and errors).
pub fn row_ids() -> String {
    ROWS.iter().map(|s| s.id).collect::<Vec<_>>().join(",")
}

/// What one row measured: its figure, how many items it counted and anything the reader of
/// the figure should know (e.g. that `O_DIRECT` was refused).
struct Measured {
    value: f64,
    count: u64,
    note: String,
}

impl Measured {
    /// `count` items done in `secs`, as a rate per second.
    fn rate(count: u64, secs: f64, note: impl Into<String>) -> Measured {
        Measured {
            value: count as f64 / secs.max(1e-9),
            count,
            note: note.into(),
        }
    }
}

/// The state rows share inside the bench directory, so that a row can reuse what an earlier
/// row made instead of making it again.
struct Workspace {
    root: PathBuf,
    opts: Options,
    /// Makes this run's file contents differ from every other run's: Cairn stores a chunk it
    /// already holds only once, and a rerun must not get the earlier run's data for free.
    salt: u64,
    /// The 4 KiB files `create` wrote and that still exist.
    small_files: Vec<PathBuf>,
    /// The empty directories `mkdir` made and that still exist.
    dirs: Vec<PathBuf>,
    /// The sequential file, once written.
    big_file: Option<PathBuf>,
}

impl Workspace {
    /// A directory for one row's files, inside the bench directory.
    fn subdir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(dir)
    }
}

/// The bench's own sub-directory of `<dir>`; removed on drop when a row fails (the successful
/// path removes it with [`BenchDir::remove`], which reports errors).
struct BenchDir {
    path: PathBuf,
    removed: bool,
}

impl BenchDir {
    fn create(parent: &Path, salt: u64) -> Result<BenchDir> {
        let path = parent.join(format!("cairn-bench-{}-{salt:x}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(BenchDir {
            path,
            removed: false,
        })
    }

    fn remove(mut self) -> Result<()> {
        self.removed = true;
        std::fs::remove_dir_all(&self.path)
            .with_context(|| format!("remove the bench directory {}", self.path.display()))
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                eprintln!("cairn bench: could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// The rows `opts` selects, in run order; an unknown id in `--rows` is an error.
fn selected(opts: &Options) -> Result<Vec<&'static Spec>> {
    for id in &opts.rows {
        if !ROWS.iter().any(|s| s.id == id) {
            bail!("unknown row {id:?} in --rows (rows: {})", row_ids());
        }
    }
    Ok(ROWS
        .iter()
        .filter(|s| opts.rows.is_empty() || opts.rows.iter().any(|r| r == s.id))
        .filter(|s| !(opts.skip_copy && s.group == Group::Copy))
        .filter(|s| !(opts.skip_data && s.group == Group::Data))
        .collect())
}

/// Runs the selected rows in a fresh sub-directory of `dir` and removes it afterwards.
/// Progress goes to stderr, one line per row.
pub fn run(dir: &Path, opts: &Options) -> Result<Report> {
    if opts.files == 0 {
        bail!("--files must be at least 1");
    }
    if opts.data_mib == 0 {
        bail!("--data-mib must be at least 1");
    }
    let specs = selected(opts)?;
    let salt = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let bench_dir = BenchDir::create(dir, salt)?;
    let mut ws = Workspace {
        root: bench_dir.path.clone(),
        opts: opts.clone(),
        salt,
        small_files: Vec::new(),
        dirs: Vec::new(),
        big_file: None,
    };
    let mut rows = Vec::new();
    for spec in specs {
        eprintln!("cairn bench: {} ({})", spec.label, spec.id);
        let m = (spec.run)(&mut ws).with_context(|| format!("row {}", spec.id))?;
        rows.push(Row {
            id: spec.id.to_owned(),
            label: spec.label.to_owned(),
            value: m.value,
            unit: spec.unit.to_owned(),
            count: m.count,
            note: m.note,
        });
    }
    bench_dir.remove()?;
    Ok(Report {
        dir: dir.display().to_string(),
        files: opts.files as u64,
        data_mib: opts.data_mib,
        rows,
    })
}

/// Runs `f` and returns its result with the seconds it took.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let start = Instant::now();
    let t = f()?;
    Ok((t, start.elapsed().as_secs_f64()))
}

/// Closes `file` and reports the error `close(2)` returns, which dropping a `File` would
/// ignore: on a Cairn mount the close of a written file is where its data is committed.
fn close(file: File, path: &Path) -> Result<()> {
    nix::unistd::close(file.into_raw_fd()).with_context(|| format!("close {}", path.display()))
}

/// Fills `buf` with pseudo-random bytes from `seed` (splitmix64): file contents that neither
/// compress nor deduplicate, made without a crate.
fn fill_random(buf: &mut [u8], seed: u64) {
    let mut state = seed;
    for word in buf.chunks_mut(8) {
        let r = splitmix64(&mut state).to_le_bytes();
        word.copy_from_slice(&r[..word.len()]);
    }
}

/// One step of splitmix64, the small generator behind [`fill_random`] and the random offsets.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes `tag` and the run's salt into the first 16 bytes of `buf`, so that every file (and
/// every MiB of the big files) has content of its own for the cost of one random buffer.
fn stamp(buf: &mut [u8], salt: u64, tag: u64) {
    buf[..8].copy_from_slice(&salt.to_le_bytes());
    buf[8..16].copy_from_slice(&tag.to_le_bytes());
}

#[cfg(test)]
mod tests;
