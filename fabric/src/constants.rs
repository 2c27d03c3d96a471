//! Every limit of the fabric, with the reason it has its value.

pub use kiseki_proto::constants::FRAME_PAYLOAD_MAX_BYTES_DEFAULT;

/// Requests in flight on one connection: 64 keep a 4 MiB-chunk stream busy over a
/// 100 Gbit/s link's bandwidth-delay product with room to spare, and bound what one peer can
/// make a server hold (64 x 4 MiB = 256 MiB at most).
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 64;
