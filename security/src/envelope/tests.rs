//! Tests of sealing, opening and parsing. Negatives first-class: every way an envelope can
//! be moved, changed or forged must fail, with the error that names why.

use zeroize::Zeroizing;

use super::*;
use crate::constants::KEY_LEN;

const MASTER_BYTES: [u8; KEY_LEN] = [0x11; KEY_LEN];

fn master(epoch: u32) -> MasterKey {
    MasterKey::from_bytes(epoch, Zeroizing::new(MASTER_BYTES))
}

fn tenant(n: u8) -> TenantId {
    TenantId::new([n; TENANT_ID_LEN]).unwrap()
}

fn tenant_secret(n: u8) -> TenantSecret {
    TenantSecret::from_bytes(tenant(n), Zeroizing::new([0x20 + n; KEY_LEN]))
}

fn id_key(n: u8) -> TenantKey {
    TenantKey::from_bytes(tenant(n), Zeroizing::new([0x40 + n; KEY_LEN]))
}

/// A shared chunk sealed under epoch 1, with its DEK.
fn sealed_shared(plaintext: &[u8]) -> (Envelope, Dek) {
    let dek = Dek::derive(&master(1), &ChunkId::of_plaintext(plaintext), None);
    (Envelope::seal(plaintext, &SealParams::new(&dek)).unwrap(), dek)
}

/// Tenant 1's isolated chunk with wrapped parameters, sealed under epoch 1, with its DEK.
fn sealed_isolated(plaintext: &[u8]) -> (Envelope, Dek) {
    let chunk_id = ChunkId::isolated(&id_key(1), plaintext);
    let dek = Dek::derive(&master(1), &chunk_id, Some(&tenant_secret(1)));
    let params = SealParams::new(&dek).with_tenant_wrapping(9, b"wrapped by the KEK");
    (Envelope::seal(plaintext, &params).unwrap(), dek)
}

/// The DEK a reader derives from what a (possibly tampered) header says.
fn dek_from_header(envelope: &Envelope) -> Dek {
    let master = master(envelope.key_epoch());
    match envelope.tenant() {
        Tenancy::Shared => Dek::derive(&master, &envelope.chunk_id(), None),
        Tenancy::Isolated(tenant) => {
            let secret = TenantSecret::from_bytes(tenant, Zeroizing::new([0x21; KEY_LEN]));
            Dek::derive(&master, &envelope.chunk_id(), Some(&secret))
        }
    }
}

/// The original key's bytes under the labels a (tampered) header says: isolates the AAD,
/// which is then the only thing that can make the open fail.
fn relabeled(original: &Dek, envelope: &Envelope) -> Dek {
    let bytes = Zeroizing::new(*original.expose());
    Dek::from_bytes(envelope.chunk_id(), envelope.key_epoch(), envelope.tenant(), bytes)
}

fn malformed(data: &[u8]) -> MalformedEnvelope {
    match Envelope::parse(data) {
        Err(CryptoError::Malformed(malformed)) => malformed,
        other => panic!("expected a malformed envelope, got {other:?}"),
    }
}

fn with_field(envelope: &Envelope, offset: usize, value: &[u8]) -> Vec<u8> {
    let mut bytes = envelope.as_bytes().to_vec();
    bytes[offset..offset + value.len()].copy_from_slice(value);
    bytes
}

#[test]
fn shared_chunk_round_trips() {
    let plaintext = b"a shared chunk, deduplicated across tenants";
    let envelope = Envelope::seal_chunk(plaintext, &master(1), ChunkTenant::Shared).unwrap();
    assert_eq!(envelope.chunk_id(), ChunkId::of_plaintext(plaintext));
    assert_eq!((envelope.key_epoch(), envelope.tenant()), (1, Tenancy::Shared));
    assert_eq!((envelope.tenant_kek_epoch(), envelope.wrapped_params()), (0, &[][..]));
    let parsed = Envelope::parse(envelope.as_bytes()).unwrap();
    assert_eq!(parsed, envelope);
    let dek = Dek::derive(&master(1), &parsed.chunk_id(), None);
    assert_eq!(&parsed.open(&dek).unwrap()[..], plaintext);
    assert_eq!(&parsed.open_verified(&dek, None).unwrap()[..], plaintext);
}

