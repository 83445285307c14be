use super::*;
use crate::sources::http::{DEFAULT_RETRIES, DEFAULT_TIMEOUT};
use crate::sources::{
    format::json::{RecordFilter, Selector},
    http::{MAX_RETRY_AFTER, Proxy},
    presets,
};

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
    assert_eq!((first.kind(), first.is_fetched()), (SourceKind::Dns, true));
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
    let (msg, _, field) = parse_err("[[provider]]\nname = \"a\"\npreset = \"stripe-webhooks\"\n");
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
