//! `ReplicateChunk`'s fetch: copy a chunk from another replica, verified against its id.
//!
//! The metadata cluster's repair names the chunk and the servers holding a copy. The sources are
//! tried in order with `GetChunk` (the whole chunk) through the shared
//! [`ChunkClients`] pool; the first answer whose bytes hash to the id wins. A source that is
//! down, lacks the chunk, reports it corrupt or sends bytes that fail the check is skipped for
//! the next one. Storing the fetched bytes is the service's job (the normal durable put).
use bytes::Bytes;
use cairn_common::chunk_client::ChunkClients;
use cairn_common::error::{status, ErrorKind};
use cairn_common::{ChunkId, CHUNK_SIZE};
use cairn_proto::GetChunkRequest;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most sources one request may name.
pub const MAX_SOURCES: usize = 8;
/// Longest source address accepted (a DNS name of 253 characters, a colon and a port).
const MAX_ADDR_LEN: usize = 260;

/// Why a replication failed. `From<ReplicateError> for tonic::Status` is the one mapping to
/// the wire.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error("no source given")]
    NoSources,
    #[error("{count} sources given; at most {MAX_SOURCES} are accepted")]
    TooManySources { count: usize },
    #[error("invalid source address {addr:?}: {reason}")]
    InvalidSource { addr: String, reason: &'static str },
    /// Every source sent bytes that do not hash to the id, or reported its copy corrupt.
    #[error("every source has a bad copy of chunk {id}: {tried}")]
    AllBad { id: ChunkId, tried: String },
    /// Every source answered that it does not hold the chunk.
    #[error("no source holds chunk {id}: {tried}")]
    NotHeld { id: ChunkId, tried: String },
    /// No good copy could be had now (sources down, or a mix of failures).
    #[error("no source returned a good copy of chunk {id}: {tried}")]
    NoGoodCopy { id: ChunkId, tried: String },
}

impl ReplicateError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReplicateError::NoSources
            | ReplicateError::TooManySources { .. }
            | ReplicateError::InvalidSource { .. } => ErrorKind::InvalidArgument,
            ReplicateError::AllBad { .. } => ErrorKind::Corrupt,
            ReplicateError::NotHeld { .. } => ErrorKind::NotFound,
            ReplicateError::NoGoodCopy { .. } => ErrorKind::Unavailable,
        }
    }
}

impl From<ReplicateError> for tonic::Status {
    fn from(e: ReplicateError) -> tonic::Status {
        status(e.kind(), e.to_string())
    }
}

/// Checks the source list: 1 to [`MAX_SOURCES`] addresses, each `host:port` (a DNS name, an
/// IPv4 address or a bracketed IPv6 address, and a port from 1 to 65535) — nothing that
/// could turn into another URL when put after `http://`.
pub fn validate_sources(sources: &[String]) -> Result<(), ReplicateError> {
    if sources.is_empty() {
        return Err(ReplicateError::NoSources);
    }
    if sources.len() > MAX_SOURCES {
        return Err(ReplicateError::TooManySources {
            count: sources.len(),
        });
    }
    for addr in sources {
        let invalid = |reason| ReplicateError::InvalidSource {
            addr: addr.chars().take(MAX_ADDR_LEN).collect(),
            reason,
        };
        if addr.len() > MAX_ADDR_LEN {
            return Err(invalid("too long"));
        }
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(invalid("expected host:port"));
        };
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err(invalid("the port must be a number from 1 to 65535")),
        }
        let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        };
        if !host_ok {
            return Err(invalid(
                "the host must be a name, an IPv4 address or an [IPv6] address",
            ));
        }
    }
    Ok(())
}

/// A verified copy and where it came from.
#[derive(Debug)]
pub struct Fetched {
    pub data: Bytes,
    pub source: String,
}

/// How one source failed.
enum Failure {
    /// Bytes that fail the id check, or the source's own `corrupt`.
    Bad,
    /// The source does not hold the chunk.
    NotHeld,
    /// Unreachable, or any other error.
    Other,
}

