#!/usr/bin/python3
"""hardening_daemon.py - goldfinchd under load, on a full disk, and against hostile input.
Each case is one CTest test (tests/hardening.cmake): `hardening_daemon.py CASE`, on its own
daemon, with the client of daemon_lib.py.

  load      >= 64 concurrent clients for a fixed time (HARDENING_LOAD_SECONDS, 30 by
            default) mixing ingests, questions, cancels, abrupt disconnects and status
            requests; every response arrives or errors cleanly, the daemon's RSS stays
            bounded and stops growing, every context committed before and during the load
            reads back (the same greedy answers, the same keys), and the daemon stops cleanly.
  diskfull  the cache directory on an 8 MiB tmpfs (skip, 77, when mount is not permitted),
            filled up during an ingest: the ingest fails with NO_SPACE naming the file, the
            store stays consistent (committed contexts answer as before, no bytes beyond
            the commits), the space comes back, the partial ingest resumes to the key of an
            uninterrupted one, and the store reopens after a restart.
  security  loopback by default and a token beyond it; context names and file paths from
            clients never reach the file system; limits on every size a client controls
            (frames before and after Hello, names, paths, stop strings, token counts,
            strings with NUL bytes, idle connections).

Environment (tests/hardening.cmake sets it): GOLDFINCHD, GF_CONVERT, GF_VOCAB,
GF_PROTO_PYTHON_DIR, HARDENING_WORK (a scratch directory). Exit 0 pass, 1 fail, 77 skip.
"""
import os
import random
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_lib import Conn, Daemon, Fail, check, err_name, pb  # noqa: E402

WORK = os.environ.get("HARDENING_WORK", "/tmp/hardening_work")
EXE = os.environ.get("GOLDFINCHD", "goldfinchd")
PROMPT = "\n\nQuestion: what did the keeper see?\n\nAnswer:"

WORDS = ("the old lighthouse keeper walked along the grey shore where gulls cried over "
         "boats and nets; she remembered winters, letters, a brother at sea, the lamp that "
         "never failed, storms in March, bread and salt, café façade naïve 灯台 守り人 "
         "Ωμέγα — and the quiet after").split()


def path(*p):
    return os.path.join(WORK, *p)


def log(*a):
    print(*a, flush=True)


def make_text(n_words, seed):
    rng = random.Random(seed)
    out = []
    for i in range(n_words):
        out.append(rng.choice(WORDS))
        out.append("\n\n" if rng.random() < 0.02 else " ")
    return "".join(out).encode("utf-8")


def pieces(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]


def ensure_model():
    """The small random model every case uses (made once; cases may run in parallel)."""
    m = path("model.gguf")
    if not os.path.exists(m):
        os.makedirs(WORK, exist_ok=True)
        tmp = "%s.%d.tmp" % (m, os.getpid())
        subprocess.run([os.environ["GF_CONVERT"], "--random", "--layers", "4", "--embd", "64",
                        "--vocab", "65536", "--seed", "9", "--vocab-file", os.environ["GF_VOCAB"],
                        tmp], check=True, capture_output=True)
        os.replace(tmp, m)
    return m


def own_daemon(name, extra=(), **kw):
    wd = path(name)
    shutil.rmtree(wd, ignore_errors=True)
    return Daemon(EXE, ensure_model(), wd, extra=extra, **kw)


def sanitized(exe):
    with open(exe, "rb") as f:
        return b"__asan_init" in f.read()


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def answer(conn, ctx, n):
    ids, _, done = conn.ask(ctx, PROMPT, max_tokens=n, temperature=0.0)
    return ids, done


