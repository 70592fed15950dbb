//! `cairn put -r <local> <remote>`: a local tree copied into the file system.
//!
//! **Where it lands** (`cp -r`): if `<remote>` is an existing directory the tree goes to
//! `<remote>/<name of local>`, else `<remote>` is created (its parent must exist) and gets the
//! contents of `<local>`. A regular file named as `<local>` is copied as `cp -r` would: into an
//! existing directory, or at `<remote>`.
//!
//! **What is copied**: directories, made with the local permission bits, owner and group (an
//! existing one is kept and given the local bits); regular files, each by [`put_file`] — stored
//! chunk by chunk in an upload session and committed whole with its mode, owner and mtime;
//! symbolic links as links with the same target (never followed, except a link named as
//! `<local>` itself; an existing link with another target, or a file, is replaced). FIFOs,
//! sockets and devices are skipped with a warning. Hard links become separate files.
//!
//! **Resume**: a rerun puts the same tree again, and
//! - a file whose target already has its size and, chunk by chunk, its content (blake3 of the
//!   local bytes equal to the remote chunk ids: [`local_holds`]) is left alone, at most its
//!   mode, owner and mtime set (`SetAttr`): nothing is stored, no new version committed;
//! - a file cut off midway resumes from its upload session (found by source label and target,
//!   from one `ListUploads` read at the start), sending only the chunks not recorded yet;
//! - any other file is put again; chunks the cluster already holds are not sent again.
//!
//! So a file is never skipped on size and mtime alone: only identical bytes are.
use super::get::load_remote;
use super::put::{put_file, Target};
use super::tree::{
    count, join_display, place, rerun_hint, with_stop, Dest, DestKind, DirStack, Entry, EntryKind,
    FileDone, Name, Placement, TreeRun, TreeSummary,
};
use super::unchanged::local_holds;
use super::walk::{self, LocalSrc};
use super::{
    display_path, is_dir, is_regular, list_uploads, lookup, meta_client, meta_error, resolve,
    split_remote, Conn, Interrupted, TreeOpts, Unresolved, TREE_CHUNKS,
};
use crate::meta::Meta;
use anyhow::{anyhow, bail, Context};
use cairn_common::name::validate_name;
use cairn_common::{ErrorKind, Kind};
use cairn_proto as pb;
use std::collections::HashMap;
use std::fs::Metadata;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use tokio_util::sync::CancellationToken;

/// Where the local tree's root goes.
enum RootAt {
    /// `name` in directory `parent`, made (or replaced, for a file) by the copy.
    Entry { parent: u64, name: Name },
    /// The existing directory `ino` itself (the source is `/`).
    Dir(u64),
}

/// Upload sessions of `cairn put`s to a new name, by target (parent, name).
type Sessions = HashMap<(u64, Name), Vec<pb::UploadInfo>>;

