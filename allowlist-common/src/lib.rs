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
    pub const DENIED_SOURCES: &str = "DENIED_SOURCES";
    pub const WATCH_SETTINGS: &str = "WATCH_SETTINGS";
    pub const WATCH_STATE: &str = "WATCH_STATE";
    /// The maps of the denied-source watch (see [`super::watch`]). A filter pinned by a
    /// build before the watch lacks them: the next agent creates and pins them.
    pub const WATCH: [&str; 3] = [DENIED_SOURCES, WATCH_SETTINGS, WATCH_STATE];
    /// The maps whose content the agent derives (from the tries, its configuration,
    /// or the traffic of the last moments) and rewrites after every load: a pin of one
    /// of them left by another build with another layout is replaced, not refused.
    pub const DERIVED: [&str; 8] = [
        FAST_V4,
        FAST_V4_CHUNKS,
        FAST_V6,
        FRAGS_V4,
        FRAGS_V6,
        DENIED_SOURCES,
        WATCH_SETTINGS,
        WATCH_STATE,
    ];
    /// Maps that earlier builds pinned and this one no longer has.
    pub const RETIRED: [&str; 1] = ["FAST_V4_GROUPS"];
    /// Every map the program owns, in the order the agent pins them.
    pub const ALL: [&str; 14] = [
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
        DENIED_SOURCES,
        WATCH_SETTINGS,
        WATCH_STATE,
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

    /// IPv6: `FAST_V6` is a pool of [`v6::Chunk`]s of 256 codes. Chunks
    /// `0..ROOT_CHUNKS` are the root, indexed by the address's first byte, then its
    /// second: one code per /16 (their headers are unused). Every further chunk
    /// resolves 8 bits of a region (a prefix of the address's top 64 bits, /16 to /56)
    /// that its header names. The table is path-compressed: a chunk sits directly
    /// below the nearest shorter region that branches, however many bytes lie between,
    /// and an address that reaches it outside its region gets its `default` (what the
    /// skipped levels would have said). A pointer says whether it skips levels
    /// ([`v6::compressed`]) or not ([`v6::direct`]): the program reads a compressed
    /// pointer's chunk header and one code, a direct pointer's code alone. So a lookup
    /// is the root read, then one code per chunk (and a header per compressed one),
    /// [`v6::LEVELS`] chunks at most; a prefix longer than /64 makes its /64 `DEEPER`.
    pub mod v6 {
        /// An element of `FAST_V6`: a region's header, then its codes. The header
        /// comes first so that its fields share the chunk's first cache line.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct Chunk {
            /// The region: `net` (its top 64 bits, zero past its length) and `mask`
            /// (its length's mask). An address `hi` (top 64 bits) is in the region
            /// when `hi & mask == net`.
            pub net: u64,
            pub mask: u64,
            /// `56 - length`: the code for `hi` in the region is
            /// `codes[(hi >> shift) & 0xFF]`.
            pub shift: u32,
            /// The code for an address that reaches the chunk outside its region.
            pub default: u16,
            pub _pad: u16,
            pub codes: [u16; 256],
        }
        /// Bytes of the header before the codes.
        pub const HEADER: usize = 24;
        const _: () = assert!(core::mem::offset_of!(Chunk, codes) == HEADER);
        const _: () = assert!(core::mem::size_of::<Chunk>() == HEADER + 512);
        /// The root's chunks.
        pub const ROOT_CHUNKS: usize = 256;
        /// Chunks in the pool, the root's included: 16.5 MiB. With path compression
        /// a sparse prefix takes about one chunk: 10,000 random prefixes of /32 to /64
        /// take about 12,900 (40,000 without compression), AWS's 2,200 IPv6 prefixes
        /// 361; what the pool cannot hold is left to the trie. Both kinds of pointer
        /// (see [`direct`]) must name every chunk below the root within the codes.
        pub const CHUNKS: usize = ROOT_CHUNKS + BELOW_ROOT;
        /// Chunks below the root.
        const BELOW_ROOT: usize = 32_000;
        /// The first code of a compressed pointer; direct ones come before.
        pub const FIRST_COMPRESSED: u16 = super::FIRST_CHUNK + BELOW_ROOT as u16;
        const _: () = assert!(2 * BELOW_ROOT <= super::MAX_CHUNKS);
        /// The longest prefix the table resolves.
        pub const MAX_LEN: u8 = 64;
        /// The shortest region a chunk below the root resolves.
        pub const MIN_REGION: u8 = 16;
        /// Chunk reads below the root at most: one per region length from /16 to /56.
        pub const LEVELS: usize = 6;

        /// The mask of a region of `len` bits (`len < 64`) of the top 64.
        pub const fn mask(len: u8) -> u64 {
            !(u64::MAX >> len)
        }

        /// The `shift` of a region of `len` bits (a multiple of 8 up to 56).
        pub const fn shift(len: u8) -> u32 {
            56 - len as u32
        }

        /// The pool index of chunk `chunk` (chunk numbers count from the first chunk
        /// after the root).
        pub const fn pool_index(chunk: u32) -> u32 {
            chunk + ROOT_CHUNKS as u32
        }

        /// A pointer to chunk `chunk` (`chunk < CHUNKS - ROOT_CHUNKS`) whose region is
        /// the pointing slot's own: the program knows its shift (8 less than the
        /// pointing chunk's, 40 below the root) and that the address is in its region,
        /// so it reads the code alone, not the header.
        pub const fn direct(chunk: u32) -> u16 {
            super::FIRST_CHUNK + chunk as u16
        }

        /// A pointer to chunk `chunk` whose region lies deeper than the pointing slot
        /// (path compression): the program reads its header.
        pub const fn compressed(chunk: u32) -> u16 {
            FIRST_COMPRESSED + chunk as u16
        }

        /// The chunk a code points at, and whether the pointer is compressed; `None`
        /// for a final answer (or a code past the pool).
        pub const fn target(code: u16) -> Option<(u32, bool)> {
            if code < super::FIRST_CHUNK {
                None
            } else if code < FIRST_COMPRESSED {
                Some(((code - super::FIRST_CHUNK) as u32, false))
            } else {
                Some(((code - FIRST_COMPRESSED) as u32, true))
            }
        }

        /// The pool index a direct pointer names (`FIRST_CHUNK <= code <
        /// FIRST_COMPRESSED`): one subtraction in the program.
        pub const fn pool_index_of_direct(code: u16) -> u32 {
            code as u32 - (super::FIRST_CHUNK as u32 - ROOT_CHUNKS as u32)
        }

        /// The pool index a compressed pointer names (`code >= FIRST_COMPRESSED`).
        pub const fn pool_index_of_compressed(code: u16) -> u32 {
            code as u32 - (FIRST_COMPRESSED as u32 - ROOT_CHUNKS as u32)
        }

        /// The shift of a chunk directly below the root (a /16 region).
        pub const ROOT_SHIFT: u32 = shift(MIN_REGION);
    }
}

