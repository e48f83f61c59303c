//! What the protocol thread reacts to: peers' messages, durability, API calls, completions of
//! background work, and the replica's failure.

use super::api::ResponseCode;
use super::transport::Origin;
use crate::format::{MemberSet, Message, Node};
use crate::paxos::{Cookie, Input};
use bytes::Bytes;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

pub(crate) enum Event {
    /// A peer's message and the connection it came on.
    Message(Arc<Message>, Origin),
    Durable(u64),
    Submit {
        request: Bytes,
        cookie: Cookie,
        exclusive: bool,
        /// `isLastDecree`: the replica shuts down behind this (exclusive) request.
        last: bool,
    },
    ChangeConfiguration {
        members: MemberSet,
        cookie: Cookie,
        reply: SyncSender<ResponseCode>,
    },
    Bootstrap {
        members: MemberSet,
        reply: SyncSender<ResponseCode>,
    },
    Input(Input),
    /// The checkpoint file `<decree>.codex` is in place: saved here, or copied from a peer by
    /// the primary.
    CheckpointDone {
        decree: u64,
        size: u64,
        copied: bool,
    },
    /// Something the replica cannot go on after (a journal write failed, a background task
    /// panicked): the replica fails (`RslReplica::failure`) and stops cleanly.
    Fatal(String),
    /// The execute thread got down to half its memory bound while decrees wait in the log:
    /// hand it more now rather than at the next timer (runtime/spill.rs).
    Refill,
    Stop,
    /// The resolver found this member at another address or ports (`ResolveNode`).
    Relocated(Node),
    /// `Pause` (and tests): the protocol thread waits here until the sender is dropped (or sends).
    Pause(std::sync::mpsc::Receiver<()>),
}
