//! `dns` sources against a local DNS server: rotating answers kept for `dns_keep`
//! (across a restart too), the TTL respected, NXDOMAIN, SERVFAIL and timeouts keeping
//! the last good set, an empty answer refused by the empty guard, bogons dropped.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::{path::Path, time::Duration};

use allowlist_tests::dns_server::{DnsServer, Reply};
use allowlist_user::{
    Config, Fetcher, Outcome, RefreshOptions, RefreshReport, Refresher, SetOrigin, parse_config,
};

const ID: &str = "adyen/0";

struct Env {
    dir: tempfile::TempDir,
    server: DnsServer,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
            server: DnsServer::start(),
        }
    }

    /// One provider with one dns source asking the local server; `keys` are more of
    /// the source's keys.
    fn config(&self, keys: &str) -> Config {
        let text = format!(
            r#"
interfaces = ["eth0"]
state_dir = "{state}"
[[provider]]
name = "adyen"
[[provider.source]]
dns = "Out.Example.Test"
resolver = "{resolver}"
timeout = "300ms"
retries = 0
{keys}
"#,
            state = self.dir.path().join("state").display(),
            resolver = self.server.addr(),
        );
        parse_config(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn refresher(&self, config: &Config) -> Refresher {
        let mut r = Refresher::new(config, Fetcher::default()).unwrap();
        assert_eq!(r.bootstrap(), Vec::<String>::new());
        r
    }

    fn queries(&self) -> usize {
        self.server.queries().len()
    }
}

fn prefixes(r: &Refresher) -> Vec<String> {
    let mut all: Vec<String> = (r.source_prefixes(ID).unwrap().iter())
        .map(ToString::to_string)
        .collect();
    all.sort();
    all
}

fn outcome(report: &RefreshReport) -> &Outcome {
    &report.get(ID).unwrap().outcome
}

/// The error of a failed refresh.
fn failure(report: &RefreshReport) -> String {
    match outcome(report) {
        Outcome::Failed { error } => error.to_string(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn rotating_answers_are_kept_for_dns_keep_across_restarts() {
    let env = Env::new();
    let config = env.config("dns_keep = \"2s\"");
    let mut r = env.refresher(&config);
    let status = r.source_status(ID).unwrap();
    assert_eq!(
        (status.kind.as_str(), status.location),
        (
            "dns",
            format!("out.example.test (via {})", env.server.addr())
        )
    );

    env.server
        .set(Reply::records(&["192.0.2.10", "2001:db8::1"], 0));
    let report = r.refresh_all().await;
    assert_eq!(
        *outcome(&report),
        Outcome::Updated {
            added: 2,
            removed: 0
        }
    );
    // A and AAAA, of the name as configured (lowercased, no search domain).
    let queries = env.server.queries();
    assert_eq!(queries.len(), 2, "{queries:?}");
    assert!(queries.iter().all(|q| q.name == "out.example.test"));
    let mut types: Vec<u16> = queries.iter().map(|q| q.qtype).collect();
    types.sort_unstable();
    assert_eq!(types, [1, 28]);

    // The name rotates: what the last answer held stays.
    env.server.set(Reply::records(
        &["192.0.2.20", "192.0.2.30", "2001:db8::1"],
        0,
    ));
    let report = r.refresh_all().await;
    assert_eq!(
        *outcome(&report),
        Outcome::Updated {
            added: 2,
            removed: 0
        }
    );
    assert_eq!(
        prefixes(&r),
        [
            "192.0.2.10/32",
            "192.0.2.20/32",
            "192.0.2.30/32",
            "2001:db8::1/128"
        ]
    );

    // Past dns_keep, an address no answer held since is dropped.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let report = r.refresh_all().await;
    assert_eq!(
        *outcome(&report),
        Outcome::Updated {
            added: 0,
            removed: 1
        }
    );
    assert_eq!(
        prefixes(&r),
        ["192.0.2.20/32", "192.0.2.30/32", "2001:db8::1/128"]
    );

    // A restart keeps the set and when each address was last seen: an answer
    // without .30 keeps it, as it was seen within dns_keep.
    let mut again = env.refresher(&config);
    assert_eq!(again.source_status(ID).unwrap().in_force, SetOrigin::State);
    assert_eq!(prefixes(&again), prefixes(&r));
    env.server
        .set(Reply::records(&["192.0.2.20", "2001:db8::1"], 0));
    let report = again.refresh_all().await;
    assert_eq!(*outcome(&report), Outcome::Unchanged);
    assert_eq!(
        prefixes(&again),
        ["192.0.2.20/32", "192.0.2.30/32", "2001:db8::1/128"]
    );
}

#[tokio::test]
async fn the_name_is_not_asked_again_within_the_ttl() {
    let env = Env::new();
    let mut r = env.refresher(&env.config(""));
    // The smallest TTL of the answer counts.
    env.server.set(Reply::Records {
        v4: vec!["192.0.2.10".parse().unwrap()],
        v6: Vec::new(),
        ttl: 1,
    });
    assert!(matches!(
        outcome(&r.refresh_all().await),
        Outcome::Updated { .. }
    ));
    assert_eq!(env.queries(), 2);

    env.server.set(Reply::records(&["192.0.2.99"], 300));
    let asked = r.source_status(ID).unwrap().last_success.unwrap();
    let report = r.refresh_all().await;
    assert_eq!(*outcome(&report), Outcome::NotModified);
    assert!(report.is_ok());
    assert_eq!(env.queries(), 2, "asked again within the TTL");
    // A success all the same: the answer in force is valid (no stale alert).
    assert!(r.source_status(ID).unwrap().last_success.unwrap() >= asked);
    assert_eq!(prefixes(&r), ["192.0.2.10/32"]);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = r.refresh_all().await;
    assert_eq!(
        *outcome(&report),
        Outcome::Updated {
            added: 1,
            removed: 0
        }
    );
    assert_eq!(env.queries(), 4);
    // TTL 300 now.
    assert_eq!(*outcome(&r.refresh_all().await), Outcome::NotModified);
    assert_eq!(env.queries(), 4);
}

#[tokio::test]
async fn failures_keep_the_last_good_set() {
    let env = Env::new();
    let mut r = env.refresher(&env.config(""));
    env.server.set(Reply::records(&["192.0.2.10"], 0));
    r.refresh_all().await;
    let good = prefixes(&r);
    assert_eq!(good, ["192.0.2.10/32"]);

    let cases = [
        (
            Reply::NxDomain,
            "out.example.test: the name does not exist (NXDOMAIN)",
        ),
        (Reply::ServFail, "answered Server Failure (RCODE 2)"),
        (Reply::Silent, "no answer from"),
    ];
    for (round, (reply, needle)) in (1..).zip(cases) {
        env.server.set(reply.clone());
        let report = r.refresh_all().await;
        let error = failure(&report);
        assert!(error.contains(needle), "{reply:?}: {error}");
        let status = r.source_status(ID).unwrap();
        assert_eq!(status.consecutive_failures, round, "{reply:?}");
        assert_eq!(status.in_force, SetOrigin::Fetched);
        assert!(status.last_error.unwrap().contains(needle));
        assert_eq!(prefixes(&r), good, "{reply:?}");
    }

    // A failure sets no TTL: the next refresh asks, and recovers.
    env.server.set(Reply::records(&["192.0.2.10"], 0));
    let report = r.refresh_all().await;
    assert_eq!(*outcome(&report), Outcome::Unchanged);
    let status = r.source_status(ID).unwrap();
    assert_eq!((status.consecutive_failures, status.failures), (0, 3));
}

#[tokio::test]
async fn an_empty_answer_is_refused_by_the_empty_guard() {
    let env = Env::new();
    let mut r = env.refresher(&env.config(""));
    // Before any good answer too: nothing is in force, nothing is taken.
    env.server.set(Reply::empty());
    let report = r.refresh_all().await;
    let Outcome::Refused { reason } = outcome(&report) else {
        panic!("{report:?}")
    };
    assert!(
        reason.to_string().contains("selects no prefixes"),
        "{reason}"
    );

    env.server
        .set(Reply::records(&["192.0.2.10", "2001:db8::1"], 0));
    r.refresh_all().await;
    env.server.set(Reply::empty());
    let report = r.refresh_all().await;
    assert!(
        matches!(outcome(&report), Outcome::Refused { .. }),
        "{report:?}"
    );
    assert!(r.source_status(ID).unwrap().refused);
    assert_eq!(prefixes(&r), ["192.0.2.10/32", "2001:db8::1/128"]);

    // --force takes it: the set is emptied, whatever dns_keep would keep.
    let report = r.refresh_with(RefreshOptions { force: true }).await;
    assert_eq!(
        *outcome(&report),
        Outcome::Updated {
            added: 0,
            removed: 2
        }
    );
    assert!(prefixes(&r).is_empty());
}

#[tokio::test]
async fn bogons_in_answers_are_dropped() {
    let env = Env::new();
    let mut r = env.refresher(&env.config(""));
    env.server
        .set(Reply::records(&["10.1.2.3", "192.0.2.10", "fd00::1"], 0));
    let report = r.refresh_all().await;
    assert!(
        matches!(outcome(&report), Outcome::Updated { .. }),
        "{report:?}"
    );
    assert_eq!(prefixes(&r), ["192.0.2.10/32"]);
    let warnings = &report.get(ID).unwrap().warnings;
    assert!(
        warnings.iter().any(|w| w.contains("10.1.2.3"))
            && warnings.iter().any(|w| w.contains("fd00::1")),
        "{warnings:?}"
    );
}