/// The denied-source watch: the program records the sources of packets it drops (or
/// would drop, in monitor mode) for [`Reason::NotAllowlisted`], TCP to a protected
/// port from a source not in the list, in `DENIED_SOURCES`.
///
/// - `DENIED_SOURCES` is an LRU hash with per-CPU values ([`CAPACITY`] entries), keyed
///   by [`Key`]: an IPv4 source as its IPv4-mapped IPv6 address, an IPv6 source as its
///   /64. Each CPU counts its own packets in its own [`DeniedSource`], without atomics;
///   the agent sums them.
/// - Recording is rate-limited per CPU by a token bucket ([`WatchState`] in the per-CPU
///   `WATCH_STATE`), so that a flood of random sources costs the drop path almost
///   nothing and cannot churn the map faster than [`WatchSettings::rate`] entries per
///   second per CPU. The bucket is refilled at most once per kernel tick (the program
///   reads `jiffies`, which the verifier inlines as one load), by the coarse
///   nanoseconds elapsed since the last refill, so the agent states the rate per
///   second without knowing the kernel's HZ. While the denied rate is below the budget
///   every denied packet is recorded; above it, the first packets of each tick are, so
///   a source's chance of being recorded is its share of the denied packets.
/// - A denied packet that is not recorded is counted nowhere else: the not-recorded
///   count is the `NotAllowlisted` counters (drops and would-drops) minus
///   [`WatchState::recorded`] summed over CPUs.
pub mod watch {
    /// Entries in `DENIED_SOURCES`.
    pub const CAPACITY: usize = 16_384;
    /// The bucket's credit is in packet-nanoseconds: recording one packet costs
    /// [`COST`], and each nanosecond adds `rate`.
    pub const COST: u64 = 1_000_000_000;
    /// How much time's worth of records the bucket holds: the largest burst recorded at
    /// once after a quiet spell (at least one packet, whatever the rate). Longer than
    /// a tick at HZ=100, so that a refill per tick never overflows the bucket.
    pub const BURST_NS: u64 = 20_000_000;
    /// The longest interval one refill credits; the bucket is full by then at any rate.
    const MAX_ELAPSED_NS: u64 = 1_000_000_000;

