//! Who a denied source is: the known-sender index.
//!
//! Built from what the agent knows about webhook senders: every built-in preset's
//! snapshot (configured or not), the lists in force of the configured sources, the
//! latest update of each source that a guard refused, and the ranges that sources
//! listed before (removed, with when). A denied source is looked up in it to say, for
//! example, `listed by preset github-hooks, which is not configured`.
//!
//! The lookup is a longest-prefix match by hashing: one hash table per prefix length
//! present, probed from the longest length down (a few dozen probes at most, whatever
//! the number of prefixes), which also yields every match, not only the longest.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::IpAddr,
    time::SystemTime,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use tracing::debug;

use crate::{config::Config, policy::Refresher, sources::presets::Preset, store::rfc3339};

/// Why a known sender's source is denied, most relevant first (the order of the
/// variants ranks the matches of one source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Why {
    /// A configured provider lists it in force: it should pass (a race with a map
    /// sync, or the list changed since the packets were dropped).
    InForce,
    /// In the latest update of a configured source, which a guard refused.
    RefusedUpdate,
    /// A configured source listed it before; its update removed it.
    RemovedRange,
    /// The snapshot of a preset that a provider uses lists it; the provider's
    /// current list does not.
    SnapshotOnly,
    /// A built-in preset lists it, and no provider uses that preset.
    NotConfigured,
}

impl Why {
    /// The metric label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Why::InForce => "in_force",
            Why::RefusedUpdate => "refused_update",
            Why::RemovedRange => "removed_range",
            Why::SnapshotOnly => "snapshot_only",
            Why::NotConfigured => "not_configured",
        }
    }
}

/// Whether the sender is named by a built-in preset or by a configured provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SenderKind {
    Preset,
    Provider,
}

impl SenderKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            SenderKind::Preset => "preset",
            SenderKind::Provider => "provider",
        }
    }
}

/// A provider's, source's, preset's or guard's name, or a snapshot's date, shared by
/// every listing that carries it: a list in force of 100,000 prefixes holds two
/// names, not 200,000 strings.
pub(crate) type Name = std::sync::Arc<str>;

/// One thing known about a source: which list holds it, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub(crate) enum Known {
    InForce {
        provider: Name,
        source: Name,
        prefix: IpNet,
    },
    RefusedUpdate {
        provider: Name,
        source: Name,
        prefix: IpNet,
        #[serde(with = "rfc3339")]
        at: SystemTime,
        /// The guard that refused it (`shrink`, `empty`, ...).
        guard: Name,
    },
    RemovedRange {
        provider: Name,
        source: Name,
        prefix: IpNet,
        #[serde(with = "rfc3339")]
        at: SystemTime,
    },
    SnapshotOnly {
        preset: Name,
        /// The provider that uses the preset.
        provider: Name,
        as_of: Name,
        prefix: IpNet,
    },
    NotConfigured {
        preset: Name,
        as_of: Name,
        prefix: IpNet,
    },
}

impl Known {
    pub(crate) fn why(&self) -> Why {
        match self {
            Known::InForce { .. } => Why::InForce,
            Known::RefusedUpdate { .. } => Why::RefusedUpdate,
            Known::RemovedRange { .. } => Why::RemovedRange,
            Known::SnapshotOnly { .. } => Why::SnapshotOnly,
            Known::NotConfigured { .. } => Why::NotConfigured,
        }
    }

    /// The preset or provider that lists the source (a metric label: bounded by the
    /// presets and the configured providers).
    pub(crate) fn sender(&self) -> &str {
        match self {
            Known::InForce { provider, .. }
            | Known::RefusedUpdate { provider, .. }
            | Known::RemovedRange { provider, .. } => provider,
            Known::SnapshotOnly { preset, .. } | Known::NotConfigured { preset, .. } => preset,
        }
    }

