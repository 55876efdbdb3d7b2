// Driver conformance program: the Apache Cassandra Go driver (gocql v2)
// through the proxy. The same scenarios as e2e/conformance/python, under the
// same names and into the same tables (e2e/conformance/schema.cql); the
// test is e2e/tests/conformance.rs.
//
// It connects to ONE contact point (a proxy) with token-aware routing (the
// policy gocql's documentation recommends; its bare default is round-robin)
// and the driver's own client timestamps (unless -no-client-timestamps), runs
// the scenarios and prints one JSON document:
//
//	{"driver": ..., "protocol_version": N, "hosts": ["ip:port", ...],
//	 "scenarios": [{"name": ..., "ok": true|false, "error": text|null}, ...]}
//
// gocql prepares every INSERT, UPDATE, DELETE, SELECT and BEGIN BATCH text
// itself, with or without values; only a BATCH message child without values
// and the other statements (TRUNCATE) travel as text. gocql refuses USE
// statements: use_keyspace switches keyspace per request with protocol v5's
// keyspace field (Query.SetKeyspace), and on v4 with a second session.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"reflect"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/apache/cassandra-gocql-driver/v2/lz4"
	"github.com/apache/cassandra-gocql-driver/v2/snappy"
	"gopkg.in/inf.v0"
)

const scalars = "k, c, t, i, bi, d, b, ts, u, bl, dec, vi, dt, tm, ip"

const scalarLiterals = "'%s', %d, 'text é ''quoted''', 42, 9000000000, 3.5, true, " +
	"'2024-01-02 03:04:05.678+0000', 9b4e1c56-7c3a-4d6b-9f0e-0a1b2c3d4e5f, 0xcafe, " +
	"12.345, 123456789012345678901234567890, '2024-02-29', '13:14:15.123456789', '10.1.2.3'"

func scalarValues(k string, c int) []interface{} {
	u, _ := gocql.ParseUUID("9b4e1c56-7c3a-4d6b-9f0e-0a1b2c3d4e5f")
	vi, _ := new(big.Int).SetString("123456789012345678901234567890", 10)
	return []interface{}{
		k, c, "text é 'quoted'", 42, int64(9000000000), 3.5, true,
		time.Date(2024, 1, 2, 3, 4, 5, 678000000, time.UTC), u, []byte{0xca, 0xfe},
		inf.NewDec(12345, 3), vi, time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC),
		13*time.Hour + 14*time.Minute + 15*time.Second + 123456789*time.Nanosecond,
		net.ParseIP("10.1.2.3"),
	}
}

func marks(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

type runner struct {
	cluster *gocql.ClusterConfig
	s       *gocql.Session
	ks, ks2 string
	run     string
	proto   int
}

func (r *runner) key(n ...interface{}) string {
	if len(n) == 0 {
		return r.run
	}
	return fmt.Sprintf("%s:%v", r.run, n[0])
}

func (r *runner) exec(stmt string, values ...interface{}) error {
	return r.s.Query(stmt, values...).Exec()
}

// execAll runs statements in order and stops at the first error.
func (r *runner) execAll(stmts ...string) error {
	for _, st := range stmts {
		if err := r.exec(st); err != nil {
			return fmt.Errorf("%s: %w", st, err)
		}
	}
	return nil
}

func check(cond bool, format string, args ...interface{}) error {
	if !cond {
		return fmt.Errorf(format, args...)
	}
	return nil
}

// -- plain writes ---------------------------------------------------------

func (r *runner) insert_simple() error {
	if err := r.exec(fmt.Sprintf("INSERT INTO insert_simple (%s) VALUES (%s)", scalars, fmt.Sprintf(scalarLiterals, r.key(), 1))); err != nil {
		return err
	}
	if err := r.exec(fmt.Sprintf("INSERT INTO insert_simple (%s) VALUES (%s)", scalars, marks(15)), scalarValues(r.key(), 2)...); err != nil {
		return err
	}
	return r.exec("INSERT INTO insert_simple (k, c, t, i, bl) VALUES (?, 3, '', null, null)", r.key())
}

func (r *runner) insert_prepared() error {
	st := fmt.Sprintf("INSERT INTO insert_prepared (%s) VALUES (%s)", scalars, marks(15))
	for c := 1; c <= 3; c++ {
		if err := r.exec(st, scalarValues(r.key(), c)...); err != nil {
			return err
		}
	}
	nulls := []interface{}{r.key("nulls"), 1}
	for i := 0; i < 13; i++ {
		nulls = append(nulls, nil)
	}
	return r.exec(st, nulls...)
}

func (r *runner) update_simple() error {
	k := r.key()
	if err := r.execAll(
		fmt.Sprintf("UPDATE update_simple SET t = 'first', i = 1 WHERE k = '%s' AND c = 1", k),
		fmt.Sprintf("UPDATE update_simple SET t = 'second', bi = -5 WHERE k = '%s' AND c = 1", k),
	); err != nil {
		return err
	}
	return r.exec("UPDATE update_simple SET d = ?, ts = ?, ip = ? WHERE k = ? AND c = ?",
		2.25, time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC), net.ParseIP("::1"), k, 2)
}

