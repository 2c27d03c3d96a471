//! Entry points for fuzz targets (`fuzz/` at the workspace root) and for the stable-Rust
//! test that runs the same checks over seeded inputs. Hidden from the docs; not an API.

use zeroize::Zeroizing;

use crate::constants::KEY_LEN;
use crate::envelope::Envelope;
use crate::error::CryptoError;
use crate::keys::Dek;

/// Parses `data` as an envelope. If it parses, checks that encoding the parsed header
/// again gives back exactly `data`, that the copy parses to the same envelope, and that
/// opening it (with a key nobody sealed with) fails cleanly. Panics only if one of those
/// properties breaks: that is the bug a fuzzer looks for.
pub fn parse_envelope(data: &[u8]) -> Result<(), CryptoError> {
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

#[cfg(test)]
mod tests;
