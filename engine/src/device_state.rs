//! A device's life: Healthy → Degraded → Evacuating → Failed → Removed (DESIGN.md,
//! "Devices and the on-device format").
//!
//! The shard moves itself to Degraded on an integrity error and to Failed on a failed write
//! or flush; an operator (through the control plane, later) moves it to Evacuating, back to
//! Healthy after a repair, and to Removed once it is empty or failed. Every change is kept
//! with its reason and time in a bounded history, which the audit log will read. The state
//! is not stored on the device: a reopened shard starts Healthy, and the control plane
//! (consensus, later) keeps the operator's decisions.

use std::collections::VecDeque;
use std::fmt;
use std::time::SystemTime;

use crate::EngineError;
use crate::constants::DEVICE_STATE_HISTORY_MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Serving reads and writes.
    Healthy,
    /// Serving, but an extent failed its checksum: repair from a replica is due.
    Degraded,
    /// Being emptied: reads and releases go on, puts are refused.
    Evacuating,
    /// A write or flush failed: reads go on, changes are refused until reopened.
    Failed,
    /// Taken out of service: nothing more is done with it.
    Removed,
}

impl DeviceState {
    /// Whether the state machine allows `self → to`.
    pub fn can_become(self, to: DeviceState) -> bool {
        use DeviceState::*;
        matches!(
            (self, to),
            (Healthy, Degraded | Evacuating | Failed)
                | (Degraded, Healthy | Evacuating | Failed)
                | (Evacuating, Failed | Removed)
                | (Failed, Removed)
        )
    }

    /// Whether new chunks may be put on the device.
    pub fn takes_puts(self) -> bool {
        matches!(self, DeviceState::Healthy | DeviceState::Degraded)
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceState::Healthy => "healthy",
            DeviceState::Degraded => "degraded",
            DeviceState::Evacuating => "evacuating",
            DeviceState::Failed => "failed",
            DeviceState::Removed => "removed",
        })
    }
}

/// One change of state, as the audit log will record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: DeviceState,
    pub to: DeviceState,
    pub reason: String,
    pub at: SystemTime,
}

/// The current state and the last `DEVICE_STATE_HISTORY_MAX` changes.
#[derive(Debug)]
pub struct DeviceStates {
    state: DeviceState,
    history: VecDeque<Transition>,
}

impl Default for DeviceStates {
    fn default() -> Self {
        DeviceStates {
            state: DeviceState::Healthy,
            history: VecDeque::with_capacity(DEVICE_STATE_HISTORY_MAX),
        }
    }
}

impl DeviceStates {
    pub fn state(&self) -> DeviceState {
        self.state
    }

    /// Changes, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Transition> {
        self.history.iter()
    }

    /// Moves to `to`, recording why; a change the machine does not allow is refused and
    /// changes nothing.
    pub fn change(&mut self, to: DeviceState, reason: &str) -> Result<(), EngineError> {
        if !self.state.can_become(to) {
            return Err(EngineError::DeviceStateChange { from: self.state, to });
        }
        if self.history.len() == DEVICE_STATE_HISTORY_MAX {
            self.history.pop_front();
        }
        let transition =
            Transition { from: self.state, to, reason: reason.to_owned(), at: SystemTime::now() };
        self.history.push_back(transition);
        self.state = to;
        Ok(())
    }

    /// Moves to `to` if the machine allows it from here, else stays (for changes the shard
    /// makes on its own, e.g. a second failure while already failed).
    pub(crate) fn change_if_allowed(&mut self, to: DeviceState, reason: &str) {
        let _ = self.change(to, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceState::*;
    use super::*;

    #[test]
    fn only_the_documented_transitions_are_allowed() {
        let all = [Healthy, Degraded, Evacuating, Failed, Removed];
        let allowed = [
            (Healthy, Degraded),
            (Healthy, Evacuating),
            (Healthy, Failed),
            (Degraded, Healthy),
            (Degraded, Evacuating),
            (Degraded, Failed),
            (Evacuating, Failed),
            (Evacuating, Removed),
            (Failed, Removed),
        ];
        for from in all {
            for to in all {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn a_refused_change_changes_nothing_and_says_why() {
        let mut states = DeviceStates::default();
        let error = states.change(Removed, "skipping evacuation").unwrap_err();
        assert!(matches!(error, EngineError::DeviceStateChange { from: Healthy, to: Removed }));
        assert!(error.to_string().contains("healthy"), "{error}");
        assert_eq!(states.state(), Healthy);
        assert_eq!(states.history().count(), 0);
    }

    #[test]
    fn history_keeps_reasons_in_order_and_is_bounded() {
        let mut states = DeviceStates::default();
        for round in 0..DEVICE_STATE_HISTORY_MAX {
            states.change(Degraded, &format!("bad extent {round}")).unwrap();
            states.change(Healthy, "repaired").unwrap();
        }
        assert_eq!(states.history().count(), DEVICE_STATE_HISTORY_MAX);
        let last = states.history().last().unwrap();
        assert_eq!((last.from, last.to, last.reason.as_str()), (Degraded, Healthy, "repaired"));
        states.change(Evacuating, "operator").unwrap();
        states.change(Removed, "empty").unwrap();
        assert!(!states.state().takes_puts());
    }
}
