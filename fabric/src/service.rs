//! The chunk service: a node answers `PutChunk`, `GetChunk`, `HasChunks`, `ReleaseChunk`
//! and `Ping` from its [`EngineHandle`], deciding first who may ask; and `RdmaSetup`, which
//! connects an RDMA queue pair for the caller.
//!
//! Who may ask, by the role of the peer's verified certificate:
//! - a storage node (`kiseki-server`) may do everything: it replicates, repairs, reads and
//!   releases for the tenants whose requests it already authorized (the gateway storing S3
//!   and gRPC objects is such a node). Its calls are authorized as
//!   `/v1/replica/replicate/<chunk id>` (put and release) and
//!   `/v1/replica/repair/<chunk id>` (get and has) on the cluster;
//! - a tenant workload (`tenant-{org}` or a SPIFFE workload) may act only for its own org:
//!   its request must name that org as the tenant, authorized as `/v1/chunk/put/<id>` (put
//!   and release: both write the org's references) and `/v1/chunk/get/<id>` on the tenant
//!   (has-chunks is a read of existence, authorized once per batch as
//!   `/v1/chunk/get/has`); and it may read, or learn of, only chunks its org references;
//! - every other role (cluster admin, SRE, key server, certificate-granting, none) is
//!   denied everything, Ping included.
//!
//! The [`Authorizer`] decides each call on top of the role rule (so KES deny policies and
//! policy files apply); every decision goes to the log as an audit event (target
//! `kiseki::audit`: denials at warn, allowed calls at debug, since this is the data path).
//!
//! References: every put that lands adds one reference to the chunk in the engine, and a
//! release drops one (the engine frees the chunk at zero). Chunks are shared across tenants
//! by dedup, so a put naming a tenant also records who holds that reference in a per-node
//! [`TenantRefs`] index: (org, chunk id), counted apart for the org's own workloads and for
//! nodes acting for the org. A tenant's get and has consult it: an org may see a chunk
//! while it holds a reference of either kind. An unreferenced chunk answers exactly like
//! an absent one: the same status (`NotFound`), the same payload, a 0 bit in a has-chunks
//! bitmap, and without asking the engine. The index is the stand-in until the consensus
//! issue keeps references; it is bounded ([`TenantRefs::new`]), and a put whose reference
//! does not fit is refused as `Unavailable` before it is stored.
//!
//! Releases: a caller releases only a reference it holds.
//! - A tenant workload releases one of the references its org's workloads put: none held
//!   (another org's chunk, one only a node put for the org, an absent one) is `NotFound`,
//!   the same shape as an absent chunk, without asking the engine. So a workload cannot
//!   drop what another org, or the gateway on its own org's behalf, keeps.
//! - A node holds the references nodes put; it is trusted for the cluster as for every
//!   other op. A release naming an org drops one of that org's node-held references from
//!   the index if there is one, and one engine reference in any case: the index lives in
//!   memory and is empty after a restart, while the engine's references are durable. A
//!   release naming no tenant drops an engine reference only (as a put naming none adds
//!   one only there).
//! - The index entry is taken before the engine is asked and given back if the engine
//!   fails (busy, unavailable), so a failed release changes nothing; an engine `NotFound`
//!   answers `NotFound` and leaves the entry dropped (no engine reference was behind it).
//!
//! What it does not do: open or check envelopes beyond their format (the engine holds no
//! key and neither does the fabric), or prove that a tenant putting chunk id X knows X's
//! plaintext: with cross-tenant dedup, a tenant that learns a shared chunk's id can claim a
//! reference to it. Tenants that opt out of cross-tenant dedup get HMAC chunk ids, which
//! no other tenant can compute.
//!
//! RDMA setup: the caller sends its 48-byte queue-pair record over TCP+mTLS, so the queue
//! pair is connected to the certificate's holder. The same role rule applies (nodes and
//! tenant workloads; others `Denied`), then the record is checked (`BadRequest`). A node
//! without an [`RdmaAcceptor`] (no device found, or the `rdma` feature off) answers
//! `Unavailable` with the reason ("no RDMA device", or "RDMA support is not compiled in"),
//! so the caller marks it TCP-only. Otherwise the acceptor connects a queue pair, the
//! answer is our record, and a responder task serves the queue pair through this same
//! service (each request over it authorized as over TCP, as the same peer); an
//! `RdmaSetup` arriving over RDMA is refused, so queue pairs are only ever set up over
//! TCP+mTLS.
//!
//! Remote errors are generic (the status's word); details go to the log. The one
//! exception is the reason a node offers no RDMA, which is not a secret.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use kiseki_engine::{ChunkId, EngineError, EngineHandle};
use kiseki_proto::{ChunkRequest, HasChunksBitmap, Op, Status, error_message};
use kiseki_security::authz::{Api, Authorizer, Caller, Target};
use kiseki_security::{Envelope, OrgId, Role};

