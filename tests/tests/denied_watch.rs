//! The denied-source watch end to end: the real agent, real namespaces, a real HTTPS
//! provider. A sender that the provider's refused update lists is dropped; the
//! datapath records it, and `allowlist denied`, the metric and the alert's expression
//! all name it, also under a flood of random strangers. Each test builds its own
//! world and removes it, even on failure.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::{
    net::{IpAddr, Ipv6Addr},
    process::Command,
    time::Duration,
};

use allowlist_tests::{netns::require_root, provider_server::Response, world::*};
use serde_json::Value;

const SENDER: &str = "198.51.100.10";

/// `allowlist denied --json`, or `Null` while the agent has not yet saved its table.
fn denied(world: &World, args: &[&str]) -> Value {
    let mut all = vec!["denied", "--json"];
    all.extend(args);
    let out = world.cli(&all);
    if !out.status.success() {
        assert!(
            text(&out).contains("no denied.json"),
            "allowlist denied: {}",
            text(&out)
        );
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).expect("allowlist denied --json")
}

/// The row of `source` among `allowlist denied --json`'s top rows, or among the known
/// senders listed below them.
fn row(table: &Value, source: &str) -> Option<Value> {
    ["top", "known_below_top"]
        .iter()
        .filter_map(|k| table[k].as_array())
        .flatten()
        .find(|r| r["source"] == source)
        .cloned()
}

/// A flood of SYNs to :443 from random /64s of 2001:db8::/32 (a new stranger almost
/// every packet), with every `every`th one from the known sender.
fn stranger_flood(world: &World, every: u32) -> Flood {
    world.syn_flood_from(move |i| {
        if i.is_multiple_of(every) {
            return IpAddr::V4(CLIENT_B);
        }
        // A cheap scramble of the counter: distinct /64s, no pattern the map cares about.
        let x = i.wrapping_mul(0x9E37_79B9);
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0x0db8,
            (x >> 16) as u16,
            x as u16,
            0,
            0,
            0,
            1,
        ))
    })
}

#[test]
fn a_sender_in_a_refused_update_is_named_even_under_a_flood() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let metrics = world.free_port();
    let provider = world.provider_publishing(
        &["192.0.2.0/24"],
        &format!("refresh = \"1h\"\nmetrics = \"127.0.0.1:{metrics}\""),
    );
    let agent = world.start_agent();
    world.wait_attached(&agent);

    // The provider moves to a new range and drops the old one: the shrink guard
    // refuses the update, so the new range's sender is dropped.
    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["198.51.100.0/24"])),
    );
    assert!(world.cli(&["reload"]).status.success());
    assert!(
        wait_until(Duration::from_secs(15), || {
            world.status()["agent"]["sources"][0]["refused"] == true
        }),
        "the update was not refused:\n{}",
        agent.log()
    );
    world.assert_denied(IpAddr::V4(CLIENT_B), "the refused update's sender");

    // A flood of strangers, the known sender among them (1 packet in 50).
    let flood = stranger_flood(&world, 50);
    std::thread::sleep(Duration::from_secs(3));
    let sent = flood.finish();
    assert!(sent > 10_000, "the flood sent only {sent} frames");

    let mut table = Value::Null;
    let named = wait_until(Duration::from_secs(30), || {
        table = denied(&world, &["--top", "10"]);
        row(&table, SENDER).is_some_and(|r| r["known"][0]["why"] == "refused_update")
    });
    assert!(
        named,
        "allowlist denied does not name {SENDER}:\n{table:#}\n{}",
        agent.log()
    );
    // In the top 10 itself, not only among the known senders below it: the flood's
    // strangers each sent a packet or two.
    let top: Vec<&str> = (table["top"].as_array().into_iter().flatten())
        .filter_map(|r| r["source"].as_str())
        .collect();
    assert!(top.contains(&SENDER), "not in the top 10: {table:#}");
    assert!(
        table["sources"].as_u64() > Some(100),
        "the strangers were not recorded: {table:#}"
    );
    let known = row(&table, SENDER).unwrap();
    assert_eq!(known["port"], 443, "{known:#}");
    assert_eq!(known["known"][0]["provider"], "partner", "{known:#}");
    assert_eq!(known["known"][0]["guard"], "shrink", "{known:#}");
    let text_out = text(&world.cli(&["denied", "--top", "10"]));
    assert!(
        text_out.contains("in partner's update of")
            && text_out.contains("refused by the shrink guard"),
        "{text_out}"
    );

    // The metric, by sender and why, never by address.
    let series = "allowlist_denied_known_sender_packets_total{sender=\"partner\",kind=\"provider\",why=\"refused_update\"}";
    let mut body = String::new();
    let counted = wait_until(Duration::from_secs(15), || {
        body = world.http_get(metrics, "/metrics").1;
        metric(&body, series).is_some_and(|v| v > 0.0)
    });
    assert!(counted, "{series} missing or 0:\n{body}");
    assert!(!body.contains(SENDER), "an address in the metrics:\n{body}");
    let value = metric(&body, series).unwrap();
    alert_expression_names(&labels_of(series), value);
    // The log says it once, with what to run.
    assert!(
        agent.log().contains("allowlist denied"),
        "no log line about the known sender:\n{}",
        agent.log()
    );
}