#[test]
fn isolated_chunk_round_trips_with_its_wrapping() {
    let plaintext = b"an isolated tenant's chunk";
    let (envelope, dek) = sealed_isolated(plaintext);
    assert_eq!(envelope.chunk_id(), ChunkId::isolated(&id_key(1), plaintext));
    assert_eq!(envelope.tenant(), Tenancy::Isolated(tenant(1)));
    assert_eq!(envelope.tenant_kek_epoch(), 9);
    assert_eq!(envelope.wrapped_params(), b"wrapped by the KEK");
    let parsed = Envelope::parse_owned(envelope.as_bytes().to_vec()).unwrap();
    assert_eq!(parsed, envelope);
    assert_eq!(&parsed.open(&dek).unwrap()[..], plaintext);
    assert_eq!(&parsed.open_verified(&dek, Some(&id_key(1))).unwrap()[..], plaintext);
    let convenience = ChunkTenant::Isolated { id_key: &id_key(1), secret: &tenant_secret(1) };
    let sealed = Envelope::seal_chunk(plaintext, &master(1), convenience).unwrap();
    assert_eq!(&sealed.open(&dek).unwrap()[..], plaintext);
}

#[test]
fn every_size_round_trips_and_has_its_sealed_len() {
    for len in [0, 1, 15, 16, 17, 4095, 4096, 1 << 20] {
        let plaintext: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let (envelope, dek) = sealed_shared(&plaintext);
        assert_eq!(envelope.len(), Envelope::sealed_len(len, 0), "len {len}");
        assert_eq!(envelope.plaintext_len(), len);
        let parsed = Envelope::parse(envelope.as_bytes()).unwrap();
        assert_eq!(&parsed.open(&dek).unwrap()[..], plaintext.as_slice(), "len {len}");
    }
    let (isolated, _) = sealed_isolated(b"xyz");
    assert_eq!(isolated.len(), Envelope::sealed_len(3, b"wrapped by the KEK".len()));
    assert_eq!(Envelope::sealed_len(usize::MAX, 1), usize::MAX, "saturates");
}

#[test]
fn the_largest_chunk_seals_and_one_byte_more_does_not() {
    let max = usize_from_u32(CHUNK_PLAINTEXT_MAX_BYTES);
    let mut plaintext = vec![0x5c; max + 1];
    let dek = Dek::derive(&master(1), &ChunkId::from_bytes([3; 32]), None);
    let too_long = Envelope::seal(&plaintext, &SealParams::new(&dek));
    let max_bytes = u64::from(CHUNK_PLAINTEXT_MAX_BYTES);
    let len_bytes = max_bytes + 1;
    assert_eq!(too_long.unwrap_err(), CryptoError::PlaintextTooLong { len_bytes, max_bytes });
    plaintext.truncate(max);
    let envelope = Envelope::seal(&plaintext, &SealParams::new(&dek)).unwrap();
    let parsed = Envelope::parse_owned(envelope.into_bytes()).unwrap();
    assert_eq!(parsed.open(&dek).unwrap().len(), max);
}

#[test]
fn header_fields_sit_where_the_byte_map_says() {
    let (envelope, _) = sealed_isolated(b"0123456789");
    let bytes = envelope.as_bytes();
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(&bytes[0..4], b"KSKE");
    assert_ne!(&bytes[4..16], &[0; 12], "the nonce was written");
    assert_eq!(u16_at(16), 1, "version");
    assert_eq!(bytes[18], 1, "algorithm");
    assert_eq!(bytes[19], 1, "flags");
    assert_eq!(u32_at(20), 1, "key epoch");
    assert_eq!(u32_at(24), 9, "KEK epoch");
    assert_eq!(&bytes[28..60], envelope.chunk_id().as_bytes());
    assert_eq!(&bytes[60..76], tenant(1).as_bytes());
    assert_eq!(u16_at(76), 18, "wrapped length");
    assert_eq!(u16_at(78), 0, "reserved");
    assert_eq!(u32_at(80), 10, "ciphertext length");
    assert_eq!(&bytes[84..102], b"wrapped by the KEK");
    assert_eq!(bytes.len(), 102 + 10 + 16);
}

