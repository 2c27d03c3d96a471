//! What stands between a connection and `s3s`: the bounds a request meets before any of
//! its body is read, and how a `Host` header names a bucket.
//!
//! - [`Bounded`] wraps the `s3s` service. It answers at once, without reading a body byte:
//!   503 SlowDown when [`S3Limits::requests_max`] requests are in progress or their declared
//!   bodies would go over [`S3Limits::body_budget_bytes`] (back-pressure instead of a
//!   queue or buffers that grow with the load); 400 EntityTooLarge when the declared
//!   length (`Content-Length`, or `x-amz-decoded-content-length` of an aws-chunked upload)
//!   is over [`S3Limits::body_max_bytes`]; 403 AccessDenied for a presigned URL valid for
//!   more than seven days (`X-Amz-Expires`, or a SigV2 `Expires` time further away): `s3s`
//!   itself checks only that it has not run out; 400 InvalidRequest for SigV2 in a header,
//!   whose date `s3s` does not check (SigV2 presigned URLs, which boto3 still makes, carry
//!   their own expiry and are served).
//!   A body without a declared length is cut off by the operation that reads it
//!   (`crate::s3_body`).
//! - [`VirtualHosts`] is `s3s`'s host hook: `<bucket>.<domain>` names a bucket (virtual-host
//!   style), the domain itself or an IP address does not (path style).
//! - [`configure`] puts both hooks' settings on a service builder: the clock skew `s3s`
//!   allows a signed request ([`S3_CLOCK_SKEW_MAX_SECS`]) and the virtual-host domains.
//!
//! - [`OpSlot`]: with metrics on, [`Bounded`] hands each request a slot the access hook
//!   (`crate::audit::AuditAccess`) fills with the S3 operation's name, and counts the
//!   answer under it (`crate::observe::Metrics::record_s3`).
//!
//! Header sizes and the TLS handshake are bounded where the connection is served
//! (`crate::s3::S3Server`).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use hyper::body::Bytes;
use hyper::http;
use s3s::host::{S3Host, VirtualHost};
use s3s::{HttpError, HttpResponse, S3Error, S3ErrorCode, S3Result};

use crate::constants::{
    S3_BODY_BUDGET_BYTES, S3_CLOCK_SKEW_MAX_SECS, S3_OBJECT_MAX_BYTES, S3_PART_MAX_BYTES,
    S3_PRESIGNED_EXPIRES_MAX_SECS, S3_REQUESTS_MAX,
};
use crate::observe::Metrics;

/// The bounds [`Bounded`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct S3Limits {
    /// Requests in progress at once; see [`S3_REQUESTS_MAX`].
    pub requests_max: usize,
    /// The largest body a request may declare; see [`S3_OBJECT_MAX_BYTES`].
    pub body_max_bytes: u64,
    /// Body bytes all requests in progress may hold together; see
    /// [`S3_BODY_BUDGET_BYTES`]. At least `body_max_bytes`.
    pub body_budget_bytes: u64,
}

impl Default for S3Limits {
    fn default() -> S3Limits {
        S3Limits {
            requests_max: S3_REQUESTS_MAX,
            body_max_bytes: S3_OBJECT_MAX_BYTES.max(S3_PART_MAX_BYTES) as u64,
            body_budget_bytes: S3_BODY_BUDGET_BYTES,
        }
    }
}

/// Sets what `s3s` checks by itself to our values: the clock skew a signed request (or a
/// presigned URL's start) may have, and the virtual-host domains of `hosts`.
pub fn configure(builder: &mut s3s::service::S3ServiceBuilder, hosts: VirtualHosts) {
    let mut config = s3s::config::S3Config::default();
    config.presigned_url_max_skew_time_secs = S3_CLOCK_SKEW_MAX_SECS;
    let provider = s3s::config::StaticConfigProvider::new(Arc::new(config));
    builder.set_config(Arc::new(provider));
    builder.set_host(hosts);
}

