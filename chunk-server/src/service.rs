//! The `ChunkService` gRPC service over a [`ChunkStore`]: PutChunk / GetChunk / HasChunk /
//! Info for clients, and ReplicateChunk / DeleteChunks / ScrubNow for the metadata cluster's
//! repair and garbage collection.
//!
//! Ids from the network are parsed with [`ChunkId::from_bytes`] (exactly 32 bytes), so a path
//! can never be built from client input. Store calls block on disk I/O; they run on tokio's
//! blocking pool, at most [`MAX_BLOCKING_OPS`] at a time.
//!
//! `ReplicateChunk` stores through the same durable put as `PutChunk` (see
//! [`crate::store::FileStore`]); `DeleteChunks` through [`ChunkStore::delete`], which makes each
//! removal durable before it returns. Every put (and every copy found intact) is noted to the
//! [`Scrub`] as a verification, every delete makes it forget the chunk.
use crate::replicate::{self, ReplicateError};
use crate::scrub::Scrub;
use crate::store::{ChunkStore, PutOutcome, StoreError, Verification};
use cairn_common::chunk_client::ChunkClients;
use cairn_common::error::{status, ErrorKind};
use cairn_common::ChunkId;
use cairn_proto::chunk_service_server::ChunkService;
use cairn_proto::verify_chunk_reply;
use cairn_proto::{
    ChunkServerInfoReply, ChunkServerInfoRequest, DeleteChunksReply, DeleteChunksRequest,
    GetChunkReply, GetChunkRequest, HasChunkReply, HasChunkRequest, ListChunksReply,
    ListChunksRequest, MarkChunksReply, MarkChunksRequest, PutChunkReply, PutChunkRequest,
    ReplicateChunkReply, ReplicateChunkRequest, ScrubNowReply, ScrubNowRequest, VerifyChunkReply,
    VerifyChunkRequest,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Store operations running on blocking threads at once. Bounds threads and disk queue depth;
/// request data waiting for a permit is already in memory (bounded by the gRPC limits).
pub const MAX_BLOCKING_OPS: usize = 32;
/// Most ids one `DeleteChunks` may name (each removal costs a directory fsync).
pub const MAX_DELETE_IDS: usize = 1024;
/// Most ids one ListChunks returns.
pub const MAX_LIST_IDS: usize = 4096;

/// The chunk service of one server.
pub struct ChunkServiceImpl {
    store: Arc<dyn ChunkStore>,
    /// Id assigned by the metadata cluster (0 until registered); shared with the heartbeat.
    server_id: Arc<AtomicU64>,
    /// Bytes of chunk data received by PutChunk since start.
    received_bytes: AtomicU64,
    /// Bytes of chunk data received from other servers by ReplicateChunk since start.
    replicated_bytes: AtomicU64,
    permits: Semaphore,
    scrub: Arc<Scrub>,
    /// Connections to other chunk servers (replication sources).
    peers: ChunkClients,
}

impl ChunkServiceImpl {
    pub fn new(
        store: Arc<dyn ChunkStore>,
        server_id: Arc<AtomicU64>,
        scrub: Arc<Scrub>,
    ) -> ChunkServiceImpl {
        ChunkServiceImpl {
            store,
            server_id,
            received_bytes: AtomicU64::new(0),
            replicated_bytes: AtomicU64::new(0),
            permits: Semaphore::new(MAX_BLOCKING_OPS),
            scrub,
            peers: ChunkClients::new(),
        }
    }

    /// Runs `f` against the store on a blocking thread, holding a permit.
    async fn blocking<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&dyn ChunkStore) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| status(ErrorKind::Unavailable, "chunk server is shutting down"))?;
        let store = self.store.clone();
        let span = tracing::Span::current();
        match tokio::task::spawn_blocking(move || span.in_scope(|| f(store.as_ref()))).await {
            Ok(r) => r.map_err(|e| {
                match e.kind() {
                    ErrorKind::Corrupt | ErrorKind::Io | ErrorKind::NoSpace => {
                        tracing::error!(error = %e, "chunk store operation failed")
                    }
                    _ => tracing::debug!(error = %e, "chunk request refused"),
                }
                Status::from(e)
            }),
            Err(e) => Err(status(
                ErrorKind::Internal,
                format!("chunk store task failed: {e}"),
            )),
        }
    }
}

fn parse_id(b: &[u8]) -> Result<ChunkId, Status> {
    ChunkId::from_bytes(b).map_err(|e| status(ErrorKind::InvalidArgument, e.to_string()))
}

