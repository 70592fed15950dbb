//! The whole meta service against a real one-node cluster: namespace calls, chunk-server
//! registration and heartbeats, placement, commit quorum, chunk locations, bad-replica reports,
//! status, and exactly-once retries.
mod support;

use cairn_common::error::ErrorKind;
use cairn_common::{ChunkId, CHUNK_SIZE};
use cairn_meta_server::service::{MAX_REASON_LEN, MAX_SLOT_PAGE, MAX_SLOT_UPDATES};
use cairn_proto as pb;
use support::start_node;
use tonic::{Request, Status};

/// A one-node cluster on 127.0.0.1:0 in a temp dir (kept until dropped), a client of it, and
/// its address.
async fn one_node() -> (
    tempfile::TempDir,
    cairn_meta_server::RunningNode,
    cairn_common::MetaClient,
    String,
) {
    let dir = tempfile::tempdir().unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let node = start_node(dir.path(), l).await;
    let meta = cairn_common::MetaClient::new(vec![addr.clone()]);
    (dir, node, meta, addr)
}

/// The whole service against a real one-node cluster: namespace calls, chunk-server
/// registration and heartbeats, placement, commit quorum, chunk locations, status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_cluster_end_to_end() {
    let (_dir, node, meta, addr) = one_node().await;
    let kind_of = |s: Status| ErrorKind::from_status(&s);

    tracing::info!("--- namespace");
    let d = meta
        .call(|mut c| async move {
            c.create(pb::CreateRequest {
                parent: 1,
                name: b"d".to_vec(),
                kind: pb::FileKind::Directory as i32,
                mode: 0o40755,
                exclusive: true,
                ..Default::default()
            })
            .await
        })
        .await
        .unwrap()
        .attr
        .unwrap();
    assert_eq!(d.kind, pb::FileKind::Directory as i32);
    assert_eq!(d.mode, 0o755);
    let f = meta
        .call(|mut c| async move {
            c.create(pb::CreateRequest {
                parent: d.ino,
                name: b"f".to_vec(),
                kind: pb::FileKind::Regular as i32,
                mode: 0o644,
                exclusive: true,
                ..Default::default()
            })
            .await
        })
        .await
        .unwrap()
        .attr
        .unwrap();
    let mut c = meta.node(&addr).unwrap();
    let got = c
        .lookup(pb::LookupRequest {
            parent: d.ino,
            name: b"f".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.attr.unwrap().ino, f.ino);
    let page = c
        .read_dir(pb::ReadDirRequest {
            ino: d.ino,
            after: vec![],
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.entries.len(), 1);
    assert!(page.eof);
    assert_eq!(page.parent, 1);
    assert_eq!(page.dir.unwrap().ino, d.ino);

    tracing::info!("--- bad input is refused");
    let e = c
        .create(pb::CreateRequest {
            parent: 1,
            name: b"a/b".to_vec(),
            kind: pb::FileKind::Regular as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(kind_of(e), ErrorKind::InvalidArgument);
    let e = c
        .create(pb::CreateRequest {
            parent: 1,
            name: b"x".to_vec(),
            kind: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(kind_of(e), ErrorKind::InvalidArgument);
    let e = c.get_attr(pb::GetAttrRequest { ino: 0 }).await.unwrap_err();
    assert_eq!(kind_of(e), ErrorKind::InvalidArgument);
    let e = c
        .lookup(pb::LookupRequest {
            parent: 1,
            name: b"nope".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(kind_of(e), ErrorKind::NotFound);
    let e = c
        .readlink(pb::ReadlinkRequest { ino: f.ino })
        .await
        .unwrap_err();
    assert_eq!(kind_of(e), ErrorKind::InvalidArgument);

    tracing::info!("--- no chunk servers: writes are unavailable");
    let data = b"hello world".to_vec();
    let cref = pb::ChunkRef {
        id: ChunkId::of(&data).as_bytes().to_vec(),
        len: data.len() as u32,
        stored_len: data.len() as u32,
    };
    let e = c
        .prepare_write(pb::PrepareWriteRequest {
            chunks: vec![cref.clone()],
            exclude_servers: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(kind_of(e), ErrorKind::Unavailable);

    tracing::info!("--- register three chunk servers and heartbeat");
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = c
            .register_chunk_server(pb::RegisterChunkServerRequest {
                uuid: format!("uuid-{i}"),
                addr: format!("127.0.0.1:{}", 9100 + i),
            })
            .await
            .unwrap()
            .into_inner()
            .server_id;
        c.heartbeat(pb::HeartbeatRequest {
            server_id: id,
            addr: format!("127.0.0.1:{}", 9100 + i),
            capacity_bytes: 30 << 30,
            used_bytes: 20 << 30,
            free_bytes: 10 << 30,
            chunk_count: 0,
            scrub: None,
            metrics_addr: String::new(),
        })
        .await
        .unwrap();
        ids.push(id);
    }
    assert_eq!(ids, vec![1, 2, 3]);
    let again = c
        .register_chunk_server(pb::RegisterChunkServerRequest {
            uuid: "uuid-1".into(),
            addr: "127.0.0.1:9101".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.server_id, 2);
    let e = c
        .heartbeat(pb::HeartbeatRequest {
            server_id: 77,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(kind_of(e), ErrorKind::NotFound);

    tracing::info!("--- prepare, commit, locate");
    let p = c
        .prepare_write(pb::PrepareWriteRequest {
            chunks: vec![cref.clone()],
            exclude_servers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.replication, p.min_replication), (3, 2));
    assert!(p.placements[0].existing.is_empty());
    let mut targets: Vec<u64> = p.placements[0]
        .targets
        .iter()
        .map(|t| t.server_id)
        .collect();
    targets.sort();
    assert_eq!(targets, vec![1, 2, 3]);

    let commit = |replicas: Vec<u64>, base_version: u64| pb::CommitWriteRequest {
        ino: f.ino,
        base_version,
        size: data.len() as u64,
        updates: vec![pb::SlotUpdate {
            index: 0,
            chunk: Some(cref.clone()),
            replicas,
            ticket: 0,
        }],
        mtime: None,
        then_set_attr: None,
        upload: 0,
        ..Default::default()
    };
    let e = c.commit_write(commit(vec![1], 1)).await.unwrap_err();
    assert_eq!(
        kind_of(e),
        ErrorKind::InvalidArgument,
        "below min_replication"
    );
    let e = c.commit_write(commit(vec![1, 9], 1)).await.unwrap_err();
    assert_eq!(kind_of(e), ErrorKind::InvalidArgument, "unknown server");
    let a = c
        .commit_write(commit(vec![1, 2], 1))
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!((a.version, a.size, a.stored_bytes), (2, 11, 11));
    let e = c.commit_write(commit(vec![1, 2], 1)).await.unwrap_err();
    assert_eq!(kind_of(e), ErrorKind::Conflict);

    tracing::info!("--- an attribute change travels in the same entry as a commit");
    let with_attrs = |then: pb::SetAttrRequest| pb::CommitWriteRequest {
        then_set_attr: Some(then),
        ..commit(vec![1, 2], 2)
    };
    let chmod = pb::SetAttrRequest {
        ino: f.ino,
        mode: Some(0o600),
        mtime: Some(pb::Timestamp {
            secs: 1_000_000,
            nanos: 5,
        }),
        ..Default::default()
    };
    for (bad, why) in [
        (
            pb::SetAttrRequest {
                ino: d.ino,
                ..chmod
            },
            "another inode",
        ),
        (
            pb::SetAttrRequest {
                size: Some(0),
                ..chmod
            },
            "a size",
        ),
    ] {
        let e = c.commit_write(with_attrs(bad)).await.unwrap_err();
        assert_eq!(kind_of(e), ErrorKind::InvalidArgument, "{why}");
    }
    let a = c
        .commit_write(with_attrs(chmod))
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!(
        (a.version, a.mode, a.mtime.map(|t| t.secs)),
        (3, 0o600, Some(1_000_000)),
        "one entry: new version and the new attributes"
    );

    let gc = c
        .get_chunks(pb::GetChunksRequest {
            ino: f.ino,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gc.chunk_size as usize, CHUNK_SIZE);
    assert_eq!(gc.slots.len(), 1);
    let locs: Vec<(u64, String)> = gc.slots[0]
        .locations
        .iter()
        .map(|l| (l.server_id, l.addr.clone()))
        .collect();
    assert_eq!(
        locs,
        vec![
            (1, "127.0.0.1:9100".to_string()),
            (2, "127.0.0.1:9101".to_string())
        ]
    );

    // The chunk is known now: only the missing replica is a target.
    let p = c
        .prepare_write(pb::PrepareWriteRequest {
            chunks: vec![cref.clone()],
            exclude_servers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.placements[0].existing.len(), 2);
    let t: Vec<u64> = p.placements[0]
        .targets
        .iter()
        .map(|t| t.server_id)
        .collect();
    assert_eq!(t, vec![3]);

    tracing::info!(
        "--- more slots than one request carries: recorded in batches, applied by one commit"
    );
    const BIG: u64 = 5000;
    let big = c
        .create(pb::CreateRequest {
            parent: 1,
            name: b"big".to_vec(),
            kind: pb::FileKind::Regular as i32,
            mode: 0o644,
            exclusive: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    let small = b"one slot".to_vec();
    let small_ref = pb::ChunkRef {
        id: ChunkId::of(&small).as_bytes().to_vec(),
        len: small.len() as u32,
        stored_len: small.len() as u32,
    };
    let slot = |index: u64| pb::SlotUpdate {
        index,
        chunk: Some(small_ref.clone()),
        replicas: vec![1, 2],
        ticket: 0,
    };
    let all: Vec<pb::SlotUpdate> = (0..BIG).map(slot).collect();
    let size = (BIG - 1) * CHUNK_SIZE as u64 + small.len() as u64;
    let e = c
        .commit_write(pb::CommitWriteRequest {
            ino: big.ino,
            base_version: big.version,
            size,
            updates: all.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        kind_of(e),
        ErrorKind::InvalidArgument,
        "one request is bounded"
    );
    let upload = c
        .open_upload(pb::OpenUploadRequest {
            ino: big.ino,
            base_version: big.version,
            label: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .upload;
    for batch in all.chunks(MAX_SLOT_UPDATES) {
        c.record_upload(pb::RecordUploadRequest {
            upload,
            updates: batch.to_vec(),
        })
        .await
        .unwrap();
    }
    let a = c
        .commit_write(pb::CommitWriteRequest {
            ino: big.ino,
            base_version: big.version,
            size,
            upload,
            apply_upload: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!(
        (a.version, a.size, a.stored_bytes),
        (big.version + 1, size, BIG * small.len() as u64)
    );

    tracing::info!("--- GetChunks pages the slot list, every page of one version");
    let (mut first, mut seen, mut pages) = (0, 0, 0);
    loop {
        let r = c
            .get_chunks(pb::GetChunksRequest {
                ino: big.ino,
                first_slot: first,
                max_slots: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.attr.map(|a| a.version), Some(a.version));
        assert!(r.slots.len() <= MAX_SLOT_PAGE);
        assert!(r
            .slots
            .iter()
            .all(|s| s.index >= first && s.index < r.next_slot));
        seen += r.slots.len() as u64;
        pages += 1;
        if !r.more {
            assert_eq!(r.next_slot, BIG, "the end of the file");
            break;
        }
        first = r.next_slot;
    }
    assert_eq!((seen, pages), (BIG, BIG.div_ceil(MAX_SLOT_PAGE as u64)));
    let r = c
        .get_chunks(pb::GetChunksRequest {
            ino: big.ino,
            first_slot: 10,
            max_slots: 3,
        })
        .await
        .unwrap()
        .into_inner();
    let idx: Vec<u64> = r.slots.iter().map(|s| s.index).collect();
    assert_eq!((idx, r.more, r.next_slot), (vec![10, 11, 12], true, 13));
    c.unlink(pb::UnlinkRequest {
        parent: 1,
        name: b"big".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();

    tracing::info!("--- a reported replica stays listed, suspect, and is offered last");
    let report = |server_id: u64, chunk_id: Vec<u8>, reason: String| pb::ReportBadReplicaRequest {
        server_id,
        chunk_id,
        reason,
    };
    for (bad, why) in [
        (report(1, vec![0; 31], "x".into()), "short chunk id"),
        (report(0, cref.id.clone(), "x".into()), "server 0"),
        (
            report(77, cref.id.clone(), "x".into()),
            "unregistered server",
        ),
        (
            report(1, cref.id.clone(), "x".repeat(MAX_REASON_LEN + 1)),
            "oversized reason",
        ),
    ] {
        let e = c.report_bad_replica(bad).await.unwrap_err();
        assert_eq!(kind_of(e), ErrorKind::InvalidArgument, "{why}");
    }
    let e = c
        .report_bad_replica(report(
            1,
            ChunkId::of(b"never stored").as_bytes().to_vec(),
            "x".into(),
        ))
        .await
        .unwrap_err();
    assert_eq!(kind_of(e), ErrorKind::NotFound);
    assert_eq!(
        node.node
            .fsm()
            .chunk(&ChunkId::of(&data))
            .unwrap()
            .unwrap()
            .replicas,
        vec![1, 2]
    );
    for _ in 0..2 {
        c.report_bad_replica(report(1, cref.id.clone(), "block hash mismatch".into()))
            .await
            .unwrap();
    }
    let gc = c
        .get_chunks(pb::GetChunksRequest {
            ino: f.ino,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let locs: Vec<u64> = gc.slots[0].locations.iter().map(|l| l.server_id).collect();
    assert_eq!(locs, vec![2, 1]);
    let rec = node.node.fsm().chunk(&ChunkId::of(&data)).unwrap().unwrap();
    assert_eq!(
        (rec.replicas, rec.suspect, rec.refs),
        (vec![1, 2], vec![1], 1)
    );
    let p = c
        .prepare_write(pb::PrepareWriteRequest {
            chunks: vec![cref.clone()],
            exclude_servers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.placements[0].existing.len(), 1);
    assert_eq!(p.placements[0].targets.len(), 2);

    tracing::info!("--- statfs and status");
    let st = c.stat_fs(pb::StatFsRequest {}).await.unwrap().into_inner();
    assert_eq!(st.total_bytes, 30 << 30);
    assert_eq!(st.free_bytes, 10 << 30);
    assert_eq!(st.files, 3);
    let cs = c
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cs.leader_id, 1);
    assert_eq!(cs.meta.len(), 1);
    assert_eq!(cs.meta[0].role, "leader");
    assert_eq!(cs.chunk_servers.len(), 3);
    assert!(cs.chunk_servers.iter().all(|s| s.state == "up"));
    let ns = c
        .node_status(pb::NodeStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ns.leader_id, ns.leader_addr.as_str()), (1, addr.as_str()));

    tracing::info!("--- truncate, rename, unlink, rmdir");
    let a = c
        .set_attr(pb::SetAttrRequest {
            ino: f.ino,
            size: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!((a.size, a.version, a.stored_bytes), (0, 4, 0));
    c.rename(pb::RenameRequest {
        parent: d.ino,
        name: b"f".to_vec(),
        new_parent: 1,
        new_name: b"g".to_vec(),
        flags: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    c.rmdir(pb::RmdirRequest {
        parent: 1,
        name: b"d".to_vec(),
    })
    .await
    .unwrap();
    c.unlink(pb::UnlinkRequest {
        parent: 1,
        name: b"g".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let st = c.stat_fs(pb::StatFsRequest {}).await.unwrap().into_inner();
    assert_eq!(st.files, 1);

    tracing::info!("--- a retried mutation (same request id) is applied once");
    let with_id = |id: &str, name: &[u8]| {
        let mut r = Request::new(pb::CreateRequest {
            parent: 1,
            name: name.to_vec(),
            kind: pb::FileKind::Regular as i32,
            mode: 0o100644,
            exclusive: true,
            ..Default::default()
        });
        r.metadata_mut().insert(
            cairn_common::meta_client::REQUEST_ID_KEY,
            id.parse().unwrap(),
        );
        r
    };
    let id1 = cairn_common::meta_client::format_request_id((77, 1));
    let first = c.create(with_id(&id1, b"once")).await.unwrap().into_inner();
    let again = c.create(with_id(&id1, b"once")).await.unwrap().into_inner();
    assert_eq!(
        first.attr.as_ref().map(|a| a.ino),
        again.attr.as_ref().map(|a| a.ino),
        "the retry gets the first reply, not EEXIST"
    );
    let id2 = cairn_common::meta_client::format_request_id((77, 2));
    let e = c.create(with_id(&id2, b"once")).await.unwrap_err();
    assert_eq!(
        kind_of(e),
        ErrorKind::AlreadyExists,
        "a new call is a new create"
    );
    let e = c.create(with_id("not-hex", b"other")).await.unwrap_err();
    assert_eq!(kind_of(e), ErrorKind::InvalidArgument);
    let st = c.stat_fs(pb::StatFsRequest {}).await.unwrap().into_inner();
    assert_eq!(st.files, 2);

    drop(c);
    drop(meta);
    node.shutdown().await.unwrap();
}

/// ListUploads answers in pages of bounded size, in id order, and resolves paths per page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_listed_in_pages() {
    use cairn_meta_server::service::MAX_LIST_UPLOADS;

    let (_dir, node, meta, _) = one_node().await;

    tracing::info!("--- a directory, a file in it, and more uploads than one page holds");
    let create = |parent: u64, name: &'static [u8], kind: pb::FileKind| {
        let meta = meta.clone();
        async move {
            meta.call(|mut c| async move {
                c.create(pb::CreateRequest {
                    parent,
                    name: name.to_vec(),
                    kind: kind as i32,
                    mode: 0o755,
                    exclusive: true,
                    ..Default::default()
                })
                .await
            })
            .await
            .unwrap()
            .attr
            .unwrap()
            .ino
        }
    };
    let d = create(1, b"d", pb::FileKind::Directory).await;
    let f = create(d, b"f", pb::FileKind::Regular).await;
    let total = MAX_LIST_UPLOADS + 10;
    for i in 0..total {
        let req = if i.is_multiple_of(2) {
            pb::OpenUploadRequest {
                ino: f,
                label: format!("u{i}"),
                ..Default::default()
            }
        } else {
            pb::OpenUploadRequest {
                parent: d,
                name: format!("n{i}").into_bytes(),
                label: format!("u{i}"),
                ..Default::default()
            }
        };
        meta.call(|mut c| {
            let req = req.clone();
            async move { c.open_upload(req).await }
        })
        .await
        .unwrap();
    }

    tracing::info!("--- two pages: a full one, then the rest, with paths");
    let page = |after: u64| {
        let meta = meta.clone();
        async move {
            meta.call(|mut c| async move {
                c.list_uploads(pb::ListUploadsRequest {
                    with_paths: true,
                    after,
                    limit: 100_000,
                })
                .await
            })
            .await
            .unwrap()
        }
    };
    let first = page(0).await;
    assert_eq!(
        first.uploads.len(),
        MAX_LIST_UPLOADS,
        "the page size is the server's"
    );
    assert!(!first.done);
    let last = first.uploads.last().unwrap().upload;
    let second = page(last).await;
    assert_eq!(second.uploads.len(), 10);
    assert!(second.done);
    let ids: Vec<u64> = first
        .uploads
        .iter()
        .chain(&second.uploads)
        .map(|u| u.upload)
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "id order, no repeats");
    for u in first.uploads.iter().chain(&second.uploads) {
        let i: usize = u.label[1..].parse().unwrap();
        let want = if i.is_multiple_of(2) {
            "/d/f".to_string()
        } else {
            format!("/d/n{i}")
        };
        assert_eq!(u.path, want, "upload {}", u.upload);
    }
    assert!(page(u64::MAX).await.uploads.is_empty());

    node.shutdown().await.unwrap();
}

/// A forged Raft request naming a term (or log index) near `u64::MAX` is refused at the door:
/// openraft would persist the term as its vote and overflow on its next `term + 1`, and the node
/// would never elect a leader again. The node keeps its term, keeps leading and keeps writing,
/// and still does after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_raft_request_with_an_impossible_term_changes_nothing() {
    use cairn_meta_server::raft::codec;
    use cairn_meta_server::raft::service::MAX_PLAUSIBLE;
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use openraft::{LogId, Vote};
    let (dir, node, meta, addr) = one_node().await;
    // The leader's view (the client waits for one and follows it).
    let status = |addr: String| async move {
        let cs = cairn_common::MetaClient::new(vec![addr])
            .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
            .await
            .unwrap();
        (cs.leader_id, cs.meta[0].term)
    };
    let (leader, term) = status(addr.clone()).await;
    assert_eq!(leader, 1);

    let mut raft = pb::raft_service_client::RaftServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let payload = |data: Vec<u8>| pb::RaftPayload { data: data.into() };
    for bad_term in [u64::MAX, u64::MAX - 1, MAX_PLAUSIBLE + 1] {
        let append = AppendEntriesRequest::<cairn_meta_server::raft::TypeConfig> {
            vote: Vote::new_committed(bad_term, 2),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        let e = raft
            .append_entries(payload(codec::encode(&append).unwrap()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains("term"), "{e}");
        let vote = VoteRequest::new(Vote::new(bad_term, 2), None);
        let e = raft
            .vote(payload(codec::encode(&vote).unwrap()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    }
    let far_index = VoteRequest::new(
        Vote::new(term + 1, 2),
        Some(LogId::new(
            openraft::CommittedLeaderId::new(term, 2),
            u64::MAX,
        )),
    );
    let e = raft
        .vote(payload(codec::encode(&far_index).unwrap()))
        .await
        .unwrap_err();
    assert!(e.message().contains("log index"), "{e}");
    assert_eq!(
        status(addr.clone()).await,
        (1, term),
        "same leader, same term"
    );
    meta.call(|mut c| async move {
        c.create(pb::CreateRequest {
            parent: 1,
            name: b"after-forgery".to_vec(),
            kind: pb::FileKind::Regular as i32,
            mode: 0o644,
            exclusive: true,
            ..Default::default()
        })
        .await
    })
    .await
    .expect("the node still writes");
    node.shutdown().await.unwrap();

    // The vote on disk was never touched: a restart elects this node again.
    let l = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let node = start_node(dir.path(), l).await;
    let (leader, t) = status(addr.clone()).await;
    assert_eq!(leader, 1);
    assert!(t >= term && t < MAX_PLAUSIBLE, "term {t} after {term}");
    node.shutdown().await.unwrap();
}