use crate::connection::{Handler, Peer};
use crate::rdma::{self, QpEndpointInfo, RdmaAcceptor};
use crate::transport::{BoxFuture, FabricRequest, FabricResponse, TransportError};

/// The chunk service of one node; see the module's notes.
#[derive(Debug)]
pub struct ChunkService {
    engine: EngineHandle,
    authorizer: RwLock<Authorizer>,
    refs: TenantRefs,
    /// Set when discovery found a device ([`ChunkService::with_rdma`]).
    rdma: Option<RdmaSide>,
}

/// The node's RDMA acceptor, and the service its responders answer through (weak: the
/// service owns this).
#[derive(Debug)]
struct RdmaSide {
    acceptor: RdmaAcceptor,
    service: Weak<ChunkService>,
}

/// The service as an RDMA responder sees it: every op but `RdmaSetup`, which travels over
/// TCP+mTLS only.
#[derive(Debug)]
struct OverRdma(Arc<ChunkService>);

/// A node's tenant reference index: how many times each org has put each chunk.
#[derive(Debug)]
pub struct TenantRefs {
    max_entries: usize,
    table: Mutex<RefTable>,
}

#[derive(Debug, Default)]
struct RefTable {
    entries: usize,
    by_org: HashMap<String, HashMap<ChunkId, RefCount>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct RefCount {
    /// Puts by the org's own workloads that succeeded, less their releases.
    by_tenant: u64,
    /// Puts by nodes acting for the org that succeeded, less their releases.
    by_node: u64,
    /// Puts and releases under way: they hold the entry's place, and show nothing.
    pending: u32,
}

/// Who holds a reference in the index: the org's own workloads, or nodes acting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Tenant,
    Node,
}

/// A reference change under way (a put being recorded, or a release taking one): it holds
/// its entry's place until it ends, and when it ends the holder's count goes up by one if
/// `count_on_end` (a put that succeeded; a release that failed, giving its reference back).
#[derive(Debug)]
struct PendingRef<'a> {
    refs: &'a TenantRefs,
    org: String,
    chunk_id: ChunkId,
    holder: Holder,
    count_on_end: bool,
}

/// Who is asking, by certificate role.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asker {
    Node,
    Tenant(OrgId),
}

impl Asker {
    fn holder(&self) -> Holder {
        match self {
            Asker::Node => Holder::Node,
            Asker::Tenant(_) => Holder::Tenant,
        }
    }
}

impl ChunkService {
    /// A service over `engine`, authorizing with `authorizer`, with a reference index of
    /// at most `tenant_refs_max` entries
    /// ([`TENANT_REFS_MAX_DEFAULT`](crate::constants::TENANT_REFS_MAX_DEFAULT) unless
    /// configured).
    pub fn new(engine: EngineHandle, authorizer: Authorizer, tenant_refs_max: usize) -> Self {
        ChunkService {
            engine,
            authorizer: RwLock::new(authorizer),
            refs: TenantRefs::new(tenant_refs_max),
            rdma: None,
        }
    }

    /// This service, also accepting RDMA queue pairs through `acceptor` (opened by the node
    /// when discovery found a device). Shut the acceptor down
    /// ([`ChunkService::rdma_acceptor`]) to stop every responder.
    pub fn with_rdma(self, acceptor: RdmaAcceptor) -> Arc<ChunkService> {
        Arc::new_cyclic(|service| ChunkService {
            rdma: Some(RdmaSide { acceptor, service: service.clone() }),
            ..self
        })
    }

    /// The RDMA acceptor, if this node offers RDMA.
    pub fn rdma_acceptor(&self) -> Option<&RdmaAcceptor> {
        self.rdma.as_ref().map(|side| &side.acceptor)
    }

