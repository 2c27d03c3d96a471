//! The tenant IdP's JWKS over HTTPS: a [`JwksSource`] for the JWT second stage.
//!
//! The security crate verifies tokens and caches key sets but does no HTTP; this is the
//! fetcher it calls (at most once per minimum refresh interval, outside its lock). It uses
//! ureq, a small blocking HTTP client, on rustls with the same aws-lc-rs provider as every
//! other Kiseki connection, TLS 1.3 or 1.2 as the IdP offers (an IdP is not ours to pin to
//! 1.3), and trusts either a CA bundle the tenant admin configured (a private IdP) or the
//! Mozilla roots compiled in (a public one).
//!
//! Invariants: only `https://` URLs; the body is read up to [`JWKS_MAX_BYTES`] and a larger
//! one is refused, not truncated; redirects are not followed (a JWKS URL that moves is a
//! configuration change, not something to follow silently); every request has a timeout.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kiseki_security::constants::JWKS_MAX_BYTES;
use kiseki_security::jwt::{JwksFetchError, JwksSource};
use rustls_pki_types::CertificateDer;
use ureq::Agent;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

use crate::constants::JWKS_FETCH_TIMEOUT_SECS;

/// A JWKS document at an HTTPS URL.
pub struct JwksHttps {
    url: String,
    agent: Agent,
}

/// Whose certificates the IdP's server certificate must chain to.
#[derive(Debug, Clone)]
pub enum IdpRoots {
    /// The CA certificates of this PEM bundle (a tenant's private IdP).
    Bundle(Vec<CertificateDer<'static>>),
    /// The Mozilla root program, compiled in (a public IdP).
    Public,
}

impl IdpRoots {
    /// The certificates of a PEM bundle file.
    pub fn from_pem_file(path: &Path) -> Result<IdpRoots, String> {
        let certificates = kiseki_security::read_certificates(path)
            .map_err(|e| format!("IdP CA bundle {}: {e}", path.display()))?;
        Ok(IdpRoots::Bundle(certificates))
    }
}

impl JwksHttps {
    /// A source for `url`, which must be `https://`.
    pub fn new(url: &str, roots: IdpRoots) -> Result<JwksHttps, String> {
        if !url.starts_with("https://") {
            return Err(format!("JWKS URL {url:?}: only https:// is accepted"));
        }
        let roots = match roots {
            IdpRoots::Bundle(certificates) => RootCerts::new_with_certs(
                &certificates
                    .iter()
                    .map(|der| Certificate::from_der(der.as_ref()).to_owned())
                    .collect::<Vec<_>>(),
            ),
            IdpRoots::Public => RootCerts::WebPki,
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .root_certs(roots)
            .build();
        let agent = Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(JWKS_FETCH_TIMEOUT_SECS)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Ok(JwksHttps { url: url.to_owned(), agent })
    }
}

impl std::fmt::Debug for JwksHttps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksHttps").field("url", &self.url).finish_non_exhaustive()
    }
}

impl JwksSource for JwksHttps {
    fn fetch(&self) -> Result<Vec<u8>, JwksFetchError> {
        let unavailable = |reason: String| JwksFetchError::Unavailable { reason };
        let response = self
            .agent
            .get(&self.url)
            .header("accept", "application/json")
            .call()
            .map_err(|e| unavailable(format!("{}: {e}", self.url)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(unavailable(format!("{}: HTTP {status}", self.url)));
        }
        let max_bytes = JWKS_MAX_BYTES as u64;
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(max_bytes + 1)
            .read_to_end(&mut body)
            .map_err(|e| unavailable(format!("{}: reading the body: {e}", self.url)))?;
        if body.len() as u64 > max_bytes {
            return Err(JwksFetchError::TooLarge { len_bytes: body.len() as u64, max_bytes });
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::thread;

    use kiseki_security::{CertificateAuthority, IssueRequest, Role, SubjectAltName, Validity};
    use rustls::ServerConfig;
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;

    use super::*;

    /// A one-shot HTTPS server on 127.0.0.1 answering every request with `status` and
    /// `body`; returns its port and the CA that signed its certificate.
    fn serve_once(status: &'static str, body: Vec<u8>) -> (u16, CertificateAuthority) {
        let ca =
            CertificateAuthority::generate("idp test ca", Validity::days_from_now(1)).expect("ca");
        let request = IssueRequest {
            role: Role::Server,
            common_name: "idp.test".to_owned(),
            spiffe_id: None,
            subject_alt_names: vec![SubjectAltName::parse("127.0.0.1").expect("san")],
            validity: Validity::days_from_now(1),
        };
        let leaf = ca.issue(&request).expect("leaf");
        let key = PrivateKeyDer::from_pem_slice(leaf.private_key_pem().as_bytes()).expect("key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.certificate_der().clone()], key)
            .expect("server config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        thread::spawn(move || {
            let Ok((socket, _)) = listener.accept() else { return };
            let connection = rustls::ServerConnection::new(config).expect("connection");
            let mut stream = rustls::StreamOwned::new(connection, socket);
            let mut reader = BufReader::new(&mut stream);
            let mut line = String::new();
            // Read the request head; a failed handshake (wrong CA on the client) ends here.
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            let _ = stream.flush();
            stream.conn.send_close_notify();
            let _ = stream.flush();
        });
        (port, ca)
    }

    fn roots_of(ca: &CertificateAuthority) -> IdpRoots {
        IdpRoots::Bundle(vec![ca.certificate_der().clone()])
    }

    #[test]
    fn fetches_the_document_from_a_trusted_idp() {
        let document = br#"{"keys":[]}"#.to_vec();
        let (port, ca) = serve_once("200 OK", document.clone());
        let source = JwksHttps::new(&format!("https://127.0.0.1:{port}/jwks"), roots_of(&ca))
            .expect("source");
        assert_eq!(source.fetch().expect("fetch"), document);
    }

    #[test]
    fn an_idp_signed_by_another_ca_is_refused() {
        let (port, _) = serve_once("200 OK", b"{}".to_vec());
        let other = CertificateAuthority::generate("other", Validity::days_from_now(1)).unwrap();
        let source =
            JwksHttps::new(&format!("https://127.0.0.1:{port}/jwks"), roots_of(&other)).unwrap();
        let error = source.fetch().expect_err("untrusted server");
        assert!(matches!(error, JwksFetchError::Unavailable { .. }), "{error:?}");
    }

    #[test]
    fn an_oversized_document_is_refused_not_truncated() {
        let (port, ca) = serve_once("200 OK", vec![b' '; JWKS_MAX_BYTES + 10]);
        let source =
            JwksHttps::new(&format!("https://127.0.0.1:{port}/jwks"), roots_of(&ca)).unwrap();
        match source.fetch() {
            Err(JwksFetchError::TooLarge { len_bytes, max_bytes }) => {
                assert_eq!(max_bytes, JWKS_MAX_BYTES as u64);
                assert!(len_bytes > max_bytes);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn an_http_error_status_is_unavailable() {
        let (port, ca) = serve_once("404 Not Found", b"no".to_vec());
        let source =
            JwksHttps::new(&format!("https://127.0.0.1:{port}/jwks"), roots_of(&ca)).unwrap();
        let error = source.fetch().expect_err("404");
        let JwksFetchError::Unavailable { reason } = error else { panic!("{error:?}") };
        assert!(reason.contains("404"), "{reason}");
    }

    #[test]
    fn plain_http_urls_are_refused() {
        let error = JwksHttps::new("http://127.0.0.1:1/jwks", IdpRoots::Public).unwrap_err();
        assert!(error.contains("https"), "{error}");
    }
}