/// `cairn put -r <local> <remote>`: see the module documentation. `stop` interrupts it; the
/// summary then says so.
pub async fn put_tree(
    addrs: Vec<String>,
    local: &Path,
    remote: &str,
    opts: TreeOpts,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<TreeSummary> {
    let root_md = match std::fs::metadata(local) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{}: No such file or directory", local.display())
        }
        Err(e) => return Err(e).with_context(|| local.display().to_string()),
    };
    let src_is_dir = root_md.is_dir();
    anyhow::ensure!(
        src_is_dir || root_md.is_file(),
        "{}: not a regular file or directory",
        local.display()
    );
    let meta = meta_client(addrs)?;
    let comps = split_remote(remote)?;
    let dest_path = display_path(&comps);
    let (dest, dest_attr) = match resolve(&meta, &comps).await {
        Ok(a) if is_dir(&a) => (DestKind::Dir, Some(a)),
        Ok(a) => (DestKind::Other, Some(a)),
        Err(Unresolved::Missing(_)) => (DestKind::Missing, None),
        Err(Unresolved::Failed(e)) => return Err(e),
    };
    let dest = Dest {
        kind: dest,
        names_dir: remote.ends_with('/'),
        is_root: opts.dest_is_root,
    };
    let placement =
        place(src_is_dir, source_name(local), dest).map_err(|e| anyhow!("{dest_path}: {e}"))?;
    let hint = rerun_hint(src_is_dir, dest, &placement, &dest_path);
    let (root_comps, root_at) = match (placement, dest_attr) {
        (Placement::Merge, Some(d)) => (comps, RootAt::Dir(d.ino)),
        // `-T` onto `/`: `/` itself is the root.
        (Placement::At, Some(d)) if comps.is_empty() => (comps, RootAt::Dir(d.ino)),
        (Placement::Inside(name), Some(d)) => {
            let mut c = comps;
            c.push(name.clone());
            (
                c,
                RootAt::Entry {
                    parent: d.ino,
                    name,
                },
            )
        }
        (Placement::At, _) => {
            let Some((name, parent_comps)) = comps.split_last() else {
                bail!("{dest_path}: no name to create");
            };
            let parent = resolve(&meta, parent_comps).await.map_err(|e| match e {
                Unresolved::Missing(p) => {
                    anyhow!("{dest_path}: parent directory {p} does not exist")
                }
                Unresolved::Failed(e) => e,
            })?;
            anyhow::ensure!(
                is_dir(&parent),
                "{dest_path}: {} is not a directory",
                display_path(parent_comps)
            );
            let name = name.clone();
            (
                comps.clone(),
                RootAt::Entry {
                    parent: parent.ino,
                    name,
                },
            )
        }
        (_, None) => bail!("{dest_path}: does not exist"),
    };
    let root_path = display_path(&root_comps);

    // Sessions of earlier, interrupted puts, read once for the whole tree.
    let mut sessions = Sessions::new();
    for u in list_uploads(&meta, false).await? {
        if u.ino == 0 && u.label.starts_with("put ") {
            sessions
                .entry((u.parent, u.name.clone()))
                .or_default()
                .push(u);
        }
    }
    let conn = Conn::new(meta, TREE_CHUNKS);
    let token = CancellationToken::new();
    let source = local.display().to_string();
    let copy = TreeCopy {
        conn,
        sessions: Arc::new(sessions),
        token: token.clone(),
        root_at,
        root_path,
        hint,
        opts,
    };
    Ok(with_stop(stop, &token, copy.run(local.to_owned(), source)).await)
}

/// The name a source keeps inside an existing directory: its last name as given (`src/` is
/// `src`), or for `.` and `..` the name of the directory they are; none for `/`.
fn source_name(local: &Path) -> Option<Name> {
    let named = local.file_name().map(|n| n.as_bytes().to_vec());
    named.or_else(|| {
        std::fs::canonicalize(local)
            .ok()?
            .file_name()
            .map(|n| n.as_bytes().to_vec())
    })
}

struct TreeCopy {
    conn: Conn,
    sessions: Arc<Sessions>,
    token: CancellationToken,
    root_at: RootAt,
    /// The root's path inside the file system.
    root_path: String,
    /// See [`rerun_hint`].
    hint: Option<String>,
    opts: TreeOpts,
}

impl TreeCopy {
    async fn run(self, local: PathBuf, source: String) -> TreeSummary {
        let (mut rx, walker) = walk::local(local.clone());
        let totals = count(
            &mut rx,
            &self.token,
            self.opts.quiet,
            format!("put {source}"),
        )
        .await;
        drop(rx);
        let _ = walker.await;
        let counted = totals.is_some();
        let mut run = TreeRun::new(
            "put",
            source,
            self.root_path.clone(),
            &totals.unwrap_or_default(),
            self.opts.jobs,
            self.opts.quiet,
            self.token.clone(),
        );
        run.set_rerun_hint(self.hint.clone());
        if counted {
            let (mut rx, walker) = walk::local(local);
            let mut dirs: DirStack<u64> = DirStack::default();
            while let Some(e) = run.next(&mut rx).await {
                self.entry(e, &mut dirs, &mut run).await;
            }
            drop(rx);
            let _ = walker.await;
        }
        run.finish().await
    }

