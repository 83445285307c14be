//! The configuration file: parsed into raw serde structs, then validated into a
//! [`Config`] that can't be wrong. Every error names the file, the line and column,
//! the field, and what is wrong with it.

use std::{
    fmt,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use toml::{Spanned, Value};

use crate::{
    prefixes::{self, Trust},
    presets::{self, PresetSource},
    source::{
        Format,
        json::{Filter, Selector},
    },
};

pub const DEFAULT_PATH: &str = "/etc/allowlist/allowlist.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/allowlist";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/allowlist";
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_RETRIES: u32 = 3;

/// A configuration error, located in the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", Located(.path, *.line, *.column, .field, .message))]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// The field, as a dotted path (`provider.partner.source[0].url`); empty for
        /// TOML syntax errors.
        field: String,
        message: String,
    },
}

struct Located<'a>(&'a PathBuf, usize, usize, &'a String, &'a String);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Located(path, line, column, field, message) = self;
        write!(f, "{}:{line}:{column}: ", path.display())?;
        if !field.is_empty() {
            write!(f, "{field}: ")?;
        }
        write!(f, "{message}")
    }
}

/// Where XDP attaches, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub mode: AttachMode,
}

/// How XDP attaches to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) XDP where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native XDP only: fail if the driver lacks it.
    Native,
    /// Generic (skb) XDP: works on every interface, slower.
    Skb,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Auto => "auto",
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        })
    }
}

/// Whether disallowed packets are dropped or only counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

/// The guard rails applied to every update of a fetched list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guards {
    /// The largest fraction of a source's addresses (per address family) that one
    /// update may remove.
    pub max_shrink: f64,
    /// Broader IPv4 prefixes are refused.
    pub min_prefix_v4: u8,
    /// Broader IPv6 prefixes are refused.
    pub min_prefix_v6: u8,
    /// Accept an update that leaves a source empty.
    pub allow_empty: bool,
}

impl From<&Guards> for prefixes::Floors {
    fn from(guards: &Guards) -> Self {
        prefixes::Floors {
            v4: guards.min_prefix_v4,
            v6: guards.min_prefix_v6,
        }
    }
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            max_shrink: 0.5,
            min_prefix_v4: 8,
            min_prefix_v6: 19,
            allow_empty: false,
        }
    }
}

/// How a URL source is fetched.
/// The longest Retry-After honoured whatever the refresh interval: a source with no
/// saved list is fetched before the filter attaches, and a start must not wait on a
/// provider for long (systemd's TimeoutStartSec is 10 min).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

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
pub fn redacted(url: &Url) -> String {
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
            retry_after_limit: DEFAULT_REFRESH,
            proxy: Proxy::Environment,
        }
    }
}

/// A validated, aggregated inline list with its provenance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StaticList {
    pub prefixes: Vec<IpNet>,
    pub as_of: Option<String>,
    pub reference: Option<String>,
}

/// Where a source's list comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    Url {
        #[serde(serialize_with = "url_string")]
        url: Url,
        format: Format,
    },
    File {
        path: PathBuf,
        format: Format,
    },
    Static(StaticList),
}

fn url_string<S: serde::Serializer>(url: &Url, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(url.as_str())
}

/// One list of a provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Source {
    /// Stable: `{provider}/{preset}` for a preset's source, `{provider}/{index}` for
    /// the provider's own `[[provider.source]]` entries (0-based). Used for state file
    /// names and metric labels.
    pub id: String,
    pub provider: String,
    pub rule_id: u32,
    pub location: Location,
    pub fetch: FetchSettings,
    /// Bypass the empty and shrink guards for this source.
    pub force: bool,
    /// A dated list in force until the first successful fetch (presets).
    pub snapshot: Option<StaticList>,
}

impl Source {
    /// `url`, `file` or `static`.
    pub fn kind(&self) -> &'static str {
        match self.location {
            Location::Url { .. } => "url",
            Location::File { .. } => "file",
            Location::Static(_) => "static",
        }
    }

    /// Whether refreshes fetch this source (url and file sources).
    pub fn is_fetched(&self) -> bool {
        !matches!(self.location, Location::Static(_))
    }

    /// Whether the bogon filter applies (lists fetched from a provider).
    pub fn trust(&self) -> Trust {
        match self.location {
            Location::Url { .. } => Trust::Remote,
            _ => Trust::Operator,
        }
    }

    /// The URL or path, for messages (`static` for inline lists).
    pub fn origin(&self) -> String {
        match &self.location {
            Location::Url { url, .. } => url.to_string(),
            Location::File { path, .. } => path.display().to_string(),
            Location::Static(_) => "static".to_owned(),
        }
    }
}

/// A webhook sender: one rule id, one or more sources.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Provider {
    pub name: String,
    /// The provider's index in the file; stored in the map with each prefix.
    pub rule_id: u32,
    pub preset: Option<String>,
    pub sources: Vec<Source>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub interfaces: Vec<Interface>,
    /// Sorted, deduplicated, non-empty.
    pub ports: Vec<u16>,
    pub mode: Mode,
    pub refresh: Duration,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub guards: Guards,
    pub providers: Vec<Provider>,
}

impl Config {
    /// Every source, providers in order.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.providers.iter().flat_map(|p| p.sources.iter())
    }

    /// Every source id, providers in order.
    pub fn source_ids(&self) -> Vec<&str> {
        self.sources().map(|s| s.id.as_str()).collect()
    }

    pub fn source(&self, id: &str) -> Option<&Source> {
        self.sources().find(|s| s.id == id)
    }

    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name == name)
    }
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Validates a configuration read from `origin`.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let cx = Cx { text, origin };
    let raw: RawConfig = toml::from_str(text).map_err(|err| {
        let span = err.span().unwrap_or(0..0);
        let field = key_at(text, span.start);
        cx.error(span, field, err.message().trim_end())
    })?;
    cx.resolve(raw)
}

/// The dotted key written on the line holding `offset` (`guards.max_shrink`,
/// `provider.source.url`), for errors that serde reports with a position only.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let Some((key, _)) = line.split_once('=') else {
        return String::new();
    };
    let key = key.trim();
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|header| header.trim_matches(|c| c == '[' || c == ']').trim());
    match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    }
}