    /// Swaps in a reloaded authorizer (policy files, grants).
    pub fn replace_authorizer(&self, authorizer: Authorizer) {
        *self.authorizer.write().unwrap_or_else(PoisonError::into_inner) = authorizer;
    }

    pub fn tenant_refs(&self) -> &TenantRefs {
        &self.refs
    }

    async fn serve(&self, peer: &Peer, request: FabricRequest) -> FabricResponse {
        let Some(asker) = Asker::of(peer) else {
            tracing::warn!(
                target: "kiseki::audit",
                %peer,
                op = ?request.op,
                "chunk service denied: the peer's role may not use it"
            );
            return status_response(Status::Denied);
        };
        match request.op {
            Op::Ping => FabricResponse::new(Status::Ok, Vec::new()),
            Op::PutChunk => self.put(peer, &asker, request.payload).await,
            Op::GetChunk | Op::HasChunks => self.read(peer, &asker, request).await,
            Op::ReleaseChunk => self.release(peer, &asker, &request.payload).await,
            Op::RdmaSetup => self.rdma_setup(peer, &asker, &request.payload),
            // Served by the metadata node's own listener, never by the chunk service.
            Op::Raft => bad_request(peer, request.op, &"not a chunk-service op"),
        }
    }

    /// Connects a queue pair to the caller's record and answers with ours; see the module
    /// notes.
    fn rdma_setup(&self, peer: &Peer, asker: &Asker, record: &[u8]) -> FabricResponse {
        if let Err(error) = QpEndpointInfo::decode(record) {
            return bad_request(peer, Op::RdmaSetup, &error);
        }
        let side = self.rdma.as_ref();
        let Some((side, service)) = side.and_then(|side| Some((side, side.service.upgrade()?)))
        else {
            tracing::debug!(%peer, "RDMA setup refused: this node offers no RDMA");
            let reason = error_message(rdma::absent_reason()).as_bytes().to_vec();
            return FabricResponse::new(Status::Unavailable, reason);
        };
        match side.acceptor.accept(peer.clone(), record) {
            Ok((local, responder)) => {
                tracing::info!(target: "kiseki::audit", %peer, ?asker, "RDMA queue pair set up");
                let peer = peer.clone();
                tokio::spawn(async move {
                    if let Err(error) = responder.serve(&OverRdma(service)).await {
                        tracing::warn!(%peer, %error, "RDMA responder stopped");
                    }
                });
                FabricResponse::new(Status::Ok, local.to_vec())
            }
            Err(TransportError::Busy { .. }) => {
                tracing::warn!(%peer, "RDMA setup refused: every responder place is taken");
                status_response(Status::Busy)
            }
            Err(error) => {
                tracing::warn!(%peer, %error, "RDMA setup failed");
                status_response(Status::Unavailable)
            }
        }
    }

    async fn put(&self, peer: &Peer, asker: &Asker, payload: Vec<u8>) -> FabricResponse {
        let (tenant, header_len) = match ChunkRequest::decode(Op::PutChunk, &payload) {
            Ok(request @ ChunkRequest::Put { envelope, .. }) => {
                let tenant = request.tenant().as_str().map(str::to_owned);
                (tenant, request.encoded_len() - envelope.len())
            }
            Ok(_) => unreachable!("a put payload decodes as a put"),
            Err(error) => return bad_request(peer, Op::PutChunk, &error),
        };
        // The envelope is parsed where it lies in the request's buffer: no 4 MiB shift.
        let envelope = match Envelope::parse_owned_at(payload, header_len) {
            Ok(envelope) => envelope,
            Err(error) => return bad_request(peer, Op::PutChunk, &error),
        };
        let chunk_id = *envelope.chunk_id().as_bytes();
        let tenant = tenant.as_deref();
        if let Err(denied) = self.authorize(peer, asker, Op::PutChunk, tenant, &hex(&chunk_id)) {
            return denied;
        }
        let reservation = match tenant {
            None => None,
            Some(org) => match self.refs.reserve(org, chunk_id, asker.holder()) {
                Some(reservation) => Some(reservation),
                None => {
                    tracing::warn!(%peer, "tenant reference index full; put refused");
                    return status_response(Status::Unavailable);
                }
            },
        };
        match self.engine.put(envelope).await {
            Ok(()) => {
                if let Some(reservation) = reservation {
                    reservation.settle(true);
                }
                FabricResponse::new(Status::Ok, Vec::new())
            }
            Err(error) => engine_failure(peer, Op::PutChunk, &chunk_id, &error),
        }
    }

