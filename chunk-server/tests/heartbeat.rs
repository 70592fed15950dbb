//! Registration and heartbeats against a fake metadata service on 127.0.0.1:0.
mod support;

use cairn_chunk_server::store::ChunkStore;
use cairn_chunk_server::{start, Config};
use cairn_common::error::{status, ErrorKind};
use cairn_common::ChunkId;
use cairn_proto::meta_service_server::{MetaService, MetaServiceServer};
use cairn_proto::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{flip_byte, wait_for};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Recorded {
    registrations: Vec<RegisterChunkServerRequest>,
    heartbeats: Vec<HeartbeatRequest>,
    /// Refuse this many registrations with `unavailable` first.
    fail_registrations: usize,
    /// Answer the next heartbeat with `not-found` (the cluster forgot this server).
    forget_next: bool,
    bad_replicas: Vec<ReportBadReplicaRequest>,
    /// Refuse this many bad-replica reports with `unavailable` first.
    fail_reports: usize,
}

#[derive(Clone, Default)]
struct FakeMeta(Arc<Mutex<Recorded>>);

/// `impl MetaService for FakeMeta`: the listed RPCs answer `unimplemented`, the rest are given.
/// (The whole impl is generated so that `async_trait` sees the expanded methods.)
macro_rules! fake_meta_impl {
    ($($name:ident($req:ty) -> $rep:ty;)* ; $($real:tt)*) => {
        #[tonic::async_trait]
        impl MetaService for FakeMeta {
            $(async fn $name(&self, _r: Request<$req>) -> Result<Response<$rep>, Status> {
                Err(Status::unimplemented(stringify!($name)))
            })*
            $($real)*
        }
    };
}

