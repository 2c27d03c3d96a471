//! The one-line progress/ETA on stderr while jobs run, shown only when stderr is a terminal,
//! in fio's shape: `Jobs: 1: [r(1)][45.0%][r=203MiB/s,w=0KiB/s][r=52.1k,w=0 IOPS][eta 00m:02s]`.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::device::{JobCounters, Plan};
use crate::units::{binary_size, count};

pub struct Progress<'a> {
    plan: &'a Plan,
    counters: &'a [JobCounters],
    terminal: bool,
    started: Instant,
    last: Instant,
    last_totals: (u64, u64, u64),
}

impl<'a> Progress<'a> {
    pub fn new(plan: &'a Plan, counters: &'a [JobCounters]) -> Progress<'a> {
        let now = Instant::now();
        Progress {
            plan,
            counters,
            terminal: io::stderr().is_terminal(),
            started: now,
            last: now,
            last_totals: (0, 0, 0),
        }
    }

    pub fn tick(&mut self) {
        let elapsed = self.last.elapsed();
        if !self.terminal || elapsed < Duration::from_secs(1) {
            return;
        }
        let totals = self.totals();
        let seconds = elapsed.as_secs_f64();
        let rate = |now: u64, before: u64| (now - before) as f64 / seconds;
        let read_bw = binary_size(rate(totals.0, self.last_totals.0));
        let write_bw = binary_size(rate(totals.1, self.last_totals.1));
        let iops = count(rate(totals.2, self.last_totals.2));
        let running = self.counters.iter().filter(|c| !c.done.load(Ordering::Relaxed)).count();
        let (percent, eta) = self.completion(totals.0 + totals.1);
        eprint!(
            "\rJobs: {running}: [{}({running})][{percent:.1}%][r={read_bw}/s,w={write_bw}/s]\
             [{iops} IOPS][eta {:02}m:{:02}s]\x1b[K",
            self.plan.args.rw.fio_name(),
            eta.as_secs() / 60,
            eta.as_secs() % 60,
        );
        let _ = io::stderr().flush();
        self.last = Instant::now();
        self.last_totals = totals;
    }

    pub fn finish(&self) {
        if self.terminal {
            eprint!("\r\x1b[2K");
            let _ = io::stderr().flush();
        }
    }

    fn totals(&self) -> (u64, u64, u64) {
        self.counters.iter().fold((0, 0, 0), |(r, w, n), c| {
            (
                r + c.read_bytes.load(Ordering::Relaxed),
                w + c.write_bytes.load(Ordering::Relaxed),
                n + c.ios.load(Ordering::Relaxed),
            )
        })
    }

    /// Percent done and time left, by the clock for timed runs, by bytes otherwise.
    fn completion(&self, bytes: u64) -> (f64, Duration) {
        let elapsed = self.started.elapsed();
        if let Some(runtime) = self.plan.args.runtime {
            let total = self.plan.ramp + runtime;
            let fraction = (elapsed.as_secs_f64() / total.as_secs_f64()).min(1.0);
            let bytes_fraction = self.byte_fraction(bytes);
            if !self.plan.args.time_based && bytes_fraction > fraction {
                return (bytes_fraction * 100.0, remaining(elapsed, bytes_fraction));
            }
            return (fraction * 100.0, total.saturating_sub(elapsed));
        }
        let fraction = self.byte_fraction(bytes);
        (fraction * 100.0, remaining(elapsed, fraction))
    }

    fn byte_fraction(&self, bytes: u64) -> f64 {
        let jobs = u64::from(self.plan.args.numjobs);
        let total = self.plan.io_limit_bytes.unwrap_or(0) * jobs;
        if total == 0 { 0.0 } else { (bytes as f64 / total as f64).min(1.0) }
    }
}

fn remaining(elapsed: Duration, fraction: f64) -> Duration {
    if fraction <= 0.0 {
        return Duration::ZERO;
    }
    elapsed.mul_f64((1.0 - fraction) / fraction)
}
