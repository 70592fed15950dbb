//! ReplicateChunk between real chunk servers on 127.0.0.1:0 (plus a fake one that lies): the
//! copy comes from the first source with good bytes, bad sources are skipped, no good source
//! is a typed refusal, and bad input is rejected.
mod support;

use bytes::Bytes;
use cairn_chunk_server::store::{data_offset, ChunkStore};
use cairn_chunk_server::{start, Config, RunningServer};
use cairn_common::error::{status, ErrorKind};
use cairn_common::ChunkId;
use cairn_proto::chunk_service_server::{ChunkService, ChunkServiceServer};
use cairn_proto::*;
use std::os::unix::fs::FileExt;
use support::*;
use tonic::{Code, Request, Response, Status};

/// A chunk server that answers GetChunk for one chunk with wrong bytes (the right length,
/// one byte flipped), `not-found` for any other, and nothing else.
#[derive(Clone)]
struct Liar {
    id: ChunkId,
    bytes: Bytes,
}

#[tonic::async_trait]
impl ChunkService for Liar {
    async fn get_chunk(
        &self,
        r: Request<GetChunkRequest>,
    ) -> Result<Response<GetChunkReply>, Status> {
        if r.into_inner().id != self.id.as_bytes() {
            return Err(status(ErrorKind::NotFound, "no such chunk"));
        }
        Ok(Response::new(GetChunkReply {
            data: self.bytes.clone(),
            stored_len: self.bytes.len() as u64,
            block_cvs: Vec::new(),
        }))
    }
    async fn put_chunk(
        &self,
        _: Request<PutChunkRequest>,
    ) -> Result<Response<PutChunkReply>, Status> {
        Err(Status::unimplemented("put_chunk"))
    }
    async fn has_chunk(
        &self,
        _: Request<HasChunkRequest>,
    ) -> Result<Response<HasChunkReply>, Status> {
        Err(Status::unimplemented("has_chunk"))
    }
    async fn info(
        &self,
        _: Request<ChunkServerInfoRequest>,
    ) -> Result<Response<ChunkServerInfoReply>, Status> {
        Err(Status::unimplemented("info"))
    }
    async fn replicate_chunk(
        &self,
        _: Request<ReplicateChunkRequest>,
    ) -> Result<Response<ReplicateChunkReply>, Status> {
        Err(Status::unimplemented("replicate_chunk"))
    }
    async fn delete_chunks(
        &self,
        _: Request<DeleteChunksRequest>,
    ) -> Result<Response<DeleteChunksReply>, Status> {
        Err(Status::unimplemented("delete_chunks"))
    }
    async fn mark_chunks(
        &self,
        _: Request<cairn_proto::MarkChunksRequest>,
    ) -> Result<Response<cairn_proto::MarkChunksReply>, Status> {
        Err(Status::unimplemented("mark_chunks"))
    }
    async fn list_chunks(
        &self,
        _: Request<cairn_proto::ListChunksRequest>,
    ) -> Result<Response<cairn_proto::ListChunksReply>, Status> {
        Err(Status::unimplemented("list_chunks"))
    }
    async fn scrub_now(
        &self,
        _: Request<ScrubNowRequest>,
    ) -> Result<Response<ScrubNowReply>, Status> {
        Err(Status::unimplemented("scrub_now"))
    }
    async fn verify_chunk(
        &self,
        _: Request<cairn_proto::VerifyChunkRequest>,
    ) -> Result<Response<cairn_proto::VerifyChunkReply>, Status> {
        Err(Status::unimplemented("verify_chunk"))
    }
}

/// Serves a [`Liar`] for chunk `id` whose real bytes are `good`; returns its address.
async fn serve_liar(id: ChunkId, good: &Bytes) -> String {
    let mut bad = good.to_vec();
    bad[good.len() / 2] ^= 0x01;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ChunkServiceServer::new(Liar {
        id,
        bytes: Bytes::from(bad),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr.to_string()
}

/// An address nothing listens on.
async fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

async fn server() -> (RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = start(Config::for_tests(dir.path())).await.unwrap();
    (s, dir)
}

/// Flips a byte in the middle of the data of a stored chunk.
fn rot(server: &RunningServer, id: ChunkId, len: usize) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(server.store().chunk_path(id))
        .unwrap();
    let at = data_offset(len) + len as u64 / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x80], at).unwrap();
}

