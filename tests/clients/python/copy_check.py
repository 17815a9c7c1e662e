"""psycopg 3's cursor.copy() through pgveil: rows written and read in text
and binary, checked against what went in. Run by tests/copy.rs with the
connection in PGVEIL_HOST/PGVEIL_PORT/PGUSER/PGPASSWORD/PGDATABASE.
Prints `ok` on success; raises otherwise."""

import datetime
import os

import psycopg


def main():
    conn = psycopg.connect(
        host=os.environ["PGVEIL_HOST"],
        port=os.environ["PGVEIL_PORT"],
        user=os.environ["PGUSER"],
        password=os.environ["PGPASSWORD"],
        dbname=os.environ["PGDATABASE"],
    )
    want = [
        (i, f"Nâme {i}, \"q\"\t{i}", f"py{i}@example.com", datetime.date(1990, 1, 1) + datetime.timedelta(days=i))
        for i in range(1, 301)
    ]
    with conn.cursor() as cur:
        with cur.copy("COPY customers (id, name, email, birth_date) FROM STDIN") as copy:
            for row in want[:150]:
                copy.write_row(row)
        with cur.copy("COPY customers (id, name, email, birth_date) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "text", "date"])
            for row in want[150:]:
                copy.write_row(row)
        conn.commit()
        with cur.copy("COPY (SELECT id, name, email, birth_date FROM customers ORDER BY id) TO STDOUT") as copy:
            copy.set_types(["int4", "text", "text", "date"])
            got = list(copy.rows())
        assert got == want, (got[:3], want[:3])
        with cur.copy("COPY customers (id, name, email, birth_date) TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "text", "date"])
            got = sorted(copy.rows())
        assert got == want, (got[:3], want[:3])
        cur.execute("SELECT name FROM customers WHERE email = %s", ("py7@example.com",))
        assert cur.fetchone()[0] == want[6][1]
    conn.close()
    print("ok")


if __name__ == "__main__":
    main()
