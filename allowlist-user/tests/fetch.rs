//! Fetching and refreshing against a local HTTPS provider with a test CA.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::{path::Path, sync::Arc, time::Duration, time::Instant};

use allowlist_tests::{
    connect_proxy::ConnectProxy,
    provider_server::{ProviderServer, Response, TestCa},
    world::{DOCUMENT_PATH, provider_toml_with, static_provider_toml},
};
use allowlist_user::{
    Conditional, Config, FetchErrorKind, FetchOptions, FetchOutcome, FetchSettings, Fetcher,
    Outcome, Proxy, Refresher, SetOrigin, USER_AGENT, parse_config,
};
use reqwest::Url;

fn fetcher() -> Fetcher {
    Fetcher::new(FetchOptions {
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
    })
}

fn settings(server: &ProviderServer) -> FetchSettings {
    FetchSettings {
        timeout: Duration::from_secs(3),
        max_bytes: 64 * 1024,
        insecure_http: false,
        ca_file: Some(server.ca_file().to_owned()),
        retries: 2,
        retry_after_limit: Duration::from_secs(600),
        // Not the environment's: these tests must not depend on it.
        proxy: Proxy::Direct,
    }
}

fn url(server: &ProviderServer, path: &str) -> Url {
    Url::parse(&server.url(path)).unwrap()
}

async fn get(
    server: &ProviderServer,
    path: &str,
    settings: &FetchSettings,
) -> Result<FetchOutcome, allowlist_user::FetchError> {
    fetcher()
        .fetch(&url(server, path), settings, &Conditional::default())
        .await
}

#[tokio::test]
async fn ok_returns_the_body_and_validators() {
    let server = ProviderServer::start();
    let body = r#"{"WEBHOOKS": ["192.0.2.10", "198.51.100.20"]}"#;
    server.set(
        "/ips_webhooks.json",
        Response::json(body)
            .etag("\"v1\"")
            .last_modified("Sun, 01 Nov 2026 09:00:00 GMT"),
    );
    let outcome = get(&server, "/ips_webhooks.json", &settings(&server))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        FetchOutcome::Body {
            bytes: body.as_bytes().to_vec(),
            etag: Some("\"v1\"".into()),
            last_modified: Some("Sun, 01 Nov 2026 09:00:00 GMT".into()),
            content_type: Some("binary/octet-stream".into()),
            final_url: None,
        }
    );
    let request = server.last_request("/ips_webhooks.json").unwrap();
    assert_eq!(request.method, "GET");
    assert_eq!(request.header("user-agent"), Some(USER_AGENT));
    assert_eq!(request.header("if-none-match"), None);
}

#[tokio::test]
async fn conditional_get_sends_validators_and_handles_304() {
    let server = ProviderServer::start();
    server.set(
        "/meta",
        Response::json(r#"{"hooks": ["192.0.2.0/24"]}"#).etag("\"abc\""),
    );
    let f = fetcher();
    let cond = Conditional {
        etag: Some("\"abc\"".into()),
        last_modified: None,
    };
    let outcome = f
        .fetch(&url(&server, "/meta"), &settings(&server), &cond)
        .await
        .unwrap();
    assert_eq!(outcome, FetchOutcome::NotModified);
    assert_eq!(
        server
            .last_request("/meta")
            .unwrap()
            .header("if-none-match"),
        Some("\"abc\"")
    );

    // A stale ETag gets the new body.
    let stale = Conditional {
        etag: Some("\"old\"".into()),
        last_modified: None,
    };
    assert!(matches!(
        f.fetch(&url(&server, "/meta"), &settings(&server), &stale)
            .await
            .unwrap(),
        FetchOutcome::Body { .. }
    ));

    // If-Modified-Since.
    let date = "Sun, 01 Nov 2026 09:00:00 GMT";
    server.set("/ip-ranges", Response::json("[]").last_modified(date));
    let cond = Conditional {
        etag: None,
        last_modified: Some(date.into()),
    };
    assert_eq!(
        f.fetch(&url(&server, "/ip-ranges"), &settings(&server), &cond)
            .await
            .unwrap(),
        FetchOutcome::NotModified
    );
    assert_eq!(
        server
            .last_request("/ip-ranges")
            .unwrap()
            .header("if-modified-since"),
        Some(date)
    );
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let server = ProviderServer::start();
    let err = get(&server, "/missing.json", &settings(&server))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, FetchErrorKind::Status { status: 404 }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("{}: HTTP 404 Not Found", server.url("/missing.json"))
    );
    assert_eq!(server.hits("/missing.json"), 1);
}

