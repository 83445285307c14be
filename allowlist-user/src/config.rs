//! The configuration file: read by serde into a raw form whose field types check
//! their own values, then resolved into a [`Config`] that can't be wrong by one pass
//! that checks what ties keys together. Every error names the file, the line and
//! column, the field (one path style: `provider[0].source[1].url`), and what is
//! wrong with it.

use std::{
    collections::BTreeMap,
    fmt,
    marker::PhantomData,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use reqwest::Url;
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, IntoDeserializer, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer},
};
use toml::Spanned;
use toml_edit::{ArrayOfTables, ImDocument, Item, Key, Table, Value};

use crate::{
    prefixes::{self, PrefixError, Trust},
    sources::{
        format::{
            Format,
            json::{RecordFilter, Selector},
        },
        http::{FetchSettings, MAX_RETRY_AFTER, Proxy},
        presets::{self, Preset},
    },
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

impl Source {
    /// `url`, `file`, `static` or `dns`.
    pub fn kind(&self) -> &'static str {
        match self.location {
            Location::Url { .. } => "url",
            Location::File { .. } => "file",
            Location::Static(_) => "static",
            Location::Dns { .. } => "dns",
        }
    }

    /// Whether refreshes fetch this source (url, file and dns sources).
    pub fn is_fetched(&self) -> bool {
        !matches!(self.location, Location::Static(_))
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

// ---------------------------------------------------------------------------------
// Errors: where in the document, turned into a line, a column and a field path in
// one place.

/// What is wrong, and where: the value, key or table at `span`, or its `key`.
struct Problem {
    /// `None`: the document itself.
    span: Option<Range<usize>>,
    /// A key of the table at `span`, set (the error points at its value) or missing.
    key: Option<&'static str>,
    message: String,
}

impl Problem {
    fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        let (span, key, message) = (Some(span), None, message.into());
        Problem { span, key, message }
    }

    fn key(table: Option<Range<usize>>, key: &'static str, message: impl Into<String>) -> Self {
        let (span, key, message) = (table, Some(key), message.into());
        Problem { span, key, message }
    }

    fn locate(self, text: &str, origin: &Path) -> ConfigError {
        let document = ImDocument::parse(text).ok();
        let root = document.as_ref().map(|d| Node::Table(d.as_table()));
        let (mut field, node) = match (root, &self.span) {
            (Some(root), Some(span)) => find(root, span).unwrap_or((String::new(), root)),
            (root, _) => (String::new(), root.unwrap_or(Node::Other)),
        };
        let mut at = self.span;
        if let Some(key) = self.key {
            field = format!("{field}.{key}");
            at = node.value_span(key).or(at);
        }
        let field = field.strip_prefix('.').unwrap_or(&field).to_owned();
        let before = &text[..at.map_or(0, |span| span.start).min(text.len())];
        ConfigError::Invalid {
            path: origin.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
            field,
            message: self.message,
        }
    }
}

/// A child's path segment (`.key` or `[index]`), its spans (key, value) and itself.
type Child<'a> = (String, [Option<Range<usize>>; 2], Node<'a>);

