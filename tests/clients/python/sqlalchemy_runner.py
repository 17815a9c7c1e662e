"""The CRM scenario through the SQLAlchemy 2 ORM (postgresql+psycopg dialect).

The mapped classes describe the columns as the application sees them through
pgveil (text and date), not as PostgreSQL stores them. The psycopg dialect
renders bound parameters with casts (`%(email_1)s::VARCHAR`, `::DATE`), and
session.add_all + commit of several rows takes SQLAlchemy's "insertmanyvalues"
path: `INSERT ... SELECT ... FROM (VALUES ...) ... ORDER BY ... RETURNING`.

Mode: orm.
"""

import datetime
import sys
from pathlib import Path
from typing import Optional

import psycopg
from sqlalchemy import (
    ARRAY,
    BigInteger,
    String,
    URL,
    any_,
    bindparam,
    create_engine,
    delete,
    exc,
    func,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenario as s  # noqa: E402

IDLE_STATES = (
    psycopg.pq.TransactionStatus.IDLE,
    psycopg.pq.TransactionStatus.INTRANS,
    psycopg.pq.TransactionStatus.INERROR,
)


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str]
    email: Mapped[str] = mapped_column(unique=True)
    phone: Mapped[Optional[str]]
    birth_date: Mapped[Optional[datetime.date]]
    country: Mapped[Optional[str]]


class Lead(Base):
    __tablename__ = "leads"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    email: Mapped[str]
    source: Mapped[Optional[str]]


def make_engine(direct=False):
    p = s.conn_params(direct)
    url = URL.create(
        "postgresql+psycopg",
        username=p["user"],
        password=p["password"],
        host=p["host"],
        port=p["port"],
        database=p["dbname"],
    )
    return create_engine(url, connect_args={"connect_timeout": 10})


