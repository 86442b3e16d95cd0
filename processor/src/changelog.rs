//! The state changelog: a compacted topic with as many partitions as the input; partition i holds
//! the state of input partition i. Customer records are keyed by the customer id (like the input);
//! partition-level records use keys that start with a NUL byte, which no customer id in the input
//! contract uses (`\0meta`, `\0w|<window_start>|<channel>`). A null value is a tombstone.
//! Customer values are binary: a version byte, then postcard (serde, varints, f32 as 4 bytes).
//! Version 3 ([`CUSTOMER_V3`], written) puts the touchpoints first in a compact form (each distinct
//! campaign, channel and event type name once per record, times and sequence numbers as deltas),
//! then the rest of the state as in version 2 with an empty touchpoint list. Versions 2 and 1 and
//! the JSON of earlier versions (a value that starts with `{`) are still read, so a changelog
//! written before a change restores. Window and meta values are JSON.

use serde::{Deserialize, Serialize};

use crate::event::{Channel, EventType};
use crate::journey::{Campaign, Campaigns, CustomerState, Touchpoint};
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
    /// The input offset this state is at (the partition's snapshot): a restore replays the input
    /// from here to the committed offset. Absent before snapshots (state at the committed offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_offset: Option<i64>,
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
/// Version 3 is version 2 after the compact touchpoints ([`CompactTouchpoints`]).
pub const CUSTOMER_V1: u8 = 1;
pub const CUSTOMER_V2: u8 = 2;
pub const CUSTOMER_V3: u8 = 3;

/// A customer's touchpoints in a version-3 record: the names they use (campaigns, channels, event
/// types), each once, and per touchpoint its event id, indices into the names and deltas of time
/// and sequence number from the one before. Names, not enum indices, so that a channel or event
/// type added to the contract never changes how an old record reads.
#[derive(Serialize, Deserialize, Default)]
struct CompactTouchpoints<'a> {
    #[serde(borrow)]
    names: Vec<&'a str>,
    #[serde(borrow)]
    items: Vec<CompactTouchpoint<'a>>,
}

#[derive(Serialize, Deserialize)]
struct CompactTouchpoint<'a> {
    event_id: &'a str,
    /// 0: no campaign; otherwise `names[campaign - 1]`.
    campaign: u32,
    channel: u32,
    event_type: u32,
    /// Differences from the previous touchpoint (the first: from 0).
    ts: i64,
    /// The partition's arrival number of earlier versions: read and ignored, written as 0
    /// (touchpoints of equal `ts` are in arrival order).
    seq: i64,
}

impl<'a> CompactTouchpoints<'a> {
    fn new(touchpoints: &'a std::collections::VecDeque<Touchpoint>) -> Self {
        let mut c = CompactTouchpoints { names: Vec::new(), items: Vec::with_capacity(touchpoints.len()) };
        let mut ts = 0i64;
        for t in touchpoints {
            let campaign = t.campaign.as_deref().map_or(0, |name| c.name(name) + 1);
            let item = CompactTouchpoint {
                event_id: &t.event_id,
                campaign,
                channel: c.name(t.channel.as_str()),
                event_type: c.name(t.event_type.as_str()),
                ts: t.ts.wrapping_sub(ts),
                seq: 0,
            };
            ts = t.ts;
            c.items.push(item);
        }
        c
    }

    fn name(&mut self, name: &'a str) -> u32 {
        match self.names.iter().position(|n| *n == name) {
            Some(i) => i as u32,
            None => {
                self.names.push(name);
                (self.names.len() - 1) as u32
            }
        }
    }

