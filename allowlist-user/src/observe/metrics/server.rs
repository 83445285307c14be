//! The HTTP endpoint: `/metrics` and `/healthz`, with bounds on what clients hold.

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::{net::TcpListener, sync::Semaphore, time::Instant};

use crate::denied::SharedDenied;

use super::{SharedStatus, collector::AgentCollector};

/// What a client may hold of the metrics server. Scrapers and probes need a handful of
/// short connections; these bounds keep idle or slow clients from using up the agent's
/// descriptors (which the maps, the links and the fetches need too).
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Connections served at once; a connection beyond them is accepted and closed at
    /// once, so that neither descriptors nor the listen backlog pile up.
    pub(super) connections: usize,
    /// Time for a client to send its request's headers.
    pub(super) header_read: Duration,
    /// Time for a whole connection: one request and its response (no keep-alive).
    pub(super) connection: Duration,
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

pub(super) async fn serve_on(
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
pub(super) struct Throttle {
    every: Duration,
    last: Option<Instant>,
    events: u64,
}

impl Throttle {
    pub(super) fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            events: 0,
        }
    }

    /// Counts an event; `Some(events since the last report)` when it is time to report.
    pub(super) fn event(&mut self, now: Instant) -> Option<u64> {
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