fn labels_of(series: &str) -> String {
    series[series.find('{').unwrap() + 1..series.len() - 1].to_owned()
}

/// Evaluates the expression of the `AllowlistKnownSenderDropped` alert with promtool on
/// the series the agent exported (as a scrape of it would store it), and checks that
/// the result carries the sender and why.
fn alert_expression_names(labels: &str, value: f64) {
    let Some(promtool) = allowlist_tests::tool("promtool") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing: `cargo xtask test` installs it"
        );
        eprintln!("SKIPPED the alert check: promtool is missing (`cargo xtask test` installs it)");
        return;
    };
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/prometheus/allowlist-alerts.yaml");
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&rules).unwrap()).unwrap();
    let expr = doc["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["alert"].as_str() == Some("AllowlistKnownSenderDropped"))
        .expect("the alert exists")["expr"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let series = format!(
        "allowlist_denied_known_sender_packets_total{{{labels},instance=\"host:9975\",job=\"allowlist\"}}"
    );
    // The series appears with its first packets two minutes in (as the agent's first
    // scrape after the drop would store it).
    let test = serde_json::json!({
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{ "series": series, "values": format!("_ _ {value}") }],
            "promql_expr_test": [{
                "expr": expr,
                "eval_time": "2m",
                "exp_samples": [{ "labels": series, "value": value }],
            }],
        }],
    });
    let file = dir.path().join("known-sender.test.yaml");
    std::fs::write(&file, serde_json::to_string_pretty(&test).unwrap()).unwrap();
    let out = allowlist_tests::run(Command::new(promtool).arg("test").arg("rules").arg(&file));
    assert!(
        out.status.success(),
        "the alert's expression does not name the sender:\n{}\n{}",
        text(&out),
        serde_json::to_string_pretty(&test).unwrap()
    );
}

/// Without a flood every denied packet is recorded: the counts are exact, IPv6
/// sources are kept per /64, and allowed sources are not recorded.
#[test]
fn without_a_flood_every_denied_packet_is_counted() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "refresh = \"1h\"");
    let agent = world.start_agent();
    world.wait_attached(&agent);
    let v6 = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, last));
    let mut seq = 0;
    for (src, count) in [
        (v6(0x10), 7),
        (v6(0x20), 3),
        (IpAddr::V4(CLIENT_C), 4),
        (IpAddr::V4(CLIENT_A), 5),
    ] {
        for _ in 0..count {
            seq += 1;
            world.send_frame(syn_frame(src, seq));
        }
    }
    let mut table = Value::Null;
    let seen = wait_until(Duration::from_secs(30), || {
        table = denied(&world, &[]);
        table["sources"] == 2
    });
    assert!(seen, "{table:#}\n{}", agent.log());
    let v6_row = row(&table, "2001:db8:b::/64").expect("the /64");
    assert_eq!(v6_row["packets"], 10, "{table:#}");
    assert_eq!(v6_row["estimated"], false, "{table:#}");
    let v4_row = row(&table, "203.0.113.10").expect("the stranger");
    assert_eq!(v4_row["packets"], 4, "{table:#}");
    assert_eq!(v4_row["estimated"], false, "{table:#}");
    assert_eq!(v4_row["known"], serde_json::json!([]), "{table:#}");
    assert!(
        row(&table, "192.0.2.10").is_none(),
        "an allowed source: {table:#}"
    );
}