/// A part of the parsed document, as [`find`] walks it.
#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a Table),
    Tables(&'a ArrayOfTables),
    Value(&'a Value),
    Other,
}

impl<'a> Node<'a> {
    fn of(item: &'a Item) -> Self {
        match item {
            Item::Table(table) => Node::Table(table),
            Item::ArrayOfTables(tables) => Node::Tables(tables),
            Item::Value(value) => Node::Value(value),
            Item::None => Node::Other,
        }
    }

    fn children(self) -> Vec<Child<'a>> {
        let entry = |(key, item): (&Key, &'a Item)| {
            let spans = [key.span(), item.span()];
            (format!(".{}", key.get()), spans, Node::of(item))
        };
        match self {
            Node::Table(table) => (table.iter())
                .filter_map(|(k, _)| table.get_key_value(k))
                .map(entry)
                .collect(),
            Node::Value(Value::InlineTable(table)) => (table.iter())
                .filter_map(|(k, _)| table.get_key_value(k))
                .map(entry)
                .collect(),
            Node::Tables(tables) => (tables.iter().enumerate())
                .map(|(i, t)| (format!("[{i}]"), [None, t.span()], Node::Table(t)))
                .collect(),
            Node::Value(Value::Array(values)) => (values.iter().enumerate())
                .map(|(i, v)| (format!("[{i}]"), [None, v.span()], Node::Value(v)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The span of the value of `key`, if this is a table that has it.
    fn value_span(self, key: &str) -> Option<Range<usize>> {
        match self {
            Node::Table(table) => table.get(key)?.span(),
            Node::Value(Value::InlineTable(table)) => table.get(key)?.span(),
            _ => None,
        }
    }
}

/// The deepest key, table or value below `node` whose span holds `span`, and its
/// path (`.provider[0].source[1].url`, `.ports[1]`: one style for every error).
fn find<'a>(node: Node<'a>, span: &Range<usize>) -> Option<(String, Node<'a>)> {
    let holds = |s: &Range<usize>| s.start <= span.start && span.end <= s.end;
    node.children()
        .into_iter()
        .find_map(|(segment, spans, child)| match find(child, span) {
            Some((rest, found)) => Some((segment + &rest, found)),
            None => spans
                .iter()
                .flatten()
                .any(holds)
                .then_some((segment, child)),
        })
}

// ---------------------------------------------------------------------------------
// Values: each type checks one value. Their errors get the value's span from
// toml_edit, so they name the line, column and field like every other error.

/// Reads an `R` and checks it into a `T` inside the deserializer's newtype hook, where
/// toml_edit gives an error the value's span, in a list as in a table (a plain
/// `#[serde(try_from)]` on a list item would get the whole list's span).
fn checked<'de, R, T, D>(d: D, check: impl FnOnce(R) -> Result<T, String>) -> Result<T, D::Error>
where
    R: Deserialize<'de>,
    D: Deserializer<'de>,
{
    struct Check<R, F>(F, PhantomData<R>);
    impl<'de, R, T, F> Visitor<'de> for Check<R, F>
    where
        R: Deserialize<'de>,
        F: FnOnce(R) -> Result<T, String>,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a value")
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
            (self.0)(R::deserialize(d)?).map_err(de::Error::custom)
        }
    }
    d.deserialize_newtype_struct("checked", Check(check, PhantomData))
}

/// Newtypes that check one value as serde reads it: `Name(Kept) from Raw = check;`.
macro_rules! checked {
    ($($(#[$doc:meta])* $name:ident($kept:ty) from $raw:ty = $check:expr;)*) => {$(
        $(#[$doc])*
        struct $name($kept);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                checked::<$raw, _, _>(d, $check).map($name)
            }
        }

        impl From<$name> for $kept {
            fn from(value: $name) -> $kept {
                value.0
            }
        }
    )*};
}

checked! {
    /// A TCP port.
    Port(u16) from i64 = |n| match u16::try_from(n) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("{n} is not a TCP port (1..=65535)")),
    };
    /// Attempts after the first one.
    Retries(u32) from i64 = |n| match u32::try_from(n) {
        Ok(retries) if retries <= 20 => Ok(retries),
        _ => Err(format!("{n} is not a retry count (0..=20)")),
    };
    /// The most a document may weigh.
    MaxBytes(u64) from i64 = |n| match u64::try_from(n) {
        Ok(bytes) if bytes > 0 => Ok(bytes),
        _ => Err(format!("{n} is not a positive byte count")),
    };
    /// The watch's recording rate per CPU.
    WatchRate(u32) from i64 = |n| match u32::try_from(n) {
        Ok(rate) if (1..=MAX_WATCH_RATE).contains(&rate) => Ok(rate),
        Ok(0) => Err("0 records nothing: to turn the watch off, set enabled = false".to_owned()),
        _ => Err(format!("{n} is not a rate between 1 and {MAX_WATCH_RATE} records per second")),
    };
    /// A fraction between 0 and 1.
    Fraction(f64) from f64 = |x| match x {
        x if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("{x} is not a fraction between 0 and 1")),
    };
    /// The refresh interval: [`MIN_REFRESH`] or longer.
    Refresh(Duration) from String = |text| match duration(&text)? {
        d if d < MIN_REFRESH => Err(format!("{text:?} is shorter than the minimum of 1s")),
        d => Ok(d),
    };
    /// A request timeout, longer than 0s.
    Timeout(Duration) from String = |text| match duration(&text)? {
        d if d.is_zero() => Err("must be longer than 0s".to_owned()),
        d => Ok(d),
    };
    /// The metrics listener's address and port.
    Listen(SocketAddr) from String = |text| text.parse().map_err(|_| {
        format!("{text:?} is not an address and port such as \"127.0.0.1:9975\"")
    });
    /// A source URL: https, or http (which the source must accept with `insecure_http`).
    SourceUrl(Url) from String = |text| {
        let url = Url::parse(&text).map_err(|err| format!("{text:?} is not a URL: {err}"))?;
        match url.scheme() {
            _ if url.host_str().is_none_or(str::is_empty) => Err("the URL has no host".to_owned()),
            "https" | "http" => Ok(url),
            other => Err(format!("unsupported scheme {other:?}: use https")),
        }
    };
    /// A network interface's name, as the kernel allows it.
    IfName(String) from String = interface_name;
    /// A provider's name: it names state files and metric labels.
    ProviderName(String) from String = |name| {
        let allowed = |c: char| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-');
        if name.is_empty() || !name.chars().all(allowed) {
            return Err(format!(
                "{name:?} is not a valid provider name: use lowercase letters, digits, '_' and '-'"
            ));
        }
        Ok(name)
    };
    /// A built-in provider, by name.
    PresetRef(&'static Preset) from String = |name| presets::find(&name).ok_or_else(|| {
        if let Some(why) = presets::retired(&name) {
            return format!("preset {name:?} was removed: {why}");
        }
        let known = presets::names().join(", ");
        format!("unknown preset {name:?}; known presets: {known}")
    });
    /// How long a `dns` source keeps an address it no longer sees, longer than 0s.
    DnsKeep(Duration) from String = |text| match duration(&text)? {
        d if d.is_zero() => Err("must be longer than 0s".to_owned()),
        d => Ok(d),
    };
    /// How long a denied source is kept after it was last seen: longer than 0s, at
    /// most [`MAX_DENIED_KEEP`].
    DeniedKeep(Duration) from String = |text| match duration(&text)? {
        d if d.is_zero() => Err("must be longer than 0s".to_owned()),
        d if d > MAX_DENIED_KEEP => Err(format!(
            "{text:?} is longer than the maximum of 366 days (addresses of strangers are not kept longer)"
        )),
        d => Ok(d),
    };
    /// The DNS server a `dns` source asks: an address with a port, or an address
    /// (port 53).
    Nameserver(SocketAddr) from String = |text| {
        (text.parse::<SocketAddr>())
            .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| format!("{text:?} is not an address such as \"127.0.0.1:5353\" or \"192.0.2.53\""))
    };
    /// A DNS name whose A and AAAA records are the list.
    DnsName(String) from String = dns_name;
    /// Record fields that may hold the prefix (`cidr`): one or more, none empty.
    FieldNames(Vec<String>) from OneOrMany<String> = |OneOrMany(names)| {
        if names.iter().any(String::is_empty) {
            return Err("field names can't be empty".to_owned());
        }
        Ok(names)
    };
}

/// A prefix length of an address family of `BITS` bits.
struct PrefixLen<const BITS: u8>(u8);

impl<'de, const BITS: u8> Deserialize<'de> for PrefixLen<BITS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |n: i64| match u8::try_from(n) {
            Ok(len) if len <= BITS => Ok(PrefixLen(len)),
            _ => Err(format!("{n} is not a prefix length (0..={BITS})")),
        })
    }
}

