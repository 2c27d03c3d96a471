//! The fuzz target's checks on stable Rust: 20,000 seeded inputs, random and mutated from
//! valid envelopes, each compared with a second reading of the byte map written here
//! independently of the parser. A failure prints its case number and seed; rerun with
//! `KISEKI_FUZZ_SEED=<seed>` to replay another sequence.

use zeroize::Zeroizing;

use super::parse_envelope;
use crate::constants::KEY_LEN;
use crate::envelope::{ChunkTenant, Envelope, SealParams};
use crate::error::{CryptoError, MalformedEnvelope};
use crate::ids::{ChunkId, TenantId};
use crate::keys::{Dek, MasterKey, TenantKey, TenantSecret};

const CASES: u64 = 20_000;
const DEFAULT_SEED: u64 = 0x4b53_4b45_0000_0001;

#[test]
fn seeded_inputs_never_panic_and_agree_with_the_byte_map() {
    let seed = std::env::var("KISEKI_FUZZ_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let corpus = corpus();
    let mut rng = SplitMix64(seed);
    let mut accepted = [0u32; Mutation::COUNT];
    let mut rejected = [0u32; Mutation::COUNT];
    let mut reasons = std::collections::HashSet::new();
    for case in 0..CASES {
        let mutation = Mutation::pick(&mut rng);
        let (input, sources) = mutation.apply(&mut rng, &corpus);
        let context = format!("case {case}, seed {seed}, {mutation:?}, {} bytes", input.len());
        let verdict = parse_envelope(&input);
        let expected = reference_verdict(&input).map_err(CryptoError::from);
        assert_eq!(verdict, expected, "{context}");
        match mutation {
            Mutation::Truncate => assert!(verdict.is_err(), "{context}"),
            Mutation::Extend => {
                assert!(
                    matches!(
                        verdict,
                        Err(CryptoError::Malformed(MalformedEnvelope::TrailingBytes { .. }))
                    ),
                    "{context}"
                );
            }
            _ => {}
        }
        if verdict.is_ok() {
            accepted[mutation as usize] += 1;
            check_changed_envelope_fails_to_open(&input, &sources, &corpus, &context);
        } else if let Err(CryptoError::Malformed(reason)) = verdict {
            rejected[mutation as usize] += 1;
            reasons.insert(std::mem::discriminant(&reason));
        }
    }
    eprintln!("accepted {accepted:?}\n rejected {rejected:?}");
    // The generator must reach both answers where both are possible, or this test proves
    // little: a parser that rejects everything would pass the comparison above for most
    // kinds of input.
    for mutation in [Mutation::BitFlip, Mutation::SetBytes, Mutation::SetField, Mutation::Splice] {
        let (ok, err) = (accepted[mutation as usize], rejected[mutation as usize]);
        assert!(ok > 100 && err > 100, "{mutation:?}: {ok} accepted, {err} rejected");
    }
    assert!(rejected[Mutation::Random as usize] > 100);
    assert!(accepted[Mutation::Forged as usize] > 100, "{accepted:?}");
    assert_eq!(reasons.len(), 12, "every kind of malformed envelope was produced");
}

/// Writes the corpus's envelopes as seeds for the fuzz target, in `fuzz/seeds/`. Run by
/// hand: `cargo test -p kiseki-security -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes files into fuzz/seeds"]
fn write_fuzz_seeds() {
    let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = manifest_dir.join("../fuzz/seeds/envelope_parse");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (envelope, _)) in corpus().iter().enumerate() {
        std::fs::write(dir.join(format!("sealed-{i:02}")), envelope.as_bytes()).unwrap();
    }
}

/// Every input that parses and is not one of the sealed envelopes must fail to open under
/// the key of each envelope it was made from, even relabeled to what its header says.
fn check_changed_envelope_fails_to_open(
    input: &[u8],
    sources: &[usize],
    corpus: &[(Envelope, Dek)],
    context: &str,
) {
    let envelope = Envelope::parse(input).expect(context);
    if let Some((_, dek)) = corpus.iter().find(|(original, _)| original.as_bytes() == input) {
        // Mutated back into a sealed envelope (a splice of two copies, say): it opens.
        assert!(envelope.open(dek).is_ok(), "{context}");
        return;
    }
    for &source in sources {
        let dek = &corpus[source].1;
        let bytes = Zeroizing::new(*dek.expose());
        let relabeled =
            Dek::from_bytes(envelope.chunk_id(), envelope.key_epoch(), envelope.tenant(), bytes);
        assert_eq!(envelope.open(&relabeled).err(), Some(CryptoError::OpenFailed), "{context}");
    }
}

