#!/usr/bin/env python3
"""goldfinchd --http end to end, with Python's standard library and curl as clients.

Usage: http_test.py CASE   (routes, auth, limits, ask_equal, tar_ingest, clients64,
                            no_context, progress, web_page, browser, openai_sdk)
Environment: GOLDFINCHD, GF (the gf client), GF_RUN (gf-run, the engine in one process),
MODEL (models/goldfinch-byte.gguf), WORK; for browser and openai_sdk NODE_DIR (where npm
installs puppeteer-core and openai, in the build tree) and CHROMIUM (/usr/bin/chromium).
browser and openai_sdk skip (77) when node, npm or (browser) Chromium are absent.
Each case starts its own daemon on a Unix socket (for gf) and a free HTTP port. Exit 0
pass, 1 fail, 77 skip.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time

GOLDFINCHD = os.environ.get("GOLDFINCHD", "")
GF = os.environ.get("GF", "")
GF_RUN = os.environ.get("GF_RUN", "")
MODEL = os.environ.get("MODEL", "")
WORK = os.environ.get("WORK", "/tmp/gf_http_test")
MODEL_ID = "goldfinch-byte"
TEXT = (b"GoldFinch keeps a compressed cache of a long text and answers questions about it.\n"
        b"The pass key is 71432. Remember it.\n") * 40
QUESTION = "\nWhat is the pass key? The pass key is "


NODE_DIR = os.environ.get("NODE_DIR", os.path.join(WORK, "node"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TESTS = os.path.dirname(os.path.abspath(__file__))
# What the Node tests use, installed into the build tree at test time (never committed).
# Versions that run on Debian 12's Node 18 (openai 5 and later want Node 20).
NODE_PACKAGES = ["puppeteer-core@24", "openai@4"]


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Daemon:
    def __init__(self, name, extra=(), token=None):
        self.dir = os.path.join(WORK, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.sock = os.path.join(self.dir, "gf.sock")
        self.port = free_port()
        self.token = token
        self.log = os.path.join(self.dir, "log")
        args = [GOLDFINCHD, "--model", MODEL, "--cache-dir", os.path.join(self.dir, "cache"),
                "--listen", "unix:" + self.sock, "--http", "127.0.0.1:%d" % self.port,
                "--threads", "1", "--tier-mb", "16"] + list(extra)
        self.env = dict(os.environ, GOLDFINCH_SERVER="unix:" + self.sock)
        if token:
            tf = os.path.join(self.dir, "token")
            with open(tf, "w") as f:
                f.write(token + "\n")
            args += ["--auth-token-file", tf]
            self.env["GOLDFINCH_TOKEN_FILE"] = tf
        self.p = subprocess.Popen(args, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                st, _, _ = self.request("GET", "/health")
                if st == 200:
                    return
            except OSError:
                pass
            check(self.p.poll() is None, "goldfinchd exited at start: " + open(self.log).read())
            time.sleep(0.05)
        raise Fail("goldfinchd did not become healthy")

    def headers(self, token=None):
        h = {}
        t = token if token is not None else self.token
        if t:
            h["Authorization"] = "Bearer " + t
        return h

    def request(self, method, path, body=None, headers=None, conn=None, token=None):
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        h = self.headers(token)
        h.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        return r.status, dict(r.getheaders()), data

    def json(self, method, path, body=None, **kw):
        st, h, data = self.request(method, path, body, **kw)
        check(data.endswith(b"\n") and data.count(b"\n") == 1,
              "%s %s: not one line of JSON: %r" % (method, path, data[:200]))
        return st, json.loads(data)

    def gf(self, *args):
        r = subprocess.run([GF] + list(args), env=self.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        check(r.returncode == 0, "gf %s: exit %d: %s" % (args, r.returncode, r.stderr.decode()))
        return r.stdout

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(timeout=30)
        log = open(self.log, errors="replace").read()
        check(rc == 0, "goldfinchd exit %d; log:\n%s" % (rc, log[-3000:]))
        for bad in ("AddressSanitizer", "runtime error", "LeakSanitizer"):
            check(bad not in log, "sanitizer report in the log:\n" + log[-3000:])


def sse_events(resp):
    """The data: payloads of an SSE stream, as they arrive."""
    buf = b""
    while True:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(1)
        if not chunk:
            return
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            check(ev.startswith(b"data: "), "not an SSE data line: %r" % ev[:100])
            yield ev[6:]


def stream(d, path, body, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    h = d.headers()
    h["Content-Type"] = "application/json"
    c.request("POST", path, body=json.dumps(body).encode(), headers=h)
    r = c.getresponse()
    if r.status != 200:
        raise Fail("stream %s: status %d %r" % (path, r.status, r.read()[:300]))
    check(r.getheader("Content-Type") == "text/event-stream", "stream content type")
    out = [e for e in sse_events(r)]
    if conn is None:
        c.close()
    check(out and out[-1] == b"[DONE]", "stream does not end with [DONE]: %r" % out[-2:])
    return [json.loads(e) for e in out[:-1]]


def ingest_text(d, name, text):
    st, o = d.json("POST", "/v1/contexts?name=" + name, text, headers={"Content-Type": "text/plain"})
    check(st == 201, "ingest %s: %d %r" % (name, st, o))
    return o


# ---- cases ------------------------------------------------------------------------------------

def case_routes():
    d = Daemon("routes")
    st, o = d.json("GET", "/health")
    check(st == 200 and o["status"] == "ok", "health %r" % o)
    st, o = d.json("GET", "/v1/models")
    check(st == 200 and [m["id"] for m in o["data"]] == [MODEL_ID], "models %r" % o)
    # Text ingest, streamed progress as SSE.
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    c.request("POST", "/v1/contexts?name=book&stream=true", body=TEXT, headers={"Content-Type": "text/plain"})
    r = c.getresponse()
    check(r.status == 200, "streamed ingest status %d" % r.status)
    evs = list(sse_events(r))
    check(evs[-1] == b"[DONE]", "ingest stream end")
    last = json.loads(evs[-2])
    check(last["object"] == "context" and last["name"] == "book" and last["sealed"], "ingest %r" % last)
    check(all(json.loads(e)["object"] == "context.progress" for e in evs[:-2]), "progress events")
    # The same connection is kept alive for the next requests.
    st, _, data = d.request("GET", "/v1/contexts", conn=c)
    o = json.loads(data)
    check(st == 200 and [x["name"] for x in o["data"]] == ["book"], "contexts %r" % o)
    check(o["data"][0]["tokens"] == len(TEXT), "byte model: one token per byte")
    st, _, data = d.request("GET", "/v1/models", conn=c)
    ids = [m["id"] for m in json.loads(data)["data"]]
    check(ids == [MODEL_ID, MODEL_ID + "@book"], "models with contexts %r" % ids)
    # Non-streamed ingest of the same text: reused.
    o = ingest_text(d, "book2", TEXT)
    check(o["reused"] and o["name"] == "book", "identical ingest reused %r" % o)
    st, _, data = d.request("GET", "/metrics", conn=c)
    check(st == 200 and b"goldfinch_jobs_accepted_total" in data, "metrics")
    c.close()
    # Completions, streamed and not.
    body = {"model": MODEL_ID + "@book", "prompt": QUESTION, "max_tokens": 8, "temperature": 0}
    st, o = d.json("POST", "/v1/completions", body)
    check(st == 200 and o["object"] == "text_completion", "completion %r" % o)
    text = o["choices"][0]["text"]
    check(o["choices"][0]["finish_reason"] in ("stop", "length"), "finish_reason")
    u = o["usage"]
    check(u["prompt_tokens_details"]["cached_tokens"] == len(TEXT), "cached tokens %r" % u)
    check(u["prompt_tokens"] == len(TEXT) + len(QUESTION), "prompt tokens %r" % u)
    check(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], "total tokens")
    t = o["timings"]
    for k in ("prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms",
              "predicted_per_second", "cache_n"):
        check(k in t, "timings lacks " + k)
    check(t["cache_n"] == len(TEXT) and t["prompt_n"] == len(QUESTION), "timings %r" % t)
    chunks = stream(d, "/v1/completions", dict(body, stream=True))
    check("".join(ch["choices"][0]["text"] for ch in chunks) == text, "streamed = not streamed")
    check(chunks[-1]["choices"][0]["finish_reason"] == o["choices"][0]["finish_reason"], "stream finish")
    check("usage" in chunks[-1] and "timings" in chunks[-1], "usage in the last chunk")
    # Stop strings, and max_tokens as n_predict.
    nb = dict(body, n_predict=3)
    del nb["max_tokens"]
    st, o2 = d.json("POST", "/v1/completions", nb)
    check(st == 200 and o2["usage"]["completion_tokens"] <= 3, "n_predict")
    if len(text) > 2:
        st, o3 = d.json("POST", "/v1/completions", dict(body, stop=[text[1:3]]))
        check(st == 200 and o3["choices"][0]["text"] == text[:text.find(text[1:3])]
              and o3["choices"][0]["finish_reason"] == "stop", "stop string %r" % o3)
    # Errors: one line of JSON each, the daemon keeps serving.
    errs = [
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("POST", "/v1/chat/completions", {"model": MODEL_ID + "@book", "messages": "hi"}, 400),
        ("POST", "/v1/chat/completions", {"model": MODEL_ID + "@book", "messages": [{"role": "user", "content": 5}]}, 400),
        ("POST", "/v1/completions", {"model": MODEL_ID + "@book", "prompt": "x", "temperature": "hot"}, 400),
        ("POST", "/v1/completions", {"model": MODEL_ID + "@book", "prompt": "x", "max_tokens": 0}, 400),
        ("POST", "/v1/completions", {"model": MODEL_ID + "@book", "prompt": "x", "top_p": 7}, 400),
        ("POST", "/v1/completions", {"model": MODEL_ID + "@book", "prompt": "x", "n": 2}, 400),
        ("POST", "/v1/completions", {"model": MODEL_ID + "@book", "prompt": "x", "logprobs": 3}, 400),
        ("POST", "/v1/chat/completions", {"model": MODEL_ID + "@book", "messages": [{"role": "user", "content": "x"}],
                                          "tools": [{"type": "function"}]}, 400),
        ("POST", "/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404),
        ("POST", "/v1/completions", {"model": MODEL_ID + "@nosuch", "prompt": "x"}, 404),
        ("POST", "/v1/completions", [1, 2], 400),
        ("GET", "/v1/nothing", None, 404),
        ("GET", "/v1/completions", None, 405),
        ("PUT", "/v1/models", None, 405),
        ("DELETE", "/v1/contexts/nosuch", None, 404),
        ("POST", "/v1/contexts", b"x", 400),
    ]
    for method, path, body, want in errs:
        st, o = d.json(method, path, body)
        check(st == want and "message" in o["error"] and o["error"]["code"] == want,
              "%s %s %r: %d %r (wanted %d)" % (method, path, body, st, o, want))
    # Oversized bodies: 413, announced or chunked.
    big = b'{"model": "x", "prompt": "' + b"a" * (70 << 10) + b'"}'
    st, o = Daemon.json(d, "POST", "/v1/completions", big)  # under 16M: fine, a 404 model
    check(st == 404, "a 70 KiB body is allowed")
    d.stop()
    d = Daemon("routes_small", ["--max-frame", "64K"])
    st, o = d.json("POST", "/v1/completions", big)
    check(st == 413, "oversized body: %d" % st)
    r = subprocess.run(["curl", "-s", "-H", "Transfer-Encoding: chunked", "--data-binary", "@-",
                        "-w", "\n%{http_code}", "http://127.0.0.1:%d/v1/completions" % d.port],
                       input=big, stdout=subprocess.PIPE, timeout=30)
    check(r.stdout.endswith(b"413"), "chunked oversized body: %r" % r.stdout[-200:])
    st, o = d.json("GET", "/health")
    check(st == 200, "health after errors")
    # Delete, then the model is gone from the list.
    o = ingest_text(d, "tmp", b"some text to drop\n")
    st, o = d.json("DELETE", "/v1/contexts/tmp")
    check(st == 200 and o["deleted"], "delete %r" % o)
    st, o = d.json("GET", "/v1/models")
    check([m["id"] for m in o["data"]] == [MODEL_ID], "after delete %r" % o)
    d.stop()


def case_auth():
    d = Daemon("auth", token="s3cret-token")
    st, o = d.json("GET", "/health", token="")
    check(st == 200, "health needs no token")
    for path in ("/v1/models", "/v1/contexts", "/metrics"):
        st, o = d.json("GET", path, token="")
        check(st == 401 and o["error"]["type"] == "authentication_error", "%s without a token: %d" % (path, st))
        st, o = d.json("GET", path, token="wrong")
        check(st == 401, "%s with a wrong token: %d" % (path, st))
    st, o = d.json("POST", "/v1/completions", {"model": MODEL_ID, "prompt": "x"}, token="wrong")
    check(st == 401, "completions with a wrong token")
    st, o = d.json("GET", "/v1/models")
    check(st == 200, "right token")
    r = subprocess.run(["curl", "-s", "-H", "Authorization: Bearer s3cret-token",
                        "http://127.0.0.1:%d/v1/models" % d.port], stdout=subprocess.PIPE, timeout=30)
    check(json.loads(r.stdout)["data"][0]["id"] == MODEL_ID, "curl with the token")
    d.stop()
    # Beyond loopback without a token: refused at start.
    r = subprocess.run([GOLDFINCHD, "--model", MODEL, "--cache-dir", os.path.join(WORK, "auth2"),
                        "--http", "0.0.0.0:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    check(r.returncode != 0 and b"auth-token-file" in r.stderr + r.stdout, "0.0.0.0 without a token: %r" % r.stderr)
    r = subprocess.run([GOLDFINCHD, "--help"], stdout=subprocess.PIPE, timeout=30)
    check(b"--http" in r.stdout, "--help names --http")


def case_limits():
    d = Daemon("limits", ["--max-jobs", "1", "--max-queue", "1", "--max-context-tokens", "5000"])
    ingest_text(d, "book", TEXT[:3000])
    body = {"model": MODEL_ID + "@book", "prompt": QUESTION, "max_tokens": 4000, "temperature": 0,
            "stream": True}
    conns, statuses = [], []
    for _ in range(4):
        c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
        c.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                  headers={"Content-Type": "application/json"})
        conns.append(c)
    for c in conns:
        r = c.getresponse()
        statuses.append(r.status)
        if r.status != 200:
            o = json.loads(r.read())
            check(o["error"]["type"] == "rate_limit_error", "429 type %r" % o)
        c.close()   # the running streams are cancelled by the disconnect
    check(statuses.count(200) >= 1 and 429 in statuses, "queue full gives 429: %r" % statuses)
    # A prompt over --max-context-tokens, and an ingest over it.
    st, o = d.json("POST", "/v1/completions", dict(body, prompt="x" * 6000, stream=False))
    check(st == 413, "prompt over the limit: %d %r" % (st, o))
    st, o = d.json("POST", "/v1/contexts?name=huge", TEXT * 3, headers={"Content-Type": "text/plain"})
    check(st == 413, "ingest over the limit: %d %r" % (st, o))
    deadline = time.time() + 20
    while time.time() < deadline:
        st, _, m = d.request("GET", "/metrics")
        if b'goldfinch_jobs{state="running"} 0' in m and b'goldfinch_jobs{state="queued"} 0' in m:
            break
        time.sleep(0.1)
    else:
        raise Fail("jobs still running after their clients left")
    st, o = d.json("POST", "/v1/completions", dict(body, stream=False, max_tokens=4))
    check(st == 200, "served after the limits")
    d.stop()


def case_ask_equal():
    d = Daemon("ask")
    ingest_text(d, "book", TEXT)
    for max_tokens in (12, 64):
        want = d.gf("ask", "book", QUESTION, "--temperature", "0", "--max-tokens", str(max_tokens))
        body = {"model": MODEL_ID + "@book", "messages": [{"role": "user", "content": QUESTION}],
                "temperature": 0, "max_tokens": max_tokens}
        st, o = d.json("POST", "/v1/chat/completions", body)
        check(st == 200 and o["object"] == "chat.completion", "chat %r" % o)
        got = o["choices"][0]["message"]["content"]
        check(got == want.decode("utf-8", "replace"), "chat %r != gf ask %r" % (got, want))
        chunks = stream(d, "/v1/chat/completions", dict(body, stream=True))
        check(chunks[0]["choices"][0]["delta"].get("role") == "assistant", "first delta names the role")
        s = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
        check(s == got, "streamed chat %r != %r" % (s, got))
        check(all(ch["object"] == "chat.completion.chunk" for ch in chunks), "chunk objects")
        check(o["usage"]["prompt_tokens_details"]["cached_tokens"] == len(TEXT), "cached")
    check("71432" in got, "the byte model finds the pass key: %r" % got)
    # Seeded sampling: the same seed, the same answer as gf ask's.
    want = d.gf("ask", "book", QUESTION, "--temperature", "0.8", "--seed", "7", "--top-k", "20",
                "--max-tokens", "24")
    st, o = d.json("POST", "/v1/chat/completions",
                   {"model": MODEL_ID + "@book", "messages": [{"role": "user", "content": QUESTION}],
                    "temperature": 0.8, "seed": 7, "top_k": 20, "max_tokens": 24})
    check(o["choices"][0]["message"]["content"] == want.decode("utf-8", "replace"), "seeded chat = gf ask")
    # A conversation goes through the template: "User: ...\nAssistant: ".
    want = d.gf("ask", "book", "System: Be brief.\nUser: Hi\nAssistant: ", "--temperature", "0",
                "--max-tokens", "16")
    st, o = d.json("POST", "/v1/chat/completions",
                   {"model": MODEL_ID + "@book", "temperature": 0, "max_tokens": 16,
                    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]})
    check(o["choices"][0]["message"]["content"] == want.decode("utf-8", "replace"), "template = gf ask")
    d.stop()


def gf_run_no_context(d, question, *args):
    """The answer of the engine in one process, without a context (gf-run ask --no-context)."""
    r = subprocess.run([GF_RUN, "--model", MODEL, "--cache-dir", os.path.join(d.dir, "run_cache"),
                        "--threads", "1", "ask", "--no-context", question] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    check(r.returncode == 0, "gf-run ask --no-context: exit %d: %s" % (r.returncode, r.stderr.decode()))
    return r.stdout


def case_no_context():
    """The plain model id answers the prompt alone: gf-run ask --no-context's bytes."""
    d = Daemon("nocontext")
    prompt = TEXT.decode() + QUESTION
    want = gf_run_no_context(d, prompt, "--temperature", "0", "--max-tokens", "16")
    # The socket protocol's Generate.no_context (1.3), through gf, gives the same bytes.
    sock = d.gf("ask", "--no-context", prompt, "--temperature", "0", "--max-tokens", "16")
    check(sock == want, "gf ask --no-context %r != gf-run %r" % (sock, want))
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": prompt}],
            "temperature": 0, "max_tokens": 16}
    st, o = d.json("POST", "/v1/chat/completions", body)
    check(st == 200, "plain model: %d %r" % (st, o))
    got = o["choices"][0]["message"]["content"]
    check(got == want.decode("utf-8", "replace"), "no context %r != gf-run %r" % (got, want))
    check("71432" in got, "the byte model reads the pass key in the prompt: %r" % got)
    u = o["usage"]
    check(u["prompt_tokens_details"]["cached_tokens"] == 0 and u["prompt_tokens"] == len(prompt),
          "usage without a context %r" % u)
    check(o["timings"]["cache_n"] == 0 and o["model"] == MODEL_ID, "timings %r" % o["timings"])
    chunks = stream(d, "/v1/chat/completions", dict(body, stream=True))
    check("".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks) == got, "streamed")
    st, o = d.json("POST", "/v1/completions", {"model": MODEL_ID, "prompt": "Once", "temperature": 0.7,
                                                "seed": 3, "max_tokens": 12})
    want = gf_run_no_context(d, "Once", "--temperature", "0.7", "--seed", "3", "--max-tokens", "12")
    check(st == 200 and o["choices"][0]["text"] == want.decode("utf-8", "replace"), "seeded %r" % o)
    # Nothing was stored for them.
    st, o = d.json("GET", "/v1/contexts")
    check(o["data"] == [], "contexts after answers without one %r" % o)
    d.stop()


