"""A report sender for tests/db_noresend.rs: what the reporting software's
sender does, against one node's copy of the replicated database.

    noresend_sender.py DB CONTROL_ADDR RECEIVER_PORT SENDER_NO BARRIER_TIMEOUT_MS

It takes reports from `outbox(id, body, state)` in id order, one at a time:

1. Mark the report 'sending' and commit; call the barrier. Once the barrier
   returns, the standby holds the mark: whichever node is primary next knows
   that this report may have gone out.
2. Take the write lock (BEGIN IMMEDIATE) and, holding it, call the barrier
   again. With nothing new committed it returns at once if, and only if, this
   node is still primary. Holding the lock keeps tandem's fence out, so the
   node cannot finish a switchover (whose fence waits for the write lock)
   between this check and the commit below.
3. Send the report to the receiver and wait for its acknowledgement.
4. Mark it 'sent', commit (releasing the lock) and call the barrier.

Without step 2's lock a graceful switchover could fence the database
between the send and the 'sent' mark, and the next primary would resend a
report that went out: a duplicate across a graceful switchover. Without its
barrier, a sender that outlived its node's demotion could slip into the gap
between two of the replica's applies and send from a standby.

On start a report found in 'sending' is the one that may have been in
flight when the previous sender stopped; it is sent again (the receiver may
then see it twice: the one duplicate a kill -9 may cause). Each such report
is printed as `resend ID`.

Exit codes: 0 the outbox is empty; 3 the barrier failed or was refused (this
node is not primary, or the standby did not acknowledge in time); 4 a write
was refused (the copy is fenced: "database is locked"); 5 still running after
RUN_SECONDS_MAX. Anything but 0, 3 and 4 is a failure of the test.
"""

import http.client
import socket
import sqlite3
import sys
import time

EXIT_DONE, EXIT_BARRIER, EXIT_FENCED, EXIT_TOO_LONG = 0, 3, 4, 5
RUN_SECONDS_MAX = 300


def main():
    db, control, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sender_no, barrier_ms = int(sys.argv[4]), int(sys.argv[5])
    host, control_port = control.rsplit(":", 1)

    def say(line):
        print(line, flush=True)

    def barrier():
        c = http.client.HTTPConnection(host, int(control_port), timeout=barrier_ms / 1000 + 10)
        try:
            c.request("POST", "/barrier?db=hydro&timeout_ms=%d" % barrier_ms)
            r = c.getresponse()
            body = r.read().decode(errors="replace")
        except OSError as e:
            say("stop barrier unreachable: %s" % e)
            sys.exit(EXIT_BARRIER)
        finally:
            c.close()
        if r.status != 200:
            say("stop barrier %d: %s" % (r.status, body.strip()))
            sys.exit(EXIT_BARRIER)

    # A short busy timeout: a fenced copy refuses writes with "database is
    # locked" soon, and that ends this sender.
    conn = sqlite3.connect(db, timeout=2.0, isolation_level=None)

    def write(sql, *args):
        try:
            conn.execute(sql, args)
        except sqlite3.OperationalError as e:
            say("stop fenced: %s" % e)
            sys.exit(EXIT_FENCED)

    receiver = socket.create_connection(("127.0.0.1", port), timeout=30)
    receiver.sendall(b"sender %d\n" % sender_no)
    replies = receiver.makefile("rb")
    say("start")
    deadline = time.monotonic() + RUN_SECONDS_MAX
    while True:
        if time.monotonic() > deadline:
            say("stop after %d s" % RUN_SECONDS_MAX)
            sys.exit(EXIT_TOO_LONG)
        row = conn.execute(
            "SELECT id, body, state FROM outbox WHERE state IN ('pending', 'sending') "
            "ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None:
            say("done")
            sys.exit(EXIT_DONE)
        rid, body, state = row
        if state == "sending":
            say("resend %d" % rid)
        else:
            write("BEGIN IMMEDIATE")
            write("UPDATE outbox SET state = 'sending' WHERE id = ?", rid)
            write("COMMIT")
        barrier()

        write("BEGIN IMMEDIATE")
        barrier()
        receiver.sendall(b"report %d %s\n" % (rid, body.encode()))
        reply = replies.readline()
        if reply != b"ok %d\n" % rid:
            say("receiver answered %r" % reply)
            sys.exit(1)
        write("UPDATE outbox SET state = 'sent' WHERE id = ?", rid)
        write("COMMIT")
        barrier()


if __name__ == "__main__":
    main()
