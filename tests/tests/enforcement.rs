//! The filter never silently stops enforcing: a reload that cannot attach somewhere,
//! a link detached or a device deleted, re-created or renamed under the agent, an
//! agent started under `ip netns exec`, a pin directory planted by another user.
//! Each scenario checks the traffic and what `status`, `/healthz`, the metrics and
//! the log say.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::{
    net::IpAddr,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    process::Command,
    time::{Duration, Instant},
};

use allowlist_tests::{netns::require_root, provider_server::Response, run, world::*};
use serde_json::Value;

fn a(ip: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

fn assert_denied(world: &World, src: IpAddr, agent: &Agent) {
    world.assert_denied(src, &agent.log());
}

fn assert_allowed(world: &World, src: IpAddr, agent: &Agent) {
    world
        .exchange(src, 443)
        .unwrap_or_else(|e| panic!("{src} is listed: {e}\n{}", agent.log()));
}

fn interface<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["agent"]["interfaces"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["name"] == name))
        .unwrap_or(&Value::Null)
}

fn link_id(world: &World, name: &str) -> Option<u64> {
    let pin = world.pin_dir.join(format!("link_{name}"));
    let out = run(Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(&pin));
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<Value>(&out.stdout).ok()?["id"].as_u64()
}

/// Detaches the filter's link on `interface` behind the agent's back (`bpftool link
/// detach`: the pin stays, the link filters nothing) and waits up to `within` for
/// the agent to attach a new one; returns how long that took.
fn detach_and_wait_for_reattach(
    world: &World,
    interface: &str,
    agent: &Agent,
    within: Duration,
) -> Duration {
    let first = link_id(world, interface).expect("the link is pinned");
    let out = run(Command::new("bpftool").args(["link", "detach", "id", &first.to_string()]));
    assert!(out.status.success(), "{}", text(&out));
    let started = Instant::now();
    assert!(
        wait_until(within, || link_id(world, interface)
            .is_some_and(|id| id != first)),
        "the agent did not re-attach {interface} within {within:?} after `bpftool link detach`:\n{}",
        agent.log()
    );
    started.elapsed()
}

/// A world whose provider lists CLIENT_A's /24 and /64, with metrics on.
fn world_with_metrics() -> (World, u16, allowlist_tests::provider_server::ProviderServer) {
    let world = World::new();
    let port = world.free_port();
    let provider = world.provider_publishing(
        &["192.0.2.0/24", "2001:db8:a::/64"],
        &format!("metrics = \"127.0.0.1:{port}\"\nrefresh = \"1h\""),
    );
    (world, port, provider)
}

