//! The allowlist XDP program.
//!
//! TCP segments to a protected port pass only when their source address is in the
//! allowlist; everything that cannot reach a protected port passes untouched. A frame
//! that might be TCP to a protected port but cannot be parsed is dropped unless its
//! source is allowlisted: the parser fails closed.
//!
//! Every decision is a [`Reason`]; [`finish`] is the only exit, so the counters can't
//! drift from the verdicts.
//!
//! A source is looked up in its family's fast table first (see
//! `allowlist_common::fast`): for IPv4 one array element for its /24, and one chunk
//! when longer prefixes split that /24; for IPv6 the root's code for its /16, then
//! one chunk per region that branches (path-compressed), down to the /64. Constant
//! time whatever the list size; the trie is walked only where the table says so.
#![no_std]
#![no_main]
#![cfg_attr(
    not(target_arch = "bpf"),
    allow(
        unused_crate_dependencies,
        reason = "the host build (allowlist-user's build-dependency) only tracks changes; aya-build builds the program for BPF"
    )
)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod parse;
mod watch;

// The library target exists only for allowlist-user's build-dependency (see lib.rs).
use allowlist_ebpf as _;

use allowlist_common::{
    FragKeyV4, FragKeyV6, FragVerdict, MAX_PREFIXES_V4, MAX_PREFIXES_V6, MAX_RULES,
    MAX_TRACKED_FRAGMENTS, PORT_SLOTS, PortFlag, Reason, Rule, Settings, counter, fast,
};
use aya_ebpf::{
    Global,
    bindings::xdp_action,
    btf_maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    macros::{btf_map, xdp},
    programs::XdpContext,
};

use crate::parse::{
    Addr6, Cursor, IPPROTO_AH, IPPROTO_ESP, IPPROTO_GRE, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_TCP,
    L4, Source,
};

#[btf_map]
static ALLOW_V4: LpmTrie<[u8; 4], Rule, MAX_PREFIXES_V4> = LpmTrie::new();
#[btf_map]
static ALLOW_V6: LpmTrie<[u8; 16], Rule, MAX_PREFIXES_V6> = LpmTrie::new();
#[btf_map]
static FAST_V4: Array<fast::v4::Slot, { fast::v4::SLOTS }, { fast::MMAPABLE }> = Array::new();
#[btf_map]
static FAST_V4_CHUNKS: Array<fast::v4::Chunk, { fast::v4::CHUNKS }, { fast::MMAPABLE }> =
    Array::new();
#[btf_map]
static FAST_V6: Array<fast::v6::Chunk, { fast::v6::CHUNKS }, { fast::MMAPABLE }> = Array::new();
#[btf_map]
static PORTS: Array<PortFlag, PORT_SLOTS> = Array::new();
#[btf_map]
static SETTINGS: Array<Settings, 1> = Array::new();
#[btf_map]
static COUNTERS: PerCpuArray<u64, { counter::SLOTS as usize }> = PerCpuArray::new();
#[btf_map]
static HITS: PerCpuArray<u64, MAX_RULES> = PerCpuArray::new();
#[btf_map]
static FRAGS_V4: LruHashMap<FragKeyV4, FragVerdict, MAX_TRACKED_FRAGMENTS> = LruHashMap::new();
#[btf_map]
static FRAGS_V6: LruHashMap<FragKeyV6, FragVerdict, MAX_TRACKED_FRAGMENTS> = LruHashMap::new();

/// Set to 1 by the agent at load time to emit an aya-log event for every drop. The
/// verifier sees a constant and removes the logging code when it is 0.
#[unsafe(no_mangle)]
static DEBUG_EVENTS: Global<u32> = Global::new(0);

/// Protocols whose payload is another packet (IP-in-IP, IPv6-in-IPv4, GRE) or is
/// encrypted (ESP), or is wrapped in an IPv4 AH header: the kernel may deliver what is
/// inside to a protected port, and the program cannot see its port.
#[inline(always)]
fn is_opaque(proto: u8) -> bool {
    matches!(
        proto,
        IPPROTO_IPIP | IPPROTO_IPV6 | IPPROTO_GRE | IPPROTO_ESP | IPPROTO_AH
    )
}

