// Shared by the Node.js driver runners (pg_runner.mjs, postgresjs_runner.mjs):
// loading scenario.json, the step loop with its PASS/FAIL recorder, and the
// checks every runner makes on what its driver handed back.
//
// Output contract (scenario.json, "about"): one line per step,
// `PASS <mode>/<step>` or `FAIL <mode>/<step>: <reason>`, then
// `<N> passed, <M> failed`; exit code 0 only when M == 0.

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';

const HERE = dirname(fileURLToPath(import.meta.url));

/** Time limits in seconds, as for every runner: per step, and for the whole run. */
const STEP_TIMEOUT_MS = (Number(process.env.STEP_TIMEOUT) || 60) * 1000;
const RUNNER_TIMEOUT_MS = (Number(process.env.RUNNER_TIMEOUT) || 600) * 1000;

// ---------------------------------------------------------------- scenario

export function loadScenario() {
  const path = process.env.SCENARIO || join(HERE, '..', 'scenario.json');
  const scenario = JSON.parse(readFileSync(path, 'utf8'));
  if (!Array.isArray(scenario.steps) || !Array.isArray(scenario.customers) || !Array.isArray(scenario.leads)) {
    throw new Error(`${path}: not a scenario (steps, customers, leads expected)`);
  }
  return scenario;
}

function envOr(name, fallback) {
  const v = process.env[name];
  return v === undefined || v === '' ? fallback : v;
}

/** Connection settings from the environment; `direct` picks DIRECT_PORT. */
export function connSettings({ direct = false } = {}) {
  const port = direct ? envOr('DIRECT_PORT', undefined) : envOr('PGVEIL_PORT', undefined);
  if (port === undefined) {
    throw new Error(`${direct ? 'DIRECT_PORT' : 'PGVEIL_PORT'} is not set`);
  }
  return {
    host: envOr('PGVEIL_HOST', '127.0.0.1'),
    port: Number(port),
    user: envOr('PGUSER', 'postgres'),
    password: envOr('PGPASSWORD', undefined),
    database: envOr('PGDATABASE', envOr('PGUSER', 'postgres')),
  };
}

// ------------------------------------------------------- scenario constants

export const ADA = 'ada@example.com';
export const GRACE = 'grace@example.com';
export const ZOE = 'zoe@example.org';
export const ALAN = 'alan@example.com';
export const ZOE_NAME = 'Zoë Ångström-李';
export const NEW_PHONE = '+44 20 7946 0999';
export const LIKE_PATTERN = '%@example.com';
export const BIG_EMAIL = 'big@example.com';
export const BIG_LENGTH = 1048576;
/** 1048576 characters: 'Zoë' then 'x' repeated. */
export const BIG_NAME = 'Zoë' + 'x'.repeat(BIG_LENGTH - 3);

export function customerByEmail(scenario, email) {
  const c = scenario.customers.find((x) => x.email === email);
  if (!c) throw new Error(`fixture has no customer ${email}`);
  return c;
}

/** Expected (name, source) rows of the join_leads step, from the fixture. */
export function expectedJoin(scenario) {
  const rows = [];
  for (const l of scenario.leads) {
    const c = scenario.customers.find((x) => x.email === l.email);
    if (c) rows.push([c.name, l.source]);
  }
  return rows;
}

/** Expected (email, count) rows of the group_by step, from the fixture. */
export function expectedGroups(scenario) {
  const counts = new Map();
  for (const l of scenario.leads) counts.set(l.email, (counts.get(l.email) || 0) + 1);
  return [...counts.entries()];
}

// ------------------------------------------------------------------ checks

/** A short, single-line rendering of a value for failure messages. */
export function show(v) {
  let s;
  if (typeof v === 'string') s = JSON.stringify(v);
  else if (v instanceof Date) s = `Date(${Number.isNaN(v.getTime()) ? 'invalid' : v.toISOString()})`;
  else if (typeof v === 'bigint') s = `${v}n`;
  else {
    try {
      s = JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `${x}n` : x));
    } catch {
      s = String(v);
    }
    if (s === undefined) s = String(v);
  }
  if (s.length > 200) s = `${s.slice(0, 120)}…(${s.length} chars)…${s.slice(-40)}`;
  return s;
}

export function check(cond, message) {
  if (!cond) throw new Error(message);
}

export function expectEqual(actual, expected, what) {
  if (!isDeepStrictEqual(actual, expected)) {
    throw new Error(`${what}: expected ${show(expected)}, got ${show(actual)}`);
  }
}

