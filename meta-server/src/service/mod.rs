//! The client-facing `MetaService`: a thin gRPC adapter that hands each call to the area that
//! owns it.
//!
//! - [`namespace`]: lookups, attributes, creates, links, unlinks, renames, listings;
//! - [`files`]: where chunks live (`GetChunks`), where new ones go (`PrepareWrite`), content
//!   commits, statfs;
//! - [`uploads`]: upload sessions (resumable writes, `cairn put`);
//! - [`sessions`]: mount sessions, their orphans and their advisory locks;
//! - [`xattrs`]: extended attributes;
//! - [`cluster`]: chunk-server registration, heartbeats and reports, status, fsck, drain;
//! - [`checks`]: every request check and bound, in one place;
//! - [`convert`]: every wire ↔ domain conversion, in one place.
//!
//! Mutations are proposed as one [`Command`](crate::command::Command) each through Raft and
//! answered once committed and applied; reads run on the local state machine after a
//! linearizable read barrier. Every error leaves through the one `From<MetaError> for Status`
//! mapping, so a follower answers `NotLeader` with the leader's address and clients follow it.
mod checks;
mod cluster;
pub mod convert;
mod files;
mod namespace;
mod sessions;
mod uploads;
mod xattrs;

pub use checks::{
    MAX_EXCLUDE_SERVERS, MAX_LIST_UPLOADS, MAX_PREPARE_CHUNKS, MAX_READDIR, MAX_REASON_LEN,
    MAX_SLOT_PAGE, MAX_SLOT_UPDATES,
};

use crate::command::{Command, Reply};
use crate::error::MetaError;
use crate::fsm::Fsm;
use crate::leader::LeaderState;
use crate::node::MetaNode;
use cairn_proto as pb;
use cairn_proto::meta_service_server::MetaService;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Settings of the client-facing service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Replicas per chunk (default 3).
    pub replication: u32,
    /// Fewest acknowledged replicas a write may commit with when servers are down (default 2).
    pub min_replication: u32,
    /// A mount session not renewed for this long ends (default 60 s).
    pub session_ttl: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            replication: 3,
            min_replication: 2,
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

/// What every area of the service works with.
pub(crate) struct Ctx {
    node: Arc<MetaNode>,
    cfg: ServiceConfig,
    leader: Arc<LeaderState>,
}

impl Ctx {
    fn not_leader(&self) -> MetaError {
        MetaError::NotLeader {
            leader: self.node.leader().map(|(_, addr)| addr),
        }
    }

    /// `NotLeader` unless this node leads: for answers that need the leader's in-memory state
    /// (liveness, placement) or local state only the leader knows is current.
    fn require_leader(&self) -> Result<(), Status> {
        if !self.node.is_leader() {
            return Err(self.not_leader().into());
        }
        Ok(())
    }

    /// Proposes `cmd` and answers with the inode it returns.
    async fn write_attr(&self, cmd: Command) -> Result<Response<pb::AttrReply>, Status> {
        match self.node.write(cmd).await? {
            Reply::Attr(i) => Ok(convert::attr_reply(&i)),
            other => Err(checks::unexpected(other)),
        }
    }

    /// Proposes `cmd`, which answers nothing.
    async fn write_empty(&self, cmd: Command) -> Result<(), Status> {
        self.node.write(cmd).await?;
        Ok(())
    }

    /// Runs `read` — a scan of the local state that may be long (fsck, paths, a page of
    /// uploads) — on the blocking pool, off the runtime threads that also serve Raft's
    /// heartbeats and votes.
    async fn scan<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Fsm) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, Status> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || read(node.fsm()))
            .await
            .map_err(|e| MetaError::Storage(format!("scan task failed: {e}")))?
            .map_err(Status::from)
    }

    /// Inode `ino` as this node's state machine has it now, without a read index: only for
    /// the leader, right after a write of its own was applied (so it is at least that fresh).
    fn local_attr(&self, ino: u64) -> Option<pb::Attr> {
        self.node.fsm().get(ino).ok().map(|i| (&i).into())
    }
}

