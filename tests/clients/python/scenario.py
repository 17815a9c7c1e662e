"""Shared pieces of the Python driver runners for the CRM scenario.

The scenario (tests/clients/scenario.json, or the file named by env SCENARIO)
lists the steps in order; every runner implements each step id with its own
driver's idioms. This module holds the fixture, the expectations, the checks
they share, and the recorder that runs the steps, prints one line per step
(`PASS <mode>/<step>` or `FAIL <mode>/<step>: <reason>`) and the closing line
`<N> passed, <M> failed`. A step id the runner does not implement is counted
as failed, and so is every step of a mode the runner does not implement.
"""

import asyncio
import datetime
import faulthandler
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

# ----------------------------------------------------------------- scenario --

SCENARIO_PATH = Path(
    os.environ.get("SCENARIO") or Path(__file__).resolve().parent.parent / "scenario.json"
)
with open(SCENARIO_PATH, encoding="utf-8") as _f:
    SCENARIO = json.load(_f)

STEP_IDS = [step["id"] for step in SCENARIO["steps"]]


def _date(value):
    return None if value is None else datetime.date.fromisoformat(value)


# Fixture rows, with birth_date as datetime.date (or None).
CUSTOMERS = [
    {
        "name": c["name"],
        "email": c["email"],
        "phone": c["phone"],
        "birth_date": _date(c["birth_date"]),
        "country": c["country"],
    }
    for c in SCENARIO["customers"]
]
LEADS = [{"email": lead["email"], "source": lead["source"]} for lead in SCENARIO["leads"]]

CUSTOMER_COLUMNS = ("name", "email", "phone", "birth_date", "country")
# Fixture rows as tuples in CUSTOMER_COLUMNS order, and leads as (email, source).
CUSTOMER_ROWS = [tuple(c[k] for k in CUSTOMER_COLUMNS) for c in CUSTOMERS]
LEAD_ROWS = [(lead["email"], lead["source"]) for lead in LEADS]

_BY_EMAIL = {c["email"]: c for c in CUSTOMERS}
ADA = "ada@example.com"
GRACE = "grace@example.com"
ZOE = "zoe@example.org"
ALAN = "alan@example.com"
for _email in (ADA, GRACE, ZOE, ALAN):
    assert _email in _BY_EMAIL, f"fixture lacks {_email}"

NEW_PHONE = "+44 20 7946 0999"
LIKE_PATTERN = "%@example.com"
NON_ASCII_NAME = _BY_EMAIL[ZOE]["name"]
BIG_EMAIL = "big@example.com"
BIG_LEN = 1048576
BIG_NAME = "Zoë" + "x" * (BIG_LEN - len("Zoë"))
BIG_COUNTRY = "XX"

# The rows each step reads back.
EXPECTED_IN = [ADA, ALAN]
EXPECTED_JOIN = Counter(
    (_BY_EMAIL[lead["email"]]["name"], lead["source"])
    for lead in LEADS
    if lead["email"] in _BY_EMAIL
)
EXPECTED_GROUP = dict(Counter(lead["email"] for lead in LEADS))

# Strings that must never show up in what PostgreSQL itself stores.
FORBIDDEN_PLAINTEXT = sorted(
    {c["email"] for c in CUSTOMERS}
    | {lead["email"] for lead in LEADS}
    | {c["phone"] for c in CUSTOMERS if c["phone"]}
    | {c["name"] for c in CUSTOMERS}
    | {NEW_PHONE, "ada@", "Lovelace", "1815-12-10"}
)

DIRECT_CUSTOMERS_SQL = "SELECT c::text FROM customers c"
DIRECT_LEADS_SQL = "SELECT l::text FROM leads l"
DIRECT_EMAILS_SQL = {
    "customers": "SELECT email FROM customers",
    "leads": "SELECT email FROM leads",
}

# --------------------------------------------------------------- connection --


def _env(name):
    value = os.environ.get(name)
    if not value:
        raise StepError(f"environment variable {name} is not set")
    return value


def conn_params(direct=False):
    """host, port, user, password, dbname: pgveil's, or PostgreSQL's own
    (DIRECT_PORT) when direct is true."""
    return {
        "host": os.environ.get("PGVEIL_HOST") or "127.0.0.1",
        "port": int(_env("DIRECT_PORT" if direct else "PGVEIL_PORT")),
        "user": _env("PGUSER"),
        "password": _env("PGPASSWORD"),
        "dbname": _env("PGDATABASE"),
    }


# ------------------------------------------------------------------- checks --


class StepError(Exception):
    """A step's expectation did not hold."""


