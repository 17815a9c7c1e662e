"""The CRM scenario through psycopg 3.

Modes:
  default   cursor.execute / executemany as an application writes them
  prepare   execute(..., prepare=True) for every statement (named prepared
            statements from the first execution)
  binary    binary cursors: binary results, and binary parameters (%b)
  pipeline  the steps run inside conn.pipeline() blocks, several statements
            queued before any result is fetched
"""

import contextlib
import sys
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenario as s  # noqa: E402

INSERT_CUSTOMER = (
    "INSERT INTO customers (name, email, phone, birth_date, country) VALUES (%s, %s, %s, %s, %s)"
)
IDLE_STATES = (
    psycopg.pq.TransactionStatus.IDLE,
    psycopg.pq.TransactionStatus.INTRANS,
    psycopg.pq.TransactionStatus.INERROR,
)
SELECT_CUSTOMER = "SELECT name, email, phone, birth_date, country FROM customers WHERE email = %s"
INSERT_LEAD = "INSERT INTO leads (email, source) VALUES (%s, %s)"


class Mode:
    def __init__(self, mode):
        self.mode = mode
        self.conn = None

    # -- connection and the mode's way of executing --------------------------

    def connect(self, direct=False):
        return psycopg.connect(**s.conn_params(direct), connect_timeout=10)

    @property
    def c(self):
        if self.conn is None or self.conn.closed:
            self.conn = self.connect()
        return self.conn

    def batch(self):
        """A block of statements: a pipeline in pipeline mode."""
        return self.c.pipeline() if self.mode == "pipeline" else contextlib.nullcontext()

    def sql(self, query):
        # binary mode binds every parameter in binary format.
        return query.replace("%s", "%b") if self.mode == "binary" else query

    def cursor(self, conn=None):
        return (conn or self.c).cursor(binary=self.mode == "binary")

    def q(self, query, params=None, conn=None):
        """Sends one statement; in pipeline mode the result is fetched later,
        when the cursor is read."""
        cur = self.cursor(conn)
        kwargs = {}
        if self.mode == "prepare":
            kwargs["prepare"] = True
        elif self.mode == "binary":
            kwargs["binary"] = True
        cur.execute(self.sql(query), params, **kwargs)
        return cur

    def many(self, query, rows):
        """Runs query once per row; returns the total row count."""
        if self.mode in ("default", "binary"):
            cur = self.cursor()
            cur.executemany(self.sql(query), rows)
            return cur.rowcount
        # prepare: one prepared execution per row; pipeline: all queued first.
        with self.batch() as pipeline:
            curs = [self.q(query, row) for row in rows]
            if pipeline is not None:
                pipeline.sync()
        return sum(cur.rowcount for cur in curs)

    def one(self, query, params=None):
        rows = self.q(query, params).fetchall()
        s.expect_equal(len(rows), 1, f"rows of {query!r}")
        return rows[0]

    def value(self, query, params=None):
        return self.one(query, params)[0]

    def recover(self):
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.reconnect()
            return
        if self.conn.info.transaction_status not in IDLE_STATES:
            # A command still running (the step timed out): drop the connection.
            self.reconnect()
            return
        try:
            self.conn.rollback()
        except psycopg.Error:
            self.reconnect()

    def reconnect(self):
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()

    # -- steps ---------------------------------------------------------------

    def step_reset(self):
        with self.batch():
            self.q("DELETE FROM leads")
            self.q("DELETE FROM customers")
        self.c.commit()
        s.expect_equal(self.value("SELECT count(*) FROM customers"), 0, "customers after reset")
        self.c.commit()

    def step_insert_customers(self):
        inserted = self.many(INSERT_CUSTOMER, s.CUSTOMER_ROWS)
        self.c.commit()
        s.check_rowcount(inserted, len(s.CUSTOMER_ROWS), "inserted")
        s.expect_equal(
            self.value("SELECT count(*) FROM customers"), len(s.CUSTOMER_ROWS), "customers"
        )
        self.c.commit()

    def step_find_by_email(self):
        s.check_single_customer(self.q(SELECT_CUSTOMER, (s.GRACE,)).fetchall(), s.GRACE)
        self.c.commit()

    def step_in_list(self):
        with self.batch():
            by_in = self.q("SELECT email FROM customers WHERE email IN (%s, %s)", (s.ADA, s.ALAN))
            by_any = self.q("SELECT email FROM customers WHERE email = ANY(%s)", ([s.ADA, s.ALAN],))
            s.check_emails([r[0] for r in by_in.fetchall()], "IN (%s, %s)")
            s.check_emails([r[0] for r in by_any.fetchall()], "= ANY(%s)")
        self.c.commit()

    def step_update_phone(self):
        with self.batch():
            update = self.q("UPDATE customers SET phone = %s WHERE email = %s", (s.NEW_PHONE, s.ADA))
            phone = self.q("SELECT phone FROM customers WHERE email = %s", (s.ADA,))
            rows = phone.fetchall()
            s.check_rowcount(update.rowcount, 1, "updated")
            self.c.commit()
        s.expect_equal(rows, [(s.NEW_PHONE,)], "phone read back")

    def step_join_leads(self):
        inserted = self.many(INSERT_LEAD, s.LEAD_ROWS)
        self.c.commit()
        s.check_rowcount(inserted, len(s.LEAD_ROWS), "leads inserted")
        rows = self.q(
            "SELECT c.name, l.source FROM customers c JOIN leads l ON l.email = c.email"
        ).fetchall()
        s.check_join(rows)
        self.c.commit()

    def step_group_by(self):
        s.check_group(self.q("SELECT email, count(*) FROM leads GROUP BY email").fetchall())
        self.c.commit()

    def step_refused_like(self):
        error, rows = None, None
        try:
            with self.batch():
                rows = self.q(
                    "SELECT name FROM customers WHERE email LIKE %s", (s.LIKE_PATTERN,)
                ).fetchall()
        except psycopg.Error as exc:
            error = exc
        self.c.rollback()
        if error is None:
            raise s.refused_but_succeeded(rows)
        s.check_refused(error.sqlstate, error.diag.message_primary)
        with self.batch():
            s.expect_equal(self.q("SELECT 1").fetchall(), [(1,)], "SELECT 1 after the refusal")
        self.c.commit()

    def step_nulls(self):
        with self.batch():
            phone = self.q("SELECT phone FROM customers WHERE email = %s", (s.ZOE,))
            birth = self.q("SELECT birth_date FROM customers WHERE email = %s", (s.ALAN,))
            count = self.q("SELECT count(*) FROM customers WHERE phone IS NULL")
            results = [phone.fetchall(), birth.fetchall(), count.fetchall()]
        for rows in results:
            s.expect_equal(len(rows), 1, "rows")
        s.check_nulls(results[0][0][0], results[1][0][0], results[2][0][0])
        self.c.commit()

    def step_non_ascii(self):
        with self.batch():
            name = self.q("SELECT name FROM customers WHERE email = %s", (s.ZOE,))
            email = self.q("SELECT email FROM customers WHERE name = %s", (s.NON_ASCII_NAME,))
            names, emails = name.fetchall(), email.fetchall()
        s.expect_equal(len(names), 1, "rows by email")
        s.expect_equal(len(emails), 1, "rows by name")
        s.check_non_ascii(names[0][0], emails[0][0])
        self.c.commit()

    def step_large_value(self):
        with self.batch():
            insert = self.q(
                "INSERT INTO customers (name, email, country) VALUES (%s, %s, 'XX')",
                (s.BIG_NAME, s.BIG_EMAIL),
            )
            self.c.commit()
            name = self.q("SELECT name FROM customers WHERE email = %s", (s.BIG_EMAIL,))
            rows = name.fetchall()
            s.check_rowcount(insert.rowcount, 1, "inserted")
        s.expect_equal(len(rows), 1, "rows")
        s.check_big_name(rows[0][0])
        self.c.commit()

    def step_delete(self):
        with self.batch():
            delete = self.q("DELETE FROM customers WHERE email = %s", (s.BIG_EMAIL,))
            self.c.commit()
            count = self.q("SELECT count(*) FROM customers")
            left = count.fetchall()
            s.check_rowcount(delete.rowcount, 1, "deleted")
        s.expect_equal(left, [(len(s.CUSTOMER_ROWS),)], "customers left")
        self.c.commit()

    def step_direct_no_plaintext(self):
        with self.connect(direct=True) as direct:
            customers = self.q(s.DIRECT_CUSTOMERS_SQL, conn=direct).fetchall()
            leads = self.q(s.DIRECT_LEADS_SQL, conn=direct).fetchall()
            emails = {
                table: [r[0] for r in self.q(query, conn=direct).fetchall()]
                for table, query in s.DIRECT_EMAILS_SQL.items()
            }
        s.check_direct([r[0] for r in customers], [r[0] for r in leads], emails)


if __name__ == "__main__":
    s.main("psycopg3", {m: Mode for m in ("default", "prepare", "binary", "pipeline")})
