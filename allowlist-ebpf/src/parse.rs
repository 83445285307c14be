//! Header-by-header parsing with one bounds-checked accessor, in the manner of
//! xdp-tutorial's `hdr_cursor`. Parsing only extracts facts; `main.rs` judges them.
//!
//! Errors carry the source address when it was read before the failure, so that the
//! caller can let an allowlisted source through and drop everyone else.

use core::mem::size_of;

use allowlist_common::{MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS};
use aya_ebpf::{helpers::bpf_xdp_get_buff_len, programs::XdpContext};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// Pre-standard QinQ outer tag, still emitted by some switches.
const ETH_P_QINQ_9100: u16 = 0x9100;

// IP protocol numbers (IANA): upper-layer protocols, then IPv6 extension headers.
pub(crate) const IPPROTO_IPIP: u8 = 4;
const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
pub(crate) const IPPROTO_IPV6: u8 = 41;
pub(crate) const IPPROTO_GRE: u8 = 47;
pub(crate) const IPPROTO_ESP: u8 = 50;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
pub(crate) const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;
const IPPROTO_HIP: u8 = 139;
const IPPROTO_SHIM6: u8 = 140;
const IPPROTO_EXP1: u8 = 253;
const IPPROTO_EXP2: u8 = 254;

/// A source address, read before a failure or a decision: an IPv6 address, or an
/// IPv4 one mapped into IPv6 (`::ffff:a.b.c.d`, as the watch keys it), every byte
/// defined. Not an enum: LLVM copies the bytes an enum's IPv4 variant leaves unused
/// between the program's paths, and the verifier refuses to read them.
#[derive(Clone, Copy)]
pub(crate) struct Source {
    v4: bool,
    addr: Addr6,
}

impl Source {
    #[inline(always)]
    pub(crate) fn v4([a, b, c, d]: [u8; 4]) -> Self {
        Self {
            v4: true,
            addr: Addr6([0, u64::from_ne_bytes([0, 0, 0xff, 0xff, a, b, c, d])]),
        }
    }

    #[inline(always)]
    pub(crate) fn v6(addr: Addr6) -> Self {
        Self { v4: false, addr }
    }

    /// The IPv4 address of an IPv4 source.
    #[inline(always)]
    pub(crate) fn ipv4(self) -> Option<[u8; 4]> {
        let [.., a, b, c, d] = self.addr.0[1].to_ne_bytes();
        self.v4.then_some([a, b, c, d])
    }

    /// The address of an IPv6 source (an IPv4 source's mapped address).
    #[inline(always)]
    pub(crate) fn ipv6(self) -> Addr6 {
        self.addr
    }

    /// The watch's key (`allowlist_common::watch::Key`): a mapped IPv4 address, or an
    /// IPv6 /64.
    #[inline(always)]
    pub(crate) fn watch_key(self) -> Addr6 {
        if self.v4 {
            self.addr
        } else {
            Addr6([self.addr.0[0], 0])
        }
    }
}

/// An IPv6 address as two words holding its bytes in memory order: what the program
/// carries around, in two registers where 16 bytes would be 16 (the fast table and
/// the watch read only the first word; the trie and the fragment keys take the bytes).
#[derive(Clone, Copy)]
pub(crate) struct Addr6([u64; 2]);

impl Addr6 {
    /// `::`, every byte defined.
    pub(crate) const ZERO: Addr6 = Addr6([0; 2]);

    #[inline(always)]
    pub(crate) fn from_bytes(bytes: [u8; 16]) -> Self {
        // SAFETY: same size, and every bit pattern is a valid `[u64; 2]`.
        Self(unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(bytes) })
    }

    #[inline(always)]
    pub(crate) fn bytes(self) -> [u8; 16] {
        // SAFETY: same size, and every bit pattern is a valid `[u8; 16]`.
        unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(self.0) }
    }

    /// The top 64 bits as a number.
    #[inline(always)]
    pub(crate) fn top64(self) -> u64 {
        u64::from_be(self.0[0])
    }
}

/// `Err(None)`: no source address could be read. `Err(Some(src))`: the frame is
/// broken after its source address.
pub(crate) type ParseResult<T> = Result<T, Option<Source>>;

