//! A circuit breaker per (peer, transport), and the clock it reads.
//!
//! What it does: counts a transport's failures towards one peer and, after
//! `failures_to_open` of them within `window`, opens: the selector stops sending that peer
//! anything over that transport. After a back-off the breaker half-opens and admits one
//! probe; a success closes it (and resets the back-off), a failure opens it again for twice
//! the back-off, capped at `backoff_max`.
//!
//! What it does not do: decide what a failure is (the selector does: a response with any
//! status is a success of the transport), read a clock of its own (every method takes
//! `now`, so tests drive time by hand), or remember which request a result belongs to: a
//! late result of a request admitted before the breaker opened counts as described on
//! [`Breaker::record_success`] and [`Breaker::record_failure`].
//!
//! Invariants:
//! - bounded state: at most `failures_to_open` failure times are kept (a sliding window over
//!   the most recent ones), and `failures_to_open` is at most
//!   [`BREAKER_FAILURES_MAX`](crate::constants::BREAKER_FAILURES_MAX);
//! - the back-off is never below `backoff_initial` nor above `backoff_max`;
//! - half-open admits one probe at a time; a probe whose result never comes (its caller
//!   gave up) stops blocking others after `probe_lease`.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::constants::{
    BREAKER_BACKOFF_INITIAL_DEFAULT, BREAKER_BACKOFF_MAX_DEFAULT, BREAKER_FAILURES_DEFAULT,
    BREAKER_FAILURES_MAX, BREAKER_PROBE_LEASE_DEFAULT, BREAKER_WINDOW_DEFAULT,
};

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures within `window` that open the breaker: 1 to `BREAKER_FAILURES_MAX`.
    pub failures_to_open: u32,
    pub window: Duration,
    /// The first back-off after opening; doubled on each failed probe.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long a half-open probe may go unanswered before another is admitted.
    pub probe_lease: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures_to_open: BREAKER_FAILURES_DEFAULT,
            window: BREAKER_WINDOW_DEFAULT,
            backoff_initial: BREAKER_BACKOFF_INITIAL_DEFAULT,
            backoff_max: BREAKER_BACKOFF_MAX_DEFAULT,
            probe_lease: BREAKER_PROBE_LEASE_DEFAULT,
        }
    }
}

impl BreakerConfig {
    /// Checks the bounds; the selector refuses a configuration that breaks one.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.failures_to_open == 0 || self.failures_to_open > BREAKER_FAILURES_MAX {
            return Err("failures_to_open must be 1 to BREAKER_FAILURES_MAX");
        }
        if self.window.is_zero() {
            return Err("the failure window must be positive");
        }
        if self.backoff_initial.is_zero() {
            return Err("the initial back-off must be positive");
        }
        if self.backoff_max < self.backoff_initial {
            return Err("the back-off cap must be at least the initial back-off");
        }
        if self.probe_lease.is_zero() {
            return Err("the probe lease must be positive");
        }
        Ok(())
    }
}

/// A breaker's state, as metrics and health checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the back-off ends.
    Open,
    /// One probe may go; its result decides.
    HalfOpen,
}

/// What [`Breaker::admit`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed: send.
    Closed,
    /// The breaker is half-open and this request is its probe.
    Probe,
    /// Refused: open, or half-open with a probe out, or a probe not wanted.
    Refused,
}

/// A state change, reported so the caller can keep gauges without a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

/// One (peer, transport)'s breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    /// The current back-off: `backoff_initial` after a close, doubled by each failed probe.
    backoff: Duration,
}

#[derive(Debug, Clone)]
enum State {
    /// Times of the most recent failures, oldest first, at most `failures_to_open`.
    Closed {
        failures: VecDeque<Instant>,
    },
    Open {
        until: Instant,
    },
    /// `probe_since` is when the probe out was admitted, if one is.
    HalfOpen {
        probe_since: Option<Instant>,
    },
}

