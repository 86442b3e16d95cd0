//! The model lifecycle on the user's own stream: `export` reads the input topic into the
//! training pipeline's input (JSON lines of the input contract), so `models/train.py --log` trains
//! on the user's events without another tool.

pub mod export;
