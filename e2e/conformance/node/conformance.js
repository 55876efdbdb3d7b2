#!/usr/bin/env node
// Driver conformance program: the Node.js driver (npm `cassandra-driver`)
// through the proxy. The same scenarios as e2e/conformance/python, under the
// same names and into the same tables (e2e/conformance/schema.cql); the test
// is e2e/tests/conformance.rs.
//
// It connects to ONE contact point (a proxy) with the driver's defaults: the
// default load balancing policy (token-aware, local datacenter `source-dc`),
// the driver's own client timestamps (MonotonicTimestampGenerator; none with
// --no-client-timestamps). The driver speaks protocol v4 at most and has no
// compression. It runs the scenarios and prints one JSON document:
//
//   {"driver": ..., "protocol_version": N, "hosts": ["ip:port", ...],
//    "scenarios": [{"name": ..., "ok": true|false, "error": text|null}, ...]}
//
// Statements with values are executed with `prepare: true` (the driver's
// recommended use), except in the *_simple scenarios, where they go as a
// QUERY with values (`prepare: false` and type hints). A BATCH is either
// all prepared or all text. The driver prepares by text: a statement's text
// executed after a USE is prepared again in the new keyspace.
'use strict';

const crypto = require('crypto');
const cassandra = require('cassandra-driver');

const { types } = cassandra;
const P = { prepare: true };

const SCALARS = 'k, c, t, i, bi, d, b, ts, u, bl, dec, vi, dt, tm, ip';
const scalarLiterals = (k, c) =>
  `'${k}', ${c}, 'text é ''quoted''', 42, 9000000000, 3.5, true, ` +
  "'2024-01-02 03:04:05.678+0000', 9b4e1c56-7c3a-4d6b-9f0e-0a1b2c3d4e5f, 0xcafe, " +
  "12.345, 123456789012345678901234567890, '2024-02-29', '13:14:15.123456789', '10.1.2.3'";
const SCALAR_HINTS = ['text', 'int', 'text', 'int', 'bigint', 'double', 'boolean', 'timestamp',
  'uuid', 'blob', 'decimal', 'varint', 'date', 'time', 'inet'];

function scalarValues(k, c) {
  return [
    k, c, "text é 'quoted'", 42, types.Long.fromString('9000000000'), 3.5, true,
    new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 678)),
    types.Uuid.fromString('9b4e1c56-7c3a-4d6b-9f0e-0a1b2c3d4e5f'),
    Buffer.from([0xca, 0xfe]),
    types.BigDecimal.fromString('12.345'),
    types.Integer.fromString('123456789012345678901234567890'),
    types.LocalDate.fromString('2024-02-29'),
    types.LocalTime.fromString('13:14:15.123456789'),
    types.InetAddress.fromString('10.1.2.3'),
  ];
}

const marks = (n) => Array(n).fill('?').join(', ');
const long = (n) => types.Long.fromNumber(n);

function check(cond, what) {
  if (!cond) {
    throw new Error(what);
  }
}

class Scenarios {
  constructor(opts, client) {
    this.o = opts;
    this.c = client;
    this.r = opts.run;
  }

  key(n) {
    return n === undefined ? this.r : `${this.r}:${n}`;
  }

  q(query, params, options) {
    return this.c.execute(query, params, options);
  }

  // -- plain writes -------------------------------------------------------

  async insert_simple() {
    await this.q(`INSERT INTO insert_simple (${SCALARS}) VALUES (${scalarLiterals(this.key(), 1)})`);
    // Values of a simple statement: sent with the QUERY, typed by hints.
    await this.q(`INSERT INTO insert_simple (${SCALARS}) VALUES (${marks(15)})`,
      scalarValues(this.key(), 2), { prepare: false, hints: SCALAR_HINTS });
    // A row with nulls (tombstones) and an empty text.
    await this.q("INSERT INTO insert_simple (k, c, t, i, bl) VALUES (?, 3, '', null, null)", [this.key()]);
  }

