//! The registry's one hash: 64-bit FNV-1a, the same on every node and every build.
//!
//! Two things depend on that: the state digest ([`crate::Registry::digest`]), which replicas
//! compare, and rendezvous placement ([`rendezvous_owner`]), which decides which member runs
//! each health check. Nodes of different builds must agree on both, so the output is pinned by
//! a test.

/// 64-bit FNV-1a, also usable as an `io::Write` sink (the digest serializes into it).
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn feed(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl std::io::Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// FNV-1a over the parts, each ended by 0xff, finished with a 64-bit avalanche (splitmix64):
/// FNV's low bits mix poorly for short keys.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut fnv = Fnv1a::default();
    for part in parts {
        fnv.feed(part);
        fnv.feed(&[0xff]);
    }
    let mut h = fnv.finish();
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The member with the highest hash of (member, key): rendezvous hashing, so a member's going
/// down moves only its own keys.
pub fn rendezvous_owner(key: &str, members: &[u64]) -> Option<u64> {
    members
        .iter()
        .copied()
        .max_by_key(|m| (stable_hash(&[&m.to_be_bytes(), key.as_bytes()]), *m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_keys_and_moves_only_the_lost_members_keys() {
        let all = [1, 2, 3];
        let keys: Vec<String> = (0..3000).map(|i| format!("svc/inst-{i}/http")).collect();
        let owners: Vec<u64> = keys
            .iter()
            .map(|k| rendezvous_owner(k, &all).unwrap())
            .collect();
        for m in all {
            let n = owners.iter().filter(|o| **o == m).count();
            assert!((850..=1150).contains(&n), "member {m} owns {n} of 3000");
        }
        let without_2 = [1, 3];
        for (k, before) in keys.iter().zip(&owners) {
            let after = rendezvous_owner(k, &without_2).unwrap();
            if *before != 2 {
                assert_eq!(after, *before, "a key not owned by 2 must stay put");
            }
        }
        assert_eq!(rendezvous_owner("x", &[]), None);
    }

    #[test]
    fn the_hash_is_fixed_across_builds() {
        // Nodes of different builds must agree on owners: the hash is part of the protocol.
        assert_eq!(stable_hash(&[b"a"]), 1_819_190_507_042_467_253);
        assert_eq!(rendezvous_owner("web/web-1/http", &[1, 2, 3]), Some(1));
    }
}