    pub(crate) fn kind(&self) -> SenderKind {
        match self {
            Known::InForce { .. } | Known::RefusedUpdate { .. } | Known::RemovedRange { .. } => {
                SenderKind::Provider
            }
            Known::SnapshotOnly { .. } | Known::NotConfigured { .. } => SenderKind::Preset,
        }
    }

    pub(crate) fn prefix(&self) -> IpNet {
        match self {
            Known::InForce { prefix, .. }
            | Known::RefusedUpdate { prefix, .. }
            | Known::RemovedRange { prefix, .. }
            | Known::SnapshotOnly { prefix, .. }
            | Known::NotConfigured { prefix, .. } => *prefix,
        }
    }

    fn at(&self) -> Option<SystemTime> {
        match self {
            Known::RefusedUpdate { at, .. } | Known::RemovedRange { at, .. } => Some(*at),
            _ => None,
        }
    }

    /// Ranks the matches of one source: the most relevant reason, then the most
    /// specific prefix, then the most recent event.
    fn rank(&self) -> (Why, Reverse<u8>, Reverse<Option<SystemTime>>) {
        (
            self.why(),
            Reverse(self.prefix().prefix_len()),
            Reverse(self.at()),
        )
    }
}

/// `2026-12-01 10:02` (UTC).
pub(crate) fn minutes(t: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(t).to_string();
    text.get(..16).unwrap_or(&text).replacen('T', " ", 1)
}

impl fmt::Display for Known {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Known::InForce {
                provider, prefix, ..
            } => write!(
                f,
                "listed in force by provider {provider} ({prefix}): allowed now (dropped before a sync, or by an older list)"
            ),
            Known::RefusedUpdate {
                provider,
                prefix,
                at,
                guard,
                ..
            } => {
                let guard = guard.strip_suffix(" guard").unwrap_or(guard);
                write!(
                    f,
                    "in {provider}'s update of {}, refused by the {guard} guard ({prefix})",
                    minutes(*at)
                )
            }
            Known::RemovedRange {
                provider,
                prefix,
                at,
                ..
            } => write!(
                f,
                "removed from {provider}'s list at {} ({prefix})",
                minutes(*at)
            ),
            Known::SnapshotOnly {
                preset,
                provider,
                as_of,
                prefix,
            } => write!(
                f,
                "listed by preset {preset}'s snapshot of {as_of} ({prefix}); provider {provider} uses it, but its current list does not"
            ),
            Known::NotConfigured { preset, prefix, .. } => write!(
                f,
                "listed by preset {preset} ({prefix}), which is not configured"
            ),
        }
    }
}

/// At most this many matches are kept per source (the best, then one per other
/// sender and reason).
pub(crate) const MATCHES_KEPT: usize = 4;

/// Prefixes of one address family, by length: `length → network → listings`. A
/// network's listings are a chain through `next` (most prefixes have one listing: no
/// vector each).
#[derive(Debug, Default)]
struct Table {
    by_len: BTreeMap<u8, HashMap<u128, u32>>,
    /// IPv6 prefixes longer than /64, by the /64 that holds them: a denied IPv6
    /// source is a /64, which may hold a listed address (a dns source's /128).
    inside_64: HashMap<u128, u32>,
    /// The listing after each listing in its network's chain (by listing id), in
    /// `by_len` and in `inside_64`.
    next: HashMap<u32, u32>,
    next_inside_64: HashMap<u32, u32>,
}

/// Adds `listing` at the head of `key`'s chain.
fn chain(heads: &mut HashMap<u128, u32>, next: &mut HashMap<u32, u32>, key: u128, listing: u32) {
    if let Some(old) = heads.insert(key, listing) {
        next.insert(listing, old);
    }
}

/// The listings of a chain, in the order they were added.
fn collect(head: u32, next: &HashMap<u32, u32>, out: &mut Vec<u32>) {
    let start = out.len();
    let mut at = Some(head);
    while let Some(listing) = at {
        out.push(listing);
        at = next.get(&listing).copied();
    }
    out[start..].reverse();
}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

