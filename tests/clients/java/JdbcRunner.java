// The CRM scenario (tests/clients/scenario.json) through pgjdbc.
//
// Mode `prepareThreshold=1`: the connection property prepareThreshold=1 makes
// every PreparedStatement a named server-side statement from its first
// execution. Inserts go through addBatch/executeBatch, dates are bound with
// setObject(i, LocalDate) and setDate(i, java.sql.Date), NULLs with
// setNull(i, Types.VARCHAR / Types.DATE), lists as `IN (?, ?)` and as
// `= ANY(?)` with conn.createArrayOf("text", ...).
//
// Single file, no dependency but the driver jar, which is only needed at run
// time (org.postgresql classes are reached by reflection), so:
//   javac -d target/clients/java tests/clients/java/JdbcRunner.java
//   java -cp target/clients/java:/usr/share/java/postgresql.jar JdbcRunner
// from the repository root (a mode name as argument runs only that mode).
// Environment: PGVEIL_HOST, PGVEIL_PORT, DIRECT_PORT, PGUSER, PGPASSWORD,
// PGDATABASE, SCENARIO (scenario.json "env"); STEP_TIMEOUT and
// RUNNER_TIMEOUT (seconds, default 60 and 600) bound each step and the run.
//
// Output: one line per step, `PASS <mode>/<step>` or
// `FAIL <mode>/<step>: <reason>`, then `<N> passed, <M> failed`; exit code 0
// only when M == 0. Non-ASCII text is written as Unicode escapes so the source
// compiles the same under any platform encoding.

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.lang.reflect.Method;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

public final class JdbcRunner {
    static final String DRIVER = "pgjdbc";
    static final String MODE = "prepareThreshold=1";

    static final String ADA = "ada@example.com";
    static final String GRACE = "grace@example.com";
    static final String ZOE = "zoe@example.org";
    static final String ALAN = "alan@example.com";
    static final String ZOE_NAME = "Zo\u00eb \u00c5ngstr\u00f6m-\u674e";
    static final String NEW_PHONE = "+44 20 7946 0999";
    static final String LIKE_PATTERN = "%@example.com";
    static final String BIG_EMAIL = "big@example.com";
    static final int BIG_LENGTH = 1048576;
    static final String BIG_NAME = "Zo\u00eb" + "x".repeat(BIG_LENGTH - 3);

    /** Time limits in seconds, as for every runner: per step, and for the whole run. */
    static final double STEP_TIMEOUT = secondsEnv("STEP_TIMEOUT", 60);
    static final double RUNNER_TIMEOUT = secondsEnv("RUNNER_TIMEOUT", 600);

