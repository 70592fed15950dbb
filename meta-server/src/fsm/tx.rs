//! The transaction of one command: its changes layered over the database.
//!
//! Reads through a [`Tx`] see the command's own earlier writes (a rename within one directory,
//! two slots of one file sharing a chunk), and nothing reaches RocksDB until the whole command
//! succeeded: only then does [`Fsm::apply`](super::Fsm::apply) call [`Tx::flush`], which puts
//! every change into the caller's write batch. A refused command therefore changes nothing, and
//! an accepted one takes effect atomically with the Raft `last_applied` written in the same
//! batch.
//!
//! The hot tables (inodes, slots, dentries, chunks and the GC/repair queues) have typed
//! overlays; the small ones go through the raw key-value overlay ([`Tx::kv_get`],
//! [`Tx::kv_put`], [`Tx::kv_scan`]).
use super::content::{decode_slot, encode_slot, slot_key};
use super::namespace::Dentry;
use super::schema::{
    decode_json, encode_json, fs_err, named_key, u64_at, Counter, CF_CHUNKS, CF_COUNTERS,
    CF_DENTRIES, CF_GC, CF_GONE, CF_INODES, CF_REPAIR, CF_SLOTS,
};
use super::{ChunkRecord, Fsm, Gone, Inode, Queued};
use crate::command::{FsError, SlotChunk, Time};
use cairn_common::error::ErrorKind;
use cairn_common::ChunkId;
use rocksdb::WriteBatch;
use std::collections::BTreeMap;

/// A key and its value, as stored.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The destination of a flush: the write batch and the hash of the entry's effects.
struct Out<'b> {
    b: &'b mut WriteBatch,
    effects: &'b mut blake3::Hasher,
}

impl Out<'_> {
    /// Puts (`Some`) or deletes (`None`) `key` of column family `name`.
    fn put(&mut self, name: &str, cf: &rocksdb::ColumnFamily, key: &[u8], v: Option<Vec<u8>>) {
        let h = &mut *self.effects;
        for part in [name.as_bytes(), key] {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part);
        }
        match v {
            Some(v) => {
                h.update(&[1]);
                h.update(&(v.len() as u64).to_be_bytes());
                h.update(&v);
                self.b.put_cf(cf, key, v);
            }
            None => {
                h.update(&[0]);
                self.b.delete_cf(cf, key);
            }
        }
    }
}

/// The changes of one command (see the module docs). `None` values are deletions.
pub struct Tx<'a> {
    fsm: &'a Fsm,
    /// The log index of the entry being applied.
    index: u64,
    o: Overlay,
    /// What each write replaced, from the first savepoint on (`None` before: a transaction
    /// that takes none keeps no journal). Reads that fill the overlay from the database are
    /// not journaled: what they cached stays true after a rollback.
    journal: Option<Vec<Undo>>,
}

/// What a transaction has read and changed so far, over the committed state.
#[derive(Default)]
struct Overlay {
    inodes: BTreeMap<u64, Option<Inode>>,
    /// (ino, slot index) → chunk (`None`: a hole).
    slots: BTreeMap<(u64, u64), Option<SlotChunk>>,
    dentries: BTreeMap<Vec<u8>, Option<Dentry>>,
    chunks: BTreeMap<ChunkId, Option<ChunkRecord>>,
    gc: BTreeMap<ChunkId, Option<Queued>>,
    repair: BTreeMap<ChunkId, Option<Time>>,
    gone: BTreeMap<ChunkId, Option<Gone>>,
    counters: BTreeMap<Counter, u64>,
    /// Every other column family: (cf, key) → value.
    kv: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
}

