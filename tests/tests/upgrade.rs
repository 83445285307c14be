//! Upgrades in place: an agent started on the pins of a build that had fewer maps, or
//! other fast tables, adopts what is there, creates and pins what is missing,
//! replaces the derived maps of another layout, and never leaves the interface
//! unfiltered.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::{net::IpAddr, time::Duration};

use allowlist_common::maps as names;
use allowlist_tests::{netns::require_root, world::*};
use allowlist_user::Maps;

/// The pins a build before the denied-source watch leaves: every map but the watch's.
/// With `ALLOWLIST_PREVIOUS_BIN` (an `allowlist` built from a commit before the
/// watch) the first agent is that build; otherwise the first agent is this build and
/// the watch's pins are removed after it exits, which leaves the same pins (its
/// program, still attached, keeps its own watch maps alive, as an old program keeps
/// none).
fn pins_of_a_build_without_the_watch(world: &World) -> Agent {
    let agent = match std::env::var_os("ALLOWLIST_PREVIOUS_BIN") {
        Some(previous) => {
            let log = world.dir.path().join("agent-previous.log");
            let agent = world.spawn_agent_with(world.server.command(previous), &[], &log);
            world.wait_attached(&agent);
            agent
        }
        None => world.start_agent(),
    };
    agent.signal(libc::SIGTERM);
    let mut agent = agent;
    assert!(
        agent.wait(Duration::from_secs(10)).success(),
        "{}",
        agent.log()
    );
    for name in names::WATCH {
        let pin = world.pin_dir.join(name);
        if pin.exists() {
            std::fs::remove_file(&pin).expect("remove a watch pin");
        }
    }
    if std::env::var_os("ALLOWLIST_PREVIOUS_BIN").is_none() {
        // What a build with other fast tables leaves: FAST_V6 of another layout (the
        // chunks without headers of the table before path compression: as many, of
        // another size), and the IPv4 group map that this build no longer has.
        let fast_v6 = world.pin_dir.join(names::FAST_V6);
        std::fs::remove_file(&fast_v6).expect("unpin FAST_V6");
        bpftool_create(
            &fast_v6,
            "array",
            4,
            OLD_CHUNK_BYTES,
            allowlist_common::fast::v6::CHUNKS as u32,
        );
        bpftool_create(&world.pin_dir.join(RETIRED), "hash", 4, 256, 16);
    }
    agent
}

const RETIRED: &str = "FAST_V4_GROUPS";
const OLD_LAYOUT_ENTRIES: u32 = 16;
/// The size of a `FAST_V6` chunk before chunks had headers: 256 codes.
const OLD_CHUNK_BYTES: u32 = 512;

fn bpftool_create(pin: &std::path::Path, kind: &str, key: u32, value: u32, entries: u32) {
    let (key, value, entries) = (key.to_string(), value.to_string(), entries.to_string());
    let mut args = vec!["map", "create", pin.to_str().unwrap(), "type", kind];
    args.extend([
        "key", &key, "value", &value, "entries", &entries, "name", "old",
    ]);
    if kind == "hash" {
        args.extend(["flags", "1"]);
    }
    let out = allowlist_tests::run(std::process::Command::new("bpftool").args(&args));
    assert!(out.status.success(), "bpftool {args:?}: {}", text(&out));
}

/// The number of entries of the map pinned at `pin`.
fn max_entries(pin: &std::path::Path) -> u64 {
    map_info(pin)["max_entries"].as_u64().expect("max_entries")
}

/// The value size of the map pinned at `pin`.
fn value_size(pin: &std::path::Path) -> u64 {
    map_info(pin)["bytes_value"].as_u64().expect("bytes_value")
}

fn map_info(pin: &std::path::Path) -> serde_json::Value {
    let out = allowlist_tests::run(std::process::Command::new("bpftool").args([
        "-j",
        "map",
        "show",
        "pinned",
        pin.to_str().unwrap(),
    ]));
    serde_json::from_slice(&out.stdout).expect("bpftool -j")
}

