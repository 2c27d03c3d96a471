//! The optional second stage of authentication: a JWT from the tenant's IdP, checked
//! against the peer's mTLS identity (seed 000, "OIDC/JWT second-stage authentication").
//!
//! A token verifies when, in this order:
//! 1. it is at most [`JWT_MAX_BYTES`], three base64url parts, and its header is JSON with
//!    no `crit` extension;
//! 2. its `alg` is RS256 or ES256 with a JWKS source configured, or HS256 with a secret
//!    configured; `none` is refused in any case, and so is every other algorithm, so a
//!    public key can never be used as an HMAC secret;
//! 3. for RS256/ES256, its `kid` names a key of the JWKS ([`JwksSource`], cached; see
//!    `jwks.rs` for refresh and rate limit) of the header's algorithm;
//! 4. the signature verifies (jsonwebtoken on aws-lc-rs), `iss` is the configured issuer
//!    and `aud` holds a configured audience (both required);
//! 5. `exp` (required), `nbf` and `iat` (if present) hold at `now_unix_s`, give or take
//!    the configured leeway;
//! 6. the org claim (required) is the certificate's org; if the certificate names a
//!    project or workload, the token names the same ones.
//!
//! The claim names are configurable ([`ClaimNames`]; defaults `org`, `project`,
//! `workload`). Time is an input: jsonwebtoken's own clock checks are turned off and ours
//! take `now_unix_s`, so tests and the simulator control it.
//!
//! What this module does not do: fetch over the network (the gateway's HTTPS source
//! implements [`JwksSource`]), parse certificates (the caller passes the certificate's
//! org, project and workload as plain values), or log. Errors name the failed check only;
//! the remote caller gets "authentication failed" ([`JwtError::remote`]).
//!
//! Invariants: the HS256 secret lives in a `Zeroizing` buffer and appears in no `Debug`
//! output or error; a token's text and claim values appear in no error; a [`JwtVerifier`]
//! exists only with a configuration that passed [`JwtConfig`]'s checks.

mod error;
mod jwks;

pub use error::{JwksError, JwksFetchError, JwtConfigError, JwtError};
pub use jwks::{JwksFile, JwksSource};

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::authz::shorten;
use crate::constants::{
    HS256_SECRET_MIN_BYTES, JWKS_MAX_AGE_DEFAULT_S, JWKS_MAX_STALE_DEFAULT_S,
    JWKS_MIN_REFRESH_INTERVAL_DEFAULT_S, JWT_LEEWAY_DEFAULT_S, JWT_LEEWAY_MAX_S, JWT_MAX_BYTES,
};
use crate::role::OrgId;
use jwks::{JwksCache, JwksTiming, Lookup};

/// The algorithms this verifier accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenAlgorithm {
    Rs256,
    Es256,
    Hs256,
}

/// Which claims carry the tenant hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNames {
    pub org: String,
    pub project: String,
    pub workload: String,
}

/// How tokens of one tenant IdP are checked.
#[derive(Clone)]
pub struct JwtConfig {
    /// The exact `iss` required.
    pub issuer: String,
    /// `aud` must hold at least one of these.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, at most [`JWT_LEEWAY_MAX_S`].
    pub leeway_s: u64,
    pub claim_names: ClaimNames,
    /// The HS256 shared secret, at least [`HS256_SECRET_MIN_BYTES`]; `None` refuses HS256.
    pub hs256_secret: Option<Zeroizing<Vec<u8>>>,
    /// Refresh the JWKS when its keys are this old.
    pub jwks_max_age_s: u64,
    /// Never start two JWKS fetches closer than this.
    pub jwks_min_refresh_interval_s: u64,
    /// Stop using JWKS keys this old when refreshes keep failing.
    pub jwks_max_stale_s: u64,
}

/// What the peer's certificate says of its tenant, for the token to agree with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateTenant<'a> {
    pub org: &'a OrgId,
    pub project: Option<&'a str>,
    pub workload: Option<&'a str>,
}

