//! Types shared by the XDP program and the agent.
//!
//! Everything here is `#[repr(C)]` without padding, so that the kernel, the program and
//! the agent agree on the bytes, and `bpftool map dump` can print the fields from BTF.
#![cfg_attr(not(test), no_std)]

/// Map names. They are also the file names of the pins under the agent's `pin_dir`.
pub mod maps {
    pub const ALLOW_V4: &str = "ALLOW_V4";
    pub const ALLOW_V6: &str = "ALLOW_V6";
    pub const PORTS: &str = "PORTS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const HITS: &str = "HITS";
    pub const FRAGS_V4: &str = "FRAGS_V4";
    pub const FRAGS_V6: &str = "FRAGS_V6";
    pub const FAST_V4: &str = "FAST_V4";
    pub const FAST_V4_GROUPS: &str = "FAST_V4_GROUPS";
    /// Every map the program owns, in the order the agent pins them.
    pub const ALL: [&str; 10] = [
        ALLOW_V4,
        ALLOW_V6,
        PORTS,
        SETTINGS,
        COUNTERS,
        HITS,
        FRAGS_V4,
        FRAGS_V6,
        FAST_V4,
        FAST_V4_GROUPS,
    ];
}

/// The XDP program's name in the object file (what `bpftool prog show` prints).
pub const PROGRAM_NAME: &str = "allowlist";

/// Capacity of each allowlist trie.
pub const MAX_PREFIXES_V4: usize = 262_144;
pub const MAX_PREFIXES_V6: usize = 65_536;
/// Number of distinct rule ids (one per provider) that carry a hit counter.
pub const MAX_RULES: usize = 1024;
/// Entries in each fragment-tracking LRU map.
pub const MAX_TRACKED_FRAGMENTS: usize = 16_384;
/// The protected-port set is an array indexed by port number.
pub const PORT_SLOTS: usize = 65_536;
/// How many VLAN tags (802.1Q / 802.1ad) the parser walks before it gives up.
pub const MAX_VLAN_TAGS: usize = 2;
/// How many IPv6 extension headers the parser walks before it gives up (fails closed).
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

/// Value stored with every allowlisted prefix (the tries' keys are aya's
/// `lpm_trie::Key<[u8; 4]>` and `Key<[u8; 16]>`: prefix length, then the address in
/// network byte order): which rule (provider) put it there.
/// `rule` indexes the `HITS` counter array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rule {
    pub rule: u32,
}

/// The IPv4 fast table: the tries' answer for every IPv4 source, precomputed by the
/// agent so that the program finds it in one or two array-speed lookups instead of
/// walking the trie (DIR-24-8, as in DPDK's `rte_lpm`).
///
/// - `FAST_V4` holds one code per /24 ("block", the top 24 bits of the address): 2^24
///   one-byte codes, packed [`CODES_PER_SLOT`] to an array element (the kernel rounds
///   array elements up to 8 bytes), 16 MiB, `BPF_F_MMAPABLE` so that the agent
///   writes it through a memory mapping rather than one syscall per code.
/// - `FAST_V4_GROUPS` holds, for a /24 that prefixes longer than /24 split, one code
///   per address of the block, keyed by the block number (a hash map without
///   preallocation: memory only for the blocks that need it).
///
/// The tries stay the authoritative set: a code only repeats what the longest match
/// in `ALLOW_V4` answers, and [`DEEPER`] (the value of a zeroed table) sends the
/// program to the trie, so a table that was never written is slow but never wrong.
pub mod fast {
    /// A /24's code says "ask the trie" (the table was never written there, or the
    /// longest match's rule id has no code).
    pub const DEEPER: u8 = 0;
    /// No prefix covers the address (the /24, or the address inside a group).
    pub const DENY: u8 = 1;
    /// The /24 is split by longer prefixes: its addresses' codes are in the group map.
    /// Never found inside a group.
    pub const GROUP: u8 = 255;
    /// Codes `2..=254` allow, for rule id `code - 2`.
    const FIRST_RULE: u8 = 2;
    /// The largest rule id a code can carry; the addresses of a rule above it are
    /// answered by the trie.
    pub const MAX_RULE: u32 = (GROUP - 1 - FIRST_RULE) as u32;

