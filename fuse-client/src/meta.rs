//! Every metadata call the client makes, as one typed method each on [`Meta`].
//!
//! [`Meta`] wraps `cairn_common::MetaClient` (leader following, retries, request ids): the mount,
//! the writer, `cairn put`/`get`, `cairn status` and the admin commands all call the cluster
//! through it, so the request each call builds and the part of the reply it keeps are written
//! once, here. Methods return `tonic::Status` errors; the mount turns them into an errno
//! ([`crate::errno`]), the commands into a message.
//!
//! A reply that lacks a field the protocol always sets (an `attr`, a `lock`) is a broken server:
//! it is returned as an `Internal` error (`EIO` in the mount).
use cairn_common::error::status;
use cairn_common::meta_client::MetaRpc;
use cairn_common::{ErrorKind, MetaClient};
use cairn_proto as pb;
use std::future::Future;
use std::time::Duration;
use tonic::Status;

/// The metadata cluster, one typed method per call (see the module docs).
#[derive(Clone)]
pub struct Meta {
    client: MetaClient,
}

impl From<MetaClient> for Meta {
    fn from(client: MetaClient) -> Meta {
        Meta { client }
    }
}

/// The error of a reply without a field the protocol always sets.
fn missing(call: &str, field: &str) -> Status {
    status(ErrorKind::Internal, format!("{call} reply without {field}"))
}

impl Meta {
    /// A client for the nodes at `addrs` with the default timeouts.
    pub fn new(addrs: Vec<String>) -> Meta {
        Meta::from(MetaClient::new(addrs))
    }

    /// A client whose calls look for a leader for at most `retry_for`, each attempt bounded by
    /// `rpc_timeout`.
    pub fn with_timeouts(addrs: Vec<String>, retry_for: Duration, rpc_timeout: Duration) -> Meta {
        Meta::from(MetaClient::with_timeouts(addrs, retry_for, rpc_timeout))
    }

    /// Sends `req` to the leader through `f`; the request is cloned for each retry.
    async fn rpc<Req, T, F, Fut>(&self, req: Req, f: F) -> Result<T, Status>
    where
        Req: Clone,
        F: Fn(MetaRpc, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.client.call(|c| f(c, req.clone())).await
    }

    // --- namespace ------------------------------------------------------------------------

