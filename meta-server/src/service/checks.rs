//! Request checks: every bound and precondition a request must meet before anything is
//! proposed or read, in one place. Each failing check answers `InvalidArgument` (or the
//! errno-carrying kind of a bad name, `TooBig` for an xattr value) and changes nothing.
//!
//! Every request that becomes a Raft entry is bounded here, before it is proposed, with the
//! state machine's own limits where it has them (`XATTR_SIZE_MAX`, `SYMLINK_MAX`,
//! `LABEL_MAX`): an oversized entry would be refused at apply anyway, but only after it was
//! replicated, and an entry too large for an AppendEntries stalls replication. The last
//! backstop is `MetaNode::write`, which proposes no command larger than
//! [`MAX_COMMAND_BYTES`](crate::command::MAX_COMMAND_BYTES).
use super::convert;
use crate::command::{Command, InlineChunk, Keep, Kind, Once, Reply, SlotUpdate, Time};
use crate::error::MetaError;
use crate::fsm::{Fsm, LABEL_MAX, MAX_FILE_SIZE, SYMLINK_MAX, XATTR_SIZE_MAX};
use cairn_common::error::ErrorKind;
use cairn_common::CHUNK_SIZE;
use cairn_proto as pb;
use tonic::{Request, Status};

/// Most entries one ReadDir returns.
pub const MAX_READDIR: usize = 1000;
/// Most chunks one PrepareWrite may ask about.
pub const MAX_PREPARE_CHUNKS: usize = 1024;
/// Most slot updates one CommitWrite or RecordUpload may carry. A commit of more slots records
/// them in its upload session first, in batches of this size, and applies them with one small
/// CommitWrite (`apply_upload`).
pub const MAX_SLOT_UPDATES: usize = 4096;
/// Most servers one PrepareWrite may ask to avoid (the servers that failed for the client
/// recently: never more than a cluster has). Placement compares every candidate with every
/// avoided id for every chunk asked about, so an unbounded list (millions of ids fit in one
/// message) cost seconds of a runtime thread per request.
pub const MAX_EXCLUDE_SERVERS: usize = 1024;
/// Most replicas one slot update may list (more than any replication factor).
pub const MAX_SLOT_REPLICAS: usize = 64;
/// Most uploads one ListUploads page returns.
pub const MAX_LIST_UPLOADS: usize = 256;
/// Most slots one page of GetChunks or GetUpload returns (a page of GetChunks is some 150 bytes
/// a slot on the wire: well under a MiB).
pub const MAX_SLOT_PAGE: usize = 4096;
/// Most inline chunks one CommitWrite may carry (a file of up to `INLINE_MAX` bytes has one;
/// the command stays far below `MAX_COMMAND_BYTES`).
pub const MAX_INLINE_CHUNKS: usize = 8;
/// Longest `reason` a ReportBadReplica may carry.
pub const MAX_REASON_LEN: usize = 1024;
/// Most open inodes an unlink or rename may list (a bound on the message, not on the mount: a
/// mount with more open files lists only those the operation could remove).
pub const KEEP_MAX: usize = 1 << 16;
/// Longest chunk-server uuid and address.
pub const MAX_SERVER_UUID: usize = 128;
pub const MAX_ADDR: usize = 256;
/// Longest host name and mount point a session may carry.
pub const MAX_HOST: usize = 256;
pub const MAX_MOUNTPOINT: usize = 4096;

pub fn invalid(msg: impl Into<String>) -> Status {
    MetaError::Invalid(msg.into()).into()
}

/// The state machine answered a command with a reply of the wrong shape (a bug).
pub fn unexpected(r: Reply) -> Status {
    tracing::error!(reply = ?r, "state machine returned an unexpected reply");
    cairn_common::error::status(ErrorKind::Internal, format!("unexpected reply {r:?}"))
}

pub fn ino(ino: u64, what: &str) -> Result<u64, Status> {
    if ino == 0 {
        return Err(invalid(format!("{what}: inode 0 does not exist")));
    }
    Ok(ino)
}

pub fn name(name: &[u8]) -> Result<(), Status> {
    cairn_common::name::validate_name(name).map_err(|kind| {
        MetaError::fs(
            kind,
            format!("invalid name {:?}", String::from_utf8_lossy(name)),
        )
        .into()
    })
}

pub fn size(size: u64) -> Result<u64, Status> {
    if size > MAX_FILE_SIZE {
        return Err(invalid(format!("size {size} exceeds {MAX_FILE_SIZE}")));
    }
    Ok(size)
}

pub fn session(session: u64) -> Result<u64, Status> {
    if session == 0 {
        return Err(invalid("session 0 is not a session"));
    }
    Ok(session)
}

