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
    pub const FAST_V4_CHUNKS: &str = "FAST_V4_CHUNKS";
    pub const FAST_V6: &str = "FAST_V6";
    /// Every map the program owns, in the order the agent pins them.
    pub const ALL: [&str; 11] = [
        ALLOW_V4,
        ALLOW_V6,
        PORTS,
        SETTINGS,
        COUNTERS,
        HITS,
        FRAGS_V4,
        FRAGS_V6,
        FAST_V4,
        FAST_V4_CHUNKS,
        FAST_V6,
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

/// The fast tables: the tries' answer for every source, precomputed by the agent so
/// that the program finds it in a few inlined array reads instead of walking a trie
/// (multibit tables with leaf pushing: DIR-24-8 for IPv4, as in DPDK's `rte_lpm`).
///
/// A code is a `u16`:
/// - [`DEEPER`]: ask the trie (the table was never written there, the longest match's
///   rule id has no code, a prefix is longer than the table resolves, or the chunk pool
///   was full);
/// - [`DENY`]: no prefix covers the address;
/// - [`allow`]`(rule)`: the longest match is `rule`'s;
/// - [`descend`]`(chunk)` (codes from [`FIRST_CHUNK`] up): the answer depends on the
///   next 8 bits of the address; they index the 256 codes of chunk `chunk`.
///
/// The tries stay the authoritative set: a code only repeats what the longest match
/// answers, and `DEEPER` (the value of a zeroed table) sends the program to the trie,
/// so a table that was never written is slow but never wrong.
pub mod fast {
    /// Ask the trie.
    pub const DEEPER: u16 = 0;
    /// No prefix covers the address.
    pub const DENY: u16 = 1;
    /// Codes `FIRST_RULE..FIRST_CHUNK` allow, for rule id `code - FIRST_RULE`.
    const FIRST_RULE: u16 = 2;
    /// The largest rule id a code can carry (every rule id the `HITS` array counts).
    pub const MAX_RULE: u32 = super::MAX_RULES as u32 - 1;
    /// The first code that points at a chunk.
    pub const FIRST_CHUNK: u16 = FIRST_RULE + super::MAX_RULES as u16;
    /// How many chunks a code can point at.
    pub const MAX_CHUNKS: usize = (u16::MAX - FIRST_CHUNK) as usize + 1;

    /// The code that allows the addresses of `rule`.
    pub const fn allow(rule: u32) -> u16 {
        if rule <= MAX_RULE {
            rule as u16 + FIRST_RULE
        } else {
            DEEPER
        }
    }

    /// The rule id an allowing code carries; `None` for every other code.
    pub const fn rule(code: u16) -> Option<u32> {
        if code >= FIRST_RULE && code < FIRST_CHUNK {
            Some((code - FIRST_RULE) as u32)
        } else {
            None
        }
    }

    /// The code that sends the lookup into chunk `index` (`index < MAX_CHUNKS`).
    pub const fn descend(index: u32) -> u16 {
        FIRST_CHUNK + index as u16
    }

    /// The chunk a code points at; `None` for a final answer.
    pub const fn chunk(code: u16) -> Option<u32> {
        // In 32 bits: one subtraction in the program, no 16-bit wrap to mask.
        if code >= FIRST_CHUNK {
            Some(code as u32 - FIRST_CHUNK as u32)
        } else {
            None
        }
    }

    /// `BPF_F_MMAPABLE`.
    pub const MMAPABLE: usize = 1 << 10;

    /// IPv4: `FAST_V4` holds one code per /24 ("block", the top 24 bits of the address):
    /// 2^24 two-byte codes, packed [`v4::CODES_PER_SLOT`] to an array element (the
    /// kernel rounds array elements up to 8 bytes), 32 MiB. A /24 that longer prefixes
    /// split points at a chunk of `FAST_V4_CHUNKS`: one byte code per address of the
    /// block, by last octet. Byte codes are the codes below 255 (`DEEPER`, `DENY`,
    /// `allow` for rule ids up to [`v4::MAX_BYTE_RULE`]); a rule above that is
    /// answered by the trie. Both maps are `BPF_F_MMAPABLE` arrays.
    pub mod v4 {
        /// Number of /24 blocks.
        pub const BLOCKS: usize = 1 << 24;
        /// Codes per element of the `FAST_V4` array.
        pub const CODES_PER_SLOT: usize = 4;
        /// Elements of the `FAST_V4` array.
        pub const SLOTS: usize = BLOCKS / CODES_PER_SLOT;
        /// An element of `FAST_V4`: the codes of `CODES_PER_SLOT` consecutive blocks.
        pub type Slot = [u16; CODES_PER_SLOT];
        /// An element of `FAST_V4_CHUNKS`: a split block's byte codes, by last octet.
        pub type Chunk = [u8; 256];
        /// Chunks in the pool: every split /24 a code can point at (100,000 random
        /// prefixes of /16 to /32 split about 46,000).
        pub const CHUNKS: usize = super::MAX_CHUNKS;
        /// The largest rule id a byte code carries.
        pub const MAX_BYTE_RULE: u32 = u8::MAX as u32 - 1 - super::FIRST_RULE as u32;

        /// The byte code for a code that is a final answer (`DEEPER` for a rule id
        /// above [`MAX_BYTE_RULE`]).
        pub const fn byte(code: u16) -> u8 {
            if code < u8::MAX as u16 {
                code as u8
            } else {
                super::DEEPER as u8
            }
        }

        /// The block (top 24 bits) of an address given as its 32-bit value.
        pub const fn block(addr: u32) -> u32 {
            addr >> 8
        }
    }

    /// IPv6: `FAST_V6` is a pool of chunks of 256 codes. Chunks `0..ROOT_CHUNKS` are
    /// the root, indexed by the address's first byte, then its second: one code per
    /// /16. Each further chunk resolves the next 8 bits, down to /64
    /// ([`v6::LEVELS`] reads at most); a prefix longer than /64 makes its /64 `DEEPER`.
    pub mod v6 {
        /// An element of `FAST_V6`.
        pub type Chunk = [u16; 256];
        /// The root's chunks.
        pub const ROOT_CHUNKS: usize = 256;
        /// Chunks in the pool, the root's included: 24 MiB (10,000 random prefixes of
        /// /32 to /64 take about 40,000).
        pub const CHUNKS: usize = 49_152;
        /// The longest prefix the table resolves.
        pub const MAX_LEN: u8 = 64;
        /// Chunk reads for a /64: the root, then one per byte from the third to the
        /// eighth.
        pub const LEVELS: usize = 7;

        /// The pool index of the chunk a `descend` code names (chunk numbers count
        /// from the first chunk after the root).
        pub const fn pool_index(chunk: u32) -> u32 {
            chunk + ROOT_CHUNKS as u32
        }

        /// The pool index of the chunk a code points at, for a code known to point at
        /// one (`chunk(code).is_some()`): one subtraction per level in the program.
        pub const fn pool_index_of(code: u16) -> u32 {
            code as u32 - (super::FIRST_CHUNK as u32 - ROOT_CHUNKS as u32)
        }
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
        for code in [fast::DEEPER, fast::DENY, fast::descend(0)] {
            assert_eq!(fast::rule(code), None);
        }
        assert_eq!(fast::allow(fast::MAX_RULE) + 1, fast::FIRST_CHUNK);
        let last = fast::MAX_CHUNKS as u32 - 1;
        assert_eq!(fast::chunk(fast::descend(last)), Some(last));
        assert_eq!(
            fast::v6::pool_index_of(fast::descend(7)),
            fast::v6::pool_index(7)
        );
        assert_eq!(fast::descend(last), u16::MAX);
        assert_eq!(fast::chunk(fast::allow(7)), None);
        assert_eq!(fast::v4::SLOTS * fast::v4::CODES_PER_SLOT, 1 << 24);
        assert_eq!(fast::v4::byte(fast::DENY), 1);
        assert_eq!(fast::v4::byte(fast::allow(fast::v4::MAX_BYTE_RULE)), 254);
        assert_eq!(
            fast::v4::byte(fast::allow(fast::v4::MAX_BYTE_RULE + 1)),
            fast::DEEPER as u8
        );
        const { assert!(fast::v6::CHUNKS - fast::v6::ROOT_CHUNKS <= fast::MAX_CHUNKS) };
    }

    #[test]
    fn no_padding_in_map_types() {
        use core::mem::size_of;
        assert_eq!(size_of::<FragKeyV4>(), 12);
        assert_eq!(size_of::<FragKeyV6>(), 36);
        assert_eq!(size_of::<Settings>(), 8);
    }
}