impl Breaker {
    /// A closed breaker. Panics on a configuration `validate` refuses (a programmer error:
    /// the selector validates first).
    pub fn new(config: BreakerConfig) -> Breaker {
        assert!(config.validate().is_ok(), "breaker config out of bounds: {config:?}");
        Breaker { config, state: Breaker::closed(&config), backoff: config.backoff_initial }
    }

    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// The back-off the breaker waits (or will wait) while open.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// When an open breaker will admit a probe; `None` unless open.
    pub fn open_until(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Whether a request may go now. `probe_wanted` = false refuses to make this request a
    /// half-open probe (the selector never probes with a non-idempotent request), leaving
    /// the breaker as it is. A probe admission moves an expired open breaker to half-open.
    pub fn admit(&mut self, now: Instant, probe_wanted: bool) -> (Admission, Option<Transition>) {
        match &mut self.state {
            State::Closed { .. } => (Admission::Closed, None),
            State::Open { until } => {
                if now < *until || !probe_wanted {
                    return (Admission::Refused, None);
                }
                self.state = State::HalfOpen { probe_since: Some(now) };
                (Admission::Probe, Some(transition(BreakerState::Open, BreakerState::HalfOpen)))
            }
            State::HalfOpen { probe_since } => {
                let lease_over =
                    probe_since.is_none_or(|since| now >= since + self.config.probe_lease);
                if !probe_wanted || !lease_over {
                    return (Admission::Refused, None);
                }
                *probe_since = Some(now);
                (Admission::Probe, None)
            }
        }
    }

    /// Whether [`Breaker::admit`] would admit a probe-capable request now, without changing
    /// anything.
    pub fn would_admit(&self, now: Instant) -> bool {
        match &self.state {
            State::Closed { .. } => true,
            State::Open { until } => now >= *until,
            State::HalfOpen { probe_since } => {
                probe_since.is_none_or(|since| now >= since + self.config.probe_lease)
            }
        }
    }

    /// The transport answered. Closes a half-open breaker and resets the back-off; clears
    /// the failures of a closed one; an open breaker stays open (the success belongs to a
    /// request admitted before it opened, and proves less than a probe).
    pub fn record_success(&mut self, _now: Instant) -> Option<Transition> {
        match &mut self.state {
            State::Closed { failures } => {
                failures.clear();
                None
            }
            State::Open { .. } => None,
            State::HalfOpen { .. } => {
                self.state = Breaker::closed(&self.config);
                self.backoff = self.config.backoff_initial;
                Some(transition(BreakerState::HalfOpen, BreakerState::Closed))
            }
        }
    }

    /// The transport failed. A closed breaker opens when this is the `failures_to_open`-th
    /// failure within the window; a half-open one opens again for twice the back-off
    /// (capped); an open one stays as it is.
    pub fn record_failure(&mut self, now: Instant) -> Option<Transition> {
        let limit = self.config.failures_to_open as usize;
        match &mut self.state {
            State::Closed { failures } => {
                if failures.len() == limit {
                    failures.pop_front();
                }
                failures.push_back(now);
                let oldest = *failures.front().expect("just pushed");
                let within = now.saturating_duration_since(oldest) <= self.config.window;
                if failures.len() < limit || !within {
                    return None;
                }
                self.backoff = self.config.backoff_initial;
                self.state = State::Open { until: now + self.backoff };
                Some(transition(BreakerState::Closed, BreakerState::Open))
            }
            State::Open { .. } => None,
            State::HalfOpen { .. } => {
                self.backoff = self.backoff.saturating_mul(2).min(self.config.backoff_max);
                self.state = State::Open { until: now + self.backoff };
                Some(transition(BreakerState::HalfOpen, BreakerState::Open))
            }
        }
    }

    fn closed(config: &BreakerConfig) -> State {
        State::Closed { failures: VecDeque::with_capacity(config.failures_to_open as usize) }
    }
}

fn transition(from: BreakerState, to: BreakerState) -> Transition {
    Transition { from, to }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiseki_security::clock::{Clock, ManualClock};

    const SECOND: Duration = Duration::from_secs(1);

    fn config() -> BreakerConfig {
        BreakerConfig {
            failures_to_open: 3,
            window: 10 * SECOND,
            backoff_initial: 2 * SECOND,
            backoff_max: 5 * SECOND,
            probe_lease: 4 * SECOND,
        }
    }

    #[test]
    fn opens_after_n_failures_within_the_window() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config());
        assert_eq!(breaker.record_failure(t0), None);
        assert_eq!(breaker.record_failure(t0 + SECOND), None);
        assert_eq!(breaker.state(), BreakerState::Closed);
        let opened = breaker.record_failure(t0 + 2 * SECOND);
        assert_eq!(opened, Some(transition(BreakerState::Closed, BreakerState::Open)));
        assert_eq!(breaker.admit(t0 + 2 * SECOND, true), (Admission::Refused, None));
        assert_eq!(breaker.open_until(), Some(t0 + 4 * SECOND));
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_open() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config());
        for i in 0..10u32 {
            assert_eq!(breaker.record_failure(t0 + i * 6 * SECOND), None, "failure {i}");
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn a_success_clears_the_failures_of_a_closed_breaker() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config());
        breaker.record_failure(t0);
        breaker.record_failure(t0);
        breaker.record_success(t0);
        breaker.record_failure(t0);
        breaker.record_failure(t0);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn half_opens_after_the_backoff_and_closes_on_a_probe_success() {
        let t0 = Instant::now();
        let mut breaker = open_breaker(t0);
        assert_eq!(breaker.admit(t0 + SECOND, true).0, Admission::Refused);
        let (admission, change) = breaker.admit(t0 + 2 * SECOND, true);
        assert_eq!(admission, Admission::Probe);
        assert_eq!(change, Some(transition(BreakerState::Open, BreakerState::HalfOpen)));
        assert_eq!(breaker.admit(t0 + 2 * SECOND, true).0, Admission::Refused, "one probe");
        let closed = breaker.record_success(t0 + 3 * SECOND);
        assert_eq!(closed, Some(transition(BreakerState::HalfOpen, BreakerState::Closed)));
        assert_eq!(breaker.admit(t0 + 3 * SECOND, false).0, Admission::Closed);
        assert_eq!(breaker.backoff(), 2 * SECOND);
    }

    #[test]
    fn a_failed_probe_doubles_the_backoff_up_to_the_cap() {
        let t0 = Instant::now();
        let mut breaker = open_breaker(t0);
        let mut now = t0;
        for expected in [4, 5, 5] {
            now += breaker.backoff();
            assert_eq!(breaker.admit(now, true).0, Admission::Probe);
            let reopened = breaker.record_failure(now);
            assert_eq!(reopened, Some(transition(BreakerState::HalfOpen, BreakerState::Open)));
            assert_eq!(breaker.backoff(), expected * SECOND);
            assert_eq!(breaker.admit(now + breaker.backoff() - SECOND, true).0, Admission::Refused);
        }
    }

    #[test]
    fn a_non_idempotent_request_never_probes() {
        let t0 = Instant::now();
        let mut breaker = open_breaker(t0);
        assert_eq!(breaker.admit(t0 + 60 * SECOND, false), (Admission::Refused, None));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.would_admit(t0 + 60 * SECOND));
    }

    #[test]
    fn a_lost_probe_stops_blocking_after_its_lease() {
        let t0 = Instant::now();
        let mut breaker = open_breaker(t0);
        assert_eq!(breaker.admit(t0 + 2 * SECOND, true).0, Admission::Probe);
        assert_eq!(breaker.admit(t0 + 5 * SECOND, true).0, Admission::Refused);
        assert_eq!(breaker.admit(t0 + 6 * SECOND, true).0, Admission::Probe);
    }

    #[test]
    fn late_results_do_not_move_an_open_breaker() {
        let t0 = Instant::now();
        let mut breaker = open_breaker(t0);
        assert_eq!(breaker.record_success(t0), None);
        assert_eq!(breaker.record_failure(t0), None);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.open_until(), Some(t0 + 2 * SECOND));
    }

    #[test]
    fn configs_out_of_bounds_are_refused() {
        let bad = [
            BreakerConfig { failures_to_open: 0, ..config() },
            BreakerConfig { failures_to_open: BREAKER_FAILURES_MAX + 1, ..config() },
            BreakerConfig { window: Duration::ZERO, ..config() },
            BreakerConfig { backoff_initial: Duration::ZERO, ..config() },
            BreakerConfig { backoff_max: SECOND, ..config() },
            BreakerConfig { probe_lease: Duration::ZERO, ..config() },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
        assert!(BreakerConfig::default().validate().is_ok());
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(3 * SECOND);
        assert_eq!(clock.now(), t0 + 3 * SECOND);
    }

    fn open_breaker(now: Instant) -> Breaker {
        let mut breaker = Breaker::new(config());
        for _ in 0..3 {
            breaker.record_failure(now);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        breaker
    }
}