func (r *runner) update_prepared() error {
	k := r.key()
	st := "UPDATE update_prepared SET t = ?, i = ?, dec = ? WHERE k = ? AND c = ?"
	if err := r.exec(st, "first", 1, inf.NewDec(-15, 1), k, 1); err != nil {
		return err
	}
	if err := r.exec(st, "second", 2, inf.NewDec(1, 3), k, 1); err != nil {
		return err
	}
	return r.exec(st, "other", 3, nil, k, 2)
}

func (r *runner) using_timestamp() error {
	k := r.key()
	t0 := int64(1_700_000_000_000_000)
	if err := r.execAll(
		fmt.Sprintf("INSERT INTO using_timestamp (k, c, v, n) VALUES ('%s', 1, 'kept', 1) USING TIMESTAMP %d", k, t0),
		fmt.Sprintf("UPDATE using_timestamp USING TIMESTAMP %d SET v = 'older' WHERE k = '%s' AND c = 1", t0-1, k),
	); err != nil {
		return err
	}
	p := "INSERT INTO using_timestamp (k, c, v, n) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
	if err := r.exec(p, k, 2, "prepared", 2, t0+5); err != nil {
		return err
	}
	if err := r.exec(p, k, 2, "prepared older", 3, t0+4); err != nil {
		return err
	}
	if err := r.exec("UPDATE using_timestamp USING TIMESTAMP ? AND TTL ? SET n = ? WHERE k = ? AND c = ?", t0+10, 86400, 7, k, 1); err != nil {
		return err
	}
	future := int64(4_000_000_000_000_000)
	if err := r.execAll(
		fmt.Sprintf("INSERT INTO using_timestamp (k, c, v) VALUES ('%s', 3, 'future') USING TIMESTAMP %d", k, future),
		fmt.Sprintf("UPDATE using_timestamp SET v = 'now' WHERE k = '%s' AND c = 3", k),
	); err != nil {
		return err
	}
	var v string
	if err := r.s.Query("SELECT v FROM using_timestamp WHERE k = ? AND c = 3", k).Scan(&v); err != nil {
		return err
	}
	return check(v == "future", "c=3 is %q on the source", v)
}

func (r *runner) using_ttl() error {
	k := r.key()
	if err := r.execAll(
		fmt.Sprintf("INSERT INTO using_ttl (k, c, v, n) VALUES ('%s', 1, 'a', 1) USING TTL 3600", k),
		fmt.Sprintf("UPDATE using_ttl USING TTL 7200 SET v = 'b' WHERE k = '%s' AND c = 1", k),
	); err != nil {
		return err
	}
	if err := r.exec("INSERT INTO using_ttl (k, c, v, n) VALUES (?, ?, ?, ?) USING TTL ?", k, 2, "prepared", 2, 5000); err != nil {
		return err
	}
	return r.exec(fmt.Sprintf("INSERT INTO using_ttl (k, c, v) VALUES ('%s', 3, 'ttl 0') USING TTL 0", k))
}

// -- collections and UDTs ------------------------------------------------

func (r *runner) coll_set_map() error {
	k := r.key()
	if err := r.execAll(
		fmt.Sprintf("INSERT INTO coll_set_map (k, s, m, fs) VALUES ('%s', {'a', 'b'}, {'x': 1, 'w': 0}, {3, 1, 2})", k),
		fmt.Sprintf("UPDATE coll_set_map SET s = s + {'c', 'd'} WHERE k = '%s'", k),
		fmt.Sprintf("UPDATE coll_set_map SET s = s - {'a'} WHERE k = '%s'", k),
		fmt.Sprintf("UPDATE coll_set_map SET m['y'] = 2 WHERE k = '%s'", k),
		fmt.Sprintf("UPDATE coll_set_map SET m = m + {'z': 3} WHERE k = '%s'", k),
		fmt.Sprintf("DELETE m['x'] FROM coll_set_map WHERE k = '%s'", k),
		fmt.Sprintf("UPDATE coll_set_map SET m = m - {'w'} WHERE k = '%s'", k),
	); err != nil {
		return err
	}
	if err := r.exec("UPDATE coll_set_map SET s = s + ?, m = m + ? WHERE k = ?", []string{"e"}, map[string]int{"p": 9}, k); err != nil {
		return err
	}
	if err := r.exec("UPDATE coll_set_map SET s = s - ?, m[?] = ? WHERE k = ?", []string{"b"}, "q", 10, k); err != nil {
		return err
	}
	return r.exec("UPDATE coll_set_map SET s = ?, m = ?, fs = ? WHERE k = ?",
		[]string{"only"}, map[string]int{"one": 1}, []int{7}, r.key(2))
}

