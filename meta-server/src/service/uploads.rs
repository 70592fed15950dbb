//! Upload-session RPCs: open, record chunks into, list, inspect, abort and commit an upload
//! (resumable writes through a mount, and `cairn put`).
use super::checks::{self, invalid, once, request_id, MAX_LIST_UPLOADS};
use super::convert::{self, upload_info, upload_path_ino, upload_slot};
use super::{Answer, Ctx};
use crate::command::{
    AbortUpload, Command, CommitUpload, OpenUpload, RecordUpload, Reply, Time, UploadTarget,
};
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
    checks::upload_label(&r.label, &r.host)?;
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
    let updates = checks::slot_updates(
        ctx.node.fsm(),
        ctx.cfg.commit_quorum(),
        &r.updates,
        None,
        &[],
    )?;
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
    let r = req.into_inner();
    let limit = match r.limit as usize {
        0 => MAX_LIST_UPLOADS,
        n => n.min(MAX_LIST_UPLOADS),
    };
    ctx.node.linearizable_read().await?;
    let (uploads, done) = ctx
        .scan(move |fsm| {
            let (page, done) = fsm.upload_page(r.after, limit)?;
            let paths = if r.with_paths {
                let inos = page.iter().map(|u| upload_path_ino(&u.header.target));
                crate::fsck::paths_of(fsm, inos.collect())?
            } else {
                HashMap::new()
            };
            let uploads = page
                .iter()
                .map(|u| upload_info(&u.header, u.slots, u.bytes, &paths))
                .collect();
            Ok((uploads, done))
        })
        .await?;
    Ok(Response::new(pb::ListUploadsReply { uploads, done }))
}

pub(super) async fn get_upload(
    ctx: &Ctx,
    req: Request<pb::GetUploadRequest>,
) -> Answer<pb::GetUploadReply> {
    let r = req.into_inner();
    let max = checks::page_size(r.max_slots);
    ctx.node.linearizable_read().await?;
    ctx.scan(move |fsm| {
        let h = fsm.upload_header(r.upload)?;
        let (slots, next) = fsm.upload_slot_page(r.upload, r.first_slot, max)?;
        let paths = crate::fsck::paths_of(fsm, vec![upload_path_ino(&h.target)])?;
        let (count, bytes) = fsm.upload_totals(r.upload)?;
        Ok(pb::GetUploadReply {
            info: Some(upload_info(&h, count, bytes, &paths)),
            slots: slots.iter().map(|(i, c)| upload_slot(*i, c)).collect(),
            more: next.is_some(),
            next_slot: next.unwrap_or(0),
        })
    })
    .await
    .map(Response::new)
}

pub(super) async fn abort_upload(
    ctx: &Ctx,
    req: Request<pb::AbortUploadRequest>,
) -> Answer<pb::AbortUploadReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    let cmd = Command::AbortUpload(AbortUpload {
        upload: r.upload,
        idle_through: None,
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
