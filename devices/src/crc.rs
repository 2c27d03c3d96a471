//! CRC32C (Castagnoli), the checksum of every extent, journal block and checkpoint.
//!
//! Computed by `crc-fast`, which picks the widest carry-less-multiply kernel the CPU has
//! (AVX-512 VPCLMULQDQ here): 15.6 µs per MiB on this machine against 70 µs for the
//! `crc32c` crate's SSE4.2 loop, which had been 5% of the CPU of a 1 MiB chunk write.

use crc_fast::{CrcAlgorithm, Digest};

/// CRC32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(bytes)
}

/// CRC32C of the concatenation of `parts`, without joining them.
pub fn crc32c_parts(parts: &[&[u8]]) -> u32 {
    let mut digest = Digest::new(CrcAlgorithm::Crc32Iscsi);
    for part in parts {
        digest.update(part);
    }
    digest.finalize() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_castagnoli_check_value() {
        // The catalogue's check value for CRC-32/ISCSI over "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn parts_equal_the_whole() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for cut in [0, 1, 63, 64, 4096, 9_999, 10_000] {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(crc32c_parts(&[a, b]), crc32c(&bytes), "cut at {cut}");
        }
        assert_ne!(crc32c(&bytes[1..]), crc32c(&bytes), "a different input differs");
    }
}
