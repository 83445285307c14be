//! The denied-source watch: what the program records in `DENIED_SOURCES`, and how the
//! per-CPU budget bounds it.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime},
};

use allowlist_user::DeniedEntry;
use aya::programs::{TestRun, TestRunOptions, Xdp};
use ipnet::IpNet;

use super::*;

/// A rate no test reaches: every denied packet is recorded.
const UNBOUNDED: u32 = u32::MAX;

fn entry<'a>(entries: &'a [DeniedEntry], net: &str) -> Option<&'a DeniedEntry> {
    let net: IpNet = net.parse().unwrap();
    entries.iter().find(|e| e.source == net)
}

impl Harness {
    /// Runs `frame` `repeat` times in one BPF_PROG_TEST_RUN call.
    fn run_repeated(&mut self, frame: &[u8], repeat: u32) -> u32 {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(allowlist_common::PROGRAM_NAME)
            .unwrap()
            .try_into()
            .unwrap();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value
    }
}

#[test]
fn watch_records_denied_and_would_drop_sources_only() {
    if !require_root() {
        return;
    }
    let mut h = Harness::new();
    let started = SystemTime::now();
    h.maps.set_watch(UNBOUNDED).unwrap();
    assert_eq!(h.maps.watch_rate().unwrap(), Some(UNBOUNDED));
    h.maps.set_ports(&BTreeSet::from([443, 8443])).unwrap();
    let before = h.maps.counters().unwrap();

    // Denied IPv4: three packets, the last one to another protected port.
    assert_eq!(h.run(&syn4(bad4(), 443)), DROP);
    assert_eq!(h.run(&syn4(bad4(), 443)), DROP);
    assert_eq!(h.run(&syn4(bad4(), 8443)), DROP);
    // Would-drop in monitor mode.
    monitor_on(&mut h.maps);
    assert_eq!(h.run(&syn4(a4("203.0.113.200"), 443)), PASS);
    monitor_off(&mut h.maps);
    // Two addresses in one IPv6 /64, and one in another /64.
    assert_eq!(h.run(&syn6(bad6(), 443)), DROP);
    assert_eq!(h.run(&syn6(a6("2001:db8:2::ffff:1"), 443)), DROP);
    assert_eq!(h.run(&syn6(a6("2001:db8:2:1::1"), 443)), DROP);
    // A denied first fragment is a denied packet too.
    assert_eq!(h.run(&first4(a4("203.0.113.201"), 443, 41)), DROP);
    let recorded = 3 + 1 + 3 + 1;

    // Not recorded: allowed sources, unprotected ports, UDP, and the other drop
    // reasons (a malformed frame, a tunnel, an unknown later fragment).
    assert_eq!(h.run(&syn4(ok4(), 443)), PASS);
    assert_eq!(h.run(&syn6(ok6(), 443)), PASS);
    assert_eq!(h.run(&syn4(a4("203.0.113.202"), 80)), PASS);
    assert_eq!(h.run(&frame4(a4("203.0.113.203"), UDP, &udp(443))), PASS);
    assert_eq!(
        h.run(&frame6(a6("2001:db8:3::1"), &[], UDP, &udp(443))),
        PASS
    );
    assert_eq!(h.run(&syn4(a4("203.0.113.204"), 443)[..14 + 20 + 10]), DROP);
    assert_eq!(h.run(&frame4(a4("203.0.113.205"), 47, &[0; 40])), DROP);
    assert_eq!(h.run(&later4(a4("203.0.113.206"), TCP, 42)), DROP);

    let after = h.maps.counters().unwrap();
    let entries = h.maps.denied_sources().unwrap();
    let now = SystemTime::now();
    let listed: Vec<String> = entries
        .iter()
        .map(|e| format!("{} x{} :{}", e.source, e.packets, e.port))
        .collect();
    assert_eq!(entries.len(), 5, "entries: {listed:?}");

    let v4 = entry(&entries, "198.51.100.1/32").expect("the denied IPv4 source");
    assert_eq!((v4.packets, v4.port), (3, 8443), "{listed:?}");
    assert!(v4.first_seen <= v4.last_seen);
    // Coarse kernel time, converted to wall time: within the test, give or take a tick.
    let slack = Duration::from_millis(50);
    assert!(v4.first_seen + slack >= started && v4.last_seen <= now + slack);

    let monitored = entry(&entries, "203.0.113.200/32").expect("the would-drop source");
    assert_eq!((monitored.packets, monitored.port), (1, 443));
    let v6 = entry(&entries, "2001:db8:2::/64").expect("the IPv6 /64");
    assert_eq!((v6.packets, v6.port), (2, 443), "{listed:?}");
    let other = entry(&entries, "2001:db8:2:1::/64").expect("the other /64");
    assert_eq!(other.packets, 1);
    let fragment = entry(&entries, "203.0.113.201/32").expect("the denied first fragment");
    assert_eq!(fragment.packets, 1);

    assert_eq!(after.watch_recorded - before.watch_recorded, recorded);
    assert_eq!(after.watch_not_recorded, before.watch_not_recorded);
}