def case_progress():
    """return_progress: prompt_progress events between slices of a long prompt, the answer's
    bytes unchanged; on a context, cache counts its tokens."""
    d = Daemon("progress")
    ingest_text(d, "book", TEXT)
    long_q = ("Some filler to make the prompt long. " * 150) + QUESTION
    for model, cache in ((MODEL_ID, 0), (MODEL_ID + "@book", len(TEXT))):
        body = {"model": model, "messages": [{"role": "user", "content": long_q}],
                "temperature": 0, "max_tokens": 12, "stream": True}
        plain = stream(d, "/v1/chat/completions", body)
        check(not any("prompt_progress" in ch for ch in plain), "progress sent unasked")
        chunks = stream(d, "/v1/chat/completions", dict(body, return_progress=True))
        prog = [ch["prompt_progress"] for ch in chunks if "prompt_progress" in ch]
        total = cache + len(long_q)
        check(len(prog) >= 4, "%s: %d progress events for %d tokens" % (model, len(prog), len(long_q)))
        check(all(p["total"] == total and p["cache"] == cache for p in prog), "totals %r" % prog)
        done = [p["processed"] for p in prog]
        check(done[0] == cache and done[-1] == total and done == sorted(done) and len(set(done)) == len(done),
              "processed %r" % done)
        times = [p["time_ms"] for p in prog]
        check(times == sorted(times), "time_ms %r" % times)
        first_text = next(i for i, ch in enumerate(chunks) if ch["choices"] and ch["choices"][0]["delta"].get("content"))
        check(all("prompt_progress" not in ch for ch in chunks[first_text:]), "progress after the answer began")
        text = lambda cs: "".join(ch["choices"][0]["delta"].get("content", "") for ch in cs if ch["choices"])
        check(text(chunks) == text(plain), "%s: answer with progress %r != %r" % (model, text(chunks), text(plain)))
        st, o = d.json("POST", "/v1/chat/completions", dict(body, stream=False, return_progress=True))
        check(st == 200 and o["choices"][0]["message"]["content"] == text(plain), "not streamed: ignored")
    st, o = d.json("POST", "/v1/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}],
                                                    "stream": True, "return_progress": "yes"})
    check(st == 400, "return_progress not a boolean: %d" % st)
    d.stop()


