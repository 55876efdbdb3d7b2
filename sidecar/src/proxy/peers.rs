//! Peer substitution: drivers learn the cluster from `system.local`,
//! `system.peers`, `system.peers_v2` and topology/status events. The proxy
//! rewrites the client-facing addresses there (rpc/native address and port)
//! from a map "source node address → proxy address:port", so a driver that
//! connects to one proxy discovers only proxies. Tokens, datacenter, rack and
//! host_id are left untouched so token-aware routing keeps working.
//!
//! Map file format (either form; `#` comments allowed in the line form):
//!
//! ```text
//! # source-node-ip   proxy-ip:port
//! 10.0.0.11          10.1.0.11:29042
//! [fd00::11]         [fd00:1::11]:29042
//! mode async
//! ```
//!
//! or JSON: `{"peers": {"10.0.0.11": "10.1.0.11:29042"}, "mode": "async"}`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};

use super::result::{self, read_rows_metadata, response_body_start};
use super::wire::{ip_from_bytes, ip_len, put_ip, Reader, WireError};

/// Source node address → the proxy that fronts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerMap {
    by_node: HashMap<IpAddr, SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerMapError {
    #[error("line {line}: expected `NODE_IP PROXY_IP:PORT`, got {text:?}")]
    Line { line: usize, text: String },
    #[error("JSON peer map: {0}")]
    Json(#[from] serde_json::Error),
    #[error("peer map entry {key:?}: {reason}")]
    Entry { key: String, reason: String },
}

/// Contents of the watched runtime file: the peer map and, optionally, the
/// write mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeFile {
    pub peers: PeerMap,
    pub mode: Option<String>,
    /// Percentage of reads also sent to the target and compared (the
    /// cut-over's `shadowReads` stage); `None` keeps the flag's value.
    pub shadow_read_percent: Option<u64>,
    /// Follow schema changes on the target (`--mirror-ddl`); `None` keeps
    /// the flag's value. JSON form only.
    pub mirror_ddl: Option<bool>,
    /// The replication of keyspaces created through the proxy, on the
    /// target (`--target-replication`). JSON form only.
    pub target_replication: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonFile {
    #[serde(default)]
    peers: HashMap<String, String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    shadow_read_percent: Option<u64>,
    #[serde(default)]
    mirror_ddl: Option<bool>,
    #[serde(default)]
    target_replication: Option<String>,
}

fn parse_node(text: &str) -> Option<IpAddr> {
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

impl RuntimeFile {
    pub fn parse(text: &str) -> Result<Self, PeerMapError> {
        if text.trim_start().starts_with('{') {
            let json: JsonFile = serde_json::from_str(text)?;
            let mut peers = PeerMap::default();
            for (node, proxy) in json.peers {
                let ip = parse_node(&node).ok_or_else(|| PeerMapError::Entry {
                    key: node.clone(),
                    reason: "not an IP address".into(),
                })?;
                let addr: SocketAddr = proxy.parse().map_err(|_| PeerMapError::Entry {
                    key: node.clone(),
                    reason: format!("{proxy:?} is not IP:PORT"),
                })?;
                peers.by_node.insert(ip, addr);
            }
            return Ok(Self {
                peers,
                mode: json.mode,
                shadow_read_percent: json.shadow_read_percent,
                mirror_ddl: json.mirror_ddl,
                target_replication: json.target_replication.filter(|r| !r.trim().is_empty()),
            });
        }
        let mut out = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(PeerMapError::Line {
                    line: i + 1,
                    text: raw.to_owned(),
                });
            };
            if a == "mode" {
                out.mode = Some(b.to_owned());
                continue;
            }
            if a == "shadow-read-percent" {
                out.shadow_read_percent = Some(b.parse().map_err(|_| PeerMapError::Line {
                    line: i + 1,
                    text: raw.to_owned(),
                })?);
                continue;
            }
            match (parse_node(a), b.parse::<SocketAddr>()) {
                (Some(ip), Ok(addr)) => {
                    out.peers.by_node.insert(ip, addr);
                }
                _ => {
                    return Err(PeerMapError::Line {
                        line: i + 1,
                        text: raw.to_owned(),
                    })
                }
            }
        }
        Ok(out)
    }
}