    /// Drops one reference the caller holds; see the module's notes on releases.
    async fn release(&self, peer: &Peer, asker: &Asker, payload: &[u8]) -> FabricResponse {
        let (tenant, chunk_id) = match ChunkRequest::decode(Op::ReleaseChunk, payload) {
            Ok(ChunkRequest::Release { tenant, chunk_id }) => (tenant.as_str(), chunk_id),
            Ok(_) => unreachable!("a release payload decodes as a release"),
            Err(error) => return bad_request(peer, Op::ReleaseChunk, &error),
        };
        let argument = hex(&chunk_id);
        if let Err(denied) = self.authorize(peer, asker, Op::ReleaseChunk, tenant, &argument) {
            return denied;
        }
        let taken = tenant.and_then(|org| self.refs.take(org, chunk_id, asker.holder()));
        if taken.is_none() && matches!(asker, Asker::Tenant(_)) {
            // Authorized, so the request named the caller's own org: it holds no reference.
            tracing::debug!(%peer, chunk = %argument, "release of a reference not held");
            return status_response(Status::NotFound);
        }
        match self.engine.release(chunk_id).await {
            Ok(()) => {
                if let Some(taken) = taken {
                    taken.settle(false);
                }
                tracing::debug!(target: "kiseki::audit", %peer, chunk = %argument, "released");
                FabricResponse::new(Status::Ok, Vec::new())
            }
            Err(error) => {
                // No engine reference behind the entry: it stays dropped. Any other failure
                // gives the reference back (the drop of `taken` counts it again).
                if let Some(taken) = taken
                    && matches!(error, EngineError::NotFound { .. })
                {
                    taken.settle(false);
                }
                engine_failure(peer, Op::ReleaseChunk, &chunk_id, &error)
            }
        }
    }

    async fn read(&self, peer: &Peer, asker: &Asker, request: FabricRequest) -> FabricResponse {
        let op = request.op;
        let decoded = match ChunkRequest::decode(op, &request.payload) {
            Ok(decoded) => decoded,
            Err(error) => return bad_request(peer, op, &error),
        };
        let tenant = decoded.tenant().as_str();
        match decoded {
            ChunkRequest::Get { chunk_id, .. } => {
                if let Err(denied) = self.authorize(peer, asker, op, tenant, &hex(&chunk_id)) {
                    return denied;
                }
                self.get(peer, asker, chunk_id).await
            }
            ChunkRequest::Has { .. } => {
                if let Err(denied) = self.authorize(peer, asker, op, tenant, "has") {
                    return denied;
                }
                self.has(peer, asker, &decoded).await
            }
            ChunkRequest::Put { .. } | ChunkRequest::Release { .. } => {
                unreachable!("reads decode as gets or has")
            }
        }
    }

    async fn get(&self, peer: &Peer, asker: &Asker, chunk_id: ChunkId) -> FabricResponse {
        if !self.may_see(asker, &chunk_id) {
            return status_response(Status::NotFound);
        }
        match self.engine.get(chunk_id).await {
            Ok(envelope) => FabricResponse::new(Status::Ok, envelope.into_bytes()),
            Err(error) => engine_failure(peer, Op::GetChunk, &chunk_id, &error),
        }
    }

    async fn has(&self, peer: &Peer, asker: &Asker, request: &ChunkRequest<'_>) -> FabricResponse {
        // At most HAS_CHUNKS_IDS_MAX flags: the decoder checked the count.
        let mut held = Vec::with_capacity(request.chunk_ids().count());
        for chunk_id in request.chunk_ids() {
            let holds = if self.may_see(asker, &chunk_id) {
                match self.engine.contains(chunk_id).await {
                    Ok(holds) => holds,
                    Err(error) => return engine_failure(peer, Op::HasChunks, &chunk_id, &error),
                }
            } else {
                false
            };
            held.push(holds);
        }
        let mut payload = Vec::new();
        HasChunksBitmap::encode_into(held.into_iter(), &mut payload);
        FabricResponse::new(Status::Ok, payload)
    }