  async insert_prepared() {
    const p = `INSERT INTO insert_prepared (${SCALARS}) VALUES (${marks(15)})`;
    for (let c = 1; c <= 3; c++) {
      await this.q(p, scalarValues(this.key(), c), P);
    }
    await this.q(p, [this.key('nulls'), 1].concat(Array(13).fill(null)), P);
  }

  async update_simple() {
    const k = this.key();
    await this.q(`UPDATE update_simple SET t = 'first', i = 1 WHERE k = '${k}' AND c = 1`);
    await this.q(`UPDATE update_simple SET t = 'second', bi = -5 WHERE k = '${k}' AND c = 1`);
    await this.q('UPDATE update_simple SET d = ?, ts = ?, ip = ? WHERE k = ? AND c = ?',
      [2.25, new Date(Date.UTC(2030, 4, 6, 7, 8, 9)), types.InetAddress.fromString('::1'), k, 2],
      { prepare: false, hints: ['double', 'timestamp', 'inet', 'text', 'int'] });
  }

  async update_prepared() {
    const k = this.key();
    const p = 'UPDATE update_prepared SET t = ?, i = ?, dec = ? WHERE k = ? AND c = ?';
    await this.q(p, ['first', 1, types.BigDecimal.fromString('-1.5'), k, 1], P);
    await this.q(p, ['second', 2, types.BigDecimal.fromString('0.001'), k, 1], P);
    await this.q(p, ['other', 3, null, k, 2], P);
  }

  async using_timestamp() {
    const k = this.key();
    const t0 = 1700000000000000n;
    await this.q(`INSERT INTO using_timestamp (k, c, v, n) VALUES ('${k}', 1, 'kept', 1) USING TIMESTAMP ${t0}`);
    // Older: must lose on both sides.
    await this.q(`UPDATE using_timestamp USING TIMESTAMP ${t0 - 1n} SET v = 'older' WHERE k = '${k}' AND c = 1`);
    const p = 'INSERT INTO using_timestamp (k, c, v, n) VALUES (?, ?, ?, ?) USING TIMESTAMP ?';
    const ts = (n) => types.Long.fromString((t0 + BigInt(n)).toString());
    await this.q(p, [k, 2, 'prepared', 2, ts(5)], P);
    await this.q(p, [k, 2, 'prepared older', 3, ts(4)], P);
    await this.q('UPDATE using_timestamp USING TIMESTAMP ? AND TTL ? SET n = ? WHERE k = ? AND c = ?',
      [ts(10), 86400, 7, k, 1], P);
    // A timestamp newer than the driver's clock, then a plain write that must lose.
    await this.q(`INSERT INTO using_timestamp (k, c, v) VALUES ('${k}', 3, 'future') USING TIMESTAMP 4000000000000000`);
    await this.q(`UPDATE using_timestamp SET v = 'now' WHERE k = '${k}' AND c = 3`);
    const row = (await this.q(`SELECT v FROM using_timestamp WHERE k = '${k}' AND c = 3`)).first();
    check(row && row.v === 'future', `c=3 is ${row && row.v} on the source`);
  }

  async using_ttl() {
    const k = this.key();
    await this.q(`INSERT INTO using_ttl (k, c, v, n) VALUES ('${k}', 1, 'a', 1) USING TTL 3600`);
    await this.q(`UPDATE using_ttl USING TTL 7200 SET v = 'b' WHERE k = '${k}' AND c = 1`);
    await this.q('INSERT INTO using_ttl (k, c, v, n) VALUES (?, ?, ?, ?) USING TTL ?', [k, 2, 'prepared', 2, 5000], P);
    await this.q(`INSERT INTO using_ttl (k, c, v) VALUES ('${k}', 3, 'ttl 0') USING TTL 0`);
  }

  // -- collections and UDTs ---------------------------------------------