/// `value` (of an address `width` bits wide) with only its first `len` bits.
fn masked(value: u128, width: u8, len: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let host_bits = u32::from(width - len);
    (value >> host_bits) << host_bits
}

impl Table {
    fn insert(&mut self, net: IpNet, listing: u32) {
        let (value, width) = bits(net.network());
        let len = net.prefix_len();
        let key = masked(value, width, len);
        chain(
            self.by_len.entry(len).or_default(),
            &mut self.next,
            key,
            listing,
        );
        if width == 128 && len > 64 {
            chain(
                &mut self.inside_64,
                &mut self.next_inside_64,
                masked(value, 128, 64),
                listing,
            );
        }
    }

    /// Every listing whose prefix holds `net` (or, for an IPv6 /64, lies inside it).
    fn find(&self, net: IpNet, out: &mut Vec<u32>) {
        let (value, width) = bits(net.network());
        let len = net.prefix_len();
        for (&l, table) in self.by_len.range(..=len).rev() {
            if let Some(&head) = table.get(&masked(value, width, l)) {
                collect(head, &self.next, out);
            }
        }
        if width == 128
            && len == 64
            && let Some(&head) = self.inside_64.get(&masked(value, 128, 64))
        {
            collect(head, &self.next_inside_64, out);
        }
    }
}

/// What is known about every prefix; see the module's documentation.
#[derive(Debug, Default)]
pub(crate) struct SenderIndex {
    listings: Vec<Known>,
    v4: Table,
    v6: Table,
}

impl SenderIndex {
    /// What the agent knows of webhook senders: every preset's snapshot, the lists in
    /// force, each source's latest refused update and the ranges sources removed, as
    /// the refresher holds them (a history it could not read leaves those out,
    /// logged when it was opened: the index only names denied sources, it never
    /// decides what passes).
    pub(crate) fn gather(config: &Config, refresher: &Refresher) -> SenderIndex {
        let mut index = IndexBuilder::from_config(config);
        index.lists_in_force(config, refresher);
        let history = refresher.history();
        for u in history.refused_updates() {
            index.refused_update(&u.provider, &u.source, u.at, &u.guard, &u.prefixes);
        }
        for r in history.removed_ranges() {
            index.removed_range(&r.provider, &r.source, r.net, r.at);
        }
        let index = index.build();
        debug!(
            prefixes = index.len(),
            "denied sources are matched against the known senders' prefixes"
        );
        index
    }

    /// What is known about `source` (an IPv4 address or an IPv6 /64), most relevant
    /// first (see [`Why`]), one match per sender and reason, at most
    /// [`MATCHES_KEPT`]; empty when nothing is known.
    pub(crate) fn lookup(&self, source: IpNet) -> Vec<Known> {
        let mut found = Vec::new();
        match source {
            IpNet::V4(_) => self.v4.find(source, &mut found),
            IpNet::V6(_) => self.v6.find(source, &mut found),
        }
        let mut matches: Vec<&Known> = found.iter().map(|&i| &self.listings[i as usize]).collect();
        matches.sort_by_key(|k| k.rank());
        let mut seen = HashSet::new();
        matches
            .into_iter()
            .filter(|k| seen.insert((k.why(), k.sender().to_owned())))
            .take(MATCHES_KEPT)
            .cloned()
            .collect()
    }

    /// The number of prefixes indexed.
    pub(crate) fn len(&self) -> usize {
        self.listings.len()
    }

    fn push(&mut self, known: Known) {
        let id = u32::try_from(self.listings.len()).expect("fewer than 2^32 listings");
        match known.prefix() {
            net @ IpNet::V4(_) => self.v4.insert(net, id),
            net @ IpNet::V6(_) => self.v6.insert(net, id),
        }
        self.listings.push(known);
    }
}

