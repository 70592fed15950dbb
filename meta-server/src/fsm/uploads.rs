//! Upload sessions: the chunks of a file's next version that are durable before its commit.
//!
//! A writer records each chunk in its upload as soon as the chunk is stored on its replicas
//! (`RecordUpload`). The upload holds one reference to each recorded chunk, so:
//! - GC never collects them while the upload lives, even if the writer dies;
//! - `PrepareWrite` answers them as already stored (like every referenced chunk), so a writer
//!   that starts again (a re-run `cp` after the mount was killed, `cairn put` resumed) sends only
//!   the chunks that never reached the cluster;
//! - the commit (`CommitWrite` with `upload`, or `CommitUpload`) hands the references to the
//!   file's new version and ends the upload in the same entry, so nothing is ever visible half
//!   written: the file shows the whole old version until that one entry applies.
//!
//! An upload nobody records into for `--upload-ttl` is aborted by the leader's reaper (see
//! [`crate::reaper`]), and its chunks become garbage like any unreferenced chunk.
use super::content::{check_slot_chunk, NewContent};
use super::namespace::validate_name;
use super::schema::{
    corrupt, decode_json, encode_json, fs_err, pair_key, u64_at, Counter, CF_UPLOADS,
    CF_UPLOAD_TARGETS,
};
use super::tx::Tx;
use super::Fsm;
use crate::command::{
    AbortUpload, CommandResult, CommitUpload, Create, FsError, Kind, OpenUpload, RecordUpload,
    Reply, SlotChunk, SlotUpdate, Time, UploadTarget,
};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use serde::{Deserialize, Serialize};

/// Bounds a label or host name (they are shown by `cairn uploads list`).
pub const LABEL_MAX: usize = 4096;