def wait_idle(conn, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = conn.status()
        if s.jobs_running == 0 and s.jobs_queued == 0:
            return s
        time.sleep(0.1)
    raise Fail("jobs still running %.0f s after the load" % timeout)


# ---- load -------------------------------------------------------------------------------------

class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.n = {}
        self.bad = []
        self.committed = {}  # name -> key, from ContextReady during the load

    def add(self, what, k=1):
        with self.lock:
            self.n[what] = self.n.get(what, 0) + k

    def fail(self, what):
        with self.lock:
            self.bad.append(what)


def first_response(c, id, timeout):
    """The first response to request id that is not progress: (kind, response)."""
    r = c.recv_for(id, timeout)
    check(r is not None, "connection closed while waiting for request %d" % id)
    return r.WhichOneof("body"), r


def case_load():
    n_clients = int(os.environ.get("HARDENING_LOAD_CLIENTS", "64"))
    secs = float(os.environ.get("HARDENING_LOAD_SECONDS", "30"))
    asan = sanitized(EXE)
    if asan:
        # The quarantine holds freed memory back by design: keep it small so that RSS says
        # something about what the daemon keeps.
        os.environ["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=16"
    d = own_daemon("load", ["--max-jobs", "2", "--max-queue", "48", "--tier-mb", "16",
                            "--checkpoint-tokens", "512", "--threads", "1"], metrics=True).start()
    tally = Tally()
    resp_timeout = 180.0
    try:
        c = d.connect()
        c.hello_ok()
        # Contexts committed before the load, and their greedy answers.
        before = {}
        for i, n in enumerate((300, 1200, 3000)):
            name = "before-%d" % i
            ready = c.ingest(pieces(make_text(n, 100 + i), 4096), name=name)
            ids, _ = answer(c, name, 8)
            check(len(ids) > 0, "no answer from %s" % name)
            before[name] = (ready.context.key, ids)
        names = sorted(before)
        base_rss = rss_kib(d.proc.pid)

        samples = []
        stop_sampling = threading.Event()

        def sampler():
            while not stop_sampling.is_set():
                samples.append((time.time(), rss_kib(d.proc.pid)))
                time.sleep(0.2)

        t_start = time.time()
        deadline = t_start + secs
        barrier = threading.Barrier(n_clients)

        def client(k):
            rng = random.Random(1000 + k)
            conn = None
            i = 0
            try:
                barrier.wait(120)
            except threading.BrokenBarrierError:
                tally.fail("client %d: barrier" % k)
                return
            while time.time() < deadline:
                i += 1
                try:
                    if conn is None:
                        conn = d.connect(tcp=bool(k % 2), timeout=resp_timeout)
                        conn.hello_ok()
                    op = rng.choices(("ingest", "ask", "cancel", "disconnect", "status"),
                                     weights=(25, 35, 15, 15, 10))[0]
                    conn = load_op(conn, op, k, i, rng, names, before, tally, resp_timeout)
                except Fail as e:
                    tally.fail("client %d op %d: %s" % (k, i, e))
                    if conn:
                        conn.close()
                    conn = None
                except Exception as e:  # noqa: BLE001 - a socket error, a bad frame...
                    tally.fail("client %d op %d: %r" % (k, i, e))
                    if conn:
                        conn.close()
                    conn = None
            if conn:
                conn.close()

        st = threading.Thread(target=sampler, daemon=True)
        st.start()
        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(secs + 2 * resp_timeout)
            check(not t.is_alive(), "a client is stuck")
        duration = time.time() - t_start
        c2 = d.connect()
        c2.hello_ok()
        final = wait_idle(c2)
        stop_sampling.set()
        st.join()
        check(not tally.bad, "%d bad outcomes, first: %s" % (len(tally.bad), "; ".join(tally.bad[:5])))

        # Memory: bounded, and not growing from the first half of the load to the second.
        mid = t_start + secs / 2
        first = max([r for t, r in samples if t < mid] or [0])
        second = max([r for t, r in samples if t >= mid] or [0])
        peak = max(first, second)
        limit_kib = (2048 if asan else 1024) << 10
        check(peak < limit_kib, "daemon RSS reached %d MiB (limit %d MiB)" % (peak >> 10, limit_kib >> 10))
        check(second <= first * 1.25 + (32 << 10),
              "daemon RSS grew from %d MiB (first half) to %d MiB (second half)" % (first >> 10, second >> 10))

        # Nothing committed is lost: the contexts from before answer as they did, those
        # committed during the load are listed with their keys.
        listed = {x.name: x for x in c2.contexts()}
        for name in names:
            key, ids = before[name]
            check(name in listed and listed[name].key == key and listed[name].sealed,
                  "%s after the load: %s" % (name, listed.get(name)))
            got, _ = answer(c2, name, 8)
            check(got == ids, "%s answers %s after the load, %s before" % (name, got, ids))
        for name, key in tally.committed.items():
            check(name in listed and listed[name].key == key,
                  "%s (committed during the load) is missing or changed" % name)
        counters = metrics(d)
        n = tally.n
        jobs = sum(n.get(k, 0) for k in ("ingest ok", "ingest reused", "ask ok", "cancel generate",
                                          "cancel ingest", "disconnect generate", "disconnect ingest"))
        errors = ", ".join("%s %d" % (k[6:], v) for k, v in sorted(n.items()) if k.startswith("error "))
        log("load: %d clients, %.0f s, %d jobs (ingests %d + %d reused, answers %d, cancels %d, "
            "disconnects %d, status %d), clean errors: %s; RSS %d MiB before, max %d MiB "
            "(first half %d, second %d), %d contexts; server: %d jobs done, %d failed, "
            "%d cancelled, %d rejected, %d tokens ingested, %d generated"
            % (n_clients, duration, jobs, n.get("ingest ok", 0), n.get("ingest reused", 0),
               n.get("ask ok", 0), n.get("cancel generate", 0) + n.get("cancel ingest", 0),
               n.get("disconnect generate", 0) + n.get("disconnect ingest", 0), n.get("status", 0),
               errors or "none", base_rss >> 10, peak >> 10, first >> 10, second >> 10,
               len(listed), counters.get('goldfinch_jobs_total{state="done"}', 0),
               counters.get('goldfinch_jobs_total{state="failed"}', 0),
               counters.get('goldfinch_jobs_total{state="cancelled"}', 0),
               counters.get('goldfinch_jobs_total{state="rejected"}', 0),
               final.tokens_ingested, final.tokens_generated))
        check(counters.get('goldfinch_jobs_total{state="failed"}', 0) == 0,
              "jobs failed under load: see %s" % d.log)
        c.close()
        c2.close()
    finally:
        rc = d.stop(timeout=120)
    check(rc == 0, "exit status %s" % rc)
    d.check_clean_stderr()


def metrics(d):
    body = urllib.request.urlopen("http://%s/metrics" % d.metrics_addr, timeout=30).read().decode()
    vals = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            vals[k] = int(float(v))
    return vals


def clean_error(r, allowed, tally, what):
    """An Error response that is an acceptable outcome under load (the queue is full...)."""
    code = err_name(r.error.code)
    check(code in allowed, "%s: Error %s: %s" % (what, code, r.error.message))
    check(r.error.message and "\n" not in r.error.message, "%s: error message not one line" % what)
    tally.add("error " + code)


def load_op(conn, op, k, i, rng, names, before, tally, timeout):
    """One operation of a load client; returns the connection to go on with (None: closed)."""
    busy = ("ERROR_BUSY",)
    if op == "status":
        conn.status()
        conn.contexts()
        tally.add("status")
        return conn
    if op == "ask":
        name = rng.choice(names)
        n = rng.choice((1, 3, 8))
        gid = conn.generate(name, PROMPT, max_tokens=n, temperature=0.0)
        kind, r = first_response(conn, gid, timeout)
        if kind == "error":
            clean_error(r, busy, tally, "ask")
            time.sleep(rng.uniform(0.05, 0.3))
            return conn
        check(kind in ("token", "done"), "ask: unexpected %s" % kind)
        ids = [r.token.id] if kind == "token" else []
        if kind == "token":
            more, _, done = conn.collect(gid, timeout)
            ids += more
        check(ids == before[name][1][:n], "ask %s: %s, expected %s" % (name, ids, before[name][1][:n]))
        tally.add("ask ok")
        return conn
    if op == "ingest":
        # Mostly new texts; now and then one seen before (the daemon reuses the context).
        if rng.random() < 0.2:
            seed = rng.randrange(40)
            data = make_text(100 + 10 * seed, seed)
        else:
            data = make_text(rng.randrange(40, 900), (k << 16) + i)
        name = "l%d-%d" % (k, i)
        iid = conn.ingest(pieces(data, rng.choice((512, 2048, 8192))), name=name, wait=False)
        kind, r = first_response(conn, iid, timeout)
        if kind == "error":
            clean_error(r, busy, tally, "ingest")
            time.sleep(rng.uniform(0.05, 0.3))
            return conn
        check(kind == "context_ready", "ingest: unexpected %s" % kind)
        tally.add("ingest reused" if r.context_ready.reused else "ingest ok")
        if not r.context_ready.reused:
            with tally.lock:
                tally.committed[name] = r.context_ready.context.key
        return conn
    # cancel / disconnect: a long job, stopped once it runs
    gen = rng.random() < 0.6
    if gen:
        jid = conn.generate(rng.choice(names), PROMPT, max_tokens=100000, temperature=0.9,
                            seed=rng.randrange(1 << 30))
    else:
        jid = conn.request(ingest_start=pb.IngestStart(name="x%d-%d" % (k, i)))
        for p in pieces(make_text(4000, (k << 20) + i), 8192):
            conn.request(id=jid, ingest_data=pb.IngestData(text=p))
    what = "generate" if gen else "ingest"
    r = conn.recv_for(jid, timeout, skip_progress=False)
    check(r is not None, "%s: closed" % op)
    kind = r.WhichOneof("body")
    if kind == "error":
        clean_error(r, busy, tally, op)
        if not gen:
            conn.request(id=jid, ingest_end=pb.IngestEnd())  # dropped quietly
        time.sleep(rng.uniform(0.05, 0.3))
        return conn
    check(kind in ("token", "progress", "done"), "%s: unexpected %s" % (op, kind))
    if op == "disconnect":
        if rng.random() < 0.5:
            # a reset rather than a close
            conn.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        tally.add("disconnect " + what)
        return None
    if kind == "done":  # a generation that ended before the cancel (end of text)
        tally.add("ask ok")
        return conn
    conn.request(cancel=pb.Cancel(target=jid))
    if gen:
        _, _, done = conn.collect(jid, timeout)
        check(done.reason in (pb.DONE_CANCELLED, pb.DONE_STOP), "cancel: Done %s" % done)
    else:
        while True:
            r = conn.recv_for(jid, timeout)
            check(r is not None, "cancel: closed")
            kind = r.WhichOneof("body")
            if kind == "context_ready":  # finished before the cancel arrived
                break
            check(kind == "error" and r.error.code == pb.ERROR_CANCELLED,
                  "cancelled ingest: %s" % r)
            break
        # Cancelled ingests stay resumable; drop them to keep the store small.
        did = conn.drop("x%d-%d" % (k, i))
        r = conn.recv_for(did, timeout)
        check(r is not None and (r.WhichOneof("body") == "dropped" or
                                 (r.WhichOneof("body") == "error" and r.error.code == pb.ERROR_NOT_FOUND)),
              "drop of a cancelled ingest: %s" % r)
    tally.add("cancel " + what)
    return conn


# ---- disk full --------------------------------------------------------------------------------

def dir_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def free_bytes(fs):
    v = os.statvfs(fs)
    return v.f_bavail * v.f_frsize


def fill(fs, leave):
    """Ballast that leaves `leave` bytes free on fs (none left behind by an earlier call)."""
    ballast = os.path.join(fs, "ballast")
    if os.path.exists(ballast):
        os.unlink(ballast)
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, free_bytes(fs) - leave))
        f.flush()
        # tmpfs takes the last pages too: pad up to the byte
        try:
            while free_bytes(fs) > leave:
                f.write(b"\0" * min(4096, free_bytes(fs) - leave))
                f.flush()
        except OSError:
            pass