#[test]
fn no_plaintext_in_the_envelope() {
    let plaintext = b"MARKER-kiseki-plaintext-MARKER".repeat(8);
    let (envelope, _) = sealed_shared(&plaintext);
    let found = envelope.as_bytes().windows(6).any(|window| window == b"MARKER");
    assert!(!found, "plaintext marker in the sealed bytes");
}

#[test]
fn nonces_never_repeat_across_seals_of_the_same_chunk() {
    let plaintext = b"sealed again and again";
    let dek = Dek::derive(&master(1), &ChunkId::of_plaintext(plaintext), None);
    let mut nonces = std::collections::HashSet::new();
    let mut ciphertexts = std::collections::HashSet::new();
    for _ in 0..2000 {
        let envelope = Envelope::seal(plaintext, &SealParams::new(&dek)).unwrap();
        assert!(nonces.insert(envelope.header.nonce), "nonce repeated");
        assert!(ciphertexts.insert(envelope.as_bytes()[FIXED_HEADER_BYTES..].to_vec()));
        assert_eq!(&envelope.open(&dek).unwrap()[..], plaintext);
    }
}

#[test]
fn a_wrong_dek_fails_to_open() {
    let (envelope, dek) = sealed_shared(b"secret chunk");
    let other_master = MasterKey::from_bytes(1, Zeroizing::new([0x99; KEY_LEN]));
    let wrong = Dek::derive(&other_master, &envelope.chunk_id(), None);
    assert_eq!(envelope.open(&wrong).unwrap_err(), CryptoError::OpenFailed);
    let generated = MasterKey::generate(1).unwrap();
    let wrong = Dek::derive(&generated, &envelope.chunk_id(), None);
    assert_eq!(envelope.open(&wrong).unwrap_err(), CryptoError::OpenFailed);
    let mut near = *dek.expose();
    near[31] ^= 1;
    let wrong = Dek::from_bytes(dek.chunk_id(), 1, Tenancy::Shared, Zeroizing::new(near));
    assert_eq!(envelope.open(&wrong).unwrap_err(), CryptoError::OpenFailed);
}

#[test]
fn a_dek_labelled_for_another_chunk_epoch_or_tenant_is_refused() {
    let (shared, _) = sealed_shared(b"labels");
    let other_chunk = Dek::derive(&master(1), &ChunkId::of_plaintext(b"other"), None);
    let other_epoch = Dek::derive(&master(2), &shared.chunk_id(), None);
    let isolated = Dek::derive(&master(1), &shared.chunk_id(), Some(&tenant_secret(1)));
    let mismatch = |binding| CryptoError::DekMismatch { binding };
    assert_eq!(shared.open(&other_chunk).unwrap_err(), mismatch(DekBinding::ChunkId));
    assert_eq!(shared.open(&other_epoch).unwrap_err(), mismatch(DekBinding::KeyEpoch));
    assert_eq!(shared.open(&isolated).unwrap_err(), mismatch(DekBinding::Tenant));
    let (isolated_envelope, _) = sealed_isolated(b"labels");
    let chunk_id = isolated_envelope.chunk_id();
    let tenant_2 = Dek::derive(&master(1), &chunk_id, Some(&tenant_secret(2)));
    let shared_dek = Dek::derive(&master(1), &chunk_id, None);
    assert_eq!(isolated_envelope.open(&tenant_2).unwrap_err(), mismatch(DekBinding::Tenant));
    assert_eq!(isolated_envelope.open(&shared_dek).unwrap_err(), mismatch(DekBinding::Tenant));
}

#[test]
fn any_changed_ciphertext_or_tag_byte_fails_to_open() {
    let (envelope, dek) = sealed_isolated(b"sixteen+ bytes of ciphertext");
    let body_start = envelope.header.header_len();
    for at in body_start..envelope.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut bytes = envelope.as_bytes().to_vec();
            bytes[at] ^= mask;
            let tampered = Envelope::parse(&bytes).expect("the body is not parsed");
            assert_eq!(tampered.open(&dek).unwrap_err(), CryptoError::OpenFailed, "byte {at}");
        }
    }
}

