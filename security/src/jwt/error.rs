//! The JWT stage's errors. Each says which check failed, for the log and the audit record;
//! none carries the token, a claim's value, a key or the HS256 secret (a claim or header
//! value shows up only as its name, or the algorithm's, shortened). A remote caller is
//! told only [`RemoteError::AuthenticationFailed`].

use std::fmt;

use crate::authz::RemoteError;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtError {
    TooLong {
        len_bytes: usize,
        max_bytes: usize,
    },
    /// Not three base64url parts, or a part is not the JSON it should be.
    Malformed,
    /// `alg: none` (in any case): never accepted.
    AlgorithmNone,
    /// An algorithm other than RS256 and ES256 (with a JWKS) or HS256 (with a secret).
    AlgorithmNotAllowed {
        alg: String,
    },
    /// The header lists critical extensions; this verifier understands none.
    CriticalHeader,
    /// An RS256 or ES256 token without a `kid`.
    MissingKeyId,
    /// No key of the JWKS has the token's `kid`, even after the refresh the rate limit
    /// allowed.
    UnknownKeyId,
    /// The key with the token's `kid` is for another algorithm.
    KeyAlgorithmMismatch,
    /// The signature does not verify (a wrong key, or a changed byte).
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// A claim the configuration requires is absent (by its configured name).
    MissingClaim {
        claim: String,
    },
    /// A claim is of the wrong type or form (by its configured name).
    BadClaim {
        claim: String,
    },
    /// The token's organization is not the certificate's.
    OrgMismatch,
    /// The certificate names a project the token does not.
    ProjectMismatch,
    /// The certificate names a workload the token does not.
    WorkloadMismatch,
    /// No JWKS has been fetched, or the last good one is older than the configured limit.
    JwksUnavailable,
}

/// Why a JWKS could not be fetched or read; the previous keys stay in use.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwksError {
    Fetch(JwksFetchError),
    TooLarge {
        len_bytes: usize,
        max_bytes: usize,
    },
    /// Not JSON, or not an object with a `keys` array.
    NotAJwks,
    TooManyKeys {
        count: usize,
        max: usize,
    },
    /// Two keys with one `kid`: which one signs is ambiguous, so the set is refused.
    DuplicateKeyId,
}

/// What a [`crate::jwt::JwksSource`] reports when it cannot deliver a document. The reason
/// is for the operator (a path, an HTTP status); it must not hold credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwksFetchError {
    Unavailable { reason: String },
    TooLarge { len_bytes: u64, max_bytes: u64 },
}

/// A [`crate::jwt::JwtConfig`] that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtConfigError {
    EmptyIssuer,
    NoAudience,
    EmptyAudience,
    LeewayTooLarge {
        leeway_s: u64,
        max_s: u64,
    },
    SecretTooShort {
        len_bytes: usize,
        min_bytes: usize,
    },
    /// Neither an HS256 secret nor a JWKS source: no token could ever verify.
    NoKeySource,
    EmptyClaimName,
    /// A zero max age or refresh interval, or a stale limit below the max age.
    JwksTiming,
}

impl JwtError {
    /// What the remote caller is told.
    pub fn remote(&self) -> RemoteError {
        RemoteError::AuthenticationFailed
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use JwtError::*;
        match self {
            TooLong { len_bytes, max_bytes } => {
                write!(f, "token of {len_bytes} bytes is over {max_bytes}")
            }
            Malformed => f.write_str("malformed token"),
            AlgorithmNone => f.write_str("token algorithm 'none' is never accepted"),
            AlgorithmNotAllowed { alg } => write!(f, "token algorithm {alg:?} is not allowed"),
            CriticalHeader => f.write_str("token header has critical extensions"),
            MissingKeyId => f.write_str("token has no key id"),
            UnknownKeyId => f.write_str("token key id is not in the JWKS"),
            KeyAlgorithmMismatch => f.write_str("token key is for another algorithm"),
            BadSignature => f.write_str("token signature does not verify"),
            Expired => f.write_str("token expired"),
            NotYetValid => f.write_str("token not yet valid"),
            WrongIssuer => f.write_str("token issuer is not the configured one"),
            WrongAudience => f.write_str("token audience is not a configured one"),
            MissingClaim { claim } => write!(f, "token lacks claim {claim:?}"),
            BadClaim { claim } => write!(f, "token claim {claim:?} is malformed"),
            OrgMismatch => f.write_str("token organization is not the certificate's"),
            ProjectMismatch => f.write_str("token project is not the certificate's"),
            WorkloadMismatch => f.write_str("token workload is not the certificate's"),
            JwksUnavailable => f.write_str("no current JWKS"),
        }
    }
}

impl std::error::Error for JwtError {}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::Fetch(error) => write!(f, "JWKS fetch failed: {error}"),
            JwksError::TooLarge { len_bytes, max_bytes } => {
                write!(f, "JWKS of {len_bytes} bytes is over {max_bytes}")
            }
            JwksError::NotAJwks => f.write_str("not a JWKS document"),
            JwksError::TooManyKeys { count, max } => write!(f, "JWKS of {count} keys, over {max}"),
            JwksError::DuplicateKeyId => f.write_str("JWKS has two keys with one key id"),
        }
    }
}

impl std::error::Error for JwksError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JwksError::Fetch(error) => Some(error),
            _ => None,
        }
    }
}

impl From<JwksFetchError> for JwksError {
    fn from(error: JwksFetchError) -> JwksError {
        JwksError::Fetch(error)
    }
}

impl fmt::Display for JwksFetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksFetchError::Unavailable { reason } => write!(f, "unavailable: {reason}"),
            JwksFetchError::TooLarge { len_bytes, max_bytes } => {
                write!(f, "{len_bytes} bytes, over {max_bytes}")
            }
        }
    }
}

impl std::error::Error for JwksFetchError {}

impl fmt::Display for JwtConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use JwtConfigError::*;
        match self {
            EmptyIssuer => f.write_str("JWT issuer is empty"),
            NoAudience => f.write_str("JWT audience list is empty"),
            EmptyAudience => f.write_str("JWT audience list holds an empty audience"),
            LeewayTooLarge { leeway_s, max_s } => {
                write!(f, "JWT leeway of {leeway_s} s is over {max_s} s")
            }
            SecretTooShort { len_bytes, min_bytes } => {
                write!(f, "HS256 secret of {len_bytes} bytes is under {min_bytes}")
            }
            NoKeySource => f.write_str("neither an HS256 secret nor a JWKS source"),
            EmptyClaimName => f.write_str("a JWT claim name is empty"),
            JwksTiming => f.write_str(
                "JWKS max age and refresh interval must be over 0 and max stale at least max age",
            ),
        }
    }
}

impl std::error::Error for JwtConfigError {}
