//! The namespace state machine on a temp RocksDB, applied the way Raft applies it: one batch per
//! command, written before the next command is applied.
use cairn_common::error::ErrorKind;
use cairn_common::{ChunkId, CHUNK_SIZE, ROOT_INO};
use cairn_meta_server::command::{
    self as cmd, Command, CommandResult, Keep, Kind, LockRange, LockType, Reply, SlotChunk,
    SlotUpdate, Time, UploadTarget, RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE,
};
use cairn_meta_server::fsm::{Fsm, Inode, UploadHeader, STATE_CFS};
use rocksdb::{Options, WriteBatch, DB};
use std::sync::Arc;

const MB4: u64 = CHUNK_SIZE as u64;

struct H {
    _dir: tempfile::TempDir,
    db: Arc<DB>,
    fsm: Fsm,
    clock: i64,
    /// The log index of the next command.
    index: u64,
}

fn open_db(path: &std::path::Path) -> Arc<DB> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    Arc::new(DB::open_cf(&opts, path, STATE_CFS).unwrap())
}

impl H {
    fn new() -> H {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let fsm = Fsm::open(db.clone()).unwrap();
        H {
            _dir: dir,
            db,
            fsm,
            clock: 1_000,
            index: 0,
        }
    }

    fn now(&mut self) -> Time {
        self.clock += 1;
        Time {
            secs: self.clock,
            nanos: 0,
        }
    }

    /// Applies like the Raft state machine: batch written after each command. A refused command
    /// must leave the batch empty.
    fn apply(&mut self, cmd: Command) -> CommandResult {
        let mut b = WriteBatch::default();
        self.index += 1;
        let r = self
            .fsm
            .apply(&cmd, self.index, &mut b, &mut blake3::Hasher::new());
        if r.is_err() {
            assert!(
                b.is_empty(),
                "refused command {cmd:?} put changes into the batch"
            );
        }
        self.db.write(b).unwrap();
        r
    }

    /// Registers chunk servers 1..=n (uuid `u{i}`, address `127.0.0.1:{i}`).
    fn register_servers(&mut self, n: u64) {
        for i in 1..=n {
            self.apply(Command::RegisterChunkServer(cmd::RegisterChunkServer {
                uuid: format!("u{i}"),
                addr: format!("127.0.0.1:{i}"),
            }))
            .unwrap();
        }
    }

    fn err(&mut self, cmd: Command) -> ErrorKind {
        match self.apply(cmd) {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(e) => e.kind,
        }
    }

    fn create(&mut self, parent: u64, name: &str, kind: Kind) -> Result<Inode, ErrorKind> {
        let now = self.now();
        let target = if kind == Kind::Symlink {
            b"/some/target".to_vec()
        } else {
            Vec::new()
        };
        match self.apply(Command::Create(cmd::Create {
            parent,
            name: name.as_bytes().to_vec(),
            kind,
            mode: 0o100644,
            uid: 10,
            gid: 20,
            rdev: 0,
            symlink_target: target,
            exclusive: true,
            now,
        })) {
            Ok(Reply::Attr(i)) => Ok(i),
            Ok(r) => panic!("unexpected reply {r:?}"),
            Err(e) => Err(e.kind),
        }
    }

    fn file(&mut self, parent: u64, name: &str) -> Inode {
        self.create(parent, name, Kind::Regular).unwrap()
    }

    fn mkdir(&mut self, parent: u64, name: &str) -> Inode {
        self.create(parent, name, Kind::Directory).unwrap()
    }

    /// Every non-hole slot of file `ino`, read page by page (small pages, to cross page
    /// boundaries), checking that every page is of one version.
    fn slots(&self, ino: u64) -> std::collections::BTreeMap<u64, SlotChunk> {
        let mut out = std::collections::BTreeMap::new();
        let (mut first, mut version) = (0, None);
        loop {
            let page = self.fsm.slot_page(ino, first, 3).unwrap();
            assert_eq!(
                *version.get_or_insert(page.inode.version),
                page.inode.version
            );
            for s in page.slots {
                assert!(s.index >= first, "a page starts at its first slot");
                out.insert(s.index, s.chunk);
            }
            match page.next {
                Some(n) => first = n,
                None => return out,
            }
        }
    }

    fn get(&self, ino: u64) -> Inode {
        self.fsm.get(ino).unwrap()
    }

    fn exists(&self, ino: u64) -> bool {
        self.fsm.get_opt(ino).unwrap().is_some()
    }

    fn lookup(&self, parent: u64, name: &str) -> Option<Inode> {
        self.fsm.lookup(parent, name.as_bytes()).ok()
    }

    fn unlink(&mut self, parent: u64, name: &str) -> Result<(), ErrorKind> {
        let now = self.now();
        self.apply(Command::Unlink(cmd::Unlink {
            parent,
            name: name.as_bytes().to_vec(),
            now,
            keep: Keep::default(),
        }))
        .map(|_| ())
        .map_err(|e| e.kind)
    }

    fn rmdir(&mut self, parent: u64, name: &str) -> Result<(), ErrorKind> {
        let now = self.now();
        self.apply(Command::Rmdir(cmd::Rmdir {
            parent,
            name: name.as_bytes().to_vec(),
            now,
        }))
        .map(|_| ())
        .map_err(|e| e.kind)
    }

    fn rename(&mut self, p: u64, n: &str, np: u64, nn: &str, flags: u32) -> Result<(), ErrorKind> {
        let now = self.now();
        self.apply(Command::Rename(cmd::Rename {
            parent: p,
            name: n.as_bytes().to_vec(),
            new_parent: np,
            new_name: nn.as_bytes().to_vec(),
            flags,
            now,
            keep: Keep::default(),
        }))
        .map(|_| ())
        .map_err(|e| e.kind)
    }

    fn commit(
        &mut self,
        ino: u64,
        size: u64,
        updates: Vec<SlotUpdate>,
    ) -> Result<Inode, ErrorKind> {
        let base = self.get(ino).version;
        self.commit_at(ino, base, size, updates)
    }

    /// A plain `CommitWrite` of `updates` on `base_version`, stamped now.
    fn commit_cmd(
        &mut self,
        ino: u64,
        base_version: u64,
        size: u64,
        updates: Vec<SlotUpdate>,
    ) -> cmd::CommitWrite {
        cmd::CommitWrite {
            ino,
            base_version,
            size,
            updates,
            mtime: None,
            now: self.now(),
            upload: 0,
            apply_upload: false,
            replace: false,
        }
    }

    fn commit_at(
        &mut self,
        ino: u64,
        base_version: u64,
        size: u64,
        updates: Vec<SlotUpdate>,
    ) -> Result<Inode, ErrorKind> {
        let write = self.commit_cmd(ino, base_version, size, updates);
        match self.apply(Command::CommitWrite(write)) {
            Ok(Reply::Attr(i)) => Ok(i),
            Ok(r) => panic!("unexpected reply {r:?}"),
            Err(e) => Err(e.kind),
        }
    }

    fn truncate(&mut self, ino: u64, size: u64) -> Inode {
        let now = self.now();
        match self.apply(Command::SetAttr(cmd::SetAttr {
            ino,
            mode: None,
            uid: None,
            gid: None,
            size: Some(size),
            atime: None,
            mtime: None,
            now,
        })) {
            Ok(Reply::Attr(i)) => i,
            r => panic!("unexpected {r:?}"),
        }
    }

    fn refs(&self, id: &ChunkId) -> Option<u64> {
        self.fsm.chunk(id).unwrap().map(|r| r.refs)
    }

    fn in_gc(&self, id: &ChunkId) -> bool {
        self.fsm.gc_queue().unwrap().iter().any(|(g, _)| g == id)
    }

    fn names(&self, dir: u64) -> Vec<String> {
        self.fsm
            .readdir(dir, b"", 10_000)
            .unwrap()
            .entries
            .into_iter()
            .map(|(n, _)| String::from_utf8(n).unwrap())
            .collect()
    }
}

/// Every upload with all its recorded slots, read through the paged listings.
fn uploads(fsm: &Fsm) -> Vec<(UploadHeader, Vec<(u64, SlotChunk)>)> {
    let (page, done) = fsm.upload_page(0, usize::MAX).unwrap();
    assert!(done);
    page.into_iter()
        .map(|u| {
            let (slots, next) = fsm.upload_slot_page(u.header.id, 0, usize::MAX).unwrap();
            assert_eq!(next, None);
            (u.header, slots)
        })
        .collect()
}

fn chunk(tag: &str, len: u32) -> SlotChunk {
    SlotChunk {
        id: ChunkId::of(tag.as_bytes()),
        len,
        stored_len: len,
    }
}

fn upd(index: u64, c: SlotChunk, replicas: &[u64]) -> SlotUpdate {
    SlotUpdate {
        index,
        chunk: Some(c),
        replicas: replicas.to_vec(),
        ticket: 0,
    }
}

#[test]
fn root_exists_and_reopen_keeps_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let fsm = Fsm::open(db.clone()).unwrap();
    let root = fsm.get(ROOT_INO).unwrap();
    assert_eq!(root.kind, Kind::Directory);
    assert_eq!(root.mode, 0o755);
    assert_eq!(root.nlink, 2);
    assert_eq!(root.parent, ROOT_INO);
    assert_eq!(root.mtime, Time::default());
    assert_eq!(fsm.inode_count().unwrap(), 1);
    let mut b = WriteBatch::default();
    fsm.apply(
        &Command::Create(cmd::Create {
            parent: ROOT_INO,
            name: b"f".to_vec(),
            kind: Kind::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            symlink_target: vec![],
            exclusive: true,
            now: Time { secs: 5, nanos: 0 },
        }),
        1,
        &mut b,
        &mut blake3::Hasher::new(),
    )
    .unwrap();
    db.write(b).unwrap();
    drop(fsm);
    drop(db);

    let db = open_db(dir.path());
    let fsm = Fsm::open(db).unwrap();
    assert_eq!(fsm.inode_count().unwrap(), 2);
    assert_eq!(fsm.get(ROOT_INO).unwrap().mtime, Time { secs: 5, nanos: 0 });
    assert!(fsm.lookup(ROOT_INO, b"f").is_ok());
}

#[test]
fn create_kinds_and_lookup() {
    let mut h = H::new();
    let f = h.file(ROOT_INO, "file");
    assert_eq!(f.kind, Kind::Regular);
    assert_eq!(f.mode, 0o644, "type bits are masked off");
    assert_eq!(
        (f.uid, f.gid, f.nlink, f.size, f.version),
        (10, 20, 1, 0, 1)
    );
    assert!(f.ino > ROOT_INO);
    let d = h.mkdir(ROOT_INO, "dir");
    assert_eq!(d.nlink, 2);
    assert_eq!(d.parent, ROOT_INO);
    let l = h.create(d.ino, "link", Kind::Symlink).unwrap();
    assert_eq!(l.size, "/some/target".len() as u64);
    assert_eq!(h.fsm.readlink(l.ino).unwrap(), b"/some/target");
    assert_eq!(
        h.fsm.readlink(f.ino).unwrap_err().to_string(),
        format!("invalid-argument: inode {} is not a symlink", f.ino)
    );
    let fifo = h.create(ROOT_INO, "fifo", Kind::Fifo).unwrap();
    assert_eq!(fifo.kind, Kind::Fifo);

    let root = h.get(ROOT_INO);
    assert_eq!(root.nlink, 3, "mkdir bumps the parent's link count");
    assert_eq!(
        root.mtime, fifo.ctime,
        "parent mtime follows the last create"
    );
    assert_eq!(h.lookup(ROOT_INO, "file").unwrap(), f);
    assert_eq!(h.lookup(d.ino, "link").unwrap().ino, l.ino);
    assert!(h.lookup(ROOT_INO, "nope").is_none());
    assert_eq!(h.fsm.inode_count().unwrap(), 5);
    let attr = cairn_proto::Attr::from(&f);
    assert_eq!(attr.ino, f.ino);
    assert_eq!(attr.kind, cairn_proto::FileKind::Regular as i32);
}

