//! The journey step model against the rule-of-thumb baseline, computed in Rust with tract from the
//! committed model: P(purchase within 7 days) after every event of a held-out simulated stream
//! (seed 4242, customers the model never saw), scored by the processor's own engine, against a
//! logistic regression on per-channel touch counts and recency (fitted on another simulated
//! stream). The step model must rank and calibrate better.

use std::collections::HashMap;

use touchstream::config::Config;
use touchstream::engine::{EngineConfig, PartitionEngine};
use touchstream::event::{decode, Channel, Validation};
use touchstream::inference::ModelSet;
use touchstream_sim::run::{run, Options};
use touchstream_sim::{Model, World};

const DAY: i64 = 86_400_000;
const HOUR: f64 = 3_600_000.0;
const C: usize = Channel::COUNT;

struct Scored {
    customer: u32,
    ts: i64,
    purchase: bool,
    p: f64,
    x: Vec<f64>,
}

/// Simulates `customers` of world `seed` and scores every event with the engine and the models.
fn scored_stream(seed: u64, customers: u64) -> Vec<Scored> {
    let mut world = World::default_world();
    world.seed = seed;
    world.customers = customers;
    world.concurrency = customers / 10;
    let mut events = Vec::new();
    run(&Model::new(world).unwrap(), &Options::default(), Some(&mut events), None).unwrap();
    let mut cfg = Config::defaults();
    cfg.models.check_fixtures = false;
    let models = ModelSet::load(&cfg.models).unwrap();
    let mut engine = PartitionEngine::new(0, EngineConfig::from_config(&cfg).with_models(models));
    let check = Validation { now: i64::MAX / 2, max_future_skew_ms: i64::MAX / 4 };
    let mut ids: HashMap<String, u32> = HashMap::new();
    // per customer, per channel: touch times (for the baseline's counts and recency)
    let mut touches: HashMap<u32, Vec<Vec<i64>>> = HashMap::new();
    let mut out = Vec::new();
    let mut scored = Vec::new();
    for line in events.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        let key = v["customer_id"].as_str().unwrap();
        let ev = decode(Some(key.as_bytes()), line, &check).unwrap();
        engine.process(&ev, &mut out);
        out.clear();
        engine.flush();
        let n = ids.len() as u32;
        let customer = *ids.entry(key.to_string()).or_insert(n);
        let t = touches.entry(customer).or_insert_with(|| vec![Vec::new(); C]);
        if ev.event_type.is_touchpoint() {
            t[ev.channel.unwrap_or(Channel::Other).index()].push(ev.ts);
        }
        let mut x = vec![0.0; 3 * C];
        for (ch, times) in t.iter().enumerate() {
            let recent: Vec<&i64> = times.iter().filter(|&&s| s <= ev.ts && s >= ev.ts - 30 * DAY).collect();
            x[ch] = (recent.len() as f64).ln_1p();
            match recent.last() {
                Some(&&last) => x[C + ch] = ((ev.ts - last).max(0) as f64 / HOUR).ln_1p() / 720f64.ln_1p(),
                None => {
                    x[C + ch] = 1.0;
                    x[2 * C + ch] = 1.0;
                }
            }
        }
        let p = f64::from(engine.customer(key).unwrap().model.as_ref().unwrap().scores[0]);
        scored.push(Scored { customer, ts: ev.ts, purchase: ev.event_type.as_str() == "purchase", p, x });
    }
    scored
}

/// Labels: a purchase strictly after the event within 7 days; events closer than 7 days to the
/// end of the stream are not labelled.
fn labels(s: &[Scored]) -> Vec<Option<bool>> {
    let end = s.iter().map(|e| e.ts).max().unwrap();
    let mut purchases: HashMap<u32, Vec<i64>> = HashMap::new();
    for e in s.iter().filter(|e| e.purchase) {
        purchases.entry(e.customer).or_default().push(e.ts);
    }
    s.iter().map(|e| (e.ts + 7 * DAY <= end).then(|| purchases.get(&e.customer).is_some_and(|p| p.iter().any(|&t| t > e.ts && t <= e.ts + 7 * DAY)))).collect()
}

