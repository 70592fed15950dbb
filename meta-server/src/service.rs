//! The client-facing `MetaService`: validates each request, then either proposes a [`Command`]
//! through Raft (mutations) or reads the local state machine after a linearizable read barrier
//! (reads). Chunk-server heartbeats feed the in-memory [`Placement`] table of the leader.
//!
//! Every request is checked before anything happens: a malformed one (bad name, inode 0, chunk
//! id not 32 bytes, lengths out of range, oversized lists) gets `InvalidArgument` and changes
//! nothing. Every error leaves through the one `From<MetaError> for Status` mapping, so a
//! follower answers `NotLeader` with the leader's address and clients follow it.
use crate::command::{
    Command, Keep, Kind, LockRange, LockType, Reply, SlotChunk, SlotUpdate, Time, UploadTarget,
};
use crate::command::{RENAME_EXCHANGE, RENAME_NOREPLACE};
use crate::error::MetaError;
use crate::fsm::{Inode, SYMLINK_MAX};
use crate::node::MetaNode;
use crate::placement::{Load, Placement};
use crate::repair::RepairStats;
use cairn_common::error::ErrorKind;
use cairn_common::{ChunkId, CHUNK_SIZE};
use cairn_proto as pb;
use cairn_proto::meta_service_server::MetaService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

/// Most entries one ReadDir returns.
pub const MAX_READDIR: usize = 1000;
/// Most chunks one PrepareWrite may ask about.
pub const MAX_PREPARE_CHUNKS: usize = 1024;
/// Most slot updates one CommitWrite may carry.
pub const MAX_SLOT_UPDATES: usize = 4096;
/// Longest `reason` a ReportBadReplica may carry.
pub const MAX_REASON_LEN: usize = 1024;
/// Largest file size accepted (1 PiB).
pub const MAX_FILE_SIZE: u64 = 1 << 50;
/// How long a new leader waits to hear from every chunk server (they heartbeat every second)
/// before it places chunks on fewer servers than the replication factor.
const WARM_UP: Duration = Duration::from_millis(2500);
/// How long ClusterStatus waits for each peer's NodeStatus.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// Settings of the client-facing service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Replicas per chunk (default 3).
    pub replication: u32,
    /// Fewest acknowledged replicas a write may commit with when servers are down (default 2).
    pub min_replication: u32,
    /// A chunk server with no heartbeat for this long is down (default 5 s).
    pub heartbeat_timeout: Duration,
    /// A mount session not renewed for this long ends (default 60 s).
    pub session_ttl: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            replication: 3,
            min_replication: 2,
            heartbeat_timeout: Duration::from_secs(5),
            session_ttl: Duration::from_secs(60),
        }
    }
}

impl ServiceConfig {
    /// The replica count a commit needs: `min_replication`, but never more than `replication`
    /// and never less than 1.
    pub fn commit_quorum(&self) -> usize {
        self.min_replication.min(self.replication).max(1) as usize
    }
}

pub struct MetaServiceImpl {
    node: Arc<MetaNode>,
    cfg: ServiceConfig,
    placement: Arc<Placement>,
    repair_stats: Arc<RepairStats>,
    repair_kick: Arc<Notify>,
    gc_stats: Arc<crate::gc::GcStats>,
    /// The scrub figures of each server's last heartbeat (leader only, like `placement`).
    scrub: std::sync::Mutex<HashMap<u64, pb::ScrubStats>>,
}

impl MetaServiceImpl {
    pub fn new(node: Arc<MetaNode>, cfg: ServiceConfig) -> MetaServiceImpl {
        let placement = Arc::new(Placement::new(cfg.heartbeat_timeout));
        MetaServiceImpl {
            node,
            cfg,
            placement,
            repair_stats: Arc::default(),
            repair_kick: Arc::default(),
            gc_stats: Arc::default(),
            scrub: Default::default(),
        }
    }

    /// The figures the repair worker publishes (shown by ClusterStatus and Fsck).
    pub fn repair_stats(&self) -> Arc<RepairStats> {
        self.repair_stats.clone()
    }

    /// The garbage collector's figures.
    pub fn gc_stats(&self) -> Arc<crate::gc::GcStats> {
        self.gc_stats.clone()
    }

    /// Wakes the repair worker for an immediate scan.
    pub fn repair_kick(&self) -> Arc<Notify> {
        self.repair_kick.clone()
    }

    /// Resolves `server` (an id or an address) to a registered chunk server.
    fn find_server(&self, server: &str) -> Result<crate::fsm::ServerRecord, MetaError> {
        let servers = self.node.fsm().servers()?;
        let found = match server.trim().parse::<u64>() {
            Ok(id) => servers.into_iter().find(|s| s.id == id),
            Err(_) => {
                let addr = server.trim();
                servers.into_iter().find(|s| {
                    s.addr == addr || self.placement.get(s.id).is_some_and(|h| h.addr == addr)
                })
            }
        };
        found.ok_or_else(|| {
            MetaError::fs(
                ErrorKind::NotFound,
                format!("no chunk server {server:?} (give its id or address)"),
            )
        })
    }

    /// The chunk-server table fed by heartbeats (leader only).
    pub fn placement(&self) -> Arc<Placement> {
        self.placement.clone()
    }

    /// True while this leader may not yet have heard from every chunk server: the liveness
    /// table lives in the leader's memory, so after an election every server looks down until
    /// its next heartbeat (1 s) reaches the new leader. During that window a placement on too
    /// few servers for a commit would fail the write, so callers are told to retry instead.
    fn warming_up(&self, now: Instant) -> Result<bool, MetaError> {
        let Some(since) = self.node.leader_since() else {
            return Ok(false);
        };
        // Live servers heartbeat every second: after WARM_UP every one of them has been heard.
        if now.saturating_duration_since(since) >= WARM_UP.min(self.cfg.heartbeat_timeout) {
            return Ok(false);
        }
        let registered = self.node.fsm().servers()?.len();
        Ok(self.placement.up_servers(now).len() < registered)
    }

    fn not_leader(&self) -> MetaError {
        MetaError::NotLeader {
            leader: self.node.leader().map(|(_, addr)| addr),
        }
    }

