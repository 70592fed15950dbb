//! fsck: the namespace checked against the chunk inventory.
//!
//! Every chunk a file references is looked up in the chunk table and judged by its listed
//! replicas on servers that are up: as many as the replication factor is healthy, fewer is
//! under-replicated, none is missing (the data is lost, or unreachable until a server returns).
//! Suspect copies (reported bad, not yet re-verified by their server) do not count as healthy,
//! but a chunk whose only reachable copies are suspect is **suspect**, not missing: its bytes
//! may well be intact, and repair's verification decides. A referenced chunk with no record at
//! all is missing too. Files holding a missing, suspect or under-replicated chunk are listed
//! with their paths.
use crate::error::MetaError;
use crate::fsm::Fsm;
use cairn_common::ChunkId;
use cairn_proto as pb;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Most affected files one fsck lists.
pub const MAX_FSCK_FILES: usize = 10_000;

/// How bad a chunk is; the worst chunk of a file decides the file's problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Problem {
    UnderReplicated,
    Suspect,
    Missing,
}

impl Problem {
    fn as_str(self) -> &'static str {
        match self {
            Problem::UnderReplicated => "under-replicated",
            Problem::Suspect => "suspect",
            Problem::Missing => "missing",
        }
    }
}

/// Checks every referenced chunk; `up` says whether a chunk server is up.
pub fn fsck(
    fsm: &Fsm,
    replication: usize,
    up: impl Fn(u64) -> bool,
    max_files: usize,
) -> Result<pb::FsckReply, MetaError> {
    let mut reply = pb::FsckReply {
        replication: replication as u32,
        ..Default::default()
    };
    // Chunk verdicts, for the chunks that have a problem.
    let mut bad: HashMap<ChunkId, Problem> = HashMap::new();
    let mut after: Option<ChunkId> = None;
    loop {
        let page = fsm.chunk_page(after.as_ref(), 4096)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        for (id, rec) in page {
            if rec.refs == 0 {
                continue;
            }
            reply.chunks += 1;
            if rec.inline {
                // Replicated by Raft with the rest of the state; check its bytes.
                match fsm.inline_data(&id)? {
                    Some(data) if ChunkId::inline_of(&data) == id => reply.healthy += 1,
                    _ => {
                        tracing::error!(chunk = %id, "inline chunk missing or corrupt");
                        reply.missing += 1;
                        bad.insert(id, Problem::Missing);
                    }
                }
                continue;
            }
            let live = rec.trusted().into_iter().filter(|s| up(*s)).count();
            if live >= replication {
                reply.healthy += 1;
            } else if live == 0 && rec.suspect.iter().any(|s| up(*s)) {
                reply.suspect += 1;
                bad.insert(id, Problem::Suspect);
            } else if live == 0 {
                reply.missing += 1;
                bad.insert(id, Problem::Missing);
            } else {
                reply.under_replicated += 1;
                bad.insert(id, Problem::UnderReplicated);
            }
        }
    }
    reply.corrupt_reported = fsm.repair_queue()?.len() as u64;

    // Files whose chunks have problems, worst first in the listing.
    let mut affected: BTreeMap<u64, Problem> = BTreeMap::new();
    fsm.for_each_inode(|inode| match inode.kind {
        crate::command::Kind::Directory => reply.directories += 1,
        crate::command::Kind::Regular => reply.files += 1,
        _ => {}
    })?;
    fsm.for_each_slot(|ino, _, slot| {
        let p = match bad.get(&slot.id) {
            Some(p) => Some(*p),
            None => match fsm.chunk(&slot.id) {
                Ok(Some(_)) => None,
                // A slot pointing at no chunk record: its data is gone.
                Ok(None) | Err(_) => Some(Problem::Missing),
            },
        };
        if let Some(p) = p {
            let e = affected.entry(ino).or_insert(p);
            *e = (*e).max(p);
        }
    })?;
    if affected.is_empty() {
        return Ok(reply);
    }
    let paths = paths_of(fsm, affected.keys().copied().take(max_files).collect())?;
    let mut listed: Vec<pb::FsckFile> = affected
        .iter()
        .take(max_files)
        .map(|(ino, p)| pb::FsckFile {
            path: paths
                .get(ino)
                .cloned()
                .unwrap_or_else(|| format!("<unlinked inode {ino}>")),
            ino: *ino,
            problem: p.as_str().to_string(),
        })
        .collect();
    // Lost data first, then by path.
    listed.sort_by(|a, b| {
        let lost = |f: &pb::FsckFile| f.problem != Problem::Missing.as_str();
        lost(a).cmp(&lost(b)).then_with(|| a.path.cmp(&b.path))
    });
    reply.affected_not_listed = (affected.len() - listed.len()) as u64;
    reply.affected = listed;
    Ok(reply)
}

