//! HTTPS retrieval of published lists: conditional GET, a per-source timeout, a body
//! size cap enforced while streaming, retries with exponential backoff and jitter (or
//! after the delay a 429 or 503 asks for with Retry-After, up to the refresh interval).
//! Failures that another attempt cannot cure (TLS verification, refused redirects,
//! 4xx other than 408 and 429, limits) are not retried.

use std::{
    error::Error as StdError,
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use reqwest::{
    StatusCode, Url,
    header::{self, HeaderMap},
};
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tracing::{Instrument, debug, info, info_span, warn};

mod settings;

pub(crate) use settings::MAX_RETRY_AFTER;
use settings::redacted;
#[cfg(test)]
pub(crate) use settings::{DEFAULT_RETRIES, DEFAULT_TIMEOUT};
pub use settings::{FetchSettings, Proxy};

/// The User-Agent of every request.
pub const USER_AGENT: &str = concat!(
    "allowlist/",
    env!("CARGO_PKG_VERSION"),
    " (+https://github.com/allowlist/allowlist)"
);

/// What a successful fetch returned.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchOutcome {
    /// The server answered 304 to a conditional request: the last document stands.
    NotModified,
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
        last_modified: Option<String>,
        /// The Content-Type header, to explain a document that does not parse.
        content_type: Option<String>,
        /// Where the document came from, when a redirect left the configured URL's
        /// origin (scheme, host, port).
        final_url: Option<Url>,
    },
}

/// Validators of the last document, sent as If-None-Match / If-Modified-Since.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditional {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Conditional {
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// A failed fetch: what was fetched, how many attempts were made, what went wrong.
#[derive(Debug, Error)]
pub struct FetchError {
    /// The URL (or file path).
    pub target: String,
    pub attempts: u32,
    pub kind: FetchErrorKind,
    /// Where the last attempt was redirected to, when it failed after a redirect
    /// (boxed: a Url is large).
    pub final_url: Option<Box<Url>>,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.target, self.kind)?;
        let mut notes = Vec::new();
        if let Some(url) = &self.final_url {
            notes.push(format!("redirected to {url}"));
        }
        if self.attempts > 1 {
            notes.push(format!("after {} attempts", self.attempts));
        }
        if !notes.is_empty() {
            write!(f, " ({})", notes.join(", "))?;
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum FetchErrorKind {
    #[error("plain http is refused: set insecure_http = true for this source to allow it")]
    InsecureScheme,
    #[error("cannot use ca_file {}: {detail}", path.display())]
    CaFile { path: PathBuf, detail: String },
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    #[error("HTTP {status}{}", reason(*status))]
    Status { status: u16 },
    /// A 429 or 503 whose Retry-After is beyond the refresh interval.
    #[error(
        "HTTP {status}{}: provider asked to retry after {}, longer than the agent waits ({}: the refresh interval, at most 5 min); next refresh will try again",
        reason(*status),
        humantime::format_duration(*after),
        humantime::format_duration(*limit)
    )]
    RetryAfter {
        status: u16,
        after: Duration,
        limit: Duration,
    },
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the response is larger than max_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("TLS error: {detail}{hint}", detail = .0, hint = tls_hint(.0))]
    Tls(String),
    /// A redirect that is refused (to plain http) or leads nowhere (a loop, too many).
    #[error("{0}")]
    Redirect(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A connection failure through a proxy (unreachable, or it refused the tunnel).
    #[error("cannot connect through the proxy {proxy}: {detail}")]
    Proxy { proxy: String, detail: String },
    #[error("{0}")]
    Transport(String),
    #[error("cannot read the file: {0}")]
    File(#[source] io::Error),
}

fn reason(status: u16) -> String {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default()
}

/// What to do about a TLS error, when rustls's words leave it open.
fn tls_hint(detail: &str) -> &'static str {
    if detail.contains("UnknownIssuer") {
        " (is the server's CA trusted? add it with ca_file)"
    } else {
        ""
    }
}

impl FetchErrorKind {
    /// Whether another attempt may succeed: timeouts, connection failures, 5xx, 408
    /// and 429. Not TLS failures, refused redirects, other 4xx, or limits.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchErrorKind::Status { status } => *status >= 500 || *status == 408 || *status == 429,
            FetchErrorKind::Timeout(_)
            | FetchErrorKind::Connect(_)
            | FetchErrorKind::Proxy { .. }
            | FetchErrorKind::Transport(_) => true,
            _ => false,
        }
    }
}

/// Retry pacing shared by all fetches.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Delay before the first retry; doubled for each further one, with jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Fetches documents. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Fetcher {
    options: Arc<FetchOptions>,
}

impl Fetcher {
    pub fn new(options: FetchOptions) -> Self {
        Fetcher {
            options: Arc::new(options),
        }
    }

