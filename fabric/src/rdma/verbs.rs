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
//! a time (a `tokio::sync::Mutex` per connection on the requester, one serving task on the
//! responder) because its buffers are reused.
//!
//! Waiting: completions are awaited on a blocking thread, never on a runtime worker: poll
//! the completion queue, arm it (`ibv_req_notify_cq`), poll again (closing the race), then
//! sleep in `poll(2)` on the completion channel's descriptor for at most
//! [`WAKE_INTERVAL`], so an idle queue pair costs no CPU and a shutdown is seen promptly.
//! A responder holds its blocking thread while it waits for the next request (at most
//! `RDMA_RESPONDERS_MAX` of them); registering the channel's descriptor with the runtime
//! would free those threads and is the next step once this runs on real hardware.
//!
//! This compiles and links here but has never run: these machines have no RDMA device.

use std::collections::HashMap;
use std::ffi::CStr;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::os::raw::c_int;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kiseki_proto::{FRAME_HEADER_BYTES, FrameHeader, FrameKind, Op, Status};
use rdma_sys::{
    ___ibv_query_port, ibv_access_flags, ibv_ack_cq_events, ibv_alloc_pd, ibv_close_device,
    ibv_comp_channel, ibv_context, ibv_cq, ibv_create_comp_channel, ibv_create_cq, ibv_create_qp,
    ibv_dealloc_pd, ibv_dereg_mr, ibv_destroy_comp_channel, ibv_destroy_cq, ibv_destroy_qp,
    ibv_device, ibv_free_device_list, ibv_get_cq_event, ibv_get_device_guid, ibv_get_device_list,
    ibv_get_device_name, ibv_gid, ibv_modify_qp, ibv_mr, ibv_open_device, ibv_pd, ibv_poll_cq,
    ibv_port_attr, ibv_port_state, ibv_post_recv, ibv_post_send, ibv_qp, ibv_qp_attr,
    ibv_qp_attr_mask, ibv_qp_cap, ibv_qp_init_attr, ibv_qp_state, ibv_qp_type, ibv_query_gid,
    ibv_recv_wr, ibv_reg_mr, ibv_req_notify_cq, ibv_send_flags, ibv_send_wr, ibv_sge, ibv_wc,
    ibv_wc_status, ibv_wr_opcode,
};

use super::{
    NO_DEVICE_REASON, QpEndpointInfo, RdmaConfig, RdmaDevice, RdmaSetupChannel, peer_label,
};
use crate::connection::{Handler, Peer};
use crate::constants::{RDMA_RESPONDERS_MAX, SELECTOR_PEERS_MAX};
use crate::transport::{
    BoxFuture, Endpoint, FabricRequest, FabricResponse, SharedBytes, Transport, TransportError,
    TransportKind,
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
/// Longest sleep between checks of a deadline or a shutdown while waiting for completions.
const WAKE_INTERVAL: Duration = Duration::from_millis(100);

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

impl Verbs {
    fn open(config: RdmaConfig) -> Result<Arc<Verbs>, TransportError> {
        let device = DeviceContext::open(config.device.as_deref())?;
        let port = device.port_info(config.port_num, config.gid_index)?;
        let pd = ProtectionDomain::alloc(&device)?;
        Ok(Arc::new(Verbs { device, pd, port, config }))
    }
}

impl RdmaTransport {
    pub(super) fn open(
        config: RdmaConfig,
        setup: Arc<dyn RdmaSetupChannel>,
    ) -> Result<RdmaTransport, TransportError> {
        let verbs = Verbs::open(config)?;
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

    fn table(&self) -> std::sync::MutexGuard<'_, ConnectionTable> {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type ConnectionTable = HashMap<String, Arc<tokio::sync::Mutex<QpConnection>>>;

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
            let result =
                tokio::task::spawn_blocking(move || connection.round_trip(&node, request, timeout))
                    .await
                    .unwrap_or_else(|error| Err(worker_failed(&peer.node, &error)));
            // A queue pair whose request failed may be in the error state or still own a
            // posted buffer: it is never reused.
            let oversized = matches!(result, Err(TransportError::Oversized { .. }));
            if result.is_err() && !oversized {
                self.forget(&peer.node);
            }
            result
        })
    }
}

