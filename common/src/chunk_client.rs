//! A pool of connections to chunk servers, one lazily-connected channel per address.
use crate::error::ErrorKind;
use cairn_proto::chunk_service_client::ChunkServiceClient;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Status;

#[derive(Clone, Default)]
pub struct ChunkClients {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl ChunkClients {
    pub fn new() -> ChunkClients {
        ChunkClients::default()
    }

    /// A client for the chunk server at `addr` (`host:port`).
    pub fn get(&self, addr: &str) -> Result<ChunkServiceClient<Channel>, Status> {
        let mut chans = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let ch = match chans.get(addr) {
            Some(ch) => ch.clone(),
            None => {
                let ch = crate::channel::endpoint(addr)
                    .map_err(|e| {
                        crate::error::status(
                            ErrorKind::InvalidArgument,
                            format!("bad chunk server address {addr:?}: {e}"),
                        )
                    })?
                    .timeout(Duration::from_secs(30))
                    // Chunks are 4 MiB: large windows keep a single stream from stalling.
                    .initial_stream_window_size(Some(8 * 1024 * 1024))
                    .initial_connection_window_size(Some(16 * 1024 * 1024))
                    .connect_lazy();
                chans.insert(addr.to_owned(), ch.clone());
                ch
            }
        };
        Ok(ChunkServiceClient::new(ch)
            .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES))
    }
}