/// Rewrites the `interfaces` line of the world's config.
fn set_interfaces(world: &World, interfaces: &[&str]) {
    let text = std::fs::read_to_string(world.config_path()).unwrap();
    let list: Vec<String> = interfaces.iter().map(|i| format!("\"{i}\"")).collect();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("interfaces =") {
                format!("interfaces = [{}]\n", list.join(", "))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    world.write_config(&text);
}

fn reload(world: &World) {
    let out = world.cli(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Defect 1: a reload naming an interface that cannot be attached keeps every
/// interface already filtered, and says so everywhere.
#[test]
fn a_reload_that_cannot_attach_keeps_the_filter() {
    if !require_root() {
        return;
    }
    let (world, port, _provider) = world_with_metrics();
    let agent = world.start_agent();
    let server_if = world.server_if.clone();
    assert_denied(&world, a(CLIENT_B), &agent);

    // A typo added to `interfaces`.
    let typo = format!("{}z", world.id);
    set_interfaces(&world, &[&server_if, &typo]);
    reload(&world);
    assert!(
        wait_until(Duration::from_secs(10), || world
            .http_get(port, "/healthz")
            .0
            == 503),
        "/healthz must turn 503 when an interface cannot be attached:\n{}",
        agent.log()
    );
    let (_, body) = world.http_get(port, "/healthz");
    assert!(
        body.contains(&typo) && body.contains("does not exist"),
        "{body}"
    );
    assert_denied(&world, a(CLIENT_B), &agent);
    assert_denied(&world, IpAddr::V6(CLIENT_B6), &agent);
    assert_allowed(&world, a(CLIENT_A), &agent);
    assert!(world.pin_dir.join(format!("link_{server_if}")).exists());
    let status = world.status();
    assert_eq!(
        interface(&status, &server_if)["attached"],
        true,
        "{status:#}"
    );
    assert_eq!(interface(&status, &typo)["attached"], false, "{status:#}");
    let (_, metrics) = world.http_get(port, "/metrics");
    assert_eq!(
        metric(
            &metrics,
            &format!("allowlist_interface_attached{{interface=\"{typo}\"}}")
        ),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("allowlist_interface_attached{{interface=\"{server_if}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        agent.log().contains("the interface is NOT filtered"),
        "{}",
        agent.log()
    );
    let human = text(&world.cli(&["status"]));
    assert!(
        human.contains(&format!("{typo} (auto, NOT FILTERED")),
        "{human}"
    );

    // The interface replaced by the typo: the filter stays where it is until every
    // configured interface is attached.
    set_interfaces(&world, &[&typo]);
    reload(&world);
    thread_sleep(Duration::from_secs(1));
    assert_denied(&world, a(CLIENT_B), &agent);
    assert!(world.pin_dir.join(format!("link_{server_if}")).exists());

    // An interface that already carries another XDP program (here, attached the
    // old way through netlink by another tool).
    let other = format!("{}x", world.id);
    world.server.ip(&[
        "link",
        "add",
        &other,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{}y", world.id),
    ]);
    world.server.ip(&["link", "set", &other, "up"]);
    let prog_id = {
        let pin = world.pin_dir.join(format!("link_{server_if}"));
        let out = run(Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(&pin));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["prog_id"]
            .as_u64()
            .unwrap()
    };
    let prog_pin =
        std::path::PathBuf::from(format!("/sys/fs/bpf/allowlist-test-{}-prog", world.id));
    let out = run(Command::new("bpftool")
        .args(["prog", "pin", "id", &prog_id.to_string()])
        .arg(&prog_pin));
    assert!(out.status.success(), "{}", text(&out));
    let attached = run(world
        .server
        .command("ip")
        .args(["link", "set", "dev", &other, "xdpgeneric", "pinned"])
        .arg(&prog_pin));
    let _ = std::fs::remove_file(&prog_pin);
    assert!(attached.status.success(), "{}", text(&attached));
    set_interfaces(&world, &[&server_if, &other]);
    reload(&world);
    assert!(
        wait_until(Duration::from_secs(10), || world
            .http_get(port, "/healthz")
            .1
            .contains(&other)),
        "{}",
        agent.log()
    );
    let (code, body) = world.http_get(port, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("another XDP program"), "{body}");
    assert_denied(&world, a(CLIENT_B), &agent);

    // The configuration fixed: healthy again, the same link throughout.
    set_interfaces(&world, &[&server_if]);
    reload(&world);
    assert!(
        wait_until(Duration::from_secs(10), || world
            .http_get(port, "/healthz")
            .0
            == 200),
        "{}",
        agent.log()
    );
    assert_denied(&world, a(CLIENT_B), &agent);
    assert_allowed(&world, a(CLIENT_A), &agent);
}

fn thread_sleep(d: Duration) {
    std::thread::sleep(d);
}

/// Defect 2: a link detached behind the agent's back, the device deleted, re-created
/// or renamed: the agent notices within seconds, re-attaches where it can, reports
/// where it cannot, and follows a renamed device.
#[test]
fn the_agent_notices_a_lost_link_and_reattaches() {
    if !require_root() {
        return;
    }
    let (world, port, _provider) = world_with_metrics();
    let agent = world.start_agent();
    let server_if = world.server_if.clone();
    assert_denied(&world, a(CLIENT_B), &agent);

    // `bpftool link detach`: the pin stays, the link filters nothing.
    let took = detach_and_wait_for_reattach(&world, &server_if, &agent, Duration::from_secs(10));
    eprintln!("re-attached {took:?} after bpftool link detach");
    assert!(
        agent.log().contains("the filter's link was detached"),
        "{}",
        agent.log()
    );
    assert_denied(&world, a(CLIENT_B), &agent);
    assert_denied(&world, IpAddr::V6(CLIENT_B6), &agent);
    assert_allowed(&world, a(CLIENT_A), &agent);

    // The device deleted: reported everywhere.
    world.delete_veth();
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || world
            .http_get(port, "/healthz")
            .0
            == 503),
        "{}",
        agent.log()
    );
    eprintln!(
        "/healthz 503 {:?} after the device was deleted",
        started.elapsed()
    );
    let (_, body) = world.http_get(port, "/healthz");
    assert!(body.contains(&server_if), "{body}");
    let (_, metrics) = world.http_get(port, "/metrics");
    assert_eq!(
        metric(
            &metrics,
            &format!("allowlist_interface_attached{{interface=\"{server_if}\"}}")
        ),
        Some(0.0),
        "{metrics}"
    );
    let human = text(&world.cli(&["status"]));
    assert!(human.contains("NOT FILTERED"), "{human}");

    // Re-created with the same name: filtered again, v4 and v6.
    world.create_veth();
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || world
            .http_get(port, "/healthz")
            .0
            == 200),
        "{}",
        agent.log()
    );
    eprintln!(
        "re-attached {:?} after the device was re-created",
        started.elapsed()
    );
    assert_denied(&world, a(CLIENT_B), &agent);
    assert_denied(&world, IpAddr::V6(CLIENT_B6), &agent);
    assert_allowed(&world, a(CLIENT_A), &agent);
    assert_allowed(&world, IpAddr::V6(CLIENT_A6), &agent);

    // Renamed: the filter follows the device, and so do status and metrics.
    let renamed = format!("{}r", world.id);
    world.server.ip(&["link", "set", &server_if, "down"]);
    world
        .server
        .ip(&["link", "set", &server_if, "name", &renamed]);
    world.server.ip(&["link", "set", &renamed, "up"]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            interface(&world.status(), &server_if)["now_named"] == renamed.as_str()
        }),
        "{:#}\n{}",
        world.status(),
        agent.log()
    );
    assert_eq!(world.http_get(port, "/healthz").0, 200);
    assert_denied(&world, a(CLIENT_B), &agent);
    assert_allowed(&world, a(CLIENT_A), &agent);

    // The configuration takes up the new name: the link follows, nothing detaches.
    let before = link_id(&world, &server_if);
    set_interfaces(&world, &[&renamed]);
    reload(&world);
    assert!(
        wait_until(Duration::from_secs(10), || {
            interface(&world.status(), &renamed)["attached"] == true
        }),
        "{:#}\n{}",
        world.status(),
        agent.log()
    );
    assert_eq!(
        link_id(&world, &renamed),
        before,
        "the same link, pinned under the new name"
    );
    assert!(!world.pin_dir.join(format!("link_{server_if}")).exists());
    assert_eq!(world.http_get(port, "/healthz").0, 200);
    let (_, metrics) = world.http_get(port, "/metrics");
    assert_eq!(
        metric(
            &metrics,
            &format!("allowlist_interface_attached{{interface=\"{renamed}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_denied(&world, a(CLIENT_B), &agent);
    assert_allowed(&world, a(CLIENT_A), &agent);
}

/// Defect 3: `ip netns exec` gives the agent a private mount namespace with a fresh
/// /sys; the filter must still be pinned on the host's bpffs, visible to `status`
/// from another shell, and outlive the agent.
#[test]
fn under_ip_netns_exec_the_filter_outlives_the_agent() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "refresh = \"1h\"");
    let log = world.dir.path().join("agent-netns-exec.log");
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", world.server.name()])
        .arg(binary());
    let mut agent = world.spawn_agent_with(command, &[], &log);
    world.wait_attached(&agent);

    // Another shell, in the host's mount namespace, sees the filter.
    let status = world.status();
    assert_eq!(
        status["attached"],
        serde_json::json!([world.server_if]),
        "{status:#}\n{}",
        agent.log()
    );
    assert_denied(&world, a(CLIENT_B), &agent);

    agent.signal(libc::SIGKILL);
    agent.wait(Duration::from_secs(10));
    assert_denied(&world, a(CLIENT_B), &agent);
    assert_allowed(&world, a(CLIENT_A), &agent);
    assert_eq!(
        world.status()["attached"],
        serde_json::json!([world.server_if])
    );
}