#[tokio::test]
async fn server_errors_are_retried_then_fail() {
    let server = ProviderServer::start();
    server.set("/ips.json", Response::status(500));
    let started = Instant::now();
    let err = get(&server, "/ips.json", &settings(&server))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, FetchErrorKind::Status { status: 500 }),
        "{err}"
    );
    assert_eq!(server.hits("/ips.json"), 3);
    assert_eq!(err.attempts, 3);
    assert!(
        err.to_string()
            .ends_with("HTTP 500 Internal Server Error (after 3 attempts)"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    server.set("/limited.json", Response::status(429));
    let err = get(&server, "/limited.json", &settings(&server))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, FetchErrorKind::Status { status: 429 }));
    assert_eq!(server.hits("/limited.json"), 3);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = ProviderServer::start();
    server.set(
        "/slow.json",
        Response::json("[]").delay(Duration::from_secs(10)),
    );
    let settings = FetchSettings {
        timeout: Duration::from_millis(300),
        retries: 1,
        ..settings(&server)
    };
    let started = Instant::now();
    let err = get(&server, "/slow.json", &settings).await.unwrap_err();
    assert!(matches!(err.kind, FetchErrorKind::Timeout(_)), "{err}");
    assert!(err.to_string().contains("timed out after 300ms"), "{err}");
    assert_eq!(err.attempts, 2);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_body_that_trickles_past_the_timeout_times_out() {
    let server = ProviderServer::start();
    let body = format!("[{}\"192.0.2.1\"]", " ".repeat(400));
    server.set(
        "/trickle.json",
        Response::json(body).trickle(20, Duration::from_millis(50)),
    );
    let settings = FetchSettings {
        timeout: Duration::from_millis(400),
        retries: 0,
        ..settings(&server)
    };
    let started = Instant::now();
    let err = get(&server, "/trickle.json", &settings).await.unwrap_err();
    assert!(matches!(err.kind, FetchErrorKind::Timeout(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let server = ProviderServer::start();
    let settings = FetchSettings {
        max_bytes: 1000,
        ..settings(&server)
    };
    server.set("/fits.txt", Response::of_size(1000));
    assert!(
        matches!(get(&server, "/fits.txt", &settings).await.unwrap(), FetchOutcome::Body { bytes, .. } if bytes.len() == 1000)
    );

    // Declared length: refused before the body is read.
    server.set("/big.txt", Response::of_size(1001));
    let err = get(&server, "/big.txt", &settings).await.unwrap_err();
    assert!(
        matches!(err.kind, FetchErrorKind::TooLarge { limit: 1000 }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("larger than max_bytes (1000 bytes)"),
        "{err}"
    );
    assert_eq!(server.hits("/big.txt"), 1);

    // Unknown length (chunked): refused while streaming, long before the end.
    server.set("/huge.txt", Response::of_size(50 * 1024 * 1024).chunked());
    let started = Instant::now();
    let err = get(&server, "/huge.txt", &settings).await.unwrap_err();
    assert!(matches!(err.kind, FetchErrorKind::TooLarge { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_rejected() {
    let other = Arc::new(TestCa::new("some other CA"));
    let server = ProviderServer::builder().ca(other).start();
    server.set("/ips.json", Response::json("[]"));
    // ca_file names a CA that did not issue the server's certificate.
    let trusted = TestCa::new("the CA we trust");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    trusted.write_pem(&ca_file).unwrap();
    let settings = FetchSettings {
        ca_file: Some(ca_file),
        ..settings(&server)
    };
    let err = get(&server, "/ips.json", &settings).await.unwrap_err();
    assert!(matches!(err.kind, FetchErrorKind::Tls(_)), "{err:?}");
    assert!(
        err.to_string().contains("TLS error") && err.to_string().contains("UnknownIssuer"),
        "{err}"
    );
    assert_eq!(err.attempts, 1, "certificate errors are not retried");
    assert_eq!(server.hits("/ips.json"), 0);

    // Without ca_file the built-in roots don't know the test CA either.
    let settings = FetchSettings {
        ca_file: None,
        ..settings
    };
    let err = get(&server, "/ips.json", &settings).await.unwrap_err();
    assert!(matches!(err.kind, FetchErrorKind::Tls(_)), "{err:?}");
}

#[tokio::test]
async fn a_bad_ca_file_is_reported() {
    let server = ProviderServer::start();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, "not a certificate").unwrap();
    let settings = FetchSettings {
        ca_file: Some(ca_file.clone()),
        ..settings(&server)
    };
    let err = get(&server, "/x", &settings).await.unwrap_err();
    assert!(matches!(err.kind, FetchErrorKind::CaFile { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&ca_file.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn the_server_can_run_on_a_given_listener() {
    let listener = std::net::TcpListener::bind("[::1]:0")
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ProviderServer::start_on(listener);
    assert_eq!(server.addr(), addr);
    server.set("/ips.txt", Response::ok("192.0.2.1\n"));
    assert!(matches!(
        get(&server, "/ips.txt", &settings(&server)).await.unwrap(),
        FetchOutcome::Body { .. }
    ));
}

// -------------------------------------------------------------------------------------
// Refresh against the server.

fn refresh_config(server: &ProviderServer, state_dir: &Path) -> Config {
    let text = format!(
        "interfaces = [\"eth0\"]\nstate_dir = \"{}\"\n{}{}",
        state_dir.display(),
        provider_toml_with("partner", server, "2s", 1),
        static_provider_toml("office", &["203.0.113.0/24"]),
    );
    parse_config(&text, Path::new("fetch-test.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn intercom_doc(outbound: &[&str]) -> String {
    let mut ranges: Vec<serde_json::Value> = outbound
        .iter()
        .map(|r| serde_json::json!({"range": r, "region": "US", "service": "INTERCOM-OUTBOUND"}))
        .collect();
    ranges.push(serde_json::json!({"range": "198.18.0.0/24", "region": "US", "service": "INTERCOM-GENERAL"}));
    ranges.push(serde_json::json!({"range": "198.19.0.0/24", "region": "US", "service": "INTERCOM-ENDPOINTS"}));
    serde_json::json!({"ip_ranges": ranges, "date": "2026-11-02"}).to_string()
}

#[tokio::test]
async fn refresh_keeps_the_last_good_set_when_the_provider_fails() {
    let server = ProviderServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = refresh_config(&server, dir.path());
    server.set(
        DOCUMENT_PATH,
        Response::json(intercom_doc(&[
            "192.0.2.1/32",
            "192.0.2.2/32",
            "198.51.100.0/28",
            "10.1.2.3/32",
        ]))
        .etag("\"d1\""),
    );
    let mut r = Refresher::new(&config, fetcher()).unwrap();
    assert!(r.bootstrap().is_empty());
    let report = r.refresh_all().await;
    assert!(report.is_ok(), "{report:?}");
    let id = "partner/0";
    // The private range is dropped from a url source, with a warning; documentation
    // ranges are kept; other services are excluded.
    let source = report.get(id).unwrap();
    assert!(
        source
            .warnings
            .iter()
            .any(|w| w.contains("10.1.2.3/32") && w.contains("private")),
        "{source:?}"
    );
    let expected: Vec<ipnet::IpNet> = ["192.0.2.1/32", "192.0.2.2/32", "198.51.100.0/28"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(r.source_prefixes(id).unwrap(), expected);
    let good = r.allowlist();
    assert_eq!(good.entries().len(), 4);

    // The same document again: a conditional GET, answered 304.
    let report = r.refresh_all().await;
    assert_eq!(report.get(id).unwrap().outcome, Outcome::NotModified);
    assert_eq!(
        server
            .last_request(DOCUMENT_PATH)
            .unwrap()
            .header("if-none-match"),
        Some("\"d1\"")
    );

    // The provider breaks: the last good set stays in force, the error is reported.
    server.set(DOCUMENT_PATH, Response::status(500));
    for round in 1..=2u32 {
        let report = r.refresh_all().await;
        let Outcome::Failed { error } = &report.get(id).unwrap().outcome else {
            panic!("{report:?}")
        };
        let error = error.to_string();
        assert!(error.contains("HTTP 500"), "{error}");
        let status = r.source_status(id).unwrap();
        assert_eq!(status.consecutive_failures, round);
        assert!(status.last_error.as_ref().unwrap().contains("HTTP 500"));
        assert_eq!(r.allowlist(), good);
    }

    // After a restart, with the provider still down, the saved set is in force.
    let mut restarted = Refresher::new(&config, fetcher()).unwrap();
    restarted.bootstrap();
    assert_eq!(
        restarted.source_status(id).unwrap().in_force,
        SetOrigin::State
    );
    assert_eq!(restarted.allowlist(), good);
    restarted.refresh_all().await;
    assert_eq!(restarted.allowlist(), good);
}

#[tokio::test]
async fn refresh_refuses_malformed_empty_and_shrunken_lists() {
    let server = ProviderServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = refresh_config(&server, dir.path());
    let path = DOCUMENT_PATH;
    server.set(
        path,
        Response::json(intercom_doc(&[
            "192.0.2.0/28",
            "198.51.100.0/28",
            "203.0.113.64/28",
            "2001:db8::/64",
        ])),
    );
    let mut r = Refresher::new(&config, fetcher()).unwrap();
    r.bootstrap();
    assert!(r.refresh_all().await.is_ok());
    let good = r.allowlist();
    let id = "partner/0";

    // Malformed JSON.
    server.set(path, Response::json("{\"ip_ranges\": [{\"range\": "));
    let report = r.refresh_all().await;
    assert!(
        matches!(&report.get(id).unwrap().outcome, Outcome::Failed { error } if error.to_string().contains("not valid JSON")),
        "{report:?}"
    );
    assert_eq!(r.allowlist(), good);

    // A record without the cidr field.
    server.set(
        path,
        Response::json(r#"{"ip_ranges": [{"service": "INTERCOM-OUTBOUND"}]}"#),
    );
    let report = r.refresh_all().await;
    assert!(
        matches!(&report.get(id).unwrap().outcome, Outcome::Failed { error } if error.to_string().contains("has no field `range`")),
        "{report:?}"
    );

    // An empty selection.
    server.set(path, Response::json(intercom_doc(&[])));
    let report = r.refresh_all().await;
    assert!(
        matches!(&report.get(id).unwrap().outcome, Outcome::Refused { reason } if reason.to_string().contains("no prefixes")),
        "{report:?}"
    );
    assert_eq!(r.allowlist(), good);

    // Two of three IPv4 ranges gone: beyond max_shrink = 0.5.
    server.set(
        path,
        Response::json(intercom_doc(&["192.0.2.0/28", "2001:db8::/64"])),
    );
    let report = r.refresh_all().await;
    assert!(
        matches!(&report.get(id).unwrap().outcome, Outcome::Refused { reason } if reason.to_string().contains("max_shrink")),
        "{report:?}"
    );
    let status = r.source_status(id).unwrap();
    assert!(status.refused);
    assert_eq!(status.refusals, 2);
    assert_eq!(r.allowlist(), good);

    // One of three gone: within the threshold.
    server.set(
        path,
        Response::json(intercom_doc(&[
            "192.0.2.0/28",
            "198.51.100.0/28",
            "2001:db8::/64",
        ])),
    );
    let report = r.refresh_all().await;
    assert_eq!(
        report.get(id).unwrap().outcome,
        Outcome::Updated {
            added: 0,
            removed: 1
        }
    );
    assert!(!r.source_status(id).unwrap().refused);
}

// -------------------------------------------------------------------------------------
// Failures that another attempt cannot cure are not retried.

#[tokio::test]
async fn a_redirect_to_plain_http_is_refused_and_not_retried() {
    let server = ProviderServer::start();
    let plain = format!("http://{}/ips.json", server.addr());
    server.set("/old.json", Response::redirect(&plain));
    let err = get(&server, "/old.json", &settings(&server))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, FetchErrorKind::Redirect(_)), "{err:?}");
    assert!(err.to_string().contains("plain http"), "{err}");
    assert!(err.to_string().contains(&plain), "{err}");
    assert_eq!(err.attempts, 1, "{err}");
    assert_eq!(server.hits("/old.json"), 1);
}

#[tokio::test]
async fn redirect_loops_and_chains_are_not_retried() {
    let server = ProviderServer::start();
    server.set("/a", Response::redirect(server.url("/b")));
    server.set("/b", Response::redirect(server.url("/a")));
    let err = get(&server, "/a", &settings(&server)).await.unwrap_err();
    assert!(matches!(err.kind, FetchErrorKind::Redirect(_)), "{err:?}");
    assert!(err.to_string().contains("redirect loop"), "{err}");
    assert_eq!(err.attempts, 1, "{err}");
    assert_eq!((server.hits("/a"), server.hits("/b")), (1, 1));

    for i in 0..10 {
        server.set(
            &format!("/r{i}"),
            Response::redirect(server.url(&format!("/r{}", i + 1))),
        );
    }
    let err = get(&server, "/r0", &settings(&server)).await.unwrap_err();
    assert!(matches!(err.kind, FetchErrorKind::Redirect(_)), "{err:?}");
    assert!(err.to_string().contains("too many redirects"), "{err}");
    assert_eq!(err.attempts, 1, "{err}");
    assert_eq!(server.hits("/r0"), 1);
}

#[tokio::test]
async fn certificate_errors_are_not_retried() {
    // Unknown CA: a_certificate_from_an_unknown_ca_is_rejected. A certificate for
    // other names, and an expired one, from the trusted CA:
    let wrong_name = ProviderServer::builder()
        .only_sans()
        .san("ranges.example.net")
        .start();
    let expired = ProviderServer::builder().expired().start();
    for (server, needle) in [(&wrong_name, "not valid for name"), (&expired, "expired")] {
        server.set("/ips.json", Response::json("[]"));
        let err = get(server, "/ips.json", &settings(server))
            .await
            .unwrap_err();
        assert!(matches!(err.kind, FetchErrorKind::Tls(_)), "{err:?}");
        assert!(err.to_string().contains(needle), "{err}");
        assert_eq!(err.attempts, 1, "{err}");
    }
}

#[tokio::test]
async fn client_errors_are_not_retried_but_408_and_429_are() {
    let server = ProviderServer::start();
    for status in [400, 401, 403, 404, 410, 451] {
        let path = format!("/{status}");
        server.set(&path, Response::status(status));
        let err = get(&server, &path, &settings(&server)).await.unwrap_err();
        assert_eq!(err.attempts, 1, "{err}");
        assert_eq!(server.hits(&path), 1, "{status}");
    }
    for status in [408, 429, 500, 502, 503] {
        let path = format!("/{status}");
        server.set(&path, Response::status(status));
        let err = get(&server, &path, &settings(&server)).await.unwrap_err();
        assert_eq!(err.attempts, 3, "{err}");
        assert_eq!(server.hits(&path), 3, "{status}");
    }
}

// -------------------------------------------------------------------------------------
// Retry-After.

#[tokio::test]
async fn retry_after_is_honoured_in_seconds_and_as_a_date() {
    let server = ProviderServer::start();
    server.set_sequence(
        "/busy.json",
        vec![
            Response::status(503).header("Retry-After", "1"),
            Response::json("[]"),
        ],
    );
    let started = Instant::now();
    let outcome = get(&server, "/busy.json", &settings(&server)).await;
    let took = started.elapsed();
    assert!(
        matches!(outcome, Ok(FetchOutcome::Body { .. })),
        "{outcome:?}"
    );
    assert_eq!(server.hits("/busy.json"), 2);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "took {took:?}"
    );

    // An HTTP-date three seconds ahead (whole seconds: more than two seconds away).
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
    server.set_sequence(
        "/limited.json",
        vec![
            Response::status(429).header("Retry-After", &date),
            Response::json("[]"),
        ],
    );
    let started = Instant::now();
    let outcome = get(&server, "/limited.json", &settings(&server)).await;
    let took = started.elapsed();
    assert!(
        matches!(outcome, Ok(FetchOutcome::Body { .. })),
        "{outcome:?}"
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

#[tokio::test]
async fn a_retry_after_beyond_the_refresh_interval_gives_up_at_once() {
    let server = ProviderServer::start();
    server.set(
        "/busy.json",
        Response::status(503).header("Retry-After", "3600"),
    );
    let started = Instant::now();
    let err = get(&server, "/busy.json", &settings(&server))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.attempts, 1, "{err}");
    assert_eq!(server.hits("/busy.json"), 1);
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 503 Service Unavailable")
            && msg.contains("provider asked to retry after 1h")
            && msg.contains("longer than the agent waits (10m")
            && msg.contains("next refresh will try again"),
        "{msg}"
    );
}

// -------------------------------------------------------------------------------------
// Redirects to another origin; HTML where JSON was expected.

#[tokio::test]
async fn a_failure_after_a_redirect_names_where_it_ended() {
    let first = ProviderServer::start();
    let second = ProviderServer::builder().ca(first.ca().clone()).start();
    first.set(
        "/gone.json",
        Response::redirect(second.url("/missing.json")),
    );
    let err = get(&first, "/gone.json", &settings(&first))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, FetchErrorKind::Status { status: 404 }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}: HTTP 404 Not Found (redirected to {})",
            first.url("/gone.json"),
            second.url("/missing.json")
        )
    );
}

#[tokio::test]
async fn html_instead_of_json_is_named_with_its_content_type() {
    let server = ProviderServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = refresh_config(&server, dir.path());
    server.set(
        DOCUMENT_PATH,
        Response::ok(
            "<!DOCTYPE html>\n<html><head><title>Sign in to the Wi-Fi</title></head></html>\n",
        )
        .header("Content-Type", "text/html; charset=utf-8"),
    );
    let mut r = Refresher::new(&config, fetcher()).unwrap();
    r.bootstrap();
    let report = r.refresh_all().await;
    let Outcome::Failed { error } = &report.get("partner/0").unwrap().outcome else {
        panic!("{report:?}")
    };
    let error = error.to_string();
    assert!(
        error.contains(
            "the server sent HTML (Content-Type: text/html; charset=utf-8; a captive portal or an error page?) instead of JSON"
        ),
        "{error}"
    );

    // HTML under a JSON content type (or none) is still named for what it is.
    server.set(
        DOCUMENT_PATH,
        Response::ok("  <html><body>503 Service Temporarily Unavailable</body></html>")
            .header("Content-Type", "application/json"),
    );
    let report = r.refresh_all().await;
    let Outcome::Failed { error } = &report.get("partner/0").unwrap().outcome else {
        panic!("{report:?}")
    };
    let error = error.to_string();
    assert!(
        error.contains("the server sent HTML (Content-Type: application/json;"),
        "{error}"
    );

    // Plain broken JSON keeps the parser's message.
    server.set(
        DOCUMENT_PATH,
        Response::ok("{\"ip_ranges\": [").header("Content-Type", "application/json"),
    );
    let report = r.refresh_all().await;
    let Outcome::Failed { error } = &report.get("partner/0").unwrap().outcome else {
        panic!("{report:?}")
    };
    let error = error.to_string();
    assert!(
        error.contains("not valid JSON") && !error.contains("HTML"),
        "{error}"
    );
}

#[tokio::test]
async fn the_final_url_is_reported_when_a_redirect_leaves_the_origin() {
    let first = ProviderServer::start();
    let second = ProviderServer::builder().ca(first.ca().clone()).start();
    second.set("/ips.json", Response::json("[\"192.0.2.1\"]"));
    first.set("/moved.json", Response::redirect(second.url("/ips.json")));
    first.set("/here.json", Response::redirect(first.url("/there.json")));
    first.set("/there.json", Response::json("[]"));

    let outcome = get(&first, "/moved.json", &settings(&first)).await.unwrap();
    let FetchOutcome::Body { final_url, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        final_url.as_ref().map(Url::as_str),
        Some(second.url("/ips.json").as_str())
    );
    // Another port is another origin; the same origin is not reported.
    let outcome = get(&first, "/here.json", &settings(&first)).await.unwrap();
    assert!(
        matches!(
            &outcome,
            FetchOutcome::Body {
                final_url: None,
                ..
            }
        ),
        "{outcome:?}"
    );
}

// -------------------------------------------------------------------------------------
// Proxies.

#[tokio::test]
async fn a_configured_proxy_carries_the_fetch() {
    let server = ProviderServer::start();
    server.set("/ips.json", Response::json(r#"{"hooks": ["192.0.2.1"]}"#));
    let proxy = ConnectProxy::start();
    let settings = FetchSettings {
        proxy: Proxy::parse(&proxy.url()).unwrap(),
        ..settings(&server)
    };
    let outcome = get(&server, "/ips.json", &settings).await.unwrap();
    assert!(
        matches!(&outcome, FetchOutcome::Body { bytes, .. } if bytes.starts_with(b"{\"hooks\"")),
        "{outcome:?}"
    );
    assert_eq!(proxy.tunnels(), 1);
    assert_eq!(server.hits("/ips.json"), 1);

    // The same through a whole refresh, with the proxy from the configuration file
    // (global, overridden per source).
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
interfaces = ["eth0"]
state_dir = "{state}"
proxy = "http://127.0.0.1:9"

[[provider]]
name = "partner"
[[provider.source]]
url = "{url}"
items = "hooks"
ca_file = "{ca}"
proxy = "{proxy}"
"#,
        state = dir.path().display(),
        url = server.url("/ips.json"),
        ca = server.ca_file().display(),
        proxy = proxy.url(),
    );
    let config =
        parse_config(&text, Path::new("proxy-test.toml")).unwrap_or_else(|e| panic!("{e}"));
    let mut r = Refresher::new(&config, fetcher()).unwrap();
    r.bootstrap();
    let report = r.refresh_all().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(proxy.tunnels(), 2);
}

#[tokio::test]
async fn an_unreachable_proxy_is_named() {
    let server = ProviderServer::start();
    server.set("/ips.json", Response::json("[]"));
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = format!("http://127.0.0.1:{port}");
    let settings = FetchSettings {
        proxy: Proxy::parse(&proxy).unwrap(),
        retries: 1,
        ..settings(&server)
    };
    let err = get(&server, "/ips.json", &settings).await.unwrap_err();
    assert!(matches!(err.kind, FetchErrorKind::Proxy { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("cannot connect through the proxy {proxy}/")),
        "{msg}"
    );
    // Retried like any connection failure.
    assert_eq!(err.attempts, 2, "{msg}");
    assert_eq!(server.hits("/ips.json"), 0);

    // Credentials in the proxy URL are not shown.
    let settings = FetchSettings {
        proxy: Proxy::parse(&format!("http://ops:s3cret@127.0.0.1:{port}")).unwrap(),
        retries: 0,
        ..settings
    };
    let err = get(&server, "/ips.json", &settings).await.unwrap_err();
    assert!(
        err.to_string().contains("http://ops:***@127.0.0.1:")
            && !err.to_string().contains("s3cret"),
        "{err}"
    );
}
