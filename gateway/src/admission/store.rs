//! The admission token store's file: where `admission-token create` adds tokens and the
//! admission service spends them, possibly at the same moment.
//!
//! Every change is a read-modify-write under an exclusive advisory lock on a lock file
//! beside the store (`<store>.lock`; the store itself is replaced by rename, so it cannot
//! hold the lock). The new store is written to a temporary file of mode 0600, flushed, and
//! renamed over the old one, and the directory is flushed, all before [`TokenStoreFile::
//! update`] returns: once the service answers a node, the spent token is spent on disk, and
//! a crash at any point leaves the old store or the new one, never a mix.
//!
//! What this does not do: judge tokens (`kiseki_security::admission::TokenStore` does) or
//! keep the store in memory between changes: the file is the truth, so a token minted while
//! the service runs is seen at its next redemption.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kiseki_security::admission::TokenStore;
use kiseki_security::{PkiError, replace_file_atomically};
use zeroize::Zeroizing;

use super::AdmissionServiceError;

/// Largest store file read: 4 MiB. A full store (1024 tokens) is about 250 KiB of JSON.
const STORE_FILE_MAX_BYTES: u64 = 4 << 20;

/// A token store on disk; see the module's notes.
#[derive(Debug, Clone)]
pub struct TokenStoreFile {
    path: PathBuf,
    lock_path: PathBuf,
}

/// What to do if the store file does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    /// Start from an empty store (minting the first token).
    Empty,
    /// Fail (a service pointed at the wrong path should say so, not refuse every token).
    Fail,
}

impl TokenStoreFile {
    pub fn new(path: impl Into<PathBuf>) -> TokenStoreFile {
        let path = path.into();
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        TokenStoreFile { path, lock_path: PathBuf::from(lock_path) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the store under the lock, without changing it.
    pub fn read(&self, if_missing: IfMissing) -> Result<TokenStore, AdmissionServiceError> {
        let _lock = self.lock()?;
        self.load(if_missing)
    }

    /// Runs `change` on the store under the lock and, if the store changed, writes it back
    /// durably before returning `change`'s result (whatever that result is: a failed
    /// redemption may still have spent the token).
    pub fn update<T>(
        &self,
        if_missing: IfMissing,
        change: impl FnOnce(&mut TokenStore) -> T,
    ) -> Result<T, AdmissionServiceError> {
        let _lock = self.lock()?;
        let mut store = self.load(if_missing)?;
        let before = store.clone();
        let outcome = change(&mut store);
        if store != before {
            let json = Zeroizing::new(store.to_json());
            replace_file_atomically(&self.path, json.as_bytes(), 0o600).map_err(
                |error| match error {
                    PkiError::Io { path, source } => AdmissionServiceError::Store { path, source },
                    other => AdmissionServiceError::Pki(other),
                },
            )?;
        }
        Ok(outcome)
    }

    /// Takes the exclusive lock; it is released when the returned file is dropped.
    fn lock(&self) -> Result<fs::File, AdmissionServiceError> {
        let store_error =
            |source| AdmissionServiceError::Store { path: self.lock_path.clone(), source };
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(store_error)?;
        file.lock().map_err(store_error)?;
        Ok(file)
    }

    fn load(&self, if_missing: IfMissing) -> Result<TokenStore, AdmissionServiceError> {
        let store_error = |source| AdmissionServiceError::Store { path: self.path.clone(), source };
        let file = match fs::File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return match if_missing {
                    IfMissing::Empty => Ok(TokenStore::new()),
                    IfMissing::Fail => Err(store_error(error)),
                };
            }
            Err(error) => return Err(store_error(error)),
        };
        let mut text = String::new();
        file.take(STORE_FILE_MAX_BYTES + 1).read_to_string(&mut text).map_err(store_error)?;
        if text.len() as u64 > STORE_FILE_MAX_BYTES {
            return Err(store_error(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {STORE_FILE_MAX_BYTES} bytes"),
            )));
        }
        TokenStore::from_json(&text).map_err(AdmissionServiceError::Token)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use kiseki_security::admission::AdmissionError;

    use super::*;

    #[test]
    fn tokens_minted_and_spent_through_the_file_stay_spent() {
        let temp = tempfile::tempdir().unwrap();
        let file = TokenStoreFile::new(temp.path().join("tokens.json"));
        assert!(matches!(file.read(IfMissing::Fail), Err(AdmissionServiceError::Store { .. })));
        let token = file.update(IfMissing::Empty, |store| store.mint("node1", 60, 1000)).unwrap();
        let token = token.unwrap();
        let mode = fs::metadata(file.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(file.path()).unwrap();
        assert!(!text.contains(token.expose()), "only the hash is stored");

        // A second handle (another process, say) sees the token and spends it once.
        let other = TokenStoreFile::new(file.path());
        let first = other.update(IfMissing::Fail, |store| store.redeem(token.expose(), 1001));
        assert_eq!(first.unwrap(), Ok("node1".to_owned()));
        let again = file.update(IfMissing::Fail, |store| store.redeem(token.expose(), 1002));
        assert_eq!(again.unwrap(), Err(AdmissionError::Replayed));
        assert!(file.read(IfMissing::Fail).unwrap().records()[0].used_unix_secs.is_some());
    }

    #[test]
    fn a_corrupt_store_is_an_error_not_an_empty_store() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("tokens.json");
        fs::write(&path, "{ not json").unwrap();
        let file = TokenStoreFile::new(&path);
        let result = file.update(IfMissing::Empty, |store| store.mint("node1", 60, 0).is_ok());
        assert!(matches!(result, Err(AdmissionServiceError::Token(_))), "{result:?}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "{ not json", "left as it was");
    }
}
