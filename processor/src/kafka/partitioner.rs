//! The key → partition mapping of the event producers' partitioner (`topics.partitioner`).
//!
//! Per-customer state is partitioned like the input, and erasure requests must land on the
//! partition of the customer's events. Kafka cannot tell which partitioner wrote a topic, so the
//! processor checks it where it can: every keyed input event whose partition differs from the one
//! the configured partitioner gives is counted (`touchstream_input_misrouted_total`), erasure
//! requests are checked the same way (audit status `misrouted`), and `touchstream erase` writes
//! each request to the partition this module computes.

use serde::{Deserialize, Serialize};

/// How the event producers map a key to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Partitioner {
    /// Kafka's Java clients' default (and librdkafka's `murmur2_random`): murmur2 of the key,
    /// made positive, modulo the partition count.
    #[serde(rename = "murmur2_random", alias = "murmur2")]
    Murmur2,
    /// librdkafka's default (`consistent_random`): CRC-32 of the key modulo the partition count.
    #[serde(rename = "consistent_random", alias = "consistent")]
    Crc32,
    /// Another partitioner: nothing is checked and `touchstream erase` needs `--partitioner`.
    #[serde(rename = "none")]
    Unchecked,
}

impl Partitioner {
    pub fn name(self) -> &'static str {
        match self {
            Partitioner::Murmur2 => "murmur2_random",
            Partitioner::Crc32 => "consistent_random",
            Partitioner::Unchecked => "none",
        }
    }

    pub fn parse(text: &str) -> Result<Partitioner, String> {
        match text {
            "murmur2_random" | "murmur2" => Ok(Partitioner::Murmur2),
            "consistent_random" | "consistent" => Ok(Partitioner::Crc32),
            "none" => Ok(Partitioner::Unchecked),
            other => Err(format!("`{other}` is not one of murmur2_random, consistent_random, none")),
        }
    }

    /// The partition of `key` among `partitions`, or None when unchecked (or no partitions).
    pub fn partition(self, key: &[u8], partitions: i32) -> Option<i32> {
        if partitions < 1 {
            return None;
        }
        let n = partitions as u32;
        match self {
            Partitioner::Murmur2 => Some(((murmur2(key) & 0x7fff_ffff) % n) as i32),
            Partitioner::Crc32 => Some((crc32(key) % n) as i32),
            Partitioner::Unchecked => None,
        }
    }
}

/// Kafka's murmur2 (seed 0x9747b28c), as in the Java client's `Utils.murmur2` and librdkafka.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3, as zlib and librdkafka's `rd_crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    c ^ 0xffff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // values of org.apache.kafka.common.utils.Utils.murmur2 (as i32)
        for (key, want) in [("kafka", -798_503_068i32), ("21", -973_932_308), ("foobar", -790_332_482), ("abc", 479_470_107)] {
            assert_eq!(murmur2(key.as_bytes()) as i32, want, "{key}");
        }
    }

    #[test]
    fn crc32_is_the_ieee_checksum() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn partitions_are_in_range_and_unchecked_gives_none() {
        for key in ["alice", "bob", "c-1", ""] {
            for n in [1, 3, 6, 12] {
                assert!((0..n).contains(&Partitioner::Murmur2.partition(key.as_bytes(), n).unwrap()));
                assert!((0..n).contains(&Partitioner::Crc32.partition(key.as_bytes(), n).unwrap()));
            }
        }
        assert_eq!(Partitioner::Unchecked.partition(b"alice", 3), None);
        assert_eq!(Partitioner::parse("consistent").unwrap(), Partitioner::Crc32);
        assert!(Partitioner::parse("random").is_err());
    }
}