  async coll_set_map() {
    const k = this.key();
    for (const s of [
      `INSERT INTO coll_set_map (k, s, m, fs) VALUES ('${k}', {'a', 'b'}, {'x': 1, 'w': 0}, {3, 1, 2})`,
      `UPDATE coll_set_map SET s = s + {'c', 'd'} WHERE k = '${k}'`,
      `UPDATE coll_set_map SET s = s - {'a'} WHERE k = '${k}'`,
      `UPDATE coll_set_map SET m['y'] = 2 WHERE k = '${k}'`,
      `UPDATE coll_set_map SET m = m + {'z': 3} WHERE k = '${k}'`,
      `DELETE m['x'] FROM coll_set_map WHERE k = '${k}'`,
      `UPDATE coll_set_map SET m = m - {'w'} WHERE k = '${k}'`,
    ]) {
      await this.q(s);
    }
    await this.q('UPDATE coll_set_map SET s = s + ?, m = m + ? WHERE k = ?', [['e'], { p: 9 }, k], P);
    await this.q('UPDATE coll_set_map SET s = s - ?, m[?] = ? WHERE k = ?', [['b'], 'q', 10, k], P);
    // A whole-collection overwrite of another row, values with the QUERY.
    await this.q('UPDATE coll_set_map SET s = ?, m = ?, fs = ? WHERE k = ?',
      [['only'], { one: 1 }, [7], this.key(2)],
      { prepare: false, hints: ['set<text>', 'map<text, int>', 'set<int>', 'text'] });
  }

  async coll_list() {
    const k = this.key();
    for (const s of [
      `INSERT INTO coll_list (k, l, fl) VALUES ('${k}', [1, 2, 3], ['x', 'y'])`,
      `UPDATE coll_list SET l = l + [4, 5] WHERE k = '${k}'`,
      `UPDATE coll_list SET l = [0] + l WHERE k = '${k}'`,
      `UPDATE coll_list SET l[1] = 10 WHERE k = '${k}'`,
      `UPDATE coll_list SET l = l - [3] WHERE k = '${k}'`,
      `DELETE l[0] FROM coll_list WHERE k = '${k}'`,
    ]) {
      await this.q(s);
    }
    await this.q('UPDATE coll_list SET l = l + ? WHERE k = ?', [[6], k], P);
    await this.q('UPDATE coll_list SET l = ? + l WHERE k = ?', [[-1], k], P);
    await this.q('UPDATE coll_list SET l[?] = ? WHERE k = ?', [2, 20, k], P);
    await this.q('UPDATE coll_list SET l = l - ?, fl = ? WHERE k = ?', [[5], ['z'], k], P);
    const row = (await this.q(`SELECT l FROM coll_list WHERE k = '${k}'`)).first();
    check(JSON.stringify(row.l) === JSON.stringify([-1, 10, 20, 4, 6]), `list on the source is ${JSON.stringify(row.l)}`);
  }

  async udt_frozen() {
    const k = this.key();
    await this.q(`INSERT INTO udt_frozen (k, a, n) VALUES ('${k}', {street: '1 Main St', city: 'Paris', zip: 75001}, 1)`);
    await this.q('INSERT INTO udt_frozen (k, a, n) VALUES (?, ?, ?)',
      [this.key(2), { street: '2 Side St', city: 'Lyon', zip: null }, 2], P);
    await this.q('UPDATE udt_frozen SET a = ? WHERE k = ?', [{ street: '3 Other St', city: 'Nice', zip: 6000 }, k], P);
  }

  async udt_nonfrozen() {
    const k = this.key();
    await this.q(`INSERT INTO udt_nonfrozen (k, a, n) VALUES ('${k}', {street: '1 Main St', city: 'Paris', zip: 75001}, 1)`);
    await this.q(`UPDATE udt_nonfrozen SET a.city = 'Lyon' WHERE k = '${k}'`);
    await this.q('UPDATE udt_nonfrozen SET a.zip = ? WHERE k = ?', [69001, k], P);
    await this.q('INSERT INTO udt_nonfrozen (k, a) VALUES (?, ?)',
      [this.key(2), { street: '2 Side St', city: null, zip: 13000 }], P);
    await this.q(`DELETE a.street FROM udt_nonfrozen WHERE k = '${this.key(2)}'`);
  }

