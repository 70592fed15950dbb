//! Helpers shared by the scrub and replication tests.
#![allow(dead_code)]
use bytes::Bytes;
use cairn_common::ChunkId;
use cairn_proto::chunk_service_client::ChunkServiceClient;
use cairn_proto::{ChunkServerInfoReply, ChunkServerInfoRequest, ScrubStats};
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

pub async fn client(addr: std::net::SocketAddr) -> ChunkServiceClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ChunkServiceClient::new(ch)
        .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
        .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
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
