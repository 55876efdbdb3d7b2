//! Deciding what a statement is from its text with a light tokenizer (no full
//! CQL grammar): read or write, which table, and the traits that need a
//! policy (LWT, counters, non-deterministic functions).

use super::cql_tokens::{tokenize, tokenize_spans, Token};

/// Which system table a read targets, for peer substitution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemTable {
    Local,
    Peers,
    PeersV2,
}

/// A server-side function whose value differs between source and target.
pub const NONDETERMINISTIC_FUNCTIONS: &[&str] = &[
    "now",
    "uuid",
    "currenttimestamp",
    "currenttimeuuid",
    "currentdate",
    "currenttime",
];

/// What a statement is, as far as routing is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementClass {
    /// SELECT: source only (or the primary).
    Read {
        keyspace: Option<String>,
        table: Option<String>,
        system: Option<SystemTable>,
    },
    /// INSERT, UPDATE, DELETE, BATCH, TRUNCATE: both sides.
    Write(WriteTraits),
    /// USE: both sides, so each keeps the same current keyspace.
    Use(String),
    /// CREATE/ALTER/DROP: source only unless `--mirror-ddl`.
    Schema,
    /// Anything else (GRANT, LIST, ...): source only.
    Other,
}

/// Facts about a write that decide how it is mirrored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteTraits {
    /// Keyspace named in the statement (else the connection's).
    pub keyspace: Option<String>,
    pub table: Option<String>,
    /// Conditional (`IF ...`): Paxos, no client timestamp possible.
    pub lwt: bool,
    /// `c = c + n`: counter update, not idempotent.
    pub counter: bool,
    /// TRUNCATE: removes what came before it, so its order matters.
    pub truncate: bool,
    /// A list append or prepend, or a list element set by index: list
    /// cells are named by the coordinator's clock when the write lands, so
    /// the list's order on the target is the order such writes arrive in.
    pub list_order: bool,
    /// First non-deterministic function called, if any.
    pub nondeterministic: Option<&'static str>,
    /// `x = x + ?` (or `-`, or a named marker): a counter update or a list
    /// append, which only the bound types tell apart. Through QUERY, which
    /// carries no types, it is taken as not idempotent.
    pub increment_by_marker: bool,
    /// The statements of a `BEGIN BATCH ... APPLY BATCH` text (empty for
    /// anything else): each is selected or not on its own.
    pub batch: Vec<BatchStatement>,
}

/// One statement of a `BEGIN BATCH ... APPLY BATCH` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchStatement {
    /// Keyspace named in the statement (else the connection's).
    pub keyspace: Option<String>,
    pub table: Option<String>,
    /// Byte range of the statement in the batch text (no `;`).
    pub span: (usize, usize),
}

/// The statements of a `BEGIN ... BATCH ... APPLY BATCH` text, each with
/// its table and place, or an empty list when `text` is no such batch.
/// Statements start with INSERT, UPDATE or DELETE (reserved words, so never
/// an unquoted name) and end at a `;`, the next statement or APPLY.
pub fn batch_statements(text: &str) -> Vec<BatchStatement> {
    let toks = tokenize_spans(text);
    if !is_kw(toks.first().map(|(t, _)| t), "begin") {
        return Vec::new();
    }
    let is = |i: usize, kw: &str| is_kw(toks.get(i).map(|(t, _)| t), kw);
    let starts_statement = |i: usize| is(i, "insert") || is(i, "update") || is(i, "delete");
    let mut out = Vec::new();
    let mut current: Option<usize> = None;
    let close = |out: &mut Vec<BatchStatement>, start: usize, end_byte: usize| {
        let (_, from) = toks[start];
        let stmt = text[from..end_byte].trim_end();
        let (keyspace, table) = match classify(stmt) {
            StatementClass::Write(w) => (w.keyspace, w.table),
            _ => (None, None),
        };
        out.push(BatchStatement {
            keyspace,
            table,
            span: (from, from + stmt.len()),
        });
    };
    for (i, (tok, at)) in toks.iter().enumerate().skip(1) {
        let apply = is(i, "apply") && is(i + 1, "batch");
        if *tok == Token::Punct(';') || apply || starts_statement(i) {
            if let Some(start) = current.take() {
                close(&mut out, start, *at);
            }
            if starts_statement(i) {
                current = Some(i);
            }
            if apply {
                break;
            }
        }
    }
    if let Some(start) = current {
        close(&mut out, start, text.len());
    }
    out
}

