//! What the target gets of a schema change a client makes through the
//! proxy (`CREATE`, `ALTER`, `DROP`): the same statement, a rewritten one
//! (a keyspace gets the target's own replication), or nothing, and why.
//! One pure decision, read only as far as it needs: the statement's first
//! words and the object's name.
//!
//! The rules follow from "the target is a copy the user will cut over to":
//! what the application creates or extends must be there before its first
//! write, while what removes data (`DROP`, `ALTER TABLE ... DROP`) and
//! what is each cluster's own (replication, roles, triggers, derived
//! views) never is repeated.

use crate::proxy::cql_tokens::{tokenize_spans, Token};

/// What the target gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// The client's statement as it is.
    Same,
    /// This statement instead.
    Instead(String),
    /// Nothing: the change stays on the source, for this reason.
    NotRepeated(&'static str),
}

/// A schema statement as the proxy reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatement {
    /// The object's keyspace, when the statement names it.
    pub keyspace: Option<String>,
    /// The table it changes (tables and their indexes), when named.
    pub table: Option<String>,
    pub follow: Follow,
}

const DROPS: &str =
    "a drop on the source is never repeated on the target (docs/operator.md, \"Schema\")";
const REPLICATION: &str = "replication on the target is the target's own (spec.target.replication)";
const ROLES: &str = "roles and permissions are each cluster's own";
const DERIVED: &str = "a materialized view is derived data, created on the target after the migration (docs/operator.md, \"Schema\")";
const TRIGGERS: &str = "triggers are server code, installed on each cluster by hand";
const UNREAD: &str = "the statement could not be read as a schema change";

/// The target's part of `text`, a `CREATE`, `ALTER` or `DROP`.
/// `replication` is the target keyspaces' replication map (CQL map
/// literal); without it a `CREATE KEYSPACE` goes as the client wrote it.
pub fn read(text: &str, replication: Option<&str>) -> SchemaStatement {
    let toks = tokenize_spans(text);
    let words: Vec<&Token<'_>> = toks.iter().map(|(t, _)| t).collect();
    let kw = |i: usize, w: &str| matches!(words.get(i), Some(Token::Word(x)) if x.eq_ignore_ascii_case(w));
    let not_repeated = |why| SchemaStatement {
        keyspace: None,
        table: None,
        follow: Follow::NotRepeated(why),
    };
    let verb = match words.first() {
        Some(Token::Word(w)) => w.to_ascii_lowercase(),
        _ => return not_repeated(UNREAD),
    };
    if verb == "drop" {
        return not_repeated(DROPS);
    }
    // The object's kind starts after CREATE [OR REPLACE] / ALTER.
    let mut at = 1;
    if verb == "create" && kw(1, "or") && kw(2, "replace") {
        at = 3;
    }
    let mut kind = match words.get(at) {
        Some(Token::Word(w)) => w.to_ascii_lowercase(),
        _ => return not_repeated(UNREAD),
    };
    at += 1;
    if kind == "custom" && kw(at, "index") {
        kind = "index".to_owned();
        at += 1;
    }
    if kind == "materialized" {
        return not_repeated(DERIVED);
    }
    let skip_if_not_exists = |at: usize| {
        if kw(at, "if") && kw(at + 1, "not") && kw(at + 2, "exists") {
            at + 3
        } else if kw(at, "if") && kw(at + 1, "exists") {
            at + 2
        } else {
            at
        }
    };
    match kind.as_str() {
        "role" | "user" => not_repeated(ROLES),
        "trigger" => not_repeated(TRIGGERS),
        "keyspace" | "schema" => {
            if verb == "alter" {
                return not_repeated(REPLICATION);
            }
            let at = skip_if_not_exists(at);
            let Some(keyspace) = ident(words.get(at).copied()) else {
                return not_repeated(UNREAD);
            };
            let follow = match replication {
                Some(map) => {
                    let durable = !durable_writes_off(&words[at..]);
                    Follow::Instead(format!(
                        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {map} AND durable_writes = {durable}",
                        quote(&keyspace)
                    ))
                }
                None => Follow::Same,
            };
            SchemaStatement {
                keyspace: Some(keyspace),
                table: None,
                follow,
            }
        }
        "table" | "columnfamily" => {
            let at = skip_if_not_exists(at);
            let (keyspace, table, next) = qualified(&words, at);
            // ALTER TABLE t DROP c: a column's data is removed.
            if verb == "alter" && kw(next, "drop") {
                return not_repeated(DROPS);
            }
            SchemaStatement {
                keyspace,
                table,
                follow: Follow::Same,
            }
        }
        "index" => {
            // CREATE [CUSTOM] INDEX [IF NOT EXISTS] [name] ON [ks.]table
            let Some(on) = (at..words.len()).find(|&i| kw(i, "on")) else {
                return not_repeated(UNREAD);
            };
            let (keyspace, table, _) = qualified(&words, on + 1);
            SchemaStatement {
                keyspace,
                table,
                follow: Follow::Same,
            }
        }
        "type" | "function" | "aggregate" => {
            let at = skip_if_not_exists(at);
            let (keyspace, _, _) = qualified(&words, at);
            SchemaStatement {
                keyspace,
                table: None,
                follow: Follow::Same,
            }
        }
        _ => not_repeated(UNREAD),
    }
}

