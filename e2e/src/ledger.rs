//! The ledger of `ferry-loadgen`'s mixed workload: a deterministic schedule
//! of CQL operations, the final state the acknowledged ones must leave, and
//! the cell-by-cell comparison of that state with what a cluster holds.
//!
//! # How the ledger survives a pod
//!
//! Operation `n` is a pure function of `n` ([`op`]): its kind, its keys and
//! its values. The application numbers its operations 0, 1, 2, ... and only
//! has to remember which of them were *not* acknowledged; the ledger is then
//! "every operation below `ledgerOps`, less `ledgerUncertainOps`", and both
//! numbers are in the final JSON tally the application prints on its way out
//! (SIGTERM), which the scenario already collects with `kubectl logs -f`
//! (`e2e/src/migration.rs`). Nothing has to be written anywhere else: no
//! ledger table that could itself fail to be written during the roll, and no
//! volume. The check (`ferry-loadgen --check-ledger N --uncertain-ops ...`,
//! run as a pod like `--verify-upto`) rebuilds the expected state from the
//! schedule ([`expected`]) and reads every key from the source and the
//! target. The price is that the application must run once, uninterrupted:
//! a restarted container would start again at operation 0 and the check
//! would report the replays as differences (a loud failure, never a silent
//! pass); the id check has always relied on the same.
//!
//! # Why the expected state does not depend on timing
//!
//! Operations run concurrently, but an operation on a key starts only once
//! the previous operation on that key has been answered (the application
//! keeps the last operation per key and waits for it), so the operations on
//! one key apply in schedule order. An operation that failed or timed out has
//! an unknown outcome: its keys are *uncertain* and skipped by the check
//! (counted and printed). An operation that had to start before its
//! predecessor was answered (stuck for over two minutes) is treated as
//! uncertain too, since its order is then unknown.
//!
//! # What is compared
//!
//! For every certain key, every column: the value on the source and on the
//! target against the ledger (a deleted row or cell must be null on both). For
//! regular cells of `ledger_rows` and `ledger_time`, the WRITETIME must be
//! equal on both sides and the TTL within 1 s (and present exactly where the
//! ledger wrote one). Not compared: the WRITETIME of LWT cells (Paxos picks
//! it on each side, docs/proxy.md), of collection elements (the backfill
//! writes sets and maps at their newest element's timestamp, and repairs
//! lists, docs/bulk.md), and counters, which have none and are compared by
//! value. Counter tables cannot be backfilled (docs/bulk.md), so the example
//! migration excludes `ledger_counts`: its counters are checked on the
//! source only (`--source-only-tables`). LWT inserts can be left out
//! ([`Schedule::lwt`], `--ledger-lwt false`), which the example does: see
//! there why validation does not converge under a continuous LWT load.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Operations per cycle: operation `n` is slot `n % SLOTS` of cycle
/// `n / SLOTS`.
pub const SLOTS: u64 = 15;
/// Cycles between two operations on the same row of `ledger_rows`.
pub const LAG: i64 = 4;
/// The TTL of the `USING TTL` writes: long enough to outlive any run.
pub const TTL_SECS: i32 = 86_400;

/// Key ranges of `ledger_rows` (plain rows use the cycle itself).
const TTL_BASE: i64 = 1_000_000_000;
const LOGGED_BASE: i64 = 2_000_000_000;
const UNLOGGED_BASE: i64 = 3_000_000_000;
/// Set elements added and removed again in the same cycle.
const REMOVED_BASE: i64 = 1_000_000;

/// The ledger's tables, all keyed by `k bigint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Rows,
    Time,
    Lwt,
    Coll,
    Counts,
}

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Text,
    BigInt,
    Timeuuid,
    ListBigInt,
    SetBigInt,
    MapBigIntText,
    Counter,
}

