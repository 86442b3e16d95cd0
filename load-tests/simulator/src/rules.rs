//! The processor's rules, recomputed from the written events, against the truth.
//!
//! A conversion's journey is the customer's touchpoints after the previous purchase, at or before
//! the purchase and within the lookback (at most `max_touchpoints`, oldest dropped), as in the
//! processor. Each rule's credit is summed per channel and turned into channel shares (over the
//! conversions that have touchpoints; the processor credits the others to a synthetic `direct`
//! touch, counted here as `touchless`). The truth's channel shares are the sums of the true
//! shares (`truth_conversions.jsonl`) and, when the run had `--counterfactual`, the counterfactual
//! incremental conversions (`truth_channels.json`).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::event::Channel;

pub const RULES: [&str; 5] = ["last_touch", "first_touch", "linear", "time_decay", "position_based"];

/// How the rules are computed (the processor's defaults).
#[derive(Debug, Clone, Copy)]
pub struct RuleParams {
    pub lookback_days: f64,
    pub half_life_days: f64,
    pub max_touchpoints: usize,
}

impl Default for RuleParams {
    fn default() -> Self {
        RuleParams { lookback_days: 30.0, half_life_days: 7.0, max_touchpoints: 64 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelRow {
    pub channel: String,
    /// Sum of true shares (credited true incremental conversions).
    pub truth_conversions: f64,
    pub truth_share: f64,
    /// Counterfactual incremental conversions (all − without the channel), if computed.
    pub counterfactual_conversions: Option<f64>,
    pub counterfactual_share: Option<f64>,
    /// Credited conversions per rule, in the order of [`RULES`].
    pub rule_conversions: [f64; 5],
    pub rule_shares: [f64; 5],
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub conversions: u64,
    /// Conversions without any touchpoint in their journey (credited to `direct` by the processor).
    pub touchless: u64,
    pub baseline_conversions: f64,
    pub rows: Vec<ChannelRow>,
    /// Mean absolute error of each rule's channel shares against the truth shares.
    pub mae_vs_truth: [f64; 5],
    /// ... and against the counterfactual shares.
    pub mae_vs_counterfactual: Option<[f64; 5]>,
}

#[derive(Deserialize)]
struct Ev<'a> {
    customer_id: &'a str,
    ts: i64,
    event_type: &'a str,
    #[serde(default)]
    channel: Option<&'a str>,
}

#[derive(Deserialize)]
struct TruthTouch {
    channel: String,
    true_share: f64,
}

#[derive(Deserialize)]
struct TruthConversion {
    baseline_share: f64,
    touchpoints: Vec<TruthTouch>,
}

fn bad(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Credits of one journey (touch times oldest first) under each rule, into `out[rule][i]`.
pub fn credits(ts: &[i64], conversion_ts: i64, half_life_days: f64, out: &mut [Vec<f64>; 5]) {
    let n = ts.len();
    for o in out.iter_mut() {
        o.clear();
        o.resize(n, 0.0);
    }
    if n == 0 {
        return;
    }
    out[0][n - 1] = 1.0;
    out[1][0] = 1.0;
    for x in out[2].iter_mut() {
        *x = 1.0 / n as f64;
    }
    let hl = half_life_days * 86_400_000.0;
    let newest = *ts.iter().max().expect("non-empty");
    let mut sum = 0.0;
    for (i, &t) in ts.iter().enumerate() {
        // Relative to the newest touch (the ratio is that of 2^(-(conversion - ts)/hl)).
        let _ = conversion_ts;
        let w = ((t - newest) as f64 / hl).exp2();
        out[3][i] = w;
        sum += w;
    }
    for x in out[3].iter_mut() {
        *x /= sum;
    }
    match n {
        1 => out[4][0] = 1.0,
        2 => {
            out[4][0] = 0.5;
            out[4][1] = 0.5;
        }
        _ => {
            for x in out[4][1..n - 1].iter_mut() {
                *x = 0.2 / (n - 2) as f64;
            }
            out[4][0] = 0.4;
            out[4][n - 1] = 0.4;
        }
    }
}

fn shares(v: &[f64]) -> Vec<f64> {
    let s: f64 = v.iter().sum();
    v.iter().map(|x| if s > 0.0 { x / s } else { 0.0 }).collect()
}

/// Reads `events.jsonl`, `truth_conversions.jsonl` and `truth_channels.json` from `dir`.
pub fn compare(dir: &Path, p: RuleParams) -> io::Result<Comparison> {
    let lookback = (p.lookback_days * 86_400_000.0) as i64;
    let mut rule_credit = [[0.0f64; 12]; 5];
    let mut journeys: HashMap<String, VecDeque<(i64, u8)>> = HashMap::new();
    let mut conversions = 0u64;
    let mut touchless = 0u64;
    let mut scratch: [Vec<f64>; 5] = Default::default();
    let mut ts_buf = Vec::new();
    let mut line = String::new();
    let mut r = BufReader::with_capacity(1 << 20, File::open(dir.join("events.jsonl"))?);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        let ev: Ev = serde_json::from_str(&line).map_err(bad)?;
        match ev.event_type {
            "impression" | "click" | "email_open" | "email_click" => {
                let ch = ev.channel.and_then(Channel::from_wire).ok_or_else(|| bad("touchpoint without a valid channel"))?;
                let j = journeys.entry(ev.customer_id.to_string()).or_default();
                j.push_back((ev.ts, ch.index() as u8));
                while j.len() > p.max_touchpoints {
                    j.pop_front();
                }
            }
            "purchase" => {
                conversions += 1;
                let j = journeys.entry(ev.customer_id.to_string()).or_default();
                while j.front().is_some_and(|&(t, _)| t < ev.ts - lookback) {
                    j.pop_front();
                }
                if j.is_empty() {
                    touchless += 1;
                    continue;
                }
                ts_buf.clear();
                ts_buf.extend(j.iter().map(|&(t, _)| t));
                credits(&ts_buf, ev.ts, p.half_life_days, &mut scratch);
                for (rule, c) in scratch.iter().enumerate() {
                    for (i, &(_, ch)) in j.iter().enumerate() {
                        rule_credit[rule][ch as usize] += c[i];
                    }
                }
                j.clear();
            }
            _ => {}
        }
    }
    let mut truth = [0.0f64; 12];
    let mut baseline = 0.0;
    let r = BufReader::with_capacity(1 << 20, File::open(dir.join("truth_conversions.jsonl"))?);
    for line in r.lines() {
        let c: TruthConversion = serde_json::from_str(&line?).map_err(bad)?;
        baseline += c.baseline_share;
        for t in c.touchpoints {
            let ch = Channel::from_wire(&t.channel).ok_or_else(|| bad("unknown channel in truth"))?;
            truth[ch.index()] += t.true_share;
        }
    }
    let channels_json: serde_json::Value = serde_json::from_reader(BufReader::new(File::open(dir.join("truth_channels.json"))?)).map_err(bad)?;
    let mut cf = [0.0f64; 12];
    let mut has_cf = false;
    if let Some(obj) = channels_json["channels"].as_object() {
        for (name, v) in obj {
            if let (Some(ch), Some(x)) = (Channel::from_wire(name), v["counterfactual_incremental_conversions"].as_f64()) {
                cf[ch.index()] = x;
                has_cf = true;
            }
        }
    }
    let used: Vec<usize> = (0..12).filter(|&i| truth[i] != 0.0 || cf[i] != 0.0 || rule_credit.iter().any(|r| r[i] != 0.0)).collect();
    let pick = |v: &[f64; 12]| used.iter().map(|&i| v[i]).collect::<Vec<f64>>();
    let truth_v = pick(&truth);
    let truth_s = shares(&truth_v);
    // Counterfactual shares: negative incremental conversions (noise) count as zero.
    let cf_v: Vec<f64> = pick(&cf);
    let cf_s = shares(&cf_v.iter().map(|x| x.max(0.0)).collect::<Vec<_>>());
    let rule_v: Vec<Vec<f64>> = rule_credit.iter().map(pick).collect();
    let rule_s: Vec<Vec<f64>> = rule_v.iter().map(|v| shares(v)).collect();
    let mut rows = Vec::new();
    for (j, &i) in used.iter().enumerate() {
        rows.push(ChannelRow {
            channel: Channel::ALL[i].as_str().to_string(),
            truth_conversions: truth_v[j],
            truth_share: truth_s[j],
            counterfactual_conversions: has_cf.then_some(cf_v[j]),
            counterfactual_share: has_cf.then_some(cf_s[j]),
            rule_conversions: std::array::from_fn(|r| rule_v[r][j]),
            rule_shares: std::array::from_fn(|r| rule_s[r][j]),
        });
    }
    let n = used.len().max(1) as f64;
    let mae = |reference: &[f64]| -> [f64; 5] { std::array::from_fn(|r| rule_s[r].iter().zip(reference).map(|(a, b)| (a - b).abs()).sum::<f64>() / n) };
    Ok(Comparison {
        conversions,
        touchless,
        baseline_conversions: baseline,
        mae_vs_truth: mae(&truth_s),
        mae_vs_counterfactual: has_cf.then(|| mae(&cf_s)),
        rows,
    })
}

impl Comparison {
    pub fn row(&self, channel: &str) -> Option<&ChannelRow> {
        self.rows.iter().find(|r| r.channel == channel)
    }

    /// Markdown tables: channel shares under each rule against the truth, then credited
    /// conversions against true incremental conversions.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let has_cf = self.mae_vs_counterfactual.is_some();
        let _ = writeln!(
            s,
            "Conversions: {} ({} without touchpoints; {:.1} baseline conversions = {:.1}% of all).\n",
            self.conversions,
            self.touchless,
            self.baseline_conversions,
            100.0 * self.baseline_conversions / self.conversions.max(1) as f64
        );
        let _ = writeln!(s, "Channel shares of credited conversions (over conversions with touchpoints):\n");
        let mut head = String::from("| channel | truth (true shares) |");
        if has_cf {
            head.push_str(" truth (counterfactual) |");
        }
        for r in RULES {
            let _ = write!(head, " {r} |");
        }
        let _ = writeln!(s, "{head}");
        let _ = writeln!(s, "|{}", "---|".repeat(2 + has_cf as usize + RULES.len()));
        for row in &self.rows {
            let _ = write!(s, "| {} | {:.1}% |", row.channel, 100.0 * row.truth_share);
            if has_cf {
                let _ = write!(s, " {:.1}% |", 100.0 * row.counterfactual_share.unwrap_or(0.0));
            }
            for r in 0..RULES.len() {
                let _ = write!(s, " {:.1}% |", 100.0 * row.rule_shares[r]);
            }
            let _ = writeln!(s);
        }
        let _ = write!(s, "| **MAE vs true shares** | | {}", if has_cf { "|" } else { "" });
        for r in 0..RULES.len() {
            let _ = write!(s, " **{:.3}** |", self.mae_vs_truth[r]);
        }
        let _ = writeln!(s);
        if let Some(m) = self.mae_vs_counterfactual {
            let _ = write!(s, "| **MAE vs counterfactual** | | |");
            for v in m {
                let _ = write!(s, " **{v:.3}** |");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "\nCredited conversions against true incremental conversions:\n");
        let mut head = String::from("| channel | true (shares) |");
        if has_cf {
            head.push_str(" true (counterfactual) |");
        }
        for r in RULES {
            let _ = write!(head, " {r} |");
        }
        let _ = writeln!(s, "{head}");
        let _ = writeln!(s, "|{}", "---|".repeat(2 + has_cf as usize + RULES.len()));
        for row in &self.rows {
            let _ = write!(s, "| {} | {:.1} |", row.channel, row.truth_conversions);
            if has_cf {
                let _ = write!(s, " {:.0} |", row.counterfactual_conversions.unwrap_or(0.0));
            }
            for r in 0..RULES.len() {
                let _ = write!(s, " {:.1} |", row.rule_conversions[r]);
            }
            let _ = writeln!(s);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_credits_sum_to_one() {
        let mut out: [Vec<f64>; 5] = Default::default();
        for n in 1..6 {
            let ts: Vec<i64> = (0..n).map(|i| i * 86_400_000).collect();
            credits(&ts, ts[n as usize - 1] + 1000, 7.0, &mut out);
            for o in &out {
                assert!((o.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
        let ts = [0, 7 * 86_400_000];
        credits(&ts, ts[1], 7.0, &mut out);
        assert!((out[3][0] - 1.0 / 3.0).abs() < 1e-12);
        let ts = [0, 1, 2, 3];
        credits(&ts, 3, 7.0, &mut out);
        assert_eq!(out[4], vec![0.4, 0.1, 0.1, 0.4]);
    }
}
