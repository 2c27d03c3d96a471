//! Every limit of the consensus crate, with the reason it has its value.

use std::time::Duration;

// ---- commands (command.rs) ----

/// The command format this build proposes and applies. A command of another version is
/// refused before it is proposed; a log entry of another version stops the group rather
/// than being applied differently on different nodes.
pub const COMMAND_FORMAT_VERSION: u16 = 1;

/// Longest bucket name: S3's rule (3 to 63 characters).
pub const BUCKET_NAME_MAX_BYTES: usize = 63;

/// Shortest bucket name: S3's rule.
pub const BUCKET_NAME_MIN_BYTES: usize = 3;

/// Longest object key: S3 allows 1024 bytes of name; the gateway may hand us a sealed or
/// keyed form of it, which adds a nonce and a tag, so 1024 + 64.
pub const OBJECT_KEY_MAX_BYTES: usize = 1024 + 64;

/// Most chunks one manifest (or one multipart part) lists: 16,384 ids of 32 bytes keep a
/// manifest under 1 MiB of log entry while covering 64 GiB in 4 MiB chunks; larger objects
/// go through multipart, whose parts (at most 5 GiB each in S3) carry their own lists.
pub const MANIFEST_CHUNKS_MAX: usize = 16_384;

/// Largest sealed blob (user metadata, tenant config, credential secret, audit record,
/// key material): S3 user metadata is at most 2 KiB; 8 KiB leaves room for sealing and for
/// larger audit records without letting one command bloat the log.
pub const SEALED_BLOB_MAX_BYTES: usize = 8 << 10;

/// Largest inline object (sealed bytes kept in the metadata log instead of chunks): small
/// objects under 4 KiB cost one log entry instead of a chunk write plus a manifest; the
/// envelope adds its header and tag, so 4 KiB + 128.
pub const INLINE_OBJECT_MAX_BYTES: usize = (4 << 10) + 128;

/// Longest S3 access key id we keep: AWS's are 20 characters; 128 is generous for our own
/// formats and keeps credential keys small.
pub const ACCESS_KEY_ID_MAX_BYTES: usize = 128;

/// Longest workload name a credential maps to (SPIFFE path segments are short).
pub const WORKLOAD_NAME_MAX_BYTES: usize = 255;

/// Most parts of a multipart upload: S3's limit (part numbers 1 to 10,000).
pub const MULTIPART_PARTS_MAX: u16 = 10_000;

/// Most multipart uploads one tenant may have open at once: 10,000. Listing a bucket's
/// uploads and the check that a bucket has none scan the tenant's open uploads, so their
/// number is bounded; S3 clients abort or complete uploads within minutes, and a tenant
/// that leaves 10,000 behind is refused new ones (a conflict) until it aborts some.
pub const UPLOADS_OPEN_PER_TENANT_MAX: usize = 10_000;

/// Most chunk refcount deltas in one command: one largest manifest's worth.
pub const REFCOUNT_DELTAS_MAX: usize = MANIFEST_CHUNKS_MAX;

/// Most bytes one encoded command may take: the largest manifest (16,384 chunk ids with
/// their sizes, about 700 KiB) plus its blobs, rounded up. Anything larger is refused
/// before proposal.
pub const COMMAND_MAX_BYTES: usize = 1 << 20;

// ---- proposals (group.rs) ----

/// Most commands batched into one log entry: enough to amortize one fsync over a busy
/// gateway's small puts, small enough that one entry stays far below the RPC limit.
pub const BATCH_COMMANDS_MAX: usize = 256;

/// Most encoded bytes batched into one log entry (a single larger command goes alone).
pub const BATCH_BYTES_MAX: usize = 1 << 20;

/// Proposals waiting for a batch: past this a proposal is refused as busy instead of
/// queueing without bound.
pub const PROPOSAL_QUEUE_MAX: usize = 4096;

