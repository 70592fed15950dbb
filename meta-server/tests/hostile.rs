//! Bad input stays harmless: no single request to a meta node — malformed, oversized,
//! boundary-valued or nonsense, to any `MetaService` RPC or as a `RaftService` payload — may
//! panic the node, hang it, cost it its leadership, or change data it was not asked to change.
//!
//! `hostile_requests_leave_the_cluster_healthy` throws a few hundred property-generated requests
//! (proptest, fixed seed: every run sends the same ones) at a real one-node cluster, then proves
//! the cluster healthy: still the leader, control files byte for byte as before, a new write
//! commits, fsck finds nothing lost, and a restart from the data directory comes back with the
//! same state. The other tests are the deterministic regressions of what the fuzz found.
//!
//! `PROPTEST_CASES` sets the number of requests (default [`DEFAULT_CASES`]); `CAIRN_FUZZ_SEED`
//! (any text) picks another fixed sequence, to explore beyond the one CI runs.
mod support;

use cairn_common::{ChunkId, CHUNK_SIZE};
use cairn_meta_server::command::{Command, Create, Once};
use cairn_meta_server::fsm::MAX_FILE_SIZE;
use cairn_meta_server::raft::{codec, service::MAX_PLAUSIBLE, TypeConfig};
use cairn_meta_server::service::{MAX_EXCLUDE_SERVERS, MAX_PREPARE_CHUNKS, MAX_SLOT_UPDATES};
use cairn_proto as pb;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, EntryPayload, LogId, SnapshotMeta, Vote};
use pb::meta_service_client::MetaServiceClient;
use pb::raft_service_client::RaftServiceClient;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config as PtConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::start_node;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Requests per run unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 2000;
/// The fixed seed of CI's run (32 bytes for ChaCha).
const SEED: &[u8; 32] = b"cairn: bad input stays harmless!";
/// Longest any one hostile request may take before the node counts as stuck.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// The fake chunk servers' addresses: nothing listens there (ports 1..=3 are never served).
const FAKE_SERVERS: [&str; 3] = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];

// --- panics anywhere in the process are failures ------------------------------------------

/// Every panic of any thread of this test process (the node's runtime threads included),
/// recorded by the hook [`watch_panics`] installs: tokio would otherwise swallow a panicked
/// server task and the client would only see a reset stream.
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

// --- the cluster ---------------------------------------------------------------------------

