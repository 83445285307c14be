//! The two baselines `cargo xtask bench` measures the allowlist program against, built
//! like it (aya-ebpf, BTF maps, release):
//!
//! - `empty`: returns XDP_PASS. The floor: what BPF_PROG_TEST_RUN costs per packet
//!   with no program work at all.
//! - `textbook`: the filter every tutorial writes. Ethernet, IPv4 or IPv6, TCP; a
//!   segment to port 443 passes when one LPM-trie lookup finds its source, other
//!   traffic passes. No VLAN tags, extension headers, fragments, counters or hits.
//!
//! Built for the host as well (an empty `main`), so that the workspace's clippy
//! covers it; only the BPF build is ever loaded.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(
    not(target_arch = "bpf"),
    allow(
        unused_crate_dependencies,
        reason = "the host build is an empty main for clippy; only the BPF build is loaded"
    )
)]

use core::mem::size_of;

// The library target exists only for the bench crate's build-dependency (lib.rs).
use allowlist_bench_ebpf as _;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{LpmTrie, lpm_trie::Key},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

/// Capacity of each trie: the largest list the benchmark loads.
const MAX_PREFIXES: usize = 262_144;
const PROTECTED_PORT: u16 = 443;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;

#[btf_map]
static TEXTBOOK_V4: LpmTrie<[u8; 4], u32, MAX_PREFIXES> = LpmTrie::new();
#[btf_map]
static TEXTBOOK_V6: LpmTrie<[u8; 16], u32, MAX_PREFIXES> = LpmTrie::new();

#[xdp]
fn empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
fn textbook(ctx: XdpContext) -> u32 {
    match try_textbook(&ctx) {
        Ok(action) => action,
        Err(()) => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

fn try_textbook(ctx: &XdpContext) -> Result<u32, ()> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let allowed = match u16::from_be(unsafe { (*eth).ether_type }) {
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
            let (vihl, proto, src) = unsafe { ((*ip).vihl, (*ip).proto, (*ip).src_addr) };
            if proto != IPPROTO_TCP {
                return Ok(xdp_action::XDP_PASS);
            }
            let ihl = ((vihl & 0x0F) as usize) * 4;
            if ihl < Ipv4Hdr::LEN {
                return Err(());
            }
            if tcp_dst_port(ctx, EthHdr::LEN + ihl)? != PROTECTED_PORT {
                return Ok(xdp_action::XDP_PASS);
            }
            TEXTBOOK_V4.get(&Key::new(32, src)).is_some()
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, EthHdr::LEN)?;
            let (next, src) = unsafe { ((*ip).next_hdr, (*ip).src_addr) };
            if next != IPPROTO_TCP {
                return Ok(xdp_action::XDP_PASS);
            }
            if tcp_dst_port(ctx, EthHdr::LEN + Ipv6Hdr::LEN)? != PROTECTED_PORT {
                return Ok(xdp_action::XDP_PASS);
            }
            TEXTBOOK_V6.get(&Key::new(128, src)).is_some()
        }
        _ => return Ok(xdp_action::XDP_PASS),
    };
    Ok(if allowed {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    })
}

#[inline(always)]
fn tcp_dst_port(ctx: &XdpContext, offset: usize) -> Result<u16, ()> {
    let tcp: *const TcpHdr = ptr_at(ctx, offset)?;
    Ok(u16::from_be_bytes(unsafe { (*tcp).dest }))
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
