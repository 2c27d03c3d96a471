//! Every limit of the gateway crate, each with the reason for its value. Limits of the
//! certificates and tokens themselves are the security crate's
//! (`kiseki_security::constants`).

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
