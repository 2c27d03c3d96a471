//! RDMA: device discovery, the connection-setup record, and (feature `rdma`) the verbs
//! transport.
//!
//! What it does:
//! - [`discover`] lists the verbs devices (`ibv_get_device_list`). None, or no kernel
//!   support, is `TransportError::Unavailable` with the reason [`NO_DEVICE_REASON`]; a
//!   build without the `rdma` feature says [`NOT_COMPILED_IN_REASON`] instead. Either way
//!   [`open`] fails and the node's selector is built without RDMA, so it is never offered.
//! - [`QpEndpointInfo`]: what two peers exchange to connect a reliable-connected (RC) queue
//!   pair: queue pair number, starting packet sequence number, LID and GID, path MTU and
//!   the size of the receive buffers the peer posts. It travels over the TCP+mTLS channel
//!   ([`RdmaSetupChannel`]), so an RDMA peer is authenticated by the same certificates as a
//!   TCP one, and nothing unauthenticated can connect a queue pair to this node.
//! - with the feature, [`open`] returns the verbs transport (`rdma/verbs.rs`): per peer one
//!   RC queue pair with its completion queue and two registered memory regions (send and
//!   receive buffers of `message_max_bytes`), moved RESET -> INIT -> RTR -> RTS with the
//!   peer's record; a request is one SEND of its frame (header and payload) and its
//!   response one RECV into the posted receive buffer.
//! - the node side: [`acceptor`] opens the device; [`RdmaAcceptor::accept`] takes a
//!   caller's record (received over TCP+mTLS, so the caller is already authenticated),
//!   connects a queue pair to it, posts a receive and returns our record with an
//!   [`RdmaResponder`], which answers each request frame through the same [`Handler`] the
//!   TCP server uses.
//!
//! What it does not do: tunnel. The setup channel carries the fixed 48-byte record and
//! nothing else; every request byte of the RDMA transport goes through `ibv_post_send`.
//! When RDMA cannot carry a request (no device, a message over its limit, a failed queue
//! pair), the transport fails and the selector decides, in the open, whether TCP carries
//! it, counted under TCP.
//! - the setup op: [`TcpSetupChannel`] sends our record as an `Op::RdmaSetup` request over
//!   the TCP transport; the chunk service answers with the node's record after
//!   [`RdmaAcceptor::accept`] (see `service.rs`), or `Unavailable` with the reason when the
//!   node has no RDMA, and the channel then records the peer as TCP-only in the selector.
//!
//! Invariants:
//! - a queue pair is destroyed before the memory regions and completion queue it uses, and
//!   those before their protection domain and device (ownership order in `verbs.rs`);
//! - one request at a time per queue pair, so a posted buffer is never reused while the
//!   device may still DMA into it; a queue pair whose request failed or timed out is
//!   dropped, never reused;
//! - every decoded record is checked field by field before it touches a queue pair.

use std::fmt;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use kiseki_proto::{FRAME_HEADER_BYTES, Op, Status, decode_error_message};

use crate::connection::{Handler, Peer};
use crate::constants::{RDMA_MESSAGE_MAX_BYTES, RDMA_REQUEST_TIMEOUT_DEFAULT};
use crate::selector::FabricSelector;
use crate::transport::{
    BoxFuture, Endpoint, FabricRequest, Transport, TransportError, TransportKind,
};

#[cfg(feature = "rdma")]
mod verbs;

/// What discovery says when the `rdma` feature is off.
pub const NOT_COMPILED_IN_REASON: &str =
    "RDMA support is not compiled in (build kiseki-fabric with the `rdma` feature)";

/// What discovery says when the verbs library lists no device.
pub const NO_DEVICE_REASON: &str = "no RDMA device";

/// An RDMA device the verbs library lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaDevice {
    /// The kernel's name for it (`mlx5_0`, `rxe0`).
    pub name: String,
    /// Its node GUID, in host order.
    pub guid: u64,
}

/// How the RDMA transport uses its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaConfig {
    /// The device to open; `None` = the first one listed.
    pub device: Option<String>,
    /// The device port (ports count from 1).
    pub port_num: u8,
    /// The GID table index to address the peer with (RoCE needs the right one; InfiniBand
    /// fabrics use index 0).
    pub gid_index: u8,
    /// The largest frame (header and payload) one SEND carries; each queue pair registers
    /// a send and a receive buffer of this size. At most [`RDMA_MESSAGE_MAX_BYTES`].
    pub message_max_bytes: u32,
    /// A request without its response for this long fails with `Timeout`, and its queue
    /// pair is dropped.
    pub request_timeout: Duration,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            device: None,
            port_num: 1,
            gid_index: 0,
            message_max_bytes: RDMA_MESSAGE_MAX_BYTES,
            request_timeout: RDMA_REQUEST_TIMEOUT_DEFAULT,
        }
    }
}