    /// Number of /24 blocks.
    pub const BLOCKS: usize = 1 << 24;
    /// Codes per element of the `FAST_V4` array.
    pub const CODES_PER_SLOT: usize = 8;
    /// Elements of the `FAST_V4` array.
    pub const SLOTS: usize = BLOCKS / CODES_PER_SLOT;
    /// An element of `FAST_V4`: the codes of `CODES_PER_SLOT` consecutive blocks.
    pub type Slot = [u8; CODES_PER_SLOT];
    /// A value of `FAST_V4_GROUPS`: one code per address of the block, by last octet.
    pub type Group = [u8; 256];
    /// Capacity of the group map: every prefix longer than /24 could split a block of
    /// its own (during a sync the tries hold the union of two sets, which the
    /// capacity check bounds by `MAX_PREFIXES_V4`).
    pub const MAX_GROUPS: usize = super::MAX_PREFIXES_V4;
    /// `BPF_F_MMAPABLE`.
    pub const MMAPABLE: usize = 1 << 10;
    /// `BPF_F_NO_PREALLOC`.
    pub const NO_PREALLOC: usize = 1;

    /// The code that allows the addresses of `rule`.
    pub const fn allow(rule: u32) -> u8 {
        if rule <= MAX_RULE {
            rule as u8 + FIRST_RULE
        } else {
            DEEPER
        }
    }

    /// The rule id an allowing code carries; `None` for `DEEPER`, `DENY`, `GROUP`.
    pub const fn rule(code: u8) -> Option<u32> {
        if code >= FIRST_RULE && code < GROUP {
            Some((code - FIRST_RULE) as u32)
        } else {
            None
        }
    }

    /// The block (top 24 bits) of an address given as its 32-bit value.
    pub const fn block(addr: u32) -> u32 {
        addr >> 8
    }
}

/// Run-time settings, one entry in the `SETTINGS` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// Non-zero: monitor mode, nothing is dropped and would-drops are counted.
    pub monitor: u32,
    /// Changed by the agent each time it rewrites the settings; for inspection only.
    pub generation: u32,
}

/// Value of the `PORTS` array: non-zero when the port is protected.
pub type PortFlag = u32;

/// Key of the IPv4 fragment-tracking map: the fields the kernel reassembles by.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragKeyV4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Key of the IPv6 fragment-tracking map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragKeyV6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
}

/// Value of the fragment maps: the datagram's first fragment was let through for a
/// reason other than its source (unprotected port, not TCP), so its later fragments
/// may follow it. Holds the first fragment's destination port, for inspection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragVerdict {
    pub dst_port: u32,
}

/// Why the program let a packet through or dropped it. Every exit of the program
/// counts exactly one reason. In monitor mode a drop reason is counted in its
/// would-drop slot (see [`counter::would_drop`]) and the packet passes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// TCP to a protected port from an allowlisted source.
    Allowlisted = 0,
    /// TCP to a port that is not protected.
    UnprotectedPort = 1,
    /// IP traffic that is not TCP (UDP, ICMP, ...).
    NotTcp = 2,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp = 3,
    /// A non-first fragment whose datagram was already let through.
    FragmentOfPassed = 4,
    /// TCP to a protected port from a source that is not allowlisted.
    NotAllowlisted = 5,
    /// Could be TCP to a protected port but cannot be parsed (truncated, bad lengths).
    Malformed = 6,
    /// A non-first fragment that cannot be tied to a datagram that was let through.
    FragmentUnknown = 7,
    /// More IPv6 extension headers than the parser walks.
    ExtHeaderLimit = 8,
    /// Tunnelled or encrypted payload (IP-in-IP, IPv6-in-IPv4, GRE, ESP) whose inner
    /// packet the program cannot judge, from a source that is not allowlisted.
    Tunnel = 9,
}

