//! Resolving a `dns` source: the A and AAAA records of one name, asked of the
//! system's resolvers (`/etc/resolv.conf`) or of the source's `resolver`.
//!
//! Every lookup builds its own resolver, so nothing is cached here: the refresh
//! decides when to ask again (on its schedule, and no sooner than the answer's TTL).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use hickory_resolver::{
    ResolveError, TokioResolver,
    config::{NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts},
    name_server::TokioConnectionProvider,
    proto::{
        ProtoErrorKind,
        op::ResponseCode,
        rr::{RData, RecordType},
    },
};
use thiserror::Error;

/// One answer: the addresses of the A and AAAA records, and how long it may be
/// kept before the name is asked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// Sorted, deduplicated; empty for a name with neither A nor AAAA records.
    pub(crate) addrs: Vec<IpAddr>,
    /// The smallest TTL of the records (of the negative answer when there are none);
    /// zero when the answer gave none.
    pub(crate) ttl: Duration,
}

/// Why a name gave no answer. The set in force stays, as for a failed fetch.
#[derive(Debug, Error)]
pub enum DnsError {
    #[error("{name}: the name does not exist (NXDOMAIN)")]
    NxDomain { name: String },
    #[error("{name}: the DNS server answered {code} (RCODE {})", u16::from(*.code))]
    Refused { name: String, code: ResponseCode },
    #[error("{name}: no answer from {servers} within {timeout:?} ({attempts} attempts)")]
    Timeout {
        name: String,
        servers: String,
        timeout: Duration,
        attempts: usize,
    },
    #[error("cannot read the system's DNS configuration: {0}")]
    SystemConfig(ResolveError),
    #[error("{name}: {error}")]
    Lookup { name: String, error: ResolveError },
}

/// How a name is asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Query<'a> {
    pub name: &'a str,
    /// The server asked; the system's when `None`.
    pub resolver: Option<SocketAddr>,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first one.
    pub retries: u32,
}

/// Asks for the A and AAAA records of the name.
pub(crate) async fn resolve(query: &Query<'_>) -> Result<Answer, DnsError> {
    let resolver = resolver(query)?;
    // Fully qualified: the system's search domains never apply.
    let fqdn = match query.name.ends_with('.') {
        true => query.name.to_owned(),
        false => format!("{}.", query.name),
    };
    let (v4, v6) = tokio::join!(
        lookup(&resolver, query, &fqdn, RecordType::A),
        lookup(&resolver, query, &fqdn, RecordType::AAAA),
    );
    let (mut v4, v6) = (v4?, v6?);
    v4.addrs.extend(v6.addrs);
    v4.addrs.sort_unstable();
    v4.addrs.dedup();
    let ttl = match (v4.ttl, v6.ttl) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or_default(),
    };
    Ok(Answer {
        addrs: v4.addrs,
        ttl,
    })
}

fn resolver(query: &Query<'_>) -> Result<TokioResolver, DnsError> {
    let provider = TokioConnectionProvider::default();
    let mut builder = match query.resolver {
        Some(addr) => {
            let servers = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            let config = ResolverConfig::from_parts(None, Vec::new(), servers);
            TokioResolver::builder_with_config(config, provider)
        }
        None => TokioResolver::builder(provider).map_err(DnsError::SystemConfig)?,
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.timeout = query.timeout;
    options.attempts = usize::try_from(query.retries).unwrap_or(usize::MAX) + 1;
    // The names are DNS names: /etc/hosts has no TTL and no say in them.
    options.use_hosts_file = ResolveHosts::Never;
    options.cache_size = 0;
    Ok(builder.build())
}

/// One record type's part of the answer.
struct Part {
    addrs: Vec<IpAddr>,
    ttl: Option<Duration>,
}

async fn lookup(
    resolver: &TokioResolver,
    query: &Query<'_>,
    fqdn: &str,
    record_type: RecordType,
) -> Result<Part, DnsError> {
    let name = query.name.to_owned();
    match resolver.lookup(fqdn, record_type).await {
        Ok(lookup) => {
            let mut addrs = Vec::new();
            let mut ttl: Option<u32> = None;
            for record in lookup.records() {
                let addr = match record.data() {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                    _ => continue,
                };
                addrs.push(addr);
                ttl = Some(ttl.map_or(record.ttl(), |t| t.min(record.ttl())));
            }
            let ttl = ttl.map(|t| Duration::from_secs(t.into()));
            Ok(Part { addrs, ttl })
        }
        Err(error) => {
            let kind = error.proto().map(|proto| proto.kind());
            match kind {
                Some(ProtoErrorKind::NoRecordsFound {
                    response_code: ResponseCode::NoError,
                    negative_ttl,
                    ..
                }) => Ok(Part {
                    addrs: Vec::new(),
                    ttl: negative_ttl.map(|t| Duration::from_secs(t.into())),
                }),
                Some(ProtoErrorKind::NoRecordsFound {
                    response_code: ResponseCode::NXDomain,
                    ..
                }) => Err(DnsError::NxDomain { name }),
                Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => {
                    Err(DnsError::Refused {
                        name,
                        code: *response_code,
                    })
                }
                Some(ProtoErrorKind::Timeout) => Err(DnsError::Timeout {
                    name,
                    servers: servers(resolver),
                    timeout: query.timeout,
                    attempts: resolver.options().attempts,
                }),
                _ => Err(DnsError::Lookup { name, error }),
            }
        }
    }
}

/// The servers asked, for messages.
fn servers(resolver: &TokioResolver) -> String {
    let mut addrs: Vec<String> = (resolver.config().name_servers().iter())
        .map(|server| server.socket_addr.to_string())
        .collect();
    addrs.dedup();
    addrs.join(", ")
}
