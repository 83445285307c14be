//! The metrics port survives clients that open connections and never send anything
//! (issue 9, defect 8): they must neither exhaust the agent's descriptors nor end the
//! metrics server, and an accept error (EMFILE) must not end it either.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use allowlist_tests::{netns::require_root, world::*};

/// The agent's descriptor limit: the usual default soft limit, so that the test does
/// not depend on the host's.
const AGENT_NOFILE: u64 = 1024;
/// More idle connections than the agent has descriptors.
const IDLE_CONNECTIONS: usize = 1100;

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (the idle connections
/// are held here).
fn raise_own_nofile(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct they are given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < want {
            assert!(
                limit.rlim_max >= want,
                "this test needs {want} descriptors; the hard limit is {}",
                limit.rlim_max
            );
            limit.rlim_cur = want;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

/// GET `path` from the metrics port; an error rather than a panic when the port is
/// closed, refuses, or closes the connection without answering.
fn get(world: &World, port: u16, path: &str) -> Result<(u16, String), String> {
    let path = path.to_owned();
    world.server.run(move || {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| format!("write: {e}"))?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .map_err(|e| format!("read: {e}"))?;
        let code = reply
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no HTTP status in {reply:?}"))?;
        Ok((code, reply))
    })
}

fn answers(world: &World, port: u16, path: &str) -> bool {
    matches!(get(world, port, path), Ok((200, _)))
}

fn answers_within(world: &World, port: u16, path: &str, within: Duration) -> bool {
    wait_until(within, || answers(world, port, path))
}

/// Opens up to `n` connections to the metrics port from inside the server namespace
/// and keeps them open without sending anything; returns those that connected.
fn open_idle(world: &World, port: u16, n: usize) -> Vec<TcpStream> {
    world.server.run(move || {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        (0..n)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok())
            .collect()
    })
}

/// Descriptors the process `pid` has open, and the highest one.
fn open_fds(pid: i32) -> (u64, u64) {
    let mut count = 0;
    let mut highest = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/<pid>/fd") {
        let fd: u64 = entry
            .expect("fd entry")
            .file_name()
            .to_string_lossy()
            .parse()
            .expect("a descriptor number");
        count += 1;
        highest = highest.max(fd);
    }
    (count, highest)
}

fn assert_still_serving(world: &World, agent: &mut Agent) {
    assert!(
        agent.child.try_wait().expect("agent status").is_none(),
        "the agent exited:\n{}",
        agent.log()
    );
    world
        .exchange(IpAddr::V4(CLIENT_A), 443)
        .unwrap_or_else(|e| panic!("the filter no longer lets the allowed client in: {e}"));
}

#[test]
fn idle_connections_neither_exhaust_descriptors_nor_end_the_metrics_server() {
    if !require_root() {
        return;
    }
    raise_own_nofile(IDLE_CONNECTIONS as u64 + 256);
    let world = World::new();
    let port = world.free_port();
    let _provider = world.provider_publishing(
        &["192.0.2.0/24"],
        &format!("metrics = \"127.0.0.1:{port}\"\nrefresh = \"1h\""),
    );
    let mut agent = world.start_agent_with_nofile(AGENT_NOFILE);
    // The status file is written just before the metrics server binds.
    assert!(
        answers_within(&world, port, "/metrics", Duration::from_secs(10)),
        "/metrics before the idle connections:\n{}",
        agent.log()
    );

    let idle = open_idle(&world, port, IDLE_CONNECTIONS);
    let opened = idle.len();
    let (fds, _) = open_fds(agent.pid());
    let since = Instant::now();
    let answered = wait_until(Duration::from_secs(30), || {
        answers(&world, port, "/metrics")
    });
    let waited = since.elapsed();
    eprintln!(
        "{opened} idle connections held open (agent: {fds} descriptors right after); \
         /metrics answered after {waited:.1?}"
    );
    assert!(
        answered,
        "/metrics does not answer while {opened} idle connections are open \
         ({:?}):\n{}",
        get(&world, port, "/metrics").err(),
        agent.log()
    );
    assert!(
        opened as u64 >= AGENT_NOFILE,
        "only {opened} idle connections: too few to exhaust the agent's descriptors"
    );
    assert!(
        fds < AGENT_NOFILE,
        "the idle connections took {fds} of the agent's descriptors"
    );
    assert_still_serving(&world, &mut agent);

    drop(idle);
    assert!(
        answers_within(&world, port, "/metrics", Duration::from_secs(10)),
        "/metrics after the idle connections closed:\n{}",
        agent.log()
    );
    assert!(
        answers_within(&world, port, "/healthz", Duration::from_secs(10)),
        "/healthz after the idle connections closed: {:?}\n{}",
        get(&world, port, "/healthz"),
        agent.log()
    );
    assert_still_serving(&world, &mut agent);
}