impl Reason {
    pub const COUNT: u32 = 10;
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::Allowlisted,
        Reason::UnprotectedPort,
        Reason::NotTcp,
        Reason::NotIp,
        Reason::FragmentOfPassed,
        Reason::NotAllowlisted,
        Reason::Malformed,
        Reason::FragmentUnknown,
        Reason::ExtHeaderLimit,
        Reason::Tunnel,
    ];

    /// Whether this reason drops the packet (in enforce mode).
    pub const fn drops(self) -> bool {
        (self as u32) >= Reason::NotAllowlisted as u32
    }

    /// A stable snake_case name, used in metrics labels and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Allowlisted => "allowlisted",
            Reason::UnprotectedPort => "unprotected_port",
            Reason::NotTcp => "not_tcp",
            Reason::NotIp => "not_ip",
            Reason::FragmentOfPassed => "fragment_of_passed",
            Reason::NotAllowlisted => "not_allowlisted",
            Reason::Malformed => "malformed",
            Reason::FragmentUnknown => "fragment_unknown",
            Reason::ExtHeaderLimit => "ext_header_limit",
            Reason::Tunnel => "tunnel",
        }
    }
}

/// Layout of the per-CPU `COUNTERS` array.
pub mod counter {
    use super::Reason;

    /// Slot counting packets that left the program for `reason`.
    pub const fn exit(reason: Reason) -> u32 {
        reason as u32
    }

    /// Slot counting packets that monitor mode let through although `reason` drops them.
    pub const fn would_drop(reason: Reason) -> u32 {
        Reason::COUNT + reason as u32
    }

    /// Observations, counted in addition to the exit (not exits themselves).
    pub const VLAN_TAGGED: u32 = 2 * Reason::COUNT;
    pub const FRAGMENT: u32 = VLAN_TAGGED + 1;
    pub const IPV4_OPTIONS: u32 = VLAN_TAGGED + 2;
    pub const IPV6_EXT_HEADERS: u32 = VLAN_TAGGED + 3;
    pub const OBSERVATIONS: [(u32, &str); 4] = [
        (VLAN_TAGGED, "vlan_tagged"),
        (FRAGMENT, "fragment"),
        (IPV4_OPTIONS, "ipv4_options"),
        (IPV6_EXT_HEADERS, "ipv6_ext_headers"),
    ];

    /// Size of the array.
    pub const SLOTS: u32 = IPV6_EXT_HEADERS + 1;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)] plain integers and byte arrays without padding.
    unsafe impl aya::Pod for Rule {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for FragKeyV4 {}
    unsafe impl aya::Pod for FragKeyV6 {}
    unsafe impl aya::Pod for FragVerdict {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_dense_and_ordered() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        assert!(!Reason::FragmentOfPassed.drops());
        assert!(Reason::NotAllowlisted.drops());
        assert!(Reason::Tunnel.drops());
    }

    #[test]
    fn fast_codes_round_trip() {
        assert_eq!(fast::rule(fast::allow(0)), Some(0));
        assert_eq!(
            fast::rule(fast::allow(fast::MAX_RULE)),
            Some(fast::MAX_RULE)
        );
        assert_eq!(fast::allow(fast::MAX_RULE + 1), fast::DEEPER);
        for code in [fast::DEEPER, fast::DENY, fast::GROUP] {
            assert_eq!(fast::rule(code), None);
        }
        assert_eq!(fast::allow(fast::MAX_RULE), fast::GROUP - 1);
        assert_eq!(fast::SLOTS * fast::CODES_PER_SLOT, 1 << 24);
    }

    #[test]
    fn no_padding_in_map_types() {
        use core::mem::size_of;
        assert_eq!(size_of::<FragKeyV4>(), 12);
        assert_eq!(size_of::<FragKeyV6>(), 36);
        assert_eq!(size_of::<Settings>(), 8);
    }
}
