//! Durable files: the one place that knows how a file becomes durable on a POSIX file system.
//!
//! Every file Cairn acknowledges — a chunk on a chunk server, a Raft snapshot on a meta node, a
//! file `cairn get` finished, a server's identity — is published the same way:
//!
//! 1. **write to a temp name** in the destination's file system (here: a random suffix, so
//!    concurrent writers never share one; [`TempFile`] deletes it on any failure, ENOSPC
//!    included), so a crash midway never leaves a partial file under the final name;
//! 2. **`fsync` the file**: its data and length are on disk before it gets its name, so after a
//!    crash the final name never points at blocks that were never written;
//! 3. **`rename` over the final name**: atomic, so a reader sees the whole old file or the whole
//!    new one, never a mix;
//! 4. **`fsync` the directory**: a rename (like a create or an unlink) is only a change to the
//!    directory, and it is durable only once the directory itself is synced.
//!
//! Only after step 4 may the caller acknowledge the write. Deleting is the mirror image
//! ([`remove_durably`]): unlink, then fsync the directory before saying the file is gone.
//!
//! Errors carry the step and the path ([`DurableError`]) and keep the OS error, so a caller can
//! still tell ENOSPC from other failures.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A failed step of a durable write: which step, on which path, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {source}", path.display())]
pub struct DurableError {
    /// A verb phrase: "create", "write", "fsync", "rename into", "fsync directory", …
    pub step: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl DurableError {
    fn new(step: &'static str, path: &Path, source: io::Error) -> DurableError {
        DurableError {
            step,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The errno behind the failure (ENOSPC, EDQUOT, EIO, …), if the OS reported one.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

impl From<DurableError> for io::Error {
    fn from(e: DurableError) -> io::Error {
        // Keeps the kind (and so NotFound, StorageFull, …) with the step in the message.
        io::Error::new(e.source.kind(), e.to_string())
    }
}

pub type Result<T, E = DurableError> = std::result::Result<T, E>;

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Step 4: fsyncs directory `dir`, so that entries created, renamed or removed in it are
/// durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DurableError::new("fsync directory", dir, e))
}

/// Creates directory `dir` if it is missing. When it was created, its parent is fsynced so
/// that the new entry is durable before anything inside it is acknowledged. Returns whether it
/// was created.
pub fn create_dir(dir: &Path) -> Result<bool> {
    match fs::create_dir(dir) {
        Ok(()) => {
            fsync_dir(parent_of(dir))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(DurableError::new("create directory", dir, e)),
    }
}

/// Like [`create_dir`] for a whole path: every missing component is created and its parent
/// fsynced.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all(parent)?;
    }
    create_dir(dir).map(|_| ())
}

/// Steps 2–4 for a file written in place under a temporary name (`from`): fsync `file`, rename
/// it to `to`, fsync `to`'s directory. `from` and `to` must be on one file system.
pub fn publish(file: &File, from: &Path, to: &Path) -> Result<()> {
    file.sync_all()
        .map_err(|e| DurableError::new("fsync", from, e))?;
    fs::rename(from, to).map_err(|e| DurableError::new("rename into", to, e))?;
    fsync_dir(parent_of(to))
}

/// Writes `contents` to `path` atomically and durably (steps 1–4, the temp file beside `path`).
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let mut tmp = TempFile::create_in(parent_of(path), &temp_stem(path))?;
    tmp.write_all(contents)?;
    tmp.publish(path)
}

/// Deletes `path` durably: unlink, then fsync its directory. A file that is already gone is
/// not an error.
pub fn remove_durably(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => fsync_dir(parent_of(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DurableError::new("remove", path, e)),
    }
}

fn temp_stem(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into())
}

/// Step 1: a new file under a random temporary name, deleted when dropped unless
/// [`TempFile::publish`] gave it its final name.
pub struct TempFile {
    path: PathBuf,
    file: File,
    published: bool,
}

impl TempFile {
    /// Creates `<dir>/<stem>.<random>.tmp` (never an existing file).
    pub fn create_in(dir: &Path, stem: &str) -> Result<TempFile> {
        let path = dir.join(format!("{stem}.{:016x}.tmp", rand::random::<u64>()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| DurableError::new("create", &path, e))?;
        Ok(TempFile {
            path,
            file,
            published: false,
        })
    }

    /// The temporary path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for writes other than [`TempFile::write_all`] (e.g. `set_len`).
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Appends `data`.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(|e| DurableError::new("write", &self.path, e))
    }

    /// Steps 2–4: fsync, rename to `to`, fsync `to`'s directory. On failure the temp file is
    /// deleted.
    pub fn publish(mut self, to: &Path) -> Result<()> {
        publish(&self.file, &self.path, to)?;
        self.published = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::error!(path = %self.path.display(), error = %e, "remove temp file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_file_has_its_contents_and_no_temp_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        write_atomically(&target, b"one").unwrap();
        write_atomically(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the published file remains");
    }

    #[test]
    fn a_dropped_temp_file_is_deleted_and_errors_name_step_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = TempFile::create_in(dir.path(), "x").unwrap();
        t.write_all(b"partial").unwrap();
        let p = t.path().to_path_buf();
        drop(t);
        assert!(!p.exists());

        let e = write_atomically(&dir.path().join("no/such/dir/f"), b"x").unwrap_err();
        assert_eq!(e.step, "create");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert!(e.to_string().contains("no/such/dir"), "{e}");
    }

    #[test]
    fn directories_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        assert!(!create_dir(&deep).unwrap(), "already there");
        let f = deep.join("f");
        write_atomically(&f, b"x").unwrap();
        remove_durably(&f).unwrap();
        remove_durably(&f).unwrap();
        assert!(!f.exists());
    }
}
