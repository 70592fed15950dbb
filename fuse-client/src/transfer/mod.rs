//! `cairn put`, `cairn get` and `cairn uploads list|abort`: resumable copies of whole files and
//! trees between a local disk and the cluster, without a mount.
//!
//! - [`put`]: `cairn put <local> <remote>`, chunks stored and recorded in an upload session, the
//!   file committed whole at the end;
//! - [`get`]: `cairn get <remote> <local>`, verified chunks into a part file published durably;
//! - [`put_tree`], [`get_tree`]: `-r`, whole trees, several files at once, each file copied as
//!   above; [`tree`] holds what both share (where the tree lands, the run and its summary),
//!   [`walk`] the local and the remote walk, [`unchanged`] the content check that lets a rerun
//!   skip complete files;
//! - [`progress`]: the bars (one per file, or one per tree);
//! - [`uploads`]: `cairn uploads list [--json]` and `cairn uploads abort <id>`.
//!
//! This module holds their entry points for `main.rs` (runtime, exit status, interruption) and
//! what they share: resolving paths inside the file system, wording errors.
mod get;
mod get_tree;
mod progress;
mod put;
mod put_tree;
mod tree;
mod unchanged;
mod uploads;
mod walk;

pub use get::{get, part_path, GetSummary, PART_SUFFIX};
pub use get_tree::get_tree;
pub use put::{put, PutSummary};
pub use put_tree::put_tree;
pub use tree::TreeSummary;
pub use uploads::{abort, human_secs, list, table, UploadRow};

use crate::data::DataPlane;
use crate::meta::Meta;
use crate::status::human;
use anyhow::anyhow;
use cairn_common::time::from_wire;
use cairn_common::{ErrorKind, Kind, ROOT_INO};
use cairn_proto as pb;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tonic::Status;

/// Chunks read, hashed and stored (put) or fetched and written (get) at once for one file:
/// bounds memory to about `PARALLEL` × 4 MiB.
pub const PARALLEL: usize = 6;

/// Chunks in flight across all the files of a tree copy (`-r`), however many `--jobs`: memory
/// stays about `TREE_CHUNKS` × 4 MiB.
pub const TREE_CHUNKS: usize = 2 * PARALLEL;

/// Files copied at once by `-r` unless `--jobs` says otherwise.
pub const DEFAULT_JOBS: usize = 4;

/// What the file copies of one command share: the metadata client, the data plane (chunk
/// server connections, placement memory) and the budget of chunks in flight, which bounds
/// memory however many files are copied at once.
#[derive(Clone)]
struct Conn {
    meta: Meta,
    dp: Arc<DataPlane>,
    chunks: Arc<Semaphore>,
}

impl Conn {
    /// At most `chunks` chunks in memory at once.
    fn new(meta: Meta, chunks: usize) -> Conn {
        Conn {
            dp: DataPlane::new(meta.clone()),
            meta,
            chunks: Arc::new(Semaphore::new(chunks)),
        }
    }
}

/// How `cairn put` / `cairn get` were asked to copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOpts {
    /// No progress bars; errors only.
    pub quiet: bool,
    /// `-r`: a whole tree.
    pub recursive: bool,
    /// With `-r`: files copied at once.
    pub jobs: usize,
    /// With `-r`: the summary as JSON on stdout.
    pub json: bool,
    /// With `-r`, `-T`: the destination is the tree's root itself, never a directory to copy
    /// into.
    pub dest_is_root: bool,
}

/// The options of one tree copy.
#[derive(Debug, Clone, Copy)]
pub struct TreeOpts {
    pub quiet: bool,
    pub jobs: usize,
    /// `-T`: see [`tree::Dest::is_root`].
    pub dest_is_root: bool,
}

impl CopyOpts {
    fn tree(self) -> TreeOpts {
        TreeOpts {
            quiet: self.quiet,
            jobs: self.jobs.max(1),
            dest_is_root: self.dest_is_root,
        }
    }
}