    /// Copies one entry, or starts its copy.
    async fn entry(&self, e: Entry<LocalSrc>, dirs: &mut DirStack<u64>, run: &mut TreeRun) {
        let depth = e.rel.len();
        let src = e.src.path.display().to_string();
        let is_dir = e.kind == EntryKind::Dir;
        let (parent, name) = if depth == 0 {
            match &self.root_at {
                RootAt::Entry { parent, name } => (*parent, name.clone()),
                RootAt::Dir(ino) => {
                    dirs.entered(0, Some(*ino));
                    run.dir_done();
                    return;
                }
            }
        } else {
            match dirs.parent(depth) {
                Some(p) => (*p, e.rel[depth - 1].clone()),
                None => {
                    run.below_failed(&e);
                    if is_dir {
                        dirs.entered(depth, None);
                    }
                    return;
                }
            }
        };
        let dest = join_display(&self.root_path, &e.rel);
        if let Err(k) = validate_name(&name) {
            let size = match e.kind {
                EntryKind::File { size } => size,
                _ => 0,
            };
            run.fail(&src, &format!("{dest}: not a valid name here ({k})"), size);
            if is_dir {
                dirs.entered(depth, None);
            }
            return;
        }
        let meta = &self.conn.meta;
        let md = &e.src.md;
        match e.kind {
            EntryKind::Dir => match make_dir(meta, parent, &name, e.mode, md, &dest).await {
                Ok(ino) => {
                    dirs.entered(depth, Some(ino));
                    run.dir_done();
                }
                Err(err) => {
                    dirs.entered(depth, None);
                    run.fail(&src, &format!("{err:#} (its contents are not copied)"), 0);
                }
            },
            EntryKind::Symlink => {
                let made = match std::fs::read_link(&e.src.path) {
                    Ok(t) => {
                        let target = t.as_os_str().as_bytes().to_vec();
                        make_symlink(meta, parent, &name, target, md, &dest).await
                    }
                    Err(err) => Err(anyhow!("cannot read the link: {err}")),
                };
                match made {
                    Ok(()) => run.symlink_done(),
                    Err(err) => run.fail(&src, &format!("{err:#}"), 0),
                }
            }
            EntryKind::Special(what) => run.skip(&src, what),
            EntryKind::File { size } => {
                let (conn, sessions, token) =
                    (self.conn.clone(), self.sessions.clone(), self.token.clone());
                let LocalSrc { path, md } = e.src;
                run.spawn_file(src, size, move |progress| async move {
                    let target = Target {
                        parent,
                        name,
                        path: dest,
                        existing: None,
                    };
                    // Deciding takes a lookup and maybe a read of the whole file: a stop cuts
                    // it short (nothing is written until the put itself, which stops cleanly).
                    let decided = tokio::select! {
                        d = decide(&conn, &path, &md, target) => d?,
                        _ = token.cancelled() => {
                            return Err(anyhow!(Interrupted("interrupted".into())))
                        }
                    };
                    let target = match decided {
                        Decided::Unchanged => {
                            return Ok(FileDone {
                                unchanged: true,
                                transferred: 0,
                            })
                        }
                        Decided::Put(t) => t,
                    };
                    let ours = sessions
                        .get(&(target.parent, target.name.clone()))
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    let s = put_file(
                        &conn,
                        &path,
                        &md,
                        target,
                        ours,
                        &progress,
                        token.cancelled_owned(),
                    )
                    .await?;
                    Ok(FileDone {
                        unchanged: false,
                        transferred: s.sent,
                    })
                });
            }
        }
    }
}

enum Decided {
    /// The target already holds the file's bytes (its attributes are set if they differed).
    Unchanged,
    Put(Target),
}

/// Whether the regular file `local` must be put at `target`: not when the target already holds
/// exactly its bytes ([`local_holds`]).
async fn decide(
    conn: &Conn,
    local: &Path,
    md: &Metadata,
    mut target: Target,
) -> anyhow::Result<Decided> {
    let path = &target.path;
    let existing = lookup(&conn.meta, target.parent, &target.name)
        .await
        .map_err(|s| meta_error(&format!("lookup of {path}"), &s))?;
    if let Some(a) = &existing {
        anyhow::ensure!(!is_dir(a), "{path} exists and is a directory");
        anyhow::ensure!(is_regular(a), "{path} exists and is not a regular file");
        if a.size == md.len() {
            let base = load_remote(&conn.dp, a.ino, path).await?;
            if base.size == md.len() && local_holds(conn, local, &base).await? {
                set_attrs_like(&conn.meta, a, md, path).await?;
                return Ok(Decided::Unchanged);
            }
        }
    }
    target.existing = existing;
    Ok(Decided::Put(target))
}

/// Gives the remote file `a` the mode, owner and mtime of the local file `md`, where they
/// differ (what a put would have committed).
async fn set_attrs_like(
    meta: &Meta,
    a: &pb::Attr,
    md: &Metadata,
    path: &str,
) -> anyhow::Result<()> {
    let mode = md.permissions().mode() & 0o7777;
    let mtime = cairn_common::time::to_wire(md.modified().unwrap_or(UNIX_EPOCH));
    let req = pb::SetAttrRequest {
        ino: a.ino,
        mode: (a.mode & 0o7777 != mode).then_some(mode),
        uid: (a.uid != md.uid()).then_some(md.uid()),
        gid: (a.gid != md.gid()).then_some(md.gid()),
        mtime: (a.mtime.as_ref() != Some(&mtime)).then_some(mtime),
        ..Default::default()
    };
    if req.mode.is_none() && req.uid.is_none() && req.gid.is_none() && req.mtime.is_none() {
        return Ok(());
    }
    meta.set_attr(req)
        .await
        .map(drop)
        .map_err(|s| meta_error(&format!("setting the attributes of {path}"), &s))
}