/// `frags`: the program takes multi-buffer frames, so it attaches in native mode on
/// interfaces with an MTU above a page (9000, say); headers are always in the first
/// buffer, and lengths are checked against the whole frame.
#[xdp(frags)]
#[inline(always)]
fn allowlist(ctx: XdpContext) -> u32 {
    let mut denied = Denied::NONE;
    let reason = classify(&ctx, &mut denied);
    finish(&ctx, reason, denied)
}

/// The source (as the watch's key, in two words: every byte defined, and no array of
/// bytes to carry through the program's registers and stack) and destination port of
/// a packet denied for `NotAllowlisted`, for the denied-source watch.
///
/// Zeroed before the packet is judged, not an `Option`: LLVM would otherwise copy an
/// uninitialised payload on the paths that leave it empty, which the verifier refuses.
#[derive(Clone, Copy)]
struct Denied {
    key: Addr6,
    port: u16,
    /// Non-zero when the packet was denied for `NotAllowlisted`.
    found: u16,
}

impl Denied {
    const NONE: Denied = Denied {
        key: Addr6::ZERO,
        port: 0,
        found: 0,
    };
}

/// The only exit: counts `reason` once and turns it into an XDP action; offers a
/// `NotAllowlisted` packet's source to the watch when this CPU's count of them,
/// masked by the sampling, is 0.
#[inline(always)]
fn finish(ctx: &XdpContext, reason: Reason, denied: Denied) -> u32 {
    if !reason.drops() {
        bump(&COUNTERS, counter::exit(reason));
        return xdp_action::XDP_PASS;
    }
    if DEBUG_EVENTS.load() != 0 {
        aya_log_ebpf::debug!(ctx, "allowlist: drop, reason {}", reason as u32);
    }
    let (monitor, sample_mask) = SETTINGS
        .get(0)
        .map_or((false, 0), |s| (s.monitor != 0, s.watch_sample_mask));
    let (slot, action) = if monitor {
        (counter::would_drop(reason), xdp_action::XDP_PASS)
    } else {
        (counter::exit(reason), xdp_action::XDP_DROP)
    };
    let count = bump(&COUNTERS, slot);
    if denied.found != 0 && count & u64::from(sample_mask) == 0 {
        watch::offer(denied.key, denied.port);
    }
    action
}

/// Adds one to `slot`; returns the new count (0 if the slot is missing).
#[inline(always)]
fn bump<const N: usize>(map: &PerCpuArray<u64, N>, slot: u32) -> u64 {
    match map.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot is only written by this CPU.
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    }
}

/// Inlined into the program, so that `denied` stays in registers: as a function of its
/// own, LLVM passes it through the stack and zeroes it with a call to `memset`.
#[inline(always)]
fn classify(ctx: &XdpContext, denied: &mut Denied) -> Reason {
    let cur = Cursor::new(ctx);
    // Most frames take the short way; the general parser would judge them the same.
    if let Some(plain) = parse::plain_ipv4(&cur) {
        return judge_l4(Source::v4(plain.src), plain.proto, plain.dst_port, denied);
    }
    if let Some(plain) = parse::plain_ipv6(&cur) {
        return judge_l4(Source::v6(plain.src), plain.proto, plain.dst_port, denied);
    }
    // A jumbo frame's lengths overrun its first buffer: the short way declines it.
    let mut cur = cur.with_frame_len(ctx);
    let parsed = parse::packet(&mut cur);
    for (seen, slot) in [
        (cur.vlan_tagged, counter::VLAN_TAGGED),
        (cur.ipv4_options, counter::IPV4_OPTIONS),
        (cur.ipv6_ext_headers, counter::IPV6_EXT_HEADERS),
    ] {
        if seen {
            bump(&COUNTERS, slot);
        }
    }
    match parsed {
        // Its own arm: LLVM would otherwise carry the fields of the other variants,
        // undefined here, into `judge`, and the verifier refuses the read.
        Ok(L4::NotIp) => Reason::NotIp,
        Ok(l4) => judge(l4, denied),
        // No source address could be read: nothing can vouch for the frame.
        Err(None) => Reason::Malformed,
        // Unparseable after the source address: only an allowlisted source passes.
        Err(Some(source)) => {
            if allowed(source) {
                Reason::Allowlisted
            } else {
                Reason::Malformed
            }
        }
    }
}

