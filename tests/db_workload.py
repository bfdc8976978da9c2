# A seeded random workload on a SQLite database, run by tests/db_workload.rs
# in its own process, as the reporting software would write: schema changes
# (CREATE/ALTER/DROP TABLE, CREATE/DROP INDEX), inserts, updates and deletes
# in transactions of 1 to 300 statements, rolled-back transactions, large
# blobs (overflow pages), now and then a VACUUM.
#
# The workload keeps no state of its own between transactions: it reads the
# schema from the database, so a writer killed by the test can be started
# again on the same file.
#
# usage: db_workload.py DB SEED MAX_TX MAX_SECONDS STOP_FILE BLOB_MAX_BYTES PAUSE_MS
#   stops after MAX_TX transactions, after MAX_SECONDS, or once STOP_FILE
#   exists ("-" for none); pauses PAUSE_MS between steps (the rate of the
#   reporting software rather than a flood); prints one JSON line with what
#   it did.

import json
import os
import sqlite3
import sys
import time

import random

db, seed, max_tx, max_seconds, stop_file, blob_max, pause_ms = sys.argv[1:8]
seed, max_tx, max_seconds, blob_max = int(seed), int(max_tx), float(max_seconds), int(blob_max)
pause_s = float(pause_ms) / 1000.0
rnd = random.Random(seed)
started = time.monotonic()
# Large blobs are kept under this many bytes in all, so that a VACUUM
# rewrites a database of a bounded size.
BLOB_BUDGET = 8 * blob_max
BLOB_MIN = min(50_000, blob_max)

c = sqlite3.connect(db, timeout=60, isolation_level=None)
c.execute("PRAGMA busy_timeout=60000")
c.execute("CREATE TABLE IF NOT EXISTS big(id INTEGER PRIMARY KEY, b BLOB, n INTEGER)")
done = {}


def did(what):
    done[what] = done.get(what, 0) + 1


def tables():
    rows = c.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name GLOB 'w*' ORDER BY name"
    ).fetchall()
    return [r[0] for r in rows]


def indexes():
    rows = c.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'index' AND name GLOB 'x*' ORDER BY name"
    ).fetchall()
    return [r[0] for r in rows]


def columns(table):
    return [r[1] for r in c.execute('PRAGMA table_info("%s")' % table)]


def text():
    return "".join(rnd.choice("abcdefghij ") for _ in range(rnd.randint(0, 300)))


def create_table():
    name = "w%d" % rnd.randint(0, 10**9)
    c.execute('CREATE TABLE IF NOT EXISTS "%s"(id INTEGER PRIMARY KEY, a TEXT, n INTEGER, b BLOB)' % name)
    did("create_table")


def dml(n):
    ts = tables()
    if not ts:
        create_table()
        ts = tables()
    for _ in range(n):
        t = rnd.choice(ts)
        k = rnd.random()
        if k < 0.55:
            c.execute(
                'INSERT INTO "%s"(a, n, b) VALUES (?, ?, ?)' % t,
                (text(), rnd.randint(-(10**12), 10**12), rnd.randbytes(rnd.randint(0, 3000))),
            )
            did("insert")
        elif k < 0.8:
            c.execute(
                'UPDATE "%s" SET a = ?, n = n + 1 WHERE id IN (SELECT id FROM "%s" ORDER BY id LIMIT 3 OFFSET ?)'
                % (t, t),
                (text(), rnd.randint(0, 50)),
            )
            did("update")
        else:
            c.execute(
                'DELETE FROM "%s" WHERE id IN (SELECT id FROM "%s" ORDER BY id LIMIT ? OFFSET ?)' % (t, t),
                (rnd.randint(1, 4), rnd.randint(0, 50)),
            )
            did("delete")


