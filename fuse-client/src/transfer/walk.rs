//! The two walks of a tree copy: a local directory (`cairn put -r`) and a directory inside the
//! file system (`cairn get -r`). Each runs beside the copy and feeds it [`Entry`]s through a
//! bounded queue, in pre-order (a directory before its contents), never following a symlink.
//! Neither holds the tree: the local walk keeps one open directory per level (`walkdir`), the
//! remote one a page of `ReadDir` entries per level.
//!
//! **Shutdown.** A walk ends when the tree is done or when its queue's receiver is dropped: the
//! copy stopped, and the next send fails. Whoever drops the receiver may then await the walk's
//! handle.
use super::tree::{special_name, Entry, EntryKind, Name, WalkError, Walked, WALK_QUEUE};
use super::{display_path, meta_error};
use crate::meta::Meta;
use cairn_common::Kind;
use cairn_proto as pb;
use std::collections::VecDeque;
use std::fs::{FileType, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Entries of a remote directory read per `ReadDir`.
const READDIR_PAGE: u32 = 512;

/// A local entry: its path (the root joined with the entry's names) and `lstat` (for the root:
/// `stat`; a symlink named on the command line is followed).
#[derive(Debug)]
pub struct LocalSrc {
    pub path: PathBuf,
    pub md: Metadata,
}

/// Walks the local tree at `root` on a blocking thread.
pub fn local(root: PathBuf) -> (mpsc::Receiver<Walked<LocalSrc>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(WALK_QUEUE);
    let walker = tokio::task::spawn_blocking(move || {
        for item in walkdir::WalkDir::new(&root).follow_links(false) {
            let walked = match item {
                Ok(e) => local_entry(&e),
                Err(e) => Err(WalkError {
                    path: e.path().unwrap_or(root.as_path()).display().to_string(),
                    error: match e.io_error() {
                        Some(io) => format!("cannot read: {io}"),
                        None => e.to_string(),
                    },
                }),
            };
            if tx.blocking_send(walked).is_err() {
                return; // The copy stopped.
            }
        }
    });
    (rx, walker)
}

fn local_entry(e: &walkdir::DirEntry) -> Walked<LocalSrc> {
    let path = e.path().to_owned();
    let md = if e.depth() == 0 {
        std::fs::metadata(&path)
    } else {
        std::fs::symlink_metadata(&path)
    }
    .map_err(|err| WalkError {
        path: path.display().to_string(),
        error: format!("cannot stat: {err}"),
    })?;
    Ok(Entry {
        rel: rel_names(&path, e.depth()),
        kind: local_kind(&md),
        mode: md.permissions().mode() & 0o7777,
        src: LocalSrc { path, md },
    })
}

/// The last `depth` names of `path`: the entry's names below the walk's root.
pub fn rel_names(path: &Path, depth: usize) -> Vec<Name> {
    let names: Vec<Name> = path
        .components()
        .map(|c| c.as_os_str().as_bytes().to_vec())
        .collect();
    names[names.len().saturating_sub(depth)..].to_vec()
}

pub fn local_kind(md: &Metadata) -> EntryKind {
    let ft = md.file_type();
    if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File { size: md.len() }
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Special(special_name(special_kind(ft)))
    }
}

fn special_kind(ft: FileType) -> Kind {
    if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else if ft.is_char_device() {
        Kind::CharDevice
    } else if ft.is_block_device() {
        Kind::BlockDevice
    } else {
        Kind::Regular
    }
}

pub fn remote_kind(a: &pb::Attr) -> EntryKind {
    match Kind::from_wire(a.kind) {
        Some(Kind::Directory) => EntryKind::Dir,
        Some(Kind::Regular) => EntryKind::File { size: a.size },
        Some(Kind::Symlink) => EntryKind::Symlink,
        Some(k) => EntryKind::Special(special_name(k)),
        None => EntryKind::Special("entry of an unknown kind"),
    }
}

/// Walks the tree of the file system whose root is `root` (at `root_comps`) in a task.
pub fn remote(
    meta: Meta,
    root: pb::Attr,
    root_comps: Vec<Name>,
) -> (mpsc::Receiver<Walked<pb::Attr>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(WALK_QUEUE);
    let walker = tokio::spawn(walk_remote(meta, root, root_comps, tx));
    (rx, walker)
}

/// One directory being listed: the entries of its current page not yet sent.
struct Frame {
    ino: u64,
    rel: Vec<Name>,
    after: Name,
    page: VecDeque<pb::DirEntry>,
    eof: bool,
}

