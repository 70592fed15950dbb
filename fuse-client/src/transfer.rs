//! `cairn put`, `cairn get` and `cairn uploads list|abort`: resumable copies of whole files
//! between a local disk and the cluster, without a mount.
//!
//! ## `cairn put <local> <remote>`
//! The file is cut into [`CHUNK_SIZE`] slots. Each slot is read and stored on its replicas
//! ([`writer::upload_chunk`]: placement, parallel puts, retries), a few at a time
//! ([`PARALLEL`] chunks in flight, so memory stays bounded), and recorded at once in an *upload
//! session* of the metadata cluster (`RecordUpload`, batched while the recorder is busy). A
//! recorded chunk is protected from GC by the session, and the session outlives this process.
//! When every slot is recorded, `CommitUpload` gives the file at `<remote>` exactly those slots
//! and the local size, mode and mtime, atomically: nobody ever sees a partial file.
//!
//! The session's label names the source (`put <canonical path> size=<n> mtime=<ns> -> <remote>`).
//! A later run of the same command finds its session by label and target (`ListUploads`),
//! reads the recorded slots (`GetUpload`) and skips every local chunk whose hash matches the
//! recorded one (not even `PrepareWrite` is sent for it): only the missing chunks travel.
//!
//! **Versions.** The session is based on the version `<remote>` had when the put began (0: no
//! file; the commit then refuses to replace a file created meanwhile). If `<remote>` changed
//! while uploading, the commit fails (`conflict`) and the command says so; the session is kept,
//! not aborted: a rerun sees that the target moved past the session's base and opens a new
//! session on the new version. Its chunks are then still held by the old session, so
//! `PrepareWrite` answers them as stored and nothing is sent twice; the old session is aborted
//! once the new one commits. The same happens when the source changed between runs (new size or
//! mtime, so a new label): unchanged chunks are not sent again, and the stale session goes after
//! the commit.
//!
//! **Interruption.** Ctrl-C or SIGTERM stops the copy, records the chunks already stored and
//! leaves the session for the next run (exit status 130); `kill -9` loses at most the chunks in
//! flight.
//!
//! ## `cairn get <remote> <local>`
//! Reads one version's chunk list (`GetChunks`) and writes each slot into `<local>.cairn-part`,
//! fetching each chunk whole and verifying it against its id (the read path's replica failover
//! and checks, [`reader::fetch_chunk`]). At the end the part file is cut to size, fsynced,
//! renamed to `<local>` and the directory fsynced. A rerun after an interruption keeps every
//! slot of the part file whose bytes already hash to the chunk id (when the chunk is stored
//! exactly as the file uses it, `len == stored_len`) and fetches the others — also when the
//! remote file changed in between: only chunks that match are kept.
//!
//! ## `cairn uploads list [--json]`, `cairn uploads abort <id>`
//! The upload sessions the cluster holds (from `cairn put` and from mounts), and dropping one:
//! its chunks become garbage unless something else references them.
use crate::data::reader::{self, StoredChunk};
use crate::data::writer::{self, Uploaded};
use crate::data::DataPlane;
use crate::errno::Errno;
use crate::status::human;
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use cairn_common::{ChunkId, ErrorKind, MetaClient, CHUNK_SIZE, ROOT_INO};
use cairn_proto as pb;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::collections::HashMap;
use std::ffi::OsString;
use std::future::Future;
use std::io::IsTerminal;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::Status;

/// Chunks read, hashed and stored (put) or fetched and written (get) at once: bounds memory to
/// about `PARALLEL` × 4 MiB.
pub const PARALLEL: usize = 6;
/// Suffix of the partial local file `cairn get` writes into.
pub const PART_SUFFIX: &str = ".cairn-part";
/// Most slot updates in one `RecordUpload`.
const MAX_RECORD_BATCH: usize = 64;
/// How long an interrupted put waits for its last chunks to be recorded.
const FLUSH_ON_STOP: Duration = Duration::from_secs(5);
const CHUNK: u64 = CHUNK_SIZE as u64;

/// The command was stopped by SIGINT/SIGTERM (exit status 130).
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

// ---------------------------------------------------------------------------------------------
// Entry points for main.rs
// ---------------------------------------------------------------------------------------------

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

