// Driver conformance program: the DataStax Java driver 4.x through the proxy.
// The same scenarios as e2e/conformance/python and e2e/conformance/go, under
// the same names and into the same tables (e2e/conformance/schema.cql); the
// test is e2e/tests/conformance.rs.
//
// It connects to ONE contact point (a proxy) with the driver's defaults:
// token-aware routing (the default load balancing policy, local datacenter
// `source-dc`), the driver's own client timestamps (AtomicTimestampGenerator;
// ServerSideTimestampGenerator with --no-client-timestamps), prepared
// statements prepared on every node. It runs the scenarios and prints one
// JSON document:
//
//   {"driver": ..., "protocol_version": N, "hosts": ["ip:port", ...],
//    "scenarios": [{"name": ..., "ok": true|false, "error": text|null}, ...]}
//
// The Java driver sends a SimpleStatement with values as a QUERY with bound
// values (it prepares nothing by itself), and a BATCH child SimpleStatement
// as text with its values. Keyspace switches use `USE` on a session of its
// own (the driver follows a USE on all its connections).
//
// A session that cannot be opened is reported as "connect_error" (and no
// scenarios), exit status 0.
//
// prepared_before_roll (only with --roll-control) is the roll of a sidecar
// seen by an application: the contact point is a relay of the test that
// first forwards to a source node directly; a statement with now() is
// prepared there (the source's id) and executed; then the relay is told to
// forward to that node's proxy and to close every connection; the driver
// reconnects and executes the same statement through the proxy. The driver
// prepares it again (on UNPREPARED, or when the node comes back up) and, on
// UNPREPARED, fails with "ID mismatch while trying to reprepare" if the
// proxy hands out another id than the source did.
package ferry.conformance;

import com.datastax.oss.driver.api.core.CqlSession;
import com.datastax.oss.driver.api.core.CqlSessionBuilder;
import com.datastax.oss.driver.api.core.DriverException;
import com.datastax.oss.driver.api.core.ProtocolVersion;
import com.datastax.oss.driver.api.core.config.DefaultDriverOption;
import com.datastax.oss.driver.api.core.config.DriverConfigLoader;
import com.datastax.oss.driver.api.core.config.ProgrammaticDriverConfigLoaderBuilder;
import com.datastax.oss.driver.api.core.cql.BatchStatement;
import com.datastax.oss.driver.api.core.cql.BatchStatementBuilder;
import com.datastax.oss.driver.api.core.cql.BoundStatement;
import com.datastax.oss.driver.api.core.cql.DefaultBatchType;
import com.datastax.oss.driver.api.core.cql.PreparedStatement;
import com.datastax.oss.driver.api.core.cql.ResultSet;
import com.datastax.oss.driver.api.core.cql.Row;
import com.datastax.oss.driver.api.core.cql.SimpleStatement;
import com.datastax.oss.driver.api.core.loadbalancing.NodeDistance;
import com.datastax.oss.driver.api.core.metadata.Node;
import com.datastax.oss.driver.api.core.session.Session;
import com.datastax.oss.driver.api.core.type.UserDefinedType;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketAddress;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.time.Duration;
import java.time.Instant;
import java.time.LocalDate;
import java.time.LocalTime;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;

public final class Conformance {

  static final String SCALARS = "k, c, t, i, bi, d, b, ts, u, bl, dec, vi, dt, tm, ip";
  static final String SCALAR_LITERALS =
      "'%s', %d, 'text é ''quoted''', 42, 9000000000, 3.5, true, "
          + "'2024-01-02 03:04:05.678+0000', 9b4e1c56-7c3a-4d6b-9f0e-0a1b2c3d4e5f, 0xcafe, "
          + "12.345, 123456789012345678901234567890, '2024-02-29', '13:14:15.123456789', '10.1.2.3'";

  static Object[] scalarValues(String k, int c) throws Exception {
    return new Object[] {
      k,
      c,
      "text é 'quoted'",
      42,
      9000000000L,
      3.5,
      true,
      Instant.parse("2024-01-02T03:04:05.678Z"),
      java.util.UUID.fromString("9b4e1c56-7c3a-4d6b-9f0e-0a1b2c3d4e5f"),
      ByteBuffer.wrap(new byte[] {(byte) 0xca, (byte) 0xfe}),
      new BigDecimal("12.345"),
      new BigInteger("123456789012345678901234567890"),
      LocalDate.of(2024, 2, 29),
      LocalTime.of(13, 14, 15, 123456789),
      InetAddress.getByName("10.1.2.3"),
    };
  }

  static String marks(int n) {
    return String.join(", ", Collections.nCopies(n, "?"));
  }

  static void check(boolean cond, String what) {
    if (!cond) {
      throw new AssertionError(what);
    }
  }

  interface Scenario {
    void run() throws Exception;
  }

  final Options o;
  final CqlSession s;

  Conformance(Options o, CqlSession s) {
    this.o = o;
    this.s = s;
  }

  String key() {
    return o.run;
  }

  String key(Object n) {
    return o.run + ":" + n;
  }

  ResultSet exec(String q, Object... values) {
    return s.execute(SimpleStatement.newInstance(q, values));
  }

  // -- plain writes -------------------------------------------------------

  void insertSimple() throws Exception {
    exec(
        String.format(
            "INSERT INTO insert_simple (%s) VALUES (%s)",
            SCALARS, String.format(SCALAR_LITERALS, key(), 1)));
    // Values of a simple statement: sent with the QUERY, the text has markers.
    exec(
        String.format("INSERT INTO insert_simple (%s) VALUES (%s)", SCALARS, marks(15)),
        scalarValues(key(), 2));
    // A row with nulls (tombstones) and an empty text.
    exec("INSERT INTO insert_simple (k, c, t, i, bl) VALUES (?, 3, '', null, null)", key());
  }