// ---------------------------------------------------------------------------------
// The raw form, as serde reads it.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Option<Spanned<Vec<Spanned<Value>>>>,
    ports: Option<Spanned<Vec<Spanned<i64>>>>,
    mode: Option<Spanned<String>>,
    refresh: Option<Spanned<String>>,
    state_dir: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    metrics: Option<Spanned<String>>,
    proxy: Option<Spanned<String>>,
    guards: Option<RawGuards>,
    #[serde(default)]
    provider: Vec<Spanned<RawProvider>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuards {
    max_shrink: Option<Spanned<f64>>,
    min_prefix_v4: Option<Spanned<i64>>,
    min_prefix_v6: Option<Spanned<i64>>,
    allow_empty: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: Spanned<String>,
    preset: Option<Spanned<String>>,
    #[serde(default)]
    source: Vec<Spanned<RawSource>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: Option<Spanned<String>>,
    file: Option<Spanned<PathBuf>>,
    #[serde(rename = "static")]
    inline: Option<Spanned<Vec<Spanned<String>>>>,
    format: Option<Spanned<String>>,
    items: Option<Spanned<Value>>,
    cidr: Option<Spanned<Value>>,
    #[serde(rename = "where")]
    filter: Option<Spanned<toml::Table>>,
    serial: Option<Spanned<String>>,
    as_of: Option<Spanned<String>>,
    reference: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    max_bytes: Option<Spanned<i64>>,
    insecure_http: Option<Spanned<bool>>,
    ca_file: Option<Spanned<PathBuf>>,
    retries: Option<Spanned<i64>>,
    proxy: Option<Spanned<String>>,
    force: Option<bool>,
}

// ---------------------------------------------------------------------------------
// Validation.

struct Cx<'a> {
    text: &'a str,
    origin: &'a Path,
}

/// What the top-level keys give every source.
struct Defaults<'a> {
    guards: &'a Guards,
    /// What every url source starts from; its own keys override.
    fetch: FetchSettings,
}

