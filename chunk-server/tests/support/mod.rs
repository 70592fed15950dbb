//! Helpers shared by the chunk server's tests: deterministic chunks, rot, a gRPC client, and
//! polling.
#![allow(dead_code)]
use bytes::Bytes;
use cairn_common::ChunkId;
use cairn_proto::chunk_service_client::ChunkServiceClient;
use cairn_proto::{ChunkServerInfoReply, ChunkServerInfoRequest, ScrubStats};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// `len` deterministic pseudo-random bytes derived from `seed`.
pub fn data(seed: &str, len: usize) -> Bytes {
    let mut buf = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut buf);
    Bytes::from(buf)
}

pub fn chunk(seed: &str, len: usize) -> (ChunkId, Bytes) {
    let d = data(seed, len);
    (ChunkId::of(&d), d)
}

/// Flips one bit of the byte at `at` of the file at `path` (and syncs it).
pub fn flip_byte(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    f.sync_all().unwrap();
}

/// A client of the chunk server at `addr`, with the message limits the servers use.
pub async fn client(addr: std::net::SocketAddr) -> ChunkServiceClient<Channel> {
    client_with_limit(addr, cairn_proto::MAX_MESSAGE_BYTES).await
}

/// A client of the chunk server at `addr` that sends and receives messages of up to `limit`
/// bytes.
pub async fn client_with_limit(
    addr: std::net::SocketAddr,
    limit: usize,
) -> ChunkServiceClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ChunkServiceClient::new(ch)
        .max_encoding_message_size(limit)
        .max_decoding_message_size(limit)
}

pub async fn info(c: &mut ChunkServiceClient<Channel>) -> ChunkServerInfoReply {
    c.info(ChunkServerInfoRequest {})
        .await
        .unwrap()
        .into_inner()
}

pub async fn scrub_stats(c: &mut ChunkServiceClient<Channel>) -> ScrubStats {
    info(c).await.scrub.expect("Info carries the scrub figures")
}

/// Polls `cond` every 10 ms for up to 30 s.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the server's scrub figures (over gRPC) until `cond` holds; returns them.
pub async fn wait_for_scrub(
    c: &mut ChunkServiceClient<Channel>,
    what: &str,
    cond: impl Fn(&ScrubStats) -> bool,
) -> ScrubStats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = scrub_stats(c).await;
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sends `ScrubNow`; returns whether a pass was started.
pub async fn scrub_now(c: &mut ChunkServiceClient<Channel>) -> bool {
    c.scrub_now(cairn_proto::ScrubNowRequest {})
        .await
        .unwrap()
        .into_inner()
        .started
}