/// A proposal or a linearizable read that has not finished after this long fails (a
/// proposal as "outcome unknown": it may still commit): a healthy group commits in
/// milliseconds, an election takes under a second, so 10 s means no quorum.
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Batches proposed and not yet committed at once: two keep the pipeline full (one batch
/// gathers while the other waits for its quorum) and bound what a slow quorum can make the
/// leader hold. More made batches smaller, not faster: each batch is a log entry, an fsync'd
/// append on every node, an RPC per follower and an apply transaction, and with 8 in flight
/// 64 concurrent proposers made batches of about 8; `kiseki-bench raft --nodes 3
/// --concurrency 64` went from about 1,600 to 2,800 committed puts per second with 2.
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;

// ---- inline data guard (guard.rs) ----

/// Inline bytes one tenant may add to one shard's log per second, sustained: 4 MiB/s of
/// small objects is far past a human workload and still a small share of what a metadata
/// log can take, so one tenant cannot crowd the others out.
pub const INLINE_TENANT_BYTES_PER_SECOND: u64 = 4 << 20;

/// Inline bytes one tenant may add in a burst above its rate.
pub const INLINE_TENANT_BURST_BYTES: u64 = 8 << 20;

/// Inline bytes all tenants together may add to one shard's log per second.
pub const INLINE_SHARD_BYTES_PER_SECOND: u64 = 32 << 20;

/// Inline bytes all tenants together may add in a burst.
pub const INLINE_SHARD_BURST_BYTES: u64 = 64 << 20;

/// Tenants whose inline budget a shard tracks at once; a full table forgets the tenant
/// that has been idle longest (its bucket is full again by then or soon will be).
pub const INLINE_TRACKED_TENANTS_MAX: usize = 4096;

// ---- groups and storage (group.rs, store/) ----

/// Most metadata shards (Raft groups) a cluster may be configured with.
pub const SHARDS_MAX: u32 = 1024;

/// Heartbeat of a group's leader. Cheap on the fabric's persistent connections (an empty
/// append, no fsync); openraft checks election timers every 1.5 heartbeats, so this also
/// sets how late a follower notices a dead leader.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

/// Each node draws its election timeout once, at start, from this range. A candidate whose
/// vote failed campaigns again after it; a follower that knew a leader also waits out that
/// leader's lease first, which openraft 0.9 sets to `ELECTION_TIMEOUT_MAX` (and voters
/// refuse to vote inside it). So a follower starts an election 325 to 450 ms after the last
/// heartbeat it heard, six to nine heartbeats: one late heartbeat does not cost a leader.
/// The range is wide next to a vote's round trip (a few ms, two fsyncs) so that two
/// survivors rarely campaign together; `rpc.rs` ends the split votes that still happen.
pub const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(100);
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(225);

/// Longest a group goes without a leader after its leader dies, before the vote's round
/// trip: the lease, the largest election timeout and one election-timer tick. The
/// real-process test holds failover to this plus the vote.
pub const LEADER_FAILOVER_MAX: Duration = Duration::from_millis(
    2 * ELECTION_TIMEOUT_MAX.as_millis() as u64 + 3 * HEARTBEAT_INTERVAL.as_millis() as u64 / 2,
);

const _: () = assert!(
    LEADER_FAILOVER_MAX.as_millis() < 600,
    "failover within the 0.6 s the metadata service promises (issue 6)"
);

/// Records in one `AppendAuditRun` at most (each at most `SEALED_BLOB_MAX_BYTES`; the
/// command's encoded size is bounded by `COMMAND_MAX_BYTES` as any other).
pub const AUDIT_RUN_RECORDS_MAX: usize = 256;

/// Longest a log purge waits for an incoming snapshot to be on disk. openraft 0.9 purges the
/// log behind a snapshot it received while the state machine is still installing it; the
/// purge waits for the install (see `store/snapshot_mark.rs`), one durable write of at most
/// `SNAPSHOT_MAX_BYTES`.
pub const PURGE_WAITS_FOR_SNAPSHOT_MAX: Duration = Duration::from_secs(30);

/// Log entries between snapshots: a snapshot of a metadata shard is cheap next to
/// replaying 10,000 batches after a restart.
pub const SNAPSHOT_LOGS_SINCE_LAST_DEFAULT: u64 = 10_000;

/// Entries kept in the log behind a snapshot so a briefly lagging follower catches up
/// from the log rather than by a full snapshot.
pub const LOG_KEPT_BEHIND_SNAPSHOT_DEFAULT: u64 = 1_000;

/// Largest snapshot a node builds or accepts: metadata only (manifests, not chunks);
/// past this a shard must be split, not shipped whole.
pub const SNAPSHOT_MAX_BYTES: u64 = 1 << 30;

/// Bytes of a snapshot sent in one install-snapshot RPC: well under the RPC limit.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;

/// Entries sent in one append-entries RPC: 16 batches of at most `BATCH_BYTES_MAX` each
/// stay under `RAFT_RPC_MAX_BYTES`, and 16 batches of small commands (4,096 commands) are
/// plenty per round trip.
pub const APPEND_ENTRIES_MAX: u64 = 16;

/// Largest Raft RPC a node sends or accepts: `APPEND_ENTRIES_MAX` full batches plus their
/// log ids and headers, with room to spare; anything larger is refused outright.
pub const RAFT_RPC_MAX_BYTES: usize = 20 << 20;

const _: () = assert!(
    SNAPSHOT_CHUNK_BYTES + (64 << 10) <= RAFT_RPC_MAX_BYTES as u64,
    "a snapshot chunk, its meta and the RPC header fit one RPC"
);

// ---- client requests from other processes (client.rs) ----

/// Largest client request a node accepts (a proposal or a read, with its header): the
/// largest command plus room for its envelope. Anything larger is refused before it is
/// decoded.
pub const CLIENT_REQUEST_MAX_BYTES: usize = COMMAND_MAX_BYTES + (4 << 10);

/// Largest client response a node sends: the largest manifest a read can return, plus
/// room; a client refuses anything larger.
pub const CLIENT_RESPONSE_MAX_BYTES: usize = COMMAND_MAX_BYTES + (64 << 10);

/// Attempts a `MetadataClient` makes for one request (following leader hints, trying the
/// next node, waiting out an election) before it reports the group unavailable.
pub const CLIENT_ATTEMPTS_MAX: u32 = 24;

/// How long a `MetadataClient` keeps retrying one request: two election timeouts and the
/// time to reconnect, with room for a loaded machine.
pub const CLIENT_RETRY_DEADLINE: Duration = Duration::from_secs(5);

/// First pause after an answer without a leader (an election is on); doubled per attempt
/// up to `CLIENT_BACKOFF_MAX`.
pub const CLIENT_BACKOFF_MIN: Duration = Duration::from_millis(20);
pub const CLIENT_BACKOFF_MAX: Duration = Duration::from_millis(200);

const _: () = assert!(
    CLIENT_REQUEST_MAX_BYTES <= RAFT_RPC_MAX_BYTES,
    "a client request fits the fabric frames sized for Raft RPCs"
);