func (r *runner) coll_list() error {
	k := r.key()
	if err := r.execAll(
		fmt.Sprintf("INSERT INTO coll_list (k, l, fl) VALUES ('%s', [1, 2, 3], ['x', 'y'])", k),
		fmt.Sprintf("UPDATE coll_list SET l = l + [4, 5] WHERE k = '%s'", k),
		fmt.Sprintf("UPDATE coll_list SET l = [0] + l WHERE k = '%s'", k),
		fmt.Sprintf("UPDATE coll_list SET l[1] = 10 WHERE k = '%s'", k),
		fmt.Sprintf("UPDATE coll_list SET l = l - [3] WHERE k = '%s'", k),
		fmt.Sprintf("DELETE l[0] FROM coll_list WHERE k = '%s'", k),
	); err != nil {
		return err
	}
	steps := []struct {
		st   string
		args []interface{}
	}{
		{"UPDATE coll_list SET l = l + ? WHERE k = ?", []interface{}{[]int{6}, k}},
		{"UPDATE coll_list SET l = ? + l WHERE k = ?", []interface{}{[]int{-1}, k}},
		{"UPDATE coll_list SET l[?] = ? WHERE k = ?", []interface{}{2, 20, k}},
		{"UPDATE coll_list SET l = l - ?, fl = ? WHERE k = ?", []interface{}{[]int{5}, []string{"z"}, k}},
	}
	for _, s := range steps {
		if err := r.exec(s.st, s.args...); err != nil {
			return fmt.Errorf("%s: %w", s.st, err)
		}
	}
	var l []int
	if err := r.s.Query("SELECT l FROM coll_list WHERE k = ?", k).Scan(&l); err != nil {
		return err
	}
	return check(reflect.DeepEqual(l, []int{-1, 10, 20, 4, 6}), "list on the source is %v", l)
}

func addr(street, city interface{}, zip interface{}) map[string]interface{} {
	return map[string]interface{}{"street": street, "city": city, "zip": zip}
}

func (r *runner) udt_frozen() error {
	k := r.key()
	if err := r.exec(fmt.Sprintf("INSERT INTO udt_frozen (k, a, n) VALUES ('%s', {street: '1 Main St', city: 'Paris', zip: 75001}, 1)", k)); err != nil {
		return err
	}
	if err := r.exec("INSERT INTO udt_frozen (k, a, n) VALUES (?, ?, ?)", r.key(2), addr("2 Side St", "Lyon", nil), 2); err != nil {
		return err
	}
	return r.exec("UPDATE udt_frozen SET a = ? WHERE k = ?", addr("3 Other St", "Nice", 6000), k)
}

func (r *runner) udt_nonfrozen() error {
	k := r.key()
	if err := r.execAll(
		fmt.Sprintf("INSERT INTO udt_nonfrozen (k, a, n) VALUES ('%s', {street: '1 Main St', city: 'Paris', zip: 75001}, 1)", k),
		fmt.Sprintf("UPDATE udt_nonfrozen SET a.city = 'Lyon' WHERE k = '%s'", k),
	); err != nil {
		return err
	}
	if err := r.exec("UPDATE udt_nonfrozen SET a.zip = ? WHERE k = ?", 69001, k); err != nil {
		return err
	}
	if err := r.exec("INSERT INTO udt_nonfrozen (k, a) VALUES (?, ?)", r.key(2), addr("2 Side St", nil, 13000)); err != nil {
		return err
	}
	return r.exec(fmt.Sprintf("DELETE a.street FROM udt_nonfrozen WHERE k = '%s'", r.key(2)))
}

// -- static columns, deletes ---------------------------------------------

func (r *runner) static_columns() error {
	k := r.key()
	if err := r.execAll(
		fmt.Sprintf("INSERT INTO static_columns (k, c, s, s2, v) VALUES ('%s', 1, 'static', 1, 'one')", k),
		fmt.Sprintf("INSERT INTO static_columns (k, c, v) VALUES ('%s', 2, 'two')", k),
		fmt.Sprintf("UPDATE static_columns SET s = 'static again' WHERE k = '%s'", k),
	); err != nil {
		return err
	}
	if err := r.exec("UPDATE static_columns SET s2 = ? WHERE k = ?", 2, k); err != nil {
		return err
	}
	return r.exec("INSERT INTO static_columns (k, c, s, v) VALUES (?, ?, ?, ?)", r.key(2), 1, "other static", "v")
}

