//! Admission of a new node (seed 003): single-use, expiring tokens.
//!
//! An administrator mints a token for one named node (`kiseki-server admission-token create
//! --node NAME`). The node presents it once, over TLS that authenticates the server (the
//! node has no certificate yet: this is the one listener where a client certificate is
//! optional, and the token is what authenticates the client), and receives a
//! certificate-granting certificate (OU `kiseki-cgc`); with that it requests its role
//! certificates and their renewals. The CGC is good for nothing else: authorization gives
//! `Role::CertGranting` only the `/v1/admission/...` paths.
//!
//! What this module does: mint tokens, keep the [`TokenStore`] of their hashes, and redeem a
//! token at most once. It does no I/O: the store serializes to JSON and its owner persists
//! it (0600) before answering the node, so a crash cannot make a redeemed token usable
//! again. The owner is the gateway's admission service (`kiseki_gateway::admission`), which
//! also signs the node's certificates (`CertificateAuthority::issue_for_csr`).
//!
//! Invariants:
//! - a token is 256 bits from the system CSPRNG; only its SHA-256 is ever stored, so a copy
//!   of the store does not admit anyone;
//! - the plaintext token exists only in a `Zeroizing` buffer, is shown once to the
//!   administrator, and never appears in `Debug`, `Display` or an error;
//! - redeeming compares hashes in constant time, and marks the token used before the
//!   caller gets the node name back: a second redemption of the same token fails, whatever
//!   the first one's outcome;
//! - time is an argument (`now_unix_secs`), never read here, so expiry is testable.

use std::fmt;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::constants::{
    ADMISSION_TOKEN_BYTES, ADMISSION_TOKEN_TTL_MAX_SECS, ADMISSION_TOKENS_MAX, NODE_NAME_MAX_BYTES,
};

/// Prefix of every token's text form, so a token pasted in the wrong place is recognizable
/// (and scanners for leaked secrets can find one).
pub const TOKEN_PREFIX: &str = "kiseki-adm-";

/// A freshly minted token: the text the administrator hands to the node, shown once.
pub struct AdmissionToken {
    text: Zeroizing<String>,
}

impl AdmissionToken {
    /// The token's text (`kiseki-adm-` and 64 hex digits). Show it once; never log it.
    pub fn expose(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for AdmissionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdmissionToken(<redacted>)")
    }
}

/// What the store remembers of one token: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Lowercase hex SHA-256 of the token's text.
    pub hash_hex: String,
    /// The node the token admits; the certificate it earns carries this name.
    pub node: String,
    pub created_unix_secs: u64,
    pub expires_unix_secs: u64,
    /// When it was redeemed; a redeemed token never works again.
    pub used_unix_secs: Option<u64>,
}

/// The tokens minted and not yet pruned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStore {
    tokens: Vec<TokenRecord>,
}

/// Why a token cannot be minted or redeemed. Callers on the network see only
/// [`AdmissionError::remote_message`]; the variant goes to the log and the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdmissionError {
    /// The node name is not a DNS name of 1 to 64 bytes (`NODE_NAME_MAX_BYTES`).
    BadNodeName,
    /// The lifetime is zero or over the limit.
    BadTtl { ttl_secs: u64, max_secs: u64 },
    /// The store holds as many tokens as it may; redeem or prune some first.
    StoreFull { max: usize },
    /// The text is not a token at all.
    Malformed,
    /// No token with this hash was ever minted (or it was pruned).
    Unknown,
    /// The token was redeemed before.
    Replayed,
    /// The token's lifetime is over.
    Expired,
    /// The system random generator failed.
    Random,
    /// The store file does not parse.
    CorruptStore { reason: String },
}

impl TokenStore {
    pub fn new() -> TokenStore {
        TokenStore::default()
    }

    /// Mints a token admitting `node` until `now + ttl_secs`.
    pub fn mint(
        &mut self,
        node: &str,
        ttl_secs: u64,
        now_unix_secs: u64,
    ) -> Result<AdmissionToken, AdmissionError> {
        check_node_name(node)?;
        if ttl_secs == 0 || ttl_secs > ADMISSION_TOKEN_TTL_MAX_SECS {
            return Err(AdmissionError::BadTtl {
                ttl_secs,
                max_secs: ADMISSION_TOKEN_TTL_MAX_SECS,
            });
        }
        self.prune(now_unix_secs);
        if self.tokens.len() >= ADMISSION_TOKENS_MAX {
            return Err(AdmissionError::StoreFull { max: ADMISSION_TOKENS_MAX });
        }
        let mut secret = Zeroizing::new([0u8; ADMISSION_TOKEN_BYTES]);
        SystemRandom::new().fill(&mut secret[..]).map_err(|_| AdmissionError::Random)?;
        let mut text = Zeroizing::new(String::with_capacity(TOKEN_PREFIX.len() + 64));
        text.push_str(TOKEN_PREFIX);
        for byte in secret.iter() {
            text.push(hex_digit(byte >> 4));
            text.push(hex_digit(byte & 0xF));
        }
        self.tokens.push(TokenRecord {
            hash_hex: hash_hex(&text),
            node: node.to_owned(),
            created_unix_secs: now_unix_secs,
            expires_unix_secs: now_unix_secs.saturating_add(ttl_secs),
            used_unix_secs: None,
        });
        Ok(AdmissionToken { text })
    }