    async fn write_attr(&self, cmd: Command) -> Result<Response<pb::AttrReply>, Status> {
        match self.node.write(cmd).await? {
            Reply::Attr(i) => Ok(attr_reply(&i)),
            other => Err(unexpected(other)),
        }
    }

    /// Checks the slot updates of a commit (`size`: the new file size) or of an upload record
    /// (`None`: chunks only): well-formed chunk references, known servers, and enough durable
    /// replicas for each chunk.
    fn check_updates(
        &self,
        raw: &[pb::SlotUpdate],
        size: Option<u64>,
    ) -> Result<Vec<SlotUpdate>, Status> {
        let fsm = self.node.fsm();
        let quorum = self.cfg.commit_quorum();
        let mut updates = Vec::with_capacity(raw.len());
        for u in raw {
            let mut replicas = u.replicas.clone();
            replicas.sort_unstable();
            replicas.dedup();
            let chunk = match &u.chunk {
                None => None,
                Some(c) => {
                    let c = check_chunk_ref(c)?;
                    let limit = size.unwrap_or(u64::MAX);
                    if u.index.saturating_mul(CHUNK_SIZE as u64) >= limit {
                        return Err(invalid(format!(
                            "slot {} lies past the new size {limit}",
                            u.index
                        )));
                    }
                    for id in &replicas {
                        if fsm.server(*id)?.is_none() {
                            return Err(invalid(format!("unknown chunk server {id}")));
                        }
                    }
                    // Replicas the cluster already knows of count too (a deduplicated chunk is
                    // not uploaded again).
                    let mut all = replicas.clone();
                    if let Some(rec) = fsm.chunk(&c.id)?.filter(|r| r.is_live()) {
                        all.extend(rec.replicas);
                        all.sort_unstable();
                        all.dedup();
                    }
                    if all.len() < quorum {
                        return Err(invalid(format!(
                            "chunk {} has {} durable replicas, at least {quorum} needed",
                            c.id,
                            all.len()
                        )));
                    }
                    Some(c)
                }
            };
            updates.push(SlotUpdate {
                index: u.index,
                chunk,
                replicas,
                ticket: u.ticket,
            });
        }
        Ok(updates)
    }

    /// Inode `ino` as this node's state machine has it now, without a read index: only for
    /// the leader, right after a write of its own was applied (so it is at least that fresh).
    fn local_attr(&self, ino: u64) -> Option<pb::Attr> {
        self.node.fsm().get(ino).ok().map(|i| i.to_attr())
    }

    /// `reply` with the directory `parent` as it is after the write that produced it.
    fn with_parent(
        &self,
        mut reply: Response<pb::AttrReply>,
        parent: u64,
    ) -> Response<pb::AttrReply> {
        reply.get_mut().parent = self.local_attr(parent);
        reply
    }

    /// Current addresses of `servers` (registered records), by id.
    fn addrs_of(&self, servers: &[crate::fsm::ServerRecord]) -> HashMap<u64, String> {
        servers
            .iter()
            .map(|s| (s.id, self.placement.current_addr(s.id, &s.addr)))
            .collect()
    }

    /// Locations of `replicas`, servers that are up first (each group in the given order).
    fn locations(
        &self,
        replicas: &[u64],
        addrs: &HashMap<u64, String>,
        now: Instant,
        up_only: bool,
    ) -> Vec<pb::ChunkLocation> {
        let (up, down): (Vec<u64>, Vec<u64>) = replicas
            .iter()
            .partition(|id| self.placement.is_up(**id, now));
        let mut ids = up;
        if !up_only {
            ids.extend(down);
        }
        ids.into_iter()
            .filter_map(|id| {
                addrs.get(&id).map(|addr| pb::ChunkLocation {
                    server_id: id,
                    addr: addr.clone(),
                })
            })
            .collect()
    }

