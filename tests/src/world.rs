//! The end-to-end test world: a server namespace and a client namespace joined by a
//! veth pair, TCP servers on :443 and :80, clients with several source addresses,
//! a local HTTPS provider, and the real `allowlist` binary run as a process.
//!
//! ```text
//!  client ns                                   server ns
//!  <id>c: 192.0.2.10  198.51.100.10 ...  <->   <id>s: 192.0.2.1 ...   XDP filter
//!         2001:db8:a::10  2001:db8:b::10              2001:db8:a::1  ...
//!                                               :443 :80 (TCP), provider (HTTPS, 127.0.0.1)
//!                                               allowlist run (the agent)
//! ```
//! Everything is removed on drop: the agent is killed, the pins under this world's own
//! `pin_dir` deleted, the namespaces (and the veth with them) deleted.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};

use crate::{
    netns::{Netns, unique_id},
    provider_server::ProviderServer,
};

pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 1);
/// Client source addresses, one per documentation range (and two IPv6 /64s).
pub const CLIENT_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const CLIENT_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const CLIENT_C: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const CLIENT_A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 0x10);
pub const CLIENT_B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x10);
pub const SERVER_MAC: [u8; 6] = [0x02, 0xa1, 0, 0, 0, 1];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0xa1, 0, 0, 0, 2];

/// How long a connection attempt that the filter drops is given before it counts as
/// timed out. Allowed connections on a veth complete in well under a millisecond.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct World {
    pub id: String,
    pub server: Netns,
    pub client: Netns,
    pub server_if: String,
    pub client_if: String,
    pub dir: tempfile::TempDir,
    pub pin_dir: PathBuf,
    stop: Arc<AtomicBool>,
    servers: Vec<thread::JoinHandle<()>>,
}