fn expect_refusal(world: &World, name: &str, wanted: &[&str]) {
    let log = world.dir.path().join(format!("agent-{name}.log"));
    let mut agent = world.spawn_agent(&[], &log);
    let status = agent.wait(Duration::from_secs(20));
    assert!(
        !status.success(),
        "{name}: the agent must refuse:\n{}",
        agent.log()
    );
    for w in wanted {
        assert!(
            agent.log().contains(w),
            "{name}: expected {w:?} in:\n{}",
            agent.log()
        );
    }
    assert!(!world.xdp_attached(), "{name}: nothing may be attached");
}

/// Defect 4: a pin directory that another user owns, or that others may write, is
/// refused; the agent makes its own 0700.
#[test]
fn a_pin_dir_others_control_is_refused() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "refresh = \"1h\"");
    let pin_dir = world.pin_dir.display().to_string();

    std::fs::create_dir(&world.pin_dir).expect("pin_dir on bpffs");
    std::os::unix::fs::chown(&world.pin_dir, Some(65534), Some(65534)).unwrap();
    expect_refusal(&world, "foreign-owner", &[&pin_dir, "owned by uid 65534"]);

    std::os::unix::fs::chown(&world.pin_dir, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&world.pin_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    expect_refusal(&world, "world-writable", &[&pin_dir, "writable by"]);

    std::fs::remove_dir(&world.pin_dir).unwrap();
    let agent = world.start_agent();
    let meta = std::fs::metadata(&world.pin_dir).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o700, "the agent's pin_dir");
    assert_eq!(meta.uid(), 0);
    assert_denied(&world, a(CLIENT_B), &agent);
}

