//! The flood: forged TCP SYNs from a pool of random sources, sent through an
//! AF_PACKET socket on the client's end of the veth, from a thread pinned to one CPU.
//!
//! Not the end-to-end tests' `World::syn_flood`: that one builds a frame per packet
//! from 100 addresses and keeps the default send buffer, which caps the packets in
//! flight at a few hundred, so the receive CPU's backlog (1,000 packets) could never
//! overflow and its losses would not show. Here the frames are built once,
//! `sendmmsg` sends them 64 to a call past the qdisc layer (`PACKET_QDISC_BYPASS`;
//! a veth has no qdisc anyway) and the send buffer is raised well above the backlog.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use allowlist_tests::{
    netns::enter,
    world::{CLIENT_MAC, SERVER_MAC, SERVER_V4, SERVER_V6},
};
use anyhow::{Context as _, Result, bail};
use rand::{Rng as _, rngs::StdRng};

/// Frames per `sendmmsg` call.
const BATCH: usize = 64;
/// The send buffer: far above what the backlog can hold (1,000 frames of about
/// 800 bytes of truesize each), so the sender never waits for the receiver.
const SEND_BUFFER: libc::c_int = 64 << 20;

/// The frames a flood sends round and round: whole batches of frames of one length.
pub(crate) struct Frames {
    bytes: Vec<u8>,
    len: usize,
}

impl Frames {
    /// SYNs to the server's :443 (its IPv4 address, or its IPv6 one) from `sources`,
    /// one frame each (Ethernet, IP without options or extension headers, TCP without
    /// options), with random source ports and sequence numbers; the pool is rounded
    /// down to whole batches, at least one. The sources must be of one family, so that
    /// the frames are of one length.
    pub(crate) fn syns(rng: &mut StdRng, sources: &[IpAddr]) -> Self {
        let whole = sources.len() / BATCH * BATCH;
        assert!(whole > 0, "a flood needs a batch of {BATCH} sources");
        let mut bytes = Vec::new();
        let mut len = 0;
        for src in &sources[..whole] {
            let eth = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC);
            let ip = match src {
                IpAddr::V4(src) => eth.ipv4(src.octets(), SERVER_V4.octets(), 64),
                IpAddr::V6(src) => eth.ipv6(src.octets(), SERVER_V6.octets(), 64),
            };
            let builder = ip
                .tcp(rng.random_range(1024..=65535), 443, rng.random(), 64240)
                .syn();
            let before = bytes.len();
            builder.write(&mut bytes, &[]).expect("build a SYN");
            let written = bytes.len() - before;
            if len == 0 {
                len = written;
            }
            assert_eq!(written, len, "a flood's sources are of one family");
        }
        Self { bytes, len }
    }

    /// Frames in the pool.
    pub(crate) fn count(&self) -> usize {
        self.bytes.len() / self.len
    }
}

/// A running flood; stopped (and its thread joined) by [`Sender::stop`] or on drop.
pub(crate) struct Sender {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Sender {
    /// Starts sending `frames` (a multiple of the batch), round and round, out of
    /// `interface` in the namespace at `netns`, from a thread pinned to `cpu`; at most
    /// `rate` frames per second when given.
    pub(crate) fn start(
        netns: PathBuf,
        interface: &str,
        frames: Arc<Frames>,
        cpu: usize,
        rate: Option<u64>,
    ) -> Result<Self> {
        let count = frames.count();
        if count == 0 || !count.is_multiple_of(BATCH) {
            bail!("the flood needs whole batches of {BATCH} frames");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let interface = interface.to_owned();
        let handle = std::thread::Builder::new()
            .name("flood".into())
            .spawn(move || {
                enter(&netns).context("join the client namespace")?;
                pin_to(cpu)?;
                let socket = PacketSocket::open(&interface)?;
                socket.flood(&frames, rate, &s)
            })
            .context("start the flood thread")?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Fails if the thread has stopped on its own (it only stops on an error).
    pub(crate) fn check(&mut self) -> Result<()> {
        if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
            return self.stop();
        }
        Ok(())
    }

    /// Stops the flood and reports the thread's error, if it had one.
    pub(crate) fn stop(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| anyhow::anyhow!("the flood thread panicked"))?
                .context("the flood"),
            None => Ok(()),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET stays inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set is valid for its size.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("pin the flood to CPU {cpu}"));
    }
    Ok(())
}

struct PacketSocket {
    fd: libc::c_int,
    addr: libc::sockaddr_ll,
}

impl PacketSocket {
    /// A send-only AF_PACKET socket (protocol 0: it receives nothing) on `interface`
    /// of the calling thread's namespace.
    fn open(interface: &str) -> Result<Self> {
        let name = std::ffi::CString::new(interface)?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error()).context(format!("interface {interface}"));
        }
        // SAFETY: plain socket(2); checked below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: an all-zero sockaddr_ll is valid; the fields used are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&SERVER_MAC);
        let socket = Self { fd, addr };
        socket.set(
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            SEND_BUFFER,
            "SO_SNDBUFFORCE",
        )?;
        socket.set(
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            1,
            "PACKET_QDISC_BYPASS",
        )?;
        Ok(socket)
    }

    fn set(
        &self,
        level: libc::c_int,
        option: libc::c_int,
        value: libc::c_int,
        name: &str,
    ) -> Result<()> {
        // SAFETY: the option value is a c_int, passed with its size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                level,
                option,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context(name.to_owned());
        }
        Ok(())
    }

    /// Sends `frames` round and round until `stop`. A frame the veth refuses (its
    /// peer's backlog is full: counted as a loss there) is sent again.
    ///
    /// Paced to `rate` frames per second when given: after each call, the thread spins
    /// until the frames sent so far are due (its CPU is the sender's alone, or in the
    /// receive-on-the-sender's-CPU cases shared only with the softirq it measures;
    /// sleeping would overshoot by tens of microseconds, a batch's worth).
    fn flood(&self, frames: &Frames, rate: Option<u64>, stop: &AtomicBool) -> Result<()> {
        let count = frames.count();
        let mut iovecs: Vec<libc::iovec> = frames
            .bytes
            .chunks_exact(frames.len)
            .map(|frame| libc::iovec {
                iov_base: frame.as_ptr().cast_mut().cast(),
                iov_len: frames.len,
            })
            .collect();
        let mut messages: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero msghdr is valid; name and iov are set below.
                let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                header.msg_name = (&raw const self.addr).cast_mut().cast();
                header.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                header.msg_iov = iov;
                header.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: header,
                    msg_len: 0,
                }
            })
            .collect();
        let mut next = 0;
        let mut started = Instant::now();
        let mut sent: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: BATCH messages from `next` are inside `messages` (count is a
            // multiple of BATCH); each points at a live iovec, frame and address.
            let rc =
                unsafe { libc::sendmmsg(self.fd, messages[next..].as_mut_ptr(), BATCH as u32, 0) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    // The device or its queue pushed back: try again.
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => continue,
                    _ => return Err(err).context("sendmmsg"),
                }
            }
            let done = rc as usize;
            next = (next + done) % count;
            // Keep calls on batch boundaries after a partial send.
            next -= next % BATCH;
            if let Some(rate) = rate {
                sent += done as u64;
                let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                let now = Instant::now();
                if now > due {
                    // Behind (held up, or the pace is above what it can send): the
                    // schedule starts again from here instead of catching up in a
                    // burst above the pace.
                    started = now;
                    sent = 0;
                }
                while Instant::now() < due && !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            }
        }
        Ok(())
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: fd is open and owned by this socket.
        unsafe { libc::close(self.fd) };
    }
}
