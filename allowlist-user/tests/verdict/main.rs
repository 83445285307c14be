//! Verdict tests: the real compiled XDP program, loaded into the kernel, judges crafted
//! frames through BPF_PROG_TEST_RUN. Each case asserts the action and the one exit
//! counter that moved. Needs root (CAP_BPF, CAP_NET_ADMIN).
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

mod frames;
mod watch;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use allowlist_common::{MAX_IPV6_EXT_HEADERS, Reason, counter};
use allowlist_tests::netns::require_root;
use allowlist_user::{
    Counters, LoadOptions, Maps, apply_change, load_unpinned, program_object, resync,
};
use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use etherparse::Ipv4Header;
use frames::*;
use ipnet::IpNet;

const PASS: u32 = 2; // XDP_PASS
const DROP: u32 = 1; // XDP_DROP
const TCP: u8 = 6;
const UDP: u8 = 17;

// The allowlist every case runs against; rule ids are arbitrary but distinct.
const RULE_DOC_NET: u32 = 1; // 192.0.2.0/24
const RULE_HALF: u32 = 2; // 198.51.100.128/25
const RULE_HOST: u32 = 3; // 203.0.113.7/32
const RULE_V6: u32 = 4; // 2001:db8:1::/48
// Shapes around the fast table's /24 granularity, in the benchmarking range
// 198.18.0.0/15 (RFC 2544).
const RULE_SHORT: u32 = 5; // 198.18.0.0/20: sixteen whole /24s
const RULE_SPLIT: u32 = 6; // 198.18.16.64/26: a quarter of a /24 otherwise denied
const RULE_NESTED_24: u32 = 7; // 198.18.4.0/24, inside the /20
const RULE_NESTED_32: u32 = 8; // 198.18.4.77/32, inside that /24
// A rule id the byte codes of a split /24's chunk cannot carry: 198.18.32.0/25.
const RULE_BEYOND_CODES: u32 = allowlist_common::fast::v4::MAX_BYTE_RULE + 1;
// IPv6 shapes around the fast table's 16-bit root, its 8-bit strides and its /64 end.
const RULE_V6_20: u32 = 9; // 3fff::/20 (RFC 9637): part of a /16's first stride
const RULE_V6_41: u32 = 10; // 2001:db8:80::/41: inside a /40's stride
const RULE_V6_64: u32 = 11; // 2001:db8:1:2::/64, inside the /48
const RULE_V6_80: u32 = 12; // 2001:db8:1:3:4::/80: longer than /64, the trie answers
const RULE_V6_56: u32 = 13; // 2001:db8:1:100::/56, inside the /48
/// Hit counters read around each case: every rule id above.
const HIT_SLOTS: usize = RULE_BEYOND_CODES as usize + 1;

fn a4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn a6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
fn ok4() -> Ipv4Addr {
    a4("192.0.2.10")
}
fn bad4() -> Ipv4Addr {
    a4("198.51.100.1")
}
fn ok6() -> Ipv6Addr {
    a6("2001:db8:1::5")
}
fn bad6() -> Ipv6Addr {
    a6("2001:db8:2::1")
}

fn frame4(src: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    v4(&[], ipv4(src, proto, payload, |_| {}))
}
fn frame6(src: Ipv6Addr, chain: &[Ext], proto: u8, payload: &[u8]) -> Vec<u8> {
    v6(&[], ipv6(src, chain, proto, payload))
}
fn syn4(src: Ipv4Addr, port: u16) -> Vec<u8> {
    tagged_syn4(&[], src, port)
}
fn syn6(src: Ipv6Addr, port: u16) -> Vec<u8> {
    tagged_syn6(&[], src, port)
}
fn tagged_syn4(tags: &[u16], src: Ipv4Addr, port: u16) -> Vec<u8> {
    v4(tags, ipv4(src, TCP, &tcp_syn(port), |_| {}))
}
fn tagged_syn6(tags: &[u16], src: Ipv6Addr, port: u16) -> Vec<u8> {
    v6(tags, ipv6(src, &[], TCP, &tcp_syn(port)))
}
/// A first IPv4 fragment holding a whole SYN to `port`.
fn first4(src: Ipv4Addr, port: u16, id: u16) -> Vec<u8> {
    v4(
        &[],
        ipv4(src, TCP, &tcp_syn(port), |ip| fragment(ip, id, 0, true)),
    )
}
/// A later (last) IPv4 fragment of datagram `id`.
fn later4(src: Ipv4Addr, proto: u8, id: u16) -> Vec<u8> {
    v4(
        &[],
        ipv4(src, proto, &[0u8; 16], |ip| fragment(ip, id, 3, false)),
    )
}
fn frag6(offset_units: u16, more: bool, id: u32) -> Ext {
    Ext::Fragment {
        offset_units,
        more,
        id,
    }
}
/// A chain of `n` destination-options headers.
fn chain(n: usize) -> Vec<Ext> {
    vec![Ext::DestOpts; n]
}

/// A TCP segment of 8,000 bytes: with MTU 9000 it does not fit one page, so the
/// kernel hands the program a multi-buffer frame whose payload continues in further
/// buffers; lengths are checked against the whole frame, headers read from the first.
fn jumbo_tcp() -> Vec<u8> {
    let mut segment = tcp_syn(443);
    segment.resize(8_000, 0x5a);
    segment
}
/// A UDP datagram of 8,000 bytes (see [`jumbo_tcp`]).
fn jumbo_udp() -> Vec<u8> {
    let mut datagram = udp(443);
    datagram.resize(8_000, 0x5a);
    let len = (datagram.len() as u16).to_be_bytes();
    datagram[4..6].copy_from_slice(&len);
    datagram
}

/// IPv4 options NOP NOP NOP EOL.
fn nop_options(ip: &mut Ipv4Header) {
    ip.options = (&[1u8, 1, 1, 0][..]).try_into().unwrap();
}
/// 40 bytes of IPv4 options: IHL 15.
fn max_options(ip: &mut Ipv4Header) {
    ip.options = (&[1u8; 40][..]).try_into().unwrap();
}
fn dont_fragment(ip: &mut Ipv4Header) {
    ip.dont_fragment = true;
}

fn monitor_on(m: &mut Maps) {
    m.set_monitor(true).unwrap();
}
fn monitor_off(m: &mut Maps) {
    m.set_monitor(false).unwrap();
}
fn ports_8443(m: &mut Maps) {
    m.set_ports(&BTreeSet::from([8443])).unwrap();
}
fn ports_443(m: &mut Maps) {
    m.set_ports(&BTreeSet::from([443])).unwrap();
}

/// What a case expects to see move.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Moved {
    Exit(Reason),
    WouldDrop(Reason),
}

