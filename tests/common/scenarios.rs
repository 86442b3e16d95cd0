//! Scenarios as data (`tests/scenarios/<case>.json`): a few customers' events at times relative to
//! a start, and the conversions and alerts they must give, with every credit column. The same
//! files are run by the engine (`tests/scenarios.rs`, no broker) and on a real broker
//! (`tests/pipeline.rs`), and checked by [`Scenario::check`].
//!
//! An event is `{"at": "7d+1h", "customer": "bob", "type": "click", "id": "bob-buy", ...}`: `at`
//! is a sum of durations from the start, `id` is optional (`<customer>-<n>` otherwise), and the
//! other fields go into the event as they are. Customers and event ids are prefixed with the case
//! name, so that all cases can share one topic.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

pub const RULES: [&str; 5] = ["time_decay", "last_touch", "first_touch", "linear", "position_based"];

pub struct Scenario {
    pub case: String,
    spec: Value,
}

/// Every scenario under `tests/scenarios/`, by name.
pub fn all() -> Vec<Scenario> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    files.sort();
    assert!(!files.is_empty(), "no scenarios in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let spec: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            Scenario { case: p.file_stem().unwrap().to_string_lossy().into_owned(), spec }
        })
        .collect()
}

/// `7d+1h+30m` in ms.
fn offset(at: &str) -> i64 {
    at.split('+').map(|part| touchstream::time::Span::parse(part.trim()).unwrap_or_else(|e| panic!("`{at}`: {e}")).ms()).sum()
}

impl Scenario {
    fn customer(&self, name: &str) -> String {
        format!("{}.{name}", self.case)
    }

    fn id(&self, id: &str) -> String {
        format!("{}.{id}", self.case)
    }

    /// The events as (ts, customer id, JSON), in event-time order (script order among equal
    /// times), starting at `start`.
    pub fn events(&self, start: i64) -> Vec<(i64, String, String)> {
        let mut out = Vec::new();
        for (n, e) in self.spec["events"].as_array().expect("events").iter().enumerate() {
            let ts = start + offset(e["at"].as_str().expect("at"));
            let customer = self.customer(e["customer"].as_str().expect("customer"));
            let id = e["id"].as_str().map(|i| self.id(i)).unwrap_or_else(|| format!("{customer}-{}", n + 1));
            let mut ev = Map::new();
            ev.insert("event_id".into(), json!(id));
            ev.insert("customer_id".into(), json!(customer));
            ev.insert("ts".into(), json!(ts));
            ev.insert("event_type".into(), e["type"].clone());
            for (k, v) in e.as_object().unwrap() {
                if !["at", "customer", "type", "id"].contains(&k.as_str()) {
                    ev.insert(k.clone(), v.clone());
                }
            }
            out.push((ts, customer, Value::Object(ev).to_string()));
        }
        out.sort_by_key(|(ts, _, _)| *ts);
        out
    }

    /// How many conversions and alerts it expects.
    pub fn expected(&self) -> (usize, usize) {
        let n = |k: &str| self.spec[k].as_array().map_or(0, Vec::len);
        (n("conversions"), n("alerts"))
    }

    fn customers(&self) -> HashSet<String> {
        self.spec["events"].as_array().unwrap().iter().map(|e| self.customer(e["customer"].as_str().unwrap())).collect()
    }