#[test]
fn any_changed_header_byte_fails_to_parse_or_to_open() {
    for (envelope, dek) in [sealed_shared(b"header bytes"), sealed_isolated(b"header bytes")] {
        let mut accepted = 0;
        for at in 0..envelope.header.header_len() {
            for mask in [0x01, 0x02, 0x80, 0xff] {
                let mut bytes = envelope.as_bytes().to_vec();
                bytes[at] ^= mask;
                let Ok(tampered) = Envelope::parse(&bytes) else { continue };
                accepted += 1;
                let relabeled = relabeled(&dek, &tampered);
                assert_eq!(tampered.open(&relabeled).unwrap_err(), CryptoError::OpenFailed);
                let derived = dek_from_header(&tampered);
                assert!(tampered.open(&derived).is_err(), "byte {at} mask {mask:#x}");
            }
        }
        // Nonce, epochs, chunk id, tenant id and wrapped bytes parse when changed; the
        // loop must have reached them, not stopped at the parser.
        assert!(accepted >= 4 * (12 + 4 + 32), "only {accepted} changes parsed");
    }
}

#[test]
fn an_envelope_spliced_onto_another_chunk_id_fails_to_open() {
    let (envelope_a, dek_a) = sealed_shared(b"chunk A");
    let (envelope_b, dek_b) = sealed_shared(b"chunk B");
    let spliced = with_field(&envelope_a, CHUNK_ID_OFFSET, envelope_b.chunk_id().as_bytes());
    let spliced = Envelope::parse(&spliced).unwrap();
    assert_eq!(spliced.chunk_id(), envelope_b.chunk_id());
    assert_eq!(spliced.open(&dek_b).unwrap_err(), CryptoError::OpenFailed);
    assert_eq!(spliced.open(&relabeled(&dek_a, &spliced)).unwrap_err(), CryptoError::OpenFailed);
    let binding = DekBinding::ChunkId;
    assert_eq!(spliced.open(&dek_a).unwrap_err(), CryptoError::DekMismatch { binding });
    // B's header (its chunk id, its nonce) over A's ciphertext of the same length.
    let mut swapped = envelope_b.as_bytes()[..FIXED_HEADER_BYTES].to_vec();
    swapped.extend_from_slice(&envelope_a.as_bytes()[FIXED_HEADER_BYTES..]);
    let swapped = Envelope::parse(&swapped).unwrap();
    assert_eq!(swapped.open(&dek_b).unwrap_err(), CryptoError::OpenFailed);
}

#[test]
fn an_envelope_moved_to_another_epoch_fails_to_open() {
    let (envelope, dek) = sealed_shared(b"epoch 1");
    let moved = Envelope::parse(&with_field(&envelope, KEY_EPOCH_OFFSET, &2u32.to_le_bytes()));
    let moved = moved.unwrap();
    assert_eq!(moved.key_epoch(), 2);
    // Epoch 2's master key here has the same bytes as epoch 1's: only the AAD can object.
    assert_eq!(moved.open(&dek_from_header(&moved)).unwrap_err(), CryptoError::OpenFailed);
    assert_eq!(moved.open(&relabeled(&dek, &moved)).unwrap_err(), CryptoError::OpenFailed);
}

#[test]
fn an_isolated_envelope_moved_to_another_tenant_fails_to_open() {
    let (envelope, dek) = sealed_isolated(b"tenant 1's data");
    let moved = with_field(&envelope, TENANT_ID_OFFSET, tenant(2).as_bytes());
    let moved = Envelope::parse(&moved).unwrap();
    assert_eq!(moved.tenant(), Tenancy::Isolated(tenant(2)));
    let tenant_2 = Dek::derive(&master(1), &moved.chunk_id(), Some(&tenant_secret(2)));
    assert_eq!(moved.open(&tenant_2).unwrap_err(), CryptoError::OpenFailed);
    assert_eq!(moved.open(&relabeled(&dek, &moved)).unwrap_err(), CryptoError::OpenFailed);
    // A shared envelope claimed by a tenant: flag and tenant id written in.
    let (shared, shared_dek) = sealed_shared(b"shared data");
    let mut claimed = with_field(&shared, TENANT_ID_OFFSET, tenant(1).as_bytes());
    claimed[FLAGS_OFFSET] = FLAG_ISOLATED_TENANT;
    let claimed = Envelope::parse(&claimed).unwrap();
    let err = claimed.open(&relabeled(&shared_dek, &claimed)).unwrap_err();
    assert_eq!(err, CryptoError::OpenFailed);
}

