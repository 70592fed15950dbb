//! The server side of Raft RPCs: the tonic `RaftService`, forwarding to the local [`Raft`].
//!
//! Requests are openraft types in the encoding of [`codec`]; the reply is the encoding of
//! `Result<Response, RaftError>`, so a Raft-level refusal reaches the caller's openraft as a
//! `RemoteError`. A payload that does not decode (another format, truncated, trailing bytes) is
//! refused with `INVALID_ARGUMENT` and changes nothing, and so is one naming a term or a log
//! index no real cluster reaches ([`MAX_PLAUSIBLE`]), or one that names this very node as its
//! sender (see [`RaftServiceImpl::not_from_self`]).
use crate::raft::codec;
use crate::raft::{LogId, NodeId, Raft, TypeConfig, Vote};
use cairn_proto::raft_service_server::RaftService;
use cairn_proto::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

pub struct RaftServiceImpl {
    /// This node's id.
    id: NodeId,
    raft: Raft,
}

impl RaftServiceImpl {
    pub fn new(id: NodeId, raft: Raft) -> RaftServiceImpl {
        RaftServiceImpl { id, raft }
    }

    /// Refuses a request whose vote names this node itself as the leader or candidate that
    /// sent it. openraft never sends a node its own RPCs, so such a request is forged — and it
    /// is easy to forge: a leader's term and id are public (ClusterStatus). openraft took an
    /// AppendEntries carrying the leader's own vote as one from its leader and appended the
    /// entries to its log, right among its own: one request put an arbitrary command into the
    /// replicated state (it was applied), and the leader's next write of its own never
    /// completed.
    fn not_from_self(&self, vote: &Vote) -> Result<(), Status> {
        if vote.leader_id.node_id == self.id {
            return Err(Status::invalid_argument(format!(
                "raft request refused: it names this node ({}) as its sender",
                self.id
            )));
        }
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    codec::decode(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("malformed raft payload: {e}")))
}

/// The largest term and log index a peer may name: an election or an entry every microsecond
/// would take 2000 years to get here. One forged request carrying a term near `u64::MAX` would
/// otherwise be persisted as the node's vote, and openraft's next `term + 1` overflows (a panic
/// under the release profile's overflow checks) on every start: the node, and with it the
/// cluster, never elects a leader again.
pub const MAX_PLAUSIBLE: u64 = 1 << 56;

impl RaftServiceImpl {
    /// The door every Raft request passes before openraft sees it: its vote must not name this
    /// node as the sender, and no term or index in it may be implausible.
    fn admit<'a>(
        &self,
        vote: &Vote,
        log_ids: impl IntoIterator<Item = &'a LogId>,
    ) -> Result<(), Status> {
        self.not_from_self(vote)?;
        plausible(vote, log_ids)
    }
}

/// Refuses a request that names an implausible term or index (see [`MAX_PLAUSIBLE`]).
fn plausible<'a>(vote: &Vote, log_ids: impl IntoIterator<Item = &'a LogId>) -> Result<(), Status> {
    let bad = |what: &str, v: u64| {
        Status::invalid_argument(format!(
            "raft request refused: {what} {v} is beyond any real cluster's (max {MAX_PLAUSIBLE})"
        ))
    };
    if vote.leader_id.term > MAX_PLAUSIBLE {
        return Err(bad("term", vote.leader_id.term));
    }
    for id in log_ids {
        if id.leader_id.term > MAX_PLAUSIBLE {
            return Err(bad("log term", id.leader_id.term));
        }
        if id.index > MAX_PLAUSIBLE {
            return Err(bad("log index", id.index));
        }
    }
    Ok(())
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data =
        codec::encode(value).map_err(|e| Status::internal(format!("encode raft reply: {e}")))?;
    Ok(Response::new(RaftPayload { data: data.into() }))
}

#[tonic::async_trait]
impl RaftService for RaftServiceImpl {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> = decode(request)?;
        let ids = rpc.prev_log_id.iter().chain(&rpc.leader_commit);
        self.admit(&rpc.vote, ids.chain(rpc.entries.iter().map(|e| &e.log_id)))?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: openraft::raft::VoteRequest<NodeId> = decode(request)?;
        self.admit(&rpc.vote, &rpc.last_log_id)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: openraft::raft::InstallSnapshotRequest<TypeConfig> = decode(request)?;
        self.admit(&rpc.vote, &rpc.meta.last_log_id)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}