    /// The touchpoints, each campaign name one allocation shared by its touchpoints, or the
    /// partition's (`shared`).
    fn expand(&self, mut shared: Option<&mut Campaigns>) -> Result<std::collections::VecDeque<Touchpoint>, String> {
        let name = |i: u32| self.names.get(i as usize).copied().ok_or_else(|| format!("touchpoint name index {i} out of range"));
        let mut campaigns: Vec<Option<Campaign>> = vec![None; self.names.len()];
        let mut ts = 0i64;
        let mut out = std::collections::VecDeque::with_capacity(self.items.len());
        for t in &self.items {
            ts = ts.wrapping_add(t.ts);
            let campaign = match t.campaign {
                0 => None,
                i => {
                    let text = name(i - 1)?;
                    let named = || shared.as_deref_mut().map_or_else(|| Campaign::from(text), |s| s.get(text));
                    Some(campaigns[(i - 1) as usize].get_or_insert_with(named).clone())
                }
            };
            out.push_back(Touchpoint {
                event_id: t.event_id.into(),
                campaign,
                ts,
                channel: Channel::parse(name(t.channel)?),
                event_type: EventType::parse(name(t.event_type)?),
            });
        }
        Ok(out)
    }
}

fn postcard_err(e: postcard::Error) -> serde_json::Error {
    <serde_json::Error as serde::ser::Error>::custom(e)
}

/// Encodes a customer's state for the changelog into `out` (cleared first), as version 3. The
/// touchpoints are lent out of `state` while the rest is written, and always put back.
pub fn encode_customer(state: &mut CustomerState, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    out.clear();
    out.push(CUSTOMER_V3);
    let touchpoints = std::mem::take(&mut state.touchpoints);
    let written = postcard::to_extend(&CompactTouchpoints::new(&touchpoints), std::mem::take(out)).and_then(|body| postcard::to_extend(&*state, body));
    state.touchpoints = touchpoints;
    *out = written.map_err(postcard_err)?;
    Ok(())
}

/// About the bytes of `state`'s record (its buffer's first capacity, so that encoding it does
/// not grow the buffer several times): touchpoints at their event id plus a few varints, the
/// model's floats, the event-id hashes at their widest.
pub fn size_hint(state: &CustomerState) -> usize {
    let touchpoints: usize = state.touchpoints.iter().map(|t| t.event_id.len() + 12).sum();
    let model = state.model.as_ref().map_or(0, |m| 4 * (m.hidden().len() + m.checks().len()) + 40);
    let cart = state.cart.as_ref().map_or(0, |c| 64 + c.lines.len() * 48);
    128 + touchpoints + model + cart + 10 * state.seen.len() + 4 * state.abandon_input.len()
}

/// The version-2 encoding (tests: records written by earlier versions).
#[cfg(test)]
pub fn encode_customer_v2(state: &CustomerState, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    out.clear();
    out.push(CUSTOMER_V2);
    *out = postcard::to_extend(state, std::mem::take(out)).map_err(postcard_err)?;
    Ok(())
}

/// Decodes a customer's changelog value: binary (versions 1 to 3) or the JSON of earlier versions.
pub fn decode_customer(value: &[u8]) -> Result<CustomerState, String> {
    decode(value, None)
}

/// [`decode_customer`], its campaign names `campaigns`' shared ones (a partition's restore).
pub fn decode_customer_shared(value: &[u8], campaigns: &mut Campaigns) -> Result<CustomerState, String> {
    let mut state = decode(value, Some(&mut *campaigns))?;
    if value.first() != Some(&CUSTOMER_V3) {
        state.share_campaigns(campaigns);
    }
    Ok(state)
}

fn decode(value: &[u8], campaigns: Option<&mut Campaigns>) -> Result<CustomerState, String> {
    match value.first() {
        Some(&CUSTOMER_V3) => {
            let (compact, rest): (CompactTouchpoints, &[u8]) =
                postcard::take_from_bytes(&value[1..]).map_err(|e| format!("binary customer touchpoints: {e}"))?;
            let mut state: CustomerState = postcard::from_bytes(rest).map_err(|e| format!("binary customer state: {e}"))?;
            state.touchpoints = compact.expand(campaigns)?;
            Ok(state)
        }
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
