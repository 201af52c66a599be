#!/usr/bin/python3
"""Writes the seed corpora of tests/fuzz/corpus/<target>/ (tests/fuzz/README.md).

Usage: tests/fuzz/make_corpus.py BUILD_DIR [TESTDATA_DIR]

BUILD_DIR is an ordinary build (gf-convert, gf-run and the generated Python bindings of the
protocol are used); TESTDATA_DIR defaults to ../shared/testdata beside the checkout. Seeds
come from real files: tiny models made by gf-convert --random (GGUF, and the same tensors
written as .pth and .safetensors here), the reference checkpoint's own pickle, the RWKV World
vocabulary and the tokenizer cases, cache stores written by gf-run ingest, the store of
tests/data/cache_store_v1.0, and protobuf messages serialized by the Python bindings.

Files named regress-* are regression inputs of fixed crashes: this script never touches
them. Everything else under corpus/ is rewritten. Python standard library only (plus
python3-protobuf for the protocol seeds); the output does not depend on the time.
"""
import collections
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import types
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def clear(target):
    d = os.path.join(CORPUS, target)
    if os.path.isdir(d):
        for n in os.listdir(d):
            if not n.startswith("regress-"):
                os.unlink(os.path.join(d, n))


# ---- GGUF --------------------------------------------------------------------------------

GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}
DTYPES = {0: ("F32", 4), 1: ("F16", 2), 30: ("BF16", 2)}


class Reader:
    def __init__(self, b):
        self.b, self.p = b, 0

    def take(self, n):
        v = self.b[self.p:self.p + n]
        self.p += n
        return v

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def s(self):
        return self.take(self.u64())

    def value(self, t):
        if t in GGUF_SCALARS:
            f = GGUF_SCALARS[t]
            return struct.unpack(f, self.take(struct.calcsize(f)))[0]
        if t == 8:
            return self.s()
        et, n = self.u32(), self.u64()
        return (et, [self.value(et) for _ in range(n)])


def gguf_parse(b):
    """(kv list of (key, type, value), tensors [(name, dims outermost first, dtype, bytes)])."""
    r = Reader(b)
    assert r.take(4) == b"GGUF" and r.u32() == 3
    n_t, n_kv = r.u64(), r.u64()
    kvs, align = [], 32
    for _ in range(n_kv):
        k = r.s().decode()
        t = r.u32()
        v = r.value(t)
        kvs.append((k, t, v))
        if k == "general.alignment":
            align = v
    infos = []
    for _ in range(n_t):
        name = r.s().decode()
        nd = r.u32()
        dims = [r.u64() for _ in range(nd)][::-1]
        dtype, off = r.u32(), r.u64()
        infos.append((name, dims, dtype, off))
    start = (r.p + align - 1) // align * align
    tensors = []
    for name, dims, dtype, off in infos:
        n = DTYPES[dtype][1]
        for d in dims:
            n *= d
        tensors.append((name, dims, dtype, b[start + off:start + off + n]))
    return kvs, tensors


def gguf_value(t, v):
    if t in GGUF_SCALARS:
        return struct.pack(GGUF_SCALARS[t], v)
    if t == 8:
        return struct.pack("<Q", len(v)) + v
    et, items = v
    return struct.pack("<IQ", et, len(items)) + b"".join(gguf_value(et, x) for x in items)


def gguf_write(kvs, tensors, align=32):
    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kvs))]
    for k, t, v in kvs:
        kb = k.encode()
        out.append(struct.pack("<Q", len(kb)) + kb + struct.pack("<I", t) + gguf_value(t, v))
    off, datas = 0, []
    for name, dims, dtype, data in tensors:
        nb = name.encode()
        out.append(struct.pack("<Q", len(nb)) + nb + struct.pack("<I", len(dims)))
        out.append(b"".join(struct.pack("<Q", d) for d in dims[::-1]))
        out.append(struct.pack("<IQ", dtype, off))
        datas.append((off, data))
        off = (off + len(data) + align - 1) // align * align
    head = b"".join(out)
    head += b"\0" * (-len(head) % align)
    body = bytearray(off)
    for o, d in datas:
        body[o:o + len(d)] = d
    return head + bytes(body)


# ---- .pth (torch.save of a state_dict, written without torch) --------------------------------

