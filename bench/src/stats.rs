//! What a job measures: per direction a latency histogram, bytes and I/Os; per job its
//! measured wall time and the CPU its thread used.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest latency the histograms hold: a minute. A slower I/O is recorded as a minute.
const LATENCY_MAX_NS: u64 = 60_000_000_000;
/// Three significant digits: 0.1% resolution at every scale, as fio's own bins.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// One direction (read or write) of one job.
#[derive(Debug, Clone)]
pub struct DirectionStats {
    /// Completion latency in ns: from the request's submission to its reaping.
    pub latency_ns: Histogram<u64>,
    pub io_bytes: u64,
    pub ios: u64,
}

impl DirectionStats {
    pub fn new() -> DirectionStats {
        let latency_ns = Histogram::new_with_bounds(1, LATENCY_MAX_NS, LATENCY_SIGNIFICANT_DIGITS)
            .expect("histogram bounds are valid");
        DirectionStats { latency_ns, io_bytes: 0, ios: 0 }
    }

    pub fn record(&mut self, bytes: u32, latency_ns: u64) {
        self.latency_ns.saturating_record(latency_ns.max(1));
        self.io_bytes += u64::from(bytes);
        self.ios += 1;
    }

    pub fn clear(&mut self) {
        self.latency_ns.reset();
        self.io_bytes = 0;
        self.ios = 0;
    }

    pub fn merge(&mut self, other: &DirectionStats) {
        self.latency_ns.add(&other.latency_ns).expect("histograms share bounds");
        self.io_bytes += other.io_bytes;
        self.ios += other.ios;
    }
}

/// CPU and scheduling counters of one thread over a measured window.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadUsage {
    pub user: Duration,
    pub system: Duration,
    pub context_switches: u64,
    pub minor_faults: u64,
    pub major_faults: u64,
}

impl ThreadUsage {
    /// The calling thread's usage so far (`RUSAGE_THREAD`).
    pub fn now() -> ThreadUsage {
        // SAFETY: an all-zero rusage is a valid value of the plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes one rusage through the pointer, which points at `usage`.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        assert_eq!(rc, 0, "getrusage(RUSAGE_THREAD) cannot fail with valid arguments");
        let time = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        ThreadUsage {
            user: time(usage.ru_utime),
            system: time(usage.ru_stime),
            context_switches: (usage.ru_nvcsw + usage.ru_nivcsw) as u64,
            minor_faults: usage.ru_minflt as u64,
            major_faults: usage.ru_majflt as u64,
        }
    }

    /// What was used between `earlier` and `self`.
    pub fn since(self, earlier: ThreadUsage) -> ThreadUsage {
        ThreadUsage {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            context_switches: self.context_switches.saturating_sub(earlier.context_switches),
            minor_faults: self.minor_faults.saturating_sub(earlier.minor_faults),
            major_faults: self.major_faults.saturating_sub(earlier.major_faults),
        }
    }

    pub fn add(&mut self, other: ThreadUsage) {
        self.user += other.user;
        self.system += other.system;
        self.context_switches += other.context_switches;
        self.minor_faults += other.minor_faults;
        self.major_faults += other.major_faults;
    }
}

/// Everything one job (or a group of jobs, merged) measured.
#[derive(Debug, Clone)]
pub struct JobStats {
    pub name: String,
    pub jobs: u32,
    pub read: DirectionStats,
    pub write: DirectionStats,
    /// Wall time of the measured window (after ramp-up).
    pub runtime: Duration,
    pub usage: ThreadUsage,
    /// The first I/O error, with its errno when it has one.
    pub error: Option<(i32, String)>,
}

impl JobStats {
    pub fn new(name: &str) -> JobStats {
        JobStats {
            name: name.to_owned(),
            jobs: 1,
            read: DirectionStats::new(),
            write: DirectionStats::new(),
            runtime: Duration::ZERO,
            usage: ThreadUsage::default(),
            error: None,
        }
    }

