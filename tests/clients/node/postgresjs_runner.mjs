// The CRM scenario (tests/clients/scenario.json) through postgres.js (`postgres`).
//
// Mode `default`: tagged templates, which postgres.js sends as named
// prepared statements (prepare: true, its default) with every interpolated
// value bound as a parameter; the `sql(rows, ...columns)` helper for
// multi-row inserts as well as single-row inserts; `IN ${sql(list)}`,
// `= ANY(${sql.array(list)})` and `= ANY(${list})` for lists; JS Dates bound
// for the `date` column (postgres.js types them timestamptz, so the session
// runs with TimeZone=UTC to keep their calendar day).
//
// Run from the repository root: node tests/clients/node/postgresjs_runner.mjs
// Environment: PGVEIL_HOST, PGVEIL_PORT, DIRECT_PORT, PGUSER, PGPASSWORD,
// PGDATABASE, SCENARIO (see scenario.json, "env").

import postgres from 'postgres';
import {
  ADA, ALAN, BIG_EMAIL, BIG_LENGTH, BIG_NAME, GRACE, LIKE_PATTERN, NEW_PHONE, ZOE, ZOE_NAME,
  asCount, check, checkCustomerRow, checkNoPlaintext, checkRefusal, connSettings, customerByEmail,
  expectEqual, expectSameRows, expectedGroups, expectedJoin, loadScenario, runDriver, withTimeout,
} from './common.mjs';

const CUSTOMER_COLUMNS = ['name', 'email', 'phone', 'birth_date', 'country'];

/** 'YYYY-MM-DD' as a JS Date at UTC midnight (postgres.js sends toISOString()). */
function utcDate(iso) {
  return iso === null ? null : new Date(`${iso}T00:00:00Z`);
}

function connect({ direct = false } = {}) {
  const s = connSettings({ direct });
  return postgres({
    host: s.host,
    port: s.port,
    user: s.user,
    password: s.password,
    database: s.database,
    max: 1, // one connection, so "the same connection" is meaningful
    prepare: true,
    ssl: false,
    connect_timeout: 10,
    idle_timeout: 0,
    connection: { application_name: 'pgveil-clients-postgres-js', TimeZone: 'UTC' },
    onnotice: (n) => process.stderr.write(`notice: ${n.message}\n`),
  });
}