  void insertPrepared() throws Exception {
    PreparedStatement p =
        s.prepare(String.format("INSERT INTO insert_prepared (%s) VALUES (%s)", SCALARS, marks(15)));
    for (int c = 1; c <= 3; c++) {
      s.execute(p.bind(scalarValues(key(), c)));
    }
    Object[] nulls = new Object[15];
    nulls[0] = key("nulls");
    nulls[1] = 1;
    s.execute(p.bind(nulls));
  }

  void updateSimple() throws Exception {
    String k = key();
    exec(String.format("UPDATE update_simple SET t = 'first', i = 1 WHERE k = '%s' AND c = 1", k));
    exec(String.format("UPDATE update_simple SET t = 'second', bi = -5 WHERE k = '%s' AND c = 1", k));
    exec(
        "UPDATE update_simple SET d = ?, ts = ?, ip = ? WHERE k = ? AND c = ?",
        2.25,
        Instant.parse("2030-05-06T07:08:09Z"),
        InetAddress.getByName("::1"),
        k,
        2);
  }

  void updatePrepared() {
    String k = key();
    PreparedStatement p =
        s.prepare("UPDATE update_prepared SET t = ?, i = ?, dec = ? WHERE k = ? AND c = ?");
    s.execute(p.bind("first", 1, new BigDecimal("-1.5"), k, 1));
    s.execute(p.bind("second", 2, new BigDecimal("0.001"), k, 1));
    s.execute(p.bind("other", 3, null, k, 2));
  }

  void usingTimestamp() {
    String k = key();
    long t0 = 1_700_000_000_000_000L;
    exec(
        String.format(
            "INSERT INTO using_timestamp (k, c, v, n) VALUES ('%s', 1, 'kept', 1) USING TIMESTAMP %d",
            k, t0));
    // Older: must lose on both sides.
    exec(
        String.format(
            "UPDATE using_timestamp USING TIMESTAMP %d SET v = 'older' WHERE k = '%s' AND c = 1",
            t0 - 1, k));
    PreparedStatement p =
        s.prepare("INSERT INTO using_timestamp (k, c, v, n) VALUES (?, ?, ?, ?) USING TIMESTAMP ?");
    s.execute(p.bind(k, 2, "prepared", 2, t0 + 5));
    s.execute(p.bind(k, 2, "prepared older", 3, t0 + 4));
    PreparedStatement u =
        s.prepare(
            "UPDATE using_timestamp USING TIMESTAMP ? AND TTL ? SET n = ? WHERE k = ? AND c = ?");
    s.execute(u.bind(t0 + 10, 86400, 7, k, 1));
    // A timestamp newer than the driver's clock, then a plain write that must lose.
    long future = 4_000_000_000_000_000L;
    exec(
        String.format(
            "INSERT INTO using_timestamp (k, c, v) VALUES ('%s', 3, 'future') USING TIMESTAMP %d",
            k, future));
    exec(String.format("UPDATE using_timestamp SET v = 'now' WHERE k = '%s' AND c = 3", k));
    Row row = exec(String.format("SELECT v FROM using_timestamp WHERE k = '%s' AND c = 3", k)).one();
    check(row != null && "future".equals(row.getString("v")), "c=3 is " + row + " on the source");
  }

  void usingTtl() {
    String k = key();
    exec(
        String.format(
            "INSERT INTO using_ttl (k, c, v, n) VALUES ('%s', 1, 'a', 1) USING TTL 3600", k));
    exec(String.format("UPDATE using_ttl USING TTL 7200 SET v = 'b' WHERE k = '%s' AND c = 1", k));
    PreparedStatement p =
        s.prepare("INSERT INTO using_ttl (k, c, v, n) VALUES (?, ?, ?, ?) USING TTL ?");
    s.execute(p.bind(k, 2, "prepared", 2, 5000));
    exec(String.format("INSERT INTO using_ttl (k, c, v) VALUES ('%s', 3, 'ttl 0') USING TTL 0", k));
  }

  // -- collections and UDTs ---------------------------------------------

  void collSetMap() {
    String k = key();
    exec(
        String.format(
            "INSERT INTO coll_set_map (k, s, m, fs) VALUES ('%s', {'a', 'b'}, {'x': 1, 'w': 0}, {3, 1, 2})",
            k));
    exec(String.format("UPDATE coll_set_map SET s = s + {'c', 'd'} WHERE k = '%s'", k));
    exec(String.format("UPDATE coll_set_map SET s = s - {'a'} WHERE k = '%s'", k));
    exec(String.format("UPDATE coll_set_map SET m['y'] = 2 WHERE k = '%s'", k));
    exec(String.format("UPDATE coll_set_map SET m = m + {'z': 3} WHERE k = '%s'", k));
    exec(String.format("DELETE m['x'] FROM coll_set_map WHERE k = '%s'", k));
    exec(String.format("UPDATE coll_set_map SET m = m - {'w'} WHERE k = '%s'", k));
    PreparedStatement ps = s.prepare("UPDATE coll_set_map SET s = s + ?, m = m + ? WHERE k = ?");
    s.execute(ps.bind(Set.of("e"), Map.of("p", 9), k));
    PreparedStatement pr = s.prepare("UPDATE coll_set_map SET s = s - ?, m[?] = ? WHERE k = ?");
    s.execute(pr.bind(Set.of("b"), "q", 10, k));
    // A whole-collection overwrite of another row, values with the QUERY.
    exec(
        "UPDATE coll_set_map SET s = ?, m = ?, fs = ? WHERE k = ?",
        Set.of("only"),
        Map.of("one", 1),
        Set.of(7),
        key(2));
  }

