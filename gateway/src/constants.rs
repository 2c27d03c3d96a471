//! Every limit of the gateway crate, each with the reason for its value. Limits of the
//! certificates and tokens themselves are the security crate's
//! (`kiseki_security::constants`).

use kiseki_engine::constants::{BLOCK_SIZE_BYTES, CHUNK_SIZE_MAX_BYTES};

/// Largest body of one admission frame: 64 KiB. A request carries a P-256 CSR (under
/// 1 KiB), a token (75 bytes) and at most a few SANs; a response one certificate (under
/// 2 KiB). 64 KiB leaves room for longer chains and names while a peer can never make the
/// service buffer more than this per connection; a larger length closes the connection.
pub const ADMISSION_FRAME_MAX_BYTES: u32 = 64 * 1024;

/// Most connections the admission service serves at once: 64. Admission is rare (a rack
/// of new nodes, then monthly renewals); further connections wait in the listen backlog,
/// so a flood costs at most 64 frame buffers and handshakes at a time.
pub const ADMISSION_CONNECTIONS_MAX: usize = 64;

/// Longest a TLS handshake, one frame read or one frame write may take on the admission
/// service: 10 s, ample for a LAN or a WAN round trip, and short enough that a peer that
/// stalls gives its connection slot back quickly.
pub const ADMISSION_IO_TIMEOUT_SECS: u64 = 10;

/// Most requests on one admission connection: 16. A node needs one admission, then one
/// request per role certificate and one renewal; the bound keeps one connection from
/// holding its slot for ever.
pub const ADMISSION_REQUESTS_PER_CONNECTION_MAX: usize = 16;

/// Longest one JWKS fetch from a tenant's IdP may take, connect to last byte: 10 s. The
/// fetch runs outside the verifier's lock and at most once per refresh interval, so a slow
/// IdP delays only the token that asked for a new key, never the data path.
pub const JWKS_FETCH_TIMEOUT_SECS: u64 = 10;

/// Largest `--token-file` read by `join`: 4 KiB. A token is 75 bytes; the bound keeps a
/// wrong path (a log, a device) from being read whole into memory.
pub const TOKEN_FILE_MAX_BYTES: u64 = 4096;

/// `kiseki-server dev`'s device file when `--device-size` is not given: 2 GiB, room for a
/// few hundred 4 MiB chunks, and a few seconds to write out on first start.
pub const DEV_DEVICE_SIZE_DEFAULT_BYTES: u64 = 2 << 30;

/// Smallest share of the device one shard of a node (`dev` or `run`) may have: 32 MiB. A shard keeps a
/// superblock, a journal of at least 256 KiB and two checkpoint slots beside its data; with
/// 32 MiB it still takes six 4 MiB chunks before its Critical threshold (85 %), a store
/// that is small but useful rather than one that refuses its second put.
pub const NODE_SHARD_BYTES_MIN: u64 = 32 << 20;

/// Most reactors (`--cores`, `cores`) a node starts: 256, the bench's `--numjobs` bound.
/// Each one pins a thread and registers [`NODE_DEVICE_BUFFERS`] buffers.
pub const NODE_CORES_MAX: usize = 256;

/// I/O buffers of each node reactor's device, each as large as the biggest stored chunk
/// (`kiseki_engine::constants::CHUNK_SIZE_MAX_BYTES`, 4 MiB): a put or get in flight holds
/// one. Eight let a reactor overlap a few 4 MiB transfers while registering 32 MiB, which
/// counts against `RLIMIT_MEMLOCK` for non-root users.
pub const NODE_DEVICE_BUFFERS: u32 = 8;

/// Request slots of each node reactor's device: two per buffer (a chunk's extent and its
/// share of a journal write) and eight more for flushes, checkpoints and trims, as the
/// bench sizes its stores.
pub const NODE_DEVICE_QUEUE_DEPTH: u32 = 2 * NODE_DEVICE_BUFFERS + 8;

/// Largest node manifest (`meta/node.json`) a `dev` or `run` node reads: 64 KiB. It holds
/// ids, paths and a few names (under 1 KiB); the bound keeps a wrong file from being read
/// whole.
pub const NODE_MANIFEST_BYTES_MAX: u64 = 64 * 1024;

/// The tenant org whose workload identity a dev node generates.
pub const DEV_TENANT_ORG: &str = "dev";

/// Where a dev node serves S3, gRPC, and metrics and health.
pub const DEV_S3_ADDR: &str = "127.0.0.1:9000";
pub const DEV_GRPC_ADDR: &str = "127.0.0.1:9100";
pub const DEV_METRICS_ADDR: &str = "127.0.0.1:9090";

/// The domain under which a dev node's S3 front end takes virtual-host style requests
/// (`<bucket>.localhost`); its certificate names `*.localhost` for them.
pub const DEV_S3_DOMAIN: &str = "localhost";

// ---- A node from a configuration (run.rs, node.rs) ----

/// Smallest `chunk_size` a configured node cuts objects into: one engine block (4 KiB). A
/// smaller chunk would still take a whole block on the device.
pub const RUN_CHUNK_SIZE_MIN_BYTES: u64 = BLOCK_SIZE_BYTES as u64;