#[test]
fn open_verified_catches_a_chunk_sealed_under_another_id() {
    // Whoever holds chunk X's DEK can seal other bytes under X's id; GCM accepts that.
    let victim_id = ChunkId::of_plaintext(b"the real content");
    let dek = Dek::derive(&master(1), &victim_id, None);
    let poisoned = Envelope::seal(b"substituted content", &SealParams::new(&dek)).unwrap();
    assert!(poisoned.open(&dek).is_ok());
    assert_eq!(poisoned.open_verified(&dek, None).unwrap_err(), CryptoError::ChunkIdMismatch);
    let chunk_id = ChunkId::isolated(&id_key(1), b"real");
    let dek = Dek::derive(&master(1), &chunk_id, Some(&tenant_secret(1)));
    let poisoned = Envelope::seal(b"fake", &SealParams::new(&dek)).unwrap();
    let err = poisoned.open_verified(&dek, Some(&id_key(1))).unwrap_err();
    assert_eq!(err, CryptoError::ChunkIdMismatch);
}

#[test]
fn open_verified_wants_the_id_key_of_the_envelopes_tenant() {
    let (shared, shared_dek) = sealed_shared(b"x");
    let err = shared.open_verified(&shared_dek, Some(&id_key(1))).unwrap_err();
    assert_eq!(err, CryptoError::IdKeyMismatch);
    let (isolated, dek) = sealed_isolated(b"x");
    assert_eq!(isolated.open_verified(&dek, None).unwrap_err(), CryptoError::IdKeyMismatch);
    let err = isolated.open_verified(&dek, Some(&id_key(2))).unwrap_err();
    assert_eq!(err, CryptoError::IdKeyMismatch);
}

#[test]
fn contradictory_seal_params_are_refused() {
    let plaintext = b"x";
    let shared = Dek::derive(&master(1), &ChunkId::of_plaintext(plaintext), None);
    for params in [
        SealParams::new(&shared).with_tenant_wrapping(1, &[]),
        SealParams::new(&shared).with_tenant_wrapping(0, b"w"),
    ] {
        let err = Envelope::seal(plaintext, &params).unwrap_err();
        assert!(matches!(err, CryptoError::InvalidSealParams { .. }), "{err:?}");
    }
    let isolated =
        Dek::derive(&master(1), &ChunkId::of_plaintext(plaintext), Some(&tenant_secret(1)));
    let too_long = [0; 257];
    let params = SealParams::new(&isolated).with_tenant_wrapping(1, &too_long);
    let err = Envelope::seal(plaintext, &params).unwrap_err();
    assert_eq!(err, CryptoError::WrappedParamsTooLong { len_bytes: 257, max_bytes: 256 });
    let fits = [0; 256];
    let params = SealParams::new(&isolated).with_tenant_wrapping(1, &fits);
    assert_eq!(Envelope::seal(plaintext, &params).unwrap().wrapped_params(), &fits[..]);
    let mixed = ChunkTenant::Isolated { id_key: &id_key(1), secret: &tenant_secret(2) };
    let err = Envelope::seal_chunk(plaintext, &master(1), mixed).unwrap_err();
    assert!(matches!(err, CryptoError::InvalidSealParams { .. }), "{err:?}");
}