/// `count` IPv4 /32s that do not aggregate (every other address from 44.0.0.0), one
/// a line, after `first`.
fn big_text_list(first: &str, count: u32) -> String {
    let mut out = format!("{first}\n");
    let base = u32::from(std::net::Ipv4Addr::new(44, 0, 0, 0));
    for i in 0..count {
        out.push_str(&std::net::Ipv4Addr::from(base + 2 * i).to_string());
        out.push('\n');
    }
    out
}

/// Defect 7: a list larger than the maps is a guard refusal like a shrink: named,
/// counted, the previous list stays, and it never becomes the last good list, so
/// the agent starts again while the provider still serves it.
#[test]
fn a_list_larger_than_the_maps_is_refused_and_never_saved() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let port = world.free_port();
    let provider = world.provider();
    provider.set("/big.txt", Response::ok("192.0.2.0/24\n"));
    world.write_config(&world.config(
        &format!("metrics = \"127.0.0.1:{port}\"\nrefresh = \"1h\""),
        &format!(
            "[[provider]]\nname = \"big\"\n[[provider.source]]\nurl = \"{}\"\nformat = \"text\"\nca_file = \"{}\"\ntimeout = \"10s\"\nretries = 0\n",
            provider.url("/big.txt"),
            provider.ca_file().display()
        ),
    ));
    let mut agent = world.start_agent();
    assert_allowed(&world, a(CLIENT_A), &agent);

    // One prefix more than ALLOW_V4 holds (with 192.0.2.0/24: two more).
    provider.set(
        "/big.txt",
        Response::ok(big_text_list("192.0.2.0/24", 262_144)),
    );
    let out = world.cli(&["fetch"]);
    assert!(
        !out.status.success(),
        "every source refused: fetch must fail\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("holds at most 262144") && text(&out).contains("big/0"),
        "{}",
        text(&out)
    );

    reload(&world);
    let source = || {
        world.status()["agent"]["sources"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == "big/0").cloned())
            .unwrap_or(Value::Null)
    };
    assert!(
        wait_until(Duration::from_secs(30), || source()["refusals"] == 1),
        "{:#}\n{}",
        source(),
        agent.log()
    );
    assert!(
        source()["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("ALLOW_V4"),
        "{:#}",
        source()
    );
    let (_, metrics) = world.http_get(port, "/metrics");
    assert_eq!(
        metric(
            &metrics,
            r#"allowlist_guard_refusals_total{source="big/0"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"allowlist_refresh_total{source="big/0",result="refused"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, r#"allowlist_map_entries{map="ALLOW_V4"}"#),
        Some(1.0),
        "what the maps hold: {metrics}"
    );
    assert_eq!(world.http_get(port, "/healthz").0, 200);
    assert_allowed(&world, a(CLIENT_A), &agent);
    assert_denied(&world, a(CLIENT_B), &agent);

    // A restart while the provider still serves it: the last good list is the small one.
    agent.signal(libc::SIGTERM);
    agent.wait(Duration::from_secs(10));
    let agent = world.start_agent();
    assert_allowed(&world, a(CLIENT_A), &agent);
    assert_denied(&world, a(CLIENT_B), &agent);

    // The provider fixes its list: accepted at the next refresh.
    provider.set("/big.txt", Response::ok("192.0.2.0/24\n198.51.100.0/24\n"));
    reload(&world);
    assert!(
        wait_until(Duration::from_secs(20), || world
            .exchange(a(CLIENT_B), 443)
            .is_ok()),
        "{}",
        agent.log()
    );
}

fn reloads_done(agent: &Agent) -> usize {
    agent.log().matches("configuration reloaded").count()
}

/// A reload asked for at any moment is acted on: during start-up (before and during
/// the first fetch, when SIGHUP's default action would kill the agent), during a
/// refresh, during a sync; a burst is coalesced.
#[test]
fn a_reload_is_never_lost() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let provider = world.provider();
    // Slow enough that start-up (which fetches a source with no saved list before
    // attaching) and refreshes take a while.
    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["192.0.2.0/24"])).delay(Duration::from_secs(2)),
    );
    world.write_config(&world.config(
        "refresh = \"1h\"",
        &provider_toml_with("partner", &provider, "5s", 0),
    ));

    // Right after start (before its handler would be in place if it were installed
    // late: until then SIGHUP's default action kills), and during the first fetch.
    // Sooner than main() nothing can help: under systemd, Type=notify holds a reload
    // until the agent is ready.
    let log = world.dir.path().join("agent-reloads.log");
    let mut agent = world.spawn_agent(&[], &log);
    thread_sleep(Duration::from_millis(100));
    agent.signal(libc::SIGHUP);
    thread_sleep(Duration::from_millis(700));
    agent.signal(libc::SIGHUP);
    world.wait_attached(&agent);
    assert!(
        wait_until(Duration::from_secs(15), || reloads_done(&agent) >= 1),
        "a SIGHUP during start-up was lost:\n{}",
        agent.log()
    );
    assert!(agent.child.try_wait().unwrap().is_none(), "{}", agent.log());

    // During a refresh (the reload's own, 2 s long).
    let before = reloads_done(&agent);
    agent.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || reloads_done(&agent) > before));
    thread_sleep(Duration::from_millis(500));
    let before = reloads_done(&agent);
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(15), || reloads_done(&agent) > before),
        "a SIGHUP during a refresh was lost:\n{}",
        agent.log()
    );

    // During a sync: a long list, and a SIGHUP as soon as it is accepted.
    let mut big: Vec<String> = vec!["192.0.2.0/24".to_owned()];
    big.extend((0..60_000u32).map(|i| {
        std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(44, 0, 0, 0)) + 2 * i)
            .to_string()
    }));
    let refs: Vec<&str> = big.iter().map(String::as_str).collect();
    provider.set(DOCUMENT_PATH, Response::json(intercom_document(&refs)));
    thread_sleep(Duration::from_secs(3));
    let updates = agent.log().matches("list updated").count();
    let before = reloads_done(&agent);
    agent.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(20), || agent
        .log()
        .matches("list updated")
        .count()
        > updates));
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(20), || reloads_done(&agent)
            >= before + 2),
        "a SIGHUP during a sync was lost:\n{}",
        agent.log()
    );

    // A burst: coalesced, and the agent lives on.
    let before = reloads_done(&agent);
    for _ in 0..5 {
        agent.signal(libc::SIGHUP);
    }
    assert!(wait_until(Duration::from_secs(20), || reloads_done(&agent) > before));
    assert!(agent.child.try_wait().unwrap().is_none(), "{}", agent.log());
    assert_allowed(&world, a(CLIENT_A), &agent);
    assert_denied(&world, a(CLIENT_B), &agent);
    agent.signal(libc::SIGTERM);
    agent.wait(Duration::from_secs(10));
}