/// Largest `chunk_size`: the engine's largest chunk (one pool buffer, 4 MiB) less 64 KiB
/// for the envelope around the plaintext (a header under 1 KiB with a tenant's wrapping,
/// and a 16-byte tag), with margin and in whole blocks.
pub const RUN_CHUNK_SIZE_MAX_BYTES: u64 = CHUNK_SIZE_MAX_BYTES as u64 - (64 << 10);

/// How long a configured node waits, at each try, for the metadata group's leader to make
/// the cluster's first master-key epoch, and how long it waits between tries: a new
/// leader applies what its term committed before its view says whether an epoch exists.
pub const NODE_MASTER_KEY_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The first bytes of a device a first start reads to tell whether it already holds a
/// Kiseki store: the superblock at the start of shard 0's region.
pub const NODE_SUPERBLOCK_PROBE_BYTES: usize = kiseki_engine::format::SUPERBLOCK_SIZE_BYTES;

// ---- S3 multipart uploads (s3.rs, multipart.rs) ----

/// Smallest part of a multipart upload other than the last: 5 MiB, S3's rule
/// (EntityTooSmall below it), which clients size their parts by.
pub const S3_PART_MIN_BYTES: u64 = 5 << 20;

/// Largest part one UploadPart may carry here: 256 MiB, the single-PUT bound, since a part
/// is read whole into memory like a PUT body (S3 allows 5 GiB; clients default to 8 MiB).
pub const S3_PART_MAX_BYTES: usize = 256 << 20;

/// Most parts of one upload: S3's 10,000 (part numbers 1 to 10,000), the metadata's own
/// bound. The parts of one upload also name at most one manifest's worth of chunks
/// together (`kiseki_consensus::constants::MANIFEST_CHUNKS_MAX`, 16 GiB of 1 MiB chunks),
/// so that any completion fits a manifest: a part beyond that is EntityTooLarge.
pub const S3_PARTS_MAX: u16 = 10_000;
const _: () = assert!(S3_PARTS_MAX == kiseki_consensus::constants::MULTIPART_PARTS_MAX);

/// Most parts one ListParts answer carries, whatever `max-parts` asks: S3's 1,000.
pub const S3_LIST_PARTS_MAX: usize = 1000;

/// Most uploads one ListMultipartUploads answer carries: S3's 1,000.
pub const S3_LIST_UPLOADS_MAX: usize = 1000;

// ---- the gRPC front end (grpc.rs) ----

/// Largest gRPC message either way: 4 MiB, tonic's own default for what it receives (an
/// over-limit message is OUT_OF_RANGE before the handler sees it). A body piece
/// ([`GRPC_BODY_PIECE_BYTES`]) and its framing fit with room to spare; listings and
/// audit batches are bounded well under it.
pub const GRPC_MESSAGE_MAX_BYTES: usize = 4 << 20;

/// Bytes of an object body per streamed message: 1 MiB, one default chunk, so a get
/// sends about one message per chunk it read.
pub const GRPC_BODY_PIECE_BYTES: usize = 1 << 20;

/// Largest object a gRPC put takes or a get serves: the S3 single-PUT bound (256 MiB),
/// since the object layer holds a body in memory as a whole, as for S3.
pub const GRPC_OBJECT_MAX_BYTES: usize = S3_OBJECT_MAX_BYTES;

/// Puts and gets holding a body at once: 8. Each holds at most an object
/// ([`GRPC_OBJECT_MAX_BYTES`]), so the worst case is 2 GiB of bodies; a ninth answers
/// UNAVAILABLE at once instead of growing memory.
pub const GRPC_BODY_CALLS_MAX: usize = 8;

/// Concurrent calls (HTTP/2 streams) per connection: 64, plenty for a client's
/// pipelined metadata calls while bounding what one connection can hold.
pub const GRPC_STREAMS_PER_CONNECTION_MAX: u32 = 64;

/// Handshakes in flight at once; more connections wait in the listen backlog.
pub const GRPC_HANDSHAKES_MAX: usize = 64;

/// Finished handshakes waiting for the HTTP/2 server.
pub const GRPC_ACCEPTED_QUEUE: usize = 64;

/// Longest a TLS handshake may take: 10 s, as for the key service.
pub const GRPC_HANDSHAKE_TIMEOUT_SECS: u64 = 10;

/// Longest a stop waits for connected clients to hang up after calls in flight end.
pub const GRPC_DRAIN_TIMEOUT_SECS: u64 = 5;

/// Entries one listing answers at most (objects, tenants, credentials): S3's 1,000.
pub const GRPC_LIST_MAX: usize = 1000;

/// Audit records per streamed export message: 256 records of at most a few KiB each
/// (every field is cut at 512 bytes) stay under one message.
pub const GRPC_AUDIT_BATCH_RECORDS: usize = 256;

/// Longest the engine may take to report its shards' counters to storage admin.
pub const GRPC_ENGINE_STATS_TIMEOUT_SECS: u64 = 5;

