//! Chunk servers and the replicas they hold: registration (`RegisterChunkServer`), draining
//! (`SetDraining`), and the replica list of each chunk as reports, repair and verification
//! change it (`SuspectReplica`, `AddReplica`, `RemoveReplica`, `DropReplica`).
//!
//! A report of a bad copy (`ReportBadReplica`, which anyone able to reach the meta service can
//! send) only marks the copy *suspect*; only its own server's verification, asked by repair,
//! drops it. So reports alone never delist the copies of a chunk whose bytes are intact.
use super::schema::{decode_json, decode_u64, fs_err, Counter, CF_REPAIR, CF_SERVERS};
use super::tx::Tx;
use super::Fsm;
use crate::command::{
    AddReplica, CommandResult, DropReplica, FsError, RegisterChunkServer, RemoveReplica, Reply,
    SetDraining, SuspectReplica, Time,
};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;
use cairn_common::ChunkId;
use serde::{Deserialize, Serialize};

/// A registered chunk server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServerRecord {
    pub id: u64,
    pub uuid: String,
    pub addr: String,
    /// Set by `cairn chunk drain`: the server gets no new chunks and repair moves its replicas
    /// to other servers, then removes them here.
    #[serde(default)]
    pub draining: bool,
}

fn id_key(id: u64) -> Vec<u8> {
    let mut k = vec![b'i'];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn uuid_key(uuid: &str) -> Vec<u8> {
    let mut k = vec![b'u'];
    k.extend_from_slice(uuid.as_bytes());
    k
}

fn unknown_chunk(id: &ChunkId) -> FsError {
    fs_err(ErrorKind::NotFound, format!("unknown chunk {id}"))
}

impl Fsm {
    /// Every registered chunk server, by id.
    pub fn servers(&self) -> Result<Vec<ServerRecord>, MetaError> {
        let mut out = Vec::new();
        for item in self.iter_prefix(CF_SERVERS, b"i", b"i")? {
            let (_, v) = item?;
            out.push(decode_json(&v)?);
        }
        Ok(out)
    }

    pub fn server(&self, id: u64) -> Result<Option<ServerRecord>, MetaError> {
        Ok(self
            .raw_get(CF_SERVERS, &id_key(id))?
            .map(|v| decode_json(&v))
            .transpose()?)
    }

    /// Chunks that lost a replica (a copy failed verification), with the time of the latest
    /// loss, until repair lists a new copy (`AddReplica`). Shown by fsck as corrupt copies
    /// still waiting for repair; the repair worker itself works from the full chunk table.
    pub fn repair_queue(&self) -> Result<Vec<(ChunkId, Time)>, MetaError> {
        self.time_queue(CF_REPAIR)
    }
}

impl Tx<'_> {
    fn server(&mut self, id: u64) -> Result<Option<ServerRecord>, FsError> {
        self.kv_get_json(CF_SERVERS, &id_key(id))
    }

    /// `InvalidArgument` unless `server` is a registered chunk server.
    fn require_registered(&mut self, server: u64) -> Result<(), FsError> {
        if self.server(server)?.is_none() {
            return Err(fs_err(
                ErrorKind::InvalidArgument,
                format!("chunk server {server} is not registered"),
            ));
        }
        Ok(())
    }
}

impl RegisterChunkServer {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        if self.uuid.is_empty() || self.addr.is_empty() {
            return Err(fs_err(
                ErrorKind::InvalidArgument,
                "chunk server uuid and address must be non-empty",
            ));
        }
        let id = match tx.kv_get(CF_SERVERS, &uuid_key(&self.uuid))? {
            Some(v) => decode_u64(&v)?,
            None => {
                let id = tx.counter(Counter::NextServerId)?.max(1);
                tx.set_counter(Counter::NextServerId, id + 1);
                tx.kv_put(
                    CF_SERVERS,
                    uuid_key(&self.uuid),
                    Some(id.to_be_bytes().to_vec()),
                );
                id
            }
        };
        // A re-registration (restart, new address) keeps the drain flag.
        let draining = tx.server(id)?.is_some_and(|r| r.draining);
        let rec = ServerRecord {
            id,
            uuid: self.uuid.clone(),
            addr: self.addr.clone(),
            draining,
        };
        tx.kv_put_json(CF_SERVERS, id_key(id), &rec);
        Ok(Reply::ServerId(id))
    }
}