impl PeerMap {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (IpAddr, SocketAddr)>) -> Self {
        Self {
            by_node: pairs.into_iter().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// Adds `node → proxy` unless the map already says where `node` goes.
    pub fn with_default(mut self, node: IpAddr, proxy: SocketAddr) -> Self {
        self.by_node.entry(node).or_insert(proxy);
        self
    }

    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    pub fn lookup(&self, node: IpAddr) -> Option<SocketAddr> {
        self.by_node.get(&node).copied()
    }
}

/// Result of rewriting one message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RewriteStats {
    pub rewritten: u32,
    /// Addresses with no entry in the map, left as they were.
    pub unmapped: u32,
}

const ADDRESS_COLUMNS: &[&str] = &["rpc_address", "native_address"];
const PORT_COLUMNS: &[&str] = &["native_port", "rpc_port"];
/// Columns that say which node a row is about; never rewritten.
const IDENTITY_COLUMNS: &[&str] = &["peer", "broadcast_address", "listen_address"];

/// Rewrites the address and port columns of a RESULT Rows body from
/// `system.local`/`peers`/`peers_v2`. Returns `None` when the body is not a
/// Rows result with metadata or nothing changed.
pub fn rewrite_rows(
    frame_flags: u8,
    body: &[u8],
    version: u8,
    map: &PeerMap,
    local: Option<SocketAddr>,
) -> Result<Option<(Bytes, RewriteStats)>, WireError> {
    let start = response_body_start(frame_flags, body)?;
    let mut r = Reader::new(body);
    r.skip(start)?;
    if r.i32()? != result::kind::ROWS {
        return Ok(None);
    }
    #[derive(Clone, Copy)]
    enum Role {
        Keep,
        /// An address identifying the node, kept as is (`peer`, ...).
        Identity,
        Address,
        Port,
    }
    let mut roles = Vec::new();
    let header = read_rows_metadata(&mut r, version, |name, type_id| {
        roles.push(if ADDRESS_COLUMNS.contains(&name) && type_id == 0x0010 {
            Role::Address
        } else if IDENTITY_COLUMNS.contains(&name) && type_id == 0x0010 {
            Role::Identity
        } else if PORT_COLUMNS.contains(&name) && type_id == 0x0009 {
            Role::Port
        } else {
            Role::Keep
        });
    })?;
    // No metadata: the proxy clears skip_metadata on these requests, so
    // this only happens for foreign shapes; leave them alone, as a column
    // count the specs do not match.
    if !header.has_specs || header.columns as usize != roles.len() {
        return Ok(None);
    }
    let columns = header.columns;
    let rows_count = r.i32()?;
    // Every row holds at least a 4-byte length per column: a count beyond
    // that is a lie, and zero columns leave nothing to rewrite.
    if columns == 0
        || rows_count < 0
        || rows_count as usize > r.remaining() / (4 * columns as usize)
    {
        return Ok(None);
    }
    let rows_at = r.position();
    let mut out = BytesMut::with_capacity(body.len() + 64);
    out.put_slice(&body[..rows_at]);
    let mut stats = RewriteStats::default();
    for _ in 0..rows_count {
        // A row's port follows its address, so find the row's mapping first.
        let mut target: Option<SocketAddr> = None;
        let mut probe = r.clone();
        for role in &roles {
            let v = probe.bytes()?;
            match (role, v) {
                (Role::Address, Some(raw)) => {
                    let ip = ip_from_bytes(raw)?;
                    match map.lookup(ip) {
                        Some(proxy) => target = target.or(Some(proxy)),
                        None => stats.unmapped += 1,
                    }
                }
                (Role::Identity, Some(raw)) => {
                    if let Some(proxy) = map.lookup(ip_from_bytes(raw)?) {
                        target = target.or(Some(proxy));
                    }
                }
                _ => {}
            }
        }
        // system.local without an address column is this proxy's own node.
        let target = target.or(local);
        for role in &roles {
            let value = r.bytes()?;
            match (role, value, target) {
                (Role::Address, Some(_), Some(proxy)) => {
                    out.put_i32(ip_len(proxy.ip()) as i32);
                    put_ip(&mut out, proxy.ip());
                    stats.rewritten += 1;
                }
                (Role::Port, Some(_), Some(proxy)) => {
                    out.put_i32(4);
                    out.put_i32(i32::from(proxy.port()));
                    stats.rewritten += 1;
                }
                (_, Some(raw), _) => {
                    out.put_i32(raw.len() as i32);
                    out.put_slice(raw);
                }
                (_, None, _) => out.put_i32(-1),
            }
        }
    }
    out.put_slice(&body[r.position()..]);
    if stats.rewritten == 0 {
        return Ok(None);
    }
    Ok(Some((out.freeze(), stats)))
}

