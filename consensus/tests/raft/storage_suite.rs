//! openraft's own conformance suite for log stores and state machines, run against our
//! redb store on the simulated disk.

use kiseki_consensus::sim::SimDisk;
use kiseki_consensus::store::{LogStore, StateMachineStore};
use kiseki_consensus::{GroupStore, ShardId, ShardMap, TypeConfig};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, ()> for Builder {
    async fn build(&self) -> Result<((), LogStore, StateMachineStore), StorageError<u64>> {
        let shards = ShardMap::new(1).expect("one shard");
        let store = GroupStore::open_backend(SimDisk::new().backend(), ShardId(0), shards)
            .expect("a fresh store");
        let (log, state_machine) = store.into_parts();
        Ok(((), log, state_machine))
    }
}

#[test]
fn our_store_passes_openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft's storage suite");
}
