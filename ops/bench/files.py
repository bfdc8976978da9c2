"""`ops/bench/run files`: tandem's file sets side by side with lsyncd and rsync.

Imported by ops/bench/run (python3 stdlib only). Everything runs on
127.0.0.1 in one temp dir: a tandem pair with one `[[fileset]]`, an rsync
daemon (the "standby" of rsync and lsyncd, reached over TCP like tandem's
replication link), lsyncd processes (rsync mode, delay 0 and the default
delay) and on-demand rsync runs. Measured (see ops/bench/README.md):

1. small-file propagation latency: a 4 KiB file written on the source, the
   clock stops when the copy appears under its final name (inotify on the
   copy's directory) with the right bytes;
2. bytes on the wire for a 1-byte change in place, a 1-byte insert (a new
   version renamed over the file) and a 1 MiB append on a 100 MiB file:
   tandem's replication TCP connection as the kernel counts it (`ss -ti`:
   bytes_acked + bytes_received), rsync's through a counting relay;
3. throughput for 1 GiB of new files (1024 x 1 MiB in 16 directories)
   renamed into the source at once, against `cp -r` + `sync` of the same
   files.

Every process started is killed by its PID at the end, also on error,
Ctrl-C or SIGTERM; every wait is bounded.
"""

import ctypes
import ctypes.util
import hashlib
import http.client
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1 << 20

TARGETS = {
    "small_file_latency_ms_p50_max": 5,
    "small_file_latency_ms_p99_max": 25,
    "insert_1b_in_100mib_wire_bytes_p50_max": 64 * 1024,
    "append_1mib_to_100mib_wire_bytes_p50_max": int(1.1 * MIB),
    "throughput_vs_local_copy_ratio_min": 0.8,
}

REFERENCE = {
    "lsyncd_delay0_small_file_latency_ms_p50": 7.6,
    "lsyncd_delay0_small_file_latency_ms_p99": 44,
    "lsyncd_default_delay_small_file_latency_ms": 15000,
    "rsync_insert_1b_in_100mib_wire_bytes": 123000,
    "rsync_insert_1b_in_100mib_sent_bytes": 51000,
    "rsync_insert_1b_in_100mib_received_bytes": 72000,
}

SMALL_FILE_BYTES = 4096
BIG_FILE_BYTES = 100 * MIB
SET_ROOT = "/srv/bench/set"   # the file set's root; each node under its path_prefix
LSYNCD_DEFAULT_DELAY_S = 15   # default.rsync's delay in lsyncd 2.2

# ------------------------------------------------------------------ helpers --

log = None
percentile = None
free_ports = None
request = None
drop_large_files = None


def wait_until(pred, within_s, what, sleep_s=0.01):
    """Poll `pred` until it returns a truthy value (returned), at most
    `within_s` seconds; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + within_s
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {within_s} s")
        time.sleep(sleep_s)


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read_or_none(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MIB)
            if not b:
                return h.hexdigest()
            h.update(b)


def du_bytes(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


class Inotify:
    """inotify on one directory (ctypes): the monotonic time at which a name
    was renamed into it or closed after writing, with the right bytes."""

    IN_CLOSE_WRITE = 0x8
    IN_MOVED_TO = 0x80
    IN_NONBLOCK = 0o4000
    IN_CLOEXEC = 0o2000000
    HEADER = struct.Struct("iIII")

    def __init__(self, path):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        wd = libc.inotify_add_watch(self.fd, os.fsencode(path),
                                    self.IN_CLOSE_WRITE | self.IN_MOVED_TO)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.path = path

    def _names(self):
        try:
            buf = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        out, i = [], 0
        while i + self.HEADER.size <= len(buf):
            _, _, _, n = self.HEADER.unpack_from(buf, i)
            i += self.HEADER.size
            out.append(buf[i:i + n].rstrip(b"\0").decode("utf-8", "replace"))
            i += n
        return out

    def drain(self):
        for _ in range(1000):
            if not self._names():
                return

    def wait(self, name, want, deadline):
        """Time at which `name` showed up holding `want`, or None at the deadline."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                continue
            t = time.monotonic()
            if name in self._names() and read_or_none(os.path.join(self.path, name)) == want:
                return t

    def close(self):
        os.close(self.fd)


class Relay:
    """A TCP relay on 127.0.0.1 that counts the bytes it carries, both ways
    (used for rsync's daemon connections; every connection is short-lived)."""

    def __init__(self, port, to_port):
        self.sent = 0       # client -> server
        self.received = 0   # server -> client
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.to_port = to_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = port
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def counts(self):
        with self.lock:
            return self.sent, self.received

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                s = socket.create_connection(("127.0.0.1", self.to_port), timeout=5)
            except OSError:
                c.close()
                continue
            for a, b, up in ((c, s, True), (s, c, False)):
                threading.Thread(target=self._pipe, args=(a, b, up), daemon=True).start()

    def _pipe(self, a, b, up):
        a.settimeout(None)
        try:
            while True:
                d = a.recv(1 << 20)
                if not d:
                    break
                b.sendall(d)
                with self.lock:
                    if up:
                        self.sent += len(d)
                    else:
                        self.received += len(d)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.listener.close()
        self.thread.join(2)