/// Exchanges queue-pair records with a peer over the authenticated TCP+mTLS channel: sends
/// ours, returns the peer's. The node side answers by creating its own queue pair for the
/// caller, posting receives, and returning its record. [`TcpSetupChannel`] is the real one.
pub trait RdmaSetupChannel: Send + Sync + fmt::Debug {
    fn exchange<'a>(
        &'a self,
        peer: &'a Endpoint,
        local: QpEndpointInfo,
    ) -> BoxFuture<'a, Result<QpEndpointInfo, TransportError>>;
}

/// The setup channel over the TCP+mTLS transport: an `Op::RdmaSetup` request carrying our
/// record, answered by the peer's chunk service.
///
/// What the answer teaches is recorded in the selector given to
/// [`TcpSetupChannel::report_to`]: a record means the peer offers RDMA; `Unavailable` (no
/// device, or not compiled in there) or `Denied` means it does not, so it is not tried
/// again. A node marks a peer as an RDMA candidate (`set_peer_rdma(node, true)`) from its
/// cluster map; the first RDMA request then runs this setup, and a peer that turns out
/// TCP-only is corrected here while the selector falls back to TCP for that request.
/// Transport failures (the peer unreachable) record nothing: the breakers handle those.
#[derive(Debug)]
pub struct TcpSetupChannel {
    tcp: Arc<dyn Transport>,
    /// Weak: the selector owns the RDMA transport, which owns this channel.
    selector: OnceLock<Weak<FabricSelector>>,
}

impl TcpSetupChannel {
    /// A channel over `tcp`, which must be the TCP transport.
    pub fn new(tcp: Arc<dyn Transport>) -> TcpSetupChannel {
        assert_eq!(tcp.kind(), TransportKind::Tcp, "RDMA setup travels over TCP+mTLS only");
        TcpSetupChannel { tcp, selector: OnceLock::new() }
    }

    /// Records each peer's answer in `selector` from now on (set once; later calls are
    /// ignored).
    pub fn report_to(&self, selector: &Arc<FabricSelector>) {
        let _ = self.selector.set(Arc::downgrade(selector));
    }

    fn record_peer_rdma(&self, node: &str, offers_rdma: bool) {
        if let Some(selector) = self.selector.get().and_then(Weak::upgrade) {
            selector.set_peer_rdma(node, offers_rdma);
        }
    }

    async fn exchange_over_tcp(
        &self,
        peer: &Endpoint,
        local: QpEndpointInfo,
    ) -> Result<QpEndpointInfo, TransportError> {
        let request = FabricRequest::new(Op::RdmaSetup, local.encode().to_vec());
        let response = self.tcp.call(peer, request).await?;
        let node = &peer.node;
        let message = || decode_error_message(&response.payload).unwrap_or("").to_owned();
        match response.status {
            Status::Ok => {
                let remote = QpEndpointInfo::decode(&response.payload).map_err(|error| {
                    TransportError::Protocol { peer: node.clone(), reason: error.to_string() }
                })?;
                self.record_peer_rdma(node, true);
                Ok(remote)
            }
            Status::Unavailable => {
                self.record_peer_rdma(node, false);
                Err(TransportError::Unavailable {
                    reason: format!("{node} offers no RDMA: {}", message()),
                })
            }
            Status::Denied => {
                self.record_peer_rdma(node, false);
                let reason = format!("RDMA setup refused: {}", message());
                Err(TransportError::Connect { peer: node.clone(), reason })
            }
            Status::Busy => Err(TransportError::Busy { peer: node.clone() }),
            status => {
                let reason = format!("RDMA setup failed: {status}: {}", message());
                Err(TransportError::Connect { peer: node.clone(), reason })
            }
        }
    }
}

impl RdmaSetupChannel for TcpSetupChannel {
    fn exchange<'a>(
        &'a self,
        peer: &'a Endpoint,
        local: QpEndpointInfo,
    ) -> BoxFuture<'a, Result<QpEndpointInfo, TransportError>> {
        Box::pin(self.exchange_over_tcp(peer, local))
    }
}

