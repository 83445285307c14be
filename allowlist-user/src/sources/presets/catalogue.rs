//! The built-in presets, one entry each: where the provider publishes its list, how
//! it is read, and its dated snapshot (in `snapshots`).

use super::{Preset, PresetSource, Snapshot, snapshots};

pub(super) const RETIRED: &[(&str, &str)] = &[(
    "atlassian-egress",
    "it admitted every Atlassian egress range, 91% of them shared e-mail senders; use the product that sends your webhooks: atlassian-jira (also Jira Service Management), atlassian-confluence, atlassian-bitbucket, atlassian-opsgenie, atlassian-statuspage or atlassian-trello",
)];

const FRESHWORKS_REFERENCE: &str =
    "Freshworks help centre, \"IP Allowlisting for Freshchat\" (NAT IPs per region)";
const FRESHWORKS_AS_OF: &str = "2026-11";

const fn intercom(url: &'static str) -> PresetSource {
    PresetSource::Json {
        url,
        items: &["ip_ranges"],
        cidr: &["range"],
        filters: &[("service", "INTERCOM-OUTBOUND")],
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
        filters: &[],
        serial,
    }
}

/// Atlassian's `items[]` whose `direction` contains `egress` and whose `product`
/// contains `product`.
const fn atlassian(product: &'static [(&'static str, &'static str)]) -> PresetSource {
    PresetSource::Json {
        url: ATLASSIAN_URL,
        items: &["items"],
        cidr: &["cidr"],
        filters: product,
        serial: Some("syncToken"),
    }
}

const ATLASSIAN_URL: &str = "https://ip-ranges.atlassian.com/";

const fn dated(
    as_of: &'static str,
    reference: &'static str,
    entries: &'static [&'static str],
) -> Option<Snapshot> {
    Some(Snapshot {
        as_of,
        reference,
        entries,
    })
}

const ATLASSIAN_AS_OF: &str = "2026-01-20";
const ATLASSIAN_REFERENCE: &str = "https://ip-ranges.atlassian.com/ (syncToken 1768869839)";
const DATADOG_ITEMS: &[&str] = &["webhooks.prefixes_ipv4", "webhooks.prefixes_ipv6"];
const PAGERDUTY_AS_OF: &str = "2026-08-19";
const PAGERDUTY_REFERENCE: &str = "PagerDuty developer documentation, \"Webhook IPs\" (the list served at ip-safelists/webhooks-<region>-service-region-json)";
const SVIX_URL: &str = "https://docs.svix.com/webhook-ips.json";
const SVIX_AS_OF: &str = "2026-05-20";
const SENTRY_URL: &str = "https://docs.sentry.io/api/ip-ranges";
const STATIC_AS_OF: &str = "2026-11";