/// A frame of `payload_len` bytes of TCP (to :443) or UDP payload from `src`.
fn jumbo_frame(src: std::net::Ipv4Addr, tcp: bool, payload_len: usize) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC).ipv4(
        src.octets(),
        SERVER_V4.octets(),
        64,
    );
    let payload = vec![0x5a; payload_len];
    let mut out = Vec::new();
    if tcp {
        let b = builder.tcp(40000, 443, 1, 64240).ack(1);
        b.write(&mut out, &payload).unwrap();
    } else {
        let b = builder.udp(40000, 443);
        b.write(&mut out, &payload).unwrap();
    }
    out
}

/// Jumbo frames: at MTU 9000 the filter attaches (`auto`, native on veth, the
/// program being frags-aware), an allowed client's 8,000-byte segments get through,
/// a denied source's 8,000-byte segment is dropped, and a jumbo UDP datagram passes.
#[test]
fn jumbo_frames_at_mtu_9000() {
    if !require_root() {
        return;
    }
    let world = World::new();
    for (ns, dev) in [
        (&world.server, &world.server_if),
        (&world.client, &world.client_if),
    ] {
        ns.ip(&["link", "set", "dev", dev, "mtu", "9000"]);
    }
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "refresh = \"1h\"");
    let agent = world.start_agent();
    let out = run(world
        .server
        .command("ip")
        .args(["-d", "link", "show", "dev", &world.server_if]));
    let link = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{link}");
    assert!(link.contains("prog/xdp"), "{link}\n{}", agent.log());
    assert!(
        link.contains(" xdp ") && !link.contains("xdpgeneric"),
        "native XDP at MTU 9000: {link}"
    );

    // An allowed client sends 8,000 bytes in one segment (MSS 8,960).
    let padding = "x".repeat(8_000);
    let big = world.client.run(move || {
        use std::io::{Read as _, Write as _};
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .map_err(|e| e.to_string())?;
        sock.bind(&std::net::SocketAddr::new(IpAddr::V4(CLIENT_A), 0).into())
            .map_err(|e| e.to_string())?;
        sock.connect_timeout(
            &std::net::SocketAddr::new(IpAddr::V4(SERVER_V4), 443).into(),
            CONNECT_TIMEOUT,
        )
        .map_err(|e| e.to_string())?;
        let mut stream: std::net::TcpStream = sock.into();
        stream.set_read_timeout(Some(CONNECT_TIMEOUT)).unwrap();
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: test\r\nX-Padding: {padding}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .map_err(|e| e.to_string())?;
        Ok::<String, String>(reply)
    });
    let reply = big.unwrap_or_else(|e| panic!("allowed 8,000-byte request: {e}\n{}", agent.log()));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_denied(&world, a(CLIENT_B), &agent);

    // A denied source's 8,000-byte segment is dropped; a jumbo UDP datagram passes.
    let dropped = world.counter("not_allowlisted", "drop");
    let not_tcp = world.counter("not_tcp", "pass");
    let malformed = world.counter("malformed", "drop");
    world.send_frame(jumbo_frame(CLIENT_B, true, 8_000));
    world.send_frame(jumbo_frame(CLIENT_B, false, 8_000));
    assert!(
        wait_until(Duration::from_secs(5), || {
            world.counter("not_allowlisted", "drop") == dropped + 1
                && world.counter("not_tcp", "pass") == not_tcp + 1
        }),
        "{:#}",
        world.status()["counters"]
    );
    assert_eq!(
        world.counter("malformed", "drop"),
        malformed,
        "no jumbo frame is malformed"
    );
}

