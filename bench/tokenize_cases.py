"""Pathological text bodies: what tokenising costs (time, CPU, RSS growth, characters handed to the
tokenizer), one fresh process per case.

    .venv/bin/python bench/tokenize_cases.py            # every case
    .venv/bin/python bench/tokenize_cases.py --quick    # a few (make bench-smoke)

Every body is within the text route's limits (8 MiB of JSON, at most 2048 inputs); the script
checks that. Each case runs ``TextBackend.tokenize`` (what a request runs before inference) in a
child process and reports wall and CPU seconds, the growth of peak RSS over the RSS before the
call, the characters handed to the tokenizer, and the outcome (tokens kept, or the error code).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BODY_LIMIT = 8 * 1024 * 1024
MB8 = 8 * 1000 * 1000


def _fill(unit: str, nbytes: int) -> str:
    """``unit`` repeated to at most ``nbytes`` bytes of UTF-8 (whole units: keep a unit small
    beside ``nbytes``)."""
    per = len(unit.encode())
    return unit * (nbytes // per)


def _english(nbytes: int) -> str:
    """Docstring prose of at most ``nbytes`` bytes as a JSON string's content (a cut by
    characters went over the body limit on Python 3.12, whose docstrings hold more quotes,
    backslashes and characters of 2-3 bytes)."""
    import workloads
    words = " ".join(workloads.build(1, 1, 1)["longest"][:400])
    text = (words + " ") * (nbytes // len(words) + 1)
    lo, hi = 0, min(len(text), nbytes)      # the longest prefix that fits: every character
    while lo < hi:                          # takes at least a byte
        mid = (lo + hi + 1) // 2
        if len(json.dumps(text[:mid], ensure_ascii=False).encode()) - 2 <= nbytes:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def cases() -> dict[str, tuple[list[str], str]]:
    """name -> (a function making the inputs, truncate); only the child running a case builds it."""
    K4 = 4096 - 8    # per input, leaves room for JSON quotes and commas in 8 MiB
    cjk100 = "".join(chr(0x4E00 + i) for i in range(100))   # 300 bytes: 13 fill 4 KB to 3,900
    hangul = "".join(chr(0xAC00 + 7 * i) for i in range(300))
    arabic99 = "".join(chr(0x628 + i % 20) for i in range(99)) + " "
    out = {
        "8 MB, no spaces": (lambda: ["a" * MB8], "NONE"),
        "8 MB, no spaces, END": (lambda: ["a" * MB8], "END"),
        "8 MB, no spaces, START": (lambda: ["a" * MB8], "START"),
        "8 MB combining accents": (lambda: ["a" + _fill("\u0301", MB8 - 1)], "NONE"),
        "8 MB combining accents, END": (lambda: ["a" + _fill("\u0301", MB8 - 1)], "END"),
        "8 MB digits": (lambda: ["1234567890" * (MB8 // 10)], "END"),
        "8 MB emoji ZWJ": (lambda: [_fill("\U0001F468\u200D\U0001F469\u200D\U0001F467", MB8)], "END"),
        "8 MB punctuation": (lambda: ["!" * MB8], "END"),
        "8 MB CJK": (lambda: [_fill("".join(chr(0x4E00 + i) for i in range(500)), MB8)], "END"),
        "2048 x 4 KB combining accents": (lambda: ["a" + _fill("\u0301", K4 - 1)] * 2048, "END"),
        "2048 x 4 KB CJK": (lambda: [_fill(cjk100, K4)] * 2048, "END"),
        "2048 x 4 KB CJK, START": (lambda: [_fill(cjk100, K4)] * 2048, "START"),
        "2048 x 4 KB emoji ZWJ": (lambda: [_fill("\U0001F468\u200D\U0001F469\u200D\U0001F467", K4)] * 2048, "END"),
        "2048 x 4 KB punctuation": (lambda: ["!" * K4] * 2048, "END"),
        "2048 x 4 KB punctuation, START": (lambda: ["!#$%&()*+,-./:;<=>?@[]^_`{|}~" * (K4 // 29)] * 2048, "START"),
        "2048 x 4 KB Hangul, no spaces": (lambda: [_fill(hangul, K4)] * 2048, "END"),
        "2048 x 4 KB Hangul, 30-syllable words": (lambda: [_fill(hangul[:30] + " ", K4)] * 2048, "END"),
        "2048 x 4 KB 99-letter words": (lambda: [_fill("x" * 99 + " ", K4)] * 2048, "END"),
        "2048 x 4 KB 99-letter Cyrillic words": (lambda: [_fill("д" * 99 + " ", K4)] * 2048, "END"),
        "2048 x 4 KB 99-letter Arabic words": (lambda: [_fill(arabic99, K4)] * 2048, "END"),
        "2048 x 4 KB 99-letter Arabic words + 3 punct.": (lambda: [_fill(arabic99[:-1] + "!!! ", K4)] * 2048, "END"),
        # A review's attack on the [UNK]-word budget: 34 words that WordPiece searches to their
        # end per input, padded with 92 one-letter tokens to stay under 32 characters a token
        # (tests/test_text_limits.py; 19-25 s and 51 s of tokenizer CPU before that budget).
        "2048 x 34 [UNK] words of 100 letters": (
            lambda: [("qz" * 46) + " " + ("x" * 99 + "\u02ac ") * 34] * 2048, "END"),
        "2048 x 34 [UNK] words of 33 Hangul syllables": (
            lambda: [("qz" * 46) + " " + ("\ud55c" * 33 + "\u02ac ") * 34] * 2048, "END"),
        "2048 x 4 KB English, NONE": (lambda: [_english(K4)] * 2048, "NONE"),
        "2048 x 4 KB English, END": (lambda: [_english(K4)] * 2048, "END"),
        "2048 x 4 KB English, START": (lambda: [_english(K4)] * 2048, "START"),
        "8 MB English, END": (lambda: [_english(MB8)], "END"),
        "8 MB English, NONE": (lambda: [_english(MB8)], "NONE"),
        "legit max: 2048 x 200 words": (None, "END"),   # bench's largest request
        "2048 x 15 words": (None, "NONE"),
    }
    return out


QUICK = ("8 MB, no spaces", "8 MB combining accents", "2048 x 4 KB combining accents",
         "2048 x 4 KB 99-letter words", "legit max: 2048 x 200 words")


def _inputs(name: str) -> tuple[list[str], str]:
    make, truncate = cases()[name]
    inputs = make() if make else None
    if inputs is None:
        import workloads
        w = workloads.build(2048, 1, 1)
        inputs = w["longest"] if name.startswith("legit max") else (w["short"] * 2048)[:2048]
    return inputs, truncate


def _status_kb(field: str) -> int:
    """A field of /proc/self/status (KiB); an error if it is not there."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(name: str) -> None:
    import time

    from embedding_core import errors
    from embedding_core.registry import Registry
    from embedding_core.settings import Settings

    inputs, truncate = _inputs(name)
    body = json.dumps({"input": inputs, "truncate": truncate}, ensure_ascii=False).encode()
    if len(body) > BODY_LIMIT or len(inputs) > 2048:   # no assert: `python -O` drops those
        raise SystemExit(f"{name}: {len(body)} bytes, {len(inputs)} inputs: over the limits")
    del body
    reg = Registry.from_settings(Settings.from_env({}))
    backend = reg.backend(reg.default_for("text"))
    counted = {"chars": 0, "calls": 0}
    real = backend.tokenizer

    class Counting:
        """The tokenizer, counting the characters handed to it."""
        def __getattr__(self, attr):
            return getattr(real, attr)

        def encode(self, s, *a, **k):
            counted["chars"] += len(s)
            counted["calls"] += 1
            return real.encode(s, *a, **k)

        def encode_batch(self, xs, *a, **k):
            counted["chars"] += sum(map(len, xs))
            counted["calls"] += 1
            return real.encode_batch(xs, *a, **k)

        def encode_batch_fast(self, xs, *a, **k):
            counted["chars"] += sum(map(len, xs))
            counted["calls"] += 1
            return real.encode_batch_fast(xs, *a, **k)

    backend.tokenizer = Counting()
    if hasattr(backend, "_encode_batch"):   # the code before bounded_tokenize used this one
        backend._encode_batch = backend.tokenizer.encode_batch_fast
    backend.tokenize(["warm up"])
    counted.update(chars=0, calls=0)
    # The peak so far is of building the body and loading (the 8 MiB body's JSON text and bytes,
    # freed since): reset it to the current RSS (as image_memory.py does), or any growth below
    # that earlier peak reads as none (2048 x 4 KB English: 10 MiB of growth read as 3.5).
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _status_kb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        ids = backend.tokenize(inputs, truncate=truncate)
        outcome = f"ok, {sum(len(x) for x in ids):,} tokens"
    except errors.ApiError as exc:
        outcome = f"{exc.status} {exc.code} {exc.target}"
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _status_kb("VmHWM")
    print(json.dumps({"case": name, "truncate": truncate, "wall_s": wall, "cpu_s": cpu,
                      "rss_growth_mb": max(0, peak - before) / 1024,
                      "chars_in": sum(map(len, inputs)), "chars_tokenized": counted["chars"],
                      "outcome": outcome}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    names = list(QUICK if args.quick else cases())
    if args.only:
        valid, names = names, [n for n in names if any(o in n for o in args.only)]
        if not names:       # nothing run: an empty table and file, and the step passed
            ap.error(f"no case matches --only {' '.join(map(repr, args.only))}; the cases"
                     f"{' (--quick)' if args.quick else ''}: {', '.join(valid)}")
    rows, failed = [], []
    print("| case | truncate | wall s | CPU s | peak RSS growth MiB | chars in | chars tokenised | outcome |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        res = subprocess.run([sys.executable, __file__, "--child", name], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
        if res.returncode:
            print(f"| {name} | failed: {res.stderr.strip().splitlines()[-1:]} |", flush=True)
            failed.append(name)
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"| {r['case']} | {r['truncate']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
              f"{r['rss_growth_mb']:.0f} | {r['chars_in']:,} | {r['chars_tokenized']:,} | "
              f"{r['outcome']} |", flush=True)
    failure = f"{len(failed)} of {len(names)} cases failed: {', '.join(failed)}" if failed else None
    if args.out:
        # A list of rows is a run whose every case ran; a failed run's file says so at the top,
        # with the rows of the cases that did run.
        Path(args.out).write_text(json.dumps({"failed": failure, "cases": rows} if failure
                                             else rows, indent=1) + "\n")
    if failure:    # make bench-smoke (CI) must not pass with a case that did not run
        sys.exit(failure)


if __name__ == "__main__":
    main()