async function defaultMode(scenario) {
  let sql = connect();
  await sql`SELECT 1`; // connect now, so a refused login fails the mode at once

  const steps = {
    async reset() {
      await sql`DELETE FROM leads`;
      await sql`DELETE FROM customers`;
    },

    async insert_customers() {
      const [first, second, ...rest] = scenario.customers;
      const counts = await sql.begin(async (tx) => {
        const out = [];
        // Single-row form: one tagged template per customer.
        for (const c of [first, second]) {
          const r = await tx`
            INSERT INTO customers (name, email, phone, birth_date, country)
            VALUES (${c.name}, ${c.email}, ${c.phone}, ${utcDate(c.birth_date)}, ${c.country})`;
          out.push(r.count);
        }
        // Multi-row form: the helper expands to VALUES ($1, ...), ($6, ...).
        const rows = rest.map((c) => ({ ...c, birth_date: utcDate(c.birth_date) }));
        const r = await tx`INSERT INTO customers ${tx(rows, ...CUSTOMER_COLUMNS)}`;
        out.push(r.count);
        return out;
      });
      expectEqual(counts, [1, 1, scenario.customers.length - 2], 'rows inserted per statement');
    },

    async find_by_email() {
      const rows = await sql`SELECT name, email, phone, birth_date, country FROM customers WHERE email = ${GRACE}`;
      expectEqual(rows.length, 1, 'row count');
      checkCustomerRow(rows[0], customerByEmail(scenario, GRACE));
    },

    async in_list() {
      const expected = [[ADA], [ALAN]];
      const listed = await sql`SELECT email FROM customers WHERE email IN ${sql([ADA, ALAN])}`;
      expectSameRows(listed.map((x) => [x.email]), expected, 'IN ${sql([...])}');
      const typed = await sql`SELECT email FROM customers WHERE email = ANY(${sql.array([ADA, ALAN])})`;
      expectSameRows(typed.map((x) => [x.email]), expected, '= ANY(${sql.array([...])})');
      const plain = await sql`SELECT email FROM customers WHERE email = ANY(${[ADA, ALAN]})`;
      expectSameRows(plain.map((x) => [x.email]), expected, '= ANY(${[...]})');
    },

    async update_phone() {
      const u = await sql`UPDATE customers SET phone = ${NEW_PHONE} WHERE email = ${ADA}`;
      expectEqual(u.count, 1, 'rows updated');
      const rows = await sql`SELECT phone FROM customers WHERE email = ${ADA}`;
      expectEqual(rows.map((x) => x.phone), [NEW_PHONE], 'phone read back');
    },

    async join_leads() {
      const ins = await sql`INSERT INTO leads ${sql(scenario.leads, 'email', 'source')}`;
      expectEqual(ins.count, scenario.leads.length, 'leads inserted');
      const rows = await sql`SELECT c.name, l.source FROM customers c JOIN leads l ON l.email = c.email`;
      expectSameRows(rows.map((x) => [x.name, x.source]), expectedJoin(scenario), 'join');
    },

    async group_by() {
      const rows = await sql`SELECT email, count(*) FROM leads GROUP BY email`;
      expectSameRows(rows.map((x) => [x.email, asCount(x.count)]), expectedGroups(scenario), 'groups');
    },

    async refused_like() {
      const [{ pid }] = await sql`SELECT pg_backend_pid() AS pid`;
      let err;
      try {
        await sql`SELECT name FROM customers WHERE email LIKE ${LIKE_PATTERN}`;
      } catch (e) {
        err = e;
      }
      checkRefusal(err, err && err.code);
      const one = await sql`SELECT 1 AS one`;
      expectEqual(one.map((x) => x.one), [1], 'SELECT 1 after the refusal');
      const [{ pid: after }] = await sql`SELECT pg_backend_pid() AS pid`;
      expectEqual(after, pid, 'backend after the refusal (same connection)');
    },

    async nulls() {
      const phone = await sql`SELECT phone FROM customers WHERE email = ${ZOE}`;
      expectEqual(phone.map((x) => x.phone), [null], 'phone of zoe');
      const birth = await sql`SELECT birth_date FROM customers WHERE email = ${ALAN}`;
      expectEqual(birth.map((x) => x.birth_date), [null], 'birth_date of alan');
      const [{ count }] = await sql`SELECT count(*) FROM customers WHERE phone IS NULL`;
      expectEqual(asCount(count), 1, 'customers with a NULL phone');
    },

    async non_ascii() {
      const byEmail = await sql`SELECT name FROM customers WHERE email = ${ZOE}`;
      expectEqual(byEmail.map((x) => x.name), [ZOE_NAME], 'name of zoe');
      const byName = await sql`SELECT email FROM customers WHERE name = ${ZOE_NAME}`;
      expectEqual(byName.map((x) => x.email), [ZOE], 'email by name');
    },

    async large_value() {
      const ins = await sql`INSERT INTO customers (name, email, country) VALUES (${BIG_NAME}, ${BIG_EMAIL}, 'XX')`;
      expectEqual(ins.count, 1, 'rows inserted');
      const rows = await sql`SELECT name FROM customers WHERE email = ${BIG_EMAIL}`;
      expectEqual(rows.length, 1, 'row count');
      const name = rows[0].name;
      check(typeof name === 'string', `name is ${typeof name}`);
      expectEqual(name.length, BIG_LENGTH, 'name length');
      check(name === BIG_NAME, 'name read back differs from the one written');
    },

    async delete() {
      const d = await sql`DELETE FROM customers WHERE email = ${BIG_EMAIL}`;
      expectEqual(d.count, 1, 'rows deleted');
      const [{ count }] = await sql`SELECT count(*) FROM customers`;
      expectEqual(asCount(count), scenario.customers.length, 'customers left');
    },

    async direct_no_plaintext() {
      const direct = connect({ direct: true });
      try {
        const c = await direct`SELECT c::text AS t FROM customers c`;
        const l = await direct`SELECT l::text AS t FROM leads l`;
        const cells = await direct`
          SELECT 'customers' AS tbl, pg_typeof(email)::text AS type, email IS NULL AS is_null FROM customers
          UNION ALL SELECT 'leads', pg_typeof(email)::text, email IS NULL FROM leads`;
        checkNoPlaintext(
          scenario,
          c.map((x) => x.t),
          l.map((x) => x.t),
          cells.map((x) => ({ table: x.tbl, type: x.type, isNull: x.is_null })),
        );
      } finally {
        await direct.end({ timeout: 5 }).catch(() => {});
      }
    },
  };

  return {
    steps,
    async recover(_err, timedOut) {
      if (!timedOut) {
        try {
          await withTimeout(sql`SELECT 1`, 5_000, 'health check');
          return;
        } catch {
          // reconnect below
        }
      }
      sql.end({ timeout: 0 }).catch(() => {});
      sql = connect();
      await sql`SELECT 1`;
    },
    async close() {
      await sql.end({ timeout: 5 });
    },
  };
}

const scenario = loadScenario();
await runDriver({
  driver: 'postgres-js',
  scenario,
  modes: { default: () => defaultMode(scenario) },
});