// ---- the background re-seal (reseal.rs) ----

/// Chunks the background re-seal handles per batch: 16. Each is read, opened, sealed and
/// replaced (a write, a journal record and a flush), so a batch of 1 MiB chunks moves
/// 32 MiB; small enough that the data path, which shares the engine's queues, waits for
/// at most a few of its I/Os behind one batch.
pub const RESEAL_BATCH_CHUNKS: usize = 16;

/// Pause between two re-seal batches: 20 ms, which keeps the re-seal to a fraction of the
/// engine's time on a busy node while a few hundred thousand chunks still pass in hours.
pub const RESEAL_BATCH_INTERVAL_MS: u64 = 20;

/// How often an idle re-seal task looks for older epochs again (a rotation through the
/// key service while the node runs): 60 s; a rotation is rare and urgent for nobody.
pub const RESEAL_IDLE_CHECK_SECS: u64 = 60;

/// Wait after a batch stopped on a transient error (a full queue, a device over its
/// critical level, a key store that did not answer): 5 s, long enough for a burst to pass.
pub const RESEAL_ERROR_BACKOFF_SECS: u64 = 5;

/// A progress line in the log every this many batches: 64 batches (about 1000 chunks).
pub const RESEAL_LOG_EVERY_BATCHES: u64 = 64;

/// Retries of one engine call that answered `Busy`, with a doubling sleep from 4 ms (about
/// half a second in all), before the batch stops and backs off.
pub const RESEAL_BUSY_RETRIES: u32 = 7;

// ---- S3 front end bounds (s3.rs, s3_front.rs) ----

/// Largest body one PutObject may carry here: 256 MiB. The body is held in memory while it
/// is checked (payload hash, flexible checksums, Content-MD5) and cut into chunks, so this
/// bounds a request's memory; S3 allows 5 GiB, which clients reach only through multipart
/// (they switch at 8 MiB by default). A larger Content-Length (or
/// `x-amz-decoded-content-length`) is EntityTooLarge before a body byte is read, and a
/// body without a declared length is cut off at this size.
pub const S3_OBJECT_MAX_BYTES: usize = 256 << 20;

/// Most requests the S3 front end serves at once, over all connections: 128, eight times
/// the concurrency the S3 benchmark drives; the engine takes only a few chunk operations
/// at a time (`ObjectConfig::engine_ops_max`) anyway, and the bodies they hold are bounded
/// apart ([`S3_BODY_BUDGET_BYTES`]). A request beyond this is answered at once with 503
/// SlowDown (which SDKs retry with back-off) rather than queued in memory.
pub const S3_REQUESTS_MAX: usize = 128;

/// Most body bytes the S3 front end holds for requests in progress, all together: 1 GiB,
/// counted from each request's declared length before its body is read (a request that
/// would go over is answered 503 SlowDown). Bodies are held whole while they are checked,
/// so without this [`S3_REQUESTS_MAX`] requests of [`S3_OBJECT_MAX_BYTES`] could ask for
/// 32 GiB; 1 GiB is four of the largest PUTs at once, or a hundred of the 8 MiB parts
/// clients upload by default.
pub const S3_BODY_BUDGET_BYTES: u64 = 1 << 30;
const _: () = assert!(S3_BODY_BUDGET_BYTES >= S3_OBJECT_MAX_BYTES as u64);
const _: () = assert!(S3_BODY_BUDGET_BYTES >= S3_PART_MAX_BYTES as u64);

/// Connections the S3 front end serves at once: 1024; more wait in the kernel's listen
/// backlog. Idle keep-alive connections cost a socket and a small buffer each; requests in
/// progress are bounded apart by [`S3_REQUESTS_MAX`].
pub const S3_CONNECTIONS_MAX: usize = 1024;

/// Most bytes a request line and headers may take: 64 KiB (hyper's read buffer). S3 allows
/// 8 KiB of headers plus 2 KiB of user metadata; 64 KiB leaves room for long presigned
/// query strings while keeping a connection's buffer small. Beyond it the request is
/// refused (431) and the connection closed.
pub const S3_HEADER_BYTES_MAX: usize = 64 << 10;

/// Longest a client may take to finish its TLS handshake or send a request's headers:
/// 15 s, so that a client that stalls gives its connection slot back.
pub const S3_HEADER_TIMEOUT_SECS: u64 = 15;

/// Longest validity a presigned URL may ask for (`X-Amz-Expires`): 604,800 s, seven days,
/// SigV4's own limit. A longer one is refused with 403 before its signature is checked:
/// such a URL is a bearer credential that would outlive any key rotation policy.
pub const S3_PRESIGNED_EXPIRES_MAX_SECS: u64 = 604_800;

/// Most a request's `x-amz-date` (or a presigned URL's) may differ from this node's clock:
/// 15 minutes, as S3 allows (RequestTimeTooSkewed beyond). It bounds how long a captured
/// signed request can be replayed.
pub const S3_CLOCK_SKEW_MAX_SECS: u32 = 15 * 60;