impl ColType {
    fn cql(self) -> &'static str {
        match self {
            ColType::Text => "text",
            ColType::BigInt => "bigint",
            ColType::Timeuuid => "timeuuid",
            ColType::ListBigInt => "list<bigint>",
            ColType::SetBigInt => "set<bigint>",
            ColType::MapBigIntText => "map<bigint, text>",
            ColType::Counter => "counter",
        }
    }
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Rows,
        Table::Time,
        Table::Lwt,
        Table::Coll,
        Table::Counts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Rows => "ledger_rows",
            Table::Time => "ledger_time",
            Table::Lwt => "ledger_lwt",
            Table::Coll => "ledger_coll",
            Table::Counts => "ledger_counts",
        }
    }

    /// The regular columns (the key `k` is not listed).
    pub fn columns(self) -> &'static [(&'static str, ColType)] {
        match self {
            Table::Rows => &[
                ("v", ColType::Text),
                ("n", ColType::BigInt),
                ("note", ColType::Text),
            ],
            Table::Time => &[("at", ColType::Timeuuid), ("note", ColType::Text)],
            Table::Lwt => &[("v", ColType::Text)],
            Table::Coll => &[
                ("l", ColType::ListBigInt),
                ("s", ColType::SetBigInt),
                ("m", ColType::MapBigIntText),
            ],
            Table::Counts => &[("c", ColType::Counter)],
        }
    }

    /// Whether WRITETIME and TTL of its cells are compared between the
    /// source and the target (see the module doc for the others).
    pub fn compares_write_meta(self) -> bool {
        matches!(self, Table::Rows | Table::Time)
    }

    /// `CREATE TABLE IF NOT EXISTS ks.table (...)`.
    pub fn create(self, ks: &str) -> String {
        let cols: Vec<String> = self
            .columns()
            .iter()
            .map(|(c, t)| format!("{c} {}", t.cql()))
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{} (k bigint PRIMARY KEY, {})",
            self.name(),
            cols.join(", ")
        )
    }

    /// The SELECT the check runs per key: the columns, then WRITETIME and TTL
    /// of each column when [`Table::compares_write_meta`].
    pub fn select(self, ks: &str) -> String {
        let mut parts: Vec<String> = self.columns().iter().map(|(c, _)| c.to_string()).collect();
        if self.compares_write_meta() {
            for (c, _) in self.columns() {
                parts.push(format!("WRITETIME({c})"));
                parts.push(format!("TTL({c})"));
            }
        }
        format!(
            "SELECT {} FROM {ks}.{} WHERE k = ?",
            parts.join(", "),
            self.name()
        )
    }

    pub fn from_name(name: &str) -> Option<Table> {
        let name = name.rsplit('.').next().unwrap_or(name);
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// One row of one ledger table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub table: Table,
    pub k: i64,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} k={}", self.table.name(), self.k)
    }
}

/// A value, as the ledger expects it or as a cluster returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Text(String),
    BigInt(i64),
    Timeuuid(String),
    /// Expected only: a `now()` value, equal on both sides but not known.
    AnyTimeuuid,
    List(Vec<i64>),
    Set(BTreeSet<i64>),
    Map(BTreeMap<i64, String>),
    Counter(i64),
    /// Read only: a value of a type the ledger never writes.
    Other(String),
}

impl Val {
    /// An empty collection is null in CQL.
    fn is_empty_collection(&self) -> bool {
        match self {
            Val::List(l) => l.is_empty(),
            Val::Set(s) => s.is_empty(),
            Val::Map(m) => m.is_empty(),
            _ => false,
        }
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn join<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
            items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        }
        match self {
            Val::Text(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Val::BigInt(n) | Val::Counter(n) => write!(f, "{n}"),
            Val::Timeuuid(u) => write!(f, "{u}"),
            Val::AnyTimeuuid => write!(f, "now()"),
            Val::List(l) => write!(f, "[{}]", join(l.iter())),
            Val::Set(s) => write!(f, "{{{}}}", join(s.iter())),
            Val::Map(m) => write!(
                f,
                "{{{}}}",
                join(m.iter().map(|(k, v)| format!("{k}: '{v}'")))
            ),
            Val::Other(s) => write!(f, "{s}"),
        }
    }
}

fn show(v: &Option<Val>) -> String {
    v.as_ref()
        .map(Val::to_string)
        .unwrap_or_else(|| "null".into())
}

/// One operation of the schedule, with its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `INSERT INTO ledger_rows (k, v, n)`: a new row.
    Insert { k: i64, v: String, n: i64 },
    /// `UPDATE ledger_rows SET note = ?`: an existing row.
    UpdateNote { k: i64, note: String },
    /// `UPDATE ledger_rows SET v = ?`: overwrites a cell.
    UpdateV { k: i64, v: String },
    /// `DELETE FROM ledger_rows`: a whole row.
    DeleteRow { k: i64 },
    /// `DELETE note FROM ledger_rows`: one cell.
    DeleteNote { k: i64 },
    /// `INSERT ... USING TTL`.
    InsertTtl { k: i64, v: String, n: i64 },
    /// `UPDATE ... USING TTL SET note = ?`.
    UpdateNoteTtl { k: i64, note: String },
    /// `INSERT INTO ledger_time (k, at, note) VALUES (?, now(), ?)`.
    InsertNow { k: i64, note: String },
    /// `UPDATE ledger_time SET at = now()`.
    UpdateNow { k: i64 },
    /// `INSERT INTO ledger_lwt ... IF NOT EXISTS` on a new key.
    LwtInsert { k: i64, v: String },
    /// `UPDATE ledger_coll SET l = l + [?]`.
    ListAppend { k: i64, e: i64 },
    /// `UPDATE ledger_coll SET s = s + ?`.
    SetAdd { k: i64, e: Vec<i64> },
    /// `UPDATE ledger_coll SET s = s - ?`.
    SetRemove { k: i64, e: Vec<i64> },
    /// `UPDATE ledger_coll SET m[?] = ?`.
    MapPut { k: i64, key: i64, value: String },
    /// `UPDATE ledger_counts SET c = c + ?`.
    CounterAdd { k: i64, by: i64 },
    /// A logged batch of two inserts into two partitions of `ledger_rows`.
    LoggedBatch { rows: [(i64, String, i64); 2] },
    /// An unlogged batch: an insert of a new row and, when there is one, an
    /// update of an existing row's note.
    UnloggedBatch {
        insert: (i64, String, i64),
        note: Option<(i64, String)>,
    },
}