/** Order-insensitive comparison of two lists of rows (rows being arrays). */
export function expectSameRows(actual, expected, what) {
  const key = (r) => JSON.stringify(r, (_k, x) => (typeof x === 'bigint' ? `${x}n` : x));
  const a = actual.map(key).sort();
  const e = expected.map(key).sort();
  if (!isDeepStrictEqual(a, e)) {
    throw new Error(`${what}: expected rows ${show(expected)} in any order, got ${show(actual)}`);
  }
}

/** A count as a JS number, whether the driver gave a string, bigint or number. */
export function asCount(v) {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'string' && /^\d+$/.test(v)) return Number(v);
  throw new Error(`not a count: ${show(v)}`);
}

/**
 * A date column value as 'YYYY-MM-DD'. Accepts the text form (drivers told to
 * hand dates back as strings) or a Date that stands for UTC midnight (how
 * postgres.js parses `date`). null stays null.
 */
export function isoDate(v) {
  if (v === null) return null;
  if (typeof v === 'string') return v;
  if (v instanceof Date) {
    if (Number.isNaN(v.getTime())) throw new Error('invalid Date');
    const midnightUtc = v.getUTCHours() === 0 && v.getUTCMinutes() === 0 && v.getUTCSeconds() === 0 && v.getUTCMilliseconds() === 0;
    if (!midnightUtc) throw new Error(`date came back as ${v.toISOString()}, not a UTC midnight`);
    return v.toISOString().slice(0, 10);
  }
  throw new Error(`not a date: ${show(v)}`);
}

/** find_by_email: one row equal to the fixture customer. */
export function checkCustomerRow(row, fixture) {
  expectEqual(row.name, fixture.name, 'name');
  expectEqual(row.email, fixture.email, 'email');
  expectEqual(row.phone, fixture.phone, 'phone');
  expectEqual(isoDate(row.birth_date), fixture.birth_date, 'birth_date');
  expectEqual(row.country, fixture.country, 'country');
}

/** Plaintexts that must never be visible straight in PostgreSQL. */
export function forbiddenPlaintexts(scenario) {
  const set = new Set(['ada@', 'Lovelace', '1815-12-10', NEW_PHONE]);
  for (const c of scenario.customers) {
    for (const v of [c.name, c.email, c.phone, c.birth_date]) if (v) set.add(v);
  }
  for (const l of scenario.leads) if (l.email) set.add(l.email);
  return [...set];
}

/**
 * direct_no_plaintext. `customerTexts` / `leadTexts`: the `c::text` /
 * `l::text` values read straight from PostgreSQL; `emailCells`: for every
 * customers.email and leads.email cell, { table, type (pg_typeof), isNull }.
 * A plaintext stored unencrypted in a bytea column shows as hex in the row
 * text, so the hex of each longer plaintext is looked for too.
 */
export function checkNoPlaintext(scenario, customerTexts, leadTexts, emailCells) {
  const expectCustomers = scenario.customers.length;
  const expectLeads = scenario.leads.length;
  check(customerTexts.length === expectCustomers, `expected ${expectCustomers} customers rows straight from PostgreSQL, got ${customerTexts.length}`);
  check(leadTexts.length === expectLeads, `expected ${expectLeads} leads rows straight from PostgreSQL, got ${leadTexts.length}`);
  const rows = [...customerTexts, ...leadTexts];
  for (const p of forbiddenPlaintexts(scenario)) {
    const hex = Buffer.from(p, 'utf8').toString('hex');
    for (const r of rows) {
      check(typeof r === 'string', `row text is not a string: ${show(r)}`);
      if (r.includes(p)) throw new Error(`plaintext ${show(p)} visible in PostgreSQL: ${show(r)}`);
      if (Buffer.byteLength(p, 'utf8') >= 8 && r.toLowerCase().includes(hex)) {
        throw new Error(`plaintext ${show(p)} stored as unencrypted bytes: ${show(r)}`);
      }
    }
  }
  check(emailCells.length === expectCustomers + expectLeads, `expected ${expectCustomers + expectLeads} email cells, got ${emailCells.length}`);
  for (const c of emailCells) {
    check(!c.isNull, `${c.table}.email has a NULL cell`);
    check(c.type === 'bytea', `${c.table}.email is ${c.type}, not bytea`);
  }
}