    /// The delay before retry number `retry` (0-based): base·2^retry, capped, times a
    /// random factor in [0.5, 1).
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .options
            .backoff_base
            .saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.options.backoff_max);
        capped.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }

    /// Fetches `url`, retrying transient failures up to `settings.retries` times.
    pub async fn fetch(
        &self,
        url: &Url,
        settings: &FetchSettings,
        conditional: &Conditional,
    ) -> Result<FetchOutcome, FetchError> {
        let proxy = proxy_for(url, &settings.proxy);
        let span = info_span!(
            "fetch",
            %url,
            conditional = !conditional.is_empty(),
            proxy = proxy.as_deref().unwrap_or("none")
        );
        self.fetch_inner(url, settings, conditional, proxy.as_deref())
            .instrument(span)
            .await
    }

    async fn fetch_inner(
        &self,
        url: &Url,
        settings: &FetchSettings,
        conditional: &Conditional,
        proxy: Option<&str>,
    ) -> Result<FetchOutcome, FetchError> {
        let fail = |attempts, kind| FetchError {
            target: url.to_string(),
            attempts,
            kind,
            final_url: None,
        };
        match url.scheme() {
            "https" => {}
            "http" if settings.insecure_http => {}
            _ => return Err(fail(0, FetchErrorKind::InsecureScheme)),
        }
        let client = client(settings).map_err(|kind| fail(0, kind))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self
                .attempt(&client, url, settings, conditional, proxy)
                .await
            {
                Ok(outcome) => {
                    debug!(attempt, "fetched");
                    return Ok(outcome);
                }
                Err(failure) => failure,
            };
            let Failure {
                kind,
                retry_after,
                final_url,
            } = failure;
            let give_up = |kind| FetchError {
                final_url: final_url.clone(),
                ..fail(attempt, kind)
            };
            if let (FetchErrorKind::Status { status }, Some(after)) = (&kind, retry_after)
                && after > settings.retry_after_limit
            {
                return Err(give_up(FetchErrorKind::RetryAfter {
                    status: *status,
                    after,
                    limit: settings.retry_after_limit,
                }));
            }
            if !kind.is_retryable() || attempt > settings.retries {
                return Err(give_up(kind));
            }
            let delay = retry_after.unwrap_or_else(|| self.backoff(attempt - 1));
            warn!(
                attempt,
                error = %kind,
                retry_in = ?delay,
                retry_after = retry_after.is_some(),
                "fetch failed, retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &self,
        client: &reqwest::Client,
        url: &Url,
        settings: &FetchSettings,
        conditional: &Conditional,
        proxy: Option<&str>,
    ) -> Result<FetchOutcome, Failure> {
        let work = async {
            let mut request = client.get(url.clone()).timeout(settings.timeout);
            if let Some(etag) = &conditional.etag {
                request = request.header(header::IF_NONE_MATCH, etag);
            }
            if let Some(date) = &conditional.last_modified {
                request = request.header(header::IF_MODIFIED_SINCE, date);
            }
            let mut response = request.send().await.map_err(|e| Failure {
                // Where a connection or TLS failure after a redirect happened (a
                // refused redirect names its target itself).
                final_url: e
                    .url()
                    .filter(|u| *u != url && !e.is_redirect())
                    .map(|u| Box::new(u.clone())),
                ..classify(&e, settings.timeout, proxy).into()
            })?;
            let redirected = (response.url() != url).then(|| response.url().clone());
            let failed = |kind: FetchErrorKind| Failure {
                final_url: redirected.clone().map(Box::new),
                ..kind.into()
            };
            let final_url = redirected
                .as_ref()
                .filter(|u| u.origin() != url.origin())
                .cloned();
            if let Some(to) = &final_url {
                info!(final_url = %to, "the provider redirected to another origin");
            }
            let status = response.status();
            if status == StatusCode::NOT_MODIFIED && !conditional.is_empty() {
                return Ok(FetchOutcome::NotModified);
            }
            if !status.is_success() {
                let retry_after = match status {
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                        retry_after(response.headers(), SystemTime::now())
                    }
                    _ => None,
                };
                return Err(Failure {
                    retry_after,
                    ..failed(FetchErrorKind::Status {
                        status: status.as_u16(),
                    })
                });
            }
            let limit = settings.max_bytes;
            if response.content_length().is_some_and(|len| len > limit) {
                return Err(failed(FetchErrorKind::TooLarge { limit }));
            }
            let (etag, last_modified, content_type) = validators(response.headers());
            let bytes = read_body(&mut response, limit, |e| match e {
                Some(e) => failed(classify(&e, settings.timeout, proxy)),
                None => failed(FetchErrorKind::TooLarge { limit }),
            })
            .await?;
            Ok(FetchOutcome::Body {
                bytes,
                etag,
                last_modified,
                content_type,
                final_url,
            })
        };
        // reqwest's timeout covers the whole exchange too; this one is the backstop.
        tokio::time::timeout(settings.timeout, work)
            .await
            .unwrap_or_else(|_| Err(FetchErrorKind::Timeout(settings.timeout).into()))
    }
}