func (r *runner) static_only_partition() error {
	if err := r.execAll(
		fmt.Sprintf("INSERT INTO static_only_partition (k, s) VALUES ('%s', 'only static')", r.key(1)),
		fmt.Sprintf("UPDATE static_only_partition SET s = 'updated' WHERE k = '%s'", r.key(2)),
	); err != nil {
		return err
	}
	return r.exec("INSERT INTO static_only_partition (k, s) VALUES (?, ?) USING TTL 3000", r.key(3), "prepared static")
}

func (r *runner) delete_row() error {
	k := r.key()
	ins := "INSERT INTO delete_row (k, c, v, n) VALUES (?, ?, ?, ?)"
	for c := 0; c < 6; c++ {
		if err := r.exec(ins, k, c, fmt.Sprintf("v%d", c), c); err != nil {
			return err
		}
	}
	if err := r.exec(fmt.Sprintf("DELETE FROM delete_row WHERE k = '%s' AND c = 2", k)); err != nil {
		return err
	}
	if err := r.exec("DELETE FROM delete_row WHERE k = ? AND c = ?", k, 4); err != nil {
		return err
	}
	if err := r.exec(fmt.Sprintf("DELETE v FROM delete_row WHERE k = '%s' AND c = 1", k)); err != nil {
		return err
	}
	if err := r.exec(ins, r.key(2), 0, "gone", 0); err != nil {
		return err
	}
	return r.exec(fmt.Sprintf("DELETE FROM delete_row WHERE k = '%s'", r.key(2)))
}

func (r *runner) delete_range() error {
	k := r.key()
	for c := 0; c < 10; c++ {
		if err := r.exec("INSERT INTO delete_range (k, c, v) VALUES (?, ?, ?)", k, c, fmt.Sprintf("v%d", c)); err != nil {
			return err
		}
	}
	if err := r.exec(fmt.Sprintf("DELETE FROM delete_range WHERE k = '%s' AND c >= 3 AND c < 6", k)); err != nil {
		return err
	}
	if err := r.exec("DELETE FROM delete_range WHERE k = ? AND c > ?", k, 7); err != nil {
		return err
	}
	var got []int
	iter := r.s.Query("SELECT c FROM delete_range WHERE k = ?", k).Iter()
	var c int
	for iter.Scan(&c) {
		got = append(got, c)
	}
	if err := iter.Close(); err != nil {
		return err
	}
	return check(reflect.DeepEqual(got, []int{0, 1, 2, 6, 7}), "source rows %v", got)
}

// -- counters ------------------------------------------------------------

func (r *runner) counter_simple_literal() error {
	k := r.key()
	return r.execAll(
		fmt.Sprintf("UPDATE counter_simple_literal SET c = c + 5, c2 = c2 - 2 WHERE k = '%s'", k),
		fmt.Sprintf("UPDATE counter_simple_literal SET c = c + 1 WHERE k = '%s'", k),
	)
}

func (r *runner) counter_simple_bind() error {
	k := r.key()
	if err := r.exec("UPDATE counter_simple_bind SET c = c + ? WHERE k = ?", int64(7), k); err != nil {
		return err
	}
	return r.exec("UPDATE counter_simple_bind SET c = c + ?, c2 = c2 + ? WHERE k = ?", int64(-3), int64(11), k)
}

func (r *runner) counter_prepared() error {
	k := r.key()
	for _, n := range []int64{1, 2, 3} {
		if err := r.exec("UPDATE counter_prepared SET c = c + ? WHERE k = ?", n, k); err != nil {
			return err
		}
	}
	return r.exec("UPDATE counter_prepared SET c2 = c2 + 4 WHERE k = ?", k)
}

func (r *runner) counter_batch() error {
	k := r.key()
	b := r.s.Batch(gocql.CounterBatch)
	b.Query("UPDATE counter_batch SET c = c + ? WHERE k = ?", int64(2), k)
	b.Query("UPDATE counter_batch SET c = c + ? WHERE k = ?", int64(3), r.key(2))
	b.Query(fmt.Sprintf("UPDATE counter_batch SET c2 = c2 + 1 WHERE k = '%s'", k))
	if err := b.Exec(); err != nil {
		return err
	}
	return r.exec(fmt.Sprintf("BEGIN COUNTER BATCH UPDATE counter_batch SET c = c + 10 WHERE k = '%s'; "+
		"UPDATE counter_batch SET c2 = c2 + 10 WHERE k = '%s'; APPLY BATCH", k, r.key(2)))
}

