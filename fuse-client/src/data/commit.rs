//! Versions of a file: the committed version a writer starts from ([`Base`], read with
//! `GetChunks`), and `CommitWrite` of a new one on top of it ([`commit`]).
//!
//! A commit names the version it was built on (`base_version`); the cluster refuses it with
//! `conflict` when the file moved on since. [`commit`] tells the harmless cases (our own commit
//! applied but its reply lost, or a version change without a content change) from a real
//! concurrent change, which fails the commit.
use super::reader::StoredChunk;
use super::slots;
use super::upload::{self, Uploaded};
use super::DataPlane;
use crate::errno::Errno;
use cairn_common::{ChunkId, ErrorKind, CHUNK_SIZE};
use cairn_proto::{Attr, CommitWriteRequest, InlineChunk, SetAttrRequest, SlotUpdate, Timestamp};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A committed version of a file: what dirty data applies to.
#[derive(Debug, Clone)]
pub struct Base {
    pub version: u64,
    pub size: u64,
    pub slots: BTreeMap<u64, StoredChunk>,
}

impl Base {
    /// An empty version `version` (no data).
    pub fn empty(version: u64) -> Base {
        Base {
            version,
            size: 0,
            slots: BTreeMap::new(),
        }
    }

    /// The file's content identity: size and (slot, chunk id, len) list.
    fn same_content(&self, other: &Base) -> bool {
        self.size == other.size
            && self.slots.len() == other.slots.len()
            && self
                .slots
                .iter()
                .zip(other.slots.iter())
                .all(|((i, a), (j, b))| i == j && a.id == b.id && a.len == b.len)
    }
}

/// How many times [`load_base`] starts over when the file changes between two pages of its
/// chunk list.
const LOAD_ATTEMPTS: usize = 8;

/// The current committed version of `ino` and its chunk list, read page by page (`GetChunks`).
///
/// Every page carries the version it was read from. Pages of two versions are never mixed (that
/// would be a chunk list no version ever had): when the version changes between pages, the
/// read starts over. So the base is exactly one committed version, as close-to-open requires.
pub async fn load_base(dp: &Arc<DataPlane>, ino: u64) -> Result<Base, Errno> {
    for _ in 0..LOAD_ATTEMPTS {
        if let Some(base) = load_pages(dp, ino).await? {
            return Ok(base);
        }
        tracing::debug!(
            inode = ino,
            "file changed while its chunk list was read; again"
        );
    }
    tracing::error!(
        inode = ino,
        attempts = LOAD_ATTEMPTS,
        "file kept changing while its chunk list was read"
    );
    Err(Errno(libc::EAGAIN))
}

/// Every page of the chunk list of `ino`; `None` when they are not all of one version.
async fn load_pages(dp: &Arc<DataPlane>, ino: u64) -> Result<Option<Base>, Errno> {
    let mut base: Option<Base> = None;
    let mut first = 0;
    loop {
        let reply = dp.meta.get_chunks(ino, first).await.map_err(|s| {
            tracing::debug!(inode = ino, error = %s.message(), "GetChunks failed");
            Errno::from(&s)
        })?;
        let attr = reply.attr.ok_or_else(|| {
            tracing::error!(inode = ino, "GetChunks reply without attributes");
            Errno::EIO
        })?;
        if reply.chunk_size as usize != CHUNK_SIZE {
            tracing::error!(
                inode = ino,
                chunk_size = reply.chunk_size,
                "unexpected chunk size"
            );
            return Err(Errno::EIO);
        }
        let b = base.get_or_insert_with(|| Base {
            version: attr.version,
            size: attr.size,
            slots: BTreeMap::new(),
        });
        if b.version != attr.version {
            return Ok(None);
        }
        for s in reply.slots {
            let Some(c) = s.chunk else { continue };
            let id = ChunkId::from_bytes(&c.id).map_err(|e| {
                tracing::error!(inode = ino, slot = s.index, error = %e, "bad chunk id from meta");
                Errno::EIO
            })?;
            b.slots.insert(
                s.index,
                StoredChunk {
                    id,
                    len: c.len,
                    stored_len: c.stored_len,
                    locations: Arc::from(s.locations),
                    inline: s.inline_data,
                },
            );
        }
        if !reply.more {
            return Ok(base);
        }
        if reply.next_slot <= first {
            tracing::error!(
                inode = ino,
                first,
                next = reply.next_slot,
                "GetChunks page does not advance"
            );
            return Err(Errno::EIO);
        }
        first = reply.next_slot;
    }
}

