//! The client side of Raft RPCs: openraft's [`RaftNetworkFactory`] over the tonic `RaftService`.
//!
//! openraft's request and response types travel in [`RaftPayload::data`] in the binary encoding
//! of [`codec`]; the server (see [`crate::raft::service`]) answers with the encoding of
//! `Result<Response, RaftError>`. Transport failures become [`Unreachable`] (openraft then backs
//! off), deadlines become [`Timeout`], and an error the remote Raft returned becomes
//! [`RemoteError`]. An AppendEntries that would not fit in one gRPC message is not sent: it is
//! answered [`PayloadTooLarge`] so openraft retries at once with fewer entries (the log store's
//! byte-bounded reads normally keep it from ever happening).
use crate::raft::codec;
use crate::raft::{Node, NodeId, TypeConfig};
use cairn_proto::raft_service_client::RaftServiceClient;
use cairn_proto::RaftPayload;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// Largest snapshot chunk sent in one `InstallSnapshot` RPC: the chunk's bytes travel as they
/// are (plus the snapshot's meta), well below [`cairn_proto::MAX_MESSAGE_BYTES`].
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// Largest encoded Raft request sent: a gRPC message, less room for its framing.
const MAX_RPC_BYTES: usize = cairn_proto::MAX_MESSAGE_BYTES - 64 * 1024;

/// How long to wait between attempts to reach an unreachable peer.
const BACKOFF: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Creates [`NetworkClient`]s: one per replication stream, and one per read-index or election
/// round (openraft calls [`RaftNetworkFactory::new_client`] for every `ensure_linearizable`).
///
/// Clients of one peer share one cached [`Channel`] (one HTTP/2 connection, multiplexed), so a
/// read-index round costs one round trip on a warm connection instead of a TCP connect and an
/// HTTP/2 handshake per peer. Clones of the factory share the cache.
#[derive(Clone)]
pub struct NetworkFactory {
    /// This node's id, reported in timeouts.
    pub id: NodeId,
    /// Peer id → (address, channel). Replaced when a peer's address changes.
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
}

impl NetworkFactory {
    pub fn new(id: NodeId) -> NetworkFactory {
        NetworkFactory {
            id,
            channels: Arc::default(),
        }
    }

    /// The cached channel to `target` at `addr`, created (lazily connecting) on first use.
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        // No `.await` under this lock; a poisoned lock only means a panic elsewhere mid-insert.
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached_addr, ch)) = channels.get(&target) {
            if cached_addr == addr {
                return Ok(ch.clone());
            }
        }
        let ch = cairn_common::channel::endpoint(addr)
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_lazy();
        channels.insert(target, (addr.to_owned(), ch.clone()));
        Ok(ch)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = NetworkClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> NetworkClient {
        let channel = self.channel(target, &node.addr);
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

/// A client of one peer over the shared channel, which connects lazily and reconnects by
/// itself.
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
        let data = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send(action, data, ttl).await
    }

    /// Sends an encoded request and decodes the reply.
    async fn send<Resp, E>(
        &mut self,
        action: RPCTypes,
        data: Vec<u8>,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Msg(e.clone())))),
        };
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
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&resp.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

/// What to do with an encoded AppendEntries of `entries` entries and `bytes` bytes: `None` to
/// send it, else the error that makes openraft retry with fewer entries (or, for a single entry
/// too large for any message — which the proposal bound rules out — give up on this attempt).
fn too_large_append<E: std::error::Error>(
    entries: usize,
    bytes: usize,
) -> Option<RPCError<NodeId, Node, E>> {
    if bytes <= MAX_RPC_BYTES {
        return None;
    }
    tracing::warn!(
        entries,
        bytes,
        "AppendEntries too large for one message; sending fewer"
    );
    if entries > 1 {
        let hint = (entries / 2) as u64;
        return Some(RPCError::PayloadTooLarge(
            PayloadTooLarge::new_entries_hint(hint),
        ));
    }
    let e = Msg(format!(
        "one log entry of {bytes} bytes exceeds a Raft message"
    ));
    Some(RPCError::Network(NetworkError::new(&e)))
}

impl RaftNetwork<TypeConfig> for NetworkClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let data = codec::encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let Some(e) = too_large_append(rpc.entries.len(), data.len()) {
            return Err(e);
        }
        self.send(RPCTypes::AppendEntries, data, option.hard_ttl())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clients_of_one_peer_share_one_channel() {
        let mut f = NetworkFactory::new(1);
        let node = Node::new("127.0.0.1:1");
        for _ in 0..3 {
            f.new_client(2, &node).await;
            f.new_client(3, &Node::new("127.0.0.1:2")).await;
        }
        assert_eq!(f.channels.lock().unwrap().len(), 2, "one channel per peer");

        // A peer that moved gets a channel to its new address.
        f.new_client(2, &Node::new("127.0.0.1:3")).await;
        let channels = f.channels.lock().unwrap();
        assert_eq!(channels.len(), 2);
        assert_eq!(channels[&2].0, "127.0.0.1:3");
    }

    #[test]
    fn an_append_too_large_for_a_message_asks_for_fewer_entries() {
        assert!(too_large_append::<RaftError<NodeId>>(300, MAX_RPC_BYTES).is_none());
        match too_large_append::<RaftError<NodeId>>(300, MAX_RPC_BYTES + 1) {
            Some(RPCError::PayloadTooLarge(p)) => assert_eq!(p.entries_hint(), 150),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            too_large_append::<RaftError<NodeId>>(1, MAX_RPC_BYTES + 1),
            Some(RPCError::Network(_))
        ));
    }
}