fn auc(y: &[bool], p: &[f64]) -> f64 {
    let mut idx: Vec<usize> = (0..y.len()).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && p[idx[j]] == p[idx[i]] {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0; // ranks i+1..=j, ties averaged
        rank_sum += idx[i..j].iter().filter(|&&k| y[k]).count() as f64 * avg;
        i = j;
    }
    let pos = y.iter().filter(|v| **v).count() as f64;
    let neg = y.len() as f64 - pos;
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

fn logloss(y: &[bool], p: &[f64]) -> f64 {
    y.iter()
        .zip(p)
        .map(|(&y, &p)| {
            let p = p.clamp(1e-7, 1.0 - 1e-7);
            if y {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum::<f64>()
        / y.len() as f64
}

/// Standardised logistic regression with L2 (C = 1), full-batch gradient descent.
struct Logistic {
    mean: Vec<f64>,
    sd: Vec<f64>,
    w: Vec<f64>,
}

impl Logistic {
    fn fit(x: &[&[f64]], y: &[bool]) -> Logistic {
        let (n, d) = (x.len(), x[0].len());
        let mean: Vec<f64> = (0..d).map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n as f64).collect();
        let sd: Vec<f64> = (0..d).map(|j| (x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n as f64).sqrt().max(1e-9)).collect();
        let z: Vec<Vec<f64>> = x.iter().map(|r| (0..d).map(|j| (r[j] - mean[j]) / sd[j]).collect()).collect();
        let mut w = vec![0.0; d + 1];
        for _ in 0..300 {
            let mut g = vec![0.0; d + 1];
            for (r, &t) in z.iter().zip(y) {
                let s = w[d] + r.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
                let e = 1.0 / (1.0 + (-s).exp()) - f64::from(u8::from(t));
                for j in 0..d {
                    g[j] += e * r[j];
                }
                g[d] += e;
            }
            for j in 0..=d {
                let l2 = if j < d { w[j] } else { 0.0 };
                w[j] -= 1.0 * (g[j] / n as f64 + l2 / n as f64);
            }
        }
        Logistic { mean, sd, w }
    }

    fn predict(&self, x: &[f64]) -> f64 {
        let d = x.len();
        let s = self.w[d] + (0..d).map(|j| (x[j] - self.mean[j]) / self.sd[j] * self.w[j]).sum::<f64>();
        1.0 / (1.0 + (-s).exp())
    }
}

#[test]
fn the_step_model_beats_touch_counts_and_recency() {
    // the baseline is fitted on another world seed (every 4th event keeps the fit quick)
    let train = scored_stream(7, 800);
    let train_y = labels(&train);
    let (tx, ty): (Vec<&[f64]>, Vec<bool>) = train.iter().zip(&train_y).step_by(4).filter_map(|(e, y)| y.map(|y| (e.x.as_slice(), y))).unzip();
    let lr = Logistic::fit(&tx, &ty);

    let held = scored_stream(4242, 1500);
    let held_y = labels(&held);
    let (mut y, mut p_model, mut p_lr) = (Vec::new(), Vec::new(), Vec::new());
    for (e, l) in held.iter().zip(&held_y) {
        if let Some(l) = l {
            y.push(*l);
            p_model.push(e.p);
            p_lr.push(lr.predict(&e.x));
        }
    }
    let rate = y.iter().filter(|v| **v).count() as f64 / y.len() as f64;
    let constant = vec![rate; y.len()];
    let (auc_m, auc_lr) = (auc(&y, &p_model), auc(&y, &p_lr));
    let (ll_m, ll_lr, ll_c) = (logloss(&y, &p_model), logloss(&y, &p_lr), logloss(&y, &constant));
    eprintln!(
        "{} labelled events (purchase rate {:.1}%)\n| model | AUC | log-loss |\n|---|---|---|\n| step model (tract) | {auc_m:.4} | {ll_m:.4} |\n| logistic regression, touch counts + recency | {auc_lr:.4} | {ll_lr:.4} |\n| constant rate | 0.5000 | {ll_c:.4} |",
        y.len(),
        100.0 * rate
    );
    assert!(y.len() > 50_000, "enough labelled events: {}", y.len());
    assert!(auc_m > auc_lr + 0.03, "the step model ranks better: AUC {auc_m:.4} vs {auc_lr:.4}");
    assert!(ll_m < ll_lr, "and is better calibrated: log-loss {ll_m:.4} vs {ll_lr:.4}");
    assert!(auc_lr > 0.5 && ll_lr < ll_c, "the baseline is a real one: AUC {auc_lr:.4}, log-loss {ll_lr:.4} vs constant {ll_c:.4}");
}
