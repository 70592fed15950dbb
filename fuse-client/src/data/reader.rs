//! The verified read path: fetching chunks, or blocks of them, from their replicas.
//!
//! Nothing fetched is used before it is checked against the chunk id: a whole chunk is hashed
//! ([`fetch_chunk`]); a random reader's range of 64 KiB blocks ([`fetch_part`]) comes with the
//! chunk's block chaining values, which are checked to combine into the id and then each block
//! against its value (`cairn_common::block_tree`), so a 4 KiB random read moves and hashes
//! 64 KiB, not 4 MiB. A replica that returns wrong, short or no data is skipped and the next
//! replica is tried; when none returns the right bytes the read fails with EIO. Verified chunks
//! and blocks are kept in a small LRU cache bounded in bytes ([`super::CHUNK_CACHE_BYTES`]);
//! sequential reads of a large file therefore fetch each chunk once and serve the kernel's
//! 128 KiB–1 MiB reads from memory, and the chunks ahead are prefetched while one is read.
//! Replicas are tried in an order that starts at a different one per chunk
//! ([`DataPlane::order_replicas`]), so a large read draws on every server.
//!
//! Concurrent readers of the same chunk share one fetch (the pending fetch is in the cache).
//! What a read of a file range is made of is planned in [`super::read_plan`].
//!
//! A replica that reports its copy corrupt, or returns bytes that fail the check, is reported to
//! the metadata cluster (`ReportBadReplica`) in the background, so it stops being listed; the
//! read goes on with the next replica without waiting for the report. Such a server is not
//! marked as failed: it answered, only that one copy is bad.
use super::DataPlane;
use crate::errno::Errno;
use crate::mount_metrics::{cache_lookup, CacheResult};
use bytes::Bytes;
use cairn_common::block_tree::VerifiedCvs;
use cairn_common::{ChunkId, ErrorKind, BLOCK_SIZE};
use cairn_proto::{ChunkLocation, GetChunkReply, GetChunkRequest};
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// Most bad-replica reports in flight at once; beyond it a report is skipped (logged). Nothing
/// is lost for long: the chunk server reports its own corruption, and the next read of the copy
/// reports it again.
pub const MAX_REPORTS_IN_FLIGHT: usize = 64;

/// A stored chunk and where its replicas are.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub id: ChunkId,
    /// Bytes of the chunk that belong to the file.
    pub len: u32,
    pub stored_len: u32,
    pub locations: Arc<[ChunkLocation]>,
    /// The chunk's bytes when it is kept inline, in the metadata (no locations then): as the
    /// cluster sent them, verified by [`fetch_chunk`] before use.
    pub inline: Option<Bytes>,
}

#[cfg(test)]
impl StoredChunk {
    /// A chunk whose content id is that of `tag`, of `len` bytes, on no replica.
    pub fn for_test(tag: &[u8], len: u32) -> StoredChunk {
        StoredChunk {
            id: ChunkId::of(tag),
            len,
            stored_len: len,
            locations: Arc::from(Vec::new()),
            inline: None,
        }
    }
}

type Fetch = Shared<BoxFuture<'static, Result<Bytes, Errno>>>;

enum Entry {
    Ready(Bytes),
    Pending(Fetch),
}

/// A whole chunk, or one 64 KiB block of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CacheKey {
    id: ChunkId,
    /// The block number, or [`WHOLE`].
    block: u32,
}

const WHOLE: u32 = u32::MAX;

impl CacheKey {
    fn whole(id: ChunkId) -> CacheKey {
        CacheKey { id, block: WHOLE }
    }
}

struct CacheInner {
    map: HashMap<CacheKey, Entry>,
    /// Ready entries, least recently used first.
    lru: VecDeque<CacheKey>,
    bytes: usize,
}

/// Verified chunks, and blocks of chunks, by id. Content addressing means an entry can never
/// be stale. Only whole chunks have pending entries (one fetch shared by its readers).
pub struct ChunkCache {
    inner: Mutex<CacheInner>,
    capacity: usize,
}

