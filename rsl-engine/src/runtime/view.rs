//! [`ReplicaView`]: the replica's published state (`GetCurrentSequenceNumber`,
//! `GetConfiguration`, ...) as a service may query it at any time, restore included.

use super::Shared;
use crate::format::{MemberId, MemberSet};
use crate::paxos::Role;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::Arc;

/// What `RSLStateMachine`'s query methods answer, readable from any thread. The replica hands
/// one to [`StateMachine::attach`](super::StateMachine::attach) before its first callback,
/// so that `load_state` and the executions that replay the log at start-up see the sequence
/// number and configuration a live replica shows at the same point; [`RslReplica`](super::RslReplica)'s
/// query methods answer the same.
#[derive(Clone)]
pub struct ReplicaView {
    shared: Arc<Shared>,
}

impl ReplicaView {
    pub(crate) fn new(shared: Arc<Shared>) -> ReplicaView {
        ReplicaView { shared }
    }

    /// `GetCurrentSequenceNumber`: the last executed decree (the one executing, inside
    /// `execute_replicated_request`; the checkpoint's, inside `load_state`).
    pub fn current_sequence_number(&self) -> u64 {
        self.shared.current_seq.load(Acquire)
    }

    /// `GetHighestPassedSequenceNumber`: the highest decree known chosen.
    pub fn highest_passed_sequence_number(&self) -> u64 {
        self.shared.passed_seq.load(Relaxed)
    }

    /// `IsAnyRequestPendingExecution`: a chosen decree has not executed yet.
    pub fn is_any_request_pending_execution(&self) -> bool {
        self.highest_passed_sequence_number() > self.current_sequence_number()
    }

    /// `GetConfiguration`: the state configuration's members and number, as of the last
    /// executed decree (inside `load_state`, the checkpoint's).
    pub fn configuration(&self) -> (MemberSet, u32) {
        let view = self.shared.view();
        (view.config.members.clone(), view.config.number)
    }

    /// `GetCurrentPrimary`: the owner of the highest accepted ballot (a hint).
    pub fn current_primary(&self) -> Option<MemberId> {
        self.shared.view().primary
    }

    /// Primary, secondary, or on the way (None until the protocol thread has run).
    pub fn role(&self) -> Option<Role> {
        self.shared.view().role
    }

    /// Whether this replica is primary now (`NotifyStatus(true)` was raised and not revoked).
    pub fn is_primary(&self) -> bool {
        self.shared.is_primary.load(Relaxed)
    }

    /// See [`RslReplica::restart_to_catch_up`](super::RslReplica::restart_to_catch_up); set
    /// before `state_copied` and `shut_down` run.
    pub fn restart_to_catch_up(&self) -> Option<u64> {
        self.shared.restart_to_catch_up.get().copied()
    }
}
