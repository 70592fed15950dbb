//! Generates the Rust types and tonic services from `cairn.proto`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        // Chunk payloads are `bytes::Bytes`: decoding slices the receive buffer instead of
        // copying it into a Vec.
        .bytes(".cairn.v1.PutChunkRequest.data")
        .bytes(".cairn.v1.GetChunkReply.data")
        .bytes(".cairn.v1.RaftPayload.data")
        .bytes(".cairn.v1.ChunkSlot.inline_data")
        .bytes(".cairn.v1.InlineChunk.data")
        .compile_protos(&["cairn.proto"], &["."])?;
    println!("cargo:rerun-if-changed=cairn.proto");
    Ok(())
}