    /// Folds another job into this one (fio's group_reporting): I/O and CPU add up, the
    /// runtime is the longest.
    pub fn merge(&mut self, other: &JobStats) {
        self.jobs += other.jobs;
        self.read.merge(&other.read);
        self.write.merge(&other.write);
        self.runtime = self.runtime.max(other.runtime);
        self.usage.add(other.usage);
        if self.error.is_none() {
            self.error.clone_from(&other.error);
        }
    }

    /// CPU time over wall time, in percent, as fio's `usr_cpu` and `sys_cpu`.
    pub fn cpu_percent(&self) -> (f64, f64) {
        let wall = self.runtime.as_secs_f64() * f64::from(self.jobs);
        if wall == 0.0 {
            return (0.0, 0.0);
        }
        let percent = |d: Duration| d.as_secs_f64() / wall * 100.0;
        (percent(self.usage.user), percent(self.usage.system))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_io_and_keeps_longest_runtime() {
        let mut a = JobStats::new("a");
        a.read.record(4096, 100);
        a.runtime = Duration::from_secs(2);
        let mut b = JobStats::new("b");
        b.read.record(4096, 300);
        b.write.record(8192, 50);
        b.runtime = Duration::from_secs(3);
        a.merge(&b);
        assert_eq!(a.jobs, 2);
        assert_eq!(a.read.ios, 2);
        assert_eq!(a.read.io_bytes, 8192);
        assert_eq!(a.write.io_bytes, 8192);
        assert_eq!(a.runtime, Duration::from_secs(3));
        assert_eq!(a.read.latency_ns.max(), 300);
    }

    #[test]
    fn thread_usage_grows_with_work() {
        // Spins until the thread's own CPU time shows 10 ms of work, or fails after 10 s of
        // wall time: on a loaded machine 30 ms of wall time gave as little as 4.5 ms of CPU.
        let before = ThreadUsage::now();
        let mut x = 0u64;
        let start = Instant::now();
        let mut used = ThreadUsage::now().since(before);
        while used.user + used.system < Duration::from_millis(10)
            && start.elapsed() < Duration::from_secs(10)
        {
            for _ in 0..100_000 {
                x = x.wrapping_mul(31).wrapping_add(1);
            }
            used = ThreadUsage::now().since(before);
        }
        std::hint::black_box(x);
        assert!(used.user + used.system >= Duration::from_millis(10), "{used:?}");
    }
}

/// A job's measured window: a ramp-up whose figures are dropped, then the run until its
/// runtime or its byte limit. One `turn` per loop turn, with that turn's clock reading.
#[derive(Debug)]
pub struct Window {
    ramp_end: Instant,
    end: Option<Instant>,
    io_limit_bytes: Option<u64>,
    measuring: bool,
    start: Instant,
    usage_start: ThreadUsage,
}

impl Window {
    pub fn new(ramp: Duration, runtime: Option<Duration>, io_limit_bytes: Option<u64>) -> Window {
        let start = Instant::now();
        let ramp_end = start + ramp;
        Window {
            ramp_end,
            end: runtime.map(|runtime| ramp_end + runtime),
            io_limit_bytes,
            measuring: ramp.is_zero(),
            start,
            usage_start: ThreadUsage::now(),
        }
    }

    /// Starts measuring when the ramp ends (dropping what `stats` gathered so far), and says
    /// whether the job is over: past its runtime or past its byte limit.
    pub fn turn(&mut self, now: Instant, issued_bytes: u64, stats: &mut JobStats) -> bool {
        if !self.measuring && now >= self.ramp_end {
            stats.read.clear();
            stats.write.clear();
            (self.measuring, self.start, self.usage_start) = (true, now, ThreadUsage::now());
        }
        let over_time = self.end.is_some_and(|end| now >= end);
        let over_size = self.io_limit_bytes.is_some_and(|limit| issued_bytes >= limit);
        over_time || over_size
    }

    /// Whether completions now count.
    pub fn measuring(&self) -> bool {
        self.measuring
    }

    /// Sets the job's runtime and CPU usage to the measured window's, ending `now`.
    pub fn finish(&self, now: Instant, stats: &mut JobStats) {
        stats.runtime = now.duration_since(self.start);
        stats.usage = ThreadUsage::now().since(self.usage_start);
    }
}