#[test]
fn create_refusals_change_nothing() {
    let mut h = H::new();
    let f = h.file(ROOT_INO, "f");
    assert_eq!(
        h.create(ROOT_INO, "f", Kind::Regular),
        Err(ErrorKind::AlreadyExists)
    );
    assert_eq!(
        h.create(ROOT_INO, "f", Kind::Directory),
        Err(ErrorKind::AlreadyExists)
    );
    assert_eq!(
        h.create(ROOT_INO, "a/b", Kind::Regular),
        Err(ErrorKind::InvalidArgument)
    );
    assert_eq!(
        h.create(ROOT_INO, "..", Kind::Regular),
        Err(ErrorKind::InvalidArgument)
    );
    assert_eq!(
        h.create(ROOT_INO, "", Kind::Regular),
        Err(ErrorKind::InvalidArgument)
    );
    assert_eq!(
        h.create(ROOT_INO, &"x".repeat(256), Kind::Regular),
        Err(ErrorKind::NameTooLong)
    );
    assert_eq!(h.create(999, "x", Kind::Regular), Err(ErrorKind::Stale));
    assert_eq!(h.create(f.ino, "x", Kind::Regular), Err(ErrorKind::NotDir));
    let now = h.now();
    let empty_target = h.err(Command::Create(cmd::Create {
        parent: ROOT_INO,
        name: b"s".to_vec(),
        kind: Kind::Symlink,
        mode: 0o777,
        uid: 0,
        gid: 0,
        rdev: 0,
        symlink_target: vec![],
        exclusive: true,
        now,
    }));
    assert_eq!(empty_target, ErrorKind::InvalidArgument);
    assert_eq!(h.fsm.inode_count().unwrap(), 2);
    assert_eq!(h.names(ROOT_INO), vec!["f"]);

    // open(O_CREAT) without O_EXCL returns the existing file.
    let now = h.now();
    let r = h
        .apply(Command::Create(cmd::Create {
            parent: ROOT_INO,
            name: b"f".to_vec(),
            kind: Kind::Regular,
            mode: 0o600,
            uid: 1,
            gid: 1,
            rdev: 0,
            symlink_target: vec![],
            exclusive: false,
            now,
        }))
        .unwrap();
    assert_eq!(r, Reply::Attr(f.clone()));
    // ... but not when the existing entry is a directory.
    h.mkdir(ROOT_INO, "d");
    let now = h.now();
    let e = h.err(Command::Create(cmd::Create {
        parent: ROOT_INO,
        name: b"d".to_vec(),
        kind: Kind::Regular,
        mode: 0o600,
        uid: 1,
        gid: 1,
        rdev: 0,
        symlink_target: vec![],
        exclusive: false,
        now,
    }));
    assert_eq!(e, ErrorKind::AlreadyExists);
}

#[test]
fn readdir_pages_in_name_order() {
    let mut h = H::new();
    let d = h.mkdir(ROOT_INO, "d");
    let other = h.mkdir(ROOT_INO, "e");
    h.file(other.ino, "zzz-not-in-d");
    for n in ["c", "a", "b", "e", "d"] {
        h.file(d.ino, n);
    }
    let p = h.fsm.readdir(d.ino, b"", 2).unwrap();
    let names: Vec<_> = p.entries.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, vec![b"a".to_vec(), b"b".to_vec()]);
    assert!(!p.eof);
    assert_eq!(p.dir.ino, d.ino);
    let p = h.fsm.readdir(d.ino, b"b", 2).unwrap();
    let names: Vec<_> = p.entries.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, vec![b"c".to_vec(), b"d".to_vec()]);
    let p = h.fsm.readdir(d.ino, b"d", 2).unwrap();
    assert_eq!(p.entries.len(), 1);
    assert_eq!(p.entries[0].0, b"e");
    assert!(p.eof);
    // `after` need not exist.
    let p = h.fsm.readdir(d.ino, b"bb", 100).unwrap();
    assert_eq!(p.entries.len(), 3);
    assert!(p.eof);
    // A page that ends exactly at the last entry is eof.
    let p = h.fsm.readdir(d.ino, b"", 5).unwrap();
    assert_eq!(p.entries.len(), 5);
    assert!(p.eof);
    let empty = h.mkdir(ROOT_INO, "empty");
    let p = h.fsm.readdir(empty.ino, b"", 10).unwrap();
    assert!(p.entries.is_empty() && p.eof);
    let f = h.lookup(d.ino, "a").unwrap();
    assert!(h.fsm.readdir(f.ino, b"", 10).is_err());
    assert!(h.fsm.readdir(12345, b"", 10).is_err());
}

#[test]
fn hard_links_and_unlink() {
    let mut h = H::new();
    let d = h.mkdir(ROOT_INO, "d");
    let f = h.file(ROOT_INO, "f");
    let c = chunk("data", 100);
    h.commit(f.ino, 100, vec![upd(0, c, &[1, 2])]).unwrap();
    let now = h.now();
    let r = h
        .apply(Command::Link(cmd::Link {
            ino: f.ino,
            new_parent: d.ino,
            new_name: b"g".to_vec(),
            now,
        }))
        .unwrap();
    let Reply::Attr(linked) = r else { panic!() };
    assert_eq!(linked.nlink, 2);
    assert_eq!(linked.ctime, now);
    assert_eq!(h.lookup(d.ino, "g").unwrap().ino, f.ino);
    // Linking a directory, onto an existing name, or a missing inode is refused.
    let now = h.now();
    let e = h.err(Command::Link(cmd::Link {
        ino: d.ino,
        new_parent: ROOT_INO,
        new_name: b"d2".to_vec(),
        now,
    }));
    assert_eq!(e, ErrorKind::NotPermitted);
    let e = h.err(Command::Link(cmd::Link {
        ino: f.ino,
        new_parent: ROOT_INO,
        new_name: b"d".to_vec(),
        now,
    }));
    assert_eq!(e, ErrorKind::AlreadyExists);
    let e = h.err(Command::Link(cmd::Link {
        ino: 4242,
        new_parent: ROOT_INO,
        new_name: b"x".to_vec(),
        now,
    }));
    assert_eq!(e, ErrorKind::Stale);

    assert_eq!(h.unlink(ROOT_INO, "d"), Err(ErrorKind::IsDir));
    assert_eq!(h.unlink(ROOT_INO, "nope"), Err(ErrorKind::NotFound));
    h.unlink(ROOT_INO, "f").unwrap();
    assert_eq!(h.get(f.ino).nlink, 1);
    assert_eq!(h.refs(&c.id), Some(1));
    h.unlink(d.ino, "g").unwrap();
    assert!(!h.exists(f.ino), "last link gone: inode deleted");
    assert_eq!(h.refs(&c.id), Some(0));
    assert!(h.in_gc(&c.id));
    assert_eq!(h.fsm.inode_count().unwrap(), 2);
}

#[test]
fn rmdir_rules() {
    let mut h = H::new();
    let d = h.mkdir(ROOT_INO, "d");
    h.file(d.ino, "x");
    h.file(ROOT_INO, "f");
    assert_eq!(h.rmdir(ROOT_INO, "f"), Err(ErrorKind::NotDir));
    assert_eq!(h.rmdir(ROOT_INO, "d"), Err(ErrorKind::NotEmpty));
    assert_eq!(h.rmdir(ROOT_INO, "nope"), Err(ErrorKind::NotFound));
    h.unlink(d.ino, "x").unwrap();
    assert_eq!(h.get(ROOT_INO).nlink, 3);
    h.rmdir(ROOT_INO, "d").unwrap();
    assert!(!h.exists(d.ino));
    assert_eq!(h.get(ROOT_INO).nlink, 2);
    assert_eq!(h.names(ROOT_INO), vec!["f"]);
}

#[test]
fn rename_moves_and_replaces() {
    let mut h = H::new();
    let a = h.mkdir(ROOT_INO, "a");
    let b = h.mkdir(ROOT_INO, "b");
    let f = h.file(a.ino, "f");
    let g = h.file(b.ino, "g");
    let cg = chunk("g-data", 10);
    h.commit(g.ino, 10, vec![upd(0, cg, &[1])]).unwrap();

    // Plain move across directories.
    h.rename(a.ino, "f", b.ino, "f2", 0).unwrap();
    assert!(h.lookup(a.ino, "f").is_none());
    assert_eq!(h.lookup(b.ino, "f2").unwrap().ino, f.ino);

    // File over file: the victim is deleted and its chunks released.
    h.rename(b.ino, "f2", b.ino, "g", 0).unwrap();
    assert_eq!(h.lookup(b.ino, "g").unwrap().ino, f.ino);
    assert!(!h.exists(g.ino));
    assert_eq!(h.refs(&cg.id), Some(0));
    assert!(h.in_gc(&cg.id));
    assert_eq!(h.names(b.ino), vec!["g"]);

    // NOREPLACE.
    h.file(b.ino, "h");
    assert_eq!(
        h.rename(b.ino, "g", b.ino, "h", RENAME_NOREPLACE),
        Err(ErrorKind::AlreadyExists)
    );
    h.rename(b.ino, "g", b.ino, "i", RENAME_NOREPLACE).unwrap();

    // Onto itself; between two links of one file: nothing changes.
    h.rename(b.ino, "i", b.ino, "i", 0).unwrap();
    let now = h.now();
    h.apply(Command::Link(cmd::Link {
        ino: f.ino,
        new_parent: ROOT_INO,
        new_name: b"f-link".to_vec(),
        now,
    }))
    .unwrap();
    h.rename(b.ino, "i", ROOT_INO, "f-link", 0).unwrap();
    assert_eq!(h.lookup(b.ino, "i").unwrap().ino, f.ino);
    assert_eq!(h.get(f.ino).nlink, 2);

    assert_eq!(
        h.rename(b.ino, "nope", b.ino, "x", 0),
        Err(ErrorKind::NotFound)
    );
    assert_eq!(
        h.rename(b.ino, "i", b.ino, "x", 4),
        Err(ErrorKind::InvalidArgument)
    );
    assert_eq!(
        h.rename(b.ino, "i", b.ino, "x", 3),
        Err(ErrorKind::InvalidArgument)
    );
    assert_eq!(
        h.rename(b.ino, "i", b.ino, "a/b", 0),
        Err(ErrorKind::InvalidArgument)
    );
}

#[test]
fn rename_directories() {
    let mut h = H::new();
    let a = h.mkdir(ROOT_INO, "a");
    let b = h.mkdir(ROOT_INO, "b");
    let sub = h.mkdir(a.ino, "sub");
    let deep = h.mkdir(sub.ino, "deep");
    h.file(ROOT_INO, "f");
    assert_eq!(h.get(ROOT_INO).nlink, 4);

    // Into its own subtree.
    assert_eq!(
        h.rename(ROOT_INO, "a", sub.ino, "x", 0),
        Err(ErrorKind::InvalidArgument)
    );
    assert_eq!(
        h.rename(ROOT_INO, "a", deep.ino, "x", 0),
        Err(ErrorKind::InvalidArgument)
    );
    assert_eq!(
        h.rename(ROOT_INO, "a", a.ino, "x", 0),
        Err(ErrorKind::InvalidArgument)
    );
    // Type mismatches.
    assert_eq!(
        h.rename(ROOT_INO, "a", ROOT_INO, "f", 0),
        Err(ErrorKind::NotDir)
    );
    assert_eq!(
        h.rename(ROOT_INO, "f", ROOT_INO, "a", 0),
        Err(ErrorKind::IsDir)
    );
    // Over a non-empty directory.
    assert_eq!(
        h.rename(ROOT_INO, "b", ROOT_INO, "a", 0),
        Err(ErrorKind::NotEmpty)
    );

    // Move sub from a to b: link counts and the parent pointer follow.
    h.rename(a.ino, "sub", b.ino, "sub", 0).unwrap();
    assert_eq!(h.get(a.ino).nlink, 2);
    assert_eq!(h.get(b.ino).nlink, 3);
    assert_eq!(h.get(sub.ino).parent, b.ino);
    // Now a can be replaced by b's sub? No: sub is not empty. Replace empty a with b.
    h.rename(ROOT_INO, "b", ROOT_INO, "a", 0).unwrap();
    assert!(!h.exists(a.ino));
    assert_eq!(h.lookup(ROOT_INO, "a").unwrap().ino, b.ino);
    assert_eq!(h.get(ROOT_INO).nlink, 3, "root: '.', '..' and a");
    assert_eq!(h.names(ROOT_INO), vec!["a", "f"]);
    assert_eq!(h.fsm.inode_count().unwrap(), 5);

    // A directory over an empty directory in another parent.
    let e = h.mkdir(ROOT_INO, "e");
    h.rename(sub.ino, "deep", ROOT_INO, "e", 0).unwrap();
    assert!(!h.exists(e.ino));
    assert_eq!(h.get(deep.ino).parent, ROOT_INO);
    assert_eq!(h.get(sub.ino).nlink, 2);
    assert_eq!(h.get(ROOT_INO).nlink, 4);
}

