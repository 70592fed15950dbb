//! Every conversion between the wire (`cairn_proto`) and the meta server's own types, each in
//! one place. Conversions from the wire check what they convert and refuse malformed input
//! with `InvalidArgument` before anything happens.
use super::checks::invalid;
use crate::command::{Kind, LockRange, LockType, SlotChunk, Time, UploadTarget};
use crate::fsm::{HeldLock, Inode, UploadHeader};
use cairn_common::{ChunkId, CHUNK_SIZE};
use cairn_proto as pb;
use std::collections::HashMap;
use tonic::{Response, Status};

// --- inodes and attributes -------------------------------------------------------------------

impl From<&Inode> for pb::Attr {
    fn from(i: &Inode) -> pb::Attr {
        pb::Attr {
            ino: i.ino,
            kind: i.kind.to_wire() as i32,
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            nlink: i.nlink,
            atime: Some(i.atime.into()),
            mtime: Some(i.mtime.into()),
            ctime: Some(i.ctime.into()),
            version: i.version,
            rdev: i.rdev,
            stored_bytes: i.stored_bytes,
        }
    }
}

/// The reply of a call that returns one inode's attributes.
pub fn attr_reply(i: &Inode) -> Response<pb::AttrReply> {
    Response::new(pb::AttrReply {
        attr: Some(i.into()),
        parent: None,
    })
}

/// The kind a request names; `InvalidArgument` for `UNSPECIFIED` and unknown values.
pub fn kind(k: i32) -> Result<Kind, Status> {
    Kind::from_wire(k).ok_or_else(|| invalid(format!("unknown or unspecified file kind {k}")))
}

// --- time ------------------------------------------------------------------------------------

/// A wire timestamp, checked (`nanos` below one second).
pub fn time(t: &pb::Timestamp) -> Result<Time, Status> {
    let t = Time::from(*t);
    if !t.is_valid() {
        return Err(invalid(format!("timestamp nanos {} out of range", t.nanos)));
    }
    Ok(t)
}

// --- chunks ----------------------------------------------------------------------------------

pub fn chunk_id(b: &[u8]) -> Result<ChunkId, Status> {
    ChunkId::from_bytes(b).map_err(|e| invalid(e.to_string()))
}

/// A wire chunk reference, checked: a 32-byte id, `0 < stored_len <= CHUNK_SIZE`,
/// `len <= stored_len`.
pub fn slot_chunk(c: &pb::ChunkRef) -> Result<SlotChunk, Status> {
    let id = chunk_id(&c.id)?;
    if c.stored_len == 0 || c.stored_len as usize > CHUNK_SIZE || c.len > c.stored_len {
        return Err(invalid(format!(
            "chunk {id}: need len ({}) <= stored_len ({}) <= {CHUNK_SIZE}, stored_len > 0",
            c.len, c.stored_len
        )));
    }
    Ok(SlotChunk {
        id,
        len: c.len,
        stored_len: c.stored_len,
    })
}

pub fn chunk_ref(c: &SlotChunk) -> pb::ChunkRef {
    pb::ChunkRef {
        id: c.id.as_bytes().to_vec(),
        len: c.len,
        stored_len: c.stored_len,
    }
}

// --- locks -----------------------------------------------------------------------------------

/// A wire lock request, checked (a known type, a non-empty range).
pub fn lock_range(l: Option<pb::FileLock>) -> Result<LockRange, Status> {
    let l = l.ok_or_else(|| invalid("lock missing"))?;
    let typ = match pb::LockType::try_from(l.typ) {
        Ok(pb::LockType::Read) => LockType::Read,
        Ok(pb::LockType::Write) => LockType::Write,
        Ok(pb::LockType::Unlock) => LockType::Unlock,
        _ => return Err(invalid(format!("bad lock type {}", l.typ))),
    };
    if l.start > l.end {
        return Err(invalid(format!(
            "lock range {}..={} is empty",
            l.start, l.end
        )));
    }
    Ok(LockRange {
        typ,
        start: l.start,
        end: l.end,
        pid: l.pid,
    })
}

