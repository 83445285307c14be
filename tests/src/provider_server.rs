//! A local HTTPS "provider": serves published lists from a map of path → [`Response`]
//! that a test changes while it runs, with precise control over faults (status,
//! validators and 304s, a delay before the headers, a body that trickles, a body of a
//! given size, a sequence of answers on one path). Plain hand-written HTTP/1.1, one
//! request per connection.
//!
//! The server runs on its own thread with its own runtime, so it works from sync and
//! async tests alike, and stops when dropped. Its certificate is issued by a
//! [`TestCa`]; give the agent [`ProviderServer::ca_file`] as `ca_file`.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdTcpListener},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::oneshot,
};
use tokio_rustls::TlsAcceptor;

/// A certificate authority for tests.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate (PEM) to `path`.
    pub fn write_pem(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.pem())
    }

    /// Issues a server certificate for the names and IP addresses in `sans`.
    pub fn issue(&self, sans: &[String]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        self.issue_with(sans, false)
    }

    /// Issues a server certificate for `sans`; an `expired` one was valid in 2020 only.
    pub fn issue_with(
        &self,
        sans: &[String],
        expired: bool,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("generate server key");
        let mut params = CertificateParams::new(sans.to_vec()).expect("server params");
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "allowlist test provider");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign server cert");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }
}

/// What the server answers on one path.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// Sent as `ETag`; a request whose If-None-Match holds it gets 304.
    pub etag: Option<String>,
    /// Sent as `Last-Modified`; a request whose If-Modified-Since equals it gets 304.
    pub last_modified: Option<String>,
    /// Wait before sending anything.
    pub delay: Duration,
    /// Send the body `chunk` bytes at a time, pausing `interval` before each chunk.
    pub trickle: Option<(usize, Duration)>,
    /// Use chunked transfer encoding instead of Content-Length (the size is then
    /// unknown to the client until it has read the body).
    pub chunked: bool,
}

impl Response {
    /// 200 with a body.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Response {
            status: 200,
            body: body.into(),
            headers: Vec::new(),
            etag: None,
            last_modified: None,
            delay: Duration::ZERO,
            trickle: None,
            chunked: false,
        }
    }

    /// 200 with a JSON body, served as `binary/octet-stream` like PagerDuty does, to
    /// check that clients don't gate on the content type.
    pub fn json(value: impl ToString) -> Self {
        Response::ok(value.to_string()).header("Content-Type", "binary/octet-stream")
    }

    /// A status with a short text body.
    pub fn status(status: u16) -> Self {
        Response {
            status,
            ..Response::ok(format!("status {status}\n"))
        }
    }

    /// A redirect (302) to `location`.
    pub fn redirect(location: impl AsRef<str>) -> Self {
        Response::status(302).header("Location", location.as_ref())
    }

    /// 200 with a body of `size` bytes (comment lines of a text list).
    pub fn of_size(size: usize) -> Self {
        let mut body = Vec::with_capacity(size);
        while body.len() < size {
            body.extend_from_slice(
                b"# padding padding padding padding padding padding padding pad\n",
            );
        }
        body.truncate(size);
        Response::ok(body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn etag(mut self, etag: &str) -> Self {
        self.etag = Some(etag.to_owned());
        self
    }

    pub fn last_modified(mut self, date: &str) -> Self {
        self.last_modified = Some(date.to_owned());
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn trickle(mut self, chunk: usize, interval: Duration) -> Self {
        self.trickle = Some((chunk.max(1), interval));
        self
    }

    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    /// The request target, query included.
    pub target: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

#[derive(Default)]
struct Shared {
    /// The answers on each path: the first is served and removed while more follow;
    /// the last one stays.
    routes: HashMap<String, Vec<Response>>,
    requests: Vec<Request>,
}

/// A running server; stops when dropped.
pub struct ProviderServer {
    addr: SocketAddr,
    ca: Arc<TestCa>,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
    shared: Arc<Mutex<Shared>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Options for [`ProviderServer::builder`].
pub struct Builder {
    listener: Option<StdTcpListener>,
    ca: Option<Arc<TestCa>>,
    sans: Vec<String>,
    only_sans: bool,
    expired: bool,
}

impl Builder {
    /// Serve on an already-bound listener (for example one bound inside a network
    /// namespace). Default: an ephemeral port on 127.0.0.1.
    pub fn listener(mut self, listener: StdTcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Issue the server certificate from this CA (default: a fresh one).
    pub fn ca(mut self, ca: Arc<TestCa>) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Another name or IP address for the certificate (localhost, 127.0.0.1, ::1 and
    /// the listener's address are always included).
    pub fn san(mut self, name: impl Into<String>) -> Self {
        self.sans.push(name.into());
        self
    }

    /// Certificate names: only the ones given with [`Builder::san`], not the default
    /// loopback names (for a name mismatch).
    pub fn only_sans(mut self) -> Self {
        self.only_sans = true;
        self
    }

    /// Serve a certificate that expired (in 2020).
    pub fn expired(mut self) -> Self {
        self.expired = true;
        self
    }

    pub fn start(self) -> ProviderServer {
        let listener = match self.listener {
            Some(l) => l,
            None => StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0"),
        };
        let addr = listener.local_addr().expect("listener address");
        let ca = self
            .ca
            .unwrap_or_else(|| Arc::new(TestCa::new("allowlist test CA")));
        let mut sans: Vec<String> = Vec::new();
        if !self.only_sans {
            sans = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            if !addr.ip().is_unspecified() {
                sans.push(addr.ip().to_string());
            }
        }
        for san in self.sans {
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let (certs, key) = ca.issue_with(&sans, self.expired);
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = dir.path().join("provider-ca.pem");
        ca.write_pem(&ca_file).expect("write CA file");

        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, rx) = oneshot::channel();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let thread_shared = shared.clone();
        let thread = thread::Builder::new()
            .name("provider-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("server runtime");
                runtime.block_on(serve(listener, acceptor, thread_shared, rx));
                runtime.shutdown_background();
            })
            .expect("spawn server thread");
        ProviderServer {
            addr,
            ca,
            ca_file,
            _dir: dir,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }
}

impl ProviderServer {
    /// A server on an ephemeral loopback port with its own CA.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// A server on an already-bound listener.
    pub fn start_on(listener: StdTcpListener) -> Self {
        Self::builder().listener(listener).start()
    }

    pub fn builder() -> Builder {
        Builder {
            listener: None,
            ca: None,
            sans: Vec::new(),
            only_sans: false,
            expired: false,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://<address>:<port>` (loopback when the listener is on 0.0.0.0 / ::).
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("https://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The URL of a path (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    pub fn ca(&self) -> &Arc<TestCa> {
        &self.ca
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A PEM file holding the CA, removed when the server is dropped.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Serves `response` on `path` from now on.
    pub fn set(&self, path: &str, response: Response) {
        self.set_sequence(path, vec![response]);
    }

    /// Serves `responses` on `path`, one per request, in order; the last one then
    /// stays.
    pub fn set_sequence(&self, path: &str, responses: Vec<Response>) {
        assert!(!responses.is_empty(), "a sequence needs a response");
        self.shared
            .lock()
            .unwrap()
            .routes
            .insert(path.to_owned(), responses);
    }

    /// Stops serving `path` (it answers 404).
    pub fn remove(&self, path: &str) {
        self.shared.lock().unwrap().routes.remove(path);
    }

    /// How many requests reached `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path() == path)
            .count()
    }

    /// Every request to `path`, oldest first.
    pub fn requests(&self, path: &str) -> Vec<Request> {
        self.shared
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path() == path)
            .cloned()
            .collect()
    }

    /// The latest request to `path`.
    pub fn last_request(&self, path: &str) -> Option<Request> {
        self.requests(path).pop()
    }
}

impl Drop for ProviderServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: StdTcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Mutex<Shared>>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    // Handshake failures (a client that distrusts our CA) end here.
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = handle(tls, shared).await;
                    }
                });
            }
        }
    }
}