impl ChunkCache {
    pub fn new(capacity: usize) -> ChunkCache {
        ChunkCache {
            inner: Mutex::new(CacheInner {
                map: HashMap::new(),
                lru: VecDeque::new(),
                bytes: 0,
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts a verified whole chunk, evicting least recently used entries beyond the capacity.
    pub fn insert(&self, id: ChunkId, data: Bytes) {
        self.insert_key(CacheKey::whole(id), data)
    }

    /// Inserts verified block `block` of chunk `id`.
    pub fn insert_block(&self, id: ChunkId, block: usize, data: Bytes) {
        self.insert_key(
            CacheKey {
                id,
                block: block as u32,
            },
            data,
        )
    }

    fn insert_key(&self, key: CacheKey, data: Bytes) {
        let mut c = self.lock();
        if data.len() > self.capacity {
            c.map.remove(&key);
            return;
        }
        if let Some(Entry::Ready(old)) = c.map.remove(&key) {
            c.bytes -= old.len();
            c.lru.retain(|x| *x != key);
        }
        c.bytes += data.len();
        c.map.insert(key, Entry::Ready(data));
        c.lru.push_back(key);
        while c.bytes > self.capacity {
            let Some(old) = c.lru.pop_front() else { break };
            if let Some(Entry::Ready(d)) = c.map.remove(&old) {
                c.bytes -= d.len();
            }
        }
    }

    /// The cached bytes of chunk `id`, marking them recently used.
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        self.get_key(CacheKey::whole(*id))
    }

    /// The cached bytes of block `block` of chunk `id`.
    pub fn get_block(&self, id: ChunkId, block: usize) -> Option<Bytes> {
        self.get_key(CacheKey {
            id,
            block: block as u32,
        })
    }

    /// Whether chunk `id` is cached whole or being fetched whole.
    fn has_whole(&self, id: ChunkId) -> bool {
        self.lock().map.contains_key(&CacheKey::whole(id))
    }

    fn get_key(&self, key: CacheKey) -> Option<Bytes> {
        let mut c = self.lock();
        let data = match c.map.get(&key) {
            Some(Entry::Ready(d)) => d.clone(),
            _ => {
                cache_lookup(CacheResult::Miss);
                return None;
            }
        };
        cache_lookup(CacheResult::Hit);
        if let Some(pos) = c.lru.iter().position(|x| *x == key) {
            c.lru.remove(pos);
            c.lru.push_back(key);
        }
        Some(data)
    }

    pub fn cached_bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// The bad replicas being reported right now, so a copy met by many readers at once is reported
/// once, and the number of report tasks is bounded.
#[derive(Default)]
pub struct BadReplicaReports {
    in_flight: Mutex<HashSet<(u64, ChunkId)>>,
}

impl BadReplicaReports {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(u64, ChunkId)>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports in flight (for tests).
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }
}

/// Tells the metadata cluster, in the background, that `server_id`'s copy of `id` is bad.
pub fn report_bad_replica(dp: &Arc<DataPlane>, server_id: u64, id: ChunkId, reason: String) {
    {
        let mut f = dp.bad_replicas.lock();
        if f.contains(&(server_id, id)) {
            return;
        }
        if f.len() >= MAX_REPORTS_IN_FLIGHT {
            tracing::warn!(chunk = %id, server = server_id, "too many bad-replica reports in flight; skipped");
            return;
        }
        f.insert((server_id, id));
    }
    let dp = dp.clone();
    tokio::spawn(async move {
        let r = dp
            .meta
            .report_bad_replica(server_id, id.as_bytes(), &reason)
            .await;
        match r {
            Ok(_) => tracing::info!(chunk = %id, server = server_id, "bad replica reported"),
            Err(e) => {
                tracing::warn!(chunk = %id, server = server_id, error = %e.message(), "could not report a bad replica")
            }
        }
        dp.bad_replicas.lock().remove(&(server_id, id));
    });
}

/// The verified bytes of `chunk` (all `stored_len` of them): its inline bytes, or from the
/// cache or a replica.
pub async fn fetch_chunk(dp: &Arc<DataPlane>, chunk: &StoredChunk) -> Result<Bytes, Errno> {
    if let Some(data) = &chunk.inline {
        return match verify(chunk, data) {
            Ok(()) => Ok(data.clone()),
            Err(why) => {
                tracing::error!(chunk = %chunk.id, error = %why, "inline chunk failed its check");
                Err(Errno::EIO)
            }
        };
    }
    let key = CacheKey::whole(chunk.id);
    let fetch = {
        let mut c = dp.cache.lock();
        match c.map.get(&key) {
            Some(Entry::Ready(d)) => {
                let d = d.clone();
                drop(c);
                // Touch for LRU (and counted as the hit it is).
                let _ = dp.cache.get(&chunk.id);
                return Ok(d);
            }
            Some(Entry::Pending(f)) => {
                cache_lookup(CacheResult::Joined);
                f.clone()
            }
            None => {
                cache_lookup(CacheResult::Miss);
                let f = fetch_from_replicas(dp.clone(), chunk.clone())
                    .boxed()
                    .shared();
                c.map.insert(key, Entry::Pending(f.clone()));
                f
            }
        }
    };
    let res = fetch.await;
    match &res {
        Ok(data) => dp.cache.insert(chunk.id, data.clone()),
        Err(_) => {
            let mut c = dp.cache.lock();
            if matches!(c.map.get(&key), Some(Entry::Pending(_))) {
                c.map.remove(&key);
            }
        }
    }
    res
}

/// Starts fetching `chunk` in the background so a sequential reader finds it cached. Skipped
/// when [`super::MAX_PREFETCHES`] are in flight already (memory stays bounded; the reader then
/// fetches the chunk itself when it gets there).
pub fn prefetch(dp: &Arc<DataPlane>, chunk: StoredChunk) {
    if chunk.inline.is_some() || dp.cache.has_whole(chunk.id) {
        return;
    }
    let Ok(permit) = dp.prefetch_slots.clone().try_acquire_owned() else {
        return;
    };
    let dp = dp.clone();
    tokio::spawn(async move {
        let _ = fetch_chunk(&dp, &chunk).await;
        drop(permit);
    });
}

/// The verified bytes of `[off, off + len)` of `chunk` for a random reader, and the offset in
/// the chunk where the returned bytes start: only the 64 KiB blocks covering the range, each
/// checked against the chunk id through the block proof (see the module docs). A chunk of one
/// block, one cached or being fetched whole, and one whose replicas have no proof (chunk
/// format 1) are read whole ([`fetch_chunk`]). Bytes past the chunk's stored length are not
/// returned (they read as zeros).
pub async fn fetch_part(
    dp: &Arc<DataPlane>,
    chunk: &StoredChunk,
    off: usize,
    len: usize,
) -> Result<(Bytes, usize), Errno> {
    let stored = chunk.stored_len as usize;
    if chunk.inline.is_some() || stored <= BLOCK_SIZE || dp.cache.has_whole(chunk.id) {
        return fetch_chunk(dp, chunk).await.map(|d| (d, 0));
    }
    let end = (off + len).min(stored);
    if off >= end {
        return Ok((Bytes::new(), off));
    }
    let (first, last) = (off / BLOCK_SIZE, (end - 1) / BLOCK_SIZE);
    if first == last {
        if let Some(block) = dp.cache.get_block(chunk.id, first) {
            return Ok((block, first * BLOCK_SIZE));
        }
    }
    match fetch_blocks_from_replicas(dp, chunk, first, last).await? {
        Some(data) => {
            for block in first..=last {
                let at = (block - first) * BLOCK_SIZE;
                let block_end = (at + BLOCK_SIZE).min(data.len());
                dp.cache
                    .insert_block(chunk.id, block, data.slice(at..block_end));
            }
            Ok((data, first * BLOCK_SIZE))
        }
        None => fetch_chunk(dp, chunk).await.map(|d| (d, 0)),
    }
}

/// Why one replica's answer was refused.
fn verify(chunk: &StoredChunk, data: &[u8]) -> Result<(), String> {
    if data.len() != chunk.stored_len as usize {
        return Err(format!(
            "returned {} bytes, expected {}",
            data.len(),
            chunk.stored_len
        ));
    }
    let id = if chunk.inline.is_some() {
        ChunkId::inline_of(data)
    } else {
        ChunkId::of(data)
    };
    if id != chunk.id {
        return Err("checksum mismatch".into());
    }
    Ok(())
}

/// Why one replica gave no usable data.
enum ReplicaFailure {
    /// Unreachable, lacks the chunk, or another error: the server is avoided for a while.
    Failed(String),
    /// Its copy is corrupt (it said so, or the bytes failed our check): reported.
    BadCopy(String),
}

async fn fetch_from_replicas(dp: Arc<DataPlane>, chunk: StoredChunk) -> Result<Bytes, Errno> {
    let request = GetChunkRequest {
        id: chunk.id.as_bytes().to_vec(),
        offset: 0,
        len: 0,
        with_block_cvs: false,
    };
    from_replicas(&dp, &chunk, request, |reply| {
        verify(&chunk, &reply.data)?;
        Ok(reply.data)
    })
    .await
}

/// The bytes of blocks `first..=last` of `chunk`, verified through its block proof; `None` when
/// the replica that answered has no proof (its copy is in chunk format 1).
async fn fetch_blocks_from_replicas(
    dp: &Arc<DataPlane>,
    chunk: &StoredChunk,
    first: usize,
    last: usize,
) -> Result<Option<Bytes>, Errno> {
    let start = first * BLOCK_SIZE;
    let end = ((last + 1) * BLOCK_SIZE).min(chunk.stored_len as usize);
    let request = GetChunkRequest {
        id: chunk.id.as_bytes().to_vec(),
        offset: start as u64,
        len: (end - start) as u64,
        with_block_cvs: true,
    };
    from_replicas(dp, chunk, request, |reply| {
        if reply.block_cvs.is_empty() {
            return Ok(None);
        }
        let cvs = VerifiedCvs::check(chunk.id, chunk.stored_len as u64, &reply.block_cvs)
            .map_err(|e| e.to_string())?;
        cvs.check_blocks(first, last, &reply.data)
            .map_err(|e| e.to_string())?;
        Ok(Some(reply.data))
    })
    .await
}

/// Sends `request` for `chunk` to its replicas in turn until one's reply passes `check` (which
/// says why it refuses one); EIO when none does.
async fn from_replicas<T>(
    dp: &Arc<DataPlane>,
    chunk: &StoredChunk,
    request: GetChunkRequest,
    check: impl Fn(GetChunkReply) -> Result<T, String>,
) -> Result<T, Errno> {
    if chunk.locations.is_empty() {
        tracing::error!(chunk = %chunk.id, "chunk has no replica locations");
        return Err(Errno::EIO);
    }
    for loc in dp.order_replicas(&chunk.locations, chunk.id) {
        let result = async {
            let mut client = dp
                .chunks
                .get(&loc.addr)
                .map_err(|s| ReplicaFailure::Failed(s.message().to_owned()))?;
            let reply = client
                .get_chunk(request.clone())
                .await
                .map_err(|s| {
                    let kind = ErrorKind::from_status(&s);
                    let why = format!("{kind:?}: {}", s.message());
                    if kind == ErrorKind::Corrupt {
                        ReplicaFailure::BadCopy(why)
                    } else {
                        ReplicaFailure::Failed(why)
                    }
                })?
                .into_inner();
            check(reply).map_err(|why| ReplicaFailure::BadCopy(format!("client check: {why}")))
        }
        .await;
        match result {
            Ok(data) => {
                dp.mark_ok(loc.server_id);
                return Ok(data);
            }
            Err(ReplicaFailure::Failed(why)) => {
                dp.mark_failed(loc.server_id);
                tracing::warn!(chunk = %chunk.id, server = loc.server_id, addr = %loc.addr, error = %why,
                    "replica failed; trying the next");
            }
            Err(ReplicaFailure::BadCopy(why)) => {
                tracing::error!(chunk = %chunk.id, server = loc.server_id, addr = %loc.addr, error = %why,
                    "replica holds a bad copy; reporting it and trying the next");
                report_bad_replica(dp, loc.server_id, chunk.id, why);
            }
        }
    }
    tracing::error!(chunk = %chunk.id, replicas = chunk.locations.len(), "no replica returned intact data");
    Err(Errno::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(data: &[u8]) -> StoredChunk {
        StoredChunk::for_test(data, data.len() as u32)
    }

    #[test]
    fn verification_refuses_wrong_or_short_data() {
        let c = stored(b"hello world");
        assert!(verify(&c, b"hello world").is_ok());
        assert!(verify(&c, b"hello worle").is_err());
        assert!(verify(&c, b"hello").is_err());
    }

    #[test]
    fn inline_bytes_are_verified_against_the_inline_id() {
        let data = Bytes::from_static(b"small file");
        let good = crate::data::upload::Uploaded::inline(data.clone()).chunk;
        assert!(verify(&good, &data).is_ok());
        // The id of the same bytes stored on chunk servers is another id.
        assert_ne!(good.id, ChunkId::of(&data));
        let mut forged = good.clone();
        forged.inline = Some(Bytes::from_static(b"small filf"));
        assert!(verify(&forged, forged.inline.as_ref().unwrap()).is_err());
    }

    #[test]
    fn cache_evicts_least_recently_used_beyond_capacity() {
        let cache = ChunkCache::new(10);
        let a = ChunkId::of(b"a");
        let b = ChunkId::of(b"b");
        let c = ChunkId::of(b"c");
        cache.insert(a, Bytes::from_static(b"aaaa"));
        cache.insert(b, Bytes::from_static(b"bbbb"));
        assert!(cache.get(&a).is_some()); // a is now most recent
        cache.insert(c, Bytes::from_static(b"cccc"));
        assert!(cache.get(&b).is_none(), "b was least recently used");
        assert_eq!(cache.get(&a).as_deref(), Some(&b"aaaa"[..]));
        assert_eq!(cache.get(&c).as_deref(), Some(&b"cccc"[..]));
        assert_eq!(cache.cached_bytes(), 8);
        // Larger than the whole cache: not kept.
        cache.insert(b, Bytes::from(vec![0u8; 11]));
        assert!(cache.get(&b).is_none());
        assert!(cache.cached_bytes() <= 10);
    }

    /// A chunk server that answers every GetChunk with (the asked range of) `data`, or with a
    /// `corrupt` error; with the block proof of `proof_of` when asked for one and it is set.
    struct FakeReplica {
        data: Option<Bytes>,
        proof_of: Option<Bytes>,
        /// Data bytes sent so far.
        sent: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[tonic::async_trait]
    impl cairn_proto::chunk_service_server::ChunkService for FakeReplica {
        async fn put_chunk(
            &self,
            _r: tonic::Request<cairn_proto::PutChunkRequest>,
        ) -> Result<tonic::Response<cairn_proto::PutChunkReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("put"))
        }
        async fn get_chunk(
            &self,
            r: tonic::Request<GetChunkRequest>,
        ) -> Result<tonic::Response<cairn_proto::GetChunkReply>, tonic::Status> {
            let r = r.into_inner();
            match &self.data {
                Some(d) => {
                    let start = (r.offset as usize).min(d.len());
                    let end = match r.len {
                        0 => d.len(),
                        n => (start + n as usize).min(d.len()),
                    };
                    let block_cvs = match &self.proof_of {
                        Some(p) if r.with_block_cvs => {
                            cairn_common::block_tree::block_cvs(p).concat()
                        }
                        _ => Vec::new(),
                    };
                    self.sent
                        .fetch_add(end - start, std::sync::atomic::Ordering::Relaxed);
                    Ok(tonic::Response::new(cairn_proto::GetChunkReply {
                        data: d.slice(start..end),
                        stored_len: d.len() as u64,
                        block_cvs,
                    }))
                }
                None => Err(cairn_common::error::status(
                    ErrorKind::Corrupt,
                    "block hash mismatch",
                )),
            }
        }
        async fn has_chunk(
            &self,
            _r: tonic::Request<cairn_proto::HasChunkRequest>,
        ) -> Result<tonic::Response<cairn_proto::HasChunkReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("has"))
        }
        async fn replicate_chunk(
            &self,
            _r: tonic::Request<cairn_proto::ReplicateChunkRequest>,
        ) -> Result<tonic::Response<cairn_proto::ReplicateChunkReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("replicate"))
        }
        async fn delete_chunks(
            &self,
            _r: tonic::Request<cairn_proto::DeleteChunksRequest>,
        ) -> Result<tonic::Response<cairn_proto::DeleteChunksReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("delete"))
        }
        async fn mark_chunks(
            &self,
            _r: tonic::Request<cairn_proto::MarkChunksRequest>,
        ) -> Result<tonic::Response<cairn_proto::MarkChunksReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("mark"))
        }
        async fn list_chunks(
            &self,
            _r: tonic::Request<cairn_proto::ListChunksRequest>,
        ) -> Result<tonic::Response<cairn_proto::ListChunksReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("list"))
        }
        async fn scrub_now(
            &self,
            _r: tonic::Request<cairn_proto::ScrubNowRequest>,
        ) -> Result<tonic::Response<cairn_proto::ScrubNowReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("scrub"))
        }
        async fn verify_chunk(
            &self,
            _r: tonic::Request<cairn_proto::VerifyChunkRequest>,
        ) -> Result<tonic::Response<cairn_proto::VerifyChunkReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("verify"))
        }
        async fn info(
            &self,
            _r: tonic::Request<cairn_proto::ChunkServerInfoRequest>,
        ) -> Result<tonic::Response<cairn_proto::ChunkServerInfoReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("info"))
        }
    }

    async fn serve(data: Option<Bytes>) -> String {
        serve_with_proof(data, None, Default::default()).await
    }

    async fn serve_with_proof(
        data: Option<Bytes>,
        proof_of: Option<Bytes>,
        sent: Arc<std::sync::atomic::AtomicUsize>,
    ) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let svc = cairn_proto::chunk_service_server::ChunkServiceServer::new(FakeReplica {
            data,
            proof_of,
            sent,
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l)),
        );
        addr
    }

    #[tokio::test]
    async fn bad_copies_are_skipped_without_marking_the_server_down() {
        let dp = DataPlane::new(crate::meta::Meta::new(vec![]));
        let good = Bytes::from_static(b"the right bytes");
        let chunk = chunk_on(
            &dp,
            &good,
            vec![
                serve(None).await,
                serve(Some(Bytes::from_static(b"the wrong bytes"))).await,
                serve(Some(good.clone())).await,
            ],
        );
        assert_eq!(fetch_chunk(&dp, &chunk).await.unwrap(), good);
        // Servers 1 and 2 answered (with bad copies): not avoided like a down server.
        assert!(dp.recently_failed().is_empty());
        // Their reports (which fail here: no meta cluster) finish and leave nothing behind.
        for _ in 0..100 {
            if dp.bad_replicas.in_flight() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(dp.bad_replicas.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_chunk_without_reachable_replicas_is_eio() {
        let dp = DataPlane::new(crate::meta::Meta::new(vec![]));
        let mut chunk = stored(b"data");
        assert_eq!(fetch_chunk(&dp, &chunk).await, Err(Errno::EIO));
        // An unreachable replica (nothing listens on port 1) is skipped, then EIO.
        chunk.locations = Arc::from(vec![ChunkLocation {
            server_id: 7,
            addr: "127.0.0.1:1".into(),
        }]);
        assert_eq!(fetch_chunk(&dp, &chunk).await, Err(Errno::EIO));
        assert_eq!(dp.recently_failed(), vec![7]);
        // A failed fetch leaves nothing behind in the cache.
        assert!(dp.cache.get(&chunk.id).is_none());
    }

    /// Deterministic bytes that differ per position.
    fn pattern(len: usize) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (i * 7 + i / 251) as u8)
                .collect::<Vec<_>>(),
        )
    }

    /// A chunk of `data` whose replicas (in the order they are asked) are `addrs`.
    fn chunk_on(dp: &Arc<DataPlane>, data: &Bytes, addrs: Vec<String>) -> StoredChunk {
        let mut chunk = stored(data);
        let mut locs: Vec<ChunkLocation> = addrs
            .into_iter()
            .zip(1..)
            .map(|(addr, server_id)| ChunkLocation { server_id, addr })
            .collect();
        let n = locs.len();
        locs.rotate_right(chunk.id.0[0] as usize % n);
        chunk.locations = Arc::from(locs);
        let order: Vec<u64> = dp
            .order_replicas(&chunk.locations, chunk.id)
            .iter()
            .map(|l| l.server_id)
            .collect();
        assert_eq!(order, (1..=n as u64).collect::<Vec<_>>());
        chunk
    }

    #[tokio::test]
    async fn a_random_read_fetches_only_the_blocks_it_needs_verified() {
        let dp = DataPlane::new(crate::meta::Meta::new(vec![]));
        let data = pattern(5 * BLOCK_SIZE + 999);
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let addr = serve_with_proof(Some(data.clone()), Some(data.clone()), sent.clone()).await;
        let chunk = chunk_on(&dp, &data, vec![addr]);
        let sent_now = || sent.load(std::sync::atomic::Ordering::Relaxed);

        // 4 KiB inside block 2: block 2 alone travels.
        let off = 2 * BLOCK_SIZE + 100;
        let (got, start) = fetch_part(&dp, &chunk, off, 4096).await.unwrap();
        assert_eq!(start, 2 * BLOCK_SIZE);
        assert_eq!(
            &got[off - start..off - start + 4096],
            &data[off..off + 4096]
        );
        assert_eq!(sent_now(), BLOCK_SIZE);
        // Again: from the block cache.
        fetch_part(&dp, &chunk, off + 8192, 4096).await.unwrap();
        assert_eq!(sent_now(), BLOCK_SIZE);
        // Across two blocks up to the short last one.
        let off = 5 * BLOCK_SIZE - 10;
        let (got, start) = fetch_part(&dp, &chunk, off, 1000).await.unwrap();
        assert_eq!(start, 4 * BLOCK_SIZE);
        assert_eq!(
            &got[off - start..off - start + 1000],
            &data[off..off + 1000]
        );
        assert_eq!(sent_now(), BLOCK_SIZE + (BLOCK_SIZE + 999));
        assert!(dp.cache.get(&chunk.id).is_none(), "never fetched whole");
    }

    #[tokio::test]
    async fn a_forged_block_or_proof_is_refused_and_the_next_replica_serves() {
        let dp = DataPlane::new(crate::meta::Meta::new(vec![]));
        let data = pattern(3 * BLOCK_SIZE);
        let mut flipped = data.to_vec();
        flipped[BLOCK_SIZE + 5] ^= 1;
        let flipped = Bytes::from(flipped);
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // 1: wrong bytes with the true proof; 2: wrong bytes with their own (self-consistent)
        // proof; 3: a copy without a proof (chunk format 1), which is then read whole.
        let one = serve_with_proof(Some(flipped.clone()), Some(data.clone()), sent.clone()).await;
        let two = serve_with_proof(Some(flipped.clone()), Some(flipped), sent.clone()).await;
        let three = serve_with_proof(Some(data.clone()), None, sent.clone()).await;
        let chunk = chunk_on(&dp, &data, vec![one, two, three]);
        let (got, start) = fetch_part(&dp, &chunk, BLOCK_SIZE, 4096).await.unwrap();
        assert_eq!(start, 0, "read whole from the copy without a proof");
        assert_eq!(
            &got[BLOCK_SIZE..BLOCK_SIZE + 4096],
            &data[BLOCK_SIZE..BLOCK_SIZE + 4096]
        );
        assert_eq!(dp.cache.get(&chunk.id).as_deref(), Some(&data[..]));
        // Both bad copies were reported (the reports fail here: no meta cluster), not avoided
        // as down servers.
        assert!(dp.recently_failed().is_empty());
    }
}
