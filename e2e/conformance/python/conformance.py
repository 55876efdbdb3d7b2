#!/usr/bin/env python3
"""Driver conformance program: the DataStax Python driver through the proxy.

Connects to ONE contact point (a proxy) with the driver's defaults
(token-aware routing, the driver's own client timestamps unless
--no-client-timestamps), runs the scenarios into the given keyspace, whose
tables e2e/conformance/schema.cql creates, and prints one JSON document:

    {"driver": ..., "protocol_version": N, "hosts": ["ip:port", ...],
     "scenarios": [{"name": ..., "ok": true|false, "error": text|null}, ...]}

Every row a run writes is keyed with the run name (--run), so several runs
share the tables; a scenario writes only to the tables named after it. The
values are deterministic except the ones the server or the proxy must
generate (now(), uuid(), ...), which must then be equal on both clusters.
e2e/tests/conformance.rs compares source and target afterwards.
"""

import argparse
import collections
import datetime
import decimal
import hashlib
import json
import sys
import traceback
import uuid

import cassandra
from cassandra.cluster import Cluster
from cassandra.query import BatchStatement, BatchType, SimpleStatement
from cassandra.util import Date, Time

Addr = collections.namedtuple("Addr", ["street", "city", "zip"])

SCALARS = "k, c, t, i, bi, d, b, ts, u, bl, dec, vi, dt, tm, ip"
SCALAR_LITERALS = (
    "'{k}', {c}, 'text é ''quoted''', 42, 9000000000, 3.5, true, "
    "'2024-01-02 03:04:05.678+0000', 9b4e1c56-7c3a-4d6b-9f0e-0a1b2c3d4e5f, 0xcafe, "
    "12.345, 123456789012345678901234567890, '2024-02-29', '13:14:15.123456789', '10.1.2.3'"
)