/// Sealed envelopes of several shapes: shared and isolated, empty to a few hundred bytes,
/// with no, one and the most wrapped-parameter bytes.
fn corpus() -> Vec<(Envelope, Dek)> {
    let master = MasterKey::from_bytes(3, Zeroizing::new([0x11; KEY_LEN]));
    let tenant = TenantId::new([0xa5; 16]).unwrap();
    let secret = TenantSecret::from_bytes(tenant, Zeroizing::new([0x22; KEY_LEN]));
    let id_key = TenantKey::from_bytes(tenant, Zeroizing::new([0x33; KEY_LEN]));
    let mut corpus = Vec::new();
    for len in [0usize, 1, 17, 200] {
        let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let chunk_id = ChunkId::of_plaintext(&plaintext);
        let dek = Dek::derive(&master, &chunk_id, None);
        corpus.push((Envelope::seal_chunk(&plaintext, &master, ChunkTenant::Shared).unwrap(), dek));
        let chunk_id = ChunkId::isolated(&id_key, &plaintext);
        for wrapped_len in [0usize, 1, 256] {
            let dek = Dek::derive(&master, &chunk_id, Some(&secret));
            let wrapped = vec![0xc3; wrapped_len];
            let params = SealParams::new(&dek).with_tenant_wrapping(7, &wrapped);
            corpus.push((Envelope::seal(&plaintext, &params).unwrap(), dek));
        }
    }
    corpus
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutation {
    /// One bit of a valid envelope flipped.
    BitFlip,
    /// One to four bytes of a valid envelope set to random values.
    SetBytes,
    /// One header field of a valid envelope set to a random or boundary value.
    SetField,
    /// A valid envelope cut short.
    Truncate,
    /// A valid envelope with bytes appended.
    Extend,
    /// The header of one valid envelope on the body of another.
    Splice,
    /// Random bytes of random length.
    Random,
    /// A header built from random field values (magic, version and algorithm right),
    /// followed by as many random bytes as it declares or about as many.
    Forged,
}

impl Mutation {
    const COUNT: usize = 8;
    const ALL: [Mutation; Mutation::COUNT] = [
        Mutation::BitFlip,
        Mutation::SetBytes,
        Mutation::SetField,
        Mutation::Truncate,
        Mutation::Extend,
        Mutation::Splice,
        Mutation::Random,
        Mutation::Forged,
    ];

    fn pick(rng: &mut SplitMix64) -> Mutation {
        Mutation::ALL[rng.below(Mutation::COUNT)]
    }

    /// The input, and the corpus entries it was made from.
    fn apply(self, rng: &mut SplitMix64, corpus: &[(Envelope, Dek)]) -> (Vec<u8>, Vec<usize>) {
        let source = rng.below(corpus.len());
        let mut bytes = corpus[source].0.as_bytes().to_vec();
        match self {
            Mutation::BitFlip => {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            Mutation::SetBytes => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next_u64() as u8;
                }
            }
            Mutation::SetField => set_field(rng, &mut bytes),
            Mutation::Truncate => bytes.truncate(rng.below(bytes.len())),
            Mutation::Extend => {
                for _ in 0..1 + rng.below(32) {
                    bytes.push(rng.next_u64() as u8);
                }
            }
            Mutation::Splice => {
                let other = rng.below(corpus.len());
                let cut = 84 + rng.below(40);
                let body = corpus[other].0.as_bytes();
                bytes.truncate(cut.min(bytes.len()));
                bytes.extend_from_slice(&body[cut.min(body.len())..]);
                return (bytes, vec![source, other]);
            }
            Mutation::Random => {
                let len = rng.below(400);
                return (random_bytes(rng, len), vec![]);
            }
            Mutation::Forged => return (forged(rng), vec![]),
        }
        (bytes, vec![source])
    }
}

/// (offset, size) of each header field after the magic, per the byte map.
const FIELDS: [(usize, usize); 11] = [
    (4, 12),
    (16, 2),
    (18, 1),
    (19, 1),
    (20, 4),
    (24, 4),
    (28, 32),
    (60, 16),
    (76, 2),
    (78, 2),
    (80, 4),
];

fn set_field(rng: &mut SplitMix64, bytes: &mut [u8]) {
    let (offset, size) = FIELDS[rng.below(FIELDS.len())];
    let value: u64 = match rng.below(4) {
        0 => 0,
        1 => rng.below(4) as u64,
        2 => {
            // Near the current value: off-by-one lengths, neighbouring flags.
            let mut current = [0u8; 8];
            let take = size.min(8);
            current[..take].copy_from_slice(&bytes[offset..offset + take]);
            u64::from_le_bytes(current).wrapping_add(rng.below(5) as u64).wrapping_sub(2)
        }
        _ => rng.next_u64(),
    };
    let mut field = vec![0u8; size];
    for (i, byte) in field.iter_mut().enumerate() {
        *byte = if i < 8 { (value >> (8 * i)) as u8 } else { rng.next_u64() as u8 };
    }
    bytes[offset..offset + size].copy_from_slice(&field);
}