  // -- static columns, deletes -------------------------------------------

  async static_columns() {
    const k = this.key();
    await this.q(`INSERT INTO static_columns (k, c, s, s2, v) VALUES ('${k}', 1, 'static', 1, 'one')`);
    await this.q(`INSERT INTO static_columns (k, c, v) VALUES ('${k}', 2, 'two')`);
    await this.q(`UPDATE static_columns SET s = 'static again' WHERE k = '${k}'`);
    await this.q('UPDATE static_columns SET s2 = ? WHERE k = ?', [2, k], P);
    await this.q('INSERT INTO static_columns (k, c, s, v) VALUES (?, ?, ?, ?)', [this.key(2), 1, 'other static', 'v'], P);
  }

  async static_only_partition() {
    await this.q(`INSERT INTO static_only_partition (k, s) VALUES ('${this.key(1)}', 'only static')`);
    await this.q(`UPDATE static_only_partition SET s = 'updated' WHERE k = '${this.key(2)}'`);
    await this.q('INSERT INTO static_only_partition (k, s) VALUES (?, ?) USING TTL 3000', [this.key(3), 'prepared static'], P);
  }

  async delete_row() {
    const k = this.key();
    const p = 'INSERT INTO delete_row (k, c, v, n) VALUES (?, ?, ?, ?)';
    for (let c = 0; c < 6; c++) {
      await this.q(p, [k, c, `v${c}`, c], P);
    }
    await this.q(`DELETE FROM delete_row WHERE k = '${k}' AND c = 2`);
    await this.q('DELETE FROM delete_row WHERE k = ? AND c = ?', [k, 4], P);
    await this.q(`DELETE v FROM delete_row WHERE k = '${k}' AND c = 1`);
    // A whole partition.
    await this.q(p, [this.key(2), 0, 'gone', 0], P);
    await this.q(`DELETE FROM delete_row WHERE k = '${this.key(2)}'`);
  }

  async delete_range() {
    const k = this.key();
    for (let c = 0; c < 10; c++) {
      await this.q('INSERT INTO delete_range (k, c, v) VALUES (?, ?, ?)', [k, c, `v${c}`], P);
    }
    await this.q(`DELETE FROM delete_range WHERE k = '${k}' AND c >= 3 AND c < 6`);
    await this.q('DELETE FROM delete_range WHERE k = ? AND c > ?', [k, 7], P);
    const rs = await this.q(`SELECT c FROM delete_range WHERE k = '${k}'`);
    const got = rs.rows.map((r) => r.c);
    check(JSON.stringify(got) === JSON.stringify([0, 1, 2, 6, 7]), `source rows ${JSON.stringify(got)}`);
  }

  // -- counters ----------------------------------------------------------

  async counter_simple_literal() {
    const k = this.key();
    await this.q(`UPDATE counter_simple_literal SET c = c + 5, c2 = c2 - 2 WHERE k = '${k}'`);
    await this.q(`UPDATE counter_simple_literal SET c = c + 1 WHERE k = '${k}'`);
  }

  async counter_simple_bind() {
    // Bind markers in a simple statement: the values travel with the QUERY.
    const k = this.key();
    await this.q('UPDATE counter_simple_bind SET c = c + ? WHERE k = ?', [long(7), k],
      { prepare: false, hints: ['counter', 'text'] });
    await this.q('UPDATE counter_simple_bind SET c = c + ?, c2 = c2 + ? WHERE k = ?', [long(-3), long(11), k],
      { prepare: false, hints: ['counter', 'counter', 'text'] });
  }

  async counter_prepared() {
    const k = this.key();
    for (const n of [1, 2, 3]) {
      await this.q('UPDATE counter_prepared SET c = c + ? WHERE k = ?', [long(n), k], P);
    }
    await this.q('UPDATE counter_prepared SET c2 = c2 + 4 WHERE k = ?', [k], P);
  }