    /// The key of `DENIED_SOURCES`: an IPv6 address, or an IPv4 one mapped into IPv6
    /// (`::ffff:a.b.c.d`), in network byte order. IPv6 sources are kept per /64 (the
    /// low 64 bits are zero): a host picks its interface identifier at will.
    pub type Key = [u8; 16];

    pub const fn key_v4(addr: [u8; 4]) -> Key {
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
        ]
    }

    pub const fn key_v6(addr: [u8; 16]) -> Key {
        [
            addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7], 0, 0, 0, 0, 0,
            0, 0, 0,
        ]
    }

    /// A value of `DENIED_SOURCES`: one CPU's record of a source. A CPU that has not
    /// recorded the source holds zeros (`packets == 0`).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct DeniedSource {
        /// Packets recorded (not every denied packet once the budget is spent).
        pub packets: u64,
        /// `CLOCK_MONOTONIC_COARSE` nanoseconds of the first and the last record.
        pub first_seen_ns: u64,
        pub last_seen_ns: u64,
        /// The destination port of the last record.
        pub port: u16,
        pub _pad: [u8; 6],
    }

    /// The single entry of the `WATCH_SETTINGS` array, written by the agent.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct WatchSettings {
        /// Denied packets recorded per second and per CPU at most; 0 turns the watch
        /// off (a fresh map holds 0: nothing is recorded until the agent says so).
        pub rate: u32,
        /// Changed by the agent each time it rewrites the settings; for inspection only.
        pub generation: u32,
    }

    /// One CPU's bucket, in the per-CPU `WATCH_STATE` array; written by the program.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct WatchState {
        /// `jiffies` at the last refill.
        pub tick: u64,
        /// Packet-nanoseconds available (see [`COST`]).
        pub credit: u64,
        /// `CLOCK_MONOTONIC_COARSE` nanoseconds at the last refill.
        pub refilled_ns: u64,
        /// Packets recorded by this CPU since the map was created.
        pub recorded: u64,
    }

    /// The most credit the bucket holds at `rate` records per second: the records of
    /// [`BURST_NS`], and at least one packet (none when the watch is off).
    pub const fn cap(rate: u32) -> u64 {
        if rate == 0 {
            return 0;
        }
        // No overflow: rate < 2^32, BURST_NS < 2^25.
        let cap = rate as u64 * BURST_NS;
        if cap < COST { COST } else { cap }
    }

    /// The bucket's credit after `elapsed_ns` at `rate` records per second.
    pub const fn refill(credit: u64, rate: u32, elapsed_ns: u64) -> u64 {
        let elapsed = if elapsed_ns < MAX_ELAPSED_NS {
            elapsed_ns
        } else {
            MAX_ELAPSED_NS
        };
        // No overflow: rate < 2^32 and elapsed <= 10^9 < 2^30.
        let credit = credit.saturating_add(rate as u64 * elapsed);
        let cap = cap(rate);
        if credit < cap { credit } else { cap }
    }
}

