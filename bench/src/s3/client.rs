//! The HTTP side of `kiseki-bench s3`: one kept-alive HTTP/1.1 connection per worker (over
//! TLS 1.3/1.2 with rustls trusting only `--ca`, or plain TCP for an `http://` peer), and
//! SigV4 signing of each request.
//!
//! Why `aws-sigv4` and not `aws-sdk-s3`: the bench needs four calls (HeadBucket,
//! CreateBucket, PutObject, GetObject) and full control of connections (one per worker,
//! kept alive, TCP_NODELAY, no retries it does not count), which plain hyper (already in
//! the tree for the gateway) gives. The signer is AWS's own, so requests are signed as the
//! AWS CLI's are, and a mistake in Kiseki's verifier is not mirrored by one of ours.
//! Measured here (2 cores, release): `aws-sigv4` adds 9 crates the workspace did not build
//! (aws-smithy-types and aws-smithy-runtime-api the largest), about 100 s of compile CPU;
//! `aws-sdk-s3` (tokio runtime and its default HTTPS client only) resolves to 33 crates the
//! workspace lacks, among them its own generated client (one of the largest crates on the
//! registry), the smithy runtime, a second HTTPS stack (hyper-rustls, native roots) and
//! XML/JSON codecs, for those four calls.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use zeroize::Zeroizing;

/// How much of an error answer's body is kept to find its S3 error code.
const ERROR_BODY_MAX_BYTES: usize = 4096;

/// A secret key: never printed, wiped when dropped.
#[derive(Clone)]
pub struct Secret(pub Zeroizing<String>);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(Zeroizing::new(text.to_owned())))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where requests go and how they are signed; shared by every worker.
pub struct Target {
    /// `https://127.0.0.1:9000`, without a trailing slash: signed URLs start with it.
    base: String,
    /// The Host header: the endpoint's authority as given.
    authority: String,
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    identity: Identity,
    region: String,
    sign_payload: bool,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("base", &self.base)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// One endpoint as `--endpoint` gives it.
#[derive(Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub authority: String,
}

/// Parses `http[s]://host[:port]` (an optional trailing `/`, nothing else after it).
pub fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let bad = |why: &str| format!("--endpoint {text}: {why} (example: https://127.0.0.1:9000)");
    let uri: Uri = text.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("the scheme must be http or https")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("no user info: keys go in --access-key and --secret-key"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("no path or query: the bucket goes in --bucket"));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(Endpoint { https, host, port, authority: authority.as_str().to_owned() })
}

impl Target {
    /// `ca`: the PEM bundle an https endpoint's certificate must chain to (and nothing else).
    pub fn new(
        endpoint: &Endpoint,
        ca: Option<&Path>,
        access_key: &str,
        secret: &Secret,
        region: &str,
        sign_payload: bool,
    ) -> Result<Target, String> {
        let tls = match (endpoint.https, ca) {
            (true, Some(ca)) => {
                let name = ServerName::try_from(endpoint.host.clone())
                    .map_err(|e| format!("--endpoint host {}: {e}", endpoint.host))?;
                Some((tls_connector(ca)?, name))
            }
            (true, None) => return Err("an https --endpoint needs --ca (a PEM bundle)".to_owned()),
            (false, Some(_)) => return Err("--ca is for https endpoints only".to_owned()),
            (false, None) => None,
        };
        let credentials =
            Credentials::new(access_key, secret.0.as_str(), None, None, "kiseki-bench");
        let scheme = if endpoint.https { "https" } else { "http" };
        Ok(Target {
            base: format!("{scheme}://{}", endpoint.authority),
            authority: endpoint.authority.clone(),
            host: endpoint.host.clone(),
            port: endpoint.port,
            tls,
            identity: credentials.into(),
            region: region.to_owned(),
            sign_payload,
        })
    }

