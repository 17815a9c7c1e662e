"""The CRM scenario through psycopg2.

psycopg2 interpolates parameters on the client and sends plain SQL with the
simple query protocol: tuples become `(a, b)` for `IN %s`, lists become
`ARRAY[...]` for `= ANY(%s)`, dates become `'YYYY-MM-DD'::date`.

Mode: default.
"""

import contextlib
import sys
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenario as s  # noqa: E402


class Mode:
    def __init__(self, mode):
        self.mode = mode
        self.conn = None

    def connect(self, direct=False):
        return psycopg2.connect(**s.conn_params(direct), connect_timeout=10)

    @property
    def c(self):
        if self.conn is None or self.conn.closed:
            self.conn = self.connect()
        return self.conn

    def rows(self, query, params=None):
        with self.c.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def value(self, query, params=None):
        rows = self.rows(query, params)
        s.expect_equal(len(rows), 1, f"rows of {query!r}")
        return rows[0][0]

    def recover(self):
        if self.conn is None or self.conn.closed:
            self.conn = None
            return
        try:
            self.conn.rollback()
        except psycopg2.Error:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()

    # -- steps ---------------------------------------------------------------

    def step_reset(self):
        with self.c, self.c.cursor() as cur:  # `with conn`: commit at the end
            cur.execute("DELETE FROM leads")
            cur.execute("DELETE FROM customers")
        s.expect_equal(self.value("SELECT count(*) FROM customers"), 0, "customers after reset")
        self.c.commit()

    def step_insert_customers(self):
        with self.c, self.c.cursor() as cur:
            cur.executemany(
                "INSERT INTO customers (name, email, phone, birth_date, country)"
                " VALUES (%(name)s, %(email)s, %(phone)s, %(birth_date)s, %(country)s)",
                s.CUSTOMERS,
            )
            s.check_rowcount(cur.rowcount, len(s.CUSTOMERS), "inserted")
        s.expect_equal(self.value("SELECT count(*) FROM customers"), len(s.CUSTOMERS), "customers")
        self.c.commit()

    def step_find_by_email(self):
        s.check_single_customer(
            self.rows(
                "SELECT name, email, phone, birth_date, country FROM customers WHERE email = %s",
                (s.GRACE,),
            ),
            s.GRACE,
        )
        self.c.commit()

    def step_in_list(self):
        by_in = self.rows("SELECT email FROM customers WHERE email IN %s", (tuple(s.EXPECTED_IN),))
        s.check_emails([r[0] for r in by_in], "IN %s (tuple)")
        by_any = self.rows("SELECT email FROM customers WHERE email = ANY(%s)", (list(s.EXPECTED_IN),))
        s.check_emails([r[0] for r in by_any], "= ANY(%s) (list)")
        self.c.commit()

    def step_update_phone(self):
        with self.c, self.c.cursor() as cur:
            cur.execute(
                "UPDATE customers SET phone = %(phone)s WHERE email = %(email)s",
                {"phone": s.NEW_PHONE, "email": s.ADA},
            )
            s.check_rowcount(cur.rowcount, 1, "updated")
        s.expect_equal(
            self.value("SELECT phone FROM customers WHERE email = %s", (s.ADA,)),
            s.NEW_PHONE,
            "phone read back",
        )
        self.c.commit()

    def step_join_leads(self):
        with self.c, self.c.cursor() as cur:
            cur.executemany("INSERT INTO leads (email, source) VALUES (%s, %s)", s.LEAD_ROWS)
            s.check_rowcount(cur.rowcount, len(s.LEAD_ROWS), "leads inserted")
        s.check_join(
            self.rows("SELECT c.name, l.source FROM customers c JOIN leads l ON l.email = c.email")
        )
        self.c.commit()

    def step_group_by(self):
        s.check_group(self.rows("SELECT email, count(*) FROM leads GROUP BY email"))
        self.c.commit()

    def step_refused_like(self):
        error, rows = None, None
        try:
            rows = self.rows("SELECT name FROM customers WHERE email LIKE %s", (s.LIKE_PATTERN,))
        except psycopg2.Error as exc:
            error = exc
        self.c.rollback()
        if error is None:
            raise s.refused_but_succeeded(rows)
        s.check_refused(error.pgcode, error.diag.message_primary)
        s.expect_equal(self.value("SELECT 1"), 1, "SELECT 1 after the refusal")
        self.c.commit()

    def step_nulls(self):
        s.check_nulls(
            self.value("SELECT phone FROM customers WHERE email = %s", (s.ZOE,)),
            self.value("SELECT birth_date FROM customers WHERE email = %s", (s.ALAN,)),
            self.value("SELECT count(*) FROM customers WHERE phone IS NULL"),
        )
        self.c.commit()

    def step_non_ascii(self):
        s.check_non_ascii(
            self.value("SELECT name FROM customers WHERE email = %s", (s.ZOE,)),
            self.value("SELECT email FROM customers WHERE name = %s", (s.NON_ASCII_NAME,)),
        )
        self.c.commit()

    def step_large_value(self):
        with self.c, self.c.cursor() as cur:
            cur.execute(
                "INSERT INTO customers (name, email, country) VALUES (%s, %s, 'XX')",
                (s.BIG_NAME, s.BIG_EMAIL),
            )
            s.check_rowcount(cur.rowcount, 1, "inserted")
        s.check_big_name(self.value("SELECT name FROM customers WHERE email = %s", (s.BIG_EMAIL,)))
        self.c.commit()

    def step_delete(self):
        with self.c, self.c.cursor() as cur:
            cur.execute("DELETE FROM customers WHERE email = %s", (s.BIG_EMAIL,))
            s.check_rowcount(cur.rowcount, 1, "deleted")
        s.expect_equal(self.value("SELECT count(*) FROM customers"), len(s.CUSTOMERS), "customers left")
        self.c.commit()

    def step_direct_no_plaintext(self):
        direct = self.connect(direct=True)
        try:
            with direct.cursor() as cur:
                cur.execute(s.DIRECT_CUSTOMERS_SQL)
                customers = [r[0] for r in cur.fetchall()]
                cur.execute(s.DIRECT_LEADS_SQL)
                leads = [r[0] for r in cur.fetchall()]
                emails = {}
                for table, query in s.DIRECT_EMAILS_SQL.items():
                    cur.execute(query)
                    emails[table] = [r[0] for r in cur.fetchall()]
        finally:
            direct.close()
        s.check_direct(customers, leads, emails)


if __name__ == "__main__":
    s.main("psycopg2", {"default": Mode})