    /// Redeems `token` once: returns the node it admits and marks it used. The caller must
    /// persist the store before it answers the node.
    pub fn redeem(&mut self, token: &str, now_unix_secs: u64) -> Result<String, AdmissionError> {
        let token = token.trim();
        let digits = token.strip_prefix(TOKEN_PREFIX).ok_or(AdmissionError::Malformed)?;
        if digits.len() != ADMISSION_TOKEN_BYTES * 2
            || !digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(AdmissionError::Malformed);
        }
        let hash = hash_hex(token);
        // Every record is compared, in constant time each, so the time taken does not say
        // where (or whether) the hash matched.
        let mut found = None;
        for (index, record) in self.tokens.iter().enumerate() {
            if verify_slices_are_equal(record.hash_hex.as_bytes(), hash.as_bytes()).is_ok() {
                found = Some(index);
            }
        }
        let record = &mut self.tokens[found.ok_or(AdmissionError::Unknown)?];
        if record.used_unix_secs.is_some() {
            return Err(AdmissionError::Replayed);
        }
        // Marked used even when expired: a token is judged once.
        record.used_unix_secs = Some(now_unix_secs);
        if now_unix_secs >= record.expires_unix_secs {
            return Err(AdmissionError::Expired);
        }
        Ok(record.node.clone())
    }

    /// Drops tokens expired for longer than a day (kept a while so that a late replay is
    /// reported as a replay or an expiry rather than as unknown).
    pub fn prune(&mut self, now_unix_secs: u64) {
        const KEEP_AFTER_EXPIRY_SECS: u64 = 24 * 3600;
        self.tokens.retain(|t| now_unix_secs < t.expires_unix_secs + KEEP_AFTER_EXPIRY_SECS);
    }

    pub fn records(&self) -> &[TokenRecord] {
        &self.tokens
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a token store always serializes")
    }

    pub fn from_json(text: &str) -> Result<TokenStore, AdmissionError> {
        let store: TokenStore = serde_json::from_str(text)
            .map_err(|e| AdmissionError::CorruptStore { reason: e.to_string() })?;
        if store.tokens.len() > ADMISSION_TOKENS_MAX {
            return Err(AdmissionError::CorruptStore {
                reason: format!("{} tokens, more than {ADMISSION_TOKENS_MAX}", store.tokens.len()),
            });
        }
        for record in &store.tokens {
            let hex_ok = record.hash_hex.len() == 64
                && record
                    .hash_hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok || check_node_name(&record.node).is_err() {
                return Err(AdmissionError::CorruptStore {
                    reason: "a record has a malformed hash or node name".to_owned(),
                });
            }
        }
        Ok(store)
    }
}

impl AdmissionError {
    /// What a remote caller is told: the same words for every failure, so a prober learns
    /// nothing about which tokens exist.
    pub fn remote_message(&self) -> &'static str {
        "admission refused"
    }
}

impl fmt::Display for AdmissionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdmissionError::BadNodeName => write!(
                f,
                "node name must be a DNS name of 1 to {NODE_NAME_MAX_BYTES} bytes (a-z, 0-9, \
                 '-', '.')"
            ),
            AdmissionError::BadTtl { ttl_secs, max_secs } => {
                write!(f, "token lifetime of {ttl_secs} s: must be 1 to {max_secs} s")
            }
            AdmissionError::StoreFull { max } => {
                write!(f, "{max} unredeemed tokens already: redeem or let some expire first")
            }
            AdmissionError::Malformed => f.write_str("not an admission token"),
            AdmissionError::Unknown => f.write_str("unknown admission token"),
            AdmissionError::Replayed => f.write_str("admission token already used"),
            AdmissionError::Expired => f.write_str("admission token expired"),
            AdmissionError::Random => f.write_str("the system random generator failed"),
            AdmissionError::CorruptStore { reason } => {
                write!(f, "admission token store is corrupt: {reason}")
            }
        }
    }
}

impl std::error::Error for AdmissionError {}

/// A node name: a lowercase DNS name (labels of a-z, 0-9 and inner '-', joined by '.').
pub fn check_node_name(node: &str) -> Result<(), AdmissionError> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if node.is_empty() || node.len() > NODE_NAME_MAX_BYTES || !node.split('.').all(label_ok) {
        return Err(AdmissionError::BadNodeName);
    }
    Ok(())
}