def check_consistent(c, cache, ref_key, ref_ids, what):
    """The committed context answers as before; the directory holds what the manifest commits
    and nothing more; a context that failed is unsealed."""
    listed = {x.name: x for x in c.contexts()}
    check(listed["committed"].key == ref_key and listed["committed"].sealed,
          "%s: committed context %s" % (what, listed.get("committed")))
    ids, _ = answer(c, "committed", len(ref_ids))
    check(ids == ref_ids, "%s: answer %s, before %s" % (what, ids, ref_ids))
    files = dir_bytes(cache)
    committed = sum(x.disk_bytes for x in listed.values())
    extra = os.path.getsize(os.path.join(cache, "MANIFEST")) + os.path.getsize(os.path.join(cache, "LOCK"))
    check(files == committed + extra, "%s: %d bytes in the cache directory, %d committed + %d manifest and lock"
          % (what, files, committed, extra))
    check(sorted(os.listdir(cache)) == sorted(
        ["MANIFEST", "LOCK"] + [f for f in os.listdir(cache) if re.match(r"c[0-9a-f]{16}\.", f)]),
        "%s: stray files %s" % (what, os.listdir(cache)))
    s = c.status()
    check(s.disk_used_bytes == committed, "%s: status disk_used %d, contexts %d" % (what, s.disk_used_bytes, committed))
    return listed