/// Run-time settings, one entry in the `SETTINGS` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// Non-zero: monitor mode, nothing is dropped and would-drops are counted.
    pub monitor: u32,
    /// The denied-source watch's sampling: a packet denied for `NotAllowlisted` is
    /// offered to the watch's budget only when this CPU's count of such packets (at
    /// hand on the drop path, as these settings are) masked by it is 0 (`2^k - 1`:
    /// one in `2^k`; 0, as in a fresh map: every one). The agent raises it under a
    /// flood, so that a flood's packet costs a mask test instead of the budget's
    /// check (see [`watch`]). Builds before it had a `generation` here, for
    /// inspection only: the layout is the same.
    pub watch_sample_mask: u32,
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
    unsafe impl aya::Pod for watch::DeniedSource {}
    unsafe impl aya::Pod for watch::WatchSettings {}
    unsafe impl aya::Pod for watch::WatchState {}
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
        let v6 = |code| fast::v6::target(code);
        assert_eq!(v6(fast::v6::direct(7)), Some((7, false)));
        assert_eq!(v6(fast::v6::compressed(7)), Some((7, true)));
        assert_eq!(v6(fast::allow(fast::MAX_RULE)), None);
        let below = (fast::v6::CHUNKS - fast::v6::ROOT_CHUNKS) as u32;
        assert_eq!(fast::v6::direct(below), fast::v6::compressed(0));
        assert!(fast::v6::compressed(below - 1) < u16::MAX);
        assert_eq!(
            fast::v6::pool_index_of_direct(fast::v6::direct(7)),
            fast::v6::pool_index(7)
        );
        assert_eq!(
            fast::v6::pool_index_of_compressed(fast::v6::compressed(7)),
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
    }

    #[test]
    fn no_padding_in_map_types() {
        use core::mem::size_of;
        assert_eq!(size_of::<FragKeyV4>(), 12);
        assert_eq!(size_of::<FragKeyV6>(), 36);
        assert_eq!(size_of::<Settings>(), 8);
        assert_eq!(size_of::<watch::DeniedSource>(), 32);
        assert_eq!(size_of::<watch::WatchSettings>(), 8);
        assert_eq!(size_of::<watch::WatchState>(), 32);
    }

    #[test]
    fn watch_keys() {
        let v4 = watch::key_v4([192, 0, 2, 7]);
        assert_eq!(
            std::net::Ipv6Addr::from(v4),
            "::ffff:192.0.2.7".parse::<std::net::Ipv6Addr>().unwrap()
        );
        let a: std::net::Ipv6Addr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(
            std::net::Ipv6Addr::from(watch::key_v6(a.octets())),
            "2001:db8:1:2::".parse::<std::net::Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn watch_bucket() {
        use watch::{BURST_NS, COST, refill};
        // Off: no credit, whatever was left.
        assert_eq!(refill(5 * COST, 0, 1_000_000), 0);
        // 1/s: a full bucket is one packet, and it takes a second to fill.
        assert_eq!(refill(0, 1, u64::MAX), COST);
        assert!(refill(0, 1, 999_999_999) < COST);
        // 2000/s: 2 packets per millisecond, at most 20 ms' worth (40 packets).
        assert_eq!(refill(0, 2000, 1_000_000), 2 * COST);
        assert_eq!(refill(0, 2000, 10 * BURST_NS), 2000 * BURST_NS);
        assert_eq!(refill(2000 * BURST_NS, 2000, 1), 2000 * BURST_NS);
        // Fractions carry over from one refill to the next.
        let mut credit = 0;
        for _ in 0..3 {
            credit = refill(credit, 500, 1_000_000);
        }
        assert_eq!(credit, 3 * COST / 2);
        // The largest rate does not overflow.
        assert_eq!(refill(0, u32::MAX, u64::MAX), u32::MAX as u64 * BURST_NS);
        // A lower rate caps what a higher one left.
        assert_eq!(refill(u32::MAX as u64 * BURST_NS, 2000, 0), 2000 * BURST_NS);
        assert_eq!(watch::cap(0), 0);
        assert_eq!(watch::cap(1), COST);
    }
}
