//! Realism checks: determinism, the input contract, the consistency of the truth, the
//! counterfactual, and that the processor's rules are visibly wrong in the default world.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use touchstream_sim::rules::{compare, RuleParams, RULES};
use touchstream_sim::run::{run, Options, Summary};
use touchstream_sim::{Model, World};

const EVENT_TYPES: &[&str] =
    &["impression", "click", "email_open", "email_click", "page_view", "product_view", "search", "cart_add", "cart_remove", "checkout_start", "purchase"];
const CHANNELS: &[&str] =
    &["paid_search", "organic_search", "paid_social", "organic_social", "email", "display", "affiliate", "referral", "direct", "sms", "push", "other"];
const TOUCHES: &[&str] = &["impression", "click", "email_open", "email_click"];

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("touchstream-sim-tests").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Generates a world into `dir` (events.jsonl and the truth files).
fn generate(dir: &Path, world: &str, customers: u64, seed: u64, opts: Options) -> Summary {
    let mut w = World::from_toml_str(world).unwrap();
    w.customers = customers;
    w.seed = seed;
    let model = Model::new(w).unwrap();
    let mut events = std::io::BufWriter::new(fs::File::create(dir.join("events.jsonl")).unwrap());
    run(&model, &opts, Some(&mut events), Some(dir)).unwrap()
}

/// The default world, 3000 customers, with the counterfactual: shared by the statistical tests.
fn default_run() -> &'static (PathBuf, Summary) {
    static RUN: OnceLock<(PathBuf, Summary)> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = scratch("default");
        let s = generate(&dir, "", 3000, 42, Options { counterfactual: true, ..Options::default() });
        (dir, s)
    })
}

fn lines(path: &Path) -> impl Iterator<Item = Value> {
    BufReader::new(fs::File::open(path).unwrap()).lines().map(|l| serde_json::from_str(&l.unwrap()).unwrap())
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap()
}

/// Checks one event against the input contract; returns its event type.
fn check_event(v: &Value) -> Result<String, String> {
    let o = v.as_object().ok_or("not an object")?;
    for k in o.keys() {
        let known =
            ["event_id", "customer_id", "ts", "event_type", "channel", "campaign", "session_id", "value", "currency", "product_id", "quantity", "properties"];
        if !known.contains(&k.as_str()) {
            return Err(format!("unknown field {k}"));
        }
    }
    let s = |k: &str| o.get(k).map(|x| x.as_str().ok_or(format!("{k} is not a string"))).transpose();
    if s("event_id")?.map_or(true, str::is_empty) || s("customer_id")?.map_or(true, str::is_empty) {
        return Err("event_id and customer_id are required non-empty strings".into());
    }
    o.get("ts").and_then(Value::as_i64).ok_or("ts must be an int64")?;
    let et = s("event_type")?.ok_or("event_type is required")?;
    if !EVENT_TYPES.contains(&et) {
        return Err(format!("unknown event_type {et}"));
    }
    match s("channel")? {
        Some(c) if !CHANNELS.contains(&c) => return Err(format!("unknown channel {c}")),
        None if TOUCHES.contains(&et) => return Err(format!("{et} without a channel")),
        _ => {}
    }
    for k in ["campaign", "session_id", "currency", "product_id"] {
        s(k)?;
    }
    if let Some(x) = o.get("value") {
        if !(x.is_f64() || x.is_u64()) || x.as_f64().unwrap() < 0.0 {
            return Err("value must be a number >= 0".into());
        }
    }
    if let Some(x) = o.get("quantity") {
        x.as_u64().ok_or("quantity must be an int >= 0")?;
    }
    if let Some(p) = o.get("properties") {
        let p = p.as_object().ok_or("properties must be a map")?;
        if !p.values().all(Value::is_string) {
            return Err("properties must map strings to strings".into());
        }
    }
    match et {
        "cart_add" | "cart_remove" => {
            for k in ["product_id", "value", "quantity", "session_id", "currency"] {
                if !o.contains_key(k) {
                    return Err(format!("{et} without {k}"));
                }
            }
        }
        "purchase" => {
            for k in ["value", "currency", "session_id"] {
                if !o.contains_key(k) {
                    return Err(format!("purchase without {k}"));
                }
            }
        }
        "page_view" | "product_view" | "search" | "checkout_start" if !o.contains_key("session_id") => {
            return Err(format!("{et} without session_id"));
        }
        _ => {}
    }
    Ok(et.to_string())
}

