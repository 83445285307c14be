//! Built-in providers: where each publishes its list, how to read it, and, where the
//! provider publishes no machine-readable list or one may be unreachable at boot, a
//! dated snapshot to start from.

use std::fmt;

use ipnet::IpNet;
use reqwest::Url;

use crate::{
    prefixes::{self, Floors, PrefixError, Trust},
    source::{
        Format,
        json::{RecordFilter, Selector},
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
        /// Field and value a record must hold (scalar equal or array containing).
        filter: Option<(&'static str, &'static str)>,
        /// Path of the provider's document version, if it has one.
        serial: Option<&'static str>,
    },
    /// No machine-readable list: the snapshot is the list.
    Static,
}

/// A dated list copied from the provider's documentation.
#[derive(Debug)]
pub struct Snapshot {
    /// When the list was copied (or the date the provider gives it).
    pub as_of: &'static str,
    /// The page it was copied from.
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
            filter,
            serial,
        } = self.source
        else {
            return None;
        };
        let selector = Selector {
            items: items.iter().map(|s| s.to_string()).collect(),
            cidr: cidr.iter().map(|s| s.to_string()).collect(),
            filters: (filter.iter())
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
}

impl fmt::Display for Preset {
    /// What `allowlist presets` prints for it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<20} {}", self.name, self.description)?;
        for url in self.urls() {
            write!(f, "\n{:<20}   {url}", "")?;
        }
        if let Some(snapshot) = &self.snapshot {
            write!(
                f,
                "\n{:<20}   embedded snapshot as of {} ({} addresses; {})",
                "",
                snapshot.as_of,
                snapshot.entries.len(),
                snapshot.reference
            )?;
        }
        Ok(())
    }
}

/// Every built-in preset.
pub(crate) fn all() -> &'static [Preset] {
    PRESETS
}

/// The preset of that name.
pub(crate) fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// The names of all presets, for error messages.
pub(crate) fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

const INTERCOM_REFERENCE: &str = "https://developers.intercom.com/docs/webhooks";
const INTERCOM_AS_OF: &str = "2025-07-25";
const FRESHWORKS_REFERENCE: &str =
    "Freshworks help centre, \"IP Allowlisting for Freshchat\" (NAT IPs per region)";
const FRESHWORKS_AS_OF: &str = "2026-11";

const fn intercom(url: &'static str) -> PresetSource {
    PresetSource::Json {
        url,
        items: &["ip_ranges"],
        cidr: &["range"],
        filter: Some(("service", "INTERCOM-OUTBOUND")),
        serial: Some("date"),
    }
}

const fn strings(
    url: &'static str,
    items: &'static [&'static str],
    serial: Option<&'static str>,
) -> PresetSource {
    PresetSource::Json {
        url,
        items,
        cidr: &[],
        filter: None,
        serial,
    }
}

const DATADOG_ITEMS: &[&str] = &["webhooks.prefixes_ipv4", "webhooks.prefixes_ipv6"];

