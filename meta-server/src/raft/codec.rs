//! The binary encoding of everything Raft keeps and sends: log entries, the vote and the other
//! records of the log store, and the RPCs between meta nodes.
//!
//! A value is one format byte ([`FORMAT`]) followed by the value's
//! [postcard](https://docs.rs/postcard) encoding (serde; integers as varints, byte strings as a
//! length and the bytes, enums as a varint tag: a `Vec<u8>` costs its length plus one byte,
//! where JSON spent up to four bytes per byte). postcard is not self-describing, so serde
//! attributes that need a self-describing format (`skip_serializing_if`, untagged or flattened
//! enums) must not appear in any type encoded here; openraft 0.9's types and the command types
//! have none (`command.rs` says so where it matters).
//!
//! The format byte lets a node tell a value of another encoding (a JSON value of an older
//! node starts with `{` or `[`, a future format has another number) from a value of its own and
//! refuse it loudly, rather than misread it. A value must decode completely: trailing bytes are
//! an error too.
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format byte of every value this node writes.
pub const FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty value")]
    Empty,
    #[error("value has format byte {0:#04x}; this node reads format {FORMAT:#04x} only")]
    Format(u8),
    #[error("malformed value: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("malformed value: {0} bytes left over after the value")]
    Trailing(usize),
}

/// `value`, encoded (format byte first).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT);
    Ok(postcard::to_extend(value, out)?)
}

/// Decodes a whole value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&format, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if format != FORMAT {
        return Err(CodecError::Format(format));
    }
    let (value, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(CodecError::Trailing(rest.len()));
    }
    Ok(value)
}

