//! The per-event hot path: decoding (JSON and registry Avro), the partition engine, and the choice
//! of state map.
//! `cargo bench --bench hot_path`; results in README.md ("Benchmarks").

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dashmap::DashMap;
use touchstream::codec::registry::{RegistryError, SchemaSource};
use touchstream::engine::{EngineConfig, PartitionEngine};
use touchstream::event::{decode, Event, Validation};
use touchstream::journey::CustomerState;

const N: usize = 100_000;

fn stream() -> Vec<(String, Vec<u8>)> {
    // the simulator's default world (the shipped models' training world), 5 000 customers
    touchstream_sim::stream::default_events(7, 5_000, 1.0, N as u64).into_iter().map(|r| (r.customer_id, r.json)).collect()
}

const CHECK: Validation = Validation { now: i64::MAX / 4, max_future_skew_ms: 0 };

/// The registry of the benchmark: one writer schema, ours, under id 1.
struct OneSchema;
impl SchemaSource for OneSchema {
    fn schema_by_id(&self, _id: u32) -> Result<(String, String), RegistryError> {
        Ok((touchstream::codec::JOURNEY_EVENT_SCHEMA.to_string(), "AVRO".to_string()))
    }
}

/// The same events in the Confluent wire format (schema id 1 = schemas/journey_event.avsc).
fn avro_stream(raw: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let schema = apache_avro::Schema::parse_str(touchstream::codec::JOURNEY_EVENT_SCHEMA).unwrap();
    raw.iter()
        .map(|(k, j)| {
            let json: serde_json::Value = serde_json::from_slice(j).unwrap();
            let value = apache_avro::types::Value::from(json).resolve(&schema).unwrap();
            let mut out = Vec::new();
            touchstream::codec::frame(1, &apache_avro::to_avro_datum(&schema, value).unwrap(), &mut out);
            (k.clone(), out)
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let raw = stream();
    let events: Vec<Event<'_>> = raw.iter().map(|(k, j)| decode(Some(k.as_bytes()), j, &CHECK).unwrap()).collect();

    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);

    g.bench_function("decode", |b| {
        b.iter(|| {
            for (k, j) in &raw {
                black_box(decode(Some(k.as_bytes()), j, &CHECK).unwrap());
            }
        })
    });

    // Registry Avro with the schema cache warm: frame, decode with the writer schema, resolve
    // against ours, validate.
    let avro = avro_stream(&raw);
    let mut decoder = touchstream::codec::AvroDecoder::new(Box::new(OneSchema));
    for (k, a) in &avro {
        decoder.decode(Some(k.as_bytes()), a, &CHECK).unwrap();
    }
    g.bench_function("decode_avro", |b| {
        b.iter(|| {
            for (k, a) in &avro {
                black_box(decoder.decode(Some(k.as_bytes()), a, &CHECK).unwrap());
            }
        })
    });

    g.bench_function("engine_process", |b| {
        b.iter_batched(
            || (PartitionEngine::new(0, EngineConfig::default()), Vec::with_capacity(1024)),
            |(mut engine, mut out)| {
                for e in &events {
                    engine.process(e, &mut out);
                    out.clear();
                }
                engine
            },
            BatchSize::LargeInput,
        )
    });

    g.bench_function("decode_and_process", |b| {
        b.iter_batched(
            || (PartitionEngine::new(0, EngineConfig::default()), Vec::with_capacity(1024)),
            |(mut engine, mut out)| {
                for (k, j) in &raw {
                    let e = decode(Some(k.as_bytes()), j, &CHECK).unwrap();
                    engine.process(&e, &mut out);
                    out.clear();
                }
                engine
            },
            BatchSize::LargeInput,
        )
    });

    // The state map alone: look the customer up, create it if new, touch it.
    let keys: Vec<&str> = events.iter().map(|e| e.customer_id.as_ref()).collect();
    g.bench_function("state_map/std_hashmap_foldhash", |b| {
        b.iter_batched(
            HashMap::<Box<str>, CustomerState, foldhash::fast::RandomState>::default,
            |mut m| {
                for (k, e) in keys.iter().zip(&events) {
                    if !m.contains_key(*k) {
                        m.insert((*k).into(), CustomerState::new(e.ts));
                    }
                    m.get_mut(*k).unwrap().touch(e);
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("state_map/dashmap", |b| {
        b.iter_batched(
            DashMap::<Box<str>, CustomerState>::default,
            |m| {
                for (k, e) in keys.iter().zip(&events) {
                    m.entry((*k).into()).or_insert_with(|| CustomerState::new(e.ts)).touch(e);
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("state_map/dashmap_get_first", |b| {
        b.iter_batched(
            DashMap::<Box<str>, CustomerState>::default,
            |m| {
                for (k, e) in keys.iter().zip(&events) {
                    match m.get_mut(*k) {
                        Some(mut c) => c.touch(e),
                        None => {
                            m.insert((*k).into(), CustomerState::new(e.ts));
                        }
                    }
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Customer records of the changelog: encoding (version 3) and decoding versions 3 and 2, over the
/// states the engine holds after the stream (what a restore reads).
fn changelog(c: &mut Criterion) {
    let raw = stream();
    let mut engine = PartitionEngine::new(0, EngineConfig::default());
    let mut out = Vec::new();
    for (k, j) in &raw {
        engine.process(&decode(Some(k.as_bytes()), j, &CHECK).unwrap(), &mut out);
        out.clear();
    }
    let mut log = Vec::new();
    engine.drain_changelog(&[], &mut log).unwrap();
    let v3: Vec<Vec<u8>> = log.iter().filter(|e| e.key.first() != Some(&0)).filter_map(|e| e.value.clone()).collect();
    let states: Vec<CustomerState> = v3.iter().map(|v| touchstream::changelog::decode_customer(v).unwrap()).collect();
    // version 2: the version byte, then the state's own serde form
    let v2: Vec<Vec<u8>> = states.iter().map(|s| [&[touchstream::changelog::CUSTOMER_V2][..], &postcard::to_allocvec(s).unwrap()].concat()).collect();
    let (b3, b2) = (v3.iter().map(Vec::len).sum::<usize>(), v2.iter().map(Vec::len).sum::<usize>());
    println!("changelog: {} customer records, version 3 {} B/record, version 2 {} B/record", v3.len(), b3 / v3.len(), b2 / v2.len());
    let mut g = c.benchmark_group("changelog");
    g.throughput(Throughput::Elements(v3.len() as u64));
    g.sample_size(20);
    for (name, records) in [("decode_v3", &v3), ("decode_v2", &v2)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                for v in records.iter() {
                    black_box(touchstream::changelog::decode_customer(v).unwrap());
                }
            })
        });
    }
    g.bench_function("encode_v3", |b| {
        let mut states = states.clone();
        let mut buf = Vec::new();
        b.iter(|| {
            for s in states.iter_mut() {
                touchstream::changelog::encode_customer(s, &mut buf).unwrap();
                black_box(&buf);
            }
        })
    });
    g.finish();
}

criterion_group!(hot_path, benches, changelog);
criterion_main!(hot_path);
