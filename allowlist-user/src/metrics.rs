//! Prometheus metrics at `/metrics` and a health check at `/healthz`.
//!
//! Everything is read at scrape time: packet counters and hits from the pinned maps
//! (so they keep counting across agent restarts), the rest from the agent's status.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, UNIX_EPOCH},
};

use allowlist_common::{MAX_PREFIXES_V4, MAX_PREFIXES_V6, Reason, maps as names};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore, time::Instant};

use crate::{
    datapath::Maps,
    denied::{DeniedMetrics, SharedDenied},
    status::AgentStatus,
};

/// What the agent shares with the endpoint.
pub(crate) type SharedStatus = Arc<RwLock<Option<AgentStatus>>>;

#[derive(Debug)]
struct AgentCollector {
    status: SharedStatus,
    pin_dir: PathBuf,
    /// The denied sources' metrics, when the agent watches them.
    denied: Option<SharedDenied>,
}

type Labels = Vec<(&'static str, String)>;

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.status.read().expect("status lock").clone();
        let maps = Maps::open_pinned(&self.pin_dir).ok();

        if let Some(counters) = maps.as_ref().and_then(|m| m.counters().ok()) {
            let mut rows = Vec::new();
            for r in Reason::ALL {
                let action = if r.drops() { "drop" } else { "pass" };
                rows.push((
                    vec![
                        ("reason", r.name().to_owned()),
                        ("action", action.to_owned()),
                    ],
                    counters.exit(r),
                ));
                if r.drops() {
                    rows.push((
                        vec![
                            ("reason", r.name().to_owned()),
                            ("action", "would_drop".to_owned()),
                        ],
                        counters.would_drop(r),
                    ));
                }
            }
            counter_family(
                &mut encoder,
                "allowlist_packets",
                "Packets judged by the XDP filter, by reason and action.",
                &rows,
            )?;
            let rows: Vec<_> = counters
                .observed
                .iter()
                .map(|(what, v)| (vec![("what", (*what).to_owned())], *v))
                .collect();
            counter_family(
                &mut encoder,
                "allowlist_packets_observed",
                "Packets with a notable shape (VLAN tags, fragments, IP options, IPv6 extension headers), counted beside their verdict.",
                &rows,
            )?;
        }

        if let Some(denied) = &self.denied {
            let denied = denied.read().expect("denied metrics lock").clone();
            encode_denied(&mut encoder, &denied)?;
        }

        let Some(status) = status else {
            return Ok(());
        };
        if let Some(hits) = maps.as_ref().and_then(|m| m.hits(status.rule_slots()).ok()) {
            let rows: Vec<_> = status
                .providers
                .iter()
                .map(|p| {
                    (
                        vec![("provider", p.name.clone())],
                        hits.get(p.rule_id as usize).copied().unwrap_or(0),
                    )
                })
                .collect();
            counter_family(
                &mut encoder,
                "allowlist_provider_hits",
                "Packets let through because their source is in a provider's ranges.",
                &rows,
            )?;
        }
        let mut rows = Vec::new();
        for p in &status.providers {
            rows.push((
                vec![("provider", p.name.clone()), ("family", "ipv4".to_owned())],
                p.prefixes_v4 as f64,
            ));
            rows.push((
                vec![("provider", p.name.clone()), ("family", "ipv6".to_owned())],
                p.prefixes_v6 as f64,
            ));
        }
        gauge_family(
            &mut encoder,
            "allowlist_prefixes",
            "Prefixes in force per provider and address family.",
            &rows,
        )?;

        let mut rows = Vec::new();
        for (source, results) in &status.refresh_results {
            for (result, n) in results {
                rows.push((
                    vec![("source", source.clone()), ("result", result.clone())],
                    *n,
                ));
            }
        }
        counter_family(
            &mut encoder,
            "allowlist_refresh",
            "Refresh attempts per source and result (success, not_modified, failure, refused).",
            &rows,
        )?;

        let epoch = |t: std::time::SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        let rows: Vec<_> = status
            .sources
            .iter()
            .filter_map(|s| {
                s.last_success
                    .map(|t| (vec![("source", s.id.clone())], epoch(t)))
            })
            .collect();
        gauge_family(
            &mut encoder,
            "allowlist_refresh_last_success_timestamp_seconds",
            "When each source last refreshed successfully.",
            &rows,
        )?;
        let rows: Vec<_> = status
            .sources
            .iter()
            .map(|s| {
                (
                    vec![("source", s.id.clone())],
                    f64::from(s.consecutive_failures),
                )
            })
            .collect();
        gauge_family(
            &mut encoder,
            "allowlist_source_consecutive_failures",
            "Refresh attempts in a row that failed or were refused.",
            &rows,
        )?;
        let rows: Vec<_> = status
            .sources
            .iter()
            .map(|s| (vec![("source", s.id.clone())], s.refusals))
            .collect();
        counter_family(
            &mut encoder,
            "allowlist_guard_refusals",
            "Updates refused by the empty or shrink guard.",
            &rows,
        )?;
        gauge_family(
            &mut encoder,
            "allowlist_refresh_interval_seconds",
            "The configured refresh interval.",
            &[(vec![], status.refresh_interval_secs as f64)],
        )?;
        gauge_family(
            &mut encoder,
            "allowlist_map_entries",
            "Entries in the allowlist maps.",
            &[
                (
                    vec![("map", names::ALLOW_V4.to_owned())],
                    status.map_entries_v4 as f64,
                ),
                (
                    vec![("map", names::ALLOW_V6.to_owned())],
                    status.map_entries_v6 as f64,
                ),
            ],
        )?;
        gauge_family(
            &mut encoder,
            "allowlist_map_capacity",
            "Capacity of the allowlist maps.",
            &[
                (
                    vec![("map", names::ALLOW_V4.to_owned())],
                    MAX_PREFIXES_V4 as f64,
                ),
                (
                    vec![("map", names::ALLOW_V6.to_owned())],
                    MAX_PREFIXES_V6 as f64,
                ),
            ],
        )?;
        let rows: Vec<_> = status
            .interfaces
            .iter()
            .map(|i| {
                (
                    vec![("interface", i.name.clone())],
                    f64::from(u8::from(i.attached)),
                )
            })
            .collect();
        gauge_family(
            &mut encoder,
            "allowlist_interface_attached",
            "1 when the filter is attached to the configured interface, 0 when it is not filtered.",
            &rows,
        )?;
        counter_family(
            &mut encoder,
            "allowlist_state_write_failures",
            "Writes to state_dir (last good lists, the status file) that failed: a full or read-only state_dir.",
            &[(vec![], status.state_write_failures)],
        )?;
        let sync_ok = status.last_sync.as_ref().is_some_and(|s| s.error.is_none());
        gauge_family(
            &mut encoder,
            "allowlist_last_sync_success",
            "1 when the last map sync succeeded.",
            &[(vec![], f64::from(u8::from(sync_ok)))],
        )?;
        gauge_family(
            &mut encoder,
            "allowlist_info",
            "Agent version and mode.",
            &[(
                vec![
                    ("version", status.version.clone()),
                    ("mode", status.mode.clone()),
                ],
                1.0,
            )],
        )?;
        Ok(())
    }
}