fn req(id: &ChunkId, sources: &[&str]) -> ReplicateChunkRequest {
    ReplicateChunkRequest {
        id: id.as_bytes().to_vec(),
        sources: sources.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_copies_from_a_good_source_and_skips_bad_ones() {
    tracing::info!("--- a healthy source, a source whose copy rotted, a source that lies");
    let (good, _d1) = server().await;
    let (rotten, _d2) = server().await;
    let (target, _d3) = server().await;
    let len = 1_500_000;
    let (id, d) = chunk("replicate", len);
    good.store().put(id, d.clone()).unwrap();
    rotten.store().put(id, d.clone()).unwrap();
    rot(&rotten, id, len);
    let liar = serve_liar(id, &d).await;

    tracing::info!("--- the copy skips the liar and the rotten copy and comes from the good one");
    let mut c = client(target.addr()).await;
    let sources = [
        liar.as_str(),
        &rotten.addr().to_string(),
        &good.addr().to_string(),
    ];
    let r = c
        .replicate_chunk(req(&id, &sources))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.already_present);
    assert_eq!(r.source, good.addr().to_string());
    assert_eq!(target.store().get(id, 0, 0).unwrap().0, d);
    let i = info(&mut c).await;
    assert_eq!(i.chunk_count, 1);
    assert_eq!(
        i.replicated_bytes,
        2 * len as u64,
        "the liar's bytes and the good copy were received"
    );
    assert_eq!(i.received_bytes, 0, "PutChunk's counter is separate");
    assert_eq!(
        rotten.store().has(id).unwrap(),
        None,
        "the rotten source found its copy corrupt and quarantined it"
    );

    tracing::info!("--- a second request finds the copy already here");
    let r = c
        .replicate_chunk(req(&id, &sources))
        .await
        .unwrap()
        .into_inner();
    assert!(r.already_present);
    assert_eq!(info(&mut c).await.replicated_bytes, 2 * len as u64);

    tracing::info!("--- a local copy that rotted is replaced from a source");
    rot(&target, id, len);
    let r = c
        .replicate_chunk(req(&id, &[&good.addr().to_string()]))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.already_present);
    assert_eq!(target.store().get(id, 0, 0).unwrap().0, d);

    for s in [good, rotten, target] {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_refuses_without_a_good_source() {
    let (good, _d1) = server().await;
    let (rotten, _d2) = server().await;
    let (target, _d3) = server().await;
    let mut c = client(target.addr()).await;
    let (id, d) = chunk("nowhere-good", 300_000);
    let liar = serve_liar(id, &d).await;
    let dead = dead_addr().await;
    rotten.store().put(id, d.clone()).unwrap();
    rot(&rotten, id, d.len());
    let kind = |e: Status| ErrorKind::from_status(&e);

    tracing::info!("--- only bad bytes: corrupt");
    let e = c.replicate_chunk(req(&id, &[&liar])).await.unwrap_err();
    assert_eq!(kind(e), ErrorKind::Corrupt);
    let e = c
        .replicate_chunk(req(&id, &[&liar, &rotten.addr().to_string()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DataLoss);
    assert!(e.message().contains(&liar), "{}", e.message());

    tracing::info!("--- no source answers: unavailable; a mix without a good copy: unavailable");
    let e = c.replicate_chunk(req(&id, &[&dead])).await.unwrap_err();
    assert_eq!(kind(e), ErrorKind::Unavailable);
    let e = c
        .replicate_chunk(req(&id, &[&dead, &liar]))
        .await
        .unwrap_err();
    assert_eq!(kind(e), ErrorKind::Unavailable);

    tracing::info!("--- the only source does not hold it: not-found");
    let e = c
        .replicate_chunk(req(&id, &[&good.addr().to_string()]))
        .await
        .unwrap_err();
    assert_eq!(kind(e), ErrorKind::NotFound);

    tracing::info!("--- nothing was stored, nothing is left in tmp/");
    assert_eq!(target.store().has(id).unwrap(), None);
    assert_eq!(
        std::fs::read_dir(target.store().tmp_dir()).unwrap().count(),
        0
    );
    assert_eq!(info(&mut c).await.chunk_count, 0);

    tracing::info!("--- a full disk: no-space");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_tests(dir.path());
    cfg.reserve = u64::MAX / 2;
    let full = start(cfg).await.unwrap();
    good.store().put(id, d.clone()).unwrap();
    let e = client(full.addr())
        .await
        .replicate_chunk(req(&id, &[&good.addr().to_string()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(kind(e), ErrorKind::NoSpace);
    assert_eq!(full.store().has(id).unwrap(), None);

    for s in [good, rotten, target, full] {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_validates_its_input() {
    let (target, _d) = server().await;
    let mut c = client(target.addr()).await;
    let id = ChunkId::of(b"x");
    let ok_source = "127.0.0.1:7100".to_string();
    let nine: Vec<&str> = vec![ok_source.as_str(); 9];
    let cases: Vec<(&str, ReplicateChunkRequest)> = vec![
        (
            "31-byte id",
            ReplicateChunkRequest {
                id: vec![0; 31],
                sources: vec![ok_source.clone()],
            },
        ),
        ("no source", req(&id, &[])),
        ("nine sources", req(&id, &nine)),
        ("no port", req(&id, &["chunk-1"])),
        ("port 0", req(&id, &["chunk-1:0"])),
        ("a URL", req(&id, &["http://chunk-1:7100"])),
        ("a path", req(&id, &["chunk-1:7100/x"])),
        ("empty host", req(&id, &[":7100"])),
    ];
    for (what, r) in cases {
        let e = c.replicate_chunk(r).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert_eq!(
            ErrorKind::from_status(&e),
            ErrorKind::InvalidArgument,
            "{what}"
        );
    }
    assert_eq!(info(&mut c).await.replicated_bytes, 0);
    target.shutdown().await.unwrap();
}
