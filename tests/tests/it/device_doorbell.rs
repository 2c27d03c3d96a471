//! The doorbell: a device with one attached sleeps in `submit_and_reap` until a completion or
//! a ring from another thread, and loses no completion to a ring.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use kiseki_devices::{
    BlockDevice, Doorbell, DoorbellRinger, IoUringDevice, Op, OpenOptions, Request,
};

use crate::support::{self, BLOCK_BYTES};

const DEVICE_BYTES: u64 = 1 << 20;

fn options() -> OpenOptions {
    support::options(DEVICE_BYTES, 4, 2, BLOCK_BYTES)
}

/// Runs `body` on a thread that opens its own device (devices stay on their thread) with a
/// doorbell attached, and returns the ringer to the caller once the device is ready.
fn with_device<D: BlockDevice + 'static>(
    open: fn(&OpenOptions) -> D,
    body: impl FnOnce(&mut D) + Send + 'static,
) -> (DoorbellRinger, DeviceThread) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut device = open(&options());
        let doorbell = Doorbell::new().expect("eventfd");
        ready_tx.send(doorbell.ringer()).unwrap();
        device.attach_doorbell(doorbell).expect("the backend takes a doorbell");
        body(&mut device);
        done_tx.send(()).unwrap();
    });
    (ready_rx.recv().expect("the device thread started"), DeviceThread { handle, done })
}

/// The device thread, joined with a watchdog so that a doorbell that never wakes fails the
/// test instead of hanging the run.
struct DeviceThread {
    handle: thread::JoinHandle<()>,
    done: mpsc::Receiver<()>,
}

impl DeviceThread {
    fn join(self) {
        match self.done.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => self.handle.join().expect("the device thread finished"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The body panicked: re-raise its message.
                if let Err(panic) = self.handle.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the device never woke up"),
        }
    }
}

fn sleeps_until_rung<D: BlockDevice + 'static>(open: fn(&OpenOptions) -> D) {
    let rung = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&rung);
    let (ringer, handle) = with_device(open, move |device| {
        let mut completions = Vec::new();
        let reaped = device.submit_and_reap(1, &mut completions).unwrap();
        assert_eq!(reaped, 0, "nothing was in flight");
        assert!(seen.load(Ordering::SeqCst), "returned before the doorbell rang");
    });
    thread::sleep(Duration::from_millis(100));
    rung.store(true, Ordering::SeqCst);
    ringer.ring();
    handle.join();
}

#[test]
fn idle_uring_sleeps_until_the_doorbell_rings() {
    sleeps_until_rung(support::open_uring);
}

#[test]
fn idle_memory_sleeps_until_the_doorbell_rings() {
    sleeps_until_rung(support::open_memory);
}

/// Rings before the wait coalesce into one wake-up; the next wait sleeps for a new ring.
#[test]
fn rings_coalesce_and_rearm() {
    let second = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&second);
    let (ringer, handle) = with_device(support::open_uring, move |device: &mut IoUringDevice| {
        let mut completions = Vec::new();
        device.submit_and_reap(1, &mut completions).unwrap();
        device.submit_and_reap(1, &mut completions).unwrap();
        assert!(seen.load(Ordering::SeqCst), "three early rings woke more than one wait");
    });
    for _ in 0..3 {
        ringer.ring();
    }
    thread::sleep(Duration::from_millis(100));
    second.store(true, Ordering::SeqCst);
    ringer.ring();
    handle.join();
}

/// A ring while a write is in flight wakes the reactor early, and the write still completes.
#[test]
fn a_ring_loses_no_completion() {
    let (ringer, handle) = with_device(support::open_uring, |device: &mut IoUringDevice| {
        let mut buf = device.acquire_buffer().unwrap();
        buf.as_mut_slice().fill(0x5a);
        device.push(Request { tag: 7, op: Op::Write { offset: 0, buf } }).unwrap();
        let mut completions = Vec::new();
        while completions.is_empty() {
            device.submit_and_reap(1, &mut completions).unwrap();
        }
        assert_eq!(completions.len(), 1);
        assert_eq!(completions[0].tag, 7);
        assert_eq!(completions[0].result.as_ref().unwrap(), &BLOCK_BYTES);
        assert_eq!(device.in_flight(), 0);
    });
    ringer.ring();
    handle.join();
}

#[test]
fn without_a_doorbell_an_idle_reap_returns_at_once() {
    let mut device = support::open_uring(&options());
    let mut completions = Vec::new();
    assert_eq!(device.submit_and_reap(1, &mut completions).unwrap(), 0);
    let mut memory = support::open_memory(&options());
    assert_eq!(memory.submit_and_reap(1, &mut completions).unwrap(), 0);
}

#[test]
fn a_second_doorbell_is_refused() {
    let mut device = support::open_uring(&options());
    device.attach_doorbell(Doorbell::new().unwrap()).unwrap();
    let second = device.attach_doorbell(Doorbell::new().unwrap());
    assert!(second.is_err(), "two doorbells on one ring");
}