fake_meta_impl! {
        lookup(LookupRequest) -> AttrReply;
        get_attr(GetAttrRequest) -> AttrReply;
        set_attr(SetAttrRequest) -> AttrReply;
        create(CreateRequest) -> AttrReply;
        link(LinkRequest) -> AttrReply;
        unlink(UnlinkRequest) -> UnlinkReply;
        rmdir(RmdirRequest) -> UnlinkReply;
        rename(RenameRequest) -> RenameReply;
        readlink(ReadlinkRequest) -> ReadlinkReply;
        read_dir(ReadDirRequest) -> ReadDirReply;
        get_chunks(GetChunksRequest) -> GetChunksReply;
        prepare_write(PrepareWriteRequest) -> PrepareWriteReply;
        commit_write(CommitWriteRequest) -> AttrReply;
        stat_fs(StatFsRequest) -> StatFsReply;
        fsck(FsckRequest) -> FsckReply;
        drain(DrainRequest) -> DrainReply;
        cluster_status(ClusterStatusRequest) -> ClusterStatusReply;
        node_status(NodeStatusRequest) -> NodeStatusReply;
        open_session(OpenSessionRequest) -> OpenSessionReply;
        renew_session(RenewSessionRequest) -> RenewSessionReply;
        close_session(CloseSessionRequest) -> CloseSessionReply;
        release_orphan(ReleaseOrphanRequest) -> ReleaseOrphanReply;
        set_lock(SetLockRequest) -> SetLockReply;
        get_lock(GetLockRequest) -> GetLockReply;
        release_locks(ReleaseLocksRequest) -> ReleaseLocksReply;
        get_xattr(GetXattrRequest) -> GetXattrReply;
        list_xattr(ListXattrRequest) -> ListXattrReply;
        set_xattr(SetXattrRequest) -> SetXattrReply;
        remove_xattr(RemoveXattrRequest) -> RemoveXattrReply;
        open_upload(OpenUploadRequest) -> OpenUploadReply;
        record_upload(RecordUploadRequest) -> RecordUploadReply;
        list_uploads(ListUploadsRequest) -> ListUploadsReply;
        get_upload(GetUploadRequest) -> GetUploadReply;
        abort_upload(AbortUploadRequest) -> AbortUploadReply;
        commit_upload(CommitUploadRequest) -> AttrReply;
    ;

    async fn register_chunk_server(
        &self,
        r: Request<RegisterChunkServerRequest>,
    ) -> Result<Response<RegisterChunkServerReply>, Status> {
        let mut rec = self.0.lock().unwrap();
        refuse_while(&mut rec.fail_registrations)?;
        rec.registrations.push(r.into_inner());
        Ok(Response::new(RegisterChunkServerReply {
            server_id: 41 + rec.registrations.len() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        r: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let mut rec = self.0.lock().unwrap();
        if std::mem::take(&mut rec.forget_next) {
            return Err(status(ErrorKind::NotFound, "unknown chunk server"));
        }
        rec.heartbeats.push(r.into_inner());
        Ok(Response::new(HeartbeatReply {}))
    }

    async fn report_bad_replica(
        &self,
        r: Request<ReportBadReplicaRequest>,
    ) -> Result<Response<ReportBadReplicaReply>, Status> {
        let mut rec = self.0.lock().unwrap();
        refuse_while(&mut rec.fail_reports)?;
        rec.bad_replicas.push(r.into_inner());
        Ok(Response::new(ReportBadReplicaReply {}))
    }
}

/// Refuses with `unavailable` (and counts one refusal down) while `refusals` is above 0.
fn refuse_while(refusals: &mut usize) -> Result<(), Status> {
    if *refusals > 0 {
        *refusals -= 1;
        return Err(status(ErrorKind::Unavailable, "no leader yet"));
    }
    Ok(())
}

/// Serves `fake` on 127.0.0.1:0; returns its address and the server task.
async fn serve_fake(fake: &FakeMeta) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = MetaServiceServer::new(fake.clone());
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (addr, task)
}

/// Flips one byte near the end of a chunk file (in the data, past the header).
fn flip_last_byte(path: &std::path::Path) {
    let n = std::fs::metadata(path).unwrap().len();
    flip_byte(path, n - 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_heartbeats_reregisters_and_stops() {
    tracing::info!("--- a fake metadata service that refuses the first registrations");
    let fake = FakeMeta::default();
    fake.0.lock().unwrap().fail_registrations = 2;
    let (meta_addr, meta_task) = serve_fake(&fake).await;

    tracing::info!("--- the chunk server registers (after retries) and persists its id");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_tests(dir.path());
    cfg.meta = vec![meta_addr.to_string()];
    cfg.heartbeat = Duration::from_millis(50);
    let server = start(cfg).await.unwrap();
    wait_for("registration", || server.server_id() == 42).await;
    {
        let rec = fake.0.lock().unwrap();
        assert_eq!(rec.registrations.len(), 1);
        assert_eq!(rec.registrations[0].uuid, server.store().uuid());
        assert_eq!(rec.registrations[0].addr, server.addr().to_string());
    }
    wait_for("server.id", || {
        std::fs::read_to_string(dir.path().join("server.id")).is_ok_and(|s| s.trim() == "42")
    })
    .await;

    tracing::info!("--- heartbeats carry the id, address and the current chunk count");
    let d = bytes::Bytes::from_static(b"some chunk");
    server.store().put(ChunkId::of(&d), d).unwrap();
    wait_for("heartbeat with one chunk", || {
        fake.0
            .lock()
            .unwrap()
            .heartbeats
            .iter()
            .any(|h| h.chunk_count == 1)
    })
    .await;
    {
        let rec = fake.0.lock().unwrap();
        let h = rec.heartbeats.last().unwrap();
        assert_eq!(h.server_id, 42);
        assert_eq!(h.addr, server.addr().to_string());
        assert!(h.capacity_bytes > 0 && h.free_bytes <= h.capacity_bytes);
        let scrub = h
            .scrub
            .as_ref()
            .expect("every heartbeat carries the scrub figures");
        assert_eq!(scrub.rate_limit_bytes, 64 * 1024 * 1024);
    }

    tracing::info!("--- heartbeats carry the figures of a scrub pass");
    assert!(server.scrub().request_pass());
    wait_for("heartbeat after a scrub pass", || {
        fake.0.lock().unwrap().heartbeats.iter().any(|h| {
            h.scrub
                .as_ref()
                .is_some_and(|s| s.passes == 1 && !s.running)
        })
    })
    .await;
    {
        let rec = fake.0.lock().unwrap();
        let s = rec
            .heartbeats
            .iter()
            .filter_map(|h| h.scrub.as_ref())
            .find(|s| s.passes == 1)
            .unwrap();
        assert_eq!((s.chunks_verified, s.bytes_verified), (1, 10));
        assert!(s.last_full_pass_unix_ms > 0 && s.oldest_verified_unix_ms > 0);
    }

    tracing::info!("--- a cluster that forgot the server gets a new registration");
    fake.0.lock().unwrap().forget_next = true;
    wait_for("re-registration", || server.server_id() == 43).await;
    wait_for("heartbeat with the new id", || {
        fake.0
            .lock()
            .unwrap()
            .heartbeats
            .iter()
            .any(|h| h.server_id == 43)
    })
    .await;
    assert_eq!(fake.0.lock().unwrap().registrations.len(), 2);

    tracing::info!("--- after shutdown no heartbeat is sent");
    server.shutdown().await.unwrap();
    let n = fake.0.lock().unwrap().heartbeats.len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.0.lock().unwrap().heartbeats.len(), n);
    meta_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_copies_are_reported_to_the_metadata_cluster() {
    tracing::info!("--- a fake metadata service that is unavailable for the first reports");
    let fake = FakeMeta::default();
    fake.0.lock().unwrap().fail_reports = 2;
    let (meta_addr, meta_task) = serve_fake(&fake).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_tests(dir.path());
    cfg.meta = vec![meta_addr.to_string()];
    cfg.heartbeat = Duration::from_millis(50);
    let server = start(cfg).await.unwrap();
    wait_for("registration", || server.server_id() == 42).await;

    tracing::info!("--- a read of a rotten chunk fails and is reported (after retries)");
    let a = bytes::Bytes::from(vec![7u8; 200_000]);
    let a_id = ChunkId::of(&a);
    server.store().put(a_id, a.clone()).unwrap();
    flip_last_byte(&server.store().chunk_path(a_id));
    let e = server.store().get(a_id, 0, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    wait_for("first report", || {
        fake.0.lock().unwrap().bad_replicas.len() == 1
    })
    .await;
    {
        let rec = fake.0.lock().unwrap();
        let r = &rec.bad_replicas[0];
        assert_eq!(
            (r.server_id, r.chunk_id.as_slice()),
            (42, a_id.as_bytes().as_slice())
        );
        assert!(!r.reason.is_empty());
        assert_eq!(rec.fail_reports, 0, "the refused attempts were retried");
    }

    tracing::info!("--- the quarantined copy is gone: reading again reports nothing new");
    assert_eq!(
        server.store().get(a_id, 0, 0).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    tracing::info!("--- a put that finds a rotten existing copy rewrites it and reports it");
    let b = bytes::Bytes::from(vec![9u8; 100_000]);
    let b_id = ChunkId::of(&b);
    server.store().put(b_id, b.clone()).unwrap();
    flip_last_byte(&server.store().chunk_path(b_id));
    server.store().put(b_id, b.clone()).unwrap();
    assert_eq!(server.store().get(b_id, 0, 0).unwrap().0, b);
    wait_for("second report", || {
        fake.0.lock().unwrap().bad_replicas.len() == 2
    })
    .await;
    assert_eq!(
        fake.0.lock().unwrap().bad_replicas[1].chunk_id,
        b_id.as_bytes().to_vec()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fake.0.lock().unwrap().bad_replicas.len(),
        2,
        "one report per copy"
    );

    tracing::info!("--- shutdown stops the reporter too (it is awaited)");
    server.shutdown().await.unwrap();
    meta_task.abort();
}
