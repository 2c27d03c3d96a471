//! What the engine leaves in a real device file: sealed envelopes only, and every changed
//! byte of one is caught.
//!
//! Each test runs a shard on an io_uring device over a file it can read and change with
//! `std::fs` while the device is closed (or, for the byte-by-byte sweep, underneath a
//! running shard: an O_DIRECT read writes back the page cache first, so it sees the change).
//! The chunks are sealed with `kiseki-security` as the gateway will seal them.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use kiseki_devices::{IoUringDevice, OpenOptions as DeviceOptions};
use kiseki_engine::{DeviceIds, EngineError, FormatOptions, OpenOptions, Outcome, Shard, Ticket};
use kiseki_security::{ChunkId, ChunkTenant, CryptoError, Dek, DekBinding, Envelope, MasterKey};
use tempfile::TempDir;

use crate::support;

/// 32 ASCII bytes that no envelope, id or engine structure contains by chance.
const MARKER: &[u8; 32] = b"<kiseki plaintext marker 0x5eed>";

/// Offset and length of the chunk id in an envelope (its byte map, `security/envelope.rs`).
const ENVELOPE_CHUNK_ID_AT: usize = 28;
const ENVELOPE_HEADER_BYTES: usize = 84;

const DEVICE_BYTES: u64 = 8 << 20;
const BLOCK: usize = 4096;

const IDS: DeviceIds =
    DeviceIds { cluster_id: [0xA7; 16], node_id: [0x17; 16], device_id: [0xDF; 16] };

#[test]
fn no_plaintext_reaches_the_device_file() {
    let file = DeviceFile::formatted();
    let master = MasterKey::generate(1).expect("a master key");
    // Sizes from under a block to most of the 64 KiB a shard on this pool stores, each a
    // run of markers with its own tail so that the chunk ids differ.
    let envelopes: Vec<Envelope> = [40, 1000, 4000, 4200, 20_000, 65_000]
        .into_iter()
        .map(|len| seal(&master, &marked_plaintext(len)))
        .collect();
    let mut shard = file.open_shard();
    put_all(&mut shard, &envelopes);
    // The store is real: every chunk reads back and opens to its plaintext.
    for envelope in &envelopes {
        let stored = Envelope::parse_owned(get(&mut shard, engine_id(envelope)).unwrap()).unwrap();
        let plaintext = stored.open(&dek(&master, envelope)).expect("opens");
        assert!(plaintext.starts_with(MARKER), "the plaintext holds the marker");
    }
    drop(shard);

    let raw = file.read();
    assert_eq!(find(&raw, MARKER), None, "plaintext marker found in the device file");
    // The scan sees what the shard wrote: each envelope lies whole in the file, at the
    // start of a block, exactly once.
    for envelope in &envelopes {
        let at = find_envelope(&raw, envelope);
        assert_eq!(at % BLOCK, 0, "extents start on a block");
        assert_eq!(find(&raw[at + 1..], envelope.as_bytes()), None, "stored once");
    }
}

#[test]
fn a_flipped_byte_in_a_stored_extent_is_an_integrity_error_on_get_and_in_scrub() {
    let file = DeviceFile::formatted();
    let master = MasterKey::generate(1).expect("a master key");
    let a = seal(&master, &marked_plaintext(10_000));
    let b = seal(&master, &marked_plaintext(5_000));
    put_all(&mut file.open_shard(), &[a.clone(), b.clone()]);
    let at = find_envelope(&file.read(), &a);
    let last = a.len() - 1;
    // The magic, the nonce, the chunk id, the ciphertext length, the first ciphertext byte,
    // both sides of the first block boundary, the middle, the tag's last byte.
    let offsets = [0, 5, ENVELOPE_CHUNK_ID_AT + 3, 81, ENVELOPE_HEADER_BYTES, 4095, 4096, 7000];
    for offset in offsets.into_iter().chain([last]) {
        file.xor(at + offset, 0x01);
        let mut shard = file.open_shard();
        match get(&mut shard, engine_id(&a)) {
            Err(EngineError::Integrity { chunk_id, expected_crc32c, actual_crc32c }) => {
                assert_eq!(chunk_id, engine_id(&a), "byte {offset}");
                assert_ne!(expected_crc32c, actual_crc32c, "byte {offset}");
            }
            other => panic!("byte {offset}: expected an integrity error, got {other:?}"),
        }
        assert_eq!(shard.stats().integrity_errors, 1, "byte {offset}");
        assert_eq!(get(&mut shard, engine_id(&b)).unwrap(), b.as_bytes(), "the other is intact");
        assert_eq!(shard.scrub_step(10), 2, "byte {offset}: two chunks to scrub");
        shard.run_until_idle(&mut Vec::new()).expect("scrub reads");
        assert_eq!(shard.stats().integrity_errors, 2, "byte {offset}: the scrubber found it");
        assert_eq!(shard.stats().scrub_reads, 2);
        drop(shard);
        // Even past the engine's checksum, the envelope would not open.
        let tampered = file.read()[at..at + a.len()].to_vec();
        let opened = Envelope::parse(&tampered).and_then(|e| e.open(&dek(&master, &a)));
        assert!(opened.is_err(), "byte {offset}: a tampered envelope opened");
        file.xor(at + offset, 0x01);
    }
    // Restored, it reads and opens again: the errors above were the flips, not the file.
    let mut shard = file.open_shard();
    let stored = Envelope::parse_owned(get(&mut shard, engine_id(&a)).unwrap()).unwrap();
    assert_eq!(&stored.open(&dek(&master, &a)).unwrap()[..], &marked_plaintext(10_000)[..]);
    assert_eq!(shard.stats().integrity_errors, 0);
}