# ---------------------------------------------------------------- the rig --

class Rig:
    """Owns the temp dir and every process started (killed by PID at the end)."""

    def __init__(self, keep):
        self.keep = keep
        self.root = tempfile.mkdtemp(prefix="tandem-bench-files-")
        self.procs = []
        self.relays = []
        self.anomalies = []

    def spawn(self, args, **kw):
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def kill(self, p):
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log(f"pid {p.pid} did not exit after SIGKILL")

    def anomaly(self, what):
        self.anomalies.append(what)
        log(f"ANOMALY: {what}")

    def cleanup(self):
        for p in self.procs:
            self.kill(p)
        for r in self.relays:
            r.close()
        if self.keep or self.anomalies:
            # The big data sets go anyway (the disk is small); logs and
            # configs stay.
            for sub in ("staging",):
                shutil.rmtree(os.path.join(self.root, sub), ignore_errors=True)
            drop_large_files(self.root, MIB)
            log(f"kept the temp dir (logs, configs; files >= 1 MiB removed): {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


class TandemPair:
    """Two `tandem run` nodes on 127.0.0.1 with one [[fileset]] (manual
    failover, default timings); each node's copy of the set under its own
    path_prefix."""

    def __init__(self, rig, binary):
        self.rig = rig
        self.binary = binary
        self.dir = os.path.join(rig.root, "tandem")
        os.makedirs(self.dir)
        p = free_ports(6)
        self.control = [p[0], p[1]]
        self.replication = [p[2], p[3]]
        self.names = ["a", "b"]
        self.procs = [None, None]
        key = os.path.join(self.dir, "pair.key")
        subprocess.run([binary, "keygen", "--force", "--out", key], check=True,
                       capture_output=True, timeout=30)
        nodes = ""
        for i, n in enumerate(self.names):
            nodes += f"""
[[node]]
name = "{n}"
control = "127.0.0.1:{p[i]}"
replication = "127.0.0.1:{p[2 + i]}"
heartbeat = ["udp://127.0.0.1:{p[4 + i]}"]
data_dir = "{self.dir}/{n}"
path_prefix = "{self.dir}/{n}-files"
"""
        self.config = os.path.join(self.dir, "tandem.toml")
        with open(self.config, "w") as f:
            f.write(f"""
[pair]
name = "bench-files"
key_file = "{key}"
data_dir = "{self.dir}"
failover = "manual"
{nodes}
[[fileset]]
name = "bench"
root = "{SET_ROOT}"
exclude = ["*.tmp"]
""")
        chk = subprocess.run([binary, "config", "check", self.config], capture_output=True,
                             text=True, timeout=30)
        if chk.returncode != 0:
            raise RuntimeError(f"config check failed: {chk.stderr}")
        for n in self.names:
            os.makedirs(self.root_of(n))

    def root_of(self, name):
        return os.path.join(self.dir, f"{name}-files", SET_ROOT.lstrip("/"))

    def start(self):
        for i, n in enumerate(self.names):
            lf = open(os.path.join(self.dir, f"{n}.log"), "ab")
            self.procs[i] = self.rig.spawn(
                [self.binary, "run", "--config", self.config, "--node", n],
                stdout=lf, stderr=lf, env=dict(os.environ, TANDEM_LOG=os.environ.get("BENCH_TANDEM_LOG", "info")))
            lf.close()

    def stop(self):
        for p in self.procs:
            if p is not None:
                self.rig.kill(p)

    def status(self, i):
        try:
            code, v = request(self.control[i], "GET", "/status", 1.0)
        except (OSError, http.client.HTTPException):
            return None
        return v if code == 200 and isinstance(v, dict) else None

    def fs(self, i):
        s = self.status(i)
        sets = (s or {}).get("filesets") or []
        return sets[0] if sets else None

    def wait_roles(self, within_s=60):
        """Index of the primary once one node is primary, the other standby,
        and the set is in sync on the primary."""
        def ready():
            s = [self.status(0), self.status(1)]
            if None in s:
                return None
            for p in range(2):
                a, b = s[p], s[1 - p]
                if (a.get("role") == "primary" and b.get("role") == "standby"
                        and a.get("replication_connected") and b.get("replication_connected")):
                    f = (a.get("filesets") or [{}])[0]
                    if f.get("mode") == "in sync":
                        return p + 1
            return None
        return wait_until(ready, within_s, "tandem pair primary/standby and in sync", 0.05) - 1

    def wait_synced(self, p, old_root, within_s):
        """Wait until the primary's set has a root other than `old_root`
        and the standby reports that root too. The primary's status."""
        def synced():
            a, b = self.fs(p), self.fs(1 - p)
            if a is None or b is None:
                return None
            ok = (a.get("root_hash") != old_root and a.get("mode") == "in sync"
                  and a.get("peer_root_hash") == a.get("root_hash")
                  and b.get("root_hash") == a.get("root_hash"))
            return a if ok else None
        return wait_until(synced, within_s, "tandem in sync after a change", 0.005)

    def link_bytes(self):
        """(bytes a->b, bytes b->a) on the replication connection, as the
        kernel counts them on node a's socket (a dials b), and the set of
        connections seen (a reconnection shows as a new local port)."""
        out = subprocess.run(["ss", "-tinH", "state", "established",
                              f"( dport = :{self.replication[1]} )"],
                             capture_output=True, text=True, timeout=10).stdout
        sent = recv = 0
        conns = set()
        for m in re.finditer(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:%d\b(.*?)(?=\n\S|\Z)"
                             % self.replication[1], out, re.S):
            conns.add(m.group(1))
            body = m.group(2)
            a = re.search(r"bytes_acked:(\d+)", body)
            r = re.search(r"bytes_received:(\d+)", body)
            sent += int(a.group(1)) if a else 0
            recv += int(r.group(1)) if r else 0
        return sent, recv, conns


class RsyncSide:
    """An rsync daemon on 127.0.0.1 (no chroot, runs as root, one module per
    copy) and a counting relay in front of it."""

    def __init__(self, rig, modules):
        self.rig = rig
        self.dir = os.path.join(rig.root, "rsyncd")
        os.makedirs(self.dir)
        self.port, relay_port = free_ports(2)
        conf = os.path.join(self.dir, "rsyncd.conf")
        with open(conf, "w") as f:
            f.write("use chroot = false\nuid = root\ngid = root\n"
                    f"pid file = {self.dir}/rsyncd.pid\nlog file = {self.dir}/rsyncd.log\n")
            for name, path in modules.items():
                os.makedirs(path, exist_ok=True)
                f.write(f"[{name}]\npath = {path}\nread only = false\n")
        self.proc = rig.spawn(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                               "--address=127.0.0.1", f"--port={self.port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: tcp_open(self.port), 10, "the rsync daemon", 0.05)
        self.relay = Relay(relay_port, self.port)
        rig.relays.append(self.relay)

    def url(self, module, relayed=False):
        return f"rsync://127.0.0.1:{self.relay.port if relayed else self.port}/{module}/"


def tcp_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Lsyncd:
    """lsyncd (default.rsync) from `src` to an rsync daemon module."""

    def __init__(self, rig, tag, src, target, delay):
        self.dir = os.path.join(rig.root, f"lsyncd-{tag}")
        os.makedirs(self.dir)
        cfg = os.path.join(self.dir, "lsyncd.lua")
        delay_line = "" if delay is None else f", delay = {delay}"
        with open(cfg, "w") as f:
            f.write(f"""settings {{ nodaemon = true, logfile = "{self.dir}/lsyncd.log",
  statusFile = "{self.dir}/status.txt" }}
sync {{ default.rsync, source = "{src}", target = "{target}"{delay_line} }}
""")
        self.rig = rig
        self.proc = rig.spawn(["lsyncd", cfg], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(self.dir, "stderr.log"), "wb"))
        # Startup: lsyncd runs one full rsync first; a marker written after
        # it must arrive (a changed file waits for the delay).
        wait_until(lambda: "finished" in (read_or_none(f"{self.dir}/lsyncd.log") or b"").decode(),
                   60, f"lsyncd {tag} startup sync", 0.05)

    def stop(self):
        self.rig.kill(self.proc)


# ---------------------------------------------------------- measurements --

def latency_series(rig, label, src, dst, count, deadline_s, gap_s=0.05, trigger=None,
                   atomic=False):
    """`count` small files written in `src`; latency until each shows up in
    `dst` with its bytes. `trigger`: run after the write (rsync on demand),
    returns a Popen waited for after the file arrived. `atomic`: written as
    `NAME.tmp` (excluded) and renamed to NAME, so the watcher never sees a
    half-written file."""
    ino = Inotify(dst)
    samples, timeouts = [], 0
    t_series = time.monotonic()
    try:
        for i in range(count):
            name = f"lat-{label}-{i:04d}.dat"
            data = os.urandom(SMALL_FILE_BYTES)
            ino.drain()
            t0 = time.monotonic()
            if atomic:
                write_file(os.path.join(src, name + ".tmp"), data)
                os.rename(os.path.join(src, name + ".tmp"), os.path.join(src, name))
            else:
                write_file(os.path.join(src, name), data)
            p = trigger() if trigger else None
            t1 = ino.wait(name, data, t0 + deadline_s)
            if p is not None:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    rig.kill(p)
            if t1 is None:
                timeouts += 1
                rig.anomaly(f"{label}: small file {i} not on the copy within {deadline_s} s")
            else:
                samples.append((t1 - t0) * 1000.0)
            if (i + 1) % 50 == 0 or count <= 5:
                log(f"{label}: {i + 1}/{count} small files, p50 so far "
                    f"{percentile(samples, 50)} ms")
            time.sleep(gap_s)
    finally:
        ino.close()
    slowest = sorted(range(len(samples)), key=lambda k: -samples[k])[:3]
    log(f"{label}: latency p50 {percentile(samples, 50)} ms, p99 {percentile(samples, 99)} ms "
        f"({len(samples)} files, {time.monotonic() - t_series:.1f} s); slowest: "
        + ", ".join(f"#{k} {samples[k]:.1f} ms" for k in slowest))
    return samples, timeouts


def durable_floor(rig, path, n_small, n_big):
    """What durability costs on this disk, measured in the same run: files
    written the way tandem's standby writes them (temp file, fsync, rename,
    fsync of the directory), one after the other. No tool that fsyncs each
    file can beat these figures."""
    os.makedirs(path)
    small, big = os.urandom(SMALL_FILE_BYTES), os.urandom(MIB)

    def one(i, data):
        tmp, final = os.path.join(path, f".t{i}"), os.path.join(path, f"f{i}")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        dfd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    lat = []
    for i in range(n_small):
        t0 = time.monotonic()
        one(i, small)
        lat.append((time.monotonic() - t0) * 1000.0)
    t0 = time.monotonic()
    for i in range(n_big):
        one(n_small + i, big)
    mib_s = n_big / (time.monotonic() - t0)
    shutil.rmtree(path)
    log(f"durable floor: 4 KiB file p50 {percentile(lat, 50)} ms, p99 {percentile(lat, 99)} ms; "
        f"1 MiB files one by one {mib_s:.1f} MiB/s")
    return lat, mib_s


def make_ops(n, seed):
    """The same edits for every system: (kind, position) with a seeded RNG.
    Positions are fractions of the file's length at the time."""
    rng = random.Random(seed)
    ops = []
    for kind in ("change_1b", "insert_1b", "append_1mib"):
        for _ in range(n):
            ops.append((kind, rng.random(), rng.randrange(256)))
    return ops


def apply_op(path, content, op):
    """Apply one edit to the file at `path` whose bytes are `content`
    (a bytearray, kept equal to the file). Change: one byte rewritten in
    place (pwrite). Insert: a new version written beside it and renamed over
    it (how applications replace a file). Append: 1 MiB in one write."""
    kind, frac, byte = op
    if kind == "change_1b":
        pos = int(frac * len(content))
        new = (content[pos] ^ 0xFF) if byte == content[pos] else byte
        if new == content[pos]:
            new ^= 0xFF
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, bytes([new]), pos)
        finally:
            os.close(fd)
        content[pos] = new
    elif kind == "insert_1b":
        pos = int(frac * len(content))
        content[pos:pos] = bytes([byte])
        tmp = path + ".tmp"
        write_file(tmp, content)
        os.rename(tmp, path)
    else:
        more = random.Random(int(frac * 1e9)).randbytes(MIB)
        with open(path, "ab") as f:
            f.write(more)
        content += more


