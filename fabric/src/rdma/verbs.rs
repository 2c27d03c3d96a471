//! The verbs transport (feature `rdma`): every `unsafe` block of the crate.
//!
//! Ownership mirrors what ibverbs requires to be torn down in order: a [`QpConnection`]
//! owns its queue pair (destroyed first), its two memory regions, then an `Arc` of its
//! completion queue; memory regions and completion queues hold an `Arc` of the protection
//! domain or device they were made from, so those are released last. Raw verbs pointers
//! never leave these wrappers.
//!
//! Threads: libibverbs is thread-safe (rdma-core documents its verbs as callable from any
//! thread), so the wrappers are `Send`/`Sync`; a queue pair is still used by one request at
//! a time (a `tokio::sync::Mutex` per connection) because its buffers are reused.
//!
//! This compiles and links here but has never run: these machines have no RDMA device.

use std::collections::HashMap;
use std::ffi::CStr;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::os::raw::c_int;
use std::ptr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kiseki_proto::{FRAME_HEADER_BYTES, FrameHeader, FrameKind};
use rdma_sys::{
    ___ibv_query_port, ibv_access_flags, ibv_alloc_pd, ibv_close_device, ibv_context, ibv_cq,
    ibv_create_cq, ibv_create_qp, ibv_dealloc_pd, ibv_dereg_mr, ibv_destroy_cq, ibv_destroy_qp,
    ibv_device, ibv_free_device_list, ibv_get_device_guid, ibv_get_device_list,
    ibv_get_device_name, ibv_gid, ibv_modify_qp, ibv_mr, ibv_open_device, ibv_pd, ibv_poll_cq,
    ibv_port_attr, ibv_port_state, ibv_post_recv, ibv_post_send, ibv_qp, ibv_qp_attr,
    ibv_qp_attr_mask, ibv_qp_cap, ibv_qp_init_attr, ibv_qp_state, ibv_qp_type, ibv_query_gid,
    ibv_recv_wr, ibv_reg_mr, ibv_send_flags, ibv_send_wr, ibv_sge, ibv_wc, ibv_wc_status,
    ibv_wr_opcode,
};

use super::{NO_DEVICE_REASON, QpEndpointInfo, RdmaConfig, RdmaDevice, RdmaSetupChannel};
use crate::constants::SELECTOR_PEERS_MAX;
use crate::transport::{
    BoxFuture, Endpoint, FabricRequest, FabricResponse, Transport, TransportError, TransportKind,
};

/// Completion queue entries per connection: one send and one receive in flight.
const CQ_ENTRIES: c_int = 4;
const SEND_WR_ID: u64 = 1;
const RECV_WR_ID: u64 = 2;
/// Ack timeout exponent (4.096 µs x 2^14 = 67 ms), transport retries and RNR retries (7 =
/// retry for as long as the responder has no receive posted); the usual RC settings.
const ACK_TIMEOUT: u8 = 14;
const RETRY_COUNT: u8 = 7;
const RNR_RETRY: u8 = 7;
/// 12 = 0.64 ms the responder asks us to wait when it has no receive posted.
const MIN_RNR_TIMER: u8 = 12;

pub(super) fn discover() -> Result<Vec<RdmaDevice>, TransportError> {
    let list = DeviceList::new()?;
    let devices: Vec<RdmaDevice> = list
        .devices()
        .map(|device| RdmaDevice {
            name: device_name(device),
            // SAFETY: `device` is an entry of the live list.
            guid: u64::from_be(unsafe { ibv_get_device_guid(device) }),
        })
        .collect();
    if devices.is_empty() {
        return Err(TransportError::Unavailable { reason: NO_DEVICE_REASON.to_owned() });
    }
    Ok(devices)
}

/// The RDMA transport: one RC queue pair per peer, connected on first use.
#[derive(Debug)]
pub(super) struct RdmaTransport {
    verbs: Arc<Verbs>,
    setup: Arc<dyn RdmaSetupChannel>,
    connections: Mutex<HashMap<String, Arc<tokio::sync::Mutex<QpConnection>>>>,
}

/// The opened device, its protection domain and the port's addressing.
#[derive(Debug)]
struct Verbs {
    device: Arc<DeviceContext>,
    pd: Arc<ProtectionDomain>,
    port: PortInfo,
    config: RdmaConfig,
}