/// Rewrites the address of a TOPOLOGY_CHANGE or STATUS_CHANGE event.
/// SCHEMA_CHANGE and unmapped nodes come back as `None` (forward unchanged).
pub fn rewrite_event(
    frame_flags: u8,
    body: &[u8],
    map: &PeerMap,
) -> Result<Option<Bytes>, WireError> {
    let start = response_body_start(frame_flags, body)?;
    let mut r = Reader::new(body);
    r.skip(start)?;
    let kind = r.string()?;
    if kind != "TOPOLOGY_CHANGE" && kind != "STATUS_CHANGE" {
        return Ok(None);
    }
    r.string()?;
    let addr_at = r.position();
    let (ip, _port) = r.inet()?;
    let Some(proxy) = map.lookup(ip) else {
        return Ok(None);
    };
    let mut out = BytesMut::with_capacity(body.len() + 12);
    out.put_slice(&body[..addr_at]);
    out.put_u8(ip_len(proxy.ip()) as u8);
    put_ip(&mut out, proxy.ip());
    out.put_i32(i32::from(proxy.port()));
    out.put_slice(&body[r.position()..]);
    Ok(Some(out.freeze()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proxy::wire::put_string;

    pub fn map() -> PeerMap {
        RuntimeFile::parse(
            "# comment\n127.0.0.11 127.0.0.31:29042\n[::1] [fd00::31]:9042\n127.0.0.12 127.0.0.32:29042\n",
        )
        .unwrap()
        .peers
    }

    fn col(b: &mut BytesMut, name: &str, type_id: u16) {
        put_string(b, name);
        b.put_u16(type_id);
    }

    /// A Rows body of system.peers_v2-like columns.
    pub fn peers_rows(addrs: &[IpAddr]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i32(2);
        b.put_i32(1);
        b.put_i32(4);
        put_string(&mut b, "system");
        put_string(&mut b, "peers_v2");
        col(&mut b, "peer", 0x0010);
        col(&mut b, "native_address", 0x0010);
        col(&mut b, "native_port", 0x0009);
        col(&mut b, "tokens", 0x0022);
        b.put_u16(0x000D);
        b.put_i32(addrs.len() as i32);
        for ip in addrs {
            for _ in 0..2 {
                b.put_i32(ip_len(*ip) as i32);
                put_ip(&mut b, *ip);
            }
            b.put_i32(4);
            b.put_i32(9042);
            b.put_i32(-1);
        }
        b.freeze()
    }

    #[test]
    fn parses_both_file_forms() {
        let m = map();
        assert_eq!(m.len(), 3);
        assert_eq!(
            m.lookup("::1".parse().unwrap()),
            Some("[fd00::31]:9042".parse().unwrap())
        );
        let j =
            RuntimeFile::parse(r#"{"peers": {"127.0.0.11": "127.0.0.31:29042"}, "mode": "sync"}"#)
                .unwrap();
        assert_eq!(j.mode.as_deref(), Some("sync"));
        assert_eq!(j.peers.len(), 1);
        assert!(RuntimeFile::parse("127.0.0.11").is_err());
        assert!(RuntimeFile::parse("nonsense 1.2.3.4:5").is_err());
        assert_eq!(j.shadow_read_percent, None);
        let shadow =
            RuntimeFile::parse(r#"{"peers": {}, "mode": "async", "shadowReadPercent": 25}"#)
                .unwrap();
        assert_eq!(shadow.shadow_read_percent, Some(25));
        let text = RuntimeFile::parse("mode target-primary\nshadow-read-percent 5\n").unwrap();
        assert_eq!(text.shadow_read_percent, Some(5));
        assert!(RuntimeFile::parse("shadow-read-percent lots").is_err());
        assert_eq!((j.mirror_ddl, j.target_replication.clone()), (None, None));
        let schema = RuntimeFile::parse(
            r#"{"mirrorDdl": true, "targetReplication": "{'class': 'NetworkTopologyStrategy', 'dc1': 3}"}"#,
        )
        .unwrap();
        assert_eq!(schema.mirror_ddl, Some(true));
        assert_eq!(
            schema.target_replication.as_deref(),
            Some("{'class': 'NetworkTopologyStrategy', 'dc1': 3}")
        );
        // The operator writes null before its schema step ran.
        let unknown =
            RuntimeFile::parse(r#"{"mirrorDdl": false, "targetReplication": null}"#).unwrap();
        assert_eq!(
            (unknown.mirror_ddl, unknown.target_replication),
            (Some(false), None)
        );
    }

    #[test]
    fn rewrites_native_address_and_port_ipv4_and_ipv6() {
        let m = map();
        let body = peers_rows(&[
            "127.0.0.11".parse().unwrap(),
            "::1".parse().unwrap(),
            "127.0.0.99".parse().unwrap(),
        ]);
        let (out, stats) = rewrite_rows(0, &body, 4, &m, None).unwrap().unwrap();
        assert_eq!(stats.rewritten, 4, "two addresses and their ports");
        assert_eq!(stats.unmapped, 1);
        // Read it back.
        let mut r = Reader::new(&out);
        r.skip(4 + 4 + 4).unwrap();
        r.string().unwrap();
        r.string().unwrap();
        for _ in 0..4 {
            r.string().unwrap();
            result::read_type(&mut r).unwrap();
        }
        assert_eq!(r.i32().unwrap(), 3);
        let mut rows = Vec::new();
        for _ in 0..3 {
            let peer = ip_from_bytes(r.bytes().unwrap().unwrap()).unwrap();
            let native = ip_from_bytes(r.bytes().unwrap().unwrap()).unwrap();
            let port = i32::from_be_bytes(r.bytes().unwrap().unwrap().try_into().unwrap());
            r.bytes().unwrap();
            rows.push((peer.to_string(), native.to_string(), port));
        }
        assert_eq!(rows[0], ("127.0.0.11".into(), "127.0.0.31".into(), 29042));
        assert_eq!(rows[1], ("::1".into(), "fd00::31".into(), 9042));
        assert_eq!(rows[2], ("127.0.0.99".into(), "127.0.0.99".into(), 9042));
        assert!(r.is_empty());
    }

    #[test]
    fn rewrites_events_and_leaves_schema_changes() {
        let m = map();
        let mut b = BytesMut::new();
        put_string(&mut b, "STATUS_CHANGE");
        put_string(&mut b, "UP");
        b.put_u8(4);
        b.put_slice(&[127, 0, 0, 12]);
        b.put_i32(9042);
        let out = rewrite_event(0, &b, &m).unwrap().unwrap();
        let mut r = Reader::new(&out);
        r.string().unwrap();
        r.string().unwrap();
        let (ip, port) = r.inet().unwrap();
        assert_eq!((ip.to_string(), port), ("127.0.0.32".into(), 29042));
        let mut s = BytesMut::new();
        put_string(&mut s, "SCHEMA_CHANGE");
        assert_eq!(rewrite_event(0, &s, &m).unwrap(), None);
        assert!(rewrite_event(0, &b[..5], &m).is_err());
    }

    #[test]
    fn garbage_rows_do_not_panic() {
        let m = map();
        let body = peers_rows(&["127.0.0.11".parse().unwrap()]);
        for cut in 0..body.len() {
            let _ = rewrite_rows(0, &body[..cut], 4, &m, None);
        }
        let mut flipped = body.to_vec();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xFF;
            let _ = rewrite_rows(0, &flipped, 4, &m, None);
            flipped[i] ^= 0xFF;
        }
    }
}