def scalar_values(k, c):
    return (
        k,
        c,
        "text é 'quoted'",
        42,
        9000000000,
        3.5,
        True,
        datetime.datetime(2024, 1, 2, 3, 4, 5, 678000),
        uuid.UUID("9b4e1c56-7c3a-4d6b-9f0e-0a1b2c3d4e5f"),
        b"\xca\xfe",
        decimal.Decimal("12.345"),
        123456789012345678901234567890,
        Date(datetime.date(2024, 2, 29)),
        Time(datetime.time(13, 14, 15, 123456)),
        "10.1.2.3",
    )


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Scenarios:
    def __init__(self, cluster, session, ks, ks2, run):
        self.cluster = cluster
        self.s = session
        self.ks = ks
        self.ks2 = ks2
        self.r = run

    def key(self, n=""):
        return f"{self.r}:{n}" if n != "" else self.r

    # -- plain writes -------------------------------------------------------

    def insert_simple(self):
        self.s.execute(
            f"INSERT INTO insert_simple ({SCALARS}) VALUES ({SCALAR_LITERALS.format(k=self.key(), c=1)})"
        )
        # Parameters of a simple statement: the driver formats them into the text.
        self.s.execute(
            f"INSERT INTO insert_simple ({SCALARS}) VALUES ({', '.join(['%s'] * 15)})",
            scalar_values(self.key(), 2),
        )
        # A row with nulls (tombstones) and an empty text.
        self.s.execute(
            "INSERT INTO insert_simple (k, c, t, i, bl) VALUES (%s, 3, '', null, null)",
            (self.key(),),
        )

    def insert_prepared(self):
        p = self.s.prepare(
            f"INSERT INTO insert_prepared ({SCALARS}) VALUES ({', '.join(['?'] * 15)})"
        )
        for c in range(1, 4):
            self.s.execute(p, scalar_values(self.key(), c))
        self.s.execute(p, (self.key("nulls"), 1) + (None,) * 13)

    def update_simple(self):
        k = self.key()
        self.s.execute(f"UPDATE update_simple SET t = 'first', i = 1 WHERE k = '{k}' AND c = 1")
        self.s.execute(f"UPDATE update_simple SET t = 'second', bi = -5 WHERE k = '{k}' AND c = 1")
        self.s.execute(
            "UPDATE update_simple SET d = %s, ts = %s, ip = %s WHERE k = %s AND c = %s",
            (2.25, datetime.datetime(2030, 5, 6, 7, 8, 9), "::1", k, 2),
        )

    def update_prepared(self):
        k = self.key()
        p = self.s.prepare("UPDATE update_prepared SET t = ?, i = ?, dec = ? WHERE k = ? AND c = ?")
        self.s.execute(p, ("first", 1, decimal.Decimal("-1.5"), k, 1))
        self.s.execute(p, ("second", 2, decimal.Decimal("0.001"), k, 1))
        self.s.execute(p, ("other", 3, None, k, 2))

    def using_timestamp(self):
        k = self.key()
        t0 = 1_700_000_000_000_000
        self.s.execute(
            f"INSERT INTO using_timestamp (k, c, v, n) VALUES ('{k}', 1, 'kept', 1) USING TIMESTAMP {t0}"
        )
        # Older: must lose on both sides.
        self.s.execute(
            f"UPDATE using_timestamp USING TIMESTAMP {t0 - 1} SET v = 'older' WHERE k = '{k}' AND c = 1"
        )
        p = self.s.prepare("INSERT INTO using_timestamp (k, c, v, n) VALUES (?, ?, ?, ?) USING TIMESTAMP ?")
        self.s.execute(p, (k, 2, "prepared", 2, t0 + 5))
        self.s.execute(p, (k, 2, "prepared older", 3, t0 + 4))
        u = self.s.prepare("UPDATE using_timestamp USING TIMESTAMP ? AND TTL ? SET n = ? WHERE k = ? AND c = ?")
        self.s.execute(u, (t0 + 10, 86400, 7, k, 1))
        # A timestamp newer than the driver's clock, then a plain write that must lose.
        future = 4_000_000_000_000_000
        self.s.execute(
            f"INSERT INTO using_timestamp (k, c, v) VALUES ('{k}', 3, 'future') USING TIMESTAMP {future}"
        )
        self.s.execute(f"UPDATE using_timestamp SET v = 'now' WHERE k = '{k}' AND c = 3")
        row = self.s.execute(f"SELECT v FROM using_timestamp WHERE k = '{k}' AND c = 3").one()
        check(row.v == "future", f"c=3 is {row.v!r} on the source")

    def using_ttl(self):
        k = self.key()
        self.s.execute(f"INSERT INTO using_ttl (k, c, v, n) VALUES ('{k}', 1, 'a', 1) USING TTL 3600")
        self.s.execute(f"UPDATE using_ttl USING TTL 7200 SET v = 'b' WHERE k = '{k}' AND c = 1")
        p = self.s.prepare("INSERT INTO using_ttl (k, c, v, n) VALUES (?, ?, ?, ?) USING TTL ?")
        self.s.execute(p, (k, 2, "prepared", 2, 5000))
        self.s.execute(
            SimpleStatement(f"INSERT INTO using_ttl (k, c, v) VALUES ('{k}', 3, 'ttl 0') USING TTL 0")
        )

    # -- collections and UDTs ---------------------------------------------

    def coll_set_map(self):
        k = self.key()
        self.s.execute(
            f"INSERT INTO coll_set_map (k, s, m, fs) VALUES ('{k}', {{'a', 'b'}}, {{'x': 1, 'w': 0}}, {{3, 1, 2}})"
        )
        self.s.execute(f"UPDATE coll_set_map SET s = s + {{'c', 'd'}} WHERE k = '{k}'")
        self.s.execute(f"UPDATE coll_set_map SET s = s - {{'a'}} WHERE k = '{k}'")
        self.s.execute(f"UPDATE coll_set_map SET m['y'] = 2 WHERE k = '{k}'")
        self.s.execute(f"UPDATE coll_set_map SET m = m + {{'z': 3}} WHERE k = '{k}'")
        self.s.execute(f"DELETE m['x'] FROM coll_set_map WHERE k = '{k}'")
        self.s.execute(f"UPDATE coll_set_map SET m = m - {{'w'}} WHERE k = '{k}'")
        ps = self.s.prepare("UPDATE coll_set_map SET s = s + ?, m = m + ? WHERE k = ?")
        self.s.execute(ps, ({"e"}, {"p": 9}, k))
        pr = self.s.prepare("UPDATE coll_set_map SET s = s - ?, m[?] = ? WHERE k = ?")
        self.s.execute(pr, ({"b"}, "q", 10, k))
        # A whole-collection overwrite of another row.
        self.s.execute(
            "UPDATE coll_set_map SET s = %s, m = %s, fs = %s WHERE k = %s",
            ({"only"}, {"one": 1}, {7}, self.key(2)),
        )

    def coll_list(self):
        k = self.key()
        self.s.execute(f"INSERT INTO coll_list (k, l, fl) VALUES ('{k}', [1, 2, 3], ['x', 'y'])")
        self.s.execute(f"UPDATE coll_list SET l = l + [4, 5] WHERE k = '{k}'")  # append
        self.s.execute(f"UPDATE coll_list SET l = [0] + l WHERE k = '{k}'")  # prepend
        self.s.execute(f"UPDATE coll_list SET l[1] = 10 WHERE k = '{k}'")  # set by index
        self.s.execute(f"UPDATE coll_list SET l = l - [3] WHERE k = '{k}'")  # remove by value
        self.s.execute(f"DELETE l[0] FROM coll_list WHERE k = '{k}'")  # remove by index
        pa = self.s.prepare("UPDATE coll_list SET l = l + ? WHERE k = ?")
        self.s.execute(pa, ([6], k))
        pp = self.s.prepare("UPDATE coll_list SET l = ? + l WHERE k = ?")
        self.s.execute(pp, ([-1], k))
        pi = self.s.prepare("UPDATE coll_list SET l[?] = ? WHERE k = ?")
        self.s.execute(pi, (2, 20, k))
        prm = self.s.prepare("UPDATE coll_list SET l = l - ?, fl = ? WHERE k = ?")
        self.s.execute(prm, ([5], ["z"], k))
        row = self.s.execute(f"SELECT l FROM coll_list WHERE k = '{k}'").one()
        check(row.l == [-1, 10, 20, 4, 6], f"list on the source is {row.l}")

    def udt_frozen(self):
        k = self.key()
        self.s.execute(
            f"INSERT INTO udt_frozen (k, a, n) VALUES ('{k}', {{street: '1 Main St', city: 'Paris', zip: 75001}}, 1)"
        )
        p = self.s.prepare("INSERT INTO udt_frozen (k, a, n) VALUES (?, ?, ?)")
        self.s.execute(p, (self.key(2), Addr("2 Side St", "Lyon", None), 2))
        u = self.s.prepare("UPDATE udt_frozen SET a = ? WHERE k = ?")
        self.s.execute(u, (Addr("3 Other St", "Nice", 6000), k))

    def udt_nonfrozen(self):
        k = self.key()
        self.s.execute(
            f"INSERT INTO udt_nonfrozen (k, a, n) VALUES ('{k}', {{street: '1 Main St', city: 'Paris', zip: 75001}}, 1)"
        )
        self.s.execute(f"UPDATE udt_nonfrozen SET a.city = 'Lyon' WHERE k = '{k}'")
        p = self.s.prepare("UPDATE udt_nonfrozen SET a.zip = ? WHERE k = ?")
        self.s.execute(p, (69001, k))
        w = self.s.prepare("INSERT INTO udt_nonfrozen (k, a) VALUES (?, ?)")
        self.s.execute(w, (self.key(2), Addr("2 Side St", None, 13000)))
        self.s.execute(f"DELETE a.street FROM udt_nonfrozen WHERE k = '{self.key(2)}'")

    # -- static columns, deletes -------------------------------------------

    def static_columns(self):
        k = self.key()
        self.s.execute(f"INSERT INTO static_columns (k, c, s, s2, v) VALUES ('{k}', 1, 'static', 1, 'one')")
        self.s.execute(f"INSERT INTO static_columns (k, c, v) VALUES ('{k}', 2, 'two')")
        self.s.execute(f"UPDATE static_columns SET s = 'static again' WHERE k = '{k}'")
        p = self.s.prepare("UPDATE static_columns SET s2 = ? WHERE k = ?")
        self.s.execute(p, (2, k))
        q = self.s.prepare("INSERT INTO static_columns (k, c, s, v) VALUES (?, ?, ?, ?)")
        self.s.execute(q, (self.key(2), 1, "other static", "v"))

    def static_only_partition(self):
        self.s.execute(f"INSERT INTO static_only_partition (k, s) VALUES ('{self.key(1)}', 'only static')")
        self.s.execute(f"UPDATE static_only_partition SET s = 'updated' WHERE k = '{self.key(2)}'")
        p = self.s.prepare("INSERT INTO static_only_partition (k, s) VALUES (?, ?) USING TTL 3000")
        self.s.execute(p, (self.key(3), "prepared static"))

    def delete_row(self):
        k = self.key()
        p = self.s.prepare("INSERT INTO delete_row (k, c, v, n) VALUES (?, ?, ?, ?)")
        for c in range(6):
            self.s.execute(p, (k, c, f"v{c}", c))
        self.s.execute(f"DELETE FROM delete_row WHERE k = '{k}' AND c = 2")
        d = self.s.prepare("DELETE FROM delete_row WHERE k = ? AND c = ?")
        self.s.execute(d, (k, 4))
        self.s.execute(f"DELETE v FROM delete_row WHERE k = '{k}' AND c = 1")
        # A whole partition.
        self.s.execute(p, (self.key(2), 0, "gone", 0))
        self.s.execute(f"DELETE FROM delete_row WHERE k = '{self.key(2)}'")

    def delete_range(self):
        k = self.key()
        p = self.s.prepare("INSERT INTO delete_range (k, c, v) VALUES (?, ?, ?)")
        for c in range(10):
            self.s.execute(p, (k, c, f"v{c}"))
        self.s.execute(f"DELETE FROM delete_range WHERE k = '{k}' AND c >= 3 AND c < 6")
        d = self.s.prepare("DELETE FROM delete_range WHERE k = ? AND c > ?")
        self.s.execute(d, (k, 7))
        rows = list(self.s.execute(f"SELECT c FROM delete_range WHERE k = '{k}'"))
        check([r.c for r in rows] == [0, 1, 2, 6, 7], f"source rows {[r.c for r in rows]}")

    # -- counters ----------------------------------------------------------

    def counter_simple_literal(self):
        k = self.key()
        self.s.execute(f"UPDATE counter_simple_literal SET c = c + 5, c2 = c2 - 2 WHERE k = '{k}'")
        self.s.execute(f"UPDATE counter_simple_literal SET c = c + 1 WHERE k = '{k}'")

    def counter_simple_bind(self):
        # The Python driver has no bind markers in a simple statement: its
        # parameters are formatted into the text client-side.
        k = self.key()
        self.s.execute("UPDATE counter_simple_bind SET c = c + %s WHERE k = %s", (7, k))
        self.s.execute("UPDATE counter_simple_bind SET c = c + %s, c2 = c2 + %s WHERE k = %s", (-3, 11, k))

    def counter_prepared(self):
        k = self.key()
        p = self.s.prepare("UPDATE counter_prepared SET c = c + ? WHERE k = ?")
        for n in (1, 2, 3):
            self.s.execute(p, (n, k))
        lit = self.s.prepare("UPDATE counter_prepared SET c2 = c2 + 4 WHERE k = ?")
        self.s.execute(lit, (k,))

    def counter_batch(self):
        k = self.key()
        p = self.s.prepare("UPDATE counter_batch SET c = c + ? WHERE k = ?")
        b = BatchStatement(batch_type=BatchType.COUNTER)
        b.add(p, (2, k))
        b.add(p, (3, self.key(2)))
        b.add(SimpleStatement(f"UPDATE counter_batch SET c2 = c2 + 1 WHERE k = '{k}'"))
        self.s.execute(b)
        self.s.execute(
            f"BEGIN COUNTER BATCH UPDATE counter_batch SET c = c + 10 WHERE k = '{k}'; "
            f"UPDATE counter_batch SET c2 = c2 + 10 WHERE k = '{self.key(2)}'; APPLY BATCH"
        )

    # -- lightweight transactions -----------------------------------------

    def lwt_if_not_exists(self):
        k = self.key()
        r = self.s.execute(f"INSERT INTO lwt_if_not_exists (k, v, t) VALUES ('{k}', 1, 'first') IF NOT EXISTS")
        check(r.was_applied, "first IF NOT EXISTS not applied")
        r = self.s.execute(f"INSERT INTO lwt_if_not_exists (k, v, t) VALUES ('{k}', 2, 'second') IF NOT EXISTS")
        check(not r.was_applied, "second IF NOT EXISTS applied")
        p = self.s.prepare("INSERT INTO lwt_if_not_exists (k, v, t) VALUES (?, ?, ?) IF NOT EXISTS")
        r = self.s.execute(p, (self.key(2), 3, "prepared"))
        check(r.was_applied, "prepared IF NOT EXISTS not applied")

    def lwt_if_condition(self):
        k = self.key()
        self.s.execute(f"INSERT INTO lwt_if_condition (k, v, t) VALUES ('{k}', 1, 'plain')")
        r = self.s.execute(f"UPDATE lwt_if_condition SET v = 2, t = 'cas' WHERE k = '{k}' IF v = 1")
        check(r.was_applied, "IF v = 1 not applied")
        r = self.s.execute(f"UPDATE lwt_if_condition SET v = 3 WHERE k = '{k}' IF v = 1")
        check(not r.was_applied, "stale IF v = 1 applied")
        p = self.s.prepare("UPDATE lwt_if_condition SET v = ? WHERE k = ? IF v = ?")
        r = self.s.execute(p, (4, k, 2))
        check(r.was_applied, "prepared IF v = ? not applied")
        r = self.s.execute(f"DELETE FROM lwt_if_condition WHERE k = '{self.key(2)}' IF EXISTS")
        check(not r.was_applied, "DELETE IF EXISTS of nothing applied")

    def lwt_batch(self):
        k = self.key()
        ins = self.s.prepare("INSERT INTO lwt_batch (k, c, v, t) VALUES (?, ?, ?, ?) IF NOT EXISTS")
        b = BatchStatement()
        b.add(ins, (k, 1, 1, "a"))
        b.add(ins, (k, 2, 2, "b"))
        r = self.s.execute(b)
        check(r.was_applied, "conditional batch not applied")
        b = BatchStatement()
        b.add(SimpleStatement(f"UPDATE lwt_batch SET v = 10 WHERE k = '{k}' AND c = 1 IF v = 1"))
        b.add(SimpleStatement(f"UPDATE lwt_batch SET t = 'bb' WHERE k = '{k}' AND c = 2"))
        r = self.s.execute(b)
        check(r.was_applied, "second conditional batch not applied")

    # -- batches -----------------------------------------------------------

    def _batch(self, table, batch_type):
        k = self.key()
        ins = self.s.prepare(f"INSERT INTO {table} (k, c, v, n) VALUES (?, ?, ?, ?)")
        upd = self.s.prepare(f"UPDATE {table} SET n = ? WHERE k = ? AND c = ?")
        b = BatchStatement(batch_type=batch_type)
        b.add(ins, (k, 1, "prepared", 1))
        b.add(SimpleStatement(f"INSERT INTO {table} (k, c, v, n) VALUES ('{k}', 2, 'simple', 2)"))
        b.add(f"INSERT INTO {table} (k, c, v) VALUES (%s, %s, %s)", (self.key(2), 1, "other partition"))
        b.add(upd, (10, k, 1))
        self.s.execute(b)
        b = BatchStatement(batch_type=batch_type)
        b.add(f"UPDATE {table} USING TIMESTAMP 1000 SET v = 'old' WHERE k = %s AND c = 2", (k,))
        b.add(ins, (k, 3, "second batch", 3))
        self.s.execute(b)

    def batch_logged(self):
        self._batch("batch_logged", BatchType.LOGGED)

    def batch_unlogged(self):
        self._batch("batch_unlogged", BatchType.UNLOGGED)

    def _batch_text(self, table, head):
        k = self.key()
        self.s.execute(
            f"{head} "
            f"INSERT INTO {table} (k, c, v, n) VALUES ('{k}', 1, 'one', 1); "
            f"INSERT INTO {table} (k, c, v, n) VALUES ('{k}', 2, 'two', 2); "
            f"UPDATE {table} SET n = 20 WHERE k = '{k}' AND c = 2; "
            f"INSERT INTO {table} (k, c, v) VALUES ('{self.key(2)}', 1, 'other partition') "
            "APPLY BATCH"
        )
        self.s.execute(
            f"{head.replace('BATCH', 'BATCH USING TIMESTAMP 1234567')} "
            f"INSERT INTO {table} (k, c, v) VALUES ('{k}', 3, 'stamped'); "
            f"UPDATE {table} SET v = 'must lose' WHERE k = '{k}' AND c = 1 "
            "APPLY BATCH"
        )

    def batch_text_logged(self):
        self._batch_text("batch_text_logged", "BEGIN BATCH")

    def batch_text_unlogged(self):
        self._batch_text("batch_text_unlogged", "BEGIN UNLOGGED BATCH")

    # -- non-deterministic functions ---------------------------------------

    def functions_simple(self):
        self.s.execute(
            f"INSERT INTO functions_simple (k, a, b, c, d) VALUES ('{self.key(1)}', now(), uuid(), "
            "toTimestamp(now()), currentTimestamp())"
        )
        self.s.execute(
            "UPDATE functions_simple SET a = now(), b = uuid(), c = toTimestamp(now()), "
            "d = currentTimestamp() WHERE k = %s",
            (self.key(2),),
        )

    def functions_prepared(self):
        p = self.s.prepare(
            "INSERT INTO functions_prepared (k, a, b, c, d) VALUES (?, now(), uuid(), "
            "toTimestamp(now()), currentTimestamp())"
        )
        self.s.execute(p, (self.key(1),))
        self.s.execute(p, (self.key(2),))
        u = self.s.prepare("UPDATE functions_prepared SET a = now(), c = toTimestamp(now()) WHERE k = ?")
        self.s.execute(u, (self.key(3),))

    def functions_batch(self):
        # In BATCH messages: a child sent as text (kind 0) and a prepared one.
        b = BatchStatement(batch_type=BatchType.UNLOGGED)
        b.add(
            SimpleStatement(
                f"INSERT INTO functions_batch (k, a, b, c, d) VALUES ('{self.key(1)}', now(), uuid(), "
                "toTimestamp(now()), currentTimestamp())"
            )
        )
        p = self.s.prepare("UPDATE functions_batch SET a = now(), b = uuid(), d = currentTimestamp() WHERE k = ?")
        b.add(p, (self.key(2),))
        self.s.execute(b)

    # -- session state, reads, sizes ---------------------------------------

    def use_keyspace(self):
        # A session of its own with no keyspace: USE switches it back and forth.
        # It waits for a pool to every host: by default connect() returns once
        # one pool is up, prepare() skips the hosts still connecting, and an
        # execute there gets UNPREPARED after the switch, which this driver
        # re-prepares in the session's new keyspace ("ID mismatch while trying
        # to reprepare"). Direct to the bed's 3 source nodes, without a proxy,
        # that failed 8 rounds in 30 (0 with wait_for_all_pools).
        s = self.cluster.connect(wait_for_all_pools=True)
        try:
            k = self.key()
            s.set_keyspace(self.ks2)
            s.execute(f"INSERT INTO use_keyspace (k, v) VALUES ('{k}', 'in {self.ks2}')")
            p2 = s.prepare("INSERT INTO use_keyspace (k, v) VALUES (?, ?)")
            s.execute(p2, (self.key(2), f"prepared in {self.ks2}"))
            s.set_keyspace(self.ks)
            s.execute(f"INSERT INTO use_keyspace (k, v) VALUES ('{k}', 'in {self.ks}')")
            # Prepared under ks2: still writes there after the switch.
            s.execute(p2, (self.key(3), f"prepared in {self.ks2}, executed in {self.ks}"))
            s.execute(f"USE {self.ks2}")
            s.execute(f"INSERT INTO use_keyspace (k, v) VALUES ('{self.key(4)}', 'USE statement')")
            got = {
                ks: {r.k: r.v for r in s.execute(f"SELECT k, v FROM {ks}.use_keyspace")
                     if r.k.startswith(self.r + ":") or r.k == k}
                for ks in (self.ks, self.ks2)
            }
            want = {
                self.ks: {k: f"in {self.ks}"},
                self.ks2: {
                    k: f"in {self.ks2}",
                    self.key(2): f"prepared in {self.ks2}",
                    self.key(3): f"prepared in {self.ks2}, executed in {self.ks}",
                    self.key(4): "USE statement",
                },
            }
            check(got == want, f"source holds {got}")
        finally:
            s.shutdown()

    def paging(self):
        p = self.s.prepare("INSERT INTO paging (k, c, v) VALUES (?, ?, ?)")
        want = 0
        for part in range(4):
            for c in range(60 + part):
                self.s.execute(p, (self.key(part), c, f"row {c}"))
                want += 1
        st = SimpleStatement(f"SELECT c FROM paging WHERE k = '{self.key(0)}'", fetch_size=7)
        got = sum(1 for _ in self.s.execute(st))
        check(got == 60, f"one partition read back {got} rows of 60")
        st = SimpleStatement("SELECT k, c FROM paging", fetch_size=25)
        got = sum(1 for r in self.s.execute(st) if r.k.startswith(self.r + ":"))
        check(got == want, f"full scan read back {got} rows of {want}")
        pq = self.s.prepare("SELECT c FROM paging WHERE k = ?")
        pq.fetch_size = 11
        got = sum(1 for _ in self.s.execute(pq, (self.key(3),)))
        check(got == 63, f"prepared read back {got} rows of 63")

    def blob_1mib(self):
        seed = hashlib.sha256(self.r.encode()).digest()
        blob = (seed * (1024 * 1024 // len(seed)))[: 1024 * 1024]
        p = self.s.prepare("INSERT INTO blob_1mib (k, b) VALUES (?, ?)")
        self.s.execute(p, (self.key(), blob))
        row = self.s.execute(f"SELECT b FROM blob_1mib WHERE k = '{self.key()}'").one()
        check(row is not None and row.b == blob, "blob read back differs")

    def truncate_then_write(self):
        self.s.execute("TRUNCATE truncate_then_write", timeout=60)
        p = self.s.prepare("INSERT INTO truncate_then_write (k, v) VALUES (?, ?)")
        for n in range(20):
            self.s.execute(p, (self.key(n), n))
        self.s.execute(f"UPDATE truncate_then_write SET v = 100 WHERE k = '{self.key(0)}'")

    # -- schema changes -------------------------------------------------------

    def schema_change(self):
        # Made through the proxy while it mirrors: the proxy makes each on the
        # target before the driver hears back, so the writes right after
        # them find the table and the column there.
        self.s.execute(
            "CREATE TABLE IF NOT EXISTS schema_change (k text PRIMARY KEY, v int)", timeout=60
        )
        p = self.s.prepare("INSERT INTO schema_change (k, v) VALUES (?, ?)")
        for n in range(10):
            self.s.execute(p, (self.key(n), n))
        col = "w_" + "".join(ch if ch.isalnum() else "_" for ch in self.r.lower())
        self.s.execute(f"ALTER TABLE schema_change ADD {col} int", timeout=60)
        self.s.execute(
            f"INSERT INTO schema_change (k, v, {col}) VALUES ('{self.key(20)}', 20, 20)"
        )
        p = self.s.prepare(f"UPDATE schema_change SET {col} = ? WHERE k = ?")
        self.s.execute(p, (21, self.key(21)))


ALL = [
    "insert_simple",
    "insert_prepared",
    "update_simple",
    "update_prepared",
    "using_timestamp",
    "using_ttl",
    "coll_set_map",
    "coll_list",
    "udt_frozen",
    "udt_nonfrozen",
    "static_columns",
    "static_only_partition",
    "delete_row",
    "delete_range",
    "counter_simple_literal",
    "counter_simple_bind",
    "counter_prepared",
    "counter_batch",
    "lwt_if_not_exists",
    "lwt_if_condition",
    "lwt_batch",
    "batch_logged",
    "batch_unlogged",
    "batch_text_logged",
    "batch_text_unlogged",
    "functions_simple",
    "functions_prepared",
    "functions_batch",
    "use_keyspace",
    "paging",
    "blob_1mib",
    "truncate_then_write",
    "schema_change",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", required=True, help="host:port of one proxy")
    ap.add_argument("--keyspace", required=True)
    ap.add_argument("--keyspace2", required=True, help="the second keyspace (use_keyspace)")
    ap.add_argument("--run", required=True, help="the run's name, the prefix of every key it writes")
    ap.add_argument("--protocol", type=int, default=4)
    ap.add_argument("--compression", default="none", choices=["none", "lz4", "snappy"])
    ap.add_argument("--no-client-timestamps", action="store_true")
    ap.add_argument("--scenarios", default="all", help="comma-separated names, or all")
    a = ap.parse_args()

    host, port = a.contact.rsplit(":", 1)
    names = ALL if a.scenarios == "all" else a.scenarios.split(",")
    cluster = Cluster(
        contact_points=[host],
        port=int(port),
        protocol_version=a.protocol,
        compression=False if a.compression == "none" else a.compression,
        connect_timeout=10,
    )
    out = {
        "driver": f"python cassandra-driver {cassandra.__version__}",
        "run": a.run,
        "client_timestamps": not a.no_client_timestamps,
        "compression": a.compression,
    }
    session = cluster.connect(a.keyspace)
    session.default_timeout = 30
    if a.no_client_timestamps:
        session.use_client_timestamp = False
    out["protocol_version"] = cluster.protocol_version
    sc = Scenarios(cluster, session, a.keyspace, a.keyspace2, a.run)
    results = []
    for name in names:
        try:
            getattr(sc, name)()
            results.append({"name": name, "ok": True, "error": None})
        except Exception as e:  # noqa: BLE001 - every failure is reported
            text = f"{type(e).__name__}: {e}"
            print(f"scenario {name} failed:\n{traceback.format_exc()}", file=sys.stderr)
            results.append({"name": name, "ok": False, "error": text})
    out["hosts"] = sorted(
        f"{h.endpoint.address}:{h.endpoint.port}" for h in cluster.metadata.all_hosts()
    )
    out["hosts_up"] = sorted(
        f"{h.endpoint.address}:{h.endpoint.port}" for h in cluster.metadata.all_hosts() if h.is_up
    )
    out["scenarios"] = results
    cluster.shutdown()
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