#[derive(Debug, Clone, Copy)]
struct PortInfo {
    lid: u16,
    mtu: u8,
    gid: [u8; 16],
}

impl RdmaTransport {
    pub(super) fn open(
        config: RdmaConfig,
        setup: Arc<dyn RdmaSetupChannel>,
    ) -> Result<RdmaTransport, TransportError> {
        let device = DeviceContext::open(config.device.as_deref())?;
        let port = device.port_info(config.port_num, config.gid_index)?;
        let pd = ProtectionDomain::alloc(&device)?;
        let verbs = Arc::new(Verbs { device, pd, port, config });
        Ok(RdmaTransport { verbs, setup, connections: Mutex::new(HashMap::new()) })
    }

    /// The connection to `peer`, connected now if there is none: a queue pair moved to
    /// INIT, records exchanged over the TCP+mTLS setup channel, then RTR and RTS.
    async fn connection(
        &self,
        peer: &Endpoint,
    ) -> Result<Arc<tokio::sync::Mutex<QpConnection>>, TransportError> {
        if let Some(connection) = self.table().get(&peer.node) {
            return Ok(connection.clone());
        }
        let connect_error = |reason: String| TransportError::Connect {
            peer: peer.node.clone(),
            reason: format!("RDMA: {reason}"),
        };
        let mut connection = QpConnection::create(&self.verbs).map_err(connect_error)?;
        let local = connection.local_info(&self.verbs);
        let remote = self
            .setup
            .exchange(peer, local)
            .await
            .map_err(|error| connect_error(format!("setup over TCP+mTLS failed: {error}")))?;
        connection.connect(&self.verbs, &remote).map_err(connect_error)?;
        let connection = Arc::new(tokio::sync::Mutex::new(connection));
        let mut table = self.table();
        if table.len() >= SELECTOR_PEERS_MAX && !table.contains_key(&peer.node) {
            return Err(TransportError::Busy { peer: peer.node.clone() });
        }
        table.insert(peer.node.clone(), connection.clone());
        Ok(connection)
    }

    fn forget(&self, node: &str) {
        self.table().remove(node);
    }

    fn table(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<QpConnection>>>> {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Transport for RdmaTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Rdma
    }

    fn call<'a>(
        &'a self,
        peer: &'a Endpoint,
        request: FabricRequest,
    ) -> BoxFuture<'a, Result<FabricResponse, TransportError>> {
        Box::pin(async move {
            let connection = self.connection(peer).await?;
            let mut connection = connection.lock_owned().await;
            let timeout = self.verbs.config.request_timeout;
            let node = peer.node.clone();
            // Completions are polled on a blocking thread, never on a runtime worker.
            let result =
                tokio::task::spawn_blocking(move || connection.round_trip(&node, request, timeout))
                    .await
                    .unwrap_or_else(|error| {
                        Err(TransportError::ConnectionLost {
                            peer: peer.node.clone(),
                            reason: format!("RDMA completion worker failed: {error}"),
                        })
                    });
            // A queue pair whose request failed may be in the error state or still own a
            // posted buffer: it is never reused.
            if result
                .as_ref()
                .is_err_and(|error| !matches!(error, TransportError::Oversized { .. }))
            {
                self.forget(&peer.node);
            }
            result
        })
    }
}

/// One peer's queue pair and its buffers. Field order is drop order: the queue pair goes
/// before the memory regions it may DMA into and the completion queue it posts to.
#[derive(Debug)]
struct QpConnection {
    qp: QueuePair,
    send: MemoryRegion,
    recv: MemoryRegion,
    cq: Arc<CompletionQueue>,
    local_psn: u32,
    /// The largest SEND the peer's posted receive buffers take.
    remote_slot_bytes: u32,
    next_request_id: u64,
}

impl QpConnection {
    fn create(verbs: &Verbs) -> Result<QpConnection, String> {
        let cq = CompletionQueue::create(&verbs.device)?;
        let qp = QueuePair::create(&verbs.pd, &cq)?;
        let message_bytes = verbs.config.message_max_bytes as usize;
        let send = MemoryRegion::register(&verbs.pd, message_bytes)?;
        let recv = MemoryRegion::register(&verbs.pd, message_bytes)?;
        qp.to_init(verbs.config.port_num)?;
        let local_psn = (RandomState::new().hash_one(qp.number()) as u32) & 0x00ff_ffff;
        Ok(QpConnection { qp, send, recv, cq, local_psn, remote_slot_bytes: 0, next_request_id: 0 })
    }