/// A new version of a file to commit: uploaded chunks on top of a base.
pub struct NewVersion {
    pub ino: u64,
    /// The version the data applies to.
    pub base: Base,
    /// After open(O_TRUNC): the version being replaced, whose slots all go (those not
    /// rewritten become holes).
    pub replaced: Option<Base>,
    /// The new chunk of every slot written.
    pub uploaded: BTreeMap<u64, Uploaded>,
    pub size: u64,
    pub mtime: Option<Timestamp>,
    /// An attribute change applied in the same Raft entry.
    pub then: Option<SetAttrRequest>,
    /// The upload session holding the chunks (ended by the commit).
    pub upload: Option<u64>,
}

/// Commits `v` as a new version. Returns the new base, and with `then` the inode's attributes
/// after the change (`None`: whether `then` was applied is unknown, the caller applies it).
pub async fn commit(dp: &Arc<DataPlane>, v: NewVersion) -> Result<(Base, Option<Attr>), Errno> {
    let NewVersion {
        ino,
        base,
        replaced,
        uploaded,
        size,
        mtime,
        then,
        upload,
    } = v;
    // After O_TRUNC the commit replaces: every slot of the old version not rewritten becomes a
    // hole (the cluster does that, so no hole travels in the request).
    let replace = replaced.is_some();
    let updates: Vec<SlotUpdate> = uploaded.iter().map(|(i, u)| u.to_update(*i)).collect();
    // The bytes of chunks kept inline travel with the commit (see `Uploaded::inline`).
    let inline: Vec<InlineChunk> = uploaded
        .values()
        .filter_map(|u| {
            u.chunk.inline.as_ref().map(|data| InlineChunk {
                id: u.chunk.id.as_bytes().to_vec(),
                data: data.clone(),
            })
        })
        .collect();
    // What the file was before this commit (to recognise a retried commit of ours).
    let before = replaced.unwrap_or_else(|| base.clone());
    let mut req = CommitWriteRequest {
        ino,
        base_version: base.version,
        size,
        updates,
        mtime: mtime.or_else(|| Some(cairn_common::time::now())),
        then_set_attr: then,
        upload: upload.unwrap_or(0),
        apply_upload: false,
        replace,
        inline,
    };
    // More slots than one request carries: record them all in a session of their own, in
    // bounded batches, and commit with one small request that applies it. (Not in the session
    // of the background uploads: that one may hold slots this version no longer has, e.g.
    // written before an O_TRUNC.) The file keeps its old version until that one entry.
    let staged = if req.updates.len() > MAX_SLOT_UPDATES {
        let updates = std::mem::take(&mut req.updates);
        let id = stage(dp, ino, base.version, &updates).await?;
        req.upload = id;
        req.apply_upload = true;
        Some(id)
    } else {
        None
    };
    let result = commit_request(dp, req, &base, &before, size, &uploaded).await;
    if let Some(id) = staged {
        match (&result, upload) {
            // The background session ends too: the file holds its chunks now.
            (Ok(_), Some(background)) => upload::abort_upload(dp, ino, background).await,
            (Err(_), _) => upload::abort_upload(dp, ino, id).await,
            _ => {}
        }
    }
    result
}

/// Most slot updates one request carries (the meta service's `MAX_SLOT_UPDATES`).
pub const MAX_SLOT_UPDATES: usize = 4096;

/// Opens an upload session for a new version of `ino` on `base_version` and records `updates`
/// in it, [`MAX_SLOT_UPDATES`] at a time; the session's id.
async fn stage(
    dp: &Arc<DataPlane>,
    ino: u64,
    base_version: u64,
    updates: &[SlotUpdate],
) -> Result<u64, Errno> {
    let label = "large commit through a mount";
    let id = upload::open_upload(dp, ino, base_version, label).await.map_err(|s| {
        tracing::error!(inode = ino, error = %s.message(), "cannot open the upload session of a large commit");
        Errno::from(&s)
    })?;
    for batch in updates.chunks(MAX_SLOT_UPDATES) {
        if let Err(s) = dp.meta.record_upload(id, batch.to_vec()).await {
            tracing::error!(inode = ino, upload = id, error = %s.message(), "cannot record the slots of a large commit");
            upload::abort_upload(dp, ino, id).await;
            return Err(Errno::from(&s));
        }
    }
    tracing::debug!(
        inode = ino,
        upload = id,
        slots = updates.len(),
        "large commit staged"
    );
    Ok(id)
}

