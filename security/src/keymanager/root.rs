//! The root key: what every stored key is sealed under. It comes from one of three
//! providers behind one trait, [`RootSealer`]:
//! - [`LocalRootKey::from_file`]: a file of 64 hex digits, mode 0600 (a file readable by
//!   its group or by others is refused); [`create_root_key_file`] makes one. The one real
//!   provider.
//! - [`LocalRootKey::from_env`]: the same 64 hex digits in `KISEKI_ROOT_KEY`.
//! - [`ExternalKms`]: a hook for an external KMS ([`KmsClient`]: wrap, unwrap, MAC); the
//!   root key then never enters this process.
//!
//! A local root key is never used directly: HKDF-SHA256 derives a sealing key
//! (`kiseki-root-seal-v1`) and an audit MAC key (`kiseki-audit-mac-v1`) from it, both held
//! on mlocked pages; the root key's own bytes are zeroed once they are derived. Nothing
//! here writes the root key anywhere but the new file [`create_root_key_file`] makes.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::AES_256_GCM;
use aws_lc_rs::hkdf;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::constants::KEY_LEN;
use crate::keymanager::error::KeyManagerError;
use crate::keymanager::locked::{LockedKey, MemoryLocking};
use crate::keymanager::record::{aead_open, aead_seal};

/// The environment variable a root key can come from (64 hex digits).
pub const ENV_ROOT_KEY: &str = "KISEKI_ROOT_KEY";

const SEAL_INFO: &[u8] = b"kiseki-root-seal-v1";
const MAC_INFO: &[u8] = b"kiseki-audit-mac-v1";
/// A root key file holds 64 hex digits and maybe a newline; anything longer is not one.
const ROOT_KEY_FILE_MAX_BYTES: u64 = 128;

/// Seals and opens the key store's records, and MACs audit records, under the root key.
pub trait RootSealer: Send + Sync + fmt::Debug {
    /// Where the root key lives, for messages and status ("file /etc/...", "env", "kms x").
    fn source(&self) -> String;
    /// AES-256-GCM (or the KMS's wrap) of `plaintext`, bound to `aad`.
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyManagerError>;
    /// The inverse of `seal`; fails on any changed byte or other `aad`.
    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyManagerError>;
    /// HMAC-SHA256 of `data` under a key only the root key's holder has.
    fn mac(&self, data: &[u8]) -> Result<[u8; 32], KeyManagerError>;
}

/// A root key held in this process (from a file or the environment).
pub struct LocalRootKey {
    source: String,
    seal_key: LockedKey,
    mac_key: LockedKey,
}