/// A refused update, kept until [`IndexBuilder::build`] knows whether it is the
/// source's latest.
#[derive(Debug)]
struct Refused {
    provider: Name,
    at: SystemTime,
    guard: Name,
    prefixes: Vec<IpNet>,
}

/// Collects what the agent knows into a [`SenderIndex`]. Plain inputs, so that the
/// caller maps its own types (the refresher's lists, the history's records) onto it.
#[derive(Debug, Default)]
pub(crate) struct IndexBuilder {
    index: SenderIndex,
    /// Preset → the provider that uses it.
    configured_presets: HashMap<String, String>,
    /// The configured sources; `None` takes every source given.
    configured_sources: Option<HashSet<String>>,
    /// When each source's list in force was fetched.
    fetched_at: HashMap<String, SystemTime>,
    /// The latest refused update of each source.
    refused: HashMap<String, Refused>,
}

impl IndexBuilder {
    /// Every built-in preset's snapshot, the presets `config` uses told apart; only
    /// `config`'s sources are then taken.
    pub(crate) fn from_config(config: &Config) -> Self {
        let configured: Vec<(&str, &str)> = config
            .providers
            .iter()
            .filter_map(|p| Some((p.preset.as_deref()?, p.name.as_str())))
            .collect();
        let mut builder = Self::with_presets(crate::sources::presets::all(), &configured);
        builder.configured_sources = Some(config.sources().map(|s| s.id.clone()).collect());
        builder
    }

    /// `presets`' snapshots; `configured` pairs a preset with the provider using it.
    pub(crate) fn with_presets(presets: &[Preset], configured: &[(&str, &str)]) -> Self {
        let mut builder = Self {
            configured_presets: configured
                .iter()
                .map(|&(preset, provider)| (preset.to_owned(), provider.to_owned()))
                .collect(),
            ..Self::default()
        };
        for preset in presets {
            let Some(snapshot) = &preset.snapshot else {
                continue;
            };
            let name = Name::from(preset.name);
            let as_of = Name::from(snapshot.as_of);
            let provider = builder
                .configured_presets
                .get(preset.name)
                .map(|p| Name::from(p.as_str()));
            for entry in snapshot.entries {
                // The snapshots are checked by the presets' own tests.
                let Ok(prefix) = entry.parse::<IpNet>() else {
                    continue;
                };
                let prefix = prefix.trunc();
                let known = match &provider {
                    Some(provider) => Known::SnapshotOnly {
                        preset: name.clone(),
                        provider: provider.clone(),
                        as_of: as_of.clone(),
                        prefix,
                    },
                    None => Known::NotConfigured {
                        preset: name.clone(),
                        as_of: as_of.clone(),
                        prefix,
                    },
                };
                builder.index.push(known);
            }
        }
        builder
    }

    fn configured(&self, source: &str) -> bool {
        self.configured_sources
            .as_ref()
            .is_none_or(|s| s.contains(source))
    }

    /// A configured source's list in force, fetched at `fetched_at` (`None`: a
    /// snapshot or static list).
    pub(crate) fn in_force(
        &mut self,
        provider: &str,
        source: &str,
        prefixes: &[IpNet],
        fetched_at: Option<SystemTime>,
    ) {
        if !self.configured(source) {
            return;
        }
        if let Some(at) = fetched_at {
            self.fetched_at.insert(source.to_owned(), at);
        }
        let (provider, source) = (Name::from(provider), Name::from(source));
        for prefix in prefixes {
            self.index.push(Known::InForce {
                provider: provider.clone(),
                source: source.clone(),
                prefix: prefix.trunc(),
            });
        }
    }

    /// Every configured source's list in force, as the refresher holds it.
    pub(crate) fn lists_in_force(&mut self, config: &Config, refresher: &Refresher) {
        for source in config.sources() {
            let Some(prefixes) = refresher.source_prefixes(&source.id) else {
                continue;
            };
            let fetched_at = (refresher.source_status(&source.id)).and_then(|s| s.fetched_at);
            self.in_force(&source.provider, &source.id, prefixes, fetched_at);
        }
    }

