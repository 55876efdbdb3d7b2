//! Connections the proxy opens and handshakes itself (to the target, and
//! for the spool replayer): request/response multiplexing over the proxy's
//! own stream ids, with per-request timeouts.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::codec::{FrameDecoder, LinkState};
use super::compression::Compression;
use super::frame::{opcode, DecodeRules, Frame, StreamMap, StreamSet};
use super::link::{spawn_writer, FrameReader, Outbound};
use super::tls::{self, Connector};
use super::wire::{put_long_string, put_string, put_string_map, Reader};

/// Where an upstream listens and how to reach it: one host (the source
/// node a proxy fronts) or several contact points of one cluster (the
/// target), tried in turn.
#[derive(Clone)]
pub struct Endpoint {
    hosts: Arc<[HostPort]>,
    pub tls: Option<Connector>,
    pub connect_timeout: Duration,
    /// Where the next connection starts, so that links spread over the
    /// contact points.
    next: Arc<AtomicUsize>,
    /// When each host last refused or timed out (`None`: never, or it
    /// answered since); such a host is tried last for a while.
    failed_at: Arc<Mutex<Vec<Option<Instant>>>>,
}

/// One `host:port` of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// `host:port`, an IPv6 host in brackets.
    pub fn address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// How long a host that failed is tried after the others.
const FAILED_HOST_BACKOFF: Duration = Duration::from_secs(10);

/// Parses a comma-separated list of `host`, `host:port`, `[v6]:port` or a
/// bare IPv6 address; entries without a port get `default_port`.
pub fn parse_hosts(list: &str, default_port: u16) -> Result<Vec<HostPort>, UpstreamError> {
    let bad = |entry: &str| UpstreamError::BadAddress(entry.to_owned());
    let mut hosts = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad(entry))?;
            match after.strip_prefix(':') {
                Some(port) => (host, port.parse().map_err(|_| bad(entry))?),
                None if after.is_empty() => (host, default_port),
                None => return Err(bad(entry)),
            }
        } else {
            match entry.matches(':').count() {
                1 => {
                    let (host, port) = entry.split_once(':').ok_or_else(|| bad(entry))?;
                    (host, port.parse().map_err(|_| bad(entry))?)
                }
                // A bare IPv6 address, or a name.
                _ => (entry, default_port),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(bad(entry));
        }
        hosts.push(HostPort {
            host: host.to_owned(),
            port,
        });
    }
    if hosts.is_empty() {
        return Err(bad(list));
    }
    Ok(hosts)
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            self.address(),
            if self.tls.is_some() { " (tls)" } else { "" }
        )
    }
}

impl Endpoint {
    pub fn new(hosts: Vec<HostPort>, tls: Option<Connector>, connect_timeout: Duration) -> Self {
        let failed_at = Arc::new(Mutex::new(vec![None; hosts.len()]));
        Self {
            hosts: hosts.into(),
            tls,
            connect_timeout,
            next: Arc::new(AtomicUsize::new(0)),
            failed_at,
        }
    }