/// A rate of 1 per second and CPU: thousands of denied packets in well under a second
/// are recorded once per CPU (or a few times, if the run crosses a second), and the
/// rest is counted as not recorded. A rate of 0 records nothing.
#[test]
fn watch_budget_bounds_recording() {
    if !require_root() {
        return;
    }
    let mut h = Harness::new();
    let cpus = aya::util::nr_cpus().unwrap() as u64;
    const FLOOD: u32 = 20_000;

    // A bucket filled at a high rate: lowering the rate takes effect at once.
    h.maps.set_watch(UNBOUNDED).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(h.run(&syn4(a4("203.0.113.76"), 443)), DROP);
    h.maps.set_watch(1).unwrap();
    let before = h.maps.counters().unwrap();
    let t0 = Instant::now();
    let flooder = syn4(a4("203.0.113.77"), 443);
    for _ in 0..4 {
        assert_eq!(h.run_repeated(&flooder, FLOOD / 4), DROP);
    }
    let seconds = t0.elapsed().as_secs();
    let after = h.maps.counters().unwrap();
    let recorded = after.watch_recorded - before.watch_recorded;
    let not_recorded = after.watch_not_recorded - before.watch_not_recorded;
    // Each CPU's bucket holds one record, and refills one per second.
    let most = cpus * (1 + seconds + 1);
    assert!(
        (1..=most).contains(&recorded),
        "{recorded} of {FLOOD} denied packets recorded in {seconds} s on {cpus} CPUs at 1/s (at most {most})"
    );
    assert_eq!(recorded + not_recorded, u64::from(FLOOD));
    let entries = h.maps.denied_sources().unwrap();
    let flood = entry(&entries, "203.0.113.77/32").expect("the flooding source");
    assert_eq!(flood.packets, recorded);

    // Off: nothing more is recorded, at once (the bucket's credit is not spent).
    h.maps.set_watch(0).unwrap();
    assert_eq!(h.maps.watch_rate().unwrap(), Some(0));
    let before = h.maps.counters().unwrap();
    assert_eq!(h.run_repeated(&syn4(a4("203.0.113.78"), 443), 1_000), DROP);
    assert_eq!(h.run(&syn6(a6("2001:db8:4::1"), 443)), DROP);
    let after = h.maps.counters().unwrap();
    assert_eq!(after.watch_recorded, before.watch_recorded);
    assert_eq!(after.watch_not_recorded - before.watch_not_recorded, 1_001);
    let entries = h.maps.denied_sources().unwrap();
    assert!(entry(&entries, "203.0.113.78/32").is_none());
    assert!(entry(&entries, "2001:db8:4::/64").is_none());

    // On again: the next denied packet is recorded.
    h.maps.set_watch(2_000).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(h.run(&syn4(a4("203.0.113.79"), 443)), DROP);
    let entries = h.maps.denied_sources().unwrap();
    assert_eq!(
        entry(&entries, "203.0.113.79/32").map(|e| e.packets),
        Some(1)
    );
}

