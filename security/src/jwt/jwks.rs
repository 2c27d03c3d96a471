//! The tenant IdP's JWKS: where it comes from ([`JwksSource`]), how it is read, and the
//! cache that keeps it fresh without letting a flood of bad tokens hammer the IdP.
//!
//! The cache refreshes when its keys are older than `max_age_s`, and when a token names a
//! `kid` it does not hold (a key rotation) - but never twice within
//! `min_refresh_interval_s`, counted from the start of the last attempt, success or not.
//! A failed refresh keeps the previous keys; keys older than `max_stale_s` are not used at
//! all (every RS256/ES256 token is refused until a refresh succeeds).
//!
//! What this module does not do: HTTP (an HTTPS source lives in the gateway and implements
//! [`JwksSource`]; this crate has only [`JwksFile`]), or keep time (every call takes
//! `now_unix_s`). A fetch runs outside the cache's lock, so verifications of known keys
//! never wait for the IdP; while one is in flight, others see the attempt and do not
//! start another.
//!
//! Invariants: a cached key has a `kid`, is RSA of at least 2048 bits (RS256) or EC P-256
//! (ES256), and is for signatures; the cached set has no two keys with one `kid`; keys
//! that break a rule are skipped, not guessed at.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;

use crate::constants::{JWKS_KEYS_MAX, JWKS_MAX_BYTES, JWT_RSA_MODULUS_MIN_BITS};
use crate::jwt::TokenAlgorithm;
use crate::jwt::error::{JwksError, JwksFetchError};

/// Where JWKS documents come from. Called from verification at most once per minimum
/// refresh interval, and from [`crate::jwt::JwtVerifier::refresh_jwks`].
pub trait JwksSource: Send + Sync + fmt::Debug {
    /// The current JWKS document, at most [`JWKS_MAX_BYTES`] bytes.
    fn fetch(&self) -> Result<Vec<u8>, JwksFetchError>;
}

/// A JWKS document in a file, read again on every fetch (an operator or a sidecar
/// replaces it on rotation).
#[derive(Debug, Clone)]
pub struct JwksFile {
    path: PathBuf,
}

/// One usable key of the set.
#[derive(Clone)]
pub(crate) struct JwksKey {
    pub algorithm: TokenAlgorithm,
    pub key: DecodingKey,
}

/// The cache; see the module documentation.
#[derive(Debug)]
pub(crate) struct JwksCache {
    source: Box<dyn JwksSource>,
    timing: JwksTiming,
    state: Mutex<CacheState>,
}

/// The cache's time limits, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JwksTiming {
    pub max_age_s: u64,
    pub min_refresh_interval_s: u64,
    pub max_stale_s: u64,
}

/// What a key lookup found.
pub(crate) enum Lookup {
    Found(JwksKey),
    /// The set is current but has no such `kid`.
    Unknown,
    /// There is no usable set (never fetched, or too stale).
    Unavailable,
}

#[derive(Debug, Default)]
struct CacheState {
    keys: Arc<HashMap<String, JwksKey>>,
    fetched_at_unix_s: Option<u64>,
    attempted_at_unix_s: Option<u64>,
    attempts: u64,
    last_error: Option<JwksError>,
}