fn judge(l4: L4, denied: &mut Denied) -> Reason {
    match l4 {
        L4::NotIp => Reason::NotIp,
        L4::TooManyExtHeaders(src) => {
            if allowed(src) {
                Reason::Allowlisted
            } else {
                Reason::ExtHeaderLimit
            }
        }
        L4::Ipv4 {
            src,
            dst,
            proto,
            fragment_id,
            later_fragment,
            dst_port,
        } => {
            let src_v = Source::v4(src);
            let Some(id) = fragment_id else {
                return judge_l4(src_v, proto, dst_port, denied);
            };
            bump(&COUNTERS, counter::FRAGMENT);
            let key = FragKeyV4 {
                src,
                dst,
                id,
                proto,
                _pad: 0,
            };
            if later_fragment {
                // Non-TCP later fragments pass on their own protocol number (the kernel
                // reassembles by it); a TCP one needs its first fragment.
                if proto != IPPROTO_TCP && !is_opaque(proto) {
                    Reason::NotTcp
                } else if allowed(src_v) {
                    Reason::Allowlisted
                } else if FRAGS_V4.get_ptr(key).is_some() {
                    Reason::FragmentOfPassed
                } else {
                    Reason::FragmentUnknown
                }
            } else {
                let reason = judge_l4(src_v, proto, dst_port, denied);
                // A TCP datagram let through for its port is remembered so that its later
                // fragments can follow it.
                if reason == Reason::UnprotectedPort {
                    let _ = FRAGS_V4.insert(
                        key,
                        FragVerdict {
                            dst_port: dst_port as u32,
                        },
                        0,
                    );
                }
                reason
            }
        }
        L4::Ipv6 {
            src,
            dst,
            proto,
            fragment_id,
            later_fragment,
            dst_port,
        } => {
            let src_v = Source::v6(Addr6::from_bytes(src));
            let Some(id) = fragment_id else {
                return judge_l4(src_v, proto, dst_port, denied);
            };
            bump(&COUNTERS, counter::FRAGMENT);
            let key = FragKeyV6 { src, dst, id };
            if later_fragment {
                // IPv6 reassembles by addresses and id only, and a later fragment's next
                // header is not the datagram's: every later fragment needs its first.
                if allowed(src_v) {
                    Reason::Allowlisted
                } else if FRAGS_V6.get_ptr(key).is_some() {
                    Reason::FragmentOfPassed
                } else {
                    Reason::FragmentUnknown
                }
            } else {
                let reason = judge_l4(src_v, proto, dst_port, denied);
                if matches!(reason, Reason::UnprotectedPort | Reason::NotTcp) {
                    let _ = FRAGS_V6.insert(
                        key,
                        FragVerdict {
                            dst_port: dst_port as u32,
                        },
                        0,
                    );
                }
                reason
            }
        }
    }
}

/// Judges an unfragmented packet or a first fragment by its upper-layer header.
#[inline(always)]
fn judge_l4(src: Source, proto: u8, dst_port: u16, denied: &mut Denied) -> Reason {
    if proto == IPPROTO_TCP {
        if !protected(dst_port) {
            Reason::UnprotectedPort
        } else if allowed(src) {
            Reason::Allowlisted
        } else {
            *denied = Denied {
                key: src.watch_key(),
                port: dst_port,
                found: 1,
            };
            Reason::NotAllowlisted
        }
    } else if is_opaque(proto) {
        if allowed(src) {
            Reason::Allowlisted
        } else {
            Reason::Tunnel
        }
    } else {
        Reason::NotTcp
    }
}