#[test]
fn rename_exchange() {
    let mut h = H::new();
    let a = h.mkdir(ROOT_INO, "a");
    let b = h.mkdir(ROOT_INO, "b");
    let sub = h.mkdir(a.ino, "sub");
    let f = h.file(b.ino, "f");
    assert_eq!(
        h.rename(a.ino, "sub", b.ino, "nope", RENAME_EXCHANGE),
        Err(ErrorKind::NotFound)
    );
    h.rename(a.ino, "sub", b.ino, "f", RENAME_EXCHANGE).unwrap();
    assert_eq!(h.lookup(a.ino, "sub").unwrap().ino, f.ino);
    assert_eq!(h.lookup(b.ino, "f").unwrap().ino, sub.ino);
    assert_eq!(h.get(sub.ino).parent, b.ino);
    assert_eq!(h.get(a.ino).nlink, 2);
    assert_eq!(h.get(b.ino).nlink, 3);
    // Exchanging a directory with an entry inside its own subtree is refused.
    assert_eq!(
        h.rename(ROOT_INO, "b", b.ino, "f", RENAME_EXCHANGE),
        Err(ErrorKind::InvalidArgument)
    );
    // Same directory swap.
    h.file(ROOT_INO, "x");
    h.rename(ROOT_INO, "a", ROOT_INO, "x", RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(h.lookup(ROOT_INO, "x").unwrap().ino, a.ino);
    assert_eq!(h.get(ROOT_INO).nlink, 4);
}

#[test]
fn setattr_and_truncate() {
    let mut h = H::new();
    let f = h.file(ROOT_INO, "f");
    let now = h.now();
    let r = h
        .apply(Command::SetAttr(cmd::SetAttr {
            ino: f.ino,
            mode: Some(0o4755),
            uid: Some(7),
            gid: Some(8),
            size: None,
            atime: Some(Time { secs: 1, nanos: 2 }),
            mtime: Some(Time { secs: 3, nanos: 4 }),
            now,
        }))
        .unwrap();
    let Reply::Attr(i) = r else { panic!() };
    assert_eq!((i.mode, i.uid, i.gid), (0o4755, 7, 8));
    assert_eq!(i.atime, Time { secs: 1, nanos: 2 });
    assert_eq!(i.mtime, Time { secs: 3, nanos: 4 });
    assert_eq!(i.ctime, now);
    assert_eq!(i.version, 1, "attribute changes do not bump the version");

    let (c0, c1, c2) = (
        chunk("0", MB4 as u32),
        chunk("1", MB4 as u32),
        chunk("2", 100),
    );
    let i = h
        .commit(
            f.ino,
            2 * MB4 + 100,
            vec![upd(0, c0, &[1]), upd(1, c1, &[1]), upd(2, c2, &[1])],
        )
        .unwrap();
    assert_eq!(i.version, 2);
    assert_eq!(i.stored_bytes, 2 * MB4 + 100);

    // Truncate into slot 1: slot 2 dropped, slot 1 clipped.
    let i = h.truncate(f.ino, MB4 + 10);
    assert_eq!(i.version, 3);
    assert_eq!(i.size, MB4 + 10);
    assert_eq!(h.slots(i.ino).len(), 2);
    assert_eq!(h.slots(i.ino)[&1].len, 10);
    assert_eq!(h.slots(i.ino)[&0].len, MB4 as u32);
    assert_eq!(h.refs(&c2.id), Some(0));
    assert!(h.in_gc(&c2.id));
    // Truncating at a slot boundary drops the slot starting there.
    let i = h.truncate(f.ino, MB4);
    assert_eq!(h.slots(i.ino).keys().copied().collect::<Vec<_>>(), vec![0]);
    assert_eq!(h.refs(&c1.id), Some(0));
    // Extending keeps the data and adds a hole.
    let i = h.truncate(f.ino, 10 * MB4);
    assert_eq!(i.size, 10 * MB4);
    assert_eq!(h.slots(i.ino).len(), 1);
    assert_eq!(i.version, 5);
    // Same size: no new version.
    assert_eq!(h.truncate(f.ino, 10 * MB4).version, 5);
    let i = h.truncate(f.ino, 0);
    assert!(h.slots(i.ino).is_empty());
    assert_eq!(h.refs(&c0.id), Some(0));

    let d = h.mkdir(ROOT_INO, "d");
    let now = h.now();
    let e = h.err(Command::SetAttr(cmd::SetAttr {
        ino: d.ino,
        mode: None,
        uid: None,
        gid: None,
        size: Some(0),
        atime: None,
        mtime: None,
        now,
    }));
    assert_eq!(e, ErrorKind::IsDir);
    let e = h.err(Command::SetAttr(cmd::SetAttr {
        ino: 999,
        mode: Some(0),
        uid: None,
        gid: None,
        size: None,
        atime: None,
        mtime: None,
        now,
    }));
    assert_eq!(e, ErrorKind::Stale);
}

#[test]
fn commit_write_versions_and_chunk_refs() {
    let mut h = H::new();
    let f = h.file(ROOT_INO, "f");
    let g = h.file(ROOT_INO, "g");
    let (a, b) = (chunk("a", 1000), chunk("b", 1000));

    let i = h.commit(f.ino, 1000, vec![upd(0, a, &[1, 2, 2])]).unwrap();
    assert_eq!((i.size, i.version), (1000, 2));
    let rec = h.fsm.chunk(&a.id).unwrap().unwrap();
    assert_eq!(rec.replicas, vec![1, 2]);
    assert_eq!((rec.refs, rec.stored_len), (1, 1000));

    // Stale base version.
    assert_eq!(h.commit_at(f.ino, 1, 10, vec![]), Err(ErrorKind::Conflict));
    // The same chunk in another file: deduplicated, replicas merged.
    h.commit(g.ino, 1000, vec![upd(0, a, &[3])]).unwrap();
    let rec = h.fsm.chunk(&a.id).unwrap().unwrap();
    assert_eq!((rec.refs, rec.replicas.clone()), (2, vec![1, 2, 3]));

    // Replacing f's slot: a loses a reference, b gains one.
    h.commit(f.ino, 1000, vec![upd(0, b, &[1])]).unwrap();
    assert_eq!(h.refs(&a.id), Some(1));
    assert_eq!(h.refs(&b.id), Some(1));
    // Same chunk in two slots of one file counts twice; rewriting a slot with itself is neutral.
    let i = h
        .commit(f.ino, MB4 + 1000, vec![upd(1, b, &[1]), upd(0, b, &[1])])
        .unwrap();
    assert_eq!(h.slots(i.ino).len(), 2);
    assert_eq!(h.refs(&b.id), Some(2));
    // A hole update releases the slot.
    let i = h
        .commit(
            f.ino,
            MB4 + 1000,
            vec![SlotUpdate {
                index: 0,
                chunk: None,
                replicas: vec![],
                ticket: 0,
            }],
        )
        .unwrap();
    assert_eq!(h.slots(i.ino).keys().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!(h.refs(&b.id), Some(1));
    // Shrinking through CommitWrite drops slots past the size.
    h.commit(f.ino, 10, vec![]).unwrap();
    assert_eq!(h.refs(&b.id), Some(0));
    assert!(h.in_gc(&b.id));
    // Referencing a queued chunk again takes it out of the gc queue.
    h.commit(f.ino, 1000, vec![upd(0, b, &[])]).unwrap();
    assert_eq!(h.refs(&b.id), Some(1));
    assert!(!h.in_gc(&b.id));

    // Refusals.
    let v = h.get(f.ino).version;
    let bad = SlotChunk {
        id: ChunkId::of(b"x"),
        len: 10,
        stored_len: 5,
    };
    assert_eq!(
        h.commit(f.ino, 100, vec![upd(0, bad, &[1])]),
        Err(ErrorKind::InvalidArgument)
    );
    let huge = SlotChunk {
        id: ChunkId::of(b"x"),
        len: 1,
        stored_len: CHUNK_SIZE as u32 + 1,
    };
    assert_eq!(
        h.commit(f.ino, 100, vec![upd(0, huge, &[1])]),
        Err(ErrorKind::InvalidArgument)
    );
    let c = chunk("c", 10);
    assert_eq!(
        h.commit(f.ino, 100, vec![upd(5, c, &[1])]),
        Err(ErrorKind::InvalidArgument),
        "slot past the size"
    );
    assert_eq!(
        h.commit(f.ino, 100, vec![upd(0, c, &[])]),
        Err(ErrorKind::InvalidArgument),
        "new chunk without replicas"
    );
    let wrong_len = SlotChunk {
        id: a.id,
        len: 10,
        stored_len: 999,
    };
    assert_eq!(
        h.commit(f.ino, 100, vec![upd(0, wrong_len, &[1])]),
        Err(ErrorKind::InvalidArgument)
    );
    assert_eq!(h.get(f.ino).version, v, "refused commits change nothing");
    assert_eq!(h.fsm.chunk(&c.id).unwrap(), None);
    let d = h.mkdir(ROOT_INO, "d");
    assert_eq!(h.commit(d.ino, 0, vec![]), Err(ErrorKind::IsDir));
    assert_eq!(h.commit_at(999, 1, 0, vec![]), Err(ErrorKind::Stale));

    // Chunk locations per slot.
    h.commit(g.ino, MB4 + 5, vec![upd(1, chunk("z", 5), &[7])])
        .unwrap();
    let page = h.fsm.slot_page(g.ino, 0, 100).unwrap();
    let (inode, slots) = (page.inode, page.slots);
    assert_eq!(inode.ino, g.ino);
    assert_eq!(slots.len(), 2);
    assert_eq!(
        (slots[0].index, slots[0].replicas.clone()),
        (0, vec![1, 2, 3])
    );
    assert_eq!((slots[1].index, slots[1].replicas.clone()), (1, vec![7]));
}

#[test]
fn chunk_server_registration_is_idempotent() {
    let mut h = H::new();
    let reg = |uuid: &str, addr: &str| {
        Command::RegisterChunkServer(cmd::RegisterChunkServer {
            uuid: uuid.into(),
            addr: addr.into(),
        })
    };
    assert_eq!(
        h.apply(reg("u1", "127.0.0.1:1")).unwrap(),
        Reply::ServerId(1)
    );
    assert_eq!(
        h.apply(reg("u2", "127.0.0.1:2")).unwrap(),
        Reply::ServerId(2)
    );
    assert_eq!(
        h.apply(reg("u1", "127.0.0.1:9")).unwrap(),
        Reply::ServerId(1)
    );
    let s = h.fsm.servers().unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[0].id, s[0].uuid.as_str(), s[0].addr.as_str()),
        (1, "u1", "127.0.0.1:9")
    );
    assert_eq!(h.fsm.server(2).unwrap().unwrap().addr, "127.0.0.1:2");
    assert_eq!(h.fsm.server(3).unwrap(), None);
    assert_eq!(h.err(reg("", "x")), ErrorKind::InvalidArgument);
}