    static final PrintStream OUT =
            new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);

    // ------------------------------------------------------------ main

    public static void main(String[] args) throws Exception {
        // A hard bound on the whole run, whatever the driver is stuck in.
        Thread guard = new Thread(() -> {
            try {
                Thread.sleep((long) (RUNNER_TIMEOUT * 1000));
            } catch (InterruptedException e) {
                return;
            }
            System.err.println(DRIVER + ": the run took longer than " + seconds(RUNNER_TIMEOUT)
                    + "s (RUNNER_TIMEOUT); giving up");
            Runtime.getRuntime().halt(1);
        }, "runner-timeout");
        guard.setDaemon(true);
        guard.start();

        String path = env("SCENARIO", "tests/clients/scenario.json");
        Map<String, Object> scenario = asMap(Json.parse(Files.readString(Path.of(path), StandardCharsets.UTF_8)));
        Recorder rec = new Recorder();
        List<String> stepIds = new ArrayList<>();
        for (Object s : asList(scenario.get("steps"))) stepIds.add((String) asMap(s).get("id"));
        Map<String, Object> modes = asMap(scenario.get("modes"));
        if (!modes.containsKey(DRIVER)) {
            System.err.println("scenario.json has no modes for driver " + DRIVER);
            System.exit(2);
        }
        List<Object> scenarioModes = asList(modes.get(DRIVER));
        List<Object> ours = args.length > 0 ? List.of((Object[]) args) : scenarioModes;
        for (Object m : ours) {
            if (!scenarioModes.contains(m)) {
                System.err.println("unknown mode " + m + "; " + DRIVER + " has " + scenarioModes);
                System.exit(2);
            }
        }

        ExecutorService pool = Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "step");
            t.setDaemon(true);
            return t;
        });
        for (Object m : ours) {
            String mode = (String) m;
            Runner runner = null;
            String setupError = null;
            if (!MODE.equals(mode)) {
                setupError = "mode not implemented by this runner";
            } else {
                try {
                    runner = new Runner(scenario);
                    runner.conn = runner.connect(false);
                } catch (Exception e) {
                    setupError = "connect: " + describe(e);
                }
            }
            for (String id : stepIds) {
                if (setupError != null) {
                    rec.fail(mode, id, setupError);
                    continue;
                }
                Step step = runner.steps().get(id);
                if (step == null) {
                    rec.fail(mode, id, "step not implemented by this runner");
                    continue;
                }
                Future<?> f = pool.submit(() -> {
                    step.run();
                    return null;
                });
                try {
                    f.get((long) (STEP_TIMEOUT * 1000), TimeUnit.MILLISECONDS);
                    rec.pass(mode, id);
                } catch (TimeoutException e) {
                    rec.fail(mode, id, "no answer within " + seconds(STEP_TIMEOUT) + "s");
                    runner.abandon();
                    f.cancel(true);
                    runner.recover(true);
                } catch (ExecutionException e) {
                    rec.fail(mode, id, describe(e.getCause()));
                    runner.recover(false);
                }
            }
            if (runner != null) runner.close();
        }
        OUT.println(rec.passed + " passed, " + rec.failed + " failed");
        OUT.flush();
        System.exit(rec.failed == 0 ? 0 : 1);
    }

    // ------------------------------------------------------------ the steps

    interface Step {
        void run() throws Exception;
    }

    static final class Runner {
        final Map<String, Object> scenario;
        final List<Map<String, Object>> customers = new ArrayList<>();
        final List<Map<String, Object>> leads = new ArrayList<>();
        volatile Connection conn;

        Runner(Map<String, Object> scenario) {
            this.scenario = scenario;
            for (Object c : asList(scenario.get("customers"))) customers.add(asMap(c));
            for (Object l : asList(scenario.get("leads"))) leads.add(asMap(l));
        }

        Connection connect(boolean direct) throws SQLException {
            String host = env("PGVEIL_HOST", "127.0.0.1");
            String portVar = direct ? "DIRECT_PORT" : "PGVEIL_PORT";
            String port = env(portVar, null);
            if (port == null) throw new IllegalStateException(portVar + " is not set");
            String user = env("PGUSER", "postgres");
            String db = env("PGDATABASE", user);
            Properties p = new Properties();
            p.setProperty("user", user);
            String password = env("PGPASSWORD", null);
            if (password != null) p.setProperty("password", password);
            p.setProperty("prepareThreshold", "1");
            p.setProperty("connectTimeout", "10");
            p.setProperty("loginTimeout", "10");
            p.setProperty("socketTimeout", String.valueOf((long) Math.ceil(STEP_TIMEOUT) + 5));
            p.setProperty("ApplicationName", "pgveil-clients-pgjdbc");
            return DriverManager.getConnection("jdbc:postgresql://" + host + ":" + port + "/" + db, p);
        }

        Map<String, Step> steps() {
            Map<String, Step> s = new LinkedHashMap<>();
            s.put("reset", this::reset);
            s.put("insert_customers", this::insertCustomers);
            s.put("find_by_email", this::findByEmail);
            s.put("in_list", this::inList);
            s.put("update_phone", this::updatePhone);
            s.put("join_leads", this::joinLeads);
            s.put("group_by", this::groupBy);
            s.put("refused_like", this::refusedLike);
            s.put("nulls", this::nulls);
            s.put("non_ascii", this::nonAscii);
            s.put("large_value", this::largeValue);
            s.put("delete", this::delete);
            s.put("direct_no_plaintext", this::directNoPlaintext);
            return s;
        }

        void reset() throws SQLException {
            try (Statement st = conn.createStatement()) {
                // pgjdbc splits this into two statements sent in one round trip.
                st.execute("DELETE FROM leads; DELETE FROM customers");
            }
        }

        void insertCustomers() throws SQLException {
            conn.setAutoCommit(false);
            int[] counts;
            try (PreparedStatement ps = conn.prepareStatement(
                    "INSERT INTO customers (name, email, phone, birth_date, country) VALUES (?, ?, ?, ?, ?)")) {
                int i = 0;
                for (Map<String, Object> c : customers) {
                    ps.setString(1, (String) c.get("name"));
                    ps.setString(2, (String) c.get("email"));
                    if (c.get("phone") == null) ps.setNull(3, Types.VARCHAR);
                    else ps.setString(3, (String) c.get("phone"));
                    String birth = (String) c.get("birth_date");
                    if (birth == null) ps.setNull(4, Types.DATE);
                    else if (i % 2 == 0) ps.setObject(4, LocalDate.parse(birth));
                    else ps.setDate(4, java.sql.Date.valueOf(birth));
                    ps.setString(5, (String) c.get("country"));
                    ps.addBatch();
                    i++;
                }
                counts = ps.executeBatch();
                conn.commit();
            } catch (SQLException | RuntimeException e) {
                try {
                    conn.rollback();
                } catch (SQLException ignored) {
                    // the connection is recovered after the step
                }
                throw e;
            } finally {
                try {
                    conn.setAutoCommit(true);
                } catch (SQLException ignored) {
                    // the connection is recovered after the step
                }
            }
            int[] ones = new int[customers.size()];
            Arrays.fill(ones, 1);
            expectEqual(Arrays.toString(counts), Arrays.toString(ones), "update counts of the batch");
        }

        void findByEmail() throws SQLException {
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT name, email, phone, birth_date, country FROM customers WHERE email = ?")) {
                ps.setString(1, GRACE);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "no row");
                    Map<String, Object> f = customer(GRACE);
                    expectEqual(rs.getString("name"), f.get("name"), "name");
                    expectEqual(rs.getString("email"), f.get("email"), "email");
                    expectEqual(rs.getString("phone"), f.get("phone"), "phone");
                    String birth = (String) f.get("birth_date");
                    expectEqual(rs.getObject("birth_date", LocalDate.class),
                            birth == null ? null : LocalDate.parse(birth), "birth_date");
                    expectEqual(rs.getString("country"), f.get("country"), "country");
                    check(!rs.next(), "more than one row");
                }
            }
        }

        void inList() throws SQLException {
            List<List<Object>> expected = List.of(List.of(ADA), List.of(ALAN));
            try (PreparedStatement ps = conn.prepareStatement("SELECT email FROM customers WHERE email IN (?, ?)")) {
                ps.setString(1, ADA);
                ps.setString(2, ALAN);
                expectSameRows(rows(ps), expected, "IN (?, ?)");
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT email FROM customers WHERE email = ANY(?)")) {
                Array array = conn.createArrayOf("text", new String[] {ADA, ALAN});
                ps.setArray(1, array);
                expectSameRows(rows(ps), expected, "= ANY(?)");
                array.free();
            }
        }

        void updatePhone() throws SQLException {
            try (PreparedStatement ps = conn.prepareStatement("UPDATE customers SET phone = ? WHERE email = ?")) {
                ps.setString(1, NEW_PHONE);
                ps.setString(2, ADA);
                expectEqual(ps.executeUpdate(), 1, "rows updated");
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT phone FROM customers WHERE email = ?")) {
                ps.setString(1, ADA);
                expectEqual(rows(ps), List.of(List.of(NEW_PHONE)), "phone read back");
            }
        }

        void joinLeads() throws SQLException {
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO leads (email, source) VALUES (?, ?)")) {
                for (Map<String, Object> l : leads) {
                    ps.setString(1, (String) l.get("email"));
                    ps.setString(2, (String) l.get("source"));
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                expectEqual(Arrays.stream(counts).sum(), leads.size(), "leads inserted");
            }
            List<List<Object>> expected = new ArrayList<>();
            for (Map<String, Object> l : leads) {
                for (Map<String, Object> c : customers) {
                    if (Objects.equals(c.get("email"), l.get("email"))) expected.add(List.of(c.get("name"), l.get("source")));
                }
            }
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT c.name, l.source FROM customers c JOIN leads l ON l.email = c.email")) {
                expectSameRows(rows(ps), expected, "join");
            }
        }

        void groupBy() throws SQLException {
            Map<String, Long> counts = new LinkedHashMap<>();
            for (Map<String, Object> l : leads) counts.merge((String) l.get("email"), 1L, Long::sum);
            List<List<Object>> expected = new ArrayList<>();
            counts.forEach((k, v) -> expected.add(List.of(k, v)));
            try (PreparedStatement ps = conn.prepareStatement("SELECT email, count(*) FROM leads GROUP BY email")) {
                expectSameRows(rows(ps), expected, "groups");
            }
        }

        void refusedLike() throws Exception {
            SQLException err = null;
            try (PreparedStatement ps = conn.prepareStatement("SELECT name FROM customers WHERE email LIKE ?")) {
                ps.setString(1, LIKE_PATTERN);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next(); // no error: fall through to the check below
                }
            } catch (SQLException e) {
                err = e;
            }
            check(err != null, "expected an error, the query succeeded");
            String message = serverMessage(err);
            check("0A000".equals(err.getSQLState()),
                    "expected SQLSTATE 0A000, got " + err.getSQLState() + " (" + message + ")");
            check(message.startsWith("pgveil:"), "expected a message starting 'pgveil:', got " + show(message));
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT 1")) {
                check(rs.next() && rs.getInt(1) == 1, "SELECT 1 after the refusal returned no 1");
            }
        }

        void nulls() throws SQLException {
            try (PreparedStatement ps = conn.prepareStatement("SELECT phone FROM customers WHERE email = ?")) {
                ps.setString(1, ZOE);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "no row for zoe");
                    expectEqual(rs.getString(1), null, "phone of zoe");
                    check(rs.wasNull(), "phone of zoe: wasNull() is false");
                    check(!rs.next(), "more than one row for zoe");
                }
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT birth_date FROM customers WHERE email = ?")) {
                ps.setString(1, ALAN);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "no row for alan");
                    expectEqual(rs.getObject(1, LocalDate.class), null, "birth_date of alan");
                    check(rs.getDate(1) == null && rs.wasNull(), "birth_date of alan: getDate() is not NULL");
                    check(!rs.next(), "more than one row for alan");
                }
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM customers WHERE phone IS NULL")) {
                expectEqual(rows(ps), List.of(List.of(1L)), "customers with a NULL phone");
            }
        }

        void nonAscii() throws SQLException {
            try (PreparedStatement ps = conn.prepareStatement("SELECT name FROM customers WHERE email = ?")) {
                ps.setString(1, ZOE);
                expectEqual(rows(ps), List.of(List.of(ZOE_NAME)), "name of zoe");
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT email FROM customers WHERE name = ?")) {
                ps.setString(1, ZOE_NAME);
                expectEqual(rows(ps), List.of(List.of(ZOE)), "email by name");
            }
        }

        void largeValue() throws SQLException {
            try (PreparedStatement ps = conn.prepareStatement(
                    "INSERT INTO customers (name, email, country) VALUES (?, ?, 'XX')")) {
                ps.setString(1, BIG_NAME);
                ps.setString(2, BIG_EMAIL);
                expectEqual(ps.executeUpdate(), 1, "rows inserted");
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT name FROM customers WHERE email = ?")) {
                ps.setString(1, BIG_EMAIL);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "no row");
                    String name = rs.getString(1);
                    check(name != null, "name is NULL");
                    expectEqual(name.length(), BIG_LENGTH, "name length");
                    check(name.equals(BIG_NAME), "name read back differs from the one written");
                    check(!rs.next(), "more than one row");
                }
            }
        }

        void delete() throws SQLException {
            try (PreparedStatement ps = conn.prepareStatement("DELETE FROM customers WHERE email = ?")) {
                ps.setString(1, BIG_EMAIL);
                expectEqual(ps.executeUpdate(), 1, "rows deleted");
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM customers")) {
                expectEqual(rows(ps), List.of(List.of((long) customers.size())), "customers left");
            }
        }

        void directNoPlaintext() throws SQLException {
            try (Connection direct = connect(true)) {
                List<String> customerTexts = texts(direct, "SELECT c::text FROM customers c");
                List<String> leadTexts = texts(direct, "SELECT l::text FROM leads l");
                check(customerTexts.size() == customers.size(), "expected " + customers.size()
                        + " customers rows straight from PostgreSQL, got " + customerTexts.size());
                check(leadTexts.size() == leads.size(), "expected " + leads.size()
                        + " leads rows straight from PostgreSQL, got " + leadTexts.size());
                List<String> all = new ArrayList<>(customerTexts);
                all.addAll(leadTexts);
                for (String p : forbiddenPlaintexts()) {
                    byte[] bytes = p.getBytes(StandardCharsets.UTF_8);
                    String hex = HexFormat.of().formatHex(bytes);
                    for (String row : all) {
                        check(row != null, "a row text is NULL");
                        if (row.contains(p)) {
                            throw new AssertionError("plaintext " + show(p) + " visible in PostgreSQL: " + show(row));
                        }
                        if (bytes.length >= 8 && row.toLowerCase().contains(hex)) {
                            throw new AssertionError("plaintext " + show(p) + " stored as unencrypted bytes: " + show(row));
                        }
                    }
                }
                int cells = 0;
                try (Statement st = direct.createStatement(); ResultSet rs = st.executeQuery(
                        "SELECT 'customers', pg_typeof(email)::text, email IS NULL FROM customers"
                                + " UNION ALL SELECT 'leads', pg_typeof(email)::text, email IS NULL FROM leads")) {
                    while (rs.next()) {
                        cells++;
                        check(!rs.getBoolean(3), rs.getString(1) + ".email has a NULL cell");
                        check("bytea".equals(rs.getString(2)), rs.getString(1) + ".email is " + rs.getString(2) + ", not bytea");
                    }
                }
                expectEqual(cells, customers.size() + leads.size(), "email cells");
            }
        }

        // --------------------------------------------------- helpers

        Map<String, Object> customer(String email) {
            for (Map<String, Object> c : customers) if (email.equals(c.get("email"))) return c;
            throw new IllegalStateException("fixture has no customer " + email);
        }

        Set<String> forbiddenPlaintexts() {
            Set<String> set = new LinkedHashSet<>(List.of("ada@", "Lovelace", "1815-12-10", NEW_PHONE));
            for (Map<String, Object> c : customers) {
                for (String k : List.of("name", "email", "phone", "birth_date")) {
                    if (c.get(k) != null) set.add((String) c.get(k));
                }
            }
            for (Map<String, Object> l : leads) if (l.get("email") != null) set.add((String) l.get("email"));
            return set;
        }

        static List<String> texts(Connection c, String query) throws SQLException {
            List<String> out = new ArrayList<>();
            try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(query)) {
                while (rs.next()) out.add(rs.getString(1));
            }
            return out;
        }

        /** Every row of the query, each as a list of getObject() values. */
        static List<List<Object>> rows(PreparedStatement ps) throws SQLException {
            List<List<Object>> out = new ArrayList<>();
            try (ResultSet rs = ps.executeQuery()) {
                int n = rs.getMetaData().getColumnCount();
                while (rs.next()) {
                    List<Object> row = new ArrayList<>();
                    for (int i = 1; i <= n; i++) row.add(rs.getObject(i));
                    out.add(row);
                }
            }
            return out;
        }

        /** A timed-out step: cut the connection so the step's thread unblocks. */
        void abandon() {
            Connection c = conn;
            if (c == null) return;
            try {
                c.abort(Runnable::run);
            } catch (Exception ignored) {
                // gone anyway
            }
        }

        /** After a failed step: roll back, and reconnect if the connection is unusable. */
        void recover(boolean timedOut) {
            try {
                if (!timedOut && conn != null && !conn.isClosed()) {
                    if (!conn.getAutoCommit()) {
                        conn.rollback();
                        conn.setAutoCommit(true);
                    }
                    if (conn.isValid(5)) return;
                }
            } catch (SQLException ignored) {
                // reconnect below
            }
            try {
                if (conn != null) conn.close();
            } catch (SQLException ignored) {
                // already broken
            }
            try {
                conn = connect(false);
            } catch (Exception e) {
                System.err.println("reconnect failed: " + describe(e));
            }
        }

        void close() {
            try {
                if (conn != null) conn.close();
            } catch (SQLException e) {
                System.err.println("close: " + describe(e));
            }
        }
    }

    // ------------------------------------------------------------ checks

    static void check(boolean cond, String message) {
        if (!cond) throw new AssertionError(message);
    }

    static void expectEqual(Object actual, Object expected, String what) {
        if (!Objects.equals(actual, expected)) {
            throw new AssertionError(what + ": expected " + show(expected) + ", got " + show(actual));
        }
    }

    static void expectSameRows(List<List<Object>> actual, List<List<Object>> expected, String what) {
        List<String> a = new ArrayList<>();
        for (List<Object> r : actual) a.add(show(r));
        List<String> e = new ArrayList<>();
        for (List<Object> r : expected) e.add(show(r));
        a.sort(null);
        e.sort(null);
        if (!a.equals(e)) {
            throw new AssertionError(what + ": expected rows " + show(expected) + " in any order, got " + show(actual));
        }
    }

    /** A short rendering of a value, its type visible, for failure messages. */
    static String show(Object v) {
        String s;
        if (v == null) s = "null";
        else if (v instanceof String) s = '"' + (String) v + '"';
        else if (v instanceof List) {
            List<String> parts = new ArrayList<>();
            for (Object x : (List<?>) v) parts.add(show(x));
            s = "[" + String.join(", ", parts) + "]";
        } else if (v instanceof Number || v instanceof Boolean) s = v + ":" + v.getClass().getSimpleName();
        else s = v.getClass().getSimpleName() + "(" + v + ")";
        if (s.length() > 200) s = s.substring(0, 120) + "\u2026(" + s.length() + " chars)\u2026" + s.substring(s.length() - 40);
        return s;
    }

    /** The server's own message text (without pgjdbc's "ERROR: " prefix or detail lines). */
    static String serverMessage(SQLException e) {
        try {
            Method m = e.getClass().getMethod("getServerErrorMessage");
            Object sem = m.invoke(e);
            if (sem != null) {
                Object text = sem.getClass().getMethod("getMessage").invoke(sem);
                if (text != null) return text.toString();
            }
        } catch (ReflectiveOperationException ignored) {
            // not a PSQLException: fall back to the exception text
        }
        return String.valueOf(e.getMessage());
    }

    static String describe(Throwable e) {
        if (e == null) return "null";
        String s;
        if (e instanceof SQLException) {
            SQLException se = (SQLException) e;
            s = (se.getSQLState() != null ? "[" + se.getSQLState() + "] " : "") + se.getMessage();
        } else if (e instanceof AssertionError) {
            s = e.getMessage();
        } else {
            s = e.getClass().getSimpleName() + ": " + e.getMessage();
        }
        s = s.replaceAll("\\s+", " ").trim();
        return s.length() > 500 ? s.substring(0, 497) + "..." : s;
    }

    // ------------------------------------------------------------ recorder

    static final class Recorder {
        int passed;
        int failed;

        void pass(String mode, String step) {
            passed++;
            OUT.println("PASS " + mode + "/" + step);
        }

        void fail(String mode, String step, String reason) {
            failed++;
            OUT.println("FAIL " + mode + "/" + step + ": " + String.valueOf(reason).replaceAll("\\s+", " ").trim());
        }
    }

    // ------------------------------------------------------------ env

    static String env(String name, String fallback) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? fallback : v;
    }

    static String seconds(double v) {
        return v == Math.rint(v) ? String.valueOf((long) v) : String.valueOf(v);
    }

    static double secondsEnv(String name, double fallback) {
        try {
            double v = Double.parseDouble(env(name, String.valueOf(fallback)));
            return v > 0 ? v : fallback;
        } catch (NumberFormatException e) {
            return fallback;
        }
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> asMap(Object o) {
        if (!(o instanceof Map)) throw new IllegalStateException("scenario: object expected, got " + show(o));
        return (Map<String, Object>) o;
    }

    @SuppressWarnings("unchecked")
    static List<Object> asList(Object o) {
        if (!(o instanceof List)) throw new IllegalStateException("scenario: array expected, got " + show(o));
        return (List<Object>) o;
    }

    // ------------------------------------------------------------ JSON

    /**
     * A minimal JSON reader (RFC 8259): objects become LinkedHashMap, arrays
     * ArrayList, strings String, numbers Long or Double, true/false Boolean,
     * null null.
     */
    static final class Json {
        private final String s;
        private int i;

        private Json(String s) {
            this.s = s;
        }

        static Object parse(String text) {
            Json p = new Json(text);
            p.ws();
            Object v = p.value();
            p.ws();
            if (p.i != p.s.length()) throw p.error("trailing characters");
            return v;
        }

        private IllegalArgumentException error(String what) {
            return new IllegalArgumentException("JSON: " + what + " at offset " + i);
        }

        private void ws() {
            while (i < s.length()) {
                char c = s.charAt(i);
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') i++;
                else break;
            }
        }

        private Object value() {
            if (i >= s.length()) throw error("unexpected end");
            char c = s.charAt(i);
            switch (c) {
                case '{':
                    return object();
                case '[':
                    return array();
                case '"':
                    return string();
                case 't':
                    return literal("true", Boolean.TRUE);
                case 'f':
                    return literal("false", Boolean.FALSE);
                case 'n':
                    return literal("null", null);
                default:
                    if (c == '-' || (c >= '0' && c <= '9')) return number();
                    throw error("unexpected '" + c + "'");
            }
        }

        private Object literal(String word, Object v) {
            if (!s.startsWith(word, i)) throw error("bad literal");
            i += word.length();
            return v;
        }

        private Map<String, Object> object() {
            Map<String, Object> m = new LinkedHashMap<>();
            i++; // {
            ws();
            if (i < s.length() && s.charAt(i) == '}') {
                i++;
                return m;
            }
            while (true) {
                ws();
                if (i >= s.length() || s.charAt(i) != '"') throw error("object key expected");
                String k = string();
                ws();
                expect(':');
                ws();
                m.put(k, value());
                ws();
                if (i >= s.length()) throw error("unexpected end in object");
                char c = s.charAt(i++);
                if (c == '}') return m;
                if (c != ',') throw error("',' or '}' expected");
            }
        }

        private List<Object> array() {
            List<Object> a = new ArrayList<>();
            i++; // [
            ws();
            if (i < s.length() && s.charAt(i) == ']') {
                i++;
                return a;
            }
            while (true) {
                ws();
                a.add(value());
                ws();
                if (i >= s.length()) throw error("unexpected end in array");
                char c = s.charAt(i++);
                if (c == ']') return a;
                if (c != ',') throw error("',' or ']' expected");
            }
        }

        private void expect(char c) {
            if (i >= s.length() || s.charAt(i) != c) throw error("'" + c + "' expected");
            i++;
        }

        private String string() {
            expect('"');
            StringBuilder b = new StringBuilder();
            while (true) {
                if (i >= s.length()) throw error("unterminated string");
                char c = s.charAt(i++);
                if (c == '"') return b.toString();
                if (c < 0x20) throw error("control character in string");
                if (c != '\\') {
                    b.append(c);
                    continue;
                }
                if (i >= s.length()) throw error("unterminated escape");
                char e = s.charAt(i++);
                switch (e) {
                    case '"': b.append('"'); break;
                    case '\\': b.append('\\'); break;
                    case '/': b.append('/'); break;
                    case 'b': b.append('\b'); break;
                    case 'f': b.append('\f'); break;
                    case 'n': b.append('\n'); break;
                    case 'r': b.append('\r'); break;
                    case 't': b.append('\t'); break;
                    case 'u':
                        if (i + 4 > s.length()) throw error("short \\u escape");
                        try {
                            b.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
                        } catch (NumberFormatException ex) {
                            throw error("bad \\u escape");
                        }
                        i += 4; // surrogate pairs arrive as two escapes, appended in turn
                        break;
                    default:
                        throw error("bad escape \\" + e);
                }
            }
        }

        private Object number() {
            int start = i;
            if (s.charAt(i) == '-') i++;
            boolean integral = true;
            while (i < s.length()) {
                char c = s.charAt(i);
                if (c >= '0' && c <= '9') i++;
                else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
                    integral = false;
                    i++;
                } else break;
            }
            String t = s.substring(start, i);
            try {
                if (integral) return Long.parseLong(t);
                return Double.parseDouble(t);
            } catch (NumberFormatException ex) {
                throw error("bad number " + t);
            }
        }
    }
}