impl<const BITS: u8> From<PrefixLen<BITS>> for u8 {
    fn from(len: PrefixLen<BITS>) -> u8 {
        len.0
    }
}

impl<'de> Deserialize<'de> for Proxy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |text: String| Proxy::parse(&text))
    }
}

/// For `deserialize_with` on a field that [`Config`] keeps in its plain type `U`:
/// reads the checking type `T`.
fn via<'de, T: Deserialize<'de> + Into<U>, U, D: Deserializer<'de>>(d: D) -> Result<U, D::Error> {
    T::deserialize(d).map(Into::into)
}

fn interface_name(name: String) -> Result<String, String> {
    match name.len() {
        1..=15 if !name.contains(['/', ' ', '\0']) => Ok(name),
        _ => Err(format!("{name:?} is not a valid interface name")),
    }
}

/// A host name as DNS knows it: dot-separated labels of 1 to 63 letters, digits,
/// `-` or `_`, 253 characters at most; a final dot is allowed.
fn dns_name(name: String) -> Result<String, String> {
    if name.parse::<std::net::IpAddr>().is_ok() || name.parse::<IpNet>().is_ok() {
        return Err(format!(
            "{name:?} is an address, not a name: list it with `static`"
        ));
    }
    let bare = name.strip_suffix('.').unwrap_or(&name);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && (label.chars()).all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(format!(
            "{name:?} is not a DNS name such as \"out.adyen.com\""
        ));
    }
    Ok(name.to_ascii_lowercase())
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("{text:?} is not a duration such as \"30s\" or \"1h\" ({err})"))
}

/// A value or a non-empty list of them (`items = "prefixes"` or
/// `items = ["prefixes", "ipv6_prefixes"]`), read as cargo reads its string-or-list
/// keys.
struct OneOrMany<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut all = Vec::new();
                while let Some(one) = seq.next_element()? {
                    all.push(one);
                }
                if all.is_empty() {
                    return Err(de::Error::custom("the list is empty"));
                }
                Ok(all)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
                T::deserialize(v.into_deserializer()).map(|one| vec![one])
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<T>, E> {
                T::deserialize(v.into_deserializer()).map(|one| vec![one])
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Vec<T>, E> {
                T::deserialize(v.into_deserializer()).map(|one| vec![one])
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Vec<T>, E> {
                T::deserialize(v.into_deserializer()).map(|one| vec![one])
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|one| vec![one])
            }
        }
        d.deserialize_any(OneOrManyVisitor(PhantomData))
            .map(OneOrMany)
    }
}

/// A value a `where` filter compares a record's field with.
struct Scalar(serde_json::Value);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.into()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.into()))
            }
        }
        d.deserialize_any(ScalarVisitor)
    }
}

impl<'de> Deserialize<'de> for Interface {
    /// A name (`"eth0"`, mode `auto`) or a table (`{ name = "eth0", mode = "skb" }`),
    /// read as cargo reads its string-or-table keys.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct InterfaceTable {
            name: IfName,
            #[serde(default)]
            mode: AttachMode,
        }
        struct InterfaceVisitor;
        impl<'de> Visitor<'de> for InterfaceVisitor {
            type Value = Interface;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an interface name or a table { name = \"eth0\", mode = \"auto\" }")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Interface, E> {
                let name = interface_name(name.to_owned()).map_err(E::custom)?;
                let mode = AttachMode::Auto;
                Ok(Interface { name, mode })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Interface, A::Error> {
                let table = InterfaceTable::deserialize(MapAccessDeserializer::new(map))?;
                let (IfName(name), mode) = (table.name, table.mode);
                Ok(Interface { name, mode })
            }
        }
        d.deserialize_any(InterfaceVisitor)
    }
}

/// A list that can't be empty.
struct NonEmpty<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for NonEmpty<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Vec::deserialize(d)? {
            list if list.is_empty() => Err(de::Error::custom("the list is empty")),
            list => Ok(NonEmpty(list)),
        }
    }
}

/// How a url or file source's document is read.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FormatName {
    Json,
    Text,
}

// ---------------------------------------------------------------------------------
// The raw form, as serde reads it.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Option<NonEmpty<Spanned<Interface>>>,
    ports: Option<NonEmpty<Port>>,
    #[serde(default)]
    mode: Mode,
    refresh: Option<Refresh>,
    state_dir: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    metrics: Option<Listen>,
    proxy: Option<Proxy>,
    #[serde(default)]
    guards: Guards,
    #[serde(default)]
    watch: Watch,
    #[serde(default)]
    provider: Vec<Spanned<RawProvider>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: ProviderName,
    preset: Option<PresetRef>,
    #[serde(default)]
    source: Vec<Spanned<RawSource>>,
    // Where a preset's document is fetched from and how (a mirror, a proxy that
    // re-serves it): the url source keys. The preset's selection stays.
    url: Option<SourceUrl>,
    ca_file: Option<PathBuf>,
    timeout: Option<Timeout>,
    retries: Option<Retries>,
    max_bytes: Option<MaxBytes>,
    insecure_http: Option<bool>,
    proxy: Option<Proxy>,
    // What a preset decides itself: read only to be refused with a message.
    items: Option<de::IgnoredAny>,
    cidr: Option<de::IgnoredAny>,
    #[serde(rename = "where")]
    filter: Option<de::IgnoredAny>,
    format: Option<de::IgnoredAny>,
    serial: Option<de::IgnoredAny>,
    #[serde(rename = "static")]
    inline: Option<de::IgnoredAny>,
    file: Option<de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: Option<SourceUrl>,
    file: Option<PathBuf>,
    #[serde(rename = "static")]
    inline: Option<Spanned<Vec<Spanned<String>>>>,
    dns: Option<DnsName>,
    resolver: Option<Nameserver>,
    dns_keep: Option<DnsKeep>,
    format: Option<FormatName>,
    items: Option<OneOrMany<String>>,
    cidr: Option<FieldNames>,
    #[serde(rename = "where")]
    filter: Option<BTreeMap<String, OneOrMany<Scalar>>>,
    serial: Option<String>,
    as_of: Option<String>,
    reference: Option<String>,
    timeout: Option<Timeout>,
    max_bytes: Option<MaxBytes>,
    insecure_http: Option<bool>,
    ca_file: Option<PathBuf>,
    retries: Option<Retries>,
    proxy: Option<Proxy>,
    #[serde(default)]
    force: bool,
}

