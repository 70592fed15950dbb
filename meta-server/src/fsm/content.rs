//! File content: versions and slots. `CommitWrite` replaces slots and the size as one new
//! version (conditioned on the version the writer started from), truncation drops and clips
//! slots, and [`Fsm::slot_page`] reads a page of one version's slots with where their chunks
//! live.
//!
//! A file's slots are rows of the `slots` column family, keyed (ino, slot index), apart from the
//! inode record: the inode keeps the size, the version and `stored_bytes` (the sum of its slots'
//! `len`, kept up to date by every slot change here). So no record, reply or Raft entry grows
//! with the file: an attribute change rewrites the small inode, a reader pages through the slots
//! by key range, and a truncation deletes a key range.
use super::inodes::Inode;
use super::schema::{
    corrupt, fs_err, storage, u64_at, Counter, CF_CHUNKS, CF_INLINE, CF_INODES, CF_SLOTS,
};
use super::tx::Tx;
use super::Fsm;
use crate::command::{
    CommandResult, CommitWrite, FsError, Kind, Reply, SlotChunk, SlotUpdate, Time,
};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use cairn_common::{ChunkId, CHUNK_SIZE};
use rocksdb::{Direction, IteratorMode, WriteBatch};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};

/// A page of slots stops once it carries this many bytes of inline chunks (a reply stays far
/// below the message limit).
pub const INLINE_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Largest file size accepted (1 PiB).
pub const MAX_FILE_SIZE: u64 = 1 << 50;

const CHUNK: u64 = CHUNK_SIZE as u64;

/// The encoded length of a slot: chunk id (32 bytes), `len` and `stored_len` (u32 BE each).
const SLOT_VALUE_LEN: usize = 40;

/// The key of slot `index` of file `ino`.
pub(super) fn slot_key(ino: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&ino.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The (ino, slot index) of a key of the `slots` column family.
fn parse_slot_key(key: &[u8]) -> Result<(u64, u64), FsError> {
    if key.len() != 16 {
        return Err(corrupt(format!("slot key of {} bytes", key.len())));
    }
    Ok((u64_at(key, 0, "slot")?, u64_at(key, 8, "slot")?))
}

pub(super) fn encode_slot(c: &SlotChunk) -> Vec<u8> {
    let mut v = Vec::with_capacity(SLOT_VALUE_LEN);
    v.extend_from_slice(c.id.as_bytes());
    v.extend_from_slice(&c.len.to_be_bytes());
    v.extend_from_slice(&c.stored_len.to_be_bytes());
    v
}

pub(super) fn decode_slot(v: &[u8]) -> Result<SlotChunk, FsError> {
    if v.len() != SLOT_VALUE_LEN {
        return Err(corrupt(format!("slot value of {} bytes", v.len())));
    }
    let u32_at = |at: usize| {
        v.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| corrupt("slot value"))
    };
    Ok(SlotChunk {
        id: ChunkId::from_bytes(&v[..32]).map_err(corrupt)?,
        len: u32_at(32)?,
        stored_len: u32_at(36)?,
    })
}

/// One non-hole slot of a file with where its chunk lives.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotLocation {
    pub index: u64,
    pub chunk: SlotChunk,
    /// Server ids holding the chunk (empty if the chunk record is missing): the trusted copies
    /// first, then the suspect ones (reported bad, not yet re-verified), each group by id.
    pub replicas: Vec<u64>,
    /// The chunk's bytes when it is kept inline (no replicas then; see `inline.rs`).
    pub inline: Option<Vec<u8>>,
}

/// One page of a file's chunk list, all read from one version.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotPage {
    /// The inode as of the page (its version is the page's version).
    pub inode: Inode,
    /// The non-hole slots from the page's first slot on, in index order.
    pub slots: Vec<SlotLocation>,
    /// Where the next page starts (`None`: the page covered every slot from its first on).
    pub next: Option<u64>,
}