/// What a verified token established. Holds no part of the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub algorithm: TokenAlgorithm,
    pub key_id: Option<String>,
    pub org: OrgId,
    pub project: Option<String>,
    pub workload: Option<String>,
    pub subject: Option<String>,
    pub expires_at_unix_s: u64,
}

/// Verifies tokens of one tenant IdP; shareable between threads.
#[derive(Debug)]
pub struct JwtVerifier {
    config: JwtConfig,
    jwks: Option<JwksCache>,
}

/// The header members this verifier reads; others are ignored (`jku`, `x5u` and `jwk`
/// included: keys never come from the token).
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

impl TokenAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            TokenAlgorithm::Rs256 => "RS256",
            TokenAlgorithm::Es256 => "ES256",
            TokenAlgorithm::Hs256 => "HS256",
        }
    }

    fn from_name(name: &str) -> Option<TokenAlgorithm> {
        [TokenAlgorithm::Rs256, TokenAlgorithm::Es256, TokenAlgorithm::Hs256]
            .into_iter()
            .find(|algorithm| algorithm.name() == name)
    }

    fn jsonwebtoken(self) -> Algorithm {
        match self {
            TokenAlgorithm::Rs256 => Algorithm::RS256,
            TokenAlgorithm::Es256 => Algorithm::ES256,
            TokenAlgorithm::Hs256 => Algorithm::HS256,
        }
    }
}

impl Default for ClaimNames {
    fn default() -> ClaimNames {
        ClaimNames { org: "org".into(), project: "project".into(), workload: "workload".into() }
    }
}

impl JwtConfig {
    /// A configuration with the default leeway, claim names and JWKS timing, and no HS256
    /// secret.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> JwtConfig {
        JwtConfig {
            issuer: issuer.into(),
            audiences,
            leeway_s: JWT_LEEWAY_DEFAULT_S,
            claim_names: ClaimNames::default(),
            hs256_secret: None,
            jwks_max_age_s: JWKS_MAX_AGE_DEFAULT_S,
            jwks_min_refresh_interval_s: JWKS_MIN_REFRESH_INTERVAL_DEFAULT_S,
            jwks_max_stale_s: JWKS_MAX_STALE_DEFAULT_S,
        }
    }

    fn check(&self, has_jwks: bool) -> Result<(), JwtConfigError> {
        if self.issuer.is_empty() {
            return Err(JwtConfigError::EmptyIssuer);
        }
        if self.audiences.is_empty() {
            return Err(JwtConfigError::NoAudience);
        }
        if self.audiences.iter().any(String::is_empty) {
            return Err(JwtConfigError::EmptyAudience);
        }
        if self.leeway_s > JWT_LEEWAY_MAX_S {
            let (leeway_s, max_s) = (self.leeway_s, JWT_LEEWAY_MAX_S);
            return Err(JwtConfigError::LeewayTooLarge { leeway_s, max_s });
        }
        if let Some(secret) = &self.hs256_secret
            && secret.len() < HS256_SECRET_MIN_BYTES
        {
            let (len_bytes, min_bytes) = (secret.len(), HS256_SECRET_MIN_BYTES);
            return Err(JwtConfigError::SecretTooShort { len_bytes, min_bytes });
        }
        if self.hs256_secret.is_none() && !has_jwks {
            return Err(JwtConfigError::NoKeySource);
        }
        let names = &self.claim_names;
        if [&names.org, &names.project, &names.workload].iter().any(|name| name.is_empty()) {
            return Err(JwtConfigError::EmptyClaimName);
        }
        let timing_ok = self.jwks_max_age_s > 0
            && self.jwks_min_refresh_interval_s > 0
            && self.jwks_max_stale_s >= self.jwks_max_age_s;
        if !timing_ok {
            return Err(JwtConfigError::JwksTiming);
        }
        Ok(())
    }
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = self.hs256_secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("JwtConfig")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("leeway_s", &self.leeway_s)
            .field("claim_names", &self.claim_names)
            .field("hs256_secret", &secret)
            .field("jwks_max_age_s", &self.jwks_max_age_s)
            .field("jwks_min_refresh_interval_s", &self.jwks_min_refresh_interval_s)
            .field("jwks_max_stale_s", &self.jwks_max_stale_s)
            .finish()
    }
}

