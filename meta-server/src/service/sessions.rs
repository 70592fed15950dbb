//! Mount-session RPCs: sessions (open, renew, close), their orphans (release at last close),
//! and the advisory locks they own (set, test, release).
use super::checks::{self, once, request_id};
use super::convert;
use super::{Answer, Ctx};
use crate::command::{
    CloseSession, Command, OpenSession, ReleaseLocks, ReleaseOrphan, RenewSession, Reply, SetLock,
    Time,
};
use cairn_proto as pb;
use tonic::{Request, Response};

pub(super) async fn open_session(
    ctx: &Ctx,
    req: Request<pb::OpenSessionRequest>,
) -> Answer<pb::OpenSessionReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    checks::session_origin(&r.host, &r.mountpoint)?;
    let cmd = Command::OpenSession(OpenSession {
        host: r.host,
        mountpoint: r.mountpoint,
        pid: r.pid,
        now: Time::now(),
    });
    match ctx.node.write(once(id, cmd)).await? {
        Reply::Session(session) => Ok(Response::new(pb::OpenSessionReply {
            session,
            ttl_ms: ctx.cfg.session_ttl.as_millis() as u64,
        })),
        other => Err(checks::unexpected(other)),
    }
}

pub(super) async fn renew_session(
    ctx: &Ctx,
    req: Request<pb::RenewSessionRequest>,
) -> Answer<pb::RenewSessionReply> {
    let session = checks::session(req.into_inner().session)?;
    let cmd = Command::RenewSession(RenewSession {
        session,
        now: Time::now(),
    });
    ctx.write_empty(cmd).await?;
    Ok(Response::new(pb::RenewSessionReply {}))
}

pub(super) async fn close_session(
    ctx: &Ctx,
    req: Request<pb::CloseSessionRequest>,
) -> Answer<pb::CloseSessionReply> {
    let session = checks::session(req.into_inner().session)?;
    let cmd = Command::CloseSession(CloseSession {
        session,
        idle_through: None,
        now: Time::now(),
    });
    ctx.write_empty(cmd).await?;
    Ok(Response::new(pb::CloseSessionReply {}))
}

pub(super) async fn release_orphan(
    ctx: &Ctx,
    req: Request<pb::ReleaseOrphanRequest>,
) -> Answer<pb::ReleaseOrphanReply> {
    let r = req.into_inner();
    let session = checks::session(r.session)?;
    checks::ino(r.ino, "ino")?;
    let cmd = Command::ReleaseOrphan(ReleaseOrphan {
        session,
        ino: r.ino,
        now: Time::now(),
    });
    ctx.write_empty(cmd).await?;
    Ok(Response::new(pb::ReleaseOrphanReply {}))
}

pub(super) async fn set_lock(
    ctx: &Ctx,
    req: Request<pb::SetLockRequest>,
) -> Answer<pb::SetLockReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    checks::ino(r.ino, "ino")?;
    let cmd = Command::SetLock(SetLock {
        ino: r.ino,
        session: checks::session(r.session)?,
        owner: r.owner,
        lock: convert::lock_range(r.lock)?,
    });
    ctx.write_empty(once(id, cmd)).await?;
    Ok(Response::new(pb::SetLockReply {}))
}

pub(super) async fn get_lock(
    ctx: &Ctx,
    req: Request<pb::GetLockRequest>,
) -> Answer<pb::GetLockReply> {
    let r = req.into_inner();
    checks::ino(r.ino, "ino")?;
    let want = convert::lock_range(r.lock)?;
    ctx.node.linearizable_read().await?;
    let conflict = ctx
        .node
        .fsm()
        .lock_conflict(r.ino, r.session, r.owner, &want)?;
    Ok(Response::new(pb::GetLockReply {
        lock: Some(convert::lock_answer(conflict, &want)),
    }))
}

pub(super) async fn release_locks(
    ctx: &Ctx,
    req: Request<pb::ReleaseLocksRequest>,
) -> Answer<pb::ReleaseLocksReply> {
    let r = req.into_inner();
    checks::ino(r.ino, "ino")?;
    let cmd = Command::ReleaseLocks(ReleaseLocks {
        ino: r.ino,
        session: checks::session(r.session)?,
        owner: r.owner,
    });
    ctx.write_empty(cmd).await?;
    Ok(Response::new(pb::ReleaseLocksReply {}))
}