#[test]
fn drop_replica_removes_only_that_replica() {
    let mut h = H::new();
    h.register_servers(3);
    let f = h.file(ROOT_INO, "f");
    let g = h.file(ROOT_INO, "g");
    let a = chunk("a", 1000);
    h.commit(f.ino, 1000, vec![upd(0, a, &[1, 2, 3])]).unwrap();
    h.commit(g.ino, 1000, vec![upd(0, a, &[])]).unwrap();
    let version = h.get(f.ino).version;
    let drop = |h: &mut H, id: ChunkId, server: u64| {
        let now = h.now();
        h.apply(Command::DropReplica(cmd::DropReplica { id, server, now }))
    };

    tracing::info!("--- dropping a replica keeps the record and its references");
    assert_eq!(drop(&mut h, a.id, 2).unwrap(), Reply::Empty);
    let rec = h.fsm.chunk(&a.id).unwrap().unwrap();
    assert_eq!(
        (rec.replicas, rec.refs, rec.stored_len),
        (vec![1, 3], 2, 1000)
    );
    let slots = h.fsm.slot_page(f.ino, 0, 100).unwrap().slots;
    assert_eq!(slots[0].replicas, vec![1, 3]);
    assert_eq!(h.get(f.ino).version, version, "the file is untouched");
    let queued = h.fsm.repair_queue().unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0, a.id);

    tracing::info!("--- idempotent: a second report changes nothing");
    let before = h.fsm.repair_queue().unwrap();
    assert_eq!(drop(&mut h, a.id, 2).unwrap(), Reply::Empty);
    assert_eq!(h.fsm.chunk(&a.id).unwrap().unwrap().replicas, vec![1, 3]);
    assert_eq!(h.fsm.repair_queue().unwrap(), before);

    tracing::info!("--- refusals change nothing");
    assert_eq!(
        drop(&mut h, ChunkId::of(b"unknown"), 1).unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert_eq!(
        drop(&mut h, a.id, 9).unwrap_err().kind,
        ErrorKind::InvalidArgument,
        "unregistered server"
    );
    assert_eq!(h.fsm.chunk(&a.id).unwrap().unwrap().replicas, vec![1, 3]);

    tracing::info!("--- the last replicas go too, the record stays");
    drop(&mut h, a.id, 1).unwrap();
    drop(&mut h, a.id, 3).unwrap();
    let rec = h.fsm.chunk(&a.id).unwrap().unwrap();
    assert_eq!((rec.replicas.len(), rec.refs), (0, 2));

    tracing::info!("--- a rewritten copy is listed again by the next commit");
    h.commit(f.ino, 1000, vec![upd(0, a, &[2])]).unwrap();
    assert_eq!(h.fsm.chunk(&a.id).unwrap().unwrap().replicas, vec![2]);
    assert_eq!(h.refs(&a.id), Some(2));
}

#[test]
fn reports_of_bad_copies_never_delist_a_copy_their_server_has_not_checked() {
    let mut h = H::new();
    h.register_servers(4);
    let f = h.file(ROOT_INO, "f");
    let (a, b) = (chunk("a", 1000), chunk("b", 1000));
    let size = MB4 + 1000;
    h.commit(
        f.ino,
        size,
        vec![upd(0, a, &[1, 2, 3]), upd(1, b, &[1, 2, 3])],
    )
    .unwrap();
    let report = |h: &mut H, id: ChunkId, server: u64| {
        let now = h.now();
        h.apply(Command::SuspectReplica(cmd::SuspectReplica {
            id,
            server,
            now,
        }))
    };

    tracing::info!("--- one report per replica of every chunk: every copy stays listed, suspect");
    for id in [a.id, b.id] {
        for server in 1..=3 {
            assert_eq!(report(&mut h, id, server).unwrap(), Reply::Empty);
        }
        // Idempotent; a server that does not list the chunk changes nothing.
        report(&mut h, id, 2).unwrap();
        report(&mut h, id, 4).unwrap();
        let rec = h.fsm.chunk(&id).unwrap().unwrap();
        assert_eq!(
            (rec.replicas, rec.suspect, rec.refs),
            (vec![1, 2, 3], vec![1, 2, 3], 1)
        );
    }
    let slots = h.fsm.slot_page(f.ino, 0, 100).unwrap().slots;
    assert_eq!(
        slots[0].replicas,
        vec![1, 2, 3],
        "readers are still sent to them"
    );
    assert_eq!(h.fsm.repair_queue().unwrap().len(), 2);

    tracing::info!("--- trusted copies are offered to readers before suspect ones");
    h.apply(Command::AddReplica(cmd::AddReplica {
        id: a.id,
        server: 3,
    }))
    .unwrap();
    let rec = h.fsm.chunk(&a.id).unwrap().unwrap();
    assert_eq!((rec.replicas, rec.suspect), (vec![1, 2, 3], vec![1, 2]));
    let slots = h.fsm.slot_page(f.ino, 0, 100).unwrap().slots;
    assert_eq!(slots[0].replicas, vec![3, 1, 2]);
    assert_eq!(
        h.fsm.repair_queue().unwrap().len(),
        2,
        "a suspect copy of a is left"
    );

    tracing::info!("--- a surplus trim may not remove the only trusted copy");
    let remove = |h: &mut H, id: ChunkId, server: u64| {
        h.apply(Command::RemoveReplica(cmd::RemoveReplica { id, server }))
    };
    assert_eq!(
        remove(&mut h, a.id, 3).unwrap_err().kind,
        ErrorKind::Conflict
    );

    tracing::info!("--- verification: intact copies are trusted again, a bad one is dropped");
    h.apply(Command::AddReplica(cmd::AddReplica {
        id: a.id,
        server: 1,
    }))
    .unwrap();
    let now = h.now();
    h.apply(Command::DropReplica(cmd::DropReplica {
        id: a.id,
        server: 2,
        now,
    }))
    .unwrap();
    let rec = h.fsm.chunk(&a.id).unwrap().unwrap();
    assert_eq!((rec.replicas, rec.suspect), (vec![1, 3], vec![]));
    tracing::info!("--- a put of the chunk again on a suspect server trusts that copy");
    let g = h.file(ROOT_INO, "g");
    h.commit(g.ino, 1000, vec![upd(0, b, &[2])]).unwrap();
    let rec = h.fsm.chunk(&b.id).unwrap().unwrap();
    assert_eq!(
        (rec.replicas, rec.suspect, rec.refs),
        (vec![1, 2, 3], vec![1, 3], 2)
    );
    tracing::info!("--- once every copy is verified, only the chunk that lost one awaits repair");
    for server in [1, 3] {
        h.apply(Command::AddReplica(cmd::AddReplica { id: b.id, server }))
            .unwrap();
    }
    let queued: Vec<ChunkId> = h
        .fsm
        .repair_queue()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(queued, vec![a.id]);
    assert_eq!(h.get(f.ino).size, size, "the file is untouched");
}

#[test]
fn repair_adds_and_trims_replicas_and_drains_servers() {
    let mut h = H::new();
    h.register_servers(4);
    let f = h.file(ROOT_INO, "f");
    let a = chunk("a", 1000);
    h.commit(f.ino, 1000, vec![upd(0, a, &[1, 2, 3])]).unwrap();
    let version = h.get(f.ino).version;
    let now = h.now();
    h.apply(Command::DropReplica(cmd::DropReplica {
        id: a.id,
        server: 2,
        now,
    }))
    .unwrap();
    assert_eq!(h.fsm.repair_queue().unwrap().len(), 1);

    tracing::info!("--- a repaired copy is listed, sorted, and clears the repair entry");
    h.apply(Command::AddReplica(cmd::AddReplica {
        id: a.id,
        server: 4,
    }))
    .unwrap();
    h.apply(Command::AddReplica(cmd::AddReplica {
        id: a.id,
        server: 4,
    }))
    .unwrap();
    let rec = h.fsm.chunk(&a.id).unwrap().unwrap();
    assert_eq!((rec.replicas, rec.refs), (vec![1, 3, 4], 1));
    assert!(h.fsm.repair_queue().unwrap().is_empty());
    assert_eq!(h.get(f.ino).version, version, "the file is untouched");

    tracing::info!("--- a surplus copy is unlisted; the last one never is");
    h.apply(Command::RemoveReplica(cmd::RemoveReplica {
        id: a.id,
        server: 1,
    }))
    .unwrap();
    h.apply(Command::RemoveReplica(cmd::RemoveReplica {
        id: a.id,
        server: 1,
    }))
    .unwrap();
    h.apply(Command::RemoveReplica(cmd::RemoveReplica {
        id: a.id,
        server: 3,
    }))
    .unwrap();
    assert_eq!(h.fsm.chunk(&a.id).unwrap().unwrap().replicas, vec![4]);
    assert_eq!(
        h.apply(Command::RemoveReplica(cmd::RemoveReplica {
            id: a.id,
            server: 4
        }))
        .unwrap_err()
        .kind,
        ErrorKind::Conflict
    );
    assert_eq!(h.fsm.chunk(&a.id).unwrap().unwrap().replicas, vec![4]);

    tracing::info!("--- refusals change nothing");
    let unknown = ChunkId::of(b"never stored");
    for cmd in [
        Command::AddReplica(cmd::AddReplica {
            id: unknown,
            server: 1,
        }),
        Command::RemoveReplica(cmd::RemoveReplica {
            id: unknown,
            server: 1,
        }),
    ] {
        assert_eq!(h.apply(cmd).unwrap_err().kind, ErrorKind::NotFound);
    }
    assert_eq!(
        h.apply(Command::AddReplica(cmd::AddReplica {
            id: a.id,
            server: 9
        }))
        .unwrap_err()
        .kind,
        ErrorKind::InvalidArgument
    );
    assert_eq!(h.fsm.chunk(&unknown).unwrap(), None);

    tracing::info!("--- draining is a flag on the server that survives re-registration");
    h.apply(Command::SetDraining(cmd::SetDraining {
        server: 2,
        draining: true,
    }))
    .unwrap();
    h.apply(Command::RegisterChunkServer(cmd::RegisterChunkServer {
        uuid: "u2".into(),
        addr: "127.0.0.1:22".into(),
    }))
    .unwrap();
    let s2 = h.fsm.server(2).unwrap().unwrap();
    assert_eq!((s2.draining, s2.addr.as_str()), (true, "127.0.0.1:22"));
    h.apply(Command::SetDraining(cmd::SetDraining {
        server: 2,
        draining: false,
    }))
    .unwrap();
    assert!(!h.fsm.server(2).unwrap().unwrap().draining);
    assert_eq!(
        h.apply(Command::SetDraining(cmd::SetDraining {
            server: 9,
            draining: true
        }))
        .unwrap_err()
        .kind,
        ErrorKind::NotFound
    );

    tracing::info!("--- the chunk table pages in id order");
    let b = chunk("b", 10);
    let c = chunk("c", 10);
    let g = h.file(ROOT_INO, "g");
    h.commit(g.ino, 20 << 20, vec![upd(0, b, &[1]), upd(1, c, &[1])])
        .unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = h.fsm.chunk_page(after.as_ref(), 2).unwrap();
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        seen.extend(page.into_iter().map(|(id, _)| id));
    }
    let mut want = vec![a.id, b.id, c.id];
    want.sort();
    assert_eq!(seen, want);
}

