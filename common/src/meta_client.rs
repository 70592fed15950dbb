//! A client for the metadata cluster that finds the Raft leader by itself.
//!
//! Give it every meta node's address. Each call goes to the node believed to be the leader; a
//! follower's `NotLeader` answer redirects it to the leader the follower names, and an
//! unreachable node or an election in progress makes it try the next node after a short
//! backoff, until [`MetaClient::retry_for`] has passed. Callers therefore see a leader change as
//! a pause, not an error.
//!
//! Retrying is safe for reads. For mutations, a retry happens only when the request was refused
//! (`NotLeader`), the node could not be reached, or its connection broke mid-call (the leader
//! was killed). In the last case the mutation may have been applied before the reply was lost,
//! so the retry may see its own effect: `CommitWrite` resolves that by comparing contents (see
//! the FUSE client's writer).
//!
//! Every call carries a request id (`cairn-request-id`: this client's random id and a sequence
//! number) that stays the same on every retry of that call. The meta cluster remembers the
//! result of each mutation by its id, so a mutation whose reply was lost is not applied twice:
//! its retry gets the first result (exactly-once namespace operations across a leader failure).
use crate::error::{leader_hint, ErrorKind};
use cairn_proto::meta_service_client::MetaServiceClient;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Status;

/// The longest pause between two attempts of a call. While the cluster elects a new leader
/// (a few hundred ms) every attempt fails fast (connection refused, or not-leader without a
/// leader named); a longer pause would be added, whole, to the time the caller waits after the
/// new leader is there. An attempt costs one small RPC, so 10 a second per waiting call is cheap.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// The gRPC metadata key of a call's request id.
pub const REQUEST_ID_KEY: &str = "cairn-request-id";

/// The client type [`MetaClient::call`] hands to its closure: the meta service, with the
/// current call's request id attached to every request.
pub type MetaRpc =
    MetaServiceClient<InterceptedService<Channel, fn(tonic::Request<()>) -> RequestResult>>;
type RequestResult = Result<tonic::Request<()>, Status>;

tokio::task_local! {
    /// The id of the logical call in progress on this task (set by [`MetaClient::call`]).
    static REQUEST_ID: (u64, u64);
}

/// `(client, seq)` as the header value: 32 hex digits.
pub fn format_request_id(id: (u64, u64)) -> String {
    format!("{:016x}{:016x}", id.0, id.1)
}

/// Parses a `cairn-request-id` value; `None` if it is not 32 hex digits.
pub fn parse_request_id(v: &str) -> Option<(u64, u64)> {
    if v.len() != 32 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let client = u64::from_str_radix(&v[..16], 16).ok()?;
    let seq = u64::from_str_radix(&v[16..], 16).ok()?;
    Some((client, seq))
}

/// Adds the current call's request id (if any) to an outgoing request.
fn add_request_id(mut req: tonic::Request<()>) -> RequestResult {
    if let Ok(id) = REQUEST_ID.try_with(|id| *id) {
        if let Ok(v) = format_request_id(id).parse() {
            req.metadata_mut().insert(REQUEST_ID_KEY, v);
        }
    }
    Ok(req)
}

#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<Inner>,
}

struct Inner {
    addrs: Vec<String>,
    /// Where calls go first: the last node that answered as leader, or a node's hint.
    leader: Mutex<Option<String>>,
    /// The node whose last attempt found it unreachable or silent: the next node tried without
    /// a leader known is another one, so a call never goes straight back to a dead leader.
    avoid: Mutex<Option<String>>,
    channels: Mutex<HashMap<String, Channel>>,
    next: Mutex<usize>,
    retry_for: Duration,
    rpc_timeout: Duration,
    /// Random per client: with `seq`, makes request ids unique across clients.
    client_id: u64,
    seq: AtomicU64,
}

impl MetaClient {
    /// A client for the cluster whose nodes listen at `addrs` (`host:port`). Connections are made
    /// lazily; this never fails on an unreachable node.
    pub fn new(addrs: Vec<String>) -> MetaClient {
        MetaClient::with_timeouts(addrs, Duration::from_secs(30), Duration::from_secs(10))
    }

