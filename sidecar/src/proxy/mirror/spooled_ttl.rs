//! A spooled write's TTLs, lowered by the time it waited in the spool.
//!
//! Cassandra counts a TTL from the moment a node takes the write. A write
//! replayed from the spool `n` seconds after the source took it would live
//! `n` seconds longer on the target, so the replayer takes the whole
//! seconds it waited off every TTL the request sets (never below 1 s: a
//! cell that expired on the source must still expire on the target, where
//! it shadows older data as it does there; `TTL 0`, none, stays 0):
//!
//! - a literal (`USING TTL 600`) in a QUERY's text or a text child of a
//!   BATCH is rewritten in the text;
//! - a bound TTL (`USING TTL ?`, `USING TTL :name`) gets a lowered value,
//!   found by its position among the statement's markers (or its name, when
//!   the request sends values with names);
//! - a literal in a *prepared* statement cannot change without a statement
//!   of its own, so that EXECUTE (or BATCH child) is replayed as a QUERY of
//!   the lowered text with the same values.
//!
//! A table's `default_time_to_live` is not handled: a write that relies on
//! it is replayed as it was, and expires on the target as much later as it
//! waited (validation reports it past `--ttl-tolerance-seconds`).

use bytes::{BufMut, Bytes, BytesMut};

use crate::proxy::bound::is_named_marker;
use crate::proxy::cql_tokens::{tokenize_spans, Token};
use crate::proxy::frame::opcode;
use crate::proxy::request::{
    body_start, param_flags, parse_batch, parse_execute, parse_query, replace_ranges, BatchChild,
    ParamsLayout, RangeEdit,
};
use crate::proxy::spool::SpoolRecord;
use crate::proxy::wire::{put_long_string, Reader, WireError};

/// Where a statement sets a TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TtlSite<'a> {
    /// `USING TTL 600`: the literal's byte span in the text, and its value.
    Literal { span: (usize, usize), seconds: i64 },
    /// `USING TTL ?` or `USING TTL :name`: the marker's position among the
    /// statement's bind markers, and its name.
    Marker {
        position: usize,
        name: Option<&'a str>,
    },
}

/// The TTLs a statement's text sets (a `BEGIN BATCH` text can set
/// several), in order, and the name of each of its bind markers (`None`
/// for `?`), by position.
#[derive(Debug, Default)]
struct StatementTtls<'a> {
    sites: Vec<TtlSite<'a>>,
    markers: Vec<Option<&'a str>>,
}

impl StatementTtls<'_> {
    /// Whether the marker at `position` is a TTL's.
    fn ttl_marker_at(&self, position: usize) -> bool {
        self.sites
            .iter()
            .any(|s| matches!(s, TtlSite::Marker { position: p, .. } if *p == position))
    }

    /// Whether the value sent at `position`, or with `name`, is a TTL and
    /// nothing else. A value sent with a name binds every marker of that
    /// name, so one that also fills a column is left as it is.
    fn binds_only_a_ttl(&self, position: usize, name: Option<&str>) -> bool {
        match name {
            None => self.ttl_marker_at(position),
            Some(name) => {
                // Cassandra names an anonymous TTL marker `[ttl]`.
                fn site_name<'s>(s: &TtlSite<'s>) -> Option<&'s str> {
                    match s {
                        TtlSite::Marker { name: Some(m), .. } => Some(m),
                        TtlSite::Marker { name: None, .. } => Some("[ttl]"),
                        TtlSite::Literal { .. } => None,
                    }
                }
                let ttls = self
                    .sites
                    .iter()
                    .filter(|s| site_name(s).is_some_and(|m| m.eq_ignore_ascii_case(name)))
                    .count();
                let elsewhere = self.markers.iter().enumerate().any(|(p, m)| {
                    !self.ttl_marker_at(p) && m.is_some_and(|m| m.eq_ignore_ascii_case(name))
                });
                ttls > 0 && !elsewhere
            }
        }
    }
}

