//! `cargo xtask demo`: the agent on a built-in scenario, in a sandbox of network
//! namespaces that is removed at the end, also after Ctrl-C.
//!
//! A local HTTPS "Intercom" publishes a demo list; the agent protects a web server on
//! :443; clients from listed and unlisted addresses connect; the provider changes its
//! list and then breaks; an update the shrink guard refuses leaves its new sender
//! dropped, and `allowlist denied` names it; the counters show what the filter did.
#![allow(
    unused_crate_dependencies,
    reason = "a binary of the test-support crate, which uses only some of its dependencies"
)]

use std::{
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use allowlist_tests::{
    netns::require_root,
    provider_server::Response,
    world::{
        self, CLIENT_A, CLIENT_A6, CLIENT_B, CLIENT_B6, CLIENT_C, DOCUMENT_PATH, World,
        intercom_document, provider_toml, static_provider_toml,
    },
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Returns early (so that every guard's Drop cleans up) when Ctrl-C was pressed.
macro_rules! checkpoint {
    () => {
        if INTERRUPTED.load(Ordering::SeqCst) {
            println!("\ninterrupted: cleaning up");
            return Ok(());
        }
    };
}

struct Row {
    what: String,
    expected: bool,
    got: bool,
}

fn main() {
    if !require_root() {
        std::process::exit(1);
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    match demo() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("demo failed: {e}");
            std::process::exit(1);
        }
    }
}

fn demo() -> Result<(), String> {
    println!(
        "allowlist demo: an XDP filter that lets only a webhook provider's published ranges reach :443\n"
    );
    let world = World::new();
    println!(
        "sandbox: namespaces {} and {}, veth {} <-> {}",
        world.server.name(),
        world.client.name(),
        world.server_if,
        world.client_if
    );
    let provider = world.provider();
    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["192.0.2.0/24"])),
    );
    println!(
        "provider: {} (HTTPS, test CA) publishes 192.0.2.0/24 as INTERCOM-OUTBOUND",
        provider.url(DOCUMENT_PATH)
    );
    let metrics = world.free_port();
    let office = static_provider_toml("office", &["2001:db8:a::/64"]);
    let config = world.config(
        &format!("refresh = \"2s\"\nmetrics = \"127.0.0.1:{metrics}\""),
        &format!("{}{office}", provider_toml("intercom", &provider)),
    );
    world.write_config(&config);
    println!("config: {}\n", world.config_path().display());
    checkpoint!();

    let agent = world.start_agent();
    println!(
        "agent: `allowlist run` (pid {}) attached to {}\n",
        agent.pid(),
        world.server_if
    );
    checkpoint!();

    let timeout = Duration::from_millis(1500);
    let try_ = |src: IpAddr, port: u16| {
        world
            .client
            .run(move || world::exchange(src, port, timeout).is_ok())
    };
    let mut rows = Vec::new();
    let probe = |rows: &mut Vec<Row>, what: &str, src: IpAddr, port: u16, expected: bool| {
        let got = try_(src, port);
        println!(
            "  {:<58} {}",
            what,
            if got { "connected" } else { "timed out" }
        );
        rows.push(Row {
            what: what.to_owned(),
            expected,
            got,
        });
    };

    println!("traffic:");
    probe(
        &mut rows,
        "192.0.2.10 -> :443 (Intercom outbound range)",
        IpAddr::V4(CLIENT_A),
        443,
        true,
    );
    probe(
        &mut rows,
        "198.51.100.10 -> :443 (not listed)",
        IpAddr::V4(CLIENT_B),
        443,
        false,
    );
    probe(
        &mut rows,
        "203.0.113.10 -> :443 (listed, but INTERCOM-GENERAL)",
        IpAddr::V4(CLIENT_C),
        443,
        false,
    );
    probe(
        &mut rows,
        "2001:db8:a::10 -> :443 (office, static IPv6 list)",
        IpAddr::V6(CLIENT_A6),
        443,
        true,
    );
    probe(
        &mut rows,
        "198.51.100.10 -> :80 (port not protected)",
        IpAddr::V4(CLIENT_B),
        80,
        true,
    );
    checkpoint!();

    print!("  a flood of forged SYNs to :443 from 198.51.100.100-199 for 1 s ... ");
    let flood = world.syn_flood();
    std::thread::sleep(Duration::from_secs(1));
    let sent = flood.finish();
    println!("{sent} sent");
    checkpoint!();

    println!("\nthe provider adds 198.51.100.0/24 to its list:");
    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["192.0.2.0/24", "198.51.100.0/24"])),
    );
    let started = Instant::now();
    let added = world::wait_until(Duration::from_secs(10), || try_(IpAddr::V4(CLIENT_B), 443));
    println!(
        "  {:<58} {}",
        format!(
            "198.51.100.10 -> :443 (after {:.1} s)",
            started.elapsed().as_secs_f64()
        ),
        if added { "connected" } else { "timed out" }
    );
    rows.push(Row {
        what: "198.51.100.10 -> :443 after the provider added its range".into(),
        expected: true,
        got: added,
    });
    checkpoint!();

    println!("\nthe provider breaks (HTTP 500); the last good list stays in force:");
    provider.set(DOCUMENT_PATH, Response::status(500));
    world::wait_until(Duration::from_secs(10), || {
        world.status()["agent"]["sources"][0]["consecutive_failures"].as_u64() >= Some(1)
    });
    probe(
        &mut rows,
        "192.0.2.10 -> :443 while the provider fails",
        IpAddr::V4(CLIENT_A),
        443,
        true,
    );
    checkpoint!();

    println!(
        "\nthe provider replaces its whole list by 2001:db8:b::/48; the shrink guard refuses that:"
    );
    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["2001:db8:b::/48"])),
    );
    let refused = world::wait_until(Duration::from_secs(10), || {
        world.status()["agent"]["sources"][0]["refused"] == true
    });
    rows.push(Row {
        what: "the update that removes every IPv4 range is refused".into(),
        expected: true,
        got: refused,
    });
    probe(
        &mut rows,
        "2001:db8:b::10 -> :443 (only in the refused update)",
        IpAddr::V6(CLIENT_B6),
        443,
        false,
    );
    print!("  who is being dropped (`allowlist denied`, after the agent's next read) ... ");
    let mut denied = String::new();
    let named = world::wait_until(Duration::from_secs(30), || {
        let out = world.cli(&["denied", "--top", "5"]);
        denied = String::from_utf8_lossy(&out.stdout).into_owned();
        denied
            .lines()
            .any(|l| l.starts_with("2001:db8:b::/64") && l.contains("refused by the shrink guard"))
    });
    println!();
    for line in denied.lines() {
        println!("    {line}");
    }
    rows.push(Row {
        what: "`allowlist denied` names the refused update's sender".into(),
        expected: true,
        got: named,
    });
    checkpoint!();

    let status = world.status();
    println!("\nwhat the filter did (`allowlist status --json`):");
    println!("  {:<20} {:>10} {:>10}", "reason", "passed", "dropped");
    for (reason, row) in status["counters"]["packets"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let pass = row["pass"].as_u64().unwrap_or(0);
        let drop = row["drop"].as_u64().unwrap_or(0);
        if pass + drop > 0 {
            println!("  {reason:<20} {:>10} {:>10}", pass, drop);
        }
    }
    println!(
        "\n  {:<20} {:>10} {:>10} {:>10}",
        "provider", "ipv4", "ipv6", "hits"
    );
    for p in status["providers"].as_array().into_iter().flatten() {
        println!(
            "  {:<20} {:>10} {:>10} {:>10}",
            p["name"].as_str().unwrap_or("?"),
            p["prefixes_v4"].as_u64().unwrap_or(0),
            p["prefixes_v6"].as_u64().unwrap_or(0),
            p["hits"].as_u64().unwrap_or(0)
        );
    }
    let src = &status["agent"]["sources"][0];
    println!(
        "\n  source {}: in force {} ({} prefixes), last error: {}",
        src["id"].as_str().unwrap_or("?"),
        src["in_force"].as_str().unwrap_or("?"),
        src["prefixes_v4"],
        src["last_error"].as_str().unwrap_or("none")
    );
    let (_, body) = world.http_get(metrics, "/metrics");
    let sample = body
        .lines()
        .filter(|l| {
            l.starts_with("allowlist_packets_total{reason=\"not_allowlisted\",action=\"drop\"}")
        })
        .collect::<Vec<_>>();
    println!(
        "  metrics: http://127.0.0.1:{metrics}/metrics in the server namespace, e.g. {}",
        sample.join("")
    );

    let out = world.cli(&["detach"]);
    println!(
        "\n`allowlist detach`: {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
    );
    drop(agent);

    let failed: Vec<&Row> = rows.iter().filter(|r| r.expected != r.got).collect();
    println!();
    if failed.is_empty() {
        println!(
            "all {} checks behaved as expected; the sandbox is removed.",
            rows.len()
        );
        Ok(())
    } else {
        for r in &failed {
            println!(
                "UNEXPECTED: {} (expected {}, got {})",
                r.what, r.expected, r.got
            );
        }
        Err(format!(
            "{} of {} checks did not behave as expected",
            failed.len(),
            rows.len()
        ))
    }
}