impl Cx<'_> {
    fn error(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let offset = span.start.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    fn resolve(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let whole = 0..0;
        let interfaces =
            match raw.interfaces {
                Some(list) => self.interfaces(list)?,
                None => return Err(self.error(
                    whole,
                    "interfaces",
                    "missing: list the interfaces XDP attaches to, e.g. interfaces = [\"eth0\"]",
                )),
            };
        let ports = self.ports(raw.ports)?;
        let mode = match raw.mode {
            None => Mode::Enforce,
            Some(m) => match m.get_ref().as_str() {
                "enforce" => Mode::Enforce,
                "monitor" => Mode::Monitor,
                other => {
                    return Err(self.error(
                        m.span(),
                        "mode",
                        format!("unknown mode {other:?}: expected \"enforce\" or \"monitor\""),
                    ));
                }
            },
        };
        let refresh = match raw.refresh {
            None => DEFAULT_REFRESH,
            Some(r) => {
                let d = self.duration(&r, "refresh")?;
                if d < MIN_REFRESH {
                    return Err(self.error(
                        r.span(),
                        "refresh",
                        format!("{:?} is shorter than the minimum of 1s", r.get_ref()),
                    ));
                }
                d
            }
        };
        let metrics = match raw.metrics {
            None => None,
            Some(m) => Some(m.get_ref().parse::<SocketAddr>().map_err(|_| {
                self.error(
                    m.span(),
                    "metrics",
                    format!(
                        "{:?} is not an address and port such as \"127.0.0.1:9975\"",
                        m.get_ref()
                    ),
                )
            })?),
        };
        let guards = self.guards(raw.guards)?;
        let proxy = match &raw.proxy {
            None => Proxy::Environment,
            Some(p) => self.proxy(p, "proxy")?,
        };
        let defaults = Defaults {
            guards: &guards,
            fetch: FetchSettings {
                retry_after_limit: refresh.min(MAX_RETRY_AFTER),
                proxy,
                ..FetchSettings::default()
            },
        };
        if raw.provider.is_empty() {
            return Err(self.error(
                whole,
                "provider",
                "no [[provider]] is configured: nothing would be allowed",
            ));
        }
        let mut providers: Vec<Provider> = Vec::new();
        for (index, provider) in raw.provider.into_iter().enumerate() {
            let name = &provider.get_ref().name;
            if let Some(first) = providers.iter().find(|p| &p.name == name.get_ref()) {
                return Err(self.error(
                    name.span(),
                    format!("provider[{index}].name"),
                    format!(
                        "duplicate provider name {:?} (also provider[{}]): names must be unique",
                        name.get_ref(),
                        first.rule_id
                    ),
                ));
            }
            providers.push(self.provider(index, provider, &defaults)?);
        }
        Ok(Config {
            path: self.origin.to_owned(),
            interfaces,
            ports,
            mode,
            refresh,
            state_dir: raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            pin_dir: raw.pin_dir.unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
            metrics,
            guards,
            providers,
        })
    }

    fn interfaces(
        &self,
        list: Spanned<Vec<Spanned<Value>>>,
    ) -> Result<Vec<Interface>, ConfigError> {
        let span = list.span();
        let list = list.into_inner();
        if list.is_empty() {
            return Err(self.error(
                span,
                "interfaces",
                "the list is empty: name at least one interface",
            ));
        }
        let mut out: Vec<Interface> = Vec::new();
        for (i, item) in list.into_iter().enumerate() {
            let field = format!("interfaces[{i}]");
            let span = item.span();
            let bad = |what: &str| self.error(span.clone(), &field, what);
            let iface = match item.into_inner() {
                Value::String(name) => Interface {
                    name,
                    mode: AttachMode::Auto,
                },
                Value::Table(mut table) => {
                    let name = match table.remove("name") {
                        Some(Value::String(name)) => name,
                        Some(_) => return Err(bad("`name` must be a string")),
                        None => {
                            return Err(bad(
                                "missing `name`: use { name = \"eth0\", mode = \"native\" }",
                            ));
                        }
                    };
                    let mode = match table.remove("mode") {
                        None => AttachMode::Auto,
                        Some(Value::String(m)) => match m.as_str() {
                            "auto" => AttachMode::Auto,
                            "native" => AttachMode::Native,
                            "skb" => AttachMode::Skb,
                            other => {
                                return Err(bad(&format!(
                                    "unknown mode {other:?}: expected \"auto\", \"native\" or \"skb\""
                                )));
                            }
                        },
                        Some(_) => {
                            return Err(bad(
                                "`mode` must be a string: \"auto\", \"native\" or \"skb\"",
                            ));
                        }
                    };
                    if let Some(key) = table.keys().next() {
                        return Err(bad(&format!(
                            "unknown key `{key}`: expected `name` and `mode`"
                        )));
                    }
                    Interface { name, mode }
                }
                _ => {
                    return Err(bad(
                        "expected an interface name or a table { name = \"eth0\", mode = \"auto\" }",
                    ));
                }
            };
            if iface.name.is_empty()
                || iface.name.len() > 15
                || iface.name.contains(['/', ' ', '\0'])
            {
                return Err(bad(&format!(
                    "{:?} is not a valid interface name",
                    iface.name
                )));
            }
            if out.iter().any(|o| o.name == iface.name) {
                return Err(bad(&format!("interface {:?} is listed twice", iface.name)));
            }
            out.push(iface);
        }
        Ok(out)
    }

    fn ports(&self, ports: Option<Spanned<Vec<Spanned<i64>>>>) -> Result<Vec<u16>, ConfigError> {
        let Some(ports) = ports else {
            return Ok(vec![443]);
        };
        if ports.get_ref().is_empty() {
            return Err(self.error(
                ports.span(),
                "ports",
                "the list is empty: name at least one TCP port",
            ));
        }
        let mut out = Vec::new();
        for (i, port) in ports.into_inner().into_iter().enumerate() {
            match u16::try_from(*port.get_ref()) {
                Ok(p) if p != 0 => out.push(p),
                _ => {
                    return Err(self.error(
                        port.span(),
                        format!("ports[{i}]"),
                        format!("{} is not a TCP port (1..=65535)", port.get_ref()),
                    ));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn proxy(&self, value: &Spanned<String>, field: &str) -> Result<Proxy, ConfigError> {
        Proxy::parse(value.get_ref()).map_err(|message| self.error(value.span(), field, message))
    }

    fn duration(&self, value: &Spanned<String>, field: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(value.get_ref()).map_err(|err| {
            self.error(
                value.span(),
                field,
                format!(
                    "{:?} is not a duration such as \"30s\" or \"1h\" ({err})",
                    value.get_ref()
                ),
            )
        })
    }

    fn guards(&self, raw: Option<RawGuards>) -> Result<Guards, ConfigError> {
        let mut guards = Guards::default();
        let Some(raw) = raw else { return Ok(guards) };
        if let Some(s) = raw.max_shrink {
            let v = *s.get_ref();
            if !(0.0..=1.0).contains(&v) {
                return Err(self.error(
                    s.span(),
                    "guards.max_shrink",
                    format!("{v} is not a fraction between 0 and 1"),
                ));
            }
            guards.max_shrink = v;
        }
        for (value, slot, max, field) in [
            (
                raw.min_prefix_v4,
                &mut guards.min_prefix_v4,
                32,
                "guards.min_prefix_v4",
            ),
            (
                raw.min_prefix_v6,
                &mut guards.min_prefix_v6,
                128,
                "guards.min_prefix_v6",
            ),
        ] {
            if let Some(v) = value {
                match u8::try_from(*v.get_ref()) {
                    Ok(len) if len <= max => *slot = len,
                    _ => {
                        return Err(self.error(
                            v.span(),
                            field,
                            format!("{} is not a prefix length (0..={max})", v.get_ref()),
                        ));
                    }
                }
            }
        }
        if let Some(allow) = raw.allow_empty {
            guards.allow_empty = allow;
        }
        Ok(guards)
    }

    fn provider(
        &self,
        index: usize,
        raw: Spanned<RawProvider>,
        defaults: &Defaults<'_>,
    ) -> Result<Provider, ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let name = raw.name.get_ref().clone();
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid {
            return Err(self.error(
                raw.name.span(),
                format!("provider[{index}].name"),
                format!("{name:?} is not a valid provider name: use lowercase letters, digits, '_' and '-'"),
            ));
        }
        let rule_id = u32::try_from(index).expect("fewer than 2^32 providers");
        let field = format!("provider.{name}");
        let mut sources = Vec::new();
        if let Some(preset_name) = &raw.preset {
            let Some(preset) = presets::find(preset_name.get_ref()) else {
                return Err(self.error(
                    preset_name.span(),
                    format!("{field}.preset"),
                    format!(
                        "unknown preset {:?}; known presets: {}",
                        preset_name.get_ref(),
                        presets::names().join(", ")
                    ),
                ));
            };
            sources.push(self.preset_source(
                &name,
                rule_id,
                preset,
                defaults,
                preset_name.span(),
                &field,
            )?);
        }
        if raw.source.is_empty() && raw.preset.is_none() {
            return Err(self.error(
                span,
                field,
                "has neither a `preset` nor any [[provider.source]]",
            ));
        }
        for (i, source) in raw.source.into_iter().enumerate() {
            let field = format!("{field}.source[{i}]");
            sources.push(self.source(
                &name,
                rule_id,
                format!("{name}/{i}"),
                source,
                defaults,
                &field,
            )?);
        }
        Ok(Provider {
            name,
            rule_id,
            preset: raw.preset.map(|p| p.into_inner()),
            sources,
        })
    }

    fn preset_source(
        &self,
        provider: &str,
        rule_id: u32,
        preset: &presets::Preset,
        defaults: &Defaults<'_>,
        span: Range<usize>,
        field: &str,
    ) -> Result<Source, ConfigError> {
        let snapshot = match &preset.snapshot {
            None => None,
            Some(snap) => {
                let entries: Vec<String> = snap.entries.iter().map(|e| e.to_string()).collect();
                let validated =
                    prefixes::validate(&entries, preset.name, Trust::Operator, defaults.guards)
                        .map_err(|err| {
                            self.error(
                                span.clone(),
                                format!("{field}.preset"),
                                format!(
                                    "the built-in list of {} is refused by [guards]: {err}",
                                    preset.name
                                ),
                            )
                        })?;
                Some(StaticList {
                    prefixes: validated.prefixes,
                    as_of: Some(snap.as_of.to_owned()),
                    reference: Some(snap.reference.to_owned()),
                })
            }
        };
        let location = match preset.source {
            PresetSource::Json {
                url,
                items,
                cidr,
                filter,
                serial,
            } => Location::Url {
                url: Url::parse(url).expect("preset URLs are valid"),
                format: Format::Json(Selector {
                    items: items.iter().map(|s| s.to_string()).collect(),
                    cidr: cidr.iter().map(|s| s.to_string()).collect(),
                    filters: filter
                        .map(|(field, value)| Filter {
                            field: field.to_owned(),
                            any_of: vec![serde_json::Value::String(value.to_owned())],
                        })
                        .into_iter()
                        .collect(),
                    serial: serial.map(str::to_owned),
                }),
            },
            PresetSource::Static => {
                Location::Static(snapshot.clone().expect("static presets have a list"))
            }
        };
        let snapshot = if matches!(location, Location::Static(_)) {
            None
        } else {
            snapshot
        };
        Ok(Source {
            id: format!("{provider}/{}", preset.name),
            provider: provider.to_owned(),
            rule_id,
            location,
            fetch: defaults.fetch.clone(),
            force: false,
            snapshot,
        })
    }

    fn source(
        &self,
        provider: &str,
        rule_id: u32,
        id: String,
        raw: Spanned<RawSource>,
        defaults: &Defaults<'_>,
        field: &str,
    ) -> Result<Source, ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let f = |key: &str| format!("{field}.{key}");
        let kinds = usize::from(raw.url.is_some())
            + usize::from(raw.file.is_some())
            + usize::from(raw.inline.is_some());
        if kinds != 1 {
            return Err(self.error(
                span,
                field,
                "a source needs exactly one of `url`, `file` or `static`",
            ));
        }
        // Keys that only make sense for some kinds.
        let url_only: [(&str, Option<Range<usize>>); 6] = [
            ("timeout", raw.timeout.as_ref().map(|s| s.span())),
            ("max_bytes", raw.max_bytes.as_ref().map(|s| s.span())),
            (
                "insecure_http",
                raw.insecure_http.as_ref().map(|s| s.span()),
            ),
            ("ca_file", raw.ca_file.as_ref().map(|s| s.span())),
            ("retries", raw.retries.as_ref().map(|s| s.span())),
            ("proxy", raw.proxy.as_ref().map(|s| s.span())),
        ];
        if raw.url.is_none() {
            for (key, span) in &url_only {
                if let Some(span) = span {
                    if *key == "max_bytes" && raw.file.is_some() {
                        continue;
                    }
                    return Err(self.error(span.clone(), f(key), "only applies to `url` sources"));
                }
            }
        }
        let fetched_only: [(&str, Option<Range<usize>>); 5] = [
            ("format", raw.format.as_ref().map(|s| s.span())),
            ("items", raw.items.as_ref().map(|s| s.span())),
            ("cidr", raw.cidr.as_ref().map(|s| s.span())),
            ("where", raw.filter.as_ref().map(|s| s.span())),
            ("serial", raw.serial.as_ref().map(|s| s.span())),
        ];
        if raw.inline.is_some() {
            for (key, span) in &fetched_only {
                if let Some(span) = span {
                    return Err(self.error(
                        span.clone(),
                        f(key),
                        "does not apply to a `static` list",
                    ));
                }
            }
        } else {
            for (key, span) in [
                ("as_of", raw.as_of.as_ref()),
                ("reference", raw.reference.as_ref()),
            ] {
                if let Some(value) = span {
                    return Err(self.error(value.span(), f(key), "only applies to `static` lists"));
                }
            }
        }

        let mut fetch = defaults.fetch.clone();
        if let Some(t) = &raw.timeout {
            fetch.timeout = self.duration(t, &f("timeout"))?;
            if fetch.timeout.is_zero() {
                return Err(self.error(t.span(), f("timeout"), "must be longer than 0s"));
            }
        }
        if let Some(m) = &raw.max_bytes {
            fetch.max_bytes = u64::try_from(*m.get_ref())
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    self.error(
                        m.span(),
                        f("max_bytes"),
                        format!("{} is not a positive byte count", m.get_ref()),
                    )
                })?;
        }
        if let Some(r) = &raw.retries {
            fetch.retries = u32::try_from(*r.get_ref())
                .ok()
                .filter(|&n| n <= 20)
                .ok_or_else(|| {
                    self.error(
                        r.span(),
                        f("retries"),
                        format!("{} is not a retry count (0..=20)", r.get_ref()),
                    )
                })?;
        }
        if let Some(p) = &raw.proxy {
            fetch.proxy = self.proxy(p, &f("proxy"))?;
        }
        fetch.insecure_http = raw.insecure_http.as_ref().is_some_and(|b| *b.get_ref());
        fetch.ca_file = raw.ca_file.map(|p| p.into_inner());

        let location = if let Some(list) = raw.inline {
            let entries: Vec<String> = list.get_ref().iter().map(|e| e.get_ref().clone()).collect();
            let validated = prefixes::validate(&entries, &id, Trust::Operator, defaults.guards)
                .map_err(|err| {
                    let bad = match &err {
                        prefixes::PrefixError::Unparseable { entry, .. }
                        | prefixes::PrefixError::TooBroad { entry, .. } => entry,
                    };
                    let at = list
                        .get_ref()
                        .iter()
                        .find(|e| e.get_ref().trim() == bad.trim())
                        .map_or(list.span(), |e| e.span());
                    self.error(at, f("static"), err.to_string())
                })?;
            Location::Static(StaticList {
                prefixes: validated.prefixes,
                as_of: raw.as_of.map(|s| s.into_inner()),
                reference: raw.reference.map(|s| s.into_inner()),
            })
        } else if let Some(url_text) = raw.url {
            let url = Url::parse(url_text.get_ref()).map_err(|err| {
                self.error(
                    url_text.span(),
                    f("url"),
                    format!("{:?} is not a URL: {err}", url_text.get_ref()),
                )
            })?;
            match url.scheme() {
                "https" => {}
                "http" if fetch.insecure_http => {}
                "http" => {
                    return Err(self.error(
                        url_text.span(),
                        f("url"),
                        "plain http is refused: no list is signed, so integrity rests on TLS; use https, or set insecure_http = true to accept the risk",
                    ));
                }
                other => {
                    return Err(self.error(
                        url_text.span(),
                        f("url"),
                        format!("unsupported scheme {other:?}: use https"),
                    ));
                }
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(self.error(url_text.span(), f("url"), "the URL has no host"));
            }
            let format = self.format(
                &raw.format,
                raw.items,
                raw.cidr,
                raw.filter,
                raw.serial,
                url.path(),
                span.clone(),
                field,
            )?;
            Location::Url { url, format }
        } else {
            let path = raw.file.expect("one kind is set");
            let format = self.format(
                &raw.format,
                raw.items,
                raw.cidr,
                raw.filter,
                raw.serial,
                &path.get_ref().to_string_lossy(),
                span.clone(),
                field,
            )?;
            Location::File {
                path: path.into_inner(),
                format,
            }
        };
        Ok(Source {
            id,
            provider: provider.to_owned(),
            rule_id,
            location,
            fetch,
            force: raw.force.unwrap_or(false),
            snapshot: None,
        })
    }

    #[expect(clippy::too_many_arguments, reason = "the raw keys of one source")]
    fn format(
        &self,
        format: &Option<Spanned<String>>,
        items: Option<Spanned<Value>>,
        cidr: Option<Spanned<Value>>,
        filter: Option<Spanned<toml::Table>>,
        serial: Option<Spanned<String>>,
        location: &str,
        span: Range<usize>,
        field: &str,
    ) -> Result<Format, ConfigError> {
        let f = |key: &str| format!("{field}.{key}");
        let name = match format {
            Some(fmt) => match fmt.get_ref().as_str() {
                "json" | "text" => fmt.get_ref().clone(),
                other => {
                    return Err(self.error(
                        fmt.span(),
                        f("format"),
                        format!("unknown format {other:?}: expected \"json\" or \"text\""),
                    ));
                }
            },
            None => {
                let lower = location.to_ascii_lowercase();
                if lower.ends_with(".json") {
                    "json".to_owned()
                } else if lower.ends_with(".txt") {
                    "text".to_owned()
                } else {
                    return Err(self.error(span, f("format"), format!("cannot infer the format of {location:?}: set format = \"json\" or \"text\"")));
                }
            }
        };
        if name == "text" {
            for (key, value) in [
                ("items", items.map(|v| v.span())),
                ("cidr", cidr.map(|v| v.span())),
                ("where", filter.map(|v| v.span())),
                ("serial", serial.map(|v| v.span())),
            ] {
                if let Some(span) = value {
                    return Err(self.error(span, f(key), "only applies to JSON sources"));
                }
            }
            return Ok(Format::Text);
        }
        let items = match items {
            None => vec![String::new()],
            Some(v) => self.strings(v, &f("items"), true)?,
        };
        let items = items
            .into_iter()
            .map(|p| if p == "." { String::new() } else { p })
            .collect();
        let cidr = match cidr {
            None => Vec::new(),
            Some(v) => self.strings(v, &f("cidr"), false)?,
        };
        let mut filters = Vec::new();
        if let Some(table) = filter {
            let span = table.span();
            for (key, value) in table.into_inner() {
                let scalar = |v: Value| -> Result<serde_json::Value, ConfigError> {
                    match v {
                        Value::String(s) => Ok(s.into()),
                        Value::Integer(i) => Ok(i.into()),
                        Value::Boolean(b) => Ok(b.into()),
                        Value::Float(x) => Ok(x.into()),
                        other => Err(self.error(
                            span.clone(),
                            f(&format!("where.{key}")),
                            format!("expected a string, number or boolean (or a list of them), found {}", other.type_str()),
                        )),
                    }
                };
                let any_of = match value {
                    Value::Array(values) => values
                        .into_iter()
                        .map(scalar)
                        .collect::<Result<Vec<_>, _>>()?,
                    v => vec![scalar(v)?],
                };
                if any_of.is_empty() {
                    return Err(self.error(
                        span.clone(),
                        f(&format!("where.{key}")),
                        "the list of accepted values is empty",
                    ));
                }
                filters.push(Filter { field: key, any_of });
            }
        }
        Ok(Format::Json(Selector {
            items,
            cidr,
            filters,
            serial: serial.map(|s| s.into_inner()),
        }))
    }

    /// A string or a non-empty list of strings.
    fn strings(
        &self,
        value: Spanned<Value>,
        field: &str,
        allow_empty_string: bool,
    ) -> Result<Vec<String>, ConfigError> {
        let span = value.span();
        let list = match value.into_inner() {
            Value::String(s) => vec![s],
            Value::Array(values) => values
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(self.error(
                        span.clone(),
                        field,
                        format!("expected strings, found {}", other.type_str()),
                    )),
                })
                .collect::<Result<_, _>>()?,
            other => {
                return Err(self.error(
                    span,
                    field,
                    format!(
                        "expected a string or a list of strings, found {}",
                        other.type_str()
                    ),
                ));
            }
        };
        if list.is_empty() {
            return Err(self.error(span, field, "the list is empty"));
        }
        if !allow_empty_string && list.iter().any(String::is_empty) {
            return Err(self.error(span, field, "field names can't be empty"));
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
interfaces = ["eth0"]      # where XDP attaches; per-interface mode auto|native|skb allowed
ports = [443]
mode = "enforce"           # or "monitor"
refresh = "1h"
state_dir = "/var/lib/allowlist"
pin_dir = "/sys/fs/bpf/allowlist"
metrics = "127.0.0.1:9975"

[[provider]]
name = "intercom"
preset = "intercom-us"

[[provider]]
name = "partner"
[[provider.source]]
url = "https://ranges.example.net/ips.json"
format = "json"
items = "ip_ranges"
cidr = "range"
where = { service = "INTERCOM-OUTBOUND" }
ca_file = "/etc/allowlist/partner-ca.pem"

[[provider]]
name = "office"
[[provider.source]]
static = ["203.0.113.0/24", "2001:db8::/48"]
"#;

    fn parse_ok(text: &str) -> Config {
        parse(text, Path::new("/etc/allowlist/allowlist.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> (String, usize, String) {
        match parse(text, Path::new("/etc/allowlist/allowlist.toml")) {
            Err(err @ ConfigError::Invalid { .. }) => {
                let ConfigError::Invalid {
                    line, ref field, ..
                } = err
                else {
                    unreachable!()
                };
                (err.to_string(), line, field.clone())
            }
            Err(other) => panic!("unexpected {other}"),
            Ok(_) => panic!("parsed"),
        }
    }

    const MINIMAL: &str = "interfaces = [\"eth0\"]\n";

    #[test]
    fn the_documented_example_parses() {
        let config = parse_ok(EXAMPLE);
        assert_eq!(
            config.interfaces,
            [Interface {
                name: "eth0".into(),
                mode: AttachMode::Auto
            }]
        );
        assert_eq!(config.ports, [443]);
        assert_eq!(config.mode, Mode::Enforce);
        assert_eq!(config.refresh, Duration::from_secs(3600));
        assert_eq!(config.metrics, Some("127.0.0.1:9975".parse().unwrap()));
        assert_eq!(config.guards, Guards::default());
        assert_eq!(
            config.source_ids(),
            ["intercom/intercom-us", "partner/0", "office/0"]
        );

        let intercom = config.source("intercom/intercom-us").unwrap();
        assert_eq!(intercom.rule_id, 0);
        let Location::Url {
            url,
            format: Format::Json(sel),
        } = &intercom.location
        else {
            panic!()
        };
        assert_eq!(
            url.as_str(),
            "https://static.intercomcdn.com/intercom-ips/us/intercom-ip-ranges.json"
        );
        assert_eq!(sel.items, ["ip_ranges"]);
        assert_eq!(sel.filters[0].field, "service");
        let snapshot = intercom.snapshot.as_ref().unwrap();
        assert_eq!(snapshot.prefixes.len(), 6);

        let partner = config.source("partner/0").unwrap();
        assert_eq!(partner.rule_id, 1);
        assert_eq!(
            partner.fetch.ca_file.as_deref(),
            Some(Path::new("/etc/allowlist/partner-ca.pem"))
        );
        assert_eq!(partner.fetch.timeout, DEFAULT_TIMEOUT);
        assert_eq!(partner.fetch.retries, 3);
        let Location::Url {
            format: Format::Json(sel),
            ..
        } = &partner.location
        else {
            panic!()
        };
        assert_eq!(
            sel,
            &Selector {
                items: vec!["ip_ranges".into()],
                cidr: vec!["range".into()],
                filters: vec![Filter {
                    field: "service".into(),
                    any_of: vec!["INTERCOM-OUTBOUND".into()]
                }],
                serial: None,
            }
        );

        let office = config.source("office/0").unwrap();
        assert_eq!(office.rule_id, 2);
        let Location::Static(list) = &office.location else {
            panic!()
        };
        assert_eq!(
            list.prefixes,
            [
                "203.0.113.0/24".parse::<IpNet>().unwrap(),
                "2001:db8::/48".parse().unwrap()
            ]
        );
    }

    #[test]
    fn defaults() {
        let config = parse_ok(&format!(
            "{MINIMAL}[[provider]]\nname = \"s\"\npreset = \"stripe-webhooks\"\n"
        ));
        assert_eq!(config.ports, [443]);
        assert_eq!(config.mode, Mode::Enforce);
        assert_eq!(config.refresh, DEFAULT_REFRESH);
        assert_eq!(config.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(config.pin_dir, Path::new(DEFAULT_PIN_DIR));
        assert_eq!(config.metrics, None);
        assert_eq!(config.source("s/stripe-webhooks").unwrap().snapshot, None);
    }

    #[test]
    fn interfaces_ports_guards_and_source_settings() {
        let config = parse_ok(
            r#"
interfaces = ["eth0", { name = "eth1", mode = "native" }, { name = "veth2", mode = "skb" }]
ports = [8443, 443, 443]
mode = "monitor"
refresh = "15s"
[guards]
max_shrink = 0.25
min_prefix_v4 = 16
min_prefix_v6 = 32
allow_empty = true
[[provider]]
name = "fresh"
preset = "freshworks-eu"
[[provider.source]]
url = "http://127.0.0.1:8080/list"
format = "text"
insecure_http = true
timeout = "2s"
max_bytes = 1024
retries = 0
force = true
[[provider.source]]
file = "/etc/allowlist/extra.txt"
"#,
        );
        assert_eq!(
            config.interfaces[1],
            Interface {
                name: "eth1".into(),
                mode: AttachMode::Native
            }
        );
        assert_eq!(config.interfaces[2].mode, AttachMode::Skb);
        assert_eq!(config.ports, [443, 8443]);
        assert_eq!(config.mode, Mode::Monitor);
        assert_eq!(config.refresh, Duration::from_secs(15));
        assert_eq!(
            config.guards,
            Guards {
                max_shrink: 0.25,
                min_prefix_v4: 16,
                min_prefix_v6: 32,
                allow_empty: true
            }
        );
        assert_eq!(
            config.source_ids(),
            ["fresh/freshworks-eu", "fresh/0", "fresh/1"]
        );
        let Location::Static(list) = &config.source("fresh/freshworks-eu").unwrap().location else {
            panic!()
        };
        // 3.74.148.8-11 aggregate into one /30.
        assert_eq!(list.prefixes.len(), 7);
        assert_eq!(prefixes::address_counts(&list.prefixes), (10, 0));
        assert_eq!(list.as_of.as_deref(), Some("2026-11"));
        let extra = config.source("fresh/0").unwrap();
        assert_eq!(
            extra.fetch,
            FetchSettings {
                timeout: Duration::from_secs(2),
                max_bytes: 1024,
                insecure_http: true,
                ca_file: None,
                retries: 0,
                retry_after_limit: Duration::from_secs(15),
                proxy: Proxy::Environment,
            }
        );
        assert!(extra.force);
        assert!(matches!(
            &config.source("fresh/1").unwrap().location,
            Location::File {
                format: Format::Text,
                ..
            }
        ));
    }

    #[test]
    fn the_refresh_interval_bounds_retry_after_for_every_url_source() {
        let config = parse_ok(&format!(
            "{MINIMAL}refresh = \"4m\"\n[[provider]]\nname = \"s\"\npreset = \"stripe-webhooks\"\n[[provider.source]]\nurl = \"https://ranges.example.net/ips.txt\"\n"
        ));
        for id in ["s/stripe-webhooks", "s/0"] {
            assert_eq!(
                config.source(id).unwrap().fetch.retry_after_limit,
                Duration::from_secs(240),
                "{id}"
            );
        }
        let config = parse_ok(&format!(
            "{MINIMAL}refresh = \"1h\"\n[[provider]]\nname = \"s\"\npreset = \"stripe-webhooks\"\n"
        ));
        assert_eq!(
            config
                .source("s/stripe-webhooks")
                .unwrap()
                .fetch
                .retry_after_limit,
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn json_selection_shapes() {
        let config = parse_ok(
            r#"
interfaces = ["eth0"]
[[provider]]
name = "aws"
[[provider.source]]
url = "https://ip-ranges.amazonaws.com/ip-ranges.json"
items = ["prefixes", "ipv6_prefixes"]
cidr = ["ip_prefix", "ipv6_prefix"]
where = { service = ["EC2", "S3"], region = "eu-west-1", active = true }
serial = "syncToken"
[[provider.source]]
url = "https://example.com/pd"
format = "json"
items = "."
"#,
        );
        let Location::Url {
            format: Format::Json(sel),
            ..
        } = &config.source("aws/0").unwrap().location
        else {
            panic!()
        };
        assert_eq!(sel.items, ["prefixes", "ipv6_prefixes"]);
        assert_eq!(sel.cidr, ["ip_prefix", "ipv6_prefix"]);
        assert_eq!(sel.serial.as_deref(), Some("syncToken"));
        let service = sel.filters.iter().find(|f| f.field == "service").unwrap();
        assert_eq!(
            service.any_of,
            [serde_json::json!("EC2"), serde_json::json!("S3")]
        );
        assert!(
            sel.filters
                .iter()
                .any(|f| f.field == "active" && f.any_of == [serde_json::json!(true)])
        );
        let Location::Url {
            format: Format::Json(sel),
            ..
        } = &config.source("aws/1").unwrap().location
        else {
            panic!()
        };
        assert_eq!(sel.items, [""]);
    }

    #[test]
    fn unknown_field_names_the_line() {
        let (msg, line, _) = parse_err(
            "interfaces = [\"eth0\"]\n\n[[provider]]\nname = \"a\"\npreset = \"stripe-webhooks\"\ncolour = \"red\"\n",
        );
        assert_eq!(line, 6, "{msg}");
        assert!(
            msg.starts_with("/etc/allowlist/allowlist.toml:6:1: "),
            "{msg}"
        );
        assert!(msg.contains("unknown field `colour`"), "{msg}");
    }

    #[test]
    fn type_errors_name_the_field() {
        let (msg, line, _) = parse_err("interfaces = [\"eth0\"]\nports = [\"https\"]\n");
        assert_eq!(line, 2, "{msg}");
        assert!(msg.contains(":2:") && msg.contains("ports: "), "{msg}");
        let (msg, _, _) = parse_err(
            "interfaces = [\"eth0\"]\n[[provider]]\nname = \"a\"\n[[provider.source]]\nretries = \"three\"\n",
        );
        assert!(msg.contains("provider.source.retries: "), "{msg}");
    }

    #[test]
    fn bad_values_name_the_file_line_and_field() {
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "interfaces = [\"eth0\"]\nports = [443, 70000]\n",
                2,
                "ports[1]",
                "70000 is not a TCP port",
            ),
            ("interfaces = [\"eth0\"]\nports = []\n", 2, "ports", "empty"),
            (
                "interfaces = [\"eth0\"]\nmode = \"drop\"\n",
                2,
                "mode",
                "unknown mode \"drop\"",
            ),
            (
                "interfaces = [\"eth0\"]\nrefresh = \"500ms\"\n",
                2,
                "refresh",
                "shorter than the minimum",
            ),
            (
                "interfaces = [\"eth0\"]\nrefresh = \"soon\"\n",
                2,
                "refresh",
                "not a duration",
            ),
            (
                "interfaces = [\"eth0\"]\nmetrics = \"localhost\"\n",
                2,
                "metrics",
                "not an address",
            ),
            (
                "interfaces = [\"eth0\"]\n[guards]\nmax_shrink = 1.5\n",
                3,
                "guards.max_shrink",
                "not a fraction",
            ),
            (
                "interfaces = [\"eth0\"]\n[guards]\nmin_prefix_v6 = 129\n",
                3,
                "guards.min_prefix_v6",
                "not a prefix length",
            ),
            (
                "interfaces = [{ name = \"eth0\", mode = \"fast\" }]\n",
                1,
                "interfaces[0]",
                "unknown mode \"fast\"",
            ),
            (
                "interfaces = [\"eth0\", \"eth0\"]\n",
                1,
                "interfaces[1]",
                "listed twice",
            ),
            ("interfaces = []\n", 1, "interfaces", "empty"),
        ];
        for (text, line, field, needle) in cases {
            let text = format!("{text}[[provider]]\nname = \"a\"\npreset = \"stripe-webhooks\"\n");
            let (msg, got_line, got_field) = parse_err(&text);
            assert_eq!((got_line, got_field.as_str()), (*line, *field), "{msg}");
            assert!(msg.contains(needle), "{msg}");
            assert!(
                msg.starts_with(&format!("/etc/allowlist/allowlist.toml:{line}:")),
                "{msg}"
            );
        }
    }

    #[test]
    fn provider_errors() {
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "[[provider]]\nname = \"Bad Name\"\npreset = \"stripe-webhooks\"\n",
                3,
                "provider[0].name",
                "not a valid provider name",
            ),
            (
                "[[provider]]\nname = \"a\"\npreset = \"stripe-webhooks\"\n[[provider]]\nname = \"a\"\npreset = \"github-hooks\"\n",
                6,
                "provider[1].name",
                "duplicate provider name \"a\"",
            ),
            (
                "[[provider]]\nname = \"a\"\n",
                2,
                "provider.a",
                "neither a `preset` nor any [[provider.source]]",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"http://example.com/ips.json\"\n",
                5,
                "provider.a.source[0].url",
                "plain http is refused",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"ftp://example.com/ips.json\"\n",
                5,
                "provider.a.source[0].url",
                "unsupported scheme",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://example.com/ips\"\n",
                4,
                "provider.a.source[0].format",
                "cannot infer the format",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://example.com/ips\"\nformat = \"xml\"\n",
                6,
                "provider.a.source[0].format",
                "unknown format \"xml\"",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://example.com/ips.txt\"\nitems = \"x\"\n",
                6,
                "provider.a.source[0].items",
                "only applies to JSON",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nstatic = [\"192.0.2.0/24\"]\ntimeout = \"1s\"\n",
                6,
                "provider.a.source[0].timeout",
                "only applies to `url`",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nstatic = [\"192.0.2.0/24\"]\nurl = \"https://example.com/x.json\"\n",
                4,
                "provider.a.source[0]",
                "exactly one of",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nstatic = [\"192.0.2.0/24\",\n  \"not-an-ip\"]\n",
                6,
                "provider.a.source[0].static",
                "\"not-an-ip\" is not an IP address",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nstatic = [\"4.0.0.0/6\"]\n",
                5,
                "provider.a.source[0].static",
                "broader than the /8 floor",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://e.com/x.json\"\nwhere = { a = [[1]] }\n",
                6,
                "provider.a.source[0].where.a",
                "expected a string, number or boolean",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://e.com/x.json\"\ncidr = []\n",
                6,
                "provider.a.source[0].cidr",
                "empty",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://e.com/x.json\"\nretries = -1\n",
                6,
                "provider.a.source[0].retries",
                "not a retry count",
            ),
        ];
        for (text, line, field, needle) in cases {
            let (msg, got_line, got_field) = parse_err(&format!("{MINIMAL}{text}"));
            assert_eq!((got_line, got_field.as_str()), (*line, *field), "{msg}");
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let (msg, line, field) = parse_err(&format!(
            "{MINIMAL}[[provider]]\nname = \"a\"\npreset = \"intercom-mars\"\n"
        ));
        assert_eq!((line, field.as_str()), (4, "provider.a.preset"));
        assert!(msg.contains("unknown preset \"intercom-mars\""), "{msg}");
        for known in [
            "intercom-us",
            "intercom-eu",
            "intercom-au",
            "freshworks-in",
            "stripe-webhooks",
            "datadog-eu1",
        ] {
            assert!(msg.contains(known), "{msg}");
        }
    }

    #[test]
    fn proxy_is_global_and_per_source() {
        let text = format!(
            r#"{MINIMAL}proxy = "http://proxy.internal:3128"
[[provider]]
name = "a"
preset = "stripe-webhooks"
[[provider.source]]
url = "https://ranges.example.net/a.txt"
[[provider.source]]
url = "https://ranges.example.net/b.txt"
proxy = "https://ops:s3cret@other-proxy.internal:8443"
[[provider.source]]
url = "https://partner.internal/c.txt"
proxy = "none"
"#
        );
        let config = parse_ok(&text);
        let proxy = |id: &str| config.source(id).unwrap().fetch.proxy.clone();
        let global = Proxy::Url(Url::parse("http://proxy.internal:3128").unwrap());
        assert_eq!(proxy("a/stripe-webhooks"), global);
        assert_eq!(proxy("a/0"), global);
        assert_eq!(proxy("a/2"), Proxy::Direct);
        let own = proxy("a/1");
        assert_eq!(
            own,
            Proxy::Url(Url::parse("https://ops:s3cret@other-proxy.internal:8443/").unwrap())
        );
        // The password is never shown.
        assert_eq!(
            own.to_string(),
            "https://ops:***@other-proxy.internal:8443/"
        );
        assert_eq!(
            serde_json::to_value(&config.source("a/1").unwrap().fetch).unwrap()["proxy"],
            "https://ops:***@other-proxy.internal:8443/"
        );

        // Without the key: the environment's (HTTPS_PROXY, NO_PROXY).
        let config = parse_ok(&format!(
            "{MINIMAL}[[provider]]\nname = \"a\"\npreset = \"stripe-webhooks\"\n"
        ));
        assert_eq!(
            config.source("a/stripe-webhooks").unwrap().fetch.proxy,
            Proxy::Environment
        );
    }

    #[test]
    fn bad_proxies_name_the_file_line_and_field() {
        let source = "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://ranges.example.net/a.txt\"\n";
        let cases: &[(String, usize, usize, &str, &str)] = &[
            (
                format!("{MINIMAL}proxy = \"socks5://127.0.0.1:1080\"\n{source}"),
                2,
                9,
                "proxy",
                "unsupported proxy scheme \"socks5\"",
            ),
            (
                format!("{MINIMAL}proxy = \"127.0.0.1:3128\"\n{source}"),
                2,
                9,
                "proxy",
                "is not a proxy URL",
            ),
            (
                // Parses as scheme "proxy.internal".
                format!("{MINIMAL}proxy = \"proxy.internal:3128\"\n{source}"),
                2,
                9,
                "proxy",
                "unsupported proxy scheme \"proxy.internal\"",
            ),
            (
                format!("{MINIMAL}{source}proxy = \"http://\"\n"),
                6,
                9,
                "provider.a.source[0].proxy",
                "not a proxy URL",
            ),
            (
                format!("{MINIMAL}{source}proxy = \"http://proxy.internal:3128/path\"\n"),
                6,
                9,
                "provider.a.source[0].proxy",
                "no path",
            ),
            (
                format!("{MINIMAL}{source}proxy = \"\"\n"),
                6,
                9,
                "provider.a.source[0].proxy",
                "not a proxy URL",
            ),
            (
                format!(
                    "{MINIMAL}[[provider]]\nname = \"a\"\n[[provider.source]]\nstatic = [\"192.0.2.1\"]\nproxy = \"none\"\n"
                ),
                6,
                9,
                "provider.a.source[0].proxy",
                "only applies to `url` sources",
            ),
        ];
        for (text, line, column, field, needle) in cases {
            let (msg, got_line, got_field) = parse_err(text);
            assert_eq!((got_line, got_field.as_str()), (*line, *field), "{msg}");
            assert!(msg.contains(needle), "{msg}");
            assert!(
                msg.starts_with(&format!(
                    "/etc/allowlist/allowlist.toml:{line}:{column}: {field}: "
                )),
                "{msg}"
            );
            if !needle.starts_with("only applies") {
                assert!(msg.contains("http://host:port"), "{msg}");
            }
        }
    }

    #[test]
    fn http_is_accepted_with_insecure_http() {
        let config = parse_ok(&format!(
            "{MINIMAL}[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"http://127.0.0.1:8080/x.json\"\ninsecure_http = true\n"
        ));
        assert!(config.source("a/0").unwrap().fetch.insecure_http);
    }

    #[test]
    fn missing_interfaces_and_providers() {
        let (msg, _, field) =
            parse_err("[[provider]]\nname = \"a\"\npreset = \"stripe-webhooks\"\n");
        assert_eq!(field, "interfaces", "{msg}");
        let (msg, _, field) = parse_err(MINIMAL);
        assert_eq!(field, "provider", "{msg}");
        let (msg, line, _) = parse_err("interfaces = [\"eth0\"\n");
        assert_eq!(line, 2, "{msg}");
        assert!(msg.contains("expected `]`"), "{msg}");
    }

    #[test]
    fn load_names_a_missing_file() {
        let err = load(Path::new("/nonexistent/allowlist.toml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/allowlist.toml"),
            "{err}"
        );
    }
}
