//! Snapshots: the state machine's column families in one checksummed file, built, sent,
//! received and installed in pieces — never the whole state in one memory buffer.
//!
//! A snapshot is exactly the contents of [`STATE_CFS`] (read through one RocksDB snapshot, so
//! it is consistent) plus its [`SnapshotMeta`]. File format (integers big-endian):
//! `"CAIRNSD2"`, `u32 meta_len`, the meta (encoded by [`codec`]), then per column family
//! `u32 name_len, name, u64 count, count × (u32 key_len, key, u32 value_len, value)`, then a
//! 32-byte blake3 hash of everything before it. The file is self-contained: what openraft sends
//! to a follower (`InstallSnapshot` chunks of [`SNAPSHOT_CHUNK_BYTES`](crate::raft::network))
//! is the file, byte for byte, and the follower checks the embedded meta against the one the
//! leader announced.
//!
//! Files in `<data-dir>/snapshot/`:
//! - `current`: the latest snapshot, published with the durable-write helper (temp file,
//!   fsync, rename, directory fsync). openraft reads it as [`SnapshotData`] ([`SnapshotFile`]).
//! - `incoming.<random>.tmp`: a snapshot being received (deleted if the stream is abandoned).
//! - `installing`: a received, verified snapshot whose install into the database has begun.
//!
//! Installing ([`Snapshots::install`]) cannot be one write batch without holding the whole
//! state in memory, so it is made crash-safe by a marker instead: the verified file is fsync'd
//! and renamed to `installing` (directory fsync'd) *before* the database is touched; the state
//! column families are then emptied and loaded in batches of [`LOAD_BATCH_BYTES`], and the last
//! batch — `last_applied` and the membership — is synced; only then is `installing` renamed to
//! `current`. A node that finds `installing` when it opens ([`Snapshots::open`]) was cut off
//! mid-install: it installs that file again from the start before Raft sees any state, so a
//! half-installed state is never taken as complete. (Re-installing a snapshot the leader sent
//! is always correct: it only holds committed entries.) While an install runs, this node's
//! state is partial; only a follower installs snapshots, and followers serve no reads.
use super::{cf, CF_SM_META, KEY_LAST_APPLIED, KEY_MEMBERSHIP};
use crate::fsm::STATE_CFS;
use crate::raft::codec;
use crate::raft::{LogId, SnapshotMeta, StoredMembership};
use cairn_common::durable;
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

const MAGIC: &[u8; 8] = b"CAIRNSD2";
const CURRENT: &str = "current";
const INSTALLING: &str = "installing";
const HASH_LEN: u64 = 32;
/// Bytes of keys and values per write batch when loading a snapshot into the database.
pub const LOAD_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// The largest snapshot meta accepted (it holds the membership: a few hundred bytes).
const META_MAX: u32 = 1024 * 1024;

/// A snapshot file as openraft's `SnapshotData`: read when sending, written when receiving. A
/// file being received is deleted when dropped unless it was installed.
#[derive(Debug)]
pub struct SnapshotFile {
    file: Option<tokio::fs::File>,
    path: PathBuf,
    /// Delete on drop (a received file not installed yet).
    temp: bool,
}

impl SnapshotFile {
    fn new(file: File, path: PathBuf, temp: bool) -> SnapshotFile {
        SnapshotFile {
            file: Some(tokio::fs::File::from_std(file)),
            path,
            temp,
        }
    }

    fn file(&mut self) -> io::Result<Pin<&mut tokio::fs::File>> {
        match self.file.as_mut() {
            Some(f) => Ok(Pin::new(f)),
            None => Err(io::Error::other("snapshot file already taken")),
        }
    }

    /// Not deleted when dropped any more (it was renamed into place).
    fn keep(&mut self) {
        self.temp = false;
    }

