//! Extended-attribute RPCs: get and list (reads after a read barrier), set and remove (one
//! command each).
use super::checks::{self, once, request_id};
use super::{Answer, Ctx};
use crate::command::{Command, RemoveXattr, SetXattr, Time};
use crate::error::MetaError;
use crate::fsm::check_xattr_name;
use cairn_proto as pb;
use tonic::{Request, Response};

pub(super) async fn get_xattr(
    ctx: &Ctx,
    req: Request<pb::GetXattrRequest>,
) -> Answer<pb::GetXattrReply> {
    let r = req.into_inner();
    checks::ino(r.ino, "ino")?;
    ctx.node.linearizable_read().await?;
    let value = ctx.node.fsm().xattr(r.ino, &r.name)?;
    Ok(Response::new(pb::GetXattrReply { value }))
}

pub(super) async fn list_xattr(
    ctx: &Ctx,
    req: Request<pb::ListXattrRequest>,
) -> Answer<pb::ListXattrReply> {
    let r = req.into_inner();
    checks::ino(r.ino, "ino")?;
    ctx.node.linearizable_read().await?;
    let names = ctx.node.fsm().xattr_names(r.ino)?;
    Ok(Response::new(pb::ListXattrReply { names }))
}

pub(super) async fn set_xattr(
    ctx: &Ctx,
    req: Request<pb::SetXattrRequest>,
) -> Answer<pb::SetXattrReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    checks::ino(r.ino, "ino")?;
    check_xattr_name(&r.name).map_err(MetaError::from)?;
    checks::xattr_value(&r.value)?;
    let cmd = Command::SetXattr(SetXattr {
        ino: r.ino,
        name: r.name,
        value: r.value,
        flags: r.flags,
        now: Time::now(),
    });
    ctx.write_empty(once(id, cmd)).await?;
    Ok(Response::new(pb::SetXattrReply {}))
}

pub(super) async fn remove_xattr(
    ctx: &Ctx,
    req: Request<pb::RemoveXattrRequest>,
) -> Answer<pb::RemoveXattrReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    checks::ino(r.ino, "ino")?;
    check_xattr_name(&r.name).map_err(MetaError::from)?;
    let cmd = Command::RemoveXattr(RemoveXattr {
        ino: r.ino,
        name: r.name,
        now: Time::now(),
    });
    ctx.write_empty(once(id, cmd)).await?;
    Ok(Response::new(pb::RemoveXattrReply {}))
}
