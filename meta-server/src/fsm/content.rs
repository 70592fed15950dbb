//! File content: versions and slots. `CommitWrite` replaces slots and the size as one new
//! version (conditioned on the version the writer started from), truncation drops and clips
//! slots, and [`Fsm::chunk_locations`] reads one version's slots with where their chunks live.
use super::inodes::Inode;
use super::schema::fs_err;
use super::tx::Tx;
use super::Fsm;
use crate::command::{
    CommandResult, CommitWrite, FsError, Kind, Reply, SlotChunk, SlotUpdate, Time,
};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use cairn_common::CHUNK_SIZE;

/// Largest file size accepted (1 PiB).
pub const MAX_FILE_SIZE: u64 = 1 << 50;

const CHUNK: u64 = CHUNK_SIZE as u64;

/// One non-hole slot of a file with where its chunk lives.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotLocation {
    pub index: u64,
    pub chunk: SlotChunk,
    /// Server ids holding the chunk (empty if the chunk record is missing): the trusted copies
    /// first, then the suspect ones (reported bad, not yet re-verified), each group by id.
    pub replicas: Vec<u64>,
}

impl Fsm {
    /// The inode and, for each non-hole slot in index order, where its chunk lives.
    pub fn chunk_locations(&self, ino: u64) -> Result<(Inode, Vec<SlotLocation>), MetaError> {
        let inode = self.get(ino)?;
        let mut out = Vec::with_capacity(inode.slots.len());
        for (&index, chunk) in &inode.slots {
            let replicas = match self.chunk(&chunk.id)? {
                Some(r) => {
                    let mut ids = r.trusted();
                    ids.extend_from_slice(&r.suspect);
                    ids
                }
                None => {
                    tracing::error!(inode = ino, chunk = %chunk.id, "slot references unknown chunk");
                    Vec::new()
                }
            };
            out.push(SlotLocation {
                index,
                chunk: *chunk,
                replicas,
            });
        }
        Ok((inode, out))
    }
}

/// `InvalidArgument` unless chunk `c` fits slot `index` (`len` within the stored bytes, the
/// stored bytes within a chunk, the slot within the largest file).
pub(super) fn check_slot_chunk(index: u64, c: &SlotChunk) -> Result<(), FsError> {
    if c.len > c.stored_len || c.stored_len as usize > CHUNK_SIZE {
        return Err(fs_err(
            ErrorKind::InvalidArgument,
            format!(
                "slot {index}: len {} / stored_len {} out of range",
                c.len, c.stored_len
            ),
        ));
    }
    if index.checked_mul(CHUNK).is_none() {
        return Err(fs_err(
            ErrorKind::InvalidArgument,
            format!("slot {index} is out of range"),
        ));
    }
    Ok(())
}

impl CommitWrite {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let reply = tx.commit_write(
            self.ino,
            self.base_version,
            self.size,
            &self.updates,
            self.mtime,
            self.now,
        )?;
        if self.upload != 0 {
            tx.end_upload(self.upload, self.now)?;
        }
        // Other uploads of this file were based on an older version: their commits can only
        // fail now (conflict). Typically the session of a mount that died mid-copy, whose
        // rerun just committed. They stop holding chunks.
        tx.end_uploads_of(self.ino, self.now)?;
        Ok(Reply::Attr(reply))
    }
}

impl Tx<'_> {
    /// The regular file `ino` (`IsDir` for a directory, `InvalidArgument` for other kinds;
    /// `what` says what was tried).
    pub(super) fn regular(&mut self, ino: u64, what: &str) -> Result<Inode, FsError> {
        let i = self.must_inode(ino)?;
        match i.kind {
            Kind::Regular => Ok(i),
            Kind::Directory => Err(fs_err(ErrorKind::IsDir, format!("{ino} is a directory"))),
            k => Err(fs_err(
                ErrorKind::InvalidArgument,
                format!("cannot {what} {k:?} {ino}"),
            )),
        }
    }

    /// A new version of file `ino` (still at `base_version`): `updates` applied to its slots,
    /// then cut to `size`.
    pub(super) fn commit_write(
        &mut self,
        ino: u64,
        base_version: u64,
        size: u64,
        updates: &[SlotUpdate],
        mtime: Option<Time>,
        now: Time,
    ) -> Result<Inode, FsError> {
        let mut i = self.regular(ino, "write to")?;
        if i.version != base_version {
            return Err(fs_err(
                ErrorKind::Conflict,
                format!(
                    "inode {ino} is at version {}, not {base_version}",
                    i.version
                ),
            ));
        }
        for u in updates {
            if let Some(c) = &u.chunk {
                check_slot_chunk(u.index, c)?;
                if u.index.checked_mul(CHUNK).is_none_or(|start| start >= size) {
                    return Err(fs_err(
                        ErrorKind::InvalidArgument,
                        format!("slot {} lies past the new size {size}", u.index),
                    ));
                }
                self.incref(c, &u.replicas, u.ticket)?;
            }
            let old = match u.chunk {
                Some(c) => i.slots.insert(u.index, c),
                None => i.slots.remove(&u.index),
            };
            if let Some(old) = old {
                self.decref(&old.id, now)?;
            }
        }
        self.truncate_slots(&mut i, size, now)?;
        i.size = size;
        i.version += 1;
        i.mtime = mtime.unwrap_or(now);
        i.ctime = now;
        self.put_inode(i.clone());
        Ok(i)
    }

    /// Drops slots wholly past `size` and clips the one holding the new end.
    pub(super) fn truncate_slots(
        &mut self,
        i: &mut Inode,
        size: u64,
        now: Time,
    ) -> Result<(), FsError> {
        let first_gone = size.div_ceil(CHUNK);
        let gone: Vec<u64> = i.slots.range(first_gone..).map(|(k, _)| *k).collect();
        for k in gone {
            if let Some(s) = i.slots.remove(&k) {
                self.decref(&s.id, now)?;
            }
        }
        if size > 0 {
            let last = (size - 1) / CHUNK;
            if let Some(s) = i.slots.get_mut(&last) {
                let end = size - last * CHUNK;
                if u64::from(s.len) > end {
                    s.len = end as u32;
                }
            }
        }
        Ok(())
    }
}
