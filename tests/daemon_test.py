#!/usr/bin/python3
"""daemon_test.py - goldfinchd end to end, over the wire, with the Python client of
daemon_lib.py. Each case is one CTest test: `daemon_test.py CASE`; `setup` makes the model,
the texts and the reference answers (tests/daemon_ref.c, and gf-run when built) and starts
the shared daemon; `cleanup` stops it with SIGTERM and checks it exits 0 with a clean log.

Environment (tests/daemon.cmake sets it): GOLDFINCHD, GF_CONVERT, DAEMON_REF, GF_RUN
(optional), GF_VOCAB, GF_PROTO_PYTHON_DIR, DAEMON_WORK (a scratch directory).
Exit status: 0 pass, 1 fail, 77 skip.
"""
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_lib import Conn, Daemon, Fail, check, pb  # noqa: E402

WORK = os.environ.get("DAEMON_WORK", "/tmp/daemon_work")
EXE = os.environ.get("GOLDFINCHD", "goldfinchd")
PROMPT = "\n\nQuestion: what happens to the old lighthouse keeper?\n\nAnswer:"
STATE = os.path.join(WORK, "state.json")


def path(*p):
    return os.path.join(WORK, *p)


def log(*a):
    print(*a, flush=True)


# ---- inputs --------------------------------------------------------------------------------

WORDS = ("the old lighthouse keeper walked along the grey shore where gulls cried over "
         "boats and nets; she remembered winters, letters, a brother at sea, the lamp that "
         "never failed, storms in March, bread and salt, café façade naïve 灯台 守り人 "
         "Ωμέγα — and the quiet after").split()


def make_text(n_words, seed):
    rng = random.Random(seed)
    out, line = [], []
    for i in range(n_words):
        line.append(rng.choice(WORDS))
        if len(line) > 12 and rng.random() < 0.2:
            out.append(" ".join(line) + ".")
            line = []
            if rng.random() < 0.15:
                out.append("\n\n")
            else:
                out.append(" ")
    out.append(" ".join(line) + ".\n")
    return "".join(out).encode("utf-8")


CODEBASE = {
    "README.md": "# tiny\nA tiny project about lighthouses.\n",
    "src/main.c": "#include \"lamp.h\"\nint main(void) { return lamp_on(); }\n",
    "src/lamp/lamp.h": "int lamp_on(void);\n",
    "src/lamp/lamp.c": "int lamp_on(void) { return 0; } /* always lit */\n",
    "docs/deep/er/notes.txt": "Keeper's log: 灯台 lit at dusk.\n" * 20,
}


def render_codebase():
    """The stream the daemon must build from FileStart pieces (protocol/README.md)."""
    out = b""
    for p in sorted(CODEBASE):
        out += b"### File: " + p.encode() + b"\n" + CODEBASE[p].encode() + b"\n"
    return out


