//! Upload-session RPCs: open, record chunks into, list, inspect, abort and commit an upload
//! (resumable writes through a mount, and `cairn put`).
use super::checks::{self, invalid, once, request_id};
use super::convert::{self, upload_info, upload_path_ino, upload_slot};
use super::{Answer, Ctx};
use crate::command::{
    AbortUpload, Command, CommitUpload, OpenUpload, RecordUpload, Reply, Time, UploadTarget,
};
use crate::fsm::LABEL_MAX;
use cairn_proto as pb;
use std::collections::HashMap;
use tonic::{Request, Response};

pub(super) async fn open_upload(
    ctx: &Ctx,
    req: Request<pb::OpenUploadRequest>,
) -> Answer<pb::OpenUploadReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    let target = match (r.ino, r.parent) {
        (ino, 0) if ino != 0 && r.name.is_empty() => UploadTarget::Inode(ino),
        (0, parent) if parent != 0 => {
            checks::name(&r.name)?;
            UploadTarget::Name {
                parent,
                name: r.name,
            }
        }
        _ => return Err(invalid("give either ino, or parent and name")),
    };
    if r.label.len() > LABEL_MAX || r.host.len() > LABEL_MAX {
        return Err(invalid(format!(
            "label and host are at most {LABEL_MAX} bytes"
        )));
    }
    let cmd = Command::OpenUpload(OpenUpload {
        target,
        base_version: r.base_version,
        label: r.label,
        host: r.host,
        now: Time::now(),
    });
    match ctx.node.write(once(id, cmd)).await? {
        Reply::Upload(upload) => Ok(Response::new(pb::OpenUploadReply { upload })),
        other => Err(checks::unexpected(other)),
    }
}

pub(super) async fn record_upload(
    ctx: &Ctx,
    req: Request<pb::RecordUploadRequest>,
) -> Answer<pb::RecordUploadReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    if r.upload == 0 {
        return Err(invalid("upload 0 is not an upload"));
    }
    let updates = checks::slot_updates(ctx.node.fsm(), ctx.cfg.commit_quorum(), &r.updates, None)?;
    let cmd = Command::RecordUpload(RecordUpload {
        upload: r.upload,
        updates,
        now: Time::now(),
    });
    ctx.write_empty(once(id, cmd)).await?;
    Ok(Response::new(pb::RecordUploadReply {}))
}

pub(super) async fn list_uploads(
    ctx: &Ctx,
    req: Request<pb::ListUploadsRequest>,
) -> Answer<pb::ListUploadsReply> {
    let with_paths = req.into_inner().with_paths;
    ctx.node.linearizable_read().await?;
    let fsm = ctx.node.fsm();
    let all = fsm.uploads()?;
    let paths = if with_paths {
        let inos = all
            .iter()
            .map(|(h, _)| upload_path_ino(&h.target))
            .collect();
        crate::fsck::paths_of(fsm, inos)?
    } else {
        HashMap::new()
    };
    let uploads = all
        .iter()
        .map(|(h, slots)| upload_info(h, slots, &paths))
        .collect();
    Ok(Response::new(pb::ListUploadsReply { uploads }))
}

pub(super) async fn get_upload(
    ctx: &Ctx,
    req: Request<pb::GetUploadRequest>,
) -> Answer<pb::GetUploadReply> {
    let r = req.into_inner();
    ctx.node.linearizable_read().await?;
    let fsm = ctx.node.fsm();
    let (h, slots) = fsm.upload(r.upload)?;
    let paths = crate::fsck::paths_of(fsm, vec![upload_path_ino(&h.target)])?;
    Ok(Response::new(pb::GetUploadReply {
        info: Some(upload_info(&h, &slots, &paths)),
        slots: slots.iter().map(|(i, c)| upload_slot(*i, c)).collect(),
    }))
}

pub(super) async fn abort_upload(
    ctx: &Ctx,
    req: Request<pb::AbortUploadRequest>,
) -> Answer<pb::AbortUploadReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    let cmd = Command::AbortUpload(AbortUpload {
        upload: r.upload,
        idle_before: None,
        now: Time::now(),
    });
    ctx.write_empty(once(id, cmd)).await?;
    Ok(Response::new(pb::AbortUploadReply {}))
}

pub(super) async fn commit_upload(
    ctx: &Ctx,
    req: Request<pb::CommitUploadRequest>,
) -> Answer<pb::AttrReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    let cmd = Command::CommitUpload(CommitUpload {
        upload: r.upload,
        size: checks::size(r.size)?,
        mtime: r.mtime.as_ref().map(convert::time).transpose()?,
        mode: r.mode & 0o7777,
        uid: r.uid,
        gid: r.gid,
        now: Time::now(),
    });
    ctx.write_attr(once(id, cmd)).await
}