  void collList() {
    String k = key();
    exec(String.format("INSERT INTO coll_list (k, l, fl) VALUES ('%s', [1, 2, 3], ['x', 'y'])", k));
    exec(String.format("UPDATE coll_list SET l = l + [4, 5] WHERE k = '%s'", k)); // append
    exec(String.format("UPDATE coll_list SET l = [0] + l WHERE k = '%s'", k)); // prepend
    exec(String.format("UPDATE coll_list SET l[1] = 10 WHERE k = '%s'", k)); // set by index
    exec(String.format("UPDATE coll_list SET l = l - [3] WHERE k = '%s'", k)); // remove by value
    exec(String.format("DELETE l[0] FROM coll_list WHERE k = '%s'", k)); // remove by index
    s.execute(s.prepare("UPDATE coll_list SET l = l + ? WHERE k = ?").bind(List.of(6), k));
    s.execute(s.prepare("UPDATE coll_list SET l = ? + l WHERE k = ?").bind(List.of(-1), k));
    s.execute(s.prepare("UPDATE coll_list SET l[?] = ? WHERE k = ?").bind(2, 20, k));
    s.execute(
        s.prepare("UPDATE coll_list SET l = l - ?, fl = ? WHERE k = ?")
            .bind(List.of(5), List.of("z"), k));
    Row row = exec(String.format("SELECT l FROM coll_list WHERE k = '%s'", k)).one();
    List<Integer> l = row.getList("l", Integer.class);
    check(l.equals(List.of(-1, 10, 20, 4, 6)), "list on the source is " + l);
  }

  void udtFrozen() {
    String k = key();
    exec(
        String.format(
            "INSERT INTO udt_frozen (k, a, n) VALUES ('%s', {street: '1 Main St', city: 'Paris', zip: 75001}, 1)",
            k));
    PreparedStatement p = s.prepare("INSERT INTO udt_frozen (k, a, n) VALUES (?, ?, ?)");
    UserDefinedType addr = (UserDefinedType) p.getVariableDefinitions().get("a").getType();
    s.execute(
        p.bind(
            key(2),
            addr.newValue().setString("street", "2 Side St").setString("city", "Lyon").setToNull("zip"),
            2));
    PreparedStatement u = s.prepare("UPDATE udt_frozen SET a = ? WHERE k = ?");
    s.execute(u.bind(addr.newValue("3 Other St", "Nice", 6000), k));
  }

  void udtNonfrozen() {
    String k = key();
    exec(
        String.format(
            "INSERT INTO udt_nonfrozen (k, a, n) VALUES ('%s', {street: '1 Main St', city: 'Paris', zip: 75001}, 1)",
            k));
    exec(String.format("UPDATE udt_nonfrozen SET a.city = 'Lyon' WHERE k = '%s'", k));
    s.execute(s.prepare("UPDATE udt_nonfrozen SET a.zip = ? WHERE k = ?").bind(69001, k));
    PreparedStatement w = s.prepare("INSERT INTO udt_nonfrozen (k, a) VALUES (?, ?)");
    UserDefinedType addr = (UserDefinedType) w.getVariableDefinitions().get("a").getType();
    s.execute(
        w.bind(
            key(2),
            addr.newValue().setString("street", "2 Side St").setToNull("city").setInt("zip", 13000)));
    exec(String.format("DELETE a.street FROM udt_nonfrozen WHERE k = '%s'", key(2)));
  }

  // -- static columns, deletes -------------------------------------------

  void staticColumns() {
    String k = key();
    exec(
        String.format(
            "INSERT INTO static_columns (k, c, s, s2, v) VALUES ('%s', 1, 'static', 1, 'one')", k));
    exec(String.format("INSERT INTO static_columns (k, c, v) VALUES ('%s', 2, 'two')", k));
    exec(String.format("UPDATE static_columns SET s = 'static again' WHERE k = '%s'", k));
    s.execute(s.prepare("UPDATE static_columns SET s2 = ? WHERE k = ?").bind(2, k));
    s.execute(
        s.prepare("INSERT INTO static_columns (k, c, s, v) VALUES (?, ?, ?, ?)")
            .bind(key(2), 1, "other static", "v"));
  }

  void staticOnlyPartition() {
    exec(
        String.format(
            "INSERT INTO static_only_partition (k, s) VALUES ('%s', 'only static')", key(1)));
    exec(String.format("UPDATE static_only_partition SET s = 'updated' WHERE k = '%s'", key(2)));
    s.execute(
        s.prepare("INSERT INTO static_only_partition (k, s) VALUES (?, ?) USING TTL 3000")
            .bind(key(3), "prepared static"));
  }

  void deleteRow() {
    String k = key();
    PreparedStatement p = s.prepare("INSERT INTO delete_row (k, c, v, n) VALUES (?, ?, ?, ?)");
    for (int c = 0; c < 6; c++) {
      s.execute(p.bind(k, c, "v" + c, c));
    }
    exec(String.format("DELETE FROM delete_row WHERE k = '%s' AND c = 2", k));
    s.execute(s.prepare("DELETE FROM delete_row WHERE k = ? AND c = ?").bind(k, 4));
    exec(String.format("DELETE v FROM delete_row WHERE k = '%s' AND c = 1", k));
    // A whole partition.
    s.execute(p.bind(key(2), 0, "gone", 0));
    exec(String.format("DELETE FROM delete_row WHERE k = '%s'", key(2)));
  }