/// The CLI run by a user who may not read the agent's directories says, in one line,
/// which one and what to do.
#[test]
fn a_non_root_cli_says_what_it_lacks() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "refresh = \"1h\"");
    let agent = world.start_agent();
    // A copy of the config that the other user can read.
    let config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::copy(world.config_path(), config.path()).unwrap();
    std::fs::set_permissions(config.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    for args in [
        &["status"][..],
        &["list"],
        &["check", "192.0.2.10"],
        &["history"],
    ] {
        let out = run(world
            .server
            .command("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(binary())
            .args(args)
            .arg("--config")
            .arg(config.path()));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: one line: {stderr}"
        );
        assert!(
            stderr.contains("state_dir") && stderr.contains("run this command as root"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.matches("ermission denied").count() <= 1,
            "{args:?}: {stderr}"
        );
    }
    assert_denied(&world, a(CLIENT_B), &agent);
}

/// A refresh that waits on a slow provider does not stop the link check: a link
/// detached meanwhile is attached again within seconds, long before the refresh ends.
#[test]
fn links_are_checked_during_a_long_refresh() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let provider = world.provider();
    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["192.0.2.0/24"])),
    );
    world.write_config(&world.config(
        "refresh = \"1h\"",
        &provider_toml_with("partner", &provider, "30s", 0),
    ));
    let agent = world.start_agent();
    let server_if = world.server_if.clone();
    provider.set(
        DOCUMENT_PATH,
        Response::json(intercom_document(&["192.0.2.0/24"])).delay(Duration::from_secs(12)),
    );
    reload(&world);
    thread_sleep(Duration::from_secs(1));
    let took = detach_and_wait_for_reattach(&world, &server_if, &agent, Duration::from_secs(6));
    eprintln!("re-attached {took:?} after the detach, during a 12 s refresh");
    assert_denied(&world, a(CLIENT_B), &agent);
    assert_allowed(&world, a(CLIENT_A), &agent);
}