  async counter_batch() {
    const k = this.key();
    const p = 'UPDATE counter_batch SET c = c + ? WHERE k = ?';
    await this.c.batch([
      { query: p, params: [long(2), k] },
      { query: p, params: [long(3), this.key(2)] },
      { query: `UPDATE counter_batch SET c2 = c2 + 1 WHERE k = '${k}'` },
    ], { prepare: true, counter: true });
    await this.q(`BEGIN COUNTER BATCH UPDATE counter_batch SET c = c + 10 WHERE k = '${k}'; ` +
      `UPDATE counter_batch SET c2 = c2 + 10 WHERE k = '${this.key(2)}'; APPLY BATCH`);
  }

  // -- lightweight transactions -----------------------------------------

  async lwt_if_not_exists() {
    const k = this.key();
    let r = await this.q(`INSERT INTO lwt_if_not_exists (k, v, t) VALUES ('${k}', 1, 'first') IF NOT EXISTS`);
    check(r.wasApplied(), 'first IF NOT EXISTS not applied');
    r = await this.q(`INSERT INTO lwt_if_not_exists (k, v, t) VALUES ('${k}', 2, 'second') IF NOT EXISTS`);
    check(!r.wasApplied(), 'second IF NOT EXISTS applied');
    r = await this.q('INSERT INTO lwt_if_not_exists (k, v, t) VALUES (?, ?, ?) IF NOT EXISTS', [this.key(2), 3, 'prepared'], P);
    check(r.wasApplied(), 'prepared IF NOT EXISTS not applied');
  }

  async lwt_if_condition() {
    const k = this.key();
    await this.q(`INSERT INTO lwt_if_condition (k, v, t) VALUES ('${k}', 1, 'plain')`);
    let r = await this.q(`UPDATE lwt_if_condition SET v = 2, t = 'cas' WHERE k = '${k}' IF v = 1`);
    check(r.wasApplied(), 'IF v = 1 not applied');
    r = await this.q(`UPDATE lwt_if_condition SET v = 3 WHERE k = '${k}' IF v = 1`);
    check(!r.wasApplied(), 'stale IF v = 1 applied');
    r = await this.q('UPDATE lwt_if_condition SET v = ? WHERE k = ? IF v = ?', [4, k, 2], P);
    check(r.wasApplied(), 'prepared IF v = ? not applied');
    r = await this.q(`DELETE FROM lwt_if_condition WHERE k = '${this.key(2)}' IF EXISTS`);
    check(!r.wasApplied(), 'DELETE IF EXISTS of nothing applied');
  }

  async lwt_batch() {
    const k = this.key();
    const ins = 'INSERT INTO lwt_batch (k, c, v, t) VALUES (?, ?, ?, ?) IF NOT EXISTS';
    let r = await this.c.batch([
      { query: ins, params: [k, 1, 1, 'a'] },
      { query: ins, params: [k, 2, 2, 'b'] },
    ], { prepare: true });
    check(r.wasApplied(), 'conditional batch not applied');
    r = await this.c.batch([
      `UPDATE lwt_batch SET v = 10 WHERE k = '${k}' AND c = 1 IF v = 1`,
      `UPDATE lwt_batch SET t = 'bb' WHERE k = '${k}' AND c = 2`,
    ], { prepare: false });
    check(r.wasApplied(), 'second conditional batch not applied');
  }

  // -- batches -----------------------------------------------------------