    /// Checks this scenario's part of `conversions` and `alerts` (output records as JSON, of any
    /// number of scenarios): exactly the expected ones, with every expected field.
    pub fn check(&self, start: i64, conversions: &[Value], alerts: &[Value]) {
        let mine = self.customers();
        let of_mine = |v: &&Value| v["customer_id"].as_str().is_some_and(|c| mine.contains(c));
        let case = &self.case;
        let got: HashMap<String, &Value> = conversions.iter().filter(of_mine).map(|c| (c["conversion_id"].as_str().unwrap().to_string(), c)).collect();
        let want = self.spec["conversions"].as_array().cloned().unwrap_or_default();
        let want_ids: HashSet<String> = want.iter().map(|c| self.id(c["id"].as_str().unwrap())).collect();
        assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), want_ids, "{case}: conversions");
        assert_eq!(conversions.iter().filter(of_mine).count(), want_ids.len(), "{case}: a conversion written twice");
        for w in &want {
            let id = self.id(w["id"].as_str().unwrap());
            let c = got[&id];
            assert_eq!(c["conversion_value"], w["value"], "{case} {id}: value");
            if let Some(cur) = w.get("currency") {
                assert_eq!(&c["currency"], cur, "{case} {id}: currency");
            }
            let tps = c["touchpoints"].as_array().unwrap();
            let wtps = w["touchpoints"].as_array().unwrap();
            let channels = |v: &[Value]| v.iter().map(|t| t["channel"].as_str().unwrap().to_string()).collect::<Vec<_>>();
            assert_eq!(channels(tps), channels(wtps), "{case} {id}: the journey");
            for (tp, wtp) in tps.iter().zip(wtps) {
                for (i, rule) in RULES.iter().enumerate() {
                    let (g, e) = (tp[rule].as_f64().unwrap(), wtp["credits"][i].as_f64().unwrap());
                    assert!((g - e).abs() < 1e-9, "{case} {id} {} {rule}: {g} != {e}", tp["channel"]);
                }
                assert!(tp["deep"].is_null(), "{case} {id}: no deep credit without models");
                match wtp.get("event_id") {
                    Some(Value::Null) => assert!(tp["event_id"].is_null(), "{case} {id}: a synthetic touchpoint"),
                    Some(Value::String(e)) => assert_eq!(tp["event_id"], json!(self.id(e)), "{case} {id}: event id"),
                    _ => {}
                }
                if let Some(camp) = wtp.get("campaign") {
                    assert_eq!(&tp["campaign"], camp, "{case} {id}: campaign");
                }
            }
        }
        let got: Vec<&Value> = alerts.iter().filter(of_mine).collect();
        let want = self.spec["alerts"].as_array().cloned().unwrap_or_default();
        let who = |v: &[&Value]| v.iter().map(|a| a["customer_id"].as_str().unwrap().to_string()).collect::<HashSet<_>>();
        let want_who: HashSet<String> = want.iter().map(|a| self.customer(a["customer"].as_str().unwrap())).collect();
        assert_eq!(who(&got), want_who, "{case}: who gets an alert");
        assert_eq!(got.len(), want.len(), "{case}: one alert per abandoned cart");
        for w in &want {
            let customer = self.customer(w["customer"].as_str().unwrap());
            let a = got.iter().find(|a| a["customer_id"] == customer.as_str()).unwrap();
            assert_eq!(a["alert_id"], json!(format!("{customer}:{}", self.id(w["cart"].as_str().unwrap()))), "{case}: alert id");
            assert_eq!(a["alert_ts"], json!(start + offset(w["alert_at"].as_str().unwrap())), "{case} {customer}: alert time");
            if let Some(at) = w["last_activity_at"].as_str() {
                assert_eq!(a["last_activity_ts"], json!(start + offset(at)), "{case} {customer}: last activity");
            }
            for k in ["cart_value", "currency", "reason", "recommended_action"] {
                if let Some(v) = w.get(k) {
                    assert_eq!(&a[k], v, "{case} {customer}: {k}");
                }
            }
            assert!(a["abandonment_probability"].is_null(), "{case}: no model, no probability");
            if let Some(q) = w.get("first_item_quantity") {
                assert_eq!(&a["items"][0]["quantity"], q, "{case} {customer}: quantity");
            }
            if let Some(top) = w.get("top_touchpoint") {
                let t = &a["top_touchpoints"][0];
                assert_eq!(t["channel"], top["channel"], "{case} {customer}: top touchpoint");
                assert_eq!(t["campaign"], top["campaign"], "{case} {customer}: top touchpoint's campaign");
                let (g, e) = (t["time_decay_credit"].as_f64().unwrap(), top["time_decay_credit"].as_f64().unwrap());
                assert!((g - e).abs() < 1e-9, "{case} {customer}: top touchpoint's credit {g} != {e}");
            }
        }
    }
}