    /// The hosts, comma-separated, for logs and errors.
    pub fn address(&self) -> String {
        self.hosts
            .iter()
            .map(HostPort::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The order to try the hosts in: round robin from the next start,
    /// hosts that failed recently last.
    fn attempt_order(&self) -> Vec<usize> {
        let n = self.hosts.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        let failed = self.failed_at.lock().unwrap_or_else(|e| e.into_inner());
        order.sort_by_key(|&i| failed[i].is_some_and(|t| t.elapsed() < FAILED_HOST_BACKOFF));
        order
    }

    fn mark(&self, index: usize, failed: bool) {
        let mut all = self.failed_at.lock().unwrap_or_else(|e| e.into_inner());
        all[index] = failed.then(Instant::now);
    }

    /// Opens the TCP (and TLS) connection to the first host that takes it.
    pub async fn open(&self) -> Result<(tls::BoxRead, tls::BoxWrite), UpstreamError> {
        self.open_indexed().await.map(|(_, streams)| streams)
    }

    /// The same endpoint with only the host at `index` (the host a
    /// connection went to, to reach the same node again).
    pub fn only(&self, index: usize) -> Endpoint {
        let host = self.hosts.get(index).cloned().into_iter().collect();
        Endpoint::new(host, self.tls.clone(), self.connect_timeout)
    }

    /// `open`, with the index of the host that took the connection.
    async fn open_indexed(&self) -> Result<(usize, (tls::BoxRead, tls::BoxWrite)), UpstreamError> {
        let mut last = None;
        for index in self.attempt_order() {
            match self.open_host(&self.hosts[index]).await {
                Ok(streams) => {
                    self.mark(index, false);
                    return Ok((index, streams));
                }
                Err(e) => {
                    if self.hosts.len() > 1 {
                        debug!(host = %self.hosts[index].address(), error = %e, "upstream host failed, trying the next");
                    }
                    self.mark(index, true);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::BadAddress(self.address())))
    }

    async fn open_host(
        &self,
        host: &HostPort,
    ) -> Result<(tls::BoxRead, tls::BoxWrite), UpstreamError> {
        let addr = host.address();
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(addr.clone()))?
            .map_err(|source| UpstreamError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some(c) => c
                .connect(tcp, &host.host)
                .await
                .map_err(|e| UpstreamError::Tls(e.to_string())),
            None => Ok(tls::plain(tcp)),
        }
    }
}

/// A username and password; the password never appears in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// Reads a SASL PLAIN token (`authzid \0 user \0 password`).
    pub fn from_plain_token(token: &[u8]) -> Option<Self> {
        let mut parts = token.split(|b| *b == 0);
        let _authzid = parts.next()?;
        let user = std::str::from_utf8(parts.next()?).ok()?;
        let pass = std::str::from_utf8(parts.next()?).ok()?;
        Some(Self {
            username: user.to_owned(),
            password: pass.to_owned(),
        })
    }

    pub fn plain_token(&self) -> Vec<u8> {
        let mut t = Vec::with_capacity(self.username.len() + self.password.len() + 2);
        t.push(0);
        t.extend_from_slice(self.username.as_bytes());
        t.push(0);
        t.extend_from_slice(self.password.as_bytes());
        t
    }
}

/// How the proxy introduces itself to an upstream.
#[derive(Clone, Debug)]
pub struct Handshake {
    pub version: u8,
    /// STARTUP options (CQL_VERSION, COMPRESSION, DRIVER_NAME, ...).
    pub options: Vec<(String, String)>,
    pub credentials: Option<Credentials>,
    /// Keyspace to `USE` once connected.
    pub keyspace: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connection closed")]
    Closed,
    #[error("no free stream id (too many requests in flight)")]
    Busy,
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("server asked for authentication and no credentials are known")]
    NoCredentials,
    #[error("{0:?} is not a list of host or host:port")]
    BadAddress(String),
}

#[derive(Default)]
struct Waiters {
    map: StreamMap<oneshot::Sender<Frame>>,
    /// Ids whose caller gave up; kept reserved until the late answer comes.
    orphans: StreamSet,
    next: i16,
}

/// One handshaken connection to an upstream node.
pub struct Upstream {
    tx: mpsc::Sender<Outbound>,
    waiters: Arc<Mutex<Waiters>>,
    closed: Arc<AtomicBool>,
    pub version: u8,
    pub keyspace: Mutex<Option<String>>,
    /// Index of the endpoint's host this connection went to.
    pub host: usize,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("version", &self.version)
            .finish()
    }
}

