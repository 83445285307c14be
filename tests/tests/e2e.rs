//! End-to-end scenarios: real namespaces, real TCP, the real agent binary, a real
//! HTTPS provider. Each test builds its own world and removes it, even on failure.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use allowlist_tests::{
    netns::require_root,
    provider_server::{ProviderServer, Response},
    world::*,
};
use serde_json::{Value, json};

const SOURCE: &str = "partner/0";

fn a(ip: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

fn counter(status: &Value, reason: &str, action: &str) -> u64 {
    status["counters"]["packets"][reason][action]
        .as_u64()
        .unwrap_or(0)
}

fn source_status(world: &World, id: &str) -> Value {
    let status = world.status();
    status["agent"]["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

fn assert_denied(world: &World, src: IpAddr) {
    world.assert_denied(src, "");
}

/// Scenario 1: allowed in, others time out, everyone reaches :80; status and
/// /metrics agree with the traffic.
#[test]
fn allowlisted_client_gets_in_and_others_time_out() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let port = world.free_port();
    let provider = world.provider_publishing(
        &["192.0.2.0/24"],
        &format!("metrics = \"127.0.0.1:{port}\"\nrefresh = \"1h\""),
    );
    let agent = world.start_agent();

    world
        .exchange(a(CLIENT_A), 443)
        .unwrap_or_else(|e| panic!("allowed client: {e}\n{}", agent.log()));
    assert_denied(&world, a(CLIENT_B));
    // Listed in the document, but for another service.
    assert_denied(&world, a(CLIENT_C));
    world
        .exchange(a(CLIENT_B), 80)
        .expect("everyone reaches :80");
    world
        .exchange(a(CLIENT_A), 80)
        .expect("everyone reaches :80");

    let status = world.status();
    let allowed = counter(&status, "allowlisted", "pass");
    let dropped = counter(&status, "not_allowlisted", "drop");
    assert!(
        allowed >= 3,
        "handshake and request segments of the allowed client: {status:#}"
    );
    assert!(
        dropped >= 2,
        "the SYNs of the two denied clients: {status:#}"
    );
    assert!(
        counter(&status, "unprotected_port", "pass") >= 6,
        "traffic to :80: {status:#}"
    );
    let hits = status["providers"][0]["hits"].as_u64().unwrap();
    assert_eq!(status["providers"][0]["name"], "partner");
    assert_eq!(
        hits, allowed,
        "every allowed packet is a hit of the provider"
    );

    let (code, metrics) = world.http_get(port, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        metric(
            &metrics,
            r#"allowlist_packets_total{reason="allowlisted",action="pass"}"#
        ),
        Some(allowed as f64),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"allowlist_packets_total{reason="not_allowlisted",action="drop"}"#
        ),
        Some(dropped as f64)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"allowlist_provider_hits_total{provider="partner"}"#
        ),
        Some(hits as f64)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"allowlist_prefixes{provider="partner",family="ipv4"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"allowlist_refresh_total{source="partner/0",result="success"}"#
        ),
        Some(1.0)
    );
    let (code, _) = world.http_get(port, "/healthz");
    assert_eq!(code, 200);

    let out = world.cli(&["check", "198.51.100.10"]);
    assert!(text(&out).starts_with("DROP"), "{}", text(&out));
    let out = world.cli(&["check", "192.0.2.200", "--json"]);
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check["verdict"], "pass");
    assert_eq!(check["matched_prefix"], "192.0.2.0/24");
    assert_eq!(check["provider"], "partner");
    let listed = || {
        text(&world.cli(&["list"]))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(), ["192.0.2.0/24", "partner"]);
    let out = world.cli(&["status"]);
    assert!(
        out.status.success() && text(&out).contains("partner/0"),
        "{}",
        text(&out)
    );

    // `fetch` shows what a refresh would change, and changes nothing.
    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["192.0.2.0/24", "198.51.100.0/24"])),
    );
    let out = world.cli(&["fetch"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("+ 198.51.100.0/24"), "{}", text(&out));
    assert_denied(&world, a(CLIENT_B));
    assert_eq!(listed(), ["192.0.2.0/24", "partner"]);

    // bpftool reads the pins: keys and values typed from BTF, the program by name.
    let dump = bpftool(&[
        "map",
        "dump",
        "pinned",
        &world.pin_dir.join("ALLOW_V4").display().to_string(),
    ]);
    assert!(
        dump.contains("\"prefix_len\": 24") && dump.contains("\"rule\": 0"),
        "{dump}"
    );
    let link = world.pin_dir.join(format!("link_{}", world.server_if));
    let link: Value = serde_json::from_str(&bpftool(&[
        "-j",
        "link",
        "show",
        "pinned",
        &link.display().to_string(),
    ]))
    .unwrap();
    let prog: Value = serde_json::from_str(&bpftool(&[
        "-j",
        "prog",
        "show",
        "id",
        &link["prog_id"].to_string(),
    ]))
    .unwrap();
    assert_eq!(prog["name"], "allowlist", "{prog:#}");
    assert_eq!(prog["type"], "xdp");
}