/// An upload as a listing shows it: its header, the number of slots recorded and the file
/// bytes they hold.
#[derive(Clone, Debug, PartialEq)]
pub struct UploadSummary {
    pub header: UploadHeader,
    pub slots: u64,
    pub bytes: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UploadHeader {
    pub id: u64,
    pub target: UploadTarget,
    pub base_version: u64,
    pub label: String,
    pub host: String,
    pub created: Time,
    /// Wall time a chunk was last recorded, as the leader stamped it: shown, never compared.
    pub touched: Time,
    /// The log index of the entry that began the upload or last recorded a chunk: expiry
    /// compares this with the log clock (see `crate::log_clock`).
    #[serde(default)]
    pub touched_index: u64,
}

/// A page of an upload's recorded slots and where the next page starts (`None`: none follow).
pub type UploadPage = (Vec<(u64, SlotChunk)>, Option<u64>);

fn header_key(id: u64) -> Vec<u8> {
    let mut k = id.to_be_bytes().to_vec();
    k.push(0);
    k
}

fn slot_prefix(id: u64) -> Vec<u8> {
    let mut k = id.to_be_bytes().to_vec();
    k.push(1);
    k
}

fn slot_key(id: u64, index: u64) -> Vec<u8> {
    let mut k = slot_prefix(id);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn slot_index(key: &[u8]) -> Result<u64, FsError> {
    u64_at(key, 9, "upload slot")
}

fn no_upload(id: u64) -> FsError {
    fs_err(
        ErrorKind::NotFound,
        format!("upload {id} does not exist (it was committed, aborted or expired)"),
    )
}

impl Fsm {
    /// Up to `limit` uploads with an id greater than `after`, in id order (their slots are
    /// counted, not kept), and whether the listing is complete.
    pub fn upload_page(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<UploadSummary>, bool), MetaError> {
        let start = after.saturating_add(1).to_be_bytes();
        let mut out: Vec<UploadSummary> = Vec::new();
        if after == u64::MAX {
            return Ok((out, true));
        }
        for item in self.iter_prefix(CF_UPLOADS, &[], &start)? {
            let (k, v) = item?;
            match k.get(8) {
                Some(0) => {
                    if out.len() >= limit {
                        return Ok((out, false));
                    }
                    out.push(UploadSummary {
                        header: decode_json(&v)?,
                        slots: 0,
                        bytes: 0,
                    });
                }
                Some(1) => {
                    let slot: SlotChunk = decode_json(&v)?;
                    match out.last_mut() {
                        Some(u) if u.header.id.to_be_bytes() == k[..8] => {
                            u.slots += 1;
                            u.bytes += u64::from(slot.len);
                        }
                        _ => return Err(corrupt("upload slot without a header").into()),
                    }
                }
                _ => return Err(corrupt("upload key").into()),
            }
        }
        Ok((out, true))
    }

    /// The header of upload `id` (`NotFound` when it is gone).
    pub fn upload_header(&self, id: u64) -> Result<UploadHeader, MetaError> {
        match self.raw_get(CF_UPLOADS, &header_key(id))? {
            Some(v) => Ok(decode_json(&v)?),
            None => Err(no_upload(id).into()),
        }
    }

    /// Up to `max` recorded slots of upload `id` from slot `first` on, and where the next page
    /// starts (`None`: none follow).
    pub fn upload_slot_page(
        &self,
        id: u64,
        first: u64,
        max: usize,
    ) -> Result<UploadPage, MetaError> {
        let prefix = slot_prefix(id);
        let mut out = Vec::new();
        for item in self.iter_prefix(CF_UPLOADS, &prefix, &slot_key(id, first))? {
            let (k, v) = item?;
            let index = slot_index(&k)?;
            if out.len() >= max {
                return Ok((out, Some(index)));
            }
            out.push((index, decode_json(&v)?));
        }
        Ok((out, None))
    }

    /// How many slots upload `id` recorded and the file bytes they hold.
    pub fn upload_totals(&self, id: u64) -> Result<(u64, u64), MetaError> {
        let (mut slots, mut bytes) = (0, 0);
        for item in self.iter_prefix(CF_UPLOADS, &slot_prefix(id), &slot_prefix(id))? {
            let (_, v) = item?;
            let c: SlotChunk = decode_json(&v)?;
            slots += 1;
            bytes += u64::from(c.len);
        }
        Ok((slots, bytes))
    }
}

impl OpenUpload {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let (label, host, base_version) = (&self.label, &self.host, self.base_version);
        if label.len() > LABEL_MAX || host.len() > LABEL_MAX {
            return Err(fs_err(ErrorKind::InvalidArgument, "label or host too long"));
        }
        let id = tx.counter(Counter::LastUpload)? + 1;
        match &self.target {
            UploadTarget::Inode(ino) => {
                tx.regular(*ino, "upload to")?;
                tx.kv_put(CF_UPLOAD_TARGETS, pair_key(*ino, id), Some(Vec::new()));
            }
            UploadTarget::Name { parent, name } => {
                validate_name(name)?;
                tx.must_dir(*parent)?;
                match tx.dentry(*parent, name)? {
                    Some(d) => {
                        let i = tx.regular(d.ino, "upload to")?;
                        if i.version != base_version {
                            return Err(fs_err(
                                ErrorKind::Conflict,
                                format!(
                                    "{:?} is at version {}, not {base_version}",
                                    String::from_utf8_lossy(name),
                                    i.version
                                ),
                            ));
                        }
                    }
                    None if base_version != 0 => {
                        return Err(fs_err(
                            ErrorKind::NotFound,
                            format!("{:?} no longer exists", String::from_utf8_lossy(name)),
                        ))
                    }
                    None => {}
                }
            }
        }
        tx.set_counter(Counter::LastUpload, id);
        let h = UploadHeader {
            id,
            target: self.target.clone(),
            base_version,
            label: label.to_owned(),
            host: host.to_owned(),
            created: self.now,
            touched: self.now,
            touched_index: tx.index(),
        };
        tx.kv_put(CF_UPLOADS, header_key(id), Some(encode_json(&h)));
        Ok(Reply::Upload(id))
    }
}

impl RecordUpload {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let (id, now) = (self.upload, self.now);
        let mut h = tx.upload_header(id)?.ok_or_else(|| no_upload(id))?;
        for u in &self.updates {
            let Some(c) = &u.chunk else {
                return Err(fs_err(
                    ErrorKind::InvalidArgument,
                    format!("slot {}: an upload records chunks, not holes", u.index),
                ));
            };
            check_slot_chunk(u.index, c)?;
            tx.incref(c, &u.replicas, u.ticket)?;
            let key = slot_key(id, u.index);
            if let Some(old) = tx.kv_get_json::<SlotChunk>(CF_UPLOADS, &key)? {
                tx.decref(&old.id, now)?;
            }
            tx.kv_put(CF_UPLOADS, key, Some(encode_json(c)));
        }
        h.touched = h.touched.max(now);
        h.touched_index = tx.index();
        tx.kv_put(CF_UPLOADS, header_key(id), Some(encode_json(&h)));
        Ok(Reply::Empty)
    }
}

impl AbortUpload {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let id = self.upload;
        let Some(h) = tx.upload_header(id)? else {
            return Err(no_upload(id));
        };
        if self.idle_through.is_some_and(|i| h.touched_index > i) {
            // A chunk was recorded after the leader decided to expire it: the writer is alive.
            return Ok(Reply::Empty);
        }
        tx.end_upload(id, self.now)?;
        Ok(Reply::Empty)
    }
}

