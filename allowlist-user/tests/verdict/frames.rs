//! Frame builders for the verdict tests, on top of etherparse's header types. Each
//! helper fills in the lengths so that a test only states what it is about; a
//! malformed frame is a well-formed one with one field broken afterwards.

use etherparse::{
    EtherType, Ethernet2Header, IpAuthHeader, IpFragOffset, IpNumber, Ipv4Header, Ipv6FlowLabel,
    Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader, TcpHeader, UdpHeader, VlanId, VlanPcp,
};
use std::net::{Ipv4Addr, Ipv6Addr};

pub(crate) const TPID_8021Q: u16 = 0x8100;
pub(crate) const TPID_8021AD: u16 = 0x88A8;
pub(crate) const TPID_QINQ_9100: u16 = 0x9100;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;

/// Ethernet header, then a VLAN tag per entry of `tags` (each the TPID of that tag),
/// then `payload` whose EtherType is `ether_type`.
pub(crate) fn ethernet(tags: &[u16], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let first = tags.first().copied().unwrap_or(ether_type);
    let mut out = Ethernet2Header {
        source: [0x02, 0, 0, 0, 0, 1],
        destination: [0x02, 0, 0, 0, 0, 2],
        ether_type: EtherType(first),
    }
    .to_bytes()
    .to_vec();
    for (i, _) in tags.iter().enumerate() {
        let next = tags.get(i + 1).copied().unwrap_or(ether_type);
        let tag = SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(100 + i as u16).unwrap(),
            ether_type: EtherType(next),
        };
        out.extend_from_slice(&tag.to_bytes());
    }
    out.extend_from_slice(payload);
    out
}

pub(crate) fn v4(tags: &[u16], packet: Vec<u8>) -> Vec<u8> {
    ethernet(tags, ETH_P_IP, &packet)
}

pub(crate) fn v6(tags: &[u16], packet: Vec<u8>) -> Vec<u8> {
    ethernet(tags, ETH_P_IPV6, &packet)
}

/// `frame` with `bytes` written over it at `at`: one field broken afterwards.
pub(crate) fn patch(mut frame: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    frame[at..at + bytes.len()].copy_from_slice(bytes);
    frame
}

/// `frame` padded with zeros to `len` bytes, as a NIC pads a short frame.
pub(crate) fn pad(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.resize(len, 0);
    frame
}

pub(crate) fn arp() -> Vec<u8> {
    // Request: who has 192.0.2.1, tell 192.0.2.2.
    let mut body = vec![0, 1, 8, 0, 6, 4, 0, 1];
    body.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 192, 0, 2, 2]);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 0, 2, 1]);
    ethernet(&[], ETH_P_ARP, &body)
}

pub(crate) fn tcp_syn(dst_port: u16) -> Vec<u8> {
    let mut tcp = TcpHeader::new(40000, dst_port, 1, 64240);
    tcp.syn = true;
    tcp.to_bytes().to_vec()
}

pub(crate) fn udp(dst_port: u16) -> Vec<u8> {
    let mut out = UdpHeader {
        source_port: 40000,
        destination_port: dst_port,
        length: 12,
        checksum: 0,
    }
    .to_bytes()
    .to_vec();
    out.extend_from_slice(b"ping");
    out
}

pub(crate) fn icmp_echo() -> Vec<u8> {
    vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0]
}

/// IPv4 header around `payload`; `edit` may change fields (options, fragments) before
/// the lengths and checksum are computed.
pub(crate) fn ipv4(
    src: Ipv4Addr,
    proto: u8,
    payload: &[u8],
    edit: impl FnOnce(&mut Ipv4Header),
) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, IpNumber(proto), src.octets(), [192, 0, 2, 1]).unwrap();
    edit(&mut ip);
    ip.set_payload_len(payload.len()).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = ip.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

pub(crate) fn fragment(ip: &mut Ipv4Header, id: u16, offset_units: u16, more: bool) {
    ip.identification = id;
    ip.fragment_offset = IpFragOffset::try_new(offset_units).unwrap();
    ip.more_fragments = more;
}

/// An IPv6 extension header in a chain.
#[derive(Clone)]
pub(crate) enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    Auth,
    Fragment {
        offset_units: u16,
        more: bool,
        id: u32,
    },
}

impl Ext {
    fn number(&self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::DestOpts => 60,
            Ext::Auth => 51,
            Ext::Fragment { .. } => 44,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        let next = IpNumber(next);
        match self {
            // PadN options filling the minimal 8-byte header.
            Ext::HopByHop | Ext::DestOpts => Ipv6RawExtHeader::new_raw(next, &[1, 4, 0, 0, 0, 0])
                .unwrap()
                .to_bytes()
                .to_vec(),
            // Routing type 4 (segment routing) with segments left 0: ignored by hosts.
            Ext::Routing => Ipv6RawExtHeader::new_raw(next, &[4, 0, 0, 0, 0, 0])
                .unwrap()
                .to_bytes()
                .to_vec(),
            Ext::Auth => IpAuthHeader::new(next, 0x100, 1, &[0; 12])
                .unwrap()
                .to_bytes()
                .to_vec(),
            // etherparse 0.18.2's Ipv6FragmentHeader::to_bytes puts the M flag in the top
            // bit of the fourth byte and leaves the offset unshifted, unlike RFC 8200
            // (offset << 3 | M), and reads it back the same way; so the header is
            // written here by hand.
            Ext::Fragment {
                offset_units,
                more,
                id,
            } => {
                let offset = IpFragOffset::try_new(*offset_units).unwrap().value();
                let field = (offset << 3) | u16::from(*more);
                let mut out = vec![next.0, 0];
                out.extend_from_slice(&field.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
                out
            }
        }
    }
}

/// IPv6 header, the extension headers of `chain` in order, then `proto` and `payload`.
pub(crate) fn ipv6(src: Ipv6Addr, chain: &[Ext], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, ext) in chain.iter().enumerate() {
        let next = chain.get(i + 1).map_or(proto, Ext::number);
        body.extend_from_slice(&ext.bytes(next));
    }
    body.extend_from_slice(payload);
    let ip = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: body.len() as u16,
        next_header: IpNumber(chain.first().map_or(proto, Ext::number)),
        hop_limit: 64,
        source: src.octets(),
        destination: "2001:db8:ffff::1".parse::<Ipv6Addr>().unwrap().octets(),
    };
    let mut out = ip.to_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}