/// Sends commit `req` of a new version of `base` (which was `before` until the commit started;
/// they differ after O_TRUNC), resolving the harmless conflicts.
async fn commit_request(
    dp: &Arc<DataPlane>,
    mut req: CommitWriteRequest,
    base: &Base,
    before: &Base,
    size: u64,
    uploaded: &BTreeMap<u64, Uploaded>,
) -> Result<(Base, Option<Attr>), Errno> {
    let ino = req.ino;
    let expected = apply_updates(base, size, uploaded);
    for attempt in 0..2 {
        match dp.meta.commit_write(req.clone()).await {
            Ok(attr) => {
                let version = attr.as_ref().map(|a| a.version).unwrap_or(0);
                tracing::debug!(inode = ino, version, size, "committed");
                let attr = attr.filter(|_| req.then_set_attr.is_some());
                return Ok((
                    Base {
                        version,
                        ..expected
                    },
                    attr,
                ));
            }
            Err(s) if ErrorKind::from_status(&s) == ErrorKind::Conflict && attempt == 0 => {
                // Either our own commit was applied but its reply lost (meta retried it), or
                // the version moved without a content change (e.g. a metadata update): both
                // are safe to resolve; a real concurrent content change is an error.
                let fresh = load_base(dp, ino).await?;
                if fresh.same_content(&expected) {
                    crate::mount_metrics::commit_conflict(true);
                    // Whether `then` went with it is unknown here: the caller applies it.
                    return Ok((fresh, None));
                }
                if fresh.same_content(before) {
                    crate::mount_metrics::commit_conflict(true);
                    req.base_version = fresh.version;
                    continue;
                }
                crate::mount_metrics::commit_conflict(false);
                tracing::error!(
                    inode = ino,
                    base_version = base.version,
                    now = fresh.version,
                    "file changed by another client since it was opened"
                );
                return Err(Errno::from(&s));
            }
            Err(s) => {
                tracing::error!(inode = ino, error = %s.message(), "CommitWrite failed");
                return Err(Errno::from(&s));
            }
        }
    }
    Err(Errno::EIO)
}

/// The chunk list after committing `uploaded` on `base` with `size`.
fn apply_updates(base: &Base, size: u64, uploaded: &BTreeMap<u64, Uploaded>) -> Base {
    let mut slots: BTreeMap<u64, StoredChunk> = base
        .slots
        .iter()
        .filter(|(i, _)| slots::slot_start(**i) < size)
        .map(|(i, c)| (*i, c.clone()))
        .collect();
    for (i, u) in uploaded {
        slots.insert(*i, u.chunk.clone());
    }
    Base {
        version: base.version,
        size,
        slots,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(tag: &[u8], len: u32) -> StoredChunk {
        StoredChunk::for_test(tag, len)
    }

    #[test]
    fn commits_replace_slots_and_drop_those_past_the_end() {
        let mut base = Base {
            version: 1,
            size: 3 * CHUNK_SIZE as u64,
            slots: BTreeMap::new(),
        };
        for i in 0..3 {
            base.slots.insert(i, chunk(&[i as u8], CHUNK_SIZE as u32));
        }
        let mut up = BTreeMap::new();
        up.insert(
            1,
            Uploaded {
                chunk: chunk(b"new", 7),
                replicas: vec![1, 2, 3],
                ticket: 0,
            },
        );
        let after = apply_updates(&base, CHUNK_SIZE as u64 + 7, &up);
        assert_eq!(after.slots.len(), 2);
        assert_eq!(after.slots[&1].id, ChunkId::of(b"new"));
        assert!(!after.same_content(&base));
        assert!(after.same_content(&after.clone()));
    }
}