/// The denied sources: packets from known senders, by sender (a preset or a
/// configured provider: bounded), kind and why; never a label per address.
fn encode_denied(
    encoder: &mut DescriptorEncoder,
    denied: &DeniedMetrics,
) -> Result<(), std::fmt::Error> {
    let rows: Vec<_> = (denied.known_packets.iter())
        .map(|((sender, kind, why), packets)| {
            (
                vec![
                    ("sender", sender.clone()),
                    ("kind", kind.label().to_owned()),
                    ("why", why.label().to_owned()),
                ],
                *packets,
            )
        })
        .collect();
    counter_family(
        encoder,
        "allowlist_denied_known_sender_packets",
        "Denied packets from sources that a preset or provider lists (estimates under a flood), by sender, kind (preset, provider) and why (not_configured, refused_update, removed_range, snapshot_only, in_force).",
        &rows,
    )?;
    gauge_family(
        encoder,
        "allowlist_denied_sources",
        "Distinct denied sources the agent keeps (see `allowlist denied`): known senders, and strangers (at most 1,000).",
        &[
            (
                vec![("sender", "known".to_owned())],
                denied.known_sources as f64,
            ),
            (
                vec![("sender", "stranger".to_owned())],
                denied.unknown_sources as f64,
            ),
        ],
    )
}

