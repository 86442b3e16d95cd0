//! Touchstream journey simulator: customers and their journeys as events of the input contract,
//! deterministic from a seed, with the ground truth of the world that generated them written
//! beside the events (true incremental share of every touchpoint in every conversion, per-channel
//! counterfactual conversions, true cart outcomes). See README.md for the model.

pub mod config;
pub mod event;
pub mod kafka;
pub mod model;
pub mod rng;
pub mod rules;
pub mod run;
pub mod stream;

pub use config::World;
pub use model::Model;
