//! Bad input stays harmless, for a chunk server: no single ChunkService request — a wrong id, a
//! chunk of the wrong length, an absurd range, a nonsense source list or id list — may panic
//! the server, hang it, or touch a chunk it was not asked to touch.
//!
//! A few hundred property-generated requests (proptest, fixed seed: every run sends the same
//! ones) go to a real server; afterwards a control chunk stored before still reads back
//! verified and a valid put is still accepted. `PROPTEST_CASES` sets the number of requests
//! (default [`DEFAULT_CASES`]); `CAIRN_FUZZ_SEED` (any text) picks another fixed sequence.
mod support;

use bytes::Bytes;
use cairn_chunk_server::{start, Config};
use cairn_common::{ChunkId, CHUNK_SIZE};
use cairn_proto as pb;
use pb::chunk_service_client::ChunkServiceClient;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config as PtConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::data;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Requests per run unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 1000;
/// The fixed seed of CI's run (32 bytes for ChaCha).
const SEED: &[u8; 32] = b"cairn: chunk servers stay intact";
/// Longest any one hostile request may take before the server counts as stuck.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Every panic of any thread of this test process (the server's included).
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn watch_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        PANICS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("thread {thread}: {info}"));
        previous(info);
    }));
}

fn panics() -> Vec<String> {
    PANICS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// What the barrage may name: the control chunk (only where reading or re-storing it is all a
/// request can do) and the server's own address (a replication source).
#[derive(Clone)]
struct Known {
    control: ChunkId,
    control_data: Bytes,
    own_addr: String,
}

#[derive(Clone)]
enum Call {
    Put(pb::PutChunkRequest),
    Get(pb::GetChunkRequest),
    Has(pb::HasChunkRequest),
    Info,
    Replicate(pb::ReplicateChunkRequest),
    Delete(pb::DeleteChunksRequest),
    Mark(pb::MarkChunksRequest),
    List(pb::ListChunksRequest),
    ScrubNow,
    Verify(pb::VerifyChunkRequest),
}

/// Names the request; chunk data is shown by its length and first bytes only.
impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Call::Put(r) => format!(
                "PutChunk {{ id: {:02x?}, data: {} bytes {:02x?} }}",
                r.id,
                r.data.len(),
                &r.data[..r.data.len().min(16)]
            ),
            Call::Get(r) => format!("GetChunk({r:?})"),
            Call::Has(r) => format!("HasChunk({r:?})"),
            Call::Info => "Info".into(),
            Call::Replicate(r) => format!("ReplicateChunk({r:?})"),
            Call::Delete(r) => format!("DeleteChunks({r:?})"),
            Call::Mark(r) => format!("MarkChunks({r:?})"),
            Call::List(r) => format!("ListChunks({r:?})"),
            Call::ScrubNow => "ScrubNow".into(),
            Call::Verify(r) => format!("VerifyChunk({r:?})"),
        };
        const MAX: usize = 2000;
        match text.char_indices().nth(MAX) {
            Some((cut, _)) => write!(f, "{} … ({} chars)", &text[..cut], text.len()),
            None => f.write_str(&text),
        }
    }
}

macro_rules! pick {
    ($($s:expr),+ $(,)?) => {
        Union::new(vec![$(($s).boxed()),+]).boxed()
    };
}

fn big() -> BoxedStrategy<u64> {
    pick![
        Just(0u64),
        Just(1u64),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(i64::MAX as u64),
        Just(CHUNK_SIZE as u64),
        Just(CHUNK_SIZE as u64 + 1),
        Just(64 * 1024u64),
        any::<u64>(),
        0u64..300_000,
    ]
}

/// Ids that are never the control chunk's: wrong lengths, zeros, random.
fn stranger_id() -> BoxedStrategy<Vec<u8>> {
    pick![
        Just(Vec::new()),
        vec(any::<u8>(), 31..=31),
        vec(any::<u8>(), 32..=32),
        vec(any::<u8>(), 33..=33),
        Just(vec![0u8; 32]),
        Just(vec![0xffu8; 32]),
        vec(any::<u8>(), 0..100),
    ]
}

/// Any id, the control chunk's included.
fn any_id(k: &Known) -> BoxedStrategy<Vec<u8>> {
    pick![stranger_id(), Just(k.control.as_bytes().to_vec())]
}

fn payload() -> BoxedStrategy<Bytes> {
    pick![
        Just(Bytes::new()),
        vec(any::<u8>(), 0..2000).prop_map(Bytes::from),
        Just(Bytes::from(vec![7u8; CHUNK_SIZE])),
        Just(Bytes::from(vec![7u8; CHUNK_SIZE + 1])),
        Just(Bytes::from(vec![7u8; cairn_proto::MAX_MESSAGE_BYTES + 1])),
    ]
}

