//! The RSL engine: Azure RSL's multi-Paxos replicated state machine, rebuilt in Rust.
//!
//! [`format`] owns every byte format RSL reads and writes; [`paxos`] is the sans-IO protocol core;
//! [`driver`] carries out its actions for both the [`runtime`] and the simulator ([`sim`]).

// The one system call std lacks is wrapped in `writeback`, which alone may use `unsafe`.
#![deny(unsafe_code)]

pub mod driver;
pub mod faults;
pub mod format;
pub mod paxos;
pub mod runtime;
pub mod sim;
pub mod writeback;