/// Why this node has no RDMA acceptor when it has none: the words a setup request to it
/// is answered with.
pub fn absent_reason() -> &'static str {
    if cfg!(feature = "rdma") { NO_DEVICE_REASON } else { NOT_COMPILED_IN_REASON }
}

/// The RDMA devices of this machine. Without the `rdma` feature: always
/// `TransportError::Unavailable` saying RDMA support is not compiled in.
pub fn discover() -> Result<Vec<RdmaDevice>, TransportError> {
    #[cfg(feature = "rdma")]
    {
        verbs::discover()
    }
    #[cfg(not(feature = "rdma"))]
    {
        Err(TransportError::Unavailable { reason: NOT_COMPILED_IN_REASON.to_owned() })
    }
}

/// The RDMA transport on the configured device, connecting queue pairs through `setup`.
/// Fails with `TransportError::Unavailable` when RDMA is not compiled in, no device is
/// present, or the device cannot be opened; the caller then offers TCP only.
pub fn open(
    config: RdmaConfig,
    setup: Arc<dyn RdmaSetupChannel>,
) -> Result<Arc<dyn Transport>, TransportError> {
    check_config(&config)?;
    #[cfg(feature = "rdma")]
    {
        let transport: Arc<dyn Transport> = Arc::new(verbs::RdmaTransport::open(config, setup)?);
        Ok(transport)
    }
    #[cfg(not(feature = "rdma"))]
    {
        let _ = setup;
        Err(TransportError::Unavailable { reason: NOT_COMPILED_IN_REASON.to_owned() })
    }
}

/// The node side of RDMA: accepts queue pairs from authenticated callers. Shut it down to
/// make every responder return.
#[derive(Debug)]
pub struct RdmaAcceptor {
    #[cfg(feature = "rdma")]
    inner: verbs::Acceptor,
    #[cfg(not(feature = "rdma"))]
    never: std::convert::Infallible,
}

/// One accepted queue pair; [`RdmaResponder::serve`] answers its requests.
#[derive(Debug)]
pub struct RdmaResponder {
    #[cfg(feature = "rdma")]
    inner: verbs::Responder,
    #[cfg(not(feature = "rdma"))]
    never: std::convert::Infallible,
}

/// Opens the configured device for accepting queue pairs; fails as [`open`] does.
pub fn acceptor(config: RdmaConfig) -> Result<RdmaAcceptor, TransportError> {
    check_config(&config)?;
    #[cfg(feature = "rdma")]
    {
        Ok(RdmaAcceptor { inner: verbs::Acceptor::open(config)? })
    }
    #[cfg(not(feature = "rdma"))]
    {
        Err(TransportError::Unavailable { reason: NOT_COMPILED_IN_REASON.to_owned() })
    }
}

impl RdmaAcceptor {
    /// Connects a queue pair to the caller whose encoded [`QpEndpointInfo`] is
    /// `remote_record` (received over TCP+mTLS from `peer`). Returns our record, to send
    /// back on that channel, and the responder to run (in its own task). Refuses a
    /// malformed record, and more than `RDMA_RESPONDERS_MAX` queue pairs at once (`Busy`).
    pub fn accept(
        &self,
        peer: Peer,
        remote_record: &[u8],
    ) -> Result<([u8; QP_ENDPOINT_INFO_BYTES], RdmaResponder), TransportError> {
        #[cfg(feature = "rdma")]
        {
            let remote = QpEndpointInfo::decode(remote_record).map_err(|error| {
                TransportError::Protocol { peer: peer_label(&peer), reason: error.to_string() }
            })?;
            let (local, inner) = self.inner.accept(peer, &remote)?;
            Ok((local.encode(), RdmaResponder { inner }))
        }
        #[cfg(not(feature = "rdma"))]
        {
            let _ = (peer, remote_record);
            match self.never {}
        }
    }

    /// Makes every responder of this acceptor return within a wake interval.
    pub fn shutdown(&self) {
        #[cfg(feature = "rdma")]
        self.inner.shutdown();
        #[cfg(not(feature = "rdma"))]
        match self.never {}
    }
}

