//! The server side of Raft RPCs: the tonic `RaftService`, forwarding to the local [`Raft`].
//!
//! Requests are openraft types in the encoding of [`codec`]; the reply is the encoding of
//! `Result<Response, RaftError>`, so a Raft-level refusal reaches the caller's openraft as a
//! `RemoteError`. A payload that does not decode (another format, truncated, trailing bytes) is
//! refused with `INVALID_ARGUMENT` and changes nothing.
use crate::raft::codec;
use crate::raft::Raft;
use cairn_proto::raft_service_server::RaftService;
use cairn_proto::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

pub struct RaftServiceImpl {
    raft: Raft,
}

impl RaftServiceImpl {
    pub fn new(raft: Raft) -> RaftServiceImpl {
        RaftServiceImpl { raft }
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    codec::decode(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("malformed raft payload: {e}")))
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
        let rpc = decode(request)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}