    fn local_info(&self, verbs: &Verbs) -> QpEndpointInfo {
        QpEndpointInfo {
            lid: verbs.port.lid,
            qp_num: self.qp.number(),
            psn: self.local_psn,
            gid: verbs.port.gid,
            gid_index: verbs.config.gid_index,
            port_num: verbs.config.port_num,
            mtu: verbs.port.mtu,
            recv_slots: 1,
            slot_bytes: verbs.config.message_max_bytes,
        }
    }

    /// INIT -> RTR (towards `remote`) -> RTS.
    fn connect(&mut self, verbs: &Verbs, remote: &QpEndpointInfo) -> Result<(), String> {
        let mtu = verbs.port.mtu.min(remote.mtu);
        self.qp.to_rtr(remote, verbs.config.port_num, verbs.config.gid_index, mtu)?;
        self.qp.to_rts(self.local_psn)?;
        self.remote_slot_bytes = remote.slot_bytes;
        Ok(())
    }

    /// One request: post the receive for its response, SEND its frame, wait for both
    /// completions, decode the response frame.
    fn round_trip(
        &mut self,
        node: &str,
        request: FabricRequest,
        timeout: Duration,
    ) -> Result<FabricResponse, TransportError> {
        let limit = self.send.len().min(self.remote_slot_bytes as usize);
        let frame_len = FRAME_HEADER_BYTES + request.payload.len();
        if frame_len > limit {
            return Err(TransportError::Oversized {
                len_bytes: request.payload.len(),
                max_bytes: (limit - FRAME_HEADER_BYTES) as u32,
            });
        }
        self.next_request_id += 1;
        let request_id = self.next_request_id;
        let header = FrameHeader::request(request.op, request_id, request.payload.len() as u32);
        let buffer = self.send.bytes_mut();
        buffer[..FRAME_HEADER_BYTES].copy_from_slice(&header.encode());
        buffer[FRAME_HEADER_BYTES..frame_len].copy_from_slice(&request.payload);
        let not_sent = |reason: String| TransportError::Unavailable {
            reason: format!("{node}: RDMA: {reason}"),
        };
        self.post_recv().map_err(not_sent)?;
        self.post_send(frame_len).map_err(not_sent)?;
        let received_bytes = self.wait_for_completions(node, Instant::now() + timeout)?;
        self.decode_response(node, &request, request_id, received_bytes)
    }