/// The node side: accepts queue pairs from peers whose setup record arrived over the
/// TCP+mTLS channel (so the caller's identity is already verified), at most
/// `RDMA_RESPONDERS_MAX` at once.
#[derive(Debug)]
pub(super) struct Acceptor {
    verbs: Arc<Verbs>,
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// One accepted queue pair, serving the requests that arrive on it.
#[derive(Debug)]
pub(super) struct Responder {
    connection: QpConnection,
    peer: Peer,
    stop: Arc<AtomicBool>,
    request_timeout: Duration,
    _slot: ActiveSlot,
}

/// Holds one of the acceptor's `RDMA_RESPONDERS_MAX` places; gives it back on drop.
#[derive(Debug)]
struct ActiveSlot(Arc<AtomicUsize>);

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Acceptor {
    pub(super) fn open(config: RdmaConfig) -> Result<Acceptor, TransportError> {
        let verbs = Verbs::open(config)?;
        Ok(Acceptor {
            verbs,
            active: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Connects a queue pair to `remote` (RESET -> INIT -> RTR -> RTS) and posts its first
    /// receive before returning our record, so the peer's first SEND finds a buffer.
    pub(super) fn accept(
        &self,
        peer: Peer,
        remote: &QpEndpointInfo,
    ) -> Result<(QpEndpointInfo, Responder), TransportError> {
        let name = peer_label(&peer);
        if self.active.fetch_add(1, Ordering::AcqRel) >= RDMA_RESPONDERS_MAX {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(TransportError::Busy { peer: name });
        }
        let slot = ActiveSlot(self.active.clone());
        let failed = |reason: String| TransportError::Connect {
            peer: name.clone(),
            reason: format!("RDMA: {reason}"),
        };
        let mut connection = QpConnection::create(&self.verbs).map_err(failed)?;
        connection.connect(&self.verbs, remote).map_err(failed)?;
        connection.post_recv().map_err(failed)?;
        let local = connection.local_info(&self.verbs);
        let responder = Responder {
            connection,
            peer,
            stop: self.stop.clone(),
            request_timeout: self.verbs.config.request_timeout,
            _slot: slot,
        };
        Ok((local, responder))
    }

    /// Makes every responder return at its next wake.
    pub(super) fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Responder {
    /// Serves requests one at a time until the acceptor shuts down (`Ok`) or the queue pair
    /// fails or the peer sends something that is not a request frame (`Err`; the queue pair
    /// is destroyed either way).
    pub(super) async fn serve<H: Handler + ?Sized>(
        self,
        handler: &H,
    ) -> Result<(), TransportError> {
        let Responder { mut connection, peer, stop, request_timeout, _slot } = self;
        let name = peer_label(&peer);
        loop {
            let (task_name, task_stop) = (name.clone(), stop.clone());
            let (returned, received) = blocking(&name, move || {
                let received = connection.wait_recv(&task_name, None, Some(&task_stop));
                (connection, received)
            })
            .await?;
            connection = returned;
            let received_bytes = match received {
                Ok(bytes) => bytes,
                Err(TransportError::Closed) => return Ok(()),
                Err(error) => return Err(error),
            };
            let (request_id, request) = connection.decode_request(&name, received_bytes)?;
            let op = request.op;
            // The next request's buffer goes up before this one is answered.
            connection.post_recv().map_err(|reason| lost(&name, reason))?;
            let response = handler.handle(&peer, request).await;
            let frame_len = connection.write_response(op, request_id, response);
            let task_name = name.clone();
            let deadline = Instant::now() + request_timeout;
            let (returned, sent) = blocking(&name, move || {
                let sent = connection.send(&task_name, frame_len, deadline);
                (connection, sent)
            })
            .await?;
            connection = returned;
            sent?;
        }
    }
}

/// Runs `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    node: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TransportError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| worker_failed(node, &error))
}

fn worker_failed(node: &str, error: &tokio::task::JoinError) -> TransportError {
    lost(node, format!("RDMA completion worker failed: {error}"))
}

fn lost(node: &str, reason: String) -> TransportError {
    TransportError::ConnectionLost { peer: node.to_owned(), reason: format!("RDMA: {reason}") }
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
    /// Completions polled but not yet consumed: the send finished; a receive of n bytes.
    send_completed: bool,
    received_bytes: Option<usize>,
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
        Ok(QpConnection {
            qp,
            send,
            recv,
            cq,
            local_psn,
            remote_slot_bytes: 0,
            next_request_id: 0,
            send_completed: false,
            received_bytes: None,
        })
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

    /// The requester's side of one request: post the receive for its response, SEND its
    /// frame, wait for both completions, decode the response frame.
    fn round_trip(
        &mut self,
        node: &str,
        request: FabricRequest,
        timeout: Duration,
    ) -> Result<FabricResponse, TransportError> {
        let limit = self.message_limit();
        let len_bytes = request.len_bytes();
        let frame_len = FRAME_HEADER_BYTES + len_bytes;
        if frame_len > limit {
            let max_bytes = (limit - FRAME_HEADER_BYTES) as u32;
            return Err(TransportError::Oversized { len_bytes, max_bytes });
        }
        self.next_request_id += 1;
        let request_id = self.next_request_id;
        let header = FrameHeader::request(request.op, request_id, len_bytes as u32);
        let buffer = self.send.bytes_mut();
        buffer[..FRAME_HEADER_BYTES].copy_from_slice(&header.encode());
        let (own, shared) =
            buffer[FRAME_HEADER_BYTES..frame_len].split_at_mut(request.payload.len());
        own.copy_from_slice(&request.payload);
        shared.copy_from_slice(request.shared.as_ref().map_or(&[], SharedBytes::as_bytes));
        let not_sent = |reason: String| TransportError::Unavailable {
            reason: format!("{node}: RDMA: {reason}"),
        };
        self.post_recv().map_err(not_sent)?;
        let deadline = Instant::now() + timeout;
        self.send(node, frame_len, deadline)?;
        let received_bytes = self.wait_recv(node, Some(deadline), None)?;
        self.decode_response(node, &request, request_id, received_bytes)
    }

    /// The largest frame both ends' buffers take.
    fn message_limit(&self) -> usize {
        self.send.len().min(self.remote_slot_bytes as usize)
    }

    /// SENDs the first `frame_len` bytes of the send buffer and waits for its completion.
    fn send(
        &mut self,
        node: &str,
        frame_len: usize,
        deadline: Instant,
    ) -> Result<(), TransportError> {
        self.post_send(frame_len).map_err(|reason| TransportError::Unavailable {
            reason: format!("{node}: RDMA: {reason}"),
        })?;
        self.wait(node, Some(deadline), None, |connection| {
            std::mem::take(&mut connection.send_completed).then_some(())
        })
    }

    /// Waits for the posted receive to complete; returns its byte count.
    fn wait_recv(
        &mut self,
        node: &str,
        deadline: Option<Instant>,
        stop: Option<&AtomicBool>,
    ) -> Result<usize, TransportError> {
        self.wait(node, deadline, stop, |connection| connection.received_bytes.take())
    }

    /// Polls, arms and sleeps on the completion channel until `done` yields a value, the
    /// deadline passes (`Timeout`) or `stop` is set (`Closed`).
    fn wait<T>(
        &mut self,
        node: &str,
        deadline: Option<Instant>,
        stop: Option<&AtomicBool>,
        mut done: impl FnMut(&mut QpConnection) -> Option<T>,
    ) -> Result<T, TransportError> {
        loop {
            self.drain().map_err(|reason| lost(node, reason))?;
            if let Some(value) = done(self) {
                return Ok(value);
            }
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                return Err(TransportError::Timeout { peer: node.to_owned() });
            }
            if stop.is_some_and(|stop| stop.load(Ordering::Acquire)) {
                return Err(TransportError::Closed);
            }
            self.cq.arm().map_err(|reason| lost(node, reason))?;
            self.drain().map_err(|reason| lost(node, reason))?;
            if let Some(value) = done(self) {
                return Ok(value);
            }
            let sleep = deadline.map_or(WAKE_INTERVAL, |deadline| {
                deadline.saturating_duration_since(now).min(WAKE_INTERVAL)
            });
            self.cq.sleep(sleep).map_err(|reason| lost(node, reason))?;
        }
    }

    /// Moves every polled completion into `send_completed` / `received_bytes`.
    fn drain(&mut self) -> Result<(), String> {
        loop {
            // SAFETY: `ibv_wc` is a C struct of integers and a union of integers; all zeros
            // is valid, and only the entries `ibv_poll_cq` filled are read.
            let mut completions: [ibv_wc; 2] = unsafe { std::mem::zeroed() };
            let polled = self.cq.poll(&mut completions)?;
            for completion in &completions[..polled] {
                if completion.status != ibv_wc_status::IBV_WC_SUCCESS {
                    return Err(format!("work completion status {}", completion.status));
                }
                match completion.wr_id {
                    SEND_WR_ID => self.send_completed = true,
                    RECV_WR_ID => self.received_bytes = Some(completion.byte_len as usize),
                    other => return Err(format!("unexpected work request id {other}")),
                }
            }
            if polled < completions.len() {
                return Ok(());
            }
        }
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
        // and not read by us until its completion is polled (one request at a time).
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

    /// The frame in the receive buffer, checked as a header and a length.
    fn received_frame(
        &self,
        node: &str,
        received_bytes: usize,
    ) -> Result<(FrameHeader, &[u8]), TransportError> {
        let protocol = |reason: String| TransportError::Protocol { peer: node.to_owned(), reason };
        let bytes = self.recv.bytes().get(..received_bytes).ok_or_else(|| {
            protocol(format!("{received_bytes} bytes received into a smaller buffer"))
        })?;
        let payload_max = (self.recv.len() - FRAME_HEADER_BYTES) as u32;
        let header = FrameHeader::decode(bytes, payload_max)
            .map_err(|error| protocol(format!("bad frame header: {error}")))?;
        let end = FRAME_HEADER_BYTES + header.payload_len_bytes as usize;
        if end != received_bytes {
            return Err(protocol(format!("frame of {end} bytes in a {received_bytes}-byte SEND")));
        }
        Ok((header, &bytes[FRAME_HEADER_BYTES..]))
    }

    fn decode_response(
        &self,
        node: &str,
        request: &FabricRequest,
        request_id: u64,
        received_bytes: usize,
    ) -> Result<FabricResponse, TransportError> {
        let (header, payload) = self.received_frame(node, received_bytes)?;
        let protocol = |reason: String| TransportError::Protocol { peer: node.to_owned(), reason };
        if header.kind != FrameKind::Response || header.request_id != request_id {
            return Err(protocol("a frame that is not the response to the request".into()));
        }
        if header.op != request.op {
            return Err(protocol(format!("response for {:?} to {:?}", header.op, request.op)));
        }
        Ok(FabricResponse::new(header.status, payload.to_vec()))
    }

    fn decode_request(
        &self,
        node: &str,
        received_bytes: usize,
    ) -> Result<(u64, FabricRequest), TransportError> {
        let (header, payload) = self.received_frame(node, received_bytes)?;
        if header.kind != FrameKind::Request {
            let reason = String::from("a response where a request was expected");
            return Err(TransportError::Protocol { peer: node.to_owned(), reason });
        }
        let request = FabricRequest::new(header.op, payload.to_vec());
        Ok((header.request_id, request))
    }

    /// Writes the response frame into the send buffer; returns its length. A response over
    /// the peer's receive buffer is replaced by an `Internal` status saying so.
    fn write_response(&mut self, op: Op, request_id: u64, response: FabricResponse) -> usize {
        let limit = self.message_limit();
        let response = response.into_contiguous();
        let (status, payload) = if FRAME_HEADER_BYTES + response.payload.len() <= limit {
            (response.status, response.payload)
        } else {
            (Status::Internal, b"response over the RDMA message limit".to_vec())
        };
        let header = FrameHeader::response(op, request_id, status, payload.len() as u32);
        let frame_len = FRAME_HEADER_BYTES + payload.len();
        let buffer = self.send.bytes_mut();
        buffer[..FRAME_HEADER_BYTES].copy_from_slice(&header.encode());
        buffer[FRAME_HEADER_BYTES..frame_len].copy_from_slice(&payload);
        frame_len
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

/// A completion queue with its own completion channel, so a waiter can sleep on the
/// channel's descriptor instead of spinning.
#[derive(Debug)]
struct CompletionQueue {
    cq: *mut ibv_cq,
    channel: *mut ibv_comp_channel,
    _device: Arc<DeviceContext>,
}

// SAFETY: a completion queue and its channel may be used from any thread; each is polled by
// the one request or responder that owns its connection, and destroyed once in `Drop`.
unsafe impl Send for CompletionQueue {}
// SAFETY: as above: shared references never poll concurrently (the connection lock).
unsafe impl Sync for CompletionQueue {}

impl CompletionQueue {
    fn create(device: &Arc<DeviceContext>) -> Result<Arc<CompletionQueue>, String> {
        // SAFETY: the context is live (held by the returned queue).
        let channel = unsafe { ibv_create_comp_channel(device.context) };
        if channel.is_null() {
            return Err(format!("ibv_create_comp_channel failed: {}", io::Error::last_os_error()));
        }
        // SAFETY: the context and channel are live; no per-queue context pointer is passed.
        let cq = unsafe { ibv_create_cq(device.context, CQ_ENTRIES, ptr::null_mut(), channel, 0) };
        if cq.is_null() {
            let error = io::Error::last_os_error();
            // SAFETY: created above, used by no queue, destroyed once.
            unsafe { ibv_destroy_comp_channel(channel) };
            return Err(format!("ibv_create_cq failed: {error}"));
        }
        Ok(Arc::new(CompletionQueue { cq, channel, _device: device.clone() }))
    }

    /// Polls up to `completions.len()` entries; returns how many were filled.
    fn poll(&self, completions: &mut [ibv_wc]) -> Result<usize, String> {
        let room = c_int::try_from(completions.len()).unwrap_or(c_int::MAX);
        // SAFETY: the queue is live and `completions` has room for `room` entries.
        let polled = unsafe { ibv_poll_cq(self.cq, room, completions.as_mut_ptr()) };
        usize::try_from(polled).map_err(|_| format!("ibv_poll_cq failed ({polled})"))
    }

    /// Asks for an event on the channel at the next completion.
    fn arm(&self) -> Result<(), String> {
        // SAFETY: the queue is live.
        let rc = unsafe { ibv_req_notify_cq(self.cq, 0) };
        if rc != 0 {
            return Err(format!("ibv_req_notify_cq failed: {}", io::Error::from_raw_os_error(rc)));
        }
        Ok(())
    }

    /// Sleeps until the channel has an event (consumed and acknowledged) or `timeout`.
    fn sleep(&self, timeout: Duration) -> Result<(), String> {
        // SAFETY: the channel is live; `fd` is a plain field.
        let fd = unsafe { (*self.channel).fd };
        let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: one valid `pollfd` for the duration of the call.
        let ready = unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(format!("poll on the completion channel failed: {error}"));
        }
        if ready == 0 {
            return Ok(());
        }
        let mut cq: *mut ibv_cq = ptr::null_mut();
        let mut context: *mut std::ffi::c_void = ptr::null_mut();
        // SAFETY: the channel is live and readable, so this does not block; the out-pointers
        // are valid.
        let rc = unsafe { ibv_get_cq_event(self.channel, &mut cq, &mut context) };
        if rc != 0 {
            return Err(format!("ibv_get_cq_event failed: {}", io::Error::last_os_error()));
        }
        // SAFETY: `cq` is the queue the event came from (this channel serves only ours); each
        // event is acknowledged once, before the queue can be destroyed.
        unsafe { ibv_ack_cq_events(cq, 1) };
        Ok(())
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: created by `ibv_create_cq`, destroyed once, after every queue pair using it
        // (each holds an `Arc` of it) and with every event acknowledged; then its channel,
        // which no other queue uses.
        unsafe {
            ibv_destroy_cq(self.cq);
            ibv_destroy_comp_channel(self.channel);
        }
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
