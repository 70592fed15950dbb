//! Versions of a file: the committed version a writer starts from ([`Base`], read with
//! `GetChunks`), and `CommitWrite` of a new one on top of it ([`commit`]).
//!
//! A commit names the version it was built on (`base_version`); the cluster refuses it with
//! `conflict` when the file moved on since. [`commit`] tells the harmless cases (our own commit
//! applied but its reply lost, or a version change without a content change) from a real
//! concurrent change, which fails the commit.
use super::reader::StoredChunk;
use super::slots;
use super::upload::Uploaded;
use super::DataPlane;
use crate::errno::Errno;
use cairn_common::{ChunkId, ErrorKind, CHUNK_SIZE};
use cairn_proto::{Attr, CommitWriteRequest, SetAttrRequest, SlotUpdate, Timestamp};
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

/// The current committed version of `ino` and its chunk list.
pub async fn load_base(dp: &Arc<DataPlane>, ino: u64) -> Result<Base, Errno> {
    let reply = dp.meta.get_chunks(ino).await.map_err(|s| {
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
    let mut slots = BTreeMap::new();
    for s in reply.slots {
        let Some(c) = s.chunk else { continue };
        let id = ChunkId::from_bytes(&c.id).map_err(|e| {
            tracing::error!(inode = ino, slot = s.index, error = %e, "bad chunk id from meta");
            Errno::EIO
        })?;
        slots.insert(
            s.index,
            StoredChunk {
                id,
                len: c.len,
                stored_len: c.stored_len,
                locations: Arc::from(s.locations),
            },
        );
    }
    Ok(Base {
        version: attr.version,
        size: attr.size,
        slots,
    })
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
    let mut updates: Vec<SlotUpdate> = uploaded.iter().map(|(i, u)| u.to_update(*i)).collect();
    if let Some(r) = &replaced {
        updates.extend(
            r.slots
                .keys()
                .filter(|i| !uploaded.contains_key(*i))
                .map(|i| SlotUpdate {
                    index: *i,
                    chunk: None,
                    replicas: Vec::new(),
                    ticket: 0,
                }),
        );
    }
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
    };
    let expected = apply_updates(&base, size, &uploaded);
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
                    // Whether `then` went with it is unknown here: the caller applies it.
                    return Ok((fresh, None));
                }
                if fresh.same_content(&before) {
                    req.base_version = fresh.version;
                    continue;
                }
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
