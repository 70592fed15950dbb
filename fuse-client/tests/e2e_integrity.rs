//! End to end: a chunk server's copies rot on disk; reads through a real FUSE mount still return
//! exactly the right bytes, and the metadata cluster is told to stop listing the bad copies.
mod e2e_harness;

use cairn_common::{ChunkId, MetaClient, ROOT_INO};
use cairn_proto::{GetChunksRequest, LookupRequest};
use e2e_harness::{init_tracing, sh, write_random_file, Cluster};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tracing::info;

const FILES: u64 = 3;
const FILE_LEN: u64 = 9 << 20;

/// For each file: the chunk ids of its slots and, per slot, the server ids listed for it.
async fn slot_locations(meta: &MetaClient, names: &[String]) -> Vec<(ChunkId, Vec<u64>)> {
    let mut out = Vec::new();
    for name in names {
        let name = name.as_bytes().to_vec();
        let attr = meta
            .call(|mut c| {
                let name = name.clone();
                async move {
                    c.lookup(LookupRequest {
                        parent: ROOT_INO,
                        name,
                    })
                    .await
                }
            })
            .await
            .expect("lookup")
            .attr
            .expect("attr");
        let ino = attr.ino;
        let reply = meta
            .call(|mut c| async move {
                c.get_chunks(GetChunksRequest {
                    ino,
                    ..Default::default()
                })
                .await
            })
            .await
            .expect("get chunks");
        for slot in reply.slots {
            let chunk = slot.chunk.expect("slot chunk");
            let id = ChunkId::from_bytes(&chunk.id).expect("chunk id");
            out.push((id, slot.locations.iter().map(|l| l.server_id).collect()));
        }
    }
    out
}

/// Flips one byte near the end of the file: in the chunk data, past the header.
fn flip_near_end(path: &std::path::Path) {
    let mut b = std::fs::read(path).expect("read chunk file");
    let n = b.len();
    b[n - 3] ^= 0xff;
    std::fs::write(path, b).expect("write chunk file");
}

#[test]
fn t10_rotten_replicas_are_skipped_and_reported() {
    init_tracing();
    info!("--- start a 3-meta + 3-chunk cluster, write 3 files of 9 MiB");
    let mut c = Cluster::start(3, 3);
    let mnt = c.mount();
    let names: Vec<String> = (0..FILES).map(|i| format!("f{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let src = c.path(&format!("{name}.src"));
        write_random_file(&src, FILE_LEN, 1000 + i as u64);
        sh(&format!("cp {} {}/{name}", src.display(), mnt.display()));
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let meta = MetaClient::new(c.meta_addrs.clone());
    let before = rt.block_on(slot_locations(&meta, &names));
    let chunk_ids: BTreeSet<ChunkId> = before.iter().map(|(id, _)| *id).collect();
    assert_eq!(before.len(), (FILES * 3) as usize, "9 MiB is 3 slots");
    assert!(
        before.iter().all(|(_, locs)| locs.len() == 3),
        "every chunk on 3 servers: {before:?}"
    );

    info!("--- rot every chunk of the server listed first (the lowest id): reads meet it first");
    let ids: Vec<u64> = (1..=3)
        .map(|n| {
            std::fs::read_to_string(c.chunk_data_dir(n).join("server.id"))
                .expect("server.id")
                .trim()
                .parse()
                .expect("numeric server.id")
        })
        .collect();
    let listed: BTreeSet<u64> = c.status().expect("status")["chunk_servers"]
        .as_array()
        .expect("chunk_servers")
        .iter()
        .filter_map(|s| s["id"].as_u64())
        .collect();
    assert_eq!(
        listed,
        ids.iter().copied().collect(),
        "server.id files match the cluster"
    );
    let (n_bad, bad_id) = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (i + 1, *id))
        .min_by_key(|(_, id)| *id)
        .unwrap();
    let dir = c.chunk_data_dir(n_bad);
    let mut flipped = 0;
    for id in &chunk_ids {
        let hex = id.to_hex();
        let path = dir.join("chunks").join(&hex[..2]).join(&hex);
        flip_near_end(&path);
        flipped += 1;
    }
    info!(
        server = bad_id,
        chunks = flipped,
        "flipped a data byte in each chunk file"
    );

    info!("--- a fresh mount reads every file: exactly the right bytes");
    let fresh = c.mount();
    for name in &names {
        let src = c.path(&format!("{name}.src"));
        sh(&format!("cmp {} {}/{name}", src.display(), fresh.display()));
    }

    info!("--- the metadata cluster no longer lists the rotten copies");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = rt.block_on(slot_locations(&meta, &names));
        let still: Vec<_> = now
            .iter()
            .filter(|(_, locs)| locs.contains(&bad_id))
            .collect();
        if still.is_empty() {
            for (id, locs) in &now {
                assert_eq!(locs.len(), 2, "chunk {id}: the two good copies stay listed");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server {bad_id} still listed for {} chunks: {still:?}",
            still.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    info!("--- the rotten copies were quarantined, not deleted");
    let quarantined = std::fs::read_dir(dir.join("quarantine"))
        .expect("quarantine dir")
        .count();
    assert_eq!(quarantined, chunk_ids.len());
    assert!(c.chunk_files(n_bad).is_empty());

    info!("--- reading again (another fresh mount) still gives the right bytes");
    let again = c.mount();
    for name in &names {
        let src = c.path(&format!("{name}.src"));
        sh(&format!("cmp {} {}/{name}", src.display(), again.display()));
    }
}
