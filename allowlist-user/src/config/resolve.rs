//! The resolve pass: the rules that tie keys together, from the raw form to a
//! [`Config`].

use std::{
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use reqwest::Url;
use toml::Spanned;

use crate::{
    prefixes::{self, PrefixError, Trust},
    sources::{
        http::{FetchSettings, MAX_RETRY_AFTER, Proxy},
        presets::Preset,
    },
};

use super::{locate::*, raw::*, values::*, *};

pub(super) fn resolve(raw: RawConfig, origin: &Path) -> Result<Config, Problem> {
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
pub(super) struct Defaults<'a> {
    pub(super) guards: &'a Guards,
    /// What every url source starts from; its own keys override.
    pub(super) fetch: FetchSettings,
}

pub(super) fn resolve_provider(
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
    let preset = raw.preset.as_ref().map(|&PresetRef(p)| p);
    check_preset_keys(&raw, preset, &span)?;
    if let Some(SourceUrl(url)) = &raw.url {
        refuse_plain_http(url, raw.insecure_http, &span)?;
    }
    let ProviderName(name) = raw.name;
    let mut sources = Vec::new();
    if let Some(preset) = preset {
        let fetch = FetchKeys {
            timeout: raw.timeout,
            max_bytes: raw.max_bytes,
            insecure_http: raw.insecure_http,
            ca_file: raw.ca_file,
            retries: raw.retries,
            proxy: raw.proxy,
        };
        let fetch = fetch.over(&defaults.fetch, defaults.fetch.timeout);
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

pub(super) const PLAIN_HTTP: &str = "plain http is refused: no list is signed, so integrity rests on TLS; use https, or set insecure_http = true to accept the risk";

/// A preset's source: its URL (or `url`, the same document from another place) and
/// selection, or its list, and its dated snapshot.
pub(super) fn preset_source(
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

pub(super) fn resolve_source(
    provider: &str,
    rule_id: u32,
    id: String,
    raw: Spanned<RawSource>,
    defaults: &Defaults<'_>,
) -> Result<Source, Problem> {
    let span = raw.span();
    let raw = raw.into_inner();
    let given = Given::of(&raw, &span)?;
    let kind = given.kind();
    check_applies(&raw, kind, &span)?;
    let location = locate(given, &raw, &id, defaults, &span)?;
    let timeout = match kind {
        SourceKind::Dns => DEFAULT_DNS_TIMEOUT,
        SourceKind::Url | SourceKind::File | SourceKind::Static => defaults.fetch.timeout,
    };
    let fetch = FetchKeys {
        timeout: raw.timeout,
        max_bytes: raw.max_bytes,
        insecure_http: raw.insecure_http,
        ca_file: raw.ca_file,
        retries: raw.retries,
        proxy: raw.proxy,
    };
    Ok(Source {
        id,
        provider: provider.to_owned(),
        rule_id,
        location,
        fetch: fetch.over(&defaults.fetch, timeout),
        force: raw.force,
        snapshot: None,
    })
}

/// Refuses a provider's key that belongs in a [[provider.source]], or that its
/// preset decides.
fn check_preset_keys(
    raw: &RawProvider,
    preset: Option<&'static Preset>,
    span: &Range<usize>,
) -> Result<(), Problem> {
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
    if let Some(key) = first_set(&decided) {
        let message = match preset {
            Some(p) => format!(
                "does not apply with a `preset`: {} decides how its document is read; only where it is fetched from (url, ca_file, timeout, retries, max_bytes, insecure_http, proxy) may change. For a list of your own, add a [[provider.source]]",
                p.name
            ),
            None => "belongs in a [[provider.source]]".to_owned(),
        };
        return Err(Problem::key(Some(span.clone()), key, message));
    }
    match (preset, first_set(&fetch_keys)) {
        (None, Some(key)) => {
            let message = "applies to a `preset`'s document only: a list of your own goes in a [[provider.source]]";
            return Err(Problem::key(Some(span.clone()), key, message));
        }
        (Some(p), Some(key)) if p.location().is_none() => {
            let message = format!("{} is a static list: there is no document to fetch", p.name);
            return Err(Problem::key(Some(span.clone()), key, message));
        }
        _ => {}
    }
    Ok(())
}

/// Refuses a key set on a kind of source it does not apply to.
fn check_applies(raw: &RawSource, kind: SourceKind, span: &Range<usize>) -> Result<(), Problem> {
    use SourceKind::{Dns, File, Static, Url};
    let (url, fetched, listed): (&[SourceKind], &[SourceKind], &[SourceKind]) =
        (&[Url], &[Url, File], &[Static]);
    let (asked, dns): (&[SourceKind], &[SourceKind]) = (&[Url, Dns], &[Dns]);
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
    let Some(&(key, _, kinds)) =
        (keys.iter()).find(|(_, set, kinds)| *set && !kinds.contains(&kind))
    else {
        return Ok(());
    };
    let message = match kinds {
        [only] => format!("only applies to `{only}` sources"),
        _ if kind == Static && kinds == fetched => "does not apply to a `static` list".to_owned(),
        [first, second] => format!("only applies to `{first}` and `{second}` sources"),
        _ => format!("does not apply to a `{kind}` source"),
    };
    Err(Problem::key(Some(span.clone()), key, message))
}

/// Where a source's list comes from, checked: a url's scheme, a static list's
/// prefixes, a document's format.
fn locate(
    given: Given<'_>,
    raw: &RawSource,
    id: &str,
    defaults: &Defaults<'_>,
    span: &Range<usize>,
) -> Result<Location, Problem> {
    Ok(match given {
        Given::Dns(name) => Location::Dns {
            name: name.clone(),
            resolver: raw.resolver.as_ref().map(|Nameserver(addr)| *addr),
            keep: (raw.dns_keep.as_ref()).map_or(DEFAULT_DNS_KEEP, |DnsKeep(d)| *d),
        },
        Given::Url(url) => {
            refuse_plain_http(url, raw.insecure_http, span)?;
            let format = raw.format(url.path(), span)?;
            Location::Url {
                url: url.clone(),
                format,
            }
        }
        Given::File(path) => {
            let format = raw.format(&path.to_string_lossy(), span)?;
            Location::File {
                path: path.clone(),
                format,
            }
        }
        Given::Static(list) => {
            let entries: Vec<String> = list.get_ref().iter().map(|e| e.get_ref().clone()).collect();
            let validated = prefixes::validate(&entries, id, Trust::Operator, defaults.guards)
                .map_err(|err| {
                    let (PrefixError::Unparseable { entry, .. }
                    | PrefixError::TooBroad { entry, .. }) = &err;
                    let bad = (list.get_ref().iter()).find(|e| e.get_ref().trim() == entry.trim());
                    Problem::at(bad.map_or(list.span(), Spanned::span), err.to_string())
                })?;
            Location::Static(StaticList {
                prefixes: validated.prefixes,
                as_of: raw.as_of.clone(),
                reference: raw.reference.clone(),
            })
        }
    })
}

/// A url with plain http, unless the operator accepted the risk.
fn refuse_plain_http(
    url: &Url,
    insecure_http: Option<bool>,
    span: &Range<usize>,
) -> Result<(), Problem> {
    if url.scheme() == "http" && insecure_http != Some(true) {
        return Err(Problem::key(Some(span.clone()), "url", PLAIN_HTTP));
    }
    Ok(())
}

/// The keys of a provider (for its preset's document) or of a source that change
/// how a document is fetched.
struct FetchKeys {
    timeout: Option<Timeout>,
    max_bytes: Option<MaxBytes>,
    insecure_http: Option<bool>,
    ca_file: Option<PathBuf>,
    retries: Option<Retries>,
    proxy: Option<Proxy>,
}

impl FetchKeys {
    /// The top level's settings with these keys over them; `timeout` is the
    /// default for the kind of source.
    fn over(self, defaults: &FetchSettings, timeout: Duration) -> FetchSettings {
        FetchSettings {
            timeout: self.timeout.map_or(timeout, Duration::from),
            max_bytes: self.max_bytes.map_or(defaults.max_bytes, u64::from),
            insecure_http: self.insecure_http.unwrap_or(false),
            ca_file: self.ca_file,
            retries: self.retries.map_or(defaults.retries, u32::from),
            retry_after_limit: defaults.retry_after_limit,
            proxy: self.proxy.unwrap_or_else(|| defaults.proxy.clone()),
        }
    }
}

/// The one key that makes a source what it is, with its value.
#[derive(Clone, Copy)]
enum Given<'a> {
    Url(&'a Url),
    File(&'a PathBuf),
    Static(&'a Spanned<Vec<Spanned<String>>>),
    Dns(&'a String),
}

impl<'a> Given<'a> {
    fn of(raw: &'a RawSource, span: &Range<usize>) -> Result<Self, Problem> {
        match (&raw.url, &raw.file, &raw.inline, &raw.dns) {
            (Some(SourceUrl(url)), None, None, None) => Ok(Given::Url(url)),
            (None, Some(path), None, None) => Ok(Given::File(path)),
            (None, None, Some(list), None) => Ok(Given::Static(list)),
            (None, None, None, Some(DnsName(name))) => Ok(Given::Dns(name)),
            _ => {
                let message = "a source needs exactly one of `url`, `file`, `static` or `dns`";
                Err(Problem::at(span.clone(), message))
            }
        }
    }

    fn kind(self) -> SourceKind {
        match self {
            Given::Url(_) => SourceKind::Url,
            Given::File(_) => SourceKind::File,
            Given::Static(_) => SourceKind::Static,
            Given::Dns(_) => SourceKind::Dns,
        }
    }
}