    /// The attributes of `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<pb::Attr, Status> {
        let req = pb::LookupRequest {
            parent,
            name: name.to_vec(),
        };
        self.rpc(req, |mut c, r| async move { c.lookup(r).await })
            .await?
            .attr
            .ok_or_else(|| missing("Lookup", "attributes"))
    }

    pub async fn get_attr(&self, ino: u64) -> Result<pb::Attr, Status> {
        let req = pb::GetAttrRequest { ino };
        self.rpc(req, |mut c, r| async move { c.get_attr(r).await })
            .await?
            .attr
            .ok_or_else(|| missing("GetAttr", "attributes"))
    }

    /// Applies `req`; the inode's attributes after it.
    pub async fn set_attr(&self, req: pb::SetAttrRequest) -> Result<pb::Attr, Status> {
        self.rpc(req, |mut c, r| async move { c.set_attr(r).await })
            .await?
            .attr
            .ok_or_else(|| missing("SetAttr", "attributes"))
    }

    /// Creates an entry: its attributes, and those of its directory after the change.
    pub async fn create(
        &self,
        req: pb::CreateRequest,
    ) -> Result<(pb::Attr, Option<pb::Attr>), Status> {
        let r = self
            .rpc(req, |mut c, r| async move { c.create(r).await })
            .await?;
        Ok((
            r.attr.ok_or_else(|| missing("Create", "attributes"))?,
            r.parent,
        ))
    }

    /// A new name `new_parent`/`new_name` for `ino`: its attributes, and those of the
    /// directory after the change.
    pub async fn link(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &[u8],
    ) -> Result<(pb::Attr, Option<pb::Attr>), Status> {
        let req = pb::LinkRequest {
            ino,
            new_parent,
            new_name: new_name.to_vec(),
        };
        let r = self
            .rpc(req, |mut c, r| async move { c.link(r).await })
            .await?;
        Ok((
            r.attr.ok_or_else(|| missing("Link", "attributes"))?,
            r.parent,
        ))
    }

    pub async fn unlink(&self, req: pb::UnlinkRequest) -> Result<pb::UnlinkReply, Status> {
        self.rpc(req, |mut c, r| async move { c.unlink(r).await })
            .await
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<pb::UnlinkReply, Status> {
        let req = pb::RmdirRequest {
            parent,
            name: name.to_vec(),
        };
        self.rpc(req, |mut c, r| async move { c.rmdir(r).await })
            .await
    }

    pub async fn rename(&self, req: pb::RenameRequest) -> Result<pb::RenameReply, Status> {
        self.rpc(req, |mut c, r| async move { c.rename(r).await })
            .await
    }

    /// The target of symlink `ino`.
    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, Status> {
        let req = pb::ReadlinkRequest { ino };
        Ok(self
            .rpc(req, |mut c, r| async move { c.readlink(r).await })
            .await?
            .target)
    }

    /// Up to `limit` entries of directory `ino` after the name `after` (from the start when
    /// empty).
    pub async fn read_dir(
        &self,
        ino: u64,
        after: &[u8],
        limit: u32,
    ) -> Result<pb::ReadDirReply, Status> {
        let req = pb::ReadDirRequest {
            ino,
            after: after.to_vec(),
            limit,
        };
        self.rpc(req, |mut c, r| async move { c.read_dir(r).await })
            .await
    }

    pub async fn stat_fs(&self) -> Result<pb::StatFsReply, Status> {
        self.rpc(pb::StatFsRequest {}, |mut c, r| async move {
            c.stat_fs(r).await
        })
        .await
    }

    // --- extended attributes --------------------------------------------------------------

    pub async fn get_xattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, Status> {
        let req = pb::GetXattrRequest {
            ino,
            name: name.to_vec(),
        };
        Ok(self
            .rpc(req, |mut c, r| async move { c.get_xattr(r).await })
            .await?
            .value)
    }

    pub async fn set_xattr(&self, req: pb::SetXattrRequest) -> Result<(), Status> {
        self.rpc(req, |mut c, r| async move { c.set_xattr(r).await })
            .await
            .map(drop)
    }

    /// The names of `ino`'s extended attributes.
    pub async fn list_xattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, Status> {
        let req = pb::ListXattrRequest { ino };
        Ok(self
            .rpc(req, |mut c, r| async move { c.list_xattr(r).await })
            .await?
            .names)
    }

    pub async fn remove_xattr(&self, ino: u64, name: &[u8]) -> Result<(), Status> {
        let req = pb::RemoveXattrRequest {
            ino,
            name: name.to_vec(),
        };
        self.rpc(req, |mut c, r| async move { c.remove_xattr(r).await })
            .await
            .map(drop)
    }

    // --- mount sessions and locks ---------------------------------------------------------

    pub async fn open_session(
        &self,
        req: pb::OpenSessionRequest,
    ) -> Result<pb::OpenSessionReply, Status> {
        self.rpc(req, |mut c, r| async move { c.open_session(r).await })
            .await
    }

    pub async fn renew_session(&self, session: u64) -> Result<(), Status> {
        let req = pb::RenewSessionRequest { session };
        self.rpc(req, |mut c, r| async move { c.renew_session(r).await })
            .await
            .map(drop)
    }

    pub async fn close_session(&self, session: u64) -> Result<(), Status> {
        let req = pb::CloseSessionRequest { session };
        self.rpc(req, |mut c, r| async move { c.close_session(r).await })
            .await
            .map(drop)
    }

    /// Deletes orphan `ino` of `session` (its last handle closed).
    pub async fn release_orphan(&self, session: u64, ino: u64) -> Result<(), Status> {
        let req = pb::ReleaseOrphanRequest { session, ino };
        self.rpc(req, |mut c, r| async move { c.release_orphan(r).await })
            .await
            .map(drop)
    }

    pub async fn set_lock(&self, req: pb::SetLockRequest) -> Result<(), Status> {
        self.rpc(req, |mut c, r| async move { c.set_lock(r).await })
            .await
            .map(drop)
    }

    /// The first lock that would block the one asked about (type `UNLOCK` when none).
    pub async fn get_lock(&self, req: pb::GetLockRequest) -> Result<pb::FileLock, Status> {
        self.rpc(req, |mut c, r| async move { c.get_lock(r).await })
            .await?
            .lock
            .ok_or_else(|| missing("GetLock", "a lock"))
    }

    pub async fn release_locks(&self, req: pb::ReleaseLocksRequest) -> Result<(), Status> {
        self.rpc(req, |mut c, r| async move { c.release_locks(r).await })
            .await
            .map(drop)
    }

    // --- file data ------------------------------------------------------------------------

    /// One page of the chunk list of `ino`'s current version: the non-hole slots from
    /// `first_slot` on, as many as the service's page holds (`more`: ask again from
    /// `next_slot`). Every page carries the version it was read from.
    pub async fn get_chunks(
        &self,
        ino: u64,
        first_slot: u64,
    ) -> Result<pb::GetChunksReply, Status> {
        let req = pb::GetChunksRequest {
            ino,
            first_slot,
            max_slots: 0,
        };
        self.rpc(req, |mut c, r| async move { c.get_chunks(r).await })
            .await
    }

    /// Placements for new chunks.
    pub async fn prepare_write(
        &self,
        req: pb::PrepareWriteRequest,
    ) -> Result<pb::PrepareWriteReply, Status> {
        self.rpc(req, |mut c, r| async move { c.prepare_write(r).await })
            .await
    }

    /// Commits a new version; the inode's attributes after it (when the leader sent them).
    pub async fn commit_write(
        &self,
        req: pb::CommitWriteRequest,
    ) -> Result<Option<pb::Attr>, Status> {
        Ok(self
            .rpc(req, |mut c, r| async move { c.commit_write(r).await })
            .await?
            .attr)
    }

    /// Tells the cluster that `server_id`'s copy of chunk `chunk_id` is bad.
    pub async fn report_bad_replica(
        &self,
        server_id: u64,
        chunk_id: &[u8],
        reason: &str,
    ) -> Result<(), Status> {
        let req = pb::ReportBadReplicaRequest {
            server_id,
            chunk_id: chunk_id.to_vec(),
            reason: reason.to_owned(),
        };
        self.rpc(req, |mut c, r| async move { c.report_bad_replica(r).await })
            .await
            .map(drop)
    }

    // --- upload sessions ------------------------------------------------------------------

    /// Opens an upload session; its id.
    pub async fn open_upload(&self, req: pb::OpenUploadRequest) -> Result<u64, Status> {
        Ok(self
            .rpc(req, |mut c, r| async move { c.open_upload(r).await })
            .await?
            .upload)
    }

    /// Records stored chunks in upload session `upload`.
    pub async fn record_upload(
        &self,
        upload: u64,
        updates: Vec<pb::SlotUpdate>,
    ) -> Result<(), Status> {
        let req = pb::RecordUploadRequest { upload, updates };
        self.rpc(req, |mut c, r| async move { c.record_upload(r).await })
            .await
            .map(drop)
    }

    /// Every upload session, page by page; `with_paths` also resolves their targets' paths.
    pub async fn list_uploads(&self, with_paths: bool) -> Result<Vec<pb::UploadInfo>, Status> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let req = pb::ListUploadsRequest {
                with_paths,
                after,
                limit: 0,
            };
            let page = self
                .rpc(req, |mut c, r| async move { c.list_uploads(r).await })
                .await?;
            let Some(last) = page.uploads.last() else {
                return Ok(all);
            };
            // Ids only grow; a server answering otherwise would make this loop forever.
            if last.upload <= after {
                return Err(Status::internal("ListUploads did not advance"));
            }
            after = last.upload;
            all.extend(page.uploads);
            if page.done {
                return Ok(all);
            }
        }
    }

    /// The slots recorded in upload session `upload`, read a page at a time.
    pub async fn get_upload(&self, upload: u64) -> Result<Vec<pb::SlotUpdate>, Status> {
        let mut slots = Vec::new();
        let mut first_slot = 0;
        loop {
            let req = pb::GetUploadRequest {
                upload,
                first_slot,
                max_slots: 0,
            };
            let page = self
                .rpc(req, |mut c, r| async move { c.get_upload(r).await })
                .await?;
            slots.extend(page.slots);
            if !page.more {
                return Ok(slots);
            }
            if page.next_slot <= first_slot {
                return Err(missing("GetUpload", "a next page past its first slot"));
            }
            first_slot = page.next_slot;
        }
    }

    pub async fn abort_upload(&self, upload: u64) -> Result<(), Status> {
        let req = pb::AbortUploadRequest { upload };
        self.rpc(req, |mut c, r| async move { c.abort_upload(r).await })
            .await
            .map(drop)
    }

    /// Commits an upload session as its target file; the file's attributes (when the leader
    /// sent them).
    pub async fn commit_upload(
        &self,
        req: pb::CommitUploadRequest,
    ) -> Result<Option<pb::Attr>, Status> {
        Ok(self
            .rpc(req, |mut c, r| async move { c.commit_upload(r).await })
            .await?
            .attr)
    }

    // --- cluster administration -----------------------------------------------------------

    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusReply, Status> {
        self.rpc(pb::ClusterStatusRequest {}, |mut c, r| async move {
            c.cluster_status(r).await
        })
        .await
    }

    pub async fn fsck(&self, max_files: u32) -> Result<pb::FsckReply, Status> {
        let req = pb::FsckRequest { max_files };
        self.rpc(req, |mut c, r| async move { c.fsck(r).await })
            .await
    }

    /// Marks chunk server `server` (id or address) draining, or not.
    pub async fn drain(&self, server: &str, drain: bool) -> Result<pb::DrainReply, Status> {
        let req = pb::DrainRequest {
            server: server.to_owned(),
            drain,
        };
        self.rpc(req, |mut c, r| async move { c.drain(r).await })
            .await
    }
}
