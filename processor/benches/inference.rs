//! The models on the hot path (tract, one thread): the journey step model per call at several
//! batch sizes, deep credit per conversion for 8, 32 and 64 touchpoints (removal effects and
//! Shapley values), and the whole per-event path (decode, state, inference, outputs) without Kafka.
//! `cargo bench --bench inference`; results in README.md ("Benchmarks"), ONNX Runtime beside them
//! from `models/bench_onnxruntime.py`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use touchstream::config::Config;
use touchstream::engine::{EngineConfig, Output, PartitionEngine};
use touchstream::event::{decode, Channel, Event, EventType, Validation};
use touchstream::inference::deep_credit::{AttributionRunner, DeepMode, ModelTouch};
use touchstream::inference::features;
use touchstream::inference::step::StepRunner;
use touchstream::inference::ModelSet;

const CHECK: Validation = Validation { now: i64::MAX / 4, max_future_skew_ms: 0 };

fn models(max_batch: usize) -> Arc<ModelSet> {
    let mut cfg = Config::defaults().models;
    cfg.check_fixtures = false;
    cfg.max_batch = max_batch;
    ModelSet::load(&cfg).unwrap().unwrap()
}

fn step(c: &mut Criterion) {
    let h = models(1).step.hidden;
    let mut g = c.benchmark_group("step_model");
    for batch in [1usize, 8, 16, 32, 64, 128, 256] {
        // the processor's plan for `models.max_batch = batch`
        let set = models(batch);
        let mut runner = StepRunner::new(&set.step).unwrap();
        // plausible inputs: one-hot event type and channel, small scalars, a non-zero hidden state
        let mut x = vec![0f32; batch * features::COUNT];
        for r in 0..batch {
            let row = &mut x[r * features::COUNT..(r + 1) * features::COUNT];
            row[r % 12] = 1.0;
            row[12 + r % 13] = 1.0;
            for (i, v) in row[25..].iter_mut().enumerate() {
                *v = ((r * 7 + i * 3) % 10) as f32 / 10.0;
            }
        }
        let hin: Vec<f32> = (0..batch * h).map(|i| ((i % 17) as f32 - 8.0) / 20.0).collect();
        let (mut hout, mut scores, mut checks) = (vec![0f32; batch * h], vec![[0f32; 3]; batch], vec![0f32; batch * set.step.checks_ms.len()]);
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter(|| runner.run(batch, black_box(&x), black_box(&hin), &mut hout, &mut scores, &mut checks).unwrap())
        });
    }
    g.finish();

    // for comparison: the same model on a plan for a symbolic batch size
    let meta = touchstream::inference::contract::Metadata::parse("journey_step", include_bytes!("../../models/journey_step/metadata.json")).unwrap();
    let loaded = touchstream::inference::contract::load_plan(&meta, include_bytes!("../../models/journey_step/model.onnx")).unwrap();
    let mut g = c.benchmark_group("step_model_symbolic_batch");
    for batch in [1usize, 64] {
        let x = vec![0.1f32; batch * features::COUNT];
        let hin = vec![0.05f32; batch * h];
        use tract_onnx::prelude::*;
        let mut state = TypedSimpleState::new(&loaded.plan).unwrap();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter(|| {
                let xt = Tensor::from_shape(&[batch, features::COUNT], &x).unwrap();
                let ht = Tensor::from_shape(&[batch, h], &hin).unwrap();
                black_box(state.run(tvec![xt.into(), ht.into()]).unwrap())
            })
        });
    }
    g.finish();
}

fn journey(k: usize) -> Vec<ModelTouch> {
    let channels = [Channel::Display, Channel::PaidSocial, Channel::Email, Channel::PaidSearch, Channel::Affiliate];
    let types = [EventType::Impression, EventType::Click, EventType::EmailOpen, EventType::Click];
    (0..k)
        .map(|i| ModelTouch {
            channel: channels[i % channels.len()],
            event_type: types[i % types.len()],
            campaign_bucket: (i % 63 + 1) as i64,
            ts: 1_767_225_600_000 + i as i64 * 3_600_000,
        })
        .collect()
}

fn deep(c: &mut Criterion) {
    let set = models(64);
    let model = &set.attribution;
    let mut runner = AttributionRunner::new(model).unwrap();
    // an additive model's removal effects take two rows; `removal_rows` is one row per touchpoint
    let mut rows_model = model.clone();
    rows_model.additive = false;
    let mut g = c.benchmark_group("deep_credit");
    g.sample_size(30);
    for k in [8usize, 32, 64] {
        let touches = journey(k);
        let conv = touches.last().unwrap().ts + 2 * 3_600_000;
        // with a previous purchase (context token) the model takes at most L-1 touchpoints
        let previous = (k < model.len).then_some(touches[0].ts - 86_400_000);
        let modes = [
            ("removal", DeepMode::Removal),
            ("shapley_exact", DeepMode::Shapley { samples: 16, exact_max: 8 }),
            ("shapley_16_samples", DeepMode::Shapley { samples: 16, exact_max: 0 }),
        ];
        g.bench_with_input(BenchmarkId::new("removal_rows", k), &k, |b, _| {
            b.iter(|| black_box(runner.deep_credit(&rows_model, DeepMode::Removal, conv, previous, &touches, 7).unwrap()))
        });
        for (name, mode) in modes {
            if name == "shapley_exact" && k > 8 {
                continue;
            }
            g.bench_with_input(BenchmarkId::new(name, k), &k, |b, _| {
                b.iter(|| black_box(runner.deep_credit(model, mode, conv, previous, &touches, 7).unwrap()))
            });
        }
    }
    g.finish();
}

fn per_event(c: &mut Criterion) {
    const N: usize = 20_000;
    let raw: Vec<(String, Vec<u8>)> = touchstream_sim::stream::default_events(7, 5_000, 1.0, N as u64).into_iter().map(|r| (r.customer_id, r.json)).collect();
    let mut g = c.benchmark_group("per_event_path");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    let cases: [(&str, Option<Arc<ModelSet>>); 6] = [
        ("rules_only", None),
        ("models_batch_1", Some(models(1))),
        ("models_batch_8", Some(models(8))),
        ("models_batch_16", Some(models(16))),
        ("models_batch_32", Some(models(32))),
        ("models_batch_64", Some(models(64))),
    ];
    for (name, set) in cases {
        let cfg = EngineConfig::default().with_models(set);
        g.bench_function(name, |b| {
            b.iter_batched(
                || (PartitionEngine::new(0, cfg.clone()), Vec::with_capacity(1024), Vec::with_capacity(4096)),
                |(mut engine, mut out, mut buf): (PartitionEngine, Vec<Output>, Vec<u8>)| {
                    for (k, j) in &raw {
                        let e: Event<'_> = decode(Some(k.as_bytes()), j, &CHECK).unwrap();
                        engine.process(&e, &mut out);
                        for o in out.drain(..) {
                            buf.clear();
                            match &o {
                                Output::Conversion(c) => serde_json::to_writer(&mut buf, c).unwrap(),
                                Output::Alert(a) => serde_json::to_writer(&mut buf, a).unwrap(),
                            }
                            black_box(&buf);
                        }
                    }
                    engine.flush();
                    engine
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(inference, step, deep, per_event);
criterion_main!(inference);
