//! Cluster RPCs: chunk-server registration, heartbeats (which feed the leader's liveness table)
//! and bad-replica reports; the cluster's status and fsck; draining a chunk server.
use super::checks::{self, invalid, MAX_ADDR, MAX_REASON_LEN};
use super::convert;
use super::{Answer, Ctx};
use crate::command::{Command, RegisterChunkServer, Reply, SetDraining, SuspectReplica, Time};
use crate::error::MetaError;
use crate::fsm::ServerRecord;
use crate::placement::Load;
use cairn_common::error::ErrorKind;
use cairn_proto as pb;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tonic::{Request, Response};

/// How long ClusterStatus waits for each peer's NodeStatus.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a node waits for a log entry to be applied before answering its digest there.
const DIGEST_WAIT: Duration = Duration::from_secs(2);

impl Ctx {
    /// Resolves `server` (an id or an address) to a registered chunk server.
    fn find_server(&self, server: &str) -> Result<ServerRecord, MetaError> {
        let servers = self.node.fsm().servers()?;
        let placement = &self.leader.placement;
        let found = match server.trim().parse::<u64>() {
            Ok(id) => servers.into_iter().find(|s| s.id == id),
            Err(_) => {
                let addr = server.trim();
                servers
                    .into_iter()
                    .find(|s| s.addr == addr || placement.get(s.id).is_some_and(|h| h.addr == addr))
            }
        };
        found.ok_or_else(|| {
            MetaError::fs(
                ErrorKind::NotFound,
                format!("no chunk server {server:?} (give its id or address)"),
            )
        })
    }

    /// Member `id`'s NodeStatus (with its digest at `digest_at` when set), asked over gRPC
    /// unless it is this node; `None` when it does not answer within `timeout`.
    async fn member_status(
        &self,
        id: u64,
        addr: &str,
        digest_at: Option<u64>,
        timeout: Duration,
    ) -> Option<pb::NodeStatusReply> {
        if id == self.node.id {
            let digest_at = match digest_at {
                Some(i) => self.node.digest_at(i, DIGEST_WAIT).await,
                None => None,
            };
            return Some(pb::NodeStatusReply {
                node: Some(self.node.local_status()),
                digest_at: digest_at.map(|d| d.to_vec()).unwrap_or_default(),
                ..Default::default()
            });
        }
        let ask = async {
            let ch = cairn_common::channel::endpoint(addr)
                .ok()?
                .connect_timeout(timeout)
                .timeout(timeout)
                .connect()
                .await
                .ok()?;
            let mut c = pb::meta_service_client::MetaServiceClient::new(ch);
            let req = pb::NodeStatusRequest {
                digest_at: digest_at.unwrap_or(0),
            };
            c.node_status(req).await.ok().map(|r| r.into_inner())
        };
        let r = tokio::time::timeout(timeout, ask).await.ok().flatten();
        if r.is_none() {
            tracing::debug!(peer = id, %addr, "meta node did not answer NodeStatus");
        }
        r
    }

    async fn peer_status(&self, id: u64, addr: String) -> pb::MetaNodeStatus {
        match self
            .member_status(id, &addr, None, PEER_STATUS_TIMEOUT)
            .await
            .and_then(|r| r.node)
        {
            Some(mut s) => {
                s.id = id;
                s.addr = addr;
                s
            }
            None => pb::MetaNodeStatus {
                id,
                addr,
                role: "down".into(),
                ..Default::default()
            },
        }
    }

    /// Compares every meta node's digest of its applied state at the highest log index all
    /// of them have applied. Returns each node's digest and whether any two differ.
    async fn compare_digests(&self) -> (Vec<pb::MetaDigest>, bool) {
        let members = self.node.members();
        let statuses = futures::future::join_all(
            members
                .iter()
                .map(|(id, addr)| self.member_status(*id, addr, None, PEER_STATUS_TIMEOUT)),
        )
        .await;
        let index = statuses
            .iter()
            .flatten()
            .filter_map(|r| r.node.as_ref().map(|n| n.last_applied))
            .min()
            .unwrap_or(0);
        let digests = futures::future::join_all(members.iter().map(|(id, addr)| {
            self.member_status(*id, addr, Some(index), DIGEST_WAIT + PEER_STATUS_TIMEOUT)
        }))
        .await;
        let mut out = Vec::with_capacity(members.len());
        for ((id, addr), reply) in members.into_iter().zip(digests) {
            let (digest, note) = match reply {
                None => (Vec::new(), "did not answer".to_string()),
                Some(r) if r.digest_at.is_empty() => (
                    Vec::new(),
                    format!("does not remember its digest at index {index}"),
                ),
                Some(r) => (r.digest_at, String::new()),
            };
            out.push(pb::MetaDigest {
                id,
                addr,
                index,
                digest,
                note,
            });
        }
        let mut known = out
            .iter()
            .filter(|d| !d.digest.is_empty())
            .map(|d| &d.digest);
        let diverged = match known.next() {
            Some(first) => known.any(|d| d != first),
            None => false,
        };
        if diverged {
            tracing::error!(
                index,
                "meta nodes' applied states DIFFER at the same log index"
            );
        }
        (out, diverged)
    }
}