  void deleteRange() {
    String k = key();
    PreparedStatement p = s.prepare("INSERT INTO delete_range (k, c, v) VALUES (?, ?, ?)");
    for (int c = 0; c < 10; c++) {
      s.execute(p.bind(k, c, "v" + c));
    }
    exec(String.format("DELETE FROM delete_range WHERE k = '%s' AND c >= 3 AND c < 6", k));
    s.execute(s.prepare("DELETE FROM delete_range WHERE k = ? AND c > ?").bind(k, 7));
    List<Integer> got = new ArrayList<>();
    for (Row r : exec(String.format("SELECT c FROM delete_range WHERE k = '%s'", k))) {
      got.add(r.getInt("c"));
    }
    check(got.equals(List.of(0, 1, 2, 6, 7)), "source rows " + got);
  }

  // -- counters ----------------------------------------------------------

  void counterSimpleLiteral() {
    String k = key();
    exec(
        String.format(
            "UPDATE counter_simple_literal SET c = c + 5, c2 = c2 - 2 WHERE k = '%s'", k));
    exec(String.format("UPDATE counter_simple_literal SET c = c + 1 WHERE k = '%s'", k));
  }

  void counterSimpleBind() {
    // Bind markers in a simple statement: the values travel with the QUERY.
    String k = key();
    exec("UPDATE counter_simple_bind SET c = c + ? WHERE k = ?", 7L, k);
    exec("UPDATE counter_simple_bind SET c = c + ?, c2 = c2 + ? WHERE k = ?", -3L, 11L, k);
  }

  void counterPrepared() {
    String k = key();
    PreparedStatement p = s.prepare("UPDATE counter_prepared SET c = c + ? WHERE k = ?");
    for (long n : new long[] {1, 2, 3}) {
      s.execute(p.bind(n, k));
    }
    s.execute(s.prepare("UPDATE counter_prepared SET c2 = c2 + 4 WHERE k = ?").bind(k));
  }

  void counterBatch() {
    String k = key();
    PreparedStatement p = s.prepare("UPDATE counter_batch SET c = c + ? WHERE k = ?");
    BatchStatement b =
        BatchStatement.newInstance(
            DefaultBatchType.COUNTER,
            p.bind(2L, k),
            p.bind(3L, key(2)),
            SimpleStatement.newInstance(
                String.format("UPDATE counter_batch SET c2 = c2 + 1 WHERE k = '%s'", k)));
    s.execute(b);
    exec(
        String.format(
            "BEGIN COUNTER BATCH UPDATE counter_batch SET c = c + 10 WHERE k = '%s'; "
                + "UPDATE counter_batch SET c2 = c2 + 10 WHERE k = '%s'; APPLY BATCH",
            k, key(2)));
  }

  // -- lightweight transactions -----------------------------------------

  void lwtIfNotExists() {
    String k = key();
    ResultSet r =
        exec(
            String.format(
                "INSERT INTO lwt_if_not_exists (k, v, t) VALUES ('%s', 1, 'first') IF NOT EXISTS", k));
    check(r.wasApplied(), "first IF NOT EXISTS not applied");
    r =
        exec(
            String.format(
                "INSERT INTO lwt_if_not_exists (k, v, t) VALUES ('%s', 2, 'second') IF NOT EXISTS",
                k));
    check(!r.wasApplied(), "second IF NOT EXISTS applied");
    PreparedStatement p =
        s.prepare("INSERT INTO lwt_if_not_exists (k, v, t) VALUES (?, ?, ?) IF NOT EXISTS");
    r = s.execute(p.bind(key(2), 3, "prepared"));
    check(r.wasApplied(), "prepared IF NOT EXISTS not applied");
  }

  void lwtIfCondition() {
    String k = key();
    exec(String.format("INSERT INTO lwt_if_condition (k, v, t) VALUES ('%s', 1, 'plain')", k));
    ResultSet r =
        exec(
            String.format(
                "UPDATE lwt_if_condition SET v = 2, t = 'cas' WHERE k = '%s' IF v = 1", k));
    check(r.wasApplied(), "IF v = 1 not applied");
    r = exec(String.format("UPDATE lwt_if_condition SET v = 3 WHERE k = '%s' IF v = 1", k));
    check(!r.wasApplied(), "stale IF v = 1 applied");
    PreparedStatement p = s.prepare("UPDATE lwt_if_condition SET v = ? WHERE k = ? IF v = ?");
    r = s.execute(p.bind(4, k, 2));
    check(r.wasApplied(), "prepared IF v = ? not applied");
    r = exec(String.format("DELETE FROM lwt_if_condition WHERE k = '%s' IF EXISTS", key(2)));
    check(!r.wasApplied(), "DELETE IF EXISTS of nothing applied");
  }

  void lwtBatch() {
    String k = key();
    PreparedStatement ins =
        s.prepare("INSERT INTO lwt_batch (k, c, v, t) VALUES (?, ?, ?, ?) IF NOT EXISTS");
    ResultSet r =
        s.execute(
            BatchStatement.newInstance(
                DefaultBatchType.LOGGED, ins.bind(k, 1, 1, "a"), ins.bind(k, 2, 2, "b")));
    check(r.wasApplied(), "conditional batch not applied");
    r =
        s.execute(
            BatchStatement.newInstance(
                DefaultBatchType.LOGGED,
                SimpleStatement.newInstance(
                    String.format(
                        "UPDATE lwt_batch SET v = 10 WHERE k = '%s' AND c = 1 IF v = 1", k)),
                SimpleStatement.newInstance(
                    String.format("UPDATE lwt_batch SET t = 'bb' WHERE k = '%s' AND c = 2", k))));
    check(r.wasApplied(), "second conditional batch not applied");
  }