/// A key as a JWKS spells it; only the members this verifier uses.
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    #[serde(rename = "use")]
    public_key_use: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl JwksFile {
    pub fn new(path: impl Into<PathBuf>) -> JwksFile {
        JwksFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl JwksSource for JwksFile {
    fn fetch(&self) -> Result<Vec<u8>, JwksFetchError> {
        let unavailable = |error: std::io::Error| JwksFetchError::Unavailable {
            reason: format!("{}: {error}", self.path.display()),
        };
        let file = std::fs::File::open(&self.path).map_err(unavailable)?;
        let limit = JWKS_MAX_BYTES as u64;
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes).map_err(unavailable)?;
        if bytes.len() as u64 > limit {
            let len_bytes = std::fs::metadata(&self.path).map_or(limit + 1, |m| m.len());
            return Err(JwksFetchError::TooLarge { len_bytes, max_bytes: limit });
        }
        Ok(bytes)
    }
}

impl fmt::Debug for JwksKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksKey").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl JwksCache {
    pub fn new(source: Box<dyn JwksSource>, timing: JwksTiming) -> JwksCache {
        JwksCache { source, timing, state: Mutex::new(CacheState::default()) }
    }

    /// The key with `kid`, refreshing first if the set is old or lacks it, as far as the
    /// rate limit allows.
    pub fn lookup(&self, kid: &str, now_unix_s: u64) -> Lookup {
        if !self.is_fresh(now_unix_s) {
            let _ = self.refresh_if_allowed(now_unix_s);
        }
        match self.lookup_cached(kid, now_unix_s) {
            Lookup::Found(key) => Lookup::Found(key),
            Lookup::Unknown | Lookup::Unavailable => {
                let _ = self.refresh_if_allowed(now_unix_s);
                self.lookup_cached(kid, now_unix_s)
            }
        }
    }

    /// Fetches the set now, unless the last attempt is within the minimum interval.
    /// `Ok(false)`: skipped by the rate limit.
    pub fn refresh_if_allowed(&self, now_unix_s: u64) -> Result<bool, JwksError> {
        {
            let mut state = self.lock();
            // A clock that went backwards counts as no time passed (the interval is > 0).
            let allowed = state.attempted_at_unix_s.is_none_or(|attempted| {
                now_unix_s.saturating_sub(attempted) >= self.timing.min_refresh_interval_s
            });
            if !allowed {
                return Ok(false);
            }
            state.attempted_at_unix_s = Some(now_unix_s);
            state.attempts += 1;
        }
        let fetched = self.source.fetch().map_err(JwksError::from).and_then(|bytes| parse(&bytes));
        let mut state = self.lock();
        match fetched {
            Ok(keys) => {
                // A slower, older attempt never replaces a newer set.
                if state.fetched_at_unix_s.is_none_or(|fetched| fetched <= now_unix_s) {
                    state.keys = Arc::new(keys);
                    state.fetched_at_unix_s = Some(now_unix_s);
                }
                state.last_error = None;
                Ok(true)
            }
            Err(error) => {
                state.last_error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// How many fetches have been started.
    pub fn attempts(&self) -> u64 {
        self.lock().attempts
    }

    pub fn last_error(&self) -> Option<JwksError> {
        self.lock().last_error.clone()
    }

    fn is_fresh(&self, now_unix_s: u64) -> bool {
        let state = self.lock();
        state.fetched_at_unix_s.is_some_and(|fetched| {
            fetched <= now_unix_s && now_unix_s - fetched < self.timing.max_age_s
        })
    }

    fn lookup_cached(&self, kid: &str, now_unix_s: u64) -> Lookup {
        let state = self.lock();
        let usable = state
            .fetched_at_unix_s
            .is_some_and(|fetched| now_unix_s.saturating_sub(fetched) < self.timing.max_stale_s);
        if !usable {
            return Lookup::Unavailable;
        }
        match state.keys.get(kid) {
            Some(key) => Lookup::Found(key.clone()),
            None => Lookup::Unknown,
        }
    }

    fn lock(&self) -> MutexGuard<'_, CacheState> {
        // Every update of the state is a few assignments that cannot panic half-way, so a
        // poisoned lock still guards a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads a JWKS document: every usable key by `kid`; unusable keys are skipped.
pub(crate) fn parse(bytes: &[u8]) -> Result<HashMap<String, JwksKey>, JwksError> {
    if bytes.len() > JWKS_MAX_BYTES {
        return Err(JwksError::TooLarge { len_bytes: bytes.len(), max_bytes: JWKS_MAX_BYTES });
    }
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(bytes).map_err(|_| JwksError::NotAJwks)?;
    if document.keys.len() > JWKS_KEYS_MAX {
        let count = document.keys.len();
        return Err(JwksError::TooManyKeys { count, max: JWKS_KEYS_MAX });
    }
    let mut keys = HashMap::with_capacity(document.keys.len());
    let mut seen_ids = std::collections::HashSet::new();
    for value in document.keys {
        let Ok(raw) = serde_json::from_value::<RawJwk>(value) else { continue };
        // A duplicate id is refused even if one of the two keys is unusable: the IdP's
        // intent is unclear.
        if let Some(kid) = &raw.kid
            && !seen_ids.insert(kid.clone())
        {
            return Err(JwksError::DuplicateKeyId);
        }
        if let Some((kid, key)) = usable_key(raw) {
            keys.insert(kid, key);
        }
    }
    Ok(keys)
}

fn usable_key(raw: RawJwk) -> Option<(String, JwksKey)> {
    let kid = raw.kid.filter(|kid| !kid.is_empty())?;
    if raw.public_key_use.as_deref().is_some_and(|public_key_use| public_key_use != "sig") {
        return None;
    }
    let decode = |part: &Option<String>| URL_SAFE_NO_PAD.decode(part.as_deref()?).ok();
    let (algorithm, key) = match raw.kty.as_deref()? {
        "RSA" => {
            let modulus = decode(&raw.n)?;
            let exponent = decode(&raw.e)?;
            let significant = modulus.iter().skip_while(|&&byte| byte == 0).count();
            if significant * 8 < JWT_RSA_MODULUS_MIN_BITS || exponent.is_empty() {
                return None;
            }
            let key = DecodingKey::from_rsa_raw_components(&modulus, &exponent);
            (TokenAlgorithm::Rs256, key)
        }
        "EC" => {
            if raw.crv.as_deref() != Some("P-256") {
                return None;
            }
            let x = decode(&raw.x)?;
            let y = decode(&raw.y)?;
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let key = DecodingKey::from_ec_components(raw.x.as_deref()?, raw.y.as_deref()?).ok()?;
            (TokenAlgorithm::Es256, key)
        }
        _ => return None,
    };
    if raw.alg.as_deref().is_some_and(|alg| alg != algorithm.name()) {
        return None;
    }
    Some((kid, JwksKey { algorithm, key }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2048-bit modulus (not a real key: parsing does not check the arithmetic).
    fn modulus_2048() -> String {
        URL_SAFE_NO_PAD.encode([0xc5u8; 256])
    }

    fn jwks(keys: &str) -> Vec<u8> {
        format!(r#"{{"keys": [{keys}]}}"#).into_bytes()
    }

    fn rsa_key(kid: &str) -> String {
        let n = modulus_2048();
        format!(r#"{{"kty": "RSA", "kid": "{kid}", "n": "{n}", "e": "AQAB"}}"#)
    }

    #[test]
    fn usable_keys_are_kept_and_others_skipped() {
        let p256 = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
        let ec = |kid: &str, crv: &str| {
            format!(
                r#"{{"kty": "EC", "kid": "{kid}", "crv": "{crv}", "x": "{p256}", "y": "{p256}"}}"#
            )
        };
        let n = modulus_2048();
        let keys = [
            rsa_key("rsa"),
            ec("ec", "P-256"),
            ec("p384", "P-384"),
            r#"{"kty": "RSA", "n": "AQAB", "e": "AQAB"}"#.to_owned(),
            r#"{"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"}"#.to_owned(),
            format!(r#"{{"kty": "RSA", "kid": "enc", "use": "enc", "n": "{n}", "e": "AQAB"}}"#),
            format!(r#"{{"kty": "RSA", "kid": "ps", "alg": "PS256", "n": "{n}", "e": "AQAB"}}"#),
            r#"{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}"#.to_owned(),
            r#"{"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AA"}"#.to_owned(),
            r#""not an object""#.to_owned(),
        ];
        let parsed = parse(&jwks(&keys.join(","))).unwrap();
        let mut kids: Vec<&str> = parsed.keys().map(String::as_str).collect();
        kids.sort();
        assert_eq!(kids, ["ec", "rsa"]);
        assert_eq!(parsed["rsa"].algorithm, TokenAlgorithm::Rs256);
        assert_eq!(parsed["ec"].algorithm, TokenAlgorithm::Es256);
    }

    #[test]
    fn malformed_sets_are_refused() {
        assert_eq!(parse(b"").unwrap_err(), JwksError::NotAJwks);
        assert_eq!(parse(b"{}").unwrap_err(), JwksError::NotAJwks);
        assert_eq!(parse(br#"{"keys": {}}"#).unwrap_err(), JwksError::NotAJwks);
        let twice = jwks(&format!("{},{}", rsa_key("a"), rsa_key("a")));
        assert_eq!(parse(&twice).unwrap_err(), JwksError::DuplicateKeyId);
        let many: Vec<String> = (0..=JWKS_KEYS_MAX).map(|i| rsa_key(&format!("k{i}"))).collect();
        assert!(matches!(parse(&jwks(&many.join(","))), Err(JwksError::TooManyKeys { .. })));
        let big = vec![b' '; JWKS_MAX_BYTES + 1];
        assert!(matches!(parse(&big), Err(JwksError::TooLarge { .. })));
        assert!(parse(&jwks("")).unwrap().is_empty());
    }

    #[test]
    fn the_file_source_reads_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let source = JwksFile::new(&path);
        assert!(matches!(source.fetch(), Err(JwksFetchError::Unavailable { .. })));
        std::fs::write(&path, jwks(&rsa_key("a"))).unwrap();
        assert_eq!(source.fetch().unwrap(), jwks(&rsa_key("a")));
        std::fs::write(&path, vec![b' '; JWKS_MAX_BYTES + 1]).unwrap();
        assert!(matches!(source.fetch(), Err(JwksFetchError::TooLarge { .. })));
    }
}
