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
//! An upload nobody records into for `--upload-ttl-secs` is aborted by the leader's reaper (see
//! [`crate::sessions`]), and its chunks become garbage like any unreferenced chunk.
use super::{
    decode_json, encode_json, fs_err, validate_name, Fsm, Kind, NewAttrs, Tx, CF_UPLOADS,
    CF_UPLOAD_TARGETS, CHUNK,
};
use crate::command::{CommandResult, FsError, Reply, SlotChunk, SlotUpdate, Time, UploadTarget};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use serde::{Deserialize, Serialize};

/// Counter of upload ids.
const NEXT_UPLOAD: &str = "next_upload";
/// Bounds a label or host name (they are shown by `cairn uploads list`).
const LABEL_MAX: usize = 4096;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UploadHeader {
    pub id: u64,
    pub target: UploadTarget,
    pub base_version: u64,
    pub label: String,
    pub host: String,
    pub created: Time,
    /// Last time a chunk was recorded (expiry counts from here).
    pub touched: Time,
}

/// An upload and its recorded slots (index, chunk).
pub type Upload = (UploadHeader, Vec<(u64, SlotChunk)>);

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

fn target_key(ino: u64, id: u64) -> Vec<u8> {
    let mut k = ino.to_be_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn slot_index(key: &[u8]) -> Result<u64, FsError> {
    key.get(9..17)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| super::corrupt("upload slot key"))
}

fn no_upload(id: u64) -> FsError {
    fs_err(
        ErrorKind::NotFound,
        format!("upload {id} does not exist (it was committed, aborted or expired)"),
    )
}

impl Fsm {
    /// Every upload with its recorded slots.
    pub fn uploads(&self) -> Result<Vec<Upload>, MetaError> {
        let mut out: Vec<Upload> = Vec::new();
        for (k, v) in self.scan(CF_UPLOADS, &[])? {
            match k.get(8) {
                Some(0) => out.push((decode_json(&v)?, Vec::new())),
                Some(1) => {
                    let slot = (slot_index(&k)?, decode_json(&v)?);
                    match out.last_mut() {
                        Some((h, slots)) if h.id.to_be_bytes() == k[..8] => slots.push(slot),
                        _ => return Err(super::corrupt("upload slot without a header").into()),
                    }
                }
                _ => return Err(super::corrupt("upload key").into()),
            }
        }
        Ok(out)
    }

    /// One upload with its recorded slots.
    pub fn upload(&self, id: u64) -> Result<Upload, MetaError> {
        let h: UploadHeader = match self.raw_get(CF_UPLOADS, &header_key(id))? {
            Some(v) => decode_json(&v)?,
            None => return Err(no_upload(id).into()),
        };
        let slots = self
            .scan(CF_UPLOADS, &slot_prefix(id))?
            .iter()
            .map(|(k, v)| Ok((slot_index(k)?, decode_json(v)?)))
            .collect::<Result<_, FsError>>()?;
        Ok((h, slots))
    }
}