impl Upstream {
    /// Connects and runs the handshake.
    pub async fn connect(
        endpoint: &Endpoint,
        handshake: &Handshake,
        max_frame_bytes: usize,
        timeout: Duration,
    ) -> Result<Arc<Self>, UpstreamError> {
        let (host, (read, write)) = endpoint.open_indexed().await?;
        let state = Arc::new(LinkState::default());
        state.set_compression(state_compression(&handshake.options));
        let (tx, rx) = mpsc::channel(1024);
        spawn_writer(write, state.clone(), rx);
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let closed = Arc::new(AtomicBool::new(false));
        let decoder = FrameDecoder::new(DecodeRules {
            max_frame_bytes,
            max_version: 5,
            expect_response: true,
        });
        let mut reader = FrameReader::new(read, decoder, state.clone());
        {
            let waiters = waiters.clone();
            let closed = closed.clone();
            let version = handshake.version;
            tokio::spawn(async move {
                loop {
                    match reader.next().await {
                        Ok(Some(frame)) => {
                            // Framing changes take effect before the next frame.
                            match frame.opcode {
                                opcode::READY | opcode::AUTHENTICATE if version >= 5 => {
                                    state.set_segmented_in();
                                    state.set_segmented_out();
                                }
                                opcode::READY | opcode::AUTH_SUCCESS if version < 5 => {
                                    state.enable_compress_out();
                                }
                                _ => {}
                            }
                            if frame.stream < 0 {
                                continue;
                            }
                            let mut w = waiters.lock().unwrap_or_else(|p| p.into_inner());
                            if w.orphans.remove(&frame.stream) {
                                continue;
                            }
                            if let Some(tx) = w.map.remove(&frame.stream) {
                                let _ = tx.send(frame);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            debug!(error = %e, "upstream read failed");
                            break;
                        }
                    }
                }
                closed.store(true, Ordering::Release);
                let mut w = waiters.lock().unwrap_or_else(|p| p.into_inner());
                w.map.clear();
                w.orphans.clear();
            });
        }
        let upstream = Arc::new(Self {
            tx,
            waiters,
            closed,
            version: handshake.version,
            keyspace: Mutex::new(None),
            host,
        });
        upstream.handshake(handshake, timeout).await?;
        Ok(upstream)
    }

    async fn handshake(&self, hs: &Handshake, timeout: Duration) -> Result<(), UpstreamError> {
        let mut body = BytesMut::new();
        put_string_map(&mut body, &hs.options);
        let reply = self
            .call(opcode::STARTUP, 0, body.freeze(), timeout)
            .await?;
        let reply = match reply.opcode {
            opcode::READY => reply,
            opcode::AUTHENTICATE => {
                let creds = hs
                    .credentials
                    .as_ref()
                    .ok_or(UpstreamError::NoCredentials)?;
                let mut body = BytesMut::new();
                let token = creds.plain_token();
                body.put_i32(token.len() as i32);
                body.put_slice(&token);
                self.call(opcode::AUTH_RESPONSE, 0, body.freeze(), timeout)
                    .await?
            }
            _ => reply,
        };
        if reply.opcode != opcode::READY && reply.opcode != opcode::AUTH_SUCCESS {
            return Err(UpstreamError::Handshake(describe_error(&reply)));
        }
        if let Some(ks) = &hs.keyspace {
            self.use_keyspace(ks, timeout).await?;
        }
        Ok(())
    }

    /// Runs `USE ks` and remembers it.
    pub async fn use_keyspace(&self, ks: &str, timeout: Duration) -> Result<(), UpstreamError> {
        let quoted = format!("USE \"{}\"", ks.replace('"', "\"\""));
        let reply = self.query(&quoted, timeout).await?;
        if reply.opcode != opcode::RESULT {
            return Err(UpstreamError::Handshake(describe_error(&reply)));
        }
        *self.keyspace.lock().unwrap_or_else(|p| p.into_inner()) = Some(ks.to_owned());
        Ok(())
    }

    /// A simple QUERY at consistency ONE.
    pub async fn query(&self, text: &str, timeout: Duration) -> Result<Frame, UpstreamError> {
        let mut body = BytesMut::new();
        put_long_string(&mut body, text);
        body.put_u16(0x0001);
        if self.version >= 5 {
            body.put_u32(0);
        } else {
            body.put_u8(0);
        }
        self.call(opcode::QUERY, 0, body.freeze(), timeout).await
    }

    /// PREPAREs `text`; returns the RESULT (or ERROR) frame.
    /// PREPAREs `text`; at v5 in `keyspace` (the per-request keyspace),
    /// before v5 in the connection's own.
    pub async fn prepare(
        &self,
        text: &str,
        keyspace: Option<&str>,
        timeout: Duration,
    ) -> Result<Frame, UpstreamError> {
        let mut body = BytesMut::new();
        put_long_string(&mut body, text);
        if self.version >= 5 {
            match keyspace {
                Some(ks) => {
                    body.put_u32(0x01);
                    put_string(&mut body, ks);
                }
                None => body.put_u32(0),
            }
        }
        self.call(opcode::PREPARE, 0, body.freeze(), timeout).await
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends OPTIONS on this link every `every` while it is in use.
    ///
    /// A link whose peer is gone without a FIN or RST (a node frozen or
    /// partitioned away) otherwise looks open until a write waits out its
    /// timeout on it; and middleboxes drop connections idle for long. When
    /// a heartbeat is not answered within `timeout` the link is marked
    /// closed, so the next request opens a new one, and `on_failure` is
    /// called. The task ends with the link.
    pub fn keep_alive(
        self: &Arc<Self>,
        every: Duration,
        timeout: Duration,
        on_failure: impl Fn() + Send + 'static,
    ) {
        let link = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(up) = link.upgrade() else {
                    return;
                };
                if up.is_closed() {
                    return;
                }
                let answer = up.call(opcode::OPTIONS, 0, Bytes::new(), timeout).await;
                if !matches!(answer, Ok(ref f) if f.opcode == opcode::SUPPORTED) {
                    warn!(
                        answer = ?answer.map(|f| opcode::name(f.opcode)),
                        "target link failed its heartbeat; it will be replaced"
                    );
                    up.closed.store(true, Ordering::Release);
                    on_failure();
                    return;
                }
            }
        });
    }

    /// Sends one request and waits for its answer.
    pub async fn call(
        &self,
        op: u8,
        flags: u8,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Frame, UpstreamError> {
        if self.is_closed() {
            return Err(UpstreamError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        let stream = {
            let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            let mut found = None;
            for _ in 0..=i16::MAX as usize {
                let id = w.next;
                w.next = if w.next == i16::MAX { 0 } else { w.next + 1 };
                if !w.map.contains_key(&id) && !w.orphans.contains(&id) {
                    found = Some(id);
                    break;
                }
            }
            let id = found.ok_or(UpstreamError::Busy)?;
            w.map.insert(id, tx);
            id
        };
        let mut frame = Frame::request(self.version, stream, op, body);
        frame.flags = flags;
        if self.tx.send(Outbound::Frame(frame)).await.is_err() {
            self.forget(stream, false);
            return Err(UpstreamError::Closed);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(UpstreamError::Closed),
            Err(_) => {
                self.forget(stream, true);
                Err(UpstreamError::Timeout(timeout))
            }
        }
    }

    fn forget(&self, stream: i16, orphan: bool) {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if w.map.remove(&stream).is_some() && orphan && !self.is_closed() {
            w.orphans.insert(stream);
        }
    }
}

fn state_compression(options: &[(String, String)]) -> Compression {
    let value = options
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("COMPRESSION"))
        .map(|(_, v)| v.as_str());
    Compression::from_option(value).unwrap_or(Compression::None)
}

/// "code 0x2200: message" for an ERROR frame, or the opcode otherwise.
pub fn describe_error(frame: &Frame) -> String {
    if frame.opcode != opcode::ERROR {
        return format!("unexpected {} response", opcode::name(frame.opcode));
    }
    let mut r = Reader::new(&frame.body);
    match (r.i32(), r.string()) {
        (Ok(code), Ok(msg)) => format!("error {code:#06x}: {msg}"),
        _ => "malformed error response".to_owned(),
    }
}

/// Logs and drops: used where a failure is only informative.
pub fn warn_failure(what: &str, err: &UpstreamError) {
    warn!(error = %err, "{what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lists_parse_with_default_ports() {
        let hp = |host: &str, port| HostPort {
            host: host.to_owned(),
            port,
        };
        assert_eq!(
            parse_hosts("a.b:9142, 10.0.0.2,[fd00::1]:9000,fd00::2,[fd00::3]", 9042).unwrap(),
            vec![
                hp("a.b", 9142),
                hp("10.0.0.2", 9042),
                hp("fd00::1", 9000),
                hp("fd00::2", 9042),
                hp("fd00::3", 9042)
            ]
        );
        assert_eq!(hp("fd00::1", 9000).address(), "[fd00::1]:9000");
        for bad in [
            "",
            " , ",
            "a:notaport",
            "[fd00::1",
            "[fd00::1]x",
            "a:0",
            ":9042",
        ] {
            assert!(parse_hosts(bad, 9042).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn links_rotate_over_hosts_and_go_around_one_that_refuses() {
        // Two listeners that answer, and a port nothing listens on.
        let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let port = |l: &tokio::net::TcpListener| l.local_addr().unwrap().port();
        let host = |port| HostPort {
            host: "127.0.0.1".into(),
            port,
        };
        let endpoint = Endpoint::new(
            vec![host(closed_port), host(port(&a)), host(port(&b))],
            None,
            Duration::from_secs(2),
        );
        let mut accepted = [0usize; 2];
        for _ in 0..6 {
            let (_r, _w) = endpoint.open().await.expect("a host that answers");
            tokio::select! {
                r = a.accept() => { r.unwrap(); accepted[0] += 1; }
                r = b.accept() => { r.unwrap(); accepted[1] += 1; }
            }
        }
        assert!(
            accepted[0] >= 2 && accepted[1] >= 2,
            "links spread over the answering hosts: {accepted:?}"
        );
        // The refusing host is now tried last.
        assert_eq!(endpoint.attempt_order().last(), Some(&0));
        // All down: the error names the last one tried.
        let down = Endpoint::new(vec![host(closed_port)], None, Duration::from_secs(2));
        assert!(matches!(
            down.open().await,
            Err(UpstreamError::Connect { .. })
        ));
    }

    #[test]
    fn plain_tokens_round_trip_and_debug_hides_password() {
        let c = Credentials {
            username: "u".into(),
            password: "secret".into(),
        };
        assert_eq!(
            Credentials::from_plain_token(&c.plain_token()),
            Some(c.clone())
        );
        assert!(!format!("{c:?}").contains("secret"));
        assert_eq!(Credentials::from_plain_token(b"nonul"), None);
    }
}
