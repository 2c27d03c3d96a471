//! The bench's throwaway PKI in `--tls-dir`: a CA, a server certificate and a client
//! certificate, both with the server role (`kiseki-server`), so the client's calls are the
//! node-to-node operations the chunk service allows.
//!
//! The listener creates the files when the directory is empty (or absent) and reuses them
//! otherwise; the client only reads them. Both sides build their TLS context through
//! `kiseki_security`'s one builder, with the CA's CRL: there is no plaintext mode.
//!
//! Layout: `ca.crt`, `ca.key` (0600), `crl.pem` (from `CertificateAuthority::init`), then
//! `server.crt`/`server.key` and `client.crt`/`client.key` (keys 0600, the directory 0700).

use std::net::IpAddr;
use std::path::Path;

use kiseki_security::{
    CA_CERT_FILE, CRL_FILE, CertificateAuthority, IssueRequest, Role, SubjectAltName, TlsBuilder,
    TlsContext, TlsPaths, Validity,
};

/// The name the client asks a listener on a loopback or unspecified address for; every
/// server certificate carries it.
pub const SERVER_NAME: &str = "localhost";

/// Days the throwaway certificates stay valid: long enough to reuse a directory across a
/// week of runs, short enough that a forgotten one expires.
const CERT_VALIDITY_DAYS: u32 = 7;

const SERVER_STEM: &str = "server";
const CLIENT_STEM: &str = "client";

/// Which side's certificate to present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// The listener's side: creates the CA and both certificates in `dir` if it holds none
/// (the server certificate valid for localhost, 127.0.0.1, ::1 and `listen_ip` when it
/// names one address), then loads the server's context.
pub fn prepare_server(dir: &Path, listen_ip: IpAddr) -> Result<TlsContext, String> {
    if is_empty_dir(dir)? {
        create(dir, listen_ip)?;
        eprintln!("kiseki-bench: created a throwaway CA and certificates in {}", dir.display());
    }
    load(dir, Side::Server)
}

/// Loads `side`'s TLS context from `dir`, with a clear error when a file is missing.
pub fn load(dir: &Path, side: Side) -> Result<TlsContext, String> {
    let stem = match side {
        Side::Server => SERVER_STEM,
        Side::Client => CLIENT_STEM,
    };
    let paths = TlsPaths {
        ca: dir.join(CA_CERT_FILE),
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
        crl: Some(dir.join(CRL_FILE)),
    };
    for path in [&paths.ca, &paths.cert, &paths.key, paths.crl.as_ref().expect("set above")] {
        if !path.exists() {
            return Err(format!(
                "--tls-dir={}: {} is missing (a `kiseki-bench fabric --listen` creates the \
                 files in an empty directory)",
                dir.display(),
                path.display()
            ));
        }
    }
    TlsBuilder::new(paths).build().map_err(|e| format!("--tls-dir={}: {e}", dir.display()))
}

/// Whether `dir` is absent or holds nothing.
fn is_empty_dir(dir: &Path) -> Result<bool, String> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(format!("--tls-dir={}: {e}", dir.display())),
    }
}

fn create(dir: &Path, listen_ip: IpAddr) -> Result<(), String> {
    let failed = |e: kiseki_security::PkiError| format!("--tls-dir={}: {e}", dir.display());
    let validity = Validity::days_from_now(CERT_VALIDITY_DAYS);
    let ca =
        CertificateAuthority::init(dir, "kiseki-bench throwaway CA", validity).map_err(failed)?;
    let mut names = vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if !listen_ip.is_unspecified() && !listen_ip.is_loopback() {
        names.push(listen_ip.to_string());
    }
    let server_names = names.iter().map(|name| SubjectAltName::parse(name).map_err(failed));
    let server_names = server_names.collect::<Result<Vec<_>, _>>()?;
    for (stem, subject_alt_names) in [(SERVER_STEM, server_names), (CLIENT_STEM, Vec::new())] {
        let request = IssueRequest {
            role: Role::Server,
            common_name: format!("kiseki-bench-{stem}"),
            spiffe_id: None,
            subject_alt_names,
            validity,
        };
        ca.issue(&request).and_then(|issued| issued.write_files(dir, stem)).map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use kiseki_security::CA_KEY_FILE;

    use super::*;

    /// The files a prepared directory holds.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let leaves = [SERVER_STEM, CLIENT_STEM]
            .map(|stem| [".crt", ".key"].map(|ext| stem.to_owned() + ext));
        let names = [CA_CERT_FILE, CA_KEY_FILE, CRL_FILE].map(str::to_owned);
        names.into_iter().chain(leaves.into_iter().flatten()).map(|name| dir.join(name)).collect()
    }

    #[test]
    fn listener_creates_what_the_client_reads() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("tls");
        let server = prepare_server(&dir, "127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(server.local_identity().role(), Some(&Role::Server));
        for path in files(&dir) {
            assert!(path.exists(), "{} was not created", path.display());
        }
        let client = load(&dir, Side::Client).unwrap();
        assert_eq!(client.local_identity().role(), Some(&Role::Server));
        assert_eq!(client.local_identity().common_name(), Some("kiseki-bench-client"));
        // A second listener reuses the files (init would refuse to overwrite them).
        prepare_server(&dir, "127.0.0.1".parse().unwrap()).unwrap();
    }

    #[test]
    fn a_missing_file_is_named() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::write(temp.path().join("stray"), b"x").unwrap();
        let message = load(temp.path(), Side::Client).unwrap_err();
        assert!(message.contains("ca.crt is missing"), "{message}");
        let message = prepare_server(temp.path(), "127.0.0.1".parse().unwrap()).unwrap_err();
        assert!(message.contains("is missing"), "{message}");
    }
}