pub struct MetaServiceImpl {
    ctx: Ctx,
}

impl MetaServiceImpl {
    pub fn new(
        node: Arc<MetaNode>,
        cfg: ServiceConfig,
        leader: Arc<LeaderState>,
    ) -> MetaServiceImpl {
        MetaServiceImpl {
            ctx: Ctx { node, cfg, leader },
        }
    }
}

impl MetaServiceImpl {
    /// The `ClusterStatus` answer (leader only), for the status page of [`crate::http`].
    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusReply, Status> {
        cluster::cluster_status(&self.ctx, Request::new(pb::ClusterStatusRequest {}))
            .await
            .map(Response::into_inner)
    }
}

/// What an RPC answers.
type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl MetaService for MetaServiceImpl {
    async fn lookup(&self, req: Request<pb::LookupRequest>) -> Answer<pb::AttrReply> {
        namespace::lookup(&self.ctx, req).await
    }
    async fn get_attr(&self, req: Request<pb::GetAttrRequest>) -> Answer<pb::AttrReply> {
        namespace::get_attr(&self.ctx, req).await
    }
    async fn set_attr(&self, req: Request<pb::SetAttrRequest>) -> Answer<pb::AttrReply> {
        namespace::set_attr(&self.ctx, req).await
    }
    async fn create(&self, req: Request<pb::CreateRequest>) -> Answer<pb::AttrReply> {
        namespace::create(&self.ctx, req).await
    }
    async fn link(&self, req: Request<pb::LinkRequest>) -> Answer<pb::AttrReply> {
        namespace::link(&self.ctx, req).await
    }
    async fn unlink(&self, req: Request<pb::UnlinkRequest>) -> Answer<pb::UnlinkReply> {
        namespace::unlink(&self.ctx, req).await
    }
    async fn rmdir(&self, req: Request<pb::RmdirRequest>) -> Answer<pb::UnlinkReply> {
        namespace::rmdir(&self.ctx, req).await
    }
    async fn rename(&self, req: Request<pb::RenameRequest>) -> Answer<pb::RenameReply> {
        namespace::rename(&self.ctx, req).await
    }
    async fn readlink(&self, req: Request<pb::ReadlinkRequest>) -> Answer<pb::ReadlinkReply> {
        namespace::readlink(&self.ctx, req).await
    }
    async fn read_dir(&self, req: Request<pb::ReadDirRequest>) -> Answer<pb::ReadDirReply> {
        namespace::read_dir(&self.ctx, req).await
    }
    async fn get_chunks(&self, req: Request<pb::GetChunksRequest>) -> Answer<pb::GetChunksReply> {
        files::get_chunks(&self.ctx, req).await
    }
    async fn prepare_write(
        &self,
        req: Request<pb::PrepareWriteRequest>,
    ) -> Answer<pb::PrepareWriteReply> {
        files::prepare_write(&self.ctx, req).await
    }
    async fn commit_write(&self, req: Request<pb::CommitWriteRequest>) -> Answer<pb::AttrReply> {
        files::commit_write(&self.ctx, req).await
    }
    async fn stat_fs(&self, req: Request<pb::StatFsRequest>) -> Answer<pb::StatFsReply> {
        files::stat_fs(&self.ctx, req).await
    }
    async fn register_chunk_server(
        &self,
        req: Request<pb::RegisterChunkServerRequest>,
    ) -> Answer<pb::RegisterChunkServerReply> {
        cluster::register_chunk_server(&self.ctx, req).await
    }
    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Answer<pb::HeartbeatReply> {
        cluster::heartbeat(&self.ctx, req).await
    }
    async fn report_bad_replica(
        &self,
        req: Request<pb::ReportBadReplicaRequest>,
    ) -> Answer<pb::ReportBadReplicaReply> {
        cluster::report_bad_replica(&self.ctx, req).await
    }
    async fn cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Answer<pb::ClusterStatusReply> {
        cluster::cluster_status(&self.ctx, req).await
    }
    async fn fsck(&self, req: Request<pb::FsckRequest>) -> Answer<pb::FsckReply> {
        cluster::fsck(&self.ctx, req).await
    }
    async fn drain(&self, req: Request<pb::DrainRequest>) -> Answer<pb::DrainReply> {
        cluster::drain(&self.ctx, req).await
    }
    async fn node_status(
        &self,
        req: Request<pb::NodeStatusRequest>,
    ) -> Answer<pb::NodeStatusReply> {
        cluster::node_status(&self.ctx, req).await
    }
    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> Answer<pb::OpenSessionReply> {
        sessions::open_session(&self.ctx, req).await
    }
    async fn renew_session(
        &self,
        req: Request<pb::RenewSessionRequest>,
    ) -> Answer<pb::RenewSessionReply> {
        sessions::renew_session(&self.ctx, req).await
    }
    async fn close_session(
        &self,
        req: Request<pb::CloseSessionRequest>,
    ) -> Answer<pb::CloseSessionReply> {
        sessions::close_session(&self.ctx, req).await
    }
    async fn release_orphan(
        &self,
        req: Request<pb::ReleaseOrphanRequest>,
    ) -> Answer<pb::ReleaseOrphanReply> {
        sessions::release_orphan(&self.ctx, req).await
    }
    async fn set_lock(&self, req: Request<pb::SetLockRequest>) -> Answer<pb::SetLockReply> {
        sessions::set_lock(&self.ctx, req).await
    }
    async fn get_lock(&self, req: Request<pb::GetLockRequest>) -> Answer<pb::GetLockReply> {
        sessions::get_lock(&self.ctx, req).await
    }
    async fn release_locks(
        &self,
        req: Request<pb::ReleaseLocksRequest>,
    ) -> Answer<pb::ReleaseLocksReply> {
        sessions::release_locks(&self.ctx, req).await
    }
    async fn get_xattr(&self, req: Request<pb::GetXattrRequest>) -> Answer<pb::GetXattrReply> {
        xattrs::get_xattr(&self.ctx, req).await
    }
    async fn list_xattr(&self, req: Request<pb::ListXattrRequest>) -> Answer<pb::ListXattrReply> {
        xattrs::list_xattr(&self.ctx, req).await
    }
    async fn set_xattr(&self, req: Request<pb::SetXattrRequest>) -> Answer<pb::SetXattrReply> {
        xattrs::set_xattr(&self.ctx, req).await
    }
    async fn remove_xattr(
        &self,
        req: Request<pb::RemoveXattrRequest>,
    ) -> Answer<pb::RemoveXattrReply> {
        xattrs::remove_xattr(&self.ctx, req).await
    }
    async fn open_upload(
        &self,
        req: Request<pb::OpenUploadRequest>,
    ) -> Answer<pb::OpenUploadReply> {
        uploads::open_upload(&self.ctx, req).await
    }
    async fn record_upload(
        &self,
        req: Request<pb::RecordUploadRequest>,
    ) -> Answer<pb::RecordUploadReply> {
        uploads::record_upload(&self.ctx, req).await
    }
    async fn list_uploads(
        &self,
        req: Request<pb::ListUploadsRequest>,
    ) -> Answer<pb::ListUploadsReply> {
        uploads::list_uploads(&self.ctx, req).await
    }
    async fn get_upload(&self, req: Request<pb::GetUploadRequest>) -> Answer<pb::GetUploadReply> {
        uploads::get_upload(&self.ctx, req).await
    }
    async fn abort_upload(
        &self,
        req: Request<pb::AbortUploadRequest>,
    ) -> Answer<pb::AbortUploadReply> {
        uploads::abort_upload(&self.ctx, req).await
    }
    async fn commit_upload(&self, req: Request<pb::CommitUploadRequest>) -> Answer<pb::AttrReply> {
        uploads::commit_upload(&self.ctx, req).await
    }
}
