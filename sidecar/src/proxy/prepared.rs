//! The prepared-statement map: source statement id → statement text,
//! keyspace, classification and the target's id for it. Shared by every
//! connection (ids are per cluster, not per connection), bounded, and
//! keeping the text so the proxy can re-prepare on the target by itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use super::bound::BoundFunction;
use super::classify::StatementClass;
use super::result::{self, read_prepared_metadata, response_body_start};
use super::wire::{Reader, WireError};

/// The target's handle for a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPrepared {
    pub id: Bytes,
    /// v5 result metadata id, sent back in EXECUTE.
    pub result_metadata_id: Option<Bytes>,
}

/// One prepared statement as the proxy knows it.
#[derive(Debug)]
pub struct PreparedStatement {
    pub query: Arc<str>,
    /// Keyspace in effect when it was prepared (`USE` or v5 keyspace).
    pub keyspace: Option<String>,
    pub class: StatementClass,
    /// Some bind variable is a counter: a counter update.
    pub counter: bool,
    /// Non-deterministic calls the proxy turned into bind markers it fills
    /// at each execution (bound.rs); `query` is the rewritten text.
    pub bound: Vec<BoundFunction>,
    /// With `bound` calls: the id the client knows the statement by, the
    /// source's id for the text the client wrote (what a direct connection
    /// gives, so a driver that re-prepares through the proxy a statement it
    /// prepared before the roll sees the same id).
    pub client_id: Option<Bytes>,
    /// With `bound` calls: the source's id for the rewritten text, which
    /// the proxy executes in the client's place; `None` once the source
    /// forgot it (the client is then asked to prepare again).
    source_exec_id: Mutex<Option<Bytes>>,
    target: Mutex<Option<TargetPreparation>>,
    /// Held while a PREPARE of this statement is out to the target: one at
    /// a time, because Cassandra evicts both ids of a text when concurrent
    /// PREPAREs of it race, so a stampede of them after the target forgot
    /// the statement would make it forget it again.
    pub preparing_on_target: tokio::sync::Mutex<()>,
}

/// The target's id for a statement, on which of the target's hosts (an
/// index into its endpoint) and when it was prepared there.
#[derive(Debug, Clone)]
struct TargetPreparation {
    prepared: TargetPrepared,
    host: usize,
    at: Instant,
}

impl PreparedStatement {
    /// A write's traits are completed here, once, with what the prepared
    /// answer said of it, so each EXECUTE borrows them: `counter` (a bind
    /// variable is a counter), and `x = x + ?` that is not a counter is a
    /// collection update, maybe a list append, whose order matters.
    pub fn new(
        query: &str,
        keyspace: Option<String>,
        mut class: StatementClass,
        counter: bool,
    ) -> Self {
        if let StatementClass::Write(w) = &mut class {
            w.counter |= counter;
            w.list_order |= w.increment_by_marker && !w.counter;
        }
        Self {
            query: Arc::from(query),
            keyspace,
            class,
            counter,
            bound: Vec::new(),
            client_id: None,
            source_exec_id: Mutex::new(None),
            target: Mutex::new(None),
            preparing_on_target: tokio::sync::Mutex::new(()),
        }
    }

    /// The same statement with markers the proxy fills.
    pub fn with_bound(mut self, bound: Vec<BoundFunction>) -> Self {
        self.bound = bound;
        self
    }

    /// The same statement known to the client as `client_id` and executed
    /// on the source as `exec_id` (the rewritten text's id).
    pub fn with_ids(mut self, client_id: Bytes, exec_id: Bytes) -> Self {
        self.client_id = Some(client_id);
        self.source_exec_id = Mutex::new(Some(exec_id));
        self
    }