#[test]
fn same_seed_same_bytes_other_seed_other_events() {
    let names = ["events.jsonl", "truth_conversions.jsonl", "truth_carts.jsonl", "truth_channels.json", "world.toml"];
    let opts = Options { counterfactual: true, ..Options::default() };
    let a = scratch("det-a");
    let b = scratch("det-b");
    let c = scratch("det-c");
    generate(&a, "", 400, 7, opts.clone());
    generate(&b, "", 400, 7, opts.clone());
    generate(&c, "", 400, 8, opts);
    for n in names {
        assert!(read(&a.join(n)) == read(&b.join(n)), "{n} differs between two runs with the same seed");
    }
    assert!(read(&a.join("events.jsonl")) != read(&c.join("events.jsonl")));
    assert!(read(&a.join("truth_conversions.jsonl")) != read(&c.join("truth_conversions.jsonl")));
}

#[test]
fn every_event_follows_the_contract_in_time_order() {
    let (dir, summary) = default_run();
    let mut ids = HashSet::new();
    let mut last_ts = i64::MIN;
    let mut n = 0u64;
    let mut types: HashMap<String, u64> = HashMap::new();
    let mut session_seen: HashSet<String> = HashSet::new();
    for v in lines(&dir.join("events.jsonl")) {
        let et = check_event(&v).unwrap_or_else(|e| panic!("{e}: {v}"));
        assert!(ids.insert(v["event_id"].as_str().unwrap().to_string()), "duplicate event_id {v}");
        let ts = v["ts"].as_i64().unwrap();
        assert!(ts >= last_ts, "events out of time order at {v}");
        last_ts = ts;
        // The first event of a session is a page view carrying the entry channel.
        if let Some(sid) = v["session_id"].as_str() {
            if session_seen.insert(sid.to_string()) {
                assert!(et == "page_view" && v["channel"].is_string(), "session starts without a landing page: {v}");
            }
        }
        *types.entry(et).or_default() += 1;
        n += 1;
    }
    assert_eq!(n, summary.events);
    for et in EVENT_TYPES {
        assert!(types.get(*et).copied().unwrap_or(0) > 0, "no {et} events");
    }
}

#[test]
fn truth_of_each_conversion_is_consistent_with_the_events() {
    let (dir, _) = default_run();
    // Per customer, in stream order: the touchpoints since the previous purchase.
    let mut journey: HashMap<String, Vec<String>> = HashMap::new();
    let mut expected: HashMap<String, (Vec<String>, f64, i64)> = HashMap::new();
    for v in lines(&dir.join("events.jsonl")) {
        let cid = v["customer_id"].as_str().unwrap().to_string();
        let et = v["event_type"].as_str().unwrap();
        if TOUCHES.contains(&et) {
            journey.entry(cid).or_default().push(v["event_id"].as_str().unwrap().to_string());
        } else if et == "purchase" {
            let j = std::mem::take(journey.entry(cid).or_default());
            expected.insert(v["event_id"].as_str().unwrap().to_string(), (j, v["value"].as_f64().unwrap(), v["ts"].as_i64().unwrap()));
        }
    }
    let mut n = 0;
    let mut with_zero_share = 0;
    for c in lines(&dir.join("truth_conversions.jsonl")) {
        let id = c["conversion_id"].as_str().unwrap();
        let (touches, value, ts) = expected.remove(id).unwrap_or_else(|| panic!("{id} is not a purchase event"));
        assert_eq!(c["value"].as_f64().unwrap(), value);
        assert_eq!(c["conversion_ts"].as_i64().unwrap(), ts);
        assert!(c["decision_ts"].as_i64().unwrap() <= ts);
        let tps = c["touchpoints"].as_array().unwrap();
        let ids: Vec<&str> = tps.iter().map(|t| t["event_id"].as_str().unwrap()).collect();
        assert_eq!(ids, touches, "touchpoints of {id} differ from the journey in the events");
        let mut sum = c["baseline_share"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&sum));
        let total = c["total_hazard"].as_f64().unwrap();
        let mut raw_sum = c["baseline_hazard"].as_f64().unwrap();
        for t in tps {
            let s = t["true_share"].as_f64().unwrap();
            let raw = t["raw_contribution"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&s) && raw >= 0.0);
            assert!((s - raw / total).abs() < 1e-12);
            if s == 0.0 {
                with_zero_share += 1;
            }
            sum += s;
            raw_sum += raw;
        }
        assert!((sum - 1.0).abs() < 1e-9, "shares of {id} sum to {sum}");
        assert!((raw_sum - total).abs() <= 1e-9 * total);
        n += 1;
    }
    assert!(expected.is_empty(), "purchases without truth: {}", expected.len());
    assert!(n > 500, "{n} conversions");
    // Touches after the decision (the buyer's navigational click, coupon clicks) have no share.
    assert!(with_zero_share > 0);
}