/// A response's body, refused (`failed(None)`) once it grows beyond `limit`;
/// `failed(Some(e))` when reading it fails.
async fn read_body(
    response: &mut reqwest::Response,
    limit: u64,
    failed: impl Fn(Option<reqwest::Error>) -> Failure,
) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(Some(e)))? {
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(failed(None));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// One failed attempt.
#[derive(Debug)]
struct Failure {
    kind: FetchErrorKind,
    /// The delay a 429 or 503 asked for.
    retry_after: Option<Duration>,
    /// Where the attempt was redirected to, if it was (boxed: a Url is large).
    final_url: Option<Box<Url>>,
}

impl From<FetchErrorKind> for Failure {
    fn from(kind: FetchErrorKind) -> Self {
        Failure {
            kind,
            retry_after: None,
            final_url: None,
        }
    }
}

/// The delay a Retry-After header asks for: delta-seconds or an HTTP-date (a date in
/// the past is no delay). None when absent or unreadable.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// ETag, Last-Modified and Content-Type.
fn validators(headers: &HeaderMap) -> (Option<String>, Option<String>, Option<String>) {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    (
        get(header::ETAG),
        get(header::LAST_MODIFIED),
        get(header::CONTENT_TYPE),
    )
}

/// Redirects followed in one attempt.
pub(crate) const MAX_REDIRECTS: usize = 5;

fn client(settings: &FetchSettings) -> Result<reqwest::Client, FetchErrorKind> {
    let insecure = settings.insecure_http;
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        let url = attempt.url();
        if attempt.previous().contains(url) {
            let error = format!("redirect loop: {url} was already visited");
            attempt.error(error)
        } else if attempt.previous().len() > MAX_REDIRECTS {
            let error =
                format!("too many redirects (more than {MAX_REDIRECTS}), the last to {url}");
            attempt.error(error)
        } else if url.scheme() != "https" && !insecure {
            let error = format!(
                "redirect to plain http refused ({url}): set insecure_http = true for this source to allow it"
            );
            attempt.error(error)
        } else {
            attempt.follow()
        }
    });
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .redirect(redirects);
    builder = match &settings.proxy {
        // reqwest reads HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY itself.
        Proxy::Environment => builder,
        Proxy::Direct => builder.no_proxy(),
        Proxy::Url(proxy) => {
            let proxy = reqwest::Proxy::all(proxy.clone()).map_err(|e| {
                FetchErrorKind::Client(format!("proxy {}: {}", redacted(proxy), error_chain(&e)))
            })?;
            builder.proxy(proxy)
        }
    };
    if let Some(path) = &settings.ca_file {
        let ca_error = |detail: String| FetchErrorKind::CaFile {
            path: path.clone(),
            detail,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(error_chain(&e)))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in the file".to_owned()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| FetchErrorKind::Client(error_chain(&e)))
}

/// The error and its causes, joined by ": ", without repeats.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Finds a rustls error anywhere in the chain (io::Error hides its inner error from
/// `source()`, so look through `get_ref` too).
fn tls_error(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref())
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls.to_string());
        }
        next = e.source();
    }
    None
}

/// The proxy the requests to `url` go through, for messages: the configured one (its
/// password masked), or the environment's as reqwest applies it (HTTPS_PROXY, ...,
/// minus NO_PROXY).
fn proxy_for(url: &Url, setting: &Proxy) -> Option<String> {
    match setting {
        Proxy::Direct => None,
        Proxy::Url(proxy) => Some(redacted(proxy)),
        Proxy::Environment => {
            let uri: hyper::Uri = url.as_str().parse().ok()?;
            let intercept =
                hyper_util::client::proxy::matcher::Matcher::from_system().intercept(&uri)?;
            Some(format!("{} (from the environment)", intercept.uri()))
        }
    }
}

fn classify(err: &reqwest::Error, timeout: Duration, proxy: Option<&str>) -> FetchErrorKind {
    if err.is_timeout() {
        return FetchErrorKind::Timeout(timeout);
    }
    if let Some(tls) = tls_error(err) {
        return FetchErrorKind::Tls(tls);
    }
    if err.is_redirect() {
        // The policy's own words, without reqwest's "error following redirect for url".
        let detail = err.source().map_or_else(|| error_chain(err), error_chain);
        return FetchErrorKind::Redirect(detail);
    }
    let chain = error_chain(err);
    // hyper-util's connector may hide the rustls error behind its own types: fall
    // back to rustls's wording.
    const TLS_WORDS: &[&str] = &[
        "invalid peer certificate",
        "peer is incompatible",
        "peer misbehaved",
        "received fatal alert",
        "HandshakeFailure",
    ];
    if let Some(word) = TLS_WORDS.iter().find(|w| chain.contains(*w)) {
        let detail = chain.find(word).map_or(chain.as_str(), |at| &chain[at..]);
        return FetchErrorKind::Tls(detail.to_owned());
    }
    if err.is_connect() {
        match proxy {
            Some(proxy) => FetchErrorKind::Proxy {
                proxy: proxy.to_owned(),
                detail: chain,
            },
            None => FetchErrorKind::Connect(chain),
        }
    } else {
        FetchErrorKind::Transport(chain)
    }
}