def tandem_bytes(rig, pair, p, ops):
    """Each edit on the primary's 100 MiB file; bytes on the replication
    connection until both nodes report the new root."""
    src = os.path.join(pair.root_of(pair.names[p]), "big.dat")
    dst = os.path.join(pair.root_of(pair.names[1 - p]), "big.dat")
    content = bytearray(random.Random(7).randbytes(BIG_FILE_BYTES))
    old = pair.fs(p)["root_hash"]
    b0 = pair.link_bytes()
    write_file(src + ".tmp", content)
    os.rename(src + ".tmp", src)
    t0 = time.monotonic()
    pair.wait_synced(p, old, 300)
    initial_s = time.monotonic() - t0
    time.sleep(0.3)
    b1 = pair.link_bytes()
    conns = b0[2] | b1[2]
    res = {"initial": (b1[0] - b0[0], b1[1] - b0[1], initial_s)}
    log(f"tandem: 100 MiB file on the standby after {initial_s:.2f} s, "
        f"{(b1[0] - b0[0] + b1[1] - b0[1]) / MIB:.1f} MiB on the wire")
    # The idle rate (keepalives) of the link, over 2 s, to judge the rest by.
    time.sleep(2.0)
    b2 = pair.link_bytes()
    res["idle_bytes_per_s"] = (b2[0] - b1[0] + b2[1] - b1[1]) / 2.0
    for n, op in enumerate(ops):
        st0 = pair.fs(p)
        chunk0 = st0.get("chunk_bytes_sent", 0)
        before = pair.link_bytes()
        t0 = time.monotonic()
        apply_op(src, content, op)
        st1 = pair.wait_synced(p, st0["root_hash"], 120)
        dt = time.monotonic() - t0
        time.sleep(0.1)  # the ack's last bytes
        after = pair.link_bytes()
        conns |= before[2] | after[2]
        sent, recv = after[0] - before[0], after[1] - before[1]
        res.setdefault(op[0], []).append(dict(sent=sent, received=recv, sync_ms=dt * 1000,
                                              chunk_bytes=st1.get("chunk_bytes_sent", 0) - chunk0))
        if (n + 1) % 5 == 0:
            log(f"tandem bytes: {n + 1}/{len(ops)} edits ({op[0]}: {sent + recv} B, {dt * 1000:.0f} ms)")
    if len(conns) > 1:
        rig.anomaly(f"tandem's replication link reconnected during the bytes runs ({conns})")
    same = sha256_file(src) == sha256_file(dst) == hashlib.sha256(content).hexdigest()
    if not same:
        rig.anomaly("tandem: the standby's 100 MiB file differs from the primary's")
    os.unlink(src)
    return res, same