#[test]
fn every_cart_add_that_opens_a_cart_has_a_truth_record() {
    let (dir, summary) = default_run();
    let mut carts = 0u64;
    let mut abandoned = 0u64;
    let cart_adds: HashSet<String> =
        lines(&dir.join("events.jsonl")).filter(|v| v["event_type"] == "cart_add").map(|v| v["event_id"].as_str().unwrap().to_string()).collect();
    for c in lines(&dir.join("truth_carts.jsonl")) {
        let eid = c["cart_add_event_id"].as_str().unwrap();
        assert!(cart_adds.contains(eid));
        assert_eq!(c["alert_id"].as_str().unwrap(), format!("{}:{eid}", c["customer_id"].as_str().unwrap()));
        let last = c["last_activity_ts"].as_i64().unwrap();
        assert!(last >= c["opened_ts"].as_i64().unwrap());
        match c["purchased_ts"].as_i64() {
            Some(p) => {
                assert!(p >= last);
                assert_eq!(c["abandoned"].as_bool().unwrap(), c["alert_expected"].as_bool().unwrap() && p - last > 86_400_000);
            }
            None => assert!(c["abandoned"].as_bool().unwrap()),
        }
        carts += 1;
        abandoned += c["abandoned"].as_bool().unwrap() as u64;
    }
    assert_eq!(carts, summary.carts);
    assert_eq!(abandoned, summary.abandoned_carts);
}

#[test]
fn abandonment_rate_is_realistic_and_depends_on_behaviour() {
    let (dir, summary) = default_run();
    let rate = summary.abandoned_carts as f64 / summary.carts as f64;
    assert!((0.40..=0.85).contains(&rate), "abandonment rate {rate}");
    // Among carts that went quiet for 30 minutes, some are still bought within a day: the alert is
    // neither always right nor always wrong.
    let quiet: Vec<Value> = lines(&dir.join("truth_carts.jsonl")).filter(|c| c["alert_expected"] == true).collect();
    let recovered = quiet.iter().filter(|c| c["abandoned"] == false).count() as f64 / quiet.len() as f64;
    assert!((0.08..=0.6).contains(&recovered), "recovered within a day: {recovered}");
}

#[test]
fn removing_a_channel_with_an_effect_loses_conversions() {
    let (dir, summary) = default_run();
    let t: Value = serde_json::from_slice(&read(&dir.join("truth_channels.json"))).unwrap();
    let conv = summary.conversions as f64;
    for ch in ["display", "paid_social", "email", "affiliate"] {
        let inc = t["channels"][ch]["counterfactual_incremental_conversions"].as_f64().unwrap();
        let credited = t["channels"][ch]["credited_incremental_conversions"].as_f64().unwrap();
        assert!(inc > 0.02 * conv, "{ch}: {inc} incremental of {conv}");
        assert!(credited > 0.02 * conv, "{ch}: {credited} credited of {conv}");
    }
    // The harvester's true effect is small.
    let ps = t["channels"]["paid_search"]["counterfactual_incremental_conversions"].as_f64().unwrap();
    assert!(ps < 0.08 * conv, "paid_search {ps} of {conv}");
    assert_eq!(t["totals"]["conversions"].as_u64().unwrap(), summary.conversions);
    let base = t["totals"]["baseline_conversions"].as_f64().unwrap();
    assert!(base > 0.15 * conv && base < 0.7 * conv, "baseline conversions {base} of {conv}");
}

#[test]
fn rules_are_visibly_wrong() {
    let (dir, _) = default_run();
    let c = compare(dir, RuleParams::default()).unwrap();
    eprintln!("{}", c.to_markdown());
    let ps = c.row("paid_search").unwrap();
    let last = RULES.iter().position(|r| *r == "last_touch").unwrap();
    assert!(ps.rule_shares[last] > ps.truth_share + 0.15, "last touch gives paid_search {} against a true share of {}", ps.rule_shares[last], ps.truth_share);
    assert!(ps.rule_shares[last] > ps.counterfactual_share.unwrap() + 0.15);
    for (r, mae) in RULES.iter().zip(c.mae_vs_truth) {
        assert!(mae >= 0.03, "{r}: mean absolute share error {mae}");
    }
    for (r, mae) in RULES.iter().zip(c.mae_vs_counterfactual.unwrap()) {
        assert!(mae >= 0.03, "{r}: mean absolute share error against the counterfactual {mae}");
    }
}