type Setup = fn(&mut Maps);

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    moved: Moved,
    /// Observation counters that must move too.
    observed: &'static [&'static str],
    /// Hit counter (rule id) that must move.
    hit: Option<u32>,
    /// Changes to the maps before the frame, undone by `after`.
    before: Option<Setup>,
    after: Option<Setup>,
}

fn case(name: &'static str, frame: Vec<u8>, action: u32, moved: Moved) -> Case {
    Case {
        name,
        frame,
        action,
        moved,
        observed: &[],
        hit: None,
        before: None,
        after: None,
    }
}

impl Case {
    fn observing(mut self, observed: &'static [&'static str]) -> Self {
        self.observed = observed;
        self
    }
    fn hit(mut self, rule: u32) -> Self {
        self.hit = Some(rule);
        self
    }
    fn with(mut self, before: Setup, after: Setup) -> Self {
        self.before = Some(before);
        self.after = Some(after);
        self
    }
}

use Moved::{Exit, WouldDrop};
use Reason::*;

fn pass(name: &'static str, frame: Vec<u8>, reason: Reason) -> Case {
    case(name, frame, PASS, Exit(reason))
}
fn drop(name: &'static str, frame: Vec<u8>, reason: Reason) -> Case {
    case(name, frame, DROP, Exit(reason))
}