#[test]
fn the_parser_names_each_broken_rule() {
    use MalformedEnvelope::*;
    let (shared, _) = sealed_shared(b"0123456789");
    let (isolated, _) = sealed_isolated(b"0123456789");
    let len = shared.len() as u64;
    let bytes = shared.as_bytes();

    assert_eq!(malformed(&[]), TooShort { len_bytes: 0, min_bytes: 100 });
    assert_eq!(malformed(&bytes[..99]), TooShort { len_bytes: 99, min_bytes: 100 });
    assert_eq!(malformed(&[0; 99]), TooShort { len_bytes: 99, min_bytes: 100 });
    assert_eq!(malformed(&with_field(&shared, 0, b"KSKF")), BadMagic { found: *b"KSKF" });
    assert_eq!(malformed(&[0; 200]), BadMagic { found: [0; 4] });
    for version in [0u16, 2, 0x0100, u16::MAX] {
        let data = with_field(&shared, VERSION_OFFSET, &version.to_le_bytes());
        assert_eq!(malformed(&data), UnknownVersion { version });
    }
    for algorithm in [0u8, 2, 0xff] {
        let data = with_field(&shared, ALGORITHM_OFFSET, &[algorithm]);
        assert_eq!(malformed(&data), UnknownAlgorithm { algorithm });
    }
    assert_eq!(malformed(&with_field(&shared, FLAGS_OFFSET, &[0x02])), UnknownFlags { flags: 2 });
    let data = with_field(&isolated, FLAGS_OFFSET, &[0x81]);
    assert_eq!(malformed(&data), UnknownFlags { flags: 0x80 });
    for reserved in [[1, 0], [0, 0x80]] {
        assert_eq!(malformed(&with_field(&shared, RESERVED_OFFSET, &reserved)), NonzeroReserved);
    }
    let data = with_field(&isolated, WRAPPED_LEN_OFFSET, &257u16.to_le_bytes());
    assert_eq!(malformed(&data), WrappedParamsTooLong { len_bytes: 257, max_bytes: 256 });
    let data = with_field(&isolated, WRAPPED_LEN_OFFSET, &u16::MAX.to_le_bytes());
    assert!(matches!(malformed(&data), WrappedParamsTooLong { .. }));
    let max_bytes = u64::from(CHUNK_PLAINTEXT_MAX_BYTES);
    for ciphertext_len in [CHUNK_PLAINTEXT_MAX_BYTES + 1, u32::MAX] {
        let data = with_field(&shared, CIPHERTEXT_LEN_OFFSET, &ciphertext_len.to_le_bytes());
        let len_bytes = u64::from(ciphertext_len);
        assert_eq!(malformed(&data), CiphertextTooLong { len_bytes, max_bytes });
    }
    let data = with_field(&shared, FLAGS_OFFSET, &[FLAG_ISOLATED_TENANT]);
    assert_eq!(malformed(&data), IsolatedWithoutTenant);
    assert_eq!(malformed(&with_field(&isolated, FLAGS_OFFSET, &[0])), SharedWithTenantData);
    for (offset, value) in [
        (TENANT_ID_OFFSET + 15, &[1u8][..]),
        (KEK_EPOCH_OFFSET, &1u32.to_le_bytes()[..]),
        (WRAPPED_LEN_OFFSET, &1u16.to_le_bytes()[..]),
    ] {
        assert_eq!(malformed(&with_field(&shared, offset, value)), SharedWithTenantData);
    }
    let declared_bytes = len;
    let actual_bytes = len - 1;
    assert_eq!(malformed(&bytes[..bytes.len() - 1]), Truncated { declared_bytes, actual_bytes });
    let longer = with_field(&shared, CIPHERTEXT_LEN_OFFSET, &11u32.to_le_bytes());
    let (declared_bytes, actual_bytes) = (len + 1, len);
    assert_eq!(malformed(&longer), Truncated { declared_bytes, actual_bytes });
    let mut trailing = bytes.to_vec();
    trailing.push(0);
    let (declared_bytes, actual_bytes) = (len, len + 1);
    assert_eq!(malformed(&trailing), TrailingBytes { declared_bytes, actual_bytes });
    let shorter = with_field(&shared, CIPHERTEXT_LEN_OFFSET, &9u32.to_le_bytes());
    let (declared_bytes, actual_bytes) = (len - 1, len);
    assert_eq!(malformed(&shorter), TrailingBytes { declared_bytes, actual_bytes });
}