  // -- batches -----------------------------------------------------------

  void batch(String table, DefaultBatchType type) {
    String k = key();
    PreparedStatement ins =
        s.prepare(String.format("INSERT INTO %s (k, c, v, n) VALUES (?, ?, ?, ?)", table));
    PreparedStatement upd =
        s.prepare(String.format("UPDATE %s SET n = ? WHERE k = ? AND c = ?", table));
    BatchStatementBuilder b = BatchStatement.builder(type);
    b.addStatement(ins.bind(k, 1, "prepared", 1));
    b.addStatement(
        SimpleStatement.newInstance(
            String.format("INSERT INTO %s (k, c, v, n) VALUES ('%s', 2, 'simple', 2)", table, k)));
    // A text child with values.
    b.addStatement(
        SimpleStatement.newInstance(
            String.format("INSERT INTO %s (k, c, v) VALUES (?, ?, ?)", table),
            key(2),
            1,
            "other partition"));
    b.addStatement(upd.bind(10, k, 1));
    s.execute(b.build());
    b = BatchStatement.builder(type);
    b.addStatement(
        SimpleStatement.newInstance(
            String.format(
                "UPDATE %s USING TIMESTAMP 1000 SET v = 'old' WHERE k = ? AND c = 2", table),
            k));
    b.addStatement(ins.bind(k, 3, "second batch", 3));
    s.execute(b.build());
  }

  void batchText(String table, String head) {
    String k = key();
    exec(
        String.format(
            "%s INSERT INTO %s (k, c, v, n) VALUES ('%s', 1, 'one', 1); "
                + "INSERT INTO %s (k, c, v, n) VALUES ('%s', 2, 'two', 2); "
                + "UPDATE %s SET n = 20 WHERE k = '%s' AND c = 2; "
                + "INSERT INTO %s (k, c, v) VALUES ('%s', 1, 'other partition') APPLY BATCH",
            head, table, k, table, k, table, k, table, key(2)));
    exec(
        String.format(
            "%s INSERT INTO %s (k, c, v) VALUES ('%s', 3, 'stamped'); "
                + "UPDATE %s SET v = 'must lose' WHERE k = '%s' AND c = 1 APPLY BATCH",
            head.replaceFirst("BATCH", "BATCH USING TIMESTAMP 1234567"), table, k, table, k));
  }

  // -- non-deterministic functions ---------------------------------------

  void functionsSimple() {
    exec(
        String.format(
            "INSERT INTO functions_simple (k, a, b, c, d) VALUES ('%s', now(), uuid(), "
                + "toTimestamp(now()), currentTimestamp())",
            key(1)));
    // With a bound value: a QUERY with values.
    exec(
        "UPDATE functions_simple SET a = now(), b = uuid(), c = toTimestamp(now()), "
            + "d = currentTimestamp() WHERE k = ?",
        key(2));
  }

  void functionsPrepared() {
    PreparedStatement p =
        s.prepare(
            "INSERT INTO functions_prepared (k, a, b, c, d) VALUES (?, now(), uuid(), "
                + "toTimestamp(now()), currentTimestamp())");
    s.execute(p.bind(key(1)));
    s.execute(p.bind(key(2)));
    PreparedStatement u =
        s.prepare("UPDATE functions_prepared SET a = now(), c = toTimestamp(now()) WHERE k = ?");
    s.execute(u.bind(key(3)));
  }

  void functionsBatch() {
    // In a BATCH message: a child sent as text (kind 0) and a prepared one.
    PreparedStatement p =
        s.prepare(
            "UPDATE functions_batch SET a = now(), b = uuid(), d = currentTimestamp() WHERE k = ?");
    s.execute(
        BatchStatement.newInstance(
            DefaultBatchType.UNLOGGED,
            SimpleStatement.newInstance(
                String.format(
                    "INSERT INTO functions_batch (k, a, b, c, d) VALUES ('%s', now(), uuid(), "
                        + "toTimestamp(now()), currentTimestamp())",
                    key(1))),
            p.bind(key(2))));
  }

  // -- session state, reads, sizes ---------------------------------------

  void useKeyspace() {
    // A session of its own with no keyspace: USE switches it back and forth
    // (the driver follows a USE on all of the session's connections).
    try (CqlSession u = o.builder().build()) {
      String k = key();
      u.execute("USE " + o.ks2);
      u.execute(String.format("INSERT INTO use_keyspace (k, v) VALUES ('%s', 'in %s')", k, o.ks2));
      PreparedStatement p2 = u.prepare("INSERT INTO use_keyspace (k, v) VALUES (?, ?)");
      u.execute(p2.bind(key(2), "prepared in " + o.ks2));
      u.execute("USE " + o.ks);
      u.execute(String.format("INSERT INTO use_keyspace (k, v) VALUES ('%s', 'in %s')", k, o.ks));
      // Prepared under ks2: still writes there after the switch.
      u.execute(p2.bind(key(3), "prepared in " + o.ks2 + ", executed in " + o.ks));
      u.execute("USE " + o.ks2);
      u.execute(
          String.format(
              "INSERT INTO use_keyspace (k, v) VALUES ('%s', 'USE statement')", key(4)));
      Map<String, Map<String, String>> got = new TreeMap<>();
      for (String ks : List.of(o.ks, o.ks2)) {
        Map<String, String> rows = new TreeMap<>();
        for (Row r : u.execute("SELECT k, v FROM " + ks + ".use_keyspace")) {
          String rk = r.getString("k");
          if (rk.equals(k) || rk.startsWith(o.run + ":")) {
            rows.put(rk, r.getString("v"));
          }
        }
        got.put(ks, rows);
      }
      Map<String, Map<String, String>> want = new TreeMap<>();
      want.put(o.ks, new TreeMap<>(Map.of(k, "in " + o.ks)));
      want.put(
          o.ks2,
          new TreeMap<>(
              Map.of(
                  k, "in " + o.ks2,
                  key(2), "prepared in " + o.ks2,
                  key(3), "prepared in " + o.ks2 + ", executed in " + o.ks,
                  key(4), "USE statement")));
      check(got.equals(want), "source holds " + got);
    }
  }