#[test]
fn replicas_apply_identically() {
    // Two state machines fed the same commands end in byte-identical state.
    let mut x = H::new();
    let mut y = H::new();
    let script = |h: &mut H| {
        let d = h.mkdir(ROOT_INO, "d");
        let f = h.file(d.ino, "f");
        h.commit(f.ino, 10, vec![upd(0, chunk("q", 10), &[1])])
            .unwrap();
        h.rename(d.ino, "f", ROOT_INO, "g", 0).unwrap();
        let _ = h.rmdir(ROOT_INO, "d");
    };
    script(&mut x);
    script(&mut y);
    for cf in STATE_CFS {
        let dump = |h: &H| {
            let cfh = h.db.cf_handle(cf).unwrap();
            h.db.iterator_cf(cfh, rocksdb::IteratorMode::Start)
                .map(|r| r.unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(dump(&x), dump(&y), "column family {cf} differs");
    }
}

fn upd_t(index: u64, c: SlotChunk, replicas: &[u64], ticket: u64) -> SlotUpdate {
    SlotUpdate {
        ticket,
        ..upd(index, c, replicas)
    }
}

/// The GC protocol in the state machine: only unreferenced chunks are collected, a commit of an
/// upload placed before a collection began is refused, a later one revives the chunk on its own
/// copies, and tombstones keep refusing old uploads until they are pruned behind a floor.
#[test]
fn gc_collects_only_garbage_and_refuses_uploads_older_than_the_collection() {
    let mut h = H::new();
    h.register_servers(3);
    let f = h.file(ROOT_INO, "f");
    let (a, b) = (chunk("a", 100), chunk("b", 100));
    h.commit(f.ino, 100, vec![upd(0, a, &[1, 2, 3])]).unwrap();
    h.commit(f.ino, 100, vec![upd(0, b, &[1, 2, 3])]).unwrap();
    assert_eq!(h.refs(&a.id), Some(0), "a was overwritten");
    assert_eq!(h.fsm.gc_epoch().unwrap(), 0);

    tracing::info!("--- GcBegin accepts only unreferenced chunks and opens epoch 1");
    let now = h.now();
    let r = h
        .apply(Command::GcBegin(cmd::GcBegin {
            ids: vec![a.id, b.id, ChunkId::of(b"unknown")],
            now,
        }))
        .unwrap();
    assert_eq!(
        r,
        Reply::GcBegun {
            epoch: 1,
            ids: vec![a.id]
        }
    );
    assert_eq!(h.fsm.gc_epoch().unwrap(), 1);
    assert_eq!(h.fsm.chunk(&a.id).unwrap().unwrap().collecting, Some(1));
    assert!(h.fsm.chunk(&b.id).unwrap().unwrap().collecting.is_none());

    tracing::info!("--- an upload placed before the collection (ticket 0) is refused");
    let g = h.file(ROOT_INO, "g");
    assert_eq!(
        h.commit(g.ino, 100, vec![upd_t(0, a, &[1, 2, 3], 0)]),
        Err(ErrorKind::Conflict)
    );
    assert_eq!(
        h.get(g.ino).size,
        0,
        "nothing of the refused commit applied"
    );

    tracing::info!("--- half swept: server 1 deleted its copy");
    let now = h.now();
    h.apply(Command::GcSwept(cmd::GcSwept {
        id: a.id,
        servers: vec![1],
        now,
    }))
    .unwrap();
    assert_eq!(h.fsm.chunk(&a.id).unwrap().unwrap().replicas, vec![2, 3]);

    tracing::info!("--- an upload placed after GcBegin revives the chunk on its own copies only");
    let i = h.commit(g.ino, 100, vec![upd_t(0, a, &[2], 1)]).unwrap();
    assert_eq!(i.size, 100);
    let rec = h.fsm.chunk(&a.id).unwrap().unwrap();
    assert_eq!((rec.replicas, rec.refs, rec.collecting), (vec![2], 1, None));
    assert!(h
        .fsm
        .gc_candidates(
            Some(u64::MAX),
            Time {
                secs: i64::MAX,
                nanos: 0
            },
            10
        )
        .unwrap()
        .iter()
        .all(|(id, _)| *id != a.id));
    let now = h.now();
    h.apply(Command::GcSwept(cmd::GcSwept {
        id: a.id,
        servers: vec![2, 3],
        now,
    }))
    .unwrap();
    assert_eq!(
        h.fsm.chunk(&a.id).unwrap().unwrap().replicas,
        vec![2],
        "a late sweep of a revived chunk changes nothing"
    );

    tracing::info!("--- a fully swept chunk leaves a tombstone that refuses older uploads");
    h.unlink(ROOT_INO, "g").unwrap();
    let now = h.now();
    let Reply::GcBegun { epoch, ids } = h
        .apply(Command::GcBegin(cmd::GcBegin {
            ids: vec![a.id],
            now,
        }))
        .unwrap()
    else {
        panic!("not GcBegun")
    };
    assert_eq!((epoch, ids), (2, vec![a.id]));
    let now = h.now();
    h.apply(Command::GcSwept(cmd::GcSwept {
        id: a.id,
        servers: vec![2],
        now,
    }))
    .unwrap();
    assert_eq!(h.fsm.chunk(&a.id).unwrap(), None);
    assert_eq!(h.fsm.gone(&a.id).unwrap().map(|g| g.epoch), Some(2));
    let k = h.file(ROOT_INO, "k");
    assert_eq!(
        h.commit(k.ino, 100, vec![upd_t(0, a, &[1], 1)]),
        Err(ErrorKind::Conflict)
    );
    h.commit(k.ino, 100, vec![upd_t(0, a, &[1], 2)]).unwrap();
    assert_eq!(
        h.fsm.gone(&a.id).unwrap(),
        None,
        "a new record replaces the tombstone"
    );

    tracing::info!(
        "--- pruned tombstones raise the floor: older tickets are refused for new chunks"
    );
    h.unlink(ROOT_INO, "k").unwrap();
    let now = h.now();
    h.apply(Command::GcBegin(cmd::GcBegin {
        ids: vec![a.id],
        now,
    }))
    .unwrap();
    let now = h.now();
    h.apply(Command::GcSwept(cmd::GcSwept {
        id: a.id,
        servers: vec![1],
        now,
    }))
    .unwrap();
    let later = h.now();
    h.apply(Command::GcPrune(cmd::GcPrune { before: later }))
        .unwrap();
    assert_eq!(h.fsm.gone(&a.id).unwrap(), None);
    let m = h.file(ROOT_INO, "m");
    let c = chunk("never seen before", 100);
    assert_eq!(
        h.commit(m.ino, 100, vec![upd_t(0, c, &[1], 2)]),
        Err(ErrorKind::Conflict),
        "ticket 2 is below the floor 3"
    );
    h.commit(m.ino, 100, vec![upd_t(0, c, &[1], 3)]).unwrap();
}

/// Copies no record knows (uploads never committed) get a tombstone in a new epoch, so the
/// late commit of such an upload is refused; known chunks are left alone.
#[test]
fn gc_orphans_tombstone_unknown_chunks_only() {
    let mut h = H::new();
    h.apply(Command::RegisterChunkServer(cmd::RegisterChunkServer {
        uuid: "u1".into(),
        addr: "127.0.0.1:1".into(),
    }))
    .unwrap();
    let f = h.file(ROOT_INO, "f");
    let (known, orphan) = (chunk("known", 10), chunk("orphan", 10));
    h.commit(f.ino, 10, vec![upd(0, known, &[1])]).unwrap();
    let now = h.now();
    let r = h
        .apply(Command::GcOrphans(cmd::GcOrphans {
            ids: vec![known.id, orphan.id],
            now,
        }))
        .unwrap();
    assert_eq!(
        r,
        Reply::GcBegun {
            epoch: 1,
            ids: vec![orphan.id]
        }
    );
    assert_eq!(h.fsm.gone(&orphan.id).unwrap().map(|g| g.epoch), Some(1));
    assert_eq!(h.fsm.gone(&known.id).unwrap(), None);
    assert_eq!(h.refs(&known.id), Some(1));
    let g = h.file(ROOT_INO, "g");
    assert_eq!(
        h.commit(g.ino, 10, vec![upd_t(0, orphan, &[1], 0)]),
        Err(ErrorKind::Conflict),
        "the abandoned upload cannot be committed late"
    );
    h.commit(g.ino, 10, vec![upd_t(0, orphan, &[1], 1)])
        .unwrap();
}

/// `Create` of `name` (exclusive, mode 0755) in directory `parent`.
fn create_cmd(parent: u64, name: &str, kind: Kind, now: Time) -> Command {
    Command::Create(cmd::Create {
        parent,
        name: name.as_bytes().to_vec(),
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        rdev: 0,
        symlink_target: Vec::new(),
        exclusive: true,
        now,
    })
}

/// `Create` of `name` in the root under request id (`client`, `seq`).
fn create_once(client: u64, seq: u64, name: &str, kind: Kind, now: Time) -> Command {
    Command::Once(cmd::Once {
        client,
        seq,
        now,
        cmd: Box::new(create_cmd(ROOT_INO, name, kind, now)),
    })
}

/// A mutation under a request id is applied once; its retry gets the recorded reply. Failures
/// are not recorded, and old ids are pruned.
#[test]
fn a_request_id_makes_a_mutation_exactly_once() {
    let mut h = H::new();
    let once = |h: &mut H, seq: u64, name: &str| {
        let now = h.now();
        h.apply(create_once(5, seq, name, Kind::Regular, now))
    };
    let first = once(&mut h, 1, "f").unwrap();
    let retry = once(&mut h, 1, "f").unwrap();
    assert_eq!(first, retry, "the retry returns the first reply");
    assert_eq!(h.names(ROOT_INO), vec!["f"]);
    assert_eq!(
        once(&mut h, 2, "f").unwrap_err().kind,
        ErrorKind::AlreadyExists,
        "another id is another create"
    );
    // The failed id was not recorded: once the name is free it can succeed.
    h.unlink(ROOT_INO, "f").unwrap();
    once(&mut h, 2, "f").unwrap();

    let later = h.now();
    h.apply(Command::PruneRequests(cmd::PruneRequests {
        before: later,
        before_index: h.index + 1,
    }))
    .unwrap();
    assert_eq!(
        once(&mut h, 1, "f").unwrap_err().kind,
        ErrorKind::AlreadyExists,
        "a pruned id is forgotten"
    );
}

/// A batch applies as one entry: a failing command undoes the ones before it.
#[test]
fn a_batch_is_all_or_nothing() {
    let mut h = H::new();
    h.apply(Command::RegisterChunkServer(cmd::RegisterChunkServer {
        uuid: "u1".into(),
        addr: "127.0.0.1:1".into(),
    }))
    .unwrap();
    let f = h.file(ROOT_INO, "f");
    let now = h.now();
    let commit = Command::CommitWrite(cmd::CommitWrite {
        ino: f.ino,
        base_version: f.version,
        size: 10,
        updates: vec![upd(0, chunk("batch", 10), &[1])],
        mtime: None,
        now,
        upload: 0,
        apply_upload: false,
        replace: false,
    });
    let chmod = |ino: u64| {
        Command::SetAttr(cmd::SetAttr {
            ino,
            mode: Some(0o600),
            uid: None,
            gid: None,
            size: None,
            atime: None,
            mtime: None,
            now,
        })
    };
    let e = h
        .apply(Command::Batch(cmd::Batch {
            cmds: vec![commit.clone(), chmod(999_999)],
        }))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Stale);
    assert_eq!(
        h.get(f.ino).size,
        0,
        "the commit before the failure is undone"
    );
    let r = h
        .apply(Command::Batch(cmd::Batch {
            cmds: vec![commit, chmod(f.ino)],
        }))
        .unwrap();
    let Reply::Attr(i) = r else { panic!("{r:?}") };
    assert_eq!((i.size, i.mode, i.version), (10, 0o600, f.version + 1));
}

/// A group (group commit: many writers' commands in one entry) applies each command on its
/// own, in order: a refused one — even a batch that failed halfway — changes nothing and the
/// others still apply; later ones see earlier ones; request ids stay per command.
#[test]
fn a_group_gives_each_command_its_own_result() {
    let mut h = H::new();
    let now = h.now();
    let create = |parent: u64, name: &str, kind: Kind| create_cmd(parent, name, kind, now);
    let half_failing_batch = Command::Batch(cmd::Batch {
        cmds: vec![
            create(ROOT_INO, "from-batch", Kind::Regular),
            create(ROOT_INO, "a", Kind::Regular),
        ],
    });
    let r = h
        .apply(Command::Group(cmd::Group {
            cmds: vec![
                create_once(7, 1, "a", Kind::Regular, now),
                create(ROOT_INO, "a", Kind::Regular),
                half_failing_batch,
                create(ROOT_INO, "d", Kind::Directory),
                create_once(7, 2, "b", Kind::Regular, now),
            ],
        }))
        .unwrap();
    let Reply::Group(results) = r else {
        panic!("{r:?}")
    };
    let kinds: Vec<Result<&str, ErrorKind>> = results
        .iter()
        .map(|r| match r {
            Ok(Reply::Attr(i)) if i.kind == Kind::Directory => Ok("dir"),
            Ok(Reply::Attr(_)) => Ok("file"),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.kind),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            Ok("file"),
            Err(ErrorKind::AlreadyExists),
            Err(ErrorKind::AlreadyExists),
            Ok("dir"),
            Ok("file"),
        ],
        "each command has its own result; the second create and the batch saw the first"
    );
    assert_eq!(
        h.names(ROOT_INO),
        vec!["a", "b", "d"],
        "the refused batch left nothing behind, the commands after it applied"
    );
    let d = h.lookup(ROOT_INO, "d").unwrap();
    assert_eq!(d.nlink, 2);
    assert_eq!(
        h.get(ROOT_INO).nlink,
        3,
        "the root counts the new directory once"
    );

    // The ids inside the group were recorded each on its own: a retry outside any group gets
    // the recorded reply, not a second create or an error.
    let Ok(Reply::Attr(a)) = &results[0] else {
        unreachable!()
    };
    let retry = h.apply(create_once(7, 1, "a", Kind::Regular, now)).unwrap();
    assert_eq!(retry, Reply::Attr(a.clone()));

    // A group is never nested, nor wrapped in a request id or a batch.
    let group = || {
        Command::Group(cmd::Group {
            cmds: vec![create(ROOT_INO, "x", Kind::Regular)],
        })
    };
    for wrapped in [
        Command::Group(cmd::Group {
            cmds: vec![group()],
        }),
        Command::Once(cmd::Once {
            client: 7,
            seq: 3,
            now,
            cmd: Box::new(group()),
        }),
        Command::Batch(cmd::Batch {
            cmds: vec![group()],
        }),
    ] {
        assert_eq!(h.err(wrapped), ErrorKind::InvalidArgument);
    }
    assert_eq!(h.names(ROOT_INO), vec!["a", "b", "d"]);
}

