//! Consistent-hash ring over replica names: candidates in ring order from a key.

use consistent_hash::{DefaultHash, Node, StaticHashRing};

use super::index::Slot;

/// Virtual nodes per replica. Each replica's share of the ring deviates from
/// even by about 1/√vnodes (5.6 % here), so 4 replicas stay within 1.25× the
/// mean except with odds of well under 1 in 1,000; rebuilding 64 replicas'
/// ring (20k points) takes about a millisecond, off the hot path.
pub const DEFAULT_VNODES: usize = 320;

/// A consistent-hash ring keyed by replica *name*, so every router instance that
/// sees the same replica names places the same key on the same replica, with no
/// shared state. Rebuilt only when membership changes.
pub struct Ring {
    inner: StaticHashRing<'static, String, Slot, DefaultHash>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("replicas", &self.inner.nodes().len())
            .finish()
    }
}

impl Ring {
    /// Builds a ring of `(name, slot)` members with `vnodes` virtual nodes each.
    pub fn new<I>(members: I, vnodes: usize) -> Self
    where
        I: IntoIterator<Item = (String, Slot)>,
    {
        let nodes = members
            .into_iter()
            .map(|(name, slot)| Node::new(name).value(slot).quantity(vnodes.max(1)));
        Self {
            inner: StaticHashRing::new(DefaultHash, nodes),
        }
    }

    /// Replicas in preference order for `key`: each replica once.
    pub fn candidates(&self, key: u64) -> impl Iterator<Item = Slot> + '_ {
        self.inner.calc_candidates(&key).map(|n| n.value)
    }

    /// Number of replicas on the ring.
    pub fn len(&self) -> usize {
        self.inner.nodes().len()
    }

    /// True when the ring has no replicas.
    pub fn is_empty(&self) -> bool {
        self.inner.nodes().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(names: &[&str]) -> Ring {
        Ring::new(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), i as Slot)),
            DEFAULT_VNODES,
        )
    }

    fn first_name<'a>(r: &Ring, names: &'a [&str], key: u64) -> &'a str {
        let slot = r.candidates(key).next().expect("non-empty ring");
        names[slot as usize]
    }

    #[test]
    fn candidates_list_every_replica_once() {
        let r = ring(&["a", "b", "c", "d"]);
        let mut c: Vec<_> = r.candidates(42).collect();
        c.sort();
        assert_eq!(c, vec![0, 1, 2, 3]);
    }

    #[test]
    fn placement_depends_on_names_not_slots_or_order() {
        let names = ["pod-a", "pod-b", "pod-c"];
        let r1 = ring(&names);
        let reversed = ["pod-c", "pod-b", "pod-a"];
        let r2 = ring(&reversed);
        for key in 0..500u64 {
            assert_eq!(
                first_name(&r1, &names, key),
                first_name(&r2, &reversed, key)
            );
        }
    }

    #[test]
    fn golden_key_to_replica_table_is_stable() {
        // Hash output is API: router instances of different versions must agree.
        let names = ["engine-0", "engine-1", "engine-2", "engine-3"];
        let r = ring(&names);
        let got: Vec<&str> = (0..8u64).map(|k| first_name(&r, &names, k)).collect();
        assert_eq!(got, GOLDEN);
    }

    const GOLDEN: [&str; 8] = [
        "engine-0", "engine-3", "engine-1", "engine-3", "engine-1", "engine-3", "engine-3",
        "engine-3",
    ];

    #[test]
    fn many_keys_spread_evenly() {
        let names: Vec<String> = (0..8).map(|i| format!("replica-{i}")).collect();
        let r = Ring::new(
            names
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, n)| (n, i as Slot)),
            DEFAULT_VNODES,
        );
        let mut counts = [0usize; 8];
        for key in 0..80_000u64 {
            let k = xxhash_rust::xxh3::xxh3_64(&key.to_le_bytes());
            counts[r.candidates(k).next().expect("replica") as usize] += 1;
        }
        let max = *counts.iter().max().expect("counts") as f64;
        let min = *counts.iter().min().expect("counts") as f64;
        assert!(
            max / 10_000.0 < 1.15,
            "max share {max} of mean 10000: {counts:?}"
        );
        assert!(
            min / 10_000.0 > 0.85,
            "min share {min} of mean 10000: {counts:?}"
        );
    }

    proptest! {
        #[test]
        fn removing_a_replica_moves_only_its_keys(n in 2usize..12, gone in 0usize..12, keys in proptest::collection::vec(any::<u64>(), 1..300)) {
            let gone = gone % n;
            let names: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
            let full = Ring::new(names.iter().cloned().enumerate().map(|(i, s)| (s, i as Slot)), DEFAULT_VNODES);
            let less = Ring::new(
                names.iter().cloned().enumerate().filter(|(i, _)| *i != gone).map(|(i, s)| (s, i as Slot)),
                DEFAULT_VNODES,
            );
            for k in keys {
                let before = full.candidates(k).next().expect("replica");
                let after = less.candidates(k).next().expect("replica");
                if before as usize != gone {
                    prop_assert_eq!(before, after);
                } else {
                    // Its keys go to its ring successor.
                    let succ = full.candidates(k).nth(1).expect("successor");
                    prop_assert_eq!(succ, after);
                }
            }
        }

        #[test]
        fn adding_a_replica_moves_keys_only_to_it(n in 1usize..12, keys in proptest::collection::vec(any::<u64>(), 1..300)) {
            let names: Vec<String> = (0..=n).map(|i| format!("r{i}")).collect();
            let small = Ring::new(names.iter().cloned().enumerate().take(n).map(|(i, s)| (s, i as Slot)), DEFAULT_VNODES);
            let big = Ring::new(names.iter().cloned().enumerate().map(|(i, s)| (s, i as Slot)), DEFAULT_VNODES);
            for k in keys {
                let before = small.candidates(k).next().expect("replica");
                let after = big.candidates(k).next().expect("replica");
                prop_assert!(after == before || after as usize == n);
            }
        }
    }
}