fn hex(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl World {
    pub fn new() -> Self {
        let id = unique_id();
        let server = Netns::new(&format!("{id}-srv"));
        let client = Netns::new(&format!("{id}-cli"));
        let server_if = format!("{id}s");
        let client_if = format!("{id}c");
        let dir = tempfile::tempdir().expect("temp dir");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/allowlist-test-{id}"));
        let mut world = Self {
            id,
            server,
            client,
            server_if,
            client_if,
            dir,
            pin_dir,
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        world.create_veth();
        world.start_tcp_server(443);
        world.start_tcp_server(80);
        world
    }

    /// The veth pair between the namespaces, with every address, up.
    pub fn create_veth(&self) {
        let (server, client) = (&self.server, &self.client);
        let (server_if, client_if) = (&self.server_if, &self.client_if);
        crate::netns::ip(&[
            "link",
            "add",
            server_if,
            "address",
            &hex(SERVER_MAC),
            "netns",
            server.name(),
            "type",
            "veth",
            "peer",
            "name",
            client_if,
            "address",
            &hex(CLIENT_MAC),
            "netns",
            client.name(),
        ]);
        for net in ["192.0.2.1/24", "198.51.100.1/24", "203.0.113.1/24"] {
            server.ip(&["addr", "add", net, "dev", server_if]);
        }
        for net in ["2001:db8:a::1/64", "2001:db8:b::1/64"] {
            server.ip(&["addr", "add", net, "dev", server_if, "nodad"]);
        }
        for net in ["192.0.2.10/24", "198.51.100.10/24", "203.0.113.10/24"] {
            client.ip(&["addr", "add", net, "dev", client_if]);
        }
        for net in ["2001:db8:a::10/64", "2001:db8:b::10/64"] {
            client.ip(&["addr", "add", net, "dev", client_if, "nodad"]);
        }
        server.ip(&["link", "set", server_if, "up"]);
        client.ip(&["link", "set", client_if, "up"]);
    }

    /// Deletes the veth pair (both ends), as an operator or a CNI would.
    pub fn delete_veth(&self) {
        self.server.ip(&["link", "del", &self.server_if]);
    }

    fn start_tcp_server(&mut self, port: u16) {
        let stop = self.stop.clone();
        let listener = self.server.run(move || {
            let sock = Socket::new(Domain::IPV6, Type::STREAM, None).expect("socket");
            sock.set_only_v6(false).expect("dual stack");
            sock.set_reuse_address(true).expect("reuseaddr");
            sock.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())
                .expect("bind server port");
            sock.listen(1024).expect("listen");
            let listener: TcpListener = sock.into();
            listener.set_nonblocking(true).expect("non-blocking");
            listener
        });
        self.servers.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        thread::spawn(move || serve_http(stream, port));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// A provider HTTPS server on 127.0.0.1 inside the server namespace, where the
    /// agent runs.
    pub fn provider(&self) -> ProviderServer {
        let listener = self
            .server
            .run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind provider"));
        ProviderServer::start_on(listener)
    }

    /// A provider publishing `outbound`, and this world's config with `top` (extra
    /// top-level keys) and a provider "partner" reading it.
    pub fn provider_publishing(&self, outbound: &[&str], top: &str) -> ProviderServer {
        let provider = self.provider();
        provider.set(
            DOCUMENT_PATH,
            crate::provider_server::Response::json(intercom_document(outbound)),
        );
        self.write_config(&self.config(top, &provider_toml("partner", &provider)));
        provider
    }

    /// Whether an XDP program is attached to the server's interface.
    pub fn xdp_attached(&self) -> bool {
        let out = crate::run(self.server.command("ip").args([
            "-d",
            "link",
            "show",
            "dev",
            &self.server_if,
        ]));
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }

    /// A packet counter from `allowlist status`: `reason` (allowlisted,
    /// not_allowlisted, ...) and `action` (pass, drop, would_drop).
    pub fn counter(&self, reason: &str, action: &str) -> u64 {
        self.status()["counters"]["packets"][reason][action]
            .as_u64()
            .unwrap_or(0)
    }

    /// Panics unless a connection from `src` to :443 times out: the filter dropped
    /// its SYN. `context` (the agent's log, say) explains a failure.
    pub fn assert_denied(&self, src: IpAddr, context: &str) {
        match self.exchange(src, 443) {
            Ok(()) => panic!("{src} is not listed and must not get in\n{context}"),
            Err(e) => assert!(
                e.contains("timed out"),
                "{src}: expected a timeout, got {e}\n{context}"
            ),
        }
    }

    /// A free TCP port on the server namespace's loopback (for metrics).
    pub fn free_port(&self) -> u16 {
        self.server.run(|| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("allowlist.toml")
    }

    /// A config with this world's interface, directories, and `providers` (TOML).
    pub fn config(&self, extra_top: &str, providers: &str) -> String {
        format!(
            "interfaces = [\"{}\"]\nports = [443]\nstate_dir = \"{}\"\npin_dir = \"{}\"\n{extra_top}\n{providers}\n",
            self.server_if,
            self.state_dir().display(),
            self.pin_dir.display()
        )
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// Runs the CLI (`allowlist <args> --config <this world's config>`) in the server
    /// namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.server
            .command(binary())
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .output()
            .expect("run the allowlist CLI")
    }

    /// `allowlist status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Starts the agent with the config written by `write_config`, and waits until it
    /// has attached and written its status.
    pub fn start_agent(&self) -> Agent {
        let log = self
            .dir
            .path()
            .join(format!("agent-{}.log", Instant::now().elapsed().as_nanos()));
        let agent = self.spawn_agent(&[], &log);
        self.wait_attached(&agent);
        agent
    }

    pub fn spawn_agent(&self, extra: &[&str], log: &Path) -> Agent {
        self.spawn_agent_with(self.server.command(binary()), extra, log)
    }

    /// Starts `command` (the agent binary, or a wrapper that runs it in the server
    /// namespace, such as `ip netns exec`) with `run`, `extra` and this world's config.
    pub fn spawn_agent_with(&self, mut command: Command, extra: &[&str], log: &Path) -> Agent {
        let file = std::fs::File::create(log).expect("agent log");
        let child = command
            .arg("run")
            .args(extra)
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the agent");
        Agent {
            child,
            log: log.to_owned(),
        }
    }

    /// `start_agent` with the agent's RLIMIT_NOFILE soft limit set to `soft`, so that
    /// a test of descriptor exhaustion sees the same limit on every host.
    pub fn start_agent_with_nofile(&self, soft: u64) -> Agent {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0,
            "getrlimit: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            soft <= limit.rlim_max,
            "RLIMIT_NOFILE {soft} is above the hard limit {}",
            limit.rlim_max
        );
        limit.rlim_cur = soft;
        let log = self
            .dir
            .path()
            .join(format!("agent-{}.log", Instant::now().elapsed().as_nanos()));
        let mut command = self.server.command(binary());
        // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let agent = self.spawn_agent_with(command, &[], &log);
        self.wait_attached(&agent);
        agent
    }

    /// Waits until `agent` has written its pid and a status with interfaces.
    pub fn wait_attached(&self, agent: &Agent) {
        let state = self.state_dir();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pid_ok = std::fs::read_to_string(state.join("allowlist.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .is_some_and(|pid| pid == agent.child.id());
            let status_ok = std::fs::read_to_string(state.join("status.json"))
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .is_some_and(|v| {
                    v["pid"].as_u64() == Some(u64::from(agent.child.id()))
                        && v["interfaces"].as_array().is_some_and(|a| !a.is_empty())
                });
            if pid_ok && status_ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not attach within 20 s:\n{}",
                agent.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// One TCP connection from `src` to the server's `port` and an HTTP exchange on it.
    pub fn exchange(&self, src: IpAddr, port: u16) -> Result<(), String> {
        self.client
            .run(move || exchange(src, port, CONNECT_TIMEOUT))
    }

    /// GET `path` from the agent's metrics endpoint.
    pub fn http_get(&self, port: u16, path: &str) -> (u16, String) {
        let path = path.to_owned();
        self.server.run(move || {
            let mut s =
                TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect to metrics");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            let code = body
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            (code, body)
        })
    }

    /// A client connecting from `src` in a loop until stopped.
    pub fn client_loop(&self, src: IpAddr, port: u16) -> ClientLoop {
        self.client_loop_with_timeout(src, port, CONNECT_TIMEOUT)
    }

    pub fn client_loop_with_timeout(
        &self,
        src: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let handle = self.client.spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match exchange(src, port, timeout) {
                    Ok(()) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => f.lock().unwrap().push(e),
                }
                thread::sleep(Duration::from_millis(2));
            }
        });
        ClientLoop {
            stop,
            ok,
            failed,
            handle: Some(handle),
        }
    }

    /// Sends one raw Ethernet frame from the client's end of the veth.
    pub fn send_frame(&self, frame: Vec<u8>) {
        let ifname = self.client_if.clone();
        self.client.run(move || {
            let socket = PacketSocket::open(&ifname);
            let sent = socket.send(&frame);
            assert_eq!(
                sent,
                frame.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        });
    }

    /// Sends forged SYNs to :443 from 100 addresses in 198.51.100.0/24 through a raw
    /// socket on the client's interface, as fast as it can, until stopped.
    pub fn syn_flood(&self) -> Flood {
        self.syn_flood_from(|i| IpAddr::V4(Ipv4Addr::new(198, 51, 100, 100 + (i % 100) as u8)))
    }

    /// Like [`Self::syn_flood`], the `i`th SYN from `source(i)`.
    pub fn syn_flood_from(&self, source: impl Fn(u32) -> IpAddr + Send + 'static) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), sent.clone());
        let ifname = self.client_if.clone();
        let handle = self.client.spawn(move || {
            let socket = PacketSocket::open(&ifname);
            let mut i: u32 = 0;
            while !s.load(Ordering::Relaxed) {
                i = i.wrapping_add(1);
                if socket.send(&syn_frame(source(i), i)) > 0 {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                if i.is_multiple_of(64) {
                    thread::yield_now();
                }
            }
        });
        Flood {
            stop,
            sent,
            handle: Some(handle),
        }
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// An AF_PACKET socket that sends raw frames out of one interface to the server's
/// MAC address; closed on drop.
struct PacketSocket {
    fd: i32,
    addr: libc::sockaddr_ll,
}

impl PacketSocket {
    /// Opens it on `ifname`, in the calling thread's network namespace.
    fn open(ifname: &str) -> Self {
        // SAFETY: plain socket(2); checked below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let c = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: an all-zero sockaddr_ll is valid; the fields used are set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        // SAFETY: c is a valid NUL-terminated name.
        addr.sll_ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) } as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&SERVER_MAC);
        Self { fd, addr }
    }

    /// sendto(2)'s result: the bytes sent, or -1.
    fn send(&self, frame: &[u8]) -> isize {
        // SAFETY: frame and addr are valid for the lengths passed.
        unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const self.addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        }
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: fd is open and owned by this socket.
        unsafe { libc::close(self.fd) };
    }
}

/// A TCP SYN to the server's :443 from `src`, as the client's interface sends it.
pub fn syn_frame(src: IpAddr, seq: u32) -> Vec<u8> {
    let eth = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC);
    let ip = match src {
        IpAddr::V4(src) => eth.ipv4(src.octets(), SERVER_V4.octets(), 64),
        IpAddr::V6(src) => eth.ipv6(src.octets(), SERVER_V6.octets(), 64),
    };
    let builder = ip.tcp(40000 + (seq % 20000) as u16, 443, seq, 64240).syn();
    let mut out = Vec::with_capacity(builder.size(0));
    builder.write(&mut out, &[]).expect("build SYN");
    out
}

fn serve_http(mut stream: TcpStream, port: u16) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("hello from :{port}\n");
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Connect from `src`, send a request, expect `200` and the server's greeting.
pub fn exchange(src: IpAddr, port: u16, timeout: Duration) -> Result<(), String> {
    let dst: SocketAddr = match src {
        IpAddr::V4(_) => (SERVER_V4, port).into(),
        IpAddr::V6(_) => (SERVER_V6, port).into(),
    };
    let sock =
        Socket::new(Domain::for_address(dst), Type::STREAM, None).map_err(|e| e.to_string())?;
    sock.bind(&SocketAddr::new(src, 0).into())
        .map_err(|e| format!("bind {src}: {e}"))?;
    sock.connect_timeout(&dst.into(), timeout)
        .map_err(|e| format!("connect {src} -> {dst}: {e}"))?;
    let mut stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| format!("read from {dst}: {e}"))?;
    if reply.starts_with("HTTP/1.1 200") && reply.contains(&format!("hello from :{port}")) {
        Ok(())
    } else {
        Err(format!("unexpected reply from {dst}: {reply:?}"))
    }
}