fn ttl_sites(text: &str) -> StatementTtls<'_> {
    let toks = tokenize_spans(text);
    let mut found = StatementTtls::default();
    let mut braces = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match toks[i].0 {
            Token::Punct('?') => found.markers.push(None),
            Token::Punct('{') => braces += 1,
            Token::Punct('}') => braces = braces.saturating_sub(1),
            Token::Punct(':') => {
                if let Some(name) = is_named_marker(&toks, i, braces) {
                    found.markers.push(Some(name));
                    i += 2;
                    continue;
                }
            }
            Token::Word(w) if w.eq_ignore_ascii_case("using") => {
                i = using_clause(text, &toks, i + 1, braces, &mut found);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Reads `TTL v | TIMESTAMP v [AND ...]` from `toks[i]`, counting its
/// markers and noting its TTL; returns where the clause ends.
fn using_clause<'a>(
    text: &str,
    toks: &[(Token<'a>, usize)],
    mut i: usize,
    braces: usize,
    found: &mut StatementTtls<'a>,
) -> usize {
    loop {
        let Some((Token::Word(option), _)) = toks.get(i) else {
            return i;
        };
        let ttl = option.eq_ignore_ascii_case("ttl");
        if !ttl && !option.eq_ignore_ascii_case("timestamp") {
            return i;
        }
        match toks.get(i + 1) {
            Some((Token::Number, at)) => {
                let end = text[*at..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
                    .map_or(text.len(), |n| at + n);
                if let (true, Ok(seconds)) = (ttl, text[*at..end].parse::<i64>()) {
                    found.sites.push(TtlSite::Literal {
                        span: (*at, end),
                        seconds,
                    });
                }
                i += 2;
            }
            Some((Token::Punct('?'), _)) => {
                if ttl {
                    found.sites.push(TtlSite::Marker {
                        position: found.markers.len(),
                        name: None,
                    });
                }
                found.markers.push(None);
                i += 2;
            }
            Some((Token::Punct(':'), _)) => {
                let Some(name) = is_named_marker(toks, i + 1, braces) else {
                    return i + 1;
                };
                if ttl {
                    found.sites.push(TtlSite::Marker {
                        position: found.markers.len(),
                        name: Some(name),
                    });
                }
                found.markers.push(Some(name));
                i += 3;
            }
            _ => return i + 1,
        }
        match toks.get(i) {
            Some((Token::Word(w), _)) if w.eq_ignore_ascii_case("and") => i += 1,
            _ => return i,
        }
    }
}

/// A TTL `waited` seconds later: what is left of it, at least 1 s; 0 (no
/// TTL) stays 0.
fn lowered(seconds: i64, waited: i64) -> i64 {
    if seconds <= 0 {
        seconds
    } else {
        (seconds - waited).max(1)
    }
}

/// `text` with its TTL literals lowered; `None` when none changes.
fn lower_literals(text: &str, found: &StatementTtls<'_>, waited: i64) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut changed = false;
    for site in &found.sites {
        if let TtlSite::Literal { span, seconds } = site {
            let now = lowered(*seconds, waited);
            changed |= now != *seconds;
            out.push_str(&text[copied..span.0]);
            out.push_str(&now.to_string());
            copied = span.1;
        }
    }
    changed.then(|| {
        out.push_str(&text[copied..]);
        out
    })
}

/// The edits lowering the bound TTLs in the values section at `section`
/// (`[short n]` then each value, with its name first when `named`).
fn lower_values(
    body: &[u8],
    section: (usize, usize),
    named: bool,
    found: &StatementTtls<'_>,
    waited: i64,
    edits: &mut Vec<RangeEdit>,
) -> Result<(), WireError> {
    let mut r = Reader::new(&body[section.0..section.1]);
    let n = r.u16()?;
    for position in 0..usize::from(n) {
        let name = if named { Some(r.string()?) } else { None };
        let start = section.0 + r.position();
        let value = r.bytes()?;
        let is_ttl = found.binds_only_a_ttl(position, name);
        let Some(bytes) = value.filter(|_| is_ttl) else {
            continue;
        };
        let Ok(four) = <[u8; 4]>::try_from(bytes) else {
            continue;
        };
        let seconds = lowered(i64::from(i32::from_be_bytes(four)), waited);
        let mut v = BytesMut::with_capacity(8);
        v.put_i32(4);
        v.put_i32(seconds as i32);
        edits.push(((start, section.0 + r.position()), v.freeze()));
    }
    Ok(())
}

fn long_string(text: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(text.len() + 4);
    put_long_string(&mut b, text);
    b.freeze()
}

/// The text a prepared statement in `record` was prepared from, and
/// whether it can run as a QUERY: its names resolve in the keyspace the
/// request runs in (`keyspace`: the request's own in v5, else the
/// connection's) as they did when it was prepared.
fn prepared_text<'r>(
    record: &'r SpoolRecord,
    id: &[u8],
    keyspace: Option<&str>,
) -> Option<(&'r str, bool)> {
    let s = record.statements.iter().find(|s| &s.source_id[..] == id)?;
    let as_query = s.keyspace.is_none() || s.keyspace.as_deref() == keyspace;
    Some((s.query.as_str(), as_query))
}

/// The record's request with every TTL lowered by `waited` whole seconds:
/// its opcode (an EXECUTE whose text holds a literal TTL becomes a QUERY)
/// and body. `None` when nothing changes.
pub fn lower_ttls(record: &SpoolRecord, waited: i64) -> Result<Option<(u8, Bytes)>, WireError> {
    if waited < 1 {
        return Ok(None);
    }
    let frame = record.request_frame();
    let body = &record.body[..];
    let named = |p: &ParamsLayout| p.flags & param_flags::NAMES_FOR_VALUES != 0;
    // A v5 request that says what "now" is has its expiry counted from
    // then on any node: nothing to lower.
    let pinned_now = |p: &ParamsLayout| p.flags & param_flags::NOW_IN_SECONDS != 0;
    let keyspace_of = |p: &ParamsLayout| p.keyspace.clone().or_else(|| record.keyspace.clone());
    let mut edits: Vec<RangeEdit> = Vec::new();
    let mut opcode_now = record.opcode;
    match record.opcode {
        opcode::QUERY => {
            let q = parse_query(&frame)?;
            if pinned_now(&q.params) {
                return Ok(None);
            }
            let sites = ttl_sites(q.query);
            let start = body_start(&frame)?;
            if let Some(text) = lower_literals(q.query, &sites, waited) {
                edits.push(((start, start + 4 + q.query.len()), long_string(&text)));
            }
            if let Some(section) = q.params.values {
                lower_values(body, section, named(&q.params), &sites, waited, &mut edits)?;
            }
        }
        opcode::EXECUTE => {
            let e = parse_execute(&frame)?;
            if pinned_now(&e.params) {
                return Ok(None);
            }
            let keyspace = keyspace_of(&e.params);
            let Some((text, as_query)) = prepared_text(record, e.id, keyspace.as_deref()) else {
                return Ok(None);
            };
            let sites = ttl_sites(text);
            if let Some(text) = lower_literals(text, &sites, waited).filter(|_| as_query) {
                // QUERY and EXECUTE share the parameters that follow.
                let end = e.result_metadata_id_range.map_or(e.id_range.1, |r| r.1);
                edits.push(((e.id_range.0, end), long_string(&text)));
                opcode_now = opcode::QUERY;
            }
            if let Some(section) = e.params.values {
                lower_values(body, section, named(&e.params), &sites, waited, &mut edits)?;
            }
        }
        opcode::BATCH => {
            let b = parse_batch(&frame)?;
            if pinned_now(&b.params) {
                return Ok(None);
            }
            let keyspace = keyspace_of(&b.params);
            for child in &b.children {
                match child {
                    BatchChild::Query {
                        text,
                        range,
                        values,
                    } => {
                        let sites = ttl_sites(text);
                        if let Some(text) = lower_literals(text, &sites, waited) {
                            edits.push((*range, long_string(&text)));
                        }
                        lower_values(body, *values, false, &sites, waited, &mut edits)?;
                    }
                    BatchChild::Prepared { id, range, values } => {
                        let Some((text, as_query)) = prepared_text(record, id, keyspace.as_deref())
                        else {
                            continue;
                        };
                        let sites = ttl_sites(text);
                        if let Some(text) =
                            lower_literals(text, &sites, waited).filter(|_| as_query)
                        {
                            // The child's kind byte, just before its id, turns
                            // from prepared (1) to query (0).
                            let mut child = BytesMut::with_capacity(text.len() + 5);
                            child.put_u8(0);
                            child.put_slice(&long_string(&text));
                            edits.push(((range.0 - 1, range.1), child.freeze()));
                        }
                        lower_values(body, *values, false, &sites, waited, &mut edits)?;
                    }
                }
            }
        }
        _ => return Ok(None),
    }
    if edits.is_empty() {
        return Ok(None);
    }
    edits.sort_by_key(|(range, _)| range.0);
    Ok(Some((opcode_now, replace_ranges(body, &edits))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::frame::Frame;
    use crate::proxy::request::tests::query_body;
    use crate::proxy::spool::SpooledStatement;

    fn int(v: i32) -> [u8; 4] {
        v.to_be_bytes()
    }

    #[test]
    fn the_ttl_of_a_statement_is_found_as_a_literal_or_a_marker() {
        assert_eq!(
            ttl_sites("INSERT INTO t (k) VALUES (1) USING TTL 600").sites,
            vec![TtlSite::Literal {
                span: (39, 42),
                seconds: 600
            }]
        );
        assert_eq!(
            ttl_sites("UPDATE t USING TIMESTAMP ? AND ttl ? SET v = ? WHERE k = ?").sites,
            vec![TtlSite::Marker {
                position: 1,
                name: None
            }]
        );
        assert_eq!(
            ttl_sites("INSERT INTO t (k, m) VALUES (:k, {'a': :x}) USING TTL :ttl").sites,
            vec![TtlSite::Marker {
                position: 2,
                name: Some("ttl")
            }]
        );
        // A column named ttl, a TTL() read, a string: none of them is one.
        assert!(ttl_sites("UPDATE t SET ttl = 5 WHERE k = 'USING TTL 9'")
            .sites
            .is_empty());
        assert!(ttl_sites("SELECT TTL(v) FROM t").sites.is_empty());
        assert_eq!(
            ttl_sites("BEGIN BATCH INSERT INTO t (k) VALUES (?) USING TTL 5; UPDATE t USING TTL ? SET v = 1 WHERE k = 2; APPLY BATCH").sites.len(),
            2
        );
    }

    #[test]
    fn a_value_sent_by_name_is_lowered_only_when_it_binds_nothing_but_a_ttl() {
        let shared = ttl_sites("UPDATE t USING TTL :ttl SET n = :ttl WHERE k = :k");
        assert!(!shared.binds_only_a_ttl(0, Some("ttl")), "it also fills n");
        assert!(
            shared.binds_only_a_ttl(0, None),
            "by position, each marker is its own"
        );
        let own = ttl_sites("UPDATE t USING TTL :ttl SET n = :n WHERE k = :k");
        assert!(own.binds_only_a_ttl(0, Some("TTL")));
        assert!(!own.binds_only_a_ttl(1, Some("n")));
        // An anonymous TTL marker is named `[ttl]` in the statement's metadata.
        let anonymous = ttl_sites("INSERT INTO t (k) VALUES (?) USING TTL ?");
        assert!(anonymous.binds_only_a_ttl(1, Some("[ttl]")));
        assert!(!anonymous.binds_only_a_ttl(0, Some("k")));
    }

    #[test]
    fn a_request_that_pins_now_keeps_its_ttl() {
        let text = "INSERT INTO t (k) VALUES (1) USING TTL 600";
        let mut body = BytesMut::new();
        put_long_string(&mut body, text);
        body.put_u16(1);
        body.put_u32(param_flags::NOW_IN_SECONDS);
        body.put_i32(1_700_000_000);
        let mut pinned = record(opcode::QUERY, body.freeze(), vec![]);
        pinned.version = 5;
        assert!(lower_ttls(&pinned, 10).expect("parses").is_none());
    }

    #[test]
    fn a_ttl_loses_the_seconds_waited_but_never_reaches_zero() {
        assert_eq!(lowered(600, 6), 594);
        assert_eq!(lowered(5, 6), 1);
        assert_eq!(lowered(0, 6), 0);
    }

    fn record(opcode: u8, body: Bytes, statements: Vec<SpooledStatement>) -> SpoolRecord {
        SpoolRecord {
            version: 4,
            opcode,
            flags: 0,
            keyspace: Some("ks".into()),
            accepted_at_millis: None,
            statements,
            body,
        }
    }

    #[test]
    fn a_query_gets_its_literal_and_its_bound_ttl_lowered() {
        let text = "INSERT INTO t (k, v) VALUES (?, 'x') USING TTL 600 AND TIMESTAMP ?";
        let body = query_body(4, text, 0x01, &[&int(1), &9i64.to_be_bytes()]);
        let (op, lowered_body) = lower_ttls(&record(opcode::QUERY, body, vec![]), 10)
            .expect("parses")
            .expect("changed");
        assert_eq!(op, opcode::QUERY);
        let frame = Frame {
            version: 4,
            response: false,
            flags: 0,
            stream: 0,
            opcode: op,
            body: lowered_body,
        };
        let q = parse_query(&frame).expect("still a query");
        assert!(
            q.query.ends_with("USING TTL 590 AND TIMESTAMP ?"),
            "{}",
            q.query
        );

        let text = "INSERT INTO t (k, v) VALUES (?, ?) USING TTL ?";
        let body = query_body(4, text, 0x01, &[&int(1), b"v", &int(600)]);
        let (_, lowered_body) = lower_ttls(&record(opcode::QUERY, body, vec![]), 10)
            .expect("parses")
            .expect("changed");
        let expected = query_body(4, text, 0x01, &[&int(1), b"v", &int(590)]);
        assert_eq!(lowered_body, expected);
        // Nothing to lower: no change, and none before a whole second.
        let plain = query_body(4, "INSERT INTO t (k) VALUES (1)", 0, &[]);
        assert!(lower_ttls(&record(opcode::QUERY, plain, vec![]), 10)
            .expect("parses")
            .is_none());
        let body = query_body(4, text, 0x01, &[&int(1), b"v", &int(600)]);
        assert!(lower_ttls(&record(opcode::QUERY, body, vec![]), 0)
            .expect("parses")
            .is_none());
    }

    #[test]
    fn an_execute_with_a_literal_ttl_is_replayed_as_a_query_of_the_lowered_text() {
        let id = Bytes::from_static(&[7; 16]);
        let mut body = BytesMut::new();
        body.put_u16(16);
        body.put_slice(&id);
        body.put_u16(0x0001); // consistency ONE
        body.put_u8(0x01); // values
        body.put_u16(1);
        body.put_i32(4);
        body.put_slice(&int(3));
        let statement = SpooledStatement {
            source_id: id,
            keyspace: Some("ks".into()),
            query: "INSERT INTO t (k) VALUES (?) USING TTL 100".into(),
        };
        let (op, lowered_body) =
            lower_ttls(&record(opcode::EXECUTE, body.freeze(), vec![statement]), 30)
                .expect("parses")
                .expect("changed");
        assert_eq!(op, opcode::QUERY);
        let expected = query_body(
            4,
            "INSERT INTO t (k) VALUES (?) USING TTL 70",
            0x01,
            &[&int(3)],
        );
        assert_eq!(lowered_body, expected);
    }
}