/// The cases, one a line, in the order they run: some depend on the ones before (a
/// later fragment on its first fragment).
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        // Allowed and denied SYNs.
        pass("v4 SYN to 443 from an allowlisted /24", syn4(ok4(), 443), Allowlisted).hit(RULE_DOC_NET),
        drop("v4 SYN to 443 from a source not listed", syn4(bad4(), 443), NotAllowlisted),
        pass("v6 SYN to 443 from an allowlisted /48", syn6(ok6(), 443), Allowlisted).hit(RULE_V6),
        drop("v6 SYN to 443 from a source not listed", syn6(bad6(), 443), NotAllowlisted),

        // Prefix boundaries.
        pass("first address of 198.51.100.128/25", syn4(a4("198.51.100.128"), 443), Allowlisted).hit(RULE_HALF),
        pass("last address of 198.51.100.128/25", syn4(a4("198.51.100.255"), 443), Allowlisted).hit(RULE_HALF),
        drop("address just below 198.51.100.128/25", syn4(a4("198.51.100.127"), 443), NotAllowlisted),
        pass("exact /32 host", syn4(a4("203.0.113.7"), 443), Allowlisted).hit(RULE_HOST),
        drop("address just after the /32 host", syn4(a4("203.0.113.8"), 443), NotAllowlisted),
        pass("last address of 2001:db8:1::/48", syn6(a6("2001:db8:1:ffff:ffff:ffff:ffff:ffff"), 443), Allowlisted),
        drop("first address after 2001:db8:1::/48", syn6(a6("2001:db8:2::"), 443), NotAllowlisted),

        // Prefixes shorter and longer than the fast table's /24 codes.
        pass("first address of a /20 (whole /24 codes)", syn4(a4("198.18.0.0"), 443), Allowlisted).hit(RULE_SHORT),
        pass("last address of a /20", syn4(a4("198.18.15.255"), 443), Allowlisted).hit(RULE_SHORT),
        drop("first address after a /20", syn4(a4("198.18.16.0"), 443), NotAllowlisted),
        pass("first address of a /26 in a /24 otherwise denied", syn4(a4("198.18.16.64"), 443), Allowlisted).hit(RULE_SPLIT),
        pass("last address of that /26", syn4(a4("198.18.16.127"), 443), Allowlisted).hit(RULE_SPLIT),
        drop("address just below the /26", syn4(a4("198.18.16.63"), 443), NotAllowlisted),
        drop("address just above the /26", syn4(a4("198.18.16.128"), 443), NotAllowlisted),
        drop("last address of the /24 holding the /26", syn4(a4("198.18.16.255"), 443), NotAllowlisted),
        pass("a /24 inside a /20: the /24's rule", syn4(a4("198.18.4.1"), 443), Allowlisted).hit(RULE_NESTED_24),
        pass("a /32 inside that /24: the /32's rule", syn4(a4("198.18.4.77"), 443), Allowlisted).hit(RULE_NESTED_32),
        pass("the address after that /32: the /24's rule again", syn4(a4("198.18.4.78"), 443), Allowlisted).hit(RULE_NESTED_24),
        pass("the /24 after it: the /20's rule", syn4(a4("198.18.5.77"), 443), Allowlisted).hit(RULE_SHORT),
        pass("a rule id beyond a chunk's byte codes: the trie answers", syn4(a4("198.18.32.9"), 443), Allowlisted).hit(RULE_BEYOND_CODES),
        drop("the other half of that /24", syn4(a4("198.18.32.200"), 443), NotAllowlisted),
        drop("the /24 after that one", syn4(a4("198.18.33.9"), 443), NotAllowlisted),

        // IPv6 prefixes at and between the fast table's strides, and beyond its /64.
        pass("v6 first address of a /20", syn6(a6("3fff::"), 443), Allowlisted).hit(RULE_V6_20),
        pass("v6 last address of a /20", syn6(a6("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff"), 443), Allowlisted).hit(RULE_V6_20),
        drop("v6 first address after a /20", syn6(a6("3fff:1000::"), 443), NotAllowlisted),
        drop("v6 a /16 no prefix touches", syn6(a6("3ffe::1"), 443), NotAllowlisted),
        pass("v6 first address of a /41", syn6(a6("2001:db8:80::"), 443), Allowlisted).hit(RULE_V6_41),
        pass("v6 last address of a /41", syn6(a6("2001:db8:ff:ffff:ffff:ffff:ffff:ffff"), 443), Allowlisted).hit(RULE_V6_41),
        drop("v6 address just below the /41", syn6(a6("2001:db8:7f:ffff:ffff:ffff:ffff:ffff"), 443), NotAllowlisted),
        pass("v6 a /56 inside the /48: the /56's rule", syn6(a6("2001:db8:1:1ff::1"), 443), Allowlisted).hit(RULE_V6_56),
        pass("v6 just after the /56: the /48's rule", syn6(a6("2001:db8:1:200::1"), 443), Allowlisted).hit(RULE_V6),
        pass("v6 a /64 inside the /48: the /64's rule", syn6(a6("2001:db8:1:2:ffff:ffff:ffff:ffff"), 443), Allowlisted).hit(RULE_V6_64),
        pass("v6 the /64 after it: the /48's rule", syn6(a6("2001:db8:1:3::1"), 443), Allowlisted).hit(RULE_V6),
        pass("v6 a /80 (longer than the table's /64): the trie answers", syn6(a6("2001:db8:1:3:4::9"), 443), Allowlisted).hit(RULE_V6_80),
        pass("v6 beside the /80 in its /64: the trie answers with the /48", syn6(a6("2001:db8:1:3:5::9"), 443), Allowlisted).hit(RULE_V6),

        // Traffic that cannot reach a protected port.
        pass("v4 TCP to port 80 from anyone", syn4(bad4(), 80), UnprotectedPort),
        pass("v6 TCP to port 80 from anyone", syn6(bad6(), 80), UnprotectedPort),
        pass("UDP to 443 (QUIC) from anyone", frame4(bad4(), UDP, &udp(443)), NotTcp),
        pass("v6 UDP to 443 from anyone", frame6(bad6(), &[], UDP, &udp(443)), NotTcp),
        pass("ICMP echo", frame4(bad4(), 1, &icmp_echo()), NotTcp),
        pass("ARP", arp(), NotIp),

        // Jumbo frames (MTU 9000, multi-buffer) and padded ones.
        pass("jumbo v4 TCP segment of 8,000 bytes (multi-buffer) from an allowlisted source", frame4(ok4(), TCP, &jumbo_tcp()), Allowlisted).hit(RULE_DOC_NET),
        drop("jumbo v4 TCP segment of 8,000 bytes from a source not listed", frame4(bad4(), TCP, &jumbo_tcp()), NotAllowlisted),
        pass("jumbo v4 UDP datagram of 8,000 bytes from anyone", frame4(bad4(), UDP, &jumbo_udp()), NotTcp),
        pass("jumbo v6 TCP segment of 8,000 bytes from an allowlisted source", frame6(ok6(), &[], TCP, &jumbo_tcp()), Allowlisted).hit(RULE_V6),
        drop("jumbo v6 TCP segment of 8,000 bytes from a source not listed", frame6(bad6(), &[], TCP, &jumbo_tcp()), NotAllowlisted),
        pass("jumbo v6 UDP datagram of 8,000 bytes from anyone", frame6(bad6(), &[], UDP, &jumbo_udp()), NotTcp),
        drop("jumbo v4 frame shorter than its IPv4 total length, not listed", frame4(bad4(), UDP, &jumbo_udp())[..6_000].to_vec(), Malformed),
        pass("allowlisted SYN with Ethernet padding", pad(syn4(ok4(), 443), 60), Allowlisted),
        drop("denied SYN with Ethernet padding", pad(syn4(bad4(), 443), 60), NotAllowlisted),

        // VLAN tags.
        pass("802.1Q, allowlisted", tagged_syn4(&[TPID_8021Q], ok4(), 443), Allowlisted).observing(&["vlan_tagged"]),
        drop("802.1Q, not listed", tagged_syn4(&[TPID_8021Q], bad4(), 443), NotAllowlisted).observing(&["vlan_tagged"]),
        pass("QinQ 802.1ad+802.1Q, allowlisted", tagged_syn4(&[TPID_8021AD, TPID_8021Q], ok4(), 443), Allowlisted).observing(&["vlan_tagged"]),
        drop("QinQ 802.1ad+802.1Q, not listed", tagged_syn4(&[TPID_8021AD, TPID_8021Q], bad4(), 443), NotAllowlisted).observing(&["vlan_tagged"]),
        drop("QinQ 0x9100+802.1Q, not listed", tagged_syn4(&[TPID_QINQ_9100, TPID_8021Q], bad4(), 443), NotAllowlisted).observing(&["vlan_tagged"]),
        drop("v6 in 802.1Q, not listed", tagged_syn6(&[TPID_8021Q], bad6(), 443), NotAllowlisted).observing(&["vlan_tagged"]),
        pass("v6 in QinQ, allowlisted", tagged_syn6(&[TPID_8021AD, TPID_8021Q], ok6(), 443), Allowlisted).observing(&["vlan_tagged"]),
        drop("three stacked VLAN tags (more than the parser walks)", tagged_syn4(&[TPID_8021AD, TPID_8021Q, TPID_8021Q], ok4(), 443), Malformed).observing(&["vlan_tagged"]),
        drop("frame ends inside the VLAN tag", ethernet(&[TPID_8021Q], 0x0800, &[])[..16].to_vec(), Malformed),

        // IPv4 header shapes. The common shape takes a shorter way through the parser
        // (plain IPv4): the don't-fragment flag keeps a datagram on it.
        drop("v4 with options, not listed", v4(&[], ipv4(bad4(), TCP, &tcp_syn(443), nop_options)), NotAllowlisted).observing(&["ipv4_options"]),
        pass("v4 with options, allowlisted", v4(&[], ipv4(ok4(), TCP, &tcp_syn(443), nop_options)), Allowlisted).observing(&["ipv4_options"]),
        drop("v4 SYN with don't-fragment set, not listed", v4(&[], ipv4(bad4(), TCP, &tcp_syn(443), dont_fragment)), NotAllowlisted),
        pass("v4 SYN with don't-fragment set, allowlisted", v4(&[], ipv4(ok4(), TCP, &tcp_syn(443), dont_fragment)), Allowlisted).hit(RULE_DOC_NET),
        drop("v4 with 40 bytes of options (IHL 15), not listed", v4(&[], ipv4(bad4(), TCP, &tcp_syn(443), max_options)), NotAllowlisted),
        pass("v4 with IHL 15 to port 80", v4(&[], ipv4(bad4(), TCP, &tcp_syn(80), max_options)), UnprotectedPort),
        drop("v4 IHL 0", patch(syn4(bad4(), 443), 14, &[0x40]), Malformed),
        drop("v4 IHL 4", patch(syn4(bad4(), 443), 14, &[0x44]), Malformed),
        pass("v4 IHL 4 from an allowlisted source", patch(syn4(ok4(), 443), 14, &[0x44]), Allowlisted),
        drop("v4 total length beyond the frame", patch(syn4(bad4(), 443), 16, &200u16.to_be_bytes()), Malformed),
        drop("v4 total length shorter than the header", patch(syn4(bad4(), 443), 16, &16u16.to_be_bytes()), Malformed),
        drop("v4 EtherType with IP version 6", patch(syn4(bad4(), 443), 14, &[0x65]), Malformed),
        drop("TCP data offset below 5", patch(syn4(bad4(), 443), 14 + 20 + 12, &[0x40]), Malformed),

        // Truncation at each header.
        drop("frame ends inside the IPv4 header (before the source)", syn4(bad4(), 443)[..14 + 10].to_vec(), Malformed),
        drop("frame ends inside the IPv4 header (after the source)", syn4(bad4(), 443)[..14 + 16].to_vec(), Malformed),
        drop("frame ends inside the TCP header", syn4(bad4(), 443)[..14 + 20 + 10].to_vec(), Malformed),
        pass("allowlisted frame ending inside the TCP header", syn4(ok4(), 443)[..14 + 20 + 10].to_vec(), Allowlisted),
        drop("IPv4 length ends inside the TCP header", frame4(bad4(), TCP, &tcp_syn(443)[..10]), Malformed),
        drop("frame ends inside the IPv6 header", syn6(bad6(), 443)[..14 + 30].to_vec(), Malformed),
        drop("frame ends inside the TCP header after IPv6", syn6(bad6(), 443)[..14 + 40 + 6].to_vec(), Malformed),
        drop("frame ends inside an IPv6 extension header", frame6(bad6(), &[Ext::HopByHop, Ext::DestOpts], TCP, &tcp_syn(443))[..14 + 40 + 8 + 1].to_vec(), Malformed),
        drop("v6 EtherType with IP version 4", patch(syn6(bad6(), 443), 14, &[0x40]), Malformed),
        drop("v6 payload length beyond the frame", patch(syn6(bad6(), 443), 14 + 4, &400u16.to_be_bytes()), Malformed),

        // IPv4 fragments.
        drop("v4 first fragment to 443, not listed", first4(bad4(), 443, 7), NotAllowlisted).observing(&["fragment"]),
        drop("v4 later fragment of that datagram", later4(bad4(), TCP, 7), FragmentUnknown).observing(&["fragment"]),
        pass("v4 first fragment to 80", first4(bad4(), 80, 8), UnprotectedPort).observing(&["fragment"]),
        pass("v4 later fragment of the port-80 datagram", later4(bad4(), TCP, 8), FragmentOfPassed),
        drop("v4 later TCP fragment with no first fragment", later4(bad4(), TCP, 9), FragmentUnknown),
        pass("v4 later fragment from an allowlisted source", later4(ok4(), TCP, 10), Allowlisted),
        pass("v4 later UDP fragment", later4(bad4(), UDP, 11), NotTcp),
        drop("v4 later GRE fragment, not listed", later4(bad4(), 47, 12), FragmentUnknown),
        drop("v4 tiny first fragment splitting the TCP header", v4(&[], ipv4(bad4(), TCP, &tcp_syn(443)[..8], |ip| fragment(ip, 13, 0, true))), Malformed),

        // IPv6 extension headers, each in front of a SYN to 443.
        drop("v6 hop-by-hop, then SYN to 443, not listed", frame6(bad6(), &[Ext::HopByHop], TCP, &tcp_syn(443)), NotAllowlisted).observing(&["ipv6_ext_headers"]),
        pass("v6 hop-by-hop, then SYN to 443, allowlisted", frame6(ok6(), &[Ext::HopByHop], TCP, &tcp_syn(443)), Allowlisted).observing(&["ipv6_ext_headers"]),
        drop("v6 routing, then SYN to 443, not listed", frame6(bad6(), &[Ext::Routing], TCP, &tcp_syn(443)), NotAllowlisted).observing(&["ipv6_ext_headers"]),
        pass("v6 routing, then SYN to 443, allowlisted", frame6(ok6(), &[Ext::Routing], TCP, &tcp_syn(443)), Allowlisted).observing(&["ipv6_ext_headers"]),
        drop("v6 destination options, then SYN to 443, not listed", frame6(bad6(), &[Ext::DestOpts], TCP, &tcp_syn(443)), NotAllowlisted).observing(&["ipv6_ext_headers"]),
        pass("v6 destination options, then SYN to 443, allowlisted", frame6(ok6(), &[Ext::DestOpts], TCP, &tcp_syn(443)), Allowlisted).observing(&["ipv6_ext_headers"]),
        drop("v6 authentication header, then SYN to 443, not listed", frame6(bad6(), &[Ext::Auth], TCP, &tcp_syn(443)), NotAllowlisted).observing(&["ipv6_ext_headers"]),
        pass("v6 authentication header, then SYN to 443, allowlisted", frame6(ok6(), &[Ext::Auth], TCP, &tcp_syn(443)), Allowlisted).observing(&["ipv6_ext_headers"]),
        drop("v6 atomic fragment header, then SYN to 443, not listed", frame6(bad6(), &[frag6(0, false, 99)], TCP, &tcp_syn(443)), NotAllowlisted).observing(&["ipv6_ext_headers"]),
        pass("v6 atomic fragment header, then SYN to 443, allowlisted", frame6(ok6(), &[frag6(0, false, 99)], TCP, &tcp_syn(443)), Allowlisted).observing(&["ipv6_ext_headers"]),
        drop("v6 chain at the bound, not listed", frame6(bad6(), &chain(MAX_IPV6_EXT_HEADERS), TCP, &tcp_syn(443)), NotAllowlisted),
        pass("v6 chain at the bound to port 80", frame6(bad6(), &chain(MAX_IPV6_EXT_HEADERS), TCP, &tcp_syn(80)), UnprotectedPort),
        drop("v6 chain longer than the bound", frame6(bad6(), &chain(MAX_IPV6_EXT_HEADERS + 1), TCP, &tcp_syn(80)), ExtHeaderLimit),
        pass("v6 chain longer than the bound, allowlisted", frame6(ok6(), &chain(MAX_IPV6_EXT_HEADERS + 1), TCP, &tcp_syn(443)), Allowlisted),
        pass("v6 no next header", frame6(bad6(), &[Ext::DestOpts], 59, &[]), NotTcp),

        // IPv6 fragments.
        drop("v6 first fragment to 443, not listed", frame6(bad6(), &[frag6(0, true, 21)], TCP, &tcp_syn(443)), NotAllowlisted).observing(&["fragment"]),
        drop("v6 later fragment of that datagram", frame6(bad6(), &[frag6(2, false, 21)], TCP, &[0; 16]), FragmentUnknown).observing(&["fragment"]),
        pass("v6 first fragment to 80", frame6(bad6(), &[frag6(0, true, 22)], TCP, &tcp_syn(80)), UnprotectedPort),
        pass("v6 later fragment of the port-80 datagram", frame6(bad6(), &[frag6(2, false, 22)], TCP, &[0; 16]), FragmentOfPassed),
        pass("v6 first fragment of a UDP datagram", frame6(bad6(), &[frag6(0, true, 23)], UDP, &udp(53)), NotTcp),
        pass("v6 later fragment of the UDP datagram", frame6(bad6(), &[frag6(2, false, 23)], UDP, &[0; 16]), FragmentOfPassed),
        drop("v6 later fragment claiming UDP, no first fragment (the next header of a later fragment is not trusted)", frame6(bad6(), &[frag6(2, false, 24)], UDP, &[0; 16]), FragmentUnknown),
        pass("v6 later fragment from an allowlisted source", frame6(ok6(), &[frag6(2, false, 25)], TCP, &[0; 16]), Allowlisted),
        drop("v6 first fragment with the TCP header cut off", frame6(bad6(), &[frag6(0, true, 26)], TCP, &tcp_syn(443)[..8]), Malformed),

        // Tunnels and encrypted payloads.
        drop("IP-in-IP, not listed", frame4(bad4(), 4, &[0; 40]), Tunnel),
        drop("IPv6-in-IPv4, not listed", frame4(bad4(), 41, &[0; 40]), Tunnel),
        drop("GRE, not listed", frame4(bad4(), 47, &[0; 40]), Tunnel),
        drop("ESP, not listed", frame4(bad4(), 50, &[0; 40]), Tunnel),
        drop("IPv4 AH, not listed", frame4(bad4(), 51, &[0; 40]), Tunnel),
        pass("GRE from an allowlisted source", frame4(ok4(), 47, &[0; 40]), Allowlisted),
        drop("v6 ESP, not listed", frame6(bad6(), &[], 50, &[0; 40]), Tunnel),
        drop("IPv4-in-IPv6, not listed", frame6(bad6(), &[], 4, &[0; 40]), Tunnel),

        // Run-time settings.
        case("monitor mode: denied SYN passes and counts a would-drop", syn4(bad4(), 443), PASS, WouldDrop(NotAllowlisted)).with(monitor_on, monitor_off),
        case("monitor mode: malformed frame passes and counts a would-drop", syn4(bad4(), 443)[..14 + 20 + 10].to_vec(), PASS, WouldDrop(Malformed)).with(monitor_on, monitor_off),
        case("monitor mode: allowlisted SYN still counts as allowlisted", syn4(ok4(), 443), PASS, Exit(Allowlisted)).with(monitor_on, monitor_off),
        drop("back in enforce mode, denied SYN drops", syn4(bad4(), 443), NotAllowlisted),
        pass("protected ports changed to {8443}: 443 no longer protected", syn4(bad4(), 443), UnprotectedPort).with(ports_8443, ports_443),
        drop("protected ports changed to {8443}: 8443 protected", syn4(bad4(), 8443), NotAllowlisted).with(ports_8443, ports_443),
        drop("protected ports back to {443}", syn4(bad4(), 443), NotAllowlisted),
    ]
}

