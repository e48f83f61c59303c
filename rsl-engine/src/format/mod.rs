//! Every RSL byte format: checksum, primitives, shared structures, messages, the packet frame,
//! log records and checkpoints. Nothing else in the engine encodes or decodes RSL bytes.
//!
//! Decoders are total: any input yields a value or a [`DecodeError`] naming the field and its
//! offset. See `docs/formats.md` for the module map and the invariants.

pub mod checkpoint;
pub mod checksum;
pub mod codec;
pub mod log;
pub mod message;
pub mod packet;
pub mod types;

pub use checkpoint::{CheckpointError, CheckpointHeader, CheckpointReader, CheckpointWriter};
pub use codec::{DecodeError, EncodeError};
pub use message::{Body, Checksum, Header, Message, MsgKind, VoteBody};
pub use types::{Ballot, ConfigInfo, MemberId, MemberSet, Node, Version, CONFIGURATION_LIMIT, DECREE_LIMIT};
