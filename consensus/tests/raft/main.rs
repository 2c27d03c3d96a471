//! The consensus crate's integration tests, one binary: groups on real files, and groups
//! on the simulated disk and network under seeded faults.

mod cluster;
mod fabric_mtls;
mod groups;
mod keystore;
mod rpc;
mod simulation;
mod storage_suite;