  async batch(table, logged) {
    const k = this.key();
    const ins = `INSERT INTO ${table} (k, c, v, n) VALUES (?, ?, ?, ?)`;
    await this.c.batch([
      { query: ins, params: [k, 1, 'prepared', 1] },
      { query: `INSERT INTO ${table} (k, c, v, n) VALUES ('${k}', 2, 'simple', 2)` },
      { query: `INSERT INTO ${table} (k, c, v) VALUES (?, ?, ?)`, params: [this.key(2), 1, 'other partition'] },
      { query: `UPDATE ${table} SET n = ? WHERE k = ? AND c = ?`, params: [10, k, 1] },
    ], { prepare: true, logged });
    // Text children, with values (typed by hints).
    await this.c.batch([
      { query: `UPDATE ${table} USING TIMESTAMP 1000 SET v = 'old' WHERE k = ? AND c = 2`, params: [k] },
      { query: ins, params: [k, 3, 'second batch', 3] },
    ], { prepare: false, logged, hints: [['text'], ['text', 'int', 'text', 'int']] });
  }

  async batch_logged() {
    await this.batch('batch_logged', true);
  }

  async batch_unlogged() {
    await this.batch('batch_unlogged', false);
  }

  async batchText(table, head) {
    const k = this.key();
    await this.q(`${head} INSERT INTO ${table} (k, c, v, n) VALUES ('${k}', 1, 'one', 1); ` +
      `INSERT INTO ${table} (k, c, v, n) VALUES ('${k}', 2, 'two', 2); ` +
      `UPDATE ${table} SET n = 20 WHERE k = '${k}' AND c = 2; ` +
      `INSERT INTO ${table} (k, c, v) VALUES ('${this.key(2)}', 1, 'other partition') APPLY BATCH`);
    await this.q(`${head.replace('BATCH', 'BATCH USING TIMESTAMP 1234567')} ` +
      `INSERT INTO ${table} (k, c, v) VALUES ('${k}', 3, 'stamped'); ` +
      `UPDATE ${table} SET v = 'must lose' WHERE k = '${k}' AND c = 1 APPLY BATCH`);
  }

  async batch_text_logged() {
    await this.batchText('batch_text_logged', 'BEGIN BATCH');
  }

  async batch_text_unlogged() {
    await this.batchText('batch_text_unlogged', 'BEGIN UNLOGGED BATCH');
  }

  // -- non-deterministic functions ---------------------------------------

  async functions_simple() {
    await this.q(`INSERT INTO functions_simple (k, a, b, c, d) VALUES ('${this.key(1)}', now(), uuid(), ` +
      'toTimestamp(now()), currentTimestamp())');
    // With a value: a QUERY with values.
    await this.q('UPDATE functions_simple SET a = now(), b = uuid(), c = toTimestamp(now()), ' +
      'd = currentTimestamp() WHERE k = ?', [this.key(2)], { prepare: false });
  }

  async functions_prepared() {
    const p = 'INSERT INTO functions_prepared (k, a, b, c, d) VALUES (?, now(), uuid(), ' +
      'toTimestamp(now()), currentTimestamp())';
    await this.q(p, [this.key(1)], P);
    await this.q(p, [this.key(2)], P);
    await this.q('UPDATE functions_prepared SET a = now(), c = toTimestamp(now()) WHERE k = ?', [this.key(3)], P);
  }

  async functions_batch() {
    // BATCH messages: text children (one with a value), then prepared ones.
    const upd = 'UPDATE functions_batch SET a = now(), b = uuid(), d = currentTimestamp() WHERE k = ?';
    await this.c.batch([
      `INSERT INTO functions_batch (k, a, b, c, d) VALUES ('${this.key(1)}', now(), uuid(), ` +
        'toTimestamp(now()), currentTimestamp())',
      { query: upd, params: [this.key(2)] },
    ], { prepare: false, logged: false });
    await this.c.batch([
      { query: 'INSERT INTO functions_batch (k, a, c) VALUES (?, now(), toTimestamp(now()))', params: [this.key(3)] },
      { query: upd, params: [this.key(4)] },
    ], { prepare: true, logged: false });
  }

  // -- session state, reads, sizes ---------------------------------------