fn put(k: &Known) -> BoxedStrategy<Call> {
    let control = k.control;
    let control_data = k.control_data.clone();
    pick![
        // The id of other bytes (or none at all).
        (any_id(k), payload()).prop_map(|(id, data)| Call::Put(pb::PutChunkRequest { id, data })),
        // A well-formed put of new bytes.
        vec(any::<u8>(), 0..3000).prop_map(|d| Call::Put(pb::PutChunkRequest {
            id: ChunkId::of(&d).as_bytes().to_vec(),
            data: d.into(),
        })),
        // The control chunk's id with other bytes: a short copy, a longer one, a flipped bit.
        (0usize..3, any::<usize>()).prop_map(move |(how, at)| {
            let mut d = control_data.to_vec();
            match how {
                0 => d.truncate(at % d.len()),
                1 => d.push(0),
                _ => {
                    let i = at % d.len();
                    d[i] ^= 1;
                }
            }
            Call::Put(pb::PutChunkRequest {
                id: control.as_bytes().to_vec(),
                data: d.into(),
            })
        }),
    ]
}

fn sources(k: &Known) -> BoxedStrategy<Vec<String>> {
    let source = pick![
        Just(k.own_addr.clone()),
        Just("127.0.0.1:1".to_string()),
        Just("[::1]:1".to_string()),
        Just("127.0.0.1:0".to_string()),
        Just("127.0.0.1:65536".to_string()),
        Just("x".to_string()),
        Just(":1".to_string()),
        Just("http://127.0.0.1:1/".to_string()),
        Just(format!("{}:1", "a".repeat(300))),
        vec(any::<char>(), 0..30).prop_map(|v| v.into_iter().collect::<String>()),
    ];
    pick![
        Just(Vec::new()),
        vec(source, 1..4),
        Just(vec!["127.0.0.1:1".to_string(); 9]),
    ]
}

fn ids() -> BoxedStrategy<Vec<Vec<u8>>> {
    pick![
        vec(stranger_id(), 0..5),
        Just(vec![vec![1u8; 32]; 1024]),
        Just(vec![vec![1u8; 32]; 1025]),
    ]
}

fn hostile(k: &Known) -> BoxedStrategy<Call> {
    Union::new_weighted(vec![
        (4, put(k)),
        (
            3,
            (any_id(k), big(), big(), any::<bool>())
                .prop_map(|(id, offset, len, with_block_cvs)| {
                    Call::Get(pb::GetChunkRequest {
                        id,
                        offset,
                        len,
                        with_block_cvs,
                    })
                })
                .boxed(),
        ),
        (
            1,
            any_id(k)
                .prop_map(|id| Call::Has(pb::HasChunkRequest { id }))
                .boxed(),
        ),
        (1, Just(Call::Info).boxed()),
        (
            2,
            (any_id(k), sources(k))
                .prop_map(|(id, sources)| {
                    Call::Replicate(pb::ReplicateChunkRequest { id, sources })
                })
                .boxed(),
        ),
        // Delete and mark are the metadata cluster's (GC, repair): honest ones may remove any
        // chunk, so the hostile ones never name the control chunk.
        (
            2,
            (ids(), any::<bool>())
                .prop_map(|(ids, only_marked)| {
                    Call::Delete(pb::DeleteChunksRequest { ids, only_marked })
                })
                .boxed(),
        ),
        (
            1,
            ids()
                .prop_map(|ids| Call::Mark(pb::MarkChunksRequest { ids }))
                .boxed(),
        ),
        (
            2,
            (any_id(k), any::<u32>(), big())
                .prop_map(|(after, limit, min_age_secs)| {
                    Call::List(pb::ListChunksRequest {
                        after,
                        limit,
                        min_age_secs,
                    })
                })
                .boxed(),
        ),
        (1, Just(Call::ScrubNow).boxed()),
        (
            1,
            any_id(k)
                .prop_map(|id| Call::Verify(pb::VerifyChunkRequest { id }))
                .boxed(),
        ),
    ])
    .boxed()
}

async fn send(c: &mut ChunkServiceClient<Channel>, call: Call) -> Result<(), Status> {
    match call {
        Call::Put(r) => c.put_chunk(r).await.map(drop),
        Call::Get(r) => c.get_chunk(r).await.map(drop),
        Call::Has(r) => c.has_chunk(r).await.map(drop),
        Call::Info => c.info(pb::ChunkServerInfoRequest {}).await.map(drop),
        Call::Replicate(r) => c.replicate_chunk(r).await.map(drop),
        Call::Delete(r) => c.delete_chunks(r).await.map(drop),
        Call::Mark(r) => c.mark_chunks(r).await.map(drop),
        Call::List(r) => c.list_chunks(r).await.map(drop),
        Call::ScrubNow => c.scrub_now(pb::ScrubNowRequest {}).await.map(drop),
        Call::Verify(r) => c.verify_chunk(r).await.map(drop),
    }
}