    async fn peer_status(&self, id: u64, addr: String) -> pb::MetaNodeStatus {
        let down = pb::MetaNodeStatus {
            id,
            addr: addr.clone(),
            role: "down".into(),
            ..Default::default()
        };
        let ask = async {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .ok()?
                .connect_timeout(PEER_STATUS_TIMEOUT)
                .timeout(PEER_STATUS_TIMEOUT)
                .connect()
                .await
                .ok()?;
            let mut c = pb::meta_service_client::MetaServiceClient::new(ch);
            c.node_status(pb::NodeStatusRequest {})
                .await
                .ok()?
                .into_inner()
                .node
        };
        match tokio::time::timeout(PEER_STATUS_TIMEOUT, ask).await {
            Ok(Some(mut s)) => {
                s.id = id;
                s.addr = addr;
                s
            }
            _ => {
                tracing::debug!(peer = id, %addr, "meta node did not answer NodeStatus");
                down
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Input checks: each returns InvalidArgument (or NameTooLong) before anything is changed.
// ---------------------------------------------------------------------------------------------

/// The request id of a call (`cairn-request-id`, the same on every retry of one logical call):
/// `None` when absent, an error when malformed.
fn request_id<T>(req: &Request<T>) -> Result<Option<(u64, u64)>, Status> {
    let Some(v) = req
        .metadata()
        .get(cairn_common::meta_client::REQUEST_ID_KEY)
    else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(cairn_common::meta_client::parse_request_id)
        .map(Some)
        .ok_or_else(|| invalid("malformed cairn-request-id"))
}

/// The checked `SetAttr` command of a request.
fn setattr_command(r: &pb::SetAttrRequest, now: Time) -> Result<Command, Status> {
    check_ino(r.ino, "ino")?;
    let atime = match (r.atime_now, &r.atime) {
        (true, _) => Some(now),
        (false, Some(t)) => Some(check_time(t)?),
        (false, None) => None,
    };
    let mtime = match (r.mtime_now, &r.mtime) {
        (true, _) => Some(now),
        (false, Some(t)) => Some(check_time(t)?),
        (false, None) => None,
    };
    let size = r.size.map(check_size).transpose()?;
    Ok(Command::SetAttr {
        ino: r.ino,
        // The kernel may pass the file-type bits along; only permission bits are ours.
        mode: r.mode.map(|m| m & 0o7777),
        uid: r.uid,
        gid: r.gid,
        size,
        atime,
        mtime,
        now,
    })
}

/// `cmd`, applied at most once per request id when the call carries one.
fn once(id: Option<(u64, u64)>, cmd: Command) -> Command {
    match id {
        Some((client, seq)) => Command::Once {
            client,
            seq,
            now: Time::now(),
            cmd: Box::new(cmd),
        },
        None => cmd,
    }
}

/// Most open inodes an unlink or rename may list (a bound on the message, not on the mount: a
/// mount with more open files lists only those the operation could remove).
const KEEP_MAX: usize = 1 << 16;

fn check_keep(session: u64, open: Vec<u64>) -> Result<Keep, Status> {
    if open.len() > KEEP_MAX {
        return Err(invalid(format!("more than {KEEP_MAX} open inodes listed")));
    }
    Ok(Keep { session, open })
}

fn orphan_of(r: Reply) -> Result<u64, Status> {
    match r {
        Reply::Unlinked { orphan } => Ok(orphan),
        Reply::Empty => Ok(0),
        other => Err(unexpected(other)),
    }
}

fn check_session(session: u64) -> Result<u64, Status> {
    if session == 0 {
        return Err(invalid("session 0 is not a session"));
    }
    Ok(session)
}

fn check_lock(l: Option<pb::FileLock>) -> Result<LockRange, Status> {
    let l = l.ok_or_else(|| invalid("lock missing"))?;
    let typ = match pb::LockType::try_from(l.typ) {
        Ok(pb::LockType::Read) => LockType::Read,
        Ok(pb::LockType::Write) => LockType::Write,
        Ok(pb::LockType::Unlock) => LockType::Unlock,
        _ => return Err(invalid(format!("bad lock type {}", l.typ))),
    };
    if l.start > l.end {
        return Err(invalid(format!(
            "lock range {}..={} is empty",
            l.start, l.end
        )));
    }
    Ok(LockRange {
        typ,
        start: l.start,
        end: l.end,
        pid: l.pid,
    })
}

fn invalid(msg: impl Into<String>) -> Status {
    MetaError::Invalid(msg.into()).into()
}

fn unexpected(r: Reply) -> Status {
    tracing::error!(reply = ?r, "state machine returned an unexpected reply");
    cairn_common::error::status(ErrorKind::Internal, format!("unexpected reply {r:?}"))
}

fn check_ino(ino: u64, what: &str) -> Result<u64, Status> {
    if ino == 0 {
        return Err(invalid(format!("{what}: inode 0 does not exist")));
    }
    Ok(ino)
}

fn check_name(name: &[u8]) -> Result<(), Status> {
    cairn_common::name::validate_name(name).map_err(|kind| {
        MetaError::fs(
            kind,
            format!("invalid name {:?}", String::from_utf8_lossy(name)),
        )
        .into()
    })
}

fn check_time(t: &pb::Timestamp) -> Result<Time, Status> {
    if t.nanos >= 1_000_000_000 {
        return Err(invalid(format!("timestamp nanos {} out of range", t.nanos)));
    }
    Ok((*t).into())
}

fn check_size(size: u64) -> Result<u64, Status> {
    if size > MAX_FILE_SIZE {
        return Err(invalid(format!("size {size} exceeds {MAX_FILE_SIZE}")));
    }
    Ok(size)
}

fn chunk_id(b: &[u8]) -> Result<ChunkId, Status> {
    ChunkId::from_bytes(b).map_err(|e| invalid(e.to_string()))
}

fn check_chunk_ref(c: &pb::ChunkRef) -> Result<SlotChunk, Status> {
    let id = chunk_id(&c.id)?;
    if c.stored_len == 0 || c.stored_len as usize > CHUNK_SIZE || c.len > c.stored_len {
        return Err(invalid(format!(
            "chunk {id}: need len ({}) <= stored_len ({}) <= {CHUNK_SIZE}, stored_len > 0",
            c.len, c.stored_len
        )));
    }
    Ok(SlotChunk {
        id,
        len: c.len,
        stored_len: c.stored_len,
    })
}

fn attr_reply(i: &Inode) -> Response<pb::AttrReply> {
    Response::new(pb::AttrReply {
        attr: Some(i.to_attr()),
        parent: None,
    })
}

#[tonic::async_trait]
impl MetaService for MetaServiceImpl {
    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        let r = req.into_inner();
        check_ino(r.parent, "parent")?;
        check_name(&r.name)?;
        self.node.linearizable_read().await?;
        Ok(attr_reply(&self.node.fsm().lookup(r.parent, &r.name)?))
    }

    async fn get_attr(
        &self,
        req: Request<pb::GetAttrRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        let r = req.into_inner();
        check_ino(r.ino, "ino")?;
        self.node.linearizable_read().await?;
        Ok(attr_reply(&self.node.fsm().get(r.ino)?))
    }

    async fn set_attr(
        &self,
        req: Request<pb::SetAttrRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        self.write_attr(once(id, setattr_command(&r, Time::now())?))
            .await
    }

    async fn create(
        &self,
        req: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        check_ino(r.parent, "parent")?;
        check_name(&r.name)?;
        let kind = Kind::from_proto(r.kind)
            .ok_or_else(|| invalid(format!("unknown or unspecified file kind {}", r.kind)))?;
        if kind == Kind::Symlink {
            if r.symlink_target.is_empty()
                || r.symlink_target.len() > SYMLINK_MAX
                || r.symlink_target.contains(&0)
            {
                return Err(invalid(format!(
                    "symlink target must be 1..={SYMLINK_MAX} bytes without NUL"
                )));
            }
        } else if !r.symlink_target.is_empty() {
            return Err(invalid("only symlinks have a target"));
        }
        let parent = r.parent;
        let reply = self
            .write_attr(once(
                id,
                Command::Create {
                    parent: r.parent,
                    name: r.name,
                    kind,
                    mode: r.mode & 0o7777,
                    uid: r.uid,
                    gid: r.gid,
                    rdev: r.rdev,
                    symlink_target: r.symlink_target,
                    exclusive: r.exclusive,
                    now: Time::now(),
                },
            ))
            .await?;
        Ok(self.with_parent(reply, parent))
    }

    async fn link(&self, req: Request<pb::LinkRequest>) -> Result<Response<pb::AttrReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        check_ino(r.ino, "ino")?;
        check_ino(r.new_parent, "new_parent")?;
        check_name(&r.new_name)?;
        let parent = r.new_parent;
        let reply = self
            .write_attr(once(
                id,
                Command::Link {
                    ino: r.ino,
                    new_parent: r.new_parent,
                    new_name: r.new_name,
                    now: Time::now(),
                },
            ))
            .await?;
        Ok(self.with_parent(reply, parent))
    }

    async fn unlink(
        &self,
        req: Request<pb::UnlinkRequest>,
    ) -> Result<Response<pb::UnlinkReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        check_ino(r.parent, "parent")?;
        check_name(&r.name)?;
        let keep = check_keep(r.session, r.open_inodes)?;
        let parent = r.parent;
        let reply = self
            .node
            .write(once(
                id,
                Command::Unlink {
                    parent: r.parent,
                    name: r.name,
                    now: Time::now(),
                    keep,
                },
            ))
            .await?;
        Ok(Response::new(pb::UnlinkReply {
            orphan: orphan_of(reply)?,
            parent: self.local_attr(parent),
        }))
    }

    async fn rmdir(
        &self,
        req: Request<pb::RmdirRequest>,
    ) -> Result<Response<pb::UnlinkReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        check_ino(r.parent, "parent")?;
        check_name(&r.name)?;
        let parent = r.parent;
        self.node
            .write(once(
                id,
                Command::Rmdir {
                    parent: r.parent,
                    name: r.name,
                    now: Time::now(),
                },
            ))
            .await?;
        Ok(Response::new(pb::UnlinkReply {
            orphan: 0,
            parent: self.local_attr(parent),
        }))
    }