/// Makes directory `name` in `parent` with `mode` and the owner of `md`; an existing directory
/// is kept and given `mode`. Its inode.
async fn make_dir(
    meta: &Meta,
    parent: u64,
    name: &[u8],
    mode: u32,
    md: &Metadata,
    path: &str,
) -> anyhow::Result<u64> {
    let req = pb::CreateRequest {
        parent,
        name: name.to_vec(),
        kind: pb::FileKind::Directory as i32,
        mode,
        uid: md.uid(),
        gid: md.gid(),
        exclusive: true,
        ..Default::default()
    };
    match meta.create(req).await {
        Ok((a, _)) => Ok(a.ino),
        Err(s) if ErrorKind::from_status(&s) == ErrorKind::AlreadyExists => {
            let a = lookup(meta, parent, name)
                .await
                .map_err(|s| meta_error(&format!("lookup of {path}"), &s))?
                .ok_or_else(|| anyhow!("{path} was removed while it was being made; run again"))?;
            anyhow::ensure!(is_dir(&a), "{path} exists and is not a directory");
            if a.mode & 0o7777 != mode {
                let req = pb::SetAttrRequest {
                    ino: a.ino,
                    mode: Some(mode),
                    ..Default::default()
                };
                meta.set_attr(req)
                    .await
                    .map_err(|s| meta_error(&format!("setting the mode of {path}"), &s))?;
            }
            Ok(a.ino)
        }
        Err(s) => Err(meta_error(&format!("making directory {path}"), &s)),
    }
}

/// Makes symlink `name` in `parent` pointing to `target`. A link already there with that
/// target is kept; another link or a file there is replaced; a directory is an error.
async fn make_symlink(
    meta: &Meta,
    parent: u64,
    name: &[u8],
    target: Vec<u8>,
    md: &Metadata,
    path: &str,
) -> anyhow::Result<()> {
    let req = pb::CreateRequest {
        parent,
        name: name.to_vec(),
        kind: pb::FileKind::Symlink as i32,
        mode: 0o777,
        uid: md.uid(),
        gid: md.gid(),
        symlink_target: target.clone(),
        exclusive: true,
        ..Default::default()
    };
    // Twice at most: once, and once more after removing what was there.
    for _ in 0..2 {
        let s = match meta.create(req.clone()).await {
            Ok(_) => return Ok(()),
            Err(s) => s,
        };
        if ErrorKind::from_status(&s) != ErrorKind::AlreadyExists {
            return Err(meta_error(&format!("making symlink {path}"), &s));
        }
        let Some(a) = lookup(meta, parent, name)
            .await
            .map_err(|s| meta_error(&format!("lookup of {path}"), &s))?
        else {
            continue;
        };
        anyhow::ensure!(!is_dir(&a), "{path} exists and is a directory");
        if Kind::from_wire(a.kind) == Some(Kind::Symlink) {
            let there = meta
                .readlink(a.ino)
                .await
                .map_err(|s| meta_error(&format!("reading symlink {path}"), &s))?;
            if there == target {
                return Ok(());
            }
        }
        let req = pb::UnlinkRequest {
            parent,
            name: name.to_vec(),
            ..Default::default()
        };
        match meta.unlink(req).await {
            Ok(_) => {}
            Err(s) if ErrorKind::from_status(&s) == ErrorKind::NotFound => {}
            Err(s) => return Err(meta_error(&format!("replacing {path}"), &s)),
        }
    }
    bail!("{path} kept being replaced while the symlink was made; run again")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_keeps_its_own_name() {
        let n = |p: &str| source_name(Path::new(p)).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(n("photos").as_deref(), Some("photos"));
        assert_eq!(n("./a/photos/").as_deref(), Some("photos"));
        assert_eq!(n("/"), None, "the root has no name");
        let cwd = std::env::current_dir().unwrap();
        let here = cwd.file_name().map(|s| s.to_string_lossy().into_owned());
        assert_eq!(n("."), here, "`.` is the current directory's name");
    }
}
