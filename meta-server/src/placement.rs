//! Chunk-server liveness (from heartbeats) and replica placement.
//!
//! The table lives only in the leader's memory: chunk servers heartbeat the leader every second,
//! and after a leader change every server counts as down until its next heartbeat reaches the
//! new leader. Nothing here is replicated; losing it costs at most one heartbeat interval.
//!
//! Placement draws servers at random, weighted by free space (Efraimidis–Spirakis weighted
//! sampling without replacement): emptier servers fill faster, yet concurrent writers do not all
//! pile onto the one emptiest server.
use cairn_common::CHUNK_SIZE;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A server with less free space than this gets no new chunks.
pub const MIN_FREE_BYTES: u64 = 2 * CHUNK_SIZE as u64;

/// What a chunk server reports in each heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub chunk_count: u64,
}

/// The last heartbeat of one chunk server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub id: u64,
    pub addr: String,
    pub load: Load,
    pub last_seen: Instant,
}

/// Chunk servers known to this (leader) node from their heartbeats.
pub struct Placement {
    heartbeat_timeout: Duration,
    // std Mutex: held for table lookups only, never across an await.
    servers: Mutex<HashMap<u64, ServerState>>,
}

impl Placement {
    pub fn new(heartbeat_timeout: Duration) -> Placement {
        Placement {
            heartbeat_timeout,
            servers: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ServerState>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a heartbeat from server `id` received `now`.
    pub fn heartbeat(&self, id: u64, addr: &str, load: Load, now: Instant) {
        self.table().insert(
            id,
            ServerState {
                id,
                addr: addr.to_owned(),
                load,
                last_seen: now,
            },
        );
    }

    fn up_at(&self, s: &ServerState, now: Instant) -> bool {
        now.saturating_duration_since(s.last_seen) < self.heartbeat_timeout
    }

    /// Where server `id` is reached now: the address of its last heartbeat (it may have moved
    /// since it registered), else `registered`.
    pub fn current_addr(&self, id: u64, registered: &str) -> String {
        self.table()
            .get(&id)
            .map_or_else(|| registered.to_owned(), |s| s.addr.clone())
    }

    /// The last heartbeat of `id`, if any.
    pub fn get(&self, id: u64) -> Option<ServerState> {
        self.table().get(&id).cloned()
    }

    pub fn is_up(&self, id: u64, now: Instant) -> bool {
        self.table().get(&id).is_some_and(|s| self.up_at(s, now))
    }

    /// Servers whose last heartbeat is younger than the timeout, by id.
    pub fn up_servers(&self, now: Instant) -> Vec<ServerState> {
        let mut v: Vec<_> = self
            .table()
            .values()
            .filter(|s| self.up_at(s, now))
            .cloned()
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Picks up to `n` distinct up servers with room for a chunk, avoiding `exclude` when
    /// enough others are available. Returns (id, addr); fewer than `n` if not enough are up.
    pub fn place(&self, n: usize, exclude: &[u64]) -> Vec<(u64, String)> {
        self.place_with(n, exclude, &[], Instant::now(), &mut rand::rng())
    }

    /// Like [`Placement::place`], never choosing a server in `forbid` (e.g. those already
    /// holding the chunk).
    pub fn place_forbidding(
        &self,
        n: usize,
        exclude: &[u64],
        forbid: &[u64],
    ) -> Vec<(u64, String)> {
        self.place_with(n, exclude, forbid, Instant::now(), &mut rand::rng())
    }

    /// [`Placement::place_forbidding`] with an explicit clock and random source (tests).
    pub fn place_with(
        &self,
        n: usize,
        exclude: &[u64],
        forbid: &[u64],
        now: Instant,
        rng: &mut impl Rng,
    ) -> Vec<(u64, String)> {
        if n == 0 {
            return Vec::new();
        }
        let usable: Vec<ServerState> = self
            .up_servers(now)
            .into_iter()
            .filter(|s| s.load.free_bytes >= MIN_FREE_BYTES && !forbid.contains(&s.id))
            .collect();
        let (preferred, avoided): (Vec<_>, Vec<_>) =
            usable.into_iter().partition(|s| !exclude.contains(&s.id));
        let mut out = weighted_sample(preferred, n, rng);
        if out.len() < n {
            // "Avoided when possible": fall back to excluded servers rather than under-replicate.
            let more = weighted_sample(avoided, n - out.len(), rng);
            out.extend(more);
        }
        out.into_iter().map(|s| (s.id, s.addr)).collect()
    }
}

/// Up to `n` of `servers`, drawn without replacement with probability proportional to free
/// space: each gets the key u^(1/w) for a uniform u, and the n largest keys win.
fn weighted_sample(servers: Vec<ServerState>, n: usize, rng: &mut impl Rng) -> Vec<ServerState> {
    let max_free = servers
        .iter()
        .map(|s| s.load.free_bytes)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut keyed: Vec<(f64, ServerState)> = servers
        .into_iter()
        .map(|s| {
            let w = (s.load.free_bytes as f64 / max_free).max(1e-6);
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            (u.ln() / w, s)
        })
        .collect();
    // ln(u)/w is monotone in u^(1/w); largest first.
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().take(n).map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const GB: u64 = 1 << 30;

    fn load(free: u64) -> Load {
        Load {
            capacity_bytes: 100 * GB,
            used_bytes: 100 * GB - free,
            free_bytes: free,
            chunk_count: 0,
        }
    }

    fn table(t0: Instant, frees: &[u64]) -> Placement {
        let p = Placement::new(Duration::from_secs(5));
        for (i, f) in frees.iter().enumerate() {
            let id = i as u64 + 1;
            p.heartbeat(id, &format!("127.0.0.1:{}", 9000 + id), load(*f), t0);
        }
        p
    }

    #[test]
    fn liveness_follows_heartbeats() {
        let t0 = Instant::now();
        let p = table(t0, &[GB, GB]);
        assert!(p.is_up(1, t0 + Duration::from_secs(4)));
        assert!(!p.is_up(1, t0 + Duration::from_secs(5)));
        assert!(!p.is_up(3, t0), "never heard of: down");
        p.heartbeat(2, "127.0.0.1:1", load(GB), t0 + Duration::from_secs(4));
        let up = p.up_servers(t0 + Duration::from_secs(6));
        assert_eq!(up.len(), 1);
        assert_eq!((up[0].id, up[0].addr.as_str()), (2, "127.0.0.1:1"));
    }

    #[test]
    fn places_distinct_up_servers_with_room() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(7);
        // Server 4 is full; server 5 is down.
        let p = table(t0, &[GB, GB, GB, CHUNK_SIZE as u64]);
        p.heartbeat(5, "127.0.0.1:9005", load(GB), t0 - Duration::from_secs(60));
        for _ in 0..100 {
            let got = p.place_with(3, &[], &[], t0, &mut rng);
            let mut ids: Vec<_> = got.iter().map(|g| g.0).collect();
            ids.sort();
            assert_eq!(ids, vec![1, 2, 3]);
        }
        // Asking for more than available returns what there is.
        assert_eq!(p.place_with(5, &[], &[], t0, &mut rng).len(), 3);
        assert!(p.place_with(0, &[], &[], t0, &mut rng).is_empty());
        // Everyone down: nothing.
        assert!(p
            .place_with(3, &[], &[], t0 + Duration::from_secs(10), &mut rng)
            .is_empty());
    }

    #[test]
    fn excluded_servers_are_avoided_when_possible() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let p = table(t0, &[GB, GB, GB, GB]);
        for _ in 0..100 {
            let got = p.place_with(2, &[1, 2], &[], t0, &mut rng);
            let mut ids: Vec<_> = got.iter().map(|g| g.0).collect();
            ids.sort();
            assert_eq!(ids, vec![3, 4]);
        }
        // Not enough others: excluded ones fill up the rest.
        let got = p.place_with(3, &[1, 2], &[], t0, &mut rng);
        assert_eq!(got.len(), 3);
        let ids: Vec<_> = got.iter().map(|g| g.0).collect();
        assert!(ids.contains(&3) && ids.contains(&4));
        // Forbidden servers are never chosen.
        let got = p.place_with(4, &[], &[2, 3], t0, &mut rng);
        let mut ids: Vec<_> = got.iter().map(|g| g.0).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 4]);
    }

    #[test]
    fn emptier_servers_are_preferred_but_not_exclusively() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(42);
        let p = table(t0, &[90 * GB, 10 * GB, 10 * GB]);
        let mut counts = [0u32; 4];
        for _ in 0..3000 {
            for (id, _) in p.place_with(1, &[], &[], t0, &mut rng) {
                counts[id as usize] += 1;
            }
        }
        // Weights 9:1:1 -> about 2450 : 275 : 275.
        assert!(counts[1] > 2200, "{counts:?}");
        assert!(counts[2] > 150 && counts[3] > 150, "{counts:?}");
    }
}
