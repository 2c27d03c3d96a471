//! Pinning the calling thread to a core: a device's ring, buffers and owner stay on one
//! core (thread-per-core); the engine's reactors and the benchmark's jobs pin themselves.

/// Pins the calling thread to the `index`-th core it may run on (wrapping). Returns the
/// core, or `None` when the affinity could not be read or set (the thread runs unpinned).
pub fn pin_current_thread(index: usize) -> Option<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = size_of::<libc::cpu_set_t>();
    // SAFETY: sched_getaffinity writes at most `size` bytes into `allowed`.
    if unsafe { libc::sched_getaffinity(0, size, &mut allowed) } != 0 {
        return None;
    }
    // SAFETY: CPU_ISSET reads one bit of a valid cpu_set_t, at an index below CPU_SETSIZE.
    let allowed_cores = (0..libc::CPU_SETSIZE as usize)
        .filter(|&core| unsafe { libc::CPU_ISSET(core, &allowed) })
        .collect::<Vec<_>>();
    let core = *allowed_cores.get(index % allowed_cores.len().max(1))?;
    // SAFETY: as above, an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core` < CPU_SETSIZE, so CPU_SET writes inside `set`.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: sched_setaffinity reads `size` bytes from `set`, a valid cpu_set_t.
    let pinned = unsafe { libc::sched_setaffinity(0, size, &set) } == 0;
    pinned.then_some(core)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pinned_thread_runs_on_its_core() {
        let handle = std::thread::spawn(|| {
            let core = super::pin_current_thread(1).expect("pinning works on Linux");
            std::thread::yield_now();
            // SAFETY: sched_getcpu takes nothing and returns the current CPU or -1.
            let running_on = unsafe { libc::sched_getcpu() };
            (core, running_on)
        });
        let (core, running_on) = handle.join().unwrap();
        assert_eq!(running_on, core as i32, "the thread runs where it was pinned");
    }
}