/// `cairn put`.
pub fn put_main(meta: Vec<String>, local: PathBuf, remote: String, quiet: bool) -> ExitCode {
    match run("put", put(meta, &local, &remote, quiet, stop_signal())) {
        Ok(s) => {
            println!("{}", s.line());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `cairn get`.
pub fn get_main(meta: Vec<String>, remote: String, local: PathBuf, quiet: bool) -> ExitCode {
    match run("get", get(meta, &remote, &local, quiet, stop_signal())) {
        Ok(s) => {
            println!("{}", s.line());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `cairn uploads list [--json]`.
pub fn uploads_list_main(meta: Vec<String>, json: bool) -> ExitCode {
    let rows = match run("uploads list", list(meta)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if json {
        match serde_json::to_string_pretty(&rows) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("cairn uploads list: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", table(&rows));
    }
    ExitCode::SUCCESS
}

/// `cairn uploads abort <id>`.
pub fn uploads_abort_main(meta: Vec<String>, id: u64) -> ExitCode {
    match run("uploads abort", abort(meta, id)) {
        Ok(()) => {
            println!("upload {id} aborted; its chunks become garbage unless a file uses them");
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

fn meta_client(addrs: Vec<String>) -> anyhow::Result<MetaClient> {
    anyhow::ensure!(!addrs.is_empty(), "no meta server addresses given (--meta)");
    Ok(MetaClient::new(addrs))
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

/// `Lookup`, with "no such name" as `None`.
async fn lookup(meta: &MetaClient, parent: u64, name: &[u8]) -> Result<Option<pb::Attr>, Status> {
    let req = pb::LookupRequest {
        parent,
        name: name.to_vec(),
    };
    match meta
        .call(|mut c| {
            let r = req.clone();
            async move { c.lookup(r).await }
        })
        .await
    {
        Ok(reply) => Ok(reply.attr),
        Err(s) if ErrorKind::from_status(&s) == ErrorKind::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

fn is_dir(a: &pb::Attr) -> bool {
    a.kind == pb::FileKind::Directory as i32
}

fn is_regular(a: &pb::Attr) -> bool {
    a.kind == pb::FileKind::Regular as i32
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
async fn resolve(meta: &MetaClient, comps: &[Vec<u8>]) -> Result<pb::Attr, Unresolved> {
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

fn progress_bar(len: u64, quiet: bool, what: String) -> ProgressBar {
    let target = if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what);
    pb
}

/// A line for the user on stderr, above the progress bar if one is shown.
fn note(pb: &ProgressBar, cmd: &str, msg: &str) {
    if pb.is_hidden() {
        eprintln!("cairn {cmd}: {msg}");
    } else {
        pb.println(format!("cairn {cmd}: {msg}"));
    }
}

fn rate(bytes: u64, took: Duration) -> String {
    let s = took.as_secs_f64().max(1e-3);
    format!("{}/s", human((bytes as f64 / s) as u64))
}

fn unix_ns(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn unix_ms(t: Option<&pb::Timestamp>) -> u64 {
    t.map(|t| (t.secs.max(0) as u64) * 1000 + u64::from(t.nanos) / 1_000_000)
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Bytes of slot `slot` in a file of `size` bytes.
fn slot_len(slot: u64, size: u64) -> usize {
    size.saturating_sub(slot * CHUNK).min(CHUNK) as usize
}

// ---------------------------------------------------------------------------------------------
// put
// ---------------------------------------------------------------------------------------------

/// What a finished `cairn put` did.
#[derive(Debug, Clone)]
pub struct PutSummary {
    pub remote: String,
    pub size: u64,
    /// Bytes of chunks this run stored on at least one chunk server.
    pub sent: u64,
    /// Bytes of chunks already recorded in the resumed upload (not sent again).
    pub resumed: u64,
    /// Bytes of chunks the cluster already held (content addressing; nothing sent).
    pub deduplicated: u64,
    pub upload: u64,
    pub version: u64,
    pub took: Duration,
}

impl PutSummary {
    pub fn line(&self) -> String {
        format!(
            "put {}: {} in {:.1} s ({}); sent {} bytes, resumed {} bytes already uploaded, \
             {} bytes already stored in the cluster (upload {}, version {})",
            self.remote,
            human(self.size),
            self.took.as_secs_f64(),
            rate(self.size, self.took),
            self.sent,
            self.resumed,
            self.deduplicated,
            self.upload,
            self.version
        )
    }
}

/// The target of a put: `name` in directory `parent`, and the file there now (if any).
struct Target {
    parent: u64,
    name: Vec<u8>,
    path: String,
    existing: Option<pb::Attr>,
}

/// Resolves where `cairn put <local> <remote>` writes: `<remote>` itself, or
/// `<remote>/<local's file name>` when `<remote>` is a directory (or ends with `/`).
async fn put_target(meta: &MetaClient, remote: &str, local: &Path) -> anyhow::Result<Target> {
    let mut comps = split_remote(remote)?;
    let local_name = || -> anyhow::Result<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let n = local
            .file_name()
            .ok_or_else(|| anyhow!("{}: no file name", local.display()))?;
        Ok(n.as_bytes().to_vec())
    };
    if remote.ends_with('/') || comps.is_empty() {
        comps.push(local_name()?);
    }
    let Some((name, parent_comps)) = comps.split_last() else {
        bail!("{remote}: no file name");
    };
    let parent_path = display_path(parent_comps);
    let parent = resolve(meta, parent_comps).await.map_err(|e| match e {
        Unresolved::Missing(p) => anyhow!("{remote}: parent directory {p} does not exist"),
        Unresolved::Failed(e) => e.context(format!("{remote}: parent directory {parent_path}")),
    })?;
    anyhow::ensure!(
        is_dir(&parent),
        "{remote}: {parent_path} is not a directory"
    );
    let mut t = Target {
        parent: parent.ino,
        name: name.clone(),
        path: display_path(&comps),
        existing: lookup(meta, parent.ino, name)
            .await
            .map_err(|s| meta_error(&format!("lookup of {}", display_path(&comps)), &s))?,
    };
    if let Some(dir) = t.existing.filter(is_dir) {
        // `cairn put f /dir` puts /dir/f, like cp.
        let name = local_name()?;
        comps.push(name.clone());
        t = Target {
            parent: dir.ino,
            path: display_path(&comps),
            existing: lookup(meta, dir.ino, &name)
                .await
                .map_err(|s| meta_error(&format!("lookup of {}", display_path(&comps)), &s))?,
            name,
        };
    }
    if let Some(a) = &t.existing {
        anyhow::ensure!(
            is_regular(a),
            "{}: exists and is not a regular file",
            t.path
        );
    }
    Ok(t)
}

/// What happened to one slot of a put.
enum PutDone {
    /// Already recorded in the resumed upload with the same content.
    Resumed(u64),
    Stored {
        slot: u64,
        len: u64,
        up: Uploaded,
    },
}

fn chunk_error(slot: u64, e: Errno) -> anyhow::Error {
    if e.0 == libc::ENOSPC {
        anyhow!(
            "cluster is full: no chunk server has room for chunk {slot}; free space or add \
             chunk servers, then run the same command again to resume"
        )
    } else {
        anyhow!(
            "storing chunk {slot} failed: {e}; run the same command again to resume (the chunks \
             stored so far are kept)"
        )
    }
}

/// Records stored chunks in `upload` as they arrive, batching what queued up meanwhile.
async fn record_loop(
    meta: MetaClient,
    upload: u64,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<pb::SlotUpdate>,
) -> anyhow::Result<()> {
    while let Some(first) = rx.recv().await {
        let mut updates = vec![first];
        while updates.len() < MAX_RECORD_BATCH {
            match rx.try_recv() {
                Ok(u) => updates.push(u),
                Err(_) => break,
            }
        }
        let req = pb::RecordUploadRequest { upload, updates };
        meta.call(|mut c| {
            let r = req.clone();
            async move { c.record_upload(r).await }
        })
        .await
        .map_err(|s| {
            if ErrorKind::from_status(&s) == ErrorKind::NotFound {
                anyhow!(
                    "upload {upload} no longer exists (aborted, or expired after being idle); \
                     run the same command again to start over"
                )
            } else {
                meta_error(&format!("recording chunks in upload {upload}"), &s)
            }
        })?;
    }
    Ok(())
}

/// Every upload session; `with_paths` also resolves their targets' paths (a scan of the whole
/// namespace on the leader: only for showing them to a person).
async fn list_uploads(meta: &MetaClient, with_paths: bool) -> anyhow::Result<Vec<pb::UploadInfo>> {
    Ok(meta
        .call(|mut c| async move { c.list_uploads(pb::ListUploadsRequest { with_paths }).await })
        .await
        .map_err(|s| meta_error("listing uploads", &s))?
        .uploads)
}

async fn abort_upload(meta: &MetaClient, upload: u64) -> Result<(), Status> {
    meta.call(|mut c| async move { c.abort_upload(pb::AbortUploadRequest { upload }).await })
        .await
        .map(|_| ())
}

/// `cairn put <local> <remote>`: see the module documentation. `stop` interrupts it.
pub async fn put(
    addrs: Vec<String>,
    local: &Path,
    remote: &str,
    quiet: bool,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<PutSummary> {
    let t0 = Instant::now();
    let md = match std::fs::metadata(local) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{}: No such file", local.display())
        }
        Err(e) => return Err(e).with_context(|| local.display().to_string()),
    };
    anyhow::ensure!(md.is_file(), "{}: not a regular file", local.display());
    let file = Arc::new(
        std::fs::File::open(local).with_context(|| format!("{}: cannot open", local.display()))?,
    );
    let canon = std::fs::canonicalize(local).with_context(|| local.display().to_string())?;
    let size = md.len();
    let mtime = md.modified().unwrap_or(UNIX_EPOCH);

    let meta = meta_client(addrs)?;
    let target = put_target(&meta, remote, local).await?;
    let current = target.existing.as_ref().map(|a| a.version).unwrap_or(0);
    let label = format!(
        "put {} size={size} mtime={} -> {}",
        canon.display(),
        unix_ns(mtime),
        target.path
    );
    let same_source = format!("put {} size=", canon.display());

    // Ours: sessions of this source for this target. Resume the one with this exact label (same
    // size and mtime) based on the target's current version.
    let ours: Vec<pb::UploadInfo> = list_uploads(&meta, false)
        .await?
        .into_iter()
        .filter(|u| {
            u.ino == 0
                && u.parent == target.parent
                && u.name == target.name
                && u.label.starts_with(&same_source)
        })
        .collect();
    let resumable = ours
        .iter()
        .filter(|u| u.label == label && u.base_version == current)
        .max_by_key(|u| unix_ms(u.touched.as_ref()))
        .cloned();
    let mut notes = Vec::new();
    let (upload, recorded) = match resumable {
        Some(u) => {
            let reply = meta
                .call(|mut c| async move {
                    c.get_upload(pb::GetUploadRequest { upload: u.upload })
                        .await
                })
                .await
                .map_err(|s| meta_error(&format!("reading upload {}", u.upload), &s))?;
            let mut recorded: HashMap<u64, (ChunkId, u32)> = HashMap::new();
            for s in reply.slots {
                let Some(c) = s.chunk else { continue };
                if let Ok(id) = ChunkId::from_bytes(&c.id) {
                    if c.len == c.stored_len {
                        recorded.insert(s.index, (id, c.len));
                    }
                }
            }
            notes.push(format!(
                "resuming upload {} ({} chunks already stored)",
                u.upload,
                recorded.len()
            ));
            (u.upload, recorded)
        }
        None => {
            if ours.iter().any(|u| u.label == label) {
                notes.push(format!(
                    "{} changed since the interrupted upload began; uploading over its current \
                     version (chunks already stored are not sent again)",
                    target.path
                ));
            } else if !ours.is_empty() {
                notes.push(format!(
                    "{} changed since the interrupted upload of it began; starting a new upload \
                     (unchanged chunks are not sent again)",
                    local.display()
                ));
            }
            let req = pb::OpenUploadRequest {
                ino: 0,
                parent: target.parent,
                name: target.name.clone(),
                base_version: current,
                label: label.clone(),
                host: hostname(),
            };
            let reply = meta
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.open_upload(r).await }
                })
                .await
                .map_err(|s| meta_error(&format!("opening an upload for {}", target.path), &s))?;
            (reply.upload, HashMap::new())
        }
    };
    let base_version = ours
        .iter()
        .find(|u| u.upload == upload)
        .map(|u| u.base_version)
        .unwrap_or(current);

    let pb = progress_bar(size, quiet, format!("put {}", target.path));
    for n in notes {
        note(&pb, "put", &n);
    }
    let dp = DataPlane::new(meta.clone());
    let recorded = Arc::new(recorded);
    let nslots = size.div_ceil(CHUNK);
    let mut jobs = futures::stream::iter(0..nslots)
        .map(|slot| {
            let (dp, file, recorded) = (dp.clone(), file.clone(), recorded.clone());
            async move {
                let len = slot_len(slot, size);
                let want = recorded.get(&slot).copied();
                let (data, id) = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, slot * CHUNK)?;
                    let id = want.map(|_| ChunkId::of(&buf));
                    Ok::<_, std::io::Error>((Bytes::from(buf), id))
                })
                .await
                .map_err(|e| anyhow!("reading chunk {slot}: {e}"))?
                .map_err(|e| {
                    anyhow!(
                        "reading chunk {slot} of {}: {e} (did the file change?)",
                        local.display()
                    )
                })?;
                if let (Some((rid, rlen)), Some(id)) = (want, id) {
                    if rid == id && rlen as usize == len {
                        return Ok(PutDone::Resumed(len as u64));
                    }
                }
                let up = writer::upload_chunk(&dp, 0, slot, data)
                    .await
                    .map_err(|e| chunk_error(slot, e))?;
                Ok::<_, anyhow::Error>(PutDone::Stored {
                    slot,
                    len: len as u64,
                    up,
                })
            }
        })
        .buffer_unordered(PARALLEL);

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let recorder = tokio::spawn(record_loop(meta.clone(), upload, rx));
    let (mut sent, mut resumed, mut dedup) = (0u64, 0u64, 0u64);
    let mut stopped = false;
    let mut stop = std::pin::pin!(stop);
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            biased;
            _ = &mut stop => {
                stopped = true;
                break Ok(());
            }
            next = jobs.next() => match next {
                None => break Ok(()),
                Some(Err(e)) => break Err(e),
                Some(Ok(PutDone::Resumed(n))) => {
                    resumed += n;
                    pb.inc(n);
                }
                Some(Ok(PutDone::Stored { slot, len, up })) => {
                    if up.replicas.is_empty() {
                        dedup += len;
                    } else {
                        sent += len;
                    }
                    pb.inc(len);
                    if tx.send(up.to_update(slot)).is_err() {
                        // The recorder failed: its error is reported below.
                        break Ok(());
                    }
                }
            }
        }
    };
    drop(jobs);
    drop(tx);
    let recorded_result = if stopped || outcome.is_err() {
        match tokio::time::timeout(FLUSH_ON_STOP, recorder).await {
            Ok(r) => r.map_err(|e| anyhow!("recorder: {e}")).and_then(|r| r),
            Err(_) => Err(anyhow!("the last chunks could not be recorded in time")),
        }
    } else {
        recorder
            .await
            .map_err(|e| anyhow!("recorder: {e}"))
            .and_then(|r| r)
    };
    if stopped {
        pb.abandon();
        let saved = match recorded_result {
            Ok(()) => "the chunks stored so far are recorded".to_owned(),
            Err(e) => format!("some chunks in flight may be sent again ({e:#})"),
        };
        return Err(anyhow!(Interrupted(format!(
            "interrupted; {saved}: run the same command again to resume upload {upload}"
        ))));
    }
    if let Err(e) = outcome {
        pb.abandon();
        return Err(e);
    }
    if let Err(e) = recorded_result {
        pb.abandon();
        return Err(e);
    }

    // The source must not have changed while it was read.
    let now = std::fs::metadata(local).with_context(|| local.display().to_string())?;
    if now.len() != size || now.modified().ok() != md.modified().ok() {
        pb.abandon();
        bail!(
            "{} changed while it was being read; run the command again (chunks already stored \
             are not sent again)",
            local.display()
        );
    }

    let req = pb::CommitUploadRequest {
        upload,
        size,
        mtime: Some(cairn_common::time::to_wire(mtime)),
        mode: md.permissions().mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
    };
    let committed = meta
        .call(|mut c| async move { c.commit_upload(req).await })
        .await;
    let attr = match committed {
        Ok(reply) => reply.attr.unwrap_or_default(),
        Err(s) => {
            pb.abandon();
            return Err(match ErrorKind::from_status(&s) {
                ErrorKind::Conflict | ErrorKind::AlreadyExists if base_version == 0 => anyhow!(
                    "{} was created by another writer while uploading (the upload expected no \
                     file there); run again to upload over it",
                    target.path
                ),
                ErrorKind::Conflict | ErrorKind::AlreadyExists => anyhow!(
                    "{} changed while uploading (based on version {base_version}); run again to \
                     upload over the new version",
                    target.path
                ),
                ErrorKind::NoSpace => anyhow!("cluster is full: {}", s.message()),
                _ => meta_error(&format!("committing {}", target.path), &s),
            });
        }
    };
    pb.finish_and_clear();

    // Sessions this one replaces: of the same source and target, older or of a changed source.
    for u in ours.iter().filter(|u| u.upload != upload) {
        if let Err(s) = abort_upload(&meta, u.upload).await {
            if ErrorKind::from_status(&s) != ErrorKind::NotFound {
                eprintln!(
                    "cairn put: note: could not abort the stale upload {}: {}",
                    u.upload,
                    s.message()
                );
            }
        }
    }
    Ok(PutSummary {
        remote: target.path,
        size,
        sent,
        resumed,
        deduplicated: dedup,
        upload,
        version: attr.version,
        took: t0.elapsed(),
    })
}

// ---------------------------------------------------------------------------------------------
// get
// ---------------------------------------------------------------------------------------------

/// What a finished `cairn get` did.
#[derive(Debug, Clone)]
pub struct GetSummary {
    pub remote: String,
    pub local: PathBuf,
    pub size: u64,
    /// File bytes written from chunks fetched from the cluster.
    pub fetched: u64,
    /// File bytes kept from the part file of an earlier run (hash verified).
    pub reused: u64,
    /// File bytes of holes (zeros, nothing fetched).
    pub holes: u64,
    pub version: u64,
    pub took: Duration,
}

impl GetSummary {
    pub fn line(&self) -> String {
        format!(
            "get {} -> {}: {} in {:.1} s ({}); fetched {} bytes, reused {} bytes, {} bytes of \
             holes (version {})",
            self.remote,
            self.local.display(),
            human(self.size),
            self.took.as_secs_f64(),
            rate(self.size, self.took),
            self.fetched,
            self.reused,
            self.holes,
            self.version
        )
    }
}

/// `<local>.cairn-part`.
pub fn part_path(local: &Path) -> PathBuf {
    let mut s: OsString = local.as_os_str().to_owned();
    s.push(PART_SUFFIX);
    PathBuf::from(s)
}

enum GetDone {
    Fetched(u64),
    Reused(u64),
    Hole(u64),
}

/// True when `buf` is the slot's content: `chunk`'s bytes followed by zeros.
fn slot_matches(buf: &[u8], chunk: &StoredChunk) -> bool {
    let keep = chunk.len as usize;
    keep <= buf.len()
        && ChunkId::of(&buf[..keep]) == chunk.id
        && buf[keep..].iter().all(|&b| b == 0)
}

/// `cairn get <remote> <local>`: see the module documentation. `stop` interrupts it.
pub async fn get(
    addrs: Vec<String>,
    remote: &str,
    local: &Path,
    quiet: bool,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<GetSummary> {
    let t0 = Instant::now();
    let meta = meta_client(addrs)?;
    let comps = split_remote(remote)?;
    let path = display_path(&comps);
    let attr = resolve(&meta, &comps).await.map_err(|e| match e {
        Unresolved::Missing(_) => anyhow!("{path}: No such file in the cluster"),
        Unresolved::Failed(e) => e,
    })?;
    anyhow::ensure!(is_regular(&attr), "{path}: not a regular file");
    let into_dir = local.as_os_str().as_encoded_bytes().ends_with(b"/");
    anyhow::ensure!(
        !into_dir || local.is_dir(),
        "{}: no such local directory",
        local.display()
    );
    if let Some(dir) = local.parent().filter(|d| !d.as_os_str().is_empty()) {
        anyhow::ensure!(
            dir.is_dir(),
            "{}: local directory {} does not exist",
            local.display(),
            dir.display()
        );
    }
    let local = if local.is_dir() {
        local.join(
            comps
                .last()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default(),
        )
    } else {
        local.to_owned()
    };
    let dp = DataPlane::new(meta.clone());
    let base = writer::load_base(&dp, attr.ino)
        .await
        .map_err(|e| anyhow!("reading the chunk list of {path}: {e}"))?;
    let size = base.size;
    let part = part_path(&local);
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .with_context(|| format!("{}: cannot open", part.display()))?,
    );
    let part_len = file.metadata()?.len();
    let slots = Arc::new(base.slots.clone());

    let pb = progress_bar(size, quiet, format!("get {path}"));
    if part_len > 0 {
        note(
            &pb,
            "get",
            &format!(
                "resuming into {} ({} there; each chunk is checked against its hash)",
                part.display(),
                human(part_len)
            ),
        );
    }
    let nslots = size.div_ceil(CHUNK);
    let mut jobs = futures::stream::iter(0..nslots)
        .map(|slot| {
            let (dp, file, slots) = (dp.clone(), file.clone(), slots.clone());
            async move {
                let start = slot * CHUNK;
                let len = slot_len(slot, size);
                let Some(chunk) = slots.get(&slot).cloned() else {
                    // A hole: zeros (kept if already there).
                    let f = file.clone();
                    tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
                        if start + len as u64 <= part_len {
                            let mut buf = vec![0u8; len];
                            f.read_exact_at(&mut buf, start)?;
                            if buf.iter().all(|&b| b == 0) {
                                return Ok(true);
                            }
                        }
                        f.write_all_at(&vec![0u8; len], start)?;
                        Ok(false)
                    })
                    .await??;
                    return Ok::<_, anyhow::Error>(GetDone::Hole(len as u64));
                };
                let reusable = chunk.len == chunk.stored_len
                    && chunk.len as usize <= len
                    && start + len as u64 <= part_len;
                if reusable {
                    let (f, c) = (file.clone(), chunk.clone());
                    let ok = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
                        let mut buf = vec![0u8; len];
                        f.read_exact_at(&mut buf, start)?;
                        Ok(slot_matches(&buf, &c))
                    })
                    .await??;
                    if ok {
                        return Ok(GetDone::Reused(len as u64));
                    }
                }
                let data = reader::fetch_chunk(&dp, &chunk).await.map_err(|e| {
                    anyhow!(
                        "chunk {slot} could not be read: {e} (no replica returned intact \
                         data; if the file was overwritten meanwhile, run again)"
                    )
                })?;
                let keep = (chunk.len as usize).min(len).min(data.len());
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    file.write_all_at(&data[..keep], start)?;
                    if keep < len {
                        file.write_all_at(&vec![0u8; len - keep], start + keep as u64)?;
                    }
                    Ok(())
                })
                .await??;
                Ok(GetDone::Fetched(len as u64))
            }
        })
        .buffer_unordered(PARALLEL);

    let (mut fetched, mut reused, mut holes) = (0u64, 0u64, 0u64);
    let mut stop = std::pin::pin!(stop);
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            biased;
            _ = &mut stop => break Err(anyhow!(Interrupted(format!(
                "interrupted; run the same command again to resume (the chunks already in {} \
                 are kept)",
                part.display()
            )))),
            next = jobs.next() => match next {
                None => break Ok(()),
                Some(Err(e)) => break Err(e.context(format!("get {path}"))),
                Some(Ok(d)) => {
                    let n = match d {
                        GetDone::Fetched(n) => { fetched += n; n }
                        GetDone::Reused(n) => { reused += n; n }
                        GetDone::Hole(n) => { holes += n; n }
                    };
                    pb.inc(n);
                }
            }
        }
    };
    drop(jobs);
    if let Err(e) = outcome {
        pb.abandon();
        return Err(e);
    }

    // Exactly `size` bytes, durable, then renamed into place and the directory synced.
    let mtime = cairn_common::time::from_wire(&attr.mtime.unwrap_or_default());
    let f = file.clone();
    let part2 = part.clone();
    let local2 = local.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        f.set_len(size)?;
        let _ = f.set_modified(mtime);
        f.sync_all()?;
        std::fs::rename(&part2, &local2)
            .with_context(|| format!("renaming {} to {}", part2.display(), local2.display()))?;
        let dir = match local2.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", dir.display()))?;
        Ok(())
    })
    .await??;
    pb.finish_and_clear();
    Ok(GetSummary {
        remote: path,
        local,
        size,
        fetched,
        reused,
        holes,
        version: base.version,
        took: t0.elapsed(),
    })
}