    /// Whether `asker` may learn anything of `chunk_id`: nodes always, tenants only for
    /// chunks their org references.
    fn may_see(&self, asker: &Asker, chunk_id: &ChunkId) -> bool {
        match asker {
            Asker::Node => true,
            Asker::Tenant(org) => self.refs.contains(org.as_str(), chunk_id),
        }
    }

    /// The authorizer's decision for this call, logged as an audit event; `Err` holds the
    /// response a denied caller gets.
    fn authorize(
        &self,
        peer: &Peer,
        asker: &Asker,
        op: Op,
        tenant: Option<&str>,
        argument: &str,
    ) -> Result<(), FabricResponse> {
        let denied = || status_response(Status::Denied);
        let (api, target) = match asker {
            Asker::Node => {
                let api = if writes(op) { Api::ReplicaReplicate } else { Api::ReplicaRepair };
                (api, Target::Cluster)
            }
            Asker::Tenant(own) => {
                let org = tenant.and_then(|tenant| OrgId::parse(tenant).ok());
                let Some(org) = org.filter(|org| org == own) else {
                    tracing::warn!(
                        target: "kiseki::audit",
                        %peer,
                        ?op,
                        ?tenant,
                        "chunk service denied: a tenant acts only for its own org"
                    );
                    return Err(denied());
                };
                let api = if writes(op) { Api::ChunkPut } else { Api::ChunkGet };
                (api, Target::Tenant(org))
            }
        };
        let identity = &peer.identity;
        let key_identity = identity.kes_identity().to_string();
        let roles = identity.role().cloned();
        let caller = Caller::new(identity.common_name().unwrap_or(""), &key_identity, roles)
            .map_err(|error| {
                tracing::warn!(%peer, %error, "peer cannot be an authorization caller");
                denied()
            })?;
        let path = format!("{}/{argument}", api.path_prefix());
        let decision = self.authorizer.read().unwrap_or_else(PoisonError::into_inner).authorize(
            &caller,
            &path,
            &target,
            unix_now_s(),
        );
        let op = op.name();
        if decision.is_allowed() {
            tracing::debug!(target: "kiseki::audit", %peer, op, event = %decision.audit_event());
            Ok(())
        } else {
            tracing::warn!(target: "kiseki::audit", %peer, op, event = %decision.audit_event());
            Err(denied())
        }
    }
}

impl Handler for ChunkService {
    fn handle<'a>(
        &'a self,
        peer: &'a Peer,
        request: FabricRequest,
    ) -> BoxFuture<'a, FabricResponse> {
        Box::pin(self.serve(peer, request))
    }
}

impl Handler for OverRdma {
    fn handle<'a>(
        &'a self,
        peer: &'a Peer,
        request: FabricRequest,
    ) -> BoxFuture<'a, FabricResponse> {
        if request.op == Op::RdmaSetup {
            tracing::warn!(%peer, "RDMA setup refused: it travels over TCP+mTLS only");
            return Box::pin(async { status_response(Status::BadRequest) });
        }
        self.0.handle(peer, request)
    }
}

impl Asker {
    fn of(peer: &Peer) -> Option<Asker> {
        match peer.identity.role()? {
            Role::Server => Some(Asker::Node),
            Role::Workload { org } => Some(Asker::Tenant(org.clone())),
            Role::ClusterAdmin
            | Role::Sre
            | Role::TenantAdmin { .. }
            | Role::KeyServer
            | Role::CertGranting => None,
        }
    }
}

impl TenantRefs {
    /// An empty index of at most `max_entries` (org, chunk) pairs.
    pub fn new(max_entries: usize) -> TenantRefs {
        TenantRefs { max_entries, table: Mutex::new(RefTable::default()) }
    }

    /// Whether `org` holds a reference to `chunk_id` from a put that succeeded.
    pub fn contains(&self, org: &str, chunk_id: &ChunkId) -> bool {
        self.count(org, chunk_id) > 0
    }

    /// How many successful puts of `chunk_id` for `org` (by its workloads or by nodes)
    /// are not released.
    pub fn count(&self, org: &str, chunk_id: &ChunkId) -> u64 {
        let table = self.lock();
        let count = table.by_org.get(org).and_then(|chunks| chunks.get(chunk_id));
        count.map_or(0, |count| count.by_tenant.saturating_add(count.by_node))
    }

