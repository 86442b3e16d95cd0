//! Touchstream: streaming marketing attribution and cart-abandonment alerts on Kafka.
//!
//! Data flow: [`kafka`] consumes the events topic -> [`event`] decodes and validates ->
//! [`engine`] updates the partition's [`journey`] state, credits conversions ([`attribution`]) and
//! fires abandonment timers -> the pipeline ([`pipeline`]) writes outputs ([`output`]), then commits.

pub mod alerts;
pub mod attribution;
pub mod changelog;
pub mod codec;
pub mod config;
pub mod demo;
pub mod engine;
pub mod event;
pub mod http;
pub mod inference;
pub mod journey;
pub mod kafka;
pub mod lifecycle;
pub mod output;
pub mod outputs;
pub mod pipeline;
pub mod telemetry;
pub mod time;
