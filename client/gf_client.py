#!/usr/bin/python3
"""gf_client — a second client of goldfinchd, in Python, independent of libgfclient.

It speaks the wire protocol of protocol/README.md with the Python bindings that the build
generates from protocol/goldfinch.proto (protoc --python_out), on Debian's python3-protobuf:
proof that the protocol is usable from outside C.

As a module:

    import gf_client
    pb = gf_client.load_bindings("/path/to/build/protocol/python")
    with gf_client.Client("unix:/tmp/gf.sock") as c:
        ready = c.ingest(["src/"], name="code")
        for text in c.ask("code", "What does main do?", temperature=0, seed=1):
            sys.stdout.buffer.write(text)
        print(c.last_done.usage)

As a program (the same commands as `gf`, fewer flags):

    gf_client.py [--server A] [--auth-token-file F] [--proto-dir D] [--timeout S] \\
        hello | ingest [--name N] [--c-dtype T] [--resume] PATH... | ask CONTEXT QUESTION \\
        [--max-tokens N --temperature T --top-k K --top-p P --min-p M --presence-penalty X \\
        --frequency-penalty X --stop S --seed S] [-v] | contexts | drop CONTEXT | status | \\
        cancel JOB

`status` lists the queued and running jobs with their server-wide numbers and, from a
protocol 1.2 server, its compute mode and the memory it holds against the budgets (null
from an older one); `cancel JOB` stops one, whichever client started it (protocol 1.1:
exit 0 when the server accepted, 3 when there is no such job).

The bindings are found by --proto-dir, else $GF_PROTO_PYTHON_DIR. Exit codes are gf's
(gf --help): 0 ok, 1 server error, 2 usage, 3 not found, 4 connection or protocol,
5 cancelled, 6 authentication, 7 limits.
"""

import argparse
import json
import os
import socket
import stat
import struct
import sys

PROTO_MAJOR, PROTO_MINOR = 1, 2
DEFAULT_SERVER = "127.0.0.1:7433"
PIECE_BYTES = 64 << 10
SNIFF_BYTES = 8192
FILE_HEADER = b"### File: "
VCS_DIRS = {b".git", b".hg", b".svn", b".bzr", b"_darcs", b"CVS", b".jj"}
MAX_RESPONSE = 64 << 20

EXIT_OK, EXIT_SERVER, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3
EXIT_CONNECTION, EXIT_CANCELLED, EXIT_AUTH, EXIT_LIMIT = 4, 5, 6, 7

pb = None  # the goldfinch_pb2 module, once loaded


def load_bindings(proto_dir=None):
    """Imports goldfinch_pb2 from proto_dir (else $GF_PROTO_PYTHON_DIR) and returns it."""
    global pb
    d = proto_dir or os.environ.get("GF_PROTO_PYTHON_DIR")
    if d:
        sys.path.insert(0, d)
    try:
        import goldfinch_pb2
    except ImportError as e:
        raise SystemExit("gf_client: cannot import goldfinch_pb2 (%s): pass --proto-dir or set "
                         "GF_PROTO_PYTHON_DIR to build/protocol/python" % e)
    pb = goldfinch_pb2
    return pb


class ServerError(Exception):
    """An Error response: code (ErrorCode number), name ("NOT_FOUND"), message."""

    def __init__(self, code, message):
        self.code = code
        self.name = pb.ErrorCode.Name(code)[6:] if code in pb.ErrorCode.values() else str(code)
        self.message = message
        super().__init__("server: %s: %s" % (self.name, message))

    def exit_code(self):
        n = self.name
        if n == "NOT_FOUND":
            return EXIT_NOT_FOUND
        if n == "UNAUTHENTICATED":
            return EXIT_AUTH
        if n == "VERSION":
            return EXIT_CONNECTION
        if n == "CANCELLED":
            return EXIT_CANCELLED
        if n in ("BUSY", "TOO_LARGE", "NO_SPACE", "SHUTTING_DOWN"):
            return EXIT_LIMIT
        return EXIT_SERVER