  async use_keyspace() {
    // A client of its own with no keyspace: USE switches it back and forth.
    const u = new cassandra.Client(this.o.clientOptions(null));
    try {
      const k = this.key();
      const { ks, ks2 } = this.o;
      const ins = 'INSERT INTO use_keyspace (k, v) VALUES (?, ?)';
      await u.execute(`USE ${ks2}`);
      await u.execute(`INSERT INTO use_keyspace (k, v) VALUES ('${k}', 'in ${ks2}')`);
      await u.execute(ins, [this.key(2), `prepared in ${ks2}`], P);
      await u.execute(`USE ${ks}`);
      await u.execute(`INSERT INTO use_keyspace (k, v) VALUES ('${k}', 'in ${ks}')`);
      // The driver prepares by text in the client's keyspace: now ks.
      await u.execute(ins, [this.key(3), `prepared again in ${ks}`], P);
      await u.execute(`USE ${ks2}`);
      await u.execute(`INSERT INTO use_keyspace (k, v) VALUES ('${this.key(4)}', 'USE statement')`);
      const got = {};
      for (const space of [ks, ks2]) {
        got[space] = {};
        const rs = await u.execute(`SELECT k, v FROM ${space}.use_keyspace`);
        for (const r of rs.rows) {
          if (r.k === k || r.k.startsWith(`${this.r}:`)) {
            got[space][r.k] = r.v;
          }
        }
      }
      const want = {
        [ks]: { [k]: `in ${ks}`, [this.key(3)]: `prepared again in ${ks}` },
        [ks2]: { [k]: `in ${ks2}`, [this.key(2)]: `prepared in ${ks2}`, [this.key(4)]: 'USE statement' },
      };
      const norm = (o) => JSON.stringify(Object.keys(o).sort().map((s) => [s, Object.entries(o[s]).sort()]));
      check(norm(got) === norm(want), `source holds ${JSON.stringify(got)}`);
    } finally {
      await u.shutdown();
    }
  }

  async count(query, params, options, prefix) {
    let n = 0;
    const rs = await this.q(query, params, options);
    for await (const r of rs) {
      if (!prefix || r.k.startsWith(prefix)) {
        n++;
      }
    }
    return n;
  }

  async paging() {
    let want = 0;
    for (let part = 0; part < 4; part++) {
      for (let c = 0; c < 60 + part; c++) {
        await this.q('INSERT INTO paging (k, c, v) VALUES (?, ?, ?)', [this.key(part), c, `row ${c}`], P);
        want++;
      }
    }
    let got = await this.count(`SELECT k, c FROM paging WHERE k = '${this.key(0)}'`, [], { fetchSize: 7 });
    check(got === 60, `one partition read back ${got} rows of 60`);
    got = await this.count('SELECT k, c FROM paging', [], { fetchSize: 25 }, `${this.r}:`);
    check(got === want, `full scan read back ${got} rows of ${want}`);
    got = await this.count('SELECT k, c FROM paging WHERE k = ?', [this.key(3)], { prepare: true, fetchSize: 11 });
    check(got === 63, `prepared read back ${got} rows of 63`);
  }

  async blob_1mib() {
    const seed = crypto.createHash('sha256').update(this.r).digest();
    const blob = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < blob.length; i++) {
      blob[i] = seed[i % seed.length];
    }
    await this.q('INSERT INTO blob_1mib (k, b) VALUES (?, ?)', [this.key(), blob], P);
    const row = (await this.q(`SELECT b FROM blob_1mib WHERE k = '${this.key()}'`)).first();
    check(row && Buffer.isBuffer(row.b) && row.b.equals(blob), 'blob read back differs');
  }

  async truncate_then_write() {
    await this.q('TRUNCATE truncate_then_write', [], { readTimeout: 60000 });
    for (let n = 0; n < 20; n++) {
      await this.q('INSERT INTO truncate_then_write (k, v) VALUES (?, ?)', [this.key(n), n], P);
    }
    await this.q(`UPDATE truncate_then_write SET v = 100 WHERE k = '${this.key(0)}'`);
  }
}