static PRESETS: &[Preset] = &[
    Preset {
        name: "intercom-us",
        description: "Intercom outbound (webhooks, Canvas Kit, data connectors), US region",
        source: intercom("https://static.intercomcdn.com/intercom-ips/us/intercom-ip-ranges.json"),
        snapshot: Some(Snapshot {
            as_of: INTERCOM_AS_OF,
            reference: INTERCOM_REFERENCE,
            entries: &[
                "34.231.68.152/32",
                "34.197.76.213/32",
                "35.171.78.91/32",
                "35.169.138.21/32",
                "52.70.27.159/32",
                "52.44.63.161/32",
            ],
        }),
    },
    Preset {
        name: "intercom-eu",
        description: "Intercom outbound (webhooks, Canvas Kit, data connectors), Europe region",
        source: intercom("https://static.intercomcdn.com/intercom-ips/eu/intercom-ip-ranges.json"),
        snapshot: Some(Snapshot {
            as_of: INTERCOM_AS_OF,
            reference: INTERCOM_REFERENCE,
            entries: &["54.217.125.63/32", "54.246.173.113/32", "54.216.9.3/32"],
        }),
    },
    Preset {
        name: "intercom-au",
        description: "Intercom outbound (webhooks, Canvas Kit, data connectors), Australia region",
        source: intercom("https://static.intercomcdn.com/intercom-ips/au/intercom-ip-ranges.json"),
        snapshot: Some(Snapshot {
            as_of: INTERCOM_AS_OF,
            reference: INTERCOM_REFERENCE,
            entries: &["52.63.36.185/32", "3.104.68.152/32", "52.64.2.165/32"],
        }),
    },
    Preset {
        name: "freshworks-us",
        description: "Freshworks (Freshchat, Freddy self-service) NAT IPs, US region (static list)",
        source: PresetSource::Static,
        snapshot: Some(Snapshot {
            as_of: FRESHWORKS_AS_OF,
            reference: FRESHWORKS_REFERENCE,
            entries: &[
                "52.1.37.96/32",
                "52.1.32.88/32",
                "18.208.240.77/32",
                "52.201.75.8/32",
                "34.231.139.135/32",
                "34.231.245.167/32",
                "44.206.73.232/32",
                "44.206.73.233/32",
                "44.206.73.234/32",
                "44.206.73.235/32",
                "44.206.73.236/32",
                "44.206.73.237/32",
                "44.206.73.238/32",
                "44.206.73.239/32",
            ],
        }),
    },
    Preset {
        name: "freshworks-eu",
        description: "Freshworks (Freshchat, Freddy self-service) NAT IPs, EU region (static list)",
        source: PresetSource::Static,
        snapshot: Some(Snapshot {
            as_of: FRESHWORKS_AS_OF,
            reference: FRESHWORKS_REFERENCE,
            entries: &[
                "18.184.146.22/32",
                "18.197.127.133/32",
                "3.71.140.232/32",
                "52.29.254.13/32",
                "52.57.253.205/32",
                "18.194.170.216/32",
                "3.74.148.8/32",
                "3.74.148.9/32",
                "3.74.148.10/32",
                "3.74.148.11/32",
            ],
        }),
    },
    Preset {
        name: "freshworks-in",
        description: "Freshworks (Freshchat, Freddy self-service) NAT IPs, India region (static list)",
        source: PresetSource::Static,
        snapshot: Some(Snapshot {
            as_of: FRESHWORKS_AS_OF,
            reference: FRESHWORKS_REFERENCE,
            entries: &[
                "13.232.152.211/32",
                "52.66.184.184/32",
                "35.154.161.243/32",
                "13.126.85.255/32",
                "13.234.127.182/32",
                "43.204.166.208/32",
                "43.204.166.209/32",
                "43.204.166.210/32",
                "43.204.166.211/32",
            ],
        }),
    },
    Preset {
        name: "freshworks-au",
        description: "Freshworks (Freshchat, Freddy self-service) NAT IPs, Australia region (static list)",
        source: PresetSource::Static,
        snapshot: Some(Snapshot {
            as_of: FRESHWORKS_AS_OF,
            reference: FRESHWORKS_REFERENCE,
            entries: &[
                "3.105.197.171/32",
                "13.210.157.231/32",
                "54.206.10.178/32",
                "3.104.16.220/32",
                "13.238.97.24/32",
                "13.238.188.219/32",
                "3.26.254.196/32",
                "3.26.254.197/32",
                "3.26.254.198/32",
                "3.26.254.199/32",
            ],
        }),
    },
    Preset {
        name: "stripe-webhooks",
        description: "Stripe webhook senders",
        source: strings(
            "https://stripe.com/files/ips/ips_webhooks.json",
            &["WEBHOOKS"],
            None,
        ),
        snapshot: None,
    },
    Preset {
        name: "github-hooks",
        description: "GitHub webhook senders (the `hooks` list of the meta API)",
        source: strings("https://api.github.com/meta", &["hooks"], None),
        snapshot: None,
    },
    Preset {
        name: "atlassian-egress",
        description: "Atlassian cloud egress (Jira, Confluence, Bitbucket webhooks)",
        source: PresetSource::Json {
            url: "https://ip-ranges.atlassian.com/",
            items: &["items"],
            cidr: &["cidr"],
            filter: Some(("direction", "egress")),
            serial: Some("syncToken"),
        },
        snapshot: None,
    },
    Preset {
        name: "pagerduty-us",
        description: "PagerDuty webhooks, US service region",
        source: strings(
            "https://developer.pagerduty.com/ip-safelists/webhooks-us-service-region-json",
            &[""],
            None,
        ),
        snapshot: None,
    },
    Preset {
        name: "pagerduty-eu",
        description: "PagerDuty webhooks, EU service region",
        source: strings(
            "https://developer.pagerduty.com/ip-safelists/webhooks-eu-service-region-json",
            &[""],
            None,
        ),
        snapshot: None,
    },
    Preset {
        name: "datadog-us1",
        description: "Datadog webhooks, site US1 (datadoghq.com)",
        source: strings(
            "https://ip-ranges.datadoghq.com/",
            DATADOG_ITEMS,
            Some("version"),
        ),
        snapshot: None,
    },
    Preset {
        name: "datadog-us3",
        description: "Datadog webhooks, site US3 (us3.datadoghq.com)",
        source: strings(
            "https://ip-ranges.us3.datadoghq.com/",
            DATADOG_ITEMS,
            Some("version"),
        ),
        snapshot: None,
    },
    Preset {
        name: "datadog-us5",
        description: "Datadog webhooks, site US5 (us5.datadoghq.com)",
        source: strings(
            "https://ip-ranges.us5.datadoghq.com/",
            DATADOG_ITEMS,
            Some("version"),
        ),
        snapshot: None,
    },
    Preset {
        name: "datadog-eu1",
        description: "Datadog webhooks, site EU1 (datadoghq.eu)",
        source: strings(
            "https://ip-ranges.datadoghq.eu/",
            DATADOG_ITEMS,
            Some("version"),
        ),
        snapshot: None,
    },
    Preset {
        name: "datadog-ap1",
        description: "Datadog webhooks, site AP1 (ap1.datadoghq.com)",
        source: strings(
            "https://ip-ranges.ap1.datadoghq.com/",
            DATADOG_ITEMS,
            Some("version"),
        ),
        snapshot: None,
    },
    Preset {
        name: "datadog-gov",
        description: "Datadog webhooks, site US1-FED (ddog-gov.com)",
        source: strings(
            "https://ip-ranges.ddog-gov.com/",
            DATADOG_ITEMS,
            Some("version"),
        ),
        snapshot: None,
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

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
    }

    #[test]
    fn snapshots_match_the_seeds() {
        let count = |name| find(name).unwrap().snapshot.as_ref().unwrap().entries.len();
        assert_eq!(
            [
                count("intercom-us"),
                count("intercom-eu"),
                count("intercom-au")
            ],
            [6, 3, 3]
        );
        assert_eq!(
            [
                count("freshworks-us"),
                count("freshworks-eu"),
                count("freshworks-in"),
                count("freshworks-au")
            ],
            [14, 10, 9, 10]
        );
        for preset in all() {
            if let Some(snapshot) = &preset.snapshot {
                for entry in snapshot.entries {
                    let (net, normalised) = prefixes::parse_entry(entry).unwrap();
                    assert!(!normalised, "{entry}");
                    assert_eq!(net.prefix_len(), 32, "{entry}");
                    assert!(prefixes::bogon(&net).is_none(), "{entry}");
                }
            }
        }
    }
}
