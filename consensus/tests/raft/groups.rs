//! Groups doing their job: recovery from a file, snapshots and purge, refused commands,
//! multipart, the inline guard, leadership, membership changes, and lost unsynced writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kiseki_consensus::command::{
    ChunkId, ChunkRef, Command, ETag, KeyScope, Manifest, ObjectBody, Part, PutCondition, RefDelta,
    Sealed, UploadId,
};
use kiseki_consensus::guard::{Budget, GuardLimits};
use kiseki_consensus::sim::SimNetwork;
use kiseki_consensus::{
    Applied, ConsensusError, GroupConfig, GroupStore, MetadataGroup, Rejection, ShardId, ShardMap,
};
use openraft::BasicNode;

use crate::cluster::{
    SimCluster, audit, create_bucket, create_tenant, object_key, put_object, sim_config, tenant,
};

pub(crate) fn one_shard() -> ShardMap {
    ShardMap::new(1).expect("one shard")
}

/// A single-node group on a file under `dir`.
pub(crate) async fn file_group(dir: &std::path::Path, config: GroupConfig) -> MetadataGroup {
    let store = GroupStore::open_file(&dir.join("shard-0.redb"), config.shard, config.shards)
        .expect("open the store file");
    let network = SimNetwork::new(0).factory(config.shard, config.node_id);
    let group = MetadataGroup::start(config, store, network).await.expect("start");
    let members = BTreeMap::from([(1, BasicNode::new("node-1"))]);
    group.initialize(members).await.expect("initialize");
    wait_until_leader(&group).await;
    group
}

async fn wait_until_leader(group: &MetadataGroup) {
    let mut metrics = group.raft().metrics();
    tokio::time::timeout(Duration::from_secs(10), async {
        while metrics.borrow_and_update().current_leader != Some(group.node_id()) {
            metrics.changed().await.expect("metrics");
        }
    })
    .await
    .expect("a single node elects itself");
}

