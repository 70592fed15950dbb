//! End to end: chunk servers' copies rot on disk; reads through a real FUSE mount — sequential
//! reads of whole chunks and random reads of single proven blocks — still return exactly the
//! right bytes, the bad copies are reported, quarantined and replaced.
mod e2e_harness;

use cairn_common::{ChunkId, MetaClient};
use e2e_harness::{init_tracing, root_file_slots, sh, write_random_file, Cluster};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tracing::info;

const FILES: u64 = 3;
const FILE_LEN: u64 = 9 << 20;

/// For each file: the chunk ids of its slots and, per slot, the server ids listed for it.
async fn slot_locations(meta: &MetaClient, names: &[String]) -> Vec<(ChunkId, Vec<u64>)> {
    let mut out = Vec::new();
    for name in names {
        for slot in root_file_slots(meta, name).await {
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
    assert_eq!(before.len(), (FILES * 3) as usize, "9 MiB is 3 slots");
    assert!(
        before.iter().all(|(_, locs)| locs.len() == 3),
        "every chunk on 3 servers: {before:?}"
    );

    info!("--- rot the copy of every chunk on the replica a reader asks first");
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
    // Readers start at a replica chosen by the chunk id (reads spread over every server):
    // the listed replica at index id[0] % replicas (DataPlane::order_replicas).
    let mut rotten: Vec<(ChunkId, u64)> = Vec::new();
    let mut seen = BTreeSet::new();
    // (Files may share chunks: flip each chunk's copy once.)
    for (id, locs) in before.iter().filter(|(id, _)| seen.insert(*id)) {
        let first = locs[id.0[0] as usize % locs.len()];
        let n = ids
            .iter()
            .position(|s| *s == first)
            .expect("a known server")
            + 1;
        let hex = id.to_hex();
        flip_near_end(
            &c.chunk_data_dir(n)
                .join("chunks")
                .join(&hex[..2])
                .join(&hex),
        );
        rotten.push((*id, first));
    }
    info!(
        chunks = rotten.len(),
        "flipped a data byte in the first-asked copy of each chunk"
    );

    info!("--- random O_DIRECT reads of f0's rotten blocks fetch single blocks: right bytes");
    let block_mount = c.mount();
    let src0 = c.path("f0.src");
    // In an order where no read starts near where the one before ended (those would count as
    // a sequential reader's, which fetches whole chunks).
    for slot in [1u64, 0, 2] {
        // The last 4 KiB of the chunk: in its last 64 KiB block, which holds the flipped byte.
        let chunk_end = ((slot + 1) << 22).min(FILE_LEN);
        let skip = (chunk_end >> 12) - 1;
        let got = sh(&format!(
            "dd if={}/f0 bs=4096 skip={skip} count=1 iflag=direct status=none | od -An -tx1",
            block_mount.display()
        ));
        let want = sh(&format!(
            "dd if={} bs=4096 skip={skip} count=1 status=none | od -An -tx1",
            src0.display()
        ));
        assert!(got == want && !got.is_empty(), "slot {slot}: wrong bytes");
    }

    info!("--- those reads skipped each rotten copy of f0 and reported it");
    let log = std::fs::read_to_string(c.path("mount2.log")).expect("mount log");
    for (id, _) in &before[..(FILE_LEN >> 22) as usize + 1] {
        let hex = id.to_hex();
        assert!(
            log.lines()
                .any(|l| l.contains("holds a bad copy") && l.contains(&hex)),
            "chunk {id}: the rotten copy was not met and reported"
        );
    }

    info!("--- a fresh mount reads every file: exactly the right bytes");
    let fresh = c.mount();
    for name in &names {
        let src = c.path(&format!("{name}.src"));
        sh(&format!("cmp {} {}/{name}", src.display(), fresh.display()));
    }

    // Reads spread over the replicas, so not every rotten copy is met by a read: the ones that
    // are not are found by the servers' scrub.
    info!("--- every rotten copy is quarantined (never deleted) and replaced by a good one");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let quarantined: Vec<(ChunkId, u64)> = rotten
            .iter()
            .filter(|(id, server)| {
                let n = ids.iter().position(|s| s == server).expect("known server") + 1;
                std::fs::read_dir(c.chunk_data_dir(n).join("quarantine"))
                    .expect("quarantine dir")
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&id.to_hex()))
            })
            .copied()
            .collect();
        let now = rt.block_on(slot_locations(&meta, &names));
        if quarantined.len() == rotten.len() && now.iter().all(|(_, locs)| locs.len() == 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "quarantined {} of {} rotten copies; listed: {now:?}",
            quarantined.len(),
            rotten.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let quarantined: usize = (1..=3)
        .map(|n| {
            std::fs::read_dir(c.chunk_data_dir(n).join("quarantine"))
                .expect("quarantine dir")
                .count()
        })
        .sum();
    assert_eq!(
        quarantined,
        rotten.len(),
        "each rotten copy quarantined once"
    );

    info!("--- reading again (another fresh mount) still gives the right bytes");
    let again = c.mount();
    for name in &names {
        let src = c.path(&format!("{name}.src"));
        sh(&format!("cmp {} {}/{name}", src.display(), again.display()));
    }
}