/** refused_like: the error pgveil must raise. */
export function checkRefusal(err, code) {
  check(err !== undefined, 'expected an error, the query succeeded');
  const message = err && typeof err.message === 'string' ? err.message : String(err);
  check(code === '0A000', `expected SQLSTATE 0A000, got ${show(code)} (${message})`);
  check(message.startsWith('pgveil:'), `expected a message starting 'pgveil:', got ${show(message)}`);
}

// ------------------------------------------------------------- step loop

function oneLine(s) {
  s = String(s).replace(/\s+/g, ' ').trim();
  return s.length > 500 ? `${s.slice(0, 497)}...` : s;
}

export function describeError(e) {
  if (e === null || e === undefined) return String(e);
  if (typeof e !== 'object') return oneLine(e);
  const code = e.code ? `[${e.code}] ` : '';
  return oneLine(`${code}${e.message || e}`);
}

export class TimeoutError extends Error {}

export function withTimeout(promise, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what}: no answer within ${ms / 1000}s`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

class Recorder {
  constructor() {
    this.passed = 0;
    this.failed = 0;
  }
  pass(mode, step) {
    this.passed += 1;
    process.stdout.write(`PASS ${mode}/${step}\n`);
  }
  fail(mode, step, reason) {
    this.failed += 1;
    process.stdout.write(`FAIL ${mode}/${step}: ${oneLine(reason)}\n`);
  }
}

/**
 * Runs every mode scenario.json lists for `driver` (or only the modes named
 * on the command line), and in each every step id of scenario.json, in
 * order. `modes[mode]` is an async factory returning
 * { steps: {id: async fn}, recover: async (err, timedOut) => void,
 *   close: async () => void }. A step with no implementation, and every step
 * of a mode with no factory, counts as failed. Exits the process.
 */
export async function runDriver({ driver, scenario, modes }) {
  // A hard bound on the whole run, whatever a driver is stuck in.
  setTimeout(() => {
    process.stderr.write(`${driver}: the run took longer than ${RUNNER_TIMEOUT_MS / 1000}s (RUNNER_TIMEOUT); giving up\n`);
    process.exit(1);
  }, RUNNER_TIMEOUT_MS).unref();

  const scenarioModes = scenario.modes && scenario.modes[driver];
  if (!Array.isArray(scenarioModes)) {
    process.stderr.write(`scenario.json has no modes for driver ${driver}\n`);
    process.exit(2);
  }
  const wanted = process.argv.slice(2);
  const unknown = wanted.filter((m) => !scenarioModes.includes(m));
  if (unknown.length > 0) {
    process.stderr.write(`unknown mode(s) ${unknown.join(', ')}; ${driver} has ${scenarioModes.join(', ')}\n`);
    process.exit(2);
  }
  const rec = new Recorder();
  for (const mode of wanted.length > 0 ? wanted : scenarioModes) {
    let session = null;
    let setupError = null;
    const factory = modes[mode];
    if (!factory) setupError = 'mode not implemented by this runner';
    else {
      try {
        session = await withTimeout(factory(), STEP_TIMEOUT_MS, 'connect');
      } catch (e) {
        setupError = `connect: ${describeError(e)}`;
      }
    }
    for (const step of scenario.steps) {
      if (setupError) {
        rec.fail(mode, step.id, setupError);
        continue;
      }
      const impl = session.steps[step.id];
      if (typeof impl !== 'function') {
        rec.fail(mode, step.id, 'step not implemented by this runner');
        continue;
      }
      try {
        await withTimeout(Promise.resolve().then(impl), STEP_TIMEOUT_MS, step.id);
        rec.pass(mode, step.id);
      } catch (e) {
        rec.fail(mode, step.id, describeError(e));
        try {
          await withTimeout(Promise.resolve().then(() => session.recover(e, e instanceof TimeoutError)), STEP_TIMEOUT_MS, 'recover');
        } catch (re) {
          process.stderr.write(`${mode}: recovery after ${step.id} failed: ${describeError(re)}\n`);
        }
      }
    }
    if (session) {
      try {
        await withTimeout(Promise.resolve().then(() => session.close()), 10_000, 'close');
      } catch (e) {
        process.stderr.write(`${mode}: close: ${describeError(e)}\n`);
      }
    }
  }
  process.stdout.write(`${rec.passed} passed, ${rec.failed} failed\n`);
  // Exit explicitly: a connection left hanging must not keep the run alive.
  process.exit(rec.failed === 0 ? 0 : 1);
}