#[test]
fn rules_are_checked_in_the_documented_order() {
    use MalformedEnvelope::*;
    let (shared, _) = sealed_shared(b"order");
    // Bad magic and a bad version: the magic is reported.
    let mut data = with_field(&shared, 0, b"XXXX");
    data[VERSION_OFFSET] = 9;
    assert!(matches!(malformed(&data), BadMagic { .. }));
    // Bad algorithm, unknown flags, nonzero reserved, lengths over limits: algorithm first.
    let mut data = with_field(&shared, ALGORITHM_OFFSET, &[7, 0xfe]);
    data[RESERVED_OFFSET] = 1;
    data[CIPHERTEXT_LEN_OFFSET + 3] = 0xff;
    assert_eq!(malformed(&data), UnknownAlgorithm { algorithm: 7 });
    // A too-long ciphertext length is reported before the buffer's length.
    let mut data = with_field(&shared, CIPHERTEXT_LEN_OFFSET, &u32::MAX.to_le_bytes());
    data.truncate(100);
    assert!(matches!(malformed(&data), CiphertextTooLong { .. }));
}

#[test]
fn errors_say_what_broke_without_secrets() {
    let messages = [
        CryptoError::OpenFailed.to_string(),
        CryptoError::from(MalformedEnvelope::BadMagic { found: *b"ABCD" }).to_string(),
        CryptoError::DekMismatch { binding: DekBinding::KeyEpoch }.to_string(),
    ];
    assert_eq!(messages[0], "envelope failed to open");
    assert!(messages[1].starts_with("malformed envelope: bad magic"), "{}", messages[1]);
    assert!(messages[2].contains("key epoch"), "{}", messages[2]);
    let error = CryptoError::from(MalformedEnvelope::NonzeroReserved);
    assert!(std::error::Error::source(&error).is_some());
}

#[test]
fn debug_of_envelope_and_plaintext_shows_no_content() {
    let (envelope, dek) = sealed_shared(&[0xee; 64]);
    let debug = format!("{envelope:?}");
    assert!(debug.contains("chunk_id") && debug.contains("len: 164"), "{debug}");
    assert!(!debug.contains('['), "{debug}");
    let plaintext = envelope.open(&dek).unwrap();
    assert_eq!(format!("{plaintext:?}"), "Plaintext { len: 64, .. }");
}

