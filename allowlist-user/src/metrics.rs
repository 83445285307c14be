//! Prometheus metrics at `/metrics` and a health check at `/healthz`.
//!
//! Everything is read at scrape time: packet counters and hits from the pinned maps
//! (so they keep counting across agent restarts), the rest from the agent's status.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::UNIX_EPOCH,
};

use allowlist_common::{MAX_PREFIXES_V4, MAX_PREFIXES_V6, Reason, maps as names};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{datapath::Maps, status::AgentStatus};

/// What the agent shares with the endpoint.
pub type SharedStatus = Arc<RwLock<Option<AgentStatus>>>;

#[derive(Debug)]
struct AgentCollector {
    status: SharedStatus,
    pin_dir: PathBuf,
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

/// Serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    status: SharedStatus,
    pin_dir: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics at /metrics and health at /healthz");
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentCollector {
        status: status.clone(),
        pin_dir,
    }));
    let registry = Arc::new(registry);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let registry = registry.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, registry.clone(), status.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
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
