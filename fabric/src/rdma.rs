//! RDMA: device discovery, and (feature `rdma`) the verbs transport.
//!
//! Placeholder while the verbs part is written; discovery without the feature is final.

use crate::transport::TransportError;

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

/// The RDMA devices of this machine. Without the `rdma` feature: always
/// `TransportError::Unavailable` saying RDMA support is not compiled in.
#[cfg(not(feature = "rdma"))]
pub fn discover() -> Result<Vec<RdmaDevice>, TransportError> {
    Err(TransportError::Unavailable { reason: NOT_COMPILED_IN_REASON.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "rdma"))]
    #[test]
    fn discovery_without_the_feature_says_it_is_not_compiled_in() {
        let error = discover().unwrap_err();
        assert_eq!(error, TransportError::Unavailable { reason: NOT_COMPILED_IN_REASON.into() });
        assert!(error.to_string().contains("not compiled in"), "{error}");
    }
}