#[inline(always)]
fn protected(port: u16) -> bool {
    PORTS.get(port as u32).is_some_and(|flag| *flag != 0)
}

/// Whether `src` is in the allowlist; counts a hit for the matching rule.
#[inline(always)]
fn allowed(src: Source) -> bool {
    let rule = if let Some(addr) = src.ipv4() {
        match fast_v4(addr) {
            fast::DENY => None,
            fast::DEEPER => ALLOW_V4.get(&Key::new(32, addr)).map(|r| r.rule),
            code => fast::rule(code),
        }
    } else {
        let addr = src.ipv6();
        match fast_v6(addr) {
            fast::DENY => None,
            fast::DEEPER => ALLOW_V6.get(&Key::new(128, addr.bytes())).map(|r| r.rule),
            code => fast::rule(code),
        }
    };
    match rule {
        Some(rule) => {
            bump(&HITS, rule);
            true
        }
        None => false,
    }
}

/// The IPv4 fast table's answer for a source: `DENY`, an allowing code, or `DEEPER`.
/// Two array reads at most: the /24's code, and for a /24 that longer prefixes split,
/// the address's byte in the chunk the code points at.
#[inline(always)]
fn fast_v4(addr: [u8; 4]) -> u16 {
    let block = fast::v4::block(u32::from_be_bytes(addr));
    let slot = block / fast::v4::CODES_PER_SLOT as u32;
    let Some(codes) = FAST_V4.get(slot) else {
        return fast::DEEPER;
    };
    let code = codes[(block % fast::v4::CODES_PER_SLOT as u32) as usize];
    let Some(chunk) = fast::chunk(code) else {
        return code;
    };
    match FAST_V4_CHUNKS.get(chunk) {
        Some(bytes) => u16::from(bytes[addr[3] as usize]),
        None => fast::DEEPER,
    }
}

/// The IPv6 fast table's answer for a source: `DENY`, an allowing code, or `DEEPER`.
/// The root's code for the /16, then while the code points at a chunk: a direct
/// pointer's chunk's code for the source (its shift is 8 less than the previous
/// chunk's), a compressed pointer's chunk's code if the source is in the chunk's
/// region (its header says which, and its shift), its default otherwise;
/// `fast::v6::LEVELS` chunks at most.
#[inline(always)]
fn fast_v6(addr: Addr6) -> u16 {
    let hi = addr.top64();
    let Some(root) = FAST_V6.get((hi >> 56) as u32) else {
        return fast::DEEPER;
    };
    let mut code = root.codes[((hi >> 48) & 0xFF) as usize];
    // The shift of a chunk whose region is the slot `code` was read from.
    let mut shift = fast::v6::ROOT_SHIFT;
    for _ in 0..fast::v6::LEVELS {
        if code < fast::FIRST_CHUNK {
            return code;
        }
        if code < fast::v6::FIRST_COMPRESSED {
            let Some(chunk) = FAST_V6.get(fast::v6::pool_index_of_direct(code)) else {
                return fast::DEEPER;
            };
            code = chunk.codes[(hi.wrapping_shr(shift) & 0xFF) as usize];
        } else {
            let Some(chunk) = FAST_V6.get(fast::v6::pool_index_of_compressed(code)) else {
                return fast::DEEPER;
            };
            if hi & chunk.mask != chunk.net {
                code = chunk.default;
                break;
            }
            shift = chunk.shift;
            code = chunk.codes[(hi.wrapping_shr(shift) & 0xFF) as usize];
        }
        shift = shift.wrapping_sub(8);
    }
    // Past the /64 the table holds no chunk; a code that still points at one is not
    // an answer.
    if fast::chunk(code).is_some() {
        fast::DEEPER
    } else {
        code
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