pub fn keep(session: u64, open: Vec<u64>) -> Result<Keep, Status> {
    if open.len() > KEEP_MAX {
        return Err(invalid(format!("more than {KEEP_MAX} open inodes listed")));
    }
    Ok(Keep { session, open })
}

/// A symlink has a target of 1..=[`SYMLINK_MAX`] bytes without NUL; nothing else has one.
pub fn symlink_target(kind: Kind, target: &[u8]) -> Result<(), Status> {
    if kind != Kind::Symlink {
        if !target.is_empty() {
            return Err(invalid("only symlinks have a target"));
        }
        return Ok(());
    }
    if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
        return Err(invalid(format!(
            "symlink target must be 1..={SYMLINK_MAX} bytes without NUL"
        )));
    }
    Ok(())
}

/// An xattr value of at most [`XATTR_SIZE_MAX`] bytes (`TooBig`, E2BIG, as Linux answers).
pub fn xattr_value(value: &[u8]) -> Result<(), Status> {
    if value.len() > XATTR_SIZE_MAX {
        return Err(MetaError::fs(
            ErrorKind::TooBig,
            format!(
                "attribute value of {} bytes is larger than {XATTR_SIZE_MAX}",
                value.len()
            ),
        )
        .into());
    }
    Ok(())
}

/// An upload's label and host: at most [`LABEL_MAX`] bytes each.
pub fn upload_label(label: &str, host: &str) -> Result<(), Status> {
    if label.len() > LABEL_MAX || host.len() > LABEL_MAX {
        return Err(invalid(format!(
            "label and host are at most {LABEL_MAX} bytes"
        )));
    }
    Ok(())
}

/// A mount session's host and mount point.
pub fn session_origin(host: &str, mountpoint: &str) -> Result<(), Status> {
    if host.len() > MAX_HOST || mountpoint.len() > MAX_MOUNTPOINT {
        return Err(invalid(format!(
            "host is at most {MAX_HOST} bytes, mount point at most {MAX_MOUNTPOINT}"
        )));
    }
    Ok(())
}

/// A chunk server's identity and address at registration.
pub fn chunk_server(uuid: &str, addr: &str) -> Result<(), Status> {
    if uuid.is_empty() || uuid.len() > MAX_SERVER_UUID {
        return Err(invalid(format!(
            "chunk server uuid must be 1..={MAX_SERVER_UUID} bytes"
        )));
    }
    if addr.is_empty() || addr.len() > MAX_ADDR {
        return Err(invalid(format!(
            "chunk server address must be 1..={MAX_ADDR} bytes"
        )));
    }
    Ok(())
}

/// At most `max` items of `what`.
pub fn at_most(n: usize, max: usize, what: &str) -> Result<(), Status> {
    if n > max {
        return Err(invalid(format!(
            "{n} {what} in one request (at most {max})"
        )));
    }
    Ok(())
}

/// The page size a GetChunks or GetUpload asks for: `max_slots`, 0 and anything above the
/// bound meaning [`MAX_SLOT_PAGE`].
pub fn page_size(max_slots: u32) -> usize {
    match max_slots as usize {
        0 => MAX_SLOT_PAGE,
        n => n.min(MAX_SLOT_PAGE),
    }
}

/// The request id of a call (`cairn-request-id`, the same on every retry of one logical call):
/// `None` when absent, an error when malformed.
pub fn request_id<T>(req: &Request<T>) -> Result<Option<(u64, u64)>, Status> {
    let Some(v) = req
        .metadata()
        .get(cairn_common::meta_client::REQUEST_ID_KEY)
    else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(cairn_common::meta_client::parse_request_id)
        .map(Some)
        .ok_or_else(|| invalid("malformed cairn-request-id"))
}

/// `cmd`, applied at most once per request id when the call carries one.
pub fn once(id: Option<(u64, u64)>, cmd: Command) -> Command {
    match id {
        Some((client, seq)) => Command::Once(Once {
            client,
            seq,
            now: Time::now(),
            cmd: Box::new(cmd),
        }),
        None => cmd,
    }
}