fn bpftool(args: &[&str]) -> String {
    let out = std::process::Command::new("bpftool")
        .args(args)
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool {}: {}",
        args.join(" "),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Scenario 7: IPv6.
#[test]
fn ipv6_allowed_and_denied() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["2001:db8:a::/64"], "");
    let agent = world.start_agent();
    world
        .exchange(IpAddr::V6(CLIENT_A6), 443)
        .unwrap_or_else(|e| panic!("allowed v6 client: {e}\n{}", agent.log()));
    assert_denied(&world, IpAddr::V6(CLIENT_B6));
    world
        .exchange(IpAddr::V6(CLIENT_B6), 80)
        .expect("v6 to :80");
    assert_denied(&world, a(CLIENT_A));
}

/// Scenario 2: a range the provider adds lets its client in within one refresh; a
/// range it removes shuts its client out.
#[test]
fn provider_changes_apply_within_one_refresh() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let provider = world.provider_publishing(
        &["192.0.2.0/24"],
        "refresh = \"1s\"\n[guards]\nmax_shrink = 0.9",
    );
    let _agent = world.start_agent();
    world.exchange(a(CLIENT_A), 443).expect("allowed");
    assert_denied(&world, a(CLIENT_B));

    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["192.0.2.0/24", "198.51.100.0/24"])),
    );
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(8), || world
            .exchange(a(CLIENT_B), 443)
            .is_ok()),
        "the added range never let its client in"
    );
    eprintln!("added range effective after {:?}", started.elapsed());

    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["198.51.100.0/24"])),
    );
    assert!(
        wait_until(Duration::from_secs(8), || world
            .exchange(a(CLIENT_A), 443)
            .is_err()),
        "the removed range still lets its client in"
    );
    world
        .exchange(a(CLIENT_B), 443)
        .expect("the remaining range still works");
}