/// What the parser learned about a frame.
pub(crate) enum L4 {
    NotIp,
    /// The IPv6 extension-header chain is longer than the parser walks.
    TooManyExtHeaders(Source),
    Ipv4 {
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        /// The identification, when the datagram is a fragment.
        fragment_id: Option<u16>,
        /// A fragment with a non-zero offset: its upper-layer header is elsewhere.
        later_fragment: bool,
        /// The TCP destination port; 0 when not TCP or a later fragment.
        dst_port: u16,
    },
    Ipv6 {
        src: [u8; 16],
        dst: [u8; 16],
        /// The upper-layer protocol after the extension headers.
        proto: u8,
        /// The identification of the Fragment header, when there is one.
        fragment_id: Option<u32>,
        /// A fragment with a non-zero offset: its upper-layer header is elsewhere.
        later_fragment: bool,
        dst_port: u16,
    },
}

/// Where the parser is in the frame, and what it has seen on the way (observations
/// that the program counts beside the verdict).
pub(crate) struct Cursor {
    /// The whole frame's length, all buffers (see [`Cursor::with_frame_len`]).
    frame_len: usize,
    start: usize,
    end: usize,
    off: usize,
    pub(crate) vlan_tagged: bool,
    pub(crate) ipv4_options: bool,
    pub(crate) ipv6_ext_headers: bool,
}

impl Cursor {
    pub(crate) fn new(ctx: &XdpContext) -> Self {
        Self {
            frame_len: 0,
            start: ctx.data(),
            end: ctx.data_end(),
            off: 0,
            vlan_tagged: false,
            ipv4_options: false,
            ipv6_ext_headers: false,
        }
    }

    /// The one bounds-checked accessor: a `T` at `off` bytes into the frame's first
    /// buffer, or `None` past its end.
    ///
    /// Every `unsafe` read in this module is of a pointer from here, sound for the same
    /// reasons: the bytes are inside the frame (checked against `data_end`, in a form
    /// the verifier tracks), the frame stays in place for the whole run, and `T` is a
    /// header of byte arrays (any bytes a value, alignment 1) but for the `u16`
    /// EtherType of `EthHdr` and `VlanHdr`, which sits at an even offset of a frame
    /// that starts 2-aligned (the kernel puts it after XDP's 256-byte headroom); a
    /// plain load keeps the fast path 3 instructions shorter than an unaligned read.
    #[inline(always)]
    fn ptr_at<T>(&self, off: usize) -> Option<*const T> {
        let ptr = self.start + off;
        if ptr + size_of::<T>() > self.end {
            return None;
        }
        Some(ptr as *const T)
    }

    /// Bytes in the frame's first buffer from `off` to its end.
    #[inline(always)]
    fn remaining_from(&self, off: usize) -> usize {
        (self.end - self.start).saturating_sub(off)
    }

    /// Whether the frame holds `len` bytes from `off`: in its first buffer, or, for a
    /// multi-buffer (jumbo) frame, in its further buffers too. Headers are always in
    /// the first buffer, so everything read stays under `ptr_at`.
    #[inline(always)]
    fn holds(&self, off: usize, len: usize) -> bool {
        len <= self.remaining_from(off) || len <= self.frame_len.saturating_sub(off)
    }

    /// Learns the whole frame's length from the kernel: a helper call, so only the
    /// general parser pays it, not the short way of the commonest frames.
    #[inline(always)]
    pub(crate) fn with_frame_len(mut self, ctx: &XdpContext) -> Self {
        // SAFETY: ctx is this program's context, valid for the whole run.
        self.frame_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
        self
    }
}

/// A frame's first `N` bytes, checked to be in its first buffer once, so that the
/// short ways read their fields without a bounds check each (see [`Cursor::head`]).
pub(crate) struct Head<const N: usize>(*const u8);

impl<const N: usize> Head<N> {
    /// The byte at `OFF`.
    #[inline(always)]
    fn u8<const OFF: usize>(&self) -> u8 {
        const { assert!(OFF < N) };
        // SAFETY: inside the checked head (see `Cursor::ptr_at`).
        unsafe { *self.0.add(OFF) }
    }

    /// The two bytes at the even offset `OFF`, as they are in memory: one 2-aligned load
    /// (the frame starts 2-aligned, see `Cursor::ptr_at`).
    #[inline(always)]
    fn ne16<const OFF: usize>(&self) -> u16 {
        const { assert!(OFF.is_multiple_of(2) && OFF + 2 <= N) };
        // SAFETY: inside the checked head, and 2-aligned.
        unsafe { *(self.0.add(OFF) as *const u16) }
    }