// -- lightweight transactions --------------------------------------------

func (r *runner) cas(stmt string, values ...interface{}) (bool, error) {
	return r.s.Query(stmt, values...).MapScanCAS(map[string]interface{}{})
}

func (r *runner) lwt_if_not_exists() error {
	k := r.key()
	ok, err := r.cas(fmt.Sprintf("INSERT INTO lwt_if_not_exists (k, v, t) VALUES ('%s', 1, 'first') IF NOT EXISTS", k))
	if err != nil {
		return err
	}
	if err := check(ok, "first IF NOT EXISTS not applied"); err != nil {
		return err
	}
	ok, err = r.cas(fmt.Sprintf("INSERT INTO lwt_if_not_exists (k, v, t) VALUES ('%s', 2, 'second') IF NOT EXISTS", k))
	if err != nil {
		return err
	}
	if err := check(!ok, "second IF NOT EXISTS applied"); err != nil {
		return err
	}
	ok, err = r.cas("INSERT INTO lwt_if_not_exists (k, v, t) VALUES (?, ?, ?) IF NOT EXISTS", r.key(2), 3, "prepared")
	if err != nil {
		return err
	}
	return check(ok, "prepared IF NOT EXISTS not applied")
}

func (r *runner) lwt_if_condition() error {
	k := r.key()
	if err := r.exec(fmt.Sprintf("INSERT INTO lwt_if_condition (k, v, t) VALUES ('%s', 1, 'plain')", k)); err != nil {
		return err
	}
	for _, step := range []struct {
		st   string
		args []interface{}
		want bool
	}{
		{fmt.Sprintf("UPDATE lwt_if_condition SET v = 2, t = 'cas' WHERE k = '%s' IF v = 1", k), nil, true},
		{fmt.Sprintf("UPDATE lwt_if_condition SET v = 3 WHERE k = '%s' IF v = 1", k), nil, false},
		{"UPDATE lwt_if_condition SET v = ? WHERE k = ? IF v = ?", []interface{}{4, k, 2}, true},
		{fmt.Sprintf("DELETE FROM lwt_if_condition WHERE k = '%s' IF EXISTS", r.key(2)), nil, false},
	} {
		ok, err := r.cas(step.st, step.args...)
		if err != nil {
			return fmt.Errorf("%s: %w", step.st, err)
		}
		if ok != step.want {
			return fmt.Errorf("%s: applied %v", step.st, ok)
		}
	}
	return nil
}

func (r *runner) lwt_batch() error {
	k := r.key()
	b := r.s.Batch(gocql.LoggedBatch)
	ins := "INSERT INTO lwt_batch (k, c, v, t) VALUES (?, ?, ?, ?) IF NOT EXISTS"
	b.Query(ins, k, 1, 1, "a")
	b.Query(ins, k, 2, 2, "b")
	ok, iter, err := b.MapExecCAS(map[string]interface{}{})
	if iter != nil {
		_ = iter.Close()
	}
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("conditional batch not applied")
	}
	b = r.s.Batch(gocql.LoggedBatch)
	b.Query(fmt.Sprintf("UPDATE lwt_batch SET v = 10 WHERE k = '%s' AND c = 1 IF v = 1", k))
	b.Query(fmt.Sprintf("UPDATE lwt_batch SET t = 'bb' WHERE k = '%s' AND c = 2", k))
	ok, iter, err = b.MapExecCAS(map[string]interface{}{})
	if iter != nil {
		_ = iter.Close()
	}
	if err != nil {
		return err
	}
	return check(ok, "second conditional batch not applied")
}

// -- batches -------------------------------------------------------------

func (r *runner) batch(table string, typ gocql.BatchType) error {
	k := r.key()
	b := r.s.Batch(typ)
	b.Query(fmt.Sprintf("INSERT INTO %s (k, c, v, n) VALUES (?, ?, ?, ?)", table), k, 1, "prepared", 1)
	b.Query(fmt.Sprintf("INSERT INTO %s (k, c, v, n) VALUES ('%s', 2, 'simple', 2)", table, k))
	b.Query(fmt.Sprintf("INSERT INTO %s (k, c, v) VALUES (?, ?, ?)", table), r.key(2), 1, "other partition")
	b.Query(fmt.Sprintf("UPDATE %s SET n = ? WHERE k = ? AND c = ?", table), 10, k, 1)
	if err := b.Exec(); err != nil {
		return err
	}
	b = r.s.Batch(typ)
	b.Query(fmt.Sprintf("UPDATE %s USING TIMESTAMP 1000 SET v = 'old' WHERE k = ? AND c = 2", table), k)
	b.Query(fmt.Sprintf("INSERT INTO %s (k, c, v, n) VALUES (?, ?, ?, ?)", table), k, 3, "second batch", 3)
	return b.Exec()
}