pub(super) async fn register_chunk_server(
    ctx: &Ctx,
    req: Request<pb::RegisterChunkServerRequest>,
) -> Answer<pb::RegisterChunkServerReply> {
    let r = req.into_inner();
    checks::chunk_server(&r.uuid, &r.addr)?;
    let cmd = Command::RegisterChunkServer(RegisterChunkServer {
        uuid: r.uuid.clone(),
        addr: r.addr.clone(),
    });
    match ctx.node.write(cmd).await? {
        Reply::ServerId(server_id) => {
            tracing::info!(server = server_id, uuid = %r.uuid, addr = %r.addr, "chunk server registered");
            Ok(Response::new(pb::RegisterChunkServerReply { server_id }))
        }
        other => Err(checks::unexpected(other)),
    }
}

pub(super) async fn heartbeat(
    ctx: &Ctx,
    req: Request<pb::HeartbeatRequest>,
) -> Answer<pb::HeartbeatReply> {
    let r = req.into_inner();
    if r.server_id == 0 {
        return Err(invalid("server id 0: register first"));
    }
    if r.addr.len() > MAX_ADDR || r.metrics_addr.len() > MAX_ADDR {
        return Err(invalid(format!("address longer than {MAX_ADDR} bytes")));
    }
    ctx.require_leader()?;
    let Some(rec) = ctx.node.fsm().server(r.server_id)? else {
        return Err(MetaError::fs(
            ErrorKind::NotFound,
            format!("chunk server {} is not registered", r.server_id),
        )
        .into());
    };
    let addr = if r.addr.is_empty() { rec.addr } else { r.addr };
    let load = Load {
        capacity_bytes: r.capacity_bytes,
        used_bytes: r.used_bytes,
        free_bytes: r.free_bytes,
        chunk_count: r.chunk_count,
    };
    let placement = &ctx.leader.placement;
    if !placement.is_up(r.server_id, Instant::now()) {
        tracing::info!(server = r.server_id, %addr, "chunk server is up");
    }
    placement.heartbeat(r.server_id, &addr, load, Instant::now());
    if let Some(scrub) = r.scrub {
        ctx.leader.note_scrub(r.server_id, scrub);
    }
    ctx.leader.note_metrics_addr(r.server_id, r.metrics_addr);
    Ok(Response::new(pb::HeartbeatReply {}))
}

pub(super) async fn report_bad_replica(
    ctx: &Ctx,
    req: Request<pb::ReportBadReplicaRequest>,
) -> Answer<pb::ReportBadReplicaReply> {
    let r = req.into_inner();
    let id = convert::chunk_id(&r.chunk_id)?;
    if r.server_id == 0 {
        return Err(invalid("server id 0 is not a chunk server"));
    }
    if r.reason.len() > MAX_REASON_LEN {
        return Err(invalid(format!(
            "reason is {} bytes, at most {MAX_REASON_LEN}",
            r.reason.len()
        )));
    }
    // The registration check reads local state, which only the leader knows is current.
    ctx.require_leader()?;
    if ctx.node.fsm().server(r.server_id)?.is_none() {
        return Err(invalid(format!(
            "chunk server {} is not registered",
            r.server_id
        )));
    }
    tracing::warn!(server = r.server_id, chunk = %id, reason = %r.reason, "bad replica reported");
    // A report alone only makes the copy suspect; its server's verification decides.
    let cmd = Command::SuspectReplica(SuspectReplica {
        id,
        server: r.server_id,
        now: Time::now(),
    });
    ctx.write_empty(cmd).await?;
    Ok(Response::new(pb::ReportBadReplicaReply {}))
}