/// A service in front of another (the `s3s` service) that refuses what is over its
/// [`S3Limits`] before the inner service sees it; see the module's notes.
#[derive(Debug, Clone)]
pub struct Bounded<S> {
    inner: S,
    limits: S3Limits,
    requests: Arc<tokio::sync::Semaphore>,
    /// One permit per [`BUDGET_UNIT_BYTES`] of declared body held by a request.
    body_budget: Arc<tokio::sync::Semaphore>,
    metrics: Option<Arc<Metrics>>,
}

/// The unit the body budget is counted in: 64 KiB, so that a budget of any size fits a
/// semaphore's permits and a small body costs one unit.
const BUDGET_UNIT_BYTES: u64 = 64 << 10;

impl<S> Bounded<S> {
    pub fn new(inner: S, limits: S3Limits) -> Bounded<S> {
        assert!(limits.body_budget_bytes >= limits.body_max_bytes, "a largest body must fit");
        let requests = Arc::new(tokio::sync::Semaphore::new(limits.requests_max));
        let units = usize::try_from(limits.body_budget_bytes.div_ceil(BUDGET_UNIT_BYTES))
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let body_budget = Arc::new(tokio::sync::Semaphore::new(units));
        Bounded { inner, limits, requests, body_budget, metrics: None }
    }

    /// Counts every answer in `metrics`, by operation and status.
    pub fn metered(mut self, metrics: Arc<Metrics>) -> Bounded<S> {
        self.metrics = Some(metrics);
        self
    }
}

/// The S3 operation a request turned out to be, once the access hook knows it.
#[derive(Clone, Debug, Default)]
pub struct OpSlot(Arc<OnceLock<String>>);

impl OpSlot {
    /// Names the request's operation (the first name given stays).
    pub fn set(&self, op: &str) {
        let _ = self.0.set(op.to_owned());
    }
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> hyper::service::Service<http::Request<B>> for Bounded<S>
where
    S: hyper::service::Service<http::Request<B>, Response = HttpResponse, Error = HttpError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = HttpError;
    type Future = BoxFuture<Result<HttpResponse, HttpError>>;

    fn call(&self, mut request: http::Request<B>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return self.bounded(request);
        };
        let started = Instant::now();
        let slot = OpSlot::default();
        request.extensions_mut().insert(slot.clone());
        let declared = declared_length(&request).unwrap_or(0);
        let response = self.bounded(request);
        Box::pin(async move {
            let response = response.await;
            if let Ok(response) = &response {
                // No operation named: the bounds or the signature check answered first.
                // A body counts only once an operation was reached: a refused request's
                // declared length was never read.
                let (op, read) = match slot.0.get() {
                    Some(op) => (op.as_str(), declared),
                    None => ("none", 0),
                };
                let sent = hyper::body::Body::size_hint(response.body()).exact().unwrap_or(0);
                let seconds = started.elapsed().as_secs_f64();
                metrics.record_s3(op, response.status().as_u16(), seconds, read, sent);
            }
            response
        })
    }
}

impl<S> Bounded<S> {
    /// The bounds alone; see the module's notes.
    fn bounded<B>(&self, request: http::Request<B>) -> BoxFuture<Result<HttpResponse, HttpError>>
    where
        S: hyper::service::Service<http::Request<B>, Response = HttpResponse, Error = HttpError>,
        S::Future: Send + 'static,
    {
        let body_bytes = match check_request(&request, &self.limits) {
            Ok(body_bytes) => body_bytes,
            Err(refusal) => return Box::pin(std::future::ready(error_response(refusal))),
        };
        // Both acquired without waiting: a request over a bound is answered now, not queued.
        let Ok(permit) = Arc::clone(&self.requests).try_acquire_owned() else {
            return Box::pin(std::future::ready(error_response(slow_down(
                "too many requests in progress; retry with back-off",
            ))));
        };
        let units = u32::try_from(body_bytes.div_ceil(BUDGET_UNIT_BYTES)).unwrap_or(u32::MAX);
        let budget = if units == 0 {
            None
        } else {
            match Arc::clone(&self.body_budget).try_acquire_many_owned(units) {
                Ok(budget) => Some(budget),
                Err(_) => {
                    return Box::pin(std::future::ready(error_response(slow_down(
                        "too many request bodies in progress; retry with back-off",
                    ))));
                }
            }
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop((permit, budget));
            response
        })
    }
}

