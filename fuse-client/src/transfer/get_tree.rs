//! `cairn get -r <remote> <local>`: a tree of the file system copied to a local directory.
//!
//! **Where it lands** (`cp -r`): if `<local>` is an existing directory the tree goes to
//! `<local>/<name of remote>` (for `/`, straight into `<local>`), else `<local>` is created (its
//! parent must exist) and gets the contents of `<remote>`.
//!
//! **What is copied**: directories, with the remote permission bits (not setuid/setgid; an
//! existing directory is kept and given them); regular files, each by [`get_file`] — verified
//! chunk by chunk into `<file>.cairn-part`, then published with the remote mode and mtime;
//! symbolic links as links with the same target (an existing link with another target, or a
//! file, is replaced). Special files are skipped with a warning. Owners are not copied: the
//! files belong to whoever runs the command, as with `cp`.
//!
//! A directory without write and search permission for its owner could not be filled: it is
//! made with them, and given its own mode once the copy is done (deepest first).
//!
//! **Resume**: a rerun gets the same tree again, and
//! - a local file that already has the remote size and, chunk by chunk, its content (blake3 of
//!   the local bytes equal to the chunk ids: [`local_holds`]) is left alone, at most its mode
//!   and mtime set;
//! - a file cut off midway resumes from its part file, keeping only the chunks that verify;
//! - any other file is fetched again.
//!
//! So a local file is never kept on size and mtime alone: only identical bytes are.
use super::get::{get_file, load_remote, local_mode};
use super::tree::{
    count, join_display, place, rerun_hint, with_stop, Dest, DestKind, DirStack, Entry, EntryKind,
    FileDone, Placement, TreeRun, TreeSummary,
};
use super::unchanged::local_holds;
use super::walk;
use super::{
    display_path, meta_client, meta_error, resolve, split_remote, Conn, Interrupted, TreeOpts,
    Unresolved, TREE_CHUNKS,
};
use anyhow::{anyhow, bail, Context};
use cairn_common::time::from_wire;
use cairn_proto as pb;
use std::ffi::OsStr;
use std::fs::Permissions;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// `cairn get -r <remote> <local>`: see the module documentation. `stop` interrupts it; the
/// summary then says so.
pub async fn get_tree(
    addrs: Vec<String>,
    remote: &str,
    local: &Path,
    opts: TreeOpts,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<TreeSummary> {
    let meta = meta_client(addrs)?;
    let comps = split_remote(remote)?;
    let path = display_path(&comps);
    let root = resolve(&meta, &comps).await.map_err(|e| match e {
        Unresolved::Missing(_) => anyhow!("{path}: No such file or directory in the cluster"),
        Unresolved::Failed(e) => e,
    })?;
    let kind = walk::remote_kind(&root);
    anyhow::ensure!(
        !matches!(kind, EntryKind::Special(_)),
        "{path}: not a regular file, directory or symlink"
    );
    let dest = match std::fs::metadata(local) {
        Ok(m) if m.is_dir() => DestKind::Dir,
        Ok(_) => DestKind::Other,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(local).is_ok() {
                DestKind::Other // a dangling symlink
            } else {
                DestKind::Missing
            }
        }
        Err(e) => return Err(e).with_context(|| local.display().to_string()),
    };
    let src_is_dir = kind == EntryKind::Dir;
    let dest = Dest {
        kind: dest,
        names_dir: local.as_os_str().as_bytes().ends_with(b"/"),
        is_root: opts.dest_is_root,
    };
    let placement = place(src_is_dir, comps.last().cloned(), dest)
        .map_err(|e| anyhow!("{}: {e}", local.display()))?;
    let hint = rerun_hint(src_is_dir, dest, &placement, &local.display().to_string());
    // `/` into an existing directory: that directory is not the source's to change.
    let merge = placement == Placement::Merge;
    let root_local = match placement {
        Placement::Inside(name) => local.join(OsStr::from_bytes(&name)),
        Placement::At | Placement::Merge => local.to_owned(),
    };
    if let Some(parent) = root_local.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!(
                "{}: local directory {} does not exist",
                local.display(),
                parent.display()
            );
        }
    }
    let token = CancellationToken::new();
    let copy = TreeCopy {
        conn: Conn::new(meta, TREE_CHUNKS),
        token: token.clone(),
        merge,
        hint,
        root_local,
        root_comps: comps,
        root_path: path,
        opts,
    };
    Ok(with_stop(stop, &token, copy.run(root)).await)
}

struct TreeCopy {
    conn: Conn,
    token: CancellationToken,
    root_local: PathBuf,
    /// The root lands in an existing directory (its mode is left alone).
    merge: bool,
    /// See [`rerun_hint`].
    hint: Option<String>,
    root_comps: Vec<Vec<u8>>,
    /// The root's path inside the file system.
    root_path: String,
    opts: TreeOpts,
}

