//! Non-deterministic functions in prepared writes, made deterministic.
//!
//! `INSERT ... VALUES (?, now())` prepared and executed through the proxy
//! would be evaluated by each cluster on its own: the source and the target
//! would store different timeuuids, and since both cells carry the same
//! WRITETIME no repair could make them agree (at equal timestamps Cassandra
//! keeps the larger value). So, as for QUERY texts, the proxy chooses the
//! value itself: at PREPARE it turns each `now()`, `currentTimeUUID()`,
//! `uuid()`, `currentTimestamp()`, `currentDate()` and `currentTime()` into
//! a typed bind marker (`(timeuuid)?` ...), hides those markers from the
//! client in the PREPARED result, and at
//! EXECUTE (and in BATCH children) inserts the value it generated, the same
//! bytes for source and target.
//!
//! A statement cannot mix named and positional markers, so in a statement
//! written with named markers (`:name`) the calls become typed *named*
//! markers (`(timeuuid):ferry_bound_0`). Drivers bind named markers by
//! their position in the PREPARED metadata, so the same positional splice
//! serves both; only a client sending its values with names is refused.

use bytes::{BufMut, Bytes, BytesMut};

use super::cql_tokens::{tokenize_spans, Token};
use super::uuids::{random_uuid, random_uuid_parts, timeuuid, timeuuid_parts};
use super::wire::{Reader, WireError};

/// The value a bound function stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundKind {
    /// `now()`, `currentTimeUUID()`: a version-1 timeuuid.
    TimeUuid,
    /// `uuid()`: a random version-4 uuid.
    Uuid,
    /// `currentTimestamp()`: milliseconds since the epoch.
    Timestamp,
    /// `currentDate()`: the UTC day.
    Date,
    /// `currentTime()`: nanoseconds since UTC midnight.
    Time,
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

impl BoundKind {
    /// The kind a function name (any case) stands for, if the proxy replaces it.
    fn of_function(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "now" | "currenttimeuuid" => Some(BoundKind::TimeUuid),
            "uuid" => Some(BoundKind::Uuid),
            "currenttimestamp" => Some(BoundKind::Timestamp),
            "currentdate" => Some(BoundKind::Date),
            "currenttime" => Some(BoundKind::Time),
            _ => None,
        }
    }

    /// The CQL type of the value, the hint its bind marker carries (so that
    /// an overloaded function around the call, `toTimestamp(now())`, still
    /// resolves).
    fn cql_type(self) -> &'static str {
        match self {
            BoundKind::TimeUuid => "timeuuid",
            BoundKind::Uuid => "uuid",
            BoundKind::Timestamp => "timestamp",
            BoundKind::Date => "date",
            BoundKind::Time => "time",
        }
    }

    /// The CQL literal that stands for the call in a QUERY text. Dates and
    /// times are strings, typed so that an overloaded function around the
    /// call (`toTimestamp(currentDate())`) still resolves.
    pub fn literal(self, micros: i64) -> String {
        match self {
            BoundKind::TimeUuid => timeuuid(micros),
            BoundKind::Uuid => random_uuid(),
            BoundKind::Timestamp => (micros / 1000).to_string(),
            BoundKind::Date => {
                let (y, m, d) = civil_from_days(micros.div_euclid(MICROS_PER_DAY));
                format!("(date)'{y:04}-{m:02}-{d:02}'")
            }
            BoundKind::Time => {
                let nanos = micros.rem_euclid(MICROS_PER_DAY) * 1000;
                let secs = nanos / 1_000_000_000;
                format!(
                    "(time)'{:02}:{:02}:{:02}.{:09}'",
                    secs / 3600,
                    secs / 60 % 60,
                    secs % 60,
                    nanos % 1_000_000_000
                )
            }
        }
    }

    /// The metric label of the function (as the detection metric names it).
    pub fn function(self) -> &'static str {
        match self {
            BoundKind::TimeUuid => "now",
            BoundKind::Uuid => "uuid",
            BoundKind::Timestamp => "currenttimestamp",
            BoundKind::Date => "currentdate",
            BoundKind::Time => "currenttime",
        }
    }

    /// The value's bytes for `micros` since the epoch.
    pub fn value(self, micros: i64) -> Vec<u8> {
        match self {
            BoundKind::TimeUuid => uuid_bytes(timeuuid_parts(micros)),
            BoundKind::Uuid => uuid_bytes(random_uuid_parts()),
            BoundKind::Timestamp => (micros / 1000).to_be_bytes().to_vec(),
            // Days since the epoch, the epoch at 2^31 (unsigned).
            BoundKind::Date => {
                let days = micros.div_euclid(MICROS_PER_DAY) + (1 << 31);
                (days as u32).to_be_bytes().to_vec()
            }
            BoundKind::Time => (micros.rem_euclid(MICROS_PER_DAY) * 1000)
                .to_be_bytes()
                .to_vec(),
        }
    }
}