    /// The big-endian `u16` at the even offset `OFF`.
    #[inline(always)]
    fn be16<const OFF: usize>(&self) -> u16 {
        u16::from_be(self.ne16::<OFF>())
    }

    /// The four bytes at the even offset `OFF` (an IPv4 address), in two loads.
    #[inline(always)]
    fn bytes4<const OFF: usize>(&self) -> [u8; 4] {
        const { assert!(OFF.is_multiple_of(2) && OFF + 4 <= N) };
        // SAFETY: inside the checked head, and 2-aligned.
        let [high, low] = unsafe { *(self.0.add(OFF) as *const [u16; 2]) };
        let ([a, b], [c, d]) = (high.to_ne_bytes(), low.to_ne_bytes());
        [a, b, c, d]
    }

    /// The IPv6 address at the even offset `OFF`, in 2-aligned loads.
    #[inline(always)]
    fn addr6<const OFF: usize>(&self) -> Addr6 {
        const { assert!(OFF.is_multiple_of(2) && OFF + 16 <= N) };
        // SAFETY: inside the checked head, and 2-aligned.
        let halves = unsafe { *(self.0.add(OFF) as *const [[u16; 4]; 2]) };
        // SAFETY: same size, and every bit pattern is a valid `[u64; 2]`.
        Addr6(unsafe { core::mem::transmute::<[[u16; 4]; 2], [u64; 2]>(halves) })
    }
}

impl Cursor {
    /// The frame's first `N` bytes, or `None` when its first buffer is shorter.
    #[inline(always)]
    pub(crate) fn head<const N: usize>(&self) -> Option<Head<N>> {
        self.ptr_at::<[u8; N]>(0).map(|p| Head(p as *const u8))
    }

    /// The bytes of the first buffer after a head that [`Cursor::head`] found.
    #[inline(always)]
    fn after_ethernet(&self) -> usize {
        // No underflow: a head longer than Ethernet's was found.
        self.end - self.start - EthHdr::LEN
    }
}

/// The facts of the commonest frame, read in one pass.
pub(crate) struct PlainIpv4 {
    pub(crate) src: [u8; 4],
    pub(crate) proto: u8,
    /// The TCP destination port; 0 when not TCP.
    pub(crate) dst_port: u16,
}

/// The commonest frame, read in one pass with a bounds check for its headers (two
/// for TCP): untagged Ethernet, an IPv4 header without options, not a fragment,
/// lengths that fit the frame, and a whole TCP header if it is TCP. For such a frame
/// [`packet`] finds the same facts (not a fragment) and makes no observation; `None`
/// leaves every other frame to it.
#[inline(always)]
pub(crate) fn plain_ipv4(cur: &Cursor) -> Option<PlainIpv4> {
    const IP: usize = EthHdr::LEN;
    const TCP: usize = IP + Ipv4Hdr::LEN;
    let head: Head<TCP> = cur.head()?;
    if head.be16::<12>() != ETH_P_IP {
        return None;
    }
    let tot_len = usize::from(head.be16::<{ IP + 2 }>());
    let proto = head.u8::<{ IP + 9 }>();
    // Version 4, 20-byte header; neither more fragments nor an offset.
    if head.u8::<IP>() != 0x45
        || head.be16::<{ IP + 6 }>() & 0x3FFF != 0
        || tot_len < Ipv4Hdr::LEN
        || tot_len > cur.after_ethernet()
    {
        return None;
    }
    let mut dst_port = 0;
    if proto == IPPROTO_TCP {
        let tcp: Head<{ TCP + TcpHdr::LEN }> = cur.head()?;
        // The data offset (the high nibble) counts 32-bit words: at least 5.
        if tot_len < Ipv4Hdr::LEN + TcpHdr::LEN || tcp.u8::<{ TCP + 12 }>() < 5 << 4 {
            return None;
        }
        dst_port = tcp.be16::<{ TCP + 2 }>();
    } else if proto != IPPROTO_UDP && proto != IPPROTO_ICMP {
        // Tunnels and the rarer protocols go the general way, so that the short way
        // decides TCP first, with no dispatch on the protocol before it.
        return None;
    }
    Some(PlainIpv4 {
        src: head.bytes4::<{ IP + 12 }>(),
        proto,
        dst_port,
    })
}

