//! The meta-server's error type and its one mapping to the wire.
use crate::command::FsError;
use cairn_common::error::{not_leader, status, ErrorKind};

#[derive(Debug, Clone, thiserror::Error)]
pub enum MetaError {
    /// This node is not the Raft leader; `leader` is the leader's address when known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<String> },
    /// A namespace/file error decided by the state machine (ENOENT, EEXIST, conflict, ...).
    #[error("{0}")]
    Fs(#[from] FsError),
    /// RocksDB or (de)serialization failure of stored state.
    #[error("storage: {0}")]
    Storage(String),
    /// Raft failed for a reason other than leadership (shutting down, fatal error, ...).
    #[error("raft: {0}")]
    Raft(String),
    /// A malformed request.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl MetaError {
    pub fn fs(kind: ErrorKind, message: impl Into<String>) -> MetaError {
        MetaError::Fs(FsError::new(kind, message))
    }
}

impl From<rocksdb::Error> for MetaError {
    fn from(e: rocksdb::Error) -> Self {
        MetaError::Storage(e.to_string())
    }
}

impl From<MetaError> for tonic::Status {
    fn from(e: MetaError) -> tonic::Status {
        match e {
            MetaError::NotLeader { leader } => not_leader(leader.as_deref()),
            MetaError::Fs(fe) => status(fe.kind, fe.message),
            MetaError::Storage(m) => status(ErrorKind::Internal, format!("storage: {m}")),
            MetaError::Raft(m) => status(ErrorKind::Unavailable, format!("raft: {m}")),
            MetaError::Invalid(m) => status(ErrorKind::InvalidArgument, m),
        }
    }
}