def expect(condition, message):
    if not condition:
        raise StepError(message)


def expect_equal(got, want, what):
    if got != want:
        raise StepError(f"{what}: got {_short(got)}, want {_short(want)}")


def _short(value, limit=200):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _as_date(value):
    # A date read back as text (drivers without a date type) is parsed here.
    if isinstance(value, str):
        return datetime.date.fromisoformat(value)
    return value


def check_customer(row, email):
    """row: (name, email, phone, birth_date, country) read back for email."""
    want = _BY_EMAIL[email]
    got = tuple(row)
    expect_equal(len(got), len(CUSTOMER_COLUMNS), "column count")
    for column, value in zip(CUSTOMER_COLUMNS, got):
        if column == "birth_date" and value is not None:
            expect(
                isinstance(value, datetime.date) and not isinstance(value, datetime.datetime),
                f"birth_date: got {type(value).__name__} {value!r}, want datetime.date",
            )
        expect_equal(value, want[column], column)


def check_single_customer(rows, email):
    rows = list(rows)
    expect_equal(len(rows), 1, f"rows for {email}")
    check_customer(rows[0], email)


def check_emails(got, form):
    """got: the emails an IN / ANY query returned; order-insensitive."""
    expect_equal(sorted(got), sorted(EXPECTED_IN), f"{form} emails")


def check_rowcount(got, want, what):
    expect_equal(got, want, f"{what} row count")


def check_join(rows):
    expect_equal(Counter(tuple(r) for r in rows), EXPECTED_JOIN, "join rows")


def check_group(rows):
    got = {}
    for email, count in rows:
        expect(email not in got, f"email {email!r} twice in GROUP BY result")
        got[email] = int(count)
    expect_equal(got, EXPECTED_GROUP, "GROUP BY counts")


def check_refused(sqlstate, message):
    """The error of refused_like: SQLSTATE 0A000, message starting 'pgveil:'."""
    expect_equal(sqlstate, "0A000", "SQLSTATE of the refused LIKE")
    expect(
        isinstance(message, str) and message.startswith("pgveil:"),
        f"message of the refused LIKE does not start with 'pgveil:': {message!r}",
    )


def refused_but_succeeded(rows):
    return StepError(f"LIKE on an encrypted column was not refused; it returned {_short(rows)}")


def check_nulls(zoe_phone, alan_birth_date, null_phone_count):
    expect(zoe_phone is None, f"zoe's phone: got {zoe_phone!r}, want NULL")
    expect(alan_birth_date is None, f"alan's birth_date: got {alan_birth_date!r}, want NULL")
    expect_equal(int(null_phone_count), 1, "customers with a NULL phone")


def check_non_ascii(name_by_email, email_by_name):
    expect_equal(name_by_email, NON_ASCII_NAME, "name of zoe")
    expect_equal(email_by_name, ZOE, "email found by the non-ASCII name")


def check_big_name(name):
    expect(isinstance(name, str), f"large name: got {type(name).__name__}, want str")
    expect_equal(len(name), BIG_LEN, "large name length")
    expect(name == BIG_NAME, "large name read back differs from the one written")


def _is_bytes(value):
    return isinstance(value, (bytes, bytearray, memoryview))


def check_direct(customer_texts, lead_texts, email_cells):
    """customer_texts / lead_texts: the single column of `SELECT c::text` /
    `SELECT l::text`, read straight from PostgreSQL; email_cells: {table:
    [the email column's cells as the driver returns them]}."""
    expect(customer_texts, "customers is empty: nothing to check")
    expect(lead_texts, "leads is empty: nothing to check")
    for table, texts in (("customers", customer_texts), ("leads", lead_texts)):
        for text in texts:
            for word in FORBIDDEN_PLAINTEXT:
                expect(word not in (text or ""), f"{table} row holds plaintext {word!r}: {_short(text)}")
    for table, cells in email_cells.items():
        expect(cells, f"{table}.email: no rows")
        for cell in cells:
            expect(cell is not None, f"{table}.email holds a NULL")
            expect(
                _is_bytes(cell),
                f"{table}.email is {type(cell).__name__} {_short(cell)}, want bytea",
            )


# ----------------------------------------------------------------- recorder --

STEP_TIMEOUT = float(os.environ.get("STEP_TIMEOUT") or 60)
RUNNER_TIMEOUT = float(os.environ.get("RUNNER_TIMEOUT") or 600)


class StepTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise StepTimeout(f"step took longer than {STEP_TIMEOUT:g}s")


