//! The verified read path.
//!
//! A chunk is always fetched whole and checked against its id (blake3 of its bytes) before any
//! of it is used: a replica that returns wrong, short or no data is skipped and the next replica
//! is tried; when none returns the right bytes the read fails with EIO. Verified chunks are kept
//! in a small LRU cache bounded in bytes ([`super::CHUNK_CACHE_BYTES`]); sequential reads of a
//! large file therefore fetch each chunk once and serve the kernel's 128 KiB–1 MiB reads from
//! memory, and the next chunk is prefetched while the current one is read.
//!
//! Concurrent readers of the same chunk share one fetch (the pending fetch is in the cache).
use super::slots;
use super::DataPlane;
use crate::errno::Errno;
use bytes::Bytes;
use cairn_common::ChunkId;
use cairn_proto::{ChunkLocation, GetChunkRequest};
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// A stored chunk and where its replicas are.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub id: ChunkId,
    /// Bytes of the chunk that belong to the file.
    pub len: u32,
    pub stored_len: u32,
    pub locations: Arc<[ChunkLocation]>,
}

/// One piece of a read, in file order.
#[derive(Debug, Clone)]
pub enum Piece {
    Zeros(usize),
    Data(Bytes),
    /// `[off, off + len)` of a stored chunk; the range lies within the chunk's `len`.
    Chunk {
        chunk: StoredChunk,
        off: usize,
        len: usize,
    },
}

type Fetch = Shared<BoxFuture<'static, Result<Bytes, Errno>>>;

enum Entry {
    Ready(Bytes),
    Pending(Fetch),
}

struct CacheInner {
    map: HashMap<ChunkId, Entry>,
    /// Ready entries, least recently used first.
    lru: VecDeque<ChunkId>,
    bytes: usize,
}

/// Verified chunks by id. Content addressing means an entry can never be stale.
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

    /// Inserts verified data, evicting least recently used entries beyond the capacity.
    pub fn insert(&self, id: ChunkId, data: Bytes) {
        let mut c = self.lock();
        if data.len() > self.capacity {
            c.map.remove(&id);
            return;
        }
        if let Some(Entry::Ready(old)) = c.map.remove(&id) {
            c.bytes -= old.len();
            c.lru.retain(|x| *x != id);
        }
        c.bytes += data.len();
        c.map.insert(id, Entry::Ready(data));
        c.lru.push_back(id);
        while c.bytes > self.capacity {
            let Some(old) = c.lru.pop_front() else { break };
            if let Some(Entry::Ready(d)) = c.map.remove(&old) {
                c.bytes -= d.len();
            }
        }
    }

    /// The cached bytes of `id`, marking them recently used.
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        let mut c = self.lock();
        let data = match c.map.get(id) {
            Some(Entry::Ready(d)) => d.clone(),
            _ => return None,
        };
        if let Some(pos) = c.lru.iter().position(|x| x == id) {
            c.lru.remove(pos);
            c.lru.push_back(*id);
        }
        Some(data)
    }

    pub fn cached_bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// The verified bytes of `chunk` (all `stored_len` of them), from the cache or a replica.
pub async fn fetch_chunk(dp: &Arc<DataPlane>, chunk: &StoredChunk) -> Result<Bytes, Errno> {
    let fetch = {
        let mut c = dp.cache.lock();
        match c.map.get(&chunk.id) {
            Some(Entry::Ready(d)) => {
                let d = d.clone();
                drop(c);
                // Touch for LRU.
                let _ = dp.cache.get(&chunk.id);
                return Ok(d);
            }
            Some(Entry::Pending(f)) => f.clone(),
            None => {
                let f = fetch_from_replicas(dp.clone(), chunk.clone())
                    .boxed()
                    .shared();
                c.map.insert(chunk.id, Entry::Pending(f.clone()));
                f
            }
        }
    };
    let res = fetch.await;
    match &res {
        Ok(data) => dp.cache.insert(chunk.id, data.clone()),
        Err(_) => {
            let mut c = dp.cache.lock();
            if matches!(c.map.get(&chunk.id), Some(Entry::Pending(_))) {
                c.map.remove(&chunk.id);
            }
        }
    }
    res
}