struct Harness {
    ebpf: Ebpf,
    maps: Maps,
}

/// The program loaded with fresh maps, TCP/443 protected and `list` in force, filled as
/// the agent fills them at its first start.
fn loaded_with(list: &std::collections::BTreeMap<ipnet::IpNet, u32>) -> (Ebpf, Maps) {
    let (ebpf, mut maps) = load_unpinned(&LoadOptions::default()).expect("load the XDP program");
    maps.set_ports(&BTreeSet::from([443])).unwrap();
    resync(&mut maps, list).expect("fill the maps");
    (ebpf, maps)
}

/// The loaded program, to run frames through.
fn xdp(ebpf: &Ebpf) -> &Xdp {
    ebpf.program(allowlist_common::PROGRAM_NAME)
        .unwrap()
        .try_into()
        .unwrap()
}

impl Harness {
    fn new() -> Self {
        let desired: std::collections::BTreeMap<ipnet::IpNet, u32> = [
            ("192.0.2.0/24", RULE_DOC_NET),
            ("198.51.100.128/25", RULE_HALF),
            ("203.0.113.7/32", RULE_HOST),
            ("2001:db8:1::/48", RULE_V6),
            ("198.18.0.0/20", RULE_SHORT),
            ("198.18.16.64/26", RULE_SPLIT),
            ("198.18.4.0/24", RULE_NESTED_24),
            ("198.18.4.77/32", RULE_NESTED_32),
            ("198.18.32.0/25", RULE_BEYOND_CODES),
            ("3fff::/20", RULE_V6_20),
            ("2001:db8:80::/41", RULE_V6_41),
            ("2001:db8:1:2::/64", RULE_V6_64),
            ("2001:db8:1:3:4::/80", RULE_V6_80),
            ("2001:db8:1:100::/56", RULE_V6_56),
        ]
        .into_iter()
        .map(|(net, rule)| (net.parse().unwrap(), rule))
        .collect();
        let (ebpf, maps) = loaded_with(&desired);
        Self { ebpf, maps }
    }