/// What one operation does to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    Set {
        col: &'static str,
        val: Val,
        ttl: bool,
    },
    DeleteRow,
    DeleteCell(&'static str),
    ListAppend(&'static str, i64),
    SetAdd(&'static str, Vec<i64>),
    SetRemove(&'static str, Vec<i64>),
    MapPut(&'static str, i64, String),
    CounterAdd(&'static str, i64),
}

fn set(col: &'static str, val: Val) -> Mutation {
    Mutation::Set {
        col,
        val,
        ttl: false,
    }
}

fn set_ttl(col: &'static str, val: Val) -> Mutation {
    Mutation::Set {
        col,
        val,
        ttl: true,
    }
}

fn rows(k: i64) -> Key {
    Key {
        table: Table::Rows,
        k,
    }
}

/// Which optional kinds the schedule includes; the application and the check
/// must use the same (the tally says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// LWT inserts. Without them, their slots do nothing: a migration
    /// validated in `preserve` mode while LWTs keep being written does not
    /// converge (each side's Paxos picks its own WRITETIME, the validator
    /// counts a target WRITETIME older than the source's as a mismatch, and
    /// every round finds the LWT rows written since the last one).
    pub lwt: bool,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule { lwt: true }
    }
}

impl Schedule {
    /// Operation `n` of this schedule (see [`op`]).
    pub fn op(self, n: u64) -> Option<Op> {
        op(n).filter(|o| self.lwt || !matches!(o, Op::LwtInsert { .. }))
    }
}

/// Operation `n` of the schedule; `None` for a slot with nothing to do yet
/// (an update of a row that a later cycle inserts).
pub fn op(n: u64) -> Option<Op> {
    let c = (n / SLOTS) as i64;
    let earlier = c - LAG;
    Some(match n % SLOTS {
        0 => Op::Insert {
            k: c,
            v: format!("v{c}"),
            n: c,
        },
        1 if earlier >= 0 => Op::UpdateNote {
            k: earlier,
            note: format!("u{c}"),
        },
        2 if c >= 2 * LAG => {
            let r = c - 2 * LAG;
            match r % 3 {
                0 => Op::DeleteRow { k: r },
                1 => Op::DeleteNote { k: r },
                _ => Op::UpdateV {
                    k: r,
                    v: format!("w{c}"),
                },
            }
        }
        3 => Op::InsertTtl {
            k: TTL_BASE + c,
            v: format!("t{c}"),
            n: c,
        },
        4 if earlier >= 0 => Op::UpdateNoteTtl {
            k: TTL_BASE + earlier,
            note: format!("tn{c}"),
        },
        5 => Op::InsertNow {
            k: c,
            note: format!("now{c}"),
        },
        6 => Op::LwtInsert {
            k: c,
            v: format!("lwt{c}"),
        },
        7 => Op::ListAppend { k: c / 4, e: c },
        8 => Op::SetAdd {
            k: c / 4,
            e: vec![c, REMOVED_BASE + c],
        },
        9 => Op::SetRemove {
            k: c / 4,
            e: vec![REMOVED_BASE + c],
        },
        10 => Op::MapPut {
            k: c / 4,
            key: c % 2,
            value: format!("m{c}"),
        },
        11 => Op::CounterAdd {
            k: c / 8,
            by: c % 5 + 1,
        },
        12 => Op::LoggedBatch {
            rows: [
                (LOGGED_BASE + 2 * c, format!("lb{c}a"), c),
                (LOGGED_BASE + 2 * c + 1, format!("lb{c}b"), c),
            ],
        },
        13 => Op::UnloggedBatch {
            insert: (UNLOGGED_BASE + c, format!("ub{c}"), c),
            note: (earlier >= 0).then(|| (earlier, format!("ubn{c}"))),
        },
        14 if earlier >= 0 => Op::UpdateNow { k: earlier },
        _ => return None,
    })
}

impl Op {
    /// A short name, for the tallies.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Insert { .. } => "insert",
            Op::UpdateNote { .. } | Op::UpdateV { .. } => "update",
            Op::DeleteRow { .. } => "delete_row",
            Op::DeleteNote { .. } => "delete_cell",
            Op::InsertTtl { .. } | Op::UpdateNoteTtl { .. } => "ttl",
            Op::InsertNow { .. } | Op::UpdateNow { .. } => "now",
            Op::LwtInsert { .. } => "lwt",
            Op::ListAppend { .. } => "list_append",
            Op::SetAdd { .. } => "set_add",
            Op::SetRemove { .. } => "set_remove",
            Op::MapPut { .. } => "map_put",
            Op::CounterAdd { .. } => "counter",
            Op::LoggedBatch { .. } => "logged_batch",
            Op::UnloggedBatch { .. } => "unlogged_batch",
        }
    }

    /// Whether a retry cannot change the outcome (the driver may then retry
    /// it on another node). Appends, counters, LWTs and `now()` are not.
    pub fn idempotent(&self) -> bool {
        !matches!(
            self,
            Op::ListAppend { .. }
                | Op::CounterAdd { .. }
                | Op::LwtInsert { .. }
                | Op::InsertNow { .. }
                | Op::UpdateNow { .. }
        )
    }

    /// The keys it writes and what it does to each.
    pub fn mutations(&self) -> Vec<(Key, Mutation)> {
        let coll = |k| Key {
            table: Table::Coll,
            k,
        };
        match self {
            Op::Insert { k, v, n } => vec![
                (rows(*k), set("v", Val::Text(v.clone()))),
                (rows(*k), set("n", Val::BigInt(*n))),
            ],
            Op::UpdateNote { k, note } => vec![(rows(*k), set("note", Val::Text(note.clone())))],
            Op::UpdateV { k, v } => vec![(rows(*k), set("v", Val::Text(v.clone())))],
            Op::DeleteRow { k } => vec![(rows(*k), Mutation::DeleteRow)],
            Op::DeleteNote { k } => vec![(rows(*k), Mutation::DeleteCell("note"))],
            Op::InsertTtl { k, v, n } => vec![
                (rows(*k), set_ttl("v", Val::Text(v.clone()))),
                (rows(*k), set_ttl("n", Val::BigInt(*n))),
            ],
            Op::UpdateNoteTtl { k, note } => {
                vec![(rows(*k), set_ttl("note", Val::Text(note.clone())))]
            }
            Op::InsertNow { k, note } => {
                let key = Key {
                    table: Table::Time,
                    k: *k,
                };
                vec![
                    (key, set("at", Val::AnyTimeuuid)),
                    (key, set("note", Val::Text(note.clone()))),
                ]
            }
            Op::UpdateNow { k } => vec![(
                Key {
                    table: Table::Time,
                    k: *k,
                },
                set("at", Val::AnyTimeuuid),
            )],
            Op::LwtInsert { k, v } => vec![(
                Key {
                    table: Table::Lwt,
                    k: *k,
                },
                set("v", Val::Text(v.clone())),
            )],
            Op::ListAppend { k, e } => vec![(coll(*k), Mutation::ListAppend("l", *e))],
            Op::SetAdd { k, e } => vec![(coll(*k), Mutation::SetAdd("s", e.clone()))],
            Op::SetRemove { k, e } => vec![(coll(*k), Mutation::SetRemove("s", e.clone()))],
            Op::MapPut { k, key, value } => {
                vec![(coll(*k), Mutation::MapPut("m", *key, value.clone()))]
            }
            Op::CounterAdd { k, by } => vec![(
                Key {
                    table: Table::Counts,
                    k: *k,
                },
                Mutation::CounterAdd("c", *by),
            )],
            Op::LoggedBatch { rows: batch } => batch
                .iter()
                .flat_map(|(k, v, n)| {
                    [
                        (rows(*k), set("v", Val::Text(v.clone()))),
                        (rows(*k), set("n", Val::BigInt(*n))),
                    ]
                })
                .collect(),
            Op::UnloggedBatch { insert, note } => {
                let (k, v, n) = insert;
                let mut out = vec![
                    (rows(*k), set("v", Val::Text(v.clone()))),
                    (rows(*k), set("n", Val::BigInt(*n))),
                ];
                if let Some((k, note)) = note {
                    out.push((rows(*k), set("note", Val::Text(note.clone()))));
                }
                out
            }
        }
    }

    /// The distinct keys it writes.
    pub fn keys(&self) -> Vec<Key> {
        let keys: BTreeSet<Key> = self.mutations().into_iter().map(|(k, _)| k).collect();
        keys.into_iter().collect()
    }
}

/// An expected cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub val: Val,
    /// Written `USING TTL`.
    pub ttl: bool,
}

