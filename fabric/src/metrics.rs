//! Per-transport counters of the selector: bytes, requests, failures, fallbacks and
//! breaker states, as lock-free atomics read through a snapshot.
//!
//! What it does not do: export (the gateway's Prometheus endpoint reads snapshots), or
//! label anything by tenant or chunk. Per-peer detail stays in the selector's breakers.
//!
//! Invariants: every field is one atomic updated with relaxed ordering (counters need no
//! ordering among themselves; a snapshot is a consistent-enough sample, not a transaction);
//! the breaker gauges move only on a breaker transition, by exactly one.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::breaker::{BreakerState, Transition};
use crate::transport::TransportKind;

/// The live counters of one transport.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    fallbacks: AtomicU64,
    refused_by_breaker: AtomicU64,
    breaker_opens: AtomicU64,
    breakers_open: AtomicU64,
    breakers_half_open: AtomicU64,
}

/// A sample of one transport's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportMetricsSnapshot {
    pub kind: TransportKind,
    /// Frame bytes sent (headers and payloads of requests handed to the transport).
    pub bytes_out: u64,
    /// Frame bytes received (headers and payloads of responses).
    pub bytes_in: u64,
    /// Requests handed to the transport.
    pub requests: u64,
    /// Requests that got no response (a transport error; any response status is not one).
    pub failures: u64,
    /// Failed requests retried on the other transport.
    pub fallbacks: u64,
    /// Requests not sent over this transport because its breaker refused them.
    pub refused_by_breaker: u64,
    /// Times a breaker of this transport opened (from closed or half-open).
    pub breaker_opens: u64,
    /// Peers whose breaker of this transport is open now.
    pub breakers_open: u64,
    /// Peers whose breaker of this transport is half-open now.
    pub breakers_half_open: u64,
}

/// A sample of every transport's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FabricMetricsSnapshot {
    pub tcp: TransportMetricsSnapshot,
    /// `None` when this node offers no RDMA transport.
    pub rdma: Option<TransportMetricsSnapshot>,
}

impl TransportMetrics {
    pub(crate) fn request_sent(&self, frame_bytes: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(frame_bytes, Ordering::Relaxed);
    }

    pub(crate) fn response_received(&self, frame_bytes: u64) {
        self.bytes_in.fetch_add(frame_bytes, Ordering::Relaxed);
    }

    pub(crate) fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused_by_breaker(&self) {
        self.refused_by_breaker.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves the breaker gauges by one breaker's transition.
    pub(crate) fn breaker_moved(&self, transition: Transition) {
        if let Some(gauge) = self.gauge(transition.from) {
            gauge.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(gauge) = self.gauge(transition.to) {
            gauge.fetch_add(1, Ordering::Relaxed);
        }
        if transition.to == BreakerState::Open {
            self.breaker_opens.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A breaker in `state` was forgotten (its peer evicted from the selector's table).
    pub(crate) fn breaker_forgotten(&self, state: BreakerState) {
        if let Some(gauge) = self.gauge(state) {
            gauge.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self, kind: TransportKind) -> TransportMetricsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportMetricsSnapshot {
            kind,
            bytes_out: read(&self.bytes_out),
            bytes_in: read(&self.bytes_in),
            requests: read(&self.requests),
            failures: read(&self.failures),
            fallbacks: read(&self.fallbacks),
            refused_by_breaker: read(&self.refused_by_breaker),
            breaker_opens: read(&self.breaker_opens),
            breakers_open: read(&self.breakers_open),
            breakers_half_open: read(&self.breakers_half_open),
        }
    }

    fn gauge(&self, state: BreakerState) -> Option<&AtomicU64> {
        match state {
            BreakerState::Closed => None,
            BreakerState::Open => Some(&self.breakers_open),
            BreakerState::HalfOpen => Some(&self.breakers_half_open),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_follow_transitions() {
        let metrics = TransportMetrics::default();
        let moved = |from, to| metrics.breaker_moved(Transition { from, to });
        moved(BreakerState::Closed, BreakerState::Open);
        moved(BreakerState::Closed, BreakerState::Open);
        moved(BreakerState::Open, BreakerState::HalfOpen);
        let snapshot = metrics.snapshot(TransportKind::Rdma);
        assert_eq!((snapshot.breakers_open, snapshot.breakers_half_open), (1, 1));
        moved(BreakerState::HalfOpen, BreakerState::Open);
        moved(BreakerState::Open, BreakerState::HalfOpen);
        moved(BreakerState::HalfOpen, BreakerState::Closed);
        metrics.breaker_forgotten(BreakerState::Open);
        let snapshot = metrics.snapshot(TransportKind::Rdma);
        assert_eq!((snapshot.breakers_open, snapshot.breakers_half_open), (0, 0));
        assert_eq!(snapshot.breaker_opens, 3);
    }

    #[test]
    fn counters_add_up() {
        let metrics = TransportMetrics::default();
        metrics.request_sent(100);
        metrics.request_sent(50);
        metrics.response_received(30);
        metrics.failure();
        metrics.fallback();
        metrics.refused_by_breaker();
        let snapshot = metrics.snapshot(TransportKind::Tcp);
        assert_eq!(snapshot.kind, TransportKind::Tcp);
        assert_eq!((snapshot.requests, snapshot.bytes_out, snapshot.bytes_in), (2, 150, 30));
        assert_eq!((snapshot.failures, snapshot.fallbacks, snapshot.refused_by_breaker), (1, 1, 1));
    }
}