/// An agent in another PID namespace (a container): the pid in its pid file names
/// another process here. `detach` and `reload` refuse to signal it (and detach
/// changes nothing); `status` says where the agent is.
#[test]
fn an_agent_in_another_pid_namespace_is_never_signalled_by_pid() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "refresh = \"1h\"");
    let log = world.dir.path().join("agent-pidns.log");
    // sh is PID 1 of the new namespace, the agent PID 2: here, PID 2 is kthreadd,
    // which a stray SIGTERM cannot hurt.
    let mut command = world.server.command("unshare");
    command
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "--",
            "sh",
            "-c",
        ])
        .arg(r#""$0" "$@" & wait"#)
        .arg(binary());
    let agent = world.spawn_agent_with(command, &[], &log);
    assert!(
        wait_until(Duration::from_secs(20), || world.xdp_attached()
            && world.status()["agent"]["pid"].as_u64() == Some(2)),
        "{}",
        agent.log()
    );

    let out = world.cli(&["status"]);
    assert!(
        text(&out).contains("running in another PID namespace"),
        "{}",
        text(&out)
    );
    for args in [&["detach"][..], &["reload"]] {
        let out = world.cli(args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("not a process of this PID namespace"),
            "{args:?}: {}",
            text(&out)
        );
    }
    assert!(world.xdp_attached(), "detach must change nothing");
    assert!(
        world
            .pin_dir
            .join(format!("link_{}", world.server_if))
            .exists()
    );
    assert_denied(&world, a(CLIENT_B), &agent);
    assert_allowed(&world, a(CLIENT_A), &agent);
}