    /// The source's id for the rewritten text, if it still has it.
    pub fn source_exec_id(&self) -> Option<Bytes> {
        self.source_exec_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The source answered UNPREPARED for the rewritten text.
    pub fn forget_source_exec_id(&self) {
        *self
            .source_exec_id
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The target's id for the statement, if it was prepared there.
    pub fn target(&self) -> Option<TargetPrepared> {
        self.target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|t| t.prepared.clone())
    }

    /// The target's id if target host `host` prepared the statement after
    /// `sent`: a request sent at `sent` that the target answered UNPREPARED
    /// may use it rather than prepare again.
    pub fn target_prepared_after(&self, host: usize, sent: Instant) -> Option<TargetPrepared> {
        self.target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|t| t.host == host && t.at > sent)
            .map(|t| t.prepared.clone())
    }

    /// The target forgot every statement (it restarted).
    pub fn forget_target(&self) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Records the id target host `host` gave for the statement.
    pub fn set_target(&self, prepared: TargetPrepared, host: usize) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(TargetPreparation {
            prepared,
            host,
            at: Instant::now(),
        });
    }

    pub fn is_write(&self) -> bool {
        matches!(self.class, StatementClass::Write(_))
    }
}

/// Bounded map; the oldest entry goes first when full. A client that
/// executes an evicted id gets UNPREPARED and re-prepares through the proxy.
#[derive(Debug)]
pub struct PreparedCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    /// Keyed by ids the source made (MD5s of statements), looked up on
    /// every EXECUTE: hashed with foldhash, a fraction of SipHash's cost.
    map: HashMap<Bytes, Arc<PreparedStatement>, foldhash::fast::RandomState>,
    order: VecDeque<Bytes>,
}

impl PreparedCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(CacheInner::default()),
        }
    }

    pub fn get(&self, source_id: &[u8]) -> Option<Arc<PreparedStatement>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.map.get(source_id).cloned()
    }

    /// Inserts (or refreshes) an entry; returns the entry kept.
    pub fn insert(&self, source_id: Bytes, stmt: PreparedStatement) -> Arc<PreparedStatement> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = inner.map.get(&source_id) {
            if *existing.query == *stmt.query && existing.keyspace == stmt.keyspace {
                return existing.clone();
            }
        }
        let stmt = Arc::new(stmt);
        if inner.map.insert(source_id.clone(), stmt.clone()).is_none() {
            inner.order.push_back(source_id);
        }
        while inner.map.len() > self.capacity {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.map.remove(&old);
                }
                None => break,
            }
        }
        stmt
    }

    /// Files `stmt` under a second id too (the rewritten text's id on the
    /// source, which the proxy puts in the requests it sends).
    pub fn alias(&self, id: Bytes, stmt: Arc<PreparedStatement>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.map.insert(id.clone(), stmt).is_none() {
            inner.order.push_back(id);
        }
        while inner.map.len() > self.capacity {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.map.remove(&old);
                }
                None => break,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every target id (the target lost its cache, e.g. restarted).
    pub fn clear_target_ids(&self) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for stmt in inner.map.values() {
            stmt.forget_target();
        }
    }
}

/// The fields of a RESULT Prepared body the proxy uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedResult {
    pub id: Bytes,
    pub result_metadata_id: Option<Bytes>,
    /// Type ids of the bind variables (0x0005 = counter).
    pub bind_types: Vec<u16>,
}

pub const COUNTER_TYPE: u16 = 0x0005;
pub const LIST_TYPE: u16 = 0x0020;

/// A prepared statement's class, completed by its bound types (which the
/// text alone does not give), and whether it is a counter update: a bound
/// list makes the write's order matter (its cells are named on arrival).
pub fn classify_prepared(query: &str, bind_types: &[u16]) -> (StatementClass, bool) {
    let mut class = super::classify::classify(query);
    let counter = bind_types.contains(&COUNTER_TYPE);
    if let StatementClass::Write(w) = &mut class {
        w.list_order |= bind_types.contains(&LIST_TYPE);
    }
    (class, counter)
}

