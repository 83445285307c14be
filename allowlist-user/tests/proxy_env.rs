//! Without a `proxy` key, fetches follow the environment (HTTPS_PROXY, NO_PROXY), as
//! the agent does under systemd with `Environment=` in a drop-in; `proxy = "none"`
//! ignores it. A test binary of its own: it sets process-wide environment variables.
#![allow(
    unused_crate_dependencies,
    reason = "an integration test is its own crate and uses only some of the package's dependencies"
)]

use std::time::Duration;

use allowlist_tests::{
    connect_proxy::ConnectProxy,
    provider_server::{ProviderServer, Response},
};
use allowlist_user::{Conditional, FetchErrorKind, FetchOptions, FetchSettings, Fetcher, Proxy};
use reqwest::Url;

#[test]
fn https_proxy_and_no_proxy_from_the_environment() {
    let proxy = ConnectProxy::start();
    for name in ["ALL_PROXY", "all_proxy", "https_proxy", "no_proxy"] {
        // SAFETY: the only test of this binary, before any other thread of ours reads
        // the environment (the proxy's thread does not).
        unsafe { std::env::remove_var(name) };
    }
    // SAFETY: as above.
    unsafe {
        std::env::set_var("HTTPS_PROXY", proxy.url());
        std::env::set_var("NO_PROXY", "localhost");
    }
    let server = ProviderServer::start();
    server.set("/ips.txt", Response::ok("192.0.2.1\n"));
    let settings = FetchSettings {
        timeout: Duration::from_secs(3),
        retries: 0,
        ca_file: Some(server.ca_file().to_owned()),
        ..FetchSettings::default()
    };
    let fetcher = Fetcher::new(FetchOptions::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fetch = |url: String, settings: &FetchSettings| {
        runtime.block_on(fetcher.fetch(
            &Url::parse(&url).unwrap(),
            settings,
            &Conditional::default(),
        ))
    };
    assert_eq!(settings.proxy, Proxy::Environment);
    let by_ip = server.url("/ips.txt");
    let by_name = format!("https://localhost:{}/ips.txt", server.addr().port());

    // HTTPS_PROXY applies.
    fetch(by_ip.clone(), &settings).unwrap();
    assert_eq!(proxy.tunnels(), 1);
    // NO_PROXY exempts localhost.
    fetch(by_name, &settings).unwrap();
    assert_eq!(proxy.tunnels(), 1);
    // proxy = "none" ignores the environment.
    let direct = FetchSettings {
        proxy: Proxy::Direct,
        ..settings.clone()
    };
    fetch(by_ip, &direct).unwrap();
    assert_eq!(proxy.tunnels(), 1);
    assert_eq!(server.hits("/ips.txt"), 3);

    // A failure through the environment's proxy names it.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = fetch(format!("https://{gone}/ips.txt"), &settings).unwrap_err();
    assert!(matches!(err.kind, FetchErrorKind::Proxy { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "cannot connect through the proxy {}/ (from the environment)",
            proxy.url()
        )),
        "{err}"
    );
}
