//! Uploads: storing one chunk on its replicas, and the upload session of a file being written.
//!
//! [`upload_chunk`] asks the metadata cluster where a chunk goes (`PrepareWrite`), sends it to
//! every target at once (client fan-out), and asks for replacements of the targets that failed.
//! It is shared by the mount's writer and `cairn put`.
//!
//! A chunk stored while a file is still being written through the mount is recorded in the
//! file's upload session ([`record_upload`]), so that it outlives this mount; the session is
//! dropped ([`abort_upload`]) when the data will not be committed.
use super::reader::StoredChunk;
use super::DataPlane;
use crate::errno::Errno;
use bytes::Bytes;
use cairn_common::{ChunkId, ErrorKind};
use cairn_proto::{ChunkLocation, ChunkRef, PrepareWriteRequest, PutChunkRequest, SlotUpdate};
use std::sync::Arc;

/// A chunk durable on its replicas, not yet part of a committed version.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The chunk with every location known to hold it (for reads before the commit).
    pub chunk: StoredChunk,
    /// The servers this upload stored it on. Replicas the cluster already listed are not
    /// repeated: a stale "already stored" answer could name a copy repair has since removed or
    /// one found corrupt, and re-listing it would advertise a copy that is not there.
    pub replicas: Vec<u64>,
    /// The GC ticket of the first placement (before any put): echoed in the commit so the
    /// cluster can refuse it if the chunk was collected after this upload began.
    pub ticket: u64,
}

impl Uploaded {
    /// `data` kept inline: it travels in the commit (`CommitWriteRequest.inline`), no chunk
    /// server stores it (see `cairn_common::INLINE_MAX`).
    pub fn inline(data: Bytes) -> Uploaded {
        Uploaded {
            chunk: StoredChunk {
                id: ChunkId::inline_of(&data),
                len: data.len() as u32,
                stored_len: data.len() as u32,
                locations: Arc::from(Vec::new()),
                inline: Some(data),
            },
            replicas: Vec::new(),
            ticket: 0,
        }
    }

    /// This chunk as the update of slot `index` (in a commit or an upload record).
    pub fn to_update(&self, index: u64) -> SlotUpdate {
        SlotUpdate {
            index,
            chunk: Some(ChunkRef {
                id: self.chunk.id.as_bytes().to_vec(),
                len: self.chunk.len,
                stored_len: self.chunk.stored_len,
            }),
            replicas: self.replicas.clone(),
            ticket: self.ticket,
        }
    }
}