def rsync_bytes(rig, rs, src_dir, module, dst_dir, ops):
    """The same edits on a copy of the file; after each one `rsync -a -I
    --stats` to the daemon through the counting relay."""
    src = os.path.join(src_dir, "big.dat")
    content = bytearray(random.Random(7).randbytes(BIG_FILE_BYTES))
    write_file(src, content)

    def push():
        before = rs.relay.counts()
        t0 = time.monotonic()
        # -I: never skip the file on size and mtime (a 1-byte change keeps
        # the size and can keep the mtime's second); it only turns off the
        # quick check, the delta algorithm is rsync's usual one.
        out = subprocess.run(["rsync", "-a", "-I", "--stats", src, rs.url(module, relayed=True)],
                             capture_output=True, text=True, timeout=300)
        dt = time.monotonic() - t0
        if out.returncode != 0:
            raise RuntimeError(f"rsync failed: {out.stderr}")
        time.sleep(0.05)
        after = rs.relay.counts()
        st = {k: int(v.replace(",", "")) for k, v in
              re.findall(r"Total bytes (sent|received): ([\d,]+)", out.stdout)}
        return dict(sent=after[0] - before[0], received=after[1] - before[1], sync_ms=dt * 1000,
                    stats_sent=st.get("sent"), stats_received=st.get("received"))

    first = push()
    res = {"initial": (first["sent"], first["received"], first["sync_ms"] / 1000)}
    log(f"rsync: 100 MiB file copied in {first['sync_ms'] / 1000:.2f} s")
    for n, op in enumerate(ops):
        apply_op(src, content, op)
        res.setdefault(op[0], []).append(push())
        if (n + 1) % 5 == 0:
            r = res[op[0]][-1]
            log(f"rsync bytes: {n + 1}/{len(ops)} edits ({op[0]}: {r['sent'] + r['received']} B)")
    same = sha256_file(src) == sha256_file(os.path.join(dst_dir, "big.dat"))
    if not same:
        rig.anomaly("rsync: the copy of the 100 MiB file differs")
    os.unlink(src)
    os.unlink(os.path.join(dst_dir, "big.dat"))
    return res, same


