//! Simulated I/O for tests: a disk that loses unsynced writes on a simulated crash, and a
//! network that drops, delays, reorders and partitions Raft RPCs, both driven by a seed.
//!
//! They live in the library (not under `tests/`) so the workspace's integration tests and
//! the benchmark can build clusters on them too.

mod disk;
mod network;
pub mod rng;

pub use disk::{KeepChange, SimBackend, SimDisk};
pub use network::{NetworkFaults, NetworkStats, SimConnection, SimNetwork, SimNetworkFactory};
pub use rng::SimRng;