func (r *runner) batch_logged() error   { return r.batch("batch_logged", gocql.LoggedBatch) }
func (r *runner) batch_unlogged() error { return r.batch("batch_unlogged", gocql.UnloggedBatch) }

func (r *runner) batchText(table, head string) error {
	k := r.key()
	if err := r.exec(fmt.Sprintf("%s INSERT INTO %s (k, c, v, n) VALUES ('%s', 1, 'one', 1); "+
		"INSERT INTO %s (k, c, v, n) VALUES ('%s', 2, 'two', 2); "+
		"UPDATE %s SET n = 20 WHERE k = '%s' AND c = 2; "+
		"INSERT INTO %s (k, c, v) VALUES ('%s', 1, 'other partition') APPLY BATCH",
		head, table, k, table, k, table, k, table, r.key(2))); err != nil {
		return err
	}
	return r.exec(fmt.Sprintf("%s INSERT INTO %s (k, c, v) VALUES ('%s', 3, 'stamped'); "+
		"UPDATE %s SET v = 'must lose' WHERE k = '%s' AND c = 1 APPLY BATCH",
		strings.Replace(head, "BATCH", "BATCH USING TIMESTAMP 1234567", 1), table, k, table, k))
}

func (r *runner) batch_text_logged() error {
	return r.batchText("batch_text_logged", "BEGIN BATCH")
}
func (r *runner) batch_text_unlogged() error {
	return r.batchText("batch_text_unlogged", "BEGIN UNLOGGED BATCH")
}

// -- non-deterministic functions -----------------------------------------

func (r *runner) functions_simple() error {
	// Without values: gocql still prepares it (see the package comment).
	if err := r.exec(fmt.Sprintf("INSERT INTO functions_simple (k, a, b, c, d) VALUES ('%s', now(), uuid(), "+
		"toTimestamp(now()), currentTimestamp())", r.key(1))); err != nil {
		return err
	}
	return r.exec(fmt.Sprintf("UPDATE functions_simple SET a = now(), b = uuid(), c = toTimestamp(now()), "+
		"d = currentTimestamp() WHERE k = '%s'", r.key(2)))
}

// functions_batch: in BATCH messages, a child without values (gocql sends
// its text, kind 0) and a prepared one.
func (r *runner) functions_batch() error {
	b := r.s.Batch(gocql.UnloggedBatch)
	b.Query(fmt.Sprintf("INSERT INTO functions_batch (k, a, b, c, d) VALUES ('%s', now(), uuid(), "+
		"toTimestamp(now()), currentTimestamp())", r.key(1)))
	b.Query("UPDATE functions_batch SET a = now(), b = uuid(), d = currentTimestamp() WHERE k = ?", r.key(2))
	return b.Exec()
}

func (r *runner) functions_prepared() error {
	p := "INSERT INTO functions_prepared (k, a, b, c, d) VALUES (?, now(), uuid(), toTimestamp(now()), currentTimestamp())"
	if err := r.exec(p, r.key(1)); err != nil {
		return err
	}
	if err := r.exec(p, r.key(2)); err != nil {
		return err
	}
	return r.exec("UPDATE functions_prepared SET a = now(), c = toTimestamp(now()) WHERE k = ?", r.key(3))
}

// -- session state, reads, sizes -----------------------------------------

