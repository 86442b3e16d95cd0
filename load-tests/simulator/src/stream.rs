//! The simulated stream in memory: a world's events, in event-time order, handed one by one to a
//! function or collected, for the processor's tests, benchmarks and demo (the one generator of
//! journeys; the shipped models were trained on its default world).

use std::io::{self, Write};

use crate::config::World;
use crate::model::Model;
use crate::run::{run, Options};

/// One event of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The event's `customer_id` (the input topic's key).
    pub customer_id: String,
    /// The event's `ts` (event time, ms since the Unix epoch).
    pub ts: i64,
    /// The event in the input contract (one JSON object, no newline).
    pub json: Vec<u8>,
}

/// The default world with `seed` and `customers`, all of them arriving within `days` days (the
/// stream's density: fewer days, more events per day of event time). Ids carry the seed
/// (`s<seed>c<n>`), so streams of different seeds have different customers.
pub fn default_world(seed: u64, customers: u64, days: f64) -> World {
    let mut w = World::default_world();
    w.seed = seed;
    w.id_prefix = format!("s{seed}c");
    w.customers = customers.max(1);
    // arrivals are spaced customer_days / concurrency apart
    w.concurrency = ((w.customer_days * customers as f64 / days.max(1e-3)).ceil() as u64).max(1);
    w
}

/// Calls `f(customer_id, ts, json)` with every event of `world` in event-time order, until the
/// world ends, `max_events` were handed over, or `f` returns false. Returns the events handed over.
pub fn for_each_event(world: World, max_events: Option<u64>, f: impl FnMut(&str, i64, &[u8]) -> bool) -> Result<u64, String> {
    let model = Model::new(world)?;
    let mut lines = Lines { line: Vec::with_capacity(512), f, count: 0, stopped: false };
    let opts = Options { max_events, counterfactual: false };
    match run(&model, &opts, Some(&mut lines), None) {
        Ok(_) => Ok(lines.count),
        Err(_) if lines.stopped => Ok(lines.count),
        Err(e) => Err(format!("simulating the world: {e}")),
    }
}

/// The first `max_events` events of `world`.
pub fn events(world: World, max_events: u64) -> Result<Vec<Record>, String> {
    let mut out = Vec::with_capacity(max_events.min(1 << 24) as usize);
    for_each_event(world, Some(max_events), |customer_id, ts, json| {
        out.push(Record { customer_id: customer_id.to_string(), ts, json: json.to_vec() });
        true
    })?;
    Ok(out)
}

/// The first `max_events` events of the default world (see [`default_world`]).
pub fn default_events(seed: u64, customers: u64, days: f64, max_events: u64) -> Vec<Record> {
    events(default_world(seed, customers, days), max_events).expect("the default world runs")
}

/// A `Write` sink for [`run`] that splits the JSON lines and hands each to a function.
struct Lines<F> {
    line: Vec<u8>,
    f: F,
    count: u64,
    stopped: bool,
}

impl<F: FnMut(&str, i64, &[u8]) -> bool> Lines<F> {
    fn emit(count: &mut u64, stopped: &mut bool, f: &mut F, line: &[u8]) -> io::Result<()> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "an event line without customer_id or ts");
        let customer = crate::kafka::customer_id(line).ok_or_else(bad)?;
        let customer = std::str::from_utf8(customer).map_err(|_| bad())?;
        let ts = field_i64(line, b"\"ts\":").ok_or_else(bad)?;
        *count += 1;
        if !f(customer, ts, line) {
            *stopped = true;
            return Err(io::Error::other("stopped by the consumer of the stream"));
        }
        Ok(())
    }
}

impl<F: FnMut(&str, i64, &[u8]) -> bool> Write for Lines<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Lines { line, f, count, stopped } = self;
        split_lines(line, buf, |l| Self::emit(count, stopped, f, l))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hands every line `buf` completes to `each` (without its newline; empty lines are skipped);
/// `pending` holds the unfinished line between calls.
pub(crate) fn split_lines(pending: &mut Vec<u8>, buf: &[u8], mut each: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    let mut rest = buf;
    while let Some(i) = rest.iter().position(|b| *b == b'\n') {
        if pending.is_empty() {
            if i > 0 {
                each(&rest[..i])?;
            }
        } else {
            pending.extend_from_slice(&rest[..i]);
            let done = each(pending);
            pending.clear();
            done?;
        }
        rest = &rest[i + 1..];
    }
    pending.extend_from_slice(rest);
    Ok(())
}

/// The integer after `field` (e.g. `"ts":`) in one event line.
fn field_i64(line: &[u8], field: &[u8]) -> Option<i64> {
    let at = line.windows(field.len()).position(|w| w == field)? + field.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit() || **b == b'-').count();
    std::str::from_utf8(&line[at..at + digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_in_event_time_order_and_deterministic() {
        let a = default_events(9, 200, 2.0, 3000);
        assert_eq!(a.len(), 3000);
        assert!(a.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert!(a.iter().all(|r| r.json.starts_with(b"{\"event_id\":\"s9c") && r.json.ends_with(b"}") && r.customer_id.starts_with("s9c")));
        assert_eq!(a, default_events(9, 200, 2.0, 3000));
        assert_ne!(a, default_events(10, 200, 2.0, 3000));
    }

    #[test]
    fn lines_are_split_across_writes() {
        let mut pending = Vec::new();
        let mut got: Vec<Vec<u8>> = Vec::new();
        for buf in [&b"ab"[..], b"c\nd\n\ne", b"f\n"] {
            split_lines(&mut pending, buf, |l| {
                got.push(l.to_vec());
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(got, [b"abc".to_vec(), b"d".to_vec(), b"ef".to_vec()]);
        assert!(pending.is_empty());
    }

    #[test]
    fn the_consumer_can_stop_the_stream() {
        let mut seen = 0;
        let n = for_each_event(default_world(1, 50, 1.0), None, |_, _, _| {
            seen += 1;
            seen < 10
        })
        .unwrap();
        assert_eq!((n, seen), (10, 10));
    }
}
