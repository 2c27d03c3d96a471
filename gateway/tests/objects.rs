//! The object layer on a real single-node metadata group (redb file), an engine on a memory
//! device and a key manager: puts cut into chunks or kept inline, ranged reads of only the
//! chunks a range covers, listings, overwrite and delete giving chunk references back,
//! tenants kept apart, a shredded tenant's objects refused, and no body or user metadata
//! in the metadata file.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kiseki_consensus::MetadataGroup;
use kiseki_consensus::command::DedupMode;
use kiseki_consensus::node::start_single;
use kiseki_engine::{Engine, EngineHandle};
use kiseki_gateway::objects::{ObjectConfig, ObjectError, ObjectStore, UserMetadata};
use kiseki_security::TenantId;
use kiseki_security::keymanager::{KeyManager, MemoryKeyStore, NoRetentionHolds};

/// Small chunks so that a few KiB make a many-chunk object.
const CHUNK: usize = 1000;

struct Fixture {
    dir: tempfile::TempDir,
    store: ObjectStore<MemoryKeyStore>,
    keys: Arc<Mutex<KeyManager<MemoryKeyStore>>>,
    engine: Option<Engine>,
    group: Arc<MetadataGroup>,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with_engine_bounds(32, ObjectConfig::default().engine_ops_max).await
    }

    /// A fixture whose device has `buffers` I/O buffers and whose store lets
    /// `engine_ops_max` chunk operations into the engine at once.
    async fn with_engine_bounds(buffers: u32, engine_ops_max: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let group = start_single(dir.path()).await.expect("a one-member metadata group");
        let group = Arc::new(group);

        let open = move |_| common::memory_shard(32 << 20, buffers, 64 << 10);
        let engine = Engine::start(1, Arc::new(open)).unwrap();
        let mut keys = common::key_manager(7);
        keys.init_cluster().unwrap();
        let keys = Arc::new(Mutex::new(keys));
        let store = ObjectStore::new(
            Arc::clone(&group),
            engine.handle(),
            Arc::clone(&keys),
            ObjectConfig { chunk_size_bytes: CHUNK, inline_max_bytes: 100, engine_ops_max },
        );
        Fixture { dir, store, keys, engine: Some(engine), group }
    }

    fn engine(&self) -> EngineHandle {
        self.engine.as_ref().unwrap().handle()
    }

    async fn chunks_stored(&self) -> u64 {
        self.engine().stats().await.unwrap().iter().map(|s| s.chunks).sum()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.shutdown().unwrap();
        }
    }
}

fn tenant(n: u8) -> TenantId {
    TenantId::new([n; 16]).unwrap()
}

/// `len` bytes that differ at every position and per `seed`, so chunks never dedup by
/// accident.
fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed) * 7919).to_le_bytes()[1]
                ^ (i / 251) as u8
        })
        .collect()
}

