//! `Replay`: rebuild a replica's state from its data directory, read-only, up to a sequence
//! number (api-behavior §2.23). No network, no writes, callbacks on the calling thread.

use super::api::StateMachine;
use super::checkpoints::load_newest;
use super::replica::InitError;
use super::{numbered_files, ListError};
use crate::format::log::read_log_file;
use crate::format::{ConfigInfo, MemberId, Version};
use crate::paxos::{Action, CoreConfig, Replica};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The numbered files `<n>.<ext>` of `dir`, ascending.
fn numbered(dir: &Path, ext: &str) -> Result<Vec<(u64, PathBuf)>, InitError> {
    numbered_files(dir, ext).map_err(|e| match e {
        ListError::Io(e) => InitError::Storage(format!("{}: {e}", dir.display())),
        ListError::BadName(path) => InitError::Storage(format!("{}: not a numbered file name", path.display())),
    })
}

/// Loads the newest checkpoint of at most `max_seq` that the state machine accepts, then
/// executes the chosen decrees of the logs up to and including `max_seq`. Returns the last
/// decree executed. `max_seq == 0` returns at once without loading anything, as RSL does.
pub fn replay(dir: &Path, version: Version, sm: &mut dyn StateMachine, max_seq: u64) -> Result<u64, InitError> {
    if max_seq == 0 {
        return Ok(0);
    }
    let mut core = Replica::new(CoreConfig { version, ..CoreConfig::default() }, MemberId::EMPTY, ConfigInfo::default(), 0);
    let mut executed = 0;
    let checkpoints = numbered(dir, "codex")?.into_iter().filter(|(d, _)| *d <= max_seq).collect();
    let (loaded, _skipped) = load_newest(checkpoints, |reader| sm.load_state(reader));
    match &loaded {
        Some((cp, size)) => {
            core.restore_checkpoint(cp, *size);
            executed = cp.decree;
        }
        None => {
            sm.load_state(None);
        }
    }
    let logs = numbered(dir, "log")?;
    let start = logs.iter().rposition(|(n, _)| *n <= executed + 1).unwrap_or(0);
    let mut out = Vec::new();
    for (_, path) in &logs[start..] {
        let contents = read_log_file(path).map_err(|e| InitError::Storage(e.to_string()))?;
        for record in contents.records {
            let offset = record.offset as u64;
            core.replay(&Arc::new(record.message), &mut out).map_err(|source| InitError::Replay { path: path.clone(), offset, source })?;
            for action in out.drain(..) {
                let Action::Execute { vote, .. } = action else { continue };
                if vote.header.decree > max_seq {
                    return Ok(executed);
                }
                debug_assert!(vote.header.decree > executed || executed == 0, "decrees replay in order");
                executed = vote.header.decree;
                execute(sm, &vote);
            }
        }
    }
    Ok(executed)
}

/// One decree's requests, bracketed as at run time; no cookies, and `save_state` is ignored.
fn execute(sm: &mut dyn StateMachine, vote: &crate::format::Message) {
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