class Mode:
    def __init__(self, mode):
        self.mode = mode
        self.engine = None
        self.session = None

    @property
    def db(self):
        if self.engine is None:
            self.engine = make_engine()
        if self.session is None:
            self.session = Session(self.engine)
        return self.session

    def recover(self):
        if self.session is not None:
            try:
                # A command still running (the step timed out): drop the
                # connection rather than wait for it.
                dbapi = self.session.connection().connection.dbapi_connection
                status = dbapi.info.transaction_status if dbapi is not None else None
                if status not in IDLE_STATES:
                    self.session.connection().invalidate()
            except Exception:  # noqa: BLE001
                pass
            try:
                self.session.rollback()
                self.session.close()
            except Exception:  # noqa: BLE001
                pass
        self.session = None
        if self.engine is not None:
            self.engine.dispose()  # drop pooled connections that may be broken

    def close(self):
        if self.session is not None:
            self.session.close()
        if self.engine is not None:
            self.engine.dispose()

    # -- steps ---------------------------------------------------------------

    def step_reset(self):
        self.db.execute(delete(Lead))
        self.db.execute(delete(Customer))
        self.db.commit()
        s.expect_equal(self.db.scalar(select(func.count()).select_from(Customer)), 0, "customers")
        self.db.commit()

    def step_insert_customers(self):
        customers = [Customer(**c) for c in s.CUSTOMERS]
        self.db.add_all(customers)
        self.db.commit()
        s.expect(all(c.id is not None for c in customers), "a customer got no id back")
        s.expect_equal(len({c.id for c in customers}), len(customers), "distinct ids returned")
        s.expect_equal(
            self.db.scalar(select(func.count()).select_from(Customer)), len(s.CUSTOMERS), "customers"
        )
        self.db.commit()

    def step_find_by_email(self):
        found = self.db.scalars(select(Customer).where(Customer.email == s.GRACE)).all()
        s.expect_equal(len(found), 1, "customers found")
        c = found[0]
        s.check_customer((c.name, c.email, c.phone, c.birth_date, c.country), s.GRACE)
        self.db.commit()

    def step_in_list(self):
        by_in = self.db.scalars(select(Customer.email).where(Customer.email.in_(s.EXPECTED_IN))).all()
        s.check_emails(by_in, "email.in_([...])")
        emails = bindparam("emails", list(s.EXPECTED_IN), type_=ARRAY(String))
        by_any = self.db.scalars(select(Customer.email).where(Customer.email == any_(emails))).all()
        s.check_emails(by_any, "email == any_(ARRAY)")
        self.db.commit()

    def step_update_phone(self):
        ada = self.db.scalars(select(Customer).where(Customer.email == s.ADA)).one()
        ada.phone = s.NEW_PHONE
        self.db.commit()  # the ORM checks that the UPDATE matched exactly 1 row
        phone = self.db.scalars(select(Customer.phone).where(Customer.email == s.ADA)).one()
        s.expect_equal(phone, s.NEW_PHONE, "phone read back")
        self.db.commit()

    def step_join_leads(self):
        self.db.add_all([Lead(**lead) for lead in s.LEADS])
        self.db.commit()
        s.expect_equal(
            self.db.scalar(select(func.count()).select_from(Lead)), len(s.LEADS), "leads"
        )
        rows = self.db.execute(
            select(Customer.name, Lead.source).join(Lead, Lead.email == Customer.email)
        ).all()
        s.check_join(rows)
        self.db.commit()

    def step_group_by(self):
        rows = self.db.execute(select(Lead.email, func.count()).group_by(Lead.email)).all()
        s.check_group(rows)
        self.db.commit()

    def step_refused_like(self):
        error, rows = None, None
        try:
            rows = self.db.scalars(
                select(Customer.name).where(Customer.email.like(s.LIKE_PATTERN))
            ).all()
        except exc.DBAPIError as e:
            error = e
        self.db.rollback()
        if error is None:
            raise s.refused_but_succeeded(rows)
        orig = error.orig
        s.check_refused(
            getattr(orig, "sqlstate", None),
            orig.diag.message_primary if hasattr(orig, "diag") else str(orig),
        )
        s.expect_equal(self.db.scalar(text("SELECT 1")), 1, "SELECT 1 after the refusal")
        self.db.commit()

    def step_nulls(self):
        zoe = self.db.scalars(select(Customer).where(Customer.email == s.ZOE)).one()
        alan = self.db.scalars(select(Customer).where(Customer.email == s.ALAN)).one()
        no_phone = self.db.scalar(
            select(func.count()).select_from(Customer).where(Customer.phone.is_(None))
        )
        s.check_nulls(zoe.phone, alan.birth_date, no_phone)
        self.db.commit()

    def step_non_ascii(self):
        name = self.db.scalars(select(Customer.name).where(Customer.email == s.ZOE)).one()
        email = self.db.scalars(
            select(Customer.email).where(Customer.name == s.NON_ASCII_NAME)
        ).one()
        s.check_non_ascii(name, email)
        self.db.commit()

    def step_large_value(self):
        big = Customer(name=s.BIG_NAME, email=s.BIG_EMAIL, country=s.BIG_COUNTRY)
        self.db.add(big)
        self.db.commit()
        s.expect(big.id is not None, "no id returned for the large row")
        self.db.expunge_all()  # read it back from the server, not the identity map
        name = self.db.scalars(select(Customer.name).where(Customer.email == s.BIG_EMAIL)).one()
        s.check_big_name(name)
        self.db.commit()

    def step_delete(self):
        big = self.db.scalars(select(Customer).where(Customer.email == s.BIG_EMAIL)).one()
        self.db.delete(big)
        self.db.commit()  # the ORM checks that the DELETE matched exactly 1 row
        s.expect_equal(
            self.db.scalar(select(func.count()).select_from(Customer)), len(s.CUSTOMERS), "customers left"
        )
        self.db.commit()

    def step_direct_no_plaintext(self):
        engine = make_engine(direct=True)
        try:
            with engine.connect() as conn:
                customers = conn.scalars(text(s.DIRECT_CUSTOMERS_SQL)).all()
                leads = conn.scalars(text(s.DIRECT_LEADS_SQL)).all()
                emails = {
                    table: conn.scalars(text(query)).all()
                    for table, query in s.DIRECT_EMAILS_SQL.items()
                }
        finally:
            engine.dispose()
        s.check_direct(customers, leads, emails)


if __name__ == "__main__":
    s.main("sqlalchemy", {"orm": Mode})