def ddl(kind=None):
    ts = tables()
    if kind is None:
        k = rnd.random()
        kind = (
            "create_table" if k < 0.3 or not ts
            else "alter_table" if k < 0.5
            else "create_index" if k < 0.75
            else "drop_index" if k < 0.9
            else "drop_table"
        )
    if kind == "create_table" or not ts:
        create_table()
    elif kind == "alter_table":
        t = rnd.choice(ts)
        col = "c%d" % rnd.randint(0, 10**9)
        if rnd.random() < 0.5:
            c.execute('ALTER TABLE "%s" ADD COLUMN "%s" INTEGER DEFAULT %d' % (t, col, rnd.randint(0, 99)))
        else:
            c.execute('ALTER TABLE "%s" ADD COLUMN "%s" TEXT' % (t, col))
        did("alter_table")
    elif kind == "create_index":
        t = rnd.choice(ts)
        col = rnd.choice(columns(t))
        c.execute('CREATE INDEX IF NOT EXISTS "x%d" ON "%s"("%s")' % (rnd.randint(0, 10**9), t, col))
        did("create_index")
    elif kind == "drop_index":
        while not indexes():
            # An earlier step dropped the tables they were on: make one (and
            # a table first if none is left), so that a drop happens
            # whenever one is asked for.
            ddl("create_index")
        c.execute('DROP INDEX "%s"' % rnd.choice(indexes()))
        did("drop_index")
    else:
        while len(tables()) <= 2:
            create_table()
        c.execute('DROP TABLE "%s"' % rnd.choice(tables()))
        did("drop_table")


def blob():
    c.execute(
        "INSERT INTO big(b, n) VALUES (?, ?)",
        (rnd.randbytes(rnd.randint(BLOB_MIN, blob_max)), rnd.randint(0, 10**6)),
    )
    did("blob")
    # Keep the blobs under their budget: the oldest go first.
    while (c.execute("SELECT coalesce(sum(length(b)), 0) FROM big").fetchone()[0] or 0) > BLOB_BUDGET:
        c.execute("DELETE FROM big WHERE id = (SELECT min(id) FROM big)")
        did("blob_delete")


def blob_rewrite():
    # Rewrites one blob in place with another length: its overflow chain is
    # freed and allocated again.
    ids = [r[0] for r in c.execute("SELECT id FROM big ORDER BY id")]
    if ids:
        c.execute(
            "UPDATE big SET b = ? WHERE id = ?",
            (rnd.randbytes(rnd.randint(BLOB_MIN, blob_max)), rnd.choice(ids)),
        )
        did("blob_rewrite")


def transaction(body, rollback=None):
    # rollback: True or False as the schedule says, None for a random 4%.
    c.execute("BEGIN IMMEDIATE")
    body()
    if rollback is None:
        rollback = rnd.random() < 0.04
    if rollback:
        c.execute("ROLLBACK")
        did("rollback")
    else:
        c.execute("COMMIT")
        did("commit")


def size():
    return rnd.choice([1, 1, 1, 2, 3, 5, 8, 20, 50, 300])


# Every kind of step once first, so that even a short run covers them all.
SCHEDULE = [
    "create", "create", "create", "alter_table", "create_index", "blob", "dml",
    "create_index", "vacuum", "mixed", "blob_rewrite", "drop_index", "drop_table",
    "rollback", "ddl",
]
i = 0
while i < max_tx:
    if time.monotonic() - started > max_seconds:
        break
    if stop_file != "-" and os.path.exists(stop_file):
        break
    # Scheduled steps always commit (except the one that rolls back).
    rb = False if i < len(SCHEDULE) else None
    if i < len(SCHEDULE):
        step = SCHEDULE[i]
    else:
        k = rnd.random()
        step = (
            "vacuum" if k < 0.01
            else "ddl" if k < 0.08
            else "mixed" if k < 0.12
            else "blob" if k < 0.17
            else "blob_rewrite" if k < 0.19
            else "dml"
        )
    if step == "vacuum":
        c.execute("VACUUM")
        did("vacuum")
    elif step == "create":
        transaction(create_table, rb)
    elif step == "ddl":
        transaction(ddl, rb)
    elif step in ("alter_table", "create_index", "drop_index", "drop_table"):
        transaction(lambda: ddl(step), rb)
    elif step == "rollback":
        transaction(lambda: (dml(size()), ddl()), rollback=True)
    elif step == "blob":
        transaction(blob, rb)
    elif step == "blob_rewrite":
        transaction(blob_rewrite, rb)
    elif step == "mixed":
        # Schema changes and data in one transaction.
        transaction(lambda: (dml(size()), ddl(), dml(size())), rb)
    else:
        n = size()
        transaction(lambda: dml(n), rb)
    i += 1
    if pause_s:
        time.sleep(pause_s)
c.close()
done["steps"] = i
print(json.dumps(done), flush=True)