fn slow_down(why: &'static str) -> S3Error {
    S3Error::with_message(S3ErrorCode::SlowDown, why)
}

/// A length header's value; `None` if absent or not a number (an unparsable length is
/// `s3s`'s, or hyper's, to refuse with its own error).
fn header_length(headers: &http::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The body length a request declares, for the byte counts.
fn declared_length<B>(request: &http::Request<B>) -> Option<u64> {
    header_length(request.headers(), http::header::CONTENT_LENGTH.as_str())
}

/// What [`Bounded`] refuses from a request's head alone; otherwise the body bytes it will
/// hold: its declared length, or the largest allowed for a body of undeclared length.
fn check_request<B>(request: &http::Request<B>, limits: &S3Limits) -> S3Result<u64> {
    if let Some(query) = request.uri().query() {
        check_presigned_expiry(query)?;
    }
    let headers = request.headers();
    // SigV2 in a header (`AWS key:signature`): `s3s` checks no date on it, so a captured
    // request would replay for ever. Every current client signs with SigV4; AWS's own
    // newer regions refuse SigV2 the same way.
    let authorization = headers.get(http::header::AUTHORIZATION).map(|value| value.as_bytes());
    if authorization.is_some_and(|value| value.starts_with(b"AWS ")) {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidRequest,
            "The authorization mechanism you have provided is not supported. \
             Please use AWS4-HMAC-SHA256.",
        ));
    }
    let sent = header_length(headers, http::header::CONTENT_LENGTH.as_str());
    // An aws-chunked body's Content-Length counts its chunk framing too: the object is the
    // decoded length, which is what the bound is on.
    let decoded = header_length(headers, "x-amz-decoded-content-length");
    if decoded.or(sent).is_some_and(|length| length > limits.body_max_bytes) {
        return Err(S3Error::with_message(
            S3ErrorCode::EntityTooLarge,
            "the body is larger than this server takes in one request",
        ));
    }
    // What the request holds while it is read: framing included, but never more than the
    // whole budget (so a body within the bound always gets in on an idle front).
    let mut body_bytes = sent.unwrap_or(0).max(decoded.unwrap_or(0)).min(limits.body_budget_bytes);
    let undeclared = !headers.contains_key(http::header::CONTENT_LENGTH)
        && headers.contains_key(http::header::TRANSFER_ENCODING);
    if undeclared {
        body_bytes = limits.body_max_bytes;
    }
    Ok(body_bytes)
}

/// A presigned URL may ask for at most seven days (SigV4's limit; AWS refuses more too):
/// `X-Amz-Expires` in seconds for SigV4, `Expires` as a Unix time for the SigV2 URLs boto3
/// still makes by default.
fn check_presigned_expiry(query: &str) -> S3Result<()> {
    let mut sigv2 = (false, None);
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(name) = percent_decode(name) else { continue };
        // A value that is not a number is `s3s`'s to refuse.
        let number = || percent_decode(value).and_then(|text| text.parse::<u64>().ok());
        match name.as_str() {
            "X-Amz-Expires" if number().is_some_and(|s| s > S3_PRESIGNED_EXPIRES_MAX_SECS) => {
                return Err(expires_too_late());
            }
            "Signature" => sigv2.0 = true,
            "Expires" => sigv2.1 = number(),
            _ => {}
        }
    }
    if let (true, Some(expires_unix_s)) = sigv2 {
        let now_unix_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if expires_unix_s.saturating_sub(now_unix_s) > S3_PRESIGNED_EXPIRES_MAX_SECS {
            return Err(expires_too_late());
        }
    }
    Ok(())
}

fn expires_too_late() -> S3Error {
    S3Error::with_message(
        S3ErrorCode::AccessDenied,
        "a presigned URL may be valid for at most 604800 seconds (seven days)",
    )
}