    /// A new connection; its requests go one after the other, each on the same socket.
    pub async fn connect(self: &Arc<Self>) -> Result<Connection, String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect {}: {e}", self.authority))?;
        // A request's headers and a small body go out at once, not after the last ACK.
        stream.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
        let sender = match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| format!("TLS to {}: {e}", self.authority))?;
                handshake(TokioIo::new(tls)).await?
            }
            None => handshake(TokioIo::new(stream)).await?,
        };
        Ok(Connection { target: Arc::clone(self), sender })
    }

    /// The signed request; `body` is signed by its SHA-256 with `--sign-payload`, else sent
    /// as `UNSIGNED-PAYLOAD` (as the AWS CLI does over HTTPS). An empty body is always
    /// signed.
    fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, String> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_LENGTH, body.len())
            .body(Full::new(body.clone()))
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let signable_body = if body.is_empty() || self.sign_payload {
            SignableBody::Bytes(&body)
        } else {
            SignableBody::UnsignedPayload
        };
        let mut settings = SigningSettings::default();
        // S3 wants x-amz-content-sha256, the path as sent (no normalization) and
        // percent-encoded once.
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| format!("signing: {e}"))?
            .into();
        let headers = [("host", self.authority.as_str())];
        let signable =
            SignableRequest::new(method.as_str(), url, headers.into_iter(), signable_body)
                .map_err(|e| format!("signing {method} {path}: {e}"))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| format!("signing {method} {path}: {e}"))?
            .into_parts();
        instructions.apply_to_request_http1x(&mut request);
        Ok(request)
    }
}

/// One kept-alive connection of one worker.
pub struct Connection {
    target: Arc<Target>,
    sender: SendRequest<Full<Bytes>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").field("target", &self.target).finish()
    }
}

/// What an answer was: its status, and the body's length (success) or S3 error code.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body_bytes: u64,
    pub error_code: Option<String>,
}

impl Connection {
    /// Whether the peer closed it (then the worker connects again).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends one signed request and reads its whole answer. `Err` is a transport or
    /// protocol failure after which the connection is not used again.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Answer, String> {
        let request = self.target.request(method.clone(), path, body)?;
        self.sender.ready().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let response =
            self.sender.send_request(request).await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status();
        let mut body = response.into_body();
        let mut body_bytes = 0u64;
        let mut error_body = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("{method} {path}: reading the body: {e}"))?;
            if let Some(data) = frame.data_ref() {
                body_bytes += data.len() as u64;
                if !status.is_success() && error_body.len() < ERROR_BODY_MAX_BYTES {
                    error_body.extend_from_slice(data);
                }
            }
        }
        let error_code = (!status.is_success()).then(|| error_code(&error_body)).flatten();
        Ok(Answer { status, body_bytes, error_code })
    }
}

impl Answer {
    /// `Ok` for a 2xx answer, else a message naming the request, status and S3 code.
    pub fn check(&self, method: &Method, path: &str) -> Result<(), String> {
        if self.status.is_success() {
            return Ok(());
        }
        let code = self.error_code.as_deref().map_or(String::new(), |code| format!(" ({code})"));
        Err(format!("{method} {path}: {}{code}", self.status))
    }
}

async fn handshake<T>(io: TokioIo<T>) -> Result<SendRequest<Full<Bytes>>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(async move {
        // Ends when the worker drops its sender or the peer closes; a failed request says
        // why to its worker.
        let _ = connection.await;
    });
    Ok(sender)
}