impl RdmaResponder {
    /// Answers requests, one at a time, through `handler` until the acceptor shuts down
    /// (`Ok`), the queue pair fails, or the caller sends something that is not a request
    /// frame (`Err`). The queue pair is destroyed when this returns.
    pub async fn serve<H: Handler + ?Sized>(self, handler: &H) -> Result<(), TransportError> {
        #[cfg(feature = "rdma")]
        {
            self.inner.serve(handler).await
        }
        #[cfg(not(feature = "rdma"))]
        {
            let _ = handler;
            match self.never {}
        }
    }
}

fn check_config(config: &RdmaConfig) -> Result<(), TransportError> {
    if config.message_max_bytes <= FRAME_HEADER_BYTES as u32
        || config.message_max_bytes > RDMA_MESSAGE_MAX_BYTES
    {
        let reason = format!(
            "message_max_bytes must be over the {FRAME_HEADER_BYTES}-byte frame header and at \
             most {RDMA_MESSAGE_MAX_BYTES}"
        );
        return Err(TransportError::Unavailable { reason });
    }
    Ok(())
}

/// How errors name a peer that connected to us.
#[cfg(feature = "rdma")]
fn peer_label(peer: &Peer) -> String {
    peer.addr.map_or_else(|| String::from("rdma peer"), |addr| addr.to_string())
}

/// The record two peers exchange to connect an RC queue pair.
///
/// Byte map (little-endian, 48 bytes):
///
/// ```text
/// offset size field
///      0    4 magic            b"KSKR"
///      4    2 version          1
///      6    2 lid              the port's LID (0 on RoCE, where the GID routes)
///      8    4 qp_num           the queue pair number (24 bits)
///     12    4 psn              the first packet sequence number it sends (24 bits)
///     16   16 gid              the port's GID at gid_index
///     32    1 gid_index
///     33    1 port_num         1..
///     34    1 mtu              ibv_mtu: 1 = 256 B .. 5 = 4096 B
///     35    1 reserved         0
///     36    4 recv_slots       receive buffers the sender keeps posted (1..=64)
///     40    4 slot_bytes       bytes of each receive buffer (the largest SEND it takes)
///     44    4 reserved         0
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpEndpointInfo {
    pub lid: u16,
    pub qp_num: u32,
    pub psn: u32,
    pub gid: [u8; 16],
    pub gid_index: u8,
    pub port_num: u8,
    pub mtu: u8,
    pub recv_slots: u32,
    pub slot_bytes: u32,
}

/// Bytes of an encoded [`QpEndpointInfo`].
pub const QP_ENDPOINT_INFO_BYTES: usize = 48;

const QP_INFO_MAGIC: [u8; 4] = *b"KSKR";
const QP_INFO_VERSION: u16 = 1;
const QP_NUMBER_MASK: u32 = 0x00ff_ffff;
const RECV_SLOTS_MAX: u32 = 64;

const _: () = assert!(QP_ENDPOINT_INFO_BYTES == 4 + 2 + 2 + 4 + 4 + 16 + 1 + 1 + 1 + 1 + 4 + 4 + 4);

/// Why bytes are not a [`QpEndpointInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QpInfoError {
    WrongLength {
        len_bytes: usize,
    },
    BadMagic,
    UnknownVersion {
        version: u16,
    },
    NonzeroReserved,
    /// A queue pair number or PSN over 24 bits.
    Over24Bits,
    /// An MTU code outside 1..=5.
    BadMtu {
        mtu: u8,
    },
    BadPort,
    /// Receive slots outside 1..=64, or buffers of zero bytes or over the RDMA limit.
    BadSlots,
}

impl QpEndpointInfo {
    pub fn encode(&self) -> [u8; QP_ENDPOINT_INFO_BYTES] {
        let mut bytes = [0u8; QP_ENDPOINT_INFO_BYTES];
        bytes[0..4].copy_from_slice(&QP_INFO_MAGIC);
        bytes[4..6].copy_from_slice(&QP_INFO_VERSION.to_le_bytes());
        bytes[6..8].copy_from_slice(&self.lid.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.qp_num.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.psn.to_le_bytes());
        bytes[16..32].copy_from_slice(&self.gid);
        bytes[32] = self.gid_index;
        bytes[33] = self.port_num;
        bytes[34] = self.mtu;
        bytes[36..40].copy_from_slice(&self.recv_slots.to_le_bytes());
        bytes[40..44].copy_from_slice(&self.slot_bytes.to_le_bytes());
        bytes
    }