// ---------------------------------------------------------------------------------------------
// uploads list | abort
// ---------------------------------------------------------------------------------------------

/// One upload session as `cairn uploads list --json` prints it.
#[derive(Debug, Serialize, PartialEq)]
pub struct UploadRow {
    pub id: u64,
    /// The target's path when it resolves, else `ino <n>` or `<parent ino>/<name>`.
    pub target: String,
    pub path: String,
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub base_version: u64,
    pub label: String,
    pub host: String,
    pub created_unix_ms: u64,
    pub touched_unix_ms: u64,
    /// Seconds since the upload was opened.
    pub age_secs: u64,
    /// Seconds since a chunk was last recorded (expiry counts from here).
    pub idle_secs: u64,
    pub slots: u64,
    pub bytes: u64,
}

impl UploadRow {
    pub fn from_info(u: pb::UploadInfo, now_ms: u64) -> UploadRow {
        let name = String::from_utf8_lossy(&u.name).into_owned();
        let target = if !u.path.is_empty() {
            u.path.clone()
        } else if u.ino != 0 {
            format!("ino {}", u.ino)
        } else {
            format!("{}/{name}", u.parent)
        };
        let created = unix_ms(u.created.as_ref());
        let touched = unix_ms(u.touched.as_ref()).max(created);
        UploadRow {
            id: u.upload,
            target,
            path: u.path,
            ino: u.ino,
            parent: u.parent,
            name,
            base_version: u.base_version,
            label: u.label,
            host: u.host,
            created_unix_ms: created,
            touched_unix_ms: touched,
            age_secs: now_ms.saturating_sub(created) / 1000,
            idle_secs: now_ms.saturating_sub(touched) / 1000,
            slots: u.slots,
            bytes: u.bytes,
        }
    }
}