/// What a client may hold of the metrics server. Scrapers and probes need a handful of
/// short connections; these bounds keep idle or slow clients from using up the agent's
/// descriptors (which the maps, the links and the fetches need too).
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Connections served at once; a connection beyond them is accepted and closed at
    /// once, so that neither descriptors nor the listen backlog pile up.
    connections: usize,
    /// Time for a client to send its request's headers.
    header_read: Duration,
    /// Time for a whole connection: one request and its response (no keep-alive).
    connection: Duration,
}

const LIMITS: Limits = Limits {
    connections: 64,
    header_read: Duration::from_secs(5),
    connection: Duration::from_secs(30),
};

/// The pause after a failed accept (out of descriptors, a connection reset before it
/// was accepted) before accepting again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Repeated warnings (accept errors, connections turned away) are logged at most once
/// per this period.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Serves until `shutdown` resolves. Only a failure to bind is an error: a failed
/// accept is logged and retried.
pub(crate) async fn serve(
    addr: SocketAddr,
    status: SharedStatus,
    denied: Option<SharedDenied>,
    pin_dir: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics at /metrics and health at /healthz");
    serve_on(listener, status, denied, pin_dir, LIMITS, shutdown).await;
    Ok(())
}

async fn serve_on(
    listener: TcpListener,
    status: SharedStatus,
    denied: Option<SharedDenied>,
    pin_dir: PathBuf,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentCollector {
        status: status.clone(),
        pin_dir,
        denied,
    }));
    let registry = Arc::new(registry);
    let slots = Arc::new(Semaphore::new(limits.connections));
    let mut accept_failures = Throttle::new(WARN_EVERY);
    let mut turned_away = Throttle::new(WARN_EVERY);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if let Some(failures) = accept_failures.event(Instant::now()) {
                    tracing::warn!(error = %e, failures, "the metrics endpoint could not accept a connection; retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                    () = &mut shutdown => return,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            if let Some(closed) = turned_away.event(Instant::now()) {
                tracing::warn!(
                    limit = limits.connections,
                    closed,
                    "the metrics endpoint has too many open connections; closing new ones at once"
                );
            }
            continue;
        };
        let registry = registry.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, registry.clone(), status.clone()));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // Dropping the connection at the deadline closes it.
            let _ = tokio::time::timeout(limits.connection, connection).await;
            drop(slot);
        });
    }
}

/// Rate-limits a repeated warning: the first event is reported, then at most one per
/// period, each report with the number of events since the previous one.
#[derive(Debug)]
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    events: u64,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            events: 0,
        }
    }

    /// Counts an event; `Some(events since the last report)` when it is time to report.
    fn event(&mut self, now: Instant) -> Option<u64> {
        self.events += 1;
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.events))
    }
}

async fn respond(
    req: Request<hyper::body::Incoming>,
    registry: Arc<Registry>,
    status: SharedStatus,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |code: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(code)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    Ok(match req.uri().path() {
        "/metrics" => {
            // Reading the maps does blocking syscalls: off the async workers.
            let text = tokio::task::spawn_blocking(move || {
                let mut out = String::new();
                encode(&mut out, &registry).map(|()| out)
            })
            .await;
            match text {
                Ok(Ok(body)) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                _ => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n".to_owned(),
                ),
            }
        }
        "/healthz" => {
            let problems = match status.read().expect("status lock").as_ref() {
                Some(status) => status.problems(),
                None => vec!["the agent has not started yet".to_owned()],
            };
            if problems.is_empty() {
                reply(StatusCode::OK, "text/plain", "ok\n".to_owned())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {}\n", problems.join("; ")),
                )
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /healthz\n".to_owned(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
        sync::oneshot,
    };

    use super::*;

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
}
