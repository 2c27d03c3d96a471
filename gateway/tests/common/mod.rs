//! What the gateway's integration tests build the same way: an engine shard on a memory
//! device and a key manager on a memory store (both with no locked or non-dumpable memory
//! asked of the test process).

use std::sync::Arc;

use kiseki_devices::{MemoryDevice, OpenOptions as DeviceOptions};
use kiseki_engine::{DeviceIds, EngineError, FormatOptions, OpenOptions, Shard};
use kiseki_security::keymanager::{
    KeyManager, KeyManagerConfig, LocalRootKey, MemoryKeyStore, MemoryLocking, SystemClock,
};
use zeroize::Zeroizing;

const IDS: DeviceIds = DeviceIds { cluster_id: [1; 16], node_id: [2; 16], device_id: [3; 16] };

/// A formatted shard on a memory device of `size_bytes` with `buffer_count` I/O buffers of
/// `buffer_size_bytes`.
pub fn memory_shard(
    size_bytes: u64,
    buffer_count: u32,
    buffer_size_bytes: u32,
) -> Result<Shard<MemoryDevice>, EngineError> {
    let options = DeviceOptions {
        queue_depth: 64,
        buffer_count,
        buffer_size_bytes,
        ..DeviceOptions::default()
    };
    let mut device = MemoryDevice::new(size_bytes, &options).unwrap();
    let format = FormatOptions { ids: IDS, region_offset_bytes: 0, region_size_bytes: None };
    Shard::format(&mut device, &format)?;
    Shard::open(device, &OpenOptions::default())
}

/// A key manager whose root key is 32 bytes of `seed`, its cluster not yet initialized.
pub fn key_manager(seed: u8) -> KeyManager<MemoryKeyStore> {
    let root =
        LocalRootKey::from_bytes("test", &Zeroizing::new([seed; 32]), MemoryLocking::BestEffort)
            .unwrap();
    let mut config = KeyManagerConfig::default();
    config.memory_locking = MemoryLocking::BestEffort;
    config.non_dumpable = false;
    KeyManager::new(Box::new(root), MemoryKeyStore::new(), config, Arc::new(SystemClock)).unwrap()
}