    /// (org, chunk) pairs held, pending ones included.
    pub fn len(&self) -> usize {
        self.lock().entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Holds a place for a reference of `org` to `chunk_id` held by `holder`, counted once
    /// the put succeeds ([`PendingRef::settle`]); `None` if the index is full.
    fn reserve(&self, org: &str, chunk_id: ChunkId, holder: Holder) -> Option<PendingRef<'_>> {
        let mut table = self.lock();
        let exists = table.by_org.get(org).is_some_and(|chunks| chunks.contains_key(&chunk_id));
        if !exists {
            if table.entries >= self.max_entries {
                return None;
            }
            table.entries += 1;
        }
        let count = table.by_org.entry(org.to_owned()).or_default().entry(chunk_id).or_default();
        count.pending = count.pending.checked_add(1)?;
        let org = org.to_owned();
        Some(PendingRef { refs: self, org, chunk_id, holder, count_on_end: false })
    }

    /// Takes one reference of `org` to `chunk_id` held by `holder`, for a release: given
    /// back unless the release settles it as done; `None` if `holder` holds none.
    fn take(&self, org: &str, chunk_id: ChunkId, holder: Holder) -> Option<PendingRef<'_>> {
        let mut table = self.lock();
        let count = table.by_org.get_mut(org)?.get_mut(&chunk_id)?;
        let held = match holder {
            Holder::Tenant => &mut count.by_tenant,
            Holder::Node => &mut count.by_node,
        };
        if *held == 0 {
            return None;
        }
        let pending = count.pending.checked_add(1)?;
        *held -= 1;
        count.pending = pending;
        let org = org.to_owned();
        Some(PendingRef { refs: self, org, chunk_id, holder, count_on_end: true })
    }

    /// Ends a change under way: counts one reference for `holder` if `count`, and drops an
    /// entry left with nothing.
    fn finish(&self, org: &str, chunk_id: &ChunkId, holder: Holder, count: bool) {
        let mut table = self.lock();
        let table = &mut *table;
        let Some(chunks) = table.by_org.get_mut(org) else { return };
        let Some(entry) = chunks.get_mut(chunk_id) else { return };
        assert!(entry.pending > 0, "a change ends that was begun");
        entry.pending -= 1;
        if count {
            let held = match holder {
                Holder::Tenant => &mut entry.by_tenant,
                Holder::Node => &mut entry.by_node,
            };
            *held = held.saturating_add(1);
        }
        if entry.pending == 0 && entry.by_tenant == 0 && entry.by_node == 0 {
            chunks.remove(chunk_id);
            table.entries -= 1;
            if chunks.is_empty() {
                table.by_org.remove(org);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, RefTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PendingRef<'_> {
    /// Ends the change now: the holder's count goes up by one if `count` (so a put that
    /// succeeded settles with `true`, a release that went through with `false`). A change
    /// dropped unsettled ends as its kind's failure: a put counts nothing, a release gives
    /// its reference back.
    fn settle(mut self, count: bool) {
        self.count_on_end = count;
    }
}

impl Drop for PendingRef<'_> {
    fn drop(&mut self) {
        self.refs.finish(&self.org, &self.chunk_id, self.holder, self.count_on_end);
    }
}

/// Whether `op` changes references (and is authorized as a write).
fn writes(op: Op) -> bool {
    matches!(op, Op::PutChunk | Op::ReleaseChunk)
}

/// The status an engine error gives the remote caller.
pub fn engine_status(error: &EngineError) -> Status {
    match error {
        EngineError::NotFound { .. } => Status::NotFound,
        EngineError::Busy { .. } => Status::Busy,
        EngineError::CapacityCritical { .. }
        | EngineError::NoSpace { .. }
        | EngineError::DeviceNotWritable { .. }
        | EngineError::IndexFull { .. }
        | EngineError::ShardFailed { .. }
        | EngineError::Stopped => Status::Unavailable,
        EngineError::Integrity { .. }
        | EngineError::NotAnEnvelope { .. }
        | EngineError::ChunkIdMismatch { .. } => Status::Integrity,
        EngineError::BadChunkSize { .. } => Status::BadRequest,
        _ => Status::Internal,
    }
}

/// A response with `status` and its generic word as the message: the one shape every
/// error of a kind has, whatever its cause (an absent and an unreferenced chunk alike).
fn status_response(status: Status) -> FabricResponse {
    let payload = error_message(&status.to_string()).as_bytes().to_vec();
    FabricResponse::new(status, payload)
}

fn bad_request(peer: &Peer, op: Op, error: &dyn std::fmt::Display) -> FabricResponse {
    tracing::info!(%peer, ?op, %error, "chunk request refused as malformed");
    status_response(Status::BadRequest)
}

fn engine_failure(peer: &Peer, op: Op, chunk_id: &ChunkId, error: &EngineError) -> FabricResponse {
    let status = engine_status(error);
    if status == Status::NotFound {
        tracing::debug!(%peer, ?op, chunk = %hex(chunk_id), "chunk not found");
    } else {
        tracing::warn!(%peer, ?op, chunk = %hex(chunk_id), %error, ?status, "chunk request failed");
    }
    status_response(status)
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn unix_now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_count_only_committed_puts_and_are_bounded() {
        let refs = TenantRefs::new(2);
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let pending = refs.reserve("acme", a, Holder::Tenant).unwrap();
        assert!(!refs.contains("acme", &a), "a pending put shows nothing");
        pending.settle(true);
        assert!(refs.contains("acme", &a));
        assert!(!refs.contains("other", &a), "references are per org");
        refs.reserve("acme", a, Holder::Node).unwrap().settle(true);
        assert_eq!(refs.count("acme", &a), 2, "a workload's and a node's");
        drop(refs.reserve("acme", b, Holder::Tenant).unwrap());
        assert!(!refs.contains("acme", &b), "a failed put leaves no reference");
        assert_eq!(refs.len(), 1, "and no entry");
        refs.reserve("zeta", b, Holder::Tenant).unwrap().settle(true);
        assert!(refs.reserve("acme", c, Holder::Tenant).is_none(), "full");
        assert!(refs.reserve("acme", a, Holder::Tenant).is_some(), "an existing pair counts");
    }

    #[test]
    fn a_release_takes_only_what_its_holder_holds_and_gives_it_back_on_failure() {
        let refs = TenantRefs::new(8);
        let a = [1u8; 32];
        refs.reserve("acme", a, Holder::Node).unwrap().settle(true);
        assert!(refs.take("acme", a, Holder::Tenant).is_none(), "a node's, not a workload's");
        assert!(refs.take("zeta", a, Holder::Node).is_none(), "acme's, not zeta's");
        assert!(refs.take("acme", [2; 32], Holder::Node).is_none(), "no such chunk");

        let taken = refs.take("acme", a, Holder::Node).unwrap();
        assert!(!refs.contains("acme", &a), "taken while the release runs");
        assert_eq!(refs.len(), 1, "the entry keeps its place");
        assert!(refs.take("acme", a, Holder::Node).is_none(), "one reference, taken once");
        drop(taken);
        assert_eq!(refs.count("acme", &a), 1, "a failed release gives it back");

        refs.take("acme", a, Holder::Node).unwrap().settle(false);
        assert_eq!(refs.count("acme", &a), 0, "a release that went through");
        assert!(refs.is_empty(), "and the entry is gone");
    }

    #[test]
    fn engine_errors_map_to_statuses() {
        let id = [7u8; 32];
        let cases = [
            (EngineError::NotFound { chunk_id: id }, Status::NotFound),
            (EngineError::Busy { queue: "reactor queue" }, Status::Busy),
            (EngineError::NoSpace { blocks: 4 }, Status::Unavailable),
            (EngineError::IndexFull { capacity: 9 }, Status::Unavailable),
            (EngineError::Stopped, Status::Unavailable),
            (
                EngineError::Integrity { chunk_id: id, expected_crc32c: 1, actual_crc32c: 2 },
                Status::Integrity,
            ),
            (EngineError::ChunkIdMismatch { chunk_id: id, found: [8; 32] }, Status::Integrity),
            (EngineError::BadChunkSize { len_bytes: 0, max_bytes: 1 }, Status::BadRequest),
            (EngineError::Geometry { reason: "x".to_owned() }, Status::Internal),
        ];
        for (error, status) in cases {
            assert_eq!(engine_status(&error), status, "{error}");
        }
    }

    #[test]
    fn absent_and_unreferenced_share_one_shape() {
        assert_eq!(status_response(Status::NotFound), status_response(Status::NotFound));
        assert_eq!(status_response(Status::NotFound).payload, b"not found");
    }
}
