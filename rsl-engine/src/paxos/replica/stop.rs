//! Stopping a replica (`Unload`): every cookie it still holds comes back as ShuttingDown.

use super::*;

impl Replica {
    /// Stops the replica: the cookies of votes queued or in flight are returned with
    /// `ShuttingDown` (what was chosen has already been handed out to execute), and nothing
    /// more is proposed or answered. Feed it nothing afterwards.
    pub fn stop(&mut self, out: &mut Vec<Action>) {
        let before = out.len();
        let queued = self.take_to_send();
        let in_flight = self.outstanding.drain(..).map(|o| (o.cookies, o.config_cookie));
        let votes: Vec<_> = in_flight.chain(queued.into_iter().map(|p| (p.cookies, p.config_cookie))).collect();
        for (cookies, config_cookie) in votes {
            Self::abort_cookies(cookies, config_cookie, AbortReason::ShuttingDown, out);
        }
        self.relinquishing = true;
        self.is_primary = false;
        debug_assert!(self.outstanding.is_empty() && self.to_send.is_empty(), "every cookie returned");
        debug_assert!(out[before..].iter().all(|a| matches!(a, Action::Abort { .. })));
    }
}