def fake_torch():
    """Modules named like torch's, so that pickle writes the globals torch.save writes."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    torch._utils = utils
    for cls in ("FloatStorage", "BFloat16Storage", "HalfStorage", "LongStorage"):
        setattr(torch, cls, type(cls, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*a):
        raise NotImplementedError

    def _rebuild_parameter(*a):
        raise NotImplementedError

    _rebuild_tensor_v2.__module__ = _rebuild_parameter.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    _rebuild_parameter.__qualname__ = "_rebuild_parameter"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    utils._rebuild_parameter = _rebuild_parameter
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
    return torch, utils


TORCH, TORCH_UTILS = fake_torch()
STORAGE = {0: "FloatStorage", 1: "HalfStorage", 30: "BFloat16Storage"}


class Storage:
    def __init__(self, key, dtype, numel):
        self.key, self.cls, self.numel = key, getattr(TORCH, STORAGE[dtype]), numel


class Tensor:
    def __init__(self, storage, offset, shape, stride=None, parameter=False):
        self.storage, self.offset, self.shape = storage, offset, tuple(shape)
        if stride is None:
            stride, acc = [], 1
            for d in reversed(self.shape):
                stride.insert(0, acc)
                acc *= d
        self.stride, self.parameter = tuple(stride), parameter

    def __reduce_ex__(self, proto):
        t = (TORCH_UTILS._rebuild_tensor_v2,
             (self.storage, self.offset, self.shape, self.stride, False,
              collections.OrderedDict()))
        if self.parameter:
            return (TORCH_UTILS._rebuild_parameter, (_Reduced(t), False, collections.OrderedDict()))
        return t


class _Reduced:
    def __init__(self, rv):
        self.rv = rv

    def __reduce_ex__(self, proto):
        return self.rv


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def pth_write(tensors, folder="archive", parameter=False, zip64=False, meta=True,
              storage_dtype=None):
    """tensors: [(name, dims, dtype, bytes)]. Entries stored, storages 64-byte aligned."""
    sd = collections.OrderedDict()
    storages = []
    for i, (name, dims, dtype, data) in enumerate(tensors):
        dt = storage_dtype if storage_dtype is not None else dtype
        numel = len(data) // DTYPES[dt][1]
        st = Storage(str(i), dt, numel)
        storages.append((str(i), data))
        sd[name] = Tensor(st, 0, dims, parameter=parameter)
    if meta:
        sd._metadata = collections.OrderedDict([("", {"version": 1})])
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(sd)
    return zip_write(folder, buf.getvalue(), storages, zip64=zip64)


def zip_write(folder, pkl, storages, zip64=False):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        def add(name, data, align=1):
            zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_STORED
            head = out.tell() + 30 + len(name.encode()) + (20 if zip64 else 0)
            pad = -(head + 4) % align if align > 1 else 0
            if align > 1:
                zi.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # torch's "FB" field
            with z.open(zi, "w", force_zip64=zip64) as f:
                f.write(data)
        add(folder + "/data.pkl", pkl)
        add(folder + "/byteorder", b"little")
        for key, data in storages:
            add(folder + "/data/" + key, data, align=64)
        add(folder + "/version", b"3\n")
        add(folder + "/.data/serialization_id", b"1234567890123456789012345678901234567890")
    return out.getvalue()


# ---- .safetensors ------------------------------------------------------------------------------

def safetensors_write(tensors, names=None):
    header, off, body = collections.OrderedDict(), 0, []
    header["__metadata__"] = {"format": "pt"}
    for name, dims, dtype, data in tensors:
        header[name] = {"dtype": DTYPES[dtype][0], "shape": list(dims),
                        "data_offsets": [off, off + len(data)]}
        body.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(body)


# ---- models --------------------------------------------------------------------------------------

def run(*cmd, **kw):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def model_seeds(build, tmp):
    conv = os.path.join(build, "tools", "gf-convert")
    specs = {
        "f32_l2_c16": ["--layers", "2", "--embd", "16", "--vocab", "32"],
        "f16_l3_c16_r2": ["--layers", "3", "--embd", "16", "--vocab", "20", "--ratio", "2",
                          "--dtype", "f16"],
        "bf16_l2_c16_rope": ["--layers", "2", "--embd", "16", "--vocab", "24", "--dtype",
                             "bf16", "--rope-base", "10000"],
    }
    for t in ("gguf", "pth", "safetensors"):
        clear(t)
    models = {}
    for name, args in specs.items():
        path = os.path.join(tmp, name + ".gguf")
        run(conv, "--random", *args, "--seed", "3", "--threads", "1", path)
        raw = open(path, "rb").read()
        put("gguf", name, raw)
        models[name] = gguf_parse(raw)

    kvs, tensors = models["bf16_l2_c16_rope"]
    # A GGUF with a vocabulary: the 256 single bytes, <|endoftext|> and a few longer tokens.
    toks = [b"<|endoftext|>"] + [bytes([i]) for i in range(256)] + [
        b"th", b"the", b" the", b"\xe4\xb8\xad", b"Gold", b"Finch"]
    vkv = kvs + [("tokenizer.ggml.model", 8, b"rwkv-world"), ("tokenizer.ggml.tokens", 9,
                                                               (8, toks))]
    put("gguf", "bf16_l2_c16_vocab", gguf_write(vkv, tensors))
    # Metadata only with two tensors: cheap inputs for the metadata and tensor-info paths.
    small = [t for t in tensors if t[0] in ("blocks.0.ln0.weight", "emb.weight")]
    extra = [("general.unknown_array", 9, (9, [(4, [1, 2]), (8, [b"x"])])),
             ("general.unknown_f64", 12, 0.5), ("general.unknown_bool", 7, True)]
    put("gguf", "meta_two_tensors", gguf_write(kvs + extra, small))

    # Whole models as checkpoints in 16 bits only: f32 comes in the small seeds below.
    for name, (kvs, tensors) in models.items():
        if name.startswith("f32"):
            continue
        put("pth", name, pth_write(tensors))
        put("safetensors", name, safetensors_write(tensors))
    kvs, tensors = models["f32_l2_c16"]
    few = tensors[:3]
    put("pth", "few_parameter", pth_write(few, parameter=True, folder="model"))
    put("pth", "few_zip64", pth_write(few, zip64=True))
    put("pth", "few_nometa_f16", pth_write(
        [(n, d, 1, b[:len(b) // 2]) for n, d, _, b in few], meta=False))
    put("safetensors", "few", safetensors_write(few))
    put("safetensors", "few_bf16", safetensors_write(
        [(n, d, 30, b[:len(b) // 2]) for n, d, _, b in few]))


def reference_pickle_seed(testdata):
    """The official checkpoint's own data.pkl, its storages cut to 8 bytes: the real
    pickle structure (memo, marks, OrderedDict metadata) at a small size."""
    pth = os.path.join(testdata, "goldfinch", "a3", "model.pth")
    if not os.path.exists(pth):
        return
    with zipfile.ZipFile(pth) as z:
        pkl_name = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
        folder = pkl_name[:-len("/data.pkl")]
        pkl = z.read(pkl_name)
        keys = [n.split("/")[-1] for n in z.namelist() if "/data/" in n]
    put("pth", "a3_pickle_short_storages", zip_write(folder, pkl, [(k, b"\0" * 8) for k in keys]))


# ---- vocabulary and tokenizer --------------------------------------------------------------------

def vocab_seeds(testdata):
    clear("vocab")
    lines = open(os.path.join(testdata, "tokenizer", "rwkv_vocab_v20230424.txt"), "rb").read()
    lines = lines.split(b"\n")
    put("vocab", "world_first_300", b"\n".join(lines[:300]) + b"\n")
    escapes = [l for l in lines if b"\\x" in l or b"\\u" in l or b"b'" in l or b'"' in l
               or b"\\\\" in l][:200]
    put("vocab", "world_escapes", b"\n".join(escapes) + b"\n")
    # The 256 single bytes plus multi-byte tokens: the tokenizer accepts it.
    full = lines[:256] + [l for l in lines[256:] if l][:200:7]
    put("vocab", "world_bytes_and_some", b"\n".join(full) + b"\r\n")
    put("vocab", "python_escapes",
        "1 '\\a\\b\\f\\n\\r\\t\\v\\\\' 8\n2 '\\101\\7' 2\n3 '\\u4e2d\\U0001F600' 7\n"
        "4 b'\\x80\\377' 2\n5 \"it's\" 4\n6 '\\q' 2\n7 b'\\u12' 4\n0 '<|eot|>' 7\n".encode())


def tokenizer_seeds(testdata):
    clear("tokenizer")
    for line in open(os.path.join(testdata, "tokenizer", "cases.jsonl"), encoding="utf-8"):
        c = json.loads(line)
        if "utf8_hex" in c:
            put("tokenizer", "enc_" + c["name"], bytes.fromhex(c["utf8_hex"])[:2048])
        else:
            put("tokenizer", "dec_" + c["name"],
                b"".join(struct.pack("<H", i & 0xffff) for i in c["ids"]))


# ---- cache store ---------------------------------------------------------------------------------

def store_seed(d, serial=None):
    man = bytearray(open(os.path.join(d, "MANIFEST"), "rb").read())
    # Creation and last-use times zeroed, and with them the checksums, which the harnesses
    # recompute: the seeds do not depend on when they were made.
    for e in range(64, len(man) - 255, 256):
        man[e + 96:e + 112] = bytes(16)
    man[40:48] = bytes(8)
    man[56:64] = bytes(8)
    man = bytes(man)
    if serial is None:
        serial = struct.unpack_from("<Q", man, 64)[0]
    gen = struct.unpack_from("<Q", man, 64 + 72)[0]

    def rd(name):
        p = os.path.join(d, name)
        return open(p, "rb").read() if os.path.exists(p) else b""
    idx = rd("c%016x.idx" % serial)
    pages = rd("c%016x.pages" % serial)
    blob = rd("c%016x.blob.%d" % (serial, gen))
    return man, idx, pages, blob


def bundle(opts, man, idx, pages, blob):
    return bytes([opts]) + b"".join(struct.pack("<I", len(x)) + x for x in (man, idx, pages, blob))


def cache_seeds(build, testdata, tmp):
    for t in ("cache_page", "cache_manifest", "cache_store"):
        clear(t)
    stores = {"v1_0": os.path.join(HERE, "..", "data", "cache_store_v1.0")}
    conv = os.path.join(build, "tools", "gf-convert")
    gfrun = os.path.join(build, "tools", "gf-run")
    vocab = os.path.join(testdata, "tokenizer", "rwkv_vocab_v20230424.txt")
    model = os.path.join(tmp, "text.gguf")
    run(conv, "--random", "--layers", "2", "--embd", "16", "--vocab", "65536", "--seed", "5",
        "--vocab-file", vocab, "--threads", "1", model)
    text = os.path.join(tmp, "text.txt")
    with open(text, "w") as f:
        f.write("GoldFinch keeps a tiny cache per token. " * 4 + "Dix-neuf \u4e2d\u6587.\n")
    for dtype, pt in (("f16", "16"), ("bf16", "32"), ("f32", "24")):
        d = os.path.join(tmp, "store_" + dtype)
        run(gfrun, "--model", model, "--cache-dir", d, "--threads", "1", "--page-tokens", pt,
            "--c-dtype", dtype, "ingest", "--name", "seed-" + dtype, text)
        stores[dtype] = d
    # Two contexts in one store: the manifest lists both.
    text2 = os.path.join(tmp, "second.txt")
    with open(text2, "w") as f:
        f.write("A second context, shorter.\n")
    run(gfrun, "--model", model, "--cache-dir", stores["f16"], "--threads", "1",
        "--page-tokens", "16", "ingest", "--name", "second", text2)

    for name, d in stores.items():
        man, idx, pages, blob = store_seed(d)
        put("cache_manifest", name, b"\0" + man)
        put("cache_store", name, bundle(0, man, idx, pages, blob))
        put("cache_store", name + "_rw", bundle(2, man, idx, pages, blob))
        # The same context unsealed: a writable open resumes it.
        m = bytearray(man)
        flags = struct.unpack_from("<I", m, 64 + 124)[0]
        struct.pack_into("<I", m, 64 + 124, flags & ~1)
        put("cache_store", name + "_unsealed_rw", bundle(2, bytes(m), idx, pages, blob))
        # Each page record the index lists, as the page decoder sees it.
        for i in range(0, len(idx) - 31, 32):
            off, dlen = struct.unpack_from("<QI", idx, i + 8)
            rec = pages[off:off + dlen]
            if len(rec) == dlen:
                put("cache_page", "%s_rec%d" % (name, i // 32), b"\0" + rec)


# ---- protocol ------------------------------------------------------------------------------------

def protocol_seeds(build):
    sys.path.insert(0, os.path.join(build, "protocol", "python"))
    import goldfinch_pb2 as pb
    clear("request")
    clear("frame")
    reqs = collections.OrderedDict()
    reqs["hello"] = pb.Request(id=1, hello=pb.Hello(major=1, minor=1, client="gf 0.1",
                                                    auth_token="fuzz-secret-token"))
    reqs["hello_old"] = pb.Request(id=1, hello=pb.Hello(major=1, minor=0))
    reqs["ingest_start"] = pb.Request(id=2, ingest_start=pb.IngestStart(
        name="book", c_dtype=pb.C_DTYPE_F16, total_bytes=12345, resume=False))
    reqs["ingest_resume"] = pb.Request(id=2, ingest_start=pb.IngestStart(name="#7", resume=True))
    reqs["ingest_text"] = pb.Request(id=2, ingest_data=pb.IngestData(text=b"Once upon a time"))
    reqs["ingest_file"] = pb.Request(id=2, ingest_data=pb.IngestData(
        file=pb.FileStart(path="src/main.c", size=42)))
    reqs["ingest_end"] = pb.Request(id=2, ingest_end=pb.IngestEnd())
    reqs["generate"] = pb.Request(id=3, generate=pb.Generate(
        context="book", prompt="Who is the hero?", max_tokens=64, temperature=0.7, top_k=40,
        top_p=0.9, min_p=0.05, presence_penalty=0.5, frequency_penalty=0.25,
        stop=["\n\n", "END"], seed=42))
    reqs["generate_greedy_hex"] = pb.Request(id=4, generate=pb.Generate(
        context="3fa9c0d2e1b4", prompt="Q", temperature=0))
    reqs["generate_serial"] = pb.Request(id=5, generate=pb.Generate(context="#2", prompt="Q",
                                                                    top_p=1e-30))
    reqs["cancel"] = pb.Request(id=6, cancel=pb.Cancel(target=3))
    reqs["cancel_job"] = pb.Request(id=7, cancel=pb.Cancel(target=0, job=12))
    reqs["status"] = pb.Request(id=8, status=pb.StatusRequest())
    reqs["list"] = pb.Request(id=9, list_contexts=pb.ListContexts())
    reqs["drop"] = pb.Request(id=10, drop_context=pb.DropContext(context="src/main"))
    for name, r in reqs.items():
        put("request", "req_" + name, r.SerializeToString())
    # Each message on its own, behind the byte that picks its decoder (fuzz_request.c).
    bodies = [(1, reqs["hello"].hello), (2, reqs["ingest_start"].ingest_start),
              (3, reqs["ingest_file"].ingest_data), (4, reqs["ingest_file"].ingest_data.file),
              (5, pb.IngestEnd()), (6, reqs["generate"].generate), (7, reqs["cancel_job"].cancel),
              (8, pb.StatusRequest()), (9, pb.ListContexts()), (10, reqs["drop"].drop_context)]
    for sel, m in bodies:
        put("request", "msg_%02d_%s" % (sel, type(m).__name__), bytes([sel]) + m.SerializeToString())

    def framed(msgs):
        return b"".join(struct.pack("<I", len(m)) + m for m in msgs)
    session = [reqs[k].SerializeToString() for k in
               ("hello", "ingest_start", "ingest_text", "ingest_file", "ingest_end", "generate",
                "cancel", "status")]
    put("frame", "session", bytes([10, 1]) + framed(session))
    put("frame", "session_small_limit", bytes([0, 7]) + framed(session))
    resp = pb.Response(id=3, token=pb.Token(id=17, text=b"hi", job=4))
    err = pb.Response(id=0, error=pb.Error(code=pb.ERROR_TOO_LARGE, message="frame too large"))
    put("frame", "responses", bytes([12, 3]) + framed([resp.SerializeToString(),
                                                       err.SerializeToString()]))
    put("frame", "oversized", bytes([1, 9]) + struct.pack("<I", 1 << 30) + b"x" * 16)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    build = os.path.abspath(sys.argv[1])
    testdata = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else
                               os.path.join(HERE, "..", "..", "..", "shared", "testdata"))
    tmp = tempfile.mkdtemp(prefix="gf-corpus-")
    try:
        model_seeds(build, tmp)
        reference_pickle_seed(testdata)
        vocab_seeds(testdata)
        tokenizer_seeds(testdata)
        cache_seeds(build, testdata, tmp)
        protocol_seeds(build)
    finally:
        shutil.rmtree(tmp)
    for t in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, t))
        size = sum(os.path.getsize(os.path.join(CORPUS, t, f)) for f in files)
        print("%-16s %3d files %8d bytes" % (t, len(files), size))


if __name__ == "__main__":
    main()
