//! The namespace RPCs: lookups and attributes (reads after a read barrier), and the entry
//! changes (create, link, unlink, rmdir, rename, setattr), each proposed as one command. Entry
//! changes answer with the parent directory as it is after the change, so the mount can answer
//! the kernel's immediate re-read of it without a round trip.
use super::checks::{self, invalid, once, request_id, MAX_READDIR};
use super::convert::{self, attr_reply};
use super::{Answer, Ctx};
use crate::command::{
    Command, Create, Link, Rename, Reply, Rmdir, SetAttr, Time, Unlink, RENAME_EXCHANGE,
    RENAME_NOREPLACE,
};
use cairn_proto as pb;
use tonic::{Request, Response, Status};

/// The checked `SetAttr` command of a request (`now` stamps `*_now` times and the ctime).
pub(super) fn setattr_command(r: &pb::SetAttrRequest, now: Time) -> Result<SetAttr, Status> {
    checks::ino(r.ino, "ino")?;
    let stamp = |set_now: bool, t: &Option<pb::Timestamp>| match (set_now, t) {
        (true, _) => Ok(Some(now)),
        (false, Some(t)) => convert::time(t).map(Some),
        (false, None) => Ok(None),
    };
    Ok(SetAttr {
        ino: r.ino,
        // The kernel may pass the file-type bits along; only permission bits are ours.
        mode: r.mode.map(|m| m & 0o7777),
        uid: r.uid,
        gid: r.gid,
        size: r.size.map(checks::size).transpose()?,
        atime: stamp(r.atime_now, &r.atime)?,
        mtime: stamp(r.mtime_now, &r.mtime)?,
        now,
    })
}

/// The orphan an unlink or rename left (0: none).
fn orphan_of(r: Reply) -> Result<u64, Status> {
    match r {
        Reply::Unlinked { orphan } => Ok(orphan),
        Reply::Empty => Ok(0),
        other => Err(checks::unexpected(other)),
    }
}

/// `reply` with the directory `parent` as it is after the write that produced it.
fn with_parent(
    ctx: &Ctx,
    mut reply: Response<pb::AttrReply>,
    parent: u64,
) -> Response<pb::AttrReply> {
    reply.get_mut().parent = ctx.local_attr(parent);
    reply
}

pub(super) async fn lookup(ctx: &Ctx, req: Request<pb::LookupRequest>) -> Answer<pb::AttrReply> {
    let r = req.into_inner();
    checks::ino(r.parent, "parent")?;
    checks::name(&r.name)?;
    ctx.node.linearizable_read().await?;
    Ok(attr_reply(&ctx.node.fsm().lookup(r.parent, &r.name)?))
}

pub(super) async fn get_attr(ctx: &Ctx, req: Request<pb::GetAttrRequest>) -> Answer<pb::AttrReply> {
    let r = req.into_inner();
    checks::ino(r.ino, "ino")?;
    ctx.node.linearizable_read().await?;
    Ok(attr_reply(&ctx.node.fsm().get(r.ino)?))
}

pub(super) async fn set_attr(ctx: &Ctx, req: Request<pb::SetAttrRequest>) -> Answer<pb::AttrReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    let cmd = Command::SetAttr(setattr_command(&r, Time::now())?);
    ctx.write_attr(once(id, cmd)).await
}

pub(super) async fn create(ctx: &Ctx, req: Request<pb::CreateRequest>) -> Answer<pb::AttrReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    checks::ino(r.parent, "parent")?;
    checks::name(&r.name)?;
    let kind = convert::kind(r.kind)?;
    checks::symlink_target(kind, &r.symlink_target)?;
    let parent = r.parent;
    let cmd = Command::Create(Create {
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
    });
    let reply = ctx.write_attr(once(id, cmd)).await?;
    Ok(with_parent(ctx, reply, parent))
}

