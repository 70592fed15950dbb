//! The ChunkService over real gRPC on 127.0.0.1:0: round trips, refusals of bad input,
//! corruption reported as `corrupt`, graceful shutdown, and DeleteChunks.
mod support;

use bytes::Bytes;
use cairn_chunk_server::{start, Config};
use cairn_common::error::ErrorKind;
use cairn_common::{ChunkId, CHUNK_SIZE};
use cairn_proto::chunk_service_client::ChunkServiceClient;
use cairn_proto::{DeleteChunksRequest, GetChunkRequest, HasChunkRequest, PutChunkRequest};
use support::data;
use tonic::transport::Channel;
use tonic::Code;

/// A client allowed to send far more than the server accepts, to test the server.
async fn client(addr: std::net::SocketAddr) -> ChunkServiceClient<Channel> {
    support::client_with_limit(addr, 64 * 1024 * 1024).await
}

fn put(id: &ChunkId, data: &Bytes) -> PutChunkRequest {
    PutChunkRequest {
        id: id.as_bytes().to_vec(),
        data: data.clone(),
    }
}

/// A GetChunk of `[offset, offset + len)` of the chunk with (raw) id `id`.
fn get_req(id: &[u8], offset: u64, len: u64) -> GetChunkRequest {
    GetChunkRequest {
        id: id.to_vec(),
        offset,
        len,
        with_block_cvs: false,
    }
}