/// Checks the slot updates of a commit (`size`: the new file size) or of an upload record
/// (`None`: chunks only): well-formed chunk references, known servers, and at least `quorum`
/// durable replicas for each chunk — except, in a commit, chunks kept inline (sent with it in
/// `inline`, or already kept), which have none.
pub fn slot_updates(
    fsm: &Fsm,
    quorum: usize,
    raw: &[pb::SlotUpdate],
    size: Option<u64>,
    inline: &[InlineChunk],
) -> Result<Vec<SlotUpdate>, Status> {
    at_most(raw.len(), MAX_SLOT_UPDATES, "slot updates")?;
    let mut updates = Vec::with_capacity(raw.len());
    for u in raw {
        at_most(u.replicas.len(), MAX_SLOT_REPLICAS, "replicas of one slot")?;
        let mut replicas = u.replicas.clone();
        replicas.sort_unstable();
        replicas.dedup();
        let chunk = match &u.chunk {
            None => None,
            Some(c) => {
                let c = convert::slot_chunk(c)?;
                let limit = size.unwrap_or(u64::MAX);
                if u.index.saturating_mul(CHUNK_SIZE as u64) >= limit {
                    return Err(invalid(format!(
                        "slot {} lies past the new size {limit}",
                        u.index
                    )));
                }
                for id in &replicas {
                    if fsm.server(*id)?.is_none() {
                        return Err(invalid(format!("unknown chunk server {id}")));
                    }
                }
                let sent_inline = inline.iter().any(|i| i.id == c.id);
                let rec = fsm.chunk(&c.id)?;
                if sent_inline || rec.as_ref().is_some_and(|r| r.inline) {
                    if size.is_none() {
                        return Err(invalid(format!(
                            "chunk {} is kept inline: it cannot be recorded in an upload",
                            c.id
                        )));
                    }
                    if !replicas.is_empty() {
                        return Err(invalid(format!(
                            "chunk {} is kept inline: it has no replicas",
                            c.id
                        )));
                    }
                    updates.push(SlotUpdate {
                        index: u.index,
                        chunk: Some(c),
                        replicas,
                        ticket: u.ticket,
                    });
                    continue;
                }
                // Replicas the cluster already knows of count too (a deduplicated chunk is
                // not uploaded again).
                let mut all = replicas.clone();
                if let Some(rec) = rec.filter(|r| r.is_live()) {
                    all.extend(rec.replicas);
                    all.sort_unstable();
                    all.dedup();
                }
                if all.len() < quorum {
                    return Err(invalid(format!(
                        "chunk {} has {} durable replicas, at least {quorum} needed",
                        c.id,
                        all.len()
                    )));
                }
                Some(c)
            }
        };
        updates.push(SlotUpdate {
            index: u.index,
            chunk,
            replicas,
            ticket: u.ticket,
        });
    }
    Ok(updates)
}

/// The inline chunks of a commit: at most [`MAX_INLINE_CHUNKS`], each well-formed (its size
/// and its id checked as the state machine checks them).
pub fn inline_chunks(raw: &[pb::InlineChunk]) -> Result<Vec<InlineChunk>, Status> {
    at_most(raw.len(), MAX_INLINE_CHUNKS, "inline chunks")?;
    raw.iter()
        .map(|c| {
            let c = InlineChunk {
                id: cairn_common::ChunkId::from_bytes(&c.id).map_err(|e| invalid(e.to_string()))?,
                data: c.data.to_vec(),
            };
            crate::fsm::check_inline_chunk(&c).map_err(|e| invalid(e.message))?;
            Ok(c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_inodes_sizes_and_lengths_are_checked() {
        let e = name(&[b'a'; 300]).unwrap_err();
        assert_eq!(ErrorKind::from_status(&e), ErrorKind::NameTooLong);
        let e = name(b"a/b").unwrap_err();
        assert_eq!(ErrorKind::from_status(&e), ErrorKind::InvalidArgument);
        assert!(name(b"ok").is_ok());
        assert!(ino(0, "ino").is_err());
        assert!(size(MAX_FILE_SIZE + 1).is_err());
        assert!(session(0).is_err());
        assert!(keep(1, vec![0; KEEP_MAX + 1]).is_err());
        assert!(at_most(3, 2, "things").is_err());
        assert_eq!(page_size(0), MAX_SLOT_PAGE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(u32::MAX), MAX_SLOT_PAGE);
    }

    #[test]
    fn values_that_become_log_entries_are_bounded() {
        let e = xattr_value(&vec![0; XATTR_SIZE_MAX + 1]).unwrap_err();
        assert_eq!(ErrorKind::from_status(&e), ErrorKind::TooBig);
        assert!(xattr_value(&vec![0; XATTR_SIZE_MAX]).is_ok());
        assert!(symlink_target(Kind::Symlink, &vec![b'a'; SYMLINK_MAX + 1]).is_err());
        assert!(symlink_target(Kind::Symlink, b"").is_err());
        assert!(symlink_target(Kind::Symlink, b"a\0b").is_err());
        assert!(symlink_target(Kind::Regular, b"a").is_err());
        assert!(symlink_target(Kind::Symlink, &vec![b'a'; SYMLINK_MAX]).is_ok());
        let long = "x".repeat(LABEL_MAX + 1);
        assert!(upload_label(&long, "").is_err());
        assert!(upload_label("", &long).is_err());
        assert!(session_origin(&"h".repeat(MAX_HOST + 1), "/m").is_err());
        assert!(chunk_server("", "a:1").is_err());
        assert!(chunk_server("u", &"a".repeat(MAX_ADDR + 1)).is_err());
    }
}