// --- sessions, locks, orphans, xattrs --------------------------------------------------------

impl H {
    fn open_session(&mut self) -> u64 {
        let now = self.now();
        match self.apply(Command::OpenSession(cmd::OpenSession {
            host: "h".into(),
            mountpoint: "/mnt".into(),
            pid: 1,
            now,
        })) {
            Ok(Reply::Session(id)) => id,
            other => panic!("open session: {other:?}"),
        }
    }

    fn lock(
        &mut self,
        ino: u64,
        session: u64,
        owner: u64,
        typ: LockType,
        r: (u64, u64),
    ) -> CommandResult {
        self.apply(Command::SetLock(cmd::SetLock {
            ino,
            session,
            owner,
            lock: LockRange {
                typ,
                start: r.0,
                end: r.1,
                pid: owner as u32,
            },
        }))
    }

    fn xattr_set(&mut self, ino: u64, name: &str, v: &[u8], flags: u32) -> Result<(), ErrorKind> {
        let now = self.now();
        self.apply(Command::SetXattr(cmd::SetXattr {
            ino,
            name: name.as_bytes().to_vec(),
            value: v.to_vec(),
            flags,
            now,
        }))
        .map(|_| ())
        .map_err(|e| e.kind)
    }
}

fn want(typ: LockType, start: u64, end: u64) -> LockRange {
    LockRange {
        typ,
        start,
        end,
        pid: 0,
    }
}

/// Two mounts (sessions) contend for byte ranges of one file: owners never block themselves,
/// writes exclude everyone, reads share, an unlock splits a range, and ending a session frees
/// everything it held.
#[test]
fn locks_conflict_across_owners_split_and_die_with_their_session() {
    let mut h = H::new();
    let f = h.file(ROOT_INO, "f").ino;
    let (a, b) = (h.open_session(), h.open_session());
    assert_ne!(a, b);
    use LockType::*;
    h.lock(f, a, 1, Write, (0, 99)).unwrap();
    // The same owner may change its own lock; another owner is refused on overlap only.
    h.lock(f, a, 1, Read, (50, 59)).unwrap();
    assert_eq!(
        h.lock(f, b, 7, Read, (90, 200)).unwrap_err().kind,
        ErrorKind::WouldBlock
    );
    h.lock(f, b, 7, Write, (100, 199)).unwrap();
    // Readers share: b may read-lock a's read range [50, 59] but not a's write range.
    h.lock(f, b, 7, Read, (50, 59)).unwrap();
    assert_eq!(
        h.lock(f, b, 7, Read, (40, 59)).unwrap_err().kind,
        ErrorKind::WouldBlock
    );
    let c = h
        .fsm
        .lock_conflict(f, b, 7, &want(Write, 0, 10))
        .unwrap()
        .unwrap();
    assert_eq!((c.session, c.write, c.start, c.end), (a, true, 0, 49));
    // Unlock the middle of a's write range: [0, 9] and [20, 49] stay.
    h.lock(f, a, 1, Unlock, (10, 19)).unwrap();
    assert!(h
        .fsm
        .lock_conflict(f, b, 7, &want(Write, 10, 19))
        .unwrap()
        .is_none());
    assert!(h
        .fsm
        .lock_conflict(f, b, 7, &want(Write, 9, 9))
        .unwrap()
        .is_some());
    assert!(h
        .fsm
        .lock_conflict(f, b, 7, &want(Write, 20, 20))
        .unwrap()
        .is_some());
    // A session that ended owns nothing and cannot lock.
    let now = h.now();
    h.apply(Command::CloseSession(cmd::CloseSession {
        session: a,
        idle_through: None,
        now,
    }))
    .unwrap();
    assert!(h
        .fsm
        .lock_conflict(f, b, 7, &want(Write, 0, 99))
        .unwrap()
        .is_none());
    assert_eq!(
        h.lock(f, a, 1, Write, (0, 0)).unwrap_err().kind,
        ErrorKind::NotFound
    );
    // Release by owner (close of a descriptor).
    h.apply(Command::ReleaseLocks(cmd::ReleaseLocks {
        ino: f,
        session: b,
        owner: 7,
    }))
    .unwrap();
    let c2 = h.open_session();
    h.lock(f, c2, 3, Write, (0, u64::MAX)).unwrap();
}

/// Expiry races with renewal: a `CloseSession` decided before the last renewal does nothing.
#[test]
fn a_renewed_session_survives_a_stale_expiry() {
    let mut h = H::new();
    let s = h.open_session();
    // The reaper decides at the index it last applied; a renewal commits after that.
    let decided = h.index;
    let now = h.now();
    h.apply(Command::RenewSession(cmd::RenewSession { session: s, now }))
        .unwrap();
    let now = h.now();
    h.apply(Command::CloseSession(cmd::CloseSession {
        session: s,
        idle_through: Some(decided),
        now,
    }))
    .unwrap();
    assert_eq!(
        h.fsm.sessions().unwrap().len(),
        1,
        "renewed after the decision: kept"
    );
    let later = h.index;
    let now = h.now();
    h.apply(Command::CloseSession(cmd::CloseSession {
        session: s,
        idle_through: Some(later),
        now,
    }))
    .unwrap();
    assert!(h.fsm.sessions().unwrap().is_empty());
    let now = h.now();
    assert_eq!(
        h.err(Command::RenewSession(cmd::RenewSession { session: s, now })),
        ErrorKind::NotFound
    );
}

/// Unlinking (or renaming over) a file the caller's mount has open keeps it, nameless, until
/// the mount releases it or its session ends; its chunks stay referenced until then.
#[test]
fn an_open_file_outlives_its_last_name() {
    let mut h = H::new();
    let s = h.open_session();
    let f = h.file(ROOT_INO, "f").ino;
    let c = chunk("data", 10);
    h.commit(f, 10, vec![upd(0, c, &[1, 2])]).unwrap();
    let now = h.now();
    let r = h
        .apply(Command::Unlink(cmd::Unlink {
            parent: ROOT_INO,
            name: b"f".to_vec(),
            now,
            keep: Keep {
                session: s,
                open: vec![f],
            },
        }))
        .unwrap();
    assert_eq!(r, Reply::Unlinked { orphan: f });
    assert!(h.lookup(ROOT_INO, "f").is_none());
    assert_eq!(h.get(f).nlink, 0);
    assert_eq!(
        h.refs(&c.id),
        Some(1),
        "an orphan's chunks are still referenced"
    );
    assert_eq!(h.fsm.orphan_count().unwrap(), 1);
    // Writes to it still commit; it cannot get a name back.
    h.commit(f, 20, vec![]).unwrap();
    let now = h.now();
    assert_eq!(
        h.err(Command::Link(cmd::Link {
            ino: f,
            new_parent: ROOT_INO,
            new_name: b"g".to_vec(),
            now
        })),
        ErrorKind::NotFound
    );
    let now = h.now();
    h.apply(Command::ReleaseOrphan(cmd::ReleaseOrphan {
        session: s,
        ino: f,
        now,
    }))
    .unwrap();
    assert!(!h.exists(f));
    assert!(h.in_gc(&c.id), "released: its chunks are garbage");
    // Idempotent.
    let now = h.now();
    h.apply(Command::ReleaseOrphan(cmd::ReleaseOrphan {
        session: s,
        ino: f,
        now,
    }))
    .unwrap();

    // Rename over an open file; then the session ends (mount died) and takes the orphan along.
    let g = h.file(ROOT_INO, "g").ino;
    let x = h.file(ROOT_INO, "x").ino;
    let now = h.now();
    let r = h
        .apply(Command::Rename(cmd::Rename {
            parent: ROOT_INO,
            name: b"x".to_vec(),
            new_parent: ROOT_INO,
            new_name: b"g".to_vec(),
            flags: 0,
            now,
            keep: Keep {
                session: s,
                open: vec![g],
            },
        }))
        .unwrap();
    assert_eq!(r, Reply::Unlinked { orphan: g });
    assert_eq!(h.lookup(ROOT_INO, "g").unwrap().ino, x);
    assert!(h.exists(g));
    let now = h.now();
    h.apply(Command::CloseSession(cmd::CloseSession {
        session: s,
        idle_through: None,
        now,
    }))
    .unwrap();
    assert!(!h.exists(g));
    assert_eq!(h.fsm.orphan_count().unwrap(), 0);

    // Without a live session (or not open), the last unlink deletes at once.
    let y = h.file(ROOT_INO, "y").ino;
    let now = h.now();
    let r = h
        .apply(Command::Unlink(cmd::Unlink {
            parent: ROOT_INO,
            name: b"y".to_vec(),
            now,
            keep: Keep {
                session: s,
                open: vec![y],
            },
        }))
        .unwrap();
    assert_eq!(r, Reply::Unlinked { orphan: 0 });
    assert!(!h.exists(y));
}

/// Extended attributes: flags, limits, namespaces, and deletion with the inode.
#[test]
fn xattrs_follow_the_linux_rules() {
    let mut h = H::new();
    let f = h.file(ROOT_INO, "f").ino;
    let ctime = h.get(f).ctime;
    h.xattr_set(f, "user.a", b"1", 0).unwrap();
    assert!(h.get(f).ctime > ctime, "setxattr changes ctime");
    assert_eq!(
        h.xattr_set(f, "user.a", b"2", XATTR_CREATE),
        Err(ErrorKind::AlreadyExists)
    );
    assert_eq!(
        h.xattr_set(f, "user.b", b"2", XATTR_REPLACE),
        Err(ErrorKind::NoData)
    );
    h.xattr_set(f, "user.a", b"3", XATTR_REPLACE).unwrap();
    h.xattr_set(f, "trusted.t", b"", 0).unwrap();
    assert_eq!(h.fsm.xattr(f, b"user.a").unwrap(), b"3");
    assert_eq!(h.fsm.xattr(f, b"trusted.t").unwrap(), b"");
    assert_eq!(
        h.fsm.xattr_names(f).unwrap(),
        vec![b"trusted.t".to_vec(), b"user.a".to_vec()]
    );
    assert_eq!(
        h.xattr_set(f, "system.posix_acl_access", b"x", 0),
        Err(ErrorKind::NotSupported)
    );
    assert_eq!(
        h.xattr_set(f, "user.", b"x", 0),
        Err(ErrorKind::NotSupported)
    );
    assert_eq!(
        h.xattr_set(f, &format!("user.{}", "n".repeat(251)), b"x", 0),
        Err(ErrorKind::OutOfRange)
    );
    assert_eq!(
        h.xattr_set(f, "user.big", &vec![0; 64 * 1024 + 1], 0),
        Err(ErrorKind::TooBig)
    );
    let now = h.now();
    assert_eq!(
        h.err(Command::RemoveXattr(cmd::RemoveXattr {
            ino: f,
            name: b"user.zz".to_vec(),
            now
        })),
        ErrorKind::NoData
    );
    let now = h.now();
    h.apply(Command::RemoveXattr(cmd::RemoveXattr {
        ino: f,
        name: b"user.a".to_vec(),
        now,
    }))
    .unwrap();
    assert_eq!(h.fsm.xattr_names(f).unwrap(), vec![b"trusted.t".to_vec()]);
    // Deleting the file deletes its attributes; a new inode never inherits them.
    h.unlink(ROOT_INO, "f").unwrap();
    let g = h.file(ROOT_INO, "g").ino;
    assert!(h.fsm.xattr_names(g).unwrap().is_empty());
    assert!(h.fsm.xattr(f, b"trusted.t").is_err());
}