/// Reads the whole control chunk back and checks it against its id.
async fn read_back(c: &mut ChunkServiceClient<Channel>, id: ChunkId) -> Bytes {
    let got = c
        .get_chunk(pb::GetChunkRequest {
            id: id.as_bytes().to_vec(),
            offset: 0,
            len: 0,
            with_block_cvs: false,
        })
        .await
        .expect("the control chunk reads back")
        .into_inner();
    assert_eq!(ChunkId::of(&got.data), id, "the bytes hash to the id");
    got.data
}

/// A few hundred hostile ChunkService requests (fixed seed) leave the chunk server healthy:
/// each is answered in time with a status (never a panic, a hang or a server failure), the
/// control chunk stored before reads back whole and verified, verification finds it intact,
/// and a valid put is still accepted.
#[test]
fn hostile_requests_leave_the_chunk_server_healthy() {
    watch_panics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = rt.block_on(start(Config::for_tests(dir.path()))).unwrap();
    let addr = server.addr();
    // Allowed to send far more than the server accepts.
    let mut c = rt.block_on(support::client_with_limit(addr, 64 << 20));

    tracing::info!("--- a control chunk of several 64 KiB blocks");
    let control_data = data("hostile control", 300_000);
    let control = ChunkId::of(&control_data);
    rt.block_on(c.put_chunk(pb::PutChunkRequest {
        id: control.as_bytes().to_vec(),
        data: control_data.clone(),
    }))
    .unwrap();
    let known = Known {
        control,
        control_data: control_data.clone(),
        own_addr: addr.to_string(),
    };

    tracing::info!("--- the barrage");
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let config = PtConfig {
        cases,
        // No shrinking: the requests change the server's state, so a "smaller" request would run
        // against another state than the failing one and name the wrong culprit. The failure
        // names the very request that did harm.
        max_shrink_iters: 0,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        ..PtConfig::default()
    };
    let seed = match std::env::var("CAIRN_FUZZ_SEED") {
        Ok(s) => *blake3::hash(s.as_bytes()).as_bytes(),
        Err(_) => *SEED,
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let started = Instant::now();
    let tally = Mutex::new(BTreeMap::<String, usize>::new());
    let result = runner.run(&hostile(&known), |call| {
        let mut c = c.clone();
        let answered =
            rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, send(&mut c, call)).await });
        let p = panics();
        if !p.is_empty() {
            return Err(TestCaseError::fail(format!("the server panicked: {p:?}")));
        }
        let outcome = match &answered {
            Ok(Ok(())) => "Ok".to_string(),
            Ok(Err(s)) => format!("{:?}", s.code()),
            Err(_) => "timeout".to_string(),
        };
        *tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(outcome)
            .or_default() += 1;
        match answered {
            Err(_) => Err(TestCaseError::fail(format!(
                "no answer within {CALL_TIMEOUT:?}: the server is stuck"
            ))),
            // `Unknown` is what a client sees of a panicked handler or a reset stream,
            // `Internal` a server bug or a failing disk; `DataLoss` is for real corruption, and
            // nothing here corrupts a stored chunk.
            Ok(Err(s)) if matches!(s.code(), Code::Unknown | Code::Internal | Code::DataLoss) => {
                Err(TestCaseError::fail(format!(
                    "answered {:?} {:?}: not a refusal but a server failure",
                    s.code(),
                    s.message()
                )))
            }
            Ok(_) => Ok(()),
        }
    });
    if let Err(e) = result {
        panic!("a hostile request did harm: {e}");
    }
    eprintln!(
        "hostile: {cases} chunk requests answered in {:.1} s: {:?}",
        started.elapsed().as_secs_f64(),
        tally.lock().unwrap_or_else(|e| e.into_inner())
    );

    tracing::info!("--- afterwards: the control chunk is intact and a put works");
    rt.block_on(async {
        assert_eq!(read_back(&mut c, control).await, control_data);
        let v = c
            .verify_chunk(pb::VerifyChunkRequest {
                id: control.as_bytes().to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.outcome, pb::verify_chunk_reply::Outcome::Intact as i32);
        let fresh = data("after the barrage", 100_000);
        let id = ChunkId::of(&fresh);
        let r = c
            .put_chunk(pb::PutChunkRequest {
                id: id.as_bytes().to_vec(),
                data: fresh.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!r.already_present);
        assert_eq!(read_back(&mut c, id).await, fresh);
    });
    assert!(panics().is_empty(), "panics: {:?}", panics());
    drop(c);
    rt.block_on(server.shutdown()).unwrap();
}
