"""First-call estimate of a PDF's prompt tokens: pypdf (this tree) against the
regex reader it replaced (another tree, e.g. main's), side by side.

    python bench/bench_pdf.py OLD_SRC [runs]     # e.g. ../../main/src

A PDF request's estimate is cached per message, so what an agent pays is the
*first* call on a given PDF: each sample is one ``count_prompt`` by a fresh
``Estimator`` on a PDF it has not seen (a different nonce line each time), in a
worker process per tree that has already imported everything (pypdf's import,
paid once per process, is measured apart: ``cold``). PDFs are written here
byte by byte: US Letter pages full of Helvetica text, 60 lines of ~95
characters a page (~1,000 tokens), Flate-compressed as writers do.
"""

from __future__ import annotations

import base64
import json
import os
import random
import statistics
import subprocess
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the tests' PDF writer
from tests.estimate.pdfs import pdf_file  # noqa: E402

NEW_SRC = HERE.parent / "src"
PAGES = (1, 20, 100)
LINES, WORDS = 60, 15

_WORDS = (  # noqa: SIM905 (reads as a sentence)
    "agent budget ledger token research market analysis revenue quarter growth "
    "customer pipeline forecast retention churn segment pricing competitor summary "
    "source citation report draft review evidence claim figure table chart trend").split()


def dense_pdf(pages: int, nonce: int) -> bytes:
    """``pages`` pages of text with an xref table; ``nonce`` makes each PDF new."""
    rng = random.Random(nonce)
    font = 3 + 2 * pages
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode()]
    for i in range(pages):
        lines = [f"({nonce} page {i})"] + [
            "(" + " ".join(rng.choice(_WORDS) for _ in range(WORDS)) + ")" for _ in range(LINES)]
        content = zlib.compress(("BT /F1 9 Tf 11 TL 40 750 Td "
                                 + " '\n".join(lines) + " ' ET").encode())
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       f"/Contents {4 + 2 * i} 0 R /Resources << /Font << /F1 {font} 0 R >> >> >>"
                       .encode())
        objects.append(f"<< /Length {len(content)} /Filter /FlateDecode >>\nstream\n".encode()
                       + content + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    return pdf_file(objects)  # the xref table and trailer, as the tests write them


WORKER = r"""
import json, sys, time
from decimal import Decimal
from crew_budget.estimate import Estimator
from crew_budget.pricing import Price
price = Price("claude-sonnet-4-5", "anthropic", Decimal("3e-6"), Decimal("15e-6"))
Estimator().count_prompt("claude-sonnet-4-5", price, [{"role": "user", "content": "warm up"}])
for line in sys.stdin:
    job = json.loads(line)
    doc = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                          "data": job["data"]}}
    t = time.perf_counter()
    tokens = Estimator().count_prompt("claude-sonnet-4-5", price,
                                      [{"role": "user", "content": [doc]}])
    print(json.dumps({"s": time.perf_counter() - t, "tokens": tokens}), flush=True)
"""


class Worker:
    def __init__(self, src: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(src),
               "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def estimate(self, raw: bytes) -> tuple[float, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"data": base64.b64encode(raw).decode()}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return reply["s"], reply["tokens"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main() -> None:
    old_src = Path(sys.argv[1]).resolve()
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    workers = {"old (regex)": Worker(old_src), "new (pypdf)": Worker(NEW_SRC)}
    try:
        cold = {name: w.estimate(dense_pdf(1, 0))[0] for name, w in workers.items()}
        times: dict[tuple[str, int], list[float]] = {}
        tokens: dict[tuple[str, int], int] = {}
        nonce = 1
        for _ in range(runs):  # interleaved, so drift hits both trees alike
            for pages in PAGES:
                raw = dense_pdf(pages, nonce)
                nonce += 1
                for name, w in workers.items():
                    s, n = w.estimate(raw)
                    times.setdefault((name, pages), []).append(s)
                    tokens[(name, pages)] = n
    finally:
        for w in workers.values():
            w.close()
    size = {p: len(dense_pdf(p, 1)) for p in PAGES}
    print(f"first-call estimate, median of {runs} (claude-sonnet-4-5, dense Letter pages)")
    print("| pages | PDF bytes | old ms | new ms | new/old | old tokens | new tokens |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for p in PAGES:
        old = statistics.median(times[("old (regex)", p)])
        new = statistics.median(times[("new (pypdf)", p)])
        print(f"| {p} | {size[p]:,} | {old * 1e3:.1f} | {new * 1e3:.1f} | {new / old:.1f}x "
              f"| {tokens[('old (regex)', p)]:,} | {tokens[('new (pypdf)', p)]:,} |")
    print("cold first PDF in a process (1 page, includes importing pypdf): "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in cold.items()))


if __name__ == "__main__":
    main()