/// The command was stopped by SIGINT/SIGTERM (exit status 130).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(pub String);

/// Runs one transfer command on a multi-threaded runtime; prints its error as
/// `cairn <cmd>: <error>` and maps it to an exit status (130 when interrupted, else 1).
fn run<T>(cmd: &str, f: impl Future<Output = anyhow::Result<T>>) -> Result<T, ExitCode> {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn {cmd}: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    rt.block_on(f).map_err(|e| {
        eprintln!("cairn {cmd}: {e:#}");
        if e.downcast_ref::<Interrupted>().is_some() {
            ExitCode::from(130)
        } else {
            ExitCode::FAILURE
        }
    })
}

/// `cairn put`, `cairn put -r`.
pub fn put_main(meta: Vec<String>, local: PathBuf, remote: String, o: CopyOpts) -> ExitCode {
    if o.recursive {
        let tree = put_tree(meta, &local, &remote, o.tree(), stop_signal());
        return tree_main("put", o.json, tree);
    }
    let done = run("put", put(meta, &local, &remote, o.quiet, stop_signal()));
    crate::out::clear_progress_bar();
    match done {
        Ok(s) => {
            crate::outln!("{}", s.line());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `cairn get`, `cairn get -r`.
pub fn get_main(meta: Vec<String>, remote: String, local: PathBuf, o: CopyOpts) -> ExitCode {
    if o.recursive {
        let tree = get_tree(meta, &remote, &local, o.tree(), stop_signal());
        return tree_main("get", o.json, tree);
    }
    let done = run("get", get(meta, &remote, &local, o.quiet, stop_signal()));
    crate::out::clear_progress_bar();
    match done {
        Ok(s) => {
            crate::outln!("{}", s.line());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// A tree copy: its summary on stdout (a line, or JSON), the failures again on stderr, and the
/// exit status: 0 when everything was copied, 1 when an entry failed, 130 when interrupted.
fn tree_main(
    cmd: &str,
    json: bool,
    f: impl Future<Output = anyhow::Result<TreeSummary>>,
) -> ExitCode {
    let done = run(cmd, f);
    crate::out::clear_progress_bar();
    let s = match done {
        Ok(s) => s,
        Err(code) => return code,
    };
    if json {
        if let Err(e) = crate::out::json(&s) {
            eprintln!("cairn {cmd}: {e}");
            return ExitCode::FAILURE;
        }
    } else {
        crate::outln!("{}", s.line());
    }
    for l in s.closing_lines() {
        eprintln!("{l}");
    }
    ExitCode::from(s.exit_code())
}

/// `cairn uploads list [--json]`.
pub fn uploads_list_main(meta: Vec<String>, json: bool) -> ExitCode {
    let rows = match run("uploads list", list(meta)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if json {
        if let Err(e) = crate::out::json(&rows) {
            eprintln!("cairn uploads list: {e}");
            return ExitCode::FAILURE;
        }
    } else {
        crate::out::print(&table(&rows));
    }
    ExitCode::SUCCESS
}

/// `cairn uploads abort <id>`.
pub fn uploads_abort_main(meta: Vec<String>, id: u64) -> ExitCode {
    match run("uploads abort", abort(meta, id)) {
        Ok(()) => {
            crate::outln!("upload {id} aborted; its chunks become garbage unless a file uses them");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Completes on the first SIGINT or SIGTERM.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

fn meta_client(addrs: Vec<String>) -> anyhow::Result<Meta> {
    anyhow::ensure!(!addrs.is_empty(), "no meta server addresses given (--meta)");
    Ok(Meta::new(addrs))
}

/// An error of a metadata call, worded for the user.
fn meta_error(what: &str, s: &Status) -> anyhow::Error {
    match ErrorKind::from_status(s) {
        ErrorKind::Unavailable => {
            anyhow!("{what}: cannot reach the metadata cluster: {}", s.message())
        }
        kind => anyhow!("{what}: {} ({kind})", s.message()),
    }
}

/// The components of an absolute path inside the file system (`/a/b/c` → `[a, b, c]`).
pub fn split_remote(remote: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    anyhow::ensure!(
        remote.starts_with('/'),
        "{remote}: the path inside the file system must be absolute (/dir/file)"
    );
    let mut out = Vec::new();
    for c in remote.split('/').filter(|c| !c.is_empty() && *c != ".") {
        anyhow::ensure!(c != "..", "{remote}: '..' is not allowed in the path");
        cairn_common::name::validate_name(c.as_bytes())
            .map_err(|k| anyhow!("{remote}: bad name {c:?} ({k})"))?;
        out.push(c.as_bytes().to_vec());
    }
    Ok(out)
}

/// `Lookup`, with "no such name" as `None`: also when `parent` itself no longer exists (a
/// stale handle: the directory was removed while the path was being resolved).
async fn lookup(meta: &Meta, parent: u64, name: &[u8]) -> Result<Option<pb::Attr>, Status> {
    match meta.lookup(parent, name).await {
        Ok(attr) => Ok(Some(attr)),
        Err(s)
            if matches!(
                ErrorKind::from_status(&s),
                ErrorKind::NotFound | ErrorKind::Stale
            ) =>
        {
            Ok(None)
        }
        Err(s) => Err(s),
    }
}

fn is_dir(a: &pb::Attr) -> bool {
    Kind::from_wire(a.kind) == Some(Kind::Directory)
}

fn is_regular(a: &pb::Attr) -> bool {
    Kind::from_wire(a.kind) == Some(Kind::Regular)
}

fn display_path(comps: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for c in comps {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(c));
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// Why a path did not resolve.
#[derive(Debug)]
enum Unresolved {
    /// This prefix of the path does not exist.
    Missing(String),
    Failed(anyhow::Error),
}

/// Resolves `comps` from the root; every component must exist. Returns the last attributes.
async fn resolve(meta: &Meta, comps: &[Vec<u8>]) -> Result<pb::Attr, Unresolved> {
    let mut attr = pb::Attr {
        ino: ROOT_INO,
        kind: pb::FileKind::Directory as i32,
        ..Default::default()
    };
    for (i, name) in comps.iter().enumerate() {
        if !is_dir(&attr) {
            return Err(Unresolved::Failed(anyhow!(
                "{}: not a directory",
                display_path(&comps[..i])
            )));
        }
        let here = display_path(&comps[..=i]);
        attr = lookup(meta, attr.ino, name)
            .await
            .map_err(|s| Unresolved::Failed(meta_error(&format!("lookup of {here}"), &s)))?
            .ok_or(Unresolved::Missing(here))?;
    }
    Ok(attr)
}

fn rate(bytes: u64, took: Duration) -> String {
    let s = took.as_secs_f64().max(1e-3);
    format!("{}/s", human((bytes as f64 / s) as u64))
}

/// Milliseconds since the Unix epoch of a wire time (0 for none, or before 1970).
fn unix_ms(t: Option<&pb::Timestamp>) -> u64 {
    t.map(from_wire)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Every upload session; `with_paths` also resolves their targets' paths (a scan of the whole
/// namespace on the leader: only for showing them to a person).
async fn list_uploads(meta: &Meta, with_paths: bool) -> anyhow::Result<Vec<pb::UploadInfo>> {
    meta.list_uploads(with_paths)
        .await
        .map_err(|s| meta_error("listing uploads", &s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_are_absolute_and_split_into_names() {
        assert_eq!(
            split_remote("/a//b/./c").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert!(split_remote("/").unwrap().is_empty());
        assert!(split_remote("a/b").is_err());
        assert!(split_remote("/a/../b").is_err());
        assert_eq!(display_path(&split_remote("/x/y/").unwrap()), "/x/y");
        assert_eq!(display_path(&[]), "/");
    }
}