/// The facts of the commonest IPv6 frame.
pub(crate) struct PlainIpv6 {
    pub(crate) src: Addr6,
    pub(crate) proto: u8,
    /// The TCP destination port; 0 when not TCP.
    pub(crate) dst_port: u16,
}

/// The commonest IPv6 frame, read in one pass with a bounds check for its headers
/// (two for TCP): untagged Ethernet, an IPv6 header followed directly by an
/// upper-layer header (no extension header, so not a fragment), a payload that fits
/// the frame's first buffer, and a whole TCP header if it is TCP. For such a frame
/// [`packet`] finds the same facts and makes no observation; `None` leaves every
/// other frame to it.
#[inline(always)]
pub(crate) fn plain_ipv6(cur: &Cursor) -> Option<PlainIpv6> {
    const IP: usize = EthHdr::LEN;
    const TCP: usize = IP + Ipv6Hdr::LEN;
    let head: Head<TCP> = cur.head()?;
    if head.be16::<12>() != ETH_P_IPV6 {
        return None;
    }
    let payload_len = usize::from(head.be16::<{ IP + 4 }>());
    let proto = head.u8::<{ IP + 6 }>();
    if head.u8::<IP>() >> 4 != 6 || Ipv6Hdr::LEN + payload_len > cur.after_ethernet() {
        return None;
    }
    let mut dst_port = 0;
    if proto == IPPROTO_TCP {
        let tcp: Head<{ TCP + TcpHdr::LEN }> = cur.head()?;
        if payload_len < TcpHdr::LEN || tcp.u8::<{ TCP + 12 }>() < 5 << 4 {
            return None;
        }
        dst_port = tcp.be16::<{ TCP + 2 }>();
    } else if proto != IPPROTO_UDP && proto != IPPROTO_ICMPV6 {
        // Extension headers, tunnels and the rarer protocols go the general way.
        return None;
    }
    Some(PlainIpv6 {
        src: head.addr6::<{ IP + 8 }>(),
        proto,
        dst_port,
    })
}

pub(crate) fn packet(cur: &mut Cursor) -> ParseResult<L4> {
    let ether_type = ethernet(cur).ok_or(None)?;
    match ether_type {
        ETH_P_IP => ipv4(cur),
        ETH_P_IPV6 => ipv6(cur),
        _ => Ok(L4::NotIp),
    }
}

/// Ethernet and up to `MAX_VLAN_TAGS` VLAN tags; returns the inner EtherType. A frame
/// with more tags than that is malformed (it may still carry IP).
#[inline(always)]
fn ethernet(cur: &mut Cursor) -> Option<u16> {
    let eth: *const EthHdr = cur.ptr_at(0)?;
    let mut ether_type = self::ether_type(eth);
    cur.off = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ether_type) {
            break;
        }
        let vlan: *const VlanHdr = cur.ptr_at(cur.off)?;
        // SAFETY: from `ptr_at`; 2-aligned (see there).
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        cur.off += VlanHdr::LEN;
        cur.vlan_tagged = true;
    }
    if is_vlan(ether_type) {
        return None;
    }
    Some(ether_type)
}

/// The EtherType of an Ethernet header from `ptr_at`.
#[inline(always)]
fn ether_type(eth: *const EthHdr) -> u16 {
    // SAFETY: from `ptr_at`; 2-aligned (see there).
    u16::from_be(unsafe { (*eth).ether_type })
}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    matches!(ether_type, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ_9100)
}