impl Frame {
    fn new(ino: u64, rel: Vec<Name>) -> Frame {
        Frame {
            ino,
            rel,
            after: Vec::new(),
            page: VecDeque::new(),
            eof: false,
        }
    }
}

async fn walk_remote(
    meta: Meta,
    root: pb::Attr,
    root_comps: Vec<Name>,
    tx: mpsc::Sender<Walked<pb::Attr>>,
) {
    let path_of = |rel: &[Name]| display_path(&[root_comps.as_slice(), rel].concat());
    let root_entry = Entry {
        rel: Vec::new(),
        kind: remote_kind(&root),
        mode: root.mode & 0o7777,
        src: root,
    };
    let is_dir = root_entry.kind == EntryKind::Dir;
    if tx.send(Ok(root_entry)).await.is_err() || !is_dir {
        return;
    }
    let mut stack = vec![Frame::new(root.ino, Vec::new())];
    while let Some(top) = stack.last_mut() {
        let Some(de) = top.page.pop_front() else {
            if top.eof {
                stack.pop();
                continue;
            }
            match meta.read_dir(top.ino, &top.after, READDIR_PAGE).await {
                Ok(r) if r.entries.is_empty() && !r.eof => {
                    let e = WalkError {
                        path: path_of(&top.rel),
                        error: "the listing returned an empty page before its end".into(),
                    };
                    stack.pop();
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
                Ok(r) => {
                    if let Some(last) = r.entries.last() {
                        top.after = last.name.clone();
                    }
                    top.page = r.entries.into();
                    top.eof = r.eof;
                }
                Err(s) => {
                    let path = path_of(&top.rel);
                    let e = WalkError {
                        error: format!("{:#}", meta_error("cannot list the directory", &s)),
                        path,
                    };
                    stack.pop();
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
            }
            continue;
        };
        if de.name == b"." || de.name == b".." {
            continue;
        }
        let mut rel = top.rel.clone();
        rel.push(de.name);
        let Some(attr) = de.attr else {
            let e = WalkError {
                path: path_of(&rel),
                error: "listed without attributes".into(),
            };
            if tx.send(Err(e)).await.is_err() {
                return;
            }
            continue;
        };
        let kind = remote_kind(&attr);
        let dir = (kind == EntryKind::Dir).then(|| Frame::new(attr.ino, rel.clone()));
        let entry = Entry {
            rel,
            kind,
            mode: attr.mode & 0o7777,
            src: attr,
        };
        if tx.send(Ok(entry)).await.is_err() {
            return; // The copy stopped.
        }
        if let Some(f) = dir {
            stack.push(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<Name> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn an_entrys_names_are_the_last_depth_components() {
        assert_eq!(rel_names(Path::new("./src/a/b"), 2), names(&["a", "b"]));
        assert_eq!(rel_names(Path::new("src/"), 0), names(&[]));
        assert_eq!(rel_names(Path::new("/abs/x"), 1), names(&["x"]));
        assert_eq!(rel_names(Path::new("./x"), 1), names(&["x"]));
    }

    /// The local walk of a real tree: pre-order, symlinks reported not followed, a FIFO as a
    /// special file, and every entry's names below the root.
    #[tokio::test]
    async fn the_local_walk_sees_every_entry_parent_first_and_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), b"12345").unwrap();
        std::fs::write(root.join("top"), b"").unwrap();
        std::os::unix::fs::symlink("a", root.join("link")).unwrap();
        let fifo = root.join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

        let (mut rx, walker) = local(root.clone());
        let mut seen = Vec::new();
        while let Some(w) = rx.recv().await {
            let e = w.unwrap();
            seen.push((String::from_utf8(e.rel.join(&b'/')).unwrap(), e.kind));
        }
        walker.await.unwrap();
        let pos = |p: &str| seen.iter().position(|(q, _)| q == p).unwrap();
        assert_eq!(seen[0], (String::new(), EntryKind::Dir), "the root first");
        assert!(
            pos("a") < pos("a/b") && pos("a/b") < pos("a/b/f"),
            "{seen:?}"
        );
        assert_eq!(seen[pos("a/b/f")].1, EntryKind::File { size: 5 });
        assert_eq!(seen[pos("top")].1, EntryKind::File { size: 0 });
        assert_eq!(seen[pos("link")].1, EntryKind::Symlink);
        assert_eq!(seen[pos("pipe")].1, EntryKind::Special("FIFO"));
        assert_eq!(seen.len(), 7, "nothing through the link: {seen:?}");
    }
}