    /// Decodes and checks every field; never panics.
    pub fn decode(bytes: &[u8]) -> Result<QpEndpointInfo, QpInfoError> {
        if bytes.len() != QP_ENDPOINT_INFO_BYTES {
            return Err(QpInfoError::WrongLength { len_bytes: bytes.len() });
        }
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        if bytes[0..4] != QP_INFO_MAGIC {
            return Err(QpInfoError::BadMagic);
        }
        let version = u16_at(4);
        if version != QP_INFO_VERSION {
            return Err(QpInfoError::UnknownVersion { version });
        }
        if bytes[35] != 0 || u32_at(44) != 0 {
            return Err(QpInfoError::NonzeroReserved);
        }
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&bytes[16..32]);
        let info = QpEndpointInfo {
            lid: u16_at(6),
            qp_num: u32_at(8),
            psn: u32_at(12),
            gid,
            gid_index: bytes[32],
            port_num: bytes[33],
            mtu: bytes[34],
            recv_slots: u32_at(36),
            slot_bytes: u32_at(40),
        };
        info.check()?;
        Ok(info)
    }

    fn check(&self) -> Result<(), QpInfoError> {
        if self.qp_num > QP_NUMBER_MASK || self.psn > QP_NUMBER_MASK {
            return Err(QpInfoError::Over24Bits);
        }
        if !(1..=5).contains(&self.mtu) {
            return Err(QpInfoError::BadMtu { mtu: self.mtu });
        }
        if self.port_num == 0 {
            return Err(QpInfoError::BadPort);
        }
        let slots_ok = (1..=RECV_SLOTS_MAX).contains(&self.recv_slots);
        if !slots_ok || self.slot_bytes == 0 || self.slot_bytes > RDMA_MESSAGE_MAX_BYTES {
            return Err(QpInfoError::BadSlots);
        }
        Ok(())
    }
}

impl fmt::Display for QpInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QpInfoError::WrongLength { len_bytes } => {
                write!(f, "queue pair record of {len_bytes} bytes, not {QP_ENDPOINT_INFO_BYTES}")
            }
            QpInfoError::BadMagic => f.write_str("not a queue pair record (bad magic)"),
            QpInfoError::UnknownVersion { version } => {
                write!(f, "unknown queue pair record version {version}")
            }
            QpInfoError::NonzeroReserved => f.write_str("reserved queue pair record bytes set"),
            QpInfoError::Over24Bits => f.write_str("queue pair number or PSN over 24 bits"),
            QpInfoError::BadMtu { mtu } => write!(f, "unknown path MTU code {mtu}"),
            QpInfoError::BadPort => f.write_str("port number 0"),
            QpInfoError::BadSlots => f.write_str("receive slots or their size out of bounds"),
        }
    }
}

