//! Events of the input contract, kept compact while buffered and written as JSON lines.

pub use touchstream_contract::{Channel, EventType};

/// Which part of a channel's activity produced a touch; written as campaign `<channel>_<suffix>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Campaign {
    None,
    /// Exposure at the channel's base rate (upper funnel: the rate fades with customer age).
    Prospecting,
    /// Base-rate clicks of a click channel (e.g. generic search terms).
    Generic,
    /// Exposure triggered by a recent site visit.
    Retargeting,
    /// Exposure driven by the customer's current purchase intent, and navigational clicks of a
    /// customer who has already decided to buy (brand search).
    Brand,
    /// Newsletter email.
    Newsletter,
    /// Email sent because a cart was left open.
    CartReminder,
    /// Click on the way through checkout (coupon sites).
    Coupon,
}

impl Campaign {
    pub fn suffix(self) -> &'static str {
        match self {
            Campaign::None => "",
            Campaign::Prospecting => "prospecting",
            Campaign::Generic => "generic",
            Campaign::Retargeting => "retargeting",
            Campaign::Brand => "brand",
            Campaign::Newsletter => "newsletter",
            Campaign::CartReminder => "cart_reminder",
            Campaign::Coupon => "coupon",
        }
    }
}

/// A buffered event. Strings are built only when it is written.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub ts: i64,
    /// Per-customer event number: `event_id` = `c<customer>-<seq>`.
    pub seq: u32,
    pub etype: EventType,
    pub channel: Option<Channel>,
    pub campaign: Campaign,
    /// Session number (0 = none): `session_id` = `c<customer>-s<session>`.
    pub session: u32,
    /// Product number + 1 (0 = none): `product_id` = `p<product>`.
    pub product: u32,
    /// Value in cents (< 0 = none): purchase revenue, or unit price on cart events.
    pub value_cents: i64,
    /// Quantity (0 = none).
    pub quantity: u16,
    /// Search term number + 1 (0 = none), written as `properties.query`.
    pub query: u32,
}

impl Event {
    pub fn new(ts: i64, seq: u32, etype: EventType) -> Event {
        Event { ts, seq, etype, channel: None, campaign: Campaign::None, session: 0, product: 0, value_cents: -1, quantity: 0, query: 0 }
    }
}

/// Appends the decimal digits of `v`.
#[inline]
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[inline]
pub fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

/// Appends cents as a decimal number with two fraction digits (`1999` → `19.99`).
#[inline]
pub fn push_cents(out: &mut Vec<u8>, cents: i64) {
    push_i64(out, cents / 100);
    let frac = (cents % 100).unsigned_abs();
    out.push(b'.');
    out.push(b'0' + (frac / 10) as u8);
    out.push(b'0' + (frac % 10) as u8);
}

/// `<prefix><customer>` (the world's `id_prefix`, `c` by default).
pub fn customer_id(prefix: &str, customer: u64) -> String {
    format!("{prefix}{customer}")
}

/// `<prefix><customer>-<seq>`.
pub fn event_id(prefix: &str, customer: u64, seq: u32) -> String {
    format!("{prefix}{customer}-{seq}")
}

/// Writes one event as a JSON object followed by a newline. All strings written are plain ASCII
/// identifiers, so no escaping is needed (the currency is validated when the world is loaded).
pub fn write_json(out: &mut Vec<u8>, prefix: &str, customer: u64, ev: &Event, currency: &str) {
    out.extend_from_slice(b"{\"event_id\":\"");
    out.extend_from_slice(prefix.as_bytes());
    push_u64(out, customer);
    out.push(b'-');
    push_u64(out, ev.seq as u64);
    out.extend_from_slice(b"\",\"customer_id\":\"");
    out.extend_from_slice(prefix.as_bytes());
    push_u64(out, customer);
    out.extend_from_slice(b"\",\"ts\":");
    push_i64(out, ev.ts);
    out.extend_from_slice(b",\"event_type\":\"");
    out.extend_from_slice(ev.etype.as_str().as_bytes());
    out.push(b'"');
    if let Some(ch) = ev.channel {
        out.extend_from_slice(b",\"channel\":\"");
        out.extend_from_slice(ch.as_str().as_bytes());
        out.push(b'"');
        if ev.campaign != Campaign::None {
            out.extend_from_slice(b",\"campaign\":\"");
            out.extend_from_slice(ch.as_str().as_bytes());
            out.push(b'_');
            out.extend_from_slice(ev.campaign.suffix().as_bytes());
            out.push(b'"');
        }
    }
    if ev.session != 0 {
        out.extend_from_slice(b",\"session_id\":\"");
        out.extend_from_slice(prefix.as_bytes());
        push_u64(out, customer);
        out.extend_from_slice(b"-s");
        push_u64(out, ev.session as u64);
        out.push(b'"');
    }
    if ev.product != 0 {
        out.extend_from_slice(b",\"product_id\":\"p");
        push_u64(out, (ev.product - 1) as u64);
        out.push(b'"');
    }
    if ev.value_cents >= 0 {
        out.extend_from_slice(b",\"value\":");
        push_cents(out, ev.value_cents);
        out.extend_from_slice(b",\"currency\":\"");
        out.extend_from_slice(currency.as_bytes());
        out.push(b'"');
    }
    if ev.quantity != 0 {
        out.extend_from_slice(b",\"quantity\":");
        push_u64(out, ev.quantity as u64);
    }
    if ev.query != 0 {
        out.extend_from_slice(b",\"properties\":{\"query\":\"term");
        push_u64(out, (ev.query - 1) as u64);
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_valid_json() {
        let mut ev = Event::new(1_704_067_200_123, 7, EventType::CartAdd);
        ev.session = 3;
        ev.product = 43;
        ev.value_cents = 1905;
        ev.quantity = 2;
        let mut out = Vec::new();
        write_json(&mut out, "c", 12, &ev, "EUR");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"event_id\":\"c12-7\",\"customer_id\":\"c12\",\"ts\":1704067200123,\"event_type\":\"cart_add\",\
             \"session_id\":\"c12-s3\",\"product_id\":\"p42\",\"value\":19.05,\"currency\":\"EUR\",\"quantity\":2}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["value"].as_f64(), Some(19.05));

        let mut ev = Event::new(5, 0, EventType::Impression);
        ev.channel = Some(Channel::Display);
        ev.campaign = Campaign::Retargeting;
        let mut out = Vec::new();
        write_json(&mut out, "c", 0, &ev, "EUR");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["campaign"], "display_retargeting");
        assert_eq!(v["channel"], "display");

        let mut ev = Event::new(5, 1, EventType::Search);
        ev.query = 10;
        let mut out = Vec::new();
        write_json(&mut out, "c", 0, &ev, "EUR");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["properties"]["query"], "term9");
    }

    #[test]
    fn cents() {
        for (c, s) in [(0, "0.00"), (5, "0.05"), (100, "1.00"), (123456, "1234.56")] {
            let mut out = Vec::new();
            push_cents(&mut out, c);
            assert_eq!(String::from_utf8(out).unwrap(), s);
        }
    }
}
