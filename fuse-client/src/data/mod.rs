//! File data: the chunked write path and the verified read path, on top of the pure slot
//! arithmetic in [`slots`].
//!
//! Write side:
//! - [`open_file`]: the state of a file open on this mount (dirty slot buffers, uploads in
//!   flight, the sticky write-back error, deferred `O_TRUNC`) and the registry of open files;
//! - [`upload`]: storing one chunk on its replicas (client fan-out, placement retries) and
//!   recording it in the file's upload session;
//! - [`commit`]: the committed version a writer starts from and `CommitWrite` of a new one,
//!   with conflict handling.
//!
//! Read side:
//! - [`read_plan`]: what a read of a byte range is made of (this mount's data, committed
//!   chunks, holes) and assembling it;
//! - [`reader`]: verified fetches of whole chunks (sequential readers) or of 64 KiB blocks
//!   proven against the chunk id (random readers), spread over the replicas, with failover,
//!   bounded prefetch and an LRU cache.
//!
//! [`DataPlane`] is what both share: the meta client, the chunk-server connection pool, the
//! servers that failed recently (tried last on reads, excluded on writes), the chunk cache and
//! the global bound on uploads in flight.
pub mod commit;
pub mod open_file;
pub mod read_plan;
pub mod reader;
pub mod slots;
pub mod upload;

use crate::meta::Meta;
use cairn_common::chunk_client::ChunkClients;
use cairn_common::ChunkId;
use cairn_proto::ChunkLocation;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Uploads in flight per file (each holds one chunk, up to 4 MiB, in memory).
pub const MAX_UPLOADS_PER_FILE: usize = 4;
/// Uploads in flight across the whole mount: bounds upload memory to 16 × 4 MiB.
pub const MAX_UPLOADS_TOTAL: usize = 16;
/// Partially filled dirty slot buffers one file may hold before the oldest is uploaded early.
pub const MAX_DIRTY_SLOTS_PER_FILE: usize = 8;
/// Bytes of verified chunk data kept for reads.
pub const CHUNK_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Chunks a sequential reader has fetched ahead of the one it reads, once it has read past its
/// first chunk (16 MiB): enough to keep every replica busy while the reader copies.
pub const READ_AHEAD_CHUNKS: u64 = 4;
/// Chunk prefetches in flight across the whole mount (each holds up to 4 MiB until it lands in
/// the cache): bounds prefetch memory to 32 MiB however many files are read at once.
pub const MAX_PREFETCHES: usize = 8;
/// How long a server that failed is avoided.
const FAILED_SERVER_MEMORY: Duration = Duration::from_secs(30);

pub struct DataPlane {
    pub meta: Meta,
    pub chunks: ChunkClients,
    pub cache: reader::ChunkCache,
    pub upload_slots: Arc<Semaphore>,
    /// Prefetches in flight ([`MAX_PREFETCHES`]).
    pub prefetch_slots: Arc<Semaphore>,
    /// Bad replicas being reported to the metadata cluster (see [`reader::report_bad_replica`]).
    pub bad_replicas: reader::BadReplicaReports,
    failed: Mutex<HashMap<u64, Instant>>,
    /// Who this data plane writes for ("host:/mountpoint"), as upload sessions show it.
    pub writer_label: std::sync::OnceLock<String>,
    /// Files of at most this many bytes are committed inline (at most
    /// [`INLINE_MAX`](cairn_common::INLINE_MAX); 0: never). See `open_file`.
    pub inline_max: usize,
}

impl DataPlane {
    pub fn new(meta: Meta) -> Arc<DataPlane> {
        DataPlane::with_inline_max(meta, cairn_common::INLINE_MAX)
    }

    /// A data plane committing files of at most `inline_max` bytes inline (capped at
    /// [`INLINE_MAX`](cairn_common::INLINE_MAX); 0: never).
    pub fn with_inline_max(meta: Meta, inline_max: usize) -> Arc<DataPlane> {
        Arc::new(DataPlane {
            meta,
            chunks: ChunkClients::new(),
            cache: reader::ChunkCache::new(CHUNK_CACHE_BYTES),
            upload_slots: Arc::new(Semaphore::new(MAX_UPLOADS_TOTAL)),
            prefetch_slots: Arc::new(Semaphore::new(MAX_PREFETCHES)),
            bad_replicas: reader::BadReplicaReports::default(),
            failed: Mutex::new(HashMap::new()),
            writer_label: std::sync::OnceLock::new(),
            inline_max: inline_max.min(cairn_common::INLINE_MAX),
        })
    }

    /// Remembers that `server_id` just failed a request.
    pub fn mark_failed(&self, server_id: u64) {
        let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        f.insert(server_id, Instant::now());
    }

    /// Remembers that `server_id` just answered.
    pub fn mark_ok(&self, server_id: u64) {
        let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        f.remove(&server_id);
    }

    /// Servers that failed within the last 30 s.
    pub fn recently_failed(&self) -> Vec<u64> {
        let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        f.retain(|_, t| t.elapsed() < FAILED_SERVER_MEMORY);
        f.keys().copied().collect()
    }

    /// The order in which to ask the replicas `locs` of chunk `id`: rotated by the id, so the
    /// chunks of a file (and the readers of different chunks) spread over every replica
    /// instead of all going to the first listed; servers that failed recently come last.
    pub fn order_replicas(&self, locs: &[ChunkLocation], id: ChunkId) -> Vec<ChunkLocation> {
        let failed = self.recently_failed();
        let mut out: Vec<ChunkLocation> = locs.to_vec();
        if !out.is_empty() {
            let start = id.0[0] as usize % out.len();
            out.rotate_left(start);
        }
        out.sort_by_key(|l| failed.contains(&l.server_id));
        out
    }
}
