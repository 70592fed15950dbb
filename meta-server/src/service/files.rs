//! File data RPCs: where a file's chunks live (`GetChunks`), where new chunks go
//! (`PrepareWrite`, placed by the leader), the commit of a new version (`CommitWrite`), and
//! the capacity figures (`StatFs`).
use super::checks::{self, invalid, once, request_id, MAX_EXCLUDE_SERVERS, MAX_PREPARE_CHUNKS};
use super::convert;
use super::namespace::setattr_command;
use super::{Answer, Ctx};
use crate::command::{Batch, Command, CommitInline, CommitWrite, Time};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use cairn_common::CHUNK_SIZE;
use cairn_proto as pb;
use std::collections::HashMap;
use std::time::Instant;
use tonic::{Request, Response};

impl Ctx {
    /// Locations of `replicas`, servers that are up first (each group in the given order);
    /// only the up ones with `up_only`.
    fn locations(
        &self,
        replicas: &[u64],
        addrs: &HashMap<u64, String>,
        now: Instant,
        up_only: bool,
    ) -> Vec<pb::ChunkLocation> {
        let (up, down): (Vec<u64>, Vec<u64>) = replicas
            .iter()
            .partition(|id| self.leader.placement.is_up(**id, now));
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
}

pub(super) async fn get_chunks(
    ctx: &Ctx,
    req: Request<pb::GetChunksRequest>,
) -> Answer<pb::GetChunksReply> {
    let r = req.into_inner();
    checks::ino(r.ino, "ino")?;
    let max = checks::page_size(r.max_slots);
    ctx.node.linearizable_read().await?;
    let fsm = ctx.node.fsm();
    let page = fsm.slot_page(r.ino, r.first_slot, max)?;
    let addrs = ctx.leader.addrs(&fsm.servers()?);
    let now = Instant::now();
    let slots = page
        .slots
        .into_iter()
        .map(|s| pb::ChunkSlot {
            index: s.index,
            chunk: Some(convert::chunk_ref(&s.chunk)),
            locations: ctx.locations(&s.replicas, &addrs, now, false),
            inline_data: s.inline.map(Into::into),
        })
        .collect();
    let end_of_file = page.inode.size.div_ceil(CHUNK_SIZE as u64);
    Ok(Response::new(pb::GetChunksReply {
        attr: Some((&page.inode).into()),
        chunk_size: CHUNK_SIZE as u32,
        slots,
        more: page.next.is_some(),
        next_slot: page.next.unwrap_or(end_of_file.max(r.first_slot)),
    }))
}

pub(super) async fn prepare_write(
    ctx: &Ctx,
    req: Request<pb::PrepareWriteRequest>,
) -> Answer<pb::PrepareWriteReply> {
    let r = req.into_inner();
    checks::at_most(r.chunks.len(), MAX_PREPARE_CHUNKS, "chunks")?;
    checks::at_most(
        r.exclude_servers.len(),
        MAX_EXCLUDE_SERVERS,
        "servers to avoid",
    )?;
    let chunks = r
        .chunks
        .iter()
        .map(convert::slot_chunk)
        .collect::<Result<Vec<_>, _>>()?;
    // No read index here (it would cost a quorum round trip per file written): the answer is a
    // hint, and everything that matters is checked again when the `CommitWrite` entry is
    // applied. A slightly stale "already stored" is safe because chunk records are never
    // deleted here (a record with no references is only queued for GC and revived by a commit
    // that references it), and a commit of a chunk the state machine does not know with no
    // replicas is refused. A stale "not stored" only costs an upload. Placement needs the
    // leader's heartbeat table, so followers still answer not-leader.
    ctx.require_leader()?;
    let fsm = ctx.node.fsm();
    // Read before any placement: the ticket must not be newer than what this answer saw.
    let ticket = fsm.gc_epoch()?;
    let servers = fsm.servers()?;
    let addrs = ctx.leader.addrs(&servers);
    let now = Instant::now();
    let replication = ctx.cfg.replication.max(1) as usize;
    let quorum = ctx.cfg.commit_quorum();
    let mut placements = Vec::with_capacity(chunks.len());
    for c in &chunks {
        // Only referenced chunks count as stored: an unreferenced one may be collected at any
        // time, so the writer puts it again (a put of a stored chunk writes nothing and
        // protects the copy from a collection already under way). Suspect copies do not count
        // either: the writer's put verifies (or replaces) them, and its commit trusts them again.
        let held: Vec<u64> = fsm
            .chunk(&c.id)?
            .filter(|rec| rec.refs > 0 && rec.is_live())
            .map(|rec| rec.trusted())
            .unwrap_or_default();
        let existing = ctx.locations(&held, &addrs, now, true);
        let need = replication.saturating_sub(existing.len());
        let targets: Vec<pb::ChunkLocation> = ctx
            .leader
            .place_new_copies(need, &held, &servers, &r.exclude_servers)
            .into_iter()
            .map(|(server_id, addr)| pb::ChunkLocation { server_id, addr })
            .collect();
        // Too few places for a commit while the new leader may not have heard from every
        // server yet: make the client retry. Enough for a commit but fewer than R is fine
        // (repair adds the missing copy), so a server that is really down does not stall
        // writes for the whole warm-up.
        if existing.len() + targets.len() < quorum && ctx.leader.warming_up(now)? {
            return Err(MetaError::fs(
                ErrorKind::Unavailable,
                "new leader: still learning which chunk servers are up; retry",
            )
            .into());
        }
        if existing.is_empty() && targets.is_empty() {
            return Err(if ctx.leader.placement.up_servers(now).is_empty() {
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
        replication: ctx.cfg.replication,
        min_replication: quorum as u32,
    }))
}

pub(super) async fn commit_write(
    ctx: &Ctx,
    req: Request<pb::CommitWriteRequest>,
) -> Answer<pb::AttrReply> {
    let id = request_id(&req)?;
    let r = req.into_inner();
    checks::ino(r.ino, "ino")?;
    let size = checks::size(r.size)?;
    let mtime = r.mtime.as_ref().map(convert::time).transpose()?;
    if r.apply_upload && r.upload == 0 {
        return Err(invalid("apply_upload names no upload"));
    }
    let inline = checks::inline_chunks(&r.inline)?;
    let updates = checks::slot_updates(
        ctx.node.fsm(),
        ctx.cfg.commit_quorum(),
        &r.updates,
        Some(size),
        &inline,
    )?;
    let now = Time::now();
    let write = CommitWrite {
        ino: r.ino,
        base_version: r.base_version,
        size,
        updates,
        mtime,
        now,
        upload: r.upload,
        apply_upload: r.apply_upload,
        replace: r.replace,
    };
    let commit = if inline.is_empty() {
        Command::CommitWrite(write)
    } else {
        Command::CommitInline(CommitInline { write, inline })
    };
    let cmd = match &r.then_set_attr {
        None => commit,
        Some(a) => {
            if a.ino != r.ino || a.size.is_some() {
                return Err(invalid(
                    "then_set_attr must be of the same inode and must not change the size",
                ));
            }
            Command::Batch(Batch {
                cmds: vec![commit, Command::SetAttr(setattr_command(a, now)?)],
            })
        }
    };
    ctx.write_attr(once(id, cmd)).await
}

pub(super) async fn stat_fs(
    ctx: &Ctx,
    _req: Request<pb::StatFsRequest>,
) -> Answer<pb::StatFsReply> {
    ctx.node.linearizable_read().await?;
    let files = ctx.node.fsm().inode_count()?;
    let rep = u64::from(ctx.cfg.replication.max(1));
    let (mut total, mut free, mut used) = (0u64, 0u64, 0u64);
    for s in ctx.leader.placement.up_servers(Instant::now()) {
        total = total.saturating_add(s.load.capacity_bytes);
        free = free.saturating_add(s.load.free_bytes);
        used = used.saturating_add(s.load.used_bytes);
    }
    Ok(Response::new(pb::StatFsReply {
        total_bytes: total / rep,
        free_bytes: free / rep,
        used_bytes: used / rep,
        files,
        replication: ctx.cfg.replication,
    }))
}