func (r *runner) use_keyspace() error {
	k := r.key()
	ins := "INSERT INTO use_keyspace (k, v) VALUES (?, ?)"
	if r.proto >= 5 {
		// One session; the keyspace of each request is protocol v5's field.
		if err := r.s.Query(fmt.Sprintf("INSERT INTO use_keyspace (k, v) VALUES ('%s', 'in %s')", k, r.ks2)).SetKeyspace(r.ks2).Exec(); err != nil {
			return err
		}
		if err := r.s.Query(ins, r.key(2), "prepared in "+r.ks2).SetKeyspace(r.ks2).Exec(); err != nil {
			return err
		}
		if err := r.s.Query(ins, k, "in "+r.ks).Exec(); err != nil {
			return err
		}
		if err := r.s.Query(ins, r.key(3), "prepared in "+r.ks2+", executed in "+r.ks).SetKeyspace(r.ks2).Exec(); err != nil {
			return err
		}
		b := r.s.Batch(gocql.LoggedBatch).SetKeyspace(r.ks2)
		b.Query(ins, r.key(4), "USE statement")
		if err := b.Exec(); err != nil {
			return err
		}
	} else {
		// v4: gocql sends USE itself when a session's connections open.
		c2 := *r.cluster
		c2.Keyspace = r.ks2
		c2.PoolConfig.HostSelectionPolicy = gocql.TokenAwareHostPolicy(gocql.RoundRobinHostPolicy())
		s2, err := c2.CreateSession()
		if err != nil {
			return err
		}
		defer s2.Close()
		if err := s2.Query(fmt.Sprintf("INSERT INTO use_keyspace (k, v) VALUES ('%s', 'in %s')", k, r.ks2)).Exec(); err != nil {
			return err
		}
		if err := s2.Query(ins, r.key(2), "prepared in "+r.ks2).Exec(); err != nil {
			return err
		}
		if err := r.s.Query(ins, k, "in "+r.ks).Exec(); err != nil {
			return err
		}
		if err := s2.Query(ins, r.key(3), "prepared in "+r.ks2+", executed in "+r.ks).Exec(); err != nil {
			return err
		}
		if err := s2.Query(ins, r.key(4), "USE statement").Exec(); err != nil {
			return err
		}
	}
	got := map[string]map[string]string{}
	for _, ks := range []string{r.ks, r.ks2} {
		got[ks] = map[string]string{}
		iter := r.s.Query(fmt.Sprintf("SELECT k, v FROM %s.use_keyspace", ks)).Iter()
		var kk, vv string
		for iter.Scan(&kk, &vv) {
			if kk == k || strings.HasPrefix(kk, r.run+":") {
				got[ks][kk] = vv
			}
		}
		if err := iter.Close(); err != nil {
			return err
		}
	}
	want := map[string]map[string]string{
		r.ks: {k: "in " + r.ks},
		r.ks2: {
			k:        "in " + r.ks2,
			r.key(2): "prepared in " + r.ks2,
			r.key(3): "prepared in " + r.ks2 + ", executed in " + r.ks,
			r.key(4): "USE statement",
		},
	}
	return check(reflect.DeepEqual(got, want), "source holds %v", got)
}

func (r *runner) count(q *gocql.Query, keep func(string) bool) (int, error) {
	iter := q.Iter()
	n := 0
	var k string
	var c int
	for iter.Scan(&k, &c) {
		if keep == nil || keep(k) {
			n++
		}
	}
	return n, iter.Close()
}

func (r *runner) paging() error {
	want := 0
	for part := 0; part < 4; part++ {
		for c := 0; c < 60+part; c++ {
			if err := r.exec("INSERT INTO paging (k, c, v) VALUES (?, ?, ?)", r.key(part), c, fmt.Sprintf("row %d", c)); err != nil {
				return err
			}
			want++
		}
	}
	n, err := r.count(r.s.Query(fmt.Sprintf("SELECT k, c FROM paging WHERE k = '%s'", r.key(0))).PageSize(7), nil)
	if err != nil {
		return err
	}
	if n != 60 {
		return fmt.Errorf("one partition read back %d rows of 60", n)
	}
	n, err = r.count(r.s.Query("SELECT k, c FROM paging").PageSize(25), func(k string) bool { return strings.HasPrefix(k, r.run+":") })
	if err != nil {
		return err
	}
	if n != want {
		return fmt.Errorf("full scan read back %d rows of %d", n, want)
	}
	n, err = r.count(r.s.Query("SELECT k, c FROM paging WHERE k = ?", r.key(3)).PageSize(11), nil)
	if err != nil {
		return err
	}
	return check(n == 63, "prepared read back %d rows of 63", n)
}

func (r *runner) blob_1mib() error {
	seed := sha256.Sum256([]byte(r.run))
	blob := bytes.Repeat(seed[:], 1024*1024/len(seed))
	if err := r.exec("INSERT INTO blob_1mib (k, b) VALUES (?, ?)", r.key(), blob); err != nil {
		return err
	}
	var got []byte
	if err := r.s.Query("SELECT b FROM blob_1mib WHERE k = ?", r.key()).Scan(&got); err != nil {
		return err
	}
	return check(bytes.Equal(got, blob), "blob read back differs (%d bytes)", len(got))
}

func (r *runner) truncate_then_write() error {
	if err := r.s.Query("TRUNCATE truncate_then_write").Exec(); err != nil {
		return err
	}
	for n := 0; n < 20; n++ {
		if err := r.exec("INSERT INTO truncate_then_write (k, v) VALUES (?, ?)", r.key(n), n); err != nil {
			return err
		}
	}
	return r.exec(fmt.Sprintf("UPDATE truncate_then_write SET v = 100 WHERE k = '%s'", r.key(0)))
}