/// A request's id list: at most [`MAX_DELETE_IDS`], every one valid, or nothing.
fn parse_ids(ids: &[Vec<u8>]) -> Result<Vec<ChunkId>, Status> {
    if ids.len() > MAX_DELETE_IDS {
        return Err(status(
            ErrorKind::InvalidArgument,
            format!(
                "{} ids given; at most {MAX_DELETE_IDS} per request",
                ids.len()
            ),
        ));
    }
    ids.iter().map(|b| parse_id(b)).collect()
}

#[tonic::async_trait]
impl ChunkService for ChunkServiceImpl {
    async fn put_chunk(
        &self,
        request: Request<PutChunkRequest>,
    ) -> Result<Response<PutChunkReply>, Status> {
        let req = request.into_inner();
        self.received_bytes
            .fetch_add(req.data.len() as u64, Ordering::Relaxed);
        let id = parse_id(&req.id)?;
        let span = tracing::info_span!("put_chunk", chunk = %id, len = req.data.len());
        let data = req.data;
        let len = data.len() as u64;
        let outcome = self
            .blocking(move |s| s.put(id, data))
            .instrument(span)
            .await?;
        self.scrub.note_written(id);
        let stored = outcome != PutOutcome::AlreadyPresent;
        metrics::counter!("cairn_chunk_puts_total",
            "outcome" => if stored { "stored" } else { "already_present" })
        .increment(1);
        if stored {
            metrics::counter!("cairn_chunk_bytes_written_total").increment(len);
        }
        Ok(Response::new(PutChunkReply {
            already_present: !stored,
        }))
    }

    async fn get_chunk(
        &self,
        request: Request<GetChunkRequest>,
    ) -> Result<Response<GetChunkReply>, Status> {
        let req = request.into_inner();
        let id = parse_id(&req.id)?;
        let span =
            tracing::debug_span!("get_chunk", chunk = %id, offset = req.offset, len = req.len);
        let read = self
            .blocking(move |s| s.read(id, req.offset, req.len, req.with_block_cvs))
            .instrument(span)
            .await?;
        metrics::counter!("cairn_chunk_bytes_read_total").increment(read.data.len() as u64);
        Ok(Response::new(GetChunkReply {
            data: read.data,
            stored_len: read.stored_len,
            block_cvs: read.block_cvs,
        }))
    }

    async fn has_chunk(
        &self,
        request: Request<HasChunkRequest>,
    ) -> Result<Response<HasChunkReply>, Status> {
        let id = parse_id(&request.into_inner().id)?;
        let span = tracing::debug_span!("has_chunk", chunk = %id);
        let len = self.blocking(move |s| s.has(id)).instrument(span).await?;
        Ok(Response::new(HasChunkReply {
            present: len.is_some(),
            stored_len: len.unwrap_or(0),
        }))
    }

    async fn info(
        &self,
        _request: Request<ChunkServerInfoRequest>,
    ) -> Result<Response<ChunkServerInfoReply>, Status> {
        let stats = self.blocking(|s| s.stats()).await?;
        Ok(Response::new(ChunkServerInfoReply {
            server_id: self.server_id.load(Ordering::Relaxed),
            capacity_bytes: stats.capacity_bytes,
            used_bytes: stats.used_bytes,
            free_bytes: stats.free_bytes,
            chunk_count: stats.chunk_count,
            received_bytes: self.received_bytes.load(Ordering::Relaxed),
            scrub: Some(self.scrub.stats(stats.chunk_count)),
            replicated_bytes: self.replicated_bytes.load(Ordering::Relaxed),
        }))
    }

    async fn replicate_chunk(
        &self,
        request: Request<ReplicateChunkRequest>,
    ) -> Result<Response<ReplicateChunkReply>, Status> {
        let req = request.into_inner();
        let id = parse_id(&req.id)?;
        replicate::validate_sources(&req.sources).map_err(Status::from)?;
        let span = tracing::info_span!("replicate_chunk", chunk = %id);
        async move {
            // A copy already here is read back in full first: cheaper than a network copy,
            // and a rotten local copy is quarantined (and reported) and then fetched again.
            let found = self.blocking(move |s| s.verify(id)).await?;
            if let Verification::Intact { .. } = found.outcome {
                self.scrub.note_written(id);
                return Ok(ReplicateChunkReply {
                    already_present: true,
                    source: String::new(),
                });
            }
            let fetched =
                replicate::fetch_verified(&self.peers, id, &req.sources, &self.replicated_bytes)
                    .await
                    .map_err(|e: ReplicateError| {
                        tracing::warn!(error = %e, "replication failed");
                        Status::from(e)
                    })?;
            let len = fetched.data.len();
            let data = fetched.data;
            let outcome = self.blocking(move |s| s.put(id, data)).await?;
            self.scrub.note_written(id);
            let stored = outcome == PutOutcome::Stored;
            tracing::info!(source = %fetched.source, len, stored, "chunk replicated");
            Ok(ReplicateChunkReply {
                // A concurrent PutChunk may have stored it first.
                already_present: !stored,
                source: if stored {
                    fetched.source
                } else {
                    String::new()
                },
            })
        }
        .instrument(span)
        .await
        .map(Response::new)
    }