impl TreeCopy {
    async fn run(self, root: pb::Attr) -> TreeSummary {
        let (mut rx, walker) = walk::remote(self.conn.meta.clone(), root, self.root_comps.clone());
        let totals = count(
            &mut rx,
            &self.token,
            self.opts.quiet,
            format!("get {}", self.root_path),
        )
        .await;
        drop(rx);
        let _ = walker.await;
        let counted = totals.is_some();
        let mut run = TreeRun::new(
            "get",
            self.root_path.clone(),
            self.root_local.display().to_string(),
            &totals.unwrap_or_default(),
            self.opts.jobs,
            self.opts.quiet,
            self.token.clone(),
        );
        run.set_rerun_hint(self.hint.clone());
        // Directories whose own mode must wait until their contents are copied.
        let mut modes_later: Vec<(PathBuf, u32)> = Vec::new();
        if counted {
            let (mut rx, walker) =
                walk::remote(self.conn.meta.clone(), root, self.root_comps.clone());
            let mut dirs: DirStack<PathBuf> = DirStack::default();
            while let Some(e) = run.next(&mut rx).await {
                self.entry(e, &mut dirs, &mut run, &mut modes_later).await;
            }
            drop(rx);
            let _ = walker.await;
        }
        let mut summary = run.finish().await;
        // After an interruption the directories stay writable, for the rerun to fill them.
        if !summary.interrupted {
            for (dir, mode) in modes_later.into_iter().rev() {
                if let Err(e) = std::fs::set_permissions(&dir, Permissions::from_mode(mode)) {
                    let path = dir.display().to_string();
                    let error = format!("setting its mode {mode:o}: {e}");
                    eprintln!("cairn get: {path}: {error}");
                    summary.add_failure(&path, &error);
                }
            }
        }
        summary
    }

    /// Copies one entry, or starts its copy.
    async fn entry(
        &self,
        e: Entry<pb::Attr>,
        dirs: &mut DirStack<PathBuf>,
        run: &mut TreeRun,
        modes_later: &mut Vec<(PathBuf, u32)>,
    ) {
        let depth = e.rel.len();
        let src = join_display(&self.root_path, &e.rel);
        let is_dir = e.kind == EntryKind::Dir;
        let dest = if depth == 0 {
            self.root_local.clone()
        } else {
            match dirs.parent(depth) {
                Some(p) => p.join(OsStr::from_bytes(&e.rel[depth - 1])),
                None => {
                    run.below_failed(&e);
                    if is_dir {
                        dirs.entered(depth, None);
                    }
                    return;
                }
            }
        };
        match e.kind {
            EntryKind::Dir => {
                let keep_mode = depth == 0 && self.merge;
                match make_dir(&dest, local_mode(e.mode), keep_mode) {
                    Ok(later) => {
                        if let Some(mode) = later {
                            modes_later.push((dest.clone(), mode));
                        }
                        dirs.entered(depth, Some(dest));
                        run.dir_done();
                    }
                    Err(err) => {
                        dirs.entered(depth, None);
                        run.fail(&src, &format!("{err:#} (its contents are not copied)"), 0);
                    }
                }
            }
            EntryKind::Symlink => {
                let made = match self.conn.meta.readlink(e.src.ino).await {
                    Ok(target) => make_symlink(&dest, &target),
                    Err(s) => Err(meta_error("reading the link", &s)),
                };
                match made {
                    Ok(()) => run.symlink_done(),
                    Err(err) => run.fail(&src, &format!("{err:#}"), 0),
                }
            }
            EntryKind::Special(what) => run.skip(&src, what),
            EntryKind::File { size } => {
                let (conn, token) = (self.conn.clone(), self.token.clone());
                let attr = e.src;
                let path = src.clone();
                run.spawn_file(src, size, move |progress| async move {
                    // Deciding may read the whole local file: a stop cuts it short.
                    let decided = tokio::select! {
                        d = decide(&conn, &path, &attr, &dest) => d?,
                        _ = token.cancelled() => {
                            return Err(anyhow!(Interrupted("interrupted".into())))
                        }
                    };
                    let base = match decided {
                        Decided::Unchanged => {
                            return Ok(FileDone {
                                unchanged: true,
                                transferred: 0,
                            })
                        }
                        Decided::Get(Some(base)) => base,
                        Decided::Get(None) => load_remote(&conn.dp, attr.ino, &path).await?,
                    };
                    let s = get_file(
                        &conn,
                        path,
                        &attr,
                        base,
                        dest,
                        &progress,
                        token.cancelled_owned(),
                    )
                    .await?;
                    Ok(FileDone {
                        unchanged: false,
                        transferred: s.fetched,
                    })
                });
            }
        }
    }
}