def node_ready(browser):
    """node and the npm packages, installed once into NODE_DIR (a lock keeps parallel cases
    from installing at once); Skip when node, npm or Chromium are absent."""
    import fcntl
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            raise Skip("no %s (Debian: apt-get install nodejs npm)" % tool)
    if browser and not os.access(CHROMIUM, os.X_OK):
        raise Skip("no Chromium at %s (Debian: apt-get install chromium)" % CHROMIUM)
    os.makedirs(NODE_DIR, exist_ok=True)
    with open(os.path.join(NODE_DIR, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        have = all(os.path.exists(os.path.join(NODE_DIR, "node_modules", p.rsplit("@", 1)[0], "package.json"))
                   for p in NODE_PACKAGES)
        if not have:
            r = subprocess.run(["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", NODE_DIR]
                               + NODE_PACKAGES, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300,
                               env=dict(os.environ, PUPPETEER_SKIP_DOWNLOAD="1"))
            check(r.returncode == 0, "npm install %s: %s" % (" ".join(NODE_PACKAGES), r.stdout.decode()[-2000:]))


def run_node(script, env):
    r = subprocess.run(["node", os.path.join(TESTS, script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=180, env=dict(os.environ, NODE_PATH=os.path.join(NODE_DIR, "node_modules"), **env))
    check(r.returncode == 0, "%s: exit %d: %s" % (script, r.returncode, r.stderr.decode()[-3000:]))
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


def case_web_page():
    """GET / is the embedded page, without a token, with a strict content policy."""
    d = Daemon("web", token="page-token")
    st, h, data = d.request("GET", "/", token="")
    check(st == 200 and h["Content-Type"].startswith("text/html"), "GET /: %d %r" % (st, h))
    with open(os.path.join(TESTS, "..", "daemon", "web", "index.html"), "rb") as f:
        check(data == f.read(), "GET / is not daemon/web/index.html byte for byte")
    check("default-src 'none'" in h.get("Content-Security-Policy", ""), "content policy %r" % h)
    st, _, _ = d.request("POST", "/", b"x", token="")
    check(st == 405, "POST /: %d" % st)
    st, _, _ = d.request("GET", "/v1/models", token="")
    check(st == 401, "the API still needs the token: %d" % st)
    d.stop()


def case_browser():
    """The page in headless Chromium: a folder uploaded through its folder input (as a tar
    built by the page), its progress bar to the end, a question streamed: gf ask's answer."""
    node_ready(True)
    d = Daemon("browser", token="browser-token")
    src = os.path.join(d.dir, "proj")
    os.makedirs(os.path.join(src, "lib"))
    files = {
        "README.md": "GoldFinch test project.\nThe pass key is 71432. Remember it.\n",
        "main.c": "#include \"lib/util.h\"\nint main(void) { return answer(); }\n",
        os.path.join("lib", "util.h"): "static inline int answer(void) { return 71432; }\n",
    }
    for rel, text in files.items():
        with open(os.path.join(src, rel), "w") as f:
            f.write(text * 8)
    book = os.path.join(d.dir, "book.txt")
    with open(book, "wb") as f:
        f.write(TEXT)
    max_tokens = 24
    out = run_node("http_browser.js", {
        "GF_URL": "http://127.0.0.1:%d" % d.port, "GF_TOKEN": d.token, "GF_FOLDER": src,
        "GF_NAME": "proj", "GF_MODEL": MODEL_ID + "@proj", "GF_QUESTION": QUESTION,
        "GF_MAX_TOKENS": str(max_tokens), "CHROMIUM": CHROMIUM, "GF_BOOK": book,
        "GF_SCREENSHOT": os.path.join(d.dir, "page.png")})
    check(not out["problems"], "the page reported errors: %r" % out["problems"])
    check(sorted(out["picked"]) == sorted("proj/" + k.replace(os.sep, "/") for k in files),
          "files the input took %r" % out["picked"])
    check(out["ingest"]["value"] == 1 and "Ready: proj" in out["ingest"]["status"], "ingest %r" % out["ingest"])
    # The page's tar is the folder: gf ingest of it finds the same context stored.
    r = subprocess.run([GF, "ingest", "--name", "proj2", src], env=d.env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    st, o = d.json("GET", "/v1/contexts")
    check([c["name"] for c in o["data"]] == ["proj", "book"], "gf ingest of the folder did not reuse the page's "
          "context: %r (%s)" % (o, r.stdout.decode()))
    want = d.gf("ask", "proj", QUESTION, "--temperature", "0", "--max-tokens", str(max_tokens))
    check(out["state"] == "done" and out["error"] == "", "answer state %r" % out)
    check(out["answer"] == want.decode("utf-8", "replace"), "page %r != gf ask %r" % (out["answer"], want))
    tokens = o["data"][0]["tokens"]
    check(out["cached"] == format(tokens, ","), "cached tokens shown %r, context %d" % (out["cached"], tokens))
    check(out["finish"] in ("stop", "length") and out["progress"] == 1, "stats %r" % out)
    check(MODEL_ID in out["models"] and MODEL_ID + "@proj" in out["models"], "models %r" % out["models"])
    # The book went as plain text: the context of the same bytes ingested as text.
    check(out["book"]["state"] == "done" and out["book"]["folder"] == 0, "book upload %r" % out["book"])
    check(ingest_text(d, "book2", TEXT)["reused"], "the page's book is not the text's context")
    d.stop()


def case_openai_sdk():
    """OpenAI's Node SDK: a context ingested over HTTP, a streamed and a plain greedy chat on
    it, both gf ask's answer; the model list; a refused model is the SDK's error."""
    node_ready(False)
    d = Daemon("openai", token="sdk-token")
    ingest_text(d, "book", TEXT)
    max_tokens = 32
    out = run_node("http_openai.js", {
        "GF_URL": "http://127.0.0.1:%d" % d.port, "GF_TOKEN": d.token, "GF_MODEL": MODEL_ID + "@book",
        "GF_QUESTION": QUESTION, "GF_MAX_TOKENS": str(max_tokens)})
    want = d.gf("ask", "book", QUESTION, "--temperature", "0", "--max-tokens", str(max_tokens)).decode("utf-8", "replace")
    check(out["streamed"] == want, "SDK stream %r != gf ask %r" % (out["streamed"], want))
    check(out["plain"] == want, "SDK completion %r != gf ask %r" % (out["plain"], want))
    check("71432" in want, "the byte model finds the pass key: %r" % want)
    check(out["models"] == [MODEL_ID, MODEL_ID + "@book"], "models %r" % out["models"])
    check(out["finish"] in ("stop", "length") and out["chunks"] > 1, "stream %r" % out)
    u = out["plain_usage"]
    check(u["prompt_tokens_details"]["cached_tokens"] == len(TEXT), "usage %r" % u)
    check(out["refused"] and out["refused"]["status"] == 404, "unknown model %r" % out["refused"])
    d.stop()


def case_tar_ingest():
    d = Daemon("tar")
    src = os.path.join(d.dir, "src")
    os.makedirs(os.path.join(src, "pkg", "sub"))
    os.makedirs(os.path.join(src, ".git"))
    files = {
        "README.md": b"# demo\nA small tree.\n",
        "pkg/__init__.py": b"",
        "pkg/core.py": b"def add(a, b):\n    return a + b\n",
        "pkg/sub/deep.c": b"int main(void) { return 0; }\n",
        "pkg.txt": b"sorted before or after pkg/? gf's walk decides\n",
        "pkg-a": b"dash sorts before slash in a full path, after it in a walk\n",
        "unicode-\u00e9.txt": b"caf\xc3\xa9\n",
        ".git/HEAD": b"ref: refs/heads/main\n",
        "blob.bin": b"\x00\x01\x02binary",
    }
    for rel, data in files.items():
        with open(os.path.join(src, rel), "wb") as f:
            f.write(data)
    d.gf("ingest", "--name", "walked", src)
    st, o = d.json("GET", "/v1/contexts")
    walked = o["data"][0]
    tar_path = os.path.join(d.dir, "src.tar")
    with tarfile.open(tar_path, "w") as t:
        t.add(src, arcname=".")
    with open(tar_path, "rb") as f:
        tar = f.read()
    st, o = d.json("POST", "/v1/contexts?name=tarred", tar, headers={"Content-Type": "application/x-tar"})
    check(st == 201, "tar ingest %d %r" % (st, o))
    check(o["key"] == walked["key"] and o["reused"], "tar ingest %r != gf ingest %r" % (o, walked))
    # Streamed, with curl, into a fresh store: the same key.
    st, o = d.json("DELETE", "/v1/contexts/walked")
    check(st == 200, "drop")
    r = subprocess.run(["curl", "-sN", "-X", "POST", "-H", "Content-Type: application/x-tar",
                        "--data-binary", "@" + tar_path,
                        "http://127.0.0.1:%d/v1/contexts?name=tarred2&stream=true" % d.port],
                       stdout=subprocess.PIPE, timeout=60)
    evs = [e[6:] for e in r.stdout.split(b"\n\n") if e]
    check(evs[-1] == b"[DONE]", "curl stream end %r" % evs[-2:])
    last = json.loads(evs[-2])
    check(last["key"] == walked["key"] and not last["reused"] and last["name"] == "tarred2",
          "streamed tar ingest %r" % last)
    st, o = d.json("POST", "/v1/contexts?name=bad", b"not a tar at all" * 100,
                   headers={"Content-Type": "application/x-tar"})
    check(st == 400, "not a tar: %d %r" % (st, o))
    d.stop()


def case_clients64():
    d = Daemon("clients64", ["--max-jobs", "4", "--max-queue", "64"])
    ingest_text(d, "book", TEXT)
    st, ref = d.json("POST", "/v1/completions", {"model": MODEL_ID + "@book", "prompt": QUESTION,
                                                 "max_tokens": 48, "temperature": 0})
    want = ref["choices"][0]["text"]
    results, errors = {}, []
    health_ok, stop = [0], threading.Event()

    def client(i):
        try:
            body = {"model": MODEL_ID + "@book", "prompt": QUESTION, "temperature": 0, "stream": True,
                    "max_tokens": 48 if i % 4 else 2000}
            c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=120)
            c.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            if r.status != 200:
                errors.append("client %d: status %d" % (i, r.status))
                return
            text, n = "", 0
            for ev in sse_events(r):
                if ev == b"[DONE]":
                    break
                n += 1
                text += json.loads(ev)["choices"][0]["text"]
                if i % 4 == 0 and n == 3:
                    # Gone mid-stream: its job must be cancelled and its slot freed.
                    c.sock.shutdown(socket.SHUT_RDWR)
                    c.close()
                    results[i] = None
                    return
            c.close()
            results[i] = text
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append("client %d: %r" % (i, e))

    def health():
        while not stop.is_set():
            st, _, _ = d.request("GET", "/health")
            if st == 200:
                health_ok[0] += 1
            else:
                errors.append("health %d" % st)
            time.sleep(0.05)

    hs = threading.Thread(target=health)
    hs.start()
    ts = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    stop.set()
    hs.join()
    check(not errors, "errors: %r" % errors[:5])
    check(len(results) == 64, "%d clients ended" % len(results))
    for i, text in results.items():
        if i % 4:
            check(text == want, "client %d: %r != %r" % (i, text, want))
    check(health_ok[0] > 0, "health answered throughout")
    deadline = time.time() + 20
    while time.time() < deadline:
        st, _, m = d.request("GET", "/metrics")
        if b'goldfinch_jobs{state="running"} 0' in m and b'goldfinch_jobs{state="queued"} 0' in m:
            break
        time.sleep(0.1)
    else:
        raise Fail("jobs left running after the clients went")
    check(b'goldfinch_jobs_total{state="cancelled"} 16' in m, "16 cancelled jobs:\n" + m.decode())
    st, o = d.json("POST", "/v1/completions", {"model": MODEL_ID + "@book", "prompt": QUESTION,
                                               "max_tokens": 48, "temperature": 0})
    check(o["choices"][0]["text"] == want, "answers after the clients left")
    d.stop()


CASES = {"routes": case_routes, "auth": case_auth, "limits": case_limits, "ask_equal": case_ask_equal,
         "tar_ingest": case_tar_ingest, "clients64": case_clients64, "no_context": case_no_context,
         "progress": case_progress, "web_page": case_web_page, "browser": case_browser,
         "openai_sdk": case_openai_sdk}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print("usage: http_test.py " + "|".join(CASES), file=sys.stderr)
        return 2
    if not (GOLDFINCHD and GF and MODEL and os.path.exists(MODEL)):
        print("skip: GOLDFINCHD, GF and MODEL must be set", file=sys.stderr)
        return 77
    if not shutil.which("curl"):
        print("skip: no curl", file=sys.stderr)
        return 77
    os.makedirs(WORK, exist_ok=True)
    try:
        CASES[sys.argv[1]]()
    except Fail as e:
        print("FAIL: %s" % e, file=sys.stderr)
        return 1
    except Skip as e:
        print("skip: %s" % e, file=sys.stderr)
        return 77
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