/// `%XX` escapes (and `+` as a space) decoded, as `s3s` reads a query; `None` for a broken
/// escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'%' => {
                let high = char::from(bytes.next()?).to_digit(16)?;
                let low = char::from(bytes.next()?).to_digit(16)?;
                out.push((high * 16 + low) as u8);
            }
            b'+' => out.push(b' '),
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok()
}

/// `error` as S3's XML error answer.
fn error_response(error: S3Error) -> Result<HttpResponse, HttpError> {
    error.to_http_response().or_else(|_| {
        // Serializing a code and a constant message cannot fail; answer plainly if it did.
        let mut response = HttpResponse::new(s3s::Body::from(Bytes::new()));
        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        Ok(response)
    })
}

/// The domains under which a host name `<bucket>.<domain>` names a bucket (virtual-host
/// style). A host that is one of the domains, an IP address, or a name under none of them
/// is path style: the bucket is the path's first segment. A port is ignored.
#[derive(Debug, Clone)]
pub struct VirtualHosts {
    domains: Vec<String>,
}

impl VirtualHosts {
    /// `domains` are lowercased; `localhost` is the dev node's.
    pub fn new<I: IntoIterator<Item = T>, T: AsRef<str>>(domains: I) -> VirtualHosts {
        let domains = domains
            .into_iter()
            .map(|domain| domain.as_ref().trim_end_matches('.').to_ascii_lowercase())
            .filter(|domain| !domain.is_empty())
            .collect();
        VirtualHosts { domains }
    }

    /// The bucket `host` names, if it names one.
    pub fn bucket_of<'a>(&self, host: &'a str) -> Option<&'a str> {
        let name = strip_port(host);
        let name = name.strip_suffix('.').unwrap_or(name);
        // A domain itself is path style, even under another domain; and the longest
        // domain a name is under decides where the bucket ends.
        if self.domains.iter().any(|domain| name.eq_ignore_ascii_case(domain)) {
            return None;
        }
        self.domains
            .iter()
            .filter_map(|domain| {
                let split = name.len().checked_sub(domain.len() + 1)?;
                // `get`, not indexing: a split inside a multi-byte character is no match.
                let (bucket, rest) = (name.get(..split)?, name.get(split..)?);
                let tail = rest.strip_prefix('.')?;
                (tail.eq_ignore_ascii_case(domain) && !bucket.is_empty()).then_some(bucket)
            })
            .min_by_key(|bucket| bucket.len())
    }
}

impl S3Host for VirtualHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let domain = strip_port(host);
        Ok(match self.bucket_of(host) {
            Some(bucket) => VirtualHost::new(domain).with_bucket(bucket),
            None => VirtualHost::new(domain),
        })
    }
}