/// Fetches chunk `id` from the first of `sources` (already validated) that returns bytes
/// hashing to `id`. Every byte received is added to `received`, bad copies included.
pub async fn fetch_verified(
    clients: &ChunkClients,
    id: ChunkId,
    sources: &[String],
    received: &AtomicU64,
) -> Result<Fetched, ReplicateError> {
    let mut tried = Vec::new();
    let mut failures = Vec::new();
    for source in sources {
        let (failure, why) = match fetch_one(clients, id, source, received).await {
            Ok(data) => {
                return Ok(Fetched {
                    data,
                    source: source.clone(),
                })
            }
            Err(f) => f,
        };
        tracing::warn!(chunk = %id, %source, reason = %why, "replication source skipped");
        tried.push(format!("{source}: {why}"));
        failures.push(failure);
    }
    let tried = tried.join("; ");
    if failures.iter().all(|f| matches!(f, Failure::Bad)) {
        Err(ReplicateError::AllBad { id, tried })
    } else if failures.iter().all(|f| matches!(f, Failure::NotHeld)) {
        Err(ReplicateError::NotHeld { id, tried })
    } else {
        Err(ReplicateError::NoGoodCopy { id, tried })
    }
}

/// One `GetChunk` of the whole chunk from `source`, checked against `id`.
async fn fetch_one(
    clients: &ChunkClients,
    id: ChunkId,
    source: &str,
    received: &AtomicU64,
) -> Result<Bytes, (Failure, String)> {
    let mut client = clients
        .get(source)
        .map_err(|e| (Failure::Other, e.message().to_owned()))?;
    let req = GetChunkRequest {
        id: id.as_bytes().to_vec(),
        offset: 0,
        len: 0,
        with_block_cvs: false,
    };
    let reply = match client.get_chunk(req).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            let kind = ErrorKind::from_status(&e);
            let failure = match kind {
                ErrorKind::Corrupt => Failure::Bad,
                ErrorKind::NotFound => Failure::NotHeld,
                _ => Failure::Other,
            };
            return Err((failure, format!("{}: {}", kind.as_str(), e.message())));
        }
    };
    let data = reply.data;
    received.fetch_add(data.len() as u64, Ordering::Relaxed);
    if data.len() > CHUNK_SIZE || data.len() as u64 != reply.stored_len {
        return Err((
            Failure::Bad,
            format!(
                "sent {} bytes of a chunk it says is {} bytes",
                data.len(),
                reply.stored_len
            ),
        ));
    }
    // Hashing 4 MiB takes a few milliseconds: off the async threads.
    let hashed = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || ChunkId::of(&data)).await
    };
    match hashed {
        Ok(actual) if actual == id => Ok(data),
        Ok(actual) => Err((
            Failure::Bad,
            format!("sent bytes that hash to {actual}, not to the chunk id"),
        )),
        Err(e) => Err((Failure::Other, format!("hashing task failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_are_validated() {
        let ok =
            |s: &[&str]| validate_sources(&s.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        assert!(ok(&["127.0.0.1:7100"]).is_ok());
        assert!(ok(&["chunk-3.example.org:1", "[::1]:65535"]).is_ok());
        assert!(matches!(ok(&[]), Err(ReplicateError::NoSources)));
        assert!(matches!(
            ok(&["a:1"; 9]),
            Err(ReplicateError::TooManySources { count: 9 })
        ));
        for bad in [
            "nohost",
            ":7100",
            "host:",
            "host:0",
            "host:65536",
            "host:+80",
            "http://host:80",
            "host/path:80",
            "user@host:80",
            "[::1:80",
            "[nope]:80",
            "a b:80",
        ] {
            let e = ok(&["127.0.0.1:1", bad]).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
        }
        assert!(ok(&[&format!("{}:1", "a".repeat(300))]).is_err());
    }
}