// --- upload sessions -------------------------------------------------------------------------

impl H {
    fn open_upload(&mut self, target: UploadTarget, base_version: u64) -> Result<u64, ErrorKind> {
        let now = self.now();
        match self.apply(Command::OpenUpload(cmd::OpenUpload {
            target,
            base_version,
            label: "test".into(),
            host: "h".into(),
            now,
        })) {
            Ok(Reply::Upload(id)) => Ok(id),
            Ok(r) => panic!("unexpected reply {r:?}"),
            Err(e) => Err(e.kind),
        }
    }

    fn record(&mut self, upload: u64, updates: Vec<SlotUpdate>) -> Result<(), ErrorKind> {
        let now = self.now();
        self.apply(Command::RecordUpload(cmd::RecordUpload {
            upload,
            updates,
            now,
        }))
        .map(|_| ())
        .map_err(|e| e.kind)
    }

    fn commit_upload(&mut self, upload: u64, size: u64) -> Result<Inode, ErrorKind> {
        let now = self.now();
        match self.apply(Command::CommitUpload(cmd::CommitUpload {
            upload,
            size,
            mtime: None,
            mode: 0o640,
            uid: 7,
            gid: 8,
            now,
        })) {
            Ok(Reply::Attr(i)) => Ok(i),
            Ok(r) => panic!("unexpected reply {r:?}"),
            Err(e) => Err(e.kind),
        }
    }
}

fn name_target(name: &str) -> UploadTarget {
    UploadTarget::Name {
        parent: ROOT_INO,
        name: name.as_bytes().to_vec(),
    }
}

/// `cairn put` of a new file: recorded chunks are held by the upload (not garbage, not
/// visible), and the commit makes the file appear at once with exactly those chunks.
#[test]
fn an_upload_holds_its_chunks_and_commits_a_new_file_atomically() {
    let mut h = H::new();
    let (a, b) = (chunk("a", MB4 as u32), chunk("b", 100));
    let up = h.open_upload(name_target("new"), 0).unwrap();
    h.record(up, vec![upd(0, a, &[1, 2, 3])]).unwrap();
    h.record(up, vec![upd(1, b, &[1, 2, 3])]).unwrap();
    assert_eq!(h.refs(&a.id), Some(1), "the upload holds the chunk");
    assert!(!h.in_gc(&a.id));
    assert!(
        h.lookup(ROOT_INO, "new").is_none(),
        "nothing visible before the commit"
    );
    let (_, slots) = uploads(&h.fsm).pop().unwrap();
    assert_eq!(slots.len(), 2);
    let f = h.commit_upload(up, MB4 + 100).unwrap();
    assert_eq!(h.lookup(ROOT_INO, "new").unwrap().ino, f.ino);
    assert_eq!((f.size, f.mode, f.uid, f.gid), (MB4 + 100, 0o640, 7, 8));
    assert_eq!(h.slots(f.ino).len(), 2);
    assert_eq!(
        h.refs(&a.id),
        Some(1),
        "the reference moved from the upload to the file"
    );
    assert!(uploads(&h.fsm).is_empty(), "the commit ends the upload");
    assert_eq!(h.commit_upload(up, 1), Err(ErrorKind::NotFound));
}

/// Replacing an existing file: exactly the recorded slots, optimistic version check, and an
/// aborted or expired upload turns its chunks into garbage.
#[test]
fn an_upload_replaces_a_file_only_at_its_base_version() {
    let mut h = H::new();
    let f = h.file(ROOT_INO, "f").ino;
    let (old0, old1, new0) = (chunk("o0", MB4 as u32), chunk("o1", 10), chunk("n0", 5));
    h.commit(
        f,
        MB4 + 10,
        vec![upd(0, old0, &[1, 2]), upd(1, old1, &[1, 2])],
    )
    .unwrap();
    let v = h.get(f).version;
    assert_eq!(
        h.open_upload(name_target("f"), v + 1),
        Err(ErrorKind::Conflict)
    );
    assert_eq!(h.open_upload(name_target("f"), 0), Err(ErrorKind::Conflict));
    let up = h.open_upload(name_target("f"), v).unwrap();
    h.record(up, vec![upd(0, new0, &[1, 2])]).unwrap();
    // A concurrent writer commits first: the upload's commit is refused, nothing changes.
    h.commit(f, MB4 + 10, vec![]).unwrap();
    assert_eq!(h.commit_upload(up, 5), Err(ErrorKind::Conflict));
    assert_eq!(h.slots(f).len(), 2);
    // Abort: the upload's chunk is garbage now; the file's are not.
    let now = h.now();
    h.apply(Command::AbortUpload(cmd::AbortUpload {
        upload: up,
        idle_through: None,
        now,
    }))
    .unwrap();
    assert!(h.in_gc(&new0.id));
    assert!(!h.in_gc(&old0.id));

    let v = h.get(f).version;
    let up = h.open_upload(name_target("f"), v).unwrap();
    h.record(up, vec![upd(0, new0, &[1, 2])]).unwrap();
    assert!(!h.in_gc(&new0.id), "recorded again: referenced again");
    let g = h.commit_upload(up, 5).unwrap();
    assert_eq!(g.ino, f);
    assert_eq!(
        h.slots(g.ino).keys().copied().collect::<Vec<_>>(),
        vec![0],
        "exactly the recorded slots"
    );
    assert!(
        h.in_gc(&old0.id) && h.in_gc(&old1.id),
        "the old version's chunks are garbage"
    );

    // Expiry races with a record: a stale decision does nothing.
    let up = h.open_upload(UploadTarget::Inode(f), 0).unwrap();
    let decided = h.index;
    h.record(up, vec![upd(0, old0, &[1, 2])]).unwrap();
    let now = h.now();
    h.apply(Command::AbortUpload(cmd::AbortUpload {
        upload: up,
        idle_through: Some(decided),
        now,
    }))
    .unwrap();
    assert_eq!(uploads(&h.fsm).len(), 1);
    // A mount's commit that names its upload ends it and keeps the chunks via the file.
    let v = h.get(f).version;
    let now = h.now();
    h.apply(Command::CommitWrite(cmd::CommitWrite {
        ino: f,
        base_version: v,
        size: 10,
        updates: vec![upd(0, old0, &[1, 2])],
        mtime: None,
        now,
        upload: up,
        apply_upload: false,
        replace: false,
    }))
    .unwrap();
    assert!(uploads(&h.fsm).is_empty());
    assert_eq!(h.refs(&old0.id), Some(1));
    assert!(!h.in_gc(&old0.id));
}

/// The upload of a mount that died mid-copy ends when the file's content is committed again
/// (the rerun), or when the file is deleted: it no longer holds chunks for a dead version.
#[test]
fn a_commit_or_delete_ends_the_stale_uploads_of_its_file() {
    let mut h = H::new();
    let f = h.file(ROOT_INO, "f").ino;
    let (a, b) = (chunk("a", 10), chunk("b", 10));
    let stale = h.open_upload(UploadTarget::Inode(f), 1).unwrap();
    h.record(stale, vec![upd(0, a, &[1, 2])]).unwrap();
    let other = h.open_upload(name_target("g"), 0).unwrap();
    h.commit(f, 10, vec![upd(0, b, &[1, 2])]).unwrap();
    let left: Vec<u64> = uploads(&h.fsm).iter().map(|(u, _)| u.id).collect();
    assert_eq!(
        left,
        vec![other],
        "the stale upload of f ended, g's is untouched"
    );
    assert!(h.in_gc(&a.id));

    let again = h.open_upload(UploadTarget::Inode(f), 2).unwrap();
    h.record(again, vec![upd(0, a, &[1, 2])]).unwrap();
    h.unlink(ROOT_INO, "f").unwrap();
    assert!(
        h.fsm.upload_header(again).is_err(),
        "deleting the file ends its uploads"
    );
    assert!(h.in_gc(&a.id) && h.in_gc(&b.id));
}

/// A commit of more slots than one request carries: the slots are recorded in the upload
/// session in batches, and one small CommitWrite applies them (`apply_upload`), with `replace`
/// turning every slot of the old version not given into a hole, all in one entry: before it the
/// file is wholly old, after it wholly new.
#[test]
fn a_commit_applies_its_recorded_upload_in_one_entry() {
    const SLOTS: u64 = 5000;
    let mut h = H::new();
    let f = h.file(ROOT_INO, "f").ino;
    let (old, new, last) = (chunk("old", 10), chunk("new", 1), chunk("last", 7));
    // The old version: slots 0..10 and slot 6000, all one chunk.
    let olds: Vec<SlotUpdate> = (0..10)
        .chain([6000])
        .map(|i| upd(i, old, &[1, 2]))
        .collect();
    h.commit(f, 6000 * MB4 + 10, olds).unwrap();
    assert_eq!(h.refs(&old.id), Some(11));
    let v = h.get(f).version;

    let up = h.open_upload(UploadTarget::Inode(f), v).unwrap();
    let all: Vec<SlotUpdate> = (0..SLOTS).map(|i| upd(i, new, &[1, 2])).collect();
    for batch in all.chunks(4096) {
        h.record(up, batch.to_vec()).unwrap();
    }
    assert_eq!(h.get(f).version, v, "recording changes nothing visible");
    assert_eq!(h.slots(f).len(), 11);

    // Another inode's commit cannot apply this upload; a stale base is a conflict; neither
    // changes anything.
    let g = h.file(ROOT_INO, "g").ino;
    let apply = |ino: u64, base_version: u64, now: Time| {
        Command::CommitWrite(cmd::CommitWrite {
            ino,
            base_version,
            size: (SLOTS - 1) * MB4 + 7,
            updates: vec![upd(SLOTS - 1, last, &[1])],
            mtime: None,
            now,
            upload: up,
            apply_upload: true,
            replace: true,
        })
    };
    let now = h.now();
    let gv = h.get(g).version;
    assert_eq!(h.err(apply(g, gv, now)), ErrorKind::InvalidArgument);
    assert_eq!(h.err(apply(f, v - 1, now)), ErrorKind::Conflict);
    assert_eq!(h.slots(f).len(), 11);

    let Reply::Attr(i) = h.apply(apply(f, v, now)).unwrap() else {
        panic!()
    };
    assert_eq!((i.version, i.size), (v + 1, (SLOTS - 1) * MB4 + 7));
    let slots = h.slots(f);
    assert_eq!(
        slots.len() as u64,
        SLOTS,
        "every recorded slot, nothing else"
    );
    assert!(slots.range(..SLOTS - 1).all(|(_, c)| *c == new));
    assert_eq!(slots[&(SLOTS - 1)], last, "the request's own update wins");
    assert_eq!(i.stored_bytes, SLOTS - 1 + 7);
    assert_eq!(h.refs(&new.id), Some(SLOTS - 1), "the file holds them now");
    assert_eq!(h.refs(&old.id), Some(0), "slot 6000 became a hole too");
    assert!(h.in_gc(&old.id));
    assert!(uploads(&h.fsm).is_empty(), "the commit ends the upload");

    // Without `replace`, slots not given keep their chunks.
    let v = h.get(f).version;
    let up = h.open_upload(UploadTarget::Inode(f), v).unwrap();
    h.record(up, vec![upd(1, old, &[1])]).unwrap();
    let now = h.now();
    h.apply(Command::CommitWrite(cmd::CommitWrite {
        ino: f,
        base_version: v,
        size: (SLOTS - 1) * MB4 + 7,
        updates: vec![],
        mtime: None,
        now,
        upload: up,
        apply_upload: true,
        replace: false,
    }))
    .unwrap();
    let slots = h.slots(f);
    assert_eq!((slots.len() as u64, slots[&1]), (SLOTS, old));
    assert_eq!(h.refs(&new.id), Some(SLOTS - 2));
}

