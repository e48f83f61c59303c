//! The RSL engine: Azure RSL's multi-Paxos replicated state machine, rebuilt in Rust.
//!
//! [`format`] owns every byte format RSL reads and writes; [`paxos`] is the sans-IO protocol core;
//! [`driver`] carries out its actions for both the [`runtime`] and the simulator ([`sim`]).

pub mod driver;
pub mod faults;
pub mod format;
pub mod paxos;
pub mod runtime;
pub mod sim;