/// The length of [`encode`]`(value)`, without encoding it.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, CodecError> {
    Ok(1 + postcard::experimental::serialized_size(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::*;
    use crate::raft::{Entry, LogId, NodeId, SnapshotMeta, StoredMembership, TypeConfig, Vote};
    use cairn_common::ChunkId;
    use openraft::error::{Fatal, InstallSnapshotError, RaftError, SnapshotMismatch};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft::{BasicNode, CommittedLeaderId, EntryPayload, Membership};
    use std::collections::{BTreeMap, BTreeSet};
    use std::fmt::Debug;

    /// The variant's name; the match is exhaustive, so a new command must be added here (and
    /// to [`every_command`], or the round-trip test fails).
    fn variant(c: &Command) -> &'static str {
        match c {
            Command::Create(_) => "Create",
            Command::Link(_) => "Link",
            Command::Unlink(_) => "Unlink",
            Command::Rmdir(_) => "Rmdir",
            Command::Rename(_) => "Rename",
            Command::SetAttr(_) => "SetAttr",
            Command::CommitWrite(_) => "CommitWrite",
            Command::RegisterChunkServer(_) => "RegisterChunkServer",
            Command::DropReplica(_) => "DropReplica",
            Command::SuspectReplica(_) => "SuspectReplica",
            Command::AddReplica(_) => "AddReplica",
            Command::RemoveReplica(_) => "RemoveReplica",
            Command::SetDraining(_) => "SetDraining",
            Command::GcBegin(_) => "GcBegin",
            Command::GcSwept(_) => "GcSwept",
            Command::GcPrune(_) => "GcPrune",
            Command::GcOrphans(_) => "GcOrphans",
            Command::Once(_) => "Once",
            Command::PruneRequests(_) => "PruneRequests",
            Command::Batch(_) => "Batch",
            Command::SetXattr(_) => "SetXattr",
            Command::RemoveXattr(_) => "RemoveXattr",
            Command::OpenSession(_) => "OpenSession",
            Command::RenewSession(_) => "RenewSession",
            Command::CloseSession(_) => "CloseSession",
            Command::ReleaseOrphan(_) => "ReleaseOrphan",
            Command::SetLock(_) => "SetLock",
            Command::ReleaseLocks(_) => "ReleaseLocks",
            Command::OpenUpload(_) => "OpenUpload",
            Command::RecordUpload(_) => "RecordUpload",
            Command::AbortUpload(_) => "AbortUpload",
            Command::CommitUpload(_) => "CommitUpload",
            Command::Group(_) => "Group",
            Command::CommitInline(_) => "CommitInline",
        }
    }

    /// One of each command, with every optional field set and unset somewhere.
    fn every_command() -> Vec<Command> {
        let now = Time {
            secs: -5,
            nanos: 999_999_999,
        };
        let id = ChunkId::of(b"chunk");
        let keep = Keep {
            session: 9,
            open: vec![1, u64::MAX],
        };
        let updates = vec![
            SlotUpdate {
                index: 0,
                chunk: Some(SlotChunk {
                    id,
                    len: 4096,
                    stored_len: 100,
                }),
                replicas: vec![1, 2, 3],
                ticket: 7,
            },
            SlotUpdate {
                index: 1 << 40,
                chunk: None,
                replicas: Vec::new(),
                ticket: 0,
            },
        ];
        let create = Command::Create(Create {
            parent: 1,
            name: b"f\xff".to_vec(),
            kind: Kind::Symlink,
            mode: 0o777,
            uid: u32::MAX,
            gid: 0,
            rdev: 3,
            symlink_target: b"/t".to_vec(),
            exclusive: true,
            now,
        });
        vec![
            create.clone(),
            Command::Link(Link {
                ino: 2,
                new_parent: 1,
                new_name: b"l".to_vec(),
                now,
            }),
            Command::Unlink(Unlink {
                parent: 1,
                name: b"u".to_vec(),
                now,
                keep: keep.clone(),
            }),
            Command::Rmdir(Rmdir {
                parent: 1,
                name: b"d".to_vec(),
                now,
            }),
            Command::Rename(Rename {
                parent: 1,
                name: b"a".to_vec(),
                new_parent: 3,
                new_name: b"b".to_vec(),
                flags: RENAME_EXCHANGE,
                now,
                keep: Keep::default(),
            }),
            Command::SetAttr(SetAttr {
                ino: 2,
                mode: Some(0o600),
                uid: None,
                gid: Some(5),
                size: Some(u64::MAX),
                atime: None,
                mtime: Some(now),
                now,
            }),
            Command::CommitWrite(CommitWrite {
                ino: 2,
                base_version: 3,
                size: 8192,
                updates: updates.clone(),
                mtime: None,
                now,
                upload: 4,
                apply_upload: true,
                replace: true,
            }),
            Command::CommitInline(CommitInline {
                write: CommitWrite {
                    ino: 2,
                    base_version: 0,
                    size: 3,
                    updates: updates.clone(),
                    mtime: Some(now),
                    now,
                    upload: 0,
                    apply_upload: false,
                    replace: false,
                },
                inline: vec![InlineChunk {
                    id: ChunkId::inline_of(b"abc"),
                    data: b"abc".to_vec(),
                }],
            }),
            Command::RegisterChunkServer(RegisterChunkServer {
                uuid: "uuid-ü".into(),
                addr: "127.0.0.1:1".into(),
            }),
            Command::DropReplica(DropReplica { id, server: 1, now }),
            Command::SuspectReplica(SuspectReplica { id, server: 2, now }),
            Command::AddReplica(AddReplica { id, server: 2 }),
            Command::RemoveReplica(RemoveReplica { id, server: 3 }),
            Command::SetDraining(SetDraining {
                server: 1,
                draining: true,
            }),
            Command::GcBegin(GcBegin {
                ids: vec![id, ChunkId::of(b"other")],
                now,
            }),
            Command::GcSwept(GcSwept {
                id,
                servers: vec![1, 2],
                now,
            }),
            Command::GcPrune(GcPrune { before: now }),
            Command::GcOrphans(GcOrphans {
                ids: Vec::new(),
                now,
            }),
            Command::Once(Once {
                client: 1,
                seq: 2,
                now,
                cmd: Box::new(create.clone()),
            }),
            Command::PruneRequests(PruneRequests {
                before: now,
                before_index: 5,
            }),
            Command::Batch(Batch {
                cmds: vec![create.clone(), Command::GcPrune(GcPrune { before: now })],
            }),
            Command::Group(Group {
                cmds: vec![
                    Command::Once(Once {
                        client: 3,
                        seq: 4,
                        now,
                        cmd: Box::new(create),
                    }),
                    Command::GcPrune(GcPrune { before: now }),
                ],
            }),
            Command::SetXattr(SetXattr {
                ino: 2,
                name: b"user.x".to_vec(),
                value: vec![0, 255, 7],
                flags: XATTR_CREATE,
                now,
            }),
            Command::RemoveXattr(RemoveXattr {
                ino: 2,
                name: b"user.x".to_vec(),
                now,
            }),
            Command::OpenSession(OpenSession {
                host: "h".into(),
                mountpoint: "/mnt".into(),
                pid: 77,
                now,
            }),
            Command::RenewSession(RenewSession { session: 9, now }),
            Command::CloseSession(CloseSession {
                session: 9,
                idle_through: Some(7),
                now,
            }),
            Command::ReleaseOrphan(ReleaseOrphan {
                session: 9,
                ino: 4,
                now,
            }),
            Command::SetLock(SetLock {
                ino: 2,
                session: 9,
                owner: 11,
                lock: LockRange {
                    typ: LockType::Write,
                    start: 0,
                    end: u64::MAX,
                    pid: 1,
                },
            }),
            Command::ReleaseLocks(ReleaseLocks {
                ino: 2,
                session: 9,
                owner: 11,
            }),
            Command::OpenUpload(OpenUpload {
                target: UploadTarget::Name {
                    parent: 1,
                    name: b"n".to_vec(),
                },
                base_version: 0,
                label: "label".into(),
                host: "host".into(),
                now,
            }),
            Command::OpenUpload(OpenUpload {
                target: UploadTarget::Inode(2),
                base_version: 5,
                label: String::new(),
                host: String::new(),
                now,
            }),
            Command::RecordUpload(RecordUpload {
                upload: 4,
                updates,
                now,
            }),
            Command::AbortUpload(AbortUpload {
                upload: 4,
                idle_through: None,
                now,
            }),
            Command::CommitUpload(CommitUpload {
                upload: 4,
                size: 1,
                mtime: Some(now),
                mode: 0o644,
                uid: 1,
                gid: 2,
                now,
            }),
        ]
    }

    /// Decodes what `value` encodes to, and checks nothing was lost (same debug form, same
    /// bytes when encoded again).
    fn round_trip<T: Serialize + DeserializeOwned + Debug>(value: &T) {
        let bytes = encode(value).unwrap();
        assert_eq!(bytes[0], FORMAT);
        assert_eq!(encoded_len(value).unwrap(), bytes.len());
        let back: T = decode(&bytes).unwrap_or_else(|e| panic!("{value:?}: {e}"));
        assert_eq!(format!("{back:?}"), format!("{value:?}"));
        assert_eq!(encode(&back).unwrap(), bytes);
    }

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(3, 1), index)
    }

    fn membership() -> Membership<NodeId, BasicNode> {
        let nodes: BTreeMap<NodeId, BasicNode> = (1..=3)
            .map(|i| (i, BasicNode::new(format!("127.0.0.1:{i}"))))
            .collect();
        Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([1, 2, 3])],
            nodes,
        )
    }

    #[test]
    fn every_command_round_trips() {
        let all = every_command();
        let names: BTreeSet<&str> = all.iter().map(variant).collect();
        assert_eq!(names.len(), 34, "one sample per command: {names:?}");
        for cmd in &all {
            round_trip(cmd);
            assert_eq!(&decode::<Command>(&encode(cmd).unwrap()).unwrap(), cmd);
            let entry = Entry {
                log_id: log_id(7),
                payload: EntryPayload::Normal(cmd.clone()),
            };
            round_trip(&entry);
        }
    }

    #[test]
    fn raft_records_and_rpcs_round_trip() {
        let entries: Vec<Entry> = vec![
            Entry {
                log_id: log_id(1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(2),
                payload: EntryPayload::Membership(membership()),
            },
            Entry {
                log_id: log_id(3),
                payload: EntryPayload::Normal(every_command().remove(6)),
            },
        ];
        let vote = Vote::new_committed(3, 1);
        round_trip(&vote);
        round_trip(&Vote::new(4, 2));
        round_trip(&Some(log_id(9)));
        round_trip(&None::<LogId>);
        round_trip(&AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: Some(log_id(0)),
            entries,
            leader_commit: None,
        });
        type Reply<T, E = openraft::error::Infallible> = Result<T, RaftError<NodeId, E>>;
        for resp in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(2))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(vote),
        ] {
            round_trip::<Reply<AppendEntriesResponse<NodeId>>>(&Ok(resp));
        }
        round_trip::<Reply<AppendEntriesResponse<NodeId>>>(&Err(RaftError::Fatal(Fatal::Stopped)));
        round_trip(&VoteRequest::new(vote, Some(log_id(5))));
        round_trip::<Reply<VoteResponse<NodeId>>>(&Ok(VoteResponse::new(
            vote,
            Some(log_id(5)),
            true,
        )));
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(5)),
            last_membership: StoredMembership::new(Some(log_id(2)), membership()),
            snapshot_id: "3-1-5-123".into(),
        };
        round_trip(&meta);
        round_trip(&InstallSnapshotRequest::<TypeConfig> {
            vote,
            meta: meta.clone(),
            offset: 1 << 33,
            data: vec![1, 2, 3, 0],
            done: true,
        });
        round_trip::<Reply<InstallSnapshotResponse<NodeId>, InstallSnapshotError>>(&Ok(
            InstallSnapshotResponse { vote },
        ));
        round_trip::<Reply<InstallSnapshotResponse<NodeId>, InstallSnapshotError>>(&Err(
            RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                expect: ("3-1-5-123", 0).into(),
                got: ("other", 4096).into(),
            })),
        ));
    }

    #[test]
    fn a_byte_string_costs_its_length_plus_a_few_bytes() {
        let value = vec![0xa5u8; 64 * 1024];
        let json = serde_json::to_vec(&value).unwrap().len();
        let ours = encode(&value).unwrap().len();
        assert!(ours <= value.len() + 4, "{ours} bytes");
        assert!(json > 3 * value.len(), "json: {json} bytes");
        // A chunk id is its 32 bytes (plus a length byte), not 64 hex characters.
        assert_eq!(encode(&ChunkId::of(b"x")).unwrap().len(), 1 + 1 + 32);
    }

    #[test]
    fn values_of_another_format_or_damaged_are_refused() {
        let cmd = every_command().remove(0);
        let good = encode(&cmd).unwrap();
        assert!(matches!(decode::<Command>(&[]), Err(CodecError::Empty)));
        let json = serde_json::to_vec(&cmd).unwrap();
        assert!(matches!(
            decode::<Command>(&json),
            Err(CodecError::Format(b'{'))
        ));
        let mut future = good.clone();
        future[0] = FORMAT + 1;
        assert!(matches!(
            decode::<Command>(&future),
            Err(CodecError::Format(_))
        ));
        assert!(matches!(
            decode::<Command>(&good[..good.len() - 3]),
            Err(CodecError::Malformed(_))
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            decode::<Command>(&trailing),
            Err(CodecError::Trailing(1))
        ));
        // A command tag no node knows.
        assert!(matches!(
            decode::<Command>(&[FORMAT, 0x7f]),
            Err(CodecError::Malformed(_))
        ));
    }

    /// Commands nest as deep as the proposer nests them (a group of a once around a batch),
    /// and no deeper: a deeper value is malformed, and decoding it does not recurse past the
    /// bound (a million levels used to overflow the stack and abort the process).
    #[test]
    fn commands_nested_too_deep_are_refused() {
        let leaf = Command::RenewSession(RenewSession {
            session: 1,
            now: Time::default(),
        });
        let once = |cmd: Command| {
            Command::Once(Once {
                client: 1,
                seq: 2,
                now: Time::default(),
                cmd: Box::new(cmd),
            })
        };
        let real = Command::Group(Group {
            cmds: vec![once(Command::Batch(Batch {
                cmds: vec![leaf.clone(), leaf.clone()],
            }))],
        });
        let bytes = encode(&real).unwrap();
        assert_eq!(decode::<Command>(&bytes).unwrap(), real);

        let mut deep = leaf.clone();
        for _ in 0..MAX_NESTING {
            deep = once(deep);
        }
        assert!(decode::<Command>(&encode(&deep).unwrap()).is_ok());
        let too_deep = once(deep);
        assert!(matches!(
            decode::<Command>(&encode(&too_deep).unwrap()),
            Err(CodecError::Malformed(_))
        ));
        // The depth count is back to zero after a refusal: the next value decodes.
        assert_eq!(decode::<Command>(&bytes).unwrap(), real);

        // A million levels, spliced together as bytes (building the value would overflow).
        let leaf_bytes = &encode(&leaf).unwrap()[1..];
        let one = &encode(&once(leaf.clone())).unwrap()[1..];
        let level = &one[..one.len() - leaf_bytes.len()];
        let mut huge = vec![FORMAT];
        for _ in 0..1_000_000 {
            huge.extend_from_slice(level);
        }
        huge.extend_from_slice(leaf_bytes);
        assert!(matches!(
            decode::<Command>(&huge),
            Err(CodecError::Malformed(_))
        ));
    }
}
