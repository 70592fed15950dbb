//! Cairn's gRPC definitions, generated from `proto/cairn.proto`.
//!
//! Every message that crosses a process boundary is defined there: the metadata service
//! (`MetaService`), the Raft transport between meta nodes (`RaftService`) and chunk storage
//! (`ChunkService`).
#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("cairn.v1");
}

pub use v1::*;

/// Largest gRPC message any Cairn service accepts or sends: one chunk (at most 8 MiB) plus
/// framing. Anything larger is refused by tonic with `OUT_OF_RANGE`/`RESOURCE_EXHAUSTED`.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