pub(super) async fn link(ctx: &Ctx, req: Request<pb::LinkRequest>) -> Answer<pb::AttrReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    checks::ino(r.ino, "ino")?;
    checks::ino(r.new_parent, "new_parent")?;
    checks::name(&r.new_name)?;
    let parent = r.new_parent;
    let cmd = Command::Link(Link {
        ino: r.ino,
        new_parent: r.new_parent,
        new_name: r.new_name,
        now: Time::now(),
    });
    let reply = ctx.write_attr(once(id, cmd)).await?;
    Ok(with_parent(ctx, reply, parent))
}

pub(super) async fn unlink(ctx: &Ctx, req: Request<pb::UnlinkRequest>) -> Answer<pb::UnlinkReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    checks::ino(r.parent, "parent")?;
    checks::name(&r.name)?;
    let keep = checks::keep(r.session, r.open_inodes)?;
    let parent = r.parent;
    let cmd = Command::Unlink(Unlink {
        parent: r.parent,
        name: r.name,
        now: Time::now(),
        keep,
    });
    let reply = ctx.node.write(once(id, cmd)).await?;
    Ok(Response::new(pb::UnlinkReply {
        orphan: orphan_of(reply)?,
        parent: ctx.local_attr(parent),
    }))
}

pub(super) async fn rmdir(ctx: &Ctx, req: Request<pb::RmdirRequest>) -> Answer<pb::UnlinkReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    checks::ino(r.parent, "parent")?;
    checks::name(&r.name)?;
    let parent = r.parent;
    let cmd = Command::Rmdir(Rmdir {
        parent: r.parent,
        name: r.name,
        now: Time::now(),
    });
    ctx.write_empty(once(id, cmd)).await?;
    Ok(Response::new(pb::UnlinkReply {
        orphan: 0,
        parent: ctx.local_attr(parent),
    }))
}

pub(super) async fn rename(ctx: &Ctx, req: Request<pb::RenameRequest>) -> Answer<pb::RenameReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    checks::ino(r.parent, "parent")?;
    checks::ino(r.new_parent, "new_parent")?;
    checks::name(&r.name)?;
    checks::name(&r.new_name)?;
    let known = RENAME_NOREPLACE | RENAME_EXCHANGE;
    if r.flags & !known != 0 || r.flags == known {
        return Err(invalid(format!("unsupported rename flags {:#x}", r.flags)));
    }
    let keep = checks::keep(r.session, r.open_inodes)?;
    let cmd = Command::Rename(Rename {
        parent: r.parent,
        name: r.name,
        new_parent: r.new_parent,
        new_name: r.new_name,
        flags: r.flags,
        now: Time::now(),
        keep,
    });
    let reply = ctx.node.write(once(id, cmd)).await?;
    Ok(Response::new(pb::RenameReply {
        orphan: orphan_of(reply)?,
    }))
}

pub(super) async fn readlink(
    ctx: &Ctx,
    req: Request<pb::ReadlinkRequest>,
) -> Answer<pb::ReadlinkReply> {
    let r = req.into_inner();
    checks::ino(r.ino, "ino")?;
    ctx.node.linearizable_read().await?;
    let target = ctx.node.fsm().readlink(r.ino)?;
    Ok(Response::new(pb::ReadlinkReply { target }))
}

pub(super) async fn read_dir(
    ctx: &Ctx,
    req: Request<pb::ReadDirRequest>,
) -> Answer<pb::ReadDirReply> {
    let r = req.into_inner();
    checks::ino(r.ino, "ino")?;
    if r.after.len() > cairn_common::name::NAME_MAX {
        return Err(invalid("`after` is longer than any name"));
    }
    let limit = match r.limit as usize {
        0 => MAX_READDIR,
        n => n.min(MAX_READDIR),
    };
    ctx.node.linearizable_read().await?;
    let page = ctx.node.fsm().readdir(r.ino, &r.after, limit)?;
    Ok(Response::new(pb::ReadDirReply {
        entries: page
            .entries
            .iter()
            .map(|(name, i)| pb::DirEntry {
                name: name.clone(),
                attr: Some(i.into()),
            })
            .collect(),
        eof: page.eof,
        dir: Some((&page.dir).into()),
        parent: page.dir.parent,
    }))
}
