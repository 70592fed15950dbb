//! The `ChunkService` gRPC service: PutChunk / GetChunk / HasChunk / Info over a [`ChunkStore`].
//!
//! Ids from the network are parsed with [`ChunkId::from_bytes`] (exactly 32 bytes), so a path
//! can never be built from client input. Store calls block on disk I/O; they run on tokio's
//! blocking pool, at most [`MAX_BLOCKING_OPS`] at a time.
use crate::store::{ChunkStore, PutOutcome, StoreError};
use cairn_common::error::{status, ErrorKind};
use cairn_common::ChunkId;
use cairn_proto::chunk_service_server::ChunkService;
use cairn_proto::{
    ChunkServerInfoReply, ChunkServerInfoRequest, GetChunkReply, GetChunkRequest, HasChunkReply,
    HasChunkRequest, PutChunkReply, PutChunkRequest,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Store operations running on blocking threads at once. Bounds threads and disk queue depth;
/// request data waiting for a permit is already in memory (bounded by the gRPC limits).
pub const MAX_BLOCKING_OPS: usize = 32;

/// The chunk service of one server.
pub struct ChunkServer {
    store: Arc<dyn ChunkStore>,
    /// Id assigned by the metadata cluster (0 until registered); shared with the heartbeat.
    server_id: Arc<AtomicU64>,
    /// Bytes of chunk data received by PutChunk since start.
    received_bytes: AtomicU64,
    permits: Semaphore,
}

impl ChunkServer {
    pub fn new(store: Arc<dyn ChunkStore>, server_id: Arc<AtomicU64>) -> ChunkServer {
        ChunkServer {
            store,
            server_id,
            received_bytes: AtomicU64::new(0),
            permits: Semaphore::new(MAX_BLOCKING_OPS),
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

#[tonic::async_trait]
impl ChunkService for ChunkServer {
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
        let outcome = self
            .blocking(move |s| s.put(id, data))
            .instrument(span)
            .await?;
        Ok(Response::new(PutChunkReply {
            already_present: outcome == PutOutcome::AlreadyPresent,
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
        let (data, stored_len) = self
            .blocking(move |s| s.get(id, req.offset, req.len))
            .instrument(span)
            .await?;
        Ok(Response::new(GetChunkReply { data, stored_len }))
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
        }))
    }
}