    async fn rename(
        &self,
        req: Request<pb::RenameRequest>,
    ) -> Result<Response<pb::RenameReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        check_ino(r.parent, "parent")?;
        check_ino(r.new_parent, "new_parent")?;
        check_name(&r.name)?;
        check_name(&r.new_name)?;
        let known = RENAME_NOREPLACE | RENAME_EXCHANGE;
        if r.flags & !known != 0 || r.flags == known {
            return Err(invalid(format!("unsupported rename flags {:#x}", r.flags)));
        }
        let keep = check_keep(r.session, r.open_inodes)?;
        let reply = self
            .node
            .write(once(
                id,
                Command::Rename {
                    parent: r.parent,
                    name: r.name,
                    new_parent: r.new_parent,
                    new_name: r.new_name,
                    flags: r.flags,
                    now: Time::now(),
                    keep,
                },
            ))
            .await?;
        Ok(Response::new(pb::RenameReply {
            orphan: orphan_of(reply)?,
        }))
    }

    async fn readlink(
        &self,
        req: Request<pb::ReadlinkRequest>,
    ) -> Result<Response<pb::ReadlinkReply>, Status> {
        let r = req.into_inner();
        check_ino(r.ino, "ino")?;
        self.node.linearizable_read().await?;
        let target = self.node.fsm().readlink(r.ino)?;
        Ok(Response::new(pb::ReadlinkReply { target }))
    }

    async fn read_dir(
        &self,
        req: Request<pb::ReadDirRequest>,
    ) -> Result<Response<pb::ReadDirReply>, Status> {
        let r = req.into_inner();
        check_ino(r.ino, "ino")?;
        if r.after.len() > cairn_common::name::NAME_MAX {
            return Err(invalid("`after` is longer than any name"));
        }
        let limit = match r.limit as usize {
            0 => MAX_READDIR,
            n => n.min(MAX_READDIR),
        };
        self.node.linearizable_read().await?;
        let page = self.node.fsm().readdir(r.ino, &r.after, limit)?;
        Ok(Response::new(pb::ReadDirReply {
            entries: page
                .entries
                .iter()
                .map(|(name, i)| pb::DirEntry {
                    name: name.clone(),
                    attr: Some(i.to_attr()),
                })
                .collect(),
            eof: page.eof,
            dir: Some(page.dir.to_attr()),
            parent: page.dir.parent,
        }))
    }

    async fn get_chunks(
        &self,
        req: Request<pb::GetChunksRequest>,
    ) -> Result<Response<pb::GetChunksReply>, Status> {
        let r = req.into_inner();
        check_ino(r.ino, "ino")?;
        self.node.linearizable_read().await?;
        let (inode, slots) = self.node.fsm().chunk_locations(r.ino)?;
        let addrs = self.addrs_of(&self.node.fsm().servers()?);
        let now = Instant::now();
        let slots = slots
            .into_iter()
            .map(|s| pb::ChunkSlot {
                index: s.index,
                chunk: Some(pb::ChunkRef {
                    id: s.chunk.id.as_bytes().to_vec(),
                    len: s.chunk.len,
                    stored_len: s.chunk.stored_len,
                }),
                locations: self.locations(&s.replicas, &addrs, now, false),
            })
            .collect();
        Ok(Response::new(pb::GetChunksReply {
            attr: Some(inode.to_attr()),
            chunk_size: CHUNK_SIZE as u32,
            slots,
        }))
    }

    async fn prepare_write(
        &self,
        req: Request<pb::PrepareWriteRequest>,
    ) -> Result<Response<pb::PrepareWriteReply>, Status> {
        let r = req.into_inner();
        if r.chunks.len() > MAX_PREPARE_CHUNKS {
            return Err(invalid(format!(
                "{} chunks in one PrepareWrite (at most {MAX_PREPARE_CHUNKS})",
                r.chunks.len()
            )));
        }
        let chunks = r
            .chunks
            .iter()
            .map(check_chunk_ref)
            .collect::<Result<Vec<_>, _>>()?;
        // No read index here (it would cost a quorum round trip per file written): the answer
        // is a hint, and everything that matters is checked again when the `CommitWrite` entry is
        // applied. A slightly stale "already stored" is safe because chunk records are never
        // deleted here (a record with no references is only queued for GC and revived by a commit
        // that references it), and a commit of a chunk the state machine does not know with no
        // replicas is refused. A stale "not stored" only costs an upload. Placement needs the
        // leader's heartbeat table, so followers still answer not-leader.
        if !self.node.is_leader() {
            return Err(self.not_leader().into());
        }
        let fsm = self.node.fsm();
        // Read before any placement: the ticket must not be newer than what this answer saw.
        let ticket = fsm.gc_epoch()?;
        let servers = fsm.servers()?;
        let addrs = self.addrs_of(&servers);
        // Draining servers take no new replicas (repair is moving theirs away).
        let draining: Vec<u64> = servers
            .iter()
            .filter(|s| s.draining)
            .map(|s| s.id)
            .collect();
        let now = Instant::now();
        let replication = self.cfg.replication.max(1) as usize;
        let mut placements = Vec::with_capacity(chunks.len());
        for c in &chunks {
            // Only referenced chunks count as stored: an unreferenced one may be collected at any
            // time, so the writer puts it again (a put of a stored chunk writes nothing and
            // protects the copy from a collection already under way).
            let held: Vec<u64> = fsm
                .chunk(&c.id)?
                .filter(|rec| rec.refs > 0 && rec.is_live())
                .map(|rec| rec.replicas)
                .unwrap_or_default();
            let existing = self.locations(&held, &addrs, now, true);
            let need = replication.saturating_sub(existing.len());
            let mut forbid: Vec<u64> = existing.iter().map(|l| l.server_id).collect();
            forbid.extend_from_slice(&draining);
            let targets: Vec<pb::ChunkLocation> = self
                .placement
                .place_forbidding(need, &r.exclude_servers, &forbid)
                .into_iter()
                .map(|(server_id, addr)| pb::ChunkLocation { server_id, addr })
                .collect();
            // Too few places for a commit while the new leader may not have heard from every
            // server yet: make the client retry. Enough for a commit but fewer than R is fine
            // (repair adds the missing copy), so a server that is really down does not stall
            // writes for the whole warm-up.
            if existing.len() + targets.len() < self.cfg.commit_quorum() && self.warming_up(now)? {
                return Err(MetaError::fs(
                    ErrorKind::Unavailable,
                    "new leader: still learning which chunk servers are up; retry",
                )
                .into());
            }
            if existing.is_empty() && targets.is_empty() {
                return Err(if self.placement.up_servers(now).is_empty() {
                    MetaError::fs(ErrorKind::Unavailable, "no chunk servers are up")
                } else {
                    MetaError::fs(ErrorKind::NoSpace, "no chunk server has room for a chunk")
                }
                .into());
            }
            placements.push(pb::ChunkPlacement {
                id: c.id.as_bytes().to_vec(),
                existing,
                targets,
            });
        }
        Ok(Response::new(pb::PrepareWriteReply {
            ticket,
            placements,
            replication: self.cfg.replication,
            min_replication: self.cfg.commit_quorum() as u32,
        }))
    }

    async fn commit_write(
        &self,
        req: Request<pb::CommitWriteRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        check_ino(r.ino, "ino")?;
        let size = check_size(r.size)?;
        if r.updates.len() > MAX_SLOT_UPDATES {
            return Err(invalid(format!(
                "{} slot updates in one commit (at most {MAX_SLOT_UPDATES})",
                r.updates.len()
            )));
        }
        let mtime = r.mtime.as_ref().map(check_time).transpose()?;
        let updates = self.check_updates(&r.updates, Some(size))?;
        let now = Time::now();
        let commit = Command::CommitWrite {
            ino: r.ino,
            base_version: r.base_version,
            size,
            updates,
            mtime,
            now,
            upload: r.upload,
        };
        let cmd = match &r.then_set_attr {
            None => commit,
            Some(a) => {
                if a.ino != r.ino || a.size.is_some() {
                    return Err(invalid(
                        "then_set_attr must be of the same inode and must not change the size",
                    ));
                }
                Command::Batch {
                    cmds: vec![commit, setattr_command(a, now)?],
                }
            }
        };
        self.write_attr(once(id, cmd)).await
    }

    async fn stat_fs(
        &self,
        _req: Request<pb::StatFsRequest>,
    ) -> Result<Response<pb::StatFsReply>, Status> {
        self.node.linearizable_read().await?;
        let files = self.node.fsm().inode_count()?;
        let rep = u64::from(self.cfg.replication.max(1));
        let (mut total, mut free, mut used) = (0u64, 0u64, 0u64);
        for s in self.placement.up_servers(Instant::now()) {
            total = total.saturating_add(s.load.capacity_bytes);
            free = free.saturating_add(s.load.free_bytes);
            used = used.saturating_add(s.load.used_bytes);
        }
        Ok(Response::new(pb::StatFsReply {
            total_bytes: total / rep,
            free_bytes: free / rep,
            used_bytes: used / rep,
            files,
            replication: self.cfg.replication,
        }))
    }

    async fn register_chunk_server(
        &self,
        req: Request<pb::RegisterChunkServerRequest>,
    ) -> Result<Response<pb::RegisterChunkServerReply>, Status> {
        let r = req.into_inner();
        if r.uuid.is_empty() || r.uuid.len() > 128 {
            return Err(invalid("chunk server uuid must be 1..=128 bytes"));
        }
        if r.addr.is_empty() || r.addr.len() > 256 {
            return Err(invalid("chunk server address must be 1..=256 bytes"));
        }
        let reply = self
            .node
            .write(Command::RegisterChunkServer {
                uuid: r.uuid.clone(),
                addr: r.addr.clone(),
            })
            .await?;
        match reply {
            Reply::ServerId(server_id) => {
                tracing::info!(server = server_id, uuid = %r.uuid, addr = %r.addr, "chunk server registered");
                Ok(Response::new(pb::RegisterChunkServerReply { server_id }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let r = req.into_inner();
        if r.server_id == 0 {
            return Err(invalid("server id 0: register first"));
        }
        if !self.node.is_leader() {
            return Err(self.not_leader().into());
        }
        let Some(rec) = self.node.fsm().server(r.server_id)? else {
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
        if !self.placement.is_up(r.server_id, Instant::now()) {
            tracing::info!(server = r.server_id, %addr, "chunk server is up");
        }
        self.placement
            .heartbeat(r.server_id, &addr, load, Instant::now());
        if let Some(scrub) = r.scrub {
            self.scrub
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(r.server_id, scrub);
        }
        Ok(Response::new(pb::HeartbeatReply {}))
    }

    async fn report_bad_replica(
        &self,
        req: Request<pb::ReportBadReplicaRequest>,
    ) -> Result<Response<pb::ReportBadReplicaReply>, Status> {
        let r = req.into_inner();
        let id = chunk_id(&r.chunk_id)?;
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
        if !self.node.is_leader() {
            return Err(self.not_leader().into());
        }
        if self.node.fsm().server(r.server_id)?.is_none() {
            return Err(invalid(format!(
                "chunk server {} is not registered",
                r.server_id
            )));
        }
        tracing::warn!(server = r.server_id, chunk = %id, reason = %r.reason, "bad replica reported");
        match self
            .node
            .write(Command::DropReplica {
                id,
                server: r.server_id,
                now: Time::now(),
            })
            .await?
        {
            Reply::Empty => Ok(Response::new(pb::ReportBadReplicaReply {})),
            other => Err(unexpected(other)),
        }
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        if !self.node.is_leader() {
            return Err(self.not_leader().into());
        }
        let me = self.node.id;
        let asks = self
            .node
            .members()
            .into_iter()
            .map(|(id, addr)| async move {
                if id == me {
                    let mut s = self.node.local_status();
                    s.id = id;
                    s
                } else {
                    self.peer_status(id, addr).await
                }
            });
        let meta = futures::future::join_all(asks).await;

        let now = Instant::now();
        let scan = self.repair_stats.last_scan();
        let scrub = self.scrub.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let chunk_servers = self
            .node
            .fsm()
            .servers()?
            .into_iter()
            .map(|rec| match self.placement.get(rec.id) {
                Some(s) => pb::ChunkServerStatus {
                    scrub: scrub.get(&rec.id).cloned(),
                    draining: rec.draining,
                    listed_replicas: scan.listed.get(&rec.id).copied().unwrap_or(0),
                    id: rec.id,
                    addr: s.addr.clone(),
                    state: if self.placement.is_up(rec.id, now) {
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
            leader_id: me,
            replication: self.cfg.replication,
            repair: Some(pb::RepairStatus {
                gc_pending: self.node.fsm().gc_pending()?,
                gc_collected: self
                    .gc_stats
                    .collected
                    .load(std::sync::atomic::Ordering::Relaxed)
                    + self
                        .gc_stats
                        .orphans_collected
                        .load(std::sync::atomic::Ordering::Relaxed),
                ..self.repair_stats.to_proto()
            }),
        }))
    }

    async fn fsck(&self, req: Request<pb::FsckRequest>) -> Result<Response<pb::FsckReply>, Status> {
        let r = req.into_inner();
        let max_files = (r.max_files as usize).min(crate::health::MAX_FSCK_FILES);
        // Liveness is the leader's; the read index makes the namespace current.
        self.node.linearizable_read().await?;
        let now = Instant::now();
        if self.warming_up(now)? {
            // Right after an election every server still looks down: do not report false loss.
            return Err(MetaError::fs(
                ErrorKind::Unavailable,
                "new leader: still learning which chunk servers are up; retry",
            )
            .into());
        }
        let report = crate::health::fsck(
            self.node.fsm(),
            self.cfg.replication as usize,
            |id| self.placement.is_up(id, now),
            max_files,
        )?;
        Ok(Response::new(report))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainReply>, Status> {
        let r = req.into_inner();
        if r.server.is_empty() || r.server.len() > 256 {
            return Err(invalid("give a chunk server id or address"));
        }
        if !self.node.is_leader() {
            return Err(self.not_leader().into());
        }
        let rec = self.find_server(&r.server)?;
        match self
            .node
            .write(Command::SetDraining {
                server: rec.id,
                draining: r.drain,
            })
            .await?
        {
            Reply::Empty => {}
            other => return Err(unexpected(other)),
        }
        tracing::info!(
            server = rec.id,
            drain = r.drain,
            "chunk server drain changed"
        );
        self.repair_kick.notify_one();
        let listed = self
            .repair_stats
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

    async fn node_status(
        &self,
        _req: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusReply>, Status> {
        let (leader_id, leader_addr) = self.node.leader().unwrap_or_default();
        Ok(Response::new(pb::NodeStatusReply {
            node: Some(self.node.local_status()),
            leader_id,
            leader_addr,
        }))
    }

    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        if r.host.len() > 256 || r.mountpoint.len() > 4096 {
            return Err(invalid("host or mountpoint too long"));
        }
        let cmd = Command::OpenSession {
            host: r.host,
            mountpoint: r.mountpoint,
            pid: r.pid,
            now: Time::now(),
        };
        match self.node.write(once(id, cmd)).await? {
            Reply::Session(session) => Ok(Response::new(pb::OpenSessionReply {
                session,
                ttl_ms: self.cfg.session_ttl.as_millis() as u64,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn renew_session(
        &self,
        req: Request<pb::RenewSessionRequest>,
    ) -> Result<Response<pb::RenewSessionReply>, Status> {
        let session = check_session(req.into_inner().session)?;
        self.node
            .write(Command::RenewSession {
                session,
                now: Time::now(),
            })
            .await?;
        Ok(Response::new(pb::RenewSessionReply {}))
    }

    async fn close_session(
        &self,
        req: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionReply>, Status> {
        let session = check_session(req.into_inner().session)?;
        self.node
            .write(Command::CloseSession {
                session,
                idle_before: None,
                now: Time::now(),
            })
            .await?;
        Ok(Response::new(pb::CloseSessionReply {}))
    }

    async fn release_orphan(
        &self,
        req: Request<pb::ReleaseOrphanRequest>,
    ) -> Result<Response<pb::ReleaseOrphanReply>, Status> {
        let r = req.into_inner();
        let session = check_session(r.session)?;
        check_ino(r.ino, "ino")?;
        self.node
            .write(Command::ReleaseOrphan {
                session,
                ino: r.ino,
                now: Time::now(),
            })
            .await?;
        Ok(Response::new(pb::ReleaseOrphanReply {}))
    }

    async fn set_lock(
        &self,
        req: Request<pb::SetLockRequest>,
    ) -> Result<Response<pb::SetLockReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        check_ino(r.ino, "ino")?;
        let cmd = Command::SetLock {
            ino: r.ino,
            session: check_session(r.session)?,
            owner: r.owner,
            lock: check_lock(r.lock)?,
        };
        self.node.write(once(id, cmd)).await?;
        Ok(Response::new(pb::SetLockReply {}))
    }

    async fn get_lock(
        &self,
        req: Request<pb::GetLockRequest>,
    ) -> Result<Response<pb::GetLockReply>, Status> {
        let r = req.into_inner();
        check_ino(r.ino, "ino")?;
        let want = check_lock(r.lock)?;
        self.node.linearizable_read().await?;
        let lock = match self
            .node
            .fsm()
            .lock_conflict(r.ino, r.session, r.owner, &want)?
        {
            Some(h) => pb::FileLock {
                typ: if h.write {
                    pb::LockType::Write
                } else {
                    pb::LockType::Read
                } as i32,
                start: h.start,
                end: h.end,
                pid: h.pid,
            },
            None => pb::FileLock {
                typ: pb::LockType::Unlock as i32,
                ..want_to_pb(&want)
            },
        };
        Ok(Response::new(pb::GetLockReply { lock: Some(lock) }))
    }

    async fn release_locks(
        &self,
        req: Request<pb::ReleaseLocksRequest>,
    ) -> Result<Response<pb::ReleaseLocksReply>, Status> {
        let r = req.into_inner();
        check_ino(r.ino, "ino")?;
        self.node
            .write(Command::ReleaseLocks {
                ino: r.ino,
                session: check_session(r.session)?,
                owner: r.owner,
            })
            .await?;
        Ok(Response::new(pb::ReleaseLocksReply {}))
    }

    async fn get_xattr(
        &self,
        req: Request<pb::GetXattrRequest>,
    ) -> Result<Response<pb::GetXattrReply>, Status> {
        let r = req.into_inner();
        check_ino(r.ino, "ino")?;
        self.node.linearizable_read().await?;
        let value = self.node.fsm().xattr(r.ino, &r.name)?;
        Ok(Response::new(pb::GetXattrReply { value }))
    }

    async fn list_xattr(
        &self,
        req: Request<pb::ListXattrRequest>,
    ) -> Result<Response<pb::ListXattrReply>, Status> {
        let r = req.into_inner();
        check_ino(r.ino, "ino")?;
        self.node.linearizable_read().await?;
        let names = self.node.fsm().xattr_names(r.ino)?;
        Ok(Response::new(pb::ListXattrReply { names }))
    }

    async fn set_xattr(
        &self,
        req: Request<pb::SetXattrRequest>,
    ) -> Result<Response<pb::SetXattrReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        check_ino(r.ino, "ino")?;
        crate::fsm::check_xattr_name(&r.name).map_err(MetaError::from)?;
        let cmd = Command::SetXattr {
            ino: r.ino,
            name: r.name,
            value: r.value,
            flags: r.flags,
            now: Time::now(),
        };
        self.node.write(once(id, cmd)).await?;
        Ok(Response::new(pb::SetXattrReply {}))
    }

    async fn remove_xattr(
        &self,
        req: Request<pb::RemoveXattrRequest>,
    ) -> Result<Response<pb::RemoveXattrReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        check_ino(r.ino, "ino")?;
        crate::fsm::check_xattr_name(&r.name).map_err(MetaError::from)?;
        let cmd = Command::RemoveXattr {
            ino: r.ino,
            name: r.name,
            now: Time::now(),
        };
        self.node.write(once(id, cmd)).await?;
        Ok(Response::new(pb::RemoveXattrReply {}))
    }

    async fn open_upload(
        &self,
        req: Request<pb::OpenUploadRequest>,
    ) -> Result<Response<pb::OpenUploadReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        let target = match (r.ino, r.parent) {
            (ino, 0) if ino != 0 && r.name.is_empty() => UploadTarget::Inode(ino),
            (0, parent) if parent != 0 => {
                check_name(&r.name)?;
                UploadTarget::Name {
                    parent,
                    name: r.name,
                }
            }
            _ => return Err(invalid("give either ino, or parent and name")),
        };
        let cmd = Command::OpenUpload {
            target,
            base_version: r.base_version,
            label: r.label,
            host: r.host,
            now: Time::now(),
        };
        match self.node.write(once(id, cmd)).await? {
            Reply::Upload(upload) => Ok(Response::new(pb::OpenUploadReply { upload })),
            other => Err(unexpected(other)),
        }
    }

    async fn record_upload(
        &self,
        req: Request<pb::RecordUploadRequest>,
    ) -> Result<Response<pb::RecordUploadReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        if r.upload == 0 {
            return Err(invalid("upload 0 is not an upload"));
        }
        let updates = self.check_updates(&r.updates, None)?;
        let cmd = Command::RecordUpload {
            upload: r.upload,
            updates,
            now: Time::now(),
        };
        self.node.write(once(id, cmd)).await?;
        Ok(Response::new(pb::RecordUploadReply {}))
    }

    async fn list_uploads(
        &self,
        req: Request<pb::ListUploadsRequest>,
    ) -> Result<Response<pb::ListUploadsReply>, Status> {
        let with_paths = req.into_inner().with_paths;
        self.node.linearizable_read().await?;
        let fsm = self.node.fsm();
        let all = fsm.uploads()?;
        let paths = if with_paths {
            let inos = all
                .iter()
                .map(|(h, _)| match &h.target {
                    UploadTarget::Inode(ino) => *ino,
                    UploadTarget::Name { parent, .. } => *parent,
                })
                .collect();
            crate::health::paths_of(fsm, inos)?
        } else {
            HashMap::new()
        };
        let uploads = all
            .iter()
            .map(|(h, slots)| upload_info(h, slots, &paths))
            .collect();
        Ok(Response::new(pb::ListUploadsReply { uploads }))
    }

    async fn get_upload(
        &self,
        req: Request<pb::GetUploadRequest>,
    ) -> Result<Response<pb::GetUploadReply>, Status> {
        let r = req.into_inner();
        self.node.linearizable_read().await?;
        let fsm = self.node.fsm();
        let (h, slots) = fsm.upload(r.upload)?;
        let ino = match &h.target {
            UploadTarget::Inode(ino) => *ino,
            UploadTarget::Name { parent, .. } => *parent,
        };
        let paths = crate::health::paths_of(fsm, vec![ino])?;
        Ok(Response::new(pb::GetUploadReply {
            info: Some(upload_info(&h, &slots, &paths)),
            slots: slots.iter().map(|(i, c)| slot_to_pb(*i, c)).collect(),
        }))
    }

    async fn abort_upload(
        &self,
        req: Request<pb::AbortUploadRequest>,
    ) -> Result<Response<pb::AbortUploadReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        let cmd = Command::AbortUpload {
            upload: r.upload,
            idle_before: None,
            now: Time::now(),
        };
        self.node.write(once(id, cmd)).await?;
        Ok(Response::new(pb::AbortUploadReply {}))
    }

    async fn commit_upload(
        &self,
        req: Request<pb::CommitUploadRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        let id = request_id(&req)?;
        let r = req.into_inner();
        let cmd = Command::CommitUpload {
            upload: r.upload,
            size: check_size(r.size)?,
            mtime: r.mtime.as_ref().map(check_time).transpose()?,
            mode: r.mode & 0o7777,
            uid: r.uid,
            gid: r.gid,
            now: Time::now(),
        };
        self.write_attr(once(id, cmd)).await
    }
}

fn slot_to_pb(index: u64, c: &SlotChunk) -> pb::SlotUpdate {
    pb::SlotUpdate {
        index,
        chunk: Some(pb::ChunkRef {
            id: c.id.as_bytes().to_vec(),
            len: c.len,
            stored_len: c.stored_len,
        }),
        replicas: Vec::new(),
        ticket: 0,
    }
}

fn upload_info(
    h: &crate::fsm::UploadHeader,
    slots: &[(u64, SlotChunk)],
    paths: &HashMap<u64, String>,
) -> pb::UploadInfo {
    let (ino, parent, name, path) = match &h.target {
        UploadTarget::Inode(ino) => (*ino, 0, Vec::new(), paths.get(ino).cloned()),
        UploadTarget::Name { parent, name } => (
            0,
            *parent,
            name.clone(),
            paths.get(parent).map(|p| {
                let sep = if p.ends_with('/') { "" } else { "/" };
                format!("{p}{sep}{}", String::from_utf8_lossy(name))
            }),
        ),
    };
    pb::UploadInfo {
        upload: h.id,
        ino,
        parent,
        name,
        base_version: h.base_version,
        label: h.label.clone(),
        host: h.host.clone(),
        created: Some(h.created.into()),
        touched: Some(h.touched.into()),
        slots: slots.len() as u64,
        bytes: slots.iter().map(|(_, c)| u64::from(c.len)).sum(),
        path: path.unwrap_or_default(),
    }
}

fn want_to_pb(l: &LockRange) -> pb::FileLock {
    pb::FileLock {
        typ: pb::LockType::Unspecified as i32,
        start: l.start,
        end: l.end,
        pid: l.pid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_refs_are_checked() {
        let id = ChunkId::of(b"x").as_bytes().to_vec();
        let ok = pb::ChunkRef {
            id: id.clone(),
            len: 10,
            stored_len: 20,
        };
        assert_eq!(check_chunk_ref(&ok).unwrap().len, 10);
        for bad in [
            pb::ChunkRef {
                id: vec![0; 31],
                len: 1,
                stored_len: 1,
            },
            pb::ChunkRef {
                id: id.clone(),
                len: 21,
                stored_len: 20,
            },
            pb::ChunkRef {
                id: id.clone(),
                len: 0,
                stored_len: 0,
            },
            pb::ChunkRef {
                id,
                len: 1,
                stored_len: CHUNK_SIZE as u32 + 1,
            },
        ] {
            let e = check_chunk_ref(&bad).unwrap_err();
            assert_eq!(ErrorKind::from_status(&e), ErrorKind::InvalidArgument);
        }
    }

    #[test]
    fn names_times_and_sizes_are_checked() {
        let e = check_name(&[b'a'; 300]).unwrap_err();
        assert_eq!(ErrorKind::from_status(&e), ErrorKind::NameTooLong);
        let e = check_name(b"a/b").unwrap_err();
        assert_eq!(ErrorKind::from_status(&e), ErrorKind::InvalidArgument);
        assert!(check_name(b"ok").is_ok());
        assert!(check_ino(0, "ino").is_err());
        assert!(check_time(&pb::Timestamp {
            secs: 1,
            nanos: 1_000_000_000
        })
        .is_err());
        assert!(check_size(MAX_FILE_SIZE + 1).is_err());
        let cfg = ServiceConfig {
            replication: 1,
            min_replication: 2,
            ..Default::default()
        };
        assert_eq!(cfg.commit_quorum(), 1);
        assert_eq!(ServiceConfig::default().commit_quorum(), 2);
    }

    /// The whole service against a real one-node cluster: namespace calls, chunk-server
    /// registration and heartbeats, placement, commit quorum, chunk locations, status.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_node_cluster_end_to_end() {
        use crate::config::{Config, Peer};
        use cairn_common::MetaClient;

        let dir = tempfile::tempdir().unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mut cfg = Config::new(1, addr.clone(), dir.path());
        cfg.peers = vec![Peer {
            id: 1,
            addr: addr.clone(),
        }];
        cfg.drain_timeout_ms = 1_000;
        let node = crate::start_with_listener(cfg, l).await.unwrap();
        let meta = MetaClient::new(vec![addr.clone()]);
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
            .get_chunks(pb::GetChunksRequest { ino: f.ino })
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

        tracing::info!("--- a bad replica is dropped from the chunk's locations");
        let report =
            |server_id: u64, chunk_id: Vec<u8>, reason: String| pb::ReportBadReplicaRequest {
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
            .get_chunks(pb::GetChunksRequest { ino: f.ino })
            .await
            .unwrap()
            .into_inner();
        let locs: Vec<u64> = gc.slots[0].locations.iter().map(|l| l.server_id).collect();
        assert_eq!(locs, vec![2]);
        let rec = node.node.fsm().chunk(&ChunkId::of(&data)).unwrap().unwrap();
        assert_eq!((rec.replicas, rec.refs), (vec![2], 1));
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
            .node_status(pb::NodeStatusRequest {})
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
}