pub(super) static PRESETS: &[Preset] = &[
    Preset {
        name: "intercom-us",
        description: "Intercom outbound (webhooks, Canvas Kit, data connectors), US region",
        source: intercom("https://static.intercomcdn.com/intercom-ips/us/intercom-ip-ranges.json"),
        snapshot: dated(
            "2026-01-29",
            "https://static.intercomcdn.com/intercom-ips/us/intercom-ip-ranges.json",
            snapshots::INTERCOM_US,
        ),
    },
    Preset {
        name: "intercom-eu",
        description: "Intercom outbound (webhooks, Canvas Kit, data connectors), Europe region",
        source: intercom("https://static.intercomcdn.com/intercom-ips/eu/intercom-ip-ranges.json"),
        snapshot: dated(
            "2026-01-29",
            "https://static.intercomcdn.com/intercom-ips/eu/intercom-ip-ranges.json",
            snapshots::INTERCOM_EU,
        ),
    },
    Preset {
        name: "intercom-au",
        description: "Intercom outbound (webhooks, Canvas Kit, data connectors), Australia region",
        source: intercom("https://static.intercomcdn.com/intercom-ips/au/intercom-ip-ranges.json"),
        snapshot: dated(
            "2026-01-29",
            "https://static.intercomcdn.com/intercom-ips/au/intercom-ip-ranges.json",
            snapshots::INTERCOM_AU,
        ),
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
        snapshot: dated(
            "2026-01-26",
            "https://stripe.com/files/ips/ips_webhooks.json",
            snapshots::STRIPE_WEBHOOKS,
        ),
    },
    Preset {
        name: "github-hooks",
        description: "GitHub webhook senders (the `hooks` list of the meta API)",
        source: strings("https://api.github.com/meta", &["hooks"], None),
        snapshot: dated(
            "2026-01-29",
            "https://api.github.com/meta",
            snapshots::GITHUB_HOOKS,
        ),
    },
    Preset {
        name: "atlassian-jira",
        description: "Atlassian cloud egress of Jira (and Jira Service Management): webhooks, automation",
        source: atlassian(&[("direction", "egress"), ("product", "jira")]),
        snapshot: dated(
            ATLASSIAN_AS_OF,
            ATLASSIAN_REFERENCE,
            snapshots::ATLASSIAN_JIRA_CONFLUENCE_OPSGENIE,
        ),
    },
    Preset {
        name: "atlassian-confluence",
        description: "Atlassian cloud egress of Confluence: webhooks, automation",
        source: atlassian(&[("direction", "egress"), ("product", "confluence")]),
        snapshot: dated(
            ATLASSIAN_AS_OF,
            ATLASSIAN_REFERENCE,
            snapshots::ATLASSIAN_JIRA_CONFLUENCE_OPSGENIE,
        ),
    },
    Preset {
        name: "atlassian-bitbucket",
        description: "Atlassian cloud egress of Bitbucket Cloud: webhooks, pipelines",
        source: atlassian(&[("direction", "egress"), ("product", "bitbucket")]),
        snapshot: dated(
            ATLASSIAN_AS_OF,
            ATLASSIAN_REFERENCE,
            snapshots::ATLASSIAN_BITBUCKET,
        ),
    },
    Preset {
        name: "atlassian-opsgenie",
        description: "Atlassian cloud egress of Opsgenie: webhook integrations",
        source: atlassian(&[("direction", "egress"), ("product", "opsgenie")]),
        snapshot: dated(
            ATLASSIAN_AS_OF,
            ATLASSIAN_REFERENCE,
            snapshots::ATLASSIAN_JIRA_CONFLUENCE_OPSGENIE,
        ),
    },
    Preset {
        name: "atlassian-statuspage",
        description: "Atlassian cloud egress of Statuspage: webhook notifications",
        source: atlassian(&[("direction", "egress"), ("product", "statuspage")]),
        snapshot: dated(
            ATLASSIAN_AS_OF,
            ATLASSIAN_REFERENCE,
            snapshots::ATLASSIAN_STATUSPAGE_TRELLO,
        ),
    },
    Preset {
        name: "atlassian-trello",
        description: "Atlassian cloud egress of Trello: webhooks",
        source: atlassian(&[("direction", "egress"), ("product", "trello")]),
        snapshot: dated(
            ATLASSIAN_AS_OF,
            ATLASSIAN_REFERENCE,
            snapshots::ATLASSIAN_STATUSPAGE_TRELLO,
        ),
    },
    Preset {
        name: "pagerduty-us",
        description: "PagerDuty webhooks, US service region",
        source: strings(
            "https://developer.pagerduty.com/ip-safelists/webhooks-us-service-region-json",
            &[""],
            None,
        ),
        snapshot: dated(
            PAGERDUTY_AS_OF,
            PAGERDUTY_REFERENCE,
            snapshots::PAGERDUTY_US,
        ),
    },
    Preset {
        name: "pagerduty-eu",
        description: "PagerDuty webhooks, EU service region",
        source: strings(
            "https://developer.pagerduty.com/ip-safelists/webhooks-eu-service-region-json",
            &[""],
            None,
        ),
        snapshot: dated(
            PAGERDUTY_AS_OF,
            PAGERDUTY_REFERENCE,
            snapshots::PAGERDUTY_EU,
        ),
    },
    Preset {
        name: "datadog-us1",
        description: "Datadog webhooks, site US1 (datadoghq.com)",
        source: strings(
            "https://ip-ranges.datadoghq.com/",
            DATADOG_ITEMS,
            Some("version"),
        ),
        snapshot: dated(
            "2024-10-17",
            "https://ip-ranges.datadoghq.com/ (version 59)",
            snapshots::DATADOG_US1,
        ),
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
        name: "datadog-ap2",
        description: "Datadog webhooks, site AP2 (ap2.datadoghq.com)",
        source: strings(
            "https://ip-ranges.ap2.datadoghq.com/",
            DATADOG_ITEMS,
            Some("version"),
        ),
        snapshot: None,
    },
    Preset {
        name: "datadog-uk1",
        description: "Datadog webhooks, site UK1 (uk1.datadoghq.com)",
        source: strings(
            "https://ip-ranges.uk1.datadoghq.com/",
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
    Preset {
        name: "datadog-us2-gov",
        description: "Datadog webhooks, site US2-FED (us2.ddog-gov.com)",
        source: strings(
            "https://ip-ranges.us2.ddog-gov.com/",
            DATADOG_ITEMS,
            Some("version"),
        ),
        snapshot: None,
    },
    Preset {
        name: "svix-us",
        description: "Svix webhooks (Clerk, Resend and others), US region",
        source: strings(SVIX_URL, &["us"], None),
        snapshot: dated(SVIX_AS_OF, SVIX_URL, snapshots::SVIX_US),
    },
    Preset {
        name: "svix-us-east",
        description: "Svix webhooks (Clerk, Resend and others), US East region",
        source: strings(SVIX_URL, &["us-east"], None),
        snapshot: dated(SVIX_AS_OF, SVIX_URL, snapshots::SVIX_US_EAST),
    },
    Preset {
        name: "svix-eu",
        description: "Svix webhooks (Clerk, Resend and others), EU region",
        source: strings(SVIX_URL, &["eu"], None),
        snapshot: dated(SVIX_AS_OF, SVIX_URL, snapshots::SVIX_EU),
    },
    Preset {
        name: "svix-au",
        description: "Svix webhooks (Clerk, Resend and others), Australia region",
        source: strings(SVIX_URL, &["au"], None),
        snapshot: dated(SVIX_AS_OF, SVIX_URL, snapshots::SVIX_AU),
    },
    Preset {
        name: "svix-ca",
        description: "Svix webhooks (Clerk, Resend and others), Canada region",
        source: strings(SVIX_URL, &["ca"], None),
        snapshot: dated(SVIX_AS_OF, SVIX_URL, snapshots::SVIX_CA),
    },
    Preset {
        name: "sentry-us",
        description: "Sentry outbound requests (webhooks, integrations), US region",
        source: strings(SENTRY_URL, &["data.outbound_requests.us"], None),
        snapshot: dated("2026", SENTRY_URL, snapshots::SENTRY_US),
    },
    Preset {
        name: "sentry-eu",
        description: "Sentry outbound requests (webhooks, integrations), EU region",
        source: strings(SENTRY_URL, &["data.outbound_requests.eu"], None),
        snapshot: dated("2026", SENTRY_URL, snapshots::SENTRY_EU),
    },
    Preset {
        name: "zendesk",
        description: "Zendesk egress (webhooks, targets), every account (`ips.egress.all`)",
        source: strings("https://support.zendesk.com/ips", &["ips.egress.all"], None),
        snapshot: dated(
            "2026-01",
            "https://support.zendesk.com/ips",
            snapshots::ZENDESK,
        ),
    },
    Preset {
        name: "hcp-terraform",
        description: "HCP Terraform notifications (run and workspace webhooks)",
        source: strings(
            "https://app.terraform.io/api/meta/ip-ranges",
            &["notifications"],
            None,
        ),
        snapshot: dated(
            "2026-01",
            "https://app.terraform.io/api/meta/ip-ranges",
            snapshots::HCP_TERRAFORM,
        ),
    },
    Preset {
        name: "telegram-bot",
        description: "Telegram Bot API webhooks (static list)",
        source: PresetSource::Static,
        snapshot: dated(
            STATIC_AS_OF,
            "https://core.telegram.org/bots/webhooks (\"149.154.160.0/20 and 91.108.4.0/22\")",
            &["149.154.160.0/20", "91.108.4.0/22"],
        ),
    },
    Preset {
        name: "gitlab-com",
        description: "GitLab.com webhooks (static list)",
        source: PresetSource::Static,
        snapshot: dated(
            STATIC_AS_OF,
            "https://docs.gitlab.com/user/gitlab_com/ (IP range: webhooks)",
            &["34.74.90.64/28", "34.74.226.0/24"],
        ),
    },
];