impl CommitUpload {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let (id, size, mtime, now) = (self.upload, self.size, self.mtime, self.now);
        let h = tx.upload_header(id)?.ok_or_else(|| no_upload(id))?;
        let slots = tx.upload_slots(id)?;
        // The target's inode: existing (still at the base version) or created now.
        let ino = match &h.target {
            UploadTarget::Inode(ino) => *ino,
            UploadTarget::Name { parent, name } => match tx.dentry(*parent, name)? {
                Some(d) => d.ino,
                None if h.base_version != 0 => {
                    return Err(fs_err(
                        ErrorKind::Conflict,
                        format!(
                            "{:?} was removed while uploading",
                            String::from_utf8_lossy(name)
                        ),
                    ))
                }
                None => {
                    let i = tx.create(&Create {
                        parent: *parent,
                        name: name.clone(),
                        kind: Kind::Regular,
                        mode: self.mode,
                        uid: self.uid,
                        gid: self.gid,
                        rdev: 0,
                        symlink_target: Vec::new(),
                        exclusive: true,
                        now,
                    })?;
                    // A new file: the upload is based on its first (empty) version.
                    let new = NewContent {
                        size,
                        updates: &slots_as_updates(&slots),
                        replace: false,
                        mtime,
                        now,
                    };
                    let i = tx.commit_write(i.ino, i.version, &new)?;
                    tx.end_upload(id, now)?;
                    return Ok(Reply::Attr(i));
                }
            },
        };
        let old = tx.regular(ino, "upload to")?;
        if h.base_version == 0 || old.version != h.base_version {
            return Err(fs_err(
                ErrorKind::Conflict,
                format!(
                    "inode {ino} is at version {}, the upload is based on {}",
                    old.version, h.base_version
                ),
            ));
        }
        // Exactly the recorded slots: every other slot of the old version becomes a hole.
        let new = NewContent {
            size,
            updates: &slots_as_updates(&slots),
            replace: true,
            mtime,
            now,
        };
        let i = tx.commit_write(ino, old.version, &new)?;
        tx.end_upload(id, now)?;
        tx.end_uploads_of(ino, now)?;
        Ok(Reply::Attr(i))
    }
}

impl Tx<'_> {
    fn upload_header(&mut self, id: u64) -> Result<Option<UploadHeader>, FsError> {
        self.kv_get_json(CF_UPLOADS, &header_key(id))
    }

    fn upload_slots(&mut self, id: u64) -> Result<Vec<(u64, SlotChunk)>, FsError> {
        self.kv_scan(CF_UPLOADS, &slot_prefix(id))?
            .iter()
            .map(|(k, v)| Ok((slot_index(k)?, decode_json(v)?)))
            .collect()
    }

    /// The slots recorded in upload `id`, as updates of a commit of inode `ino` (the upload
    /// must replace that inode).
    pub(super) fn recorded_updates(
        &mut self,
        id: u64,
        ino: u64,
    ) -> Result<Vec<SlotUpdate>, FsError> {
        let h = self.upload_header(id)?.ok_or_else(|| no_upload(id))?;
        if h.target != UploadTarget::Inode(ino) {
            return Err(fs_err(
                ErrorKind::InvalidArgument,
                format!("upload {id} does not replace inode {ino}"),
            ));
        }
        Ok(slots_as_updates(&self.upload_slots(id)?))
    }

    /// Drops upload `id` and its references (no-op if it is gone).
    pub(super) fn end_upload(&mut self, id: u64, now: Time) -> Result<(), FsError> {
        let Some(h) = self.upload_header(id)? else {
            return Ok(());
        };
        if let UploadTarget::Inode(ino) = h.target {
            self.kv_put(CF_UPLOAD_TARGETS, pair_key(ino, id), None);
        }
        for (index, c) in self.upload_slots(id)? {
            self.decref(&c.id, now)?;
            self.kv_put(CF_UPLOADS, slot_key(id, index), None);
        }
        self.kv_put(CF_UPLOADS, header_key(id), None);
        Ok(())
    }

    /// Ends every upload replacing inode `ino` (its content just changed under them).
    pub(super) fn end_uploads_of(&mut self, ino: u64, now: Time) -> Result<(), FsError> {
        for (k, _) in self.kv_scan(CF_UPLOAD_TARGETS, &ino.to_be_bytes())? {
            let id = u64_at(&k, 8, "upload target")?;
            self.end_upload(id, now)?;
        }
        Ok(())
    }
}

/// The recorded slots as commit updates. The upload holds a reference to each chunk, so their
/// records exist and are live: the commit only adds the file's own reference (no replicas to
/// report, and no GC ticket needed).
fn slots_as_updates(slots: &[(u64, SlotChunk)]) -> Vec<SlotUpdate> {
    slots
        .iter()
        .map(|(index, c)| SlotUpdate {
            index: *index,
            chunk: Some(*c),
            replicas: Vec::new(),
            ticket: u64::MAX,
        })
        .collect()
}
