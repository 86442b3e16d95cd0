//! Event-time helpers: human durations in config, and the per-partition watermark.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Milliseconds since the Unix epoch (event time or wall-clock time).
pub type Millis = i64;

/// Wall-clock now in milliseconds since the Unix epoch.
pub fn wall_clock_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A span of time written in config as `"30d"`, `"1h"`, `"30m"`, `"15s"`, `"100ms"` or an integer
/// number of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Millis);

impl Span {
    pub fn ms(self) -> Millis {
        self.0
    }
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0.max(0) as u64)
    }
    /// Parses `"<integer><unit>"` with unit one of `ms`, `s`, `m`, `h`, `d`, `w`; a bare integer is
    /// milliseconds.
    pub fn parse(text: &str) -> Result<Span, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: i64 = num.parse().map_err(|_| format!("`{text}` is not a duration like 30d, 1h, 30m, 15s or 100ms"))?;
        let mult = match unit.trim() {
            "" | "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            other => return Err(format!("unknown duration unit `{other}` in `{text}` (use ms, s, m, h, d or w)")),
        };
        n.checked_mul(mult).map(Span).ok_or_else(|| format!("duration `{text}` is too large"))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(i64, &str); 5] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")];
        for (mult, unit) in UNITS {
            if self.0 != 0 && self.0 % mult == 0 {
                return write!(f, "{}{}", self.0 / mult, unit);
            }
        }
        write!(f, "{}ms", self.0)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"30d\", \"1h\", \"30m\", \"15s\", \"100ms\" or integer milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Span, E> {
                Ok(Span(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Span, E> {
                i64::try_from(v).map(Span).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Span, E> {
                Span::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Start of the tumbling window of width `width` that holds `ts`.
#[inline]
pub fn window_start(ts: Millis, width: Millis) -> Millis {
    ts.div_euclid(width) * width
}

/// Per-partition event-time watermark: the largest event time seen minus the allowed lateness, and
/// never moving backwards. An idle partition may be advanced to wall-clock time minus the lateness
/// (see DESIGN.md, "Idle partitions").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    allowed_lateness: Millis,
    max_event_ts: Millis,
    current: Millis,
}

impl Watermark {
    pub const MIN: Millis = i64::MIN / 4;

    pub fn new(allowed_lateness: Millis) -> Self {
        Watermark { allowed_lateness, max_event_ts: Self::MIN, current: Self::MIN }
    }

    /// A watermark as checkpointed.
    pub fn restore(allowed_lateness: Millis, max_event_ts: Millis, current: Millis) -> Self {
        Watermark { allowed_lateness, max_event_ts, current }
    }

    /// The watermark: every event with `ts < current()` is late.
    #[inline]
    pub fn current(&self) -> Millis {
        self.current
    }

    #[inline]
    pub fn max_event_ts(&self) -> Millis {
        self.max_event_ts
    }

    /// Observes an event; returns true when the watermark moved.
    #[inline]
    pub fn observe(&mut self, ts: Millis) -> bool {
        if ts > self.max_event_ts {
            self.max_event_ts = ts;
        }
        self.advance_to(ts.saturating_sub(self.allowed_lateness))
    }

    /// Idle advance: the partition had no input for the idle period, so assume nothing older than
    /// `wall_now - allowed_lateness` will still arrive.
    pub fn advance_idle(&mut self, wall_now: Millis) -> bool {
        self.advance_to(wall_now.saturating_sub(self.allowed_lateness))
    }

    #[inline]
    fn advance_to(&mut self, candidate: Millis) -> bool {
        if candidate > self.current {
            self.current = candidate;
            true
        } else {
            false
        }
    }

    #[inline]
    pub fn is_late(&self, ts: Millis) -> bool {
        ts < self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_and_print() {
        assert_eq!(Span::parse("30d").unwrap().ms(), 30 * 86_400_000);
        assert_eq!(Span::parse("1h").unwrap().ms(), 3_600_000);
        assert_eq!(Span::parse("100ms").unwrap().ms(), 100);
        assert_eq!(Span::parse("250").unwrap().ms(), 250);
        assert_eq!(Span::parse("2w").unwrap().ms(), 14 * 86_400_000);
        assert!(Span::parse("3 parsecs").is_err());
        assert!(Span::parse("h").is_err());
        assert_eq!(Span(7 * 86_400_000).to_string(), "7d");
        assert_eq!(Span(90_000).to_string(), "90s");
    }

    #[test]
    fn window_start_floors_negative_and_positive() {
        assert_eq!(window_start(3_600_001, 3_600_000), 3_600_000);
        assert_eq!(window_start(3_599_999, 3_600_000), 0);
        assert_eq!(window_start(-1, 3_600_000), -3_600_000);
    }

    #[test]
    fn watermark_trails_max_and_never_goes_back() {
        let mut w = Watermark::new(60_000);
        assert!(w.observe(1_000_000));
        assert_eq!(w.current(), 940_000);
        assert!(!w.observe(500_000), "an older event does not move it");
        assert_eq!(w.current(), 940_000);
        assert!(w.is_late(939_999));
        assert!(!w.is_late(940_000));
        assert!(w.observe(1_000_001));
        assert_eq!(w.max_event_ts(), 1_000_001);
    }

    #[test]
    fn idle_advance_uses_wall_clock_minus_lateness() {
        let mut w = Watermark::new(60_000);
        w.observe(1_000_000);
        assert!(w.advance_idle(5_000_000));
        assert_eq!(w.current(), 4_940_000);
        assert!(!w.advance_idle(1_000), "idle advance never moves it back");
    }
}
