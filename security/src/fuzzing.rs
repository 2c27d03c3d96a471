//! Entry points for fuzz targets (`fuzz/` at the workspace root) and for the stable-Rust
//! test that runs the same checks over seeded inputs. Hidden from the docs; not an API.

use zeroize::Zeroizing;

use crate::constants::{KEY_LEN, SPIFFE_ID_MAX_BYTES, TRUST_DOMAIN_MAX_BYTES};
use crate::envelope::Envelope;
use crate::error::CryptoError;
use crate::identity::{IdentityRules, KesIdentity, PeerIdentity, Principal, SpiffeId, TrustDomain};
use crate::keys::Dek;
use crate::pki_error::IdentityError;
use crate::role::Role;

/// Parses `data` as an envelope. If it parses, checks that encoding the parsed header
/// again gives back exactly `data`, that the copy parses to the same envelope, and that
/// opening it (with a key nobody sealed with) fails cleanly. Panics only if one of those
/// properties breaks: that is the bug a fuzzer looks for.
pub fn parse_envelope(data: &[u8]) -> Result<(), CryptoError> {
    // The same bytes behind a prefix (a request's own header) parse to the same answer.
    let start = data.first().map_or(0, |&b| usize::from(b % 8));
    let mut prefixed = vec![0xEE; start];
    prefixed.extend_from_slice(data);
    let at = Envelope::parse_owned_at(prefixed, start);
    assert_eq!(at.is_ok(), Envelope::parse(data).is_ok(), "an offset changes nothing");
    if let Ok(at) = at {
        assert_eq!(at.as_bytes(), data);
        assert_eq!(at.into_bytes(), data, "into_bytes drops the prefix");
    }
    let envelope = Envelope::parse(data)?;
    assert_eq!(envelope.as_bytes(), data, "parse keeps the bytes");
    let reencoded = envelope.reencode();
    assert_eq!(reencoded, data, "parse and encode agree on every header field");
    let again = Envelope::parse_owned(reencoded).expect("a re-encoded envelope parses");
    assert_eq!(again, envelope);
    assert_eq!(again.chunk_id(), envelope.chunk_id());
    assert_eq!(again.tenant(), envelope.tenant());
    assert_eq!(
        Envelope::sealed_len(envelope.plaintext_len(), envelope.wrapped_params().len()),
        envelope.len(),
        "the declared sizes add up to the buffer"
    );
    let key = Zeroizing::new([0x66; KEY_LEN]);
    let dek = Dek::from_bytes(envelope.chunk_id(), envelope.key_epoch(), envelope.tenant(), key);
    // A fuzzer cannot forge a GCM tag; the point is that open on any parsed input returns.
    let _ = envelope.open(&dek);
    Ok(())
}

/// The trust domain [`parse_identity`] configures, so that SVIDs are checked all the way.
pub const FUZZ_TRUST_DOMAIN: &str = "kiseki.test";

/// Reads `data` as a SPIFFE id (when it is UTF-8) and as a DER peer certificate, and
/// checks what must hold for any input: a SPIFFE id that parses is exactly its parts put
/// back together and within its limits; a certificate reads the same way twice; an
/// identity's KES id and fingerprint are those of the bytes; its principal and role agree;
/// and no certificate accepted without a trust domain is refused with one. Returns the
/// certificate reading. Panics only if one of those properties breaks.
pub fn parse_identity(data: &[u8]) -> Result<PeerIdentity, IdentityError> {
    if let Ok(text) = std::str::from_utf8(data) {
        check_spiffe_id(text);
    }
    let domain = TrustDomain::parse(FUZZ_TRUST_DOMAIN).expect("a valid trust domain");
    let rules = IdentityRules::new(Some(domain));
    let result = PeerIdentity::from_der(data, &rules);
    assert_eq!(PeerIdentity::from_der(data, &rules), result, "the same answer twice");
    let without_domain = PeerIdentity::from_der(data, &IdentityRules::default());
    let identity = match &result {
        Ok(identity) => identity,
        Err(error) => {
            assert!(without_domain.is_err(), "accepted only without a trust domain: {error}");
            return result;
        }
    };
    assert_eq!(KesIdentity::of_certificate(data).as_ref(), Some(identity.kes_identity()));
    assert_eq!(identity.kes_identity().to_string().len(), 64);
    assert_eq!(identity.fingerprint_sha256(), &crate::identity::sha256(data));
    match identity.principal() {
        Principal::Spiffe(id) => {
            assert_eq!(id.trust_domain().as_str(), FUZZ_TRUST_DOMAIN);
            assert_eq!(identity.role(), Some(&Role::Workload { org: id.org().clone() }));
            assert_eq!(without_domain, Err(IdentityError::NoTrustDomainConfigured));
        }
        Principal::OrganizationalUnit => {
            assert!(identity.role().is_some());
            assert_eq!(without_domain.as_ref(), Ok(identity));
        }
        Principal::Fingerprint(uuid) => {
            assert_eq!(*uuid, identity.fingerprint_uuid());
            assert_eq!(identity.role(), None);
            assert_eq!(without_domain.as_ref(), Ok(identity));
        }
    }
    result
}

fn check_spiffe_id(text: &str) {
    let Ok(id) = SpiffeId::parse(text) else { return };
    assert!(text.len() <= SPIFFE_ID_MAX_BYTES);
    assert!(id.trust_domain().as_str().len() <= TRUST_DOMAIN_MAX_BYTES);
    let project = id.project().map(|project| format!("project/{project}/")).unwrap_or_default();
    let rebuilt = format!(
        "spiffe://{}/tenant/{}/{project}workload/{}",
        id.trust_domain(),
        id.org(),
        id.workload()
    );
    assert_eq!(rebuilt, text, "the parts make up the id");
    assert_eq!(id.to_string(), text);
    assert_eq!(SpiffeId::parse(&rebuilt).as_ref(), Ok(&id));
}

#[cfg(test)]
mod identity_tests;
#[cfg(test)]
mod tests;

// The authorization files' entry points.
mod policy_files;
pub use policy_files::{parse_kes_policy_file, parse_policy_file, parse_scope_file};