    fn run(&mut self, frame: &[u8]) -> u32 {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(allowlist_common::PROGRAM_NAME)
            .unwrap()
            .try_into()
            .unwrap();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value
    }
}

/// Every slot that moved between two snapshots, with its delta.
fn moved(before: &Counters, after: &Counters) -> Vec<(Moved, u64)> {
    let mut out = Vec::new();
    for r in Reason::ALL {
        let d = after.exit(r) - before.exit(r);
        if d != 0 {
            out.push((Exit(r), d));
        }
        let d = after.would_drop(r) - before.would_drop(r);
        if d != 0 {
            out.push((WouldDrop(r), d));
        }
    }
    out
}

#[test]
fn verdict_table() {
    if !require_root() {
        return;
    }
    let mut h = Harness::new();
    let mut failures = Vec::new();
    let cases = cases();
    for case in &cases {
        if let Some(before) = case.before {
            before(&mut h.maps);
        }
        let counters_before = h.maps.counters().unwrap();
        let hits_before = h.maps.hits(HIT_SLOTS).unwrap();
        let action = h.run(&case.frame);
        let counters_after = h.maps.counters().unwrap();
        let hits_after = h.maps.hits(HIT_SLOTS).unwrap();
        if let Some(after) = case.after {
            after(&mut h.maps);
        }

        let mut problems = Vec::new();
        if action != case.action {
            problems.push(format!("action {action}, expected {}", case.action));
        }
        let moved = moved(&counters_before, &counters_after);
        if moved != [(case.moved, 1)] {
            problems.push(format!(
                "counters moved {moved:?}, expected exactly {:?} by 1",
                case.moved
            ));
        }
        for name in case.observed {
            if counters_after.observed[name] == counters_before.observed[name] {
                problems.push(format!("observation counter {name} did not move"));
            }
        }
        if let Some(rule) = case.hit {
            let rule = rule as usize;
            if hits_after[rule] != hits_before[rule] + 1 {
                problems.push(format!("hit counter of rule {rule} did not move by 1"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.name, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
    eprintln!("{} verdict cases passed", cases.len());
}

#[test]
fn observation_slots_do_not_overlap_exits() {
    assert!(counter::VLAN_TAGGED > counter::would_drop(Reason::Tunnel));
}

/// Flips the maps between `wide` and `narrow` for 500 ms while another thread judges a
/// SYN from each of `sources` (allowed in both sets) through BPF_PROG_TEST_RUN, and
/// asserts that none was dropped.
fn assert_no_drops_while_flipping(
    wide: &BTreeMap<IpNet, u32>,
    narrow: &BTreeMap<IpNet, u32>,
    sources: &[&str],
) {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    let (ebpf, mut maps) = loaded_with(wide);

    let stop = Arc::new(AtomicBool::new(false));
    let judged = Arc::new(AtomicU64::new(0));
    let judge = {
        let (stop, judged) = (stop.clone(), judged.clone());
        let frames: Vec<Vec<u8>> = sources
            .iter()
            .map(|s| match s.parse().unwrap() {
                std::net::IpAddr::V4(a) => syn4(a, 443),
                std::net::IpAddr::V6(a) => syn6(a, 443),
            })
            .collect();
        std::thread::spawn(move || {
            let prog = xdp(&ebpf);
            let mut dropped = vec![0u64; frames.len()];
            while !stop.load(Ordering::Relaxed) {
                for (i, frame) in frames.iter().enumerate() {
                    // One run per call: with `repeat` above 1 every call waits for an
                    // RCU grace period (the XDP dispatcher), and the judge would see
                    // the syncs only now and then.
                    let mut opts = TestRunOptions::new();
                    opts.data_in = Some(frame);
                    if prog.test_run(opts).expect("test run").return_value != PASS {
                        dropped[i] += 1;
                    }
                }
                judged.fetch_add(frames.len() as u64, Ordering::Relaxed);
            }
            dropped
        })
    };
    while judged.load(Ordering::Relaxed) == 0 {
        std::thread::yield_now();
    }
    let mut current = wide.clone();
    let until = std::time::Instant::now() + std::time::Duration::from_millis(500);
    let mut syncs = 0;
    while std::time::Instant::now() < until {
        let next = if syncs % 2 == 0 { narrow } else { wide };
        apply_change(&mut maps, &current, next).unwrap();
        current = next.clone();
        syncs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let dropped = judge.join().unwrap();
    let judged = judged.load(Ordering::Relaxed);
    let counters = maps.counters().unwrap();
    eprintln!(
        "{judged} SYNs judged during {syncs} syncs; dropped per source: {:?}",
        sources.iter().zip(&dropped).collect::<Vec<_>>()
    );
    assert!(syncs >= 20, "only {syncs} syncs in 500 ms");
    assert_eq!(
        counters.exit(NotAllowlisted),
        0,
        "a source allowed before and after a sync was dropped during it: {dropped:?}"
    );
    assert_eq!(counters.exit(Allowlisted), judged);
}

fn set(list: &[(&str, u32)]) -> BTreeMap<IpNet, u32> {
    list.iter().map(|(n, r)| (n.parse().unwrap(), *r)).collect()
}

/// The maps flip between two sets under load; sources allowed in both are judged
/// without pause and none may be dropped. The sources cover every kind of IPv4
/// fast-table change:
/// - 192.0.2.10: a /24 (a whole-/24 code) and a /25 inside it (a chunk);
/// - 198.18.0.10 and 198.18.9.10: a /20 and two /21s with another rule (codes change
///   rule);
/// - 198.51.100.7: a /24 and a /32 with another rule (a chunk with another rule);
/// - 203.0.113.10: a /24 and a /25 with a rule id beyond a chunk's byte codes (the
///   chunk defers to the trie, so the trie's own order is what keeps it allowed).
#[test]
fn sync_never_drops_a_source_allowed_before_and_after() {
    if !require_root() {
        return;
    }
    let deep = allowlist_common::fast::v4::MAX_BYTE_RULE + 1;
    let wide = set(&[
        ("192.0.2.0/24", 1),
        ("198.18.0.0/20", 1),
        ("198.51.100.0/24", 4),
        ("203.0.113.0/24", deep),
    ]);
    let narrow = set(&[
        ("192.0.2.0/25", 1),
        ("198.18.0.0/21", 3),
        ("198.18.8.0/21", 3),
        ("198.51.100.7/32", 2),
        ("203.0.113.0/25", deep),
    ]);
    assert_no_drops_while_flipping(
        &wide,
        &narrow,
        &[
            "192.0.2.10",
            "198.18.0.10",
            "198.18.9.10",
            "198.51.100.7",
            "203.0.113.10",
        ],
    );
}

/// The same for the IPv6 table: each sync rebuilds subtrees, fills new chunks,
/// changes chunks in place and frees others.
/// - 2001:db8:1:100::10: a /48 and a /56 inside it (a subtree grows two levels deeper
///   and shrinks back);
/// - 3fff::10: a /20 and a /24 inside it with another rule (a root chunk's codes
///   change rule);
/// - 2001:db8:2:1:2::10 and 2001:db8:2:1:3::10: a /48 that stays, and a /80 inside it
///   that comes and goes (its /64 goes from the /48's code to the trie and back);
/// - 2001:db8:3:4::10: a /62 and the same addresses as four /64s.
#[test]
fn sync_never_drops_an_ipv6_source_allowed_before_and_after() {
    if !require_root() {
        return;
    }
    let wide = set(&[
        ("2001:db8:1::/48", 1),
        ("3fff::/20", 1),
        ("2001:db8:2::/48", 5),
        ("2001:db8:3:4::/62", 7),
    ]);
    let narrow = set(&[
        ("2001:db8:1:100::/56", 2),
        ("3fff::/24", 3),
        ("2001:db8:2::/48", 5),
        ("2001:db8:2:1:2::/80", 6),
        ("2001:db8:3:4::/64", 7),
        ("2001:db8:3:5::/64", 7),
        ("2001:db8:3:6::/64", 7),
        ("2001:db8:3:7::/64", 7),
    ]);
    assert_no_drops_while_flipping(
        &wide,
        &narrow,
        &[
            "2001:db8:1:100::10",
            "3fff::10",
            "2001:db8:2:1:2::10",
            "2001:db8:2:1:3::10",
            "2001:db8:3:4::10",
        ],
    );
}

/// Judges a SYN to 443 from each of `probes` through BPF_PROG_TEST_RUN and compares
/// the action, and for a sample the rule whose hit counter moved, with a longest
/// match over `set` computed here; panics listing the sources judged wrongly.
fn assert_judged_as_longest_match(
    prog: &Xdp,
    maps: &Maps,
    set: &BTreeMap<IpNet, u32>,
    probes: &[std::net::IpAddr],
    stage: &str,
) {
    use std::net::IpAddr;
    let longest = |addr: IpAddr| -> Option<u32> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (0..=max).rev().find_map(|len| {
            let net = IpNet::new(addr, len).unwrap().trunc();
            set.get(&net).copied()
        })
    };
    let mut wrong = Vec::new();
    let rules = HIT_SLOTS + 3;
    for (i, addr) in probes.iter().enumerate() {
        let want = longest(*addr);
        // Hit counters for a sample (reading them costs a syscall per rule).
        let sample = i % 16 == 0;
        let before = if sample {
            maps.hits(rules).unwrap()
        } else {
            Vec::new()
        };
        let frame = match addr {
            IpAddr::V4(a) => syn4(*a, 443),
            IpAddr::V6(a) => syn6(*a, 443),
        };
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        let action = prog.test_run(opts).unwrap().return_value;
        let expected = if want.is_some() { PASS } else { DROP };
        if action != expected {
            wrong.push(format!("{addr}: action {action}, expected {expected}"));
        } else if let (true, Some(rule)) = (sample, want) {
            let after = maps.hits(rules).unwrap();
            let moved: Vec<usize> = (0..rules).filter(|r| after[*r] != before[*r]).collect();
            if moved != [rule as usize] {
                wrong.push(format!("{addr}: hits moved {moved:?}, expected [{rule}]"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{stage}: {} of the {} sources judged wrongly:\n  {}",
        wrong.len(),
        probes.len(),
        wrong
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// A deterministic xorshift, so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `first`, with a tenth of its prefixes removed, a tenth moved to another rule, and
/// `extra` added.
fn changed(first: &BTreeMap<IpNet, u32>, extra: BTreeMap<IpNet, u32>) -> BTreeMap<IpNet, u32> {
    let mut second = first.clone();
    for (i, net) in first.keys().enumerate() {
        match i % 10 {
            0 => {
                second.remove(net);
            }
            1 => {
                *second.get_mut(net).unwrap() += 1;
            }
            _ => {}
        }
    }
    second.extend(extra);
    second
}

/// The first and last address of each prefix of `set` and their neighbours.
fn edges(set: &BTreeMap<IpNet, u32>) -> Vec<std::net::IpAddr> {
    use std::net::IpAddr;
    let mut out = Vec::new();
    for net in set.keys() {
        match net {
            IpNet::V4(n) => {
                let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                out.extend(
                    [lo.wrapping_sub(1), lo, hi, hi.wrapping_add(1)]
                        .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
                );
            }
            IpNet::V6(n) => {
                let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                out.extend(
                    [lo.wrapping_sub(1), lo, hi, hi.wrapping_add(1)]
                        .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
                );
            }
        }
    }
    out
}

/// The fast table answers exactly what the trie answers, rule included: after a full
/// load, after a diff, and after a rebuild that repairs a table that disagrees with
/// the trie (what a restarted agent does with pinned maps). Thousands of sources,
/// most of them at prefix boundaries, each judged through BPF_PROG_TEST_RUN and
/// compared with a longest match computed here.
#[test]
fn fast_table_agrees_with_the_trie() {
    if !require_root() {
        return;
    }
    use ipnet::Ipv4Net;
    use std::net::IpAddr;

    /// An address in 198.16.0.0/12.
    fn addr(rng: &mut Rng) -> u32 {
        0xC610_0000 | (rng.next() as u32 & 0x000F_FFFF)
    }
    /// Prefixes of every length from /12 to /32 inside 198.16.0.0/12, nested and
    /// overlapping, a few with a rule id beyond a chunk's byte codes.
    fn random_set(rng: &mut Rng, n: usize) -> BTreeMap<IpNet, u32> {
        let mut set = BTreeMap::new();
        while set.len() < n {
            let len = 12 + (rng.next() % 21) as u8;
            let net = Ipv4Net::new(Ipv4Addr::from(addr(rng)), len)
                .unwrap()
                .trunc();
            let rule = if rng.next().is_multiple_of(50) {
                allowlist_common::fast::v4::MAX_BYTE_RULE + 1 + (rng.next() % 3) as u32
            } else {
                (rng.next() % 6) as u32
            };
            set.insert(IpNet::V4(net), rule);
        }
        set
    }
    let probes = |rng: &mut Rng, set: &BTreeMap<IpNet, u32>| -> Vec<IpAddr> {
        let mut out = edges(set);
        out.extend((0..4000).map(|_| IpAddr::V4(Ipv4Addr::from(addr(rng)))));
        out
    };

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let first = random_set(&mut rng, 3000);
    let second = changed(&first, random_set(&mut rng, 300));

    let (ebpf, mut maps) = loaded_with(&first);
    let prog = xdp(&ebpf);
    let p = probes(&mut rng, &first);
    assert_judged_as_longest_match(prog, &maps, &first, &p, "after the full load");
    apply_change(&mut maps, &first, &second).unwrap();
    let p = probes(&mut rng, &second);
    assert_judged_as_longest_match(prog, &maps, &second, &p, "after a diff");
    // A table that disagrees with the trie (everything denied), repaired by the
    // rebuild a restarted agent's first sync does.
    maps.rebuild_fast(&BTreeMap::new()).unwrap();
    resync(&mut maps, &second).unwrap();
    let p = probes(&mut rng, &second);
    assert_judged_as_longest_match(prog, &maps, &second, &p, "after a rebuild");
}

/// The program's walk of the IPv6 table gives the table's own answers: with the
/// trie emptied behind the table's back, every source whose /64 holds no prefix longer
/// than /64 is still judged as the longest match (one the table said `DEEPER` for
/// would now be dropped). Sparse prefixes as the benchmark's (compressed paths) and
/// nested ones under a few /16s.
#[test]
fn fast_v6_table_answers_without_the_trie() {
    if !require_root() {
        return;
    }
    use allowlist_common::{Rule, maps as names};
    use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
    use std::net::IpAddr;

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut list = BTreeMap::new();
    while list.len() < 10_000 {
        let len = 32 + (rng.next() % 33) as u8;
        let a = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | 1 << 125;
        let net = ipnet::Ipv6Net::new(Ipv6Addr::from(a), len).unwrap().trunc();
        list.insert(IpNet::V6(net), (rng.next() % 6) as u32);
    }
    // Nested: a /32 with a /40, a /48 and a /56 inside, and /64s beside them.
    for (i, (net, len)) in [
        ("2001:db8::", 32),
        ("2001:db8:100::", 40),
        ("2001:db8:1ab::", 48),
        ("2001:db8:1ab:cd00::", 56),
        ("2001:db8:1ab:cd12::", 64),
        ("2001:db8:1ab:ce12::", 64),
        ("2001:db8:4400:1::", 64),
        ("2001:db8:1ab:cd13:1::", 80),
    ]
    .into_iter()
    .enumerate()
    {
        let net = ipnet::Ipv6Net::new(a6(net), len).unwrap();
        list.insert(IpNet::V6(net), i as u32);
    }

    let (ebpf, maps) = loaded_with(&list);
    let prog = xdp(&ebpf);

    // This program's trie, emptied.
    let ids = prog.info().unwrap().map_ids().unwrap().expect("map ids");
    let trie = ids
        .into_iter()
        .map(|id| MapData::from_id(id).unwrap())
        .find(|m| m.info().unwrap().name_as_str() == Some(names::ALLOW_V6))
        .expect("the program's ALLOW_V6");
    let mut trie: LpmTrie<MapData, [u8; 16], Rule> =
        LpmTrie::try_from(Map::from_map_data(trie).unwrap()).unwrap();
    for net in list.keys() {
        if let IpNet::V6(n) = net {
            trie.remove(&Key::new(u32::from(n.prefix_len()), n.network().octets()))
                .unwrap();
        }
    }

    let longer_than_64 = |a: u128| {
        list.keys().any(|n| {
            n.prefix_len() > 64
                && matches!(n, IpNet::V6(n) if u128::from(n.network()) >> 64 == a >> 64)
        })
    };
    let mut probes = edges(&list);
    probes.extend((0..4000).map(|_| {
        let a = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | 1 << 125;
        IpAddr::V6(Ipv6Addr::from(a))
    }));
    let (answered, tries): (Vec<IpAddr>, Vec<IpAddr>) = probes
        .into_iter()
        .partition(|a| matches!(a, IpAddr::V6(v) if !longer_than_64(u128::from(*v))));
    assert!(tries.len() >= 4, "the /80's /64 is the trie's");
    assert_judged_as_longest_match(prog, &maps, &list, &answered, "with the trie emptied");
}

/// The same for the IPv6 table: prefixes of every length from /20 to /80 under a few
/// /16s (nested, at and between the strides, longer than the table's /64), after a
/// full load, a diff and a rebuild; then with a list that needs more chunks than the
/// pool holds, where what the table cannot hold is left to the trie.
#[test]
fn fast_v6_table_agrees_with_the_trie() {
    if !require_root() {
        return;
    }
    use allowlist_common::fast;
    use ipnet::Ipv6Net;
    use std::net::IpAddr;

    /// An address under one of four /16s, with few distinct values in the bits from
    /// /16 to /72 so that prefixes nest and addresses meet them.
    fn addr(rng: &mut Rng) -> u128 {
        let top = [0x2001u128, 0x2400, 0x2a00, 0x3fff][(rng.next() % 4) as usize] << 112;
        let mut mid = 0u128;
        for byte in 0..7 {
            mid |= u128::from((rng.next() % 3) as u8) << (104 - 8 * byte);
        }
        top | mid | u128::from(rng.next())
    }
    fn random_set(rng: &mut Rng, n: usize) -> BTreeMap<IpNet, u32> {
        let mut set = BTreeMap::new();
        while set.len() < n {
            let len = 20 + (rng.next() % 61) as u8;
            let net = Ipv6Net::new(Ipv6Addr::from(addr(rng)), len)
                .unwrap()
                .trunc();
            set.insert(IpNet::V6(net), (rng.next() % 6) as u32);
        }
        set
    }
    let probes = |rng: &mut Rng, set: &BTreeMap<IpNet, u32>| -> Vec<IpAddr> {
        let mut out = edges(set);
        out.extend((0..4000).map(|_| IpAddr::V6(Ipv6Addr::from(addr(rng)))));
        out
    };

    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let first = random_set(&mut rng, 2000);
    let second = changed(&first, random_set(&mut rng, 300));

    let (ebpf, mut maps) = loaded_with(&first);
    let prog = xdp(&ebpf);
    let p = probes(&mut rng, &first);
    assert_judged_as_longest_match(prog, &maps, &first, &p, "after the full load");
    apply_change(&mut maps, &first, &second).unwrap();
    let p = probes(&mut rng, &second);
    assert_judged_as_longest_match(prog, &maps, &second, &p, "after a diff");
    maps.rebuild_fast(&BTreeMap::new()).unwrap();
    resync(&mut maps, &second).unwrap();
    let p = probes(&mut rng, &second);
    assert_judged_as_longest_match(prog, &maps, &second, &p, "after a rebuild");

    // /64s at random in 2000::/3, each in a /56 of its own, so a chunk each at least:
    // more than the pool holds.
    let mut full = second.clone();
    let wanted = fast::v6::CHUNKS;
    while full.len() < second.len() + wanted {
        let a = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | 1 << 125;
        let net = Ipv6Net::new(Ipv6Addr::from(a), 64).unwrap().trunc();
        full.insert(IpNet::V6(net), (rng.next() % 6) as u32);
    }
    let report = apply_change(&mut maps, &second, &full).unwrap();
    assert!(
        report.fast.left_to_trie > 0,
        "the pool held {} /64s: {:?}",
        wanted,
        report.fast
    );
    let mut p = probes(&mut rng, &second);
    // And a sample of the /64s, some of which the table holds and some it cannot.
    p.extend(
        full.keys()
            .filter(|n| n.prefix_len() == 64)
            .step_by(20)
            .map(|n| {
                IpAddr::V6(Ipv6Addr::from(
                    u128::from_be_bytes(match n.addr() {
                        IpAddr::V6(a) => a.octets(),
                        IpAddr::V4(_) => unreachable!(),
                    }) | 0x42,
                ))
            }),
    );
    assert_judged_as_longest_match(prog, &maps, &full, &p, "with a full pool");
}

/// The program is one function on its hot path: LLVM decides what to inline, and when
/// the program grew it once made the packet's whole judgement a function of its own,
/// called for every packet, that zeroed the denied source with a call to `memset`.
/// Only the watch's recording (`watch::record`, `watch::refill`, off the hot path on
/// purpose) may be functions of their own, beside the compiler's `mem*` builtins.
#[test]
fn the_program_judges_a_packet_without_calling_a_function() {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

    let elf = object::File::parse(program_object().expect("the embedded program"))
        .expect("the program is an ELF object");
    let mut entry = None;
    let mut others = Vec::new();
    for symbol in elf.symbols().filter(|s| s.kind() == SymbolKind::Text) {
        let section = symbol
            .section_index()
            .and_then(|i| elf.section_by_index(i).ok())
            .and_then(|s| s.name().ok().map(str::to_owned))
            .unwrap_or_default();
        let name = symbol.name().unwrap_or_default().to_owned();
        if name == allowlist_common::PROGRAM_NAME {
            entry = Some(symbol.size());
        } else if section == ".text"
            && !["memset", "memcpy", "memmove", "memcmp", "bcmp"].contains(&name.as_str())
        {
            others.push(name);
        }
    }
    let entry = entry.expect("the program's entry function");
    // The judgement inlined is thousands of instructions; a call to it, two.
    assert!(
        entry > 1_000 * 8,
        "the entry function is {entry} bytes: its body is not inlined"
    );
    let stray: Vec<&String> = others
        .iter()
        .filter(|n| !(n.contains("5watch6record") || n.contains("5watch6refill")))
        .collect();
    assert!(stray.is_empty(), "functions beside the entry: {stray:?}");
}