  static int count(ResultSet rs, String prefix) {
    int n = 0;
    for (Row r : rs) {
      if (prefix == null || r.getString("k").startsWith(prefix)) {
        n++;
      }
    }
    return n;
  }

  void paging() {
    PreparedStatement p = s.prepare("INSERT INTO paging (k, c, v) VALUES (?, ?, ?)");
    int want = 0;
    for (int part = 0; part < 4; part++) {
      for (int c = 0; c < 60 + part; c++) {
        s.execute(p.bind(key(part), c, "row " + c));
        want++;
      }
    }
    int got =
        count(
            s.execute(
                SimpleStatement.newInstance(
                        String.format("SELECT k, c FROM paging WHERE k = '%s'", key(0)))
                    .setPageSize(7)),
            null);
    check(got == 60, "one partition read back " + got + " rows of 60");
    got =
        count(
            s.execute(SimpleStatement.newInstance("SELECT k, c FROM paging").setPageSize(25)),
            o.run + ":");
    check(got == want, "full scan read back " + got + " rows of " + want);
    PreparedStatement pq = s.prepare("SELECT k, c FROM paging WHERE k = ?");
    BoundStatement bq = pq.bind(key(3)).setPageSize(11);
    got = count(s.execute(bq), null);
    check(got == 63, "prepared read back " + got + " rows of 63");
  }

  void blob1mib() throws Exception {
    byte[] seed = MessageDigest.getInstance("SHA-256").digest(o.run.getBytes(StandardCharsets.UTF_8));
    byte[] blob = new byte[1024 * 1024];
    for (int i = 0; i < blob.length; i++) {
      blob[i] = seed[i % seed.length];
    }
    s.execute(
        s.prepare("INSERT INTO blob_1mib (k, b) VALUES (?, ?)").bind(key(), ByteBuffer.wrap(blob)));
    Row row = exec(String.format("SELECT b FROM blob_1mib WHERE k = '%s'", key())).one();
    check(row != null, "blob not read back");
    ByteBuffer got = row.getByteBuffer("b");
    check(got != null && got.equals(ByteBuffer.wrap(blob)), "blob read back differs");
  }

  void truncateThenWrite() {
    s.execute(
        SimpleStatement.newInstance("TRUNCATE truncate_then_write")
            .setTimeout(Duration.ofSeconds(60)));
    PreparedStatement p = s.prepare("INSERT INTO truncate_then_write (k, v) VALUES (?, ?)");
    for (int n = 0; n < 20; n++) {
      s.execute(p.bind(key(n), n));
    }
    exec(String.format("UPDATE truncate_then_write SET v = 100 WHERE k = '%s'", key(0)));
  }

  // -- the roll ------------------------------------------------------------

  static final String ROLL_INSERT =
      "INSERT INTO prepared_before_roll (k, a, b, c, n) VALUES (?, now(), uuid(), "
          + "toTimestamp(now()), ?)";
  static final String ROLL_UPDATE =
      "UPDATE prepared_before_roll SET a = now(), c = currentTimestamp() WHERE k = ?";

  void preparedBeforeRoll() throws Exception {
    check(o.rollControl != null, "prepared_before_roll needs --roll-control");
    // Before the roll the relay forwards to a source node: the ids are the source's.
    PreparedStatement ins = s.prepare(ROLL_INSERT);
    PreparedStatement upd = s.prepare(ROLL_UPDATE);
    ByteBuffer insId = ins.getId().duplicate();
    ByteBuffer updId = upd.getId().duplicate();
    // Rows written before the proxy existed: the backfill's job, not compared
    // (their keys are outside the run's).
    s.execute(ins.bind("direct:" + o.run, 0));
    s.execute(upd.bind("direct:" + o.run));
    roll();
    // The same statements, through the proxy: the driver prepares them again
    // (on UNPREPARED, checking the id, or when the node comes back up).
    for (int n = 1; n <= 3; n++) {
      s.execute(ins.bind(key(n), n));
    }
    s.execute(upd.bind(key(3)));
    s.execute(upd.bind(key(4)));
    // A fresh session prepares through the proxy: the id a direct connection gave.
    try (CqlSession fresh = o.builder().withKeyspace(o.ks).build()) {
      ByteBuffer again = fresh.prepare(ROLL_INSERT).getId();
      check(
          again.equals(insId),
          "the proxy gave the id " + hex(again) + " for the text the source gave " + hex(insId));
      again = fresh.prepare(ROLL_UPDATE).getId();
      check(
          again.equals(updId),
          "the proxy gave the id " + hex(again) + " for the text the source gave " + hex(updId));
      fresh.execute(fresh.prepare(ROLL_INSERT).bind(key(5), 5));
    }
  }

  static String hex(ByteBuffer b) {
    StringBuilder sb = new StringBuilder("0x");
    ByteBuffer d = b.duplicate();
    while (d.hasRemaining()) {
      sb.append(String.format("%02x", d.get()));
    }
    return sb.toString();
  }