/// The path of the `allowlist` binary under test: `ALLOWLIST_BIN`, else the one built
/// beside this test executable (`cargo xtask test` builds it first).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ALLOWLIST_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("allowlist");
    assert!(
        bin.is_file(),
        "{} not found: build it first with `cargo build -p allowlist-user` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A running agent process; killed on drop.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the agent") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct ClientLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl ClientLoop {
    pub fn successes(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the loop; returns (successes, failures).
    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            std::mem::take(&mut *self.failed.lock().unwrap()),
        )
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Flood {
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An Intercom-shaped provider document: `outbound` as INTERCOM-OUTBOUND ranges, plus
/// Intercom's own infrastructure range (203.0.113.0/24, CLIENT_C's), which must never
/// be allowed.
pub fn intercom_document(outbound: &[&str]) -> String {
    let mut items: Vec<serde_json::Value> = outbound
        .iter()
        .map(|r| serde_json::json!({ "range": r, "region": "US", "service": "INTERCOM-OUTBOUND" }))
        .collect();
    items.push(serde_json::json!({ "range": "203.0.113.0/24", "region": "US", "service": "INTERCOM-GENERAL" }));
    serde_json::json!({ "ip_ranges": items, "date": "2026-11-23" }).to_string()
}

/// The path the provider serves its document at.
pub const DOCUMENT_PATH: &str = "/intercom-ip-ranges.json";

/// A `[[provider]]` named `name` whose one source is `provider`'s document, selected as
/// the `intercom-*` presets select Intercom's (short timeout, no retries: tests).
pub fn provider_toml(name: &str, provider: &ProviderServer) -> String {
    provider_toml_with(name, provider, "1s", 0)
}

/// [`provider_toml`] with the source's own `timeout` (a duration, `"5s"`) and `retries`.
pub fn provider_toml_with(
    name: &str,
    provider: &ProviderServer,
    timeout: &str,
    retries: u32,
) -> String {
    format!(
        r#"
[[provider]]
name = "{name}"
[[provider.source]]
url = "{}"
format = "json"
items = "ip_ranges"
cidr = "range"
where = {{ service = "INTERCOM-OUTBOUND" }}
ca_file = "{}"
timeout = "{timeout}"
retries = {retries}
"#,
        provider.url(DOCUMENT_PATH),
        provider.ca_file().display()
    )
}

/// A `[[provider]]` named `name` whose one source is the static list `prefixes`.
pub fn static_provider_toml(name: &str, prefixes: &[&str]) -> String {
    let list: Vec<String> = prefixes.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "\n[[provider]]\nname = \"{name}\"\n[[provider.source]]\nstatic = [{}]\n",
        list.join(", ")
    )
}

/// The value of one sample in a Prometheus exposition.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `Command` output helper: stdout+stderr as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `Command` for `allowlist` outside any test world (presets, --version).
pub fn plain_command() -> Command {
    Command::new(binary())
}