impl Fsm {
    /// Up to `max` non-hole slots of file `ino` from slot `first` on, with where their chunks
    /// live, and the bytes of inline chunks (a page ends early once it carries
    /// [`INLINE_PAGE_BYTES`]). Read from one RocksDB snapshot, so the inode and every slot of
    /// the page are of one version even while commands are being applied.
    pub fn slot_page(&self, ino: u64, first: u64, max: usize) -> Result<SlotPage, MetaError> {
        let snap = self.db.snapshot();
        let inode: Inode = match snap
            .get_cf(self.cf(CF_INODES)?, ino.to_be_bytes())
            .map_err(storage)?
        {
            Some(v) => super::schema::decode_json(&v)?,
            // A stale handle, like every call that addresses a missing inode by number.
            None => return Err(super::inodes::no_inode(ino).into()),
        };
        let chunks = self.cf(CF_CHUNKS)?;
        let inline_cf = self.cf(CF_INLINE)?;
        let mut inline_bytes = 0usize;
        let prefix = ino.to_be_bytes();
        let start = slot_key(ino, first);
        let mode = IteratorMode::From(&start, Direction::Forward);
        let mut slots = Vec::new();
        let mut next = None;
        for item in snap.iterator_cf(self.cf(CF_SLOTS)?, mode) {
            let (k, v) = item.map_err(storage)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let (_, index) = parse_slot_key(&k)?;
            if slots.len() >= max || inline_bytes >= INLINE_PAGE_BYTES {
                next = Some(index);
                break;
            }
            let chunk = decode_slot(&v)?;
            let (replicas, inline) = match snap
                .get_cf(chunks, chunk.id.as_bytes())
                .map_err(storage)?
            {
                Some(r) => {
                    let r = super::schema::decode_json::<super::ChunkRecord>(&r)?;
                    if r.inline {
                        let data = snap
                            .get_cf(inline_cf, chunk.id.as_bytes())
                            .map_err(storage)?
                            .ok_or_else(|| {
                                corrupt(format!("inline chunk {} has no bytes", chunk.id))
                            })?;
                        inline_bytes += data.len();
                        (Vec::new(), Some(data))
                    } else {
                        // Trusted copies first; suspect ones last (a reader tries them in order).
                        let mut ids = r.trusted();
                        ids.extend_from_slice(&r.suspect);
                        (ids, None)
                    }
                }
                None => {
                    tracing::error!(inode = ino, chunk = %chunk.id, "slot references unknown chunk");
                    (Vec::new(), None)
                }
            };
            slots.push(SlotLocation {
                index,
                chunk,
                replicas,
                inline,
            });
        }
        Ok(SlotPage { inode, slots, next })
    }

    /// Calls `f(ino, index, chunk)` for every non-hole slot of every file, in (ino, index)
    /// order, from one RocksDB snapshot (fsck).
    pub fn for_each_slot(&self, mut f: impl FnMut(u64, u64, SlotChunk)) -> Result<(), MetaError> {
        let snap = self.db.snapshot();
        for item in snap.iterator_cf(self.cf(CF_SLOTS)?, IteratorMode::Start) {
            let (k, v) = item.map_err(storage)?;
            let (ino, index) = parse_slot_key(&k)?;
            f(ino, index, decode_slot(&v)?);
        }
        Ok(())
    }