    fn post_recv(&mut self) -> Result<(), String> {
        let mut sge = ibv_sge {
            addr: self.recv.addr(),
            length: self.recv.len() as u32,
            lkey: self.recv.lkey(),
        };
        let mut wr =
            ibv_recv_wr { wr_id: RECV_WR_ID, next: ptr::null_mut(), sg_list: &mut sge, num_sge: 1 };
        let mut bad: *mut ibv_recv_wr = ptr::null_mut();
        // SAFETY: the queue pair is live; `wr` and `sge` outlive the call (the provider copies
        // them into its queue); the buffer they name is registered, owned by this connection
        // and not touched by us until its completion is polled (one request at a time).
        let rc = unsafe { ibv_post_recv(self.qp.qp, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(format!("ibv_post_recv failed: {}", io::Error::from_raw_os_error(rc)));
        }
        Ok(())
    }

    fn post_send(&mut self, frame_len: usize) -> Result<(), String> {
        let mut sge =
            ibv_sge { addr: self.send.addr(), length: frame_len as u32, lkey: self.send.lkey() };
        // SAFETY: `ibv_send_wr` is a C struct of integers, pointers and unions of those; all
        // zeros is a valid (empty) work request.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = SEND_WR_ID;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = ibv_wr_opcode::IBV_WR_SEND;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: as in `post_recv`; the send buffer's first `frame_len` bytes hold the frame
        // and are not written again until the send's completion is polled.
        let rc = unsafe { ibv_post_send(self.qp.qp, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(format!("ibv_post_send failed: {}", io::Error::from_raw_os_error(rc)));
        }
        Ok(())
    }

    /// Polls until the send and the receive completed; returns the received byte count.
    fn wait_for_completions(
        &mut self,
        node: &str,
        deadline: Instant,
    ) -> Result<usize, TransportError> {
        let lost = |reason: String| TransportError::ConnectionLost {
            peer: node.to_owned(),
            reason: format!("RDMA: {reason}"),
        };
        let (mut sent, mut received) = (false, None);
        while !sent || received.is_none() {
            if Instant::now() >= deadline {
                return Err(TransportError::Timeout { peer: node.to_owned() });
            }
            // SAFETY: `ibv_wc` is a C struct of integers and a union of integers; all zeros
            // is valid, and the array is only read where `ibv_poll_cq` filled it.
            let mut completions: [ibv_wc; 2] = unsafe { std::mem::zeroed() };
            // SAFETY: the completion queue is live and `completions` has room for 2 entries.
            let polled = unsafe { ibv_poll_cq(self.cq.cq, 2, completions.as_mut_ptr()) };
            if polled < 0 {
                return Err(lost(format!("ibv_poll_cq failed ({polled})")));
            }
            for completion in &completions[..polled as usize] {
                if completion.status != ibv_wc_status::IBV_WC_SUCCESS {
                    return Err(lost(format!("work completion status {}", completion.status)));
                }
                match completion.wr_id {
                    SEND_WR_ID => sent = true,
                    RECV_WR_ID => received = Some(completion.byte_len as usize),
                    other => return Err(lost(format!("unexpected work request id {other}"))),
                }
            }
            if polled == 0 {
                std::thread::yield_now();
            }
        }
        Ok(received.expect("loop ends with a receive"))
    }

    fn decode_response(
        &self,
        node: &str,
        request: &FabricRequest,
        request_id: u64,
        received_bytes: usize,
    ) -> Result<FabricResponse, TransportError> {
        let protocol = |reason: String| TransportError::Protocol { peer: node.to_owned(), reason };
        let bytes = self.recv.bytes().get(..received_bytes).ok_or_else(|| {
            protocol(format!("{received_bytes} bytes received into a smaller buffer"))
        })?;
        let payload_max = (self.recv.len() - FRAME_HEADER_BYTES) as u32;
        let header = FrameHeader::decode(bytes, payload_max)
            .map_err(|error| protocol(format!("bad response header: {error}")))?;
        if header.kind != FrameKind::Response || header.request_id != request_id {
            return Err(protocol("a frame that is not the response to the request".into()));
        }
        if header.op != request.op {
            return Err(protocol(format!("response for {:?} to {:?}", header.op, request.op)));
        }
        let end = FRAME_HEADER_BYTES + header.payload_len_bytes as usize;
        if end != received_bytes {
            return Err(protocol(format!("frame of {end} bytes in a {received_bytes}-byte SEND")));
        }
        Ok(FabricResponse {
            status: header.status,
            payload: bytes[FRAME_HEADER_BYTES..end].to_vec(),
        })
    }
}

/// The device list `ibv_get_device_list` returns, freed on drop.
struct DeviceList {
    list: *mut *mut ibv_device,
    count: usize,
}

impl DeviceList {
    fn new() -> Result<DeviceList, TransportError> {
        let mut count: c_int = 0;
        // SAFETY: `count` is a valid out-pointer; the returned array (or NULL) is freed by
        // `Drop` and never used after.
        let list = unsafe { ibv_get_device_list(&mut count) };
        if list.is_null() {
            let error = io::Error::last_os_error();
            let reason = format!("{NO_DEVICE_REASON} (no RDMA support found: {error})");
            return Err(TransportError::Unavailable { reason });
        }
        Ok(DeviceList { list, count: usize::try_from(count).unwrap_or(0) })
    }

    fn devices(&self) -> impl Iterator<Item = *mut ibv_device> + '_ {
        // SAFETY: `index < count` entries of the array are valid device pointers while the
        // list lives (it is borrowed here).
        (0..self.count).map(|index| unsafe { *self.list.add(index) })
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: `list` came from `ibv_get_device_list` and is freed once; devices opened
        // from it stay valid (ibv_get_device_list(3)).
        unsafe { ibv_free_device_list(self.list) };
    }
}

fn device_name(device: *mut ibv_device) -> String {
    // SAFETY: `device` is an entry of a live device list; the name is a NUL-terminated
    // string inside the device struct, copied out before the list can be freed.
    let name = unsafe { ibv_get_device_name(device) };
    if name.is_null() {
        return String::from("(unnamed)");
    }
    // SAFETY: non-null and NUL-terminated, as above.
    unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
}

#[derive(Debug)]
struct DeviceContext {
    context: *mut ibv_context,
    name: String,
}

// SAFETY: a verbs context may be used from any thread (libibverbs is thread-safe); this
// wrapper only closes it, once, in `Drop`.
unsafe impl Send for DeviceContext {}
// SAFETY: as above; the shared uses (creating PDs, CQs, querying ports) are thread-safe verbs.
unsafe impl Sync for DeviceContext {}

impl DeviceContext {
    fn open(wanted: Option<&str>) -> Result<Arc<DeviceContext>, TransportError> {
        let list = DeviceList::new()?;
        if list.count == 0 {
            return Err(TransportError::Unavailable { reason: NO_DEVICE_REASON.to_owned() });
        }
        let device = list.devices().find(|device| wanted.is_none_or(|w| device_name(*device) == w));
        let Some(device) = device else {
            let wanted = wanted.unwrap_or_default();
            let reason = format!("RDMA device {wanted} not found");
            return Err(TransportError::Unavailable { reason });
        };
        let name = device_name(device);
        // SAFETY: `device` is an entry of the live list; the context stays valid after the
        // list is freed.
        let context = unsafe { ibv_open_device(device) };
        if context.is_null() {
            let error = io::Error::last_os_error();
            let reason = format!("cannot open RDMA device {name}: {error}");
            return Err(TransportError::Unavailable { reason });
        }
        Ok(Arc::new(DeviceContext { context, name }))
    }