impl LocalRootKey {
    /// Reads a root key file: refused if its mode gives its group or others any access,
    /// if it is not a regular file, or if it does not hold exactly 64 hex digits.
    pub fn from_file(path: &Path, locking: MemoryLocking) -> Result<LocalRootKey, KeyManagerError> {
        let source = format!("file {}", path.display());
        let problem =
            |problem: String| KeyManagerError::RootKey { source: source.clone(), problem };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(|error| problem(error.to_string()))?;
        let metadata = file.metadata().map_err(|error| problem(error.to_string()))?;
        if !metadata.is_file() {
            return Err(problem("not a regular file".into()));
        }
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyManagerError::RootKeyPermissions { path: path.to_path_buf(), mode });
        }
        let mut text = Zeroizing::new(Vec::with_capacity(ROOT_KEY_FILE_MAX_BYTES as usize));
        file.take(ROOT_KEY_FILE_MAX_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|error| problem(error.to_string()))?;
        let root = parse_hex_key(&text).map_err(|why| problem(why.into()))?;
        LocalRootKey::derive(source, &root, locking)
    }

    /// Reads the root key from [`ENV_ROOT_KEY`].
    pub fn from_env(locking: MemoryLocking) -> Result<LocalRootKey, KeyManagerError> {
        let source = format!("env {ENV_ROOT_KEY}");
        let text = Zeroizing::new(std::env::var(ENV_ROOT_KEY).map_err(|error| {
            KeyManagerError::RootKey { source: source.clone(), problem: error.to_string() }
        })?);
        let root = parse_hex_key(text.as_bytes()).map_err(|why| KeyManagerError::RootKey {
            source: source.clone(),
            problem: why.into(),
        })?;
        LocalRootKey::derive(source, &root, locking)
    }

    /// A root key from bytes (tests, and a KMS-less bootstrap that got them elsewhere).
    pub fn from_bytes(
        source: &str,
        root: &Zeroizing<[u8; KEY_LEN]>,
        locking: MemoryLocking,
    ) -> Result<LocalRootKey, KeyManagerError> {
        LocalRootKey::derive(source.to_owned(), root, locking)
    }

    fn derive(
        source: String,
        root: &Zeroizing<[u8; KEY_LEN]>,
        locking: MemoryLocking,
    ) -> Result<LocalRootKey, KeyManagerError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(&root[..]);
        let mut seal_key = LockedKey::zeroed(locking)?;
        let mut mac_key = LockedKey::zeroed(locking)?;
        for (info, out) in [(SEAL_INFO, seal_key.expose_mut()), (MAC_INFO, mac_key.expose_mut())] {
            prk.expand(&[info], &AES_256_GCM).and_then(|okm| okm.fill(&mut out[..])).map_err(
                |_| {
                    KeyManagerError::Crypto(crate::CryptoError::Internal {
                        operation: "HKDF-SHA256 root key",
                    })
                },
            )?;
        }
        Ok(LocalRootKey { source, seal_key, mac_key })
    }
}

impl RootSealer for LocalRootKey {
    fn source(&self) -> String {
        self.source.clone()
    }

    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        aead_seal(self.seal_key.expose(), aad, plaintext)
    }

    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyManagerError> {
        aead_open(self.seal_key.expose(), aad, sealed)
            .map_err(|_| KeyManagerError::CorruptRecord { what: "root-sealed bytes" })
    }

    fn mac(&self, data: &[u8]) -> Result<[u8; 32], KeyManagerError> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.mac_key.expose());
        let tag = hmac::sign(&key, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }
}

impl fmt::Debug for LocalRootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalRootKey").field("source", &self.source).finish_non_exhaustive()
    }
}

/// Writes a new random root key to `path` as 64 hex digits, mode 0600, refusing to
/// overwrite an existing file.
pub fn create_root_key_file(path: &Path) -> Result<(), KeyManagerError> {
    let problem = |problem: String| KeyManagerError::RootKey {
        source: format!("file {}", path.display()),
        problem,
    };
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new().fill(&mut key[..]).map_err(|_| problem("random generator".into()))?;
    let mut text = Zeroizing::new(String::with_capacity(2 * KEY_LEN + 1));
    for byte in key.iter() {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    text.push('\n');
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| problem(error.to_string()))?;
    file.write_all(text.as_bytes()).map_err(|error| problem(error.to_string()))?;
    file.sync_all().map_err(|error| problem(error.to_string()))?;
    Ok(())
}

/// The root key file's conventional name inside a data dir's `meta/`.
pub fn root_key_path(meta_dir: &Path) -> PathBuf {
    meta_dir.join("root.key")
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn parse_hex_key(text: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, &'static str> {
    let trimmed = text.strip_suffix(b"\n").unwrap_or(text);
    if trimmed.len() != 2 * KEY_LEN {
        return Err("a root key is exactly 64 hex digits");
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (index, pair) in trimmed.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).ok_or("a root key is exactly 64 hex digits");
        let (high, low) = (digit(pair[0])?, digit(pair[1])?);
        key[index] = u8::try_from(high * 16 + low).map_err(|_| "hex digit")?;
    }
    Ok(key)
}