class ProtocolError(Exception):
    """The connection failed or the server broke the protocol."""


# ---- input files --------------------------------------------------------------------------

def is_text(buf, truncated):
    """No NUL byte and valid UTF-8; a sequence cut by the end of a truncated buffer is fine."""
    if b"\0" in buf:
        return False
    try:
        buf.decode("utf-8")
    except UnicodeDecodeError as e:
        return truncated and e.reason == "unexpected end of data" and e.end == len(buf)
    return True


def _sniff(path, size):
    with open(path, "rb") as f:
        buf = f.read(SNIFF_BYTES)
    return is_text(buf, size > len(buf))


def walk(path, note=None):
    """[(path to open, relative path to send, size)] of the text files under path (a file or
    a folder), sorted bytewise per folder level; note(path, why) hears about what is skipped.
    The same rules as gf (gfc_walk)."""
    note = note or (lambda p, why: None)
    out = []
    bpath = os.fsencode(path)
    st = os.stat(bpath)
    if stat.S_ISREG(st.st_mode):
        if not _sniff(bpath, st.st_size):
            note(path, "binary file")
            return out
        base = os.path.basename(bpath.rstrip(b"/")) or bpath
        out.append((bpath, base, st.st_size))
        return out
    if not stat.S_ISDIR(st.st_mode):
        raise OSError("%s: not a regular file or a folder" % path)

    def walk_dir(d, rel):
        try:
            names = sorted(os.listdir(d))
        except OSError as e:
            note(os.fsdecode(d), e.strerror)
            return
        for name in names:
            p = d + b"/" + name if not d.endswith(b"/") else d + name
            r = rel + b"/" + name if rel else name
            try:
                st = os.lstat(p)
            except OSError as e:
                note(os.fsdecode(p), e.strerror)
                continue
            if stat.S_ISLNK(st.st_mode):
                try:
                    st = os.stat(p)
                except OSError:
                    note(os.fsdecode(p), "broken symbolic link")
                    continue
                if stat.S_ISDIR(st.st_mode):
                    note(os.fsdecode(p), "symbolic link to a folder")
                    continue
            if stat.S_ISDIR(st.st_mode):
                if name in VCS_DIRS:
                    note(os.fsdecode(p), "version-control folder")
                else:
                    walk_dir(p, r)
                continue
            if not stat.S_ISREG(st.st_mode):
                note(os.fsdecode(p), "not a regular file")
                continue
            try:
                text = _sniff(p, st.st_size)
            except OSError as e:
                note(os.fsdecode(p), e.strerror)
                continue
            if not text:
                note(os.fsdecode(p), "binary file")
                continue
            out.append((p, r, st.st_size))

    walk_dir(bpath, b"")
    return out


def rendered_size(rel, size):
    return len(FILE_HEADER) + len(rel) + 1 + size + 1


# ---- the connection -----------------------------------------------------------------------

