//! Built-in providers: where each publishes its list, how to read it, and a dated
//! snapshot of it: in force until the first successful fetch, or, where the provider
//! publishes no machine-readable list, the list itself.

mod catalogue;
mod snapshots;

use std::fmt;

use catalogue::{PRESETS, RETIRED};

use ipnet::IpNet;
use reqwest::Url;

use crate::{
    prefixes::{self, Floors, PrefixError, Trust},
    sources::format::{
        Format,
        json::{RecordFilter, Selector, display_path},
    },
};

/// A built-in provider, used as `preset = "<name>"` in the configuration.
#[derive(Debug)]
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    pub source: PresetSource,
    /// A dated list that is in force until the first successful fetch (or, for a
    /// static preset, the list itself).
    pub snapshot: Option<Snapshot>,
}

/// Where a preset's list comes from.
#[derive(Debug)]
pub enum PresetSource {
    /// A JSON document fetched over HTTPS.
    Json {
        url: &'static str,
        items: &'static [&'static str],
        /// Empty: the items are strings.
        cidr: &'static [&'static str],
        /// Fields and values a record must all hold (each a scalar equal to the
        /// value or an array containing it).
        filters: &'static [(&'static str, &'static str)],
        /// Path of the provider's document version, if it has one.
        serial: Option<&'static str>,
    },
    /// No machine-readable list: the snapshot is the list.
    Static,
}

/// A dated list copied from the provider's document or documentation.
#[derive(Debug)]
pub struct Snapshot {
    /// When the list was copied (or the date the provider gives it).
    pub as_of: &'static str,
    /// The document or page it was copied from.
    pub reference: &'static str,
    pub entries: &'static [&'static str],
}

impl Preset {
    /// The URLs the preset fetches (none for a static preset).
    pub fn urls(&self) -> Vec<&'static str> {
        match self.source {
            PresetSource::Json { url, .. } => vec![url],
            PresetSource::Static => Vec::new(),
        }
    }

    /// Where the preset's list is published and how it is read; `None` for a static
    /// preset, whose snapshot is the list.
    pub fn location(&self) -> Option<(Url, Format)> {
        let PresetSource::Json {
            url,
            items,
            cidr,
            filters,
            serial,
        } = self.source
        else {
            return None;
        };
        let selector = Selector {
            items: items.iter().map(|s| s.to_string()).collect(),
            cidr: cidr.iter().map(|s| s.to_string()).collect(),
            filters: (filters.iter())
                .map(|&(field, value)| RecordFilter {
                    field: field.to_owned(),
                    any_of: vec![value.into()],
                })
                .collect(),
            serial: serial.map(str::to_owned),
        };
        let url = Url::parse(url).expect("preset URLs are valid");
        Some((url, Format::Json(selector)))
    }

    /// What the preset selects in its document, as `allowlist presets` shows it:
    /// `items[].cidr where direction has "egress" and product has "jira"`.
    pub fn selects(&self) -> String {
        let PresetSource::Json {
            items,
            cidr,
            filters,
            ..
        } = self.source
        else {
            return "the list itself (static)".to_owned();
        };
        let mut shown = (items.iter())
            .map(|path| match cidr {
                [] => display_path(path).to_owned(),
                _ => format!("{}[].{}", display_path(path), cidr.join("|")),
            })
            .collect::<Vec<_>>()
            .join(" + ");
        for (i, (field, value)) in filters.iter().enumerate() {
            let joint = if i == 0 { "where" } else { "and" };
            shown.push_str(&format!(" {joint} {field} has {value:?}"));
        }
        shown
    }
}

impl Snapshot {
    /// The list, validated (as an operator's list) against the prefix floors and
    /// aggregated; `source_id` names it in an error.
    pub fn prefixes(
        &self,
        source_id: &str,
        floors: impl Into<Floors>,
    ) -> Result<Vec<IpNet>, PrefixError> {
        let entries: Vec<String> = self.entries.iter().map(|e| e.to_string()).collect();
        prefixes::validate(&entries, source_id, Trust::Operator, floors).map(|v| v.prefixes)
    }

    /// Its size: `6 prefixes (4 IPv4 covering 10240 addresses, 2 IPv6)`.
    pub fn size(&self) -> String {
        let nets: Vec<IpNet> = (self.entries.iter())
            .map(|e| e.parse().expect("snapshot entries are prefixes"))
            .collect();
        let v4: Vec<_> = (nets.iter())
            .filter_map(|n| match n {
                IpNet::V4(v4) => Some(v4),
                IpNet::V6(_) => None,
            })
            .collect();
        let addresses: u64 = v4.iter().map(|n| 1u64 << (32 - n.prefix_len())).sum();
        let prefixes = |n: usize| if n == 1 { "prefix" } else { "prefixes" };
        let mut size = format!(
            "{} {} ({} IPv4 covering {addresses} addresses",
            nets.len(),
            prefixes(nets.len()),
            v4.len()
        );
        let v6 = nets.len() - v4.len();
        if v6 > 0 {
            size.push_str(&format!(", {v6} IPv6"));
        }
        size.push(')');
        size
    }
}

