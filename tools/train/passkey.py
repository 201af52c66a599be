"""The pass-key test's text, shared by training (data.py) and the checks; tools/gf_passkey.c
builds the same bytes in C (tests/passkey_format.sh compares them). Standard library only."""

PK_PREFIX = (b"There is an important info hidden inside a lot of irrelevant text. "
             b"Find it and memorize it. I will quiz you about the important information there.\n")
PK_FILLER = (b"The grass is green. The sky is blue. The sun is yellow. "
             b"Here we go. There and back again. ")
PK_NEEDLE = b"The pass key is %s. Remember it. %s is the pass key. "
PK_QUESTION = b"\nWhat is the pass key? The pass key is "


def passkey_text(n_tokens, depth, key):
    """The pass-key haystack of exactly n_tokens bytes (one token per byte), question
    included: PK_PREFIX, filler units with the needle after round(depth * units) of them
    (half to even), the last unit cut to fit, then PK_QUESTION. Returns (context bytes,
    question bytes); the answer is key + b"."."""
    key = key if isinstance(key, bytes) else str(key).encode()
    needle = PK_NEEDLE % (key, key)
    n_ctx = n_tokens - len(PK_QUESTION)
    room = n_ctx - len(PK_PREFIX) - len(needle)
    if room < 0:
        raise ValueError(f"passkey_text: {n_tokens} tokens is too short")
    units = room // len(PK_FILLER)
    before = int(round(depth * units))
    ctx = PK_PREFIX + PK_FILLER * before + needle + PK_FILLER * (units - before)
    ctx += PK_FILLER[:n_ctx - len(ctx)]
    assert len(ctx) == n_ctx
    return ctx, PK_QUESTION


if __name__ == "__main__":
    # passkey.py N DEPTH KEY: writes context + question to stdout.
    import sys

    c, q = passkey_text(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3].encode())
    sys.stdout.buffer.write(c + q)
