//! A local DNS server for `dns` sources: answers every A and AAAA query over UDP with
//! the [`Reply`] a test sets while it runs (records with a TTL, NXDOMAIN, SERVFAIL, an
//! empty answer, or silence), and counts the queries. Hand-written wire format, just
//! enough of RFC 1035 for one question per message.
//!
//! The server runs on its own thread and stops when dropped.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const NOERROR: u16 = 0;
const SERVFAIL: u16 = 2;
const NXDOMAIN: u16 = 3;

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// NOERROR with these records (an empty answer when there are none of the type
    /// asked).
    Records {
        v4: Vec<Ipv4Addr>,
        v6: Vec<Ipv6Addr>,
        ttl: u32,
    },
    NxDomain,
    ServFail,
    /// No answer at all: the client times out.
    Silent,
}

impl Reply {
    /// The records of `addrs` (IPv4 and IPv6 literals) with `ttl`.
    pub fn records(addrs: &[&str], ttl: u32) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for addr in addrs {
            match addr.parse() {
                Ok(std::net::IpAddr::V4(a)) => v4.push(a),
                Ok(std::net::IpAddr::V6(a)) => v6.push(a),
                Err(_) => panic!("{addr:?} is not an address"),
            }
        }
        Reply::Records { v4, v6, ttl }
    }

    /// NOERROR without any record.
    pub fn empty() -> Self {
        Reply::records(&[], 0)
    }
}

/// One query the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Lowercase, without the final dot.
    pub name: String,
    pub qtype: u16,
}

struct Shared {
    reply: Mutex<Reply>,
    queries: Mutex<Vec<Query>>,
    stop: AtomicBool,
}

pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Listens on 127.0.0.1, an ephemeral UDP port; answers with an empty answer until
    /// told otherwise.
    pub fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set a read timeout");
        let addr = socket.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            reply: Mutex::new(Reply::empty()),
            queries: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let serving = shared.clone();
        let thread = thread::spawn(move || serve(&socket, &serving));
        DnsServer {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What every query is answered with from now on.
    pub fn set(&self, reply: Reply) {
        *self.shared.reply.lock().unwrap() = reply;
    }

    /// Every query received so far.
    pub fn queries(&self) -> Vec<Query> {
        self.shared.queries.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(socket: &UdpSocket, shared: &Shared) {
    let mut buf = [0u8; 1500];
    while !shared.stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => panic!("DNS server: {e}"),
        };
        let Some((query, question)) = parse(&buf[..len]) else {
            continue;
        };
        shared.queries.lock().unwrap().push(query.clone());
        let reply = shared.reply.lock().unwrap().clone();
        if let Some(response) = respond(&buf[..len], question, query.qtype, &reply) {
            let _ = socket.send_to(&response, peer);
        }
    }
}

/// The query's question and where its raw bytes end (after QTYPE and QCLASS).
fn parse(message: &[u8]) -> Option<(Query, usize)> {
    if message.len() < 12 || u16::from_be_bytes([message[4], message[5]]) != 1 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*message.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        let label = message.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*message.get(at)?, *message.get(at + 1)?]);
    let end = at + 4;
    (end <= message.len()).then_some(())?;
    let name = labels.join(".");
    Some((Query { name, qtype }, end))
}

/// The response to `query` (whose question ends at `question_end`), none to stay
/// silent.
fn respond(query: &[u8], question_end: usize, qtype: u16, reply: &Reply) -> Option<Vec<u8>> {
    let (rcode, answers): (u16, Vec<(u16, Vec<u8>, u32)>) = match reply {
        Reply::Silent => return None,
        Reply::NxDomain => (NXDOMAIN, Vec::new()),
        Reply::ServFail => (SERVFAIL, Vec::new()),
        Reply::Records { v4, v6, ttl } => {
            let records = match qtype {
                TYPE_A => (v4.iter())
                    .map(|a| (TYPE_A, a.octets().to_vec(), *ttl))
                    .collect(),
                TYPE_AAAA => (v6.iter())
                    .map(|a| (TYPE_AAAA, a.octets().to_vec(), *ttl))
                    .collect(),
                _ => Vec::new(),
            };
            (NOERROR, records)
        }
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[0..2]); // ID
    let rd = u16::from_be_bytes([query[2], query[3]]) & 0x0100;
    let flags: u16 = 0x8000 | 0x0400 | rd | 0x0080 | rcode; // QR, AA, RD, RA, RCODE
    out.extend_from_slice(&flags.to_be_bytes());
    let count = u16::try_from(answers.len()).expect("few answers");
    for n in [1, count, 0, 0] {
        out.extend_from_slice(&u16::to_be_bytes(n));
    }
    out.extend_from_slice(&query[12..question_end]);
    for (rtype, data, ttl) in answers {
        out.extend_from_slice(&0xC00Cu16.to_be_bytes()); // the question's name
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        let len = u16::try_from(data.len()).expect("short record");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}