/// Throughput of the crypto path for 1 MiB chunks on one core. A measurement, not a check:
/// `cargo test --release -p kiseki-security -- --ignored --nocapture throughput`.
#[test]
#[ignore = "a measurement; run in release"]
fn throughput_of_1_mib_chunks() {
    const CHUNK_BYTES: usize = 1 << 20;
    const ROUNDS: usize = 256;
    let master = MasterKey::generate(1).unwrap();
    let plaintext: Vec<u8> = (0..CHUNK_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    let envelope = Envelope::seal_chunk(&plaintext, &master, ChunkTenant::Shared).unwrap();
    let dek = Dek::derive(&master, &envelope.chunk_id(), None);
    let measure = |what: &str, run: &mut dyn FnMut()| {
        for _ in 0..8 {
            run();
        }
        let started = std::time::Instant::now();
        for _ in 0..ROUNDS {
            run();
        }
        let seconds = started.elapsed().as_secs_f64();
        let mib_per_s = ROUNDS as f64 / seconds; // one MiB per round
        let us_per_chunk = seconds * 1e6 / ROUNDS as f64;
        println!("{what:<44} {mib_per_s:>8.0} MiB/s {us_per_chunk:>8.1} us/chunk");
    };
    use std::hint::black_box;
    measure("chunk id (SHA-256)", &mut || {
        black_box(ChunkId::of_plaintext(black_box(&plaintext)));
    });
    measure("seal (AES-256-GCM, DEK given)", &mut || {
        black_box(Envelope::seal(black_box(&plaintext), &SealParams::new(&dek)).unwrap());
    });
    measure("seal_chunk (SHA-256 id + HKDF + AES-256-GCM)", &mut || {
        let sealed = Envelope::seal_chunk(black_box(&plaintext), &master, ChunkTenant::Shared);
        black_box(sealed.unwrap());
    });
    measure("open (HKDF + AES-256-GCM)", &mut || {
        let dek = Dek::derive(&master, &envelope.chunk_id(), None);
        black_box(black_box(&envelope).open(&dek).unwrap());
    });
    measure("open_verified (HKDF + AES-256-GCM + SHA-256)", &mut || {
        let dek = Dek::derive(&master, &envelope.chunk_id(), None);
        black_box(black_box(&envelope).open_verified(&dek, None).unwrap());
    });
}

#[test]
fn seal_into_reuses_the_buffer_and_opens() {
    let master = MasterKey::generate(1).unwrap();
    let plaintext = vec![7u8; 10_000];
    let id = ChunkId::of_plaintext(&plaintext);
    let dek = Dek::derive(&master, &id, None);
    let first = Envelope::seal(&plaintext, &SealParams::new(&dek)).unwrap();
    let first_bytes = first.as_bytes().to_vec();
    let buffer = first.into_bytes();
    let address = buffer.as_ptr();
    let second = Envelope::seal_into(&plaintext, &SealParams::new(&dek), buffer).unwrap();
    assert_eq!(second.as_bytes().as_ptr(), address, "the buffer was reused");
    assert_eq!(&*second.open(&dek).unwrap(), &plaintext[..]);
    assert_ne!(second.as_bytes(), &first_bytes[..], "a fresh nonce");
    assert_eq!(second.len(), first_bytes.len());
}

#[test]
fn sealing_into_a_slice_writes_an_envelope_that_parses_and_opens() {
    let plaintext = b"sealed straight into a device buffer";
    let chunk_id = ChunkId::isolated(&id_key(1), plaintext);
    let dek = Dek::derive(&master(1), &chunk_id, Some(&tenant_secret(1)));
    let params = SealParams::new(&dek).with_tenant_wrapping(9, b"wrapped by the KEK");
    let mut out = vec![0u8; Envelope::sealed_len(plaintext.len(), b"wrapped by the KEK".len())];
    assert_eq!(Envelope::seal_to_slice(plaintext, &params, &mut out).unwrap(), chunk_id);
    let parsed = Envelope::parse(&out).unwrap();
    assert_eq!(parsed.chunk_id(), chunk_id);
    assert_eq!(parsed.wrapped_params(), b"wrapped by the KEK");
    assert_eq!(&parsed.open_verified(&dek, Some(&id_key(1))).unwrap()[..], plaintext);
    assert!(!out.windows(plaintext.len()).any(|w| w == plaintext), "no plaintext in the output");
    let mut again = vec![0u8; out.len()];
    Envelope::seal_to_slice(plaintext, &params, &mut again).unwrap();
    assert_ne!(
        again[NONCE_OFFSET..NONCE_OFFSET + NONCE_LEN],
        out[NONCE_OFFSET..NONCE_OFFSET + NONCE_LEN]
    );
    assert_eq!(&Envelope::parse(&again).unwrap().open(&dek).unwrap()[..], plaintext);
}

#[test]
fn sealing_into_a_slice_of_the_wrong_size_is_refused_and_writes_nothing() {
    let plaintext = b"a chunk";
    let dek = Dek::derive(&master(1), &ChunkId::of_plaintext(plaintext), None);
    let len = Envelope::sealed_len(plaintext.len(), 0);
    for wrong in [0, len - 1, len + 1] {
        let mut out = vec![0xA5u8; wrong];
        let err = Envelope::seal_to_slice(plaintext, &SealParams::new(&dek), &mut out);
        assert!(matches!(err, Err(CryptoError::InvalidSealParams { .. })), "{wrong}: {err:?}");
        assert!(out.iter().all(|&b| b == 0xA5), "{wrong}: the output was written");
    }
}

#[test]
fn an_envelope_parsed_at_an_offset_is_the_envelope_and_a_bad_offset_is_malformed() {
    let (envelope, dek) = sealed_shared(b"behind a request header");
    let mut request = b"tenant".to_vec();
    request.extend_from_slice(envelope.as_bytes());
    let at = Envelope::parse_owned_at(request.clone(), 6).unwrap();
    assert_eq!(at, envelope);
    assert_eq!(at.len(), envelope.len());
    assert_eq!(at.chunk_id(), envelope.chunk_id());
    assert_eq!(&at.open(&dek).unwrap()[..], b"behind a request header");
    assert_eq!(at.into_bytes(), envelope.as_bytes());
    for start in [5, 7, request.len(), request.len() + 1, usize::MAX] {
        let refused = Envelope::parse_owned_at(request.clone(), start);
        assert!(matches!(refused, Err(CryptoError::Malformed { .. })), "{start}: {refused:?}");
    }
}