  /** Asks the test's relay to forward to the proxy, then waits until a request goes through. */
  void roll() throws Exception {
    String[] hp = o.rollControl.split(":");
    try (Socket c = new Socket(hp[0], Integer.parseInt(hp[1]))) {
      c.setSoTimeout(30_000);
      OutputStream out = c.getOutputStream();
      out.write("roll\n".getBytes(StandardCharsets.US_ASCII));
      out.flush();
      String answer =
          new BufferedReader(new InputStreamReader(c.getInputStream(), StandardCharsets.US_ASCII))
              .readLine();
      check("rolled".equals(answer), "the relay answered " + answer);
    }
    long deadline = System.nanoTime() + Duration.ofSeconds(30).toNanos();
    DriverException last = null;
    while (System.nanoTime() < deadline) {
      try {
        s.execute("SELECT release_version FROM system.local");
        return;
      } catch (DriverException e) {
        // The connections the relay closed: the driver reconnects.
        last = e;
        Thread.sleep(200);
      }
    }
    throw new IllegalStateException("no request went through after the roll", last);
  }

  // -- the program -------------------------------------------------------

  static final class Options {
    String contact;
    String ks;
    String ks2;
    String run;
    int protocol = 4;
    String compression = "none";
    boolean clientTimestamps = true;
    String scenarios = "all";
    String rollControl;

    InetSocketAddress contactAddress() {
      int i = contact.lastIndexOf(':');
      return new InetSocketAddress(contact.substring(0, i), Integer.parseInt(contact.substring(i + 1)));
    }

    CqlSessionBuilder builder() {
      ProgrammaticDriverConfigLoaderBuilder cfg =
          DriverConfigLoader.programmaticBuilder()
              .withString(DefaultDriverOption.PROTOCOL_VERSION, "V" + protocol)
              .withDuration(DefaultDriverOption.REQUEST_TIMEOUT, Duration.ofSeconds(30))
              .withDuration(DefaultDriverOption.CONNECTION_CONNECT_TIMEOUT, Duration.ofSeconds(10))
              .withDuration(DefaultDriverOption.CONNECTION_INIT_QUERY_TIMEOUT, Duration.ofSeconds(10))
              .withDuration(DefaultDriverOption.CONTROL_CONNECTION_TIMEOUT, Duration.ofSeconds(10))
              .withDuration(DefaultDriverOption.METADATA_SCHEMA_REQUEST_TIMEOUT, Duration.ofSeconds(30))
              .withDuration(
                  DefaultDriverOption.CONTROL_CONNECTION_AGREEMENT_TIMEOUT, Duration.ofSeconds(30))
              // use_keyspace switches with USE on purpose: no warning for each.
              .withBoolean(DefaultDriverOption.REQUEST_WARN_IF_SET_KEYSPACE, false);
      if (!compression.equals("none")) {
        cfg = cfg.withString(DefaultDriverOption.PROTOCOL_COMPRESSION, compression);
      }
      if (!clientTimestamps) {
        cfg =
            cfg.withString(
                DefaultDriverOption.TIMESTAMP_GENERATOR_CLASS, "ServerSideTimestampGenerator");
      }
      InetSocketAddress addr = contactAddress();
      CqlSessionBuilder b =
          CqlSession.builder()
              .addContactPoint(addr)
              .withLocalDatacenter("source-dc")
              .withConfigLoader(cfg.build());
      if (rollControl != null) {
        // The roll: the driver uses the relay only (the application's node
        // before and after its sidecar arrives).
        b =
            b.withNodeDistanceEvaluator(
                (Node node, String dc) -> {
                  SocketAddress a = node.getEndPoint().resolve();
                  return addr.equals(a) ? null : NodeDistance.IGNORED;
                });
      }
      return b;
    }
  }

  static Options parse(String[] args) {
    Options o = new Options();
    for (int i = 0; i < args.length; i++) {
      String a = args[i];
      if (a.equals("--no-client-timestamps")) {
        o.clientTimestamps = false;
        continue;
      }
      if (i + 1 >= args.length) {
        throw new IllegalArgumentException(a + " needs a value");
      }
      String v = args[++i];
      switch (a) {
        case "--contact" -> o.contact = v;
        case "--keyspace" -> o.ks = v;
        case "--keyspace2" -> o.ks2 = v;
        case "--run" -> o.run = v;
        case "--protocol" -> o.protocol = Integer.parseInt(v);
        case "--compression" -> o.compression = v;
        case "--scenarios" -> o.scenarios = v;
        case "--roll-control" -> o.rollControl = v;
        default -> throw new IllegalArgumentException("unknown argument " + a);
      }
    }
    if (o.contact == null || o.ks == null || o.ks2 == null || o.run == null) {
      throw new IllegalArgumentException("--contact, --keyspace, --keyspace2 and --run are required");
    }
    if (!Set.of("none", "lz4", "snappy").contains(o.compression)) {
      throw new IllegalArgumentException("--compression: none, lz4 or snappy");
    }
    return o;
  }

  static String json(Object v) {
    if (v == null) {
      return "null";
    }
    if (v instanceof Boolean || v instanceof Number) {
      return v.toString();
    }
    if (v instanceof Map<?, ?> m) {
      List<String> parts = new ArrayList<>();
      for (Map.Entry<?, ?> e : m.entrySet()) {
        parts.add(json(e.getKey().toString()) + ": " + json(e.getValue()));
      }
      return "{" + String.join(", ", parts) + "}";
    }
    if (v instanceof List<?> l) {
      List<String> parts = new ArrayList<>();
      for (Object e : l) {
        parts.add(json(e));
      }
      return "[" + String.join(", ", parts) + "]";
    }
    String s = v.toString();
    StringBuilder sb = new StringBuilder("\"");
    for (char c : s.toCharArray()) {
      switch (c) {
        case '"' -> sb.append("\\\"");
        case '\\' -> sb.append("\\\\");
        case '\n' -> sb.append("\\n");
        case '\r' -> sb.append("\\r");
        case '\t' -> sb.append("\\t");
        default -> {
          if (c < 0x20) {
            sb.append(String.format("\\u%04x", (int) c));
          } else {
            sb.append(c);
          }
        }
      }
    }
    return sb.append('"').toString();
  }