/// Raw clients (no retries, no redirects) allowed to send far more than the node accepts.
async fn clients(addr: &str) -> (MetaServiceClient<Channel>, RaftServiceClient<Channel>) {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let meta = MetaServiceClient::new(ch.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let raft = RaftServiceClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    (meta, raft)
}

/// Waits until the node leads (up to 30 s).
async fn wait_leader(node: &cairn_meta_server::RunningNode) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.node.is_leader() {
        assert!(Instant::now() < deadline, "no leader after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Registers the fake chunk servers (ids 1, 2, 3) and heartbeats them once.
async fn register_fake_servers(c: &mut MetaServiceClient<Channel>) -> Vec<u64> {
    let mut ids = Vec::new();
    for (i, addr) in FAKE_SERVERS.iter().enumerate() {
        let id = c
            .register_chunk_server(pb::RegisterChunkServerRequest {
                uuid: format!("hostile-fake-{i}"),
                addr: addr.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .server_id;
        ids.push(id);
    }
    heartbeat_fake_servers(c, &ids).await;
    ids
}

/// The fake servers' true heartbeats: their own address and plenty of room. A hostile
/// heartbeat may claim otherwise for a while (heartbeats are not authenticated); the next true
/// one puts it right.
async fn heartbeat_fake_servers(c: &mut MetaServiceClient<Channel>, ids: &[u64]) {
    for (id, addr) in ids.iter().zip(FAKE_SERVERS) {
        c.heartbeat(pb::HeartbeatRequest {
            server_id: *id,
            addr: addr.to_string(),
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            free_bytes: 1 << 40,
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

async fn create(
    c: &mut MetaServiceClient<Channel>,
    parent: u64,
    name: &[u8],
    kind: pb::FileKind,
    target: &[u8],
) -> pb::Attr {
    c.create(pb::CreateRequest {
        parent,
        name: name.to_vec(),
        kind: kind as i32,
        mode: 0o755,
        symlink_target: target.to_vec(),
        exclusive: true,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create {:?}: {e}", String::from_utf8_lossy(name)))
    .into_inner()
    .attr
    .unwrap()
}

/// Writes `data` (one chunk) into file `f` as the mount would: placement, then a commit naming
/// the targets as the replicas that stored it (the fake servers store nothing, but the meta
/// node only keeps the record). Returns the new attributes and the chunk id.
async fn write_chunk(
    c: &mut MetaServiceClient<Channel>,
    f: &pb::Attr,
    data: &[u8],
) -> (pb::Attr, Vec<u8>) {
    let cref = pb::ChunkRef {
        id: ChunkId::of(data).as_bytes().to_vec(),
        len: data.len() as u32,
        stored_len: data.len() as u32,
    };
    let p = c
        .prepare_write(pb::PrepareWriteRequest {
            chunks: vec![cref.clone()],
            exclude_servers: vec![],
        })
        .await
        .expect("placement")
        .into_inner();
    let place = &p.placements[0];
    let replicas: Vec<u64> = place
        .existing
        .iter()
        .chain(&place.targets)
        .map(|l| l.server_id)
        .collect();
    let a = c
        .commit_write(pb::CommitWriteRequest {
            ino: f.ino,
            base_version: f.version,
            size: data.len() as u64,
            updates: vec![pb::SlotUpdate {
                index: 0,
                chunk: Some(cref.clone()),
                replicas,
                ticket: p.ticket,
            }],
            ..Default::default()
        })
        .await
        .expect("commit")
        .into_inner()
        .attr
        .unwrap();
    (a, cref.id)
}

/// Writes `data` into file `f` inline (a small file's content kept in the metadata).
async fn write_inline(c: &mut MetaServiceClient<Channel>, f: &pb::Attr, data: &[u8]) -> pb::Attr {
    let id = ChunkId::inline_of(data).as_bytes().to_vec();
    c.commit_write(pb::CommitWriteRequest {
        ino: f.ino,
        base_version: f.version,
        size: data.len() as u64,
        updates: vec![pb::SlotUpdate {
            index: 0,
            chunk: Some(pb::ChunkRef {
                id: id.clone(),
                len: data.len() as u32,
                stored_len: data.len() as u32,
            }),
            replicas: vec![],
            ticket: 0,
        }],
        inline: vec![pb::InlineChunk {
            id,
            data: data.to_vec().into(),
        }],
        ..Default::default()
    })
    .await
    .expect("inline commit")
    .into_inner()
    .attr
    .unwrap()
}

/// What a reader sees of one file: its attributes, its xattrs, and every slot.
#[derive(Debug, PartialEq)]
struct FileView {
    attr: pb::Attr,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    slots: Vec<SlotView>,
}

/// One slot: its index, its chunk, its inline bytes, and the servers listed for it.
type SlotView = (u64, Option<pb::ChunkRef>, Option<Vec<u8>>, BTreeSet<u64>);

async fn view(c: &mut MetaServiceClient<Channel>, ino: u64) -> FileView {
    let attr = c
        .get_attr(pb::GetAttrRequest { ino })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    let mut xattrs = Vec::new();
    let names = c
        .list_xattr(pb::ListXattrRequest { ino })
        .await
        .unwrap()
        .into_inner()
        .names;
    for name in names {
        let value = c
            .get_xattr(pb::GetXattrRequest {
                ino,
                name: name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .value;
        xattrs.push((name, value));
    }
    let page = c
        .get_chunks(pb::GetChunksRequest {
            ino,
            first_slot: 0,
            max_slots: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!page.more, "control files have one page");
    let slots = page
        .slots
        .into_iter()
        .map(|s| {
            (
                s.index,
                s.chunk,
                s.inline_data.map(|b| b.to_vec()),
                s.locations.iter().map(|l| l.server_id).collect(),
            )
        })
        .collect();
    FileView {
        attr,
        xattrs,
        slots,
    }
}

/// The control files: made before the barrage, never named by it, compared after it.
struct Control {
    dir: u64,
    inline: u64,
    chunked: u64,
    inline_data: Vec<u8>,
}

impl Control {
    async fn make(c: &mut MetaServiceClient<Channel>) -> Control {
        let dir = create(c, 1, b"hostile-control", pb::FileKind::Directory, b"").await;
        let inline = create(c, dir.ino, b"inline", pb::FileKind::Regular, b"").await;
        let inline_data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        write_inline(c, &inline, &inline_data).await;
        let chunked = create(c, dir.ino, b"chunked", pb::FileKind::Regular, b"").await;
        write_chunk(c, &chunked, b"the control chunk's bytes").await;
        c.set_xattr(pb::SetXattrRequest {
            ino: chunked.ino,
            name: b"user.control".to_vec(),
            value: b"must survive".to_vec(),
            flags: 0,
        })
        .await
        .unwrap();
        Control {
            dir: dir.ino,
            inline: inline.ino,
            chunked: chunked.ino,
            inline_data,
        }
    }

    fn inodes(&self) -> HashSet<u64> {
        [self.dir, self.inline, self.chunked].into_iter().collect()
    }

    async fn views(&self, c: &mut MetaServiceClient<Channel>) -> Vec<FileView> {
        let mut out = Vec::new();
        for ino in [self.dir, self.inline, self.chunked] {
            out.push(view(c, ino).await);
        }
        out
    }
}

// --- what the barrage may name -------------------------------------------------------------

/// Objects made for the barrage, so that hostile requests also reach the code past the first
/// "no such inode": a directory, a file with a chunk, a symlink, a session, an upload.
#[derive(Clone)]
struct Known {
    dir: u64,
    file: u64,
    link: u64,
    chunk: Vec<u8>,
    session: u64,
    upload: u64,
    term: u64,
    control: HashSet<u64>,
}

/// One hostile request to one RPC.
#[derive(Clone)]
enum Call {
    Lookup(pb::LookupRequest),
    GetAttr(pb::GetAttrRequest),
    SetAttr(pb::SetAttrRequest),
    Create(pb::CreateRequest),
    Link(pb::LinkRequest),
    Unlink(pb::UnlinkRequest),
    Rmdir(pb::RmdirRequest),
    Rename(pb::RenameRequest),
    Readlink(pb::ReadlinkRequest),
    ReadDir(pb::ReadDirRequest),
    GetChunks(pb::GetChunksRequest),
    PrepareWrite(pb::PrepareWriteRequest),
    CommitWrite(pb::CommitWriteRequest),
    StatFs(pb::StatFsRequest),
    Register(pb::RegisterChunkServerRequest),
    Heartbeat(pb::HeartbeatRequest),
    ReportBadReplica(pb::ReportBadReplicaRequest),
    Fsck(pb::FsckRequest),
    Drain(pb::DrainRequest),
    ClusterStatus(pb::ClusterStatusRequest),
    NodeStatus(pb::NodeStatusRequest),
    OpenSession(pb::OpenSessionRequest),
    RenewSession(pb::RenewSessionRequest),
    CloseSession(pb::CloseSessionRequest),
    ReleaseOrphan(pb::ReleaseOrphanRequest),
    SetLock(pb::SetLockRequest),
    GetLock(pb::GetLockRequest),
    ReleaseLocks(pb::ReleaseLocksRequest),
    GetXattr(pb::GetXattrRequest),
    ListXattr(pb::ListXattrRequest),
    SetXattr(pb::SetXattrRequest),
    RemoveXattr(pb::RemoveXattrRequest),
    OpenUpload(pb::OpenUploadRequest),
    RecordUpload(pb::RecordUploadRequest),
    ListUploads(pb::ListUploadsRequest),
    GetUpload(pb::GetUploadRequest),
    AbortUpload(pb::AbortUploadRequest),
    CommitUpload(pb::CommitUploadRequest),
    /// A RaftService payload: `rpc` 0 AppendEntries, 1 Vote, 2 InstallSnapshot; `what` says
    /// what the bytes are.
    Raft {
        rpc: u8,
        what: String,
        data: Vec<u8>,
    },
    /// An AppendEntries impersonating the leader to itself, aimed at its log as it is when sent:
    /// the leader's own vote, its entry `back` below the last as the previous one, then a forged
    /// entry (a create of [`IMPERSONATION`] in the root), committed.
    Impersonate {
        back: u64,
    },
}

/// The name the forged entry of [`Call::Impersonate`] creates.
const IMPERSONATION: &[u8] = b"forged-impersonation";

/// The `cairn-request-id` a call carries.
#[derive(Clone, Debug)]
enum Rid {
    None,
    Valid(u64, u64),
    Garbage(String),
}

#[derive(Clone)]
struct Hostile {
    call: Call,
    rid: Rid,
}

/// Names the request; a huge one is cut (the failure must stay readable).
impl fmt::Debug for Hostile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!("{:?}", self.call);
        const MAX: usize = 2000;
        if text.len() > MAX {
            let cut = (0..=MAX)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            write!(
                f,
                "{} … ({} chars) rid {:?}",
                &text[..cut],
                text.len(),
                self.rid
            )
        } else {
            write!(f, "{text} rid {:?}", self.rid)
        }
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        macro_rules! show {
            ($($v:ident),*) => {
                match self {
                    $(Call::$v(r) => write!(f, "{}({r:?})", stringify!($v)),)*
                    Call::Impersonate { back } => {
                        write!(f, "Raft AppendEntries impersonating the leader, back {back}")
                    }
                    Call::Raft { rpc, what, data } => write!(
                        f,
                        "Raft {}({what}): {} bytes {:02x?}",
                        ["AppendEntries", "Vote", "InstallSnapshot"][*rpc as usize % 3],
                        data.len(),
                        &data[..data.len().min(64)]
                    ),
                }
            };
        }
        show!(
            Lookup,
            GetAttr,
            SetAttr,
            Create,
            Link,
            Unlink,
            Rmdir,
            Rename,
            Readlink,
            ReadDir,
            GetChunks,
            PrepareWrite,
            CommitWrite,
            StatFs,
            Register,
            Heartbeat,
            ReportBadReplica,
            Fsck,
            Drain,
            ClusterStatus,
            NodeStatus,
            OpenSession,
            RenewSession,
            CloseSession,
            ReleaseOrphan,
            SetLock,
            GetLock,
            ReleaseLocks,
            GetXattr,
            ListXattr,
            SetXattr,
            RemoveXattr,
            OpenUpload,
            RecordUpload,
            ListUploads,
            GetUpload,
            AbortUpload,
            CommitUpload
        )
    }
}

// --- strategies ----------------------------------------------------------------------------

/// One of the given strategies, each as likely.
macro_rules! pick {
    ($($s:expr),+ $(,)?) => {
        Union::new(vec![$(($s).boxed()),+]).boxed()
    };
}

fn ino(k: &Known) -> BoxedStrategy<u64> {
    let control = k.control.clone();
    pick![
        Just(0u64),
        Just(1u64),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1u64 << 63),
        Just(i64::MAX as u64),
        any::<u64>(),
        (2u64..64).prop_filter("never a control inode", move |i| !control.contains(i)),
        Just(k.dir),
        Just(k.file),
        Just(k.link),
    ]
}

/// Sizes, offsets, versions, slot indexes: the edges of every range that matters.
fn big() -> BoxedStrategy<u64> {
    pick![
        Just(0u64),
        Just(1u64),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(i64::MAX as u64),
        Just(i64::MAX as u64 + 1),
        Just(MAX_FILE_SIZE),
        Just(MAX_FILE_SIZE + 1),
        Just(CHUNK_SIZE as u64),
        Just(u64::MAX / CHUNK_SIZE as u64),
        any::<u64>(),
        0u64..100_000,
    ]
}

fn bits32() -> BoxedStrategy<u32> {
    pick![
        Just(0u32),
        Just(u32::MAX),
        Just(0o7777u32),
        Just(0o177777u32),
        Just(1u32 << 31),
        Just(CHUNK_SIZE as u32),
        Just(CHUNK_SIZE as u32 + 1),
        any::<u32>(),
        0u32..16,
    ]
}

fn enum_value() -> BoxedStrategy<i32> {
    pick![-2i32..10, Just(i32::MIN), Just(i32::MAX), any::<i32>()]
}

fn name() -> BoxedStrategy<Vec<u8>> {
    pick![
        Just(Vec::new()),
        Just(b".".to_vec()),
        Just(b"..".to_vec()),
        Just(b"/".to_vec()),
        Just(b"a/b".to_vec()),
        Just(b"a\0b".to_vec()),
        Just(vec![b'n'; 255]),
        Just(vec![b'n'; 256]),
        Just(vec![b'x'; 70_000]),
        vec(b'a'..=b'e', 1..4),
        vec(any::<u8>(), 0..300),
    ]
}

fn bytes(max: usize) -> BoxedStrategy<Vec<u8>> {
    pick![
        Just(Vec::new()),
        vec(any::<u8>(), 0..max),
        Just(vec![0xa5u8; 64 * 1024]),
        Just(vec![0xa5u8; 64 * 1024 + 1]),
        Just(vec![0u8; 1 << 20]),
    ]
}

fn text() -> BoxedStrategy<String> {
    pick![
        Just(String::new()),
        Just("127.0.0.1:1".to_string()),
        Just("1".to_string()),
        Just("h".repeat(256)),
        Just("h".repeat(257)),
        Just("m".repeat(4097)),
        Just("é".repeat(40_000)),
        vec(any::<char>(), 0..40).prop_map(|v| v.into_iter().collect::<String>()),
    ]
}

fn timestamp() -> BoxedStrategy<Option<pb::Timestamp>> {
    let secs = pick![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0i64),
        Just(-1i64),
        any::<i64>()
    ];
    let nanos = pick![
        Just(0u32),
        Just(999_999_999u32),
        Just(1_000_000_000u32),
        Just(u32::MAX),
        any::<u32>()
    ];
    pick![
        Just(None),
        (secs, nanos).prop_map(|(secs, nanos)| Some(pb::Timestamp { secs, nanos }))
    ]
}

fn chunk_id(k: &Known) -> BoxedStrategy<Vec<u8>> {
    pick![
        Just(Vec::new()),
        vec(any::<u8>(), 31..=31),
        vec(any::<u8>(), 32..=32),
        vec(any::<u8>(), 33..=33),
        Just(vec![0u8; 32]),
        Just(vec![0xffu8; 32]),
        Just(k.chunk.clone()),
        vec(any::<u8>(), 0..100),
    ]
}

fn chunk_ref(k: &Known) -> BoxedStrategy<pb::ChunkRef> {
    (chunk_id(k), bits32(), bits32())
        .prop_map(|(id, len, stored_len)| pb::ChunkRef {
            id,
            len,
            stored_len,
        })
        .boxed()
}

fn server_id() -> BoxedStrategy<u64> {
    pick![
        Just(0u64),
        Just(1u64),
        Just(2u64),
        Just(3u64),
        Just(u64::MAX),
        4u64..40,
        any::<u64>()
    ]
}

fn servers() -> BoxedStrategy<Vec<u64>> {
    pick![
        vec(server_id(), 0..4),
        Just(vec![1u64; 65]),
        Just((0..65).collect::<Vec<u64>>()),
    ]
}

fn slot_update(k: &Known) -> BoxedStrategy<pb::SlotUpdate> {
    (big(), proptest::option::of(chunk_ref(k)), servers(), big())
        .prop_map(|(index, chunk, replicas, ticket)| pb::SlotUpdate {
            index,
            chunk,
            replicas,
            ticket,
        })
        .boxed()
}

/// `n` well-formed slot updates of the known chunk (one request's bound is
/// [`MAX_SLOT_UPDATES`]).
fn many_updates(k: &Known, n: usize) -> Vec<pb::SlotUpdate> {
    (0..n as u64)
        .map(|index| pb::SlotUpdate {
            index,
            chunk: Some(pb::ChunkRef {
                id: k.chunk.clone(),
                len: 10,
                stored_len: 10,
            }),
            replicas: vec![1, 2],
            ticket: 0,
        })
        .collect()
}

fn updates(k: &Known) -> BoxedStrategy<Vec<pb::SlotUpdate>> {
    pick![
        vec(slot_update(k), 0..4),
        Just(many_updates(k, MAX_SLOT_UPDATES)),
        Just(many_updates(k, MAX_SLOT_UPDATES + 1)),
    ]
}

fn session(k: &Known) -> BoxedStrategy<u64> {
    pick![
        Just(0u64),
        Just(k.session),
        Just(u64::MAX),
        1u64..8,
        any::<u64>()
    ]
}

fn upload(k: &Known) -> BoxedStrategy<u64> {
    pick![
        Just(0u64),
        Just(k.upload),
        Just(u64::MAX),
        1u64..8,
        any::<u64>()
    ]
}

fn lock() -> BoxedStrategy<Option<pb::FileLock>> {
    pick![
        Just(None),
        (enum_value(), big(), big(), bits32()).prop_map(|(typ, start, end, pid)| Some(
            pb::FileLock {
                typ,
                start,
                end,
                pid
            }
        ))
    ]
}

fn open_inodes() -> BoxedStrategy<Vec<u64>> {
    pick![
        vec(any::<u64>(), 0..4),
        Just(vec![7u64; 1 << 16]),
        Just(vec![7u64; (1 << 16) + 1]),
    ]
}

fn set_attr(k: &Known) -> BoxedStrategy<pb::SetAttrRequest> {
    let opt32 = || proptest::option::of(bits32());
    (
        ino(k),
        (opt32(), opt32(), opt32()),
        proptest::option::of(big()),
        (timestamp(), timestamp()),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(ino, (mode, uid, gid), size, (atime, mtime), (atime_now, mtime_now))| {
                pb::SetAttrRequest {
                    ino,
                    mode,
                    uid,
                    gid,
                    size,
                    atime,
                    mtime,
                    atime_now,
                    mtime_now,
                }
            },
        )
        .boxed()
}

fn namespace_calls(k: &Known) -> BoxedStrategy<Call> {
    pick![
        (ino(k), name())
            .prop_map(|(parent, name)| Call::Lookup(pb::LookupRequest { parent, name })),
        ino(k).prop_map(|ino| Call::GetAttr(pb::GetAttrRequest { ino })),
        set_attr(k).prop_map(Call::SetAttr),
        (
            (ino(k), name(), enum_value()),
            (bits32(), bits32(), bits32(), bits32()),
            (name(), any::<bool>())
        )
            .prop_map(
                |((parent, name, kind), (mode, uid, gid, rdev), (symlink_target, exclusive))| {
                    Call::Create(pb::CreateRequest {
                        parent,
                        name,
                        kind,
                        mode,
                        uid,
                        gid,
                        rdev,
                        symlink_target,
                        exclusive,
                    })
                }
            ),
        (ino(k), ino(k), name()).prop_map(|(ino, new_parent, new_name)| Call::Link(
            pb::LinkRequest {
                ino,
                new_parent,
                new_name
            }
        )),
        (ino(k), name(), session(k), open_inodes()).prop_map(
            |(parent, name, session, open_inodes)| Call::Unlink(pb::UnlinkRequest {
                parent,
                name,
                session,
                open_inodes
            })
        ),
        (ino(k), name()).prop_map(|(parent, name)| Call::Rmdir(pb::RmdirRequest { parent, name })),
        (
            (ino(k), name(), ino(k), name()),
            (bits32(), session(k), open_inodes())
        )
            .prop_map(
                |((parent, name, new_parent, new_name), (flags, session, open_inodes))| {
                    Call::Rename(pb::RenameRequest {
                        parent,
                        name,
                        new_parent,
                        new_name,
                        flags,
                        session,
                        open_inodes,
                    })
                }
            ),
        ino(k).prop_map(|ino| Call::Readlink(pb::ReadlinkRequest { ino })),
        (ino(k), name(), bits32()).prop_map(|(ino, after, limit)| Call::ReadDir(
            pb::ReadDirRequest { ino, after, limit }
        )),
    ]
}

fn file_calls(k: &Known) -> BoxedStrategy<Call> {
    let huge_prepare = |k: &Known, n: usize| pb::PrepareWriteRequest {
        chunks: vec![
            pb::ChunkRef {
                id: k.chunk.clone(),
                len: 10,
                stored_len: 10
            };
            n
        ],
        exclude_servers: vec![],
    };
    let inline = (chunk_id(k), bytes(100)).prop_map(|(id, data)| pb::InlineChunk {
        id,
        data: data.into(),
    });
    let commit = (
        (ino(k), big(), big()),
        updates(k),
        (timestamp(), proptest::option::of(set_attr(k))),
        (upload(k), any::<bool>(), any::<bool>()),
        pick![vec(inline, 0..3), Just(Vec::new())],
    )
        .prop_map(
            |(
                (ino, base_version, size),
                updates,
                (mtime, then_set_attr),
                (upload, apply_upload, replace),
                inline,
            )| {
                Call::CommitWrite(pb::CommitWriteRequest {
                    ino,
                    base_version,
                    size,
                    updates,
                    mtime,
                    then_set_attr,
                    upload,
                    apply_upload,
                    replace,
                    inline,
                })
            },
        );
    pick![
        (ino(k), big(), bits32()).prop_map(|(ino, first_slot, max_slots)| Call::GetChunks(
            pb::GetChunksRequest {
                ino,
                first_slot,
                max_slots
            }
        )),
        (vec(chunk_ref(k), 0..4), servers()).prop_map(|(chunks, exclude_servers)| {
            Call::PrepareWrite(pb::PrepareWriteRequest {
                chunks,
                exclude_servers,
            })
        }),
        Just(Call::PrepareWrite(huge_prepare(k, MAX_PREPARE_CHUNKS))),
        Just(Call::PrepareWrite(huge_prepare(k, MAX_PREPARE_CHUNKS + 1))),
        commit,
        Just(Call::StatFs(pb::StatFsRequest {})),
    ]
}

fn cluster_calls(k: &Known) -> BoxedStrategy<Call> {
    let scrub = proptest::option::of((big(), big(), big(), any::<bool>()).prop_map(
        |(a, b, c, running)| pb::ScrubStats {
            chunks_verified: a,
            bytes_verified: b,
            corruptions: c,
            passes: a,
            last_full_pass_unix_ms: b,
            oldest_verified_unix_ms: c,
            running,
            rate_limit_bytes: a,
            unverified_chunks: b,
            oldest_unverified_unix_ms: c,
            interval_secs: a,
            start_delay_secs: b,
        },
    ));
    pick![
        (text(), text())
            .prop_map(|(uuid, addr)| Call::Register(pb::RegisterChunkServerRequest { uuid, addr })),
        (
            (server_id(), text(), text()),
            (big(), big(), big(), big()),
            scrub
        )
            .prop_map(
                |((server_id, addr, metrics_addr), (cap, used, free, count), scrub)| {
                    Call::Heartbeat(pb::HeartbeatRequest {
                        server_id,
                        addr,
                        capacity_bytes: cap,
                        used_bytes: used,
                        free_bytes: free,
                        chunk_count: count,
                        scrub,
                        metrics_addr,
                    })
                }
            ),
        (server_id(), chunk_id(k), text()).prop_map(|(server_id, chunk_id, reason)| {
            Call::ReportBadReplica(pb::ReportBadReplicaRequest {
                server_id,
                chunk_id,
                reason,
            })
        }),
        bits32().prop_map(|max_files| Call::Fsck(pb::FsckRequest { max_files })),
        // Only undrains: a drain of the fake servers is legitimate and would (rightly) stop
        // new chunks from being placed on them; the final write needs them.
        text().prop_map(|server| Call::Drain(pb::DrainRequest {
            server,
            drain: false
        })),
        Just(Call::ClusterStatus(pb::ClusterStatusRequest {})),
        // A digest far ahead is waited for (2 s) and then answered empty: kept rare.
        pick![Just(0u64), Just(1u64), 2u64..50, Just(u64::MAX)]
            .prop_map(|digest_at| Call::NodeStatus(pb::NodeStatusRequest { digest_at })),
    ]
}

fn session_calls(k: &Known) -> BoxedStrategy<Call> {
    pick![
        (text(), text(), bits32()).prop_map(|(host, mountpoint, pid)| Call::OpenSession(
            pb::OpenSessionRequest {
                host,
                mountpoint,
                pid
            }
        )),
        session(k).prop_map(|session| Call::RenewSession(pb::RenewSessionRequest { session })),
        session(k).prop_map(|session| Call::CloseSession(pb::CloseSessionRequest { session })),
        (session(k), ino(k)).prop_map(|(session, ino)| Call::ReleaseOrphan(
            pb::ReleaseOrphanRequest { session, ino }
        )),
        (ino(k), session(k), big(), lock()).prop_map(|(ino, session, owner, lock)| {
            Call::SetLock(pb::SetLockRequest {
                ino,
                session,
                owner,
                lock,
            })
        }),
        (ino(k), session(k), big(), lock()).prop_map(|(ino, session, owner, lock)| {
            Call::GetLock(pb::GetLockRequest {
                ino,
                session,
                owner,
                lock,
            })
        }),
        (ino(k), session(k), big()).prop_map(|(ino, session, owner)| Call::ReleaseLocks(
            pb::ReleaseLocksRequest {
                ino,
                session,
                owner
            }
        )),
    ]
}

fn xattr_name() -> BoxedStrategy<Vec<u8>> {
    pick![
        name(),
        Just(b"user.".to_vec()),
        Just(b"user.a".to_vec()),
        Just(b"trusted.x".to_vec()),
        Just(b"bogus.x".to_vec()),
        vec(b'a'..=b'c', 1..3).prop_map(|s| [b"user.".to_vec(), s].concat()),
    ]
}

fn xattr_calls(k: &Known) -> BoxedStrategy<Call> {
    pick![
        (ino(k), xattr_name())
            .prop_map(|(ino, name)| Call::GetXattr(pb::GetXattrRequest { ino, name })),
        ino(k).prop_map(|ino| Call::ListXattr(pb::ListXattrRequest { ino })),
        (ino(k), xattr_name(), bytes(200), bits32()).prop_map(|(ino, name, value, flags)| {
            Call::SetXattr(pb::SetXattrRequest {
                ino,
                name,
                value,
                flags,
            })
        }),
        (ino(k), xattr_name())
            .prop_map(|(ino, name)| Call::RemoveXattr(pb::RemoveXattrRequest { ino, name })),
    ]
}

fn upload_calls(k: &Known) -> BoxedStrategy<Call> {
    pick![
        ((ino(k), ino(k), name(), big()), (text(), text())).prop_map(
            |((ino, parent, name, base_version), (label, host))| {
                Call::OpenUpload(pb::OpenUploadRequest {
                    ino,
                    parent,
                    name,
                    base_version,
                    label,
                    host,
                })
            }
        ),
        (upload(k), updates(k)).prop_map(|(upload, updates)| Call::RecordUpload(
            pb::RecordUploadRequest { upload, updates }
        )),
        (any::<bool>(), big(), bits32()).prop_map(|(with_paths, after, limit)| {
            Call::ListUploads(pb::ListUploadsRequest {
                with_paths,
                after,
                limit,
            })
        }),
        (upload(k), big(), bits32()).prop_map(|(upload, first_slot, max_slots)| {
            Call::GetUpload(pb::GetUploadRequest {
                upload,
                first_slot,
                max_slots,
            })
        }),
        upload(k).prop_map(|upload| Call::AbortUpload(pb::AbortUploadRequest { upload })),
        (
            upload(k),
            big(),
            timestamp(),
            (bits32(), bits32(), bits32())
        )
            .prop_map(
                |(upload, size, mtime, (mode, uid, gid))| Call::CommitUpload(
                    pb::CommitUploadRequest {
                        upload,
                        size,
                        mtime,
                        mode,
                        uid,
                        gid,
                    }
                )
            ),
    ]
}

// --- Raft payloads -------------------------------------------------------------------------

/// Terms no forged request may use to do harm: stale (0) or beyond any real cluster's.
fn absurd_term() -> BoxedStrategy<u64> {
    pick![
        Just(0u64),
        Just(MAX_PLAUSIBLE + 1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        (MAX_PLAUSIBLE + 1)..u64::MAX,
    ]
}

fn log_id() -> BoxedStrategy<LogId<u64>> {
    (pick![absurd_term(), 0u64..4], any::<u64>(), big())
        .prop_map(|(term, node, index)| LogId::new(CommittedLeaderId::new(term, node), index))
        .boxed()
}

fn absurd_vote() -> BoxedStrategy<Vote<u64>> {
    (absurd_term(), any::<u64>(), any::<bool>())
        .prop_map(|(term, node, committed)| {
            if committed {
                Vote::new_committed(term, node)
            } else {
                Vote::new(term, node)
            }
        })
        .boxed()
}

/// The vote of this very leader (its term, its own id): a forged request impersonating the node
/// to itself.
fn own_vote(k: &Known) -> BoxedStrategy<Vote<u64>> {
    let term = k.term;
    pick![
        Just(Vote::new_committed(term, 1)),
        Just(Vote::new(term, 1)),
        Just(Vote::new_committed(term, 0)),
    ]
}

fn entries() -> BoxedStrategy<Vec<openraft::Entry<TypeConfig>>> {
    let entry = (log_id(), any::<bool>(), vec(any::<u8>(), 0..8)).prop_map(|(log_id, blank, n)| {
        openraft::Entry {
            log_id,
            payload: if blank {
                EntryPayload::Blank
            } else {
                EntryPayload::Normal(forged_create([b"forged-".to_vec(), n].concat()))
            },
        }
    });
    vec(entry, 0..3).boxed()
}

fn raft_calls(k: &Known) -> BoxedStrategy<Call> {
    let vote = pick![absurd_vote(), own_vote(k)];
    let append = (
        vote.clone(),
        proptest::option::of(log_id()),
        entries(),
        proptest::option::of(log_id()),
    )
        .prop_map(|(vote, prev_log_id, entries, leader_commit)| {
            let req = AppendEntriesRequest::<TypeConfig> {
                vote,
                prev_log_id,
                entries,
                leader_commit,
            };
            Call::Raft {
                rpc: 0,
                what: format!("{req:?}"),
                data: codec::encode(&req).unwrap(),
            }
        });
    let vote_req = (vote.clone(), proptest::option::of(log_id())).prop_map(|(vote, last)| {
        let req = VoteRequest::new(vote, last);
        Call::Raft {
            rpc: 1,
            what: format!("{req:?}"),
            data: codec::encode(&req).unwrap(),
        }
    });
    let snapshot = (
        vote,
        proptest::option::of(log_id()),
        (text(), big(), bytes(300), any::<bool>()),
    )
        .prop_map(|(vote, last_log_id, (snapshot_id, offset, data, done))| {
            let req = InstallSnapshotRequest::<TypeConfig> {
                vote,
                meta: SnapshotMeta {
                    last_log_id,
                    last_membership: Default::default(),
                    snapshot_id,
                },
                offset,
                data,
                done,
            };
            let what = format!(
                "InstallSnapshot vote {} meta {:?} offset {} {} bytes done {}",
                req.vote,
                req.meta,
                req.offset,
                req.data.len(),
                req.done
            );
            Call::Raft {
                rpc: 2,
                what,
                data: codec::encode(&req).unwrap(),
            }
        });
    let garbage = (0u8..3, bytes(400), any::<bool>()).prop_map(|(rpc, body, formatted)| {
        // With the format byte first, the bytes reach postcard itself.
        let data = if formatted {
            [vec![codec::FORMAT], body].concat()
        } else {
            body
        };
        Call::Raft {
            rpc,
            what: "random bytes".into(),
            data,
        }
    });
    let impersonate =
        pick![Just(0u64), Just(1u64), 2u64..5].prop_map(|back| Call::Impersonate { back });
    pick![append, vote_req, snapshot, garbage, impersonate]
}

/// The AppendEntries of [`Call::Impersonate`] for a leader at `term` whose log ends at `last`.
fn impersonation(term: u64, last: u64, back: u64) -> AppendEntriesRequest<TypeConfig> {
    let own = |index: u64| LogId::new(CommittedLeaderId::new(term, 1), index);
    let prev = last.saturating_sub(back);
    AppendEntriesRequest {
        vote: Vote::new_committed(term, 1),
        prev_log_id: Some(own(prev)),
        entries: vec![openraft::Entry {
            log_id: own(prev + 1),
            payload: EntryPayload::Normal(forged_create(IMPERSONATION.to_vec())),
        }],
        leader_commit: Some(own(prev + 1)),
    }
}

/// Every hostile call, each area weighted by how many RPCs it has.
fn hostile(k: &Known) -> BoxedStrategy<Hostile> {
    let call = Union::new_weighted(vec![
        (10, namespace_calls(k)),
        (6, file_calls(k)),
        (7, cluster_calls(k)),
        (7, session_calls(k)),
        (4, xattr_calls(k)),
        (6, upload_calls(k)),
        (6, raft_calls(k)),
    ]);
    let rid = pick![
        Just(Rid::None),
        Just(Rid::None),
        (any::<u64>(), any::<u64>()).prop_map(|(c, s)| Rid::Valid(c, s)),
        text().prop_map(Rid::Garbage),
    ];
    (call, rid)
        .prop_map(|(call, rid)| Hostile { call, rid })
        .boxed()
}

// --- sending -------------------------------------------------------------------------------

fn with_rid<T>(msg: T, rid: &Rid) -> Request<T> {
    let mut r = Request::new(msg);
    let value = match rid {
        Rid::None => None,
        Rid::Valid(c, s) => Some(cairn_common::meta_client::format_request_id((*c, *s))),
        Rid::Garbage(s) => Some(s.clone()),
    };
    if let Some(v) = value.and_then(|v| v.parse().ok()) {
        r.metadata_mut()
            .insert(cairn_common::meta_client::REQUEST_ID_KEY, v);
    }
    r
}

/// Sends one hostile request; `Ok` when the node answered (success or an error status).
/// `(term, last)`: the leader's term and last log index as the request goes out.
async fn send(
    meta: &mut MetaServiceClient<Channel>,
    raft: &mut RaftServiceClient<Channel>,
    (term, last): (u64, u64),
    h: Hostile,
) -> Result<(), Status> {
    let rid = h.rid;
    macro_rules! call {
        ($m:ident, $r:expr) => {
            meta.$m(with_rid($r, &rid)).await.map(drop)
        };
    }
    match h.call {
        Call::Lookup(r) => call!(lookup, r),
        Call::GetAttr(r) => call!(get_attr, r),
        Call::SetAttr(r) => call!(set_attr, r),
        Call::Create(r) => call!(create, r),
        Call::Link(r) => call!(link, r),
        Call::Unlink(r) => call!(unlink, r),
        Call::Rmdir(r) => call!(rmdir, r),
        Call::Rename(r) => call!(rename, r),
        Call::Readlink(r) => call!(readlink, r),
        Call::ReadDir(r) => call!(read_dir, r),
        Call::GetChunks(r) => call!(get_chunks, r),
        Call::PrepareWrite(r) => call!(prepare_write, r),
        Call::CommitWrite(r) => call!(commit_write, r),
        Call::StatFs(r) => call!(stat_fs, r),
        Call::Register(r) => call!(register_chunk_server, r),
        Call::Heartbeat(r) => call!(heartbeat, r),
        Call::ReportBadReplica(r) => call!(report_bad_replica, r),
        Call::Fsck(r) => call!(fsck, r),
        Call::Drain(r) => call!(drain, r),
        Call::ClusterStatus(r) => call!(cluster_status, r),
        Call::NodeStatus(r) => call!(node_status, r),
        Call::OpenSession(r) => call!(open_session, r),
        Call::RenewSession(r) => call!(renew_session, r),
        Call::CloseSession(r) => call!(close_session, r),
        Call::ReleaseOrphan(r) => call!(release_orphan, r),
        Call::SetLock(r) => call!(set_lock, r),
        Call::GetLock(r) => call!(get_lock, r),
        Call::ReleaseLocks(r) => call!(release_locks, r),
        Call::GetXattr(r) => call!(get_xattr, r),
        Call::ListXattr(r) => call!(list_xattr, r),
        Call::SetXattr(r) => call!(set_xattr, r),
        Call::RemoveXattr(r) => call!(remove_xattr, r),
        Call::OpenUpload(r) => call!(open_upload, r),
        Call::RecordUpload(r) => call!(record_upload, r),
        Call::ListUploads(r) => call!(list_uploads, r),
        Call::GetUpload(r) => call!(get_upload, r),
        Call::AbortUpload(r) => call!(abort_upload, r),
        Call::CommitUpload(r) => call!(commit_upload, r),
        Call::Impersonate { back } => {
            let data = codec::encode(&impersonation(term, last, back)).unwrap();
            raft.append_entries(pb::RaftPayload { data: data.into() })
                .await
                .map(drop)
        }
        Call::Raft { rpc, data, .. } => {
            let p = pb::RaftPayload { data: data.into() };
            match rpc % 3 {
                0 => raft.append_entries(p).await.map(drop),
                1 => raft.vote(p).await.map(drop),
                _ => raft.install_snapshot(p).await.map(drop),
            }
        }
    }
}

/// Whether an error status is an answer (the request refused for a reason the client can act
/// on) rather than a sign of a broken server: `Unknown` is what a client sees of a panicked
/// handler or a reset stream, `Internal` is a server bug or a storage failure, `DataLoss`
/// corruption.
fn is_answer(s: &Status) -> bool {
    !matches!(s.code(), Code::Unknown | Code::Internal | Code::DataLoss)
}

/// One case of the barrage: the request is answered in time, with an answer, nothing
/// panicked, and the node still leads.
fn check_case(
    rt: &tokio::runtime::Runtime,
    node: &cairn_meta_server::RunningNode,
    meta: &MetaServiceClient<Channel>,
    raft: &RaftServiceClient<Channel>,
    tally: &Mutex<BTreeMap<String, usize>>,
    h: Hostile,
) -> Result<(), TestCaseError> {
    let (mut meta, mut raft) = (meta.clone(), raft.clone());
    // A header block past the HTTP/2 limit (16 KiB) is refused by the transport, which resets
    // the stream: the client sees `Unknown` "transport error", and that is the refusal.
    let huge_header = matches!(&h.rid, Rid::Garbage(s) if s.len() > 16 * 1024);
    let to_raft = matches!(h.call, Call::Raft { .. } | Call::Impersonate { .. });
    let status = node.node.local_status();
    let log = (status.term, status.last_log_index);
    let answered = rt.block_on(async {
        let first =
            tokio::time::timeout(CALL_TIMEOUT, send(&mut meta, &mut raft, log, h.clone())).await;
        match first {
            // The connection the request went out on was being closed (the transport's answer
            // to an earlier oversized header block): the request never reached a handler.
            // Sent again on a new connection, it must be answered.
            Ok(Err(s)) if s.code() == Code::Cancelled => {
                tokio::time::timeout(CALL_TIMEOUT, send(&mut meta, &mut raft, log, h)).await
            }
            other => other,
        }
    });
    let p = panics();
    if !p.is_empty() {
        return Err(TestCaseError::fail(format!("the node panicked: {p:?}")));
    }
    let outcome = match &answered {
        Ok(Ok(())) => "Ok".to_string(),
        // Transport-level outcomes with what caused them.
        Ok(Err(s))
            if matches!(
                s.code(),
                Code::Unknown | Code::Cancelled | Code::Unavailable
            ) =>
        {
            format!("{:?} {:.60}", s.code(), s.message())
        }
        Ok(Err(s)) => format!("{:?}", s.code()),
        Err(_) => "timeout".to_string(),
    };
    *tally
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(outcome)
        .or_default() += 1;
    match answered {
        Err(_) => {
            return Err(TestCaseError::fail(format!(
                "no answer within {CALL_TIMEOUT:?}: the node is stuck"
            )))
        }
        Ok(Err(s)) if huge_header && s.code() == Code::Unknown => {}
        Ok(Err(s)) if !is_answer(&s) => {
            return Err(TestCaseError::fail(format!(
                "answered {:?} {:?}: not a refusal but a server failure",
                s.code(),
                s.message()
            )))
        }
        Ok(_) => {}
    }
    if !node.node.is_leader() {
        return Err(TestCaseError::fail("the node lost its leadership"));
    }
    if to_raft {
        // No forged entry was applied (nor did the request wedge the leader's log).
        let lookup = rt.block_on(async {
            let req = pb::LookupRequest {
                parent: 1,
                name: IMPERSONATION.to_vec(),
            };
            tokio::time::timeout(CALL_TIMEOUT, meta.lookup(req)).await
        });
        match lookup {
            Err(_) => return Err(TestCaseError::fail("the leader stopped answering reads")),
            Ok(Ok(_)) => return Err(TestCaseError::fail("a forged Raft entry was applied")),
            Ok(Err(s)) if s.code() == Code::NotFound => {}
            Ok(Err(s)) => return Err(TestCaseError::fail(format!("lookup after it: {s}"))),
        }
    }
    Ok(())
}

fn runner_config() -> PtConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    PtConfig {
        cases,
        // No shrinking: the requests change the server's state, so a "smaller" request would run
        // against another state than the failing one and name the wrong culprit. The failure
        // names the very request that did harm.
        max_shrink_iters: 0,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        ..PtConfig::default()
    }
}

fn seeded_rng() -> TestRng {
    let seed = match std::env::var("CAIRN_FUZZ_SEED") {
        Ok(s) => *blake3::hash(s.as_bytes()).as_bytes(),
        Err(_) => *SEED,
    };
    TestRng::from_seed(RngAlgorithm::ChaCha, &seed)
}

/// A few hundred hostile requests (fixed seed) to every MetaService RPC and as RaftService
/// payloads leave the one-node cluster healthy: every request is answered in time with a
/// status (never a panic, a hang or a server failure), the node keeps leading throughout,
/// control files made before the barrage read back exactly as before, a new file can be
/// written, fsck finds nothing lost, and after a restart from its data directory the node
/// leads again with the same state and keeps writing.
#[test]
fn hostile_requests_leave_the_cluster_healthy() {
    watch_panics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let node = rt.block_on(start_node(dir.path(), l));

    tracing::info!("--- control files, and objects for the barrage to aim at");
    let (mut meta, raft) = rt.block_on(clients(&addr));
    let (control, before, known, fake) = rt.block_on(async {
        wait_leader(&node).await;
        let fake = register_fake_servers(&mut meta).await;
        let control = Control::make(&mut meta).await;
        let before = control.views(&mut meta).await;
        let dir = create(&mut meta, 1, b"scratch", pb::FileKind::Directory, b"").await;
        let file = create(&mut meta, dir.ino, b"f", pb::FileKind::Regular, b"").await;
        let (file, chunk) = write_chunk(&mut meta, &file, b"scratch chunk").await;
        let link = create(&mut meta, dir.ino, b"l", pb::FileKind::Symlink, b"f").await;
        let session = meta
            .open_session(pb::OpenSessionRequest {
                host: "fuzz".into(),
                mountpoint: "/mnt".into(),
                pid: 1,
            })
            .await
            .unwrap()
            .into_inner()
            .session;
        let upload = meta
            .open_upload(pb::OpenUploadRequest {
                ino: file.ino,
                base_version: file.version,
                label: "fuzz".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .upload;
        let term = node.node.local_status().term;
        let known = Known {
            dir: dir.ino,
            file: file.ino,
            link: link.ino,
            chunk,
            session,
            upload,
            term,
            control: control.inodes(),
        };
        (control, before, known, fake)
    });
    assert_eq!(
        before[1].slots[0].2.as_deref(),
        Some(&control.inline_data[..]),
        "the inline control file holds its bytes"
    );

    // The fake servers' true heartbeats go on through the barrage.
    let keeper = {
        let (mut c, fake) = (meta.clone(), fake.clone());
        rt.spawn(async move {
            loop {
                heartbeat_fake_servers(&mut c, &fake).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    tracing::info!("--- the barrage");
    let started = Instant::now();
    let mut runner = TestRunner::new_with_rng(runner_config(), seeded_rng());
    let cases = runner.config().cases;
    let tally = Mutex::new(BTreeMap::new());
    let result = runner.run(&hostile(&known), |h| {
        check_case(&rt, &node, &meta, &raft, &tally, h)
    });
    if let Err(e) = result {
        panic!("a hostile request did harm: {e}");
    }
    eprintln!(
        "hostile: {cases} requests answered in {:.1} s: {:?}",
        started.elapsed().as_secs_f64(),
        tally.lock().unwrap_or_else(|e| e.into_inner())
    );
    keeper.abort();

    tracing::info!("--- afterwards: the same leader, the same control files, writes work");
    let after_write = rt.block_on(async {
        assert!(node.node.is_leader(), "still the leader");
        heartbeat_fake_servers(&mut meta, &fake).await;
        assert_eq!(
            control.views(&mut meta).await,
            before,
            "control files unchanged"
        );
        let d = create(&mut meta, 1, b"after-barrage", pb::FileKind::Directory, b"").await;
        let f = create(&mut meta, d.ino, b"new", pb::FileKind::Regular, b"").await;
        let (a, _) = write_chunk(&mut meta, &f, b"written after the barrage").await;
        assert_eq!(a.size, 25);
        let got = view(&mut meta, f.ino).await;
        assert_eq!(got.slots.len(), 1);
        assert_no_forged_entries(&mut meta).await;
        assert_eq!(got.slots[0].3.len(), 3, "three replicas listed");

        // fsck through the service: files the barrage itself committed may name chunks on
        // servers it registered and never started (a client may claim any registered server
        // acknowledged a chunk); nothing of ours is affected and the replicas agree.
        let mut tries = 0;
        let report = loop {
            match meta.fsck(pb::FsckRequest { max_files: 10_000 }).await {
                Ok(r) => break r.into_inner(),
                // A leader still learning which servers are up says so; it does not last.
                Err(s) if s.code() == Code::Unavailable && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(s) => panic!("fsck: {s}"),
            }
        };
        assert!(!report.meta_diverged);
        let ours: Vec<_> = report
            .affected
            .iter()
            .filter(|f| f.path.starts_with("/hostile-control") || f.path.starts_with("/after"))
            .collect();
        assert!(ours.is_empty(), "fsck: {ours:?}");
        (f.ino, got)
    });
    let applied = node.node.local_status().last_applied;

    tracing::info!("--- a restart from the data directory: the same state, and it still writes");
    drop((meta, raft));
    rt.block_on(node.shutdown()).unwrap();
    let mut node = rt.block_on(async {
        let l = tokio::net::TcpListener::bind(&addr).await.unwrap();
        start_node(dir.path(), l).await
    });
    rt.block_on(async {
        wait_leader(&node).await;
        let (mut meta, _raft) = clients(&addr).await;
        assert!(node.node.local_status().last_applied >= applied);
        assert_eq!(
            control.views(&mut meta).await,
            before,
            "control files unchanged"
        );
        assert_eq!(view(&mut meta, after_write.0).await, after_write.1);
        let report = cairn_meta_server::fsck::fsck(node.node.fsm(), 3, |_| true, 10_000).unwrap();
        assert_eq!(
            report.missing, 0,
            "every chunk has a replica: {:?}",
            report.affected
        );
        let f = create(&mut meta, 1, b"after-restart", pb::FileKind::Regular, b"").await;
        heartbeat_fake_servers(&mut meta, &fake).await;
        write_chunk(&mut meta, &f, b"written after the restart").await;
        assert!(
            tokio::time::timeout(Duration::from_millis(300), node.stopped())
                .await
                .is_err(),
            "the node keeps running"
        );
    });
    assert!(panics().is_empty(), "panics: {:?}", panics());
    rt.block_on(node.shutdown()).unwrap();
}

/// No command of a forged Raft entry was applied: none of the names they create exists.
async fn assert_no_forged_entries(c: &mut MetaServiceClient<Channel>) {
    let mut after = Vec::new();
    loop {
        let page = c
            .read_dir(pb::ReadDirRequest {
                ino: 1,
                after: after.clone(),
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        for e in &page.entries {
            assert!(
                !e.name.starts_with(b"forged-"),
                "a forged Raft entry was applied: {:?}",
                String::from_utf8_lossy(&e.name)
            );
        }
        match page.entries.last() {
            Some(e) if !page.eof => after = e.name.clone(),
            _ => break,
        }
    }
}

// --- regressions: what the barrage found, each as a plain deterministic test ---------------

/// Starts a one-node cluster for a regression test.
async fn one_node() -> (tempfile::TempDir, cairn_meta_server::RunningNode, String) {
    let dir = tempfile::tempdir().unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let node = start_node(dir.path(), l).await;
    wait_leader(&node).await;
    (dir, node, addr)
}

/// A Raft payload of commands nested a million deep (`Once` inside `Once` inside …, some 5 MB)
/// is refused as malformed. Decoding it recursed once per level: the stack of the runtime
/// thread overflowed, and a stack overflow aborts the whole process — one request killed the
/// meta node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_commands_in_a_raft_payload_are_refused() {
    let (_dir, node, addr) = one_node().await;
    let (_meta, mut raft) = clients(&addr).await;

    // The bytes are spliced together: building (or dropping) the nested value itself would
    // overflow this test's own stack.
    let marker = Command::Create(Create {
        parent: 1,
        name: b"nesting-marker-7d1f3a".to_vec(),
        kind: cairn_common::Kind::Regular,
        mode: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        symlink_target: Vec::new(),
        exclusive: true,
        now: cairn_common::Time::default(),
    });
    let once = Command::Once(Once {
        client: 0,
        seq: 0,
        now: cairn_common::Time::default(),
        cmd: Box::new(marker.clone()),
    });
    let marker_bytes = codec::encode(&marker).unwrap()[1..].to_vec();
    let once_bytes = codec::encode(&once).unwrap()[1..].to_vec();
    assert!(once_bytes.ends_with(&marker_bytes));
    let level = &once_bytes[..once_bytes.len() - marker_bytes.len()];
    let req = AppendEntriesRequest::<TypeConfig> {
        // A stale vote: were the payload decoded, it would be refused anyway.
        vote: Vote::new_committed(0, 2),
        prev_log_id: None,
        entries: vec![openraft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(0, 2), 1),
            payload: EntryPayload::Normal(marker),
        }],
        leader_commit: None,
    };
    let plain = codec::encode(&req).unwrap();
    let at = plain
        .windows(marker_bytes.len())
        .position(|w| w == marker_bytes)
        .unwrap();
    const DEPTH: usize = 1_000_000;
    let mut data = Vec::with_capacity(plain.len() + DEPTH * level.len());
    data.extend_from_slice(&plain[..at]);
    for _ in 0..DEPTH {
        data.extend_from_slice(level);
    }
    data.extend_from_slice(&plain[at..]);
    assert!(data.len() < cairn_proto::MAX_MESSAGE_BYTES);

    let e = raft
        .append_entries(pb::RaftPayload { data: data.into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("malformed"), "{e}");
    assert!(node.node.is_leader());
    node.shutdown().await.unwrap();
}

/// A PrepareWrite listing millions of servers to avoid is refused at once. Placement compared
/// every candidate server with every avoided id for every chunk asked about: 1024 chunks and a
/// 4-million-entry list held a runtime thread for seconds with three servers up (and longer
/// with more). A list up to [`MAX_EXCLUDE_SERVERS`] is still served, and still honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_exclude_list_is_refused() {
    let (_dir, node, addr) = one_node().await;
    let (mut meta, _raft) = clients(&addr).await;
    let fake = register_fake_servers(&mut meta).await;
    let cref = pb::ChunkRef {
        id: ChunkId::of(b"x").as_bytes().to_vec(),
        len: 1,
        stored_len: 1,
    };
    let prepare = |exclude_servers: Vec<u64>| pb::PrepareWriteRequest {
        chunks: vec![cref.clone(); MAX_PREPARE_CHUNKS],
        exclude_servers,
    };
    let started = Instant::now();
    match meta.prepare_write(prepare(vec![9; 4_000_000])).await {
        Ok(_) => panic!("an exclude list of 4 million servers was served"),
        Err(e) => assert_eq!(e.code(), Code::InvalidArgument, "{e}"),
    }
    match meta
        .prepare_write(prepare(vec![9; MAX_EXCLUDE_SERVERS + 1]))
        .await
    {
        Ok(_) => panic!("an exclude list over the bound was served"),
        Err(e) => assert_eq!(e.code(), Code::InvalidArgument, "{e}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut exclude = vec![9; MAX_EXCLUDE_SERVERS - 1];
    exclude.push(fake[0]);
    let p = meta
        .prepare_write(prepare(exclude))
        .await
        .expect("a list at the bound is served")
        .into_inner();
    assert_eq!(p.placements.len(), MAX_PREPARE_CHUNKS);
    for place in &p.placements {
        assert_eq!(
            place.targets.len(),
            3,
            "an avoided server fills in when needed"
        );
        assert_eq!(place.targets[2].server_id, fake[0], "but comes last");
    }
    node.shutdown().await.unwrap();
}

/// A forged AppendEntries that carries the leader's own vote — its term and its id, both
/// public in ClusterStatus — and a log entry of its own making is refused, and its entry is
/// never appended nor applied. No node sends Raft RPCs to itself; without the check the leader
/// took the request as its own leader's and appended the entry to its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_request_impersonating_the_node_itself_is_refused() {
    let (dir, node, addr) = one_node().await;
    let (mut meta, mut raft) = clients(&addr).await;
    create(&mut meta, 1, b"before", pb::FileKind::Regular, b"").await;
    let st = node.node.local_status();
    let (term, last) = (st.term, st.last_log_index);
    let own = |index: u64| LogId::new(CommittedLeaderId::new(term, 1), index);
    let forged = |index: u64| openraft::Entry::<TypeConfig> {
        log_id: own(index),
        payload: EntryPayload::Normal(Command::Create(Create {
            parent: 1,
            name: b"forged-by-impersonation".to_vec(),
            kind: cairn_common::Kind::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            symlink_target: Vec::new(),
            exclusive: true,
            now: cairn_common::Time::default(),
        })),
    };
    for (prev, index) in [
        (Some(own(last)), last + 1),
        (Some(own(last - 1)), last),
        (None, 1),
    ] {
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(term, 1),
            prev_log_id: prev,
            entries: vec![forged(index)],
            leader_commit: Some(own(index)),
        };
        let e = raft
            .append_entries(pb::RaftPayload {
                data: codec::encode(&req).unwrap().into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    }
    assert!(node.node.is_leader());
    create(&mut meta, 1, b"after", pb::FileKind::Regular, b"").await;
    assert_no_forged_entries(&mut meta).await;
    drop((meta, raft));
    node.shutdown().await.unwrap();

    let l = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let node = start_node(dir.path(), l).await;
    wait_leader(&node).await;
    let (mut meta, _raft) = clients(&addr).await;
    assert_no_forged_entries(&mut meta).await;
    create(&mut meta, 1, b"after-restart", pb::FileKind::Regular, b"").await;
    node.shutdown().await.unwrap();
}

/// The command a forged entry carries: a file `name` in the root, which must never appear.
fn forged_create(name: Vec<u8>) -> Command {
    Command::Create(Create {
        parent: 1,
        name,
        kind: cairn_common::Kind::Regular,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        symlink_target: Vec::new(),
        exclusive: true,
        now: cairn_common::Time::default(),
    })
}