impl std::error::Error for QpInfoError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> QpEndpointInfo {
        QpEndpointInfo {
            lid: 7,
            qp_num: 0x12_3456,
            psn: 0xab_cdef,
            gid: [0xfe; 16],
            gid_index: 3,
            port_num: 1,
            mtu: 5,
            recv_slots: 1,
            slot_bytes: RDMA_MESSAGE_MAX_BYTES,
        }
    }

    /// The machines this project builds on have no InfiniBand in the kernel; where a
    /// device exists (`/sys/class/infiniband` lists one) the test has nothing to assert.
    fn machine_has_rdma() -> bool {
        std::fs::read_dir("/sys/class/infiniband").is_ok_and(|mut dir| dir.next().is_some())
    }

    #[derive(Debug)]
    struct NoSetup;

    impl RdmaSetupChannel for NoSetup {
        fn exchange<'a>(
            &'a self,
            _peer: &'a Endpoint,
            _local: QpEndpointInfo,
        ) -> BoxFuture<'a, Result<QpEndpointInfo, TransportError>> {
            Box::pin(async { Err(TransportError::Closed) })
        }
    }

    #[cfg(not(feature = "rdma"))]
    #[test]
    fn discovery_without_the_feature_says_it_is_not_compiled_in() {
        let error = discover().unwrap_err();
        assert_eq!(error, TransportError::Unavailable { reason: NOT_COMPILED_IN_REASON.into() });
        assert!(error.to_string().contains("not compiled in"), "{error}");
        let error = open(RdmaConfig::default(), Arc::new(NoSetup)).unwrap_err();
        assert_eq!(error, TransportError::Unavailable { reason: NOT_COMPILED_IN_REASON.into() });
        let error = acceptor(RdmaConfig::default()).unwrap_err();
        assert_eq!(error, TransportError::Unavailable { reason: NOT_COMPILED_IN_REASON.into() });
    }

    #[cfg(feature = "rdma")]
    #[test]
    fn discovery_without_a_device_says_no_rdma_device() {
        if machine_has_rdma() {
            eprintln!("this machine has an RDMA device: nothing to assert");
            return;
        }
        let error = discover().unwrap_err();
        let TransportError::Unavailable { reason } = &error else { panic!("{error:?}") };
        assert!(reason.starts_with(NO_DEVICE_REASON), "{reason}");
        let error = open(RdmaConfig::default(), Arc::new(NoSetup)).unwrap_err();
        let TransportError::Unavailable { reason } = &error else { panic!("{error:?}") };
        assert!(reason.starts_with(NO_DEVICE_REASON), "{reason}");
        let error = acceptor(RdmaConfig::default()).unwrap_err();
        let TransportError::Unavailable { reason } = &error else { panic!("{error:?}") };
        assert!(reason.starts_with(NO_DEVICE_REASON), "{reason}");
    }

    #[test]
    fn a_selector_without_a_device_does_not_offer_rdma() {
        let tcp =
            crate::testing::ScriptedTransport::new(TransportKind::Tcp, crate::testing::nodes(&[]));
        let selector = FabricSelector::new(tcp, crate::breaker::BreakerConfig::default()).unwrap();
        let selector = match open(RdmaConfig::default(), Arc::new(NoSetup)) {
            Ok(rdma) => selector.with_rdma(rdma),
            Err(_) => selector,
        };
        assert_eq!(selector.offers_rdma(), cfg!(feature = "rdma") && machine_has_rdma());
    }

    #[test]
    fn a_message_limit_out_of_bounds_is_refused() {
        for message_max_bytes in [0, FRAME_HEADER_BYTES as u32, RDMA_MESSAGE_MAX_BYTES + 1] {
            let config = RdmaConfig { message_max_bytes, ..RdmaConfig::default() };
            let error = open(config.clone(), Arc::new(NoSetup)).unwrap_err();
            assert!(error.to_string().contains("message_max_bytes"), "{error}");
            let error = acceptor(config).unwrap_err();
            assert!(error.to_string().contains("message_max_bytes"), "{error}");
        }
    }

    #[test]
    fn queue_pair_records_round_trip() {
        let bytes = info().encode();
        assert_eq!(&bytes[0..4], b"KSKR");
        assert_eq!(QpEndpointInfo::decode(&bytes), Ok(info()));
    }

    #[test]
    fn malformed_queue_pair_records_are_refused() {
        let good = info().encode();
        let with = |at: usize, value: u8| {
            let mut bytes = good;
            bytes[at] = value;
            QpEndpointInfo::decode(&bytes)
        };
        assert_eq!(
            QpEndpointInfo::decode(&good[..47]),
            Err(QpInfoError::WrongLength { len_bytes: 47 })
        );
        assert_eq!(with(0, b'X'), Err(QpInfoError::BadMagic));
        assert_eq!(with(4, 2), Err(QpInfoError::UnknownVersion { version: 2 }));
        assert_eq!(with(35, 1), Err(QpInfoError::NonzeroReserved));
        assert_eq!(with(47, 1), Err(QpInfoError::NonzeroReserved));
        assert_eq!(with(11, 1), Err(QpInfoError::Over24Bits));
        assert_eq!(with(15, 1), Err(QpInfoError::Over24Bits));
        assert_eq!(with(34, 0), Err(QpInfoError::BadMtu { mtu: 0 }));
        assert_eq!(with(34, 6), Err(QpInfoError::BadMtu { mtu: 6 }));
        assert_eq!(with(33, 0), Err(QpInfoError::BadPort));
        assert_eq!(with(36, 0), Err(QpInfoError::BadSlots));
        assert_eq!(with(36, 65), Err(QpInfoError::BadSlots));
        let zero_slot_bytes = QpEndpointInfo { slot_bytes: 0, ..info() }.encode();
        assert_eq!(QpEndpointInfo::decode(&zero_slot_bytes), Err(QpInfoError::BadSlots));
        let too_big = QpEndpointInfo { slot_bytes: RDMA_MESSAGE_MAX_BYTES + 1, ..info() };
        assert_eq!(QpEndpointInfo::decode(&too_big.encode()), Err(QpInfoError::BadSlots));
    }
}
