//! Fixed-size keys for the memory store's maps.
//!
//! Idempotency keys and replay pairs are made of several strings that the
//! client chooses. Keeping those strings would cost an allocation per part
//! and a SipHash over all of them on every lookup. The maps are keyed
//! instead by a 128-bit digest: two SipHash-1-3 hashes, under a key drawn
//! at random when the map is created, of the value behind two different
//! tags. A client cannot aim for a collision without the key.
//! Two different keys share a digest with a probability below 2^-60 even
//! among a billion live keys.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};

/// A map from [`Digest`]s, which are already uniform, so it hashes no more.
pub(super) type DigestMap<V> = HashMap<Digest, V, BuildHasherDefault<PassThrough>>;

/// A map from 64-bit keyed digests, see [`Digester::digest64`].
pub(super) type Digest64Map<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// A 128-bit keyed digest of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Digest(u64, u64);

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One half is uniform already, so it is enough to pick a bucket.
        // Equality still compares both.
        state.write_u64(self.0);
    }
}

/// The random SipHash key of one map.
#[derive(Debug, Default)]
pub(super) struct Digester {
    key: RandomState,
}

/// The tags that make the two halves of a digest hashes of different
/// inputs. Two `RandomState`s made one after the other have related keys
/// (the standard library adds one to a per-thread seed), so one key with
/// distinct inputs is the safer way to get independent halves.
const LOW: u8 = 1;
const HIGH: u8 = 2;

impl Digester {
    /// Returns the digest of `value`, which must hash each of its parts
    /// unambiguously, as the standard `Hash` impls of strings do.
    pub(super) fn digest(&self, value: &impl Hash) -> Digest {
        Digest(
            self.key.hash_one((LOW, value)),
            self.key.hash_one((HIGH, value)),
        )
    }

    /// Returns a 64-bit digest of `value`, for maps where a collision only
    /// costs a false match that the caller can recover from. Among `n`
    /// live keys, a new key matches one of them with a probability of
    /// about `n / 2^64`.
    pub(super) fn digest64(&self, value: &impl Hash) -> u64 {
        self.key.hash_one((LOW, value))
    }
}

/// A hasher that passes on the digest, or half of a [`Digest`], that it is
/// given.
#[derive(Debug, Default)]
pub(super) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Digests arrive through `write_u64`. Any other value still gets
        // a usable, if weak, hash.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}
