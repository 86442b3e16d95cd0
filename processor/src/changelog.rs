//! The state changelog: a compacted topic with as many partitions as the input; partition i holds
//! the state of input partition i. Customer records are keyed by the customer id (like the input);
//! partition-level records use keys that start with a NUL byte, which no customer id in the input
//! contract uses (`\0meta`, `\0w|<window_start>|<channel>`). A null value is a tombstone.
//! Customer values are binary: a version byte ([`CUSTOMER_V2`]; [`CUSTOMER_V1`] is still read) then the state in postcard (serde,
//! varints, f32 as 4 bytes); a value that starts with `{` is the JSON of earlier versions and is
//! still read, so a changelog written before the change restores. Window and meta values are JSON.

use serde::{Deserialize, Serialize};

use crate::event::Channel;
use crate::time::Millis;

/// One changelog record: key and value (None = tombstone).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangelogEntry {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

pub const META_KEY: &[u8] = b"\0meta";
const WINDOW_PREFIX: &[u8] = b"\0w|";

/// Partition-level state besides customers and windows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PartitionMeta {
    pub max_event_ts: Millis,
    pub watermark: Millis,
    pub seq: u64,
    pub next_sweep: Millis,
    pub late_events: u64,
    pub expired_customers: u64,
    pub dropped_late: u64,
    /// The next offset of the erasure topic's partition to apply (erasures move with the state).
    #[serde(default)]
    pub erasure_offset: i64,
}

impl PartitionMeta {
    /// The meta without the watermark, which an idle partition moves with the wall clock.
    pub fn without_watermark(self) -> PartitionMeta {
        PartitionMeta { watermark: 0, ..self }
    }
}

/// What a changelog key names.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangelogKey<'a> {
    Customer(&'a str),
    Meta,
    Window(Millis, Channel),
}

pub fn window_key(window_start: Millis, channel: Channel) -> Vec<u8> {
    let mut k = WINDOW_PREFIX.to_vec();
    k.extend_from_slice(format!("{window_start}|{channel}").as_bytes());
    k
}

/// Parses a changelog key; None for keys this version does not know (skipped on restore).
pub fn parse_key(key: &[u8]) -> Option<ChangelogKey<'_>> {
    if key == META_KEY {
        return Some(ChangelogKey::Meta);
    }
    if let Some(rest) = key.strip_prefix(WINDOW_PREFIX) {
        let text = std::str::from_utf8(rest).ok()?;
        let (start, channel) = text.split_once('|')?;
        return Some(ChangelogKey::Window(start.parse().ok()?, Channel::from_wire(channel)?));
    }
    if key.first() == Some(&0) {
        return None;
    }
    std::str::from_utf8(key).ok().map(ChangelogKey::Customer)
}

/// Version bytes of the binary customer encoding. Version 2 appended `abandon_input`; a version-1
/// state is read as version 2 with it empty (postcard writes an empty list as one zero byte).
pub const CUSTOMER_V1: u8 = 1;
pub const CUSTOMER_V2: u8 = 2;

/// Encodes a customer's state for the changelog into `out` (cleared first).
pub fn encode_customer<T: Serialize>(state: &T, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    out.clear();
    out.push(CUSTOMER_V2);
    let body = postcard::to_extend(state, std::mem::take(out)).map_err(<serde_json::Error as serde::ser::Error>::custom)?;
    *out = body;
    Ok(())
}

/// Decodes a customer's changelog value: binary (version 1) or the JSON of earlier versions.
pub fn decode_customer<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    match value.first() {
        Some(&CUSTOMER_V2) => postcard::from_bytes(&value[1..]).map_err(|e| format!("binary customer state: {e}")),
        Some(&CUSTOMER_V1) => {
            let mut body = Vec::with_capacity(value.len());
            body.extend_from_slice(&value[1..]);
            body.push(0);
            postcard::from_bytes(&body).map_err(|e| format!("binary customer state (version 1): {e}"))
        }
        Some(b'{') => serde_json::from_slice(value).map_err(|e| e.to_string()),
        Some(v) => Err(format!("unknown customer state encoding (version byte {v}); written by a newer version?")),
        None => Err("empty customer state".into()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("changelog record {key:?} cannot be read: {message}")]
    Corrupt { key: String, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(parse_key(META_KEY), Some(ChangelogKey::Meta));
        assert_eq!(parse_key(&window_key(-3_600_000, Channel::Email)), Some(ChangelogKey::Window(-3_600_000, Channel::Email)));
        assert_eq!(parse_key(b"cust-1"), Some(ChangelogKey::Customer("cust-1")));
        assert_eq!(parse_key(b"\0future"), None);
    }
}