/// An identifier as Cassandra stores it: unquoted lower-cased, quoted as is.
fn ident(t: Option<&Token<'_>>) -> Option<String> {
    match t {
        Some(Token::Word(w)) => Some(w.to_ascii_lowercase()),
        Some(Token::Quoted(q)) => Some(q.replace("\"\"", "\"")),
        _ => None,
    }
}

/// `[keyspace.]name` at `at`: (keyspace, name, the index after it).
fn qualified(words: &[&Token<'_>], at: usize) -> (Option<String>, Option<String>, usize) {
    let first = ident(words.get(at).copied());
    if words.get(at + 1) == Some(&&Token::Punct('.')) {
        (first, ident(words.get(at + 2).copied()), at + 3)
    } else {
        (None, first, at + 1)
    }
}

/// `durable_writes = false` among a `CREATE KEYSPACE`'s options.
fn durable_writes_off(words: &[&Token<'_>]) -> bool {
    words.windows(3).any(|w| {
        matches!(w[0], Token::Word(x) if x.eq_ignore_ascii_case("durable_writes"))
            && w[1] == &Token::Punct('=')
            && matches!(w[2], Token::Word(x) if x.eq_ignore_ascii_case("false"))
    })
}

/// An identifier, double-quoted.
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NTS: &str = "{'class': 'NetworkTopologyStrategy', 'dc9': 1}";

    fn follow(text: &str) -> Follow {
        read(text, Some(NTS)).follow
    }

    #[test]
    fn a_keyspace_gets_the_targets_replication_and_keeps_durable_writes() {
        assert_eq!(
            follow("CREATE KEYSPACE Shop WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 3}"),
            Follow::Instead(format!(
                "CREATE KEYSPACE IF NOT EXISTS \"shop\" WITH replication = {NTS} AND durable_writes = true"
            ))
        );
        assert_eq!(
            follow("create keyspace if not exists \"Mixed\" with replication = {'class': 'SimpleStrategy', 'replication_factor': 1} and durable_writes = false"),
            Follow::Instead(format!(
                "CREATE KEYSPACE IF NOT EXISTS \"Mixed\" WITH replication = {NTS} AND durable_writes = false"
            ))
        );
        // Without a known replication the client's statement goes as is.
        assert_eq!(
            read("CREATE KEYSPACE k WITH replication = {}", None).follow,
            Follow::Same
        );
        assert_eq!(
            read("CREATE KEYSPACE k WITH x", None).keyspace.as_deref(),
            Some("k")
        );
    }

    #[test]
    fn what_creates_or_extends_goes_as_written_with_its_names() {
        let t = read(
            "CREATE TABLE IF NOT EXISTS ks.t (k int PRIMARY KEY)",
            Some(NTS),
        );
        assert_eq!(
            (t.keyspace.as_deref(), t.table.as_deref(), t.follow),
            (Some("ks"), Some("t"), Follow::Same)
        );
        let t = read("ALTER TABLE \"T2\" ADD v text", Some(NTS));
        assert_eq!(
            (t.keyspace, t.table.as_deref(), t.follow),
            (None, Some("T2"), Follow::Same)
        );
        let t = read(
            "create custom index if not exists i on ks.t (v) using 'StorageAttachedIndex'",
            None,
        );
        assert_eq!(
            (t.keyspace.as_deref(), t.table.as_deref(), t.follow),
            (Some("ks"), Some("t"), Follow::Same)
        );
        let t = read("CREATE INDEX ON t (v)", None);
        assert_eq!((t.keyspace, t.table.as_deref()), (None, Some("t")));
        for text in [
            "CREATE TYPE ks.addr (street text)",
            "ALTER TYPE ks.addr ADD zip text",
            "CREATE OR REPLACE FUNCTION ks.f (a int) CALLED ON NULL INPUT RETURNS int LANGUAGE java AS 'return a;'",
            "CREATE AGGREGATE IF NOT EXISTS ks.agg (int) SFUNC f STYPE int",
            "ALTER TABLE ks.t WITH gc_grace_seconds = 100",
            "ALTER TABLE ks.t RENAME a TO b",
        ] {
            let s = read(text, Some(NTS));
            assert_eq!((s.keyspace.as_deref(), s.follow), (Some("ks"), Follow::Same), "{text}");
        }
    }

    #[test]
    fn drops_replication_roles_views_and_triggers_stay_on_the_source() {
        for (text, why) in [
            ("DROP TABLE ks.t", DROPS),
            ("drop keyspace ks", DROPS),
            ("DROP INDEX ks.i", DROPS),
            ("ALTER TABLE ks.t DROP v", DROPS),
            ("ALTER TABLE t DROP (a, b)", DROPS),
            (
                "ALTER KEYSPACE ks WITH replication = {'class': 'SimpleStrategy'}",
                REPLICATION,
            ),
            ("CREATE ROLE r WITH PASSWORD = 'x'", ROLES),
            ("ALTER USER u WITH PASSWORD 'y'", ROLES),
            (
                "CREATE MATERIALIZED VIEW ks.v AS SELECT * FROM ks.t",
                DERIVED,
            ),
            ("CREATE TRIGGER tr ON ks.t USING 'x'", TRIGGERS),
            ("CREATE", UNREAD),
            ("CREATE INDEX i", UNREAD),
            ("CREATE KEYSPACE", UNREAD),
            ("", UNREAD),
        ] {
            assert_eq!(follow(text), Follow::NotRepeated(why), "{text}");
        }
    }
}
