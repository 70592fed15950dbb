//! `cairn put <local> <remote>`: a resumable copy of a local file into the cluster.
//!
//! The file is cut into [`CHUNK_SIZE`] slots. Each slot is read and stored on its replicas
//! ([`upload::upload_chunk`]: placement, parallel puts, retries), a few at a time
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
use super::progress::{file_bar, Progress};
use super::{
    display_path, is_dir, is_regular, list_uploads, lookup, meta_client, meta_error, rate, resolve,
    split_remote, unix_ms, Conn, Interrupted, Unresolved, PARALLEL,
};
use crate::data::slots;
use crate::data::upload::{self, Uploaded};
use crate::errno::Errno;
use crate::meta::Meta;
use crate::status::human;
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use cairn_common::{ChunkId, ErrorKind, CHUNK_SIZE};
use cairn_proto as pb;
use futures::StreamExt;
use std::collections::HashMap;
use std::fs::Metadata;
use std::future::Future;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most slot updates in one `RecordUpload`.
const MAX_RECORD_BATCH: usize = 64;
/// How long an interrupted put waits for its last chunks to be recorded.
const FLUSH_ON_STOP: Duration = Duration::from_secs(5);
const CHUNK: u64 = CHUNK_SIZE as u64;

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
pub(super) struct Target {
    pub parent: u64,
    pub name: Vec<u8>,
    /// Its path inside the file system, for messages and the session's label.
    pub path: String,
    pub existing: Option<pb::Attr>,
}

/// Resolves where `cairn put <local> <remote>` writes: `<remote>` itself, or
/// `<remote>/<local's file name>` when `<remote>` is a directory (or ends with `/`).
async fn put_target(meta: &Meta, remote: &str, local: &Path) -> anyhow::Result<Target> {
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
    meta: Meta,
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
        meta.record_upload(upload, updates).await.map_err(|s| {
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

/// The source of a put: a regular file. A directory asks for `-r`.
fn source_metadata(local: &Path) -> anyhow::Result<Metadata> {
    let md = match std::fs::metadata(local) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{}: No such file", local.display())
        }
        Err(e) => return Err(e).with_context(|| local.display().to_string()),
    };
    anyhow::ensure!(
        !md.is_dir(),
        "{}: is a directory (use `cairn put -r` to copy a directory tree)",
        local.display()
    );
    anyhow::ensure!(md.is_file(), "{}: not a regular file", local.display());
    Ok(md)
}

/// `cairn put <local> <remote>`: see the module documentation. `stop` interrupts it.
pub async fn put(
    addrs: Vec<String>,
    local: &Path,
    remote: &str,
    quiet: bool,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<PutSummary> {
    let md = source_metadata(local)?;
    let meta = meta_client(addrs)?;
    let target = put_target(&meta, remote, local).await?;
    let sessions = list_uploads(&meta, false).await?;
    let conn = Conn::new(meta, PARALLEL);
    let progress = Progress::own(
        file_bar(md.len(), quiet, format!("put {}", target.path)),
        "put",
    );
    put_file(&conn, local, &md, target, &sessions, &progress, stop).await
}

/// Puts the regular file `local` (whose metadata is `md`) at `target`. `sessions` holds at
/// least every upload session of this target (any others are ignored): an earlier put of the
/// same source is resumed from its session. Chunks in flight take permits of `conn.chunks`.
pub(super) async fn put_file(
    conn: &Conn,
    local: &Path,
    md: &Metadata,
    target: Target,
    sessions: &[pb::UploadInfo],
    progress: &Progress,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<PutSummary> {
    let t0 = Instant::now();
    let file = Arc::new(
        std::fs::File::open(local).with_context(|| format!("{}: cannot open", local.display()))?,
    );
    let canon = std::fs::canonicalize(local).with_context(|| local.display().to_string())?;
    let size = md.len();
    let mtime = md.modified().unwrap_or(UNIX_EPOCH);
    let meta = &conn.meta;
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
    let ours: Vec<pb::UploadInfo> = sessions
        .iter()
        .filter(|u| {
            u.ino == 0
                && u.parent == target.parent
                && u.name == target.name
                && u.label.starts_with(&same_source)
        })
        .cloned()
        .collect();
    let resumable = ours
        .iter()
        .filter(|u| u.label == label && u.base_version == current)
        .max_by_key(|u| unix_ms(u.touched.as_ref()))
        .cloned();
    let mut notes = Vec::new();
    let (upload, recorded) = match resumable {
        Some(u) => {
            let slots = meta
                .get_upload(u.upload)
                .await
                .map_err(|s| meta_error(&format!("reading upload {}", u.upload), &s))?;
            let mut recorded: HashMap<u64, (ChunkId, u32)> = HashMap::new();
            for s in slots {
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
            let upload = meta
                .open_upload(req)
                .await
                .map_err(|s| meta_error(&format!("opening an upload for {}", target.path), &s))?;
            (upload, HashMap::new())
        }
    };
    let base_version = ours
        .iter()
        .find(|u| u.upload == upload)
        .map(|u| u.base_version)
        .unwrap_or(current);

    for n in notes {
        progress.note(&n);
    }
    let recorded = Arc::new(recorded);
    let nslots = size.div_ceil(CHUNK);
    let mut jobs = futures::stream::iter(0..nslots)
        .map(|slot| {
            let (dp, file, recorded) = (conn.dp.clone(), file.clone(), recorded.clone());
            let budget = conn.chunks.clone();
            async move {
                // Held until the chunk is stored: the chunks in memory stay within the budget.
                let _permit = budget
                    .acquire_owned()
                    .await
                    .map_err(|e| anyhow!("chunk budget: {e}"))?;
                let len = slots::len_in_file(slot, size);
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
                let up = upload::upload_chunk(&dp, 0, slot, data)
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
                    progress.inc(n);
                }
                Some(Ok(PutDone::Stored { slot, len, up })) => {
                    if up.replicas.is_empty() {
                        dedup += len;
                    } else {
                        sent += len;
                    }
                    progress.inc(len);
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
        progress.abandon();
        let saved = match recorded_result {
            Ok(()) => "the chunks stored so far are recorded".to_owned(),
            Err(e) => format!("some chunks in flight may be sent again ({e:#})"),
        };
        return Err(anyhow!(Interrupted(format!(
            "interrupted; {saved}: run the same command again to resume upload {upload}"
        ))));
    }
    if let Err(e) = outcome {
        progress.abandon();
        return Err(e);
    }
    if let Err(e) = recorded_result {
        progress.abandon();
        return Err(e);
    }

    // The source must not have changed while it was read.
    let now = std::fs::metadata(local).with_context(|| local.display().to_string())?;
    if now.len() != size || now.modified().ok() != md.modified().ok() {
        progress.abandon();
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
    let attr = match meta.commit_upload(req).await {
        Ok(attr) => attr.unwrap_or_default(),
        Err(s) => {
            progress.abandon();
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
                ErrorKind::Stale => anyhow!(
                    "the directory of {} was removed while uploading; create it and run again",
                    target.path
                ),
                _ => meta_error(&format!("committing {}", target.path), &s),
            });
        }
    };
    progress.finish();

    // Sessions this one replaces: of the same source and target, older or of a changed source.
    for u in ours.iter().filter(|u| u.upload != upload) {
        if let Err(s) = meta.abort_upload(u.upload).await {
            if ErrorKind::from_status(&s) != ErrorKind::NotFound {
                progress.note(&format!(
                    "note: could not abort the stale upload {}: {}",
                    u.upload,
                    s.message()
                ));
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

fn unix_ns(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