impl fmt::Display for Preset {
    /// What `allowlist presets` prints for it: name, description, URL, what it
    /// selects, and its snapshot's date and size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<22} {}", self.name, self.description)?;
        for url in self.urls() {
            write!(f, "\n{:<22}   {url}", "")?;
        }
        write!(f, "\n{:<22}   selects: {}", "", self.selects())?;
        match &self.snapshot {
            Some(snapshot) => write!(
                f,
                "\n{:<22}   snapshot as of {}: {}; {}",
                "",
                snapshot.as_of,
                snapshot.size(),
                snapshot.reference
            ),
            None => write!(
                f,
                "\n{:<22}   no snapshot: nothing is allowed for it until its first fetch succeeds",
                ""
            ),
        }
    }
}

/// Every built-in preset.
pub fn all() -> &'static [Preset] {
    PRESETS
}

/// The preset of that name.
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// The names of all presets, for error messages.
pub(crate) fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// Why a preset that no longer exists was removed, and what replaces it.
pub(crate) fn retired(name: &str) -> Option<&'static str> {
    RETIRED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Guards;
    use std::collections::{BTreeSet, HashSet};

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for preset in all() {
            assert!(seen.insert(preset.name), "duplicate preset {}", preset.name);
            assert!(
                preset
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
            assert!(preset.urls().iter().all(|u| u.starts_with("https://")));
            assert!(retired(preset.name).is_none(), "{}", preset.name);
            if matches!(preset.source, PresetSource::Static) {
                assert!(
                    preset.snapshot.is_some(),
                    "{} is static without a list",
                    preset.name
                );
            }
        }
        assert!(find("intercom-us").is_some());
        assert!(find("intercom").is_none());
        assert!(find("atlassian-egress").is_none());
    }

    fn snapshot(name: &str) -> BTreeSet<&'static str> {
        let preset = find(name).unwrap_or_else(|| panic!("no preset {name}"));
        let snapshot = preset.snapshot.as_ref().unwrap();
        snapshot.entries.iter().copied().collect()
    }

    fn set(entries: &[&'static str]) -> BTreeSet<&'static str> {
        entries.iter().copied().collect()
    }

    /// The seeds the project was created from (Intercom's webhook page, seed 001: the
    /// legacy static IPs, which the 2026-01-29 documents' outbound ranges equal;
    /// Freshworks' help centre, seed 004), address for address.
    #[test]
    fn snapshots_match_the_seeds() {
        assert_eq!(
            snapshot("intercom-us"),
            set(&[
                "34.231.68.152/32",
                "34.197.76.213/32",
                "35.171.78.91/32",
                "35.169.138.21/32",
                "52.70.27.159/32",
                "52.44.63.161/32",
            ])
        );
        assert_eq!(
            snapshot("intercom-eu"),
            set(&["54.217.125.63/32", "54.246.173.113/32", "54.216.9.3/32"])
        );
        assert_eq!(
            snapshot("intercom-au"),
            set(&["52.63.36.185/32", "3.104.68.152/32", "52.64.2.165/32"])
        );
        let range = |prefix: &str, last: std::ops::RangeInclusive<u8>| {
            last.map(|i| format!("{prefix}.{i}/32")).collect::<Vec<_>>()
        };
        let owned = |name| {
            snapshot(name)
                .into_iter()
                .map(str::to_owned)
                .collect::<BTreeSet<String>>()
        };
        let listed = |fixed: &[&str], more: Vec<String>| {
            (fixed.iter().map(|s| s.to_string()))
                .chain(more)
                .collect::<BTreeSet<String>>()
        };
        assert_eq!(
            owned("freshworks-us"),
            listed(
                &[
                    "52.1.37.96/32",
                    "52.1.32.88/32",
                    "18.208.240.77/32",
                    "52.201.75.8/32",
                    "34.231.139.135/32",
                    "34.231.245.167/32"
                ],
                range("44.206.73", 232..=239)
            )
        );
        assert_eq!(
            owned("freshworks-eu"),
            listed(
                &[
                    "18.184.146.22/32",
                    "18.197.127.133/32",
                    "3.71.140.232/32",
                    "52.29.254.13/32",
                    "52.57.253.205/32",
                    "18.194.170.216/32"
                ],
                range("3.74.148", 8..=11)
            )
        );
        assert_eq!(
            owned("freshworks-in"),
            listed(
                &[
                    "13.232.152.211/32",
                    "52.66.184.184/32",
                    "35.154.161.243/32",
                    "13.126.85.255/32",
                    "13.234.127.182/32"
                ],
                range("43.204.166", 208..=211)
            )
        );
        assert_eq!(
            owned("freshworks-au"),
            listed(
                &[
                    "3.105.197.171/32",
                    "13.210.157.231/32",
                    "54.206.10.178/32",
                    "3.104.16.220/32",
                    "13.238.97.24/32",
                    "13.238.188.219/32"
                ],
                range("3.26.254", 196..=199)
            )
        );
    }

    /// Every snapshot is dated, names its reference, and is a list the default
    /// guards accept as it is: canonical prefixes, no duplicates, no bogons.
    #[test]
    fn snapshots_are_dated_canonical_and_admitted() {
        for preset in all() {
            let Some(snapshot) = &preset.snapshot else {
                continue;
            };
            let name = preset.name;
            assert!(!snapshot.as_of.is_empty() && !snapshot.reference.is_empty());
            assert!(snapshot.as_of.starts_with("20"), "{name}");
            let mut seen = HashSet::new();
            for entry in snapshot.entries {
                let (net, normalised) = prefixes::parse_entry(entry).unwrap();
                assert!(!normalised, "{name}: {entry}");
                assert_eq!(net.to_string(), *entry, "{name}: written as parsed");
                assert!(prefixes::bogon(&net).is_none(), "{name}: {entry}");
                assert!(seen.insert(net), "{name}: {entry} twice");
            }
            let admitted = snapshot.prefixes(name, &Guards::default()).unwrap();
            assert!(!admitted.is_empty(), "{name}");
        }
    }

    /// Every preset whose provider publishes a list has a snapshot, except the
    /// Datadog sites no copy of whose document was at hand.
    #[test]
    fn only_datadog_sites_without_a_copy_lack_a_snapshot() {
        let without: Vec<&str> = (all().iter())
            .filter(|p| p.snapshot.is_none())
            .map(|p| p.name)
            .collect();
        assert_eq!(
            without,
            [
                "datadog-us3",
                "datadog-us5",
                "datadog-eu1",
                "datadog-ap1",
                "datadog-ap2",
                "datadog-uk1",
                "datadog-gov",
                "datadog-us2-gov"
            ]
        );
    }

    /// Atlassian by product: egress AND the product, never the shared e-mail senders.
    #[test]
    fn atlassian_presets_select_egress_of_one_product() {
        for product in [
            "jira",
            "confluence",
            "bitbucket",
            "opsgenie",
            "statuspage",
            "trello",
        ] {
            let preset = find(&format!("atlassian-{product}")).unwrap();
            let Some((_, Format::Json(selector))) = preset.location() else {
                panic!("{product}")
            };
            let filters: Vec<(String, Vec<serde_json::Value>)> = (selector.filters.iter())
                .map(|f| (f.field.clone(), f.any_of.clone()))
                .collect();
            assert_eq!(
                filters,
                [
                    ("direction".to_owned(), vec!["egress".into()]),
                    ("product".to_owned(), vec![product.into()])
                ]
            );
            assert_eq!(selector.serial.as_deref(), Some("syncToken"));
        }
        // Jira's 2026-01-20 egress: 6,624 IPv4 addresses (not the 77,878 of every
        // egress range).
        let jira = find("atlassian-jira").unwrap().snapshot.as_ref().unwrap();
        assert_eq!(
            jira.size(),
            "98 prefixes (39 IPv4 covering 6624 addresses, 59 IPv6)"
        );
    }

    #[test]
    fn presets_print_their_url_selection_and_snapshot() {
        let shown = find("atlassian-bitbucket").unwrap().to_string();
        assert!(
            shown.contains("https://ip-ranges.atlassian.com/"),
            "{shown}"
        );
        assert!(
            shown.contains(
                "selects: items[].cidr where direction has \"egress\" and product has \"bitbucket\""
            ),
            "{shown}"
        );
        assert!(
            shown.contains("snapshot as of 2026-01-20: 92 prefixes"),
            "{shown}"
        );
        let shown = find("datadog-us1").unwrap().to_string();
        assert!(
            shown.contains("selects: webhooks.prefixes_ipv4 + webhooks.prefixes_ipv6"),
            "{shown}"
        );
        let shown = find("pagerduty-us").unwrap().to_string();
        assert!(shown.contains("selects: ."), "{shown}");
        assert!(
            shown.contains("13 prefixes (13 IPv4 covering 13 addresses)"),
            "{shown}"
        );
        let shown = find("datadog-ap2").unwrap().to_string();
        assert!(shown.contains("no snapshot"), "{shown}");
        let shown = find("telegram-bot").unwrap().to_string();
        assert!(shown.contains("the list itself (static)"), "{shown}");
    }

    /// The README's preset table is what `allowlist presets` says: every preset, its
    /// selection, and its snapshot's date and size.
    #[test]
    fn the_readme_table_lists_every_preset() {
        let readme = include_str!("../../../../README.md");
        for preset in all() {
            let row = (readme.lines())
                .find(|l| l.starts_with(&format!("| `{}` |", preset.name)))
                .unwrap_or_else(|| panic!("README has no row for {}", preset.name));
            assert!(
                row.contains(&format!("`{}`", preset.selects())),
                "{row}: {}",
                preset.selects()
            );
            match &preset.snapshot {
                Some(s) => assert!(row.contains(&format!("{}: {}", s.as_of, s.size())), "{row}"),
                None => assert!(row.contains("none"), "{row}"),
            }
        }
    }
}