#[test]
fn repeat_purchases_depend_on_the_acquisition_channel() {
    let (dir, _) = default_run();
    let t: Value = serde_json::from_slice(&read(&dir.join("truth_channels.json"))).unwrap();
    let rates: Vec<(String, f64)> = t["acquisition"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, a)| a["customers"].as_u64().unwrap() >= 80)
        .map(|(k, a)| (k.clone(), a["repeat_rate"].as_f64().unwrap()))
        .collect();
    assert!(rates.len() >= 3, "{rates:?}");
    let max = rates.iter().map(|r| r.1).fold(0.0, f64::max);
    let min = rates.iter().map(|r| r.1).fold(1.0, f64::min);
    assert!(max - min >= 0.1, "repeat rates by acquisition channel: {rates:?}");
}

#[test]
fn email_opens_go_mostly_to_customers() {
    let (dir, _) = default_run();
    let t: Value = serde_json::from_slice(&read(&dir.join("truth_channels.json"))).unwrap();
    let e = &t["channels"]["email"];
    let share = e["exposures_to_customers"].as_f64().unwrap() / e["exposures"].as_f64().unwrap();
    assert!(share > 0.6, "share of email touches reaching customers: {share}");
}

#[test]
fn max_events_stops_the_stream_and_the_truth_with_it() {
    let dir = scratch("max-events");
    let s = generate(&dir, "", 1000, 3, Options { max_events: Some(20_000), counterfactual: true });
    assert!(s.truncated);
    assert_eq!(s.events, 20_000);
    let purchases: HashSet<String> =
        lines(&dir.join("events.jsonl")).filter(|v| v["event_type"] == "purchase").map(|v| v["event_id"].as_str().unwrap().to_string()).collect();
    let truth: HashSet<String> = lines(&dir.join("truth_conversions.jsonl")).map(|c| c["conversion_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(purchases, truth);
    assert_eq!(lines(&dir.join("events.jsonl")).count(), 20_000);
}

#[test]
fn a_world_without_marketing_converts_on_the_baseline_only() {
    let dir = scratch("no-marketing");
    let world = "[channels.display]\nenabled = false\n[channels.paid_social]\nenabled = false\n\
                 [channels.paid_search]\nenabled = false\n[channels.email]\nenabled = false\n\
                 [channels.affiliate]\nenabled = false\n";
    let s = generate(&dir, world, 300, 1, Options::default());
    assert!(s.conversions > 20);
    for v in lines(&dir.join("events.jsonl")) {
        assert!(!TOUCHES.contains(&v["event_type"].as_str().unwrap()), "touchpoint in a world without marketing: {v}");
    }
    for c in lines(&dir.join("truth_conversions.jsonl")) {
        assert_eq!(c["baseline_share"].as_f64().unwrap(), 1.0);
        assert_eq!(c["cause"], "baseline");
    }
}

#[test]
fn cli_streams_to_stdout_and_reports_bad_worlds() {
    let bin = env!("CARGO_BIN_EXE_touchstream-sim");
    let out = Command::new(bin).args(["--customers", "50", "--seed", "5", "--stdout", "--max-events", "300", "--quiet"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 300);
    for l in text.lines() {
        check_event(&serde_json::from_str(l).unwrap()).unwrap();
    }
    let dir = scratch("cli");
    let bad = dir.join("bad.toml");
    fs::write(&bad, "[session]\ncontinue_prob = 2.0\n").unwrap();
    let out = Command::new(bin).args(["--stdout", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("session.continue_prob"));
    let out = Command::new(bin).arg("--print-world").output().unwrap();
    assert!(out.status.success());
    World::from_toml_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let out = Command::new(bin).args(["--customers", "40", "--evaluate", "--counterfactual", "--quiet", "--out"]).arg(dir.join("run")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["events.jsonl", "truth_conversions.jsonl", "truth_carts.jsonl", "truth_channels.json", "world.toml", "rules_vs_truth.md"] {
        assert!(dir.join("run").join(f).exists(), "{f} missing");
    }
}