/// The proleptic Gregorian (year, month, day) of a day count since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn uuid_bytes((hi, lo): (u64, u64)) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&hi.to_be_bytes());
    v.extend_from_slice(&lo.to_be_bytes());
    v
}

/// One function turned into a bind marker: its index among all the
/// statement's markers, and what it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundFunction {
    pub position: usize,
    pub kind: BoundKind,
}

/// A call the proxy replaces: its byte span in the text, what it stands
/// for, how many of the text's own bind markers come before it, and
/// whether it sits inside a `{...}` or `[...]` literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub span: (usize, usize),
    pub kind: BoundKind,
    pub markers_before: usize,
    pub in_literal: bool,
}

/// The name prefix of the named markers the proxy writes.
const NAMED_MARKER_PREFIX: &str = "ferry_bound_";

/// The bind markers a tokenized text writes itself.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Markers<'a> {
    /// `?` markers.
    pub positional: usize,
    /// The names of `:name` markers, in order, one per occurrence.
    pub named: Vec<&'a str>,
}

/// Whether the `:` at `toks[i]` starts a named bind marker. Outside braces
/// a `:` can be nothing else; inside a map or UDT literal (`{k: v}`) it also
/// separates a key from its value, and is a separator exactly when a term
/// ends right before it.
pub(crate) fn is_named_marker<'a>(
    toks: &[(Token<'a>, usize)],
    i: usize,
    brace_depth: usize,
) -> Option<&'a str> {
    let name = match toks.get(i + 1) {
        Some((Token::Word(w), _)) | Some((Token::Quoted(w), _)) => *w,
        _ => return None,
    };
    if brace_depth == 0 || i == 0 {
        return Some(name);
    }
    let term_ends = matches!(
        toks[i - 1].0,
        Token::Word(_)
            | Token::Quoted(_)
            | Token::Str
            | Token::Number
            | Token::Punct(')' | ']' | '}' | '?')
    );
    (!term_ends).then_some(name)
}

