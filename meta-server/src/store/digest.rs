//! The digest of the applied state: how a meta node shows that its state machine is the same
//! as its peers'.
//!
//! It is a hash chain over the log: `d(0)` is 32 zero bytes and
//! `d(i) = blake3(d(i-1) ‖ i as u64 BE ‖ e(i))`, where `e(i)` is the hash of entry `i`'s effects
//! on the state — every key it put or deleted, in order (`fsm::tx::Tx::flush`), or nothing for
//! an entry that changed no state (blank, membership, a refused command). Two nodes that applied
//! the same entries to the same state have equal digests at every index; a node whose storage
//! lost or changed a write has a different one from then on.
//!
//! `d(i)` is written with entry `i`'s changes, in the same write batch, in the state column
//! family `digest` (key `applied`: index ‖ digest), so it is exactly as durable as the state and
//! every snapshot carries it. Each node also remembers its last [`RECENT`] digests in memory, so
//! `cairn fsck` can compare the nodes at one index.
use crate::fsm::schema::CF_DIGEST;
use rocksdb::{WriteBatch, DB};
use std::collections::VecDeque;
use std::sync::Mutex;

/// How many recent (index, digest) pairs a node remembers.
pub const RECENT: usize = 4096;
const KEY: &[u8] = b"applied";

pub type Digest = [u8; 32];

/// The recent digests of this node's applied state.
pub struct Digests {
    recent: Mutex<VecDeque<(u64, Digest)>>,
}

/// The stored (index, digest) of the applied state; (0, zeros) for a state that never applied
/// an entry.
fn load(db: &DB) -> Result<(u64, Digest), String> {
    let cf = super::cf(db, CF_DIGEST).map_err(|e| e.to_string())?;
    match db.get_cf(cf, KEY).map_err(|e| e.to_string())? {
        None => Ok((0, [0; 32])),
        Some(v) => {
            let (index, digest) = v
                .split_first_chunk::<8>()
                .ok_or_else(|| "stored state digest is truncated".to_string())?;
            let digest: Digest = digest
                .try_into()
                .map_err(|_| format!("stored state digest has {} bytes", v.len()))?;
            Ok((u64::from_be_bytes(*index), digest))
        }
    }
}

impl Digests {
    /// The digests as the database has them (after a restart, or a snapshot install).
    pub fn load(db: &DB) -> Result<Digests, String> {
        let d = Digests {
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        };
        d.reload(db)?;
        Ok(d)
    }

    /// Forgets the recent digests and starts again from the stored one.
    pub fn reload(&self, db: &DB) -> Result<(), String> {
        let last = load(db)?;
        let mut r = self.lock();
        r.clear();
        r.push_back(last);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Digest)>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The digest after entry `index`, whose effects hash to `effects`; put into `batch` (to be
    /// written with the entry's changes). Call [`Digests::applied`] once the batch is written.
    pub fn next(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
        index: u64,
        effects: &blake3::Hash,
    ) -> Result<Digest, String> {
        let (_, prev) = self.last();
        let mut h = blake3::Hasher::new();
        h.update(&prev);
        h.update(&index.to_be_bytes());
        h.update(effects.as_bytes());
        let digest = *h.finalize().as_bytes();
        let cf = super::cf(db, CF_DIGEST).map_err(|e| e.to_string())?;
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&index.to_be_bytes());
        v.extend_from_slice(&digest);
        batch.put_cf(cf, KEY, v);
        Ok(digest)
    }

    /// Records that the state after entry `index` has `digest` (its batch is written).
    pub fn applied(&self, index: u64, digest: Digest) {
        let mut r = self.lock();
        if r.len() == RECENT {
            r.pop_front();
        }
        r.push_back((index, digest));
    }

    /// The last applied index and the digest there.
    pub fn last(&self) -> (u64, Digest) {
        self.lock().back().copied().unwrap_or((0, [0; 32]))
    }

    /// The digest at `index`, if this node applied it recently.
    pub fn at(&self, index: u64) -> Option<Digest> {
        let r = self.lock();
        // Applied indexes grow; entries past a snapshot install start a new run.
        r.iter().rev().find(|(i, _)| *i == index).map(|(_, d)| *d)
    }
}
