//! Error kinds that cross process boundaries.
//!
//! Every failing RPC carries a gRPC status whose metadata key `cairn-error` names an
//! [`ErrorKind`]. Servers build statuses with [`status`] (or [`not_leader`]); clients read the
//! kind back with [`ErrorKind::from_status`] and, in the FUSE client, turn it into an errno with
//! [`ErrorKind::errno`] — the one place that mapping lives.
use std::error::Error as _;
use tonic::{Code, Status};

/// Metadata key carrying the error kind.
pub const ERROR_KEY: &str = "cairn-error";
/// Metadata key carrying the current leader's address on `NotLeader`.
pub const LEADER_KEY: &str = "cairn-leader";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// No such name (ENOENT).
    NotFound,
    /// The inode a call addresses by number no longer exists (ESTALE): the caller holds a
    /// stale handle, e.g. the kernel's cached entry of a file that a rename replaced. Kept apart
    /// from `NotFound` because the kernel retries a path walk on `ESTALE` (looking the name up
    /// again), not on `ENOENT`.
    Stale,
    AlreadyExists,
    NotEmpty,
    NotDir,
    IsDir,
    NameTooLong,
    InvalidArgument,
    /// The inode changed since the version a writer started from.
    Conflict,
    /// This meta node is not the Raft leader.
    NotLeader,
    NoSpace,
    /// Stored data failed its checksum.
    Corrupt,
    /// Not enough servers are reachable to do this now.
    Unavailable,
    PermissionDenied,
    NotPermitted,
    TooManyLinks,
    NotSupported,
    Io,
    Internal,
    /// A conflicting lock is held (EAGAIN).
    WouldBlock,
    /// No such extended attribute (ENODATA).
    NoData,
    /// A value does not fit the caller's buffer or a name is too long (ERANGE).
    OutOfRange,
    /// A value is larger than allowed (E2BIG).
    TooBig,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 23] = [
        ErrorKind::NotFound,
        ErrorKind::Stale,
        ErrorKind::AlreadyExists,
        ErrorKind::NotEmpty,
        ErrorKind::NotDir,
        ErrorKind::IsDir,
        ErrorKind::NameTooLong,
        ErrorKind::InvalidArgument,
        ErrorKind::Conflict,
        ErrorKind::NotLeader,
        ErrorKind::NoSpace,
        ErrorKind::Corrupt,
        ErrorKind::Unavailable,
        ErrorKind::PermissionDenied,
        ErrorKind::NotPermitted,
        ErrorKind::TooManyLinks,
        ErrorKind::NotSupported,
        ErrorKind::Io,
        ErrorKind::Internal,
        ErrorKind::WouldBlock,
        ErrorKind::NoData,
        ErrorKind::OutOfRange,
        ErrorKind::TooBig,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::Stale => "stale",
            ErrorKind::AlreadyExists => "already-exists",
            ErrorKind::NotEmpty => "not-empty",
            ErrorKind::NotDir => "not-dir",
            ErrorKind::IsDir => "is-dir",
            ErrorKind::NameTooLong => "name-too-long",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotLeader => "not-leader",
            ErrorKind::NoSpace => "no-space",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::NotPermitted => "not-permitted",
            ErrorKind::TooManyLinks => "too-many-links",
            ErrorKind::NotSupported => "not-supported",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
            ErrorKind::WouldBlock => "would-block",
            ErrorKind::NoData => "no-data",
            ErrorKind::OutOfRange => "out-of-range",
            ErrorKind::TooBig => "too-big",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The gRPC code used for this kind (for tools that only look at codes).
    pub fn code(self) -> Code {
        match self {
            ErrorKind::NotFound | ErrorKind::Stale => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::NotEmpty
            | ErrorKind::NotDir
            | ErrorKind::IsDir
            | ErrorKind::NotLeader
            | ErrorKind::TooManyLinks => Code::FailedPrecondition,
            ErrorKind::NameTooLong | ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::Conflict => Code::Aborted,
            ErrorKind::NoSpace => Code::ResourceExhausted,
            ErrorKind::Corrupt => Code::DataLoss,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::PermissionDenied | ErrorKind::NotPermitted => Code::PermissionDenied,
            ErrorKind::NotSupported => Code::Unimplemented,
            ErrorKind::Io | ErrorKind::Internal => Code::Internal,
            ErrorKind::WouldBlock => Code::FailedPrecondition,
            ErrorKind::NoData => Code::NotFound,
            ErrorKind::OutOfRange | ErrorKind::TooBig => Code::OutOfRange,
        }
    }

    /// The errno a FUSE reply carries for this kind.
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::Stale => libc::ESTALE,
            ErrorKind::AlreadyExists => libc::EEXIST,
            ErrorKind::NotEmpty => libc::ENOTEMPTY,
            ErrorKind::NotDir => libc::ENOTDIR,
            ErrorKind::IsDir => libc::EISDIR,
            ErrorKind::NameTooLong => libc::ENAMETOOLONG,
            ErrorKind::InvalidArgument => libc::EINVAL,
            ErrorKind::NoSpace => libc::ENOSPC,
            ErrorKind::PermissionDenied => libc::EACCES,
            ErrorKind::NotPermitted => libc::EPERM,
            ErrorKind::TooManyLinks => libc::EMLINK,
            ErrorKind::NotSupported => libc::EOPNOTSUPP,
            ErrorKind::WouldBlock => libc::EAGAIN,
            ErrorKind::NoData => libc::ENODATA,
            ErrorKind::OutOfRange => libc::ERANGE,
            ErrorKind::TooBig => libc::E2BIG,
            ErrorKind::Conflict
            | ErrorKind::NotLeader
            | ErrorKind::Corrupt
            | ErrorKind::Unavailable
            | ErrorKind::Io
            | ErrorKind::Internal => libc::EIO,
        }
    }

    /// The kind a status carries: the `cairn-error` key if present, otherwise a guess from the
    /// gRPC code (transport failures are `Unavailable`).
    pub fn from_status(s: &Status) -> ErrorKind {
        if let Some(k) = s
            .metadata()
            .get(ERROR_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorKind::parse)
        {
            return k;
        }
        match s.code() {
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
            Code::ResourceExhausted => ErrorKind::NoSpace,
            Code::DataLoss => ErrorKind::Corrupt,
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => ErrorKind::Unavailable,
            Code::PermissionDenied => ErrorKind::PermissionDenied,
            Code::Unimplemented => ErrorKind::NotSupported,
            Code::Aborted => ErrorKind::Conflict,
            // A status built on this side from a broken connection (the peer died mid-call:
            // reset, closed before the reply, h2 stream error) carries the transport error as
            // its source; a status that came over the wire never does.
            Code::Unknown | Code::Internal if s.source().is_some() => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds the status for `kind` with a human-readable message.
pub fn status(kind: ErrorKind, message: impl Into<String>) -> Status {
    let mut s = Status::new(kind.code(), message);
    s.metadata_mut().insert(
        ERROR_KEY,
        tonic::metadata::MetadataValue::from_static(kind.as_str()),
    );
    s
}

/// Builds a `NotLeader` status pointing at `leader_addr` (empty when unknown).
pub fn not_leader(leader_addr: Option<&str>) -> Status {
    let mut s = status(
        ErrorKind::NotLeader,
        format!(
            "not the leader; leader is {}",
            leader_addr.unwrap_or("unknown")
        ),
    );
    if let Some(addr) = leader_addr {
        if let Ok(v) = addr.parse() {
            s.metadata_mut().insert(LEADER_KEY, v);
        }
    }
    s
}

/// The leader address a `NotLeader` status points at, if any.
pub fn leader_hint(s: &Status) -> Option<String> {
    s.metadata()
        .get(LEADER_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_a_status() {
        for k in ErrorKind::ALL {
            let s = status(k, "x");
            assert_eq!(ErrorKind::from_status(&s), k);
        }
    }

    #[test]
    fn not_leader_carries_the_leader() {
        let s = not_leader(Some("127.0.0.1:7001"));
        assert_eq!(ErrorKind::from_status(&s), ErrorKind::NotLeader);
        assert_eq!(leader_hint(&s).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(leader_hint(&not_leader(None)), None);
    }

    /// A server that accepts the call and then dies (kill -9 mid-request) must look like an
    /// unreachable node, so callers retry elsewhere instead of failing the user's operation.
    #[tokio::test]
    async fn a_peer_dying_mid_call_is_unavailable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                // Read the client's preface and request, then drop the connection unanswered.
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await;
                drop(sock);
            }
        });
        let mut client =
            cairn_proto::meta_service_client::MetaServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
        let err = client
            .get_attr(cairn_proto::GetAttrRequest { ino: 1 })
            .await
            .unwrap_err();
        assert_eq!(
            ErrorKind::from_status(&err),
            ErrorKind::Unavailable,
            "{err:?}"
        );

        // A status that came over the wire without our key stays what its code says.
        assert_eq!(
            ErrorKind::from_status(&Status::unknown("from the server")),
            ErrorKind::Internal
        );
    }
}
