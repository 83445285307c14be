use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    time::Instant,
};

use super::{
    collector::AgentCollector,
    server::{Limits, Throttle, serve_on},
    *,
};
use crate::denied::DeniedMetrics;

#[test]
fn denied_sources_are_exported_by_sender_kind_and_why_never_by_address() {
    use crate::denied::senders::{SenderKind, Why};
    let denied = DeniedMetrics {
        known_packets: [
            (
                (
                    "github-hooks".to_owned(),
                    SenderKind::Preset,
                    Why::NotConfigured,
                ),
                4,
            ),
            (
                (
                    "partner".to_owned(),
                    SenderKind::Provider,
                    Why::RefusedUpdate,
                ),
                7,
            ),
        ]
        .into(),
        known_sources: 2,
        unknown_sources: 1000,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentCollector {
        status: Arc::new(RwLock::new(None)),
        pin_dir: PathBuf::from("/nonexistent"),
        denied: Some(Arc::new(RwLock::new(denied))),
    }));
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    for line in [
        "allowlist_denied_known_sender_packets_total{sender=\"github-hooks\",kind=\"preset\",why=\"not_configured\"} 4",
        "allowlist_denied_known_sender_packets_total{sender=\"partner\",kind=\"provider\",why=\"refused_update\"} 7",
        "allowlist_denied_sources{sender=\"known\"} 2.0",
        "allowlist_denied_sources{sender=\"stranger\"} 1000.0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    // Without the watch, no denied metrics at all (rather than zeros).
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentCollector {
        status: Arc::new(RwLock::new(None)),
        pin_dir: PathBuf::from("/nonexistent"),
        denied: None,
    }));
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert!(!text.contains("allowlist_denied"), "{text}");
}

#[test]
fn throttle_reports_the_first_event_then_once_per_period() {
    let mut throttle = Throttle::new(Duration::from_secs(10));
    let t0 = Instant::now();
    assert_eq!(throttle.event(t0), Some(1));
    assert_eq!(throttle.event(t0 + Duration::from_secs(1)), None);
    assert_eq!(throttle.event(t0 + Duration::from_secs(9)), None);
    assert_eq!(throttle.event(t0 + Duration::from_secs(10)), Some(3));
    assert_eq!(throttle.event(t0 + Duration::from_secs(11)), None);
    assert_eq!(throttle.event(t0 + Duration::from_secs(30)), Some(2));
}

/// Reads until the server closes the connection, or fails after `within`.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> String {
    let mut reply = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut reply))
        .await
        .expect("the server closes the connection in time")
        .expect("read");
    String::from_utf8_lossy(&reply).into_owned()
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("write");
    read_to_close(&mut stream, Duration::from_secs(5)).await
}

#[tokio::test]
async fn idle_connections_are_bounded_and_timed_out() {
    let limits = Limits {
        connections: 2,
        header_read: Duration::from_millis(300),
        connection: Duration::from_secs(5),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(
        listener,
        Arc::new(RwLock::new(None)),
        None,
        PathBuf::from("/nonexistent"),
        limits,
        async move {
            let _ = stopped.await;
        },
    ));

    // Answers, one request per connection.
    let reply = get(addr, "/healthz").await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");

    let mut idle = Vec::new();
    for _ in 0..limits.connections {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Let the server accept them before the next one.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let reply = read_to_close(&mut extra, Duration::from_secs(1)).await;
    assert_eq!(
        reply, "",
        "a connection beyond the limit is closed unanswered"
    );
    assert!(started.elapsed() < limits.header_read, "closed at once");

    // The idle ones are closed at the header timeout, which frees their slots.
    for stream in &mut idle {
        read_to_close(stream, limits.header_read * 3).await;
    }
    let reply = get(addr, "/metrics").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .expect("the server ends on shutdown")
        .unwrap();
}