    /// Like [`MetaClient::new`]: `retry_for` bounds how long one call keeps looking for a leader,
    /// `rpc_timeout` bounds one attempt.
    pub fn with_timeouts(addrs: Vec<String>, retry_for: Duration, rpc_timeout: Duration) -> Self {
        MetaClient {
            inner: Arc::new(Inner {
                addrs,
                leader: Mutex::new(None),
                avoid: Mutex::new(None),
                channels: Mutex::new(HashMap::new()),
                next: Mutex::new(0),
                retry_for,
                rpc_timeout,
                client_id: rand::random(),
                seq: AtomicU64::new(1),
            }),
        }
    }

    /// Parses a comma-separated address list (`a:1,b:2`).
    pub fn from_list(list: &str) -> MetaClient {
        MetaClient::new(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    pub fn addrs(&self) -> &[String] {
        &self.inner.addrs
    }

    /// A client connected to one specific node (no leader following), e.g. for status queries.
    pub fn node(&self, addr: &str) -> Result<MetaRpc, Status> {
        self.client_for(addr)
    }

    fn client_for(&self, addr: &str) -> Result<MetaRpc, Status> {
        let mut chans = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let ch = match chans.get(addr) {
            Some(ch) => ch.clone(),
            None => {
                let ch = crate::channel::endpoint(addr)
                    .map_err(|e| {
                        crate::error::status(
                            ErrorKind::InvalidArgument,
                            format!("bad meta address {addr:?}: {e}"),
                        )
                    })?
                    .timeout(self.inner.rpc_timeout)
                    .connect_lazy();
                chans.insert(addr.to_owned(), ch.clone());
                ch
            }
        };
        let intercept: fn(tonic::Request<()>) -> RequestResult = add_request_id;
        Ok(MetaServiceClient::with_interceptor(ch, intercept)
            .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES))
    }

    fn pick(&self) -> Option<String> {
        if let Some(l) = self
            .inner
            .leader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Some(l);
        }
        if self.inner.addrs.is_empty() {
            return None;
        }
        let avoid = self
            .inner
            .avoid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut n = self.inner.next.lock().unwrap_or_else(|e| e.into_inner());
        let mut a = self.inner.addrs[*n % self.inner.addrs.len()].clone();
        *n = n.wrapping_add(1);
        if avoid.as_ref() == Some(&a) && self.inner.addrs.len() > 1 {
            a = self.inner.addrs[*n % self.inner.addrs.len()].clone();
            *n = n.wrapping_add(1);
        }
        Some(a)
    }

    fn set_avoid(&self, a: Option<String>) {
        *self.inner.avoid.lock().unwrap_or_else(|e| e.into_inner()) = a;
    }

    fn set_leader(&self, l: Option<String>) {
        *self.inner.leader.lock().unwrap_or_else(|e| e.into_inner()) = l;
    }