/// Stores one chunk on its replicas: PrepareWrite for placements, PutChunk to every target in
/// parallel, replacements for failed targets. Succeeds with `replication` durable replicas, or
/// at least `min_replication` when no more replacements can be found.
pub async fn upload_chunk(
    dp: &Arc<DataPlane>,
    ino: u64,
    slot: u64,
    data: Bytes,
) -> Result<Uploaded, Errno> {
    let _in_flight = crate::mount_metrics::UploadInFlight::start();
    let id = ChunkId::of(&data);
    let cref = ChunkRef {
        id: id.as_bytes().to_vec(),
        len: data.len() as u32,
        stored_len: data.len() as u32,
    };
    let mut have: Vec<ChunkLocation> = Vec::new();
    // The servers this upload stored the chunk on; only these are reported in the commit (see
    // `Uploaded::replicas`).
    let mut stored: Vec<u64> = Vec::new();
    let mut exclude = dp.recently_failed();
    let mut replication = 1usize;
    let mut min_replication = 1usize;
    let mut last_kind = ErrorKind::Unavailable;
    let mut ticket: Option<u64> = None;
    for _round in 0..4 {
        let reply = dp
            .meta
            .prepare_write(PrepareWriteRequest {
                chunks: vec![cref.clone()],
                exclude_servers: exclude.clone(),
            })
            .await
            .map_err(|s| {
                tracing::error!(inode = ino, slot, chunk = %id, error = %s.message(), "PrepareWrite failed");
                Errno::from(&s)
            })?;
        // The first placement's ticket: every put of this upload comes after it.
        ticket.get_or_insert(reply.ticket);
        replication = (reply.replication as usize).max(1);
        min_replication = (reply.min_replication as usize).clamp(1, replication);
        let Some(p) = reply.placements.into_iter().find(|p| p.id == cref.id) else {
            tracing::error!(inode = ino, slot, chunk = %id, "PrepareWrite returned no placement");
            return Err(Errno::EIO);
        };
        for e in p.existing {
            if !have.iter().any(|h| h.server_id == e.server_id) {
                have.push(e);
            }
        }
        let targets: Vec<ChunkLocation> = p
            .targets
            .into_iter()
            .filter(|t| !have.iter().any(|h| h.server_id == t.server_id))
            .take(replication.saturating_sub(have.len()))
            .collect();
        if have.len() >= replication || targets.is_empty() {
            break;
        }
        let puts = targets.iter().map(|t| {
            let data = data.clone();
            async move {
                let mut client = dp.chunks.get(&t.addr)?;
                client
                    .put_chunk(PutChunkRequest {
                        id: id.as_bytes().to_vec(),
                        data,
                    })
                    .await
            }
        });
        let results = futures::future::join_all(puts).await;
        for (t, r) in targets.into_iter().zip(results) {
            match r {
                Ok(_) => {
                    dp.mark_ok(t.server_id);
                    stored.push(t.server_id);
                    have.push(t);
                }
                Err(s) => {
                    last_kind = ErrorKind::from_status(&s);
                    tracing::warn!(inode = ino, slot, chunk = %id, server = t.server_id, addr = %t.addr,
                        error = %s.message(), "PutChunk failed; asking for a replacement");
                    dp.mark_failed(t.server_id);
                    exclude.push(t.server_id);
                }
            }
        }
        if have.len() >= replication {
            break;
        }
    }
    if have.len() < min_replication {
        tracing::error!(inode = ino, slot, chunk = %id, replicas = have.len(), min_replication,
            "chunk could not be stored on enough replicas");
        return Err(if last_kind == ErrorKind::NoSpace {
            Errno::from(ErrorKind::NoSpace)
        } else {
            Errno::EIO
        });
    }
    if have.len() < replication {
        tracing::warn!(inode = ino, slot, chunk = %id, replicas = have.len(), replication,
            "chunk stored under-replicated");
    }
    Ok(Uploaded {
        ticket: ticket.unwrap_or(0),
        replicas: stored,
        chunk: StoredChunk {
            id,
            len: cref.len,
            stored_len: cref.stored_len,
            locations: Arc::from(have),
            inline: None,
        },
    })
}

/// Records chunk `u` of slot `slot` in the file's upload session, opening the session first if
/// this is its first chunk.
///
/// RESUMABLE WRITES: the session holds a reference to every chunk stored before the commit, so
/// if this mount dies mid-write the chunks stay (GC spares them) and count as stored: the same
/// copy run again sends only the chunks that never reached the cluster. The file itself keeps
/// its old version until a commit (the session never changes it). A failed record costs only
/// that protection: the commit lists every chunk anyway.
pub async fn record_upload(
    dp: &Arc<DataPlane>,
    ino: u64,
    base_version: u64,
    session: &tokio::sync::Mutex<Option<u64>>,
    slot: u64,
    u: &Uploaded,
) {
    let mut id = session.lock().await;
    if id.is_none() {
        match open_upload(dp, ino, base_version, "write through a mount").await {
            Ok(upload) => *id = Some(upload),
            Err(s) => {
                tracing::warn!(inode = ino, error = %s.message(), "cannot open an upload session");
                return;
            }
        }
    }
    let Some(upload) = *id else { return };
    let r = dp.meta.record_upload(upload, vec![u.to_update(slot)]).await;
    if let Err(s) = r {
        tracing::warn!(inode = ino, upload, slot, error = %s.message(), "cannot record a chunk in the upload session");
    }
}

/// Opens an upload session for a new version of `ino` based on `base_version`; its id.
pub async fn open_upload(
    dp: &Arc<DataPlane>,
    ino: u64,
    base_version: u64,
    label: &str,
) -> Result<u64, tonic::Status> {
    let req = cairn_proto::OpenUploadRequest {
        ino,
        parent: 0,
        name: Vec::new(),
        base_version,
        label: label.into(),
        host: dp.writer_label.get().cloned().unwrap_or_default(),
    };
    dp.meta.open_upload(req).await
}

/// Drops the upload session of data that will not be committed (best effort: it expires
/// otherwise).
pub async fn abort_upload(dp: &Arc<DataPlane>, ino: u64, upload: u64) {
    if let Err(s) = dp.meta.abort_upload(upload).await {
        tracing::warn!(inode = ino, upload, error = %s.message(), "cannot abort the upload session; it will expire");
    }
}
