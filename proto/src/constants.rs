//! Every limit of the wire formats, with the reason it has its value.

/// Default largest frame payload: 128 MiB (the fabric issue's default). A chunk is at most
/// 4 MiB plus its envelope header, and a batch of chunk ids far less; 128 MiB leaves room
/// for Raft snapshots sent in one frame while a peer can never make a reader buffer more.
/// A frame announcing more closes the connection.
pub const FRAME_PAYLOAD_MAX_BYTES_DEFAULT: u32 = 128 << 20;

/// Most chunk ids one `HasChunks` request may ask about: 65,536 ids are 2 MiB of payload,
/// a whole repair batch, answered with an 8 KiB bitmap.
pub const HAS_CHUNKS_IDS_MAX: u32 = 1 << 16;

/// Longest tenant (organization) id in a chunk request: a DNS label, as `OrgId` allows.
pub const TENANT_ID_MAX_BYTES: usize = 63;

/// Longest error message a response carries: enough for one line, never a dump.
pub const ERROR_MESSAGE_MAX_BYTES: usize = 256;