/// Fewer descriptors than connections, whatever the connection cap: accept fails
/// with EMFILE, which must be logged and retried, not end the server.
#[test]
fn accept_errors_do_not_end_the_metrics_server() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let port = world.free_port();
    let _provider = world.provider_publishing(
        &["192.0.2.0/24"],
        &format!("metrics = \"127.0.0.1:{port}\"\nrefresh = \"1h\""),
    );
    let mut agent = world.start_agent_with_nofile(AGENT_NOFILE);
    assert!(
        answers_within(&world, port, "/metrics", Duration::from_secs(10)),
        "/metrics at start:\n{}",
        agent.log()
    );

    // Room for 16 more descriptors in the running agent: new descriptors take the
    // lowest free numbers, and at least 16 below the limit are free.
    let (count, highest) = open_fds(agent.pid());
    let limit = libc::rlimit {
        rlim_cur: count + 16,
        rlim_max: AGENT_NOFILE,
    };
    // SAFETY: prlimit reads the struct it is given and writes nothing (null old).
    let rc = unsafe {
        libc::prlimit(
            agent.pid(),
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    eprintln!(
        "agent: {count} descriptors open (highest {highest}); soft limit now {}",
        limit.rlim_cur
    );

    let idle = open_idle(&world, port, 40);
    let opened = idle.len();
    let since = Instant::now();
    let answered = wait_until(Duration::from_secs(40), || {
        answers(&world, port, "/metrics")
    });
    eprintln!(
        "{opened} idle connections held open; /metrics answered after {:.1?}",
        since.elapsed()
    );
    let log = agent.log();
    assert!(
        answered,
        "/metrics does not answer after accept errors ({:?}):\n{log}",
        get(&world, port, "/metrics").err()
    );
    assert!(
        log.contains("Too many open files"),
        "the agent never ran out of descriptors, so accept errors went untested:\n{log}"
    );
    assert_still_serving(&world, &mut agent);
    drop(idle);
    assert!(
        answers_within(&world, port, "/healthz", Duration::from_secs(10)),
        "/healthz after the idle connections closed: {:?}\n{}",
        get(&world, port, "/healthz"),
        agent.log()
    );
}

/// `run --metrics` (what the DaemonSet passes: the pod's IP) wins over the
/// configuration's `metrics`.
#[test]
fn metrics_flag_overrides_the_configuration() {
    if !require_root() {
        return;
    }
    let world = World::new();
    let configured = world.free_port();
    let flagged = std::iter::repeat_with(|| world.free_port())
        .find(|p| *p != configured)
        .expect("a second free port");
    let _provider = world.provider_publishing(
        &["192.0.2.0/24"],
        &format!("metrics = \"127.0.0.1:{configured}\"\nrefresh = \"1h\""),
    );
    let log = world.dir.path().join("agent-flag.log");
    let agent = world.spawn_agent(&["--metrics", &format!("[127.0.0.1]:{flagged}")], &log);
    assert!(
        answers_within(&world, flagged, "/metrics", Duration::from_secs(20)),
        "/metrics at the --metrics address:\n{}",
        agent.log()
    );
    assert!(answers(&world, flagged, "/healthz"), "{}", agent.log());
    let unused = get(&world, configured, "/metrics");
    assert!(
        unused.as_ref().is_err_and(|e| e.contains("refused")),
        "the configuration's address is not served: {unused:?}"
    );
}
