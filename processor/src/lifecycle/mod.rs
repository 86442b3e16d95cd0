//! The model lifecycle on the user's own stream: `export` reads the input topic into the
//! training pipeline's input (JSON lines of the input contract), so `models/train.py --log` trains
//! on the user's events without another tool; `compare` is the live comparison of candidate models
//! scored in shadow with the active ones, and the swap that promotes (or rolls back) them.

pub mod compare;
pub mod export;