const ALL = [
  'insert_simple', 'insert_prepared', 'update_simple', 'update_prepared', 'using_timestamp',
  'using_ttl', 'coll_set_map', 'coll_list', 'udt_frozen', 'udt_nonfrozen', 'static_columns',
  'static_only_partition', 'delete_row', 'delete_range', 'counter_simple_literal',
  'counter_simple_bind', 'counter_prepared', 'counter_batch', 'lwt_if_not_exists',
  'lwt_if_condition', 'lwt_batch', 'batch_logged', 'batch_unlogged', 'batch_text_logged',
  'batch_text_unlogged', 'functions_simple', 'functions_prepared', 'functions_batch',
  'use_keyspace', 'paging', 'blob_1mib', 'truncate_then_write',
];

function parse(argv) {
  const o = { protocol: 4, compression: 'none', clientTimestamps: true, scenarios: 'all' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--no-client-timestamps') {
      o.clientTimestamps = false;
      continue;
    }
    const v = argv[++i];
    if (v === undefined) {
      throw new Error(`${a} needs a value`);
    }
    switch (a) {
      case '--contact': o.contact = v; break;
      case '--keyspace': o.ks = v; break;
      case '--keyspace2': o.ks2 = v; break;
      case '--run': o.run = v; break;
      case '--protocol': o.protocol = Number(v); break;
      case '--compression': o.compression = v; break;
      case '--scenarios': o.scenarios = v; break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!o.contact || !o.ks || !o.ks2 || !o.run) {
    throw new Error('--contact, --keyspace, --keyspace2 and --run are required');
  }
  if (o.compression !== 'none') {
    throw new Error('the Node.js driver has no compression');
  }
  const i = o.contact.lastIndexOf(':');
  const host = o.contact.slice(0, i);
  const port = Number(o.contact.slice(i + 1));
  o.clientOptions = (keyspace) => {
    const opts = {
      contactPoints: [host],
      localDataCenter: 'source-dc',
      protocolOptions: { port, maxVersion: o.protocol },
      socketOptions: { connectTimeout: 10000, readTimeout: 30000 },
    };
    if (keyspace) {
      opts.keyspace = keyspace;
    }
    if (!o.clientTimestamps) {
      opts.policies = { timestampGeneration: null };
    }
    return opts;
  };
  return o;
}

async function main() {
  const o = parse(process.argv.slice(2));
  const client = new cassandra.Client(o.clientOptions(o.ks));
  const out = {
    driver: `node cassandra-driver ${require('cassandra-driver/package.json').version}`,
    run: o.run,
    client_timestamps: o.clientTimestamps,
    compression: o.compression,
  };
  try {
    await client.connect();
  } catch (e) {
    process.stderr.write(`connect failed:\n${e.stack}\n`);
    Object.assign(out, { protocol_version: o.protocol, connect_error: `${e.name}: ${e.message}`, hosts: [], scenarios: [] });
    process.stdout.write(`${JSON.stringify(out)}\n`);
    return;
  }
  const sc = new Scenarios(o, client);
  const names = o.scenarios === 'all' ? ALL : o.scenarios.split(',');
  const results = [];
  for (const name of names) {
    try {
      if (typeof sc[name] !== 'function' || !ALL.includes(name)) {
        throw new Error(`no scenario ${name}`);
      }
      await sc[name]();
      results.push({ name, ok: true, error: null });
    } catch (e) {
      process.stderr.write(`scenario ${name} failed:\n${e.stack}\n`);
      results.push({ name, ok: false, error: `${e.name}: ${e.message}` });
    }
  }
  const hosts = client.hosts.values();
  out.protocol_version = client.controlConnection.protocolVersion;
  out.hosts = hosts.map((h) => h.address).sort();
  out.hosts_up = hosts.filter((h) => h.isUp()).map((h) => h.address).sort();
  out.scenarios = results;
  await client.shutdown();
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((e) => {
  process.stderr.write(`${e.stack}\n`);
  process.exit(1);
});