def case_diskfull():
    if os.geteuid() != 0:
        log("SKIP: mounting a tmpfs needs root")
        sys.exit(77)
    wd = path("diskfull")
    fs = os.path.join(wd, "fs")
    if os.path.ismount(fs):
        subprocess.run(["umount", "-l", fs])
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(fs)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", fs], capture_output=True, text=True)
    if p.returncode != 0:
        log("SKIP: mount -t tmpfs refused: %s" % p.stderr.strip())
        sys.exit(77)
    d = None
    rc = 0
    try:
        cache = os.path.join(fs, "cache")
        d = Daemon(EXE, ensure_model(), wd, cache=cache,
                   extra=["--checkpoint-tokens", "2048", "--threads", "1"]).start()
        c = d.connect()
        c.hello_ok()
        c.ingest(pieces(make_text(400, 7), 4096), name="committed")
        ref_ids, _ = answer(c, "committed", 4)
        ref_key = {x.name: x.key for x in c.contexts()}["committed"]
        big = make_text(60000, 8)
        # The disk fills at a different step each time: pages, index, snapshot or manifest.
        where = []
        # (With this model these land on pages, index, snapshot and manifest writes; a sweep
        # of 0..400 KiB in 4 KiB steps passed too.)
        leaves = tuple(k << 10 for k in (0, 20, 24, 60, 100, 136, 160, 220))
        for n, leave in enumerate(leaves):
            fill(fs, leave)
            free0 = free_bytes(fs)
            name = "filler-%d" % n
            iid = c.ingest(pieces(big, 16384), name=name, wait=False)
            r = c.recv_for(iid, 300)
            check(r is not None and r.WhichOneof("body") == "error" and r.error.code == pb.ERROR_NO_SPACE,
                  "ingest with %d bytes free: %s" % (leave, r))
            msg = r.error.message
            m = re.search(r"c[0-9a-f]{16}\.(pages|idx|blob)|MANIFEST", msg)
            check("\n" not in msg and "No space left" in msg and m is not None,
                  "the NO_SPACE message names no file: %s" % msg)
            where.append(m.group(1) or m.group(0))
            what = "full disk (%d bytes free, %s)" % (leave, where[-1])
            listed = check_consistent(c, cache, ref_key, ref_ids, what)
            check(name not in listed or not listed[name].sealed, "%s: sealed" % what)
            if n + 1 < len(leaves) and name in listed:
                c.expect("dropped", c.drop(name))
            # What the failed ingest held is back (all of it, once its checkpoint is dropped).
            if n + 1 < len(leaves):
                check(abs(free_bytes(fs) - free0) <= 8192, "%s: %d bytes free before the ingest, %d after"
                      % (what, free0, free_bytes(fs)))
        log("the disk filled during an ingest at: %s" % ", ".join(where))
        # A completely full disk: the daemon answers; a drop frees space or says why not.
        fill(fs, 0)
        c.status()
        ready = {x.name: x for x in c.contexts()}
        r = c.recv_for(c.drop("committed"), 60)
        kind = r.WhichOneof("body")
        check(kind == "dropped" or (kind == "error" and r.error.code == pb.ERROR_NO_SPACE and
                                    "\n" not in r.error.message), "drop on a full disk: %s" % r)
        log("drop on a full disk: %s" % (kind if kind == "dropped" else r.error.message))
        os.unlink(os.path.join(fs, "ballast"))
        if kind == "dropped":
            c.ingest(pieces(make_text(400, 7), 4096), name="committed")
        check_consistent(c, cache, ref_key, ref_ids, "after the full disk")
        # Room again: the last partial ingest resumes to the key of an uninterrupted one.
        last = "filler-%d" % (len(leaves) - 1)
        if last in ready:
            resumed = c.ingest([big], name=last, resume=True, skip_to_resume=True)
            check(not isinstance(resumed, pb.Response), "resume after the full disk: %s" % resumed)
        else:
            resumed = c.ingest(pieces(big, 16384), name=last)
        whole = c.ingest(pieces(big, 65536), name="filler-whole")
        check(whole.reused and whole.context.key == resumed.context.key,
              "the resumed context %s differs from an uninterrupted ingest %s"
              % (resumed.context.key, whole.context.key))
        c.close()
        rc = d.stop()
        check(rc == 0, "exit status %s" % rc)
        d.check_clean_stderr()
        # And the store opens again, as it was.
        d.start()
        c = d.connect()
        c.hello_ok()
        listed = check_consistent(c, cache, ref_key, ref_ids, "after a restart")
        check(listed.get(last) and listed[last].sealed, "after a restart: %s" % sorted(listed))
        c.close()
        log("disk full: 8 MiB tmpfs, %d ingests failed with NO_SPACE (%d bytes free down to 0), the store "
            "stayed consistent and gave the space back" % (len(leaves), max(leaves)))
    finally:
        if d is not None and d.proc is not None:
            rc = d.stop()
        subprocess.run(["umount", fs])
    check(rc == 0, "exit status %s" % rc)
    if d is not None:
        d.check_clean_stderr()


