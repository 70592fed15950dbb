//! Chunk-server liveness (from heartbeats) and replica placement. STUB.
