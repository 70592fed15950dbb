//! The client side of Raft RPCs: openraft's [`RaftNetworkFactory`] over the tonic `RaftService`.
//!
//! openraft's request and response types travel as JSON in [`RaftPayload::data`]; the server (see
//! [`crate::raft_service`]) answers with the JSON of `Result<Response, RaftError>`. Transport
//! failures become [`Unreachable`] (openraft then backs off), deadlines become [`Timeout`], and an
//! error the remote Raft returned becomes [`RemoteError`].
use crate::types::{Node, NodeId, TypeConfig};
use cairn_proto::raft_service_client::RaftServiceClient;
use cairn_proto::RaftPayload;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Largest snapshot chunk sent in one `InstallSnapshot` RPC. JSON encodes each byte of the chunk
/// as up to 4 characters, so 2 MiB of data stays well below [`cairn_proto::MAX_MESSAGE_BYTES`].
pub const SNAPSHOT_CHUNK_BYTES: u64 = 2 * 1024 * 1024;

/// How long to wait between attempts to reach an unreachable peer.
const BACKOFF: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Creates one [`NetworkClient`] per replication target.
#[derive(Clone)]
pub struct NetworkFactory {
    /// This node's id, reported in timeouts.
    pub id: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = NetworkClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> NetworkClient {
        let channel = Endpoint::from_shared(format!("http://{}", node.addr))
            .map(|ep| {
                ep.connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy()
            })
            .map_err(|e| e.to_string());
        if let Err(e) = &channel {
            tracing::error!(target_node = target, addr = %node.addr, error = %e, "bad peer address");
        }
        NetworkClient {
            id: self.id,
            target,
            node: node.clone(),
            client: channel.map(|c| {
                RaftServiceClient::new(c)
                    .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
            }),
        }
    }
}

/// The connection to one peer. The channel connects lazily and reconnects by itself.
pub struct NetworkClient {
    id: NodeId,
    target: NodeId,
    node: Node,
    client: Result<RaftServiceClient<Channel>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl NetworkClient {
    async fn call<Req, Resp, E>(
        &mut self,
        action: RPCTypes,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Msg(e.clone())))),
        };
        let data = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let payload = RaftPayload { data: data.into() };
        let fut = async move {
            let mut client = client;
            match action {
                RPCTypes::AppendEntries => client.append_entries(payload).await,
                RPCTypes::Vote => client.vote(payload).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(payload).await,
            }
        };
        let resp = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout: ttl,
                }))
            }
            Ok(Err(status)) => {
                tracing::debug!(target_node = self.target, %status, "raft rpc failed");
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Ok(Ok(resp)) => resp.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&resp.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for NetworkClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(RPCTypes::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RPCTypes::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(BACKOFF))
    }
}