# ---- security ---------------------------------------------------------------------------------

def start_fails(args, what):
    p = subprocess.run([EXE, "--model", ensure_model()] + args, capture_output=True, text=True, timeout=120)
    last = p.stderr.strip().split("\n")[-1]
    check(p.returncode != 0 and "cannot start" in last, "%s: exit %d, stderr %r" % (what, p.returncode, p.stderr))
    return last


def store_files_only(cache):
    """Every file of the cache directory is one the store names."""
    pat = re.compile(r"^(MANIFEST|LOCK|c[0-9a-f]{16}\.(pages|idx|blob\.\d+))$")
    for f in os.listdir(cache):
        check(pat.match(f), "unexpected file in the cache directory: %r" % f)


def daemon_fd_limit(d):
    with open("/proc/%d/limits" % d.proc.pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return 0


def tree(root):
    out = set()
    for dp, dn, fn in os.walk(root):
        for f in fn + dn:
            out.add(os.path.relpath(os.path.join(dp, f), root))
    return out


def case_security():
    wd = path("security")
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    model = ensure_model()
    # Loopback by default; beyond it only with a token.
    p = subprocess.run([EXE, "--model", model, "--cache-dir", os.path.join(wd, "c0"), "--print-config"],
                       capture_output=True, text=True)
    check(p.returncode == 0 and "listen = 127.0.0.1:7433" in p.stdout, "default listen: %s" % p.stdout)
    for addr in ("0.0.0.0:0", ":0", "[::]:0"):
        err = start_fails(["--cache-dir", os.path.join(wd, "c1"), "--listen", addr], "--listen " + addr)
        # ([::] may also fail for want of IPv6; it must not start either way)
        check("auth-token-file" in err or addr.startswith("["), "--listen %s without a token: %s" % (addr, err))
    tok = os.path.join(wd, "token")
    with open(tok, "w") as f:
        f.write("hardening-token-%d\n" % os.getpid())
    secret = "hardening-token-%d" % os.getpid()
    d = own_daemon("security/open", ["--auth-token-file", tok, "--listen", "0.0.0.0:0"], tcp=False,
                   unix=True)
    d.start()
    try:
        port = int(re.findall(r"listening on tcp 0\.0\.0\.0:(\d+)", d.log_text())[-1])
        for t, ok in ((None, False), ("", False), (secret + "x", False), (secret[:-1], False),
                      (secret + "\0", False), (secret, True)):
            c = Conn("127.0.0.1:%d" % port, timeout=30)
            try:
                id = c.hello(token=t)
                r = c.recv_for(id, 30)
                if ok:
                    check(r is not None and r.WhichOneof("body") == "hello", "right token refused: %s" % r)
                else:
                    check(r is not None and r.WhichOneof("body") == "error" and
                          r.error.code in (pb.ERROR_UNAUTHENTICATED, pb.ERROR_BAD_REQUEST),
                          "token %r accepted: %s" % (t, r))
            finally:
                c.close()
        # The Unix socket too, and it is not open to other users.
        mode = os.stat(d.sock).st_mode & 0o777
        check(mode == 0o600, "unix socket mode %o" % mode)
        c = d.connect()
        id = c.hello()
        c.expect_error("ERROR_UNAUTHENTICATED", id)
        c.close()
    finally:
        check(d.stop() == 0, "token daemon exit")
    d.check_clean_stderr()

    d = own_daemon("security/d", ["--max-context-tokens", "5000", "--max-frame", "1M"]).start()
    try:
        cache = d.cache
        c = d.connect(timeout=30)
        c.hello_ok()
        secret_file = os.path.join(wd, "secret.txt")
        with open(secret_file, "w") as f:
            f.write("not for clients\n")
        before = tree(wd)
        # Names are labels, never paths: each is refused or stored as it is, found by that
        # name, and no file appears outside the store's own names.
        text = make_text(200, 3)
        accepted = []
        for i, name in enumerate(("../escape", "../../../../tmp/hardening-escape", "/etc/passwd",
                                  "a/b/c", ".", "..", "MANIFEST", "LOCK", "c0000000000000001.pages",
                                  "..\\..\\x", "~root", "$(id)", "name with spaces", "ünïcödé 名前",
                                  "x" * 127)):
            # (a text of its own: the same text again would give back the first context)
            iid = c.ingest(pieces(make_text(200, 300 + i), 4096), name=name, wait=False)
            r = c.recv_for(iid, 120)
            kind = r.WhichOneof("body")
            if kind == "error":
                check(r.error.code == pb.ERROR_BAD_REQUEST, "name %r: %s" % (name, r))
                continue
            check(kind == "context_ready", "name %r: %s" % (name, r))
            accepted.append(name)
            ids, _ = answer(c, name, 2)
            check(len(ids) > 0, "the context named %r does not answer" % name)
        check(len(accepted) >= 10, "only %d harmless names accepted: %s" % (len(accepted), accepted))
        listed = {x.name for x in c.contexts()}
        for name in accepted:
            check(name in listed, "%r not listed as it was given" % name)
        for name in ("x" * 128, "two\nlines", "cr\rhere", "tab\there", "\x1b[31mred", "del\x7f", "",
                     "#12"):
            r = c.expect_error("ERROR_BAD_REQUEST", c.ingest([b"x"], name=name, wait=False))
        # References with control characters name nothing, and the answer stays one line.
        for ref in ("a\nb", "\x1b]0;title\x07", "#1\r"):
            c.expect_error("ERROR_BAD_REQUEST", c.generate(ref, PROMPT, max_tokens=1))
            c.expect_error("ERROR_BAD_REQUEST", c.drop(ref))
        # NUL bytes in a string: refused, not cut short at the NUL.
        r = c.expect_error("ERROR_BAD_REQUEST", c.ingest([text], name="nul\0../escape", wait=False))
        check("NUL" in r.error.message, r.error.message)
        check("nul" not in {x.name for x in c.contexts()}, "a name was cut at its NUL")
        c.expect_error("ERROR_BAD_REQUEST", c.generate("before\0after", PROMPT))
        c.expect_error("ERROR_BAD_REQUEST", c.generate(accepted[-1], "what\0is this"))
        # References that look like paths find nothing and touch nothing.
        for ref in ("../..", "/", "../escape/../../etc/passwd", "MANIFEST/..", "c0000000000000001"):
            if ref in listed:
                continue
            code = "ERROR_BAD_REQUEST" if ref.startswith("#") else "ERROR_NOT_FOUND"
            c.expect_error(code, c.generate(ref, PROMPT, max_tokens=1))
            c.expect_error(code, c.drop(ref))
        c.expect_error("ERROR_NOT_FOUND", c.ingest([b"x"], name="../../etc", resume=True, wait=False))
        # File paths of a codebase are text in the context: never opened, never created.
        fpath = os.path.relpath(secret_file, cache)
        ready = c.ingest([("file", fpath), b"hello\n", ("file", "/etc/shadow"), b"x\n"], name="paths")
        rendered = (b"### File: " + fpath.encode() + b"\nhello\n\n### File: /etc/shadow\nx\n\n")
        plain = c.ingest([rendered], name="paths-plain")
        check(plain.reused and plain.context.key == ready.context.key,
              "a codebase's paths were not taken as text")
        r = c.ingest([("file", "a" * 4097), b"x"], name="longpath", wait=False)
        c.expect_error("ERROR_BAD_REQUEST", r)
        after = tree(wd)
        new = {f for f in after - before if not f.startswith(os.path.relpath(cache, wd) + os.sep)}
        check(not new, "files created outside the cache directory: %s" % sorted(new))
        check(not os.path.exists("/tmp/hardening-escape"), "/tmp/hardening-escape exists")
        store_files_only(cache)

        # Sizes. A frame before Hello is small; after Hello up to --max-frame.
        raw = Conn(d.unix_addr, timeout=30)
        raw.send_raw(struct.pack("<I", 1 << 20) + b"\0" * 1000)
        r = raw.recv(30)
        check(r is not None and r.WhichOneof("body") == "error" and r.error.code == pb.ERROR_TOO_LARGE,
              "a 1 MiB frame before Hello: %s" % r)
        check("Hello" in r.error.message, "the limit before Hello is named: %s" % r.error.message)
        check(raw.recv(30) is None, "open after an oversized frame before Hello")
        raw.close()
        raw = d.connect(timeout=30)
        raw.hello_ok()
        raw.send_raw(struct.pack("<I", (1 << 20) + 1) + b"\0" * 100)
        raw.expect_error("ERROR_TOO_LARGE", 0)
        check(raw.recv(30) is None, "open after an oversized frame")
        raw.close()
        for kw in (dict(stop=["x"] * 17), dict(stop=["y" * 257]), dict(max_tokens=(1 << 20) + 1),
                   dict(max_tokens=0), dict(top_k=1 << 31)):
            c.expect_error("ERROR_BAD_REQUEST", c.generate(accepted[0], PROMPT, **kw))
        long_prompt = ("word " * 6000).strip()
        r = c.expect_error("ERROR_TOO_LARGE", c.generate(accepted[0], long_prompt, max_tokens=1))
        r = c.ingest(pieces(make_text(12000, 4), 65536), name="too-long", wait=False)
        c.expect_error("ERROR_TOO_LARGE", r)
        check("too-long" not in {x.name for x in c.contexts()}, "a context over the limit stays")
        # Hello carrying a huge client string and token: refused by the frame limit before
        # Hello, whatever the fields say.
        big = Conn(d.unix_addr, timeout=30)
        id = big.hello(token="t" * (100 << 10))
        r = big.recv(30)
        check(r is not None and r.WhichOneof("body") == "error" and r.error.code == pb.ERROR_TOO_LARGE,
              "a 100 KiB Hello: %s" % r)
        big.close()
        # Many connections that announce the largest frame and send half of it before Hello
        # cost the daemon nothing (each is refused at its header), and hold nobody up.
        rss0 = rss_kib(d.proc.pid)
        socks = []
        for i in range(200):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(d.sock)
            s.settimeout(10)
            try:
                s.sendall(struct.pack("<I", 1 << 20) + b"\0" * (256 << 10))
            except OSError:
                pass  # refused and closed already
            socks.append(s)
        c.status()
        time.sleep(0.5)
        rss1 = rss_kib(d.proc.pid)
        check(rss1 - rss0 < (24 << 10), "200 half-sent frames cost %d KiB" % (rss1 - rss0))
        for s in socks:
            s.close()
        # A flood of connections: past 4096 open ones the daemon closes new ones at accept
        # (or, with fewer descriptors than that, when it runs out), and keeps serving.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 4096 + 64
        if soft < want + 64 and hard >= want + 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want + 64, hard))
            soft = want + 64
        n_flood = min(want, soft - 64)
        flood = []
        try:
            for i in range(n_flood):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(30)
                s.connect(d.sock)
                flood.append(s)
            c.status()
            if n_flood == want:
                # the last ones were closed by the daemon: they read end of file
                time.sleep(0.5)
                closed = 0
                for s in flood[-32:]:
                    s.settimeout(5)
                    try:
                        closed += s.recv(1) == b""
                    except OSError:
                        closed += 1
                check(closed == 32, "%d of the 32 connections past the limit were closed" % closed)
                check("4096 are open already" in d.log_text() or
                      ("out of file descriptors" in d.log_text() and daemon_fd_limit(d) < want + 16),
                      "the refused connections are not logged")
        finally:
            for s in flood:
                s.close()
        time.sleep(0.5)
        c3 = d.connect(timeout=30)
        c3.hello_ok()
        c3.status()
        c3.close()
        log("connection flood: %d connections opened; the daemon served throughout" % n_flood)
        # Idle connections that never say Hello are closed.
        idle = Conn(d.unix_addr, timeout=60)
        t0 = time.time()
        r = idle.recv(60)
        check(r is None or (r.WhichOneof("body") == "error"), "idle connection got %s" % r)
        check(time.time() - t0 < 59, "an idle connection without Hello stayed open")
        idle.close()
        c.status()
        c.close()
    finally:
        rc = d.stop()
    check(rc == 0, "exit status %s" % rc)
    d.check_clean_stderr()


def main():
    if len(sys.argv) != 2:
        print("usage: hardening_daemon.py CASE", file=sys.stderr)
        return 2
    fn = globals().get("case_" + sys.argv[1])
    if not fn:
        print("no case " + sys.argv[1], file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        fn()
    except Fail as e:
        print("FAIL %s: %s" % (sys.argv[1], e), file=sys.stderr)
        return 1
    finally:
        Daemon.kill_all()
    log("PASS %s (%.1f s)" % (sys.argv[1], time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
