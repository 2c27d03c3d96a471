//! Both sides of a connection over an in-memory duplex stream: multiplexing, the bounds,
//! and what a misbehaving peer gets.

use std::sync::atomic::AtomicUsize;

use kiseki_proto::FRAME_HEADER_BYTES;
use kiseki_security::{CertificateAuthority, IdentityRules, IssueRequest, Role, Validity};
use tokio::io::{AsyncReadExt, DuplexStream};

use super::*;

const DUPLEX_BYTES: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(10);

/// Ping: Ok, its payload twice. PutChunk: echoes. HasChunks: sleeps `payload[0]` ms, then
/// echoes. GetChunk: panics. Counts how many requests it holds at once.
#[derive(Debug, Default)]
struct TestHandler {
    current: AtomicUsize,
    max_seen: AtomicUsize,
}

impl Handler for TestHandler {
    fn handle<'a>(
        &'a self,
        _peer: &'a Peer,
        request: FabricRequest,
    ) -> BoxFuture<'a, FabricResponse> {
        Box::pin(async move {
            let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_seen.fetch_max(now, Ordering::SeqCst);
            let response = match request.op {
                Op::Ping => FabricResponse::new(Status::Ok, request.payload.repeat(2)),
                Op::PutChunk => FabricResponse::new(Status::Ok, request.payload),
                Op::HasChunks => {
                    let delay_ms = u64::from(request.payload.first().copied().unwrap_or(0));
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    FabricResponse::new(Status::Ok, request.payload)
                }
                Op::GetChunk => panic!("the test handler panics on GetChunk"),
                Op::RdmaSetup | Op::Raft | Op::ReleaseChunk => {
                    unreachable!("no connection test sends {:?}", request.op)
                }
            };
            self.current.fetch_sub(1, Ordering::SeqCst);
            response
        })
    }
}

fn peer() -> Arc<Peer> {
    let ca = CertificateAuthority::generate("Unit CA", Validity::days_from_now(1)).unwrap();
    let leaf = ca
        .issue(&IssueRequest {
            role: Role::Server,
            common_name: "node-a".to_owned(),
            spiffe_id: None,
            subject_alt_names: Vec::new(),
            validity: Validity::days_from_now(1),
        })
        .unwrap();
    let identity = PeerIdentity::from_der(leaf.certificate_der(), &IdentityRules::default());
    Arc::new(Peer { identity: identity.unwrap(), addr: None })
}

struct Pair {
    client: ClientConnection,
    handler: Arc<TestHandler>,
    client_counters: Arc<ConnectionCounters>,
    server_counters: Arc<ConnectionCounters>,
    shutdown: watch::Sender<bool>,
    served: tokio::task::JoinHandle<()>,
}

fn pair(limits: ConnectionLimits, idle_timeout: Option<Duration>) -> Pair {
    let (client_end, server_end) = tokio::io::duplex(DUPLEX_BYTES);
    let (server_counters, shutdown, served, handler) = serve(server_end, limits);
    let client_counters = Arc::new(ConnectionCounters::default());
    let client = ClientConnection::start(
        client_end,
        "node-b".to_owned(),
        limits,
        idle_timeout,
        Arc::clone(&client_counters),
    );
    Pair { client, handler, client_counters, server_counters, shutdown, served }
}

type Served =
    (Arc<ConnectionCounters>, watch::Sender<bool>, tokio::task::JoinHandle<()>, Arc<TestHandler>);

fn serve(stream: DuplexStream, limits: ConnectionLimits) -> Served {
    let counters = Arc::new(ConnectionCounters::default());
    let shutdown = watch::Sender::new(false);
    let handler = Arc::new(TestHandler::default());
    let served = tokio::spawn(serve_connection(
        stream,
        peer(),
        Arc::clone(&handler),
        limits,
        Arc::clone(&counters),
        shutdown.subscribe(),
    ));
    (counters, shutdown, served, handler)
}

fn request(op: Op, payload: &[u8]) -> FabricRequest {
    FabricRequest::new(op, payload.to_vec())
}

async fn call(client: &ClientConnection, op: Op, payload: &[u8]) -> FabricResponse {
    let pending = client.try_call(request(op, payload)).expect("room");
    tokio::time::timeout(WAIT, pending.wait()).await.expect("in time").expect("a response")
}