async fn read_head<S: AsyncReadExt + Unpin>(stream: &mut S) -> io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    let end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > 64 * 1024 {
            return Ok(None);
        }
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let target = first.next().unwrap_or("").to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Some(Request {
        method,
        target,
        headers,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn handle<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    mut stream: S,
    shared: Arc<Mutex<Shared>>,
) -> io::Result<()> {
    let Some(request) = read_head(&mut stream).await? else {
        return Ok(());
    };
    let response = {
        let mut shared = shared.lock().unwrap();
        shared.requests.push(request.clone());
        shared
            .routes
            .get_mut(request.path())
            .map(|answers| match answers.len() {
                1 => answers[0].clone(),
                _ => answers.remove(0),
            })
    };
    let response = response.unwrap_or_else(|| Response::status(404));
    if !response.delay.is_zero() {
        tokio::time::sleep(response.delay).await;
    }
    let not_modified = response.status == 200
        && (response
            .etag
            .as_deref()
            .zip(request.header("if-none-match"))
            .is_some_and(|(etag, inm)| {
                inm.split(',').any(|t| t.trim() == etag || t.trim() == "*")
            })
            || response
                .last_modified
                .as_deref()
                .zip(request.header("if-modified-since"))
                .is_some_and(|(lm, ims)| lm == ims));
    let status = if not_modified { 304 } else { response.status };
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\n",
        reason(status)
    );
    if let Some(etag) = &response.etag {
        head.push_str(&format!("ETag: {etag}\r\n"));
    }
    if let Some(lm) = &response.last_modified {
        head.push_str(&format!("Last-Modified: {lm}\r\n"));
    }
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body: &[u8] = if not_modified || request.method == "HEAD" {
        &[]
    } else {
        &response.body
    };
    if response.chunked && !not_modified {
        head.push_str("Transfer-Encoding: chunked\r\n");
    } else {
        head.push_str(&format!(
            "Content-Length: {}\r\n",
            if not_modified { 0 } else { response.body.len() }
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await?;
    let (chunk_size, interval) = response.trickle.unwrap_or((64 * 1024, Duration::ZERO));
    for chunk in body.chunks(chunk_size) {
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        if response.chunked {
            stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            stream.write_all(chunk).await?;
            stream.write_all(b"\r\n").await?;
        } else {
            stream.write_all(chunk).await?;
        }
        stream.flush().await?;
    }
    if response.chunked && !not_modified {
        stream.write_all(b"0\r\n\r\n").await?;
    }
    stream.flush().await?;
    stream.shutdown().await
}