fn md5_of(bytes: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(bytes).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_round_trip_whole_ranged_and_inline_with_their_metadata() {
    let f = Fixture::new().await;
    let alice = tenant(1);
    f.store.create_tenant(alice, DedupMode::CrossTenant).await.unwrap();
    f.store.create_bucket(alice, "photos").await.unwrap();

    let big = body(4 * CHUNK + 321, 1);
    let user = UserMetadata {
        content_type: Some("image/png".into()),
        entries: BTreeMap::from([("camera".into(), "x100".into())]),
    };
    let etag = f.store.put_object(alice, "photos", b"cat.png", &big, &user).await.unwrap();
    assert_eq!(etag, md5_of(&big), "the ETag of a single put is the body's MD5");
    assert_eq!(f.chunks_stored().await, 5, "4 full chunks and a short one");

    let (meta, got) = f.store.get_object(alice, "photos", b"cat.png", None).await.unwrap();
    assert_eq!(got, big);
    assert_eq!((meta.size_bytes, meta.etag, meta.user.clone()), (big.len() as u64, etag, user));
    assert!(meta.modified_unix_ms > 1_700_000_000_000, "a put time: {}", meta.modified_unix_ms);

    // Ranges inside a chunk, across chunk boundaries, at the very end, and past it.
    for (start, end) in [
        (0, 1),
        (10, 20),
        (CHUNK - 1, CHUNK + 1),
        (999, 3001),
        (4 * CHUNK, 4 * CHUNK + 321),
        (4 * CHUNK + 320, 10_000),
    ] {
        let (_, got) = f
            .store
            .get_object(alice, "photos", b"cat.png", Some((start as u64, end as u64)))
            .await
            .unwrap();
        assert_eq!(got, big[start..end.min(big.len())], "range {start}..{end}");
    }
    assert!(matches!(
        f.store
            .get_object(alice, "photos", b"cat.png", Some((big.len() as u64, big.len() as u64 + 5)))
            .await,
        Err(ObjectError::InvalidRange { .. })
    ));

    // A small body is sealed into the manifest: no chunk.
    let small = b"tiny".to_vec();
    f.store
        .put_object(alice, "photos", b"note.txt", &small, &UserMetadata::default())
        .await
        .unwrap();
    assert_eq!(f.chunks_stored().await, 5);
    let (meta, got) = f.store.get_object(alice, "photos", b"note.txt", Some((1, 3))).await.unwrap();
    assert_eq!((got.as_slice(), meta.size_bytes), (&b"in"[..], 4));
    assert_eq!(
        f.store.head_object(alice, "photos", b"note.txt").await.unwrap().etag,
        md5_of(&small)
    );

    // An empty object.
    f.store.put_object(alice, "photos", b"empty", b"", &UserMetadata::default()).await.unwrap();
    let (meta, got) = f.store.get_object(alice, "photos", b"empty", None).await.unwrap();
    assert_eq!((meta.size_bytes, got.len()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_and_delete_give_chunk_references_back_and_dedup_shares_them() {
    let f = Fixture::new().await;
    let alice = tenant(1);
    f.store.create_tenant(alice, DedupMode::CrossTenant).await.unwrap();
    f.store.create_bucket(alice, "data").await.unwrap();
    let first = body(3 * CHUNK, 1);
    f.store.put_object(alice, "data", b"a", &first, &UserMetadata::default()).await.unwrap();
    // The same bytes under a second key share the three chunks (refcount 2 each).
    f.store.put_object(alice, "data", b"b", &first, &UserMetadata::default()).await.unwrap();
    assert_eq!(f.chunks_stored().await, 3);

    // Overwriting "a" with other bytes: "b" still holds the first chunks.
    let second = body(2 * CHUNK, 2);
    f.store.put_object(alice, "data", b"a", &second, &UserMetadata::default()).await.unwrap();
    assert_eq!(f.chunks_stored().await, 5);
    assert_eq!(f.store.get_object(alice, "data", b"b", None).await.unwrap().1, first);
    assert_eq!(f.store.get_object(alice, "data", b"a", None).await.unwrap().1, second);

    f.store.delete_object(alice, "data", b"b").await.unwrap();
    assert_eq!(
        f.chunks_stored().await,
        2,
        "the first body's chunks are gone with their last reference"
    );
    assert!(matches!(
        f.store.delete_object(alice, "data", b"b").await,
        Err(ObjectError::NoSuchKey)
    ));
    assert!(matches!(
        f.store.get_object(alice, "data", b"b", None).await,
        Err(ObjectError::NoSuchKey)
    ));
    assert!(matches!(f.store.delete_bucket(alice, "data").await, Err(ObjectError::BucketNotEmpty)));
    f.store.delete_object(alice, "data", b"a").await.unwrap();
    assert_eq!(f.chunks_stored().await, 0);
    f.store.delete_bucket(alice, "data").await.unwrap();
    assert!(matches!(
        f.store.get_object(alice, "data", b"a", None).await,
        Err(ObjectError::NoSuchBucket)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_by_prefix_and_tenants_see_only_their_own() {
    let f = Fixture::new().await;
    let (alice, bob) = (tenant(1), tenant(2));
    for t in [alice, bob] {
        f.store.create_tenant(t, DedupMode::CrossTenant).await.unwrap();
    }
    f.store.create_bucket(alice, "logs").await.unwrap();
    f.store.create_bucket(bob, "bobs").await.unwrap();
    for day in ["2026/01/01", "2026/01/02", "2026/02/01", "2027/01/01"] {
        f.store
            .put_object(alice, "logs", day.as_bytes(), day.as_bytes(), &UserMetadata::default())
            .await
            .unwrap();
    }
    let keys = |listed: Vec<kiseki_gateway::objects::Listed>| -> Vec<String> {
        listed.into_iter().map(|l| String::from_utf8(l.key).unwrap()).collect()
    };
    assert_eq!(
        keys(f.store.list_objects(alice, "logs", b"2026/01", None, 10).await.unwrap()),
        ["2026/01/01", "2026/01/02"]
    );
    let page = f.store.list_objects(alice, "logs", b"", None, 2).await.unwrap();
    let next = f.store.list_objects(alice, "logs", b"", Some(&page[1].key), 2).await.unwrap();
    assert_eq!(keys(next), ["2026/02/01", "2027/01/01"]);
    assert_eq!(f.store.list_buckets(alice).await.unwrap(), ["logs"]);
    assert_eq!(f.store.list_buckets(bob).await.unwrap(), ["bobs"]);

    // Bob names Alice's bucket: access denied, and he cannot take its name; a name nobody
    // holds is NoSuchBucket.
    assert!(matches!(
        f.store.list_objects(bob, "logs", b"", None, 10).await,
        Err(ObjectError::AccessDenied)
    ));
    assert!(matches!(
        f.store.get_object(bob, "logs", b"2026/01/01", None).await,
        Err(ObjectError::AccessDenied)
    ));
    assert!(matches!(
        f.store.put_object(bob, "logs", b"x", b"y", &UserMetadata::default()).await,
        Err(ObjectError::AccessDenied)
    ));
    assert!(matches!(f.store.create_bucket(alice, "logs").await, Err(ObjectError::BucketExists)));
    assert!(matches!(f.store.create_bucket(bob, "logs").await, Err(ObjectError::BucketExists)));
    assert!(matches!(
        f.store.list_objects(bob, "nobodys", b"", None, 10).await,
        Err(ObjectError::NoSuchBucket)
    ));
    for bad in ["ab", "Logs", "a..b", "-ab", "192.168.1.1", &"x".repeat(64)] {
        assert!(
            matches!(
                f.store.create_bucket(alice, bad).await,
                Err(ObjectError::InvalidBucketName(_))
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        f.store.put_object(alice, "logs", &[0xff, 0xfe], b"y", &UserMetadata::default()).await,
        Err(ObjectError::InvalidKey(_))
    ));
    assert!(matches!(
        f.store.create_bucket(tenant(9), "nobody").await,
        Err(ObjectError::NoSuchTenant)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shredded_tenant_reads_nothing_and_others_are_untouched() {
    let f = Fixture::new().await;
    let (alice, bob) = (tenant(1), tenant(2));
    f.store.create_tenant(alice, DedupMode::Isolated).await.unwrap();
    f.store.create_tenant(bob, DedupMode::CrossTenant).await.unwrap();
    f.store.create_bucket(alice, "secret").await.unwrap();
    f.store.create_bucket(bob, "open").await.unwrap();
    let data = body(2 * CHUNK + 5, 3);
    f.store.put_object(alice, "secret", b"plans", &data, &UserMetadata::default()).await.unwrap();
    f.store
        .put_object(alice, "secret", b"inline", b"short", &UserMetadata::default())
        .await
        .unwrap();
    f.store.put_object(bob, "open", b"plans", &data, &UserMetadata::default()).await.unwrap();
    // Isolated: the same bytes are other chunks than Bob's (HMAC ids), no cross-tenant dedup.
    assert_eq!(f.chunks_stored().await, 6);

    f.keys.lock().unwrap().shred_tenant(alice, &NoRetentionHolds).unwrap();
    for key in [&b"plans"[..], b"inline"] {
        let error = f.store.get_object(alice, "secret", key, None).await.unwrap_err();
        assert!(matches!(error, ObjectError::TenantKeysDestroyed), "{error}");
        assert_eq!(error.to_string(), "tenant keys destroyed");
    }
    assert!(matches!(
        f.store.put_object(alice, "secret", b"more", &data, &UserMetadata::default()).await,
        Err(ObjectError::TenantKeysDestroyed)
    ));
    assert_eq!(f.store.get_object(bob, "open", b"plans", None).await.unwrap().1, data);
    assert!(
        f.group
            .read()
            .await
            .unwrap()
            .tenant(&kiseki_consensus::command::TenantId([1; 16]))
            .unwrap()
            .is_some(),
        "shredding keys keeps the tenant's record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_user_metadata_are_sealed_in_the_metadata_file() {
    let f = Fixture::new().await;
    let alice = tenant(1);
    f.store.create_tenant(alice, DedupMode::CrossTenant).await.unwrap();
    f.store.create_bucket(alice, "bkt").await.unwrap();
    let inline_marker = b"INLINE-BODY-MARKER-5f1c";
    let meta_marker = "USER-META-MARKER-93be";
    let user = UserMetadata {
        content_type: Some("text/plain".into()),
        entries: BTreeMap::from([("note".into(), meta_marker.into())]),
    };
    f.store.put_object(alice, "bkt", b"small", inline_marker, &user).await.unwrap();
    let mut chunked = body(2 * CHUNK, 4);
    chunked[..inline_marker.len()].copy_from_slice(inline_marker);
    f.store.put_object(alice, "bkt", b"large", &chunked, &user).await.unwrap();
    let (meta, got) = f.store.get_object(alice, "bkt", b"small", None).await.unwrap();
    assert_eq!((got.as_slice(), meta.user), (&inline_marker[..], user));

    let file = std::fs::read(f.dir.path().join("shard-0.redb")).unwrap();
    let contains = |needle: &[u8]| file.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"small"), "the scan sees plaintext where there is some (object keys)");
    assert!(!contains(inline_marker), "an inline body in the clear");
    assert!(!contains(meta_marker.as_bytes()), "user metadata in the clear");
    assert!(!contains(b"text/plain"), "a content type in the clear");
}

/// Puts `writers` objects of several chunks at once into a store over an engine with four
/// I/O buffers (one of them its journal's); returns how many were refused as unavailable
/// (the engine's `Busy`).
async fn concurrent_puts_refused(engine_ops_max: usize, writers: u8) -> usize {
    let f = Arc::new(Fixture::with_engine_bounds(4, engine_ops_max).await);
    let alice = tenant(1);
    f.store.create_tenant(alice, DedupMode::CrossTenant).await.unwrap();
    f.store.create_bucket(alice, "busy").await.unwrap();
    let mut tasks = Vec::new();
    for seed in 0..writers {
        let f = Arc::clone(&f);
        tasks.push(tokio::spawn(async move {
            let data = body(8 * CHUNK, seed);
            let (key, user) = (format!("object-{seed}"), UserMetadata::default());
            let result = f.store.put_object(alice, "busy", key.as_bytes(), &data, &user).await;
            result.map(|etag| (etag, md5_of(&data)))
        }));
    }
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok((etag, expected)) => assert_eq!(etag, expected),
            Err(ObjectError::Unavailable(_)) => refused += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    refused
}

/// `ObjectConfig::engine_ops_max` keeps a node's chunk operations under the engine's I/O
/// buffers: with it at 2, 24 writers at once over 3 free buffers all succeed (they wait
/// their turn), where without the bound (64 slots) the engine answers some of them `Busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_ops_max_makes_concurrent_puts_wait_instead_of_failing() {
    assert_eq!(concurrent_puts_refused(2, 24).await, 0, "bounded: every put waits its turn");
    assert!(
        concurrent_puts_refused(64, 24).await > 0,
        "the control: over two buffers, unbounded puts meet a busy engine"
    );
}