fn rejection(outcome: Result<Applied, ConsensusError>) -> Rejection {
    match outcome {
        Err(ConsensusError::Rejected(rejection)) => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Each tenant's bucket for inline puts (bucket names are one namespace).
fn inline_bucket(tenant_n: u8) -> String {
    format!("inline-{tenant_n}")
}

fn inline_put(tenant_n: u8, key: u64, bytes: usize) -> Command {
    Command::PutObject {
        tenant: tenant(tenant_n),
        bucket: inline_bucket(tenant_n),
        key: object_key(key),
        manifest: Manifest {
            size_bytes: 1,
            body: ObjectBody::Inline(Sealed(vec![7; bytes])),
            sealed_user_metadata: Sealed::default(),
            etag: ETag([0; 16]),
        },
    }
}

#[tokio::test]
async fn a_file_backed_group_recovers_its_state_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = GroupConfig::new(1, ShardId(0), one_shard());
    let group = file_group(dir.path(), config.clone()).await;
    let owner = tenant(1);
    group.propose(create_tenant(owner)).await.expect("tenant");
    group.propose(create_bucket(owner, "photos")).await.expect("bucket");
    for n in 0..10 {
        group.propose(put_object(owner, "photos", n)).await.expect("put");
    }
    let sequence = group.propose(audit(42)).await.expect("audit");
    assert_eq!(sequence, Applied::AuditSequence(1));
    group.shutdown().await.expect("shutdown");
    drop(group);

    let group = file_group(dir.path(), config).await;
    let view = group.read().await.expect("linearizable read");
    assert!(view.tenant(&owner).expect("read").is_some());
    assert!(view.bucket_exists(&owner, "photos").expect("read"));
    for n in 0..10 {
        let manifest =
            view.object(&owner, "photos", &object_key(n)).expect("read").expect("object");
        assert_eq!(manifest.sealed_user_metadata.0, n.to_le_bytes());
    }
    assert_eq!(
        view.audit_record(1).expect("read").map(|r| r.sealed_record.0),
        Some(42u64.to_le_bytes().to_vec())
    );
    assert_eq!(
        group.propose(audit(43)).await.expect("audit"),
        Applied::AuditSequence(2),
        "numbering resumes"
    );
    group.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn snapshots_compact_the_log_and_a_restart_resumes_from_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = GroupConfig::new(1, ShardId(0), one_shard());
    config.snapshot_logs_since_last = 10;
    config.log_kept_behind_snapshot = 2;
    let group = file_group(dir.path(), config.clone()).await;
    let owner = tenant(2);
    group.propose(create_tenant(owner)).await.expect("tenant");
    group.propose(create_bucket(owner, "logs")).await.expect("bucket");
    // One at a time, so each is its own log entry.
    for n in 0..40 {
        group.propose(put_object(owner, "logs", n)).await.expect("put");
    }
    let mut metrics = group.raft().metrics();
    tokio::time::timeout(Duration::from_secs(10), async {
        while metrics.borrow_and_update().purged.is_none() {
            metrics.changed().await.expect("metrics");
        }
    })
    .await
    .expect("the log is purged behind a snapshot");
    let snapshot = group.raft().metrics().borrow().snapshot.expect("a snapshot was built");
    assert!(snapshot.index >= 30, "snapshot at {}", snapshot.index);
    group.shutdown().await.expect("shutdown");
    drop(group);

    let group = file_group(dir.path(), config).await;
    let view = group.read().await.expect("read");
    for n in 0..40 {
        assert!(view.object(&owner, "logs", &object_key(n)).expect("read").is_some(), "object {n}");
    }
    group.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_refused_command_changes_nothing() {
    let cluster = SimCluster::start(1, 1, ShardId(0), one_shard()).await;
    cluster.initialize().await;
    cluster.wait_for_leader(Duration::from_secs(5)).await.expect("leader");
    let owner = tenant(3);
    cluster.propose(create_tenant(owner)).await.expect("tenant");
    cluster.propose(create_bucket(owner, "full")).await.expect("bucket");
    cluster.propose(put_object(owner, "full", 1)).await.expect("put");
    let chunk = |n: u8| ChunkId([n; 32]);
    let deltas = vec![RefDelta { chunk: chunk(1), delta: 2 }];
    cluster.propose(Command::AdjustChunkRefs { deltas }).await.expect("refs");
    let before = cluster.rows();

    let refused = [
        (create_tenant(owner), "already exists"),
        (Command::DeleteBucket { tenant: owner, bucket: "full".into() }, "not empty"),
        (Command::DeleteTenant { tenant: owner }, "has buckets"),
        (create_bucket(tenant(9), "orphan"), "no such tenant"),
        (
            Command::AdjustChunkRefs {
                deltas: vec![
                    RefDelta { chunk: chunk(2), delta: 5 },
                    RefDelta { chunk: chunk(1), delta: -3 },
                ],
            },
            "all or nothing",
        ),
        (
            Command::AdvanceKeyEpoch {
                scope: KeyScope::System,
                epoch: 2,
                sealed_key: Sealed(vec![1]),
            },
            "skips epoch 1",
        ),
        (
            Command::DeleteObject { tenant: owner, bucket: "full".into(), key: b"absent".to_vec() },
            "absent",
        ),
        (create_bucket(owner, "Bad_Name"), "bad name"),
    ];
    for (command, why) in refused {
        let outcome = cluster.propose(command).await;
        assert!(matches!(outcome, Err(ConsensusError::Rejected(_))), "{why}: {outcome:?}");
    }
    assert_eq!(cluster.rows(), before, "refused commands left every row as it was");
    let view = cluster.group(1).read().await.expect("read");
    assert_eq!(view.chunk_refs(&chunk(1)).expect("read"), 2);
    assert_eq!(view.chunk_refs(&chunk(2)).expect("read"), 0);
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn racing_commands_are_refused_where_they_are_applied() {
    let cluster = SimCluster::start(2, 3, ShardId(0), one_shard()).await;
    cluster.initialize().await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await.expect("leader");
    let owner = tenant(4);
    cluster.propose(create_tenant(owner)).await.expect("tenant");
    // Both pass the leader's check before either is applied; the second is refused when
    // applied, on every node alike.
    let group = cluster.group(leader);
    let (first, second) = tokio::join!(
        group.propose(create_bucket(owner, "race")),
        group.propose(create_bucket(owner, "race"))
    );
    let outcomes = [first, second];
    assert_eq!(
        outcomes.iter().filter(|o| matches!(o, Ok(Applied::Done))).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(ConsensusError::Rejected(Rejection::AlreadyExists(_)))))
    );
    // Two epochs racing for the same number: one wins.
    let epoch = |key: u8| Command::AdvanceKeyEpoch {
        scope: KeyScope::Tenant(owner),
        epoch: 1,
        sealed_key: Sealed(vec![key]),
    };
    let (a, b) = tokio::join!(group.propose(epoch(1)), group.propose(epoch(2)));
    assert_eq!([&a, &b].iter().filter(|o| o.is_ok()).count(), 1, "{a:?} {b:?}");
    cluster.wait_converged(Duration::from_secs(5)).await.expect("converged");
    let rows = cluster.rows();
    assert!(rows.values().all(|r| r == &rows[&leader]), "every node refused the same command");
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_multipart_upload_completes_into_one_manifest() {
    let cluster = SimCluster::start(3, 1, ShardId(0), one_shard()).await;
    cluster.initialize().await;
    cluster.wait_for_leader(Duration::from_secs(5)).await.expect("leader");
    let owner = tenant(5);
    let upload = UploadId([8; 16]);
    cluster.propose(create_tenant(owner)).await.expect("tenant");
    cluster.propose(create_bucket(owner, "big")).await.expect("bucket");
    let create = Command::CreateUpload {
        tenant: owner,
        bucket: "big".into(),
        key: b"movie".to_vec(),
        upload,
        sealed_user_metadata: Sealed(vec![9]),
    };
    cluster.propose(create).await.expect("create upload");
    let part = |n: u8| Part {
        chunks: vec![
            ChunkRef { id: ChunkId([n; 32]), size_bytes: 10 },
            ChunkRef { id: ChunkId([n + 100; 32]), size_bytes: 5 },
        ],
        size_bytes: 15,
        etag: ETag([n; 16]),
    };
    for n in [1u8, 2, 3] {
        let put = Command::PutPart { tenant: owner, upload, number: u16::from(n), part: part(n) };
        assert_eq!(cluster.propose(put).await.expect("part"), Applied::Done);
    }
    // Replacing a part hands back the chunks of the one it replaced.
    let put = Command::PutPart { tenant: owner, upload, number: 3, part: part(3) };
    assert_eq!(cluster.propose(put).await.expect("part"), Applied::Released(part(3).chunks));
    let view = cluster.group(1).read().await.expect("read");
    let listed: Vec<u16> =
        view.parts(&owner, &upload, 1, 10).expect("parts").iter().map(|(n, _)| *n).collect();
    assert_eq!(listed, vec![2, 3], "parts above 1, in order");
    assert_eq!(view.uploads(&owner).expect("uploads").len(), 1);
    drop(view);
    let busy = cluster.propose(Command::DeleteBucket { tenant: owner, bucket: "big".into() }).await;
    assert!(matches!(rejection(busy), Rejection::Conflict(_)), "an open upload keeps the bucket");
    let wrong_etag = Command::CompleteUpload {
        tenant: owner,
        upload,
        parts: vec![(1, ETag([1; 16])), (3, ETag([9; 16]))],
        etag: ETag([0xee; 16]),
    };
    assert!(matches!(rejection(cluster.propose(wrong_etag).await), Rejection::Conflict(_)));
    let complete = Command::CompleteUpload {
        tenant: owner,
        upload,
        parts: vec![(1, ETag([1; 16])), (3, ETag([3; 16]))],
        etag: ETag([0xee; 16]),
    };
    let released = cluster.propose(complete).await.expect("complete");
    assert_eq!(released, Applied::Released(part(2).chunks), "the part left out is released");
    let view = cluster.group(1).read().await.expect("read");
    let manifest = view.object(&owner, "big", b"movie").expect("read").expect("object");
    assert_eq!(manifest.size_bytes, 30, "parts 1 and 3 only");
    let ObjectBody::Chunks(chunks) = manifest.body else { panic!("a chunked object") };
    let ids: Vec<u8> = chunks.iter().map(|chunk| chunk.id.0[0]).collect();
    assert_eq!(ids, vec![1, 101, 3, 103], "chunks in part order");
    assert_eq!(manifest.sealed_user_metadata, Sealed(vec![9]));
    assert!(view.upload(&owner, &upload).expect("read").is_none(), "the upload is gone");
    assert!(view.part(&owner, &upload, 2).expect("read").is_none(), "unused parts are dropped");
    drop(view);

    // A second upload to the same key: completing it releases the object it replaces, with
    // the metadata given at completion; aborting a third releases every part.
    let second = UploadId([9; 16]);
    let create = |upload| Command::CreateUpload {
        tenant: owner,
        bucket: "big".into(),
        key: b"movie".to_vec(),
        upload,
        sealed_user_metadata: Sealed(vec![9]),
    };
    cluster.propose(create(second)).await.expect("create upload");
    let put = Command::PutPart { tenant: owner, upload: second, number: 1, part: part(7) };
    cluster.propose(put).await.expect("part");
    let complete = Command::CompleteUploadAs {
        tenant: owner,
        upload: second,
        parts: vec![(1, ETag([7; 16]))],
        etag: ETag([0xdd; 16]),
        sealed_user_metadata: Sealed(vec![42]),
    };
    let mut replaced = part(1).chunks;
    replaced.extend(part(3).chunks);
    assert_eq!(cluster.propose(complete).await.expect("complete"), Applied::Released(replaced));
    let view = cluster.group(1).read().await.expect("read");
    let manifest = view.object(&owner, "big", b"movie").expect("read").expect("object");
    assert_eq!(manifest.sealed_user_metadata, Sealed(vec![42]));
    assert_eq!(manifest.etag, ETag([0xdd; 16]));
    drop(view);
    let third = UploadId([10; 16]);
    cluster.propose(create(third)).await.expect("create upload");
    for n in [4u8, 5] {
        let put =
            Command::PutPart { tenant: owner, upload: third, number: u16::from(n), part: part(n) };
        cluster.propose(put).await.expect("part");
    }
    // An upload holds at most one manifest's worth of chunks; replacing a part counts its
    // chunks once.
    let many = |count: usize| Part {
        chunks: vec![ChunkRef { id: ChunkId([77; 32]), size_bytes: 1 }; count],
        size_bytes: count as u64,
        etag: ETag([77; 16]),
    };
    let over = Command::PutPart { tenant: owner, upload: third, number: 6, part: many(16_381) };
    assert!(matches!(rejection(cluster.propose(over).await), Rejection::TooLarge { .. }));
    let fits = Command::PutPart { tenant: owner, upload: third, number: 4, part: many(16_382) };
    assert_eq!(cluster.propose(fits).await.expect("part"), Applied::Released(part(4).chunks));
    let listed = cluster.group(1).read().await.expect("read");
    let numbers: Vec<u16> =
        listed.parts(&owner, &third, 0, 10).expect("parts").iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, vec![4, 5], "the count row is not a part");
    drop(listed);
    let abort = Command::AbortUpload { tenant: owner, upload: third };
    let mut dropped = many(16_382).chunks;
    dropped.extend(part(5).chunks);
    assert_eq!(cluster.propose(abort).await.expect("abort"), Applied::Released(dropped));
    let gone = Command::PutPart { tenant: owner, upload: third, number: 1, part: part(1) };
    assert!(matches!(rejection(cluster.propose(gone).await), Rejection::NotFound(_)));
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_conditional_put_checks_its_condition_where_it_is_applied() {
    let cluster = SimCluster::start(3, 1, ShardId(0), one_shard()).await;
    cluster.initialize().await;
    cluster.wait_for_leader(Duration::from_secs(5)).await.expect("leader");
    let owner = tenant(6);
    cluster.propose(create_tenant(owner)).await.expect("tenant");
    cluster.propose(create_bucket(owner, "cond")).await.expect("bucket");
    let Command::PutObject { manifest, .. } = put_object(owner, "cond", 1) else { unreachable!() };
    let put_if = |condition, etag: u8| Command::PutObjectIf {
        tenant: owner,
        bucket: "cond".into(),
        key: b"k".to_vec(),
        manifest: Manifest { etag: ETag([etag; 16]), ..manifest.clone() },
        condition,
    };
    for needs_object in [PutCondition::Present, PutCondition::ETagIs(ETag([1; 16]))] {
        let refused = cluster.propose(put_if(needs_object, 1)).await;
        assert_eq!(rejection(refused), Rejection::NotFound("object".into()), "no object yet");
    }
    assert_eq!(cluster.propose(put_if(PutCondition::Absent, 1)).await.expect("put"), Applied::Done);
    let refused = cluster.propose(put_if(PutCondition::Absent, 2)).await;
    assert_eq!(
        rejection(refused),
        Rejection::Conflict(kiseki_consensus::PRECONDITION_FAILED.into()),
        "the key exists"
    );
    let refused = cluster.propose(put_if(PutCondition::ETagIs(ETag([9; 16])), 2)).await;
    assert!(matches!(rejection(refused), Rejection::Conflict(_)), "another ETag");
    let replaced = cluster.propose(put_if(PutCondition::ETagIs(ETag([1; 16])), 2)).await;
    assert!(matches!(replaced, Ok(Applied::Replaced(_))), "{replaced:?}");
    let replaced = cluster.propose(put_if(PutCondition::Present, 3)).await;
    assert!(matches!(replaced, Ok(Applied::Replaced(_))), "{replaced:?}");
    let replaced = cluster.propose(put_if(PutCondition::ETagIs(ETag([3; 16])), 2)).await;
    assert!(matches!(replaced, Ok(Applied::Replaced(_))), "{replaced:?}");
    let view = cluster.group(1).read().await.expect("read");
    let manifest = view.object(&owner, "cond", b"k").expect("read").expect("object");
    assert_eq!(manifest.etag, ETag([2; 16]));
    drop(view);
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn one_tenant_cannot_flood_a_shard_with_inline_data() {
    let network = SimNetwork::new(4);
    let mut config = sim_config(1, ShardId(0), one_shard());
    config.inline_limits = GuardLimits {
        per_tenant: Budget { bytes_per_second: 4096, burst_bytes: 8192 },
        per_shard: Budget { bytes_per_second: 1 << 20, burst_bytes: 1 << 20 },
    };
    let store = GroupStore::open_backend(
        kiseki_consensus::sim::SimDisk::new().backend(),
        ShardId(0),
        one_shard(),
    )
    .expect("store");
    let group =
        MetadataGroup::start(config, store, network.factory(ShardId(0), 1)).await.expect("start");
    network.register(ShardId(0), 1, group.raft().clone());
    group.initialize(BTreeMap::from([(1, BasicNode::new("node-1"))])).await.expect("init");
    wait_until_leader(&group).await;
    for n in [1u8, 2] {
        group.propose(create_tenant(tenant(n))).await.expect("tenant");
        group.propose(create_bucket(tenant(n), &inline_bucket(n))).await.expect("bucket");
    }
    let mut admitted = 0;
    let throttled = loop {
        match group.propose(inline_put(1, admitted, 4096)).await {
            Ok(_) => admitted += 1,
            Err(ConsensusError::Throttled { retry_after }) => break retry_after,
            Err(other) => panic!("unexpected {other}"),
        }
        assert!(admitted < 10, "the flood was never throttled");
    };
    assert_eq!(admitted, 2, "the burst holds two 4 KiB objects");
    // 4 KiB at 4 KiB/s: one second (and the microsecond the guard rounds up).
    assert!(throttled > Duration::from_millis(900) && throttled <= Duration::from_millis(1001));
    group.propose(inline_put(2, 0, 4096)).await.expect("another tenant still gets through");
    tokio::time::sleep(throttled).await;
    group.propose(inline_put(1, 99, 4096)).await.expect("the flooder again, after the wait");
    group.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn followers_send_callers_to_the_leader() {
    let cluster = SimCluster::start(5, 3, ShardId(0), one_shard()).await;
    cluster.initialize().await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await.expect("leader");
    cluster.propose(create_tenant(tenant(6))).await.expect("tenant");
    cluster.wait_converged(Duration::from_secs(5)).await.expect("converged");
    let follower = *cluster.up().iter().find(|id| **id != leader).expect("a follower");
    let outcome = cluster.group(follower).propose(create_tenant(tenant(7))).await;
    assert!(
        matches!(outcome, Err(ConsensusError::NotLeader { leader: Some(l) }) if l == leader),
        "{outcome:?}"
    );
    let read = cluster.group(follower).read().await;
    assert!(
        matches!(read, Err(ConsensusError::NotLeader { leader: Some(l) }) if l == leader),
        "{read:?}"
    );
    // A stale read on the follower still sees what was committed before.
    assert!(
        cluster
            .group(follower)
            .local_view()
            .expect("view")
            .tenant(&tenant(6))
            .expect("read")
            .is_some()
    );
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn commands_for_another_shard_are_refused() {
    let shards = ShardMap::new(4).expect("4 shards");
    let cluster = SimCluster::start(6, 1, ShardId(0), shards).await;
    cluster.initialize().await;
    cluster.wait_for_leader(Duration::from_secs(5)).await.expect("leader");
    let elsewhere = (1..=255u8)
        .map(tenant)
        .find(|t| shards.shard_of(kiseki_consensus::ShardKey::Tenant(*t)) != ShardId(0))
        .expect("some tenant lives in another shard");
    let here = (1..=255u8)
        .map(tenant)
        .find(|t| shards.shard_of(kiseki_consensus::ShardKey::Tenant(*t)) == ShardId(0))
        .expect("some tenant lives in shard 0");
    assert_eq!(rejection(cluster.propose(create_tenant(elsewhere)).await), Rejection::WrongShard);
    cluster.propose(create_tenant(here)).await.expect("a tenant of this shard");
    cluster.propose(audit(1)).await.expect("system records live in shard 0");
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn membership_grows_and_shrinks_while_writes_go_on() {
    let mut cluster = SimCluster::start(7, 3, ShardId(0), one_shard()).await;
    cluster.initialize().await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await.expect("leader");
    let owner = tenant(8);
    cluster.propose(create_tenant(owner)).await.expect("tenant");
    cluster.propose(create_bucket(owner, "grow")).await.expect("bucket");
    for n in 0..30 {
        cluster.propose(put_object(owner, "grow", n)).await.expect("put");
    }
    cluster.add_node(4).await;
    let group = cluster.group(leader);
    group.add_learner(4, BasicNode::new("node-4")).await.expect("add learner");
    group.promote(BTreeSet::from([4])).await.expect("promote");
    let removed = *cluster.up().iter().find(|id| **id != leader && **id != 4).expect("a follower");
    group.remove(BTreeSet::from([removed])).await.expect("remove");
    let membership = group.raft().metrics().borrow().membership_config.clone();
    let voters: BTreeSet<u64> = membership.membership().voter_ids().collect();
    let expected: BTreeSet<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != removed).collect();
    assert_eq!(voters, expected);
    for n in 30..40 {
        cluster.propose(put_object(owner, "grow", n)).await.expect("put after the change");
    }
    let leader = cluster.leader().expect("leader");
    let new_node = cluster.group(4);
    let mut metrics = new_node.raft().metrics();
    let target = cluster.group(leader).raft().metrics().borrow().last_log_index;
    tokio::time::timeout(Duration::from_secs(10), async {
        while metrics.borrow_and_update().last_applied.map(|l| l.index) < target {
            metrics.changed().await.expect("metrics");
        }
    })
    .await
    .expect("the new node catches up");
    let view = new_node.local_view().expect("view");
    for n in 0..40 {
        assert!(
            view.object(&owner, "grow", &object_key(n)).expect("read").is_some(),
            "object {n} on node 4"
        );
    }
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_node_cut_off_past_a_purge_catches_up_by_snapshot() {
    let cluster = SimCluster::start(8, 3, ShardId(0), one_shard()).await;
    cluster.initialize().await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await.expect("leader");
    let owner = tenant(9);
    cluster.propose(create_tenant(owner)).await.expect("tenant");
    cluster.propose(create_bucket(owner, "lag")).await.expect("bucket");
    let lagging = *cluster.up().iter().find(|id| **id != leader).expect("a follower");
    cluster.network.isolate(lagging);
    for n in 0..60 {
        cluster.propose(put_object(owner, "lag", n)).await.expect("put");
    }
    // The leader purges once no replication has the range in flight; the retries to the
    // cut-off node back off, so keep writing across a few of its backoffs.
    let mut n = 60;
    let purged = loop {
        let purged = cluster.group(leader).raft().metrics().borrow().purged;
        if purged.is_some_and(|p| p.index > 10) || n > 120 {
            break purged;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        cluster.propose(put_object(owner, "lag", n)).await.expect("put");
        n += 1;
    };
    assert!(purged.is_some_and(|p| p.index > 10), "the leader purged its log: {purged:?}");
    cluster.network.heal();
    cluster.wait_converged(Duration::from_secs(30)).await.expect("converged");
    let metrics = cluster.group(lagging).raft().metrics().borrow().clone();
    assert!(metrics.snapshot.is_some(), "the lagging node holds a snapshot");
    let rows = cluster.rows();
    assert_eq!(rows[&lagging], rows[&leader], "the installed snapshot matches the leader");
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_that_loses_unsynced_writes_keeps_every_acknowledged_one() {
    let mut cluster = SimCluster::start(9, 1, ShardId(0), one_shard()).await;
    cluster.initialize().await;
    cluster.wait_for_leader(Duration::from_secs(5)).await.expect("leader");
    let owner = tenant(10);
    cluster.propose(create_tenant(owner)).await.expect("tenant");
    cluster.propose(create_bucket(owner, "crash")).await.expect("bucket");
    for round in 0..3u64 {
        for n in 0..15 {
            cluster.propose(put_object(owner, "crash", round * 100 + n)).await.expect("put");
        }
        // The state machine's commits since the last fsync'd append are lost with the
        // crashed process (redb keeps non-durable commits in its cache); the log replays them.
        cluster.crash(1, |_| false).await;
        cluster.restart(1).await;
        cluster.wait_for_leader(Duration::from_secs(5)).await.expect("leader after restart");
        let view = cluster.group(1).read().await.expect("read");
        for earlier in 0..=round {
            for n in 0..15 {
                let key = object_key(earlier * 100 + n);
                assert!(
                    view.object(&owner, "crash", &key).expect("read").is_some(),
                    "round {round}: object {earlier}/{n}"
                );
            }
        }
    }
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn batches_carry_many_commands_in_one_entry() {
    let cluster = SimCluster::start(10, 3, ShardId(0), one_shard()).await;
    cluster.initialize().await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await.expect("leader");
    let group = cluster.group(leader);
    group.propose(create_tenant(tenant(11))).await.expect("tenant");
    let before = group.raft().metrics().borrow().last_log_index.expect("log");
    let proposals: Vec<_> = (0..200u64)
        .map(|n| {
            let group = Arc::clone(&group);
            tokio::spawn(async move { group.propose(audit(n)).await })
        })
        .collect();
    let mut sequences = BTreeSet::new();
    for proposal in proposals {
        match proposal.await.expect("task") {
            Ok(Applied::AuditSequence(sequence)) => assert!(sequences.insert(sequence)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sequences, (1..=200).collect(), "one sequence number each, none twice");
    let after = group.raft().metrics().borrow().last_log_index.expect("log");
    assert!(after - before < 50, "200 proposals took {} entries", after - before);
    cluster.stop().await;
}

#[tokio::test]
async fn a_node_runs_one_group_per_shard_and_routes_commands_to_their_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shards = ShardMap::new(4).expect("4 shards");
    let network = SimNetwork::new(11);
    let meta = dir.path().join("meta");
    let start = || {
        kiseki_consensus::MetadataNode::start(
            1,
            &meta,
            shards,
            |shard| network.factory(shard, 1),
            |_| {},
        )
    };
    let node = start().await.expect("start");
    for shard in shards.shards() {
        let group = node.group(shard).expect("a group per shard");
        group.initialize(BTreeMap::from([(1, BasicNode::new("node-1"))])).await.expect("init");
        wait_until_leader(group).await;
    }
    let tenants: Vec<_> = (1..=12u8).map(tenant).collect();
    for t in &tenants {
        node.propose(create_tenant(*t)).await.expect("tenant in its shard");
    }
    let owner_of = |t| shards.shard_of(kiseki_consensus::ShardKey::Tenant(t));
    let used: BTreeSet<_> = tenants.iter().map(|t| owner_of(*t)).collect();
    assert!(used.len() > 1, "12 tenants spread over more than one shard");
    node.shutdown().await.expect("shutdown");
    drop(node);

    let node = start().await.expect("restart");
    for shard in shards.shards() {
        wait_until_leader(node.group(shard).expect("group")).await;
    }
    for t in &tenants {
        for shard in shards.shards() {
            let view = node.group(shard).expect("group").read().await.expect("read");
            let held = view.tenant(t).expect("read").is_some();
            assert_eq!(held, shard == owner_of(*t), "tenant {:?} in {shard}", t.0[0]);
        }
    }
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn buckets_and_objects_list_in_key_order_by_prefix_and_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let group = file_group(dir.path(), GroupConfig::new(1, ShardId(0), one_shard())).await;
    let (owner, other) = (tenant(1), tenant(2));
    for t in [owner, other] {
        group.propose(create_tenant(t)).await.expect("tenant");
    }
    for bucket in ["photos", "logs", "photos-old"] {
        group.propose(create_bucket(owner, bucket)).await.expect("bucket");
    }
    group.propose(create_bucket(other, "theirs")).await.expect("bucket");
    // object-0 .. object-11 in "photos", one in "photos-old" (a bucket whose name extends
    // "photos" must not leak into its listing), one in the other tenant's bucket.
    for n in 0..12 {
        group.propose(put_object(owner, "photos", n)).await.expect("put");
    }
    group.propose(put_object(owner, "photos-old", 99)).await.expect("put");
    group.propose(put_object(other, "theirs", 5)).await.expect("put");

    let view = group.read().await.expect("linearizable read");
    assert_eq!(view.buckets(&owner).unwrap(), ["logs", "photos", "photos-old"]);
    assert_eq!(view.buckets(&other).unwrap(), ["theirs"]);
    assert!(view.buckets(&tenant(3)).unwrap().is_empty());

    let keys = |listed: Vec<(Vec<u8>, Manifest)>| -> Vec<String> {
        listed.into_iter().map(|(key, _)| String::from_utf8(key).unwrap()).collect()
    };
    let all = keys(view.objects(&owner, "photos", b"", None, 100).unwrap());
    let mut expected: Vec<String> = (0..12).map(|n| format!("object-{n}")).collect();
    expected.sort();
    assert_eq!(all, expected, "byte order, this bucket only");

    // Pages of 5 continue after the last key of the page before.
    let first = keys(view.objects(&owner, "photos", b"", None, 5).unwrap());
    let second = view.objects(&owner, "photos", b"", Some(first[4].as_bytes()), 5).unwrap();
    assert_eq!(first, expected[..5]);
    assert_eq!(keys(second), expected[5..10]);

    // A prefix, with and without a start inside it; a start before the prefix is ignored.
    assert_eq!(
        keys(view.objects(&owner, "photos", b"object-1", None, 100).unwrap()),
        ["object-1", "object-10", "object-11"]
    );
    let after = view.objects(&owner, "photos", b"object-1", Some(b"object-10"), 100).unwrap();
    assert_eq!(keys(after), ["object-11"]);
    let before = view.objects(&owner, "photos", b"object-1", Some(b"a"), 100).unwrap();
    assert_eq!(before.len(), 3);
    assert!(view.objects(&owner, "photos", b"nothing", None, 100).unwrap().is_empty());
    assert!(view.objects(&owner, "photos", b"", None, 0).unwrap().is_empty());

    // The manifest comes with the key.
    let (_, manifest) = &view.objects(&owner, "photos-old", b"", None, 10).unwrap()[0];
    assert_eq!(manifest.etag, ETag([99; 16]));
    assert!(view.objects(&owner, "theirs", b"", None, 10).unwrap().is_empty(), "other tenant's");
}

#[tokio::test]
async fn an_overwrite_or_delete_hands_back_the_manifest_it_unlinked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let group = file_group(dir.path(), GroupConfig::new(1, ShardId(0), one_shard())).await;
    let owner = tenant(1);
    group.propose(create_tenant(owner)).await.expect("tenant");
    group.propose(create_bucket(owner, "bkt")).await.expect("bucket");
    let first = put_object(owner, "bkt", 1);
    assert_eq!(group.propose(first.clone()).await.unwrap(), Applied::Done, "nothing replaced");
    // The same key, another manifest: the first comes back.
    let Command::PutObject { manifest: first_manifest, .. } = first else { unreachable!() };
    let mut second = put_object(owner, "bkt", 2);
    if let Command::PutObject { key, .. } = &mut second {
        *key = object_key(1);
    }
    let Command::PutObject { manifest: second_manifest, .. } = second.clone() else {
        unreachable!()
    };
    assert_eq!(group.propose(second).await.unwrap(), Applied::Replaced(Box::new(first_manifest)));
    let delete = Command::DeleteObject { tenant: owner, bucket: "bkt".into(), key: object_key(1) };
    assert_eq!(
        group.propose(delete.clone()).await.unwrap(),
        Applied::Replaced(Box::new(second_manifest))
    );
    assert!(matches!(rejection(group.propose(delete).await), Rejection::NotFound(_)));
}