#[inline(always)]
fn ipv4(cur: &mut Cursor) -> ParseResult<L4> {
    let ip: *const Ipv4Hdr = cur.ptr_at(cur.off).ok_or(None)?;
    // SAFETY: from `ptr_at`.
    let (vihl, tot_len, id, frags, proto, src, dst) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u16::from_be_bytes((*ip).id),
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    let broken = Some(Source::v4(src));
    let ihl = ((vihl & 0x0F) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl || !cur.holds(cur.off, tot_len) {
        return Err(broken);
    }
    cur.ipv4_options = ihl > Ipv4Hdr::LEN;
    let more_fragments = frags & 0x2000 != 0;
    let offset = frags & 0x1FFF;
    let fragment_id = (more_fragments || offset != 0).then_some(id);
    let mut dst_port = 0;
    if proto == IPPROTO_TCP && offset == 0 {
        // The whole fixed TCP header must be inside this datagram (or first fragment):
        // a port split across fragments is the classic tiny-fragment evasion.
        if tot_len < ihl + TcpHdr::LEN {
            return Err(broken);
        }
        dst_port = tcp_dst_port(cur, cur.off + ihl).ok_or(broken)?;
    }
    Ok(L4::Ipv4 {
        src,
        dst,
        proto,
        fragment_id,
        later_fragment: offset != 0,
        dst_port,
    })
}

#[inline(always)]
fn tcp_dst_port(cur: &Cursor, off: usize) -> Option<u16> {
    let tcp: *const TcpHdr = cur.ptr_at(off)?;
    // SAFETY: from `ptr_at`.
    let (doff, dest) = unsafe { ((*tcp).doff(), (*tcp).dest) };
    if doff < 5 {
        return None;
    }
    Some(u16::from_be_bytes(dest))
}

#[inline(always)]
fn ipv6(cur: &mut Cursor) -> ParseResult<L4> {
    let ip: *const Ipv6Hdr = cur.ptr_at(cur.off).ok_or(None)?;
    // SAFETY: from `ptr_at`.
    let (vcf0, payload_len, mut next, src, dst) = unsafe {
        (
            (*ip).vcf[0],
            u16::from_be_bytes((*ip).payload_len) as usize,
            (*ip).next_hdr,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    let broken = Some(Source::v6(Addr6::from_bytes(src)));
    if vcf0 >> 4 != 6 || !cur.holds(cur.off, Ipv6Hdr::LEN + payload_len) {
        return Err(broken);
    }
    // Offsets below are relative to the IPv6 header and must stay inside its payload.
    let ip_off = cur.off;
    let ip_end = Ipv6Hdr::LEN + payload_len;
    let mut off = Ipv6Hdr::LEN;
    let mut fragment_id = None;
    let mut later_fragment = false;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT_HEADERS {
        let len = match next {
            IPPROTO_FRAGMENT => {
                let frag: *const [u8; 8] = cur.ptr_at(ip_off + off).ok_or(broken)?;
                // SAFETY: from `ptr_at`.
                let frag = unsafe { *frag };
                let offset_flags = u16::from_be_bytes([frag[2], frag[3]]);
                fragment_id = Some(u32::from_be_bytes([frag[4], frag[5], frag[6], frag[7]]));
                if offset_flags >> 3 != 0 {
                    later_fragment = true;
                }
                next = frag[0];
                8
            }
            IPPROTO_AH => {
                let hdr: *const [u8; 2] = cur.ptr_at(ip_off + off).ok_or(broken)?;
                // SAFETY: from `ptr_at`.
                let hdr = unsafe { *hdr };
                next = hdr[0];
                (hdr[1] as usize + 2) * 4
            }
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH | IPPROTO_HIP
            | IPPROTO_SHIM6 | IPPROTO_EXP1 | IPPROTO_EXP2 => {
                let hdr: *const [u8; 2] = cur.ptr_at(ip_off + off).ok_or(broken)?;
                // SAFETY: from `ptr_at`.
                let hdr = unsafe { *hdr };
                next = hdr[0];
                (hdr[1] as usize + 1) * 8
            }
            _ => break,
        };
        cur.ipv6_ext_headers = true;
        off += len;
        if off > ip_end {
            return Err(broken);
        }
        walked += 1;
        if later_fragment {
            // What follows a later fragment's header is payload, not headers.
            break;
        }
    }
    if !later_fragment && is_ext_header(next) {
        return Ok(L4::TooManyExtHeaders(Source::v6(Addr6::from_bytes(src))));
    }
    let mut dst_port = 0;
    if next == IPPROTO_TCP && !later_fragment {
        if off + TcpHdr::LEN > ip_end {
            return Err(broken);
        }
        dst_port = tcp_dst_port(cur, ip_off + off).ok_or(broken)?;
    }
    Ok(L4::Ipv6 {
        src,
        dst,
        proto: next,
        fragment_id,
        later_fragment,
        dst_port,
    })
}

#[inline(always)]
fn is_ext_header(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_FRAGMENT
            | IPPROTO_AH
            | IPPROTO_DSTOPTS
            | IPPROTO_MH
            | IPPROTO_HIP
            | IPPROTO_SHIM6
            | IPPROTO_EXP1
            | IPPROTO_EXP2
    )
}
