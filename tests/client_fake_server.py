#!/usr/bin/python3
"""client_fake_server — a small stand-in for goldfinchd, for the client tests (client_cli.sh).

It speaks protocol/README.md from the generated Python bindings and keeps contexts in memory.
What it does instead of a model, so that tests can check what the clients sent:
  - an ingest's rendered stream ("### File: PATH\\n" + text + "\\n" per file, text pieces as
    they are) is written to LOGDIR/<name or serial>.rendered; its key is a hash of it, and
    an identical stream is reported as reused;
  - an ingest named crash* (not resumed) drops the connection after 100000 rendered bytes,
    keeping a "checkpoint" at the last multiple of 7000 bytes; a resume continues from it;
  - an ingest named slow* takes 0.3 s per piece (time to cancel it);
  - an answer is a deterministic function of the context's key, the prompt and the sampling
    parameters, streamed in small tokens (prompt "slow": 0.2 s per token; "hang": never);
  - LOGDIR/events.log gets one line per notable event (cancel received, ...).

usage: client_fake_server.py --socket PATH --logdir DIR --proto-dir DIR [--token T]
"""

import argparse
import hashlib
import os
import select
import socket
import socketserver
import struct
import sys
import threading
import time

A = None
pb = None
lock = threading.Lock()
contexts = {}      # serial -> dict(name, key, rendered, sealed, tokens, last_use)
next_serial = [1]


def log_event(line):
    with lock, open(os.path.join(A.logdir, "events.log"), "a") as f:
        f.write(line + "\n")


def resolve(ref):
    with lock:
        if ref.startswith("#") and ref[1:].isdigit():
            return contexts.get(int(ref[1:]))
        for c in contexts.values():
            if c["name"] == ref:
                return c
        if len(ref) >= 8 and all(ch in "0123456789abcdef" for ch in ref):
            for c in contexts.values():
                if c["key"].startswith(ref):
                    return c
    return None


def info(c):
    return pb.ContextInfo(serial=c["serial"], key=c["key"], name=c["name"],
                          tokens=c["tokens"], disk_bytes=len(c["rendered"]) // 2,
                          raw_bytes=len(c["rendered"]), sealed=c["sealed"],
                          last_use_unix_ms=c["last_use"])