/// Scenario 3: every way a provider can fail keeps the last good set; status and
/// metrics report it.
fn failure_keeps_last_good_set(
    inject: impl FnOnce(&mut Option<ProviderServer>),
    expect_result: &str,
) {
    if !require_root() {
        return;
    }
    let world = World::new();
    let port = world.free_port();
    let mut provider = Some(world.provider_publishing(
        &["192.0.2.0/24", "198.51.100.128/25"],
        &format!("refresh = \"1s\"\nmetrics = \"127.0.0.1:{port}\""),
    ));
    let agent = world.start_agent();
    assert!(
        wait_until(Duration::from_secs(10), || {
            !source_status(&world, SOURCE)["last_success"].is_null()
        }),
        "no successful first fetch:\n{}",
        agent.log()
    );
    let client = world.client_loop(a(CLIENT_A), 443);

    inject(&mut provider);
    assert!(
        wait_until(
            Duration::from_secs(15),
            || source_status(&world, SOURCE)["consecutive_failures"].as_u64() >= Some(2)
        ),
        "the failure was not reported: {:#}\n{}",
        source_status(&world, SOURCE),
        agent.log()
    );
    let status = source_status(&world, SOURCE);
    assert!(!status["last_error"].is_null(), "{status:#}");
    assert_eq!(
        status["prefixes_v4"], 2,
        "the last good set is still in force: {status:#}"
    );

    let (_, metrics) = world.http_get(port, "/metrics");
    let failures = metric(
        &metrics,
        &format!(r#"allowlist_refresh_total{{source="{SOURCE}",result="{expect_result}"}}"#),
    );
    assert!(
        failures >= Some(1.0),
        "metrics do not report the {expect_result}:\n{metrics}"
    );
    assert!(
        metric(
            &metrics,
            &format!(r#"allowlist_source_consecutive_failures{{source="{SOURCE}"}}"#)
        ) >= Some(2.0)
    );
    if expect_result == "refused" {
        assert!(
            metric(
                &metrics,
                &format!(r#"allowlist_guard_refusals_total{{source="{SOURCE}"}}"#)
            ) >= Some(1.0)
        );
    }
    let out = world.cli(&["list"]);
    assert!(
        text(&out).contains("192.0.2.0/24") && text(&out).contains("198.51.100.128/25"),
        "{}",
        text(&out)
    );

    let (ok, failed) = client.finish();
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "the allowed client lost access during the failure: {failed:?}"
    );
    assert_denied(&world, a(CLIENT_C));
}

#[test]
fn provider_connection_refused_keeps_last_good_set() {
    failure_keeps_last_good_set(|p| drop(p.take()), "failure");
}

#[test]
fn provider_http_500_keeps_last_good_set() {
    failure_keeps_last_good_set(
        |p| {
            p.as_ref()
                .unwrap()
                .set(DOCUMENT_PATH, Response::status(500))
        },
        "failure",
    );
}

#[test]
fn provider_timeout_keeps_last_good_set() {
    failure_keeps_last_good_set(
        |p| {
            let doc = intercom_document(&["192.0.2.0/24"]);
            p.as_ref().unwrap().set(
                DOCUMENT_PATH,
                Response::json(doc).delay(Duration::from_secs(5)),
            );
        },
        "failure",
    );
}

#[test]
fn provider_garbage_keeps_last_good_set() {
    failure_keeps_last_good_set(
        |p| {
            p.as_ref()
                .unwrap()
                .set(DOCUMENT_PATH, Response::ok("<html>maintenance</html>"))
        },
        "failure",
    );
}

#[test]
fn provider_empty_list_keeps_last_good_set() {
    failure_keeps_last_good_set(
        |p| {
            p.as_ref()
                .unwrap()
                .set(DOCUMENT_PATH, Response::json(intercom_document(&[])))
        },
        "refused",
    );
}

#[test]
fn provider_shrink_beyond_threshold_keeps_last_good_set() {
    // 384 addresses down to 128: two thirds removed, above the default 50%.
    failure_keeps_last_good_set(
        |p| {
            p.as_ref().unwrap().set(
                DOCUMENT_PATH,
                Response::json(intercom_document(&["198.51.100.128/25"])),
            )
        },
        "refused",
    );
}

/// A reload keeps the history of the sources whose definition did not change: a
/// source that keeps failing still reports its last success (so
/// `AllowlistSourceStale` can fire) and counts its failures across reloads.
#[test]
fn reload_keeps_the_history_of_unchanged_sources() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let port = world.free_port();
    let provider = world.provider_publishing(
        &["192.0.2.0/24"],
        &format!("metrics = \"127.0.0.1:{port}\"\nrefresh = \"1h\""),
    );
    let agent = world.start_agent();
    let last_success = source_status(&world, SOURCE)["last_success"].clone();
    assert!(!last_success.is_null(), "no first fetch:\n{}", agent.log());
    let stamp = format!(r#"allowlist_refresh_last_success_timestamp_seconds{{source="{SOURCE}"}}"#);
    let in_a_row = format!(r#"allowlist_source_consecutive_failures{{source="{SOURCE}"}}"#);
    let success_at = metric(&world.http_get(port, "/metrics").1, &stamp);
    assert!(success_at.is_some(), "no {stamp} sample");

    provider.set(DOCUMENT_PATH, Response::status(500));
    let failures = |w: &World| {
        w.status()["agent"]["refresh_results"][SOURCE]["failure"]
            .as_u64()
            .unwrap_or(0)
    };
    // Each reload refreshes at once (the interval is an hour): one failure each.
    for round in 1..=2u64 {
        let out = world.cli(&["reload"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            wait_until(Duration::from_secs(10), || failures(&world) >= round),
            "reload {round} did not refresh:\n{}",
            agent.log()
        );
        let status = source_status(&world, SOURCE);
        assert_eq!(
            (
                &status["consecutive_failures"],
                &status["failures"],
                &status["last_success"]
            ),
            (&round.into(), &round.into(), &last_success),
            "after reload {round}: {status:#}\n{}",
            agent.log()
        );
        assert!(!status["last_error"].is_null(), "{status:#}");
        assert_eq!(status["prefixes_v4"], 1, "{status:#}");
        let (_, metrics) = world.http_get(port, "/metrics");
        assert_eq!(metric(&metrics, &stamp), success_at, "{metrics}");
        assert_eq!(metric(&metrics, &in_a_row), Some(round as f64), "{metrics}");
    }
}

/// The change history records an applied list, a change and a refused shrink, keeps
/// them across an agent restart, and `allowlist check` says when the address's
/// prefixes entered and left the allowlist, and by which source.
#[test]
fn the_history_shows_changes_and_refusals_across_a_restart() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let provider =
        world.provider_publishing(&["192.0.2.0/24", "198.51.100.0/25"], "refresh = \"1h\"");
    let history = |w: &World| -> Vec<Value> {
        let out = w.cli(&["history", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    let wait_for = |w: &World, count: usize, agent: &Agent| {
        assert!(
            wait_until(Duration::from_secs(10), || history(w).len() >= count),
            "{count} records expected: {:#?}\n{}",
            history(w),
            agent.log()
        );
    };
    let mut agent = world.start_agent();
    wait_for(&world, 1, &agent);
    // A change (each reload refreshes at once; the interval is an hour).
    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["192.0.2.0/24", "198.51.100.0/24"])),
    );
    assert!(world.cli(&["reload"]).status.success());
    wait_for(&world, 2, &agent);
    // 512 addresses down to 128: refused by the shrink guard.
    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["198.51.100.128/25"])),
    );
    assert!(world.cli(&["reload"]).status.success());
    wait_for(&world, 3, &agent);

    agent.signal(libc::SIGTERM);
    assert!(
        agent.wait(Duration::from_secs(10)).success(),
        "{}",
        agent.log()
    );
    let agent = world.start_agent();
    // The restarted agent refreshes at once: the same update, refused again.
    wait_for(&world, 4, &agent);
    let records = history(&world);
    let brief: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "source": r["source"], "outcome": r["outcome"], "guard": r["guard"],
                "added": r["added"], "removed": r["removed"], "size_after": r["size_after"],
            })
        })
        .collect();
    assert_eq!(
        brief[..3],
        [
            json!({
                "source": SOURCE, "outcome": "applied", "guard": null,
                "added": ["192.0.2.0/24", "198.51.100.0/25"], "removed": [], "size_after": 2,
            }),
            json!({
                "source": SOURCE, "outcome": "applied", "guard": null,
                "added": ["198.51.100.0/24"], "removed": ["198.51.100.0/25"], "size_after": 2,
            }),
            json!({
                "source": SOURCE, "outcome": "refused", "guard": "shrink",
                "added": ["198.51.100.128/25"], "removed": ["192.0.2.0/24", "198.51.100.0/24"],
                "size_after": 2,
            }),
        ],
        "{records:#?}"
    );
    // After the restart: the same refusal again, only counted; no record of the saved
    // list the agent restarted from (the history knows the source).
    for r in &records[3..] {
        assert_eq!(
            (&r["outcome"], &r["guard"]),
            (&"refused".into(), &"shrink".into()),
            "{r:#}"
        );
        assert!(
            r["note"].as_str().unwrap().contains("the same update"),
            "{r:#}"
        );
    }
    let times: Vec<&str> = records.iter().map(|r| r["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let kept = std::fs::read_to_string(world.state_dir().join("refused-partner%2F0.json"))
        .expect("the refused update is kept");
    let kept: Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(
        (&kept["guard"], &kept["prefixes"], &kept["at"]),
        (
            &"shrink".into(),
            &json!(["198.51.100.128/25"]),
            &records[2]["at"]
        )
    );

    // `check` names the source and the times.
    let when = |i: usize| times[i].replacen('T', " ", 1);
    let out = world.cli(&["check", "198.51.100.7"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    for line in [
        format!(
            "history: 198.51.100.0/25 added by {SOURCE} at {}; removed at {}",
            when(0),
            when(1)
        ),
        format!("history: 198.51.100.0/24 added by {SOURCE} at {}", when(1)),
    ] {
        assert!(said.contains(&line), "{line:?} not in:\n{said}");
    }
    eprintln!("allowlist check:\n{said}");
    let out = world.cli(&["check", "198.51.100.7", "--json"]);
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    let changes = check["history"]["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 3, "{check:#}");
    let added = changes
        .iter()
        .find(|c| c["prefix"] == "198.51.100.0/24")
        .expect("the /24's addition");
    assert_eq!(
        (
            &added["prefix"],
            &added["change"],
            &added["source"],
            &added["at"]
        ),
        (
            &"198.51.100.0/24".into(),
            &"added".into(),
            &SOURCE.into(),
            &records[1]["at"]
        )
    );
    let said = text(&world.cli(&["check", "2001:db8::1"]));
    assert!(
        said.contains("the history knows nothing about 2001:db8::1"),
        "{said}"
    );

    // The readable form, and the filters.
    let out = world.cli(&["history", "--source", "partner", "--since", "1h"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    eprintln!("allowlist history:\n{said}");
    assert!(said.contains("REFUSED by the shrink guard"), "{said}");
    assert!(said.contains("    + 198.51.100.0/24"), "{said}");
    let out = world.cli(&["history", "--source", "nobody"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no source or provider \"nobody\""),
        "{}",
        text(&out)
    );
}

/// Scenario 4: SIGTERM and SIGKILL leave the filter enforcing; a new agent adopts
/// the pinned state; an allowed client connecting throughout never fails.
#[test]
fn agent_restart_and_sigkill_keep_enforcing() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "");
    let mut agent = world.start_agent();
    let client = world.client_loop(a(CLIENT_A), 443);

    agent.signal(libc::SIGTERM);
    assert!(
        agent.wait(Duration::from_secs(10)).success(),
        "{}",
        agent.log()
    );
    assert_denied(&world, a(CLIENT_B));
    let mut agent = world.start_agent();
    let status = world.status();
    assert_eq!(
        status["agent"]["interfaces"][0]["adopted"], true,
        "{status:#}"
    );

    agent.signal(libc::SIGKILL);
    agent.wait(Duration::from_secs(10));
    assert_denied(&world, a(CLIENT_B));
    let _agent = world.start_agent();
    assert_eq!(world.status()["agent"]["interfaces"][0]["adopted"], true);
    assert_denied(&world, a(CLIENT_B));

    let before = client.successes();
    assert!(wait_until(Duration::from_secs(5), || client.successes() > before));
    let (ok, failed) = client.finish();
    assert!(
        failed.is_empty(),
        "{} failures of {}: {failed:?}",
        failed.len(),
        ok + failed.len() as u64
    );
    eprintln!("allowed client: {ok} connections through two restarts, 0 failures");
}

/// A restart that finds the pins but not the saved lists (state_dir lost) while the
/// provider is down keeps the previous agent's entries until the provider answers.
#[test]
fn restart_without_saved_lists_keeps_previous_entries() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let provider = world.provider_publishing(&["192.0.2.0/24"], "refresh = \"1s\"");
    let mut agent = world.start_agent();
    world.exchange(a(CLIENT_A), 443).expect("allowed");
    agent.signal(libc::SIGTERM);
    agent.wait(Duration::from_secs(10));

    std::fs::remove_dir_all(world.state_dir()).unwrap();
    provider.set(DOCUMENT_PATH, Response::status(503));
    let agent = world.start_agent();
    assert!(
        wait_until(
            Duration::from_secs(10),
            || source_status(&world, SOURCE)["consecutive_failures"].as_u64() >= Some(2)
        ),
        "{}",
        agent.log()
    );
    world
        .exchange(a(CLIENT_A), 443)
        .unwrap_or_else(|e| panic!("the previous entries were dropped: {e}\n{}", agent.log()));

    // Once the provider answers, its list replaces the carried-over entries.
    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["198.51.100.0/24"])),
    );
    assert!(
        wait_until(Duration::from_secs(10), || world
            .exchange(a(CLIENT_B), 443)
            .is_ok()),
        "{}",
        agent.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || world
            .exchange(a(CLIENT_A), 443)
            .is_err()),
        "carried-over entries were never released"
    );
}