// driverVersion names the gocql module this binary was built with.
func driverVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, m := range info.Deps {
			if strings.Contains(m.Path, "gocql") {
				return "go " + m.Path + " " + m.Version
			}
		}
	}
	return "go gocql (unknown version)"
}

type result struct {
	Name  string  `json:"name"`
	OK    bool    `json:"ok"`
	Error *string `json:"error"`
}

func main() {
	contact := flag.String("contact", "", "host:port of one proxy")
	keyspace := flag.String("keyspace", "", "")
	keyspace2 := flag.String("keyspace2", "", "the second keyspace (use_keyspace)")
	run := flag.String("run", "", "the run's name, the prefix of every key it writes")
	protocol := flag.Int("protocol", 4, "")
	compression := flag.String("compression", "none", "none, lz4 or snappy")
	noTS := flag.Bool("no-client-timestamps", false, "")
	only := flag.String("scenarios", "all", "comma-separated names, or all")
	flag.Parse()

	host, portText, err := net.SplitHostPort(*contact)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bad -contact:", err)
		os.Exit(2)
	}
	port, _ := strconv.Atoi(portText)
	cluster := gocql.NewCluster(host)
	cluster.Port = port
	cluster.ProtoVersion = *protocol
	cluster.Keyspace = *keyspace
	cluster.Timeout = 30 * time.Second
	cluster.ConnectTimeout = 10 * time.Second
	cluster.DefaultTimestamp = !*noTS
	cluster.PoolConfig.HostSelectionPolicy = gocql.TokenAwareHostPolicy(gocql.RoundRobinHostPolicy())
	switch *compression {
	case "lz4":
		cluster.Compressor = &lz4.LZ4Compressor{}
	case "snappy":
		cluster.Compressor = &snappy.SnappyCompressor{}
	}
	session, err := cluster.CreateSession()
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	r := &runner{cluster: cluster, s: session, ks: *keyspace, ks2: *keyspace2, run: *run, proto: *protocol}
	all := []struct {
		name string
		f    func() error
	}{
		{"insert_simple", r.insert_simple},
		{"insert_prepared", r.insert_prepared},
		{"update_simple", r.update_simple},
		{"update_prepared", r.update_prepared},
		{"using_timestamp", r.using_timestamp},
		{"using_ttl", r.using_ttl},
		{"coll_set_map", r.coll_set_map},
		{"coll_list", r.coll_list},
		{"udt_frozen", r.udt_frozen},
		{"udt_nonfrozen", r.udt_nonfrozen},
		{"static_columns", r.static_columns},
		{"static_only_partition", r.static_only_partition},
		{"delete_row", r.delete_row},
		{"delete_range", r.delete_range},
		{"counter_simple_literal", r.counter_simple_literal},
		{"counter_simple_bind", r.counter_simple_bind},
		{"counter_prepared", r.counter_prepared},
		{"counter_batch", r.counter_batch},
		{"lwt_if_not_exists", r.lwt_if_not_exists},
		{"lwt_if_condition", r.lwt_if_condition},
		{"lwt_batch", r.lwt_batch},
		{"batch_logged", r.batch_logged},
		{"batch_unlogged", r.batch_unlogged},
		{"batch_text_logged", r.batch_text_logged},
		{"batch_text_unlogged", r.batch_text_unlogged},
		{"functions_simple", r.functions_simple},
		{"functions_prepared", r.functions_prepared},
		{"functions_batch", r.functions_batch},
		{"use_keyspace", r.use_keyspace},
		{"paging", r.paging},
		{"blob_1mib", r.blob_1mib},
		{"truncate_then_write", r.truncate_then_write},
	}
	wanted := map[string]bool{}
	for _, n := range strings.Split(*only, ",") {
		wanted[n] = true
	}
	results := []result{}
	for _, sc := range all {
		if *only != "all" && !wanted[sc.name] {
			continue
		}
		res := result{Name: sc.name, OK: true}
		if err := sc.f(); err != nil {
			text := fmt.Sprintf("%T: %v", err, err)
			fmt.Fprintf(os.Stderr, "scenario %s failed: %s\n", sc.name, text)
			res.OK = false
			res.Error = &text
		}
		results = append(results, res)
	}
	hosts := []string{}
	for _, h := range session.GetHosts() {
		hosts = append(hosts, net.JoinHostPort(h.ConnectAddress().String(), strconv.Itoa(h.Port())))
	}
	sort.Strings(hosts)
	session.Close()
	out := map[string]interface{}{
		"driver":            driverVersion(),
		"run":               *run,
		"client_timestamps": !*noTS,
		"compression":       *compression,
		"protocol_version":  *protocol,
		"hosts":             hosts,
		"scenarios":         results,
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