/// rustls trusting the certificates of `ca` only, HTTP/1.1 by ALPN.
fn tls_connector(ca: &Path) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certificates =
        CertificateDer::pem_file_iter(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    for certificate in certificates {
        let certificate = certificate.map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        roots.add(certificate).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("--ca {}: no certificate in it", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The `<Code>` of an S3 error document, if the body is one.
fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = start + text[start..].find("</Code>")?;
    let code = &text[start..end];
    (!code.is_empty() && code.len() <= 64).then(|| code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let endpoint = parse_endpoint("https://127.0.0.1:9000").unwrap();
        assert_eq!(
            endpoint,
            Endpoint {
                https: true,
                host: "127.0.0.1".to_owned(),
                port: 9000,
                authority: "127.0.0.1:9000".to_owned()
            }
        );
        let endpoint = parse_endpoint("http://localhost/").unwrap();
        assert_eq!((endpoint.https, endpoint.port), (false, 80));
        let endpoint = parse_endpoint("https://[::1]:9443").unwrap();
        assert_eq!((endpoint.host.as_str(), endpoint.port), ("::1", 9443));
        assert_eq!(parse_endpoint("https://s3.example").unwrap().port, 443);
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for (text, says) in [
            ("127.0.0.1:9000", "scheme"),
            ("ftp://127.0.0.1", "scheme"),
            ("https://127.0.0.1:9000/bucket", "no path"),
            ("https://127.0.0.1:9000/?x=1", "no path"),
            ("https://ak:sk@127.0.0.1:9000", "no user info"),
            ("https:// bad", "not a URL"),
        ] {
            let error = parse_endpoint(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn s3_error_codes_are_found() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>\
                     <Message>no</Message></Error>";
        assert_eq!(error_code(body).as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(error_code(b"<Error><Code></Code></Error>"), None);
        assert_eq!(error_code(b"not xml"), None);
        assert_eq!(error_code(&[0xff, 0xfe]), None);
    }

    #[test]
    fn https_needs_a_ca_and_http_refuses_one() {
        let secret: Secret = "secret".parse().unwrap();
        let https = parse_endpoint("https://127.0.0.1:9000").unwrap();
        let error = Target::new(&https, None, "ak", &secret, "us-east-1", false).unwrap_err();
        assert!(error.contains("needs --ca"), "{error}");
        let http = parse_endpoint("http://127.0.0.1:9000").unwrap();
        let ca = Path::new("/nonexistent/ca.pem");
        let error = Target::new(&http, Some(ca), "ak", &secret, "us-east-1", false).unwrap_err();
        assert!(error.contains("https endpoints only"), "{error}");
        let error = Target::new(&https, Some(ca), "ak", &secret, "us-east-1", false).unwrap_err();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
        assert_eq!(format!("{secret:?}"), "Secret(..)");
    }

    #[test]
    fn requests_are_signed_for_s3() {
        let secret: Secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".parse().unwrap();
        let endpoint = parse_endpoint("http://127.0.0.1:9000").unwrap();
        let target =
            Target::new(&endpoint, None, "AKIDEXAMPLE", &secret, "us-east-1", false).unwrap();
        let put = target.request(Method::PUT, "/b/k", Bytes::from_static(b"body")).unwrap();
        let header = |request: &Request<Full<Bytes>>, name: &str| {
            request.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(header(&put, "x-amz-content-sha256").as_deref(), Some("UNSIGNED-PAYLOAD"));
        assert_eq!(header(&put, "host").as_deref(), Some("127.0.0.1:9000"));
        let authorization = header(&put, "authorization").unwrap();
        assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
        assert!(authorization.contains("/us-east-1/s3/aws4_request"), "{authorization}");
        assert!(authorization.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date"));
        assert!(header(&put, "x-amz-date").is_some());
        // An empty body is signed by its hash (the SHA-256 of nothing).
        let get = target.request(Method::GET, "/b/k", Bytes::new()).unwrap();
        assert_eq!(
            header(&get, "x-amz-content-sha256").as_deref(),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        let signed = Target { sign_payload: true, ..target };
        let put = signed.request(Method::PUT, "/b/k", Bytes::from_static(b"body")).unwrap();
        assert_eq!(
            header(&put, "x-amz-content-sha256").as_deref(),
            Some("230d8358dc8e8890b4c58deeb62912ee2f20357ae92a5cc861b98e68fe31acb5")
        );
    }
}