/// Scenario 5: 50 refreshes with list changes under a SYN flood: the allowed client
/// never fails.
#[test]
fn fifty_refreshes_under_flood_lose_nothing() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let provider = world.provider_publishing(&["192.0.2.0/24"], "[guards]\nmax_shrink = 0.9");
    let agent = world.start_agent();
    let dropped_before = counter(&world.status(), "not_allowlisted", "drop");
    // A dropped SYN is retransmitted after 1 s: a shorter timeout turns it into a failure.
    let client = world.client_loop_with_timeout(a(CLIENT_A), 443, Duration::from_millis(900));
    let flood = world.syn_flood();

    let successes = |w: &World| {
        w.status()["agent"]["refresh_results"][SOURCE]["success"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut done = successes(&world);
    for i in 0..50u8 {
        // The client's address moves between a /24 and a /25 inside it: the new
        // prefix must be in the map before the old one leaves, or a SYN is dropped.
        let extra = format!("203.0.113.{i}/32");
        let ranges: Vec<&str> = if i % 2 == 0 {
            vec!["192.0.2.0/25", "198.51.100.200/32", &extra]
        } else {
            vec!["192.0.2.0/24", &extra]
        };
        provider.set(DOCUMENT_PATH, Response::json(intercom_document(&ranges)));
        let out = world.cli(&["reload"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            wait_until(Duration::from_secs(10), || successes(&world) > done),
            "refresh {i} did not happen:\n{}",
            agent.log()
        );
        done = successes(&world);
    }
    let sent = flood.finish();
    let (ok, failed) = client.finish();
    let dropped = counter(&world.status(), "not_allowlisted", "drop") - dropped_before;
    eprintln!(
        "50 refreshes: {ok} allowed connections, {} failed; {sent} forged SYNs sent, {dropped} dropped",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "the allowed client failed during refreshes: {failed:?}"
    );
    assert!(ok >= 50, "the allowed client barely ran: {ok}");
    assert!(sent >= 10_000, "the flood barely ran: {sent}");
    assert!(
        dropped >= sent / 2,
        "the flood's SYNs were not dropped: {dropped} of {sent}"
    );
}

/// Scenario 6: monitor mode drops nothing and counts would-drops; a reload to
/// enforce starts dropping.
#[test]
fn monitor_mode_counts_and_reload_enforces() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let provider = world.provider_publishing(&["192.0.2.0/24"], "mode = \"monitor\"");
    let agent = world.start_agent();
    world
        .exchange(a(CLIENT_B), 443)
        .expect("monitor mode drops nothing");
    let status = world.status();
    assert!(
        counter(&status, "not_allowlisted", "would_drop") >= 1,
        "{status:#}"
    );
    assert_eq!(counter(&status, "not_allowlisted", "drop"), 0);

    // A config that no longer validates: `allowlist reload` says so, and the agent,
    // signalled anyway (as `systemctl reload` would), keeps the running one.
    world.write_config("ports = [\"https\"]\n");
    let out = world.cli(&["reload"]);
    assert!(
        !out.status.success() && text(&out).contains("ports"),
        "{}",
        text(&out)
    );
    agent.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent.log().contains("keeping the running one"),
        "{}",
        agent.log()
    );
    world
        .exchange(a(CLIENT_B), 443)
        .expect("still monitoring after a bad reload");

    world.write_config(&world.config("mode = \"enforce\"", &provider_toml("partner", &provider)));
    assert!(world.cli(&["reload"]).status.success());
    assert!(wait_until(
        Duration::from_secs(5),
        || world.status()["agent"]["mode"] == "enforce"
    ));
    assert_denied(&world, a(CLIENT_B));
    world.exchange(a(CLIENT_A), 443).expect("allowed");
}