impl Tx<'_> {
    fn upload_header(&mut self, id: u64) -> Result<Option<UploadHeader>, FsError> {
        self.kv_get(CF_UPLOADS, &header_key(id))?
            .map(|v| decode_json(&v))
            .transpose()
    }

    fn upload_slots(&mut self, id: u64) -> Result<Vec<(u64, SlotChunk)>, FsError> {
        self.kv_scan(CF_UPLOADS, &slot_prefix(id))?
            .iter()
            .map(|(k, v)| Ok((slot_index(k)?, decode_json(v)?)))
            .collect()
    }

    /// The regular file `ino` (refusing other kinds).
    fn regular(&mut self, ino: u64) -> Result<super::Inode, FsError> {
        let i = self.must_inode(ino)?;
        match i.kind {
            Kind::Regular => Ok(i),
            Kind::Directory => Err(fs_err(ErrorKind::IsDir, format!("{ino} is a directory"))),
            k => Err(fs_err(
                ErrorKind::InvalidArgument,
                format!("cannot upload to {k:?} {ino}"),
            )),
        }
    }

    pub(super) fn open_upload(
        &mut self,
        target: &UploadTarget,
        base_version: u64,
        label: &str,
        host: &str,
        now: Time,
    ) -> CommandResult {
        if label.len() > LABEL_MAX || host.len() > LABEL_MAX {
            return Err(fs_err(ErrorKind::InvalidArgument, "label or host too long"));
        }
        let id = self.counter(NEXT_UPLOAD)? + 1;
        match target {
            UploadTarget::Inode(ino) => {
                self.regular(*ino)?;
                self.kv_put(CF_UPLOAD_TARGETS, target_key(*ino, id), Some(Vec::new()));
            }
            UploadTarget::Name { parent, name } => {
                validate_name(name)?;
                self.must_dir(*parent)?;
                match self.dentry(*parent, name)? {
                    Some(d) => {
                        let i = self.regular(d.ino)?;
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
        self.set_counter(NEXT_UPLOAD, id);
        let h = UploadHeader {
            id,
            target: target.clone(),
            base_version,
            label: label.to_owned(),
            host: host.to_owned(),
            created: now,
            touched: now,
        };
        self.kv_put(CF_UPLOADS, header_key(id), Some(encode_json(&h)));
        Ok(Reply::Upload(id))
    }

    pub(super) fn record_upload(
        &mut self,
        id: u64,
        updates: &[SlotUpdate],
        now: Time,
    ) -> CommandResult {
        let mut h = self.upload_header(id)?.ok_or_else(|| no_upload(id))?;
        for u in updates {
            let Some(c) = &u.chunk else {
                return Err(fs_err(
                    ErrorKind::InvalidArgument,
                    format!("slot {}: an upload records chunks, not holes", u.index),
                ));
            };
            super::check_slot_chunk(u.index, c)?;
            if u.index.checked_mul(CHUNK).is_none() {
                return Err(fs_err(
                    ErrorKind::InvalidArgument,
                    format!("slot {} is out of range", u.index),
                ));
            }
            self.incref(c, &u.replicas, u.ticket)?;
            let key = slot_key(id, u.index);
            if let Some(old) = self.kv_get(CF_UPLOADS, &key)? {
                let old: SlotChunk = decode_json(&old)?;
                self.decref(&old.id, now)?;
            }
            self.kv_put(CF_UPLOADS, key, Some(encode_json(c)));
        }
        h.touched = h.touched.max(now);
        self.kv_put(CF_UPLOADS, header_key(id), Some(encode_json(&h)));
        Ok(Reply::Empty)
    }

    /// Drops upload `id` and its references (no-op if it is gone).
    pub(super) fn end_upload(&mut self, id: u64, now: Time) -> Result<(), FsError> {
        let Some(h) = self.upload_header(id)? else {
            return Ok(());
        };
        if let UploadTarget::Inode(ino) = h.target {
            self.kv_put(CF_UPLOAD_TARGETS, target_key(ino, id), None);
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
            let id = k
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| super::corrupt("upload target key"))?;
            self.end_upload(id, now)?;
        }
        Ok(())
    }

    pub(super) fn abort_upload(
        &mut self,
        id: u64,
        idle_before: Option<Time>,
        now: Time,
    ) -> CommandResult {
        let Some(h) = self.upload_header(id)? else {
            return Err(no_upload(id));
        };
        if idle_before.is_some_and(|b| h.touched >= b) {
            // A chunk was recorded after the leader decided to expire it: the writer is alive.
            return Ok(Reply::Empty);
        }
        self.end_upload(id, now)?;
        Ok(Reply::Empty)
    }

    pub(super) fn commit_upload(
        &mut self,
        id: u64,
        size: u64,
        mtime: Option<Time>,
        attrs: NewAttrs,
        now: Time,
    ) -> CommandResult {
        let h = self.upload_header(id)?.ok_or_else(|| no_upload(id))?;
        let slots = self.upload_slots(id)?;
        // The target's inode: existing (still at the base version) or created now.
        let ino = match &h.target {
            UploadTarget::Inode(ino) => *ino,
            UploadTarget::Name { parent, name } => match self.dentry(*parent, name)? {
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
                None => match self.create(*parent, name, Kind::Regular, attrs, &[], true, now)? {
                    Reply::Attr(i) => {
                        // A new file: the upload is based on its first (empty) version.
                        let updates = slots_as_updates(&slots);
                        let reply =
                            self.commit_write(i.ino, i.version, size, &updates, mtime, now)?;
                        self.end_upload(id, now)?;
                        return Ok(reply);
                    }
                    other => {
                        return Err(fs_err(
                            ErrorKind::Internal,
                            format!("create answered {other:?}"),
                        ))
                    }
                },
            },
        };
        let old = self.regular(ino)?;
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
        let mut updates = slots_as_updates(&slots);
        for index in old.slots.keys() {
            if !slots.iter().any(|(i, _)| i == index) {
                updates.push(SlotUpdate {
                    index: *index,
                    chunk: None,
                    replicas: Vec::new(),
                    ticket: 0,
                });
            }
        }
        let reply = self.commit_write(ino, old.version, size, &updates, mtime, now)?;
        self.end_upload(id, now)?;
        self.end_uploads_of(ino, now)?;
        Ok(reply)
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