impl JwtVerifier {
    /// A verifier for `config`, with a JWKS source for RS256/ES256 if given.
    pub fn new(
        config: JwtConfig,
        jwks_source: Option<Box<dyn JwksSource>>,
    ) -> Result<JwtVerifier, JwtConfigError> {
        config.check(jwks_source.is_some())?;
        let timing = JwksTiming {
            max_age_s: config.jwks_max_age_s,
            min_refresh_interval_s: config.jwks_min_refresh_interval_s,
            max_stale_s: config.jwks_max_stale_s,
        };
        let jwks = jwks_source.map(|source| JwksCache::new(source, timing));
        Ok(JwtVerifier { config, jwks })
    }

    /// Checks `token` against the configuration and the peer's certificate at
    /// `now_unix_s`; see the module documentation for every check.
    pub fn verify(
        &self,
        token: &str,
        certificate: &CertificateTenant<'_>,
        now_unix_s: u64,
    ) -> Result<VerifiedToken, JwtError> {
        if token.len() > JWT_MAX_BYTES {
            return Err(JwtError::TooLong { len_bytes: token.len(), max_bytes: JWT_MAX_BYTES });
        }
        let header = read_header(token)?;
        let algorithm = algorithm_of(&header)?;
        let key = self.key_for(algorithm, header.kid.as_deref(), now_unix_s)?;
        let claims = self.verified_claims(token, algorithm, &key)?;
        self.check_times(&claims, now_unix_s)?;
        let verified = self.tenant_of(&claims, algorithm, header.kid)?;
        check_certificate(&verified, certificate)?;
        Ok(verified)
    }

    /// Fetches the JWKS now unless the rate limit forbids; for a background refresher.
    /// `Ok(false)`: skipped by the rate limit; `Ok(true)` with no JWKS source configured.
    pub fn refresh_jwks(&self, now_unix_s: u64) -> Result<bool, JwksError> {
        match &self.jwks {
            Some(jwks) => jwks.refresh_if_allowed(now_unix_s),
            None => Ok(true),
        }
    }

    /// How many JWKS fetches have been started (0 without a JWKS source).
    pub fn jwks_fetch_attempts(&self) -> u64 {
        self.jwks.as_ref().map_or(0, JwksCache::attempts)
    }

    /// Why the last JWKS fetch failed, if it did.
    pub fn jwks_last_error(&self) -> Option<JwksError> {
        self.jwks.as_ref().and_then(JwksCache::last_error)
    }

    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    fn key_for(
        &self,
        algorithm: TokenAlgorithm,
        kid: Option<&str>,
        now_unix_s: u64,
    ) -> Result<DecodingKey, JwtError> {
        let not_allowed = || JwtError::AlgorithmNotAllowed { alg: algorithm.name().to_owned() };
        if algorithm == TokenAlgorithm::Hs256 {
            let secret = self.config.hs256_secret.as_ref().ok_or_else(not_allowed)?;
            return Ok(DecodingKey::from_secret(secret));
        }
        let jwks = self.jwks.as_ref().ok_or_else(not_allowed)?;
        let kid = kid.ok_or(JwtError::MissingKeyId)?;
        match jwks.lookup(kid, now_unix_s) {
            Lookup::Found(found) if found.algorithm == algorithm => Ok(found.key),
            Lookup::Found(_) => Err(JwtError::KeyAlgorithmMismatch),
            Lookup::Unknown => Err(JwtError::UnknownKeyId),
            Lookup::Unavailable => Err(JwtError::JwksUnavailable),
        }
    }