/// Scenario 8: detach leaves no program and no pins, and traffic flows freely.
#[test]
fn detach_removes_program_and_pins() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "");
    let mut agent = world.start_agent();
    assert!(world.xdp_attached());
    let out = world.cli(&["detach"]);
    assert!(out.status.success(), "{}", text(&out));
    agent.wait(Duration::from_secs(10));
    assert!(!world.pin_dir.exists(), "pins left behind");
    assert!(!world.xdp_attached(), "XDP still attached");
    world
        .exchange(a(CLIENT_B), 443)
        .expect("traffic flows after detach");
}

/// Scenario 9: bad input exits non-zero with a message, and attaches nothing.
#[test]
fn bad_input_exits_nonzero_and_attaches_nothing() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let good_provider = &static_provider_toml("office", &["192.0.2.0/24"]);
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "invalid field",
            world.config("mode = \"block-everything\"", good_provider),
            &["allowlist.toml:", "mode"],
        ),
        (
            "invalid port",
            world
                .config("", good_provider)
                .replace("ports = [443]", "ports = [0]"),
            &["ports"],
        ),
        (
            "missing interface",
            world
                .config("", good_provider)
                .replace(&format!("\"{}\"", world.server_if), "\"nosuchif0\""),
            &["nosuchif0", "does not exist"],
        ),
        (
            "unknown preset",
            world.config(
                "",
                "[[provider]]\nname = \"x\"\npreset = \"intercom-mars\"\n",
            ),
            &["intercom-mars", "intercom-us"],
        ),
        ("no providers", world.config("", ""), &["provider"]),
    ];
    for (name, config, expect) in cases {
        world.write_config(&config);
        let mut agent = world.spawn_agent(&[], &world.dir.path().join("bad.log"));
        let status = agent.wait(Duration::from_secs(10));
        let log = agent.log();
        assert!(!status.success(), "{name}: the agent accepted it:\n{log}");
        for e in expect {
            assert!(
                log.contains(e),
                "{name}: the message does not mention {e:?}:\n{log}"
            );
        }
        assert!(!world.pin_dir.exists(), "{name}: pins were created");
        assert!(!world.xdp_attached(), "{name}: XDP was attached");
    }

    // No privilege: the same valid config, run as nobody.
    world.write_config(&world.config("", good_provider));
    make_world_readable(&world);
    let mut cmd = world.server.command(binary());
    cmd.args(["run", "--config"]).arg(world.config_path());
    allowlist_tests::as_nobody(&mut cmd);
    let out = cmd.output().expect("run as nobody");
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("CAP_BPF") && msg.contains("root"), "{msg}");
    assert!(!world.pin_dir.exists());
    assert!(!world.xdp_attached());
}