/// The expected columns of one row (absent: null).
pub type Row = BTreeMap<&'static str, Cell>;

/// The state the acknowledged operations must have left.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Every key only certain operations wrote, with its expected columns
    /// (empty: the row is gone, or all its cells are).
    pub rows: BTreeMap<Key, Row>,
    /// Keys an operation with an unknown outcome wrote: not checked.
    pub uncertain: BTreeSet<Key>,
}

fn apply(row: &mut Row, m: &Mutation) {
    match m {
        Mutation::Set { col, val, ttl } => {
            row.insert(
                col,
                Cell {
                    val: val.clone(),
                    ttl: *ttl,
                },
            );
        }
        Mutation::DeleteRow => row.clear(),
        Mutation::DeleteCell(col) => {
            row.remove(col);
        }
        Mutation::ListAppend(col, e) => {
            let cell = row.entry(col).or_insert(Cell {
                val: Val::List(Vec::new()),
                ttl: false,
            });
            if let Val::List(l) = &mut cell.val {
                l.push(*e);
            }
        }
        Mutation::SetAdd(col, es) => {
            let cell = row.entry(col).or_insert(Cell {
                val: Val::Set(BTreeSet::new()),
                ttl: false,
            });
            if let Val::Set(s) = &mut cell.val {
                s.extend(es.iter().copied());
            }
        }
        Mutation::SetRemove(col, es) => {
            if let Some(Cell {
                val: Val::Set(s), ..
            }) = row.get_mut(col)
            {
                for e in es {
                    s.remove(e);
                }
            }
        }
        Mutation::MapPut(col, key, value) => {
            let cell = row.entry(col).or_insert(Cell {
                val: Val::Map(BTreeMap::new()),
                ttl: false,
            });
            if let Val::Map(m) = &mut cell.val {
                m.insert(*key, value.clone());
            }
        }
        Mutation::CounterAdd(col, by) => {
            let cell = row.entry(col).or_insert(Cell {
                val: Val::Counter(0),
                ttl: false,
            });
            if let Val::Counter(c) = &mut cell.val {
                *c += by;
            }
        }
    }
    // An emptied collection is null.
    row.retain(|_, cell| !cell.val.is_empty_collection());
}

