// The CRM scenario (tests/clients/scenario.json) through node-postgres (`pg`).
//
// Mode `default`: the extended protocol with `$n` parameters, some queries
// as named prepared statements (`{ name, text, values }`, parsed once per
// connection and re-bound afterwards), parameterless queries as plain text
// (the simple protocol), a JS array bound for `= ANY($1)`, JS Dates bound
// for the `date` column.
//
// Run from the repository root: node tests/clients/node/pg_runner.mjs
// Environment: PGVEIL_HOST, PGVEIL_PORT, DIRECT_PORT, PGUSER, PGPASSWORD,
// PGDATABASE, SCENARIO (see scenario.json, "env").

import pg from 'pg';
import {
  ADA, ALAN, BIG_EMAIL, BIG_LENGTH, BIG_NAME, GRACE, LIKE_PATTERN, NEW_PHONE, ZOE, ZOE_NAME,
  asCount, check, checkCustomerRow, checkNoPlaintext, checkRefusal, connSettings, customerByEmail,
  expectEqual, expectSameRows, expectedGroups, expectedJoin, loadScenario, runDriver, withTimeout,
} from './common.mjs';

const DATE_OID = 1082;

/** 'YYYY-MM-DD' as a JS Date at local midnight: pg sends Dates in local time. */
function localDate(iso) {
  if (iso === null) return null;
  const [y, m, d] = iso.split('-').map(Number);
  const date = new Date(y, m - 1, d);
  date.setFullYear(y); // years below 100 would otherwise be read as 19xx
  return date;
}

async function connect({ direct = false } = {}) {
  const client = new pg.Client({
    ...connSettings({ direct }),
    connectionTimeoutMillis: 10_000,
    application_name: 'pgveil-clients-node-pg',
  });
  // pg parses `date` into a local-time Date; keep the text form instead.
  client.setTypeParser(DATE_OID, 'text', (v) => v);
  client.on('error', (e) => process.stderr.write(`pg client error: ${e.message}\n`));
  await client.connect();
  return client;
}

function drop(client) {
  if (!client) return;
  client.end().catch(() => {});
  try {
    client.connection.stream.destroy();
  } catch {
    // already gone
  }
}

