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
use std::collections::{BTreeMap, HashMap};

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
    fsm.for_each_inode(|inode| {
        match inode.kind {
            crate::command::Kind::Directory => reply.directories += 1,
            crate::command::Kind::Regular => reply.files += 1,
            _ => {}
        }
        for slot in inode.slots.values() {
            let p = match bad.get(&slot.id) {
                Some(p) => Some(*p),
                None => match fsm.chunk(&slot.id) {
                    Ok(Some(_)) => None,
                    // A slot pointing at no chunk record: its data is gone.
                    Ok(None) | Err(_) => Some(Problem::Missing),
                },
            };
            if let Some(p) = p {
                let e = affected.entry(inode.ino).or_insert(p);
                *e = (*e).max(p);
            }
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

/// One path of each inode in `inos` (hard-linked files have several; any one will do).
pub(crate) fn paths_of(fsm: &Fsm, inos: Vec<u64>) -> Result<HashMap<u64, String>, MetaError> {
    // child -> (parent, name) for every entry; directories appear once, files maybe more often.
    let mut up: HashMap<u64, (u64, Vec<u8>)> = HashMap::new();
    fsm.for_each_dentry(|parent, name, child| {
        up.entry(child).or_insert_with(|| (parent, name.to_vec()));
    })?;
    let mut out = HashMap::new();
    for ino in inos {
        let mut parts: Vec<String> = Vec::new();
        let mut cur = ino;
        // Bounded walk: a corrupt table cannot loop forever.
        for _ in 0..4096 {
            match up.get(&cur) {
                Some((parent, name)) if cur != cairn_common::ROOT_INO => {
                    parts.push(String::from_utf8_lossy(name).into_owned());
                    cur = *parent;
                }
                _ => break,
            }
        }
        if cur == cairn_common::ROOT_INO {
            parts.reverse();
            out.insert(ino, format!("/{}", parts.join("/")));
        }
    }
    Ok(out)
}
