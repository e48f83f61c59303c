//! The RSL engine: Azure RSL's multi-Paxos replicated state machine, rebuilt in Rust.
//!
//! Today it holds [`format`], every byte format RSL reads and writes.

pub mod format;