def _reason(exc):
    if isinstance(exc, StepError):
        return str(exc).replace("\n", " | ")
    text = str(exc).strip().replace("\n", " | ")
    return f"{type(exc).__name__}: {_short(text, 400) if text else '(no message)'}"


class Recorder:
    """Runs a runner's modes step by step and keeps the score.

    Each mode is a class whose methods are named after the step ids
    (`step_<id>`), with an optional `recover()` called after a failed step (to
    roll back or reconnect) and `close()` called at the end of the mode.
    """

    def __init__(self, driver, modes):
        self.driver = driver
        self.modes = modes  # {mode name: class}
        self.passed = 0
        self.failed = 0
        # A hard bound on the whole run, for a driver blocked in C code that
        # the per-step alarm cannot interrupt.
        faulthandler.dump_traceback_later(RUNNER_TIMEOUT, exit=True)

    def _record(self, mode, step, error):
        if error is None:
            self.passed += 1
            print(f"PASS {mode}/{step}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {mode}/{step}: {error}", flush=True)

    def _selected_modes(self):
        scenario_modes = SCENARIO["modes"].get(self.driver)
        if scenario_modes is None:
            print(f"scenario.json has no modes for driver {self.driver!r}", file=sys.stderr)
            sys.exit(2)
        wanted = sys.argv[1:] or scenario_modes
        unknown = [m for m in wanted if m not in scenario_modes]
        if unknown:
            print(f"unknown mode(s) {unknown}; {self.driver} has {scenario_modes}", file=sys.stderr)
            sys.exit(2)
        return wanted

    def _steps(self, mode_obj):
        for step in STEP_IDS:
            yield step, getattr(mode_obj, "step_" + step, None)

    def run(self):
        """Synchronous runners. Returns the process exit code."""
        signal.signal(signal.SIGALRM, _alarm)
        for mode in self._selected_modes():
            cls = self.modes.get(mode)
            if cls is None:
                for step in STEP_IDS:
                    self._record(mode, step, "mode not implemented by this runner")
                continue
            obj = cls(mode)
            for step, fn in self._steps(obj):
                if fn is None:
                    self._record(mode, step, "step not implemented by this runner")
                    continue
                error = None
                signal.setitimer(signal.ITIMER_REAL, STEP_TIMEOUT)
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - every failure is reported
                    error = _reason(exc)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                self._record(mode, step, error)
                if error is not None:
                    self._recover(obj, mode, step)
            self._close(obj)
        return self.finish()

    def _recover(self, obj, mode, step):
        recover = getattr(obj, "recover", None)
        if recover is None:
            return
        signal.setitimer(signal.ITIMER_REAL, STEP_TIMEOUT)
        try:
            recover()
        except Exception as exc:  # noqa: BLE001
            print(f"# {mode}/{step}: recovery failed: {_reason(exc)}", flush=True)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _close(self, obj):
        close = getattr(obj, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def run_async(self):
        """asyncio runners: step methods are coroutines."""
        return asyncio.run(self._run_async())

    async def _run_async(self):
        for mode in self._selected_modes():
            cls = self.modes.get(mode)
            if cls is None:
                for step in STEP_IDS:
                    self._record(mode, step, "mode not implemented by this runner")
                continue
            obj = cls(mode)
            for step, fn in self._steps(obj):
                if fn is None:
                    self._record(mode, step, "step not implemented by this runner")
                    continue
                error = None
                try:
                    await asyncio.wait_for(fn(), STEP_TIMEOUT)
                except asyncio.TimeoutError:
                    error = f"step took longer than {STEP_TIMEOUT:g}s"
                except Exception as exc:  # noqa: BLE001
                    error = _reason(exc)
                self._record(mode, step, error)
                if error is not None and hasattr(obj, "recover"):
                    try:
                        await asyncio.wait_for(obj.recover(), STEP_TIMEOUT)
                    except Exception as exc:  # noqa: BLE001
                        print(f"# {mode}/{step}: recovery failed: {_reason(exc)}", flush=True)
            if hasattr(obj, "close"):
                try:
                    await asyncio.wait_for(obj.close(), 10)
                except Exception:  # noqa: BLE001
                    pass
        return self.finish()

    def finish(self):
        faulthandler.cancel_dump_traceback_later()
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        return 0 if self.failed == 0 and self.passed > 0 else 1


def main(driver, modes, is_async=False):
    started = time.monotonic()
    recorder = Recorder(driver, modes)
    code = recorder.run_async() if is_async else recorder.run()
    print(f"# {driver}: {time.monotonic() - started:.1f}s", file=sys.stderr)
    sys.exit(code)