def run_ref(cache, text_path, prompt=None, max_tokens=0, temperature=0.0, seed=0):
    args = [os.environ["DAEMON_REF"], path("model.gguf"), cache, text_path]
    if prompt is not None:
        args += [prompt, str(max_tokens), repr(temperature), str(seed)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    r = {}
    for line in out.splitlines():
        k, _, v = line.partition(" ")
        r[k] = v
    res = {"key": r["key"], "tokens": int(r["tokens"])}
    if "answer" in r:
        res["answer"] = [int(x) for x in r["answer"].split()]
    return res


def state():
    with open(STATE) as f:
        return json.load(f)


def shared():
    """A connection to the shared daemon (after Hello) and the state."""
    st = state()
    c = Conn("unix:" + st["sock"])
    c.hello_ok()
    return c, st


def book_pieces(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]


# ---- setup / cleanup ----------------------------------------------------------------------

def case_setup():
    if os.path.isdir(WORK):
        old = os.path.join(WORK, "state.json")
        if os.path.exists(old):  # a daemon left by an interrupted run
            try:
                os.kill(json.load(open(old))["pid"], signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass
        shutil.rmtree(WORK)
    os.makedirs(WORK)
    subprocess.run([os.environ["GF_CONVERT"], "--random", "--layers", "3", "--embd", "64",
                    "--vocab", "65536", "--seed", "11", "--vocab-file", os.environ["GF_VOCAB"],
                    path("model.gguf")], check=True, capture_output=True)
    texts = {"book": make_text(3000, 1), "big": make_text(12000, 2), "small": make_text(300, 3)}
    for k, v in texts.items():
        with open(path(k + ".txt"), "wb") as f:
            f.write(v)
    with open(path("codebase.txt"), "wb") as f:
        f.write(render_codebase())
    refs = {}
    refs["book"] = run_ref(path("ref_book"), path("book.txt"), PROMPT, 24, 0.0, 0)
    refs["book_t"] = run_ref(path("ref_book_t"), path("book.txt"), PROMPT, 16, 0.8, 42)
    refs["big"] = run_ref(path("ref_big"), path("big.txt"))
    refs["small"] = run_ref(path("ref_small"), path("small.txt"), PROMPT, 8, 0.0, 0)
    refs["codebase"] = run_ref(path("ref_code"), path("codebase.txt"), PROMPT, 12, 0.0, 0)
    gf_run = os.environ.get("GF_RUN")
    if gf_run and os.path.exists(gf_run):
        # The same question through gf-run: its answer text must equal the daemon's.
        base = [gf_run, "--model", path("model.gguf"), "--cache-dir", path("ref_gfrun")]
        with open(path("book.txt"), "rb") as bf:  # stdin: the text as it is, no file header
            subprocess.run(base + ["ingest", "--name", "book", "-"], stdin=bf, check=True,
                           capture_output=True)
        out = subprocess.run(base + ["ask", "book", PROMPT, "--temperature", "0",
                                     "--max-tokens", "24"], check=True, capture_output=True).stdout
        refs["gf_run_text"] = out.hex()
    with open(path("refs.json"), "w") as f:
        json.dump(refs, f)
    d = Daemon(EXE, path("model.gguf"), path("shared"), metrics=True,
               extra=["--max-queue", "32", "--tier-mb", "32"]).start()
    st = {"pid": d.proc.pid, "sock": d.sock, "tcp": d.tcp_addr, "metrics": d.metrics_addr,
          "log": d.log, "workdir": d.workdir}
    with open(STATE, "w") as f:  # written now, so that cleanup stops it whatever happens
        json.dump(st, f)
    # The book every case of the shared daemon reads; sent in 1000-byte pieces.
    c = d.connect()
    c.hello_ok()
    ready = c.ingest(book_pieces(texts["book"], 1000), name="book")
    check(ready.context.key == refs["book"]["key"], "book key %s, engine gives %s"
          % (ready.context.key, refs["book"]["key"]))
    c.close()
    st["book_serial"] = ready.context.serial
    with open(STATE, "w") as f:
        json.dump(st, f)
    log("shared daemon pid %d on %s and %s" % (d.proc.pid, d.unix_addr, d.tcp_addr))


def case_cleanup():
    st = state()
    pid = st["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            wpid, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            # Not our child (setup ran in another process): watch /proc instead.
            if not os.path.exists("/proc/%d" % pid):
                break
            time.sleep(0.05)
            continue
        if wpid:
            break
        time.sleep(0.05)
    else:
        raise Fail("shared daemon did not stop within 60 s of SIGTERM")
    text = open(st["log"]).read()
    check(text.rstrip().endswith("exit 0"), "shared daemon did not log a clean exit:\n" + text[-1500:])
    stderr = os.path.join(st["workdir"], "daemon.stderr")
    if os.path.exists(stderr):
        err = open(stderr, errors="replace").read()
        for bad in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
            check(bad not in err, "sanitizer report:\n" + err[-4000:])


# ---- cases on the shared daemon -------------------------------------------------------------

def case_hello():
    st = state()
    for addr in ("unix:" + st["sock"], st["tcp"]):
        c = Conn(addr)
        h = c.hello_ok()
        check(h.major == 1 and h.model.n_layer == 3 and h.model.n_embd == 64, "HelloReply %s" % h)
        check(h.max_frame == 16 << 20 and h.ranks == 1, "HelloReply limits %s" % h)
        id = c.hello()
        c.expect_error("ERROR_BAD_REQUEST", id)  # a second Hello
        c.close()
    # A request before Hello: refused, the connection stays usable.
    c = Conn("unix:" + st["sock"])
    id = c.request(status=pb.StatusRequest())
    c.expect_error("ERROR_BAD_REQUEST", id)
    c.hello_ok()
    c.status()
    c.close()
    # Another major version: VERSION, then the server closes.
    c = Conn("unix:" + st["sock"])
    id = c.hello(major=2)
    r = c.expect_error("ERROR_VERSION", id)
    check("speaks 1.3" in r.error.message, "version error names ours: " + r.error.message)
    check(c.recv(10) is None, "connection still open after a version mismatch")
    # Same major, newer minor: accepted.
    c = Conn(st["tcp"])
    id = c.hello(minor=7)
    c.expect("hello", id)
    c.close()


def case_ingest_generate():
    c, st = shared()
    refs = json.load(open(path("refs.json")))
    book = open(path("book.txt"), "rb").read()
    # The same text in other pieces: the same tokens, so the stored context is reused.
    ready = c.ingest(book_pieces(book, 333), name="book-again", total=len(book))
    check(ready.reused and ready.context.key == refs["book"]["key"],
          "re-ingest in other pieces: reused %s key %s" % (ready.reused, ready.context.key))
    check(ready.context.tokens == refs["book"]["tokens"], "tokens %d vs %d"
          % (ready.context.tokens, refs["book"]["tokens"]))
    # Greedy: the tokens the engine gives for the same context and question.
    for ref in ("book", "#%d" % st["book_serial"], refs["book"]["key"][:10]):
        ids, text, done = c.ask(ref, PROMPT, max_tokens=24, temperature=0.0)
        check(ids == refs["book"]["answer"], "greedy answer on %s: %s, engine: %s"
              % (ref, ids, refs["book"]["answer"]))
        u = done.usage
        check(u.cached_tokens == refs["book"]["tokens"], "cached_tokens %d" % u.cached_tokens)
        check(u.completion_tokens == len(ids) and u.prompt_tokens > 0, "usage %s" % u)
        check(u.time_to_first_token_ms > 0 and u.decode_ms > 0, "timings %s" % u)
        check(done.reason == (pb.DONE_LENGTH if len(ids) == 24 else pb.DONE_STOP), "reason")
    if "gf_run_text" in refs:
        check(text == bytes.fromhex(refs["gf_run_text"]), "daemon text %r, gf-run %r"
              % (text, bytes.fromhex(refs["gf_run_text"])))
        log("answer text equals gf-run ask's")
    # Seeded sampling: same seed, same tokens.
    ids, _, _ = c.ask("book", PROMPT, max_tokens=16, temperature=0.8, seed=42)
    check(ids == refs["book_t"]["answer"], "seeded answer %s, engine %s" % (ids, refs["book_t"]["answer"]))
    # Stop strings: the answer ends before the first one, even when it spans tokens (the
    # server holds back text that may begin one).
    gid = c.generate("book", PROMPT, max_tokens=24, temperature=0.0)
    pieces = []
    while True:
        r = c.recv_for(gid)
        if r.WhichOneof("body") != "token":
            break
        pieces.append(r.token.text)
    text = b"".join(pieces)
    tried = 0
    for k in range(1, len(pieces) - 1):
        a, b = pieces[k], pieces[k + 1]
        if len(a) < 2 or len(b) < 2:
            continue
        stop = a[-2:] + b[:2]
        try:
            stop_s = stop.decode("utf-8")
        except UnicodeDecodeError:
            continue
        ids2, text2, done2 = c.ask("book", PROMPT, max_tokens=24, temperature=0.0,
                                   stop=["never-appears", stop_s])
        check(done2.reason == pb.DONE_STOP, "stop string %r did not stop: %s" % (stop_s, done2))
        check(text2 == text[:text.index(stop)], "text before the stop %r: %r of %r" % (stop_s, text2, text))
        check(ids2 == refs["book"]["answer"][:len(ids2)], "tokens up to the stop")
        tried += 1
        break
    check(tried, "no token pair to build a stop string from: %r" % pieces)
    c.close()


def case_codebase():
    c, st = shared()
    refs = json.load(open(path("refs.json")))
    pieces = []
    for p in sorted(CODEBASE):
        pieces.append(("file", p))
        data = CODEBASE[p].encode()
        pieces += [data[i:i + 17] for i in range(0, len(data), 17)]
    ready = c.ingest(pieces, name="codebase")
    check(ready.context.key == refs["codebase"]["key"], "codebase key %s, engine on the rendered "
          "tree gives %s" % (ready.context.key, refs["codebase"]["key"]))
    ids, _, _ = c.ask("codebase", PROMPT, max_tokens=12, temperature=0.0)
    check(ids == refs["codebase"]["answer"], "codebase answer %s vs %s" % (ids, refs["codebase"]["answer"]))
    # A bad FileStart fails its ingest with a clear error; the connection goes on.
    id = c.ingest([("file", "a\nb"), b"text"], name="badpath", wait=False)
    r = c.expect_error("ERROR_BAD_REQUEST", id)
    check("path" in r.error.message, r.error.message)
    c.status()
    c.close()


def old_response_class(minor):
    """Response as a peer built from the protocol 1.<minor> file parses it: the 1.2 fields
    of ModelInfo and StatusReply taken out of the generated descriptor."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    added = {"ModelInfo": 10, "StatusReply": 12}  # the first field number of 1.2
    fdp = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(fdp)
    fdp.name = "goldfinch_1_%d.proto" % minor
    fdp.package = "goldfinch.old%d" % minor
    for m in fdp.message_type:
        keep = [f for f in m.field if f.number < added.get(m.name, 1 << 29)]
        del m.field[:]
        m.field.extend(keep)
        for f in m.field:
            if f.type_name.startswith(".goldfinch.v1."):
                f.type_name = ".%s.%s" % (fdp.package, f.type_name[len(".goldfinch.v1."):])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    desc = pool.FindMessageTypeByName(fdp.package + ".Response")
    return message_factory.MessageFactory(pool).GetPrototype(desc)


def case_status_memory():
    """Protocol 1.2: the compute mode and the memory against its budgets, in HelloReply.model
    and StatusReply; a 1.1 decoder still parses both."""
    st = state()
    c = Conn("unix:" + st["sock"])
    h = c.hello_ok()
    check(h.minor == 3, "server minor %d" % h.minor)
    m = h.model
    check(m.compute in ("f32", "bf16"), "ModelInfo.compute %r" % m.compute)
    check(m.kernels in ("avx512", "avx2", "scalar"), "ModelInfo.kernels %r" % m.kernels)
    # 3 layers, n_embd 64, 65536-token vocabulary: the embedding and the head alone are
    # 2 * 65536 * 64 numbers of at least 2 bytes.
    check(m.weight_bytes >= 2 * 65536 * 64 * 2, "ModelInfo.weight_bytes %d" % m.weight_bytes)
    # A question fills the tier with the context's expanded keys and values.
    c.ask("book", PROMPT, max_tokens=2, temperature=0.0)
    s = c.status()
    for f in ("compute", "kernels", "weight_bytes", "page_cache_bytes", "page_cache_budget_bytes",
              "tier_bytes", "tier_budget_bytes"):
        check(s.HasField(f), "StatusReply.%s missing: %s" % (f, s))
    check(s.compute == m.compute and s.kernels == m.kernels, "compute %s/%s" % (s.compute, s.kernels))
    check(s.weight_bytes == m.weight_bytes and s.weight_bytes < s.rss_bytes,
          "weights %d, resident %d" % (s.weight_bytes, s.rss_bytes))
    check(s.tier_budget_bytes == 32 << 20, "tier budget %d, --tier-mb 32" % s.tier_budget_bytes)
    check(0 < s.tier_bytes <= s.tier_budget_bytes, "tier %d after a question" % s.tier_bytes)
    check(s.page_cache_budget_bytes > 0, "page cache budget %d" % s.page_cache_budget_bytes)
    check(s.page_cache_bytes < s.rss_bytes, "page cache %d" % s.page_cache_bytes)
    # What a 1.1 client makes of the same replies: the 1.2 fields skipped, the rest intact.
    Old = old_response_class(1)
    old = Old.FromString(pb.Response(id=5, status=s).SerializeToString())
    check(old.status.contexts == s.contexts and old.status.rss_bytes == s.rss_bytes
          and not hasattr(old.status, "tier_budget_bytes"), "1.1 view of StatusReply: %s" % old)
    old = Old.FromString(pb.Response(id=6, hello=h).SerializeToString())
    check(old.hello.model.n_layer == 3 and old.hello.minor == 3, "1.1 view of HelloReply: %s" % old)
    c.close()


def collect_progress(c, id):
    """PromptProgress messages, token ids, text and the Done of generation id (1.3)."""
    prog, ids, text = [], [], b""
    while True:
        r = c.recv(60)
        check(r is not None, "connection closed during generation %d" % id)
        kind = r.WhichOneof("body")
        if r.id != id:
            continue
        if kind == "prompt_progress":
            check(not ids, "PromptProgress after a Token")
            prog.append(r.prompt_progress)
        elif kind == "token":
            ids.append(r.token.id)
            text += r.token.text
        else:
            check(kind == "done", "generation %d: unexpected %s %s" % (id, kind, r))
            return prog, ids, text, r.done


def case_no_context_progress():
    """Protocol 1.3: Generate.no_context answers the prompt alone (gf-run ask --no-context's
    text); return_progress sends PromptProgress between slices of a long prompt, the tokens
    unchanged; a 1.2 peer skips a PromptProgress it did not ask for."""
    c, st = shared()
    prompt = make_text(2500, 7).decode() + PROMPT
    ids, text, done = c.ask("", prompt, no_context=True, max_tokens=16, temperature=0.0)
    check(done.usage.cached_tokens == 0 and done.usage.prompt_tokens > 2048, "usage %s" % done.usage)
    gf_run = os.environ.get("GF_RUN")
    if gf_run and os.path.exists(gf_run):
        out = subprocess.run([gf_run, "--model", path("model.gguf"), "--cache-dir", path("ref_nocontext"),
                              "ask", "--no-context", prompt, "--temperature", "0", "--max-tokens", "16"],
                             check=True, capture_output=True).stdout
        check(text == out, "no context: daemon %r, gf-run %r" % (text, out))
    n = done.usage.prompt_tokens
    for ctx, base in (("", 0), ("book", json.load(open(path("refs.json")))["book"]["tokens"])):
        kw = {"no_context": True} if not ctx else {}
        want, _, _ = c.ask(ctx, prompt, max_tokens=16, temperature=0.0, **kw)
        id = c.generate(ctx, prompt, max_tokens=16, temperature=0.0, return_progress=True, **kw)
        prog, got, _, done = collect_progress(c, id)
        check(got == want, "%r: tokens with progress %s, without %s" % (ctx, got, want))
        done_n = [p.processed for p in prog]
        check(len(prog) >= 3 and done_n[0] == base and done_n[-1] == base + n and done_n == sorted(set(done_n)),
              "%r: processed %s of %d" % (ctx, done_n, base + n))
        check(all(p.total == base + n and p.cache == base and p.job > 0 for p in prog), "%r: %s" % (ctx, prog))
    id = c.generate("book", "x", no_context=True)
    r = c.expect_error("ERROR_BAD_REQUEST", id)
    check("no_context" in r.error.message, r.error.message)
    # A 1.2 peer's view of the same reply: the body it does not know is skipped.
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    fdp = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(fdp)
    fdp.name, fdp.package = "goldfinch_1_2.proto", "goldfinch.old2"
    for m in fdp.message_type:
        if m.name == "Response":
            keep = [f for f in m.field if f.number < 12]
            del m.field[:]
            m.field.extend(keep)
        for f in m.field:
            if f.type_name.startswith(".goldfinch.v1."):
                f.type_name = ".goldfinch.old2." + f.type_name[len(".goldfinch.v1."):]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    Old = message_factory.MessageFactory(pool).GetPrototype(pool.FindMessageTypeByName("goldfinch.old2.Response"))
    old = Old.FromString(pb.Response(id=9, prompt_progress=prog[0]).SerializeToString())
    check(old.id == 9 and old.WhichOneof("body") is None, "1.2 view of PromptProgress: %s" % old)
    c.close()


def case_list_drop():
    c, st = shared()
    refs = json.load(open(path("refs.json")))
    small = open(path("small.txt"), "rb").read()
    ready = c.ingest([small], name="tmp-small")
    ctxs = {x.name: x for x in c.contexts()}
    check("tmp-small" in ctxs and ctxs["tmp-small"].sealed, "listed: %s" % list(ctxs))
    check(ctxs["tmp-small"].tokens == refs["small"]["tokens"], "tokens")
    check("book" in ctxs and ctxs["book"].key == refs["book"]["key"], "book listed")
    ids, _, _ = c.ask("tmp-small", PROMPT, max_tokens=8, temperature=0.0)
    check(ids == refs["small"]["answer"], "small answer")
    id = c.drop("tmp-small")
    r = c.expect("dropped", id)
    check(r.dropped.serial == ready.context.serial, "dropped serial")
    check("tmp-small" not in {x.name for x in c.contexts()}, "still listed after drop")
    c.expect_error("ERROR_NOT_FOUND", c.drop("tmp-small"))
    c.expect_error("ERROR_NOT_FOUND", c.generate("tmp-small", PROMPT))
    # In use: a running generation holds its context.
    c.ingest([small], name="tmp-busy")
    gid = c.generate("tmp-busy", PROMPT, max_tokens=100000, temperature=0.0)
    r = c.expect("token", gid)
    did = c.drop("tmp-busy")
    while True:
        r = c.recv()
        if r.id == did:
            break
    check(r.WhichOneof("body") == "error" and r.error.code == pb.ERROR_BUSY,
          "drop of a context in use: %s" % r)
    c.request(cancel=pb.Cancel(target=gid))
    _, _, done = c.collect(gid)
    check(done.reason == pb.DONE_CANCELLED, "cancelled")
    c.expect("dropped", c.drop("tmp-busy"))
    s = c.status()
    check(s.contexts >= 1 and s.disk_used_bytes > 0 and s.connections >= 1, "status %s" % s)
    c.close()


def case_cancel():
    c, st = shared()
    refs = json.load(open(path("refs.json")))
    # A long generation, cancelled after a few tokens.
    gid = c.generate("book", PROMPT, max_tokens=100000, temperature=0.0)
    for _ in range(3):
        c.expect("token", gid)
    t0 = time.time()
    c.request(cancel=pb.Cancel(target=gid))
    ids, _, done = c.collect(gid)
    check(done.reason == pb.DONE_CANCELLED, "reason %s" % done.reason)
    check(time.time() - t0 < 5, "cancel took %.1f s" % (time.time() - t0))
    check(done.usage.completion_tokens < 100000, "usage after cancel")
    c.expect_error("ERROR_NOT_FOUND", c.request(cancel=pb.Cancel(target=987654)))
    # An ingest cancelled midway stays resumable; resuming gives the uninterrupted context.
    big = open(path("big.txt"), "rb").read()
    iid = c.request(ingest_start=pb.IngestStart(name="cancel-big"))
    first = c.expect("progress", iid)
    check(first.progress.bytes_done == 0, "fresh ingest starts at byte 0")
    half = big[:len(big) // 2]
    for p in book_pieces(half, 4096):
        c.request(id=iid, ingest_data=pb.IngestData(text=p))
    # Let the engine run some of it, then cancel.
    time.sleep(0.3)
    c.request(cancel=pb.Cancel(target=iid))
    while True:
        r = c.recv()
        check(r is not None, "closed")
        if r.id == iid and r.WhichOneof("body") == "error":
            break
        check(r.id != iid or r.WhichOneof("body") == "progress", "unexpected %s" % r)
    check(r.error.code == pb.ERROR_CANCELLED, "ingest cancel: %s" % r.error)
    check("gf ingest --resume --name cancel-big" in r.error.message or
          "before any token" in r.error.message, "resume hint: %s" % r.error.message)
    # Late data for the cancelled ingest is dropped without noise.
    c.request(id=iid, ingest_data=pb.IngestData(text=b"late"))
    c.request(id=iid, ingest_end=pb.IngestEnd())
    s = c.status()
    ctx = {x.name: x for x in c.contexts()}.get("cancel-big")
    if ctx is not None:
        check(not ctx.sealed, "a cancelled ingest is not sealed")
        ready = c.ingest([big], name="cancel-big", resume=True, skip_to_resume=True)
        check(not isinstance(ready, pb.Response), "resume failed: %s" % ready)
        check(ready.context.key == refs["big"]["key"], "resumed key %s, uninterrupted %s"
              % (ready.context.key, refs["big"]["key"]))
        log("cancelled at %d tokens, resumed to %d" % (ctx.tokens, ready.context.tokens))
    else:
        log("ingest cancelled before its first chunk: nothing to resume")
    # A seal that found the same book stored by another test reused it: nothing to drop.
    if ctx is None or not ready.reused:
        c.expect("dropped", c.drop("cancel-big"))
    check(s.jobs_running <= 2, "status")
    c.close()


def find_job(conn, pred, what, timeout=30.0):
    """The first JobInfo of StatusReply.jobs that pred accepts, polling until timeout."""
    deadline = time.time() + timeout
    while True:
        jobs = list(conn.status().jobs)
        for j in jobs:
            if pred(j):
                return j
        if time.time() > deadline:
            raise Fail("no job %s in status: %s" % (what, jobs))
        time.sleep(0.02)


def cancel_number(conn, number):
    """Cancel{job} (protocol 1.1) from conn: the CancelAccepted."""
    id = conn.request(cancel=pb.Cancel(target=0, job=number))
    r = conn.expect("cancel_accepted", id)
    check(r.cancel_accepted.job == number, "CancelAccepted for %d: %s" % (number, r))
    return r


def case_cancel_job():
    """Protocol 1.1: jobs have server-wide numbers. A job's own client (a 1.0 Hello, which
    ignores the new fields) starts it; a second connection sees it in StatusReply.jobs; a
    third cancels it by number. The ingest checkpoints and resumes to the uninterrupted
    context; the generation ends with Done{CANCELLED}; unknown numbers are NOT_FOUND."""
    owner, st = shared()
    refs = json.load(open(path("refs.json")))
    watcher = Conn("unix:" + st["sock"])
    watcher.hello(minor=1)
    watcher.expect("hello")
    killer = Conn(st["tcp"])
    killer.hello(minor=1)
    killer.expect("hello")
    t_start = time.time()
    # An ingest that waits for more input (no IngestEnd yet): it stays running.
    big = open(path("big.txt"), "rb").read()
    iid = owner.request(ingest_start=pb.IngestStart(name="xjob-big"))
    first = owner.expect("progress", iid)
    number = first.progress.job
    check(number > 0, "IngestProgress carries no job number: %s" % first)
    for p in book_pieces(big[:len(big) // 2], 4096):
        owner.request(id=iid, ingest_data=pb.IngestData(text=p))
    j = find_job(watcher, lambda j: j.job == number and j.tokens_done >= 1024,
                 "%d with 1024 tokens" % number)
    check(j.kind == "ingest" and j.state == "running" and j.context == "xjob-big",
          "JobInfo of the ingest: %s" % j)
    check(("pid %d " % os.getpid()) in j.peer, "peer %r" % j.peer)
    check(abs(j.started_unix_ms / 1000.0 - t_start) < 60, "started_unix_ms %d" % j.started_unix_ms)
    cancel_number(killer, number)
    while True:
        r = owner.recv(30)
        check(r is not None, "closed while waiting for the cancelled ingest's answer")
        if r.id == iid and r.WhichOneof("body") == "error":
            break
        check(r.WhichOneof("body") == "progress", "unexpected %s" % r)
    check(r.error.code == pb.ERROR_CANCELLED and "resume" in r.error.message,
          "the ingest's client: %s" % r.error)
    owner.request(id=iid, ingest_data=pb.IngestData(text=b"late"))  # dropped quietly
    deadline = time.time() + 30
    while any(x.job == number for x in watcher.status().jobs) and time.time() < deadline:
        time.sleep(0.02)
    check(not any(x.job == number for x in watcher.status().jobs), "ended job still listed")
    killer.expect_error("ERROR_NOT_FOUND", killer.request(cancel=pb.Cancel(target=0, job=number)))
    ctx = {x.name: x for x in watcher.contexts()}.get("xjob-big")
    check(ctx is not None and not ctx.sealed and ctx.tokens > 0, "after the cancel: %s" % ctx)
    ready = owner.ingest([big], name="xjob-big", resume=True, skip_to_resume=True)
    check(not isinstance(ready, pb.Response), "resume failed: %s" % ready)
    check(ready.context.key == refs["big"]["key"], "resumed key %s, uninterrupted %s"
          % (ready.context.key, refs["big"]["key"]))
    # When another test stored the same book first, the seal reuses that context and this
    # one is gone: only a context of its own is dropped.
    if not ready.reused:
        owner.expect("dropped", owner.drop("xjob-big"))
    log("ingest job %d cancelled from another connection at %d tokens, resumed" % (number, ctx.tokens))
    # A generation: the first Token names the job, later ones do not.
    gid = owner.generate("book", PROMPT, max_tokens=100000, temperature=0.0)
    t1 = owner.expect("token", gid)
    gnum = t1.token.job
    check(gnum > number, "first Token's job %d (the ingest's was %d)" % (gnum, number))
    t2 = owner.expect("token", gid)
    check(not t2.token.HasField("job"), "a later Token carries the job again")
    j = find_job(watcher, lambda j: j.job == gnum, str(gnum))
    check(j.kind == "generate" and j.state == "running" and j.context == "book", "JobInfo %s" % j)
    cancel_number(killer, gnum)
    ids, _, done = owner.collect(gid)
    check(done.reason == pb.DONE_CANCELLED, "generation ended with %s" % done)
    check(done.usage.completion_tokens < 100000, "usage %s" % done.usage)
    # Unknown numbers, and 0.
    for n in (987654321, 0):
        killer.expect_error("ERROR_NOT_FOUND", killer.request(cancel=pb.Cancel(target=0, job=n)))
    # The 1.0 client kept working through all this.
    ids, _, _ = owner.ask("book", PROMPT, max_tokens=24, temperature=0.0)
    check(ids == refs["book"]["answer"], "answer after the cancels")
    for c in (owner, watcher, killer):
        c.close()


def ok_after(conn):
    """The other connection still gets answers."""
    s = conn.status()
    check(s.max_jobs == 2, "second connection: %s" % s)


def case_bad_input():
    st = state()
    refs = json.load(open(path("refs.json")))
    other = Conn("unix:" + st["sock"])
    other.hello_ok()
    addr = "unix:" + st["sock"]

    def fresh(hello=True):
        c = Conn(addr, timeout=20)
        if hello:
            c.hello_ok()
        return c

    def closed_or_error(c, codes):
        r = c.recv(20)
        if r is None:
            return
        check(r.WhichOneof("body") == "error" and pb.ErrorCode.Name(r.error.code) in codes,
              "expected %s or a close, got %s" % (codes, r))

    # Garbage bytes.
    rng = random.Random(5)
    for k in range(8):
        c = fresh(hello=k % 2 == 0)
        c.send_raw(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))))
        c.s.shutdown(socket.SHUT_WR)
        while True:
            r = c.recv(20)
            if r is None:
                break
            check(r.WhichOneof("body") == "error", "garbage answered with %s" % r)
        c.close()
        ok_after(other)
    # Truncated frames: a header alone, a body cut short, then the client leaves.
    for data in (b"\x10", b"\x10\x00\x00\x00\x08\x01", struct.pack("<I", 100) + b"\x08" * 50):
        c = fresh()
        c.send_raw(data)
        time.sleep(0.05)
        c.close()
        ok_after(other)
    # A frame over the limit: TOO_LARGE with id 0, then the server closes.
    c = fresh()
    c.send_raw(struct.pack("<I", 20 << 20) + b"\x00" * 1000)
    r = c.expect_error("ERROR_TOO_LARGE", 0)
    check("20971520" in r.error.message and "16777216" in r.error.message, r.error.message)
    check(c.recv(20) is None, "still open after an oversized frame")
    ok_after(other)
    # Valid frames with invalid protobuf: BAD_REQUEST with id 0; the connection stays.
    c = fresh()
    for body in (b"\xff\xff\xff\xff", b"", b"\x08", b"\x12\x05\x08\x01", b"\x08\x01\x12\x80"):
        c.send_raw(struct.pack("<I", len(body)) + body)
        c.expect_error("ERROR_BAD_REQUEST", 0)
    c.status()
    # A request with no body this version knows.
    c.send(pb.Request(id=77))
    c.expect_error("ERROR_BAD_REQUEST", 77)
    # Unknown contexts and jobs.
    for ref in ("no-such-context", "#999999", "deadbeef00", "#x"):
        code = "ERROR_BAD_REQUEST" if ref == "#x" else "ERROR_NOT_FOUND"
        _id = c.generate(ref, PROMPT, max_tokens=2)
        c.expect_error(code, _id)
        c.expect_error(code, c.drop(ref))
    c.expect_error("ERROR_NOT_FOUND", c.request(id=4242, ingest_data=pb.IngestData(text=b"x")))
    c.expect_error("ERROR_NOT_FOUND", c.request(id=4243, ingest_end=pb.IngestEnd()))
    c.expect_error("ERROR_NOT_FOUND", c.ingest([b"x"], name="never-started", resume=True, wait=False))
    # Out-of-range parameters.
    for kw in (dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_p=0.0),
               dict(top_p=1.5), dict(min_p=2.0), dict(max_tokens=0), dict(max_tokens=1 << 30),
               dict(presence_penalty=float("inf")), dict(stop=["x"] * 17), dict(stop=[""])):
        r = c.expect_error("ERROR_BAD_REQUEST", c.generate("book", PROMPT, **kw))
    c.expect_error("ERROR_BAD_REQUEST", c.generate("book", ""))
    c.expect_error("ERROR_BAD_REQUEST", c.generate("", PROMPT))
    c.expect_error("ERROR_BAD_REQUEST", c.ingest([b"x"], name="two\nlines", wait=False))
    c.expect_error("ERROR_BAD_REQUEST", c.ingest([b"x"], name="#7", wait=False))
    c.expect_error("ERROR_BAD_REQUEST", c.ingest([b"x"], name="book", wait=False))  # taken
    c.expect_error("ERROR_BAD_REQUEST", c.request(ingest_start=pb.IngestStart(name="x", c_dtype=pb.C_DTYPE_F32)))
    c.expect_error("ERROR_BAD_REQUEST", c.request(ingest_start=pb.IngestStart(resume=True)))
    r = c.expect_error("ERROR_BAD_REQUEST", c.ingest([b""], name="empty", wait=False))
    check("empty" in r.error.message, r.error.message)
    check("empty" not in {x.name for x in c.contexts()}, "an empty ingest left a context")
    # A request id in use by a running job.
    gid = c.generate("book", PROMPT, max_tokens=100000, id=500)
    c.expect("token", 500)
    c.generate("book", PROMPT, id=500)
    while True:  # the running job's tokens carry the same id
        r = c.recv()
        check(r is not None and r.id == 500, "closed or unexpected %s" % r)
        if r.WhichOneof("body") != "token":
            break
    check(r.WhichOneof("body") == "error" and r.error.code == pb.ERROR_BAD_REQUEST
          and "in use" in r.error.message, "duplicate request id: %s" % r)
    c.request(cancel=pb.Cancel(target=gid))
    _, _, done = c.collect(gid)
    check(done.reason == pb.DONE_CANCELLED, "the first job was the one cancelled")
    c.close()
    ok_after(other)
    # Clients that leave mid-stream: their jobs stop, the server goes on.
    c = fresh()
    gid = c.generate("book", PROMPT, max_tokens=100000)
    c.expect("token", gid)
    c.close()
    c = fresh()
    iid = c.request(ingest_start=pb.IngestStart(name="left-midway"))
    c.request(id=iid, ingest_data=pb.IngestData(text=open(path("big.txt"), "rb").read()))
    c.expect("progress", iid)
    c.close()
    # Both jobs end as cancelled by the disconnect (the log names this process as the peer;
    # other cases may share the daemon, so its job counts prove nothing).
    me = "peer unix pid %d " % os.getpid()
    deadline = time.time() + 30
    while time.time() < deadline:
        lines = [l for l in open(st["log"], errors="replace") if me in l
                 and "cancelled: the client disconnected" in l]
        if any(" generate " in l for l in lines) and any(" ingest " in l for l in lines):
            break
        time.sleep(0.1)
    else:
        raise Fail("the jobs of clients that left were not cancelled")
    # Nothing committed is lost; the book still answers as before.
    ctxs = {x.name: x for x in other.contexts()}
    check(ctxs["book"].key == refs["book"]["key"] and ctxs["book"].sealed, "book intact")
    ids, _, _ = other.ask("book", PROMPT, max_tokens=24, temperature=0.0)
    check(ids == refs["book"]["answer"], "book answers as before")
    if "left-midway" in ctxs:
        other.expect("dropped", other.drop("left-midway"))
    other.close()


def case_clients64():
    st = state()
    refs = json.load(open(path("refs.json")))
    errors = []
    busy = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(64)

    def client(k):
        try:
            c = Conn(st["tcp"] if k % 2 else "unix:" + st["sock"], timeout=120)
            barrier.wait(60)
            c.hello_ok()
            c.status()
            names = {x.name for x in c.contexts()}
            check("book" in names, "book listed")
            if k % 4 == 0:
                while True:
                    gid = c.generate("book", PROMPT, max_tokens=6, temperature=0.0)
                    r = c.recv()
                    check(r is not None, "closed")
                    if r.WhichOneof("body") == "error" and r.error.code == pb.ERROR_BUSY:
                        with lock:
                            busy[0] += 1
                        time.sleep(0.2)
                        continue
                    break
                ids = [r.token.id] if r.WhichOneof("body") == "token" else []
                more, _, done = c.collect(gid)
                check(ids + more == refs["book"]["answer"][:6], "client %d answer %s" % (k, ids + more))
            c.close()
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append("client %d: %r" % (k, e))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    check(not errors, "; ".join(errors[:5]))
    log("64 clients served (%d BUSY retries)" % busy[0])


def case_metrics():
    st = state()
    c, _ = shared()
    c.ask("book", PROMPT, max_tokens=3, temperature=0.0)
    body = urllib.request.urlopen("http://%s/metrics" % st["metrics"], timeout=10).read().decode()
    vals = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            vals[k] = float(v)
    for k in ('goldfinch_jobs{state="queued"}', 'goldfinch_jobs{state="running"}',
              "goldfinch_queue_depth", "goldfinch_ingest_tokens_per_second",
              "goldfinch_decode_tokens_per_second"):
        check(k in vals, "metric %s missing" % k)
    check(vals["goldfinch_tokens_ingested_total"] >= json.load(open(path("refs.json")))["book"]["tokens"],
          "tokens ingested")
    check(vals["goldfinch_tokens_decoded_total"] >= 3, "tokens decoded")
    check(vals["goldfinch_context_hits_total"] >= 1 and vals["goldfinch_cached_tokens_reused_total"] > 0,
          "context hits")
    check(vals["goldfinch_disk_bytes"] > 0 and vals['goldfinch_jobs_total{state="done"}'] >= 2, "disk, jobs")
    check("# TYPE goldfinch_tokens_decoded_total counter" in body, "TYPE lines")
    # The memory, each part against its budget (the shared daemon runs --tier-mb 32).
    for k in ("goldfinch_weight_bytes", "goldfinch_page_cache_bytes",
              "goldfinch_page_cache_budget_bytes", "goldfinch_tier_bytes",
              "goldfinch_tier_budget_bytes"):
        check(k in vals and "# TYPE %s gauge" % k in body, "gauge %s missing" % k)
    check(vals["goldfinch_weight_bytes"] > 0 and vals["goldfinch_page_cache_budget_bytes"] > 0,
          "weights, page cache budget")
    check(vals["goldfinch_tier_budget_bytes"] == 32 << 20, "tier budget %s" % vals["goldfinch_tier_budget_bytes"])
    check(vals["goldfinch_tier_bytes"] <= vals["goldfinch_tier_budget_bytes"], "tier within budget")
    info = [k for k in vals if k.startswith("goldfinch_info{")]
    check(len(info) == 1 and vals[info[0]] == 1, "goldfinch_info: %s" % info)
    check(re.search(r'compute="(f32|bf16)"', info[0]) and re.search(r'kernels="(avx512|avx2|scalar)"', info[0]),
          "goldfinch_info labels: %s" % info[0])
    try:
        urllib.request.urlopen("http://%s/nothing" % st["metrics"], timeout=10)
        raise Fail("/nothing answered 200")
    except urllib.error.HTTPError as e:
        check(e.code == 404, "status %d" % e.code)
    c.close()


# ---- cases with their own daemon -------------------------------------------------------------

def own_daemon(name, extra=(), **kw):
    wd = path(name)
    shutil.rmtree(wd, ignore_errors=True)
    return Daemon(EXE, path("model.gguf"), wd, extra=extra, **kw)


def case_limits():
    d = own_daemon("limits", ["--max-frame", "64K", "--max-context-tokens", "2000",
                              "--max-jobs", "1", "--max-queue", "1"]).start()
    try:
        c = d.connect()
        h = c.hello_ok()
        check(h.max_frame == 65536, "max_frame %d" % h.max_frame)
        other = d.connect()
        other.hello_ok()
        # A frame over --max-frame.
        c2 = d.connect()
        c2.hello_ok()
        c2.request(ingest_start=pb.IngestStart(name="x"), id=1)
        c2.request(id=1, ingest_data=pb.IngestData(text=b"a" * 70000))
        r = c2.recv()
        while r is not None and r.WhichOneof("body") == "progress":
            r = c2.recv()
        check(r is not None and r.WhichOneof("body") == "error" and r.error.code == pb.ERROR_TOO_LARGE
              and r.id == 0, "oversized: %s" % r)
        check(c2.recv(10) is None, "open after an oversized frame")
        # A context over --max-context-tokens fails cleanly and is removed.
        small = open(path("small.txt"), "rb").read()
        ready = c.ingest([small], name="fits")
        big = open(path("big.txt"), "rb").read()
        id = c.ingest(book_pieces(big, 8192), name="too-long", wait=False)
        while True:
            r = c.recv()
            if r.WhichOneof("body") != "progress":
                break
        check(r.WhichOneof("body") == "error" and r.error.code == pb.ERROR_TOO_LARGE, "too long: %s" % r)
        check("--max-context-tokens" in r.error.message, r.error.message)
        names = {x.name for x in c.contexts()}
        check("too-long" not in names and "fits" in names, "after TOO_LARGE: %s" % names)
        # Queue full: one running, one waiting, the third is BUSY.
        g1 = c.generate("fits", PROMPT, max_tokens=100000)
        c.expect("token", g1)
        g2 = c.generate("fits", PROMPT, max_tokens=5)
        time.sleep(0.1)
        g3 = other.generate("fits", PROMPT, max_tokens=5)
        other.expect_error("ERROR_BUSY", g3)
        # Cancel the waiting one from the other connection by its number (it is listed as
        # queued), then the running one from its own.
        q = find_job(other, lambda j: j.state == "queued", "queued")
        check(q.kind == "generate" and q.context == "fits" and q.tokens_done == 0, "queued: %s" % q)
        cancel_number(other, q.job)
        c.request(cancel=pb.Cancel(target=g1))
        seen = {}
        while len(seen) < 2:
            r = c.recv()
            if r.WhichOneof("body") == "token":
                continue
            seen[r.id] = r
        check(seen[g2].done.reason == pb.DONE_CANCELLED, "queued cancel: %s" % seen[g2])
        check(seen[g1].done.reason == pb.DONE_CANCELLED, "running cancel: %s" % seen[g1])
        c.close()
        other.close()
    finally:
        rc = d.stop()
    check(rc == 0, "exit status %s" % rc)
    d.check_clean_stderr()


def case_backpressure():
    """An ingest whose input queue is full stops the reading of its connection, and the
    reading goes on once the worker drains the queue; nobody else waits meanwhile."""
    d = own_daemon("backpressure", ["--max-frame", "4K", "--max-jobs", "1"]).start()
    try:
        a = d.connect()
        a.hello_ok()
        a.ingest(book_pieces(open(path("small.txt"), "rb").read(), 3000), name="fits")
        g = a.generate("fits", PROMPT, max_tokens=1000000)
        a.expect("token", g)  # the only job slot is taken
        data = make_text(60000, 4)

        def paused_ingest(name):
            """A connection with a small send buffer, its IngestStart sent, and the frames
            of its input (then a StatusRequest) to push."""
            conn = d.connect()
            conn.s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            conn.hello_ok()
            iid = conn.request(ingest_start=pb.IngestStart(name=name))
            frames = b""
            for p in book_pieces(data, 3000):
                body = pb.Request(id=iid, ingest_data=pb.IngestData(text=p)).SerializeToString()
                frames += struct.pack("<I", len(body)) + body
            body = pb.Request(id=9999, status=pb.StatusRequest()).SerializeToString()
            frames += struct.pack("<I", len(body)) + body
            conn.s.setblocking(False)
            return conn, iid, frames

        b, iid, out = paused_ingest("paused")

        def push(off, quiet=0.5, limit=30.0, target=None, conn=None, frames=None):
            """Sends from off until the socket stays full for `quiet` s (or off passes
            target); the new offset."""
            conn, frames = conn or b, frames or out
            last, t_end = time.time(), time.time() + limit
            target = target or len(frames)
            while off < target and time.time() - last < quiet and time.time() < t_end:
                try:
                    off += conn.s.send(frames[off:off + 65536])
                    last = time.time()
                except BlockingIOError:
                    time.sleep(0.01)
            return off

        stalled = push(0)
        check(stalled < len(out) // 2, "sent %d of %d bytes with the ingest queued: no backpressure"
              % (stalled, len(out)))
        c = d.connect()
        c.hello_ok()
        st = c.status()
        check(st.jobs_running == 1 and st.jobs_queued == 1, "status while paused: %s" % st)
        # Free the slot: the ingest runs, drains its queue, and the connection is read again.
        a.request(cancel=pb.Cancel(target=g))
        _, _, done = a.collect(g)
        check(done.reason == pb.DONE_CANCELLED, "generation cancelled")
        resumed = push(stalled, quiet=60.0, limit=60.0, target=stalled + 1)
        resumed = push(resumed, quiet=0.2)
        check(resumed > stalled, "the connection was not read again after the queue drained")
        log("paused after %d bytes, read again up to %d" % (stalled, resumed))
        b.close()  # gone mid-ingest: its job stops
        deadline = time.time() + 30
        while c.status().jobs_running and time.time() < deadline:
            time.sleep(0.05)
        check(c.status().jobs_running == 0, "the ingest of a closed connection still runs")
        if "paused" in {x.name for x in c.contexts()}:
            c.expect("dropped", c.drop("paused"))
        # Protocol 1.1: a queued ingest whose connection is paused, cancelled by number from
        # another connection. Its client hears CANCELLED, and its connection is read again:
        # the rest of its input is dropped quietly and the Status behind it is answered.
        g = a.generate("fits", PROMPT, max_tokens=1000000)
        a.expect("token", g)
        b2, iid2, out2 = paused_ingest("paused2")
        stalled = push(0, conn=b2, frames=out2)
        check(stalled < len(out2) // 2, "second ingest: sent %d of %d bytes" % (stalled, len(out2)))
        q = find_job(c, lambda j: j.context == "paused2", "paused2")
        check(q.state == "queued" and q.kind == "ingest", "paused ingest: %s" % q)
        cancel_number(c, q.job)
        sent = push(stalled, quiet=10.0, limit=60.0, conn=b2, frames=out2)
        check(sent == len(out2), "the cancelled ingest's connection was not read again: %d of %d"
              % (sent, len(out2)))
        b2.s.setblocking(True)
        b2.s.settimeout(30)
        b2.expect_error("ERROR_CANCELLED", iid2)
        b2.expect("status", 9999)
        check(not any(j.context == "paused2" for j in c.status().jobs), "paused2 still listed")
        a.request(cancel=pb.Cancel(target=g))
        _, _, done = a.collect(g)
        check(done.reason == pb.DONE_CANCELLED, "second generation cancelled")
        check("paused2" not in {x.name for x in c.contexts()}, "a queued ingest left a context")
        b2.close()
        a.close()
        c.close()
    finally:
        rc = d.stop()
    check(rc == 0, "exit status %s" % rc)
    d.check_clean_stderr()


def case_disk_budget():
    refs = json.load(open(path("refs.json")))
    d = own_daemon("disk", ["--disk-budget", "96K"]).start()
    try:
        c = d.connect()
        c.hello_ok()
        small = open(path("small.txt"), "rb").read()
        first = c.ingest([small], name="fits")
        check(first.context.disk_bytes < 96 << 10, "small context: %d bytes" % first.context.disk_bytes)
        # A context larger than the whole budget: NO_SPACE, cleanly.
        big = open(path("big.txt"), "rb").read()
        id = c.ingest(book_pieces(big, 8192), name="no-room", wait=False)
        r = c.recv_for(id)
        check(r.WhichOneof("body") == "error" and r.error.code == pb.ERROR_NO_SPACE,
              "over the disk budget: %s" % r)
        log("over the disk budget: %s" % r.error.message)
        s = c.status()
        check(s.disk_budget_bytes == 96 << 10, "budget in status")
        check(s.disk_used_bytes <= 96 << 10, "disk used %d over the budget" % s.disk_used_bytes)
        # The daemon goes on. (Making room may have evicted "fits": the budget evicts
        # least recently used contexts nobody holds; ingesting it again restores it.)
        names = {x.name for x in c.contexts()}
        check("no-room" not in names or not {x.name: x for x in c.contexts()}["no-room"].sealed,
              "no-room sealed over the budget")
        if "fits" not in names:
            log("\"fits\" was evicted to make room")
            c.ingest([small], name="fits")
        ids, _, _ = c.ask("fits", PROMPT, max_tokens=8, temperature=0.0)
        check(ids == refs["small"]["answer"], "answer after NO_SPACE")
        c.close()
    finally:
        rc = d.stop()
    check(rc == 0, "exit status %s" % rc)
    d.check_clean_stderr()


def case_auth():
    tokfile = path("token")
    with open(tokfile, "w") as f:
        f.write("s3cret-token\n")
    d = own_daemon("auth", ["--auth-token-file", tokfile], unix=False).start()
    try:
        for tok, ok in ((None, False), ("wrong", False), ("s3cret-token\n", False),
                        ("s3cret-toke", False), ("s3cret-token", True)):
            c = d.connect(tcp=True)
            id = c.hello(token=tok)
            if ok:
                c.expect("hello", id)
                c.status()
            else:
                c.expect_error("ERROR_UNAUTHENTICATED", id)
                check(c.recv(10) is None, "open after failed authentication")
            c.close()
        # A refused login is logged with its reason, not as a plain close.
        deadline = time.time() + 10
        while time.time() < deadline and "no auth token" not in d.log_text():
            time.sleep(0.05)
        log = d.log_text()
        check(re.search(r"closed: authentication failed: wrong auth token", log) and
              re.search(r"closed: authentication failed: no auth token", log),
              "failed logins in the log: %s" % [l for l in log.splitlines() if "closed" in l])
    finally:
        check(d.stop() == 0, "auth daemon exit")
    d.check_clean_stderr()
    # Beyond loopback without a token: refused at start.
    wd = path("auth2")
    os.makedirs(wd, exist_ok=True)
    p = subprocess.run([EXE, "--model", path("model.gguf"), "--cache-dir", os.path.join(wd, "c"),
                        "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=60)
    check(p.returncode == 1 and "auth-token-file" in p.stderr, "open listen: %d %s" % (p.returncode, p.stderr))
    # The command line: --help, --print-config, bad flags.
    p = subprocess.run([EXE, "--help"], capture_output=True, text=True)
    for flag in ("--model", "--cache-dir", "--listen", "--auth-token-file", "--max-frame", "--max-jobs",
                 "--max-queue", "--max-context-tokens", "--disk-budget", "--threads",
                 "--checkpoint-tokens", "--c-dtype", "--tier-mb", "--compute", "--metrics",
                 "--log-file", "--print-config"):
        check(flag in p.stdout, "--help lacks " + flag)
    p = subprocess.run([EXE, "--model", "m", "--cache-dir", "d", "--disk-budget", "2G",
                        "--max-frame=1M", "--print-config"], capture_output=True, text=True)
    check(p.returncode == 0 and "disk-budget = 2147483648" in p.stdout and "max-frame = 1048576" in p.stdout
          and "listen = 127.0.0.1:7433" in p.stdout, "print-config: %s" % p.stdout)
    # The tier's default is the engine's, not a share of this host's RAM; the compute mode
    # is resolved ("auto" is f32 or bf16 by now).
    check("tier-mb = 512\n" in p.stdout and re.search(r"^compute = (f32|bf16)$", p.stdout, re.M),
          "print-config defaults: %s" % p.stdout)
    p = subprocess.run([EXE, "--model", "m", "--cache-dir", "d", "--compute", "auto", "--print-config"],
                       capture_output=True, text=True)
    check(p.returncode == 0 and re.search(r"^compute = (f32|bf16)$", p.stdout, re.M), "--compute auto: %s" % p.stdout)
    p = subprocess.run([EXE, "--model", "m", "--cache-dir", "d", "--compute=f32", "--print-config"],
                       capture_output=True, text=True)
    check(p.returncode == 0 and "compute = f32\n" in p.stdout, "--compute f32: %s" % p.stdout)
    # bf16 runs where the CPU and the build have it; elsewhere it is a usage error saying why.
    p = subprocess.run([EXE, "--model", "m", "--cache-dir", "d", "--compute", "bf16", "--print-config"],
                       capture_output=True, text=True)
    check((p.returncode == 0 and "compute = bf16\n" in p.stdout) or
          (p.returncode == 2 and p.stderr.count("\n") == 1 and "bf16" in p.stderr),
          "--compute bf16: %d %r %r" % (p.returncode, p.stdout, p.stderr))
    for bad in (["--max-jobs", "0"], ["--disk-budget", "12X"], ["--c-dtype", "f8"], ["--bogus"],
                ["--compute", "nonsense"], ["--compute"], []):
        p = subprocess.run(([EXE, "--model", "m", "--cache-dir", "d"] if bad else [EXE]) + bad,
                           capture_output=True, text=True)
        check(p.returncode == 2 and p.stderr.count("\n") == 1, "bad flags %s: %d %r" % (bad, p.returncode, p.stderr))
        if bad[:2] == ["--compute", "nonsense"]:
            check("f32, bf16 or auto" in p.stderr, "--compute nonsense: %r" % p.stderr)


def restart(sig):
    refs = json.load(open(path("refs.json")))
    name = "restart_" + ("term" if sig == signal.SIGTERM else "kill")
    extra = ["--checkpoint-tokens", "256", "--threads", "1"]
    d = own_daemon(name, extra).start()
    small = open(path("small.txt"), "rb").read()
    big = open(path("big.txt"), "rb").read()
    c = d.connect()
    c.hello_ok()
    done = c.ingest([small], name="committed")
    check(done.context.key == refs["small"]["key"], "small key")
    iid = c.request(ingest_start=pb.IngestStart(name="interrupted", total_bytes=len(big)))
    c.expect("progress", iid)
    part = big[:len(big) * 2 // 3]
    for p in book_pieces(part, 8192):
        c.request(id=iid, ingest_data=pb.IngestData(text=p))
    # Wait for a few checkpoints' worth of tokens.
    deadline = time.time() + 60
    tokens = 0
    while tokens < 1500 and time.time() < deadline:
        r = c.recv(30)
        check(r is not None, "closed during ingest")
        if r.WhichOneof("body") == "progress":
            tokens = r.progress.tokens_done
        elif r.WhichOneof("body") == "error":
            raise Fail("ingest failed: %s" % r.error.message)
    check(tokens >= 1500, "ingest made no progress")
    rc = d.stop(sig)
    if sig == signal.SIGTERM:
        check(rc == 0, "SIGTERM exit status %s" % rc)
        # The ingest was told why it stopped.
        r = c.recv(10)
        while r is not None and r.WhichOneof("body") == "progress":
            r = c.recv(10)
        check(r is not None and r.WhichOneof("body") == "error" and r.error.code == pb.ERROR_SHUTTING_DOWN,
              "ingest at SIGTERM: %s" % r)
        check("resume" in r.error.message, r.error.message)
        d.check_clean_stderr()
    else:
        check(rc == -signal.SIGKILL, "SIGKILL exit status %s" % rc)
    c.close()
    d.start()
    c = d.connect()
    c.hello_ok()
    ctxs = {x.name: x for x in c.contexts()}
    check("committed" in ctxs and ctxs["committed"].sealed and ctxs["committed"].key == refs["small"]["key"],
          "committed context after restart: %s" % ctxs.get("committed"))
    ids, _, _ = c.ask("committed", PROMPT, max_tokens=8, temperature=0.0)
    check(ids == refs["small"]["answer"], "committed context answers as before")
    check("interrupted" in ctxs and not ctxs["interrupted"].sealed and ctxs["interrupted"].tokens > 0,
          "interrupted ingest after restart: %s" % ctxs.get("interrupted"))
    c.expect_error("ERROR_BAD_REQUEST", c.generate("interrupted", PROMPT))
    ready = c.ingest([big], name="interrupted", resume=True, skip_to_resume=True)
    check(not isinstance(ready, pb.Response), "resume: %s" % ready)
    check(ready.context.key == refs["big"]["key"] and ready.context.tokens == refs["big"]["tokens"],
          "resumed context %s, uninterrupted %s" % (ready.context.key, refs["big"]["key"]))
    log("%s at %d tokens; resumed from %d committed to %d" % (signal.Signals(sig).name, tokens,
                                                            ctxs["interrupted"].tokens, ready.context.tokens))
    c.close()
    check(d.stop() == 0, "exit after restart")
    d.check_clean_stderr()


def case_restart_sigterm():
    restart(signal.SIGTERM)


def case_restart_sigkill():
    restart(signal.SIGKILL)


def main():
    if len(sys.argv) != 2:
        print("usage: daemon_test.py CASE", file=sys.stderr)
        return 2
    fn = globals().get("case_" + sys.argv[1])
    if not fn:
        print("no case " + sys.argv[1], file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        fn()
        if sys.argv[1] == "setup":
            Daemon.running.clear()  # the shared daemon outlives this process
    except Fail as e:
        print("FAIL %s: %s" % (sys.argv[1], e), file=sys.stderr)
        return 1
    finally:
        Daemon.kill_all()
    log("PASS %s (%.1f s)" % (sys.argv[1], time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