    /// An update of `source` that `guard` refused at `at`. Only each source's latest
    /// is kept, and only if no list in force was fetched after it.
    pub(crate) fn refused_update(
        &mut self,
        provider: &str,
        source: &str,
        at: SystemTime,
        guard: &str,
        prefixes: &[IpNet],
    ) {
        if !self.configured(source) {
            return;
        }
        if self.refused.get(source).is_some_and(|r| r.at >= at) {
            return;
        }
        self.refused.insert(
            source.to_owned(),
            Refused {
                provider: Name::from(provider),
                at,
                guard: Name::from(guard),
                prefixes: prefixes.to_vec(),
            },
        );
    }

    /// A range that `source` listed until `at`.
    pub(crate) fn removed_range(
        &mut self,
        provider: &str,
        source: &str,
        prefix: IpNet,
        at: SystemTime,
    ) {
        self.index.push(Known::RemovedRange {
            provider: Name::from(provider),
            source: Name::from(source),
            prefix: prefix.trunc(),
            at,
        });
    }

    pub(crate) fn build(mut self) -> SenderIndex {
        let mut refused: Vec<(String, Refused)> =
            std::mem::take(&mut self.refused).into_iter().collect();
        refused.sort_by(|a, b| a.0.cmp(&b.0));
        for (source, update) in refused {
            if self.fetched_at.get(&source).is_some_and(|&f| f > update.at) {
                continue;
            }
            let source = Name::from(source);
            for prefix in &update.prefixes {
                self.index.push(Known::RefusedUpdate {
                    provider: update.provider.clone(),
                    source: source.clone(),
                    prefix: prefix.trunc(),
                    at: update.at,
                    guard: update.guard.clone(),
                });
            }
        }
        self.index
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000 + secs)
    }

    fn config(extra: &str) -> Config {
        let text = format!(
            "interfaces = [\"eth0\"]\n[[provider]]\nname = \"partner\"\n[[provider.source]]\nurl = \"https://ranges.example.net/ips.txt\"\n{extra}"
        );
        crate::config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_unconfigured_presets_snapshot_names_the_preset() {
        let index = IndexBuilder::from_config(&config("")).build();
        // 140.82.112.0/20 is in github-hooks' snapshot.
        let found = index.lookup(net("140.82.115.7/32"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].why(), Why::NotConfigured);
        assert_eq!(found[0].sender(), "github-hooks");
        assert_eq!(found[0].kind(), SenderKind::Preset);
        assert_eq!(
            found[0].to_string(),
            "listed by preset github-hooks (140.82.112.0/20), which is not configured"
        );
        // An IPv6 /64 inside 2606:50c0::/32.
        let found = index.lookup(net("2606:50c0:8000:1::/64"));
        assert_eq!(found[0].sender(), "github-hooks");
    }

    #[test]
    fn a_configured_presets_snapshot_is_not_called_unconfigured() {
        let config = config("[[provider]]\nname = \"gh\"\npreset = \"github-hooks\"\n");
        let index = IndexBuilder::from_config(&config).build();
        let found = index.lookup(net("140.82.115.7/32"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].why(), Why::SnapshotOnly);
        assert!(
            found[0].to_string().contains("provider gh uses it"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn nothing_known_is_empty() {
        let mut builder = IndexBuilder::from_config(&config(""));
        builder.removed_range("partner", "partner/0", net("192.0.2.0/25"), t(0));
        let index = builder.build();
        assert!(index.lookup(net("192.0.2.200/32")).is_empty());
        assert!(index.lookup(net("198.51.100.1/32")).is_empty());
        assert!(index.lookup(net("2001:db8::/64")).is_empty());
    }

    #[test]
    fn a_refused_update_names_the_provider_the_time_and_the_guard() {
        let mut builder = IndexBuilder::from_config(&config(""));
        builder.in_force("partner", "partner/0", &[net("192.0.2.0/26")], Some(t(0)));
        builder.refused_update(
            "partner",
            "partner/0",
            t(60),
            "shrink",
            &[net("198.51.100.0/24")],
        );
        let index = builder.build();
        let found = index.lookup(net("198.51.100.9/32"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].why(), Why::RefusedUpdate);
        assert_eq!(found[0].kind(), SenderKind::Provider);
        assert_eq!(
            found[0].to_string(),
            format!(
                "in partner's update of {}, refused by the shrink guard (198.51.100.0/24)",
                minutes(t(60))
            )
        );
    }

    #[test]
    fn only_the_latest_refused_update_counts_and_not_once_superseded() {
        let mut builder = IndexBuilder::from_config(&config(""));
        builder.refused_update(
            "partner",
            "partner/0",
            t(60),
            "shrink",
            &[net("198.51.100.0/24")],
        );
        builder.refused_update(
            "partner",
            "partner/0",
            t(120),
            "empty",
            &[net("203.0.113.0/24")],
        );
        builder.refused_update(
            "partner",
            "partner/0",
            t(90),
            "shrink",
            &[net("192.0.2.0/24")],
        );
        // A source that is not configured is ignored.
        builder.refused_update("gone", "gone/0", t(60), "shrink", &[net("192.0.2.0/24")]);
        let index = builder.build();
        assert!(index.lookup(net("198.51.100.9/32")).is_empty());
        assert!(index.lookup(net("192.0.2.9/32")).is_empty());
        assert_eq!(
            index.lookup(net("203.0.113.9/32"))[0].why(),
            Why::RefusedUpdate
        );

        // An update accepted after the refusal supersedes it.
        let mut builder = IndexBuilder::from_config(&config(""));
        builder.refused_update(
            "partner",
            "partner/0",
            t(60),
            "shrink",
            &[net("198.51.100.0/24")],
        );
        builder.in_force("partner", "partner/0", &[net("192.0.2.0/26")], Some(t(61)));
        assert!(builder.build().lookup(net("198.51.100.9/32")).is_empty());
    }

    #[test]
    fn a_removed_range_says_when_the_most_recent_removal_first() {
        let mut builder = IndexBuilder::from_config(&config(""));
        builder.removed_range("partner", "partner/0", net("203.0.113.0/24"), t(0));
        builder.removed_range("partner", "partner/0", net("203.0.113.0/24"), t(3600));
        let index = builder.build();
        let found = index.lookup(net("203.0.113.77/32"));
        assert_eq!(found.len(), 1, "one per sender and reason: {found:?}");
        assert_eq!(
            found[0].to_string(),
            format!(
                "removed from partner's list at {} (203.0.113.0/24)",
                minutes(t(3600))
            )
        );
    }

    #[test]
    fn the_most_relevant_match_comes_first_and_the_others_follow() {
        let mut builder = IndexBuilder::from_config(&config(""));
        // A removed range inside github-hooks' snapshot, and a refused update.
        builder.removed_range("partner", "partner/0", net("140.82.112.0/24"), t(0));
        builder.refused_update(
            "partner",
            "partner/0",
            t(10),
            "shrink",
            &[net("140.82.112.0/22")],
        );
        let index = builder.build();
        let found = index.lookup(net("140.82.112.1/32"));
        let whys: Vec<Why> = found.iter().map(Known::why).collect();
        assert_eq!(
            whys,
            [Why::RefusedUpdate, Why::RemovedRange, Why::NotConfigured]
        );
        // Outside the refused and removed ranges, only the preset.
        let found = index.lookup(net("140.82.120.1/32"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].why(), Why::NotConfigured);
        // Within one reason, the longest prefix wins.
        let mut builder = IndexBuilder::from_config(&config(""));
        builder.removed_range("a", "partner/0", net("198.51.100.0/24"), t(5));
        builder.removed_range("b", "partner/0", net("198.51.100.0/28"), t(0));
        let found = builder.build().lookup(net("198.51.100.3/32"));
        assert_eq!(found[0].sender(), "b");
        assert_eq!(found[1].sender(), "a");
    }

    #[test]
    fn a_source_in_force_says_it_should_pass() {
        let mut builder = IndexBuilder::from_config(&config(""));
        builder.in_force("partner", "partner/0", &[net("192.0.2.0/24")], None);
        builder.removed_range("partner", "partner/0", net("192.0.2.0/24"), t(0));
        let found = builder.build().lookup(net("192.0.2.1/32"));
        assert_eq!(found[0].why(), Why::InForce);
        assert_eq!(found[1].why(), Why::RemovedRange);
    }

    #[test]
    fn the_refreshers_lists_in_force_are_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "interfaces = [\"eth0\"]\nstate_dir = \"{}\"\n[[provider]]\nname = \"office\"\n[[provider.source]]\nstatic = [\"192.0.2.0/24\"]\n",
            dir.path().join("state").display()
        );
        let config = crate::config::parse(&text, Path::new("test.toml")).unwrap();
        let mut refresher =
            Refresher::new(&config, crate::sources::http::Fetcher::default()).unwrap();
        refresher.bootstrap();
        let mut builder = IndexBuilder::from_config(&config);
        builder.lists_in_force(&config, &refresher);
        let found = builder.build().lookup(net("192.0.2.77/32"));
        assert_eq!(
            found,
            [Known::InForce {
                provider: "office".into(),
                source: "office/0".into(),
                prefix: net("192.0.2.0/24"),
            }]
        );
    }

    #[test]
    fn an_ipv6_source_is_a_64_that_may_hold_a_listed_address() {
        let mut builder = IndexBuilder::from_config(&config(""));
        builder.removed_range("partner", "partner/0", net("2001:db8:1:2::5/128"), t(0));
        builder.removed_range("partner", "partner/0", net("2001:db8::/32"), t(9));
        let index = builder.build();
        let found = index.lookup(net("2001:db8:1:2::/64"));
        let prefixes: Vec<IpNet> = found.iter().map(Known::prefix).collect();
        assert_eq!(
            prefixes,
            [net("2001:db8:1:2::5/128")],
            "one per sender and reason"
        );
        let found = index.lookup(net("2001:db8:1:3::/64"));
        assert_eq!(found[0].prefix(), net("2001:db8::/32"));
        assert!(index.lookup(net("2001:db9::/64")).is_empty());
    }

    #[test]
    fn a_hundred_thousand_prefixes_are_indexed_and_found() {
        let mut builder = IndexBuilder::from_config(&config(""));
        let mut removed = Vec::new();
        for i in 0..100_000u32 {
            // /28s spread over 10.0.0.0/8 (as if an operator's file source listed them).
            let base = std::net::Ipv4Addr::from((10 << 24) | (i << 4));
            let prefix = IpNet::new(IpAddr::V4(base), 28).unwrap();
            removed.push(prefix);
            builder.removed_range("partner", "partner/0", prefix, t(u64::from(i)));
        }
        let index = builder.build();
        assert!(index.len() >= 100_000);
        for (i, prefix) in removed.iter().enumerate().step_by(997) {
            let inside = IpNet::new(
                match prefix.network() {
                    IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 7).into()),
                    IpAddr::V6(_) => unreachable!(),
                },
                32,
            )
            .unwrap();
            let found = index.lookup(inside);
            assert_eq!(found.len(), 1, "{inside}");
            assert_eq!(found[0].prefix(), *prefix);
            assert_eq!(found[0].rank().2, Reverse(Some(t(i as u64))));
        }
    }
}
