//! Every preset against a document in its provider's published shape, written here and
//! served over local HTTPS through the preset's `url` override; and, where the
//! providers' real documents are at hand (`<repo>/../shared/realdocs`, kept outside
//! the repository), against those.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use allowlist_tests::provider_server::{ProviderServer, Response};
use allowlist_user::{
    Config, FetchOptions, Fetcher, Location, Outcome, PresetSource, Refresher, all_presets,
    find_preset, parse_config, parse_document,
};
use ipnet::IpNet;
use serde_json::{Value, json};

fn fetcher() -> Fetcher {
    Fetcher::new(FetchOptions {
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
    })
}

/// The url source keys that point a source at `server`'s `path`.
fn served_from(server: &ProviderServer, path: &str) -> String {
    format!(
        "url = \"{}\"\nca_file = \"{}\"\nproxy = \"none\"\ntimeout = \"10s\"\nretries = 0\n",
        server.url(path),
        server.ca_file().display()
    )
}

/// A provider named like `preset` that uses it, its document at `server`'s `/<preset>`.
fn preset_toml(server: &ProviderServer, preset: &str) -> String {
    format!(
        "[[provider]]\nname = \"{preset}\"\npreset = \"{preset}\"\n{}",
        served_from(server, &format!("/{preset}"))
    )
}