    /// Moves the slots of every inode out of the inode record (layout 0/1) into the `slots`
    /// column family (layout 2), and records the new layout. Every replica does the same at
    /// open, so their states stay identical. Returns how many inodes it moved slots of.
    pub(super) fn migrate_slots(&self, b: &mut WriteBatch) -> Result<u64, MetaError> {
        /// The slots of an inode record of layout 0/1 (the rest of the record is an [`Inode`]).
        #[derive(Deserialize)]
        struct OldSlots {
            #[serde(default)]
            slots: BTreeMap<u64, SlotChunk>,
        }
        let (inodes, slots_cf) = (self.cf(CF_INODES)?, self.cf(CF_SLOTS)?);
        let mut moved = 0;
        for item in self.db.iterator_cf(inodes, IteratorMode::Start) {
            let (k, v) = item.map_err(storage)?;
            let old: OldSlots = super::schema::decode_json(&v)?;
            if old.slots.is_empty() {
                continue;
            }
            let mut inode: Inode = super::schema::decode_json(&v)?;
            inode.stored_bytes = old.slots.values().map(|c| u64::from(c.len)).sum();
            for (index, c) in &old.slots {
                b.put_cf(slots_cf, slot_key(inode.ino, *index), encode_slot(c));
            }
            b.put_cf(inodes, k, super::schema::encode_json(&inode));
            moved += 1;
        }
        b.put_cf(
            self.cf(super::schema::CF_COUNTERS)?,
            Counter::Layout.key(),
            super::schema::LAYOUT.to_be_bytes(),
        );
        Ok(moved)
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

/// What a new version of a file's content is made of.
pub(super) struct NewContent<'a> {
    pub size: u64,
    /// Slot changes, applied in order (a later one for the same slot wins).
    pub updates: &'a [SlotUpdate],
    /// Every slot of the old version that `updates` does not name becomes a hole.
    pub replace: bool,
    pub mtime: Option<Time>,
    pub now: Time,
}

impl CommitWrite {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        // A stale base is a conflict, whatever else is wrong with the commit.
        tx.at_version(self.ino, self.base_version)?;
        let recorded;
        let updates = if self.apply_upload {
            // The recorded slots first: the request's own updates win for a slot in both.
            let mut u = tx.recorded_updates(self.upload, self.ino)?;
            u.extend_from_slice(&self.updates);
            recorded = u;
            &recorded[..]
        } else {
            &self.updates[..]
        };
        let reply = tx.commit_write(
            self.ino,
            self.base_version,
            &NewContent {
                size: self.size,
                updates,
                replace: self.replace,
                mtime: self.mtime,
                now: self.now,
            },
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

    /// The regular file `ino`, still at `base_version` (else `Conflict`).
    pub(super) fn at_version(&mut self, ino: u64, base_version: u64) -> Result<Inode, FsError> {
        let i = self.regular(ino, "write to")?;
        if i.version != base_version {
            return Err(fs_err(
                ErrorKind::Conflict,
                format!(
                    "inode {ino} is at version {}, not {base_version}",
                    i.version
                ),
            ));
        }
        Ok(i)
    }

    /// A new version of file `ino` (still at `base_version`): `new.updates` applied to its
    /// slots (and, with `new.replace`, every other slot made a hole), then cut to `new.size`.
    pub(super) fn commit_write(
        &mut self,
        ino: u64,
        base_version: u64,
        new: &NewContent,
    ) -> Result<Inode, FsError> {
        let mut i = self.at_version(ino, base_version)?;
        let (size, now) = (new.size, new.now);
        for u in new.updates {
            if let Some(c) = &u.chunk {
                check_slot_chunk(u.index, c)?;
                if u.index.checked_mul(CHUNK).is_none_or(|start| start >= size) {
                    return Err(fs_err(
                        ErrorKind::InvalidArgument,
                        format!("slot {} lies past the new size {size}", u.index),
                    ));
                }
            }
        }
        if new.replace {
            let named: HashSet<u64> = new.updates.iter().map(|u| u.index).collect();
            for (index, _) in self.slots_from(ino, 0)? {
                if !named.contains(&index) {
                    self.set_slot(&mut i, index, None, &[], 0, now)?;
                }
            }
        }
        for u in new.updates {
            self.set_slot(&mut i, u.index, u.chunk, &u.replicas, u.ticket, now)?;
        }
        self.truncate_slots(&mut i, size, now)?;
        i.size = size;
        i.version += 1;
        i.mtime = new.mtime.unwrap_or(now);
        i.ctime = now;
        self.put_inode(i.clone());
        Ok(i)
    }

    /// Slot `index` of file `i` becomes `new` (`None`: a hole), a chunk stored on `replicas` by
    /// an upload placed with `ticket`: the new chunk gains a reference, the old one loses one,
    /// and `i.stored_bytes` follows.
    fn set_slot(
        &mut self,
        i: &mut Inode,
        index: u64,
        new: Option<SlotChunk>,
        replicas: &[u64],
        ticket: u64,
        now: Time,
    ) -> Result<(), FsError> {
        if let Some(c) = &new {
            self.incref(c, replicas, ticket)?;
        }
        let old = self.slot(i.ino, index)?;
        self.write_slot(i.ino, index, new);
        if let Some(o) = &old {
            self.decref(&o.id, now)?;
        }
        let len = |c: &Option<SlotChunk>| c.map_or(0, |c| u64::from(c.len));
        i.stored_bytes = i.stored_bytes.saturating_sub(len(&old)) + len(&new);
        Ok(())
    }

    /// Drops the slots of `i` wholly past `size` and clips the one holding the new end.
    pub(super) fn truncate_slots(
        &mut self,
        i: &mut Inode,
        size: u64,
        now: Time,
    ) -> Result<(), FsError> {
        for (index, _) in self.slots_from(i.ino, size.div_ceil(CHUNK))? {
            self.set_slot(i, index, None, &[], 0, now)?;
        }
        if size > 0 {
            let last = (size - 1) / CHUNK;
            if let Some(mut s) = self.slot(i.ino, last)? {
                let end = size - last * CHUNK;
                if u64::from(s.len) > end {
                    i.stored_bytes = i.stored_bytes.saturating_sub(u64::from(s.len) - end);
                    s.len = end as u32;
                    self.write_slot(i.ino, last, Some(s));
                }
            }
        }
        Ok(())
    }

    /// Drops every slot of file `ino` and its references (the inode is being deleted).
    pub(super) fn drop_slots(&mut self, ino: u64, now: Time) -> Result<(), FsError> {
        for (index, c) in self.slots_from(ino, 0)? {
            self.write_slot(ino, index, None);
            self.decref(&c.id, now)?;
        }
        Ok(())
    }
}