/// Pins left by another build, or a second agent on the same directories, are refused
/// with a message; the first agent and its filter are untouched.
#[test]
fn stale_pins_and_a_second_agent_are_refused() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "");

    // An ALLOW_V4 of another layout (a hash map), as another build might leave.
    std::fs::create_dir_all(&world.pin_dir).unwrap();
    let stale = world.pin_dir.join("ALLOW_V4");
    let out = allowlist_tests::run(
        std::process::Command::new("bpftool")
            .args(["map", "create"])
            .arg(&stale)
            .args([
                "type", "hash", "key", "4", "value", "4", "entries", "8", "name", "ALLOW_V4",
            ]),
    );
    assert!(out.status.success(), "{}", text(&out));
    let mut agent = world.spawn_agent(&[], &world.dir.path().join("stale.log"));
    assert!(!agent.wait(Duration::from_secs(10)).success());
    let log = agent.log();
    assert!(
        log.contains("another build of allowlist") && log.contains("allowlist detach"),
        "{log}"
    );
    assert!(!world.xdp_attached());
    assert!(world.cli(&["detach"]).status.success());
    assert!(!world.pin_dir.exists());

    let _agent = world.start_agent();
    let mut second = world.spawn_agent(&[], &world.dir.path().join("second.log"));
    assert!(!second.wait(Duration::from_secs(10)).success());
    assert!(second.log().contains("another agent"), "{}", second.log());
    world
        .exchange(a(CLIENT_A), 443)
        .expect("the first agent's filter still works");
    assert_denied(&world, a(CLIENT_B));
}