    fn port_info(&self, port_num: u8, gid_index: u8) -> Result<PortInfo, TransportError> {
        let unavailable = |reason: String| TransportError::Unavailable {
            reason: format!("RDMA device {} port {port_num}: {reason}", self.name),
        };
        // SAFETY: `ibv_port_attr` is a C struct of integers; all zeros is valid.
        let mut attr: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is live and `attr` is a valid out-pointer of the right type.
        let rc = unsafe { ___ibv_query_port(self.context, port_num, &mut attr) };
        if rc != 0 {
            return Err(unavailable(format!("query failed: {}", io::Error::from_raw_os_error(rc))));
        }
        if attr.state != ibv_port_state::IBV_PORT_ACTIVE {
            return Err(unavailable(format!("not active (state {})", attr.state)));
        }
        let mut gid = ibv_gid { raw: [0; 16] };
        // SAFETY: the context is live and `gid` is a valid out-pointer.
        let rc = unsafe { ibv_query_gid(self.context, port_num, c_int::from(gid_index), &mut gid) };
        if rc != 0 {
            return Err(unavailable(format!("no GID at index {gid_index}")));
        }
        // SAFETY: every bit pattern of the union is a valid byte array.
        let gid = unsafe { gid.raw };
        Ok(PortInfo { lid: attr.lid, mtu: attr.active_mtu as u8, gid })
    }
}

impl Drop for DeviceContext {
    fn drop(&mut self) {
        // SAFETY: opened by `ibv_open_device`, closed once; every PD and CQ made from it holds
        // an `Arc` of it, so none outlives it.
        unsafe { ibv_close_device(self.context) };
    }
}

#[derive(Debug)]
struct ProtectionDomain {
    pd: *mut ibv_pd,
    _device: Arc<DeviceContext>,
}

// SAFETY: a protection domain may be used from any thread; freed once in `Drop`.
unsafe impl Send for ProtectionDomain {}
// SAFETY: the shared uses (registering memory, creating queue pairs) are thread-safe verbs.
unsafe impl Sync for ProtectionDomain {}

impl ProtectionDomain {
    fn alloc(device: &Arc<DeviceContext>) -> Result<Arc<ProtectionDomain>, TransportError> {
        // SAFETY: the context is live (held by the returned domain).
        let pd = unsafe { ibv_alloc_pd(device.context) };
        if pd.is_null() {
            let error = io::Error::last_os_error();
            let reason = format!("RDMA device {}: ibv_alloc_pd failed: {error}", device.name);
            return Err(TransportError::Unavailable { reason });
        }
        Ok(Arc::new(ProtectionDomain { pd, _device: device.clone() }))
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: allocated by `ibv_alloc_pd`, freed once; every memory region and queue pair
        // made in it holds an `Arc` of it.
        unsafe { ibv_dealloc_pd(self.pd) };
    }
}

#[derive(Debug)]
struct CompletionQueue {
    cq: *mut ibv_cq,
    _device: Arc<DeviceContext>,
}

// SAFETY: a completion queue may be polled from any thread; each is polled by the one
// request that holds its connection's lock, and destroyed once in `Drop`.
unsafe impl Send for CompletionQueue {}
// SAFETY: as above: shared references never poll concurrently (the connection lock).
unsafe impl Sync for CompletionQueue {}

impl CompletionQueue {
    fn create(device: &Arc<DeviceContext>) -> Result<Arc<CompletionQueue>, String> {
        // SAFETY: the context is live; no completion channel or context pointer is passed.
        let cq = unsafe {
            ibv_create_cq(device.context, CQ_ENTRIES, ptr::null_mut(), ptr::null_mut(), 0)
        };
        if cq.is_null() {
            return Err(format!("ibv_create_cq failed: {}", io::Error::last_os_error()));
        }
        Ok(Arc::new(CompletionQueue { cq, _device: device.clone() }))
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: created by `ibv_create_cq`, destroyed once, after every queue pair using it
        // (each holds an `Arc` of it).
        unsafe { ibv_destroy_cq(self.cq) };
    }
}

/// A registered buffer: `buffer` is pinned and known to the device under `mr`'s keys.
#[derive(Debug)]
struct MemoryRegion {
    mr: *mut ibv_mr,
    buffer: Box<[u8]>,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: the region is used by one request at a time (the connection lock); deregistered
// once in `Drop`, before its buffer is freed.
unsafe impl Send for MemoryRegion {}

impl MemoryRegion {
    fn register(pd: &Arc<ProtectionDomain>, len_bytes: usize) -> Result<MemoryRegion, String> {
        let mut buffer = vec![0u8; len_bytes].into_boxed_slice();
        let access = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_READ
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE;
        // SAFETY: the PD is live; `buffer` is a live allocation of `len_bytes` that does not
        // move (a boxed slice's heap data stays put when the box moves) and is freed only
        // after `Drop` deregistered it.
        let mr =
            unsafe { ibv_reg_mr(pd.pd, buffer.as_mut_ptr().cast(), len_bytes, access.0 as c_int) };
        if mr.is_null() {
            return Err(format!(
                "ibv_reg_mr of {len_bytes} bytes failed: {} (registered memory counts against \
                 RLIMIT_MEMLOCK; raise it for this user)",
                io::Error::last_os_error()
            ));
        }
        Ok(MemoryRegion { mr, buffer, _pd: pd.clone() })
    }

