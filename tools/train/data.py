"""Training data for the byte-level GoldFinch: text found on the machine, and synthetic
long-context retrieval tasks. Everything is bytes; token ids are the byte vocabulary of
gf-convert --byte-vocab: id 0 is <|endoftext|>, ids 1..256 are the bytes 0..255.

Sources (settings.json "data.sources", read in that order, each folder walked in sorted
order; see `read_corpus`): the Python standard library of the running interpreter
(sysconfig "stdlib": .py and text files), the Python C headers ("include"), the
interpreter's site-packages ("purelib": Python sources, docs, C/C++ sources and headers) and
C headers from /usr/include, each up to its cap and `max_bytes` in all. Files over 1 MiB, or
that are not UTF-8, are skipped. One file in 64 (by a hash of its path) is held out.

Sequence kinds (all exactly T+1 tokens; a loss weight per target token):
  - "lm": a slice of the corpus (files joined with <|endoftext|>).
  - "passkey": the pass-key test of passkey.py (the bytes tools/gf_passkey.c makes) or a
    variant with corpus text as filler; the answer digits weigh ANSWER_WEIGHT.
  - "kv": key -> value lines hidden in corpus text, questions about them at the end.
  - "whichfile": files rendered as gf-run/goldfinchd ingest them ("### File: REL\\n" +
    bytes + "\\n"), then questions "Which file defines NAME?" answered with REL.
"""
import hashlib
import os
import re
import sys
import sysconfig

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from passkey import PK_FILLER, PK_NEEDLE, PK_PREFIX, PK_QUESTION, passkey_text  # noqa: E402,F401

EOT = 0
EOT_BYTES = b"<|endoftext|>"
ANSWER_WEIGHT = 30.0

FILE_HEADER = b"### File: "
WF_QUESTION = b"\nQ: Which file defines %s?\nA: "


def encode(b):
    """Greedy longest match over the byte vocabulary (what gf_tokenize does with it):
    every byte is id byte+1, except the literal <|endoftext|>, which is id 0."""
    arr = np.frombuffer(bytes(b), dtype=np.uint8).astype(np.int32) + 1
    i = b.find(EOT_BYTES)
    if i < 0:
        return arr
    parts, last = [], 0
    while i >= 0:
        parts += [arr[last:i], np.array([EOT], dtype=np.int32)]
        last = i + len(EOT_BYTES)
        i = b.find(EOT_BYTES, last)
    parts.append(arr[last:])
    return np.concatenate(parts)


def decode(ids):
    return b"".join(EOT_BYTES if i == 0 else bytes([i - 1]) for i in ids)


# ---------------------------------------------------------------------------------------
# Corpus.

C_EXT = (".h", ".c", ".cc", ".cpp", ".cu", ".cuh", ".hpp")
TEXT_EXT = (".py", ".pyi", ".txt", ".rst", ".md", ".toml", ".cfg", ".ini", ".json", ".sh") + C_EXT
EXTS = {"all": TEXT_EXT, "c": C_EXT, "text": tuple(e for e in TEXT_EXT if e not in C_EXT)}
# The sources of the first training run (settings.json); "root" is a sysconfig path name or
# an absolute folder, "exts" a key of EXTS.
DEFAULT_SOURCES = [
    {"label": "stdlib", "root": "stdlib", "cap": None, "exts": "all"},
    {"label": "include", "root": "include", "cap": 16 << 20, "exts": "all"},
    {"label": "site-packages", "root": "purelib", "cap": 160 << 20, "exts": "all"},
    {"label": "usr-include", "root": "/usr/include", "cap": 40 << 20, "exts": "all"},
]
MAX_FILE = 1 << 20