// ---------------------------------------------------------------------------------
// The resolve pass: the rules that tie keys together.

fn resolve(raw: RawConfig, origin: &Path) -> Result<Config, Problem> {
    let Some(NonEmpty(listed)) = raw.interfaces else {
        let message = "missing: list the interfaces XDP attaches to, e.g. interfaces = [\"eth0\"]";
        return Err(Problem::key(None, "interfaces", message));
    };
    let mut interfaces: Vec<Interface> = Vec::new();
    for interface in listed {
        let name = &interface.get_ref().name;
        if interfaces.iter().any(|i| &i.name == name) {
            let message = format!("interface {name:?} is listed twice");
            return Err(Problem::at(interface.span(), message));
        }
        interfaces.push(interface.into_inner());
    }
    let mut ports: Vec<u16> = raw.ports.map_or(vec![443], |NonEmpty(ports)| {
        ports.into_iter().map(u16::from).collect()
    });
    ports.sort_unstable();
    ports.dedup();
    let refresh = raw.refresh.map_or(DEFAULT_REFRESH, Duration::from);
    let defaults = Defaults {
        guards: &raw.guards,
        fetch: FetchSettings {
            retry_after_limit: refresh.min(MAX_RETRY_AFTER),
            proxy: raw.proxy.unwrap_or_default(),
            ..FetchSettings::default()
        },
    };
    if raw.provider.is_empty() {
        let message = "no [[provider]] is configured: nothing would be allowed";
        return Err(Problem::key(None, "provider", message));
    }
    let mut providers: Vec<Provider> = Vec::new();
    for (index, provider) in raw.provider.into_iter().enumerate() {
        let ProviderName(name) = &provider.get_ref().name;
        if let Some(first) = providers.iter().find(|p| &p.name == name) {
            let message = format!(
                "duplicate provider name {name:?} (also provider[{}]): names must be unique",
                first.rule_id
            );
            return Err(Problem::key(Some(provider.span()), "name", message));
        }
        providers.push(resolve_provider(index, provider, &defaults)?);
    }
    Ok(Config {
        path: origin.to_owned(),
        interfaces,
        ports,
        mode: raw.mode,
        refresh,
        state_dir: raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
        pin_dir: raw.pin_dir.unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
        metrics: raw.metrics.map(SocketAddr::from),
        guards: raw.guards,
        watch: raw.watch,
        providers,
    })
}

/// What the top-level keys give every source.
struct Defaults<'a> {
    guards: &'a Guards,
    /// What every url source starts from; its own keys override.
    fetch: FetchSettings,
}