/// Replays operations `0..ops` of the schedule; the keys of those in
/// `uncertain` are left out (they are not acknowledged, so their effect is
/// unknown).
pub fn expected(ops: u64, uncertain: &BTreeSet<u64>, schedule: Schedule) -> Expected {
    let mut out = Expected::default();
    for n in 0..ops {
        let Some(op) = schedule.op(n) else { continue };
        if uncertain.contains(&n) {
            for key in op.keys() {
                out.rows.remove(&key);
                out.uncertain.insert(key);
            }
            continue;
        }
        for (key, m) in op.mutations() {
            if out.uncertain.contains(&key) {
                continue;
            }
            apply(out.rows.entry(key).or_default(), &m);
        }
    }
    out
}

/// One column as a cluster returned it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadCell {
    pub val: Option<Val>,
    /// Microseconds, for tables that [`Table::compares_write_meta`].
    pub writetime: Option<i64>,
    /// Seconds left.
    pub ttl: Option<i32>,
}

/// One row as a cluster returned it, by column (a missing row: no entry).
pub type ReadRow = BTreeMap<String, ReadCell>;

/// Which cluster a difference is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
    /// Between source and target (WRITETIME, TTL, a `now()` value).
    Both,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
            Side::Both => "source vs target",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub side: Side,
    pub key: Key,
    pub column: &'static str,
    pub what: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}.{}: {}",
            self.side, self.key, self.column, self.what
        )
    }
}

fn normalise(v: Option<&Val>) -> Option<&Val> {
    v.filter(|v| !v.is_empty_collection())
}

fn value_matches(expected: Option<&Val>, found: Option<&Val>) -> bool {
    match (expected, normalise(found)) {
        (Some(Val::AnyTimeuuid), Some(Val::Timeuuid(_))) => true,
        (e, f) => e == f,
    }
}