    async fn delete_chunks(
        &self,
        request: Request<DeleteChunksRequest>,
    ) -> Result<Response<DeleteChunksReply>, Status> {
        let req = request.into_inner();
        // Every id is checked before anything is removed.
        let ids = parse_ids(&req.ids)?;
        let only_marked = req.only_marked;
        let span = tracing::info_span!("delete_chunks", ids = ids.len(), only_marked);
        let (deleted, removed) = self
            .blocking(move |s| {
                let mut removed = Vec::new();
                for id in ids {
                    // Each delete is durable (its directory fsync'd) before it returns, so
                    // every removal counted in the reply survives a crash.
                    if only_marked {
                        if s.delete_if_marked(id)? {
                            removed.push(id);
                        }
                        continue;
                    }
                    match s.delete(id) {
                        Ok(()) => removed.push(id),
                        Err(StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((removed.len() as u64, removed))
            })
            .instrument(span)
            .await?;
        for id in removed {
            self.scrub.forget(id);
        }
        Ok(Response::new(DeleteChunksReply { deleted }))
    }

    async fn mark_chunks(
        &self,
        request: Request<MarkChunksRequest>,
    ) -> Result<Response<MarkChunksReply>, Status> {
        let req = request.into_inner();
        let ids = parse_ids(&req.ids)?;
        let marked = self.blocking(move |s| s.mark_for_gc(&ids)).await?;
        Ok(Response::new(MarkChunksReply { marked }))
    }

    async fn list_chunks(
        &self,
        request: Request<ListChunksRequest>,
    ) -> Result<Response<ListChunksReply>, Status> {
        let req = request.into_inner();
        let after = if req.after.is_empty() {
            None
        } else {
            Some(parse_id(&req.after)?)
        };
        let limit = (req.limit as usize).clamp(1, MAX_LIST_IDS);
        let min_age = Duration::from_secs(req.min_age_secs);
        let (ids, done) = self
            .blocking(move |s| {
                let now = SystemTime::now();
                let first = after.map_or(0, |a| a.0[0] as usize);
                let mut out = Vec::new();
                for shard in first..=255 {
                    let mut ids = s.list_shard(shard as u8)?;
                    ids.sort();
                    for id in ids {
                        if after.is_some_and(|a| id <= a) {
                            continue;
                        }
                        if out.len() >= limit {
                            return Ok((out, false));
                        }
                        // Copies young enough to belong to an upload in flight are skipped.
                        let old_enough = s
                            .stored_at(id)?
                            .is_some_and(|t| now.duration_since(t).unwrap_or_default() >= min_age);
                        if old_enough {
                            out.push(id);
                        }
                    }
                }
                Ok((out, true))
            })
            .await?;
        Ok(Response::new(ListChunksReply {
            ids: ids.iter().map(|i| i.as_bytes().to_vec()).collect(),
            done,
        }))
    }

    async fn scrub_now(
        &self,
        _request: Request<ScrubNowRequest>,
    ) -> Result<Response<ScrubNowReply>, Status> {
        let started = self.scrub.request_pass();
        tracing::info!(started, "scrub requested");
        Ok(Response::new(ScrubNowReply { started }))
    }

    /// Verifies the local copy of one chunk now (the meta leader asks this of a copy reported
    /// bad). A corrupt copy is quarantined and reported, as by the scrub.
    async fn verify_chunk(
        &self,
        request: Request<VerifyChunkRequest>,
    ) -> Result<Response<VerifyChunkReply>, Status> {
        let id = parse_id(&request.into_inner().id)?;
        let found = self.blocking(move |s| s.verify(id)).await?;
        let (outcome, reason) = match found.outcome {
            Verification::Intact { .. } => {
                self.scrub.note_written(id);
                (verify_chunk_reply::Outcome::Intact, String::new())
            }
            Verification::Absent => (verify_chunk_reply::Outcome::Absent, String::new()),
            Verification::Corrupt { reason } => (verify_chunk_reply::Outcome::Corrupt, reason),
        };
        tracing::info!(chunk = %id, ?outcome, "copy verified on request");
        Ok(Response::new(VerifyChunkReply {
            outcome: outcome as i32,
            reason,
        }))
    }
}