    /// Runs `f` against the leader, following redirects and retrying while the cluster has no
    /// reachable leader. Errors other than "not leader" and "unreachable" are returned as is.
    ///
    /// ```no_run
    /// # async fn example(meta: cairn_common::MetaClient) -> Result<(), tonic::Status> {
    /// use cairn_proto::GetAttrRequest;
    /// let ino = cairn_common::ROOT_INO;
    /// let reply = meta
    ///     .call(|mut c| async move { c.get_attr(GetAttrRequest { ino }).await })
    ///     .await?;
    /// println!("{:?}", reply.attr);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(MetaRpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let id = (
            self.inner.client_id,
            self.inner.seq.fetch_add(1, Ordering::Relaxed),
        );
        REQUEST_ID.scope(id, self.call_with_retries(f)).await
    }

    async fn call_with_retries<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(MetaRpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.inner.retry_for;
        let mut backoff = Duration::from_millis(20);
        let mut redirects = 0u32;
        loop {
            let Some(addr) = self.pick() else {
                return Err(crate::error::status(
                    ErrorKind::InvalidArgument,
                    "no meta server addresses configured",
                ));
            };
            let client = self.client_for(&addr)?;
            let status = match f(client).await {
                Ok(resp) => {
                    self.set_avoid(None);
                    self.set_leader(Some(addr));
                    return Ok(resp.into_inner());
                }
                Err(status) => status,
            };
            match ErrorKind::from_status(&status) {
                ErrorKind::NotLeader => {
                    let hint = leader_hint(&status).filter(|h| *h != addr);
                    let redirected = hint.is_some();
                    self.set_leader(hint);
                    // A named leader: go there at once, but never bounce between stale hints
                    // without backing off.
                    if redirected && redirects < 3 {
                        redirects += 1;
                        continue;
                    }
                }
                ErrorKind::Unavailable => {
                    self.set_leader(None);
                    self.set_avoid(Some(addr.clone()));
                }
                _ => return Err(status),
            }
            redirects = 0;
            tracing::debug!(%addr, error = %status.message(), "meta call retrying");
            if Instant::now() + backoff > deadline {
                return Err(crate::error::status(
                    ErrorKind::Unavailable,
                    format!(
                        "metadata cluster unavailable after {:?}: {}",
                        self.inner.retry_for,
                        status.message()
                    ),
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_round_trip_and_bad_ones_are_refused() {
        let id = (0xdead_beef_0000_0001, 42);
        assert_eq!(parse_request_id(&format_request_id(id)), Some(id));
        for bad in ["", "xyz", &"0".repeat(31), &"g".repeat(32), &"0".repeat(33)] {
            assert_eq!(parse_request_id(bad), None, "{bad:?}");
        }
    }

    /// After a node failed (unreachable, or silent until its connection was closed), the next
    /// node tried is another one: a call never goes straight back to a dead leader.
    #[test]
    fn a_node_that_just_failed_is_not_tried_again_first() {
        let c = MetaClient::new(vec!["a:1".into(), "b:1".into(), "c:1".into()]);
        c.set_avoid(Some("a:1".into()));
        for _ in 0..6 {
            assert_ne!(c.pick().as_deref(), Some("a:1"));
        }
        c.set_avoid(None);
        let all: std::collections::BTreeSet<String> = (0..3).filter_map(|_| c.pick()).collect();
        assert_eq!(all.len(), 3, "round robin over every node again");
        c.set_leader(Some("a:1".into()));
        c.set_avoid(Some("a:1".into()));
        assert_eq!(c.pick().as_deref(), Some("a:1"), "a named leader is tried");
    }

    /// Every attempt of one call carries the call's id (set once, around the retry loop);
    /// outside a call nothing is added.
    #[tokio::test]
    async fn the_call_id_is_attached_to_every_attempt() {
        let id = (7, 9);
        let (a, b) = REQUEST_ID
            .scope(id, async {
                let a = add_request_id(tonic::Request::new(())).unwrap();
                let b = add_request_id(tonic::Request::new(())).unwrap();
                (a, b)
            })
            .await;
        for r in [a, b] {
            let v = r.metadata().get(REQUEST_ID_KEY).unwrap().to_str().unwrap();
            assert_eq!(parse_request_id(v), Some(id));
        }
        let outside = add_request_id(tonic::Request::new(())).unwrap();
        assert!(outside.metadata().get(REQUEST_ID_KEY).is_none());

        // Two calls of one client get different ids.
        let c = MetaClient::new(vec![]);
        let first = c.inner.seq.load(Ordering::Relaxed);
        let _ = c
            .call(|mut m| async move { m.stat_fs(cairn_proto::StatFsRequest {}).await })
            .await;
        let _ = c
            .call(|mut m| async move { m.stat_fs(cairn_proto::StatFsRequest {}).await })
            .await;
        assert_eq!(c.inner.seq.load(Ordering::Relaxed), first + 2);
    }
}