/// Compares one key's expected columns with the source's row and, unless
/// the table is not migrated (`target: None`), the target's. Returns the
/// differences and how many cells were compared.
pub fn diff_key(
    key: Key,
    expected: &Row,
    source: &ReadRow,
    target: Option<&ReadRow>,
) -> (Vec<Difference>, u64) {
    let mut out = Vec::new();
    let mut cells = 0;
    let missing = ReadCell::default();
    for (col, _) in key.table.columns() {
        let want = expected.get(col);
        let want_val = want.map(|c| &c.val);
        let mut sides = vec![(Side::Source, source.get(*col).unwrap_or(&missing))];
        if let Some(t) = target {
            sides.push((Side::Target, t.get(*col).unwrap_or(&missing)));
        }
        for (side, cell) in &sides {
            cells += 1;
            if !value_matches(want_val, cell.val.as_ref()) {
                out.push(Difference {
                    side: *side,
                    key,
                    column: col,
                    what: format!(
                        "expected {}, found {}",
                        show(&want_val.cloned()),
                        show(&normalise(cell.val.as_ref()).cloned())
                    ),
                });
            } else if key.table.compares_write_meta() && want.is_some() {
                let ttl_wanted = want.is_some_and(|c| c.ttl);
                if ttl_wanted != cell.ttl.is_some() {
                    out.push(Difference {
                        side: *side,
                        key,
                        column: col,
                        what: format!(
                            "TTL {}, expected {}",
                            cell.ttl
                                .map(|t| format!("{t}s"))
                                .unwrap_or_else(|| "none".into()),
                            if ttl_wanted { "one" } else { "none" }
                        ),
                    });
                }
            }
        }
        // Source against target, where both hold the expected value.
        let [(_, s), (_, t)] = sides.as_slice() else {
            continue;
        };
        if want.is_none()
            || !value_matches(want_val, s.val.as_ref())
            || !value_matches(want_val, t.val.as_ref())
        {
            continue;
        }
        if want_val == Some(&Val::AnyTimeuuid) && s.val != t.val {
            out.push(Difference {
                side: Side::Both,
                key,
                column: col,
                what: format!(
                    "now() differs: {} on the source, {} on the target",
                    show(&s.val),
                    show(&t.val)
                ),
            });
        }
        if key.table.compares_write_meta() {
            if s.writetime != t.writetime {
                out.push(Difference {
                    side: Side::Both,
                    key,
                    column: col,
                    what: format!(
                        "WRITETIME {:?} on the source, {:?} on the target",
                        s.writetime, t.writetime
                    ),
                });
            }
            let ttl_close = match (s.ttl, t.ttl) {
                (None, None) => true,
                (Some(a), Some(b)) => (a - b).abs() <= 1,
                _ => false,
            };
            if !ttl_close {
                out.push(Difference {
                    side: Side::Both,
                    key,
                    column: col,
                    what: format!("TTL {:?} on the source, {:?} on the target", s.ttl, t.ttl),
                });
            }
        }
    }
    (out, cells)
}

/// The check's figures, as `ferry-loadgen --check-ledger` prints them
/// (`{"ledger": {...}}`) and the scenario reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Report {
    /// Operations in the schedule that the application issued.
    pub ops: u64,
    /// Of those, not acknowledged (failed or timed out).
    pub uncertain_ops: u64,
    /// Keys the acknowledged operations wrote and that were compared.
    pub keys_checked: u64,
    /// Keys skipped because an uncertain operation wrote them.
    pub uncertain_keys: u64,
    /// Cells compared (each column of each key, on each side).
    pub cells_checked: u64,
    pub differences: u64,
    pub source_differences: u64,
    pub target_differences: u64,
    /// WRITETIME, TTL or `now()` values that differ between the sides.
    pub source_vs_target_differences: u64,
    /// Tables compared on the source only (not migrated).
    pub source_only_tables: Vec<String>,
    /// Up to 20 differences, for people.
    pub examples: Vec<String>,
}

