//! The configuration file: read by serde into a raw form whose field types check
//! their own values, then resolved into a [`Config`] that can't be wrong by one pass
//! that checks what ties keys together. Every error names the file, the line and
//! column, the field (one path style: `provider[0].source[1].url`), and what is
//! wrong with it.

mod locate;
mod raw;
mod resolve;
#[cfg(test)]
mod tests;
mod values;

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use reqwest::Url;
use serde::{Deserialize, Serialize};

use self::{locate::*, raw::RawConfig, resolve::resolve, values::*};
use crate::{
    prefixes::{self, Trust},
    sources::{format::Format, http::FetchSettings},
};

pub(crate) const DEFAULT_PATH: &str = "/etc/allowlist/allowlist.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/allowlist";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/allowlist";
pub(crate) const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
pub(crate) const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Denied packets each CPU's denied-source watch records per second, unless
/// `[watch] rate_per_cpu` says.
pub const DEFAULT_WATCH_RATE: u32 = 2000;
/// The largest `rate_per_cpu`: beyond it a flood would churn the watch's map.
pub(crate) const MAX_WATCH_RATE: u32 = 1_000_000;
/// How long a `dns` source waits for one answer (per attempt) unless `timeout` says.
pub(crate) const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a `dns` source keeps an address after the last answer that held it.
pub(crate) const DEFAULT_DNS_KEEP: Duration = Duration::from_secs(24 * 3600);
/// How long the agent keeps a denied source's address after it was last seen.
pub(crate) const DEFAULT_DENIED_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest `[watch] keep`: addresses of strangers are not kept for longer.
pub(crate) const MAX_DENIED_KEEP: Duration = Duration::from_secs(366 * 24 * 3600);

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
        /// The field, as a path (`provider[0].source[1].url`); empty for TOML syntax
        /// errors.
        field: String,
        message: String,
    },
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

/// The guard rails applied to every update of a fetched list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Guards {
    /// The largest fraction of a source's addresses (per address family) that one
    /// update may remove.
    #[serde(deserialize_with = "via::<Fraction, _, _>")]
    pub max_shrink: f64,
    /// Broader IPv4 prefixes are refused.
    #[serde(deserialize_with = "via::<PrefixLen<32>, _, _>")]
    pub min_prefix_v4: u8,
    /// Broader IPv6 prefixes are refused.
    #[serde(deserialize_with = "via::<PrefixLen<128>, _, _>")]
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

/// The denied-source watch: the filter records the sources it denies (TCP to a
/// protected port from a source not in the list; would-drops in monitor mode too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Watch {
    pub enabled: bool,
    /// Denied packets recorded per second and per CPU at most; beyond it the filter
    /// records a share of them and counts the rest (`allowlist_common::watch`).
    #[serde(deserialize_with = "via::<WatchRate, _, _>")]
    pub rate_per_cpu: u32,
    /// How long the agent keeps a denied source's address (in memory and
    /// `state_dir`) after it was last seen: `allowlist denied` shows what was seen
    /// within it.
    #[serde(deserialize_with = "via::<DeniedKeep, _, _>", skip_serializing)]
    pub keep: Duration,
}

impl Watch {
    /// The rate the program is given: 0 when the watch is off.
    pub fn datapath_rate(&self) -> u32 {
        if self.enabled { self.rate_per_cpu } else { 0 }
    }
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            enabled: true,
            rate_per_cpu: DEFAULT_WATCH_RATE,
            keep: DEFAULT_DENIED_KEEP,
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
    /// The A and AAAA records of a name, each address kept for `keep` after the
    /// last answer that held it (round-robin answers rotate).
    Dns {
        name: String,
        /// The server asked; the system's (`/etc/resolv.conf`) when `None`.
        resolver: Option<SocketAddr>,
        #[serde(serialize_with = "duration_text")]
        keep: Duration,
    },
}

fn duration_text<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
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

/// The kinds of source, by the key that makes one (`url = `, `file = `, `static = `,
/// `dns = `), which is also how the status names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Url,
    File,
    Static,
    Dns,
}

impl SourceKind {
    /// The key, as the configuration and the status write it.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Url => "url",
            SourceKind::File => "file",
            SourceKind::Static => "static",
            SourceKind::Dns => "dns",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a refresh asks for: a source's list wherever it is not a static list. Only
/// [`Source::fetched`] makes one, so a static list cannot reach the fetch path.
#[derive(Debug, Clone)]
pub(crate) enum Fetched {
    Url {
        url: Url,
        format: Format,
    },
    File {
        path: PathBuf,
        format: Format,
    },
    Dns {
        name: String,
        resolver: Option<SocketAddr>,
        keep: Duration,
    },
}

impl Source {
    pub fn kind(&self) -> SourceKind {
        match self.location {
            Location::Url { .. } => SourceKind::Url,
            Location::File { .. } => SourceKind::File,
            Location::Static(_) => SourceKind::Static,
            Location::Dns { .. } => SourceKind::Dns,
        }
    }

    /// Whether refreshes fetch this source (url, file and dns sources).
    pub fn is_fetched(&self) -> bool {
        !matches!(self.location, Location::Static(_))
    }

    /// What a refresh asks for; `None` for a static list, which is never fetched.
    pub(crate) fn fetched(&self) -> Option<Fetched> {
        Some(match &self.location {
            Location::Url { url, format } => Fetched::Url {
                url: url.clone(),
                format: format.clone(),
            },
            Location::File { path, format } => Fetched::File {
                path: path.clone(),
                format: format.clone(),
            },
            Location::Dns {
                name,
                resolver,
                keep,
            } => Fetched::Dns {
                name: name.clone(),
                resolver: *resolver,
                keep: *keep,
            },
            Location::Static(_) => return None,
        })
    }

    /// Whether the bogon filter applies (lists fetched from a provider).
    pub fn trust(&self) -> Trust {
        match self.location {
            Location::Url { .. } | Location::Dns { .. } => Trust::Remote,
            _ => Trust::Operator,
        }
    }

    /// The URL, path or name, for messages (`static` for inline lists).
    pub fn origin(&self) -> String {
        match &self.location {
            Location::Url { url, .. } => url.to_string(),
            Location::File { path, .. } => path.display().to_string(),
            Location::Static(_) => "static".to_owned(),
            Location::Dns {
                name,
                resolver: None,
                ..
            } => name.clone(),
            Location::Dns {
                name,
                resolver: Some(resolver),
                ..
            } => format!("{name} (via {resolver})"),
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
    pub watch: Watch,
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
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Validates a configuration read from `origin`.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let problem = match toml::from_str::<RawConfig>(text) {
        Ok(raw) => match resolve(raw, origin) {
            Ok(config) => return Ok(config),
            Err(problem) => problem,
        },
        Err(err) => Problem {
            span: err.span(),
            key: None,
            message: err.message().trim_end().to_owned(),
        },
    };
    Err(problem.locate(text, origin))
}