    /// The open file (every pending write finished) and its path; a temp file stays marked
    /// for deletion until [`Snapshots::install`] has renamed it.
    async fn take(&mut self) -> io::Result<(File, PathBuf)> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("snapshot file already taken"))?;
        Ok((file.into_std().await, self.path.clone()))
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.temp {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.path.display(), error = %e, "remove snapshot temp file");
                }
            }
        }
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.file() {
            Ok(f) => f.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.file() {
            Ok(f) => f.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.file() {
            Ok(f) => f.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.file() {
            Ok(f) => f.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        self.file()?.start_seek(position)
    }
    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match self.file() {
            Ok(f) => f.poll_complete(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// The snapshot directory of one node, shared by the state machine and its snapshot builders.
pub struct Snapshots {
    db: Arc<DB>,
    dir: PathBuf,
    /// Held while the database is being loaded from a snapshot, and while a builder takes its
    /// RocksDB snapshot: a snapshot is never built from a half-installed state.
    state: Mutex<()>,
    /// Held while `current` is replaced, so an older snapshot never replaces a newer one.
    publish: Mutex<()>,
}

type Result<T, E = String> = std::result::Result<T, E>;

fn lock(m: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    // No panics under these locks except on a bug; the guarded data is the file system.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Snapshots {
    /// Opens `dir` (creating it): deletes abandoned temp files, and finishes an install that
    /// was cut off (see the module docs) before anything reads the state.
    pub fn open(db: Arc<DB>, dir: PathBuf) -> Result<Snapshots> {
        durable::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for entry in fs::read_dir(&dir).map_err(|e| format!("list {}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().is_some_and(|x| x == "tmp") {
                tracing::info!(path = %path.display(), "removing an abandoned snapshot temp file");
                fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
            }
        }
        let s = Snapshots {
            db,
            dir,
            state: Mutex::new(()),
            publish: Mutex::new(()),
        };
        let installing = s.dir.join(INSTALLING);
        if installing.exists() {
            tracing::warn!("a snapshot install was interrupted; installing it again");
            let mut file = File::open(&installing)
                .map_err(|e| format!("open {}: {e}", installing.display()))?;
            let meta = verify(&mut file).map_err(|e| {
                format!(
                    "{} is damaged ({e}); the state may be half-installed: restore this node \
                     from a peer (empty its data directory and let it catch up)",
                    installing.display()
                )
            })?;
            s.load_and_publish(&mut file, &meta)?;
        }
        Ok(s)
    }

    /// Builds a snapshot of the current state and publishes it as `current` (unless a newer
    /// one is already there). Blocking: call it off the runtime threads.
    pub fn build(&self) -> Result<(SnapshotMeta, SnapshotFile)> {
        let (file, path) = self.temp_file("build")?;
        // Deleted on any failure below, and on drop if not published.
        let mut out = SnapshotFile::new(file, path.clone(), true);
        let mut file = out
            .file
            .take()
            .ok_or("snapshot file vanished")?
            .try_into_std()
            .map_err(|_| "snapshot file busy".to_string())?;
        let meta = {
            let snap = {
                let _state = lock(&self.state);
                self.db.snapshot()
            };
            let meta_cf = cf(&self.db, CF_SM_META).map_err(|e| e.to_string())?;
            let get = |key: &[u8]| snap.get_cf(meta_cf, key).map_err(|e| e.to_string());
            let last_applied: Option<LogId> = match get(KEY_LAST_APPLIED)? {
                None => None,
                Some(b) => serde_json::from_slice(&b).map_err(|e| e.to_string())?,
            };
            let membership: StoredMembership = match get(KEY_MEMBERSHIP)? {
                None => StoredMembership::default(),
                Some(b) => serde_json::from_slice(&b).map_err(|e| e.to_string())?,
            };
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let snapshot_id = match &last_applied {
                Some(l) => format!("{}-{}-{nanos}", l.leader_id, l.index),
                None => format!("none-{nanos}"),
            };
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            };
            let mut w = HashingWriter::new(BufWriter::new(&mut file));
            w.write_all(MAGIC).map_err(|e| e.to_string())?;
            let meta_bytes = codec::encode(&meta).map_err(|e| e.to_string())?;
            put_bytes(&mut w, &meta_bytes)?;
            for name in STATE_CFS {
                let handle = cf(&self.db, name).map_err(|e| e.to_string())?;
                // Count first: the format puts the count before the pairs, and the pass is
                // cheap next to writing them.
                let count = snap.iterator_cf(handle, IteratorMode::Start).count() as u64;
                put_bytes(&mut w, name.as_bytes())?;
                w.write_all(&count.to_be_bytes())
                    .map_err(|e| e.to_string())?;
                let mut written = 0u64;
                for item in snap.iterator_cf(handle, IteratorMode::Start) {
                    let (k, v) = item.map_err(|e| e.to_string())?;
                    put_bytes(&mut w, &k)?;
                    put_bytes(&mut w, &v)?;
                    written += 1;
                }
                if written != count {
                    return Err(format!("column family {name} changed under its snapshot"));
                }
            }
            let (inner, hash) = w.finish();
            let mut inner = inner;
            inner
                .write_all(hash.as_bytes())
                .map_err(|e| e.to_string())?;
            inner.flush().map_err(|e| e.to_string())?;
            meta
        };
        {
            let _publish = lock(&self.publish);
            let newer = read_meta_of(&self.dir.join(CURRENT))?
                .is_some_and(|cur| cur.last_log_id > meta.last_log_id);
            if newer {
                tracing::info!(snapshot = %meta, "a newer snapshot is current; keeping it");
            } else {
                durable::publish(&file, &path, &self.dir.join(CURRENT))
                    .map_err(|e| e.to_string())?;
                out.path = self.dir.join(CURRENT);
                out.temp = false;
            }
        }
        file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        out.file = Some(tokio::fs::File::from_std(file));
        Ok((meta, out))
    }

    /// The current snapshot, checked end to end (a corrupt file is an error, never sent).
    /// Blocking.
    pub fn current(&self) -> Result<Option<(SnapshotMeta, SnapshotFile)>> {
        let path = self.dir.join(CURRENT);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("open {}: {e}", path.display())),
        };
        let meta = verify(&mut file).map_err(|e| format!("{}: {e}", path.display()))?;
        file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        Ok(Some((meta, SnapshotFile::new(file, path, false))))
    }

    /// A new file to receive a snapshot into.
    pub fn incoming(&self) -> Result<SnapshotFile> {
        let (file, path) = self.temp_file("incoming")?;
        Ok(SnapshotFile::new(file, path, true))
    }

    /// A new `<stem>.<random>.tmp` file in the snapshot directory (such files are deleted when
    /// the node opens).
    fn temp_file(&self, stem: &str) -> Result<(File, PathBuf)> {
        let path = self
            .dir
            .join(format!("{stem}.{:016x}.tmp", rand::random::<u64>()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok((file, path))
    }

    /// Installs the received snapshot `data` announced as `meta`: checked, made durable under
    /// the `installing` marker, loaded into the database, published as `current` (see the
    /// module docs for why each step is where it is).
    pub async fn install(
        self: &Arc<Self>,
        meta: &SnapshotMeta,
        mut data: SnapshotFile,
    ) -> Result<()> {
        let (file, path) = data.take().await.map_err(|e| e.to_string())?;
        let this = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let ours = data.temp && path.parent() == Some(this.dir.as_path());
            let (mut file, path) = if ours {
                (file, path)
            } else {
                // Not a file this node received (openraft's storage suite hands over another
                // node's snapshot): copy it in first.
                this.copy_in(file)?
            };
            file.sync_all()
                .map_err(|e| format!("fsync {}: {e}", path.display()))?;
            let found = verify(&mut file)?;
            if found != meta {
                return Err(format!(
                    "received snapshot is {found}, but {meta} was announced"
                ));
            }
            let installing = this.dir.join(INSTALLING);
            fs::rename(&path, &installing)
                .map_err(|e| format!("rename {} into {INSTALLING}: {e}", path.display()))?;
            // From here the file is ours to keep, whatever happens to `data`.
            data.keep();
            durable::fsync_dir(&this.dir).map_err(|e| e.to_string())?;
            this.load_and_publish(&mut file, &meta)?;
            tracing::info!(snapshot = %meta, "installed snapshot");
            Ok(())
        })
        .await
        .map_err(|e| format!("install task failed: {e}"))?
    }

    fn copy_in(&self, mut from: File) -> Result<(File, PathBuf)> {
        let (mut to, path) = self.temp_file("incoming")?;
        from.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        io::copy(&mut from, &mut to).map_err(|e| format!("copy snapshot: {e}"))?;
        Ok((to, path))
    }

    /// Replaces the state with the verified snapshot in `file` (under the `installing`
    /// marker), then makes it `current`.
    fn load_and_publish(&self, file: &mut File, meta: &SnapshotMeta) -> Result<()> {
        {
            let _state = lock(&self.state);
            load(&self.db, file, meta)?;
        }
        let _publish = lock(&self.publish);
        fs::rename(self.dir.join(INSTALLING), self.dir.join(CURRENT))
            .map_err(|e| format!("rename {INSTALLING} into {CURRENT}: {e}"))?;
        durable::fsync_dir(&self.dir).map_err(|e| e.to_string())
    }
}

/// Checks the whole file against its hash and returns its meta. Leaves the file position
/// anywhere.
fn verify(file: &mut File) -> Result<SnapshotMeta> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len < MAGIC.len() as u64 + 4 + HASH_LEN {
        return Err("snapshot is too short".into());
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut hasher = blake3::Hasher::new();
    let mut body = (&mut *file).take(len - HASH_LEN);
    io::copy(&mut body, &mut HashSink(&mut hasher)).map_err(|e| e.to_string())?;
    let mut stored = [0u8; HASH_LEN as usize];
    file.read_exact(&mut stored).map_err(|e| e.to_string())?;
    if hasher.finalize().as_bytes() != &stored {
        return Err("snapshot checksum mismatch".into());
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut r = Reader::new(BufReader::new(&mut *file), len - HASH_LEN);
    r.header()
}

/// The meta of the snapshot file at `path` (header only, not verified); `None` if absent.
fn read_meta_of(path: &Path) -> Result<Option<SnapshotMeta>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut r = Reader::new(BufReader::new(file), len.saturating_sub(HASH_LEN));
    r.header().map(Some)
}

/// Loads the verified snapshot in `file` into the database: every state column family
/// emptied and refilled in batches (unsynced), then `last_applied` and the membership in a
/// final synced batch, which makes the earlier ones durable too (one WAL).
fn load(db: &DB, file: &mut File, meta: &SnapshotMeta) -> Result<()> {
    let write = |batch: WriteBatch| db.write(batch).map_err(|e| e.to_string());
    for name in STATE_CFS {
        let handle = cf(db, name).map_err(|e| e.to_string())?;
        let mut batch = WriteBatch::default();
        for item in db.iterator_cf(handle, IteratorMode::Start) {
            let (k, _) = item.map_err(|e| e.to_string())?;
            batch.delete_cf(handle, k);
            if batch.size_in_bytes() >= LOAD_BATCH_BYTES {
                write(std::mem::take(&mut batch))?;
            }
        }
        write(batch)?;
    }
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut r = Reader::new(BufReader::new(&mut *file), len - HASH_LEN);
    r.header()?;
    let mut batch = WriteBatch::default();
    while r.left > 0 {
        let name = r.bytes()?;
        let name = STATE_CFS
            .iter()
            .copied()
            .find(|n| n.as_bytes() == name)
            .ok_or_else(|| {
                format!(
                    "snapshot names unknown column family {:?}",
                    String::from_utf8_lossy(&name)
                )
            })?;
        let handle = cf(db, name).map_err(|e| e.to_string())?;
        let count = r.u64()?;
        for _ in 0..count {
            let k = r.bytes()?;
            let v = r.bytes()?;
            batch.put_cf(handle, k, v);
            if batch.size_in_bytes() >= LOAD_BATCH_BYTES {
                write(std::mem::take(&mut batch))?;
            }
        }
    }
    let meta_cf = cf(db, CF_SM_META).map_err(|e| e.to_string())?;
    let applied = serde_json::to_vec(&meta.last_log_id).map_err(|e| e.to_string())?;
    let membership = serde_json::to_vec(&meta.last_membership).map_err(|e| e.to_string())?;
    batch.put_cf(meta_cf, KEY_LAST_APPLIED, applied);
    batch.put_cf(meta_cf, KEY_MEMBERSHIP, membership);
    let mut opts = WriteOptions::default();
    // Synced: the log entries this snapshot replaces may be purged right after.
    opts.set_sync(true);
    db.write_opt(batch, &opts).map_err(|e| e.to_string())
}

fn put_bytes(w: &mut impl Write, b: &[u8]) -> Result<()> {
    let len = u32::try_from(b.len()).map_err(|_| "key or value longer than 4 GiB".to_string())?;
    w.write_all(&len.to_be_bytes()).map_err(|e| e.to_string())?;
    w.write_all(b).map_err(|e| e.to_string())
}

/// A writer that hashes what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }
    fn finish(self) -> (W, blake3::Hash) {
        (self.inner, self.hasher.finalize())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A sink feeding a hasher.
struct HashSink<'a>(&'a mut blake3::Hasher);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A bounds-checked reader over the body of a snapshot file (`left`: bytes before the hash).
struct Reader<R: Read> {
    inner: R,
    left: u64,
}

impl<R: Read> Reader<R> {
    fn new(inner: R, left: u64) -> Self {
        Reader { inner, left }
    }
    fn take(&mut self, n: u64) -> Result<Vec<u8>> {
        if n > self.left {
            return Err("snapshot is truncated".into());
        }
        // `n` is at most the file's length, checked above.
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("read snapshot: {e}"))?;
        self.left -= n;
        Ok(buf)
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.u32()?;
        self.take(u64::from(n))
    }
    /// The magic and the meta.
    fn header(&mut self) -> Result<SnapshotMeta> {
        if self.take(MAGIC.len() as u64)? != MAGIC {
            return Err("not a snapshot of this format (bad magic)".into());
        }
        let n = self.u32()?;
        if n > META_MAX {
            return Err(format!("snapshot meta of {n} bytes"));
        }
        let meta = self.take(u64::from(n))?;
        codec::decode(&meta).map_err(|e| format!("snapshot meta: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Create, Kind, Time};
    use crate::fsm::Fsm;
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};

    struct Node {
        dir: tempfile::TempDir,
        db: Arc<DB>,
        fsm: Fsm,
        snaps: Arc<Snapshots>,
    }

    fn node() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::open_db(&dir.path().join("db")).unwrap();
        let fsm = Fsm::open(db.clone()).unwrap();
        let snaps = Arc::new(Snapshots::open(db.clone(), dir.path().join("snapshot")).unwrap());
        Node {
            dir,
            db,
            fsm,
            snaps,
        }
    }

    fn state(db: &DB) -> Vec<(String, Vec<u8>, Vec<u8>)> {
        let mut rows = Vec::new();
        for name in STATE_CFS {
            for item in db.iterator_cf(cf(db, name).unwrap(), IteratorMode::Start) {
                let (k, v) = item.unwrap();
                rows.push((name.to_string(), k.to_vec(), v.to_vec()));
            }
        }
        rows
    }

    /// `files` new files with long names: more state than one load batch.
    fn fill(n: &Node, first: usize, files: usize) {
        for i in first..first + files {
            let cmd = Command::Create(Create {
                parent: cairn_common::ROOT_INO,
                name: format!("file-{i}-{}", "x".repeat(200)).into_bytes(),
                kind: Kind::Regular,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                symlink_target: Vec::new(),
                exclusive: true,
                now: Time::now(),
            });
            let mut batch = WriteBatch::default();
            n.fsm
                .apply(&cmd, i as u64 + 1, &mut batch, &mut blake3::Hasher::new())
                .unwrap();
            n.db.write(batch).unwrap();
        }
    }

    fn files_in(n: &Node) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(n.dir.path().join("snapshot"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Sends `leader`'s current snapshot to `follower` in 64 KiB pieces, as openraft does.
    async fn receive(leader: &Node, follower: &Node) -> (SnapshotMeta, SnapshotFile) {
        let (meta, _) = leader.snaps.current().unwrap().unwrap();
        let bytes = fs::read(leader.dir.path().join("snapshot").join(CURRENT)).unwrap();
        let mut data = follower.snaps.incoming().unwrap();
        for piece in bytes.chunks(64 * 1024) {
            data.write_all(piece).await.unwrap();
        }
        data.shutdown().await.unwrap();
        (meta, data)
    }

    #[tokio::test]
    async fn a_snapshot_moves_between_nodes_in_pieces() {
        let leader = node();
        fill(&leader, 0, 30_000);
        let (meta, _) = leader.snaps.build().unwrap();
        let follower = node();
        fill(&follower, 0, 10);
        let (announced, data) = receive(&leader, &follower).await;
        assert_eq!(announced, meta);
        follower.snaps.install(&announced, data).await.unwrap();
        assert_eq!(state(&follower.db), state(&leader.db));
        assert_eq!(files_in(&follower), vec![CURRENT.to_string()]);
        let (current, _) = follower.snaps.current().unwrap().unwrap();
        assert_eq!(current, meta);
    }

    #[tokio::test]
    async fn a_snapshot_that_is_not_the_announced_one_is_refused() {
        let leader = node();
        fill(&leader, 0, 100);
        let (meta, _) = leader.snaps.build().unwrap();
        let follower = node();
        fill(&follower, 0, 10);
        let before = state(&follower.db);

        let (_, data) = receive(&leader, &follower).await;
        let mut other = meta.clone();
        other.snapshot_id = "someone-else".into();
        let e = follower.snaps.install(&other, data).await.unwrap_err();
        assert!(e.contains("announced"), "{e}");

        let (_, mut data) = receive(&leader, &follower).await;
        data.seek(SeekFrom::Start(100)).await.unwrap();
        data.write_all(b"flipped").await.unwrap();
        data.shutdown().await.unwrap();
        let e = follower.snaps.install(&meta, data).await.unwrap_err();
        assert!(e.contains("checksum"), "{e}");

        assert_eq!(state(&follower.db), before, "nothing was changed");
        assert!(files_in(&follower).is_empty(), "{:?}", files_in(&follower));
    }

    #[tokio::test]
    async fn an_interrupted_install_is_redone_when_the_node_opens() {
        let leader = node();
        fill(&leader, 0, 2_000);
        leader.snaps.build().unwrap();
        let follower = node();
        fill(&follower, 0, 10);
        // The crash: the verified file is under the marker and half the state is loaded.
        let snap_dir = follower.dir.path().join("snapshot");
        fs::copy(
            leader.dir.path().join("snapshot").join(CURRENT),
            snap_dir.join(INSTALLING),
        )
        .unwrap();
        fill(&follower, 10_000, 50);
        fs::write(snap_dir.join("incoming.0000000000000001.tmp"), b"partial").unwrap();

        let reopened = Snapshots::open(follower.db.clone(), snap_dir.clone()).unwrap();
        assert_eq!(state(&follower.db), state(&leader.db));
        assert_eq!(files_in(&follower), vec![CURRENT.to_string()]);
        assert!(reopened.current().unwrap().is_some());

        // A damaged marker file stops the node with a clear message instead.
        fs::write(snap_dir.join(INSTALLING), b"CAIRNSD2 torn").unwrap();
        let e = Snapshots::open(follower.db.clone(), snap_dir)
            .err()
            .unwrap();
        assert!(e.contains("half-installed"), "{e}");
    }
}