/// `1h02m`, `3m05s`, `42s`.
pub fn human_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

pub fn table(rows: &[UploadRow]) -> String {
    if rows.is_empty() {
        return "no uploads in progress\n".into();
    }
    let tw = rows
        .iter()
        .map(|r| r.target.chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let hw = rows
        .iter()
        .map(|r| r.host.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = format!(
        "{:>6}  {:<tw$}  {:>6}  {:>10}  {:>7}  {:>7}  {:<hw$}  LABEL\n",
        "ID", "TARGET", "SLOTS", "BYTES", "AGE", "IDLE", "HOST"
    );
    for r in rows {
        out.push_str(&format!(
            "{:>6}  {:<tw$}  {:>6}  {:>10}  {:>7}  {:>7}  {:<hw$}  {}\n",
            r.id,
            r.target,
            r.slots,
            human(r.bytes),
            human_secs(r.age_secs),
            human_secs(r.idle_secs),
            r.host,
            r.label
        ));
    }
    out
}

/// `cairn uploads list`: every upload session, oldest first.
pub async fn list(addrs: Vec<String>) -> anyhow::Result<Vec<UploadRow>> {
    let meta = meta_client(addrs)?;
    let now = unix_ms(Some(&cairn_common::time::now()));
    let mut rows: Vec<UploadRow> = list_uploads(&meta, true)
        .await?
        .into_iter()
        .map(|u| UploadRow::from_info(u, now))
        .collect();
    rows.sort_by_key(|r| (r.created_unix_ms, r.id));
    Ok(rows)
}

/// `cairn uploads abort <id>`.
pub async fn abort(addrs: Vec<String>, id: u64) -> anyhow::Result<()> {
    let meta = meta_client(addrs)?;
    abort_upload(&meta, id).await.map_err(|s| {
        if ErrorKind::from_status(&s) == ErrorKind::NotFound {
            anyhow!("no upload {id} (already committed, aborted or expired)")
        } else {
            meta_error(&format!("aborting upload {id}"), &s)
        }
    })
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

    #[test]
    fn slots_cover_the_file_and_the_last_one_is_short() {
        assert_eq!(slot_len(0, 10), 10);
        assert_eq!(slot_len(0, 3 * CHUNK), CHUNK_SIZE);
        assert_eq!(slot_len(2, 2 * CHUNK + 5), 5);
        assert_eq!(slot_len(3, 2 * CHUNK + 5), 0);
    }

    #[test]
    fn a_part_slot_is_kept_only_if_it_holds_the_chunk_then_zeros() {
        let data = b"chunk bytes".to_vec();
        let chunk = StoredChunk {
            id: ChunkId::of(&data),
            len: data.len() as u32,
            stored_len: data.len() as u32,
            locations: Arc::from(Vec::new()),
        };
        let mut slot = data.clone();
        slot.extend_from_slice(&[0, 0, 0]);
        assert!(slot_matches(&slot, &chunk));
        assert!(slot_matches(&data, &chunk));
        let mut bad = slot.clone();
        bad[1] ^= 1;
        assert!(!slot_matches(&bad, &chunk));
        let mut tail = slot.clone();
        *tail.last_mut().unwrap() = 7;
        assert!(
            !slot_matches(&tail, &chunk),
            "bytes past the chunk are zeros"
        );
        assert!(!slot_matches(&data[..4], &chunk), "too short");
    }

    #[test]
    fn the_part_file_sits_next_to_the_target() {
        assert_eq!(
            part_path(Path::new("/tmp/x/big.iso")),
            PathBuf::from("/tmp/x/big.iso.cairn-part")
        );
    }

    #[test]
    fn upload_rows_name_their_target_and_ages() {
        let ts = |secs| pb::Timestamp { secs, nanos: 0 };
        let info = pb::UploadInfo {
            upload: 7,
            ino: 0,
            parent: 1,
            name: b"big".to_vec(),
            base_version: 0,
            label: "put /src size=1 mtime=2 -> /big".into(),
            host: "h".into(),
            created: Some(ts(1000)),
            touched: Some(ts(1090)),
            slots: 3,
            bytes: 3 * CHUNK,
            path: String::new(),
        };
        let r = UploadRow::from_info(info.clone(), 1_100_000);
        assert_eq!(r.target, "1/big");
        assert_eq!((r.age_secs, r.idle_secs), (100, 10));
        let r = UploadRow::from_info(
            pb::UploadInfo {
                path: "/big".into(),
                ..info
            },
            1_100_000,
        );
        assert_eq!(r.target, "/big");
        let t = table(&[r]);
        assert!(
            t.lines().nth(1).unwrap().contains("/big") && t.contains("12.0 MiB"),
            "{t}"
        );
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(185), "3m05s");
        assert_eq!(human_secs(3720), "1h02m");
    }
}