/// Starts fetching `chunk` in the background so a sequential reader finds it cached.
pub fn prefetch(dp: &Arc<DataPlane>, chunk: StoredChunk) {
    if dp.cache.lock().map.contains_key(&chunk.id) {
        return;
    }
    let dp = dp.clone();
    tokio::spawn(async move {
        let _ = fetch_chunk(&dp, &chunk).await;
    });
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
    if ChunkId::of(data) != chunk.id {
        return Err("checksum mismatch".into());
    }
    Ok(())
}

async fn fetch_from_replicas(dp: Arc<DataPlane>, chunk: StoredChunk) -> Result<Bytes, Errno> {
    if chunk.locations.is_empty() {
        tracing::error!(chunk = %chunk.id, "chunk has no replica locations");
        return Err(Errno::EIO);
    }
    for loc in dp.order_replicas(&chunk.locations) {
        let result = async {
            let mut client = dp
                .chunks
                .get(&loc.addr)
                .map_err(|s| s.message().to_owned())?;
            let reply = client
                .get_chunk(GetChunkRequest {
                    id: chunk.id.as_bytes().to_vec(),
                    offset: 0,
                    len: 0,
                })
                .await
                .map_err(|s| {
                    format!(
                        "{:?}: {}",
                        cairn_common::ErrorKind::from_status(&s),
                        s.message()
                    )
                })?
                .into_inner();
            verify(&chunk, &reply.data)?;
            Ok::<Bytes, String>(reply.data)
        }
        .await;
        match result {
            Ok(data) => {
                dp.mark_ok(loc.server_id);
                return Ok(data);
            }
            Err(why) => {
                dp.mark_failed(loc.server_id);
                tracing::warn!(chunk = %chunk.id, server = loc.server_id, addr = %loc.addr, error = %why,
                    "replica failed; trying the next");
            }
        }
    }
    tracing::error!(chunk = %chunk.id, replicas = chunk.locations.len(), "no replica returned intact data");
    Err(Errno::EIO)
}

/// Runs a read plan: fetches the chunks it needs (concurrently) and assembles the bytes.
pub async fn execute(dp: &Arc<DataPlane>, pieces: Vec<Piece>) -> Result<Vec<u8>, Errno> {
    let fetches = pieces.iter().map(|p| async move {
        match p {
            Piece::Chunk { chunk, .. } => fetch_chunk(dp, chunk).await.map(Some),
            _ => Ok(None),
        }
    });
    let fetched = futures::future::try_join_all(fetches).await?;
    let total: usize = pieces
        .iter()
        .map(|p| match p {
            Piece::Zeros(n) => *n,
            Piece::Data(d) => d.len(),
            Piece::Chunk { len, .. } => *len,
        })
        .sum();
    let mut out = Vec::with_capacity(total);
    for (p, data) in pieces.iter().zip(fetched) {
        match (p, data) {
            (Piece::Zeros(n), _) => out.resize(out.len() + n, 0),
            (Piece::Data(d), _) => out.extend_from_slice(d),
            (Piece::Chunk { off, len, .. }, Some(data)) => {
                slots::read_padded(&data, *off, *len, &mut out)
            }
            (Piece::Chunk { .. }, None) => return Err(Errno::EIO),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(data: &[u8]) -> StoredChunk {
        StoredChunk {
            id: ChunkId::of(data),
            len: data.len() as u32,
            stored_len: data.len() as u32,
            locations: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn verification_refuses_wrong_or_short_data() {
        let c = stored(b"hello world");
        assert!(verify(&c, b"hello world").is_ok());
        assert!(verify(&c, b"hello worle").is_err());
        assert!(verify(&c, b"hello").is_err());
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

    #[tokio::test]
    async fn plans_assemble_data_zeros_and_short_chunks() {
        let dp = DataPlane::new(cairn_common::MetaClient::new(vec![]));
        let chunk = stored(b"0123456789");
        dp.cache.insert(chunk.id, Bytes::from_static(b"0123456789"));
        let out = execute(
            &dp,
            vec![
                Piece::Data(Bytes::from_static(b"ab")),
                Piece::Zeros(3),
                Piece::Chunk {
                    chunk: chunk.clone(),
                    off: 8,
                    len: 4,
                },
            ],
        )
        .await
        .unwrap();
        assert_eq!(out, b"ab\0\0\089\0\0");
    }

    #[tokio::test]
    async fn a_chunk_without_reachable_replicas_is_eio() {
        let dp = DataPlane::new(cairn_common::MetaClient::new(vec![]));
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
}