/// An external KMS, seen through the three operations the key manager needs. The KMS
/// keeps the root key; this process only ever sees what it wraps and unwraps.
pub trait KmsClient: Send + Sync + fmt::Debug {
    fn name(&self) -> String;
    fn wrap(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String>;
    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, String>;
    fn mac(&self, data: &[u8]) -> Result<[u8; 32], String>;
}

/// The root key in an external KMS.
#[derive(Debug)]
pub struct ExternalKms<C: KmsClient> {
    client: C,
}

impl<C: KmsClient> ExternalKms<C> {
    pub fn new(client: C) -> ExternalKms<C> {
        ExternalKms { client }
    }
}

impl<C: KmsClient> RootSealer for ExternalKms<C> {
    fn source(&self) -> String {
        format!("kms {}", self.client.name())
    }

    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        self.client
            .wrap(aad, plaintext)
            .map_err(|problem| KeyManagerError::RootKey { source: self.source(), problem })
    }

    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyManagerError> {
        self.client
            .unwrap(aad, sealed)
            .map_err(|_| KeyManagerError::CorruptRecord { what: "KMS-wrapped bytes" })
    }

    fn mac(&self, data: &[u8]) -> Result<[u8; 32], KeyManagerError> {
        self.client
            .mac(data)
            .map_err(|problem| KeyManagerError::RootKey { source: self.source(), problem })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_key_file_is_created_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        create_root_key_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key = LocalRootKey::from_file(&path, MemoryLocking::Required).unwrap();
        let sealed = key.seal(b"aad", b"secret").unwrap();
        assert_eq!(&key.open(b"aad", &sealed).unwrap()[..], b"secret");
        assert!(key.open(b"other aad", &sealed).is_err());
        // The same file gives the same key; a second file another.
        let again = LocalRootKey::from_file(&path, MemoryLocking::Required).unwrap();
        assert_eq!(&again.open(b"aad", &sealed).unwrap()[..], b"secret");
        let other_path = dir.path().join("other.key");
        create_root_key_file(&other_path).unwrap();
        let other = LocalRootKey::from_file(&other_path, MemoryLocking::Required).unwrap();
        assert!(other.open(b"aad", &sealed).is_err());
        assert!(create_root_key_file(&path).is_err(), "never overwrites");
    }

    #[test]
    fn readable_by_others_or_malformed_root_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        create_root_key_file(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = LocalRootKey::from_file(&path, MemoryLocking::Required).unwrap_err();
            assert_eq!(error, KeyManagerError::RootKeyPermissions { path: path.clone(), mode });
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(LocalRootKey::from_file(&path, MemoryLocking::Required).is_ok());
        for bad in ["", "abc", &"zz".repeat(32), &"ab".repeat(33)] {
            let bad_path = dir.path().join("bad.key");
            let _ = std::fs::remove_file(&bad_path);
            std::fs::write(&bad_path, bad).unwrap();
            std::fs::set_permissions(&bad_path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let error = LocalRootKey::from_file(&bad_path, MemoryLocking::Required).unwrap_err();
            assert!(matches!(error, KeyManagerError::RootKey { .. }), "{bad:?}: {error}");
        }
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(LocalRootKey::from_file(&link, MemoryLocking::Required).is_err(), "no symlinks");
    }

    #[test]
    fn the_mac_depends_on_the_root_key_and_the_data() {
        let a = LocalRootKey::from_bytes("a", &Zeroizing::new([1; 32]), MemoryLocking::Required);
        let b = LocalRootKey::from_bytes("b", &Zeroizing::new([2; 32]), MemoryLocking::Required);
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_ne!(a.mac(b"x").unwrap(), b.mac(b"x").unwrap());
        assert_ne!(a.mac(b"x").unwrap(), a.mac(b"y").unwrap());
        assert_eq!(a.mac(b"x").unwrap(), a.mac(b"x").unwrap());
        assert!(!format!("{a:?}").contains("01"));
    }
}