/// Reads a local list, refusing files larger than `max_bytes`.
pub(crate) async fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
    let fail = |kind| FetchError {
        target: path.display().to_string(),
        attempts: 1,
        kind,
        final_url: None,
    };
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| fail(FetchErrorKind::File(e)))?;
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| fail(FetchErrorKind::File(e)))?;
    if bytes.len() as u64 > max_bytes {
        return Err(fail(FetchErrorKind::TooLarge { limit: max_bytes }));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let f = Fetcher::new(FetchOptions {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
        });
        for _ in 0..50 {
            let d0 = f.backoff(0);
            assert!(
                d0 >= Duration::from_millis(50) && d0 < Duration::from_millis(100),
                "{d0:?}"
            );
            let d1 = f.backoff(1);
            assert!(
                d1 >= Duration::from_millis(100) && d1 < Duration::from_millis(200),
                "{d1:?}"
            );
            let d9 = f.backoff(40);
            assert!(
                d9 >= Duration::from_millis(175) && d9 < Duration::from_millis(350),
                "{d9:?}"
            );
        }
    }

    #[test]
    fn retryable_errors() {
        for status in [500, 502, 503, 408, 429] {
            assert!(FetchErrorKind::Status { status }.is_retryable(), "{status}");
        }
        for status in [400, 401, 403, 404, 410] {
            assert!(
                !FetchErrorKind::Status { status }.is_retryable(),
                "{status}"
            );
        }
        assert!(FetchErrorKind::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(!FetchErrorKind::TooLarge { limit: 1 }.is_retryable());
        assert!(!FetchErrorKind::Tls("UnknownIssuer".into()).is_retryable());
        assert!(!FetchErrorKind::Redirect("redirect loop".into()).is_retryable());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 01 Nov 2026 09:00:00 GMT").unwrap();
        let read = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::RETRY_AFTER, value.parse().unwrap());
            retry_after(&headers, now)
        };
        assert_eq!(read("120"), Some(Duration::from_secs(120)));
        assert_eq!(read(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            read("Sun, 01 Nov 2026 09:01:30 GMT"),
            Some(Duration::from_secs(90))
        );
        // The obsolete formats RFC 9110 still requires recipients to accept.
        assert_eq!(
            read("Sunday, 01-Nov-26 10:00:00 GMT"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            read("Sun Nov  1 09:00:10 2026"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(read("Sun, 01 Nov 2026 08:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(read("-5"), None);
        assert_eq!(read("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn a_long_retry_after_says_what_happens_next() {
        let kind = FetchErrorKind::RetryAfter {
            status: 429,
            after: Duration::from_secs(7200),
            limit: Duration::from_secs(3600),
        };
        assert_eq!(
            kind.to_string(),
            "HTTP 429 Too Many Requests: provider asked to retry after 2h, longer than the agent waits (1h: the refresh interval, at most 5 min); next refresh will try again"
        );
        assert!(!kind.is_retryable());
    }

    #[test]
    fn user_agent_names_the_version() {
        assert!(USER_AGENT.starts_with("allowlist/0."));
        assert!(USER_AGENT.ends_with("(+https://github.com/allowlist/allowlist)"));
    }

    #[tokio::test]
    async fn plain_http_is_refused_without_opt_in() {
        let url = Url::parse("http://127.0.0.1:9/ips.json").unwrap();
        let err = Fetcher::default()
            .fetch(&url, &FetchSettings::default(), &Conditional::default())
            .await
            .unwrap_err();
        assert!(matches!(err.kind, FetchErrorKind::InsecureScheme));
        assert!(err.to_string().contains("insecure_http"), "{err}");
    }

    #[tokio::test]
    async fn files_are_capped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ips.txt");
        std::fs::write(&path, b"192.0.2.1\n").unwrap();
        assert_eq!(read_file(&path, 10).await.unwrap(), b"192.0.2.1\n");
        let err = read_file(&path, 9).await.unwrap_err();
        assert!(matches!(err.kind, FetchErrorKind::TooLarge { limit: 9 }));
        let err = read_file(&tmp.path().join("missing"), 9).await.unwrap_err();
        assert!(err.to_string().contains("cannot read the file"), "{err}");
    }
}