class Client:
    """One connection to goldfinchd; one request at a time."""

    def __init__(self, server=None, token_file=None, timeout=None, name="gf_client.py"):
        if pb is None:
            load_bindings()
        self.server = server or os.environ.get("GOLDFINCH_SERVER") or DEFAULT_SERVER
        token_file = token_file or os.environ.get("GOLDFINCH_TOKEN_FILE")
        self.token = None
        if token_file:
            with open(token_file, "rb") as f:
                t = f.read()
            if t.endswith(b"\n"):
                t = t[:-1]
            if t.endswith(b"\r"):
                t = t[:-1]
            if not t:
                raise PermissionError("auth token file %s: empty" % token_file)
            self.token = t.decode()
        self.timeout = timeout
        self.name = name
        self.sock = None
        self.next_id = 1
        self.buf = b""
        self.hello_reply = None
        self.last_done = None
        self.last_job = None  # server-wide number of the last job (IngestProgress/Token.job)

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.sock:
            self.sock.close()
            self.sock = None

    def _open(self):
        s = self.server
        if s.startswith("unix:") or s.startswith("/") or s.startswith("./"):
            path = s[5:] if s.startswith("unix:") else s
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout or 30)
            sock.connect(path)
        else:
            host, _, port = s.rpartition(":")
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            if not host or not port.isdigit():
                raise ValueError("server address %r: expected unix:/path or host:port" % s)
            sock = socket.create_connection((host, int(port)), timeout=self.timeout or 30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        return sock

    def connect(self):
        try:
            self.sock = self._open()
        except OSError as e:
            raise ProtocolError("connecting to %s: %s" % (self.server, e.strerror or e))
        h = pb.Hello(major=PROTO_MAJOR, minor=PROTO_MINOR, client=self.name)
        if self.token is not None:
            h.auth_token = self.token
        rid = self._send(hello=h)
        r = self._final(rid)
        if r.WhichOneof("body") != "hello":
            raise ProtocolError("server answered Hello with %s" % r.WhichOneof("body"))
        if r.hello.major != PROTO_MAJOR:
            raise ProtocolError("server speaks protocol %d.%d, this client %d.%d" %
                                (r.hello.major, r.hello.minor, PROTO_MAJOR, PROTO_MINOR))
        self.hello_reply = r.hello
        return r.hello

    # Framing: a little-endian u32 length, then one serialized message.
    def _send(self, rid=None, **body):
        if rid is None:
            rid = self.next_id
            self.next_id += 1
        req = pb.Request(id=rid, **body)
        data = req.SerializeToString()
        try:
            self.sock.sendall(struct.pack("<I", len(data)) + data)
        except OSError as e:
            raise ProtocolError("sending to %s: %s" % (self.server, e.strerror or e))
        return rid

    def _recv(self):
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack_from("<I", self.buf)
                if n > MAX_RESPONSE:
                    raise ProtocolError("response frame of %d bytes over the limit" % n)
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    r = pb.Response()
                    try:
                        r.ParseFromString(body)
                    except Exception:
                        raise ProtocolError("response frame of %d bytes does not parse" % n)
                    return r
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                raise ProtocolError("server %s: no answer for %s s" % (self.server, self.timeout))
            except OSError as e:
                raise ProtocolError("reading from %s: %s" % (self.server, e.strerror or e))
            if not chunk:
                raise ProtocolError("server %s closed the connection" % self.server)
            self.buf += chunk

    def responses(self, rid):
        """Yields the responses to request rid up to and including its final one; raises
        ServerError for an Error."""
        while True:
            r = self._recv()
            kind = r.WhichOneof("body")
            if kind == "error" and r.id in (0, rid):
                raise ServerError(r.error.code, r.error.message)
            if r.id != rid:
                continue  # stale: an earlier request's, or a Cancel that crossed its job's end
            yield r
            if kind not in ("progress", "token", None):
                return

    def _final(self, rid):
        r = None
        for r in self.responses(rid):
            pass
        return r

    def _expect(self, rid, kind):
        r = self._final(rid)
        if r.WhichOneof("body") != kind:
            raise ProtocolError("expected %s, got %s" % (kind, r.WhichOneof("body")))
        return getattr(r, kind)

    # ---- requests ----
    def status(self):
        return self._expect(self._send(status=pb.StatusRequest()), "status")

    def contexts(self):
        return list(self._expect(self._send(list_contexts=pb.ListContexts()), "contexts").contexts)

    def drop(self, context):
        return self._expect(self._send(drop_context=pb.DropContext(context=context)),
                            "dropped").serial

    def cancel(self, job):
        """Cancels job number `job` (StatusReply.jobs), started by any client: returns when
        the server accepted; ServerError NOT_FOUND when no such job. Protocol 1.1."""
        if self.hello_reply is not None and self.hello_reply.minor < 1:
            # A 1.0 server knows jobs only by request ids of their own connection, and this
            # one has none: its NOT_FOUND is the answer, as gf reports it.
            self._final(self._send(cancel=pb.Cancel(target=job)))
            raise ProtocolError("server speaks protocol %d.%d and answered a Cancel"
                                % (self.hello_reply.major, self.hello_reply.minor))
        # target is required on the wire; with job set the server ignores it.
        return self._expect(self._send(cancel=pb.Cancel(target=0, job=job)),
                            "cancel_accepted").job

    def ask(self, context, prompt, **params):
        """Yields the answer's text (bytes) as tokens arrive; self.last_done is the Done.
        params: max_tokens, temperature, top_k, top_p, min_p, presence_penalty,
        frequency_penalty, stop (list), seed; no_context=True with context "" asks the
        prompt alone (a protocol 1.3 server)."""
        g = pb.Generate(context=context, prompt=prompt)
        for k, v in params.items():
            if v is None:
                continue
            if k == "stop":
                g.stop.extend(v)
            else:
                setattr(g, k, v)
        rid = self._send(generate=g)
        self.last_done = None
        self.last_job = None
        try:
            for r in self.responses(rid):
                kind = r.WhichOneof("body")
                if kind == "token" and r.token.HasField("job"):
                    self.last_job = r.token.job
                if kind == "token" and r.token.text:
                    yield r.token.text
                elif kind == "done":
                    self.last_done = r.done
                elif kind is not None and kind != "token":
                    raise ProtocolError("expected Token or Done, got %s" % kind)
        except KeyboardInterrupt:
            # Ctrl-C: cancel the generation and wait for the server to acknowledge it.
            self._send(cancel=pb.Cancel(target=rid))
            for r in self.responses(rid):
                if r.WhichOneof("body") == "done":
                    self.last_done = r.done
            raise

    def ingest(self, inputs, name=None, c_dtype=None, resume=False, progress=None):
        """Sends inputs — paths (files or folders, walked as gf does) or bytes (plain text) —
        as one context and returns the ContextReady. progress(IngestProgress) is called for
        each progress message read while sending and waiting."""
        items = []  # ("files", [(path, rel, size)]) or ("text", bytes)
        total = 0
        for x in inputs:
            if isinstance(x, (bytes, bytearray)):
                items.append(("text", bytes(x)))
                total += len(x)
            else:
                files = walk(x, lambda p, why: print("gf_client: skipping %s: %s" % (p, why),
                                                    file=sys.stderr))
                items.append(("files", files))
                total += sum(rendered_size(r, s) for _, r, s in files)
        s = pb.IngestStart(total_bytes=total)
        if name:
            s.name = name
        if c_dtype:
            s.c_dtype = {"f16": pb.C_DTYPE_F16, "bf16": pb.C_DTYPE_BF16,
                         "f32": pb.C_DTYPE_F32}[c_dtype]
        if resume:
            s.resume = True
        rid = self._send(ingest_start=s)
        skip = 0
        if resume:
            first = self._recv_job(rid, progress)
            if first.WhichOneof("body") == "context_ready":
                return first.context_ready  # it had completed after all
            if first.WhichOneof("body") != "progress":
                raise ProtocolError("resume: expected IngestProgress first")
            skip = first.progress.bytes_done

        def text(b):
            for i in range(0, len(b), PIECE_BYTES):
                self._send(rid, ingest_data=pb.IngestData(text=b[i:i + PIECE_BYTES]))
                self._poll_progress(rid, progress)

        for kind, x in items:
            if kind == "text":
                cut = min(skip, len(x))
                skip -= cut
                text(x[cut:])
                continue
            for path, rel, size in x:
                r = rendered_size(rel, size)
                if skip >= r:
                    skip -= r
                    continue
                with open(path, "rb") as f:
                    if skip == 0:
                        self._send(rid, ingest_data=pb.IngestData(
                            file=pb.FileStart(path=os.fsdecode(rel), size=size)))
                        while True:
                            b = f.read(PIECE_BYTES)
                            if not b:
                                break
                            text(b)
                        continue
                    # Resuming inside this file: the rest of its rendering as plain text.
                    hdr = FILE_HEADER + rel + b"\n"
                    if skip < len(hdr):
                        text(hdr[skip:])
                    else:
                        f.seek(skip - len(hdr))
                    text(f.read())
                    text(b"\n")
                    skip = 0
        self._send(rid, ingest_end=pb.IngestEnd())
        while True:
            r = self._recv_job(rid, progress)
            kind = r.WhichOneof("body")
            if kind == "context_ready":
                return r.context_ready
            if kind not in ("progress", None):
                raise ProtocolError("expected ContextReady, got %s" % kind)

    def _recv_job(self, rid, progress):
        for r in self.responses(rid):
            self._note_progress(r, progress)
            return r

    def _note_progress(self, r, progress):
        if r.WhichOneof("body") != "progress":
            return
        if r.progress.HasField("job"):
            self.last_job = r.progress.job
        if progress:
            progress(r.progress)

    def _poll_progress(self, rid, progress):
        """Handles what has arrived, without waiting: progress, or an Error that stops us."""
        self.sock.setblocking(False)
        try:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ProtocolError("server %s closed the connection" % self.server)
            self.buf += chunk
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            self.sock.settimeout(self.timeout)
        while len(self.buf) >= 4 and len(self.buf) >= 4 + struct.unpack_from("<I", self.buf)[0]:
            r = self._recv()  # a whole frame is buffered: does not block
            kind = r.WhichOneof("body")
            if kind == "error" and r.id in (0, rid):
                raise ServerError(r.error.code, r.error.message)
            if r.id == rid and kind == "progress":
                self._note_progress(r, progress)
            elif r.id == rid and kind not in ("progress", None):
                raise ProtocolError("ingest ended (%s) before its input was sent" % kind)


# ---- the program --------------------------------------------------------------------------

def job_dict(j):
    return {"job": j.job, "kind": j.kind, "context": j.context if j.HasField("context") else None,
            "state": j.state, "tokens_done": j.tokens_done, "started_unix_ms": j.started_unix_ms,
            "peer": j.peer}


# StatusReply fields of protocol 1.2: the compute mode and the memory held against its
# budgets (rank 0's with several ranks). None when the server is older, as gf --json gives.
STATUS_1_2 = ("compute", "kernels", "weight_bytes", "page_cache_bytes",
              "page_cache_budget_bytes", "tier_bytes", "tier_budget_bytes")


def status_dict(s):
    d = {f.name: v for f, v in s.ListFields() if f.name != "jobs"}
    for k in STATUS_1_2:
        d.setdefault(k, None)
    d["jobs"] = [job_dict(j) for j in s.jobs]  # [] from a 1.0 server
    return d


def context_dict(ci):
    return {"serial": ci.serial, "key": ci.key, "name": ci.name or None, "tokens": ci.tokens,
            "disk_bytes": ci.disk_bytes, "raw_bytes": ci.raw_bytes, "sealed": ci.sealed,
            "last_use_unix_ms": ci.last_use_unix_ms}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="gf_client.py", description=__doc__.split("\n")[0])
    ap.add_argument("--server")
    ap.add_argument("--auth-token-file")
    ap.add_argument("--proto-dir")
    ap.add_argument("--timeout", type=float)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("hello")
    p = sub.add_parser("ingest")
    p.add_argument("--name")
    p.add_argument("--c-dtype", choices=["f16", "bf16", "f32"])
    p.add_argument("--resume", action="store_true")
    p.add_argument("paths", nargs="+")
    p = sub.add_parser("ask")
    p.add_argument("context")
    p.add_argument("question")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--presence-penalty", type=float)
    p.add_argument("--frequency-penalty", type=float)
    p.add_argument("--stop", action="append")
    p.add_argument("--seed", type=int)
    p.add_argument("-v", "--verbose", action="store_true")
    sub.add_parser("contexts")
    p = sub.add_parser("drop")
    p.add_argument("context")
    sub.add_parser("status")
    p = sub.add_parser("cancel")
    p.add_argument("job", type=int)
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    load_bindings(a.proto_dir)
    out = sys.stdout
    try:
        c = Client(a.server, a.auth_token_file, a.timeout)
    except (OSError, PermissionError) as e:
        print("gf_client: %s" % e, file=sys.stderr)
        return EXIT_AUTH
    except ValueError as e:
        print("gf_client: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    try:
        with c:
            if a.cmd == "hello":
                h = c.hello_reply
                json.dump({"server": h.server, "protocol": "%d.%d" % (h.major, h.minor),
                           "ranks": h.ranks, "max_frame": h.max_frame,
                           "model": {"name": h.model.name, "n_layer": h.model.n_layer,
                                     "n_embd": h.model.n_embd,
                                     "vocab_size": h.model.vocab_size,
                                     # 1.2; None from an older server
                                     "compute": h.model.compute or None,
                                     "kernels": h.model.kernels or None,
                                     "weight_bytes": (h.model.weight_bytes
                                                      if h.model.HasField("weight_bytes")
                                                      else None)}}, out, indent=2)
                out.write("\n")
            elif a.cmd == "ingest":
                inputs = []
                for x in a.paths:
                    if x == "-":
                        inputs.append(sys.stdin.buffer.read())
                    elif not os.path.exists(x):
                        print("gf_client: %s: No such file or directory" % x, file=sys.stderr)
                        return EXIT_USAGE
                    else:
                        inputs.append(x)
                r = c.ingest(inputs, a.name, a.c_dtype, a.resume)
                if r.reused and a.name and not a.resume and r.context.name != a.name:
                    # one name per context: the stored one stays, the new one names nothing
                    ref = r.context.name or "'#%d'" % r.context.serial
                    print('gf_client: this text is stored already as %s, so the name "%s" was '
                          'not kept; ask with: gf_client.py ask %s QUESTION'
                          % (ref, a.name, ref), file=sys.stderr)
                d = context_dict(r.context)
                d.update(reused=r.reused, seconds=r.seconds)
                json.dump(d, out, indent=2)
                out.write("\n")
            elif a.cmd == "ask":
                params = {k: getattr(a, k) for k in (
                    "max_tokens", "temperature", "top_k", "top_p", "min_p", "presence_penalty",
                    "frequency_penalty", "stop", "seed")}
                shown = False
                for t in c.ask(a.context, a.question, **params):
                    if a.verbose and not shown and c.last_job is not None:
                        print("gf_client: job %d" % c.last_job, file=sys.stderr, flush=True)
                        shown = True
                    out.buffer.write(t)
                    out.buffer.flush()
                d = c.last_done
                if a.verbose and not shown and c.last_job is not None:
                    print("gf_client: job %d" % c.last_job, file=sys.stderr)
                if a.verbose and d is not None:
                    print("gf_client: done: %s, usage: %s" % (
                        pb.DoneReason.Name(d.reason),
                        json.dumps({"prompt_tokens": d.usage.prompt_tokens,
                                    "cached_tokens": d.usage.cached_tokens,
                                    "completion_tokens": d.usage.completion_tokens})),
                          file=sys.stderr)
                if d is not None and d.reason == pb.DONE_CANCELLED:
                    return EXIT_CANCELLED
            elif a.cmd == "contexts":
                json.dump([context_dict(ci) for ci in c.contexts()], out, indent=2)
                out.write("\n")
            elif a.cmd == "drop":
                print("dropped #%d" % c.drop(a.context))
            elif a.cmd == "status":
                json.dump(status_dict(c.status()), out, indent=2)
                out.write("\n")
            elif a.cmd == "cancel":
                print("job %d: cancel accepted" % c.cancel(a.job))
    except ServerError as e:
        print("gf_client: %s" % e, file=sys.stderr)
        return e.exit_code()
    except ProtocolError as e:
        print("gf_client: %s" % e, file=sys.stderr)
        return EXIT_CONNECTION
    except KeyboardInterrupt:
        print("gf_client: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except OSError as e:
        print("gf_client: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
