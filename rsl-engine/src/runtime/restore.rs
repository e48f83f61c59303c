//! Restore from disk, for start-up and for the read-only `Replay` (docs/spec/behavior.md §2.23): the
//! newest checkpoint the state machine loads, then the logged records replayed through the
//! core, each action they yield handed to a sink. The shared state the service queries moves
//! as it would live (the checkpoint's decree and configuration while it loads, each decree as
//! it executes), so restore-time callbacks see what a replica that never restarted saw.

use super::api::{InitError, StateMachine};
use super::checkpoints::{list_checkpoints, load_newest_with};
use super::journal::{read_logs, Replay};
use super::{ReplicaView, Shared};
use crate::format::{ConfigInfo, MemberId, Message, Version};
use crate::paxos::{Action, CoreConfig, Replica};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;

/// Offers `checkpoints` (ascending) to `sm` by the restore rule, newest first; with none
/// loaded the state machine starts empty (`load_state(None)`). The core starts from the
/// loaded one, whose decree is returned. While `sm` loads a checkpoint, `shared` shows that
/// checkpoint's decree and configuration (RSL sets the sequence number before `LoadState`);
/// afterwards, the core's configuration.
pub(crate) fn load(core: &mut Replica, checkpoints: Vec<(u64, PathBuf)>, sm: &mut dyn StateMachine, shared: &Shared) -> Option<u64> {
    let initial = core.configuration().clone();
    let (loaded, _skipped) = load_newest_with(checkpoints, |header, reader| {
        publish(shared, header.last_executed, header.config.clone());
        sm.load_state(reader)
    });
    let Some((cp, size)) = loaded else {
        publish(shared, 0, initial);
        sm.load_state(None);
        return None;
    };
    core.restore_checkpoint(&cp, size);
    publish(shared, cp.decree, core.configuration().clone());
    Some(cp.decree)
}

/// The state as of `decree`: executed, passed, and in configuration `config`.
fn publish(shared: &Shared, decree: u64, config: ConfigInfo) {
    shared.current_seq.store(decree, Release);
    shared.passed_seq.store(decree, Relaxed);
    shared.view().config = config;
}

/// A replayed decree about to execute: it is chosen (passed), and its ballot's owner was the
/// primary (the hint `current_primary` gives live). The sequence number moves as it executes.
pub(crate) fn executing(shared: &Shared, vote: &Message) {
    shared.passed_seq.fetch_max(vote.header.decree, Relaxed);
    if !vote.header.ballot.is_empty() {
        shared.view().primary = Some(vote.header.ballot.member);
    }
}

/// Replays `logged` through `core`, handing each resulting action to `sink` until it breaks.
/// A record that does not follow the one before it is reported with its file and offset.
pub(crate) fn replay(core: &mut Replica, logged: &Replay, mut sink: impl FnMut(Action) -> ControlFlow<()>) -> Result<(), InitError> {
    let mut out = Vec::new();
    for (i, record) in logged.records.iter().enumerate() {
        core.replay(record, &mut out).map_err(|source| {
            let (path, offset) = logged.origin(i);
            InitError::Replay { path: path.into(), offset, source }
        })?;
        for action in out.drain(..) {
            if sink(action).is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The read-only `Replay` of `dir`: loads the newest checkpoint of at most `max_seq` that the
/// state machine accepts, then executes the chosen decrees of the logs up to and including
/// `max_seq`, writing nothing. Returns the last decree executed. `max_seq == 0` returns at
/// once without loading anything, as RSL does.
pub(crate) fn read_only(dir: &Path, version: Version, sm: &mut dyn StateMachine, max_seq: u64) -> Result<u64, InitError> {
    if max_seq == 0 {
        return Ok(0);
    }
    let storage = |e: &dyn std::fmt::Display| InitError::Storage(e.to_string());
    let mut core = Replica::new(CoreConfig { version, ..CoreConfig::default() }, MemberId::EMPTY, ConfigInfo::default(), 0);
    let checkpoints = list_checkpoints(dir).map_err(|e| storage(&e))?.into_iter().filter(|(d, _)| *d <= max_seq).collect();
    let shared = Arc::new(Shared::new());
    sm.attach(ReplicaView::new(shared.clone()));
    let loaded = load(&mut core, checkpoints, sm, &shared);
    let logged = read_logs(dir, loaded).map_err(|e| storage(&e))?;
    let mut executed = loaded.unwrap_or(0);
    replay(&mut core, &logged, |action| match action {
        Action::Execute { vote, .. } if vote.header.decree > max_seq => ControlFlow::Break(()),
        Action::Execute { vote, .. } => {
            debug_assert!(vote.header.decree > executed || executed == 0, "decrees replay in order");
            executed = vote.header.decree;
            executing(&shared, &vote);
            shared.current_seq.store(executed, Release);
            execute(sm, &vote);
            ControlFlow::Continue(())
        }
        Action::ConfigurationChanged { config, .. } => {
            shared.view().config = config;
            ControlFlow::Continue(())
        }
        _ => ControlFlow::Continue(()),
    })?;
    Ok(executed)
}

/// One decree's requests, bracketed as at run time; no cookies, and `save_state` is ignored.
fn execute(sm: &mut dyn StateMachine, vote: &Message) {
    let Some(body) = vote.as_vote() else { return };
    if body.requests.is_empty() || body.reconfig.is_some() {
        return;
    }
    let mut save = false;
    sm.look_ahead(&body.requests);
    sm.before_execute_replicated_requests();
    for request in &body.requests {
        sm.execute_replicated_request(request, None, &mut save);
    }
    sm.after_execute_replicated_requests();
}
