//! The device state machine as a shard drives it: an integrity error degrades the device, a
//! failed write fails it, an evacuating device takes no new chunks but serves reads and
//! releases, and every change is recorded with its reason.

use kiseki_devices::{FaultPlan, FaultyDevice, MemoryDevice, OpenOptions as DeviceOptions};
use kiseki_engine::{
    Ack, DeviceIds, DeviceState, EngineError, FormatOptions, OpenOptions, Outcome, Shard,
};

type SimDevice = FaultyDevice<MemoryDevice>;

const IDS: DeviceIds =
    DeviceIds { cluster_id: [0xC1; 16], node_id: [0x11; 16], device_id: [0xD1; 16] };

fn shard_with(key: u8) -> Shard<SimDevice> {
    let options = DeviceOptions {
        queue_depth: 16,
        buffer_count: 8,
        buffer_size_bytes: 64 << 10,
        ..DeviceOptions::default()
    };
    let memory = MemoryDevice::new(8 << 20, &options).unwrap();
    let mut device = FaultyDevice::new(memory, FaultPlan { seed: 7, ..FaultPlan::default() });
    let format = FormatOptions { ids: IDS, region_offset_bytes: 0, region_size_bytes: None };
    Shard::format(&mut device, &format).unwrap();
    let mut shard = Shard::open(device, &OpenOptions::default()).unwrap();
    shard.put(id(key), &[key; 5000]).unwrap();
    let acks = finish(&mut shard);
    assert!(matches!(acks[0].outcome, Outcome::Put(Ok(()))));
    shard
}

fn id(key: u8) -> [u8; 32] {
    [key; 32]
}

fn finish(shard: &mut Shard<SimDevice>) -> Vec<Ack> {
    let mut acks = Vec::new();
    shard.run_until_idle(&mut acks).unwrap();
    acks
}

fn get(shard: &mut Shard<SimDevice>, key: u8) -> Result<Vec<u8>, EngineError> {
    shard.get(id(key))?;
    match finish(shard).pop().map(|ack| ack.outcome) {
        Some(Outcome::Get(result)) => result,
        other => panic!("expected a get's ack, got {other:?}"),
    }
}

#[test]
fn an_integrity_error_degrades_the_device() {
    let mut shard = shard_with(1);
    assert_eq!(shard.device_state(), DeviceState::Healthy);
    shard.device_mut().plan_mut().flip_bit_per_million_reads = 1_000_000;
    assert!(matches!(get(&mut shard, 1), Err(EngineError::Integrity { .. })));
    assert_eq!(shard.device_state(), DeviceState::Degraded);
    assert_eq!(shard.stats().device_state, DeviceState::Degraded);
    let change = shard.device_state_history().last().unwrap();
    assert_eq!((change.from, change.to), (DeviceState::Healthy, DeviceState::Degraded));
    assert!(change.reason.contains("checksum"), "{}", change.reason);
    // A degraded device still takes chunks; a repair brings it back to healthy.
    shard.device_mut().plan_mut().flip_bit_per_million_reads = 0;
    shard.put(id(2), &[2; 100]).unwrap();
    finish(&mut shard);
    shard.change_device_state(DeviceState::Healthy, "repaired from a replica").unwrap();
    assert_eq!(get(&mut shard, 2).unwrap(), vec![2; 100]);
}

#[test]
fn a_failed_write_fails_the_device() {
    let mut shard = shard_with(1);
    let next = shard.device().requests_pushed() + 1;
    shard.device_mut().plan_mut().fail_request_number = Some(next);
    shard.put(id(2), &[2; 100]).unwrap();
    let acks = finish(&mut shard);
    assert!(matches!(acks[0].outcome, Outcome::Put(Err(_))), "{acks:?}");
    assert_eq!(shard.device_state(), DeviceState::Failed);
    let change = shard.device_state_history().last().unwrap();
    assert!(change.reason.contains("write failed"), "{}", change.reason);
    // Reads go on; a failed device can only be removed.
    assert_eq!(get(&mut shard, 1).unwrap(), vec![1; 5000]);
    let back = shard.change_device_state(DeviceState::Healthy, "wishful");
    assert!(matches!(back, Err(EngineError::DeviceStateChange { .. })));
    shard.change_device_state(DeviceState::Removed, "replaced").unwrap();
}

#[test]
fn an_evacuating_device_takes_no_new_chunks_but_serves_and_releases() {
    let mut shard = shard_with(1);
    shard.change_device_state(DeviceState::Evacuating, "operator drains it").unwrap();
    let refused = shard.put(id(3), &[3; 100]).unwrap_err();
    assert!(
        matches!(refused, EngineError::DeviceNotWritable { state: DeviceState::Evacuating, .. }),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("evacuating"), "{refused}");
    assert_eq!(get(&mut shard, 1).unwrap(), vec![1; 5000]);
    shard.release(id(1)).unwrap();
    let acks = finish(&mut shard);
    assert!(matches!(acks[0].outcome, Outcome::Release(Ok(()))));
    assert!(!shard.contains(&id(1)));
    shard.change_device_state(DeviceState::Removed, "empty").unwrap();
    let history: Vec<_> = shard.device_state_history().map(|t| t.to).collect();
    assert_eq!(history, [DeviceState::Evacuating, DeviceState::Removed]);
}

#[test]
fn a_healthy_device_cannot_skip_evacuation() {
    let mut shard = shard_with(1);
    let skipped = shard.change_device_state(DeviceState::Removed, "pulled");
    assert!(matches!(skipped, Err(EngineError::DeviceStateChange { .. })));
    assert_eq!(shard.device_state(), DeviceState::Healthy);
    assert_eq!(shard.device_state_history().count(), 0);
}
