//! The one recipe for a gRPC connection from one Cairn process to another (mount → meta, mount →
//! chunk server, chunk server → meta, meta → chunk server, meta → meta for Raft).
//!
//! Besides the connect timeout, every connection is probed with HTTP/2 PINGs, busy or idle. A
//! peer that goes quiet without closing its connection — its packets dropped by a network
//! failure, its process stopped, its host gone — never answers a call either, and without the
//! probe each call waits out its own timeout, then often goes back to the same silent node. With
//! it, an unanswered PING closes the connection within [`KEEPALIVE_INTERVAL`] +
//! [`KEEPALIVE_TIMEOUT`]: every call on it fails as unavailable, and the caller moves on (the
//! meta client to another node, which names the new leader) as fast as after a `kill -9`.
use std::time::Duration;
use tonic::transport::Endpoint;

/// How long a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a connection is probed with an HTTP/2 PING.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long the PING's answer may take before the connection counts as dead. Long enough for a
/// loaded peer (PINGs are answered by its HTTP/2 layer, ahead of any queued data), short enough
/// that a silent leader is left behind in a few seconds.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// An endpoint for `addr` (`host:port`) with the connect timeout and the keepalive probe set.
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}