  public static void main(String[] args) throws Exception {
    Options o = parse(args);
    CqlSession session;
    try {
      session = o.builder().withKeyspace(o.ks).build();
    } catch (DriverException e) {
      // Reported, not thrown: the test tells a known proxy gap from a failure.
      StringWriter trace = new StringWriter();
      e.printStackTrace(new PrintWriter(trace));
      System.err.println("connect failed:\n" + trace);
      Map<String, Object> out = new LinkedHashMap<>();
      out.put("driver", "java " + Session.OSS_DRIVER_COORDINATES);
      out.put("run", o.run);
      out.put("protocol_version", o.protocol);
      out.put("connect_error", e.getClass().getSimpleName() + ": " + e.getMessage());
      out.put("hosts", List.of());
      out.put("scenarios", List.of());
      System.out.println(json(out));
      System.out.flush();
      System.exit(0);
      return;
    }
    Conformance c = new Conformance(o, session);
    Map<String, Scenario> all = new LinkedHashMap<>();
    all.put("insert_simple", c::insertSimple);
    all.put("insert_prepared", c::insertPrepared);
    all.put("update_simple", c::updateSimple);
    all.put("update_prepared", c::updatePrepared);
    all.put("using_timestamp", c::usingTimestamp);
    all.put("using_ttl", c::usingTtl);
    all.put("coll_set_map", c::collSetMap);
    all.put("coll_list", c::collList);
    all.put("udt_frozen", c::udtFrozen);
    all.put("udt_nonfrozen", c::udtNonfrozen);
    all.put("static_columns", c::staticColumns);
    all.put("static_only_partition", c::staticOnlyPartition);
    all.put("delete_row", c::deleteRow);
    all.put("delete_range", c::deleteRange);
    all.put("counter_simple_literal", c::counterSimpleLiteral);
    all.put("counter_simple_bind", c::counterSimpleBind);
    all.put("counter_prepared", c::counterPrepared);
    all.put("counter_batch", c::counterBatch);
    all.put("lwt_if_not_exists", c::lwtIfNotExists);
    all.put("lwt_if_condition", c::lwtIfCondition);
    all.put("lwt_batch", c::lwtBatch);
    all.put("batch_logged", () -> c.batch("batch_logged", DefaultBatchType.LOGGED));
    all.put("batch_unlogged", () -> c.batch("batch_unlogged", DefaultBatchType.UNLOGGED));
    all.put("batch_text_logged", () -> c.batchText("batch_text_logged", "BEGIN BATCH"));
    all.put(
        "batch_text_unlogged", () -> c.batchText("batch_text_unlogged", "BEGIN UNLOGGED BATCH"));
    all.put("functions_simple", c::functionsSimple);
    all.put("functions_prepared", c::functionsPrepared);
    all.put("functions_batch", c::functionsBatch);
    all.put("use_keyspace", c::useKeyspace);
    all.put("paging", c::paging);
    all.put("blob_1mib", c::blob1mib);
    all.put("truncate_then_write", c::truncateThenWrite);
    // Only when asked for by name (it needs the test's relay).
    Map<String, Scenario> extra = Map.of("prepared_before_roll", c::preparedBeforeRoll);

    List<String> names =
        o.scenarios.equals("all")
            ? new ArrayList<>(all.keySet())
            : Arrays.asList(o.scenarios.split(","));
    List<Object> results = new ArrayList<>();
    for (String name : names) {
      Scenario sc = all.containsKey(name) ? all.get(name) : extra.get(name);
      Map<String, Object> r = new LinkedHashMap<>();
      r.put("name", name);
      try {
        if (sc == null) {
          throw new IllegalArgumentException("no scenario " + name);
        }
        sc.run();
        r.put("ok", true);
        r.put("error", null);
      } catch (Throwable e) {
        StringWriter trace = new StringWriter();
        e.printStackTrace(new PrintWriter(trace));
        System.err.println("scenario " + name + " failed:\n" + trace);
        r.put("ok", false);
        r.put("error", e.getClass().getSimpleName() + ": " + e.getMessage());
      }
      results.add(r);
    }
    List<String> hosts = new ArrayList<>();
    List<String> up = new ArrayList<>();
    for (Node n : session.getMetadata().getNodes().values()) {
      SocketAddress a = n.getEndPoint().resolve();
      String h =
          a instanceof InetSocketAddress i
              ? i.getAddress().getHostAddress() + ":" + i.getPort()
              : a.toString();
      hosts.add(h);
      if (n.getState() == com.datastax.oss.driver.api.core.metadata.NodeState.UP) {
        up.add(h);
      }
    }
    Collections.sort(hosts);
    Collections.sort(up);
    ProtocolVersion pv = session.getContext().getProtocolVersion();
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("driver", "java " + Session.OSS_DRIVER_COORDINATES);
    out.put("run", o.run);
    out.put("client_timestamps", o.clientTimestamps);
    out.put("compression", o.compression);
    out.put("protocol_version", pv.getCode());
    out.put("hosts", hosts);
    out.put("hosts_up", up);
    out.put("scenarios", results);
    session.close();
    System.out.println(json(out));
    System.out.flush();
    System.exit(0);
  }
}