    fn addr(&self) -> u64 {
        self.buffer.as_ptr() as u64
    }

    fn len(&self) -> usize {
        self.buffer.len()
    }

    fn lkey(&self) -> u32 {
        // SAFETY: `mr` is live until `Drop`.
        unsafe { (*self.mr).lkey }
    }

    fn bytes(&self) -> &[u8] {
        &self.buffer
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buffer
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered by `ibv_reg_mr`, deregistered once, after the queue pair that
        // could access it was destroyed (field order of `QpConnection`); the buffer is freed
        // after this, when the fields drop.
        unsafe { ibv_dereg_mr(self.mr) };
    }
}

/// A reliable-connected queue pair.
#[derive(Debug)]
struct QueuePair {
    qp: *mut ibv_qp,
    _cq: Arc<CompletionQueue>,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: a queue pair may be used from any thread; it is used by one request at a time
// (the connection lock) and destroyed once in `Drop`.
unsafe impl Send for QueuePair {}

impl QueuePair {
    fn create(pd: &Arc<ProtectionDomain>, cq: &Arc<CompletionQueue>) -> Result<QueuePair, String> {
        let mut init = ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: cq.cq,
            recv_cq: cq.cq,
            srq: ptr::null_mut(),
            cap: ibv_qp_cap {
                max_send_wr: 1,
                max_recv_wr: 1,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            qp_type: ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: the PD and CQ are live (the queue pair holds both); `init` is valid for
        // the call.
        let qp = unsafe { ibv_create_qp(pd.pd, &mut init) };
        if qp.is_null() {
            return Err(format!("ibv_create_qp failed: {}", io::Error::last_os_error()));
        }
        Ok(QueuePair { qp, _cq: cq.clone(), _pd: pd.clone() })
    }

    fn number(&self) -> u32 {
        // SAFETY: `qp` is live until `Drop`.
        unsafe { (*self.qp).qp_num }
    }

    /// RESET -> INIT on `port_num`, allowing remote reads and writes of our regions.
    fn to_init(&self, port_num: u8) -> Result<(), String> {
        let mut attr = zeroed_attr();
        attr.qp_state = ibv_qp_state::IBV_QPS_INIT;
        attr.pkey_index = 0;
        attr.port_num = port_num;
        attr.qp_access_flags = (ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_READ
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE)
            .0;
        let mask = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_PKEY_INDEX
            | ibv_qp_attr_mask::IBV_QP_PORT
            | ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS;
        self.modify(&mut attr, mask, "INIT")
    }

    /// INIT -> RTR: ready to receive from `remote`'s queue pair.
    fn to_rtr(
        &self,
        remote: &QpEndpointInfo,
        port_num: u8,
        gid_index: u8,
        mtu: u8,
    ) -> Result<(), String> {
        let mut attr = zeroed_attr();
        attr.qp_state = ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = u32::from(mtu);
        attr.dest_qp_num = remote.qp_num;
        attr.rq_psn = remote.psn;
        attr.max_dest_rd_atomic = 1;
        attr.min_rnr_timer = MIN_RNR_TIMER;
        attr.ah_attr.dlid = remote.lid;
        attr.ah_attr.port_num = port_num;
        if remote.gid != [0; 16] {
            attr.ah_attr.is_global = 1;
            attr.ah_attr.grh.dgid = ibv_gid { raw: remote.gid };
            attr.ah_attr.grh.sgid_index = gid_index;
            attr.ah_attr.grh.hop_limit = 1;
        }
        let mask = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_AV
            | ibv_qp_attr_mask::IBV_QP_PATH_MTU
            | ibv_qp_attr_mask::IBV_QP_DEST_QPN
            | ibv_qp_attr_mask::IBV_QP_RQ_PSN
            | ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC
            | ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER;
        self.modify(&mut attr, mask, "RTR")
    }

    /// RTR -> RTS: ready to send, starting at `psn`.
    fn to_rts(&self, psn: u32) -> Result<(), String> {
        let mut attr = zeroed_attr();
        attr.qp_state = ibv_qp_state::IBV_QPS_RTS;
        attr.timeout = ACK_TIMEOUT;
        attr.retry_cnt = RETRY_COUNT;
        attr.rnr_retry = RNR_RETRY;
        attr.sq_psn = psn;
        attr.max_rd_atomic = 1;
        let mask = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_TIMEOUT
            | ibv_qp_attr_mask::IBV_QP_RETRY_CNT
            | ibv_qp_attr_mask::IBV_QP_RNR_RETRY
            | ibv_qp_attr_mask::IBV_QP_SQ_PSN
            | ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(&mut attr, mask, "RTS")
    }

    fn modify(
        &self,
        attr: &mut ibv_qp_attr,
        mask: ibv_qp_attr_mask,
        state: &str,
    ) -> Result<(), String> {
        // SAFETY: `qp` is live; `attr` is valid for the call and `mask` names only fields set.
        let rc = unsafe { ibv_modify_qp(self.qp, attr, mask.0 as c_int) };
        if rc != 0 {
            let error = io::Error::from_raw_os_error(rc);
            return Err(format!("moving the queue pair to {state} failed: {error}"));
        }
        Ok(())
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: created by `ibv_create_qp`, destroyed once; outstanding work requests are
        // flushed by the destruction, so no DMA into our buffers follows it.
        unsafe { ibv_destroy_qp(self.qp) };
    }
}

fn zeroed_attr() -> ibv_qp_attr {
    // SAFETY: `ibv_qp_attr` is a C struct of integers, enums (as integers) and address
    // vectors holding a union of byte arrays; all zeros is valid and means "unset".
    unsafe { std::mem::zeroed() }
}