fn config(state_dir: &Path, providers: &str) -> Config {
    let text = format!(
        "interfaces = [\"eth0\"]\nstate_dir = \"{}\"\n{providers}",
        state_dir.display()
    );
    parse_config(&text, Path::new("presets-test.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// The addresses `entries` cover (prefixes or bare addresses), as aggregated prefixes:
/// two lists compare equal when they cover the same addresses.
fn addresses<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> Vec<IpNet> {
    let nets: Vec<IpNet> = (entries.into_iter())
        .map(|entry| {
            let entry = entry.as_ref().trim();
            entry.parse().unwrap_or_else(|_| {
                let address: IpAddr = entry.parse().unwrap_or_else(|e| panic!("{entry}: {e}"));
                IpNet::from(address)
            })
        })
        .collect();
    IpNet::aggregate(&nets)
}

/// The strings of the JSON array at `pointer`.
fn strings(document: &Value, pointer: &str) -> Vec<String> {
    let array = (document.pointer(pointer))
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no array at {pointer}"));
    (array.iter())
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// Refreshes every source once from its snapshot; each must end as `expected` says:
/// `Updated` (a new set) or `Unchanged` (the snapshot's).
async fn refresh_all_from_snapshots(refresher: &mut Refresher, updated: bool) {
    assert!(refresher.bootstrap().is_empty());
    let report = refresher.refresh_all().await;
    for source in &report.sources {
        let as_expected = match source.outcome {
            Outcome::Updated { .. } => updated,
            Outcome::Unchanged => !updated,
            _ => false,
        };
        assert!(as_expected, "{}: {:?}", source.id, source.outcome);
    }
}

fn admitted(refresher: &Refresher, preset: &str) -> Vec<IpNet> {
    let id = format!("{preset}/{preset}");
    let prefixes = (refresher.source_prefixes(&id)).unwrap_or_else(|| panic!("no source {id}"));
    IpNet::aggregate(&prefixes.to_vec())
}

// ---------------------------------------------------------------------------------
// Documents in each provider's published shape, written here (documentation ranges).

fn intercom(outbound: &str) -> Value {
    json!({
        "ip_ranges": [
            {"range": "198.51.100.0/24", "region": "US", "service": "INTERCOM-GENERAL"},
            {"range": outbound, "region": "US", "service": "INTERCOM-OUTBOUND"},
            {"range": "203.0.113.0/24", "region": "US", "service": "INTERCOM-ENDPOINTS"}
        ],
        "date": "2026-11-02"
    })
}

fn atlassian(product: &str) -> Value {
    json!({
        "creationDate": "2026-11-02T00:00:00.000000",
        "syncToken": 1762041600,
        "items": [
            {"network": "192.0.2.0", "mask_len": 28, "cidr": "192.0.2.0/28", "mask": "255.255.255.240",
             "region": ["us-east-1"], "product": [product], "direction": ["egress"]},
            {"cidr": "192.0.2.64/28", "region": ["global"], "product": ["forge", product], "direction": ["ingress", "egress"]},
            {"cidr": "198.51.100.0/24", "region": ["global"], "product": ["email"], "direction": ["egress"]},
            {"cidr": "203.0.113.0/24", "region": ["global"], "product": [product], "direction": ["ingress"]},
            {"cidr": "192.0.2.128/25", "region": ["global"], "product": ["forge"], "direction": ["egress"]},
            {"cidr": "2001:db8:a::/48", "region": ["global"], "product": [product], "direction": ["egress"]}
        ]
    })
}

fn datadog() -> Value {
    json!({
        "version": 74,
        "modified": "2026-10-30-15-00-00",
        "agents": {"prefixes_ipv4": ["203.0.113.0/24"], "prefixes_ipv6": ["2001:db8:ff::/48"]},
        "synthetics": {
            "prefixes_ipv4": ["198.51.100.7/32"],
            "prefixes_ipv4_by_location": {"aws:us-east-1": ["198.51.100.7/32"]},
            "prefixes_ipv6": []
        },
        "webhooks": {"prefixes_ipv4": ["192.0.2.32/28", "192.0.2.48/32"], "prefixes_ipv6": ["2001:db8:d::/48"]}
    })
}

fn svix() -> Value {
    json!({
        "us": ["192.0.2.40", "192.0.2.140", "2001:db8:40::/56"],
        "us-east": ["192.0.2.41", "2001:db8:41::/56"],
        "eu": ["192.0.2.42", "2001:db8:42::/56"],
        "au": ["192.0.2.43", "2001:db8:43::/56"],
        "ca": ["192.0.2.44", "2001:db8:44::/56"]
    })
}

fn sentry() -> Value {
    json!({"data": {
        "dashboard": {"sentry_io": ["198.51.100.1/32"], "de_sentry_io": ["198.51.100.2/32"]},
        "event_ingestion": {
            "apex_domain": ["198.51.100.3/32"],
            "organization_subdomains": {"us": ["198.51.100.4/32", "2001:db8:e::/64"], "eu": ["198.51.100.5/32"]},
            "legacy": ["198.51.100.6/32"]
        },
        "outbound_requests": {"us": ["192.0.2.50/32", "192.0.2.52/32"], "eu": ["192.0.2.51/32"]},
        "email_delivery": ["203.0.113.1"],
        "uptime_monitoring": ["203.0.113.2"]
    }})
}

/// Each preset with a document, that document in its provider's shape, and the
/// entries the provider documents a webhook receiver should admit.
fn shaped_documents() -> Vec<(String, Value, Vec<&'static str>)> {
    let mut cases = vec![
        (
            "intercom-us".to_owned(),
            intercom("192.0.2.1/32"),
            vec!["192.0.2.1/32"],
        ),
        (
            "intercom-eu".to_owned(),
            intercom("192.0.2.2/32"),
            vec!["192.0.2.2/32"],
        ),
        (
            "intercom-au".to_owned(),
            intercom("192.0.2.3/32"),
            vec!["192.0.2.3/32"],
        ),
        (
            "stripe-webhooks".to_owned(),
            json!({"API": ["198.51.100.1"], "WEBHOOKS": ["192.0.2.10", "192.0.2.12"]}),
            vec!["192.0.2.10", "192.0.2.12"],
        ),
        (
            "github-hooks".to_owned(),
            json!({
                "verifiable_password_authentication": false,
                "hooks": ["192.0.2.0/26", "2001:db8:1::/48"],
                "web": ["198.51.100.0/24"],
                "actions": ["203.0.113.0/24"],
                "domains": {"website": ["*.github.com"]}
            }),
            vec!["192.0.2.0/26", "2001:db8:1::/48"],
        ),
        (
            "pagerduty-us".to_owned(),
            json!(["192.0.2.20", "192.0.2.22"]),
            vec!["192.0.2.20", "192.0.2.22"],
        ),
        (
            "pagerduty-eu".to_owned(),
            json!(["192.0.2.24"]),
            vec!["192.0.2.24"],
        ),
        (
            "sentry-us".to_owned(),
            sentry(),
            vec!["192.0.2.50/32", "192.0.2.52/32"],
        ),
        ("sentry-eu".to_owned(), sentry(), vec!["192.0.2.51/32"]),
        (
            "zendesk".to_owned(),
            json!({"ips": {
                "ingress": {"all": ["198.51.100.0/24", "192.0.2.60/32"], "specific": ["198.51.100.0/24"]},
                "egress": {"all": ["192.0.2.64/26"], "specific": ["192.0.2.64/26"]}
            }}),
            vec!["192.0.2.64/26"],
        ),
        (
            "hcp-terraform".to_owned(),
            json!({
                "api": ["198.51.100.1/32"],
                "notifications": ["192.0.2.70/32", "192.0.2.72/32"],
                "sentinel": ["203.0.113.1/32"],
                "vcs": ["203.0.113.2/32"]
            }),
            vec!["192.0.2.70/32", "192.0.2.72/32"],
        ),
    ];
    for product in [
        "jira",
        "confluence",
        "bitbucket",
        "opsgenie",
        "statuspage",
        "trello",
    ] {
        cases.push((
            format!("atlassian-{product}"),
            atlassian(product),
            vec!["192.0.2.0/28", "192.0.2.64/28", "2001:db8:a::/48"],
        ));
    }
    for site in [
        "us1", "us3", "us5", "eu1", "ap1", "ap2", "uk1", "gov", "us2-gov",
    ] {
        cases.push((
            format!("datadog-{site}"),
            datadog(),
            vec!["192.0.2.32/28", "192.0.2.48/32", "2001:db8:d::/48"],
        ));
    }
    for (region, expected) in [
        ("us", vec!["192.0.2.40", "192.0.2.140", "2001:db8:40::/56"]),
        ("us-east", vec!["192.0.2.41", "2001:db8:41::/56"]),
        ("eu", vec!["192.0.2.42", "2001:db8:42::/56"]),
        ("au", vec!["192.0.2.43", "2001:db8:43::/56"]),
        ("ca", vec!["192.0.2.44", "2001:db8:44::/56"]),
    ] {
        cases.push((format!("svix-{region}"), svix(), expected));
    }
    cases
}

#[tokio::test]
async fn every_preset_selects_what_its_provider_documents_through_the_url_override() {
    let cases = shaped_documents();
    let covered: BTreeSet<&str> = cases.iter().map(|(name, ..)| name.as_str()).collect();
    let with_a_document: BTreeSet<&str> = (all_presets().iter())
        .filter(|p| !matches!(p.source, PresetSource::Static))
        .map(|p| p.name)
        .collect();
    assert_eq!(
        covered, with_a_document,
        "every preset with a document has a case"
    );

    let server = ProviderServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut providers = String::new();
    for (preset, document, _) in &cases {
        server.set(&format!("/{preset}"), Response::json(document));
        providers.push_str(&preset_toml(&server, preset));
    }
    let config = config(dir.path(), &providers);
    let mut refresher = Refresher::new(&config, fetcher()).unwrap();
    refresh_all_from_snapshots(&mut refresher, true).await;
    for (preset, _, expected) in &cases {
        assert_eq!(
            admitted(&refresher, preset),
            addresses(expected),
            "{preset}"
        );
        assert_eq!(server.hits(&format!("/{preset}")), 1, "{preset}");
    }
}

#[test]
fn static_presets_are_their_list() {
    let dir = tempfile::tempdir().unwrap();
    for (preset, expected) in [
        ("telegram-bot", ["149.154.160.0/20", "91.108.4.0/22"]),
        ("gitlab-com", ["34.74.90.64/28", "34.74.226.0/24"]),
    ] {
        let config = config(
            dir.path(),
            &format!("[[provider]]\nname = \"{preset}\"\npreset = \"{preset}\"\n"),
        );
        let source = config.source(&format!("{preset}/{preset}")).unwrap();
        let Location::Static(list) = &source.location else {
            panic!("{preset} is not static")
        };
        assert_eq!(IpNet::aggregate(&list.prefixes), addresses(expected));
        assert!(list.as_of.is_some() && list.reference.is_some(), "{preset}");
    }
}

// ---------------------------------------------------------------------------------
// The real documents.

fn realdocs() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/realdocs");
    match dir.join("README.md").is_file() {
        true => Ok(dir),
        false => Err(format!(
            "skipped: the providers' real documents are not at {} (they are kept outside the repository)",
            dir.display()
        )),
    }
}

fn read_json(dir: &Path, file: &str) -> Value {
    let bytes = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The addresses of one service region on PagerDuty's documentation page: the
/// indented lines after its heading, up to the next heading.
fn pagerduty_page(page: &str, region: &str) -> Vec<String> {
    let heading = format!("### {region} Service Region");
    let after = page.split(&heading).nth(1).expect("the region's heading");
    let section = after.split("\n#").next().unwrap();
    (section.lines())
        .filter(|line| line.starts_with("    "))
        .map(|line| line.trim().to_owned())
        .filter(|line| line.parse::<IpAddr>().is_ok())
        .collect()
}

/// Atlassian's `items[]` whose `direction` contains `egress` and whose `product`
/// contains `product`.
fn atlassian_egress(document: &Value, product: &str) -> Vec<String> {
    let has = |item: &Value, field: &str, value: &str| {
        (item[field].as_array().unwrap().iter()).any(|v| v.as_str() == Some(value))
    };
    (document["items"].as_array().unwrap().iter())
        .filter(|item| has(item, "direction", "egress") && has(item, "product", product))
        .map(|item| item["cidr"].as_str().unwrap().to_owned())
        .collect()
}

/// The providers' real documents, served over local HTTPS: see each part.
#[tokio::test]
async fn the_real_documents() {
    let dir = match realdocs() {
        Ok(dir) => dir,
        Err(why) => return println!("{why}"),
    };
    every_preset_admits_what_its_provider_documents(&dir).await;
    the_stripe_api_list_is_not_a_webhook_list(&dir).await;
    an_older_google_document_is_refused_after_a_newer_one(&dir).await;
    the_aws_document_parses_and_loads(&dir).await;
}

/// Each preset served its provider's real document; what the README of the documents
/// says a webhook receiver selects is exactly what the preset admits, and what its
/// snapshot holds.
async fn every_preset_admits_what_its_provider_documents(dir: &Path) {
    // (preset, the body served, what the provider documents)
    let mut cases: Vec<(String, Vec<u8>, Vec<String>)> = Vec::new();
    let raw = |file: &str| std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    for region in ["us", "eu", "au"] {
        let file = format!("intercom-{region}-ip-ranges.json");
        let document = read_json(dir, &file);
        let outbound = (document["ip_ranges"].as_array().unwrap().iter())
            .filter(|r| r["service"] == "INTERCOM-OUTBOUND")
            .map(|r| r["range"].as_str().unwrap().to_owned())
            .collect();
        cases.push((format!("intercom-{region}"), raw(&file), outbound));
    }
    let github = read_json(dir, "github-meta.json");
    cases.push((
        "github-hooks".into(),
        raw("github-meta.json"),
        strings(&github, "/hooks"),
    ));
    let stripe = read_json(dir, "stripe-ips_webhooks.json");
    cases.push((
        "stripe-webhooks".into(),
        raw("stripe-ips_webhooks.json"),
        strings(&stripe, "/WEBHOOKS"),
    ));
    let atlassian = read_json(dir, "atlassian-ip-ranges.json");
    for product in [
        "jira",
        "confluence",
        "bitbucket",
        "opsgenie",
        "statuspage",
        "trello",
    ] {
        cases.push((
            format!("atlassian-{product}"),
            raw("atlassian-ip-ranges.json"),
            atlassian_egress(&atlassian, product),
        ));
    }
    let datadog = read_json(dir, "datadog-us1-ip-ranges.json");
    let mut webhooks = strings(&datadog, "/webhooks/prefixes_ipv4");
    webhooks.extend(strings(&datadog, "/webhooks/prefixes_ipv6"));
    cases.push((
        "datadog-us1".into(),
        raw("datadog-us1-ip-ranges.json"),
        webhooks,
    ));
    // The page documents the addresses; the JSON endpoint serves them as a bare array
    // (as binary/octet-stream, which the server here sends too).
    let page = String::from_utf8(raw("pagerduty-webhook-ips.docpage.md")).unwrap();
    for (preset, region) in [("pagerduty-us", "US"), ("pagerduty-eu", "EU")] {
        let listed = pagerduty_page(&page, region);
        let served = serde_json::to_vec(&listed).unwrap();
        cases.push((preset.into(), served, listed));
    }
    let svix = read_json(dir, "svix-webhook-ips.json");
    for region in ["us", "us-east", "eu", "au", "ca"] {
        cases.push((
            format!("svix-{region}"),
            raw("svix-webhook-ips.json"),
            strings(&svix, &format!("/{region}")),
        ));
    }
    let sentry = read_json(dir, "sentry-ip-ranges.json");
    for region in ["us", "eu"] {
        cases.push((
            format!("sentry-{region}"),
            raw("sentry-ip-ranges.json"),
            strings(&sentry, &format!("/data/outbound_requests/{region}")),
        ));
    }
    let zendesk = read_json(dir, "zendesk-ips.json");
    cases.push((
        "zendesk".into(),
        raw("zendesk-ips.json"),
        strings(&zendesk, "/ips/egress/all"),
    ));
    let hcp = read_json(dir, "hcp-terraform-ip-ranges.json");
    cases.push((
        "hcp-terraform".into(),
        raw("hcp-terraform-ip-ranges.json"),
        strings(&hcp, "/notifications"),
    ));

    let server = ProviderServer::start();
    let state = tempfile::tempdir().unwrap();
    let mut providers = String::new();
    for (preset, body, _) in &cases {
        server.set(&format!("/{preset}"), Response::ok(body.clone()));
        providers.push_str(&preset_toml(&server, preset));
    }
    let mut refresher = Refresher::new(&config(state.path(), &providers), fetcher()).unwrap();
    // Fetched, and the set the snapshot put in force is the document's: unchanged.
    refresh_all_from_snapshots(&mut refresher, false).await;
    for (preset, _, documented) in &cases {
        let documented = addresses(documented);
        assert_eq!(admitted(&refresher, preset), documented, "{preset}");
        let snapshot = find_preset(preset).unwrap().snapshot.as_ref().unwrap();
        assert_eq!(
            addresses(snapshot.entries),
            documented,
            "{preset}: the snapshot is the document's selection"
        );
    }
    // Zendesk's ingress-only addresses and Atlassian's shared e-mail senders are not
    // admitted (the sets above are exact; this says why they matter).
    let zendesk_ingress = addresses(strings(&zendesk, "/ips/ingress/all"));
    assert!(zendesk_ingress.len() > admitted(&refresher, "zendesk").len());
    let email = addresses(atlassian_egress(&atlassian, "email"));
    for product in ["jira", "bitbucket"] {
        let set = admitted(&refresher, &format!("atlassian-{product}"));
        assert!(email.iter().all(|net| !set.contains(net)), "{product}");
    }

    // Telegram's webhook subnets (a static preset) are within its published ranges.
    let telegram = String::from_utf8(raw("telegram-cidr.txt")).unwrap();
    let published = addresses(telegram.lines().filter(|l| !l.trim().is_empty()));
    for entry in find_preset("telegram-bot")
        .unwrap()
        .snapshot
        .as_ref()
        .unwrap()
        .entries
    {
        let net: IpNet = entry.parse().unwrap();
        assert!(published.iter().any(|p| p.contains(&net)), "{entry}");
    }
}

async fn the_stripe_api_list_is_not_a_webhook_list(dir: &Path) {
    let server = ProviderServer::start();
    let body = std::fs::read(dir.join("stripe-ips_api.json")).unwrap();
    server.set("/stripe-webhooks", Response::ok(body));
    let state = tempfile::tempdir().unwrap();
    let config = config(state.path(), &preset_toml(&server, "stripe-webhooks"));
    let mut refresher = Refresher::new(&config, fetcher()).unwrap();
    refresher.bootstrap();
    let report = refresher.refresh_all().await;
    let Outcome::Failed { error } = &report
        .get("stripe-webhooks/stripe-webhooks")
        .unwrap()
        .outcome
    else {
        panic!("{report:?}")
    };
    let error = error.to_string();
    assert!(error.contains("`WEBHOOKS`"), "{error}");
    // The snapshot stays in force.
    let snapshot = find_preset("stripe-webhooks")
        .unwrap()
        .snapshot
        .as_ref()
        .unwrap();
    assert_eq!(
        admitted(&refresher, "stripe-webhooks"),
        addresses(snapshot.entries)
    );
}

async fn an_older_google_document_is_refused_after_a_newer_one(dir: &Path) {
    let server = ProviderServer::start();
    let state = tempfile::tempdir().unwrap();
    let source = format!(
        "[[provider]]\nname = \"google\"\n[[provider.source]]\n{}items = \"prefixes\"\ncidr = [\"ipv4Prefix\", \"ipv6Prefix\"]\nserial = \"syncToken\"\n",
        served_from(&server, "/goog.json")
    );
    let mut refresher = Refresher::new(&config(state.path(), &source), fetcher()).unwrap();
    refresher.bootstrap();
    let newer = std::fs::read(dir.join("google-goog.json")).unwrap();
    let older = std::fs::read(dir.join("google-goog.2023-02-16.json")).unwrap();
    server.set("/goog.json", Response::ok(newer));
    let report = refresher.refresh_all().await;
    assert!(
        matches!(
            report.get("google/0").unwrap().outcome,
            Outcome::Updated { .. }
        ),
        "{report:?}"
    );
    let in_force = refresher.allowlist();
    server.set("/goog.json", Response::ok(older));
    let report = refresher.refresh_all().await;
    let Outcome::Refused { reason } = &report.get("google/0").unwrap().outcome else {
        panic!("{report:?}")
    };
    let reason = reason.to_string();
    assert!(
        reason.contains("serial 1676563455387 is older than the serial 1714053903689"),
        "{reason}"
    );
    assert_eq!(refresher.allowlist(), in_force);
}

async fn the_aws_document_parses_and_loads(dir: &Path) {
    let body = std::fs::read(dir.join("aws-ip-ranges.json")).unwrap();
    let document: Value = serde_json::from_slice(&body).unwrap();
    let field = |pointer: &str, name: &str| {
        (document
            .pointer(pointer)
            .unwrap()
            .as_array()
            .unwrap()
            .iter())
        .map(|r| r[name].as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
    };
    let mut listed = field("/prefixes", "ip_prefix");
    listed.extend(field("/ipv6_prefixes", "ipv6_prefix"));

    let server = ProviderServer::start();
    server.set("/ip-ranges.json", Response::ok(body.clone()));
    let state = tempfile::tempdir().unwrap();
    let source = format!(
        "[[provider]]\nname = \"aws\"\n[[provider.source]]\n{}items = [\"prefixes\", \"ipv6_prefixes\"]\ncidr = [\"ip_prefix\", \"ipv6_prefix\"]\nserial = \"syncToken\"\n",
        served_from(&server, "/ip-ranges.json")
    );
    let config = config(state.path(), &source);
    let Location::Url { format, .. } = &config.source("aws/0").unwrap().location else {
        unreachable!()
    };
    let start = Instant::now();
    let parsed = parse_document(format, &body, "aws/0").unwrap();
    let parse_time = start.elapsed();
    assert_eq!(parsed.entries, listed);
    assert_eq!(parsed.serial.as_deref(), Some("1753388594"));

    let mut refresher = Refresher::new(&config, fetcher()).unwrap();
    refresher.bootstrap();
    let start = Instant::now();
    let report = refresher.refresh_all().await;
    let refresh_time = start.elapsed();
    assert!(
        matches!(
            report.get("aws/0").unwrap().outcome,
            Outcome::Updated { .. }
        ),
        "{report:?}"
    );
    let prefixes = refresher.source_prefixes("aws/0").unwrap();
    assert_eq!(IpNet::aggregate(&prefixes.to_vec()), addresses(&listed));
    println!(
        "aws-ip-ranges.json ({} bytes, {} entries, {} prefixes after aggregation): parsed in {parse_time:?}; fetched over local HTTPS, parsed, validated and aggregated in {refresh_time:?}",
        body.len(),
        listed.len(),
        prefixes.len()
    );
    // The times are printed, never asserted: performance figures come from
    // `cargo xtask bench` (its AWS-shaped parse), not from timed tests.
}
