//! Protocol edge cases through the proxy against real Cassandra 5.0, with a
//! hand-rolled client (the scylla driver only speaks v4): v5 segments with
//! and without lz4, multi-segment frames, v4 lz4/snappy frame compression,
//! the version cap, malformed frames.

mod proxy_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_sidecar::proxy::codec::{FrameDecoder, FrameEncoder, LinkState};
use ferry_sidecar::proxy::compression::Compression;
use ferry_sidecar::proxy::frame::{error_code, opcode, DecodeRules, Frame};
use ferry_sidecar::proxy::wire::{put_long_string, put_string_map, Reader};
use proxy_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct RawClient {
    tcp: TcpStream,
    state: Arc<LinkState>,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    buf: BytesMut,
    version: u8,
}

impl RawClient {
    async fn connect(addr: &str, version: u8) -> Self {
        Self {
            tcp: TcpStream::connect(addr).await.expect("connect to proxy"),
            state: Arc::new(LinkState::default()),
            decoder: FrameDecoder::new(DecodeRules {
                max_frame_bytes: 64 << 20,
                max_version: 5,
                expect_response: true,
            }),
            encoder: FrameEncoder::default(),
            buf: BytesMut::new(),
            version,
        }
    }

    async fn send(&mut self, stream: i16, op: u8, body: Bytes) {
        let mut out = BytesMut::new();
        let f = Frame::request(self.version, stream, op, body);
        self.encoder.encode(&self.state, &f, &mut out);
        self.encoder.flush(&self.state, &mut out);
        self.tcp.write_all(&out).await.expect("write");
    }

    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self
                .decoder
                .decode(&self.state, &mut self.buf)
                .expect("decodable answer")
            {
                return Some(f);
            }
            let n = tokio::time::timeout(Duration::from_secs(20), self.tcp.read_buf(&mut self.buf))
                .await
                .expect("answer in time")
                .expect("read");
            if n == 0 {
                return None;
            }
        }
    }

    async fn call(&mut self, stream: i16, op: u8, body: Bytes) -> Frame {
        self.send(stream, op, body).await;
        loop {
            let f = self.recv().await.expect("connection open");
            if f.stream == stream {
                return f;
            }
        }
    }

    /// OPTIONS, STARTUP; switches framing as the protocol says.
    async fn handshake(&mut self, compression: Option<&str>) {
        let supported = self.call(0, opcode::OPTIONS, Bytes::new()).await;
        assert_eq!(supported.opcode, opcode::SUPPORTED, "{supported:?}");
        let mut opts = vec![("CQL_VERSION".to_owned(), "3.0.0".to_owned())];
        if let Some(c) = compression {
            opts.push(("COMPRESSION".into(), c.into()));
            self.state
                .set_compression(Compression::from_option(Some(c)).expect("known"));
        }
        let mut body = BytesMut::new();
        put_string_map(&mut body, &opts);
        let ready = self.call(1, opcode::STARTUP, body.freeze()).await;
        assert_eq!(ready.opcode, opcode::READY, "{ready:?}");
        if self.version >= 5 {
            self.state.set_segmented_in();
            self.state.set_segmented_out();
        } else {
            self.state.enable_compress_out();
        }
    }

    async fn query(&mut self, stream: i16, text: &str) -> Frame {
        let mut body = BytesMut::new();
        put_long_string(&mut body, text);
        body.put_u16(1);
        if self.version >= 5 {
            body.put_u32(0);
        } else {
            body.put_u8(0);
        }
        self.call(stream, opcode::QUERY, body.freeze()).await
    }
}

fn result_kind(f: &Frame) -> i32 {
    assert_eq!(f.opcode, opcode::RESULT, "expected a RESULT, got {f:?}");
    result_reader(f).i32().expect("kind")
}

/// A reader at the start of a response body, past any warnings.
fn result_reader(f: &Frame) -> Reader<'_> {
    let start = ferry_sidecar::proxy::result::response_body_start(f.flags, &f.body)
        .expect("response header");
    let mut r = Reader::new(&f.body);
    r.skip(start).expect("body");
    r
}

