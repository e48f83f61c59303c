//! Restore from disk, for start-up and for the read-only `Replay` (api-behavior §2.23): the
//! newest checkpoint the state machine loads, then the logged records replayed through the
//! core, each action they yield handed to a sink.

use super::api::{InitError, StateMachine};
use super::checkpoints::{list_checkpoints, load_newest};
use super::journal::{read_logs, Replay};
use crate::format::{ConfigInfo, MemberId, Message, Version};
use crate::paxos::{Action, CoreConfig, Replica};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// Offers `checkpoints` (ascending) to `sm` by the restore rule, newest first; with none
/// loaded the state machine starts empty (`load_state(None)`). The core starts from the
/// loaded one, whose decree is returned.
pub(crate) fn load(core: &mut Replica, checkpoints: Vec<(u64, PathBuf)>, sm: &mut dyn StateMachine) -> Option<u64> {
    let (loaded, _skipped) = load_newest(checkpoints, |reader| sm.load_state(reader));
    let Some((cp, size)) = loaded else {
        sm.load_state(None);
        return None;
    };
    core.restore_checkpoint(&cp, size);
    Some(cp.decree)
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
    let loaded = load(&mut core, checkpoints, sm);
    let logged = read_logs(dir, loaded).map_err(|e| storage(&e))?;
    let mut executed = loaded.unwrap_or(0);
    replay(&mut core, &logged, |action| match action {
        Action::Execute { vote, .. } if vote.header.decree > max_seq => ControlFlow::Break(()),
        Action::Execute { vote, .. } => {
            debug_assert!(vote.header.decree > executed || executed == 0, "decrees replay in order");
            executed = vote.header.decree;
            execute(sm, &vote);
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
    sm.before_execute_replicated_requests();
    for request in &body.requests {
        sm.execute_replicated_request(request, None, &mut save);
    }
    sm.after_execute_replicated_requests();
}