fn make_world_readable(world: &World) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(world.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(world.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn presets_and_version() {
    let out = plain_command().arg("presets").output().unwrap();
    assert!(out.status.success());
    let listing = text(&out);
    for name in [
        "intercom-us",
        "intercom-eu",
        "intercom-au",
        "freshworks-us",
        "stripe-webhooks",
        "github-hooks",
    ] {
        assert!(listing.contains(name), "{name} missing:\n{listing}");
    }
    assert!(
        listing.contains("https://static.intercomcdn.com/intercom-ips/us/intercom-ip-ranges.json")
    );
    let out = plain_command().arg("--version").output().unwrap();
    assert!(text(&out).starts_with("allowlist "), "{}", text(&out));
}

/// Issue 11 through the real agent: a preset read from a mirror (`url` and `ca_file`
/// next to `preset`), and a `dns` source answered by a local DNS server; `allowlist
/// fetch` shows both, and their senders get in while others do not.
#[test]
fn a_preset_from_a_mirror_and_a_dns_source() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let provider = world.provider();
    provider.set(
        "/github-meta.json",
        Response::json(
            serde_json::json!({ "hooks": ["192.0.2.0/24"], "actions": ["203.0.113.0/24"] })
                .to_string(),
        ),
    );
    let dns = world
        .server
        .run(allowlist_tests::dns_server::DnsServer::start);
    dns.set(allowlist_tests::dns_server::Reply::records(
        &["198.51.100.10"],
        300,
    ));
    world.write_config(&world.config(
        "refresh = \"1h\"",
        &format!(
            "[[provider]]\nname = \"github\"\npreset = \"github-hooks\"\nurl = \"{}\"\nca_file = \"{}\"\n\n[[provider]]\nname = \"adyen\"\n[[provider.source]]\ndns = \"out.adyen.example\"\nresolver = \"{}\"\n",
            provider.url("/github-meta.json"),
            provider.ca_file().display(),
            dns.addr()
        ),
    ));
    let out = world.cli(&["fetch"]);
    assert!(out.status.success(), "{}", text(&out));
    for listed in ["192.0.2.0/24", "198.51.100.10/32"] {
        assert!(text(&out).contains(listed), "{listed}: {}", text(&out));
    }
    assert!(!text(&out).contains("203.0.113.0/24"), "{}", text(&out));

    let agent = world.start_agent();
    assert!(
        wait_until(Duration::from_secs(10), || {
            world.exchange(a(CLIENT_B), 443).is_ok()
        }),
        "the dns source's address must get in:\n{}",
        agent.log()
    );
    world
        .exchange(a(CLIENT_A), 443)
        .unwrap_or_else(|e| panic!("the mirrored preset's range: {e}\n{}", agent.log()));
    // Listed in the document, but not as a webhook sender.
    assert_denied(&world, a(CLIENT_C));
    let sources = world.status()["agent"]["sources"].clone();
    let kinds: Vec<&str> = sources
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"dns"), "{sources:#}");
    assert!(!dns.queries().is_empty());
}

