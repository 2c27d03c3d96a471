//! Lowercase hex, as the gateway writes ids (node manifests, the re-seal cursor, upload ids)
//! and S3 ETags, and reads them back.

/// `bytes` as lowercase hex digits.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|byte| {
            [DIGITS[usize::from(byte >> 4)] as char, DIGITS[usize::from(byte & 15)] as char]
        })
        .collect()
}

/// Exactly `2 * N` hex digits (either case) as `N` bytes; `None` for anything else (a
/// sign, a space, another length).
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let digit = |byte: u8| (byte as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_malformed_text_is_refused() {
        let bytes: [u8; 16] = std::array::from_fn(|i| (i * 17) as u8);
        let text = encode(&bytes);
        assert_eq!(text, "00112233445566778899aabbccddeeff");
        assert_eq!(decode::<16>(&text), Some(bytes));
        assert_eq!(decode::<16>(&text.to_uppercase()), Some(bytes));
        assert_eq!(decode::<16>(&text[..30]), None);
        assert_eq!(decode::<15>(&text), None);
        assert_eq!(decode::<1>("+f"), None, "from_str_radix would take a sign");
        assert_eq!(decode::<16>(&"g".repeat(32)), None);
        assert_eq!(decode::<16>(&"é".repeat(16)), None);
    }
}