async fn count_rows_direct(contact: &str, q: &str) -> usize {
    let s = connect(contact).await;
    s.query_unpaged(q, &[])
        .await
        .expect("direct read")
        .into_rows_result()
        .expect("rows")
        .rows_num()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_segments_and_v4_compression_work_end_to_end() {
    let tb = testbed(1);
    let (src, tgt) = (
        tb.source_contact_points[0].clone(),
        tb.target_contact_points[0].clone(),
    );
    let ks = keyspace("px_proto");
    let source = connect(&src).await;
    let target = connect(&tgt).await;
    create_keyspace(&source, &ks).await;
    create_keyspace(&target, &ks).await;
    ddl_both(
        &source,
        &target,
        &[format!(
            "CREATE TABLE {ks}.blobs (k int PRIMARY KEY, v text)"
        )],
    )
    .await;
    let proxy = start_proxy("127.0.0.44", &src, &tgt, &["--mode", "sync"]).await;
    let addr = proxy.addr.to_string();

    let cases: [(u8, Option<&str>); 5] = [
        (5, None),
        (5, Some("lz4")),
        (4, Some("lz4")),
        (4, Some("snappy")),
        (3, None),
    ];
    for (i, (version, compression)) in cases.into_iter().enumerate() {
        let mut c = RawClient::connect(&addr, version).await;
        c.handshake(compression).await;
        let r = c.query(2, "SELECT release_version FROM system.local").await;
        assert_eq!(result_kind(&r), 2, "v{version} {compression:?}");
        // 300 KB: more than two v5 segments' worth, written to both sides.
        let big = "x".repeat(300_000 + i);
        let r = c
            .query(
                3,
                &format!("INSERT INTO {ks}.blobs (k, v) VALUES ({i}, '{big}')"),
            )
            .await;
        assert_eq!(result_kind(&r), 1, "v{version} {compression:?} insert");
        let r = c
            .query(4, &format!("SELECT v FROM {ks}.blobs WHERE k = {i}"))
            .await;
        assert_eq!(result_kind(&r), 2);
        assert!(
            r.body.len() > 300_000,
            "big value read back through the proxy"
        );
    }
    let q = format!("SELECT k FROM {ks}.blobs");
    assert_eq!(count_rows_direct(&src, &q).await, 5);
    assert_eq!(count_rows_direct(&tgt, &q).await, 5);
    proxy.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_cap_and_malformed_frames_get_protocol_errors() {
    let tb = testbed(1);
    let (src, tgt) = (
        tb.source_contact_points[0].clone(),
        tb.target_contact_points[0].clone(),
    );
    let proxy = start_proxy("127.0.0.45", &src, &tgt, &["--protocol-version", "4"]).await;
    let addr = proxy.addr.to_string();

    // A v5 client is told to step down, in a v4 frame.
    let mut c = RawClient::connect(&addr, 5).await;
    c.send(0, opcode::OPTIONS, Bytes::new()).await;
    let err = c.recv().await.expect("an answer");
    assert_eq!(err.error_code(), Some(error_code::PROTOCOL_ERROR));
    assert_eq!(err.version, 4);
    let msg = String::from_utf8_lossy(&err.body[6..]).into_owned();
    assert!(
        msg.contains("Invalid or unsupported protocol version (5)"),
        "{msg}"
    );

    // SUPPORTED lists nothing above the cap.
    let mut ok = RawClient::connect(&addr, 4).await;
    let supported = ok.call(0, opcode::OPTIONS, Bytes::new()).await;
    let mut r = Reader::new(&supported.body);
    let map = r.string_multimap().expect("multimap");
    let versions = &map
        .iter()
        .find(|(k, _)| *k == "PROTOCOL_VERSIONS")
        .expect("versions")
        .1;
    assert!(
        versions
            .iter()
            .all(|v| !v.starts_with('5') && !v.starts_with('6')),
        "{versions:?}"
    );

    // Garbage: unknown opcode, then an oversized frame. Each gets an error.
    for raw in [
        vec![0x04u8, 0, 0, 7, 0x42, 0, 0, 0, 0],
        vec![0x04u8, 0, 0, 8, 0x07, 0x7f, 0xff, 0xff, 0xff],
    ] {
        let mut bad = TcpStream::connect(&addr).await.expect("connect");
        bad.write_all(&raw).await.expect("write");
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut buf))
            .await
            .expect("answered")
            .expect("read");
        assert!(n >= 13, "an ERROR frame, got {n} bytes");
        assert_eq!(buf[4], opcode::ERROR);
        assert_eq!(&buf[9..13], &error_code::PROTOCOL_ERROR.to_be_bytes());
    }
    // A bad body inside a good frame: error for that stream, connection lives.
    ok.handshake(None).await;
    let mut truncated = BytesMut::new();
    truncated.put_i32(1000);
    truncated.put_slice(b"SELECT");
    let err = ok.call(5, opcode::QUERY, truncated.freeze()).await;
    assert_eq!(err.error_code(), Some(error_code::PROTOCOL_ERROR));
    let r = ok
        .query(6, "SELECT release_version FROM system.local")
        .await;
    assert_eq!(result_kind(&r), 2, "the same connection still works");
    assert!(
        proxy
            .metric("ferry_proxy_client_protocol_errors_total")
            .await
            >= 3.0
    );
    proxy.stop().await.expect("stop");
}