/// A file's slots are read a page at a time, every page of one version; truncation and
/// deletion remove slot rows, and `stored_bytes` follows every change.
#[test]
fn slots_are_paged_and_truncation_and_deletion_remove_them() {
    let mut h = H::new();
    let f = h.file(ROOT_INO, "f").ino;
    let c = chunk("c", MB4 as u32);
    let updates: Vec<SlotUpdate> = (0..100).map(|i| upd(i * 2, c, &[1])).collect();
    let i = h.commit(f, 200 * MB4, updates).unwrap();
    assert_eq!(i.stored_bytes, 100 * MB4);

    let p = h.fsm.slot_page(f, 0, 30).unwrap();
    assert_eq!(p.slots.len(), 30);
    assert_eq!(p.slots[29].index, 58);
    assert_eq!(
        p.next,
        Some(60),
        "the next page starts at the next non-hole slot"
    );
    assert_eq!(p.inode.version, i.version);
    let p = h.fsm.slot_page(f, 59, 1000).unwrap();
    assert_eq!(p.slots.first().map(|s| s.index), Some(60));
    assert_eq!((p.slots.len(), p.next), (70, None));
    let p = h.fsm.slot_page(f, 500, 10).unwrap();
    assert!(p.slots.is_empty() && p.next.is_none());
    assert!(matches!(
        h.fsm.slot_page(999, 0, 10),
        Err(cairn_meta_server::error::MetaError::Fs(e)) if e.kind == ErrorKind::Stale
    ));

    let i = h.truncate(f, 50 * MB4 + 5);
    assert_eq!(h.slots(f).len(), 26, "slots 0, 2, .., 50 are left");
    assert_eq!(h.slots(f)[&50].len, 5);
    assert_eq!(i.stored_bytes, 25 * MB4 + 5);
    assert_eq!(h.refs(&c.id), Some(26));

    h.unlink(ROOT_INO, "f").unwrap();
    let mut rows = 0;
    h.fsm.for_each_slot(|_, _, _| rows += 1).unwrap();
    assert_eq!(rows, 0, "a deleted file leaves no slot rows");
    assert_eq!(h.refs(&c.id), Some(0));
}

/// Expiries are decided on log positions, never by comparing wall times (see the meta server's
/// `log_clock`): a leader whose wall clock leaps a day ahead neither forgets a request id nor
/// hands a chunk to GC before its grace, and a request id or a chunk goes once its index is old
/// enough, whatever the wall clock says.
#[test]
fn request_ids_and_gc_grace_follow_log_positions_not_wall_clocks() {
    let mut h = H::new();
    let mkdir = |name: &str, now: Time| create_once(7, 1, name, Kind::Directory, now);
    tracing::info!("--- a request and an unreferenced chunk, at known log indexes");
    let now = h.now();
    let first = h.apply(mkdir("d", now)).unwrap();
    let request_at = h.index;
    let f = h.file(ROOT_INO, "f").ino;
    let a = chunk("a", 10);
    h.commit(f, 10, vec![upd(0, a, &[1, 2])]).unwrap();
    h.unlink(ROOT_INO, "f").unwrap();
    let unreferenced_at = h.index;
    assert!(h.in_gc(&a.id));

    tracing::info!("--- the leader's wall clock leaps a day ahead; the log clock has not moved");
    let far = Time {
        secs: now.secs + 86_400,
        nanos: 0,
    };
    h.apply(Command::PruneRequests(cmd::PruneRequests {
        before: far,
        before_index: request_at,
    }))
    .unwrap();
    let t = h.now();
    assert_eq!(
        h.apply(mkdir("d", t)).unwrap(),
        first,
        "a retry still gets the recorded reply, and changes nothing"
    );
    let candidates = |h: &H, through| {
        h.fsm
            .gc_candidates(through, far, 10)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>()
    };
    assert!(
        candidates(&h, None).is_empty(),
        "a node that has not run for a grace collects nothing, whatever its wall clock says"
    );
    assert!(
        candidates(&h, Some(unreferenced_at - 1)).is_empty(),
        "unreferenced after the index applied a grace ago: still in its grace"
    );

    tracing::info!("--- once their indexes are old enough, both go");
    assert_eq!(candidates(&h, Some(unreferenced_at)), vec![a.id]);
    h.apply(Command::PruneRequests(cmd::PruneRequests {
        before: now,
        before_index: request_at + 1,
    }))
    .unwrap();
    let t = h.now();
    assert_eq!(
        h.apply(mkdir("d", t)).unwrap_err().kind,
        ErrorKind::AlreadyExists,
        "the id was forgotten: the retry ran again"
    );
}

/// An inline chunk of `data` and the slot update referencing it (no replicas).
fn inline(data: &[u8]) -> (cmd::InlineChunk, SlotUpdate) {
    let id = ChunkId::inline_of(data);
    let c = SlotChunk {
        id,
        len: data.len() as u32,
        stored_len: data.len() as u32,
    };
    (
        cmd::InlineChunk {
            id,
            data: data.to_vec(),
        },
        upd(0, c, &[]),
    )
}

impl H {
    fn commit_inline(
        &mut self,
        ino: u64,
        size: u64,
        updates: Vec<SlotUpdate>,
        chunks: Vec<cmd::InlineChunk>,
    ) -> Result<Inode, ErrorKind> {
        let base_version = self.get(ino).version;
        let write = self.commit_cmd(ino, base_version, size, updates);
        match self.apply(Command::CommitInline(cmd::CommitInline {
            write,
            inline: chunks,
        })) {
            Ok(Reply::Attr(i)) => Ok(i),
            Ok(r) => panic!("unexpected reply {r:?}"),
            Err(e) => Err(e.kind),
        }
    }

    /// The inline bytes slot 0 of `ino` reads as, from a page of its slots.
    fn inline_bytes(&self, ino: u64) -> Option<Vec<u8>> {
        let page = self.fsm.slot_page(ino, 0, 10).unwrap();
        page.slots.into_iter().find(|s| s.index == 0)?.inline
    }
}

#[test]
fn small_files_are_kept_inline_shared_and_deleted_with_their_last_reference() {
    let mut h = H::new();
    h.register_servers(3);
    let f = h.file(ROOT_INO, "f");
    let g = h.file(ROOT_INO, "g");

    // A small file's content travels with its commit: no replicas, the bytes in the page.
    let (c, u) = inline(b"hello, inline");
    let i = h
        .commit_inline(f.ino, 13, vec![u.clone()], vec![c.clone()])
        .unwrap();
    assert_eq!((i.size, i.stored_bytes), (13, 13));
    let rec = h.fsm.chunk(&c.id).unwrap().unwrap();
    assert!(rec.inline && rec.replicas.is_empty());
    assert_eq!(rec.refs, 1);
    assert_eq!(
        h.inline_bytes(f.ino).as_deref(),
        Some(&b"hello, inline"[..])
    );
    assert_eq!(h.fsm.inline_data(&c.id).unwrap(), Some(c.data.clone()));
    assert!(!h.in_gc(&c.id), "an inline chunk is never queued for GC");

    // Another file with the same content shares it (bytes sent again or not at all).
    h.commit_inline(g.ino, 13, vec![u.clone()], vec![c.clone()])
        .unwrap();
    assert_eq!(h.refs(&c.id), Some(2));

    // Refusals change nothing: bytes that do not hash to the id, too many bytes, an inline
    // chunk no update references, an update naming replicas of an inline chunk, an inline
    // chunk neither sent nor kept.
    let mut forged = c.clone();
    forged.data[0] ^= 1;
    assert_eq!(
        h.commit_inline(f.ino, 13, vec![u.clone()], vec![forged]),
        Err(ErrorKind::InvalidArgument)
    );
    let big = vec![7u8; cairn_common::INLINE_MAX + 1];
    let (bc, bu) = inline(&big);
    assert_eq!(
        h.commit_inline(f.ino, big.len() as u64, vec![bu], vec![bc.clone()]),
        Err(ErrorKind::InvalidArgument)
    );
    let (other, _) = inline(b"not referenced");
    assert_eq!(
        h.commit_inline(f.ino, 13, vec![], vec![other.clone()]),
        Err(ErrorKind::InvalidArgument)
    );
    assert_eq!(h.fsm.chunk(&other.id).unwrap(), None);
    assert_eq!(h.fsm.chunk(&bc.id).unwrap(), None);
    assert_eq!(
        h.commit(f.ino, 13, vec![upd(0, u.chunk.unwrap(), &[1])]),
        Err(ErrorKind::InvalidArgument)
    );
    let (never, nu) = inline(b"never sent");
    assert!(h.commit(f.ino, 10, vec![nu]).is_err());
    assert_eq!(h.fsm.chunk(&never.id).unwrap(), None);
    assert_eq!(h.refs(&c.id), Some(2));

    // Rewriting f inline with new content: the old chunk loses f's reference only.
    let (c2, u2) = inline(b"second version");
    h.commit_inline(f.ino, 14, vec![u2], vec![c2.clone()])
        .unwrap();
    assert_eq!(h.refs(&c.id), Some(1));
    assert_eq!(
        h.inline_bytes(f.ino).as_deref(),
        Some(&b"second version"[..])
    );

    // f grows into a regular chunk on chunk servers: its inline chunk is deleted at once,
    // record and bytes, with its last reference.
    let a = chunk("big", 100_000);
    h.commit(f.ino, 100_000, vec![upd(0, a, &[1, 2, 3])])
        .unwrap();
    assert_eq!(h.fsm.chunk(&c2.id).unwrap(), None);
    assert_eq!(h.fsm.inline_data(&c2.id).unwrap(), None);
    assert_eq!(h.inline_bytes(f.ino), None);
    assert!(!h.in_gc(&c2.id));

    // Unlinking g, the last file holding c, deletes c.
    h.unlink(ROOT_INO, "g").unwrap();
    assert_eq!(h.fsm.chunk(&c.id).unwrap(), None);
    assert_eq!(h.fsm.inline_data(&c.id).unwrap(), None);

    // Truncating an inline file clips its slot; the bytes stay whole (a reader keeps `len`).
    let h2 = h.file(ROOT_INO, "h");
    let (c3, u3) = inline(b"0123456789");
    h.commit_inline(h2.ino, 10, vec![u3], vec![c3.clone()])
        .unwrap();
    let i = h.truncate(h2.ino, 4);
    assert_eq!(i.stored_bytes, 4);
    assert_eq!(h.slots(h2.ino)[&0].len, 4);
    assert_eq!(
        h.fsm.inline_data(&c3.id).unwrap(),
        Some(b"0123456789".to_vec())
    );
    let i = h.truncate(h2.ino, 0);
    assert_eq!(i.size, 0);
    assert_eq!(h.fsm.chunk(&c3.id).unwrap(), None);
    assert_eq!(h.fsm.inline_data(&c3.id).unwrap(), None);
}

/// Group commit puts many writers' commands in one entry, so one transaction may delete more
/// names of a directory than any single command does: an rmdir after them must still see the
/// names that are left (and a refused command in the middle must leave no trace).
#[test]
fn an_rmdir_in_a_group_sees_every_name_the_group_left() {
    let mut h = H::new();
    let d = h.mkdir(ROOT_INO, "d");
    for n in ["a", "b", "c", "x", "y"] {
        h.file(d.ino, n);
    }
    let now = h.now();
    let unlink = |name: &str| {
        Command::Unlink(cmd::Unlink {
            parent: d.ino,
            name: name.as_bytes().to_vec(),
            now,
            keep: Keep::default(),
        })
    };
    let rmdir = Command::Rmdir(cmd::Rmdir {
        parent: ROOT_INO,
        name: b"d".to_vec(),
        now,
    });
    let r = h
        .apply(Command::Group(cmd::Group {
            cmds: vec![
                unlink("a"),
                unlink("b"),
                unlink("nope"),
                unlink("c"),
                rmdir.clone(),
            ],
        }))
        .unwrap();
    let Reply::Group(results) = r else {
        panic!("{r:?}")
    };
    let kinds: Vec<Option<ErrorKind>> = results
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            None,
            None,
            Some(ErrorKind::NotFound),
            None,
            Some(ErrorKind::NotEmpty)
        ]
    );
    assert_eq!(h.names(d.ino), vec!["x", "y"]);

    // Once the group removes the last names too, the rmdir in it succeeds.
    let r = h
        .apply(Command::Group(cmd::Group {
            cmds: vec![unlink("x"), unlink("y"), rmdir],
        }))
        .unwrap();
    let Reply::Group(results) = r else {
        panic!("{r:?}")
    };
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(h.lookup(ROOT_INO, "d"), None);
}