/// `allowlist denied` reads the table the agent left in `state_dir` (no agent needs to
/// run): the top sources by packets, the known senders below them, what each is, and
/// `--json`; a missing table and a user who may not read `state_dir` get one line.
#[test]
fn denied_shows_the_agents_table_of_denied_sources() {
    use std::os::unix::fs::PermissionsExt as _;
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).unwrap();
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = dir.path().join("allowlist.toml");
    std::fs::write(
        &config,
        format!(
            "interfaces = [\"eth0\"]\nstate_dir = \"{}\"\npin_dir = \"{}\"\n[[provider]]\nname = \"partner\"\n[[provider.source]]\nstatic = [\"192.0.2.0/24\"]\n",
            state_dir.display(),
            dir.path().join("pins").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let denied = |args: &[&str]| {
        allowlist_tests::run(
            std::process::Command::new(binary())
                .arg("denied")
                .arg("--config")
                .arg(&config)
                .args(args),
        )
    };

    let out = denied(&[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no denied.json in"), "{}", text(&out));

    // As the agent writes it (mode 0600): a flood's stranger, a known sender.
    let table = r#"{
  "version": 1,
  "written_at": "2026-12-02T02:00:00Z",
  "read_at": "2026-12-02T02:00:00Z",
  "keep_secs": 604800,
  "strangers_kept": 1000,
  "known_kept": 10000,
  "strangers_forgotten": 5,
  "known_forgotten": 0,
  "records": [
    {"source": "198.51.100.7/32", "packets": 31, "port": 443,
     "first_seen": "2026-12-01T10:03:00Z", "last_seen": "2026-12-01T11:40:00Z",
     "known": [{"why": "refused_update", "provider": "partner", "source": "partner/0",
                "prefix": "198.51.100.0/24", "at": "2026-12-01T10:02:00Z", "guard": "shrink"}]},
    {"source": "203.0.113.54/32", "packets": 900, "overcount": 100, "estimated": false,
     "port": 8443, "first_seen": "2026-12-01T23:10:00Z", "last_seen": "2026-12-02T01:59:00Z",
     "known": []}
  ]
}
"#;
    let file = state_dir.join("denied.json");
    std::fs::write(&file, table).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let out = denied(&["--top", "1"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.starts_with("2 distinct denied sources (kept for 7days after they were last seen), 1 of them known senders; 5 more strangers were let go"),
        "{shown}"
    );
    let lines: Vec<&str> = shown.lines().collect();
    let stranger = lines.iter().position(|l| l.starts_with("203.0.113.54 "));
    let below = lines
        .iter()
        .position(|l| *l == "known senders below the top 1:");
    let known = lines.iter().position(|l| l.starts_with("198.51.100.7 "));
    assert!(
        stranger < below && below < known && stranger.is_some(),
        "{shown}"
    );
    let known_line = lines[known.unwrap()];
    assert!(
        known_line.ends_with(
            "in partner's update of 2026-12-01 10:02, refused by the shrink guard (198.51.100.0/24)"
        ),
        "{known_line}"
    );
    assert!(lines[stranger.unwrap()].contains("≈900"), "{shown}");
    assert!(
        lines[stranger.unwrap()].ends_with("nothing known"),
        "{shown}"
    );

    let out = denied(&["--json", "--since", "100years"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["sources"], 2);
    assert_eq!(json["top"][0]["source"], "203.0.113.54");
    assert_eq!(json["top"][0]["estimated"], true);
    assert_eq!(json["top"][1]["known"][0]["why"], "refused_update");
    assert_eq!(json["top"][1]["port"], 443);
    let out = denied(&["--since", "1s"]);
    assert!(
        text(&out).starts_with("0 distinct denied sources (seen in the last 1s)"),
        "{}",
        text(&out)
    );

    // Another user may not read the agent's state_dir.
    let mut cmd = std::process::Command::new(binary());
    cmd.arg("denied").arg("--config").arg(&config);
    allowlist_tests::as_nobody(&mut cmd);
    let out = cmd.output().expect("run as nobody");
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains("cannot read state_dir") && msg.contains("root"),
        "{msg}"
    );
}