impl SetDraining {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let Some(mut rec) = tx.server(self.server)? else {
            return Err(fs_err(
                ErrorKind::NotFound,
                format!("chunk server {} is not registered", self.server),
            ));
        };
        rec.draining = self.draining;
        tx.kv_put_json(CF_SERVERS, id_key(self.server), &rec);
        Ok(Reply::Empty)
    }
}

impl AddReplica {
    /// Lists `server` as holding `id` (repair stored a verified copy there). A chunk that no
    /// longer exists is `NotFound`: the copy is then garbage on that server.
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let (id, server) = (self.id, self.server);
        tx.require_registered(server)?;
        let mut rec = tx.chunk(&id)?.ok_or_else(|| unknown_chunk(&id))?;
        let mut changed = rec.is_suspect(server);
        rec.suspect.retain(|s| *s != server);
        if let Err(pos) = rec.replicas.binary_search(&server) {
            rec.replicas.insert(pos, server);
            changed = true;
        }
        // The repair entry stays while another copy is still suspect (fsck counts it).
        if rec.suspect.is_empty() {
            tx.set_repair(id, None);
        }
        if changed {
            tx.set_chunk(id, Some(rec));
        }
        Ok(Reply::Empty)
    }
}

impl RemoveReplica {
    /// Stops listing `server`'s surplus copy of `id`. Never removes the last listed replica.
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let (id, server) = (self.id, self.server);
        let mut rec = tx.chunk(&id)?.ok_or_else(|| unknown_chunk(&id))?;
        if rec.replicas.binary_search(&server).is_err() {
            return Ok(Reply::Empty);
        }
        if rec.trusted().iter().all(|s| *s == server) {
            return Err(fs_err(
                ErrorKind::Conflict,
                format!("server {server} holds the only trusted replica of chunk {id}"),
            ));
        }
        rec.unlist(server);
        tx.set_chunk(id, Some(rec));
        Ok(Reply::Empty)
    }
}

impl SuspectReplica {
    /// Marks `server`'s listed copy of `id` suspect and queues the chunk for repair, which asks
    /// the server to verify it. Idempotent; a server that is not listed changes nothing.
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let (id, server) = (self.id, self.server);
        tx.require_registered(server)?;
        let mut rec = tx.chunk(&id)?.ok_or_else(|| unknown_chunk(&id))?;
        if rec.replicas.binary_search(&server).is_err() {
            return Ok(Reply::Empty);
        }
        if let Err(pos) = rec.suspect.binary_search(&server) {
            rec.suspect.insert(pos, server);
            tx.set_chunk(id, Some(rec));
        }
        tx.set_repair(id, Some(self.now));
        Ok(Reply::Empty)
    }
}

impl DropReplica {
    /// Stops listing `server` as a replica of `id`: its own server found the copy corrupt or
    /// absent. Idempotent: a server that is not (or no longer) listed changes nothing. Never
    /// removes the chunk record nor touches its reference count: files still reference the
    /// chunk, and the other replicas (or repair) still serve it.
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let (id, server) = (self.id, self.server);
        tx.require_registered(server)?;
        let mut rec = tx.chunk(&id)?.ok_or_else(|| unknown_chunk(&id))?;
        if !rec.unlist(server) {
            return Ok(Reply::Empty);
        }
        if rec.replicas.is_empty() {
            tracing::error!(chunk = %id, server, "chunk lost its last listed replica");
        }
        tx.set_chunk(id, Some(rec));
        // Hook for repair: the chunk is now below its replication factor.
        tx.set_repair(id, Some(self.now));
        Ok(Reply::Empty)
    }
}
