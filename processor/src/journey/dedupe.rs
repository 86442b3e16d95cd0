//! Repeated events: the ids of a customer's latest events, so that a record delivered twice
//! (a producer without idempotence, an upstream retry, a replay) counts once. Bounded: the last
//! `journey.dedupe_ids` event ids of each customer, kept as 64-bit hashes in the customer's state
//! (and so in its changelog record: the rule holds across restarts and rebalances).

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Hashes of a customer's latest event ids, oldest first (a `Vec`: 8 bytes less than a
/// `VecDeque` in every customer's state, and dropping the oldest moves at most `max` hashes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeenIds {
    ids: Vec<u64>,
}

impl SeenIds {
    /// FNV-1a 64 of the event id: stable across versions and processes (it is stored). Two ids
    /// of one customer collide with probability ~2^-64 per pair.
    pub fn hash(event_id: &str) -> u64 {
        event_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    }

    #[inline]
    pub fn contains(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }

    /// Remembers `id`, forgetting the oldest beyond `max` (0: remember nothing).
    pub fn insert(&mut self, id: u64, max: usize) {
        if max == 0 {
            return;
        }
        if self.ids.len() >= max {
            self.ids.drain(..=self.ids.len() - max);
        } else if self.ids.len() == self.ids.capacity() {
            // by half (at least 4), never past max: doubling left a quarter of the room empty
            let len = self.ids.len();
            self.ids.reserve_exact((len + (len / 2).max(4)).min(max) - len);
        }
        self.ids.push(id);
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Stored as raw little-endian hashes (8 bytes per id) in the binary changelog, and as one base64
/// string of them in JSON.
impl Serialize for SeenIds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = self.ids.iter().flat_map(|h| h.to_le_bytes()).collect();
        if s.is_human_readable() {
            s.serialize_str(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes))
        } else {
            s.serialize_bytes(&bytes)
        }
    }
}

struct HashBytes;

impl<'de> serde::de::Visitor<'de> for HashBytes {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("event id hashes")
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        base64::engine::general_purpose::STANDARD_NO_PAD.decode(v.as_bytes()).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for SeenIds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = if d.is_human_readable() { d.deserialize_str(HashBytes)? } else { d.deserialize_bytes(HashBytes)? };
        if bytes.len() % 8 != 0 {
            return Err(serde::de::Error::custom("seen event ids: not a whole number of 8-byte hashes"));
        }
        Ok(SeenIds { ids: bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_latest_ids_and_round_trips() {
        let mut seen = SeenIds::default();
        for i in 0..10 {
            seen.insert(SeenIds::hash(&format!("e{i}")), 4);
        }
        assert_eq!(seen.len(), 4);
        assert!(seen.contains(SeenIds::hash("e9")) && seen.contains(SeenIds::hash("e6")));
        assert!(!seen.contains(SeenIds::hash("e5")));
        let json = serde_json::to_string(&seen).unwrap();
        let back: SeenIds = serde_json::from_str(&json).unwrap();
        assert_eq!(back, seen);
        assert_eq!(SeenIds::hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