/// The answer to `F_GETLK`: the conflicting lock, or the request itself marked `Unlock`.
pub fn lock_answer(conflict: Option<HeldLock>, want: &LockRange) -> pb::FileLock {
    match conflict {
        Some(h) => pb::FileLock {
            typ: if h.write {
                pb::LockType::Write
            } else {
                pb::LockType::Read
            } as i32,
            start: h.start,
            end: h.end,
            pid: h.pid,
        },
        None => pb::FileLock {
            typ: pb::LockType::Unlock as i32,
            start: want.start,
            end: want.end,
            pid: want.pid,
        },
    }
}

// --- uploads ---------------------------------------------------------------------------------

/// The inode whose path names an upload's target: the file, or the directory of a new name.
pub fn upload_path_ino(t: &UploadTarget) -> u64 {
    match t {
        UploadTarget::Inode(ino) => *ino,
        UploadTarget::Name { parent, .. } => *parent,
    }
}

/// One recorded slot of an upload on the wire.
pub fn upload_slot(index: u64, c: &SlotChunk) -> pb::SlotUpdate {
    pb::SlotUpdate {
        index,
        chunk: Some(chunk_ref(c)),
        replicas: Vec::new(),
        ticket: 0,
    }
}

/// An upload as `cairn uploads list` shows it, with its number of recorded `slots` and the file
/// `bytes` they hold; `paths` resolves [`upload_path_ino`] (absent: no path).
pub fn upload_info(
    h: &UploadHeader,
    slots: u64,
    bytes: u64,
    paths: &HashMap<u64, String>,
) -> pb::UploadInfo {
    let (ino, parent, name, path) = match &h.target {
        UploadTarget::Inode(ino) => (*ino, 0, Vec::new(), paths.get(ino).cloned()),
        UploadTarget::Name { parent, name } => (
            0,
            *parent,
            name.clone(),
            paths.get(parent).map(|p| {
                let sep = if p.ends_with('/') { "" } else { "/" };
                format!("{p}{sep}{}", String::from_utf8_lossy(name))
            }),
        ),
    };
    pb::UploadInfo {
        upload: h.id,
        ino,
        parent,
        name,
        base_version: h.base_version,
        label: h.label.clone(),
        host: h.host.clone(),
        created: Some(h.created.into()),
        touched: Some(h.touched.into()),
        slots,
        bytes,
        path: path.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::ErrorKind;

    #[test]
    fn chunk_refs_are_checked() {
        let id = ChunkId::of(b"x").as_bytes().to_vec();
        let ok = pb::ChunkRef {
            id: id.clone(),
            len: 10,
            stored_len: 20,
        };
        assert_eq!(slot_chunk(&ok).unwrap().len, 10);
        assert_eq!(chunk_ref(&slot_chunk(&ok).unwrap()), ok);
        for bad in [
            pb::ChunkRef {
                id: vec![0; 31],
                len: 1,
                stored_len: 1,
            },
            pb::ChunkRef {
                id: id.clone(),
                len: 21,
                stored_len: 20,
            },
            pb::ChunkRef {
                id: id.clone(),
                len: 0,
                stored_len: 0,
            },
            pb::ChunkRef {
                id,
                len: 1,
                stored_len: CHUNK_SIZE as u32 + 1,
            },
        ] {
            let e = slot_chunk(&bad).unwrap_err();
            assert_eq!(ErrorKind::from_status(&e), ErrorKind::InvalidArgument);
        }
    }

    #[test]
    fn times_kinds_and_locks_are_checked() {
        assert!(time(&pb::Timestamp {
            secs: 1,
            nanos: 1_000_000_000
        })
        .is_err());
        let before_1970 = time(&pb::Timestamp { secs: -2, nanos: 5 }).unwrap();
        assert_eq!(pb::Timestamp::from(before_1970).secs, -2);
        assert!(kind(0).is_err());
        assert_eq!(kind(pb::FileKind::Fifo as i32).unwrap(), Kind::Fifo);
        let lock = |start, end| {
            lock_range(Some(pb::FileLock {
                typ: pb::LockType::Read as i32,
                start,
                end,
                pid: 1,
            }))
        };
        assert!(lock(5, 4).is_err());
        assert!(lock(4, 4).is_ok());
        assert!(lock_range(None).is_err());
    }
}