    /// Signature, `iss` and `aud` by jsonwebtoken; its clock checks are off (ours follow).
    fn verified_claims(
        &self,
        token: &str,
        algorithm: TokenAlgorithm,
        key: &DecodingKey,
    ) -> Result<Map<String, Value>, JwtError> {
        let mut validation = Validation::new(algorithm.jsonwebtoken());
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audiences);
        let decoded = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation);
        decoded.map(|data| data.claims).map_err(|error| match error.kind() {
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
            ErrorKind::InvalidAudience => JwtError::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) => {
                JwtError::MissingClaim { claim: shorten(claim) }
            }
            ErrorKind::InvalidClaimFormat(claim) => JwtError::BadClaim { claim: shorten(claim) },
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_) => JwtError::KeyAlgorithmMismatch,
            _ => JwtError::Malformed,
        })
    }

    fn check_times(&self, claims: &Map<String, Value>, now_unix_s: u64) -> Result<(), JwtError> {
        let leeway_s = self.config.leeway_s;
        let expires = time_claim(claims, "exp")?.ok_or_else(|| missing("exp"))?;
        if now_unix_s >= expires.saturating_add(leeway_s) {
            return Err(JwtError::Expired);
        }
        for claim in ["nbf", "iat"] {
            if let Some(not_before) = time_claim(claims, claim)?
                && now_unix_s.saturating_add(leeway_s) < not_before
            {
                return Err(JwtError::NotYetValid);
            }
        }
        Ok(())
    }

    fn tenant_of(
        &self,
        claims: &Map<String, Value>,
        algorithm: TokenAlgorithm,
        key_id: Option<String>,
    ) -> Result<VerifiedToken, JwtError> {
        let names = &self.config.claim_names;
        let org_text = string_claim(claims, &names.org)?.ok_or_else(|| missing(&names.org))?;
        let org = OrgId::parse(org_text).map_err(|_| bad(&names.org))?;
        let expires_at_unix_s = time_claim(claims, "exp")?.ok_or_else(|| missing("exp"))?;
        Ok(VerifiedToken {
            algorithm,
            key_id,
            org,
            project: string_claim(claims, &names.project)?.map(str::to_owned),
            workload: string_claim(claims, &names.workload)?.map(str::to_owned),
            subject: string_claim(claims, "sub")?.map(str::to_owned),
            expires_at_unix_s,
        })
    }
}

fn read_header(token: &str) -> Result<RawHeader, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let json = URL_SAFE_NO_PAD.decode(header).map_err(|_| JwtError::Malformed)?;
    let header: RawHeader = serde_json::from_slice(&json).map_err(|_| JwtError::Malformed)?;
    if header.crit.is_some() {
        return Err(JwtError::CriticalHeader);
    }
    Ok(header)
}

fn algorithm_of(header: &RawHeader) -> Result<TokenAlgorithm, JwtError> {
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgorithmNone);
    }
    TokenAlgorithm::from_name(&header.alg)
        .ok_or_else(|| JwtError::AlgorithmNotAllowed { alg: shorten(&header.alg) })
}

fn check_certificate(
    token: &VerifiedToken,
    certificate: &CertificateTenant<'_>,
) -> Result<(), JwtError> {
    if &token.org != certificate.org {
        return Err(JwtError::OrgMismatch);
    }
    if certificate.project.is_some() && token.project.as_deref() != certificate.project {
        return Err(JwtError::ProjectMismatch);
    }
    if certificate.workload.is_some() && token.workload.as_deref() != certificate.workload {
        return Err(JwtError::WorkloadMismatch);
    }
    Ok(())
}

/// A NumericDate claim: whole seconds, or a non-negative number rounded down.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, JwtError> {
    let Some(value) = claims.get(name) else { return Ok(None) };
    let seconds = value.as_u64().or_else(|| {
        let float = value.as_f64()?;
        (float.is_finite() && float >= 0.0 && float < u64::MAX as f64).then_some(float as u64)
    });
    seconds.map(Some).ok_or_else(|| bad(name))
}

fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(bad(name)),
    }
}

fn missing(claim: &str) -> JwtError {
    JwtError::MissingClaim { claim: shorten(claim) }
}

fn bad(claim: &str) -> JwtError {
    JwtError::BadClaim { claim: shorten(claim) }
}

#[cfg(test)]
mod tests;