fn is_kw(t: Option<&Token<'_>>, kw: &str) -> bool {
    matches!(t, Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
}

/// An identifier as Cassandra stores it: unquoted lower-cased, quoted as is.
fn ident(t: Option<&Token<'_>>) -> Option<String> {
    match t {
        Some(Token::Word(w)) => Some(w.to_ascii_lowercase()),
        Some(Token::Quoted(q)) => Some(q.replace("\"\"", "\"")),
        _ => None,
    }
}

/// `[keyspace.]table` starting at `toks[i]`.
fn qualified_name(toks: &[Token<'_>], i: usize) -> (Option<String>, Option<String>) {
    let first = ident(toks.get(i));
    if toks.get(i + 1) == Some(&Token::Punct('.')) {
        (first, ident(toks.get(i + 2)))
    } else {
        (None, first)
    }
}

/// Classifies one CQL statement.
pub fn classify(text: &str) -> StatementClass {
    let toks = tokenize(text);
    let Some(Token::Word(first)) = toks.first() else {
        return StatementClass::Other;
    };
    let first = first.to_ascii_lowercase();
    match first.as_str() {
        "select" => {
            let from = toks.iter().position(|t| is_kw(Some(t), "from"));
            let (keyspace, table) = from
                .map(|i| qualified_name(&toks, i + 1))
                .unwrap_or((None, None));
            let system = match (keyspace.as_deref(), table.as_deref()) {
                (Some("system"), Some("local")) => Some(SystemTable::Local),
                (Some("system"), Some("peers")) => Some(SystemTable::Peers),
                (Some("system"), Some("peers_v2")) => Some(SystemTable::PeersV2),
                _ => None,
            };
            StatementClass::Read {
                keyspace,
                table,
                system,
            }
        }
        "insert" | "update" | "delete" | "begin" | "truncate" => {
            let name_at = match first.as_str() {
                "insert" => toks
                    .iter()
                    .position(|t| is_kw(Some(t), "into"))
                    .map(|i| i + 1),
                "update" => Some(1),
                "delete" => toks
                    .iter()
                    .position(|t| is_kw(Some(t), "from"))
                    .map(|i| i + 1),
                "truncate" => Some(if is_kw(toks.get(1), "table") { 2 } else { 1 }),
                // BATCH text: each inner statement names its table.
                _ => None,
            };
            let batch = if first == "begin" {
                batch_statements(text)
            } else {
                Vec::new()
            };
            let (keyspace, table) = match (name_at, batch.first()) {
                (Some(i), _) => qualified_name(&toks, i),
                (None, Some(b)) => (b.keyspace.clone(), b.table.clone()),
                (None, None) => (None, None),
            };
            StatementClass::Write(WriteTraits {
                keyspace,
                table,
                lwt: has_condition(&toks),
                counter: (first == "begin" && is_kw(toks.get(1), "counter"))
                    || has_counter_update(&toks),
                nondeterministic: nondeterministic_call(&toks),
                truncate: first == "truncate",
                list_order: has_list_order_update(&toks),
                increment_by_marker: has_increment_by_marker(&toks),
                batch,
            })
        }
        "use" => match ident(toks.get(1)) {
            Some(ks) => StatementClass::Use(ks),
            None => StatementClass::Other,
        },
        "create" | "alter" | "drop" => StatementClass::Schema,
        _ => StatementClass::Other,
    }
}

/// `IF` outside strings marks a lightweight transaction.
fn has_condition(toks: &[Token<'_>]) -> bool {
    toks.iter().any(|t| is_kw(Some(t), "if"))
}

/// `x = x + <number>` / `x = x - <number>`: a counter update (a collection
/// append has a literal `[`/`{` or a bind marker instead of a number).
fn has_counter_update(toks: &[Token<'_>]) -> bool {
    toks.windows(5).any(|w| {
        matches!((&w[0], &w[1], &w[2], &w[3], &w[4]),
            (Token::Word(a), Token::Punct('='), Token::Word(b), Token::Punct('+' | '-'), Token::Number)
            if a.eq_ignore_ascii_case(b))
    })
}

/// A list write whose order matters: `l = l + [...]` (append),
/// `l = [...] + l` (prepend), `l[i] = ...`, or a list literal.
fn has_list_order_update(toks: &[Token<'_>]) -> bool {
    let append = toks.windows(5).any(|w| {
        matches!((&w[0], &w[1], &w[2], &w[3], &w[4]),
            (Token::Word(a), Token::Punct('='), Token::Word(b), Token::Punct('+'), Token::Punct('['))
            if a.eq_ignore_ascii_case(b))
    });
    let prepend = toks.windows(3).any(|w| {
        matches!(
            (&w[0], &w[1], &w[2]),
            (Token::Punct(']'), Token::Punct('+'), Token::Word(_))
        )
    });
    let by_index = toks.windows(5).any(|w| {
        matches!(
            (&w[0], &w[1], &w[3], &w[4]),
            (
                Token::Word(_),
                Token::Punct('['),
                Token::Punct(']'),
                Token::Punct('=')
            )
        )
    });
    // Any list literal: an INSERT or overwrite of a list must not land
    // after an append made after it (a vector literal looks the same and
    // only costs the wait).
    let literal = toks.contains(&Token::Punct('['));
    append || prepend || by_index || literal
}

/// `x = x + ?`, `x = x - ?` or `x = x + :name`.
fn has_increment_by_marker(toks: &[Token<'_>]) -> bool {
    toks.windows(5).any(|w| {
        matches!((&w[0], &w[1], &w[2], &w[3], &w[4]),
            (Token::Word(a), Token::Punct('='), Token::Word(b), Token::Punct('+' | '-'), Token::Punct('?' | ':'))
            if a.eq_ignore_ascii_case(b))
    })
}

fn nondeterministic_call(toks: &[Token<'_>]) -> Option<&'static str> {
    toks.windows(2).find_map(|w| match (&w[0], &w[1]) {
        (Token::Word(name), Token::Punct('(')) => NONDETERMINISTIC_FUNCTIONS
            .iter()
            .find(|f| name.eq_ignore_ascii_case(f))
            .copied(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> WriteTraits {
        match classify(text) {
            StatementClass::Write(w) => w,
            other => panic!("{text:?} classified as {other:?}"),
        }
    }

    #[test]
    fn reads_and_system_tables() {
        assert_eq!(
            classify("select peer, rpc_address FROM system.peers"),
            StatementClass::Read {
                keyspace: Some("system".into()),
                table: Some("peers".into()),
                system: Some(SystemTable::Peers)
            }
        );
        assert!(matches!(
            classify("SELECT * FROM system.local WHERE key='local'"),
            StatementClass::Read {
                system: Some(SystemTable::Local),
                ..
            }
        ));
        assert!(matches!(
            classify("  /* hi */ SELECT * FROM \"system\".\"peers_v2\""),
            StatementClass::Read {
                system: Some(SystemTable::PeersV2),
                ..
            }
        ));
        assert!(matches!(
            classify("SELECT * FROM ks.t"),
            StatementClass::Read { system: None, .. }
        ));
    }

    #[test]
    fn writes_with_traits() {
        let w = write("INSERT INTO Ks.\"MyTable\" (k, v) VALUES (1, 'if now()') IF NOT EXISTS");
        assert_eq!(w.keyspace.as_deref(), Some("ks"));
        assert_eq!(w.table.as_deref(), Some("MyTable"));
        assert!(w.lwt);
        assert_eq!(w.nondeterministic, None, "inside a string");
        let w = write("UPDATE t SET c = c + 1 WHERE k = 1");
        assert!(w.counter && !w.lwt);
        assert_eq!(w.table.as_deref(), Some("t"));
        let w = write("UPDATE t SET l = l + [1] WHERE k = 1");
        assert!(!w.counter);
        let w = write("DELETE v FROM ks.t WHERE k = ? IF v = 3");
        assert!(w.lwt);
        assert_eq!(w.table.as_deref(), Some("t"));
        let w = write("INSERT INTO t (k, id) VALUES (1, now())");
        assert_eq!(w.nondeterministic, Some("now"));
        let w = write("BEGIN COUNTER BATCH UPDATE ks.c SET n = n + ? WHERE k = 1; APPLY BATCH");
        assert!(w.counter);
        assert_eq!(w.keyspace.as_deref(), Some("ks"));
        assert_eq!(write("TRUNCATE TABLE ks.t").table.as_deref(), Some("t"));
    }

    #[test]
    fn an_increment_by_a_bind_marker_is_told_apart() {
        assert!(write("UPDATE ks.c SET n = n + ? WHERE k = 1").increment_by_marker);
        assert!(write("UPDATE c SET n = n - :d WHERE k = ?").increment_by_marker);
        assert!(write("UPDATE c SET l = l + ? WHERE k = ?").increment_by_marker);
        assert!(!write("UPDATE c SET n = ? WHERE k = ?").increment_by_marker);
        assert!(!write("UPDATE c SET n = n + 1 WHERE k = ?").increment_by_marker);
    }

    #[test]
    fn list_appends_prepends_and_sets_by_index_need_order() {
        assert!(write("UPDATE t SET l = l + [1] WHERE k = 1").list_order);
        assert!(write("UPDATE t SET l = [0, 1] + l WHERE k = 1").list_order);
        assert!(write("UPDATE t SET l[2] = 'x' WHERE k = 1").list_order);
        assert!(!write("UPDATE t SET s = s - {1} WHERE k = 1").list_order);
        assert!(!write("UPDATE t SET s = s + {1} WHERE k = 1").list_order);
        // A list literal too: an overwrite must not land after a later append.
        assert!(write("UPDATE t SET l = [1, 2] WHERE k = 1").list_order);
        assert!(write("INSERT INTO t (k, l) VALUES (1, [1])").list_order);
        assert!(!write("INSERT INTO t (k, s) VALUES (1, {1})").list_order);
    }

    #[test]
    fn every_statement_of_a_batch_text_is_named() {
        let text = "BEGIN UNLOGGED BATCH USING TIMESTAMP 5 \
            DELETE FROM a.t WHERE k = 1; \
            INSERT INTO b.\"U\" (k) VALUES ('apply batch;') \
            update t SET v = 'x' WHERE k = 2 \
            APPLY BATCH;";
        let b = batch_statements(text);
        let named: Vec<(Option<&str>, Option<&str>)> = b
            .iter()
            .map(|s| (s.keyspace.as_deref(), s.table.as_deref()))
            .collect();
        assert_eq!(
            named,
            vec![
                (Some("a"), Some("t")),
                (Some("b"), Some("U")),
                (None, Some("t"))
            ]
        );
        let texts: Vec<&str> = b.iter().map(|s| &text[s.span.0..s.span.1]).collect();
        assert_eq!(texts[0], "DELETE FROM a.t WHERE k = 1");
        assert_eq!(texts[1], "INSERT INTO b.\"U\" (k) VALUES ('apply batch;')");
        assert_eq!(texts[2], "update t SET v = 'x' WHERE k = 2");
        // A DELETE-only batch names its table (it used to name none).
        let w = write("BEGIN BATCH DELETE FROM ks.t WHERE k = 1 APPLY BATCH");
        assert_eq!(
            (w.keyspace.as_deref(), w.table.as_deref()),
            (Some("ks"), Some("t"))
        );
        assert_eq!(w.batch.len(), 1);
        assert!(batch_statements("INSERT INTO t (k) VALUES (1)").is_empty());
    }

    #[test]
    fn use_schema_other() {
        assert_eq!(classify("USE \"MyKs\""), StatementClass::Use("MyKs".into()));
        assert_eq!(classify("use my_ks;"), StatementClass::Use("my_ks".into()));
        assert_eq!(
            classify("CREATE TABLE t (k int PRIMARY KEY)"),
            StatementClass::Schema
        );
        assert_eq!(classify("GRANT ALL ON ks TO r"), StatementClass::Other);
        assert_eq!(classify(""), StatementClass::Other);
        assert_eq!(classify("'unterminated"), StatementClass::Other);
        assert_eq!(classify("\"unterminated"), StatementClass::Other);
        assert_eq!(classify("é"), StatementClass::Other);
    }
}