async function defaultMode(scenario) {
  let client = await connect();

  const INSERT_CUSTOMER = {
    name: 'crm_insert_customer',
    text: 'INSERT INTO customers (name, email, phone, birth_date, country) VALUES ($1, $2, $3, $4, $5)',
  };
  const PHONE_BY_EMAIL = { name: 'crm_phone_by_email', text: 'SELECT phone FROM customers WHERE email = $1' };
  const NAME_BY_EMAIL = { name: 'crm_name_by_email', text: 'SELECT name FROM customers WHERE email = $1' };

  const steps = {
    async reset() {
      // No parameters: pg sends this as one simple-protocol query.
      await client.query('DELETE FROM leads; DELETE FROM customers');
    },

    async insert_customers() {
      // pg has no executemany: the named statement is parsed on its first use
      // and only re-bound for the next rows, all in one transaction.
      await client.query('BEGIN');
      try {
        let inserted = 0;
        for (const c of scenario.customers) {
          const r = await client.query({
            ...INSERT_CUSTOMER,
            values: [c.name, c.email, c.phone, localDate(c.birth_date), c.country],
          });
          inserted += r.rowCount;
        }
        await client.query('COMMIT');
        expectEqual(inserted, scenario.customers.length, 'rows inserted');
      } catch (e) {
        await client.query('ROLLBACK').catch(() => {});
        throw e;
      }
    },

    async find_by_email() {
      const r = await client.query({
        name: 'crm_find_by_email',
        text: 'SELECT name, email, phone, birth_date, country FROM customers WHERE email = $1',
        values: [GRACE],
      });
      expectEqual(r.rows.length, 1, 'row count');
      checkCustomerRow(r.rows[0], customerByEmail(scenario, GRACE));
    },

    async in_list() {
      const listed = await client.query('SELECT email FROM customers WHERE email IN ($1, $2)', [ADA, ALAN]);
      expectSameRows(listed.rows.map((x) => [x.email]), [[ADA], [ALAN]], 'IN ($1, $2)');
      const any = await client.query('SELECT email FROM customers WHERE email = ANY($1)', [[ADA, ALAN]]);
      expectSameRows(any.rows.map((x) => [x.email]), [[ADA], [ALAN]], '= ANY($1)');
    },

    async update_phone() {
      const u = await client.query('UPDATE customers SET phone = $1 WHERE email = $2', [NEW_PHONE, ADA]);
      expectEqual(u.rowCount, 1, 'rows updated');
      const r = await client.query({ ...PHONE_BY_EMAIL, values: [ADA] });
      expectEqual(r.rows.map((x) => x.phone), [NEW_PHONE], 'phone read back');
    },

    async join_leads() {
      let inserted = 0;
      for (const l of scenario.leads) {
        const r = await client.query({
          name: 'crm_insert_lead',
          text: 'INSERT INTO leads (email, source) VALUES ($1, $2)',
          values: [l.email, l.source],
        });
        inserted += r.rowCount;
      }
      expectEqual(inserted, scenario.leads.length, 'leads inserted');
      // Named, so sent through the extended protocol despite having no parameters.
      const r = await client.query({
        name: 'crm_join_leads',
        text: 'SELECT c.name, l.source FROM customers c JOIN leads l ON l.email = c.email',
      });
      expectSameRows(r.rows.map((x) => [x.name, x.source]), expectedJoin(scenario), 'join');
    },

    async group_by() {
      const r = await client.query('SELECT email, count(*) FROM leads GROUP BY email');
      expectSameRows(r.rows.map((x) => [x.email, asCount(x.count)]), expectedGroups(scenario), 'groups');
    },

    async refused_like() {
      let err;
      try {
        await client.query('SELECT name FROM customers WHERE email LIKE $1', [LIKE_PATTERN]);
      } catch (e) {
        err = e;
      }
      checkRefusal(err, err && err.code);
      const r = await client.query('SELECT 1 AS one');
      expectEqual(r.rows, [{ one: 1 }], 'SELECT 1 after the refusal');
    },

    async nulls() {
      const phone = await client.query({ ...PHONE_BY_EMAIL, values: [ZOE] });
      expectEqual(phone.rows, [{ phone: null }], 'phone of zoe');
      const birth = await client.query({
        name: 'crm_birth_by_email',
        text: 'SELECT birth_date FROM customers WHERE email = $1',
        values: [ALAN],
      });
      expectEqual(birth.rows, [{ birth_date: null }], 'birth_date of alan');
      const count = await client.query('SELECT count(*) FROM customers WHERE phone IS NULL');
      expectEqual(asCount(count.rows[0].count), 1, 'customers with a NULL phone');
    },

    async non_ascii() {
      const byEmail = await client.query({ ...NAME_BY_EMAIL, values: [ZOE] });
      expectEqual(byEmail.rows.map((x) => x.name), [ZOE_NAME], 'name of zoe');
      const byName = await client.query('SELECT email FROM customers WHERE name = $1', [ZOE_NAME]);
      expectEqual(byName.rows.map((x) => x.email), [ZOE], 'email by name');
    },

    async large_value() {
      const ins = await client.query("INSERT INTO customers (name, email, country) VALUES ($1, $2, 'XX')", [BIG_NAME, BIG_EMAIL]);
      expectEqual(ins.rowCount, 1, 'rows inserted');
      const r = await client.query({ ...NAME_BY_EMAIL, values: [BIG_EMAIL] });
      expectEqual(r.rows.length, 1, 'row count');
      const name = r.rows[0].name;
      check(typeof name === 'string', `name is ${typeof name}`);
      expectEqual(name.length, BIG_LENGTH, 'name length');
      check(name === BIG_NAME, 'name read back differs from the one written');
    },

    async delete() {
      const d = await client.query('DELETE FROM customers WHERE email = $1', [BIG_EMAIL]);
      expectEqual(d.rowCount, 1, 'rows deleted');
      const r = await client.query('SELECT count(*) FROM customers');
      expectEqual(asCount(r.rows[0].count), scenario.customers.length, 'customers left');
    },

    async direct_no_plaintext() {
      const direct = await connect({ direct: true });
      try {
        const c = await direct.query('SELECT c::text AS t FROM customers c');
        const l = await direct.query('SELECT l::text AS t FROM leads l');
        const cells = await direct.query(
          "SELECT 'customers' AS tbl, pg_typeof(email)::text AS type, email IS NULL AS is_null FROM customers " +
            "UNION ALL SELECT 'leads', pg_typeof(email)::text, email IS NULL FROM leads",
        );
        checkNoPlaintext(
          scenario,
          c.rows.map((x) => x.t),
          l.rows.map((x) => x.t),
          cells.rows.map((x) => ({ table: x.tbl, type: x.type, isNull: x.is_null })),
        );
      } finally {
        await direct.end().catch(() => {});
      }
    },
  };

  return {
    steps,
    async recover(_err, timedOut) {
      if (!timedOut) {
        try {
          await withTimeout(client.query('SELECT 1'), 5_000, 'health check');
          return;
        } catch {
          // reconnect below
        }
      }
      drop(client);
      client = await connect();
    },
    async close() {
      await client.end();
    },
  };
}

const scenario = loadScenario();
await runDriver({
  driver: 'node-pg',
  scenario,
  modes: { default: () => defaultMode(scenario) },
});