fn resolve_provider(
    index: usize,
    raw: Spanned<RawProvider>,
    defaults: &Defaults<'_>,
) -> Result<Provider, Problem> {
    let span = raw.span();
    let raw = raw.into_inner();
    let rule_id = u32::try_from(index).expect("fewer than 2^32 providers");
    if raw.source.is_empty() && raw.preset.is_none() {
        let message = "has neither a `preset` nor any [[provider.source]]";
        return Err(Problem::at(span, message));
    }
    // Which keys of a provider apply with a preset, and which a preset decides.
    let fetch_keys = [
        ("url", raw.url.is_some()),
        ("ca_file", raw.ca_file.is_some()),
        ("timeout", raw.timeout.is_some()),
        ("retries", raw.retries.is_some()),
        ("max_bytes", raw.max_bytes.is_some()),
        ("insecure_http", raw.insecure_http.is_some()),
        ("proxy", raw.proxy.is_some()),
    ];
    let decided = [
        ("items", raw.items.is_some()),
        ("cidr", raw.cidr.is_some()),
        ("where", raw.filter.is_some()),
        ("format", raw.format.is_some()),
        ("serial", raw.serial.is_some()),
        ("static", raw.inline.is_some()),
        ("file", raw.file.is_some()),
    ];
    let first_set = |keys: &[(&'static str, bool)]| keys.iter().find(|(_, set)| *set).map(|k| k.0);
    let preset = raw.preset.map(|PresetRef(p)| p);
    if let Some(key) = first_set(&decided) {
        let message = match preset {
            Some(p) => format!(
                "does not apply with a `preset`: {} decides how its document is read; only where it is fetched from (url, ca_file, timeout, retries, max_bytes, insecure_http, proxy) may change. For a list of your own, add a [[provider.source]]",
                p.name
            ),
            None => "belongs in a [[provider.source]]".to_owned(),
        };
        return Err(Problem::key(Some(span), key, message));
    }
    match (preset, first_set(&fetch_keys)) {
        (None, Some(key)) => {
            let message = "applies to a `preset`'s document only: a list of your own goes in a [[provider.source]]";
            return Err(Problem::key(Some(span), key, message));
        }
        (Some(p), Some(key)) if p.location().is_none() => {
            let message = format!("{} is a static list: there is no document to fetch", p.name);
            return Err(Problem::key(Some(span), key, message));
        }
        _ => {}
    }
    if let Some(SourceUrl(url)) = &raw.url
        && url.scheme() == "http"
        && raw.insecure_http != Some(true)
    {
        return Err(Problem::key(Some(span), "url", PLAIN_HTTP));
    }
    let ProviderName(name) = raw.name;
    let mut sources = Vec::new();
    if let Some(preset) = preset {
        let fetch = &defaults.fetch;
        let fetch = FetchSettings {
            timeout: raw.timeout.map_or(fetch.timeout, Duration::from),
            max_bytes: raw.max_bytes.map_or(fetch.max_bytes, u64::from),
            insecure_http: raw.insecure_http.unwrap_or(false),
            ca_file: raw.ca_file,
            retries: raw.retries.map_or(fetch.retries, u32::from),
            retry_after_limit: fetch.retry_after_limit,
            proxy: raw.proxy.unwrap_or_else(|| fetch.proxy.clone()),
        };
        let url = raw.url.map(Url::from);
        let source = preset_source(&name, rule_id, preset, url, fetch, defaults)
            .map_err(|message| Problem::key(Some(span.clone()), "preset", message))?;
        sources.push(source);
    }
    for (i, source) in raw.source.into_iter().enumerate() {
        let id = format!("{name}/{i}");
        sources.push(resolve_source(&name, rule_id, id, source, defaults)?);
    }
    Ok(Provider {
        preset: preset.map(|p| p.name.to_owned()),
        name,
        rule_id,
        sources,
    })
}

const PLAIN_HTTP: &str = "plain http is refused: no list is signed, so integrity rests on TLS; use https, or set insecure_http = true to accept the risk";

/// A preset's source: its URL (or `url`, the same document from another place) and
/// selection, or its list, and its dated snapshot.
fn preset_source(
    provider: &str,
    rule_id: u32,
    preset: &Preset,
    url: Option<Url>,
    fetch: FetchSettings,
    defaults: &Defaults<'_>,
) -> Result<Source, String> {
    let snapshot = match &preset.snapshot {
        None => None,
        Some(snapshot) => Some(StaticList {
            prefixes: snapshot
                .prefixes(preset.name, defaults.guards)
                .map_err(|err| {
                    format!(
                        "the built-in list of {} is refused by [guards]: {err}",
                        preset.name
                    )
                })?,
            as_of: Some(snapshot.as_of.to_owned()),
            reference: Some(snapshot.reference.to_owned()),
        }),
    };
    let (location, snapshot) = match preset.location() {
        Some((published, format)) => {
            let url = url.unwrap_or(published);
            (Location::Url { url, format }, snapshot)
        }
        None => {
            let list = snapshot.expect("a static preset has a list");
            (Location::Static(list), None)
        }
    };
    Ok(Source {
        id: format!("{provider}/{}", preset.name),
        provider: provider.to_owned(),
        rule_id,
        location,
        fetch,
        force: false,
        snapshot,
    })
}

fn resolve_source(
    provider: &str,
    rule_id: u32,
    id: String,
    raw: Spanned<RawSource>,
    defaults: &Defaults<'_>,
) -> Result<Source, Problem> {
    let span = raw.span();
    let raw = raw.into_inner();
    let kind = match (&raw.url, &raw.file, &raw.inline, &raw.dns) {
        (Some(_), None, None, None) => "url",
        (None, Some(_), None, None) => "file",
        (None, None, Some(_), None) => "static",
        (None, None, None, Some(_)) => "dns",
        _ => {
            let message = "a source needs exactly one of `url`, `file`, `static` or `dns`";
            return Err(Problem::at(span, message));
        }
    };
    // Which keys apply to which kinds of source.
    let (url, fetched, listed): (&[&str], &[&str], &[&str]) =
        (&["url"], &["url", "file"], &["static"]);
    let (asked, dns): (&[&str], &[&str]) = (&["url", "dns"], &["dns"]);
    let keys = [
        ("timeout", raw.timeout.is_some(), asked),
        ("insecure_http", raw.insecure_http.is_some(), url),
        ("ca_file", raw.ca_file.is_some(), url),
        ("retries", raw.retries.is_some(), asked),
        ("proxy", raw.proxy.is_some(), url),
        ("resolver", raw.resolver.is_some(), dns),
        ("dns_keep", raw.dns_keep.is_some(), dns),
        ("max_bytes", raw.max_bytes.is_some(), fetched),
        ("format", raw.format.is_some(), fetched),
        ("items", raw.items.is_some(), fetched),
        ("cidr", raw.cidr.is_some(), fetched),
        ("where", raw.filter.is_some(), fetched),
        ("serial", raw.serial.is_some(), fetched),
        ("as_of", raw.as_of.is_some(), listed),
        ("reference", raw.reference.is_some(), listed),
    ];
    if let Some(&(key, _, kinds)) = keys
        .iter()
        .find(|(_, set, kinds)| *set && !kinds.contains(&kind))
    {
        let message = match kinds {
            [only] => format!("only applies to `{only}` sources"),
            _ if kind == "static" && kinds == fetched => {
                "does not apply to a `static` list".to_owned()
            }
            [first, second] => format!("only applies to `{first}` and `{second}` sources"),
            _ => format!("does not apply to a `{kind}` source"),
        };
        return Err(Problem::key(Some(span), key, message));
    }
    let location = match (&raw.url, &raw.file, &raw.inline, &raw.dns) {
        (_, _, _, Some(DnsName(name))) => Location::Dns {
            name: name.clone(),
            resolver: raw.resolver.as_ref().map(|Nameserver(addr)| *addr),
            keep: raw
                .dns_keep
                .as_ref()
                .map_or(DEFAULT_DNS_KEEP, |DnsKeep(d)| *d),
        },
        (Some(SourceUrl(url)), _, _, _) => {
            if url.scheme() == "http" && raw.insecure_http != Some(true) {
                let message = "plain http is refused: no list is signed, so integrity rests on TLS; use https, or set insecure_http = true to accept the risk";
                return Err(Problem::key(Some(span), "url", message));
            }
            let format = raw.format(url.path(), &span)?;
            Location::Url {
                url: url.clone(),
                format,
            }
        }
        (_, Some(path), _, _) => {
            let format = raw.format(&path.to_string_lossy(), &span)?;
            Location::File {
                path: path.clone(),
                format,
            }
        }
        (_, _, Some(list), _) => {
            let entries: Vec<String> = list.get_ref().iter().map(|e| e.get_ref().clone()).collect();
            let validated = prefixes::validate(&entries, &id, Trust::Operator, defaults.guards)
                .map_err(|err| {
                    let (PrefixError::Unparseable { entry, .. }
                    | PrefixError::TooBroad { entry, .. }) = &err;
                    let bad = list
                        .get_ref()
                        .iter()
                        .find(|e| e.get_ref().trim() == entry.trim());
                    Problem::at(bad.map_or(list.span(), Spanned::span), err.to_string())
                })?;
            Location::Static(StaticList {
                prefixes: validated.prefixes,
                as_of: raw.as_of.clone(),
                reference: raw.reference.clone(),
            })
        }
        (None, None, None, None) => unreachable!("one kind is set"),
    };
    let fetch = &defaults.fetch;
    let timeout = match kind {
        "dns" => DEFAULT_DNS_TIMEOUT,
        _ => fetch.timeout,
    };
    Ok(Source {
        id,
        provider: provider.to_owned(),
        rule_id,
        location,
        fetch: FetchSettings {
            timeout: raw.timeout.map_or(timeout, Duration::from),
            max_bytes: raw.max_bytes.map_or(fetch.max_bytes, u64::from),
            insecure_http: raw.insecure_http.unwrap_or(false),
            ca_file: raw.ca_file,
            retries: raw.retries.map_or(fetch.retries, u32::from),
            retry_after_limit: fetch.retry_after_limit,
            proxy: raw.proxy.unwrap_or_else(|| fetch.proxy.clone()),
        },
        force: raw.force,
        snapshot: None,
    })
}

impl RawSource {
    /// The format of a url or file source: named, or inferred from the URL path or
    /// file name `location`, with the JSON selection.
    fn format(&self, location: &str, source: &Range<usize>) -> Result<Format, Problem> {
        let lower = location.to_ascii_lowercase();
        let name = match self.format {
            Some(name) => name,
            None if lower.ends_with(".json") => FormatName::Json,
            None if lower.ends_with(".txt") => FormatName::Text,
            None => {
                let message = format!(
                    "cannot infer the format of {location:?}: set format = \"json\" or \"text\""
                );
                return Err(Problem::key(Some(source.clone()), "format", message));
            }
        };
        if name == FormatName::Text {
            let json_only = [
                ("items", self.items.is_some()),
                ("cidr", self.cidr.is_some()),
                ("where", self.filter.is_some()),
                ("serial", self.serial.is_some()),
            ];
            return match json_only.iter().find(|(_, set)| *set) {
                Some(&(key, _)) => {
                    let message = "only applies to JSON sources";
                    Err(Problem::key(Some(source.clone()), key, message))
                }
                None => Ok(Format::Text),
            };
        }
        let items = match &self.items {
            None => vec![String::new()],
            Some(OneOrMany(items)) => (items.iter())
                .map(|path| if path == "." { "" } else { path }.to_owned())
                .collect(),
        };
        let filters = (self.filter.iter().flatten())
            .map(|(field, OneOrMany(values))| RecordFilter {
                field: field.clone(),
                any_of: values.iter().map(|Scalar(v)| v.clone()).collect(),
            })
            .collect();
        Ok(Format::Json(Selector {
            items,
            cidr: self
                .cidr
                .as_ref()
                .map_or_else(Vec::new, |FieldNames(c)| c.clone()),
            filters,
            serial: self.serial.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::http::{DEFAULT_RETRIES, DEFAULT_TIMEOUT};

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
        assert_eq!(config.watch, Watch::default());
        assert_eq!(config.watch.datapath_rate(), DEFAULT_WATCH_RATE);
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
                filters: vec![RecordFilter {
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
        assert_eq!(config.watch.keep, DEFAULT_DENIED_KEEP);
        let snapshot = config.source("s/stripe-webhooks").unwrap().snapshot.clone();
        assert_eq!(snapshot.unwrap().as_of.as_deref(), Some("2026-01-26"));
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
[watch]
rate_per_cpu = 500
keep = "2days"
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
            config.watch,
            Watch {
                enabled: true,
                rate_per_cpu: 500,
                keep: Duration::from_secs(2 * 24 * 3600),
            }
        );
        assert_eq!(config.watch.datapath_rate(), 500);
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
        assert!(msg.contains(":2:") && msg.contains("ports[0]: "), "{msg}");
        let (msg, _, _) = parse_err(
            "interfaces = [\"eth0\"]\n[[provider]]\nname = \"a\"\n[[provider.source]]\nretries = \"three\"\n",
        );
        assert!(msg.contains("provider[0].source[0].retries: "), "{msg}");
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
                "unknown variant `drop`",
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
                "interfaces = [\"eth0\"]\n[watch]\nkeep = \"0s\"\n",
                3,
                "watch.keep",
                "longer than 0s",
            ),
            (
                "interfaces = [\"eth0\"]\n[watch]\nkeep = \"400days\"\n",
                3,
                "watch.keep",
                "longer than the maximum of 366 days",
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
                "interfaces = [\"eth0\"]\n[watch]\nrate_per_cpu = 0\n",
                3,
                "watch.rate_per_cpu",
                "to turn the watch off, set enabled = false",
            ),
            (
                "interfaces = [\"eth0\"]\n[watch]\nrate_per_cpu = 1000001\n",
                3,
                "watch.rate_per_cpu",
                "not a rate between 1 and 1000000",
            ),
            (
                "interfaces = [\"eth0\"]\n[watch]\nenabled = \"yes\"\n",
                3,
                "watch.enabled",
                "invalid type",
            ),
            (
                "interfaces = [\"eth0\"]\n[watch]\nrate = 10\n",
                3,
                "watch.rate",
                "unknown field",
            ),
            (
                "interfaces = [{ name = \"eth0\", mode = \"fast\" }]\n",
                1,
                "interfaces[0].mode",
                "unknown variant `fast`",
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
                "provider[0]",
                "neither a `preset` nor any [[provider.source]]",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"http://example.com/ips.json\"\n",
                5,
                "provider[0].source[0].url",
                "plain http is refused",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"ftp://example.com/ips.json\"\n",
                5,
                "provider[0].source[0].url",
                "unsupported scheme",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://example.com/ips\"\n",
                4,
                "provider[0].source[0].format",
                "cannot infer the format",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://example.com/ips\"\nformat = \"xml\"\n",
                6,
                "provider[0].source[0].format",
                "unknown variant `xml`",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://example.com/ips.txt\"\nitems = \"x\"\n",
                6,
                "provider[0].source[0].items",
                "only applies to JSON",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nstatic = [\"192.0.2.0/24\"]\ntimeout = \"1s\"\n",
                6,
                "provider[0].source[0].timeout",
                "only applies to `url`",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nstatic = [\"192.0.2.0/24\"]\nurl = \"https://example.com/x.json\"\n",
                4,
                "provider[0].source[0]",
                "exactly one of",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nstatic = [\"192.0.2.0/24\",\n  \"not-an-ip\"]\n",
                6,
                "provider[0].source[0].static[1]",
                "\"not-an-ip\" is not an IP address",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nstatic = [\"4.0.0.0/6\"]\n",
                5,
                "provider[0].source[0].static[0]",
                "broader than the /8 floor",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://e.com/x.json\"\nwhere = { a = [[1]] }\n",
                6,
                "provider[0].source[0].where.a[0]",
                "expected a string, number or boolean",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://e.com/x.json\"\ncidr = []\n",
                6,
                "provider[0].source[0].cidr",
                "empty",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://e.com/x.json\"\nretries = -1\n",
                6,
                "provider[0].source[0].retries",
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
    fn dns_sources() {
        let config = parse_ok(&format!(
            r#"{MINIMAL}[[provider]]
name = "adyen"
[[provider.source]]
dns = "Out.Adyen.com"
[[provider.source]]
dns = "events.pagerduty.com."
resolver = "127.0.0.1:5353"
dns_keep = "6h"
timeout = "2s"
retries = 1
force = true
[[provider.source]]
dns = "hooks.example.net"
resolver = "2001:db8::53"
"#
        ));
        let first = config.source("adyen/0").unwrap();
        assert_eq!(
            first.location,
            Location::Dns {
                name: "out.adyen.com".into(),
                resolver: None,
                keep: DEFAULT_DNS_KEEP,
            }
        );
        assert_eq!((first.kind(), first.is_fetched()), ("dns", true));
        assert_eq!(first.trust(), Trust::Remote);
        assert_eq!(
            (first.fetch.timeout, first.fetch.retries),
            (DEFAULT_DNS_TIMEOUT, DEFAULT_RETRIES)
        );
        assert_eq!(first.origin(), "out.adyen.com");
        let second = config.source("adyen/1").unwrap();
        assert_eq!(
            second.location,
            Location::Dns {
                name: "events.pagerduty.com.".into(),
                resolver: Some("127.0.0.1:5353".parse().unwrap()),
                keep: Duration::from_secs(6 * 3600),
            }
        );
        assert_eq!(
            (second.fetch.timeout, second.fetch.retries, second.force),
            (Duration::from_secs(2), 1, true)
        );
        assert_eq!(
            second.origin(),
            "events.pagerduty.com. (via 127.0.0.1:5353)"
        );
        let Location::Dns { resolver, .. } = &config.source("adyen/2").unwrap().location else {
            panic!()
        };
        assert_eq!(*resolver, Some("[2001:db8::53]:53".parse().unwrap()));
        assert_eq!(
            serde_json::to_value(&second.location).unwrap(),
            serde_json::json!({"dns": {
                "name": "events.pagerduty.com.",
                "resolver": "127.0.0.1:5353",
                "keep": "6h",
            }})
        );
    }

    #[test]
    fn dns_source_errors() {
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\ndns = \"out.adyen.com\"\nformat = \"json\"\n",
                6,
                "provider[0].source[0].format",
                "only applies to `url` and `file` sources",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\ndns = \"out.adyen.com\"\nitems = \"x\"\n",
                6,
                "provider[0].source[0].items",
                "only applies to `url` and `file` sources",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\ndns = \"out.adyen.com\"\nproxy = \"none\"\n",
                6,
                "provider[0].source[0].proxy",
                "only applies to `url` sources",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\ndns = \"out.adyen.com\"\nas_of = \"2026-01-01\"\n",
                6,
                "provider[0].source[0].as_of",
                "only applies to `static` sources",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nurl = \"https://e.com/x.json\"\nresolver = \"127.0.0.1\"\n",
                6,
                "provider[0].source[0].resolver",
                "only applies to `dns` sources",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nstatic = [\"192.0.2.1\"]\ndns_keep = \"1h\"\n",
                6,
                "provider[0].source[0].dns_keep",
                "only applies to `dns` sources",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\nstatic = [\"192.0.2.1\"]\nretries = 1\n",
                6,
                "provider[0].source[0].retries",
                "only applies to `url` and `dns` sources",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\ndns = \"out.adyen.com\"\nurl = \"https://e.com/x.json\"\n",
                4,
                "provider[0].source[0]",
                "exactly one of `url`, `file`, `static` or `dns`",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\ndns = \"out..adyen.com\"\n",
                5,
                "provider[0].source[0].dns",
                "not a DNS name",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\ndns = \"https://out.adyen.com\"\n",
                5,
                "provider[0].source[0].dns",
                "not a DNS name",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\ndns = \"192.0.2.1\"\n",
                5,
                "provider[0].source[0].dns",
                "list it with `static`",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\ndns = \"out.adyen.com\"\nresolver = \"dns.example:53\"\n",
                6,
                "provider[0].source[0].resolver",
                "not an address such as",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\ndns = \"out.adyen.com\"\ndns_keep = \"0s\"\n",
                6,
                "provider[0].source[0].dns_keep",
                "longer than 0s",
            ),
            (
                "[[provider]]\nname = \"a\"\n[[provider.source]]\ndns = \"out.adyen.com\"\ndns_keep = \"a day\"\n",
                6,
                "provider[0].source[0].dns_keep",
                "not a duration",
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
        assert_eq!((line, field.as_str()), (4, "provider[0].preset"));
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
    fn a_presets_document_from_another_place() {
        let config = parse_ok(&format!(
            r#"{MINIMAL}[[provider]]
name = "github"
preset = "github-hooks"
url = "https://mirror.internal.example/github-meta.json"   # optional
ca_file = "/etc/allowlist/mirror-ca.pem"                    # optional
timeout = "5s"
retries = 1
max_bytes = 4096
proxy = "none"
"#
        ));
        let source = config.source("github/github-hooks").unwrap();
        let (_, format) = presets::find("github-hooks").unwrap().location().unwrap();
        assert_eq!(
            source.location,
            Location::Url {
                url: Url::parse("https://mirror.internal.example/github-meta.json").unwrap(),
                format,
            }
        );
        assert_eq!(
            source.fetch,
            FetchSettings {
                timeout: Duration::from_secs(5),
                max_bytes: 4096,
                ca_file: Some("/etc/allowlist/mirror-ca.pem".into()),
                retries: 1,
                proxy: Proxy::Direct,
                retry_after_limit: MAX_RETRY_AFTER,
                ..FetchSettings::default()
            }
        );
        assert_eq!(
            source.snapshot,
            parse_ok(&format!(
                "{MINIMAL}[[provider]]\nname = \"github\"\npreset = \"github-hooks\"\n"
            ))
            .source("github/github-hooks")
            .unwrap()
            .snapshot,
            "the snapshot stays"
        );

        // Plain http only with insecure_http.
        let http = "[[provider]]\nname = \"s\"\npreset = \"stripe-webhooks\"\nurl = \"http://mirror.internal/ips.json\"\n";
        let (msg, line, field) = parse_err(&format!("{MINIMAL}{http}"));
        assert_eq!((line, field.as_str()), (5, "provider[0].url"), "{msg}");
        assert!(msg.contains("plain http is refused"), "{msg}");
        let config = parse_ok(&format!("{MINIMAL}{http}insecure_http = true\n"));
        assert!(
            config
                .source("s/stripe-webhooks")
                .unwrap()
                .fetch
                .insecure_http
        );
    }

    #[test]
    fn keys_a_preset_decides_are_refused() {
        for (key, value) in [
            ("items", "\"hooks\""),
            ("cidr", "\"range\""),
            ("where", "{ service = \"X\" }"),
            ("format", "\"json\""),
            ("serial", "\"version\""),
            ("static", "[\"192.0.2.1\"]"),
            ("file", "\"/tmp/list.txt\""),
        ] {
            let (msg, line, field) = parse_err(&format!(
                "{MINIMAL}[[provider]]\nname = \"github\"\npreset = \"github-hooks\"\n{key} = {value}\n"
            ));
            assert_eq!((line, field.as_str()), (5, &*format!("provider[0].{key}")));
            assert!(
                msg.starts_with(&format!(
                    "/etc/allowlist/allowlist.toml:5:{}: provider[0].{key}: does not apply with a `preset`: github-hooks decides",
                    key.len() + 4
                )),
                "{msg}"
            );
        }
        // Fetch keys without a preset, or with a static one.
        let (msg, line, field) = parse_err(&format!(
            "{MINIMAL}[[provider]]\nname = \"p\"\nurl = \"https://ranges.example.net/a.json\"\n[[provider.source]]\nstatic = [\"192.0.2.1\"]\n"
        ));
        assert_eq!((line, field.as_str()), (4, "provider[0].url"));
        assert!(msg.contains("goes in a [[provider.source]]"), "{msg}");
        let (msg, line, field) = parse_err(&format!(
            "{MINIMAL}[[provider]]\nname = \"f\"\npreset = \"freshworks-us\"\nca_file = \"/etc/ca.pem\"\n"
        ));
        assert_eq!((line, field.as_str()), (5, "provider[0].ca_file"));
        assert!(msg.contains("freshworks-us is a static list"), "{msg}");
    }

    #[test]
    fn a_retired_preset_names_its_replacements() {
        let (msg, line, field) = parse_err(&format!(
            "{MINIMAL}[[provider]]\nname = \"a\"\npreset = \"atlassian-egress\"\n"
        ));
        assert_eq!((line, field.as_str()), (4, "provider[0].preset"));
        for replacement in [
            "atlassian-jira",
            "atlassian-confluence",
            "atlassian-bitbucket",
        ] {
            assert!(msg.contains(replacement), "{msg}");
            assert!(presets::find(replacement).is_some());
        }
        assert!(msg.contains("\"atlassian-egress\" was removed"), "{msg}");
    }

    #[test]
    fn where_keys_must_all_hold() {
        let config = parse_ok(&format!(
            r#"{MINIMAL}[[provider]]
name = "atlassian"
[[provider.source]]
url = "https://mirror.internal/ip-ranges.json"
items = "items"
cidr = "cidr"
where = {{ direction = "egress", product = ["jira", "confluence"] }}
"#
        ));
        let Location::Url {
            format: Format::Json(selector),
            ..
        } = &config.source("atlassian/0").unwrap().location
        else {
            panic!("not a JSON url source")
        };
        assert_eq!(
            selector.filters,
            [
                RecordFilter {
                    field: "direction".into(),
                    any_of: vec!["egress".into()],
                },
                RecordFilter {
                    field: "product".into(),
                    any_of: vec!["jira".into(), "confluence".into()],
                },
            ]
        );
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
                "provider[0].source[0].proxy",
                "not a proxy URL",
            ),
            (
                format!("{MINIMAL}{source}proxy = \"http://proxy.internal:3128/path\"\n"),
                6,
                9,
                "provider[0].source[0].proxy",
                "no path",
            ),
            (
                format!("{MINIMAL}{source}proxy = \"\"\n"),
                6,
                9,
                "provider[0].source[0].proxy",
                "not a proxy URL",
            ),
            (
                format!(
                    "{MINIMAL}[[provider]]\nname = \"a\"\n[[provider.source]]\nstatic = [\"192.0.2.1\"]\nproxy = \"none\"\n"
                ),
                6,
                9,
                "provider[0].source[0].proxy",
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
