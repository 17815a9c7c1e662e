"""The CRM scenario through asyncpg.

asyncpg prepares every statement (named, cached), encodes parameters in
binary with the types the server's ParameterDescription reports, and reads
results in binary: through pgveil, the encrypted columns must be described as
text / date for these calls to work at all.

Mode: default.
"""

import sys
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenario as s  # noqa: E402


def _status_count(status):
    """The row count of a command tag such as 'UPDATE 1' or 'INSERT 0 1'."""
    return int(status.split()[-1])


class Mode:
    def __init__(self, mode):
        self.mode = mode
        self.conn = None

    async def connect(self, direct=False):
        p = s.conn_params(direct)
        return await asyncpg.connect(
            host=p["host"],
            port=p["port"],
            user=p["user"],
            password=p["password"],
            database=p["dbname"],
            timeout=10,
        )

    async def c(self):
        if self.conn is None or self.conn.is_closed():
            self.conn = await self.connect()
        return self.conn

    async def recover(self):
        # asyncpg runs in autocommit outside explicit transactions; a broken
        # connection is replaced.
        if self.conn is not None and not self.conn.is_closed():
            try:
                await self.conn.fetchval("SELECT 1")
                return
            except Exception:  # noqa: BLE001
                self.conn.terminate()
        self.conn = None

    async def close(self):
        if self.conn is not None:
            await self.conn.close(timeout=5)

    # -- steps ---------------------------------------------------------------

    async def step_reset(self):
        conn = await self.c()
        async with conn.transaction():
            await conn.execute("DELETE FROM leads")
            await conn.execute("DELETE FROM customers")
        s.expect_equal(await conn.fetchval("SELECT count(*) FROM customers"), 0, "customers after reset")

    async def step_insert_customers(self):
        conn = await self.c()
        async with conn.transaction():
            await conn.executemany(
                "INSERT INTO customers (name, email, phone, birth_date, country)"
                " VALUES ($1, $2, $3, $4, $5)",
                s.CUSTOMER_ROWS,
            )
        s.expect_equal(
            await conn.fetchval("SELECT count(*) FROM customers"), len(s.CUSTOMER_ROWS), "customers"
        )

    async def step_find_by_email(self):
        conn = await self.c()
        rows = await conn.fetch(
            "SELECT name, email, phone, birth_date, country FROM customers WHERE email = $1", s.GRACE
        )
        s.check_single_customer([tuple(r) for r in rows], s.GRACE)

    async def step_in_list(self):
        conn = await self.c()
        ada, alan = s.EXPECTED_IN
        forms = [
            ("IN ($1, $2)", "SELECT email FROM customers WHERE email IN ($1, $2)", (ada, alan)),
            ("= ANY($1)", "SELECT email FROM customers WHERE email = ANY($1)", ([ada, alan],)),
            (
                "= ANY($1::text[])",
                "SELECT email FROM customers WHERE email = ANY($1::text[])",
                ([ada, alan],),
            ),
        ]
        problems = []
        for form, query, args in forms:
            try:
                s.check_emails([r["email"] for r in await conn.fetch(query, *args)], form)
            except Exception as exc:  # noqa: BLE001 - every form is tried, all problems reported
                problems.append(f"{form}: {s._reason(exc)}")
        s.expect(not problems, "; ".join(problems))

    async def step_update_phone(self):
        conn = await self.c()
        status = await conn.execute(
            "UPDATE customers SET phone = $1 WHERE email = $2", s.NEW_PHONE, s.ADA
        )
        s.check_rowcount(_status_count(status), 1, "updated")
        s.expect_equal(
            await conn.fetchval("SELECT phone FROM customers WHERE email = $1", s.ADA),
            s.NEW_PHONE,
            "phone read back",
        )

    async def step_join_leads(self):
        conn = await self.c()
        await conn.executemany("INSERT INTO leads (email, source) VALUES ($1, $2)", s.LEAD_ROWS)
        s.expect_equal(await conn.fetchval("SELECT count(*) FROM leads"), len(s.LEAD_ROWS), "leads")
        rows = await conn.fetch(
            "SELECT c.name, l.source FROM customers c JOIN leads l ON l.email = c.email"
        )
        s.check_join([tuple(r) for r in rows])

    async def step_group_by(self):
        conn = await self.c()
        rows = await conn.fetch("SELECT email, count(*) FROM leads GROUP BY email")
        s.check_group([tuple(r) for r in rows])

    async def step_refused_like(self):
        conn = await self.c()
        try:
            rows = await conn.fetch(
                "SELECT name FROM customers WHERE email LIKE $1", s.LIKE_PATTERN
            )
        except asyncpg.PostgresError as exc:
            s.check_refused(exc.sqlstate, exc.args[0] if exc.args else str(exc))
        else:
            raise s.refused_but_succeeded([tuple(r) for r in rows])
        s.expect_equal(await conn.fetchval("SELECT 1"), 1, "SELECT 1 after the refusal")

    async def step_nulls(self):
        conn = await self.c()
        # fetchrow, not fetchval: "no row" must not pass for NULL.
        phone = await conn.fetchrow("SELECT phone FROM customers WHERE email = $1", s.ZOE)
        birth = await conn.fetchrow("SELECT birth_date FROM customers WHERE email = $1", s.ALAN)
        s.expect(phone is not None, "no row for zoe")
        s.expect(birth is not None, "no row for alan")
        s.check_nulls(
            phone["phone"],
            birth["birth_date"],
            await conn.fetchval("SELECT count(*) FROM customers WHERE phone IS NULL"),
        )

    async def step_non_ascii(self):
        conn = await self.c()
        name = await conn.fetchrow("SELECT name FROM customers WHERE email = $1", s.ZOE)
        email = await conn.fetchrow("SELECT email FROM customers WHERE name = $1", s.NON_ASCII_NAME)
        s.expect(name is not None, "no row for zoe's email")
        s.expect(email is not None, "no row for zoe's name")
        s.check_non_ascii(name["name"], email["email"])

    async def step_large_value(self):
        conn = await self.c()
        status = await conn.execute(
            "INSERT INTO customers (name, email, country) VALUES ($1, $2, 'XX')",
            s.BIG_NAME,
            s.BIG_EMAIL,
        )
        s.check_rowcount(_status_count(status), 1, "inserted")
        row = await conn.fetchrow("SELECT name FROM customers WHERE email = $1", s.BIG_EMAIL)
        s.expect(row is not None, "no row for the large value")
        s.check_big_name(row["name"])

    async def step_delete(self):
        conn = await self.c()
        status = await conn.execute("DELETE FROM customers WHERE email = $1", s.BIG_EMAIL)
        s.check_rowcount(_status_count(status), 1, "deleted")
        s.expect_equal(
            await conn.fetchval("SELECT count(*) FROM customers"), len(s.CUSTOMER_ROWS), "customers left"
        )

    async def step_direct_no_plaintext(self):
        direct = await self.connect(direct=True)
        try:
            customers = [r[0] for r in await direct.fetch(s.DIRECT_CUSTOMERS_SQL)]
            leads = [r[0] for r in await direct.fetch(s.DIRECT_LEADS_SQL)]
            emails = {
                table: [r[0] for r in await direct.fetch(query)]
                for table, query in s.DIRECT_EMAILS_SQL.items()
            }
        finally:
            await direct.close(timeout=5)
        s.check_direct(customers, leads, emails)


if __name__ == "__main__":
    s.main("asyncpg", {"default": Mode}, is_async=True)