class Conn(socketserver.BaseRequestHandler):
    def setup(self):
        self.buf = b""
        self.hello = False
        self.ahead = []   # requests read ahead while looking for a Cancel

    def send(self, rid, **body):
        data = pb.Response(id=rid, **body).SerializeToString()
        self.request.sendall(struct.pack("<I", len(data)) + data)

    def error(self, rid, code, msg):
        self.send(rid, error=pb.Error(code=code, message=msg))

    def frame_ready(self):
        return len(self.buf) >= 4 and len(self.buf) >= 4 + struct.unpack_from("<I", self.buf)[0]

    def parse_one(self):
        (n,) = struct.unpack_from("<I", self.buf)
        body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        m = pb.Request()
        m.ParseFromString(body)
        return m

    def cancel_waiting(self, rid):
        """True if a Cancel of rid has arrived, behind other requests maybe: the daemon
        reads a Cancel at once, whatever it still has to process before it."""
        while select.select([self.request], [], [], 0)[0]:
            chunk = self.request.recv(1 << 16)
            if not chunk:
                break
            self.buf += chunk
        while self.frame_ready():
            self.ahead.append(self.parse_one())
        for m in self.ahead:
            if m.WhichOneof("body") == "cancel" and m.cancel.target == rid:
                return True
        return False

    def read(self, timeout=None):
        """The next Request, None at end of stream, or "timeout"."""
        if self.ahead:
            return self.ahead.pop(0)
        while not self.frame_ready():
            r, _, _ = select.select([self.request], [], [], timeout)
            if not r:
                return "timeout"
            chunk = self.request.recv(1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        return self.parse_one()

    def handle(self):
        try:
            while True:
                m = self.read()
                if m is None:
                    return
                kind = m.WhichOneof("body")
                if not self.hello:
                    if kind != "hello":
                        self.error(0, pb.ERROR_BAD_REQUEST, "Hello first")
                        continue
                    if A.token and m.hello.auth_token != A.token:
                        self.error(m.id, pb.ERROR_UNAUTHENTICATED, "bad or missing auth token")
                        return
                    self.hello = True
                    log_event("hello client=%s" % m.hello.client)
                    self.send(m.id, hello=pb.HelloReply(
                        major=1, minor=0, server="fake 0.1", ranks=1, max_frame=16 << 20,
                        model=pb.ModelInfo(name="fake", n_layer=4, n_embd=128, vocab_size=65536)))
                elif kind == "ingest_start":
                    if not self.ingest(m):
                        return
                elif kind == "generate":
                    if not self.generate(m):
                        return
                elif kind == "list_contexts":
                    with lock:
                        l = [info(c) for c in sorted(contexts.values(), key=lambda c: c["serial"])]
                    self.send(m.id, contexts=pb.ContextList(contexts=l))
                elif kind == "drop_context":
                    c = resolve(m.drop_context.context)
                    if not c:
                        self.error(m.id, pb.ERROR_NOT_FOUND,
                                   'context "%s": not found' % m.drop_context.context)
                        continue
                    with lock:
                        del contexts[c["serial"]]
                    self.send(m.id, dropped=pb.Dropped(serial=c["serial"]))
                elif kind == "status":
                    with lock:
                        n = len(contexts)
                    self.send(m.id, status=pb.StatusReply(jobs_running=0, max_jobs=2, contexts=n,
                                                          connections=1, rss_bytes=1 << 20))
                elif kind == "cancel":
                    log_event("cancel target=%d (no such job)" % m.cancel.target)
                    self.error(m.id, pb.ERROR_NOT_FOUND, "job %d: not found" % m.cancel.target)
                else:
                    self.error(m.id, pb.ERROR_BAD_REQUEST, "unexpected %s" % kind)
        except (BrokenPipeError, ConnectionResetError):
            return

    def ingest(self, m):
        rid, s = m.id, m.ingest_start
        name = s.name
        pieces = []
        if s.resume:
            c = resolve(name)
            if not c or c["sealed"]:
                self.error(rid, pb.ERROR_NOT_FOUND, 'no ingest named "%s" to resume' % name)
                return True
            rendered = bytearray(c["rendered"])
            with lock:
                del contexts[c["serial"]]
            log_event("resume %s from %d" % (name, len(rendered)))
        else:
            if name and resolve(name):
                self.error(rid, pb.ERROR_BAD_REQUEST, 'context name "%s" is taken' % name)
                return True
            rendered = bytearray()
        self.send(rid, progress=pb.IngestProgress(bytes_done=len(rendered),
                                                  tokens_done=len(rendered) // 4))
        in_file = False
        while True:
            r = self.read()
            if r is None:
                self.keep_checkpoint(name, rendered)
                return False
            kind = r.WhichOneof("body")
            if kind == "cancel" and r.cancel.target == rid:
                log_event("cancel ingest %s" % name)
                self.keep_checkpoint(name, rendered)
                self.error(rid, pb.ERROR_CANCELLED, "ingest cancelled")
                return True
            if r.id != rid:
                self.error(r.id, pb.ERROR_BAD_REQUEST, "one job at a time here")
                continue
            if kind == "ingest_end":
                break
            d = r.ingest_data
            if d.WhichOneof("piece") == "file":
                if in_file:
                    rendered += b"\n"
                rendered += b"### File: " + d.file.path.encode() + b"\n"
                in_file = True
                pieces.append("file %s %d" % (d.file.path, d.file.size))
            else:
                rendered += d.text
                pieces.append("text %d" % len(d.text))
                if len(d.text) > 65536:
                    log_event("piece over 64 KiB: %d" % len(d.text))
            if name.startswith("slow"):
                time.sleep(0.3)
                if self.cancel_waiting(rid):
                    log_event("cancel ingest %s" % name)
                    self.keep_checkpoint(name, rendered)
                    self.error(rid, pb.ERROR_CANCELLED, "ingest cancelled")
                    self.ahead = [m for m in self.ahead if m.id != rid and not (
                        m.WhichOneof("body") == "cancel" and m.cancel.target == rid)]
                    return True
            self.send(rid, progress=pb.IngestProgress(
                bytes_done=len(rendered), tokens_done=len(rendered) // 4,
                tokens_total=s.total_bytes // 4, tokens_per_s=1000.0))
            if name.startswith("crash") and not s.resume and len(rendered) > 100000:
                self.keep_checkpoint(name, rendered)
                log_event("crash %s at %d" % (name, len(rendered)))
                self.request.shutdown(socket.SHUT_RDWR)
                return False
        if in_file:
            rendered += b"\n"
        key = hashlib.blake2b(bytes(rendered), digest_size=16).hexdigest()
        with lock:
            same = [c for c in contexts.values() if c["key"] == key and c["sealed"]]
            serial = next_serial[0]
            next_serial[0] += 1
            c = dict(serial=serial, name=name, key=key, rendered=bytes(rendered), sealed=True,
                     tokens=len(rendered) // 4 + 1, last_use=int(time.time() * 1000))
            contexts[serial] = c
        label = name or "#%d" % serial
        with open(os.path.join(A.logdir, label + ".rendered"), "wb") as f:
            f.write(rendered)
        with open(os.path.join(A.logdir, label + ".pieces"), "w") as f:
            f.write("\n".join(pieces) + "\n")
        self.send(rid, context_ready=pb.ContextReady(context=info(c), reused=bool(same),
                                                     seconds=0.01))
        return True

    def keep_checkpoint(self, name, rendered):
        """An interrupted ingest keeps a checkpoint: the last multiple of 7000 bytes."""
        if not name:
            return
        cut = len(rendered) // 7000 * 7000
        with lock:
            serial = next_serial[0]
            next_serial[0] += 1
            contexts[serial] = dict(serial=serial, name=name, key="0" * 32,
                                    rendered=bytes(rendered[:cut]), sealed=False, tokens=cut // 4,
                                    last_use=0)
        log_event("checkpoint %s at %d" % (name, cut))

    def generate(self, m):
        rid, g = m.id, m.generate
        c = resolve(g.context)
        if not c or not c["sealed"]:
            self.error(rid, pb.ERROR_NOT_FOUND, 'context "%s": not found' % g.context)
            return True
        if g.prompt == "hang":
            return self.read() is not None
        params = []
        for f in ("max_tokens", "temperature", "top_k", "top_p", "min_p", "presence_penalty",
                  "frequency_penalty", "seed"):
            if g.HasField(f):
                params.append("%s=%g" % (f, getattr(g, f)))
        if g.stop:
            params.append("stop=%s" % "|".join(g.stop))
        text = "[%s] %s? (%s) Answer: é lorem ipsum dolor sit amet, STOPHERE and more." % (
            c["key"][:8], g.prompt, " ".join(params))
        data = text.encode()
        toks = [data[i:i + 3] for i in range(0, len(data), 3)]
        limit = g.max_tokens if g.HasField("max_tokens") else 256
        out = b""
        reason = pb.DONE_LENGTH
        for i, t in enumerate(toks[:limit]):
            if g.prompt == "slow":
                r = self.read(timeout=0.2)
                if r is None:
                    return False
                if r != "timeout" and r.WhichOneof("body") == "cancel" and r.cancel.target == rid:
                    log_event("cancel generate")
                    self.send(rid, done=pb.Done(reason=pb.DONE_CANCELLED, usage=pb.Usage(
                        completion_tokens=i)))
                    return True
            out += t
            self.send(rid, token=pb.Token(id=i, text=t))
            if any(out.endswith(s.encode()) for s in g.stop):
                reason = pb.DONE_STOP
                break
        else:
            if len(toks) <= limit:
                reason = pb.DONE_STOP
        with lock:
            c["last_use"] = int(time.time() * 1000)
        self.send(rid, done=pb.Done(reason=reason, usage=pb.Usage(
            prompt_tokens=len(g.prompt), cached_tokens=c["tokens"], completion_tokens=len(out))))
        return True


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main():
    global A, pb
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--logdir", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--token")
    A = ap.parse_args()
    sys.path.insert(0, A.proto_dir)
    import goldfinch_pb2
    pb = goldfinch_pb2
    if os.path.exists(A.socket):
        os.unlink(A.socket)
    srv = Server(A.socket, Conn)
    srv.serve_forever()


if __name__ == "__main__":
    main()