/// Every byte of a small envelope, flipped in turn under a running shard.
#[test]
fn every_byte_of_a_small_stored_envelope_is_covered() {
    let file = DeviceFile::formatted();
    let master = MasterKey::generate(1).expect("a master key");
    let a = seal(&master, &marked_plaintext(40));
    let mut shard = file.open_shard();
    put_all(&mut shard, std::slice::from_ref(&a));
    let at = find_envelope(&file.read(), &a);
    for offset in 0..a.len() {
        for mask in [0x01, 0x80] {
            file.xor(at + offset, mask);
            let result = get(&mut shard, engine_id(&a));
            assert!(
                matches!(result, Err(EngineError::Integrity { .. })),
                "byte {offset} ^ {mask:#04x}: {result:?}"
            );
            file.xor(at + offset, mask);
        }
    }
    assert_eq!(shard.stats().integrity_errors, 2 * a.len() as u64);
    assert_eq!(get(&mut shard, engine_id(&a)).unwrap(), a.as_bytes(), "restored");
}

#[test]
fn an_envelope_spliced_onto_another_chunk_id_fails_to_open() {
    let master = MasterKey::generate(7).expect("a master key");
    let a = seal(&master, &marked_plaintext(3000));
    let b = seal(&master, &marked_plaintext(3001));
    let mut spliced = a.as_bytes().to_vec();
    spliced[ENVELOPE_CHUNK_ID_AT..ENVELOPE_CHUNK_ID_AT + 32].copy_from_slice(&engine_id(&b));
    let spliced = Envelope::parse(&spliced).expect("still well-formed: only the id changed");
    assert_eq!(spliced.chunk_id(), b.chunk_id());
    // The DEK of the id it now names: the id is authenticated data, so GCM refuses.
    assert_eq!(spliced.open(&dek(&master, &b)).unwrap_err(), CryptoError::OpenFailed);
    // The DEK of the id it was sealed under: refused before decrypting, by its label.
    let binding = DekBinding::ChunkId;
    assert_eq!(spliced.open(&dek(&master, &a)).unwrap_err(), CryptoError::DekMismatch { binding });
    // The originals still open.
    assert!(a.open(&dek(&master, &a)).is_ok());
    assert!(b.open(&dek(&master, &b)).is_ok());

    // Stored in the engine under b's id (as a forged put would), it comes back intact (the
    // engine checks only its own checksum) and still fails to open.
    let file = DeviceFile::formatted();
    let mut shard = file.open_shard();
    let ticket = shard.put(engine_id(&b), spliced.as_bytes()).expect("put");
    assert_put_acked(&mut shard, ticket);
    let back = Envelope::parse_owned(get(&mut shard, engine_id(&b)).unwrap()).unwrap();
    assert_eq!(back.open(&dek(&master, &b)).unwrap_err(), CryptoError::OpenFailed);
}

#[test]
fn a_chunk_id_rewritten_in_the_device_file_is_an_integrity_error() {
    let file = DeviceFile::formatted();
    let master = MasterKey::generate(1).expect("a master key");
    let a = seal(&master, &marked_plaintext(6000));
    let b = seal(&master, &marked_plaintext(6001));
    put_all(&mut file.open_shard(), &[a.clone(), b.clone()]);
    let at = find_envelope(&file.read(), &a) + ENVELOPE_CHUNK_ID_AT;
    file.write(at, &engine_id(&b));
    let mut shard = file.open_shard();
    assert!(matches!(get(&mut shard, engine_id(&a)), Err(EngineError::Integrity { .. })));
    assert_eq!(shard.stats().integrity_errors, 1);
    assert_eq!(get(&mut shard, engine_id(&b)).unwrap(), b.as_bytes());
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A formatted shard's device file, kept (unlike `support::open_uring`'s) so that the test
/// can read and change it between opens.
struct DeviceFile {
    _dir: TempDir,
    path: PathBuf,
}

