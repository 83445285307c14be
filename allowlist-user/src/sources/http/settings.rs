//! How a url source is fetched: limits, retries, the extra CA and the proxy, as the
//! configuration resolved them.

use std::{fmt, path::PathBuf, time::Duration};

use reqwest::Url;
use serde::Serialize;

pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
pub(crate) const DEFAULT_RETRIES: u32 = 3;

/// The longest Retry-After honoured whatever the refresh interval: a source with no
/// saved list is fetched before the filter attaches, and a start must not wait on a
/// provider for long (systemd's TimeoutStartSec is 10 min).
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How a URL source is fetched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FetchSettings {
    pub timeout: Duration,
    pub max_bytes: u64,
    pub insecure_http: bool,
    /// An extra trusted CA (PEM), on top of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Attempts after the first one.
    pub retries: u32,
    /// The longest Retry-After (of a 429 or 503) waited for before another attempt:
    /// the refresh interval, at most [`MAX_RETRY_AFTER`]. A longer one ends this
    /// refresh's attempts.
    pub retry_after_limit: Duration,
    /// The source's `proxy`, else the top-level one, else the environment's.
    pub proxy: Proxy,
}

/// Which proxy the requests of a url source go through.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Proxy {
    /// The environment's: `HTTPS_PROXY`, `HTTP_PROXY` (for `insecure_http` sources),
    /// `ALL_PROXY`, with the exceptions of `NO_PROXY` (curl's rules, as reqwest reads
    /// them). Direct when none is set.
    #[default]
    Environment,
    /// Direct connections, whatever the environment says (`proxy = "none"`).
    Direct,
    /// This proxy for every request (`CONNECT` for https); `NO_PROXY` does not apply.
    Url(Url),
}

impl Proxy {
    /// Reads a `proxy` value: `"none"`, or an http:// or https:// URL.
    pub fn parse(value: &str) -> Result<Proxy, String> {
        const HOW: &str = "use \"http://host:port\" (or \"none\" for direct connections)";
        if value == "none" {
            return Ok(Proxy::Direct);
        }
        let url = Url::parse(value)
            .map_err(|err| format!("{value:?} is not a proxy URL ({err}): {HOW}"))?;
        let shown = redacted(&url);
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(format!(
                    "{shown:?}: unsupported proxy scheme {other:?}, only http:// and https:// proxies are supported: {HOW}"
                ));
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{shown:?}: the proxy URL has no host: {HOW}"));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{shown:?}: a proxy URL has no path, query or fragment: {HOW}"
            ));
        }
        Ok(Proxy::Url(url))
    }
}

impl fmt::Display for Proxy {
    /// `environment`, `none`, or the URL with its password masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proxy::Environment => f.write_str("environment"),
            Proxy::Direct => f.write_str("none"),
            Proxy::Url(url) => f.write_str(&redacted(url)),
        }
    }
}

impl Serialize for Proxy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A URL with its password, if any, replaced by `***`.
pub(crate) fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            timeout: DEFAULT_TIMEOUT,
            max_bytes: DEFAULT_MAX_BYTES,
            insecure_http: false,
            ca_file: None,
            retries: DEFAULT_RETRIES,
            retry_after_limit: MAX_RETRY_AFTER,
            proxy: Proxy::Environment,
        }
    }
}
