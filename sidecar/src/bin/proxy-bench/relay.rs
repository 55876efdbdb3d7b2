//! The floor a proxy is measured against: a relay that copies bytes between
//! each client connection and the source node and does nothing else (no CQL
//! parsing, no mirroring, no metrics), on the same kind of runtime as the
//! proxy with one worker (tokio's current-thread runtime).
//!
//! Whatever the relay costs per request at a given rate is what any
//! event-driven proxy on this machine pays to be woken, to read and to
//! write; the proxy's cost above it is its own work. It runs as a child
//! process (this binary, started with [`RELAY_ENV`] set), so that its CPU
//! time and wake-ups come from `/proc` like the proxy's.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};

/// Set to `<listen address> <upstream address>` to make this binary a relay.
pub const RELAY_ENV: &str = "PROXY_BENCH_RELAY";

/// The relay's `(listen, upstream)` addresses when this process was started
/// as one.
pub fn requested() -> Option<(String, String)> {
    let spec = std::env::var(RELAY_ENV).ok()?;
    let (listen, upstream) = spec.split_once(' ')?;
    Some((listen.to_owned(), upstream.to_owned()))
}

/// Serves as a relay until killed.
pub fn run(listen: &str, upstream: &str) -> anyhow::Result<()> {
    let listen: SocketAddr = listen
        .parse()
        .with_context(|| format!("relay listen address {listen:?}"))?;
    let upstream: SocketAddr = upstream
        .parse()
        .with_context(|| format!("relay upstream address {upstream:?}"))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the relay's runtime")?
        .block_on(async move {
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("relay binding {listen}"))?;
            loop {
                let (client, _) = listener.accept().await.context("relay accept")?;
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (mut client, mut server) = (client, server);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        })
}

/// Starts this binary as a relay from `listen` to `upstream` (by
/// `command`, which runs the binary it is given: directly, or under a
/// profiler); the caller waits until it accepts connections.
pub fn spawn(mut command: Command, listen: &str, upstream: &str) -> anyhow::Result<Child> {
    command
        .env(RELAY_ENV, format!("{listen} {upstream}"))
        .stdout(Stdio::null())
        .spawn()
        .context("starting the relay")
}