pub(super) async fn cluster_status(
    ctx: &Ctx,
    _req: Request<pb::ClusterStatusRequest>,
) -> Answer<pb::ClusterStatusReply> {
    ctx.require_leader()?;
    let asks = ctx
        .node
        .members()
        .into_iter()
        .map(|(id, addr)| ctx.peer_status(id, addr));
    let meta = futures::future::join_all(asks).await;

    let now = Instant::now();
    let scan = ctx.leader.repair.last_scan();
    let scrub = ctx.leader.scrub_figures();
    let chunk_servers = ctx
        .node
        .fsm()
        .servers()?
        .into_iter()
        .map(|rec| match ctx.leader.placement.get(rec.id) {
            Some(s) => pb::ChunkServerStatus {
                scrub: scrub.get(&rec.id).cloned(),
                draining: rec.draining,
                listed_replicas: scan.listed.get(&rec.id).copied().unwrap_or(0),
                id: rec.id,
                addr: s.addr.clone(),
                state: if ctx.leader.placement.is_up(rec.id, now) {
                    "up"
                } else {
                    "down"
                }
                .into(),
                capacity_bytes: s.load.capacity_bytes,
                used_bytes: s.load.used_bytes,
                free_bytes: s.load.free_bytes,
                chunk_count: s.load.chunk_count,
                last_heartbeat_ms_ago: now
                    .saturating_duration_since(s.last_seen)
                    .as_millis()
                    .max(1) as u64,
                metrics_addr: ctx.leader.metrics_addr(rec.id),
            },
            None => pb::ChunkServerStatus {
                id: rec.id,
                addr: rec.addr,
                state: "down".into(),
                draining: rec.draining,
                listed_replicas: scan.listed.get(&rec.id).copied().unwrap_or(0),
                ..Default::default()
            },
        })
        .collect();
    Ok(Response::new(pb::ClusterStatusReply {
        meta,
        chunk_servers,
        leader_id: ctx.node.id,
        replication: ctx.cfg.replication,
        commit_quorum: ctx.cfg.commit_quorum() as u32,
        repair: Some(pb::RepairStatus {
            gc_pending: ctx.node.fsm().gc_pending()?,
            gc_collected: ctx.leader.gc.collected_total(),
            ..ctx.leader.repair.to_proto()
        }),
    }))
}

pub(super) async fn fsck(ctx: &Ctx, req: Request<pb::FsckRequest>) -> Answer<pb::FsckReply> {
    let r = req.into_inner();
    let max_files = (r.max_files as usize).min(crate::fsck::MAX_FSCK_FILES);
    // Liveness is the leader's; the read index makes the namespace current.
    ctx.node.linearizable_read().await?;
    let now = Instant::now();
    if ctx.leader.warming_up(now)? {
        // Right after an election every server still looks down: do not report false loss.
        return Err(MetaError::fs(
            ErrorKind::Unavailable,
            "new leader: still learning which chunk servers are up; retry",
        )
        .into());
    }
    // The liveness of every server as of now, so the scan needs nothing of the runtime's.
    let up: HashSet<u64> = ctx
        .leader
        .placement
        .up_servers(now)
        .iter()
        .map(|s| s.id)
        .collect();
    let replication = ctx.cfg.replication as usize;
    let mut report = ctx
        .scan(move |fsm| crate::fsck::fsck(fsm, replication, |id| up.contains(&id), max_files))
        .await?;
    let (digests, diverged) = ctx.compare_digests().await;
    report.meta_digests = digests;
    report.meta_diverged = diverged;
    Ok(Response::new(report))
}

pub(super) async fn drain(ctx: &Ctx, req: Request<pb::DrainRequest>) -> Answer<pb::DrainReply> {
    let r = req.into_inner();
    if r.server.is_empty() || r.server.len() > MAX_ADDR {
        return Err(invalid("give a chunk server id or address"));
    }
    ctx.require_leader()?;
    let rec = ctx.find_server(&r.server)?;
    let cmd = Command::SetDraining(SetDraining {
        server: rec.id,
        draining: r.drain,
    });
    ctx.write_empty(cmd).await?;
    tracing::info!(
        server = rec.id,
        drain = r.drain,
        "chunk server drain changed"
    );
    ctx.leader.kick_repair();
    let listed = ctx
        .leader
        .repair
        .last_scan()
        .listed
        .get(&rec.id)
        .copied()
        .unwrap_or(0);
    Ok(Response::new(pb::DrainReply {
        server_id: rec.id,
        listed_replicas: listed,
    }))
}

pub(super) async fn node_status(
    ctx: &Ctx,
    req: Request<pb::NodeStatusRequest>,
) -> Answer<pb::NodeStatusReply> {
    let digest_at = match req.into_inner().digest_at {
        0 => None,
        i => ctx.node.digest_at(i, DIGEST_WAIT).await,
    };
    let (leader_id, leader_addr) = ctx.node.leader().unwrap_or_default();
    Ok(Response::new(pb::NodeStatusReply {
        node: Some(ctx.node.local_status()),
        leader_id,
        leader_addr,
        digest_at: digest_at.map(|d| d.to_vec()).unwrap_or_default(),
    }))
}