/// Reads until the stream ends or fails; true if it did within `WAIT`.
async fn closes(stream: &mut DuplexStream) -> bool {
    let mut sink = [0u8; 4096];
    let drained = async {
        while let Ok(read) = stream.read(&mut sink).await {
            if read == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(WAIT, drained).await.is_ok()
}

#[tokio::test]
async fn responses_pair_with_their_requests_out_of_order() {
    let pair = pair(ConnectionLimits::default(), None);
    // The first request is the slowest: the later ones overtake it.
    let delays_ms = [60u8, 30, 0, 10];
    let mut pending = Vec::new();
    for delay_ms in delays_ms {
        pending.push(pair.client.try_call(request(Op::HasChunks, &[delay_ms, 7])).unwrap());
    }
    assert_eq!(pair.client.in_flight(), 4);
    for (pending, delay_ms) in pending.into_iter().zip(delays_ms) {
        let response = pending.wait().await.unwrap();
        assert_eq!(response.payload, [delay_ms, 7]);
    }
    assert!(pair.handler.max_seen.load(Ordering::SeqCst) > 1, "handled concurrently");
    assert_eq!(pair.client.in_flight(), 0);
    assert_eq!(pair.server_counters.stats().requests, 4);
    assert_eq!(pair.client_counters.stats().requests, 4);
}

#[tokio::test]
async fn a_full_connection_refuses_at_once() {
    let limits = ConnectionLimits { in_flight_max: 2, ..ConnectionLimits::default() };
    let pair = pair(limits, None);
    let first = pair.client.try_call(request(Op::HasChunks, &[50])).unwrap();
    let second = pair.client.try_call(request(Op::HasChunks, &[50])).unwrap();
    match pair.client.try_call(request(Op::Ping, b"")) {
        Err(TryCallError::Full(back)) => assert_eq!(back.op, Op::Ping, "the request comes back"),
        other => panic!("expected Full, got {other:?}"),
    }
    first.wait().await.unwrap();
    second.wait().await.unwrap();
    assert_eq!(call(&pair.client, Op::Ping, b"").await.status, Status::Ok, "room again");
}

#[tokio::test]
async fn a_panicking_handler_still_answers() {
    let pair = pair(ConnectionLimits::default(), None);
    let response = call(&pair.client, Op::GetChunk, b"x").await;
    assert_eq!(response.status, Status::Internal);
    assert_eq!(call(&pair.client, Op::Ping, b"").await.status, Status::Ok, "still serving");
}

#[tokio::test]
async fn an_oversized_response_closes_the_client_side() {
    // The server allows 1 KiB payloads, the client only 16 bytes.
    let (client_end, server_end) = tokio::io::duplex(DUPLEX_BYTES);
    let server_limits = ConnectionLimits { payload_max_bytes: 1024, in_flight_max: 4 };
    let _served = serve(server_end, server_limits);
    let counters = Arc::new(ConnectionCounters::default());
    let client_limits = ConnectionLimits { payload_max_bytes: 16, in_flight_max: 4 };
    let client = ClientConnection::start(
        client_end,
        "node-b".to_owned(),
        client_limits,
        None,
        Arc::clone(&counters),
    );
    assert_eq!(call(&client, Op::Ping, &[1; 8]).await.payload.len(), 16, "16 bytes fit");
    let slow = client.try_call(request(Op::HasChunks, &[200])).unwrap();
    let doubled = client.try_call(request(Op::Ping, &[1; 9])).unwrap();
    for pending in [doubled, slow] {
        let lost = tokio::time::timeout(WAIT, pending.wait()).await.unwrap();
        assert!(matches!(lost, Err(TransportError::ConnectionLost { .. })), "{lost:?}");
    }
    assert_eq!(counters.stats().frames_oversized, 1);
    assert!(client.is_closed());
}

#[tokio::test]
async fn malformed_requests_close_the_server_side_and_are_counted() {
    let limits = ConnectionLimits { payload_max_bytes: 1024, in_flight_max: 4 };
    type Counted = fn(&ConnectionStats) -> u64;
    let cases: [(&str, Vec<u8>, Counted); 4] = [
        ("bad magic", bad_magic(), |stats| stats.frames_malformed),
        ("garbage", vec![0xA5; 100], |stats| stats.frames_malformed),
        ("a response", response_frame(), |stats| stats.frames_malformed),
        ("oversized", oversized_request(1025), |stats| stats.frames_oversized),
    ];
    for (name, bytes, counted) in cases {
        let (mut client_end, server_end) = tokio::io::duplex(DUPLEX_BYTES);
        let (counters, _shutdown, served, _) = serve(server_end, limits);
        client_end.write_all(&bytes).await.unwrap();
        assert!(closes(&mut client_end).await, "{name}: the server closes");
        tokio::time::timeout(WAIT, served).await.unwrap().expect("no panic");
        let stats = counters.stats();
        assert_eq!(counted(&stats), 1, "{name}: {stats:?}");
        assert_eq!(stats.connections_open(), 0, "{name}");
        assert_eq!(stats.requests, 0, "{name}");
    }
}

#[tokio::test]
async fn a_truncated_frame_closes_without_a_request() {
    let (mut client_end, server_end) = tokio::io::duplex(DUPLEX_BYTES);
    let (counters, _shutdown, served, _) = serve(server_end, ConnectionLimits::default());
    let header = FrameHeader::request(Op::PutChunk, 1, 100).encode();
    client_end.write_all(&header).await.unwrap();
    client_end.write_all(&[0; 10]).await.unwrap();
    client_end.shutdown().await.unwrap();
    tokio::time::timeout(WAIT, served).await.unwrap().expect("no panic");
    assert_eq!(counters.stats().requests, 0);
}

#[tokio::test]
async fn a_closed_connection_fails_what_waits_on_it() {
    let pair = pair(ConnectionLimits::default(), None);
    let slow = pair.client.try_call(request(Op::HasChunks, &[200])).unwrap();
    pair.served.abort();
    let lost = tokio::time::timeout(WAIT, slow.wait()).await.unwrap();
    assert!(matches!(lost, Err(TransportError::ConnectionLost { .. })), "{lost:?}");
    assert!(pair.client.is_closed());
    assert!(matches!(pair.client.try_call(request(Op::Ping, b"")), Err(TryCallError::Closed(_))));
}

#[tokio::test]
async fn a_graceful_shutdown_answers_what_was_read() {
    let pair = pair(ConnectionLimits::default(), None);
    let slow = pair.client.try_call(request(Op::HasChunks, &[100])).unwrap();
    // Let the server read it before the shutdown.
    while pair.handler.current.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    pair.shutdown.send_replace(true);
    let response = tokio::time::timeout(WAIT, slow.wait()).await.unwrap().unwrap();
    assert_eq!(response.payload, [100]);
    tokio::time::timeout(WAIT, pair.served).await.unwrap().unwrap();
    assert_eq!(pair.server_counters.stats().connections_open(), 0);
}

#[tokio::test]
async fn an_idle_connection_closes_itself() {
    let idle = Duration::from_millis(200);
    let pair = pair(ConnectionLimits::default(), Some(idle));
    assert_eq!(call(&pair.client, Op::Ping, b"").await.status, Status::Ok);
    // A request in flight for longer than the idle timeout keeps the connection open.
    let slow = pair.client.try_call(request(Op::HasChunks, &[250])).unwrap();
    slow.wait().await.unwrap();
    let answered = Instant::now();
    assert!(!pair.client.is_closed(), "busy, not idle");
    tokio::time::sleep(idle / 4).await;
    assert!(!pair.client.is_closed(), "not idle long enough");
    while !pair.client.is_closed() {
        assert!(answered.elapsed() < WAIT, "never closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answered.elapsed() >= idle, "closed after {:?}", answered.elapsed());
    let stats = pair.client_counters.stats();
    assert_eq!(stats.connections_closed_idle, 1);
    assert_eq!(stats.connections_open(), 0);
}

fn bad_magic() -> Vec<u8> {
    let mut header = FrameHeader::request(Op::Ping, 1, 0).encode();
    header[0] = b'X';
    header.to_vec()
}

fn response_frame() -> Vec<u8> {
    FrameHeader::response(Op::Ping, 1, Status::Ok, 0).encode().to_vec()
}

fn oversized_request(len_bytes: u32) -> Vec<u8> {
    let header = FrameHeader::request(Op::PutChunk, 1, len_bytes).encode();
    assert_eq!(header.len(), FRAME_HEADER_BYTES);
    header.to_vec()
}