/// Parses a RESULT body of kind Prepared; `None` for other kinds.
pub fn parse_prepared_result(
    frame_flags: u8,
    body: &Bytes,
    version: u8,
) -> Result<Option<PreparedResult>, WireError> {
    let start = response_body_start(frame_flags, body)?;
    let mut r = Reader::new(body);
    r.skip(start)?;
    if r.i32()? != result::kind::PREPARED {
        return Ok(None);
    }
    let id_start = r.position() + 2;
    let id_len = r.short_bytes()?.len();
    let id = body.slice(id_start..id_start + id_len);
    let result_metadata_id = if version >= 5 {
        let s = r.position() + 2;
        let n = r.short_bytes()?.len();
        Some(body.slice(s..s + n))
    } else {
        None
    };
    // Bind variable metadata: only the types matter (counter detection).
    let mut bind_types = Vec::new();
    let parsed = read_prepared_metadata(&mut r, version, |_, type_id| bind_types.push(type_id));
    // Metadata we cannot read only loses counter detection, not the id.
    let _ = parsed;
    Ok(Some(PreparedResult {
        id,
        result_metadata_id,
        bind_types,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::classify::classify;
    use crate::proxy::wire::{put_short_bytes, put_string};
    use bytes::{BufMut, BytesMut};

    /// What the prepared answer says of a write is part of its class from
    /// the start, so an EXECUTE routes it on the class as it is.
    #[test]
    fn a_prepared_write_s_class_takes_its_counter_and_list_order_once() {
        let traits = |query: &str, counter: bool| match PreparedStatement::new(
            query,
            None,
            classify(query),
            counter,
        )
        .class
        {
            StatementClass::Write(w) => (w.counter, w.list_order),
            other => panic!("{query}: not a write: {other:?}"),
        };
        let increment = "UPDATE ks.t SET c = c + ? WHERE k = ?";
        assert_eq!(traits(increment, true), (true, false), "a counter update");
        assert_eq!(
            traits(increment, false),
            (false, true),
            "a collection append"
        );
        assert_eq!(
            traits("UPDATE ks.t SET v = ? WHERE k = ?", false),
            (false, false),
            "a plain write"
        );
    }

    #[test]
    fn cache_is_bounded_and_keeps_text() {
        let cache = PreparedCache::new(2);
        for i in 0..3u8 {
            let q = format!("INSERT INTO t (k) VALUES ({i})");
            cache.insert(
                Bytes::from(vec![i]),
                PreparedStatement::new(&q, None, classify(&q), false),
            );
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&[0]).is_none());
        let e = cache.get(&[2]).unwrap();
        assert_eq!(&*e.query, "INSERT INTO t (k) VALUES (2)");
        e.set_target(
            TargetPrepared {
                id: Bytes::from_static(b"t"),
                result_metadata_id: None,
            },
            0,
        );
        assert!(cache.get(&[2]).unwrap().target().is_some());
        cache.clear_target_ids();
        assert!(cache.get(&[2]).unwrap().target().is_none());
    }

    #[test]
    fn parses_prepared_result_with_counter_bind() {
        let mut b = BytesMut::new();
        b.put_i32(4);
        put_short_bytes(&mut b, &[9, 9, 9]);
        b.put_i32(1); // global spec
        b.put_i32(2);
        b.put_i32(1);
        b.put_u16(0);
        put_string(&mut b, "ks");
        put_string(&mut b, "c");
        put_string(&mut b, "n");
        b.put_u16(COUNTER_TYPE);
        put_string(&mut b, "k");
        b.put_u16(0x0020);
        b.put_u16(0x0009);
        b.put_i32(4); // result metadata: no metadata
        b.put_i32(0);
        let body = b.freeze();
        let p = parse_prepared_result(0, &body, 4).unwrap().unwrap();
        assert_eq!(&p.id[..], &[9, 9, 9]);
        assert_eq!(p.bind_types, vec![COUNTER_TYPE, 0x0020]);
        for cut in 0..body.len() {
            let _ = parse_prepared_result(0, &body.slice(..cut), 4);
        }
    }
}
