//! `cairn get <remote> <local>`: a resumable, verified copy of a file out of the cluster.
//!
//! Reads one version's chunk list (`GetChunks`) and writes each slot into `<local>.cairn-part`,
//! fetching each chunk whole and verifying it against its id (the read path's replica failover
//! and checks, [`reader::fetch_chunk`]). At the end the part file is cut to size and published
//! durably with the remote file's mode (without setuid/setgid) and mtime
//! (`cairn_common::durable::publish`: fsynced, renamed to `<local>`, the directory fsynced). A
//! rerun after an interruption keeps every slot of the part file whose bytes already hash to
//! the chunk id (when the chunk is stored exactly as the file uses it, `len == stored_len`) and
//! fetches the others — also when the remote file changed in between: only chunks that match
//! are kept.
use super::progress::{file_bar, Progress};
use super::{
    display_path, is_dir, is_regular, meta_client, rate, resolve, split_remote, Conn, Interrupted,
    Unresolved, PARALLEL,
};
use crate::data::commit::{self, Base};
use crate::data::reader::{self, StoredChunk};
use crate::data::slots;
use crate::data::DataPlane;
use crate::errno::Errno;
use crate::status::human;
use anyhow::{anyhow, Context};
use cairn_common::durable;
use cairn_common::time::from_wire;
use cairn_common::{ChunkId, CHUNK_SIZE};
use cairn_proto as pb;
use futures::StreamExt;
use std::ffi::OsString;
use std::future::Future;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Suffix of the partial local file `cairn get` writes into.
pub const PART_SUFFIX: &str = ".cairn-part";
const CHUNK: u64 = CHUNK_SIZE as u64;

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
    let same = |b: &[u8]| match &chunk.inline {
        Some(data) => data.get(..keep) == Some(b),
        None => ChunkId::of(b) == chunk.id,
    };
    keep <= buf.len() && same(&buf[..keep]) && buf[keep..].iter().all(|&b| b == 0)
}

/// The permission bits a copied file or directory gets locally: the remote ones without
/// setuid and setgid (as `cp` without `-p`: a copy belongs to whoever made it).
pub(super) fn local_mode(remote_mode: u32) -> u32 {
    remote_mode & 0o1777
}

/// The chunk list of the current version of remote file `ino` (at `path`).
pub(super) async fn load_remote(dp: &Arc<DataPlane>, ino: u64, path: &str) -> anyhow::Result<Base> {
    commit::load_base(dp, ino).await.map_err(|e| {
        if e == Errno::ESTALE {
            anyhow!("{path} was removed or replaced in the cluster meanwhile; run again")
        } else {
            anyhow!("reading the chunk list of {path}: {e}")
        }
    })
}

/// `cairn get <remote> <local>`: see the module documentation. `stop` interrupts it.
pub async fn get(
    addrs: Vec<String>,
    remote: &str,
    local: &Path,
    quiet: bool,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<GetSummary> {
    let meta = meta_client(addrs)?;
    let comps = split_remote(remote)?;
    let path = display_path(&comps);
    let attr = resolve(&meta, &comps).await.map_err(|e| match e {
        Unresolved::Missing(_) => anyhow!("{path}: No such file in the cluster"),
        Unresolved::Failed(e) => e,
    })?;
    anyhow::ensure!(
        !is_dir(&attr),
        "{path}: is a directory (use `cairn get -r` to copy a directory tree)"
    );
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
    let conn = Conn::new(meta, PARALLEL);
    let base = load_remote(&conn.dp, attr.ino, &path).await?;
    let progress = Progress::own(file_bar(base.size, quiet, format!("get {path}")), "get");
    get_file(&conn, path, &attr, base, local, &progress, stop).await
}

/// Copies version `base` of the remote file `path` (attributes `attr`) to `local`, through
/// `<local>.cairn-part`. Chunks in flight take permits of `conn.chunks`.
pub(super) async fn get_file(
    conn: &Conn,
    path: String,
    attr: &pb::Attr,
    base: Base,
    local: PathBuf,
    progress: &Progress,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<GetSummary> {
    let t0 = Instant::now();
    let (size, version) = (base.size, base.version);
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
    let slots = Arc::new(base.slots);

    if part_len > 0 {
        progress.note(&format!(
            "resuming into {} ({} there; each chunk is checked against its hash)",
            part.display(),
            human(part_len)
        ));
    }
    let nslots = size.div_ceil(CHUNK);
    let mut jobs = futures::stream::iter(0..nslots)
        .map(|slot| {
            let (dp, file, slots) = (conn.dp.clone(), file.clone(), slots.clone());
            let budget = conn.chunks.clone();
            async move {
                // Held until the slot is written: the chunks in memory stay within the budget.
                let _permit = budget
                    .acquire_owned()
                    .await
                    .map_err(|e| anyhow!("chunk budget: {e}"))?;
                let start = slot * CHUNK;
                let len = slots::len_in_file(slot, size);
                let Some(chunk) = slots.get(&slot).cloned() else {
                    // A hole: zeros (kept if already there). Past the part file's old end
                    // nothing is written: unwritten bytes of a file read as zeros, so a hole
                    // stays a hole locally too.
                    if start >= part_len {
                        return Ok(GetDone::Hole(len as u64));
                    }
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
                // The rest of the slot reads as zeros: written only over old bytes of the part
                // file (past its old end, unwritten bytes are zeros already).
                let zeros = (start + len as u64).min(part_len.max(start + keep as u64))
                    - (start + keep as u64);
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    file.write_all_at(&data[..keep], start)?;
                    if zeros > 0 {
                        file.write_all_at(&vec![0u8; zeros as usize], start + keep as u64)?;
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
                    progress.inc(n);
                }
            }
        }
    };
    drop(jobs);
    if let Err(e) = outcome {
        progress.abandon();
        return Err(e);
    }

    // Exactly `size` bytes with the remote file's mode and mtime, durable, then renamed into
    // place and the directory synced. (The mode only now: a read-only mode on the part file
    // would stop the next run from resuming into it.)
    let mtime = from_wire(&attr.mtime.unwrap_or_default());
    let mode = std::fs::Permissions::from_mode(local_mode(attr.mode));
    let f = file.clone();
    let part2 = part.clone();
    let local2 = local.clone();
    let published = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        f.set_len(size)?;
        let _ = f.set_modified(mtime);
        f.set_permissions(mode)?;
        durable::publish(&f, &part2, &local2)?;
        Ok(())
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r)
    .with_context(|| format!("publishing {}", local.display()));
    if let Err(e) = published {
        progress.abandon();
        return Err(e);
    }
    progress.finish();
    Ok(GetSummary {
        remote: path,
        local,
        size,
        fetched,
        reused,
        holes,
        version,
        took: t0.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_slot_is_kept_only_if_it_holds_the_chunk_then_zeros() {
        let data = b"chunk bytes".to_vec();
        let chunk = StoredChunk::for_test(&data, data.len() as u32);
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
}
