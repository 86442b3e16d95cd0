//! Attribution: per-conversion credit under each rule, and per-channel totals in event-time windows.

pub mod aggregate;
pub mod conversion;
pub mod credits;
pub mod windows;

pub use credits::{Credits, Rule};