impl Report {
    pub fn add(&mut self, differences: &[Difference]) {
        for d in differences {
            self.differences += 1;
            match d.side {
                Side::Source => self.source_differences += 1,
                Side::Target => self.target_differences += 1,
                Side::Both => self.source_vs_target_differences += 1,
            }
            if self.examples.len() < 20 {
                self.examples.push(d.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(val: Val) -> ReadCell {
        ReadCell {
            val: Some(val),
            writetime: Some(1000),
            ttl: None,
        }
    }

    #[test]
    fn the_schedule_covers_every_kind_and_is_deterministic() {
        let kinds: BTreeSet<&str> = (0..SLOTS * 20).filter_map(op).map(|o| o.kind()).collect();
        for kind in [
            "insert",
            "update",
            "delete_row",
            "delete_cell",
            "ttl",
            "now",
            "lwt",
            "list_append",
            "set_add",
            "set_remove",
            "map_put",
            "counter",
            "logged_batch",
            "unlogged_batch",
        ] {
            assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
        }
        assert_eq!(op(12345), op(12345));
        // Slots that touch an earlier row do nothing before it exists.
        assert_eq!(op(1), None);
        assert_eq!(op(2), None);
    }

    #[test]
    fn the_expected_state_replays_inserts_updates_and_deletes_in_order() {
        // Enough cycles for row 0 (deleted), 1 (note deleted) and 2 (v
        // overwritten) to have gone through insert, update and delete.
        let ops = SLOTS * (2 * LAG as u64 + 3);
        let e = expected(ops, &BTreeSet::new(), Schedule::default());
        assert!(e.uncertain.is_empty());
        assert!(e.rows[&rows(0)].is_empty(), "{:?}", e.rows[&rows(0)]);
        let r1 = &e.rows[&rows(1)];
        assert_eq!(r1["v"].val, Val::Text("v1".into()));
        assert!(!r1.contains_key("note"));
        let r2 = &e.rows[&rows(2)];
        assert_eq!(r2["v"].val, Val::Text(format!("w{}", 2 + 2 * LAG)));
        // Row 2's note: the unlogged batch of the same cycle wrote it after
        // the plain update.
        assert_eq!(r2["note"].val, Val::Text(format!("ubn{}", 2 + LAG)));
        let r3 = &e.rows[&rows(3)];
        assert_eq!(r3["n"].val, Val::BigInt(3));
        // TTL rows and cells.
        let t = &e.rows[&rows(TTL_BASE)];
        assert!(t["v"].ttl && t["note"].ttl);
        // Collections: 4 cycles per row.
        let c = &e.rows[&Key {
            table: Table::Coll,
            k: 0,
        }];
        assert_eq!(c["l"].val, Val::List(vec![0, 1, 2, 3]));
        assert_eq!(c["s"].val, Val::Set([0, 1, 2, 3].into_iter().collect()));
        assert_eq!(
            c["m"].val,
            Val::Map([(0, "m2".to_string()), (1, "m3".to_string())].into())
        );
        // Counters: 8 cycles per row, +1..+5.
        let counts = &e.rows[&Key {
            table: Table::Counts,
            k: 0,
        }];
        assert_eq!(counts["c"].val, Val::Counter(1 + 2 + 3 + 4 + 5 + 1 + 2 + 3));
        assert_eq!(
            e.rows[&Key {
                table: Table::Time,
                k: 1
            }]["at"]
                .val,
            Val::AnyTimeuuid
        );
        assert_eq!(
            e.rows[&rows(LOGGED_BASE + 1)]["v"].val,
            Val::Text("lb0b".into())
        );
        let lwt = Key {
            table: Table::Lwt,
            k: 2,
        };
        assert_eq!(e.rows[&lwt]["v"].val, Val::Text("lwt2".into()));
        // Without LWTs the same schedule leaves the rest as it was.
        let no_lwt = expected(ops, &BTreeSet::new(), Schedule { lwt: false });
        assert!(no_lwt.rows.keys().all(|k| k.table != Table::Lwt));
        assert_eq!(no_lwt.rows.len(), e.rows.len() - (ops / SLOTS) as usize);
        assert_eq!(Schedule { lwt: false }.op(6), None);
    }

    #[test]
    fn an_uncertain_operation_takes_its_keys_out_of_the_check() {
        let ops = SLOTS * 10;
        // The first list append of collection row 0, and the logged batch
        // of cycle 1 (two keys).
        let uncertain: BTreeSet<u64> = [7, SLOTS + 12].into();
        let e = expected(ops, &uncertain, Schedule::default());
        let coll0 = Key {
            table: Table::Coll,
            k: 0,
        };
        assert!(e.uncertain.contains(&coll0) && !e.rows.contains_key(&coll0));
        assert!(e.uncertain.contains(&rows(LOGGED_BASE + 2)));
        assert!(e.uncertain.contains(&rows(LOGGED_BASE + 3)));
        assert_eq!(e.uncertain.len(), 3);
        // Later operations on an uncertain key do not bring it back.
        assert!(!e.rows.contains_key(&coll0));
        assert!(e.rows.contains_key(&Key {
            table: Table::Coll,
            k: 1
        }));
    }

    #[test]
    fn diffs_compare_values_writetimes_and_ttls() {
        let mut row = Row::new();
        row.insert(
            "v",
            Cell {
                val: Val::Text("a".into()),
                ttl: false,
            },
        );
        row.insert(
            "n",
            Cell {
                val: Val::BigInt(1),
                ttl: true,
            },
        );
        let key = rows(7);
        let mut source = ReadRow::new();
        source.insert("v".into(), cell(Val::Text("a".into())));
        source.insert(
            "n".into(),
            ReadCell {
                ttl: Some(86000),
                ..cell(Val::BigInt(1))
            },
        );
        let target = source.clone();
        let (d, cells) = diff_key(key, &row, &source, Some(&target));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(cells, 6, "3 columns on 2 sides");

        // A TTL one second off is fine, two are not.
        let mut t = target.clone();
        t.get_mut("n").unwrap().ttl = Some(85999);
        assert!(diff_key(key, &row, &source, Some(&t)).0.is_empty());
        t.get_mut("n").unwrap().ttl = Some(85998);
        let (d, _) = diff_key(key, &row, &source, Some(&t));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].side, Side::Both);

        // Another WRITETIME on the target.
        let mut t = target.clone();
        t.get_mut("v").unwrap().writetime = Some(999);
        let (d, _) = diff_key(key, &row, &source, Some(&t));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].what.contains("WRITETIME"), "{}", d[0]);

        // A value missing on the target, an extra cell on the source.
        let mut t = target.clone();
        t.remove("v");
        let mut s = source.clone();
        s.insert("note".into(), cell(Val::Text("x".into())));
        let (d, _) = diff_key(key, &row, &s, Some(&t));
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(
            d[0].to_string(),
            "target ledger_rows k=7.v: expected 'a', found null"
        );
        assert_eq!(
            d[1].to_string(),
            "source ledger_rows k=7.note: expected null, found 'x'"
        );

        // A TTL where none was written.
        let mut s = source.clone();
        s.get_mut("v").unwrap().ttl = Some(5);
        let (d, _) = diff_key(key, &row, &s, Some(&target));
        assert!(d
            .iter()
            .any(|d| d.side == Side::Source && d.what.contains("TTL")));

        // A deleted row that is gone on both sides.
        let (d, _) = diff_key(key, &Row::new(), &ReadRow::new(), Some(&ReadRow::new()));
        assert!(d.is_empty());
    }