/// `host` without its `:port` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !name.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            if name.starts_with('[') || !name.contains(':') {
                name
            } else {
                host
            }
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut builder = http::Request::builder().method("PUT").uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn code_of<T>(result: S3Result<T>) -> Option<String> {
        result.err().map(|error| error.code().as_str().to_owned())
    }

    #[test]
    fn presigned_urls_over_seven_days_are_refused() {
        let limits = S3Limits::default();
        let url = |expires: &str| {
            format!(
                "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires={expires}&X-Amz-Signature=00"
            )
        };
        assert_eq!(code_of(check_request(&request(&url("604800"), &[]), &limits)), None);
        assert_eq!(code_of(check_request(&request(&url("60"), &[]), &limits)), None);
        for over in ["604801", "99999999999", "%36%30%34%38%30%31"] {
            assert_eq!(
                code_of(check_request(&request(&url(over), &[]), &limits)).as_deref(),
                Some("AccessDenied"),
                "{over}"
            );
        }
        // An escaped parameter name is the same parameter to s3s.
        let escaped = "/b/k?X-Amz-%45xpires=604801&X-Amz-Signature=00";
        assert_eq!(
            code_of(check_request(&request(escaped, &[]), &limits)).as_deref(),
            Some("AccessDenied")
        );
        // Not ours to judge: s3s refuses what does not parse.
        assert_eq!(code_of(check_request(&request(&url("soon"), &[]), &limits)), None);
        // SigV2: `Expires` is a Unix time.
        let now_s =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let v2 = |expires: u64| format!("/b/k?AWSAccessKeyId=K&Signature=x&Expires={expires}");
        let week = check_request(&request(&v2(now_s + 604_000), &[]), &limits);
        assert_eq!(code_of(week), None);
        let past = check_request(&request(&v2(now_s - 10), &[]), &limits);
        assert_eq!(code_of(past), None, "expired: s3s refuses it");
        let over = check_request(&request(&v2(now_s + 604_900), &[]), &limits);
        assert_eq!(code_of(over).as_deref(), Some("AccessDenied"));
    }

    #[test]
    fn sigv2_header_auth_is_refused_and_sigv4_is_not() {
        let limits = S3Limits::default();
        let v2 = request("/b/k", &[("authorization", "AWS KSKEXAMPLE:c2lnbmF0dXJl")]);
        assert_eq!(code_of(check_request(&v2, &limits)).as_deref(), Some("InvalidRequest"));
        let v4 = request(
            "/b/k",
            &[(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=K/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=00",
            )],
        );
        assert_eq!(code_of(check_request(&v4, &limits)), None);
    }

    #[test]
    fn declared_lengths_over_the_bound_are_refused() {
        let limits = S3Limits { requests_max: 1, body_max_bytes: 1000, body_budget_bytes: 1000 };
        let fits = request("/b/k", &[("content-length", "1000")]);
        assert_eq!(code_of(check_request(&fits, &limits)), None);
        let over = request("/b/k", &[("content-length", "1001")]);
        assert_eq!(code_of(check_request(&over, &limits)).as_deref(), Some("EntityTooLarge"));
        let chunked = request(
            "/b/k",
            &[("content-length", "900"), ("x-amz-decoded-content-length", "5000000000")],
        );
        assert_eq!(code_of(check_request(&chunked, &limits)).as_deref(), Some("EntityTooLarge"));
        let default = S3Limits::default();
        let five_gib = request("/b/k", &[("content-length", "5368709120")]);
        assert_eq!(code_of(check_request(&five_gib, &default)).as_deref(), Some("EntityTooLarge"));
    }

    /// An inner service whose answers wait until the test lets them go.
    #[derive(Clone)]
    struct Held(Arc<tokio::sync::Semaphore>);

    impl hyper::service::Service<http::Request<()>> for Held {
        type Response = HttpResponse;
        type Error = HttpError;
        type Future = BoxFuture<Result<HttpResponse, HttpError>>;

        fn call(&self, _: http::Request<()>) -> Self::Future {
            let gate = Arc::clone(&self.0);
            Box::pin(async move {
                let _pass = gate.acquire().await.map_err(|e| HttpError::new(Box::new(e)))?;
                Ok(HttpResponse::new(s3s::Body::from(Bytes::from_static(b"ok"))))
            })
        }
    }

    #[tokio::test]
    async fn requests_over_the_bound_get_slow_down_at_once() {
        use hyper::service::Service as _;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let bounded = Bounded::new(
            Held(Arc::clone(&gate)),
            S3Limits { requests_max: 2, body_max_bytes: 1 << 20, body_budget_bytes: 1 << 20 },
        );
        let first = tokio::spawn(bounded.call(request("/b/1", &[])));
        let second = tokio::spawn(bounded.call(request("/b/2", &[])));
        // Both hold their permits (they are in the inner service, waiting on the gate).
        let third = bounded.call(request("/b/3", &[]));
        let refused = tokio::time::timeout(std::time::Duration::from_secs(5), third)
            .await
            .expect("the third request is answered without waiting")
            .unwrap();
        assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        let body = http_body_util::BodyExt::collect(refused.into_body()).await.unwrap();
        let text = String::from_utf8(body.to_bytes().to_vec()).unwrap();
        assert!(text.contains("<Code>SlowDown</Code>"), "{text}");

        gate.add_permits(2);
        for held in [first, second] {
            assert_eq!(held.await.unwrap().unwrap().status(), http::StatusCode::OK);
        }
        // The permits came back: the next request is served.
        gate.add_permits(1);
        let served = bounded.call(request("/b/4", &[])).await.unwrap();
        assert_eq!(served.status(), http::StatusCode::OK);
    }

    #[tokio::test]
    async fn bodies_over_the_budget_get_slow_down_at_once() {
        use hyper::service::Service as _;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let bounded = Bounded::new(
            Held(Arc::clone(&gate)),
            S3Limits { requests_max: 16, body_max_bytes: 1 << 20, body_budget_bytes: 3 << 19 },
        );
        let mib = (1u64 << 20).to_string();
        let put = |length: &str| request("/b/k", &[("content-length", length)]);
        // One MiB of the 1.5 MiB budget is held; another MiB would go over it.
        let held = tokio::spawn(bounded.call(put(&mib)));
        tokio::task::yield_now().await;
        let refused = bounded.call(put(&mib)).await.unwrap();
        assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        // An undeclared (chunked) body counts as the largest allowed: refused as well.
        let chunked = request("/b/k", &[("transfer-encoding", "chunked")]);
        let refused = bounded.call(chunked).await.unwrap();
        assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        // What still fits is served, and a request without a body costs nothing.
        let small = tokio::spawn(bounded.call(put("1000")));
        let bodiless = tokio::spawn(bounded.call(request("/b", &[])));
        gate.add_permits(3);
        for served in [held, small, bodiless] {
            assert_eq!(served.await.unwrap().unwrap().status(), http::StatusCode::OK);
        }
        // The budget came back whole.
        gate.add_permits(1);
        let again = bounded.call(put(&mib)).await.unwrap();
        assert_eq!(again.status(), http::StatusCode::OK);
    }

    #[test]
    fn virtual_hosts_name_buckets_under_their_domains_only() {
        let hosts = VirtualHosts::new(["localhost", "s3.example.org"]);
        assert_eq!(hosts.bucket_of("photos.localhost:9000"), Some("photos"));
        assert_eq!(hosts.bucket_of("photos.localhost"), Some("photos"));
        assert_eq!(hosts.bucket_of("Photos.LOCALHOST:9000"), Some("Photos"));
        assert_eq!(hosts.bucket_of("my.dotted.bucket.s3.example.org"), Some("my.dotted.bucket"));
        // Nested domains: the domain itself is path style, the longest match decides.
        let nested = VirtualHosts::new(["localhost", "s3.kiseki.localhost"]);
        assert_eq!(nested.bucket_of("s3.kiseki.localhost:9000"), None);
        assert_eq!(nested.bucket_of("photos.s3.kiseki.localhost:9000"), Some("photos"));
        assert_eq!(nested.bucket_of("photos.localhost:9000"), Some("photos"));
        assert_eq!(hosts.bucket_of("localhost:9000"), None);
        assert_eq!(hosts.bucket_of("localhost"), None);
        assert_eq!(hosts.bucket_of(".localhost"), None);
        assert_eq!(hosts.bucket_of("notlocalhost:9000"), None);
        assert_eq!(hosts.bucket_of("photos.elsewhere.org"), None);
        assert_eq!(hosts.bucket_of("127.0.0.1:9000"), None);
        assert_eq!(hosts.bucket_of("[::1]:9000"), None);
        assert_eq!(hosts.bucket_of("é.localhost"), Some("é"));
        assert_eq!(hosts.bucket_of("aélocalhost"), None);
        let parsed = hosts.parse_host_header("photos.localhost:9000").unwrap();
        assert_eq!(parsed.bucket(), Some("photos"));
        assert_eq!(hosts.parse_host_header("localhost:9000").unwrap().bucket(), None);
        assert_eq!(hosts.parse_host_header("node7.internal").unwrap().bucket(), None);
    }
}