fn has_req(id: &[u8]) -> HasChunkRequest {
    HasChunkRequest { id: id.to_vec() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_round_trip_and_bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(Config::for_tests(dir.path())).await.unwrap();
    assert_eq!(server.advertise_addr(), server.addr().to_string());
    assert_ne!(server.addr().port(), 0);
    let mut c = client(server.addr()).await;

    // --- put and get a full 4 MiB chunk
    let d = data("grpc", CHUNK_SIZE);
    let id = ChunkId::of(&d);
    let r = c.put_chunk(put(&id, &d)).await.unwrap().into_inner();
    assert!(!r.already_present);
    let r = c.put_chunk(put(&id, &d)).await.unwrap().into_inner();
    assert!(r.already_present);
    let got = c
        .get_chunk(get_req(id.as_bytes(), 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.stored_len, CHUNK_SIZE as u64);
    assert_eq!(got.data, d);
    let got = c
        .get_chunk(get_req(id.as_bytes(), 65_530, 77))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.data, d.slice(65_530..65_607));
    let has = c
        .has_chunk(has_req(id.as_bytes()))
        .await
        .unwrap()
        .into_inner();
    assert!(has.present);
    assert_eq!(has.stored_len, CHUNK_SIZE as u64);

    // --- a malformed id (31 bytes) is InvalidArgument, for every call
    let bad = vec![0u8; 31];
    let e = c
        .put_chunk(PutChunkRequest {
            id: bad.clone(),
            data: Bytes::from_static(b"x"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(ErrorKind::from_status(&e), ErrorKind::InvalidArgument);
    let e = c.get_chunk(get_req(&bad, 0, 0)).await.unwrap_err();
    assert_eq!(ErrorKind::from_status(&e), ErrorKind::InvalidArgument);
    let e = c.has_chunk(has_req(&bad)).await.unwrap_err();
    assert_eq!(ErrorKind::from_status(&e), ErrorKind::InvalidArgument);

    // --- data that does not match its id is refused
    let other = data("other", 100);
    let e = c.put_chunk(put(&id, &other)).await.unwrap_err();
    assert_eq!(ErrorKind::from_status(&e), ErrorKind::InvalidArgument);
    assert!(e.message().contains("hash"), "{}", e.message());

    // --- a chunk larger than CHUNK_SIZE (but within the message limit) is refused
    let big = data("big", CHUNK_SIZE + 1);
    let e = c
        .put_chunk(put(&ChunkId::of(&big), &big))
        .await
        .unwrap_err();
    assert_eq!(ErrorKind::from_status(&e), ErrorKind::InvalidArgument);

    // --- a message larger than MAX_MESSAGE_BYTES is refused by the transport
    let huge = data("huge", cairn_proto::MAX_MESSAGE_BYTES + 1024);
    let e = c
        .put_chunk(put(&ChunkId::of(&huge), &huge))
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange),
        "oversized message: {e:?}"
    );
    assert!(
        e.message().contains("message length too large") || e.message().contains("large"),
        "{}",
        e.message()
    );

    // --- missing chunk and bad range
    let missing = ChunkId::of(b"missing");
    let e = c
        .get_chunk(get_req(missing.as_bytes(), 0, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(ErrorKind::from_status(&e), ErrorKind::NotFound);
    let e = c
        .get_chunk(get_req(id.as_bytes(), CHUNK_SIZE as u64 - 1, 2))
        .await
        .unwrap_err();
    assert_eq!(ErrorKind::from_status(&e), ErrorKind::InvalidArgument);

    // --- Info counts chunks and received bytes (all PutChunk data, refused puts included)
    let info = support::info(&mut c).await;
    assert_eq!(info.chunk_count, 1);
    assert_eq!(info.server_id, 0, "standalone server is not registered");
    assert!(info.capacity_bytes > 0);
    let expected = 2 * CHUNK_SIZE as u64 + 1 + 100 + (CHUNK_SIZE as u64 + 1);
    assert_eq!(info.received_bytes, expected);

    // --- corruption on disk is reported as `corrupt`, never as data
    let path = server.store().chunk_path(id);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let e = c.get_chunk(get_req(id.as_bytes(), 0, 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss);
    assert_eq!(ErrorKind::from_status(&e), ErrorKind::Corrupt);
    let has = c
        .has_chunk(has_req(id.as_bytes()))
        .await
        .unwrap()
        .into_inner();
    assert!(!has.present, "quarantined chunk is no longer present");

    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_puts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(Config::for_tests(dir.path())).await.unwrap();
    let addr = server.addr();
    let chunks: Vec<Bytes> = (0..8)
        .map(|i| data(&format!("drain-{i}"), CHUNK_SIZE))
        .collect();
    let mut tasks = Vec::new();
    for d in chunks.clone() {
        tasks.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            c.put_chunk(put(&ChunkId::of(&d), &d)).await
        }));
    }
    // Give the puts time to be accepted, then shut down while they run.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let store = server.store().clone();
    server.shutdown().await.unwrap();
    // Every put that was acknowledged is durable and readable.
    let mut acked = 0;
    for (t, d) in tasks.into_iter().zip(&chunks) {
        if t.await.unwrap().is_ok() {
            acked += 1;
            use cairn_chunk_server::store::ChunkStore;
            assert_eq!(&store.get(ChunkId::of(d), 0, 0).unwrap().0, d);
        }
    }
    assert!(acked > 0, "in-flight puts should complete during the drain");
    // After shutdown, new connections are refused.
    assert!(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_chunks_removes_files_durably_and_ignores_absent_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(Config::for_tests(dir.path())).await.unwrap();
    let mut c = client(server.addr()).await;
    let chunks: Vec<(ChunkId, Bytes)> = (0..3)
        .map(|i| {
            let d = data(&format!("delete-{i}"), 100_000 + i);
            (ChunkId::of(&d), d)
        })
        .collect();
    for (id, d) in &chunks {
        c.put_chunk(put(id, d)).await.unwrap();
    }
    let (a, b, keep) = (chunks[0].0, chunks[1].0, chunks[2].0);
    let absent = ChunkId::of(b"never stored");
    let ids = |ids: &[ChunkId]| DeleteChunksRequest {
        ids: ids.iter().map(|i| i.as_bytes().to_vec()).collect(),
        only_marked: false,
    };

    // --- two present, one absent: two deleted, no error
    let r = c
        .delete_chunks(ids(&[a, b, absent]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 2);
    assert!(!server.store().chunk_path(a).exists());
    assert!(!server.store().chunk_path(b).exists());
    assert!(server.store().chunk_path(keep).exists());
    let info = support::info(&mut c).await;
    assert_eq!(info.chunk_count, 1);
    let e = c.get_chunk(get_req(a.as_bytes(), 0, 0)).await.unwrap_err();
    assert_eq!(ErrorKind::from_status(&e), ErrorKind::NotFound);

    // --- deleting again is not an error; an empty request deletes nothing
    let r = c.delete_chunks(ids(&[a])).await.unwrap().into_inner();
    assert_eq!(r.deleted, 0);
    let r = c.delete_chunks(ids(&[])).await.unwrap().into_inner();
    assert_eq!(r.deleted, 0);

    // --- a malformed id refuses the whole request before anything is removed
    let mut bad = ids(&[keep]);
    bad.ids.push(vec![0u8; 31]);
    let e = c.delete_chunks(bad).await.unwrap_err();
    assert_eq!(ErrorKind::from_status(&e), ErrorKind::InvalidArgument);
    assert!(server.store().chunk_path(keep).exists());

    // --- more than 1024 ids is refused
    let many = DeleteChunksRequest {
        ids: (0..1025u32)
            .map(|i| ChunkId::of(&i.to_le_bytes()).as_bytes().to_vec())
            .collect(),
        only_marked: false,
    };
    let e = c.delete_chunks(many).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("1024"), "{}", e.message());

    // --- the removals persist across a restart (they were fsync'd before the reply)
    server.shutdown().await.unwrap();
    let store = cairn_chunk_server::store::FileStore::open(dir.path(), Default::default()).unwrap();
    use cairn_chunk_server::store::ChunkStore;
    assert_eq!(store.stats().unwrap().chunk_count, 1);
    assert_eq!(store.get(keep, 0, 0).unwrap().0, chunks[2].1);
    assert_eq!(store.has(a).unwrap(), None);
}

/// GC over the wire: the inventory pages in id order and skips young copies; a marked delete
/// removes only copies not stored again since the mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_pages_and_marked_deletes_spare_fresh_puts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(Config::for_tests(dir.path())).await.unwrap();
    let mut c = client(server.addr()).await;
    let mut chunks: Vec<(ChunkId, Bytes)> = (0..3)
        .map(|i| {
            let d = data(&format!("inventory-{i}"), 50_000 + i);
            (ChunkId::of(&d), d)
        })
        .collect();
    for (id, d) in &chunks {
        c.put_chunk(put(id, d)).await.unwrap();
    }
    chunks.sort_by_key(|(id, _)| *id);
    let ids: Vec<Vec<u8>> = chunks.iter().map(|(i, _)| i.as_bytes().to_vec()).collect();
    let list = |after: Vec<u8>, limit: u32, min_age_secs: u64| cairn_proto::ListChunksRequest {
        after,
        limit,
        min_age_secs,
    };

    let p1 = c
        .list_chunks(list(vec![], 2, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p1.ids.clone(), p1.done), (ids[..2].to_vec(), false));
    let p2 = c
        .list_chunks(list(p1.ids[1].clone(), 2, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p2.ids, p2.done), (ids[2..].to_vec(), true));
    let young = c
        .list_chunks(list(vec![], 10, 3600))
        .await
        .unwrap()
        .into_inner();
    assert!(
        young.ids.is_empty() && young.done,
        "fresh copies are not listed as old"
    );
    let e = c.list_chunks(list(vec![1; 5], 10, 0)).await.unwrap_err();
    assert_eq!(ErrorKind::from_status(&e), ErrorKind::InvalidArgument);

    let (a, b) = (&chunks[0], &chunks[1]);
    let r = c
        .mark_chunks(cairn_proto::MarkChunksRequest { ids: ids.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.marked, 3);
    c.put_chunk(put(&a.0, &a.1)).await.unwrap();
    let r = c
        .delete_chunks(DeleteChunksRequest {
            ids: ids[..2].to_vec(),
            only_marked: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 1, "only b, still marked, goes");
    assert!(server.store().chunk_path(a.0).exists());
    assert!(!server.store().chunk_path(b.0).exists());
    assert!(server.store().chunk_path(chunks[2].0).exists());
}