/// One path of each inode in `inos` that still has a name (hard-linked files have several; any
/// one will do). Memory is bounded by `inos` and their ancestors, never by the namespace:
/// directories know their parent and are named by a scan of that parent's entries only; files
/// (no parent pointer) are found by one pass over the directory entries that keeps just the
/// wanted ones. Callers run it off the async runtime threads (it may read every entry).
pub(crate) fn paths_of(fsm: &Fsm, inos: Vec<u64>) -> Result<HashMap<u64, String>, MetaError> {
    // Each wanted inode's (parent directory, name).
    let mut named: HashMap<u64, (u64, Vec<u8>)> = HashMap::new();
    let mut files: HashSet<u64> = HashSet::new();
    for ino in &inos {
        match fsm.get_opt(*ino)? {
            Some(i) if i.is_dir() => {
                if let Some(up) = dir_parent(fsm, &i)? {
                    named.insert(*ino, up);
                }
            }
            Some(_) => {
                files.insert(*ino);
            }
            None => {}
        }
    }
    if !files.is_empty() {
        fsm.for_each_dentry(|parent, name, child| {
            if files.contains(&child) {
                named
                    .entry(child)
                    .or_insert_with(|| (parent, name.to_vec()));
            }
        })?;
    }
    // Directory paths, each resolved once.
    let mut dirs: HashMap<u64, Option<String>> = HashMap::new();
    dirs.insert(cairn_common::ROOT_INO, Some(String::new()));
    let mut out = HashMap::new();
    for ino in inos {
        if ino == cairn_common::ROOT_INO {
            out.insert(ino, "/".to_string());
            continue;
        }
        let Some((parent, name)) = named.get(&ino) else {
            continue;
        };
        if let Some(dir) = dir_path(fsm, *parent, &mut dirs)? {
            out.insert(ino, format!("{dir}/{}", String::from_utf8_lossy(name)));
        }
    }
    Ok(out)
}

/// The (parent, name) of directory `dir`; `None` for the root or a directory no longer named
/// in its parent.
fn dir_parent(fsm: &Fsm, dir: &crate::fsm::Inode) -> Result<Option<(u64, Vec<u8>)>, MetaError> {
    if dir.ino == cairn_common::ROOT_INO {
        return Ok(None);
    }
    Ok(fsm
        .name_in(dir.parent, dir.ino)?
        .map(|name| (dir.parent, name)))
}

/// The path of directory `dir` ("" for the root), walking up through `known`; `None` when it
/// no longer reaches the root.
fn dir_path(
    fsm: &Fsm,
    dir: u64,
    known: &mut HashMap<u64, Option<String>>,
) -> Result<Option<String>, MetaError> {
    // Walk up until a directory whose path is known (the root is), then fill in on the way
    // back down. Bounded: a corrupt table cannot loop forever.
    let mut chain: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut cur = dir;
    let mut base = None;
    for _ in 0..4096 {
        if let Some(p) = known.get(&cur) {
            base = Some(p.clone());
            break;
        }
        match fsm.get_opt(cur)?.filter(|i| i.is_dir()) {
            Some(i) => match dir_parent(fsm, &i)? {
                Some((parent, name)) => {
                    chain.push((cur, name));
                    cur = parent;
                }
                None => break,
            },
            None => break,
        }
    }
    let mut path = base.flatten();
    for (d, name) in chain.into_iter().rev() {
        path = path.map(|p| format!("{p}/{}", String::from_utf8_lossy(&name)));
        known.insert(d, path.clone());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Create, Kind, Link, Time};
    use rocksdb::WriteBatch;

    fn create(fsm: &Fsm, db: &rocksdb::DB, index: u64, parent: u64, name: &str, kind: Kind) -> u64 {
        let cmd = Command::Create(Create {
            parent,
            name: name.as_bytes().to_vec(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            rdev: 0,
            symlink_target: Vec::new(),
            exclusive: true,
            now: Time::now(),
        });
        let mut batch = WriteBatch::default();
        let reply = fsm
            .apply(&cmd, index, &mut batch, &mut blake3::Hasher::new())
            .unwrap();
        db.write(batch).unwrap();
        match reply {
            crate::command::Reply::Attr(i) => i.ino,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths_of_directories_files_and_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_db(&dir.path().join("db")).unwrap();
        let fsm = Fsm::open(db.clone()).unwrap();
        let root = cairn_common::ROOT_INO;
        let a = create(&fsm, &db, 1, root, "a", Kind::Directory);
        let b = create(&fsm, &db, 2, a, "b", Kind::Directory);
        let f = create(&fsm, &db, 3, b, "f", Kind::Regular);
        let g = create(&fsm, &db, 4, root, "g", Kind::Regular);
        let link = Command::Link(Link {
            ino: g,
            new_parent: b,
            new_name: b"g2".to_vec(),
            now: Time::now(),
        });
        let mut batch = WriteBatch::default();
        fsm.apply(&link, 5, &mut batch, &mut blake3::Hasher::new())
            .unwrap();
        db.write(batch).unwrap();

        let paths = paths_of(&fsm, vec![root, a, b, f, g, 999]).unwrap();
        assert_eq!(paths[&root], "/");
        assert_eq!(paths[&a], "/a");
        assert_eq!(paths[&b], "/a/b");
        assert_eq!(paths[&f], "/a/b/f");
        assert!(
            ["/g", "/a/b/g2"].contains(&paths[&g].as_str()),
            "{}",
            paths[&g]
        );
        assert!(!paths.contains_key(&999), "no such inode, no path");
    }
}