/// One overlay entry as it was before a write (`None`: not in the overlay), put back by
/// [`Tx::rollback`].
enum Undo {
    Inode(u64, Option<Option<Inode>>),
    Slot((u64, u64), Option<Option<SlotChunk>>),
    Dentry(Vec<u8>, Option<Option<Dentry>>),
    Chunk(ChunkId, Option<Option<ChunkRecord>>),
    Gc(ChunkId, Option<Option<Queued>>),
    Repair(ChunkId, Option<Option<Time>>),
    Gone(ChunkId, Option<Option<Gone>>),
    Counter(Counter, Option<u64>),
    Kv((&'static str, Vec<u8>), Option<Option<Vec<u8>>>),
}

/// Puts back what `map` held for `k` before a write (`old`, as `insert` returned it).
fn restore<K: Ord, V>(map: &mut BTreeMap<K, V>, k: K, old: Option<V>) {
    match old {
        Some(v) => map.insert(k, v),
        None => map.remove(&k),
    };
}

/// A moment of a transaction to go back to ([`Tx::savepoint`]): a position in its undo
/// journal.
pub struct Savepoint(usize);

impl<'a> Tx<'a> {
    pub fn new(fsm: &'a Fsm, index: u64) -> Tx<'a> {
        Tx {
            fsm,
            index,
            o: Overlay::default(),
            journal: None,
        }
    }

    /// The transaction as it is now: [`Tx::rollback`] to it undoes every change made after.
    /// (A group applies each of its commands between the two: see `Group::apply`.) Costs
    /// nothing: from here on each write notes what it replaced.
    pub fn savepoint(&mut self) -> Savepoint {
        Savepoint(self.journal.get_or_insert_with(Vec::new).len())
    }

    /// Goes back to `sp`, taken earlier from this transaction: undoes the writes since, last
    /// first.
    pub fn rollback(&mut self, sp: Savepoint) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let o = &mut self.o;
        while journal.len() > sp.0 {
            let Some(u) = journal.pop() else { break };
            match u {
                Undo::Inode(k, old) => restore(&mut o.inodes, k, old),
                Undo::Slot(k, old) => restore(&mut o.slots, k, old),
                Undo::Dentry(k, old) => restore(&mut o.dentries, k, old),
                Undo::Chunk(k, old) => restore(&mut o.chunks, k, old),
                Undo::Gc(k, old) => restore(&mut o.gc, k, old),
                Undo::Repair(k, old) => restore(&mut o.repair, k, old),
                Undo::Gone(k, old) => restore(&mut o.gone, k, old),
                Undo::Counter(k, old) => restore(&mut o.counters, k, old),
                Undo::Kv(k, old) => restore(&mut o.kv, k, old),
            }
        }
    }

    /// Notes `undo` if a savepoint was taken.
    fn journal(&mut self, undo: impl FnOnce() -> Undo) {
        if let Some(j) = self.journal.as_mut() {
            j.push(undo());
        }
    }

    /// The log index of the entry being applied (the same on every replica).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The committed state under this transaction (for scans it does not overlay).
    pub fn fsm(&self) -> &'a Fsm {
        self.fsm
    }

    /// Puts every change into `b`, and into `effects`, the hash of this entry's effects that
    /// the state digest chains (`store::digest`): column family, key and new value (or a
    /// deletion) of every change, in one fixed order, so every replica hashes the same bytes.
    pub fn flush(self, b: &mut WriteBatch, effects: &mut blake3::Hasher) -> Result<(), FsError> {
        let f = self.fsm;
        let mut out = Out { b, effects };
        let cf = f.cf(CF_INODES)?;
        for (ino, v) in &self.o.inodes {
            out.put(
                CF_INODES,
                cf,
                &ino.to_be_bytes(),
                v.as_ref().map(encode_json),
            );
        }
        let cf = f.cf(CF_SLOTS)?;
        for ((ino, index), v) in &self.o.slots {
            out.put(
                CF_SLOTS,
                cf,
                &slot_key(*ino, *index),
                v.as_ref().map(encode_slot),
            );
        }
        let cf = f.cf(CF_DENTRIES)?;
        for (k, v) in &self.o.dentries {
            out.put(CF_DENTRIES, cf, k, v.map(|d| d.encode().to_vec()));
        }
        let cf = f.cf(CF_CHUNKS)?;
        for (id, v) in &self.o.chunks {
            out.put(CF_CHUNKS, cf, id.as_bytes(), v.as_ref().map(encode_json));
        }
        let cf = f.cf(CF_GC)?;
        for (id, v) in &self.o.gc {
            out.put(CF_GC, cf, id.as_bytes(), v.as_ref().map(encode_json));
        }
        let cf = f.cf(CF_REPAIR)?;
        for (id, v) in &self.o.repair {
            out.put(CF_REPAIR, cf, id.as_bytes(), v.as_ref().map(encode_json));
        }
        let cf = f.cf(CF_GONE)?;
        for (id, v) in &self.o.gone {
            out.put(CF_GONE, cf, id.as_bytes(), v.as_ref().map(encode_json));
        }
        let cf = f.cf(CF_COUNTERS)?;
        for (c, v) in &self.o.counters {
            out.put(
                CF_COUNTERS,
                cf,
                c.key().as_bytes(),
                Some(v.to_be_bytes().to_vec()),
            );
        }
        for ((name, k), v) in self.o.kv {
            out.put(name, f.cf(name)?, &k, v);
        }
        Ok(())
    }

    // --- raw key-value overlay ---------------------------------------------------------------

    pub fn kv_get(&mut self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, FsError> {
        if let Some(v) = self.o.kv.get(&(cf, key.to_vec())) {
            return Ok(v.clone());
        }
        self.fsm.raw_get(cf, key)
    }

    pub fn kv_put(&mut self, cf: &'static str, key: Vec<u8>, v: Option<Vec<u8>>) {
        let old = self.o.kv.insert((cf, key.clone()), v);
        self.journal(|| Undo::Kv((cf, key), old));
    }

    /// The entries of `cf` whose key starts with `prefix`, as this transaction sees them.
    pub fn kv_scan(&mut self, cf: &'static str, prefix: &[u8]) -> Result<Vec<KeyValue>, FsError> {
        let mut out = self.fsm.scan(cf, prefix)?;
        for ((c, k), v) in self.o.kv.range((cf, prefix.to_vec())..) {
            if *c != cf || !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out.into_iter().collect())
    }

    /// The JSON value of `key` in `cf`.
    pub fn kv_get_json<T: serde::de::DeserializeOwned>(
        &mut self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, FsError> {
        self.kv_get(cf, key)?.map(|v| decode_json(&v)).transpose()
    }

    /// Stores `value` as JSON under `key` in `cf`.
    pub fn kv_put_json<T: serde::Serialize>(&mut self, cf: &'static str, key: Vec<u8>, value: &T) {
        self.kv_put(cf, key, Some(encode_json(value)));
    }

    // --- inodes --------------------------------------------------------------------------------

    pub fn inode(&mut self, ino: u64) -> Result<Option<Inode>, FsError> {
        if let Some(v) = self.o.inodes.get(&ino) {
            return Ok(v.clone());
        }
        let v = self
            .fsm
            .raw_get(CF_INODES, &ino.to_be_bytes())?
            .map(|v| decode_json::<Inode>(&v))
            .transpose()?;
        self.o.inodes.insert(ino, v.clone());
        Ok(v)
    }

    pub fn must_inode(&mut self, ino: u64) -> Result<Inode, FsError> {
        self.inode(ino)?.ok_or_else(|| super::inodes::no_inode(ino))
    }

    pub fn must_dir(&mut self, ino: u64) -> Result<Inode, FsError> {
        let d = self.must_inode(ino)?;
        if !d.is_dir() {
            return Err(fs_err(
                ErrorKind::NotDir,
                format!("inode {ino} is not a directory"),
            ));
        }
        Ok(d)
    }

    pub fn put_inode(&mut self, i: Inode) {
        let ino = i.ino;
        let old = self.o.inodes.insert(ino, Some(i));
        self.journal(|| Undo::Inode(ino, old));
    }

    pub fn del_inode(&mut self, ino: u64) {
        let old = self.o.inodes.insert(ino, None);
        self.journal(|| Undo::Inode(ino, old));
    }

    // --- file slots ----------------------------------------------------------------------------

    /// Slot `index` of file `ino` (`None`: a hole).
    pub fn slot(&mut self, ino: u64, index: u64) -> Result<Option<SlotChunk>, FsError> {
        if let Some(v) = self.o.slots.get(&(ino, index)) {
            return Ok(*v);
        }
        let v = self
            .fsm
            .raw_get(CF_SLOTS, &slot_key(ino, index))?
            .map(|v| decode_slot(&v))
            .transpose()?;
        self.o.slots.insert((ino, index), v);
        Ok(v)
    }

    /// Stores slot `index` of file `ino` (`None`: makes it a hole). References and the inode's
    /// `stored_bytes` are the caller's (`content.rs`).
    pub fn write_slot(&mut self, ino: u64, index: u64, chunk: Option<SlotChunk>) {
        let old = self.o.slots.insert((ino, index), chunk);
        self.journal(|| Undo::Slot((ino, index), old));
    }

    /// The non-hole slots of file `ino` from slot `from` on, in index order, as this
    /// transaction sees them.
    pub fn slots_from(&mut self, ino: u64, from: u64) -> Result<Vec<(u64, SlotChunk)>, FsError> {
        let mut out = BTreeMap::new();
        let prefix = ino.to_be_bytes();
        for item in self
            .fsm
            .iter_prefix(CF_SLOTS, &prefix, &slot_key(ino, from))?
        {
            let (k, v) = item?;
            out.insert(u64_at(&k, 8, "slot")?, decode_slot(&v)?);
        }
        for ((_, index), v) in self.o.slots.range((ino, from)..=(ino, u64::MAX)) {
            match v {
                Some(c) => out.insert(*index, *c),
                None => out.remove(index),
            };
        }
        Ok(out.into_iter().collect())
    }

    // --- directory entries ---------------------------------------------------------------------

    pub fn dentry(&mut self, parent: u64, name: &[u8]) -> Result<Option<Dentry>, FsError> {
        let k = named_key(parent, name);
        if let Some(v) = self.o.dentries.get(&k) {
            return Ok(*v);
        }
        let v = self
            .fsm
            .raw_get(CF_DENTRIES, &k)?
            .map(|v| Dentry::decode(&v))
            .transpose()?;
        self.o.dentries.insert(k, v);
        Ok(v)
    }

    pub fn put_dentry(&mut self, parent: u64, name: &[u8], d: Dentry) {
        self.write_dentry(named_key(parent, name), Some(d));
    }

    pub fn del_dentry(&mut self, parent: u64, name: &[u8]) {
        self.write_dentry(named_key(parent, name), None);
    }

    fn write_dentry(&mut self, k: Vec<u8>, d: Option<Dentry>) {
        let old = self.o.dentries.insert(k.clone(), d);
        self.journal(|| Undo::Dentry(k, old));
    }

    /// Whether directory `ino` has no entries, as this transaction sees it.
    pub fn dir_is_empty(&mut self, ino: u64) -> Result<bool, FsError> {
        let prefix = ino.to_be_bytes();
        let mut deleted = 0;
        for (k, v) in self.o.dentries.range(prefix.to_vec()..) {
            if !k.starts_with(&prefix) {
                break;
            }
            if k.len() > 8 {
                match v {
                    // An entry this transaction added under `ino`.
                    Some(_) => return Ok(false),
                    None => deleted += 1,
                }
            }
        }
        // Entries in the DB not deleted by this transaction. It deleted `deleted` names under
        // `ino` (one command at most two, but a group's commands add up), so one DB key more
        // than that decides: if all of them are deleted, the directory is empty.
        let keys = self.fsm.first_keys(CF_DENTRIES, &prefix, deleted + 1)?;
        Ok(keys
            .iter()
            .all(|k| matches!(self.o.dentries.get(k), Some(None))))
    }

    // --- counters ------------------------------------------------------------------------------

    pub fn counter(&mut self, c: Counter) -> Result<u64, FsError> {
        if let Some(v) = self.o.counters.get(&c) {
            return Ok(*v);
        }
        let v = self.fsm.read_counter(c)?;
        self.o.counters.insert(c, v);
        Ok(v)
    }

    pub fn set_counter(&mut self, c: Counter, v: u64) {
        let old = self.o.counters.insert(c, v);
        self.journal(|| Undo::Counter(c, old));
    }

    // --- chunks and their queues ---------------------------------------------------------------

    pub fn chunk(&mut self, id: &ChunkId) -> Result<Option<ChunkRecord>, FsError> {
        if let Some(v) = self.o.chunks.get(id) {
            return Ok(v.clone());
        }
        let v = self.fsm.chunk_record(id)?;
        self.o.chunks.insert(*id, v.clone());
        Ok(v)
    }

    /// Stores (`Some`) or deletes (`None`) chunk `id`'s record.
    pub fn set_chunk(&mut self, id: ChunkId, rec: Option<ChunkRecord>) {
        let old = self.o.chunks.insert(id, rec);
        self.journal(|| Undo::Chunk(id, old));
    }

    /// Queues chunk `id` for collection from this entry on, stamped `since` for people
    /// (`None`: takes it off the queue). The grace counts from this entry's index.
    pub fn set_gc(&mut self, id: ChunkId, since: Option<Time>) {
        let index = self.index;
        let old = self.o.gc.insert(id, since.map(|at| Queued { at, index }));
        self.journal(|| Undo::Gc(id, old));
    }

    /// Notes that chunk `id` lost a replica at `at` (`None`: a replica was added back).
    pub fn set_repair(&mut self, id: ChunkId, at: Option<Time>) {
        let old = self.o.repair.insert(id, at);
        self.journal(|| Undo::Repair(id, old));
    }

    pub fn gone(&mut self, id: &ChunkId) -> Result<Option<Gone>, FsError> {
        if let Some(v) = self.o.gone.get(id) {
            return Ok(*v);
        }
        let v = self
            .fsm
            .raw_get(CF_GONE, id.as_bytes())?
            .map(|v| decode_json::<Gone>(&v))
            .transpose()?;
        self.o.gone.insert(*id, v);
        Ok(v)
    }

    /// Records (`Some`) or forgets (`None`) chunk `id`'s tombstone.
    pub fn set_gone(&mut self, id: ChunkId, g: Option<Gone>) {
        let old = self.o.gone.insert(id, g);
        self.journal(|| Undo::Gone(id, old));
    }
}
