//! A minimal HTTP CONNECT proxy on 127.0.0.1, for tests of fetching through a proxy:
//! it reads `CONNECT host:port HTTP/1.1` and the headers, connects upstream, answers
//! `200 Connection established` (or 502 when upstream is unreachable), then copies
//! both ways. It counts the tunnels it opened.
//!
//! Like [`crate::provider_server`], it runs on its own thread with its own runtime, so
//! it works from sync and async tests alike, and stops when dropped.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

/// A running proxy; stops when dropped.
pub struct ConnectProxy {
    addr: SocketAddr,
    tunnels: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ConnectProxy {
    pub fn start() -> Self {
        let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("listener address");
        let tunnels = Arc::new(AtomicUsize::new(0));
        let counter = tunnels.clone();
        let (tx, rx) = oneshot::channel();
        let thread = thread::Builder::new()
            .name("connect-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(serve(listener, counter, rx));
                runtime.shutdown_background();
            })
            .expect("spawn proxy thread");
        ConnectProxy {
            addr,
            tunnels,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many tunnels it opened (CONNECTs answered 200).
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::SeqCst)
    }
}

impl Drop for ConnectProxy {
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
    tunnels: Arc<AtomicUsize>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                tokio::spawn(tunnel(client, tunnels.clone()));
            }
        }
    }
}

async fn tunnel(mut client: TcpStream, tunnels: Arc<AtomicUsize>) -> std::io::Result<()> {
    // Byte by byte, so that nothing after the head (the TLS ClientHello) is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || client.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split(' ');
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        return client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .await;
    };
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            .await;
    };
    tunnels.fetch_add(1, Ordering::SeqCst);
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