#[test]
fn an_agent_upgraded_from_a_build_without_the_watch_creates_its_maps() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "");
    let _previous = pins_of_a_build_without_the_watch(&world);
    assert!(world.xdp_attached(), "the filter stays attached");
    assert!(
        !world.pin_dir.join(names::DENIED_SOURCES).exists(),
        "the old pins lack the watch"
    );

    // The CLI reads the old pins (no watch maps) as they are.
    let status = world.status();
    assert!(status["counters"].is_object(), "{status:#}");

    let client = world.client_loop(IpAddr::V4(CLIENT_A), 443);
    let agent = world.start_agent();
    let status = world.status();
    assert_eq!(
        status["agent"]["interfaces"][0]["adopted"],
        true,
        "the new agent adopts the pinned link: {status:#}\n{}",
        agent.log()
    );
    for name in names::ALL {
        assert!(
            world.pin_dir.join(name).exists(),
            "{name} is pinned after the upgrade\n{}",
            agent.log()
        );
    }
    // A derived map of another layout is replaced, a retired one unpinned.
    assert_eq!(
        value_size(&world.pin_dir.join(names::FAST_V6)),
        size_of::<allowlist_common::fast::v6::Chunk>() as u64,
        "{}",
        agent.log()
    );
    assert!(!world.pin_dir.join(RETIRED).exists(), "{}", agent.log());

    // The new program records into the new maps, at the configured (default) rate.
    world.assert_denied(IpAddr::V4(CLIENT_B), &agent.log());
    let maps = Maps::open_pinned(&world.pin_dir).expect("open the pins");
    assert_eq!(
        maps.watch_rate().unwrap(),
        Some(allowlist_user::DEFAULT_WATCH_RATE)
    );
    let denied = maps.denied_sources().expect("read the watch");
    let entry = denied
        .iter()
        .find(|e| e.source == format!("{CLIENT_B}/32").parse().unwrap())
        .unwrap_or_else(|| panic!("{CLIENT_B} is recorded: {denied:?}"));
    assert_eq!(entry.port, 443);
    assert!(entry.packets >= 1);
    let counters = maps.counters().unwrap();
    assert!(counters.watch_recorded >= 1, "{counters:?}");

    let (ok, failed) = client.finish();
    assert!(
        failed.is_empty(),
        "the allowed client failed across the upgrade: {failed:?}"
    );
    eprintln!(
        "upgrade ({}): {ok} allowed connections, 0 failures; {} denied source(s) recorded",
        if std::env::var_os("ALLOWLIST_PREVIOUS_BIN").is_some() {
            "from ALLOWLIST_PREVIOUS_BIN"
        } else {
            "from pins without the watch"
        },
        denied.len()
    );
}

/// A pinned map the agent cannot rebuild (here `PORTS`) of another layout refuses the
/// start, and nothing is removed first: the derived map of another layout and the
/// retired map beside it keep their pins.
#[test]
fn a_refused_upgrade_removes_no_pin() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let _provider = world.provider_publishing(&["192.0.2.0/24"], "");
    std::fs::create_dir(&world.pin_dir).expect("create pin_dir");
    std::fs::set_permissions(
        &world.pin_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let fast_v6 = world.pin_dir.join(names::FAST_V6);
    bpftool_create(&fast_v6, "array", 4, 8, OLD_LAYOUT_ENTRIES);
    bpftool_create(&world.pin_dir.join(names::PORTS), "array", 4, 8, 16);
    let retired = world.pin_dir.join(RETIRED);
    bpftool_create(&retired, "hash", 4, 256, 16);
    let log = world.dir.path().join("agent.log");
    let mut agent = world.spawn_agent(&[], &log);
    let status = agent.wait(Duration::from_secs(20));
    assert!(!status.success(), "the agent started:\n{}", agent.log());
    assert!(
        agent.log().contains("PORTS was left by another build"),
        "{}",
        agent.log()
    );
    assert!(
        fast_v6.exists(),
        "the refused start removed a pin:\n{}",
        agent.log()
    );
    assert_eq!(max_entries(&fast_v6), u64::from(OLD_LAYOUT_ENTRIES));
    assert!(
        retired.exists(),
        "the refused start removed the retired pin:\n{}",
        agent.log()
    );
    assert!(!world.xdp_attached(), "nothing was attached");
}