fn hash_hex(token: &str) -> String {
    digest(&SHA256, token.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).expect("a nibble is a hex digit")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_token_works_once() {
        let mut store = TokenStore::new();
        let token = store.mint("node7.example.com", 3600, NOW).unwrap();
        assert!(token.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(store.redeem(token.expose(), NOW + 10).unwrap(), "node7.example.com");
        assert_eq!(store.redeem(token.expose(), NOW + 11), Err(AdmissionError::Replayed));
    }

    #[test]
    fn an_expired_token_is_refused_and_spent() {
        let mut store = TokenStore::new();
        let token = store.mint("node1", 60, NOW).unwrap();
        assert_eq!(store.redeem(token.expose(), NOW + 60), Err(AdmissionError::Expired));
        assert_eq!(store.redeem(token.expose(), NOW + 1), Err(AdmissionError::Replayed));
    }

    #[test]
    fn wrong_and_malformed_tokens_are_refused() {
        let mut store = TokenStore::new();
        let token = store.mint("node1", 60, NOW).unwrap();
        let mut wrong = token.expose().to_owned();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        assert_eq!(store.redeem(&wrong, NOW), Err(AdmissionError::Unknown));
        for text in ["", "kiseki-adm-", "kiseki-adm-xyz", "token", &token.expose()[1..]] {
            assert_eq!(store.redeem(text, NOW), Err(AdmissionError::Malformed), "{text:?}");
        }
        let upper = token.expose().to_uppercase();
        assert_eq!(store.redeem(&upper, NOW), Err(AdmissionError::Malformed));
        // The genuine token still works after the failures.
        assert_eq!(store.redeem(token.expose(), NOW).unwrap(), "node1");
    }

    #[test]
    fn the_store_keeps_only_hashes() {
        let mut store = TokenStore::new();
        let token = store.mint("node1", 60, NOW).unwrap();
        let digits = &token.expose()[TOKEN_PREFIX.len()..];
        let json = store.to_json();
        assert!(!json.contains(digits), "the token's text is in the store");
        assert!(!format!("{token:?}").contains(digits), "Debug shows the token");
        let mut reloaded = TokenStore::from_json(&json).unwrap();
        assert_eq!(reloaded, store);
        assert_eq!(reloaded.redeem(token.expose(), NOW).unwrap(), "node1");
    }

    #[test]
    fn tokens_are_distinct_and_carry_256_bits() {
        let mut store = TokenStore::new();
        let a = store.mint("node1", 60, NOW).unwrap();
        let b = store.mint("node1", 60, NOW).unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 2 * ADMISSION_TOKEN_BYTES);
    }

    #[test]
    fn bad_names_lifetimes_and_stores_are_refused() {
        let mut store = TokenStore::new();
        for name in ["", "Node1", "node_1", "-node", "a..b", &"a".repeat(NODE_NAME_MAX_BYTES + 1)] {
            assert_eq!(store.mint(name, 60, NOW).unwrap_err(), AdmissionError::BadNodeName);
        }
        assert!(matches!(store.mint("node1", 0, NOW), Err(AdmissionError::BadTtl { .. })));
        let too_long = ADMISSION_TOKEN_TTL_MAX_SECS + 1;
        assert!(matches!(store.mint("node1", too_long, NOW), Err(AdmissionError::BadTtl { .. })));
        assert!(matches!(TokenStore::from_json("{"), Err(AdmissionError::CorruptStore { .. })));
        let forged = r#"{"tokens":[{"hash_hex":"zz","node":"n","created_unix_secs":0,
            "expires_unix_secs":9,"used_unix_secs":null}]}"#;
        assert!(matches!(TokenStore::from_json(forged), Err(AdmissionError::CorruptStore { .. })));
    }

    #[test]
    fn the_store_is_bounded_and_prunes_old_tokens() {
        let mut store = TokenStore::new();
        for _ in 0..ADMISSION_TOKENS_MAX {
            store.mint("node1", 60, NOW).unwrap();
        }
        assert_eq!(
            store.mint("node1", 60, NOW).unwrap_err(),
            AdmissionError::StoreFull { max: ADMISSION_TOKENS_MAX }
        );
        // A day after they expired, they are pruned and room comes back.
        assert!(store.mint("node1", 60, NOW + 60 + 24 * 3600).is_ok());
        assert_eq!(store.records().len(), 1);
    }

    #[test]
    fn remote_callers_learn_nothing() {
        let errors = [AdmissionError::Unknown, AdmissionError::Replayed, AdmissionError::Expired];
        let messages: Vec<_> = errors.iter().map(AdmissionError::remote_message).collect();
        assert!(messages.windows(2).all(|w| w[0] == w[1]));
    }
}