PY_DEF = re.compile(rb"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+([A-Za-z_]\w*)", re.M)
C_MACRO = re.compile(rb"^#[ \t]*define[ \t]+([A-Za-z_]\w*)", re.M)
C_FUNC = re.compile(rb"^(?:[A-Za-z_][\w \t\*]*?[ \t\*])?([A-Za-z_]\w*)[ \t]*\([^;{}\n]*\)?[ \t]*\{?[ \t]*$",
                    re.M)
C_KEYWORDS = {b"if", b"for", b"while", b"switch", b"return", b"sizeof", b"do", b"else",
              b"case", b"defined", b"main"}


def definitions(rel, text, strict=False):
    """Names that the file defines (Python def/class; C macros and function definitions).
    strict: a C function counts only when its body's '{' comes before any ';' (so a
    prototype split over lines is a declaration, not a definition)."""
    if rel.endswith((".py", ".pyi")):
        return set(PY_DEF.findall(text))
    if rel.endswith(C_EXT):
        names = set(C_MACRO.findall(text))
        for m in C_FUNC.finditer(text):
            n = m.group(1)
            if n in C_KEYWORDS:
                continue
            if strict:
                a, b = text.find(b"{", m.start(1)), text.find(b";", m.start(1))
                if a < 0 or (0 <= b < a):
                    continue
            names.add(n)
        return names
    return set()


def read_corpus(max_bytes=256 << 20, log=print, sources=None):
    """[(rel, bytes)] of every text file of the sources, sorted walk, capped."""
    files, total, seen = [], 0, set()
    paths = sysconfig.get_paths()
    for src in sources or DEFAULT_SOURCES:
        label, cap, exts = src["label"], src["cap"], EXTS[src["exts"]]
        root = src["root"] if src["root"].startswith("/") else paths.get(src["root"], "")
        if not root or not os.path.isdir(root):
            continue
        got = 0
        for d, dirs, names in os.walk(root):
            dirs.sort()
            dirs[:] = [x for x in dirs if x not in ("__pycache__", ".git")
                       and not (label == "stdlib" and x == "site-packages")]
            for n in sorted(names):
                if not n.endswith(exts):
                    continue
                p = os.path.join(d, n)
                try:
                    st = os.stat(p)
                    if st.st_size == 0 or st.st_size > MAX_FILE:
                        continue
                    real = os.path.realpath(p)
                    if real in seen:
                        continue
                    seen.add(real)
                    with open(p, "rb") as f:
                        b = f.read()
                    b.decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                if b"\0" in b:
                    continue
                files.append((os.path.relpath(p, root), b))
                got += len(b)
                total += len(b)
                if (cap and got >= cap) or total >= max_bytes:
                    break
            if (cap and got >= cap) or total >= max_bytes:
                break
        log(f"data: {label} {root}: {got / 1e6:.1f} MB")
        if total >= max_bytes:
            break
    return files


def held_out(rel):
    return hashlib.md5(rel.encode()).digest()[0] % 64 == 0


class Corpus:
    def __init__(self, files, strict_defs=False):
        self.files = files
        self.strict_defs = strict_defs
        self.c_files = [i for i, (rel, _) in enumerate(files) if rel.endswith(C_EXT)]
        by_dir = {}
        for i in self.c_files:
            by_dir.setdefault(os.path.dirname(files[i][0]), []).append(i)
        self.c_dirs = [v for _, v in sorted(by_dir.items()) if len(v) >= 2]
        ids, starts = [], []
        pos = 0
        for rel, b in files:
            t = encode(b)
            starts.append(pos)
            ids += [t, np.array([EOT], dtype=np.int32)]
            pos += len(t) + 1
        self.ids = np.concatenate(ids) if ids else np.zeros(1, np.int32)
        self.starts = np.array(starts, dtype=np.int64)
        self.defs = [None] * len(files)  # computed lazily

    def __len__(self):
        return len(self.ids)

    def slice(self, rng, n):
        if len(self.ids) <= n:
            reps = n // len(self.ids) + 1
            return np.tile(self.ids, reps)[:n]
        o = int(rng.integers(0, len(self.ids) - n))
        return self.ids[o:o + n]

    def file_defs(self, i):
        if self.defs[i] is None:
            self.defs[i] = definitions(self.files[i][0], self.files[i][1], self.strict_defs)
        return self.defs[i]