    #[test]
    fn diffs_of_now_collections_and_source_only_tables() {
        let key = Key {
            table: Table::Time,
            k: 1,
        };
        let mut row = Row::new();
        row.insert(
            "at",
            Cell {
                val: Val::AnyTimeuuid,
                ttl: false,
            },
        );
        let mut s = ReadRow::new();
        s.insert("at".into(), cell(Val::Timeuuid("a".into())));
        let mut t = s.clone();
        assert!(diff_key(key, &row, &s, Some(&t)).0.is_empty());
        t.insert("at".into(), cell(Val::Timeuuid("b".into())));
        let (d, _) = diff_key(key, &row, &s, Some(&t));
        assert_eq!(d.len(), 1);
        assert!(d[0].what.contains("now()"));

        // Collections: values only; an empty collection is null.
        let key = Key {
            table: Table::Coll,
            k: 0,
        };
        let mut row = Row::new();
        row.insert(
            "l",
            Cell {
                val: Val::List(vec![1, 2]),
                ttl: false,
            },
        );
        let mut s = ReadRow::new();
        s.insert("l".into(), cell(Val::List(vec![1, 2])));
        s.insert("s".into(), cell(Val::Set(BTreeSet::new())));
        let mut t = s.clone();
        t.get_mut("l").unwrap().writetime = Some(5);
        assert!(diff_key(key, &row, &s, Some(&t)).0.is_empty());
        t.insert("l".into(), cell(Val::List(vec![1, 2, 2])));
        let (d, _) = diff_key(key, &row, &s, Some(&t));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].what, "expected [1, 2], found [1, 2, 2]");

        // Source only: counters compared by value on the source.
        let key = Key {
            table: Table::Counts,
            k: 0,
        };
        let mut row = Row::new();
        row.insert(
            "c",
            Cell {
                val: Val::Counter(3),
                ttl: false,
            },
        );
        let mut s = ReadRow::new();
        s.insert("c".into(), cell(Val::Counter(4)));
        let (d, cells) = diff_key(key, &row, &s, None);
        assert_eq!((d.len(), cells), (1, 1));
        assert_eq!(d[0].side, Side::Source);
    }

    #[test]
    fn a_report_counts_differences_by_side() {
        let key = rows(1);
        let d = |side| Difference {
            side,
            key,
            column: "v",
            what: "x".into(),
        };
        let mut r = Report::default();
        r.add(&[
            d(Side::Source),
            d(Side::Target),
            d(Side::Both),
            d(Side::Target),
        ]);
        assert_eq!(
            (
                r.differences,
                r.source_differences,
                r.target_differences,
                r.source_vs_target_differences
            ),
            (4, 1, 2, 1)
        );
        assert_eq!(r.examples[0], "source ledger_rows k=1.v: x");
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn statements_name_every_column() {
        assert_eq!(
            Table::Rows.select("ks"),
            "SELECT v, n, note, WRITETIME(v), TTL(v), WRITETIME(n), TTL(n), WRITETIME(note), TTL(note) FROM ks.ledger_rows WHERE k = ?"
        );
        assert_eq!(
            Table::Coll.create("ks"),
            "CREATE TABLE IF NOT EXISTS ks.ledger_coll (k bigint PRIMARY KEY, l list<bigint>, s set<bigint>, m map<bigint, text>)"
        );
        assert_eq!(
            Table::from_name("ferry_demo.ledger_counts"),
            Some(Table::Counts)
        );
    }
}