fn forged(rng: &mut SplitMix64) -> Vec<u8> {
    // Each field is right for the chosen tenancy, and wrong one time in eight.
    let isolated = rng.below(2) == 0;
    let mut wrong = || rng.below(8) == 0;
    let (flags_wrong, tenant_wrong, kek_wrong, wrapped_wrong, reserved_wrong) =
        (wrong(), wrong(), wrong(), wrong(), wrong());
    let mut bytes = b"KSKE".to_vec();
    bytes.extend_from_slice(&random_bytes(rng, 12));
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.push(1);
    bytes.push(if flags_wrong { rng.next_u64() as u8 } else { u8::from(isolated) });
    bytes.extend_from_slice(&random_bytes(rng, 4));
    let kek_epoch = if isolated || kek_wrong { rng.next_u64() as u32 } else { 0 };
    bytes.extend_from_slice(&kek_epoch.to_le_bytes());
    bytes.extend_from_slice(&random_bytes(rng, 32));
    let tenant = if isolated != tenant_wrong { random_bytes(rng, 16) } else { vec![0; 16] };
    bytes.extend_from_slice(&tenant);
    let wrapped_len = match (isolated, wrapped_wrong) {
        (false, false) => 0,
        (true, false) => [0u16, 1, 200, 256][rng.below(4)],
        (_, true) => [1u16, 257, rng.next_u64() as u16][rng.below(3)],
    };
    bytes.extend_from_slice(&wrapped_len.to_le_bytes());
    bytes.extend_from_slice(&u16::from(reserved_wrong).to_le_bytes());
    let ciphertext_len = rng.below(300) as u32;
    bytes.extend_from_slice(&ciphertext_len.to_le_bytes());
    let declared = usize::from(wrapped_len) + ciphertext_len as usize + 16;
    let body_len = match rng.below(4) {
        0 => declared.saturating_sub(1 + rng.below(3)),
        1 => declared + 1 + rng.below(3),
        _ => declared,
    };
    bytes.extend_from_slice(&random_bytes(rng, body_len));
    bytes
}

fn random_bytes(rng: &mut SplitMix64, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// The byte map read a second time, by plain offsets, without the parser's code.
fn reference_verdict(d: &[u8]) -> Result<(), MalformedEnvelope> {
    use MalformedEnvelope::*;
    let len = d.len() as u64;
    if d.len() < 100 {
        return Err(TooShort { len_bytes: len, min_bytes: 100 });
    }
    let u16_at = |at: usize| u16::from_le_bytes([d[at], d[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
    if &d[0..4] != b"KSKE" {
        return Err(BadMagic { found: [d[0], d[1], d[2], d[3]] });
    }
    if u16_at(16) != 1 {
        return Err(UnknownVersion { version: u16_at(16) });
    }
    if d[18] != 1 {
        return Err(UnknownAlgorithm { algorithm: d[18] });
    }
    if d[19] & 0xfe != 0 {
        return Err(UnknownFlags { flags: d[19] & 0xfe });
    }
    if u16_at(78) != 0 {
        return Err(NonzeroReserved);
    }
    let (wrapped, ciphertext) = (u64::from(u16_at(76)), u64::from(u32_at(80)));
    if wrapped > 256 {
        return Err(WrappedParamsTooLong { len_bytes: wrapped, max_bytes: 256 });
    }
    if ciphertext > 64 << 20 {
        return Err(CiphertextTooLong { len_bytes: ciphertext, max_bytes: 64 << 20 });
    }
    let nil_tenant = d[60..76].iter().all(|&byte| byte == 0);
    if d[19] & 1 == 1 && nil_tenant {
        return Err(IsolatedWithoutTenant);
    }
    if d[19] & 1 == 0 && (!nil_tenant || u32_at(24) != 0 || wrapped != 0) {
        return Err(SharedWithTenantData);
    }
    let declared = 100 + wrapped + ciphertext;
    if len < declared {
        return Err(Truncated { declared_bytes: declared, actual_bytes: len });
    }
    if len > declared {
        return Err(TrailingBytes { declared_bytes: declared, actual_bytes: len });
    }
    Ok(())
}

/// SplitMix64, as in `kiseki-devices` (which this crate does not depend on).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }
}