# ---------------------------------------------------------------------------------------
# Tasks.

def _digits(rng, n):
    first = str(int(rng.integers(1, 10)))
    return (first + "".join(str(int(d)) for d in rng.integers(0, 10, n - 1))).encode()


def _finish(parts, T):
    """parts: [(ids, weight)] -> x [T+1] int32, w [T] float32 (weight of target t+1)."""
    x = np.concatenate([p for p, _ in parts]).astype(np.int32)
    wt = np.concatenate([np.full(len(p), w, np.float32) for p, w in parts])
    assert len(x) == T + 1, (len(x), T + 1)
    return x, wt[1:]


class Tasks:
    """Draws training sequences. mix: {kind: probability}."""

    def __init__(self, corpus, mix, seed, whichfile_c=0.0):
        self.c = corpus
        self.whichfile_c = whichfile_c  # share of "whichfile" samples made of C files only
        self.kinds = list(mix)
        p = np.array([mix[k] for k in self.kinds], dtype=np.float64)
        self.p = p / p.sum()
        self.rng = np.random.default_rng(seed)

    def sample(self, T):
        kind = self.kinds[int(self.rng.choice(len(self.kinds), p=self.p))]
        x, w = getattr(self, kind)(T)
        return kind, x, w

    def lm(self, T):
        return _finish([(self.c.slice(self.rng, T + 1), 1.0)], T)

    def passkey(self, T):
        rng = self.rng
        n_dig = 5 if rng.random() < 0.6 else int(rng.integers(2, 10))
        key = _digits(rng, n_dig)
        depth = float(rng.random())
        answer = key + b"."
        n = T + 1 - len(answer)
        if rng.random() < 0.7:
            ctx, q = passkey_text(n, depth, key)
            return _finish([(encode(ctx), 1.0), (encode(q), 1.0),
                            (encode(answer), ANSWER_WEIGHT)], T)
        # The needle in corpus text (at a line start), same question.
        needle = encode(b"\n" + PK_NEEDLE % (key, key) + b"\n")
        q = encode(PK_QUESTION)
        fill = self.c.slice(rng, n - len(needle) - len(q))
        cut = int(depth * len(fill))
        nl = np.nonzero(fill[cut:cut + 400] == ord("\n") + 1)[0]
        cut = cut + int(nl[0]) if len(nl) else cut
        return _finish([(fill[:cut], 1.0), (needle, 1.0), (fill[cut:], 1.0), (q, 1.0),
                        (encode(answer), ANSWER_WEIGHT)], T)

    def kv(self, T):
        rng = self.rng
        n_pairs = int(rng.integers(1, 24))
        letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
        keys = set()
        while len(keys) < n_pairs:
            keys.add(bytes(rng.choice(letters, int(rng.integers(4, 9)))))
        keys = sorted(keys)
        vals = [_digits(rng, int(rng.integers(2, 8))) for _ in keys]
        n_q = int(rng.integers(1, min(8, n_pairs) + 1))
        qs = rng.choice(n_pairs, n_q, replace=False)
        tail = []
        for i in qs:
            tail += [(encode(b"\nWhat is the value of %s? The value of %s is " % (keys[i], keys[i])), 1.0),
                     (encode(vals[i] + b"."), ANSWER_WEIGHT)]
        n_tail = sum(len(p) for p, _ in tail)
        lines = [encode(b"\nThe value of %s is %s.\n" % (k, v)) for k, v in zip(keys, vals)]
        n_fill = T + 1 - n_tail - sum(len(x) for x in lines)
        if n_fill < 0:
            return self.lm(T)
        fill = self.c.slice(rng, n_fill)
        cuts = np.sort(rng.integers(0, n_fill + 1, n_pairs))
        parts, last = [], 0
        for cut, line in zip(cuts, [lines[i] for i in rng.permutation(n_pairs)]):
            parts += [(fill[last:cut], 1.0), (line, 1.0)]
            last = cut
        parts.append((fill[last:], 1.0))
        return _finish(parts + tail, T)

    def whichfile(self, T):
        rng = self.rng
        c = self.c
        budget = T + 1 - 400
        chosen, used = [], 0
        names = {}  # file index -> the path shown in its header
        pool = None
        if c.c_dirs and rng.random() < self.whichfile_c:
            # One folder of C sources, as `gf ingest DIR` gives it (headers relative to the
            # folder, or with it), topped up with C files from anywhere.
            d = c.c_dirs[int(rng.integers(0, len(c.c_dirs)))]
            pool = [d[j] for j in rng.permutation(len(d))]
            pool += [c.c_files[j] for j in rng.integers(0, len(c.c_files), 64)]
            base = rng.random() < 0.5
            names = {i: (os.path.basename(c.files[i][0]) if base and i in d else c.files[i][0])
                     for i in pool}
        for n_try in range(64):
            if pool is not None:
                if n_try >= len(pool):
                    break
                i = pool[n_try]
            else:
                i = int(rng.integers(0, len(c.files)))
            if pool is not None and i in chosen:
                continue
            rel, b = names.get(i, c.files[i][0]), c.files[i][1]
            cost = len(FILE_HEADER) + len(rel) + 2 + len(b)
            if used + cost > budget:
                if used > budget // 2:
                    break
                continue
            chosen.append(i)
            used += cost
        count = {}
        for i in chosen:
            for n in c.file_defs(i):
                count[n] = count.get(n, 0) + 1
        cand = [(n, i) for i in chosen for n in c.file_defs(i) if count[n] == 1 and len(n) >= 4]
        if not cand:
            return self.lm(T)
        parts = []
        for i in chosen:
            rel, b = names.get(i, c.files[i][0]), c.files[i][1]
            parts.append((encode(FILE_HEADER + rel.encode() + b"\n" + b + b"\n"), 1.0))
        tail, n_tail = [], 0
        for j in rng.permutation(len(cand))[:int(rng.integers(1, 5))]:
            name, i = cand[j]
            q = encode(WF_QUESTION % name)
            a = encode(names.get(i, c.files[i][0]).encode() + b"\n")
            if used + n_tail + len(q) + len(a) > T:  # leaves n_head >= 1
                break
            tail += [(q, 1.0), (a, ANSWER_WEIGHT / 3)]
            n_tail += len(q) + len(a)
        if not tail:
            return self.lm(T)
        n_head = T + 1 - n_tail - used
        # Corpus text before the files fills the sequence to its length; a newline ends it
        # so that the first header starts a line, as in an ingest.
        head = np.concatenate([c.slice(rng, n_head - 1), encode(b"\n")])[-n_head:]
        return _finish([(head, 1.0)] + parts + tail, T)


def main():
    """Prints a summary of the corpus and one sample of each kind (a look at the data)."""
    files = read_corpus(max_bytes=int(float(sys.argv[1]) * 1e6) if len(sys.argv) > 1 else 8 << 20)
    corpus = Corpus([f for f in files if not held_out(f[0])])
    print(f"{len(files)} files, {len(corpus)} tokens")
    t = Tasks(corpus, {"lm": 1, "passkey": 1, "kv": 1, "whichfile": 1}, seed=1)
    for kind in t.kinds:
        x, w = getattr(t, kind)(4096)
        heavy = np.nonzero(w > 1)[0]
        print(f"--- {kind}: {len(x)} tokens, weighted targets {len(heavy)}")
        print(decode(x[-300:]).decode("utf-8", "replace"))


if __name__ == "__main__":
    main()