/// Sampling 1 in 4: of 4,000 denied packets every fourth of each CPU's count reaches
/// the (unbounded) budget and is recorded, the others are counted as not recorded (a
/// BPF_PROG_TEST_RUN call may move to another CPU between its batches: a few more or
/// fewer). Back to 1: every one.
#[test]
fn watch_sampling_offers_one_in_n_to_the_budget() {
    if !require_root() {
        return;
    }
    let mut h = Harness::new();
    h.maps.set_watch(UNBOUNDED).unwrap();
    h.maps.set_watch_sampling(4).unwrap();
    assert_eq!(h.maps.settings().unwrap().watch_sample_mask, 3);
    std::thread::sleep(Duration::from_millis(30));
    let before = h.maps.counters().unwrap();
    assert_eq!(h.run_repeated(&syn4(a4("203.0.113.90"), 443), 4_000), DROP);
    let after = h.maps.counters().unwrap();
    let recorded = after.watch_recorded - before.watch_recorded;
    assert!(
        (995..=1_005).contains(&recorded),
        "{recorded}: every fourth of 4,000"
    );
    assert_eq!(
        recorded + after.watch_not_recorded - before.watch_not_recorded,
        4_000
    );
    let entries = h.maps.denied_sources().unwrap();
    assert_eq!(
        entry(&entries, "203.0.113.90/32").map(|e| e.packets),
        Some(recorded)
    );

    // Monitor mode samples its would-drops the same way; the mode is kept.
    monitor_on(&mut h.maps);
    assert_eq!(h.maps.settings().unwrap().watch_sample_mask, 3);
    let before = h.maps.counters().unwrap();
    assert_eq!(h.run_repeated(&syn4(a4("203.0.113.91"), 443), 400), PASS);
    let after = h.maps.counters().unwrap();
    let recorded = after.watch_recorded - before.watch_recorded;
    assert!(
        (95..=105).contains(&recorded),
        "{recorded}: every fourth of 400"
    );
    monitor_off(&mut h.maps);

    h.maps.set_watch_sampling(1).unwrap();
    assert_eq!(h.maps.settings().unwrap().monitor, 0);
    let before = h.maps.counters().unwrap();
    assert_eq!(h.run_repeated(&syn4(a4("203.0.113.92"), 443), 500), DROP);
    let after = h.maps.counters().unwrap();
    assert_eq!(after.watch_recorded - before.watch_recorded, 500);
}

/// Thousands of sources, read back whole: the reader takes the map in batches and
/// stops at its end.
#[test]
fn watch_reads_back_every_source() {
    if !require_root() {
        return;
    }
    let mut h = Harness::new();
    h.maps.set_watch(UNBOUNDED).unwrap();
    // 198.19.0.0/16 (RFC 2544) is in no prefix of the harness's list.
    let sources: Vec<Ipv4Addr> = (0..3_000u32)
        .map(|i| Ipv4Addr::from(u32::from(a4("198.19.0.0")) + i))
        .collect();
    for src in &sources {
        assert_eq!(h.run(&syn4(*src, 443)), DROP);
    }
    let v6: Vec<Ipv6Addr> = (0..100u16)
        .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0x5, i, 0, 0, 0, 1))
        .collect();
    for src in &v6 {
        assert_eq!(h.run(&syn6(*src, 443)), DROP);
    }
    let entries = h.maps.denied_sources().unwrap();
    assert_eq!(entries.len(), sources.len() + v6.len());
    for src in &sources {
        let e = entry(&entries, &format!("{src}/32")).unwrap_or_else(|| panic!("{src} is missing"));
        assert_eq!((e.packets, e.port), (1, 443));
    }
    for src in &v6 {
        let net = ipnet::Ipv6Net::new(*src, 64).unwrap().trunc();
        assert!(
            entry(&entries, &net.to_string()).is_some(),
            "{net} is missing"
        );
    }
}

/// The bench's baseline: loaded without the watch, the program judges the same and
/// records nothing, whatever the rate.
#[test]
fn a_program_loaded_without_the_watch_records_nothing() {
    if !require_root() {
        return;
    }
    let (ebpf, mut maps) = load_unpinned(&LoadOptions {
        without_watch: true,
        ..LoadOptions::default()
    })
    .expect("load the XDP program without its watch");
    maps.set_ports(&BTreeSet::from([443])).unwrap();
    maps.set_watch(UNBOUNDED).unwrap();
    let mut h = Harness { ebpf, maps };
    assert_eq!(h.run(&syn4(bad4(), 443)), DROP);
    assert_eq!(h.run(&syn6(bad6(), 443)), DROP);
    let counters = h.maps.counters().unwrap();
    assert_eq!(counters.exit(NotAllowlisted), 2);
    assert_eq!(
        (counters.watch_recorded, counters.watch_not_recorded),
        (0, 2)
    );
    assert!(h.maps.denied_sources().unwrap().is_empty());
}