enum Decided {
    /// The local file already holds the remote bytes (its mode and mtime are set if they
    /// differed).
    Unchanged,
    /// Copy it; the remote chunk list if it was read already.
    Get(Option<crate::data::commit::Base>),
}

/// Whether remote file `path` (`attr`) must be copied to `local`: not when `local` already
/// holds exactly its bytes ([`local_holds`]).
async fn decide(conn: &Conn, path: &str, attr: &pb::Attr, local: &Path) -> anyhow::Result<Decided> {
    match std::fs::symlink_metadata(local) {
        Ok(m) if m.is_dir() => bail!("{} exists and is a directory", local.display()),
        Ok(m) if m.is_file() && m.len() == attr.size => {
            let base = load_remote(&conn.dp, attr.ino, path).await?;
            if local_holds(conn, local, &base).await? {
                set_attrs_like(local, &m, attr)?;
                return Ok(Decided::Unchanged);
            }
            Ok(Decided::Get(Some(base)))
        }
        _ => Ok(Decided::Get(None)),
    }
}

/// Gives the local file the remote mode and mtime where they differ (what a get would have).
fn set_attrs_like(local: &Path, md: &std::fs::Metadata, attr: &pb::Attr) -> anyhow::Result<()> {
    let mode = local_mode(attr.mode);
    if md.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(local, Permissions::from_mode(mode))
            .with_context(|| format!("{}: setting its mode", local.display()))?;
    }
    let mtime = from_wire(&attr.mtime.unwrap_or_default());
    if md.modified().ok() != Some(mtime) {
        std::fs::File::open(local)
            .and_then(|f| f.set_modified(mtime))
            .with_context(|| format!("{}: setting its mtime", local.display()))?;
    }
    Ok(())
}

/// Makes directory `dir` (an existing one is kept) and gives it `mode`, unless `keep_mode`. A
/// mode without write and search permission for the owner is given only later (returned):
/// until then the directory could not be filled.
fn make_dir(dir: &Path, mode: u32, keep_mode: bool) -> anyhow::Result<Option<u32>> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let md = std::fs::symlink_metadata(dir)
                .with_context(|| format!("{}: cannot stat", dir.display()))?;
            anyhow::ensure!(
                md.is_dir(),
                "{} exists and is not a directory",
                dir.display()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("{}: cannot make", dir.display())),
    }
    if keep_mode {
        return Ok(None);
    }
    let (now, later) = if mode & 0o300 == 0o300 {
        (mode, None)
    } else {
        (mode | 0o700, Some(mode))
    };
    std::fs::set_permissions(dir, Permissions::from_mode(now))
        .with_context(|| format!("{}: setting its mode", dir.display()))?;
    Ok(later)
}

/// Makes symlink `link` to `target`. A link already there with that target is kept; another
/// link or a file there is replaced; a directory is an error.
fn make_symlink(link: &Path, target: &[u8]) -> anyhow::Result<()> {
    let target = OsStr::from_bytes(target);
    match std::fs::symlink_metadata(link) {
        Ok(m) if m.is_dir() => bail!("{} exists and is a directory", link.display()),
        Ok(m) => {
            if m.file_type().is_symlink()
                && std::fs::read_link(link).is_ok_and(|t| t.as_os_str() == target)
            {
                return Ok(());
            }
            std::fs::remove_file(link)
                .with_context(|| format!("{}: cannot replace", link.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}: cannot stat", link.display())),
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("{}: cannot make the symlink", link.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_directory_gets_its_mode_after_its_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        assert_eq!(make_dir(&d, 0o755, false).unwrap(), None);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&d), 0o755);
        let ro = tmp.path().join("ro");
        assert_eq!(make_dir(&ro, 0o555, false).unwrap(), Some(0o555));
        assert_eq!(mode(&ro), 0o755, "writable until its contents are in");
        assert_eq!(
            make_dir(&d, 0o700, false).unwrap(),
            None,
            "an existing one is kept"
        );
        assert_eq!(mode(&d), 0o700);
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        assert!(make_dir(&tmp.path().join("f"), 0o755, false).is_err());
    }

    #[test]
    fn a_symlink_is_made_kept_or_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let l = tmp.path().join("l");
        make_symlink(&l, b"a/b").unwrap();
        assert_eq!(std::fs::read_link(&l).unwrap(), Path::new("a/b"));
        make_symlink(&l, b"a/b").unwrap();
        make_symlink(&l, b"c").unwrap();
        assert_eq!(std::fs::read_link(&l).unwrap(), Path::new("c"));
        let f = tmp.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        make_symlink(&f, b"c").unwrap();
        assert!(std::fs::symlink_metadata(&f)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(
            make_symlink(tmp.path(), b"c").is_err(),
            "never over a directory"
        );
    }
}