/// PREPARE with v5's per-request keyspace (flag 0x01), or v4's after a
/// `USE` switch: the target must prepare the statement in that keyspace,
/// not in whatever keyspace the proxy's target link is in (which, for an
/// unqualified table, wrote to the wrong table or was refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_prepared_on_the_target_in_their_own_keyspace() {
    let tb = testbed(1);
    let (src, tgt) = (
        tb.source_contact_points[0].clone(),
        tb.target_contact_points[0].clone(),
    );
    let source = connect(&src).await;
    let target = connect(&tgt).await;
    let (ks1, ks2) = (keyspace("px_ks_one"), keyspace("px_ks_two"));
    for ks in [&ks1, &ks2] {
        create_keyspace(&source, ks).await;
        create_keyspace(&target, ks).await;
        ddl_both(
            &source,
            &target,
            &[format!("CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")],
        )
        .await;
    }
    let proxy = start_proxy("127.0.0.96", &src, &tgt, &["--mode", "sync"]).await;
    let addr = proxy.addr.to_string();
    let insert = "INSERT INTO t (k, v) VALUES (?, ?)";

    // v5: the keyspace travels with the PREPARE.
    let mut v5 = RawClient::connect(&addr, 5).await;
    v5.handshake(None).await;
    let mut body = BytesMut::new();
    put_long_string(&mut body, insert);
    body.put_u32(0x01);
    ferry_sidecar::proxy::wire::put_string(&mut body, &ks1);
    let prepared = v5.call(2, opcode::PREPARE, body.freeze()).await;
    let (id, metadata_id) = prepared_ids(&prepared, 5);
    let done = v5
        .call(
            3,
            opcode::EXECUTE,
            execute_body(5, &id, metadata_id.as_deref(), 1, "v5"),
        )
        .await;
    assert_eq!(result_kind(&done), 1, "a void result: {done:?}");

    // v4: prepared in ks1, then the connection switches to ks2 at once.
    let mut v4 = RawClient::connect(&addr, 4).await;
    v4.handshake(None).await;
    assert_eq!(result_kind(&v4.query(2, &format!("USE {ks1}")).await), 3);
    let mut body = BytesMut::new();
    put_long_string(&mut body, insert);
    v4.send(3, opcode::PREPARE, body.freeze()).await;
    let mut use_two = BytesMut::new();
    put_long_string(&mut use_two, &format!("USE {ks2}"));
    use_two.put_u16(1);
    use_two.put_u8(0);
    v4.send(4, opcode::QUERY, use_two.freeze()).await;
    let mut prepared = None;
    for _ in 0..2 {
        let f = v4.recv().await.expect("answers");
        if f.stream == 3 {
            prepared = Some(f);
        }
    }
    let (id, _) = prepared_ids(&prepared.expect("PREPARED"), 4);
    let done = v4
        .call(5, opcode::EXECUTE, execute_body(4, &id, None, 2, "v4"))
        .await;
    assert_eq!(result_kind(&done), 1, "a void result: {done:?}");

    for contact in [&src, &tgt] {
        assert_eq!(
            count_rows_direct(contact, &format!("SELECT k FROM {ks1}.t")).await,
            2,
            "both writes in {ks1} on {contact}"
        );
        assert_eq!(
            count_rows_direct(contact, &format!("SELECT k FROM {ks2}.t")).await,
            0,
            "nothing in {ks2} on {contact}"
        );
    }
    proxy.stop().await.expect("stop");
}

/// The statement id (and v5 result metadata id) of a PREPARED result.
fn prepared_ids(f: &Frame, version: u8) -> (Vec<u8>, Option<Vec<u8>>) {
    assert_eq!(result_kind(f), 4, "PREPARED expected: {f:?}");
    let mut r = result_reader(f);
    r.i32().expect("kind");
    let id = r.short_bytes().expect("id").to_vec();
    let metadata = (version >= 5).then(|| r.short_bytes().expect("metadata id").to_vec());
    (id, metadata)
}

/// EXECUTE of `INSERT INTO t (k, v)` with `k` and `v` at ONE.
fn execute_body(version: u8, id: &[u8], metadata_id: Option<&[u8]>, k: i32, v: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(id.len() as u16);
    b.put_slice(id);
    if let Some(m) = metadata_id {
        b.put_u16(m.len() as u16);
        b.put_slice(m);
    }
    b.put_u16(1);
    if version >= 5 {
        b.put_u32(0x01);
    } else {
        b.put_u8(0x01);
    }
    b.put_u16(2);
    b.put_i32(4);
    b.put_i32(k);
    b.put_i32(v.len() as i32);
    b.put_slice(v.as_bytes());
    b.freeze()
}