impl DeviceFile {
    fn formatted() -> DeviceFile {
        let dir = tempfile::tempdir_in(support::direct_io_dir()).expect("a temporary directory");
        let path = dir.path().join("device");
        let mut device = open_device(&path, true);
        let options = FormatOptions { ids: IDS, region_offset_bytes: 0, region_size_bytes: None };
        Shard::format(&mut device, &options).expect("format");
        DeviceFile { _dir: dir, path }
    }

    fn open_shard(&self) -> Shard<IoUringDevice> {
        let shard = Shard::open(open_device(&self.path, false), &OpenOptions::default());
        shard.expect("open the shard (recovery)")
    }

    fn read(&self) -> Vec<u8> {
        let raw = std::fs::read(&self.path).expect("reading the device file");
        assert_eq!(raw.len() as u64, DEVICE_BYTES);
        raw
    }

    fn write(&self, offset: usize, bytes: &[u8]) {
        let file = std::fs::OpenOptions::new().write(true).open(&self.path).unwrap();
        file.write_all_at(bytes, offset as u64).expect("writing the device file");
    }

    fn xor(&self, offset: usize, mask: u8) {
        let file = std::fs::File::open(&self.path).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset as u64).expect("reading the device file");
        self.write(offset, &[byte[0] ^ mask]);
    }
}

/// A small pool (8 x 64 KiB registered) so that these tests need no lock against the ones
/// that register large pools; chunks up to 64 KiB.
fn open_device(path: &std::path::Path, create: bool) -> IoUringDevice {
    let options = DeviceOptions {
        create,
        size_bytes: Some(DEVICE_BYTES),
        queue_depth: 16,
        buffer_count: 8,
        buffer_size_bytes: 64 << 10,
        ..DeviceOptions::default()
    };
    IoUringDevice::open(path, &options).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `len` bytes: markers end to end, then the length (so each length has its own chunk id).
fn marked_plaintext(len: usize) -> Vec<u8> {
    let mut plaintext: Vec<u8> = MARKER.iter().copied().cycle().take(len).collect();
    let tail = (len as u64).to_le_bytes();
    let keep = len.min(tail.len());
    plaintext[len - keep..].copy_from_slice(&tail[..keep]);
    plaintext
}

fn seal(master: &MasterKey, plaintext: &[u8]) -> Envelope {
    Envelope::seal_chunk(plaintext, master, ChunkTenant::Shared).expect("seal")
}

fn dek(master: &MasterKey, envelope: &Envelope) -> Dek {
    Dek::derive(master, &envelope.chunk_id(), None)
}

fn engine_id(envelope: &Envelope) -> kiseki_engine::ChunkId {
    let id: ChunkId = envelope.chunk_id();
    *id.as_bytes()
}

fn put_all(shard: &mut Shard<IoUringDevice>, envelopes: &[Envelope]) {
    for envelope in envelopes {
        let ticket = shard.put(engine_id(envelope), envelope.as_bytes()).expect("put");
        assert_put_acked(shard, ticket);
    }
}

fn assert_put_acked(shard: &mut Shard<IoUringDevice>, ticket: Ticket) {
    let mut acks = Vec::new();
    shard.run_until_idle(&mut acks).expect("run_until_idle");
    let ack = acks.iter().find(|a| a.ticket == ticket).expect("the put's ack");
    assert!(matches!(ack.outcome, Outcome::Put(Ok(()))), "{ack:?}");
}

fn get(
    shard: &mut Shard<IoUringDevice>,
    chunk_id: kiseki_engine::ChunkId,
) -> Result<Vec<u8>, EngineError> {
    let ticket = shard.get(chunk_id)?;
    let mut acks = Vec::new();
    shard.run_until_idle(&mut acks).expect("run_until_idle");
    let ack = acks.into_iter().find(|a| a.ticket == ticket).expect("the get's ack");
    match ack.outcome {
        Outcome::Get(result) => result,
        other => panic!("a get acknowledged as {other:?}"),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Where `envelope` starts in the device file: at the start of a block, by the whole
/// envelope (its random nonce makes the first bytes unique).
fn find_envelope(raw: &[u8], envelope: &Envelope) -> usize {
    let bytes = envelope.as_bytes();
    (0..raw.len() - bytes.len())
        .step_by(BLOCK)
        .find(|&at| raw[at..].starts_with(bytes))
        .expect("the envelope is in the device file")
}