/// The calls of `now()`, `currentTimeUUID()`, `uuid()`,
/// `currentTimestamp()`, `currentDate()` and `currentTime()` in a tokenized
/// text, in order (calls inside string literals are not tokens, so they are
/// not found), and the text's own bind markers.
pub(crate) fn replaceable_calls<'a>(toks: &[(Token<'a>, usize)]) -> (Vec<Call>, Markers<'a>) {
    let mut calls = Vec::new();
    let mut markers = Markers::default();
    let (mut braces, mut brackets) = (0usize, 0usize);
    let mut i = 0;
    while i < toks.len() {
        match toks[i] {
            (Token::Punct('?'), _) => markers.positional += 1,
            (Token::Punct('{'), _) => braces += 1,
            (Token::Punct('}'), _) => braces = braces.saturating_sub(1),
            (Token::Punct('['), _) => brackets += 1,
            (Token::Punct(']'), _) => brackets = brackets.saturating_sub(1),
            (Token::Punct(':'), _) => {
                if let Some(name) = is_named_marker(toks, i, braces) {
                    markers.named.push(name);
                    // The name is the marker's, never a function call.
                    i += 2;
                    continue;
                }
            }
            (Token::Word(name), start)
                if i + 2 < toks.len()
                    && matches!(toks[i + 1].0, Token::Punct('('))
                    && matches!(toks[i + 2].0, Token::Punct(')')) =>
            {
                if let Some(kind) = BoundKind::of_function(name) {
                    calls.push(Call {
                        span: (start, toks[i + 2].1 + 1),
                        kind,
                        markers_before: markers.positional + markers.named.len(),
                        in_literal: braces + brackets > 0,
                    });
                    i += 3;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    (calls, markers)
}

/// `text` with each call's span replaced by what `replacement` gives.
pub fn rewrite_calls(
    text: &str,
    calls: &[Call],
    mut replacement: impl FnMut(&Call) -> String,
) -> String {
    let mut out = String::with_capacity(text.len() + 32 * calls.len());
    let mut copied = 0;
    for call in calls {
        out.push_str(&text[copied..call.span.0]);
        out.push_str(&replacement(call));
        copied = call.span.1;
    }
    out.push_str(&text[copied..]);
    out
}

/// Rewrites a statement's text, turning each non-deterministic call into a
/// typed bind marker of the statement's own style: `(timeuuid)?` among
/// positional markers, `(timeuuid):ferry_bound_0` among named ones. `None`
/// when there is no call, and when the text mixes both styles (Cassandra
/// refuses it anyway) or already names a marker `ferry_bound_...`.
///
/// Calls inside a `{...}` or `[...]` literal stay as they are: Cassandra
/// refuses bind markers inside collection literals ("bind variables are not
/// supported inside collection literals"), so a marker there would break a
/// statement that works without the proxy. Each cluster evaluates those on
/// its own, as the detection metric counts.
pub fn bind_nondeterministic(text: &str) -> Option<(String, Vec<BoundFunction>)> {
    let toks = tokenize_spans(text);
    let (mut calls, markers) = replaceable_calls(&toks);
    calls.retain(|c| !c.in_literal);
    if calls.is_empty() {
        return None;
    }
    let named = !markers.named.is_empty();
    if named && markers.positional > 0
        || markers.named.iter().any(|n| {
            n.get(..NAMED_MARKER_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(NAMED_MARKER_PREFIX))
        })
    {
        return None;
    }
    let mut index = 0;
    let out = rewrite_calls(text, &calls, |c| {
        let marker = if named {
            format!("({}):{NAMED_MARKER_PREFIX}{index}", c.kind.cql_type())
        } else {
            format!("({})?", c.kind.cql_type())
        };
        index += 1;
        marker
    });
    // Each call's marker comes after the client's markers before it and
    // after the proxy's own markers for the calls before it.
    let bound = calls
        .iter()
        .enumerate()
        .map(|(i, c)| BoundFunction {
            position: c.markers_before + i,
            kind: c.kind,
        })
        .collect();
    Some((out, bound))
}

/// Returns a `[short n][bytes]*n` values section with the bound values
/// inserted at their positions. `section` is `None` when the request had
/// no values (the statement's only markers are the proxy's).
pub fn splice_values(
    section: Option<&[u8]>,
    bound: &[BoundFunction],
    micros: i64,
) -> Result<Bytes, WireError> {
    let mut client_values: Vec<&[u8]> = Vec::new();
    if let Some(section) = section {
        let mut r = Reader::new(section);
        let n = r.u16()?;
        for _ in 0..n {
            let start = r.position();
            r.bytes()?;
            client_values.push(&section[start..r.position()]);
        }
    }
    let mut values = BytesMut::with_capacity(section.map_or(0, <[u8]>::len) + bound.len() * 20);
    let mut count: u16 = 0;
    let mut client = client_values.into_iter().peekable();
    let mut pending = bound.iter().peekable();
    let mut position = 0;
    // The client's values fill the positions the proxy's do not; a client
    // that sent too few still gets every generated value, and the source
    // reports the count mismatch as it would without the proxy.
    while client.peek().is_some() || pending.peek().is_some() {
        match pending.peek() {
            Some(b) if b.position == position || client.peek().is_none() => {
                let value = b.kind.value(micros);
                values.put_i32(value.len() as i32);
                values.put_slice(&value);
                pending.next();
            }
            _ => {
                if let Some(v) = client.next() {
                    values.put_slice(v);
                }
            }
        }
        position += 1;
        count = count.checked_add(1).ok_or(WireError::NegativeLength {
            offset: 0,
            length: i64::from(u16::MAX) + 1,
        })?;
    }
    let mut out = BytesMut::with_capacity(values.len() + 2);
    out.put_u16(count);
    out.put_slice(&values);
    Ok(out.freeze())
}

/// Replaces `now()`, `currentTimeUUID()`, `uuid()`, `currentTimestamp()`,
/// `currentDate()` and `currentTime()` in a statement's text with literals the proxy generates, so source and
/// target store the same value. Returns the new text and the functions
/// replaced, or `None` when there is nothing to replace. (Prepared
/// statements get bind markers instead: `bound::bind_nondeterministic`.)
pub fn replace_nondeterministic(
    text: &str,
    now_micros: i64,
) -> Option<(String, Vec<&'static str>)> {
    let (calls, _) = replaceable_calls(&tokenize_spans(text));
    if calls.is_empty() {
        return None;
    }
    let out = rewrite_calls(text, &calls, |c| c.kind.literal(now_micros));
    Some((out, calls.iter().map(|c| c.kind.function()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_nondeterministic_calls_outside_strings() {
        let (text, kinds) = replace_nondeterministic(
            "INSERT INTO t (k, id, u, ts, s) VALUES (1, now(), UUID( ), currentTimestamp(), 'now()')",
            1_700_000_000_123_456,
        )
        .unwrap();
        assert_eq!(kinds, vec!["now", "uuid", "currenttimestamp"]);
        assert!(text.ends_with(", 1700000000123, 'now()')"), "{text}");
        assert!(!text.contains("now()") || text.contains("'now()'"));
        let uuids: Vec<&str> = text
            .split([',', '(', ')', ' '])
            .filter(|w| w.len() == 36 && w.matches('-').count() == 4)
            .collect();
        assert_eq!(uuids.len(), 2, "{text}");
        assert_eq!(&uuids[0][14..15], "1", "version-1 timeuuid: {}", uuids[0]);
        assert_eq!(&uuids[1][14..15], "4", "version-4 uuid: {}", uuids[1]);
        assert_eq!(replace_nondeterministic("SELECT now FROM t", 0), None);
        assert_eq!(replace_nondeterministic("now(", 0), None);
    }

    #[test]
    fn turns_calls_into_typed_markers_and_counts_positions() {
        let (text, bound) = bind_nondeterministic(
            "INSERT INTO t (k, id, at, u, s) VALUES (?, now(), toTimestamp(now()), UUID( ), 'now()')",
        )
        .unwrap();
        assert_eq!(
            text,
            "INSERT INTO t (k, id, at, u, s) VALUES (?, (timeuuid)?, toTimestamp((timeuuid)?), (uuid)?, 'now()')"
        );
        assert_eq!(
            bound,
            vec![
                BoundFunction {
                    position: 1,
                    kind: BoundKind::TimeUuid
                },
                BoundFunction {
                    position: 2,
                    kind: BoundKind::TimeUuid
                },
                BoundFunction {
                    position: 3,
                    kind: BoundKind::Uuid
                },
            ]
        );
        let (_, bound) =
            bind_nondeterministic("UPDATE t SET at = currentTimestamp() WHERE k = ?").unwrap();
        assert_eq!(
            bound,
            vec![BoundFunction {
                position: 0,
                kind: BoundKind::Timestamp
            }]
        );
    }

    #[test]
    fn leaves_statements_without_calls_or_with_mixed_markers() {
        assert!(bind_nondeterministic("INSERT INTO t (k) VALUES (?)").is_none());
        assert!(bind_nondeterministic("INSERT INTO t (k, s) VALUES (1, 'now()')").is_none());
        // Both styles at once: Cassandra refuses the statement itself.
        assert!(bind_nondeterministic("INSERT INTO t (k, a, t) VALUES (:k, ?, now())").is_none());
        // The client already uses the proxy's marker names.
        assert!(
            bind_nondeterministic("INSERT INTO t (k, t) VALUES (:FERRY_BOUND_0, now())").is_none()
        );
    }

    #[test]
    fn named_marker_statements_get_named_markers() {
        // A map literal's `:` is a separator, `:v` a marker; the call in
        // the literal stays (Cassandra takes no marker there).
        let (text, bound) = bind_nondeterministic(
            "INSERT INTO t (k, m, u, id) VALUES (:k, {'a': :v, 'b': now()}, :\"U\", now()) USING TTL :ttl",
        )
        .unwrap();
        assert_eq!(
            text,
            "INSERT INTO t (k, m, u, id) VALUES (:k, {'a': :v, 'b': now()}, :\"U\", (timeuuid):ferry_bound_0) USING TTL :ttl"
        );
        assert_eq!(
            bound,
            vec![BoundFunction {
                position: 3,
                kind: BoundKind::TimeUuid
            }]
        );
        // In a UDT literal a field name before `:` is not a marker, and a
        // marker named like a function is not a call.
        let (text, bound) = bind_nondeterministic(
            "UPDATE t SET u = {at: currentTimestamp(), by: :now}, l = [uuid()] WHERE k IN :keys AND c = uuid()",
        )
        .unwrap();
        assert_eq!(
            text,
            "UPDATE t SET u = {at: currentTimestamp(), by: :now}, l = [uuid()] WHERE k IN :keys AND c = (uuid):ferry_bound_0"
        );
        assert_eq!(
            bound,
            vec![BoundFunction {
                position: 2,
                kind: BoundKind::Uuid
            }]
        );
        // Only calls inside literals: nothing to bind.
        assert!(bind_nondeterministic("UPDATE t SET l = l + [now()] WHERE k = ?").is_none());
    }

    #[test]
    fn dates_and_times_are_utc_days_and_nanoseconds() {
        // 2026-11-30T13:45:06.123456Z
        let micros = 1_796_046_306_123_456;
        assert_eq!(BoundKind::Date.literal(micros), "(date)'2026-11-30'");
        assert_eq!(
            BoundKind::Time.literal(micros),
            "(time)'13:45:06.123456000'"
        );
        assert_eq!(
            BoundKind::Date.value(micros),
            (20_787u32 + (1 << 31)).to_be_bytes().to_vec()
        );
        assert_eq!(
            BoundKind::Time.value(micros),
            49_506_123_456_000i64.to_be_bytes().to_vec()
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(BoundKind::Time.literal(-1), "(time)'23:59:59.999999000'");
        let (text, bound) = bind_nondeterministic(
            "INSERT INTO t (k, d, t) VALUES (?, currentDate(), currentTime())",
        )
        .unwrap();
        assert_eq!(text, "INSERT INTO t (k, d, t) VALUES (?, (date)?, (time)?)");
        assert_eq!(bound.len(), 2);
    }

    fn section(values: &[&[u8]]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_u16(values.len() as u16);
        for v in values {
            b.put_i32(v.len() as i32);
            b.put_slice(v);
        }
        b.to_vec()
    }

    #[test]
    fn splices_generated_values_at_their_positions() {
        let bound = [
            BoundFunction {
                position: 1,
                kind: BoundKind::Timestamp,
            },
            BoundFunction {
                position: 3,
                kind: BoundKind::TimeUuid,
            },
        ];
        let client = section(&[b"a", b"bb"]);
        let out = splice_values(Some(&client), &bound, 1_700_000_000_123_456).unwrap();
        let mut r = Reader::new(&out);
        assert_eq!(r.u16().unwrap(), 4);
        assert_eq!(r.bytes().unwrap(), Some(&b"a"[..]));
        assert_eq!(
            r.bytes().unwrap(),
            Some(&1_700_000_000_123i64.to_be_bytes()[..])
        );
        assert_eq!(r.bytes().unwrap(), Some(&b"bb"[..]));
        let uuid = r.bytes().unwrap().unwrap();
        assert_eq!(uuid.len(), 16);
        assert_eq!(uuid[6] >> 4, 1, "version 1");
        assert!(r.is_empty());
        // Only the proxy's markers: no client section at all.
        let only = splice_values(None, &bound[..1], 5_000).unwrap();
        assert_eq!(&only[..], &section(&[&5i64.to_be_bytes()])[..]);
        // A truncated client section is an error, not a panic.
        assert!(splice_values(Some(&client[..3]), &bound, 0).is_err());
    }
}