def make_staging(path, total_mib):
    """`total_mib` files of 1 MiB of random bytes in 16 directories."""
    per_dir = max(1, total_mib // 16)
    names = []
    rng = random.Random(11)
    for d in range(16):
        os.makedirs(os.path.join(path, f"d{d:02d}"))
        for f in range(per_dir):
            rel = os.path.join(f"d{d:02d}", f"f{f:04d}.bin")
            write_file(os.path.join(path, rel), rng.randbytes(MIB))
            names.append(rel)
    os.sync()
    return names


def count_arrived(dst, names_by_dir):
    n = 0
    for d, want in names_by_dir.items():
        try:
            present = {e for e in os.listdir(os.path.join(dst, d)) if not e.startswith(".")}
        except OSError:
            continue
        n += len(want & present)
    return n


def throughput_run(rig, label, staging, names, src_root, dst_root, start=None, within_s=900):
    """Hard links of the staged files are built beside `src_root` and the
    directory renamed into it at once; the clock stops when every file is
    in `dst_root` under its final name (then every size is checked).
    `start`: called right after the rename (rsync: the copy itself)."""
    link = os.path.join(os.path.dirname(src_root.rstrip("/")), f".bulk-{label}")
    subprocess.run(["cp", "-al", staging, link], check=True, timeout=120)
    os.sync()
    names_by_dir = {}
    for rel in names:
        d, f = os.path.split(rel)
        names_by_dir.setdefault(d, set()).add(f)
    bulk = f"bulk-{label}"
    dst = os.path.join(dst_root, bulk)
    t0 = time.monotonic()
    os.rename(link, os.path.join(src_root, bulk))
    p = start() if start else None
    last_log = t0
    deadline = t0 + within_s
    while True:
        n = count_arrived(dst, names_by_dir)
        now = time.monotonic()
        if n == len(names):
            break
        if now >= deadline:
            rig.anomaly(f"{label}: only {n}/{len(names)} files on the copy after {within_s} s")
            return None
        if now - last_log > 10:
            last_log = now
            log(f"{label}: {n}/{len(names)} files on the copy after {now - t0:.0f} s")
        time.sleep(0.02)
    dt = time.monotonic() - t0
    if p is not None:
        p.wait(timeout=60)
    os.sync()
    dt_sync = time.monotonic() - t0
    bad = [r for r in names if os.path.getsize(os.path.join(dst, r)) != MIB]
    if bad:
        rig.anomaly(f"{label}: {len(bad)} files of the wrong size on the copy")
    mib_s = len(names) / dt
    log(f"{label}: {len(names)} MiB in {dt:.2f} s = {mib_s:.1f} MiB/s "
        f"({len(names) / dt_sync:.1f} MiB/s counting a sync after the last file)")
    return mib_s, len(names) / dt_sync


def cp_run(rig, staging, dst):
    """The plain local copy: cp -r of the same (cached) files, then sync."""
    os.sync()
    t0 = time.monotonic()
    subprocess.run(["cp", "-r", staging, dst], check=True, timeout=600)
    os.sync()
    dt = time.monotonic() - t0
    mib = du_bytes(dst) / MIB
    shutil.rmtree(dst)
    log(f"cp -r + sync: {mib:.0f} MiB in {dt:.2f} s = {mib / dt:.1f} MiB/s")
    return mib / dt


# ------------------------------------------------------------------ main --

def summarize_bytes(out, prefix, res):
    for kind, key in (("change_1b", "change_1b_in_100mib"), ("insert_1b", "insert_1b_in_100mib"),
                      ("append_1mib", "append_1mib_to_100mib")):
        runs = res.get(kind, [])
        tot = [r["sent"] + r["received"] for r in runs]
        out[f"{prefix}_{key}_wire_bytes_p50"] = percentile(tot, 50)
        out[f"{prefix}_{key}_wire_bytes_max"] = percentile(tot, 100)
        out[f"{prefix}_{key}_sent_bytes_p50"] = percentile([r["sent"] for r in runs], 50)
        out[f"{prefix}_{key}_received_bytes_p50"] = percentile([r["received"] for r in runs], 50)
        out[f"{prefix}_{key}_sync_ms_p50"] = percentile([r["sync_ms"] for r in runs], 50)
        if runs and "chunk_bytes" in runs[0]:
            out[f"{prefix}_{key}_chunk_bytes_p50"] = percentile([r["chunk_bytes"] for r in runs], 50)
        if runs and runs[0].get("stats_sent") is not None:
            out[f"{prefix}_{key}_stats_total_bytes_p50"] = percentile(
                [r["stats_sent"] + r["stats_received"] for r in runs], 50)
    s, r, secs = res["initial"]
    out[f"{prefix}_initial_100mib_wire_bytes"] = s + r
    out[f"{prefix}_initial_100mib_s"] = round(secs, 2)


def run_files(args, helpers):
    global log, percentile, free_ports, request, drop_large_files
    log, percentile, free_ports, request = (helpers["log"], helpers["percentile"],
                                            helpers["free_ports"], helpers["request"])
    drop_large_files = helpers["drop_large_files"]
    quick = args.quick
    lat_n = args.latency_files or (50 if quick else 200)
    lat_default_n = args.default_delay_files or (1 if quick else 3)
    rsync_lat_n = max(5, lat_n // 4)
    edits = args.edits or (5 if quick else 20)
    data_mib = args.data_mib or (256 if quick else 1024)
    tp_runs = 1 if quick else 3
    if not (1 <= lat_n <= 2000 and 1 <= edits <= 100 and 16 <= data_mib <= 4096):
        sys.exit("--latency-files 1..2000, --edits 1..100, --data-mib 16..4096")
    missing = [t for t in ("lsyncd", "rsync", "ss") if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing {' '.join(missing)}: apt-get install -y lsyncd rsync iproute2")
    binary = helpers["build"]()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    rig = Rig(args.keep)
    out = {"bench": "files", "quick": quick, "seed": seed,
           "small_file_bytes": SMALL_FILE_BYTES, "big_file_bytes": BIG_FILE_BYTES,
           "edits_per_kind": edits, "throughput_data_bytes": data_mib * MIB}
    try:
        log(f"temp dir {rig.root}; seed {seed}; {lat_n} small files per system, {edits} edits per "
            f"kind, {data_mib} MiB for throughput")
        r = rig.root
        dsts = {m: os.path.join(r, "copies", m) for m in ("lsyncd0", "lsyncd15", "rsync", "bytes")}
        srcs = {m: os.path.join(r, "sources", m) for m in ("lsyncd0", "lsyncd15", "rsync", "bytes")}
        for d in srcs.values():
            os.makedirs(d)
        rs = RsyncSide(rig, dsts)

        pair = TandemPair(rig, binary)
        pair.start()
        p = pair.wait_roles()
        tsrc, tdst = pair.root_of(pair.names[p]), pair.root_of(pair.names[1 - p])
        log(f"tandem pair up, {pair.names[p]} primary")

        # ---- 0. what durability costs on this disk ----------------------
        floor_lat, floor_mib_s = durable_floor(rig, os.path.join(r, "floor"), 50 if quick else 100,
                                               64 if quick else 128)
        out["disk_durable_4kib_file_ms_p50"] = percentile(floor_lat, 50)
        out["disk_durable_4kib_file_ms_p99"] = percentile(floor_lat, 99)
        out["disk_durable_1mib_files_one_by_one_mib_per_s"] = round(floor_mib_s, 1)

        # ---- 1. small-file latency -------------------------------------
        lat = {}
        f0 = (pair.fs(p), pair.fs(1 - p))
        lat["tandem"] = latency_series(rig, "tandem", tsrc, tdst, lat_n, 5.0)
        f1 = (pair.fs(p), pair.fs(1 - p))
        # Where the time goes: rounds the primary started and files the
        # standby wrote (fsync, rename, fsync of the directory) per file.
        out["tandem_small_file_rounds_per_file"] = round(
            (f1[0]["rounds"] - f0[0]["rounds"]) / lat_n, 2)
        out["tandem_small_file_files_written_per_file"] = round(
            (f1[1]["files_written"] - f0[1]["files_written"]) / lat_n, 2)
        lat["tandem_atomic_write"] = latency_series(rig, "tandem_atomic_write", tsrc, tdst,
                                                    max(5, lat_n // 2), 5.0, atomic=True)
        f2 = (pair.fs(p), pair.fs(1 - p))
        out["tandem_atomic_write_small_file_rounds_per_file"] = round(
            (f2[0]["rounds"] - f1[0]["rounds"]) / max(5, lat_n // 2), 2)
        l0 = Lsyncd(rig, "delay0", srcs["lsyncd0"], rs.url("lsyncd0"), 0)
        lat["lsyncd_delay0"] = latency_series(rig, "lsyncd_delay0", srcs["lsyncd0"],
                                              dsts["lsyncd0"], lat_n, 10.0)
        l0.stop()
        # The same lsyncd to a local directory (rsync copies locally, no
        # daemon, no TCP): how the reference figure was taken.
        loc_src, loc_dst = os.path.join(r, "sources", "lsyncd0local"), os.path.join(r, "copies", "lsyncd0local")
        os.makedirs(loc_src)
        os.makedirs(loc_dst)
        l0l = Lsyncd(rig, "delay0-local", loc_src, loc_dst, 0)
        lat["lsyncd_delay0_local_target"] = latency_series(
            rig, "lsyncd_delay0_local_target", loc_src, loc_dst, max(5, lat_n // 2), 10.0)
        l0l.stop()
        lat["rsync_on_demand"] = latency_series(
            rig, "rsync_on_demand", srcs["rsync"], dsts["rsync"], rsync_lat_n, 10.0,
            trigger=lambda: rig.spawn(["rsync", "-a", srcs["rsync"] + "/", rs.url("rsync")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        l15 = Lsyncd(rig, "default", srcs["lsyncd15"], rs.url("lsyncd15"), None)
        lat["lsyncd_default_delay"] = latency_series(
            rig, "lsyncd_default_delay", srcs["lsyncd15"], dsts["lsyncd15"], lat_default_n,
            LSYNCD_DEFAULT_DELAY_S * 3, gap_s=0.2)
        for k, (samples, timeouts) in lat.items():
            out[f"{k}_small_file_latency_ms_p50"] = percentile(samples, 50)
            out[f"{k}_small_file_latency_ms_p99"] = percentile(samples, 99)
            out[f"{k}_small_file_latency_ms_max"] = percentile(samples, 100)
            out[f"{k}_small_file_samples"] = len(samples)
            out[f"{k}_small_file_timeouts"] = timeouts

        # ---- 2. bytes on the wire, 100 MiB file -------------------------
        ops = make_ops(edits, seed)
        tb, tsame = tandem_bytes(rig, pair, p, ops)
        summarize_bytes(out, "tandem", tb)
        out["tandem_link_idle_bytes_per_s"] = round(tb["idle_bytes_per_s"], 1)
        out["tandem_100mib_file_identical"] = tsame
        rb, rsame = rsync_bytes(rig, rs, srcs["bytes"], "bytes", dsts["bytes"], ops)
        summarize_bytes(out, "rsync", rb)
        out["rsync_100mib_file_identical"] = rsame

        # ---- 3. throughput, new files -----------------------------------
        staging = os.path.join(r, "staging")
        log(f"writing {data_mib} MiB of new files to stage")
        names = make_staging(staging, data_mib)
        tp = {"cp": [], "tandem": []}
        for run in range(tp_runs):
            tp["cp"].append(cp_run(rig, staging, os.path.join(r, "cp-copy")))
            label = f"tandem{run}"
            v = throughput_run(rig, label, staging, names, tsrc, tdst)
            if v is not None:
                tp["tandem"].append(v[0])  # tandem fsyncs every file itself
            # Leave the pair empty and in sync for the next run.
            old = pair.fs(p)["root_hash"]
            shutil.rmtree(os.path.join(tsrc, f"bulk-{label}"))
            pair.wait_synced(p, old, 300)
        others = {}
        others["rsync"] = throughput_run(
            rig, "rsync", staging, names, srcs["rsync"], dsts["rsync"],
            start=lambda: rig.spawn(["rsync", "-a", srcs["rsync"] + "/", rs.url("rsync")],
                                    stdout=subprocess.DEVNULL))
        shutil.rmtree(os.path.join(srcs["rsync"], "bulk-rsync"))
        shutil.rmtree(os.path.join(dsts["rsync"], "bulk-rsync"), ignore_errors=True)
        l0 = Lsyncd(rig, "delay0-tp", srcs["lsyncd0"], rs.url("lsyncd0"), 0)
        others["lsyncd_delay0"] = throughput_run(rig, "lsyncd_delay0", staging, names,
                                                 srcs["lsyncd0"], dsts["lsyncd0"])
        l0.stop()
        shutil.rmtree(os.path.join(srcs["lsyncd0"], "bulk-lsyncd_delay0"))
        shutil.rmtree(os.path.join(dsts["lsyncd0"], "bulk-lsyncd_delay0"), ignore_errors=True)
        if not quick:
            others["lsyncd_default_delay"] = throughput_run(
                rig, "lsyncd_default_delay", staging, names, srcs["lsyncd15"], dsts["lsyncd15"])
            shutil.rmtree(os.path.join(srcs["lsyncd15"], "bulk-lsyncd_default_delay"))
        l15.stop()
        shutil.rmtree(os.path.join(dsts["lsyncd15"], "bulk-lsyncd_default_delay"), ignore_errors=True)
        shutil.rmtree(staging)

        cp_mib_s = percentile(tp["cp"], 50)
        t_mib_s = percentile(tp["tandem"], 50)
        out["cp_sync_throughput_mib_per_s_p50"] = cp_mib_s
        out["cp_sync_throughput_mib_per_s_runs"] = [round(x, 1) for x in tp["cp"]]
        out["tandem_throughput_mib_per_s_p50"] = t_mib_s
        out["tandem_throughput_mib_per_s_runs"] = [round(x, 1) for x in tp["tandem"]]
        out["tandem_throughput_vs_cp_ratio"] = (round(t_mib_s / cp_mib_s, 3)
                                                if t_mib_s and cp_mib_s else None)
        for k, v in others.items():
            out[f"{k}_throughput_mib_per_s"] = round(v[0], 1) if v else None
            out[f"{k}_throughput_with_final_sync_mib_per_s"] = round(v[1], 1) if v else None
        pair.stop()

        def ok(v, lim, le=True):
            return v is not None and (v <= lim if le else v >= lim)
        out["targets"] = TARGETS
        out["targets_met"] = {
            "small_file_latency_ms_p50_max": ok(out["tandem_small_file_latency_ms_p50"],
                                                TARGETS["small_file_latency_ms_p50_max"]),
            "small_file_latency_ms_p99_max": ok(out["tandem_small_file_latency_ms_p99"],
                                                TARGETS["small_file_latency_ms_p99_max"])
                                             and out["tandem_small_file_timeouts"] == 0,
            "insert_1b_in_100mib_wire_bytes_p50_max": ok(
                out["tandem_insert_1b_in_100mib_wire_bytes_p50"],
                TARGETS["insert_1b_in_100mib_wire_bytes_p50_max"]),
            "append_1mib_to_100mib_wire_bytes_p50_max": ok(
                out["tandem_append_1mib_to_100mib_wire_bytes_p50"],
                TARGETS["append_1mib_to_100mib_wire_bytes_p50_max"]),
            "throughput_vs_local_copy_ratio_min": ok(out["tandem_throughput_vs_cp_ratio"],
                                                     TARGETS["throughput_vs_local_copy_ratio_min"],
                                                     le=False),
        }
        out["reference"] = REFERENCE
        out["anomalies"] = rig.anomalies
        out["percentile"] = "nearest-rank"
        if rig.anomalies or args.keep:
            out["logs_dir"] = rig.root
    finally:
        rig.cleanup()
    print(json.dumps(out), flush=True)
