"""The webhook's bulk fuzz, long: seeded requests through the HTTP server on loopback.

    python benchmarks/bench_webhook_fuzz.py [--requests 100000] [--seed 1] [--concurrency 8]

Runs ``run_fuzz`` of tests/webhook/test_webhook_fuzz.py (the CI test sends 12,000):
AdmissionReviews with request fields and object fields replaced by odd values (wrong
types, JSON nested ~1000 levels), framed and labelled every way the server must
handle (Content-Length, chunked, gzip and gzip-labelled garbage, identity,
``Expect: 100-continue``, a wrong Content-Type, clients hanging up mid-body), random
bytes and arrays nested up to 100,000 deep.  Every answer is checked: no HTTP 5xx,
no review with code 500, the uid echoed whenever it is readable, every non-200 a
``Status`` body, every patch valid RFC 6902 for the object (jsonpatch applies it) and
idempotent (the patched object reviewed again gets no patch), nothing logged at
WARNING or above.  Prints the counts and exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "webhook"))

from test_webhook_fuzz import run_fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    report, records = asyncio.run(
        run_fuzz(args.requests, seed=args.seed, concurrency=args.concurrency)
    )
    print(f"python {platform.python_version()}, seed {args.seed}, {args.concurrency} connections")
    print(f"requests sent:        {report.requests} ({args.requests} generated + re-reviews)")
    print(f"answers by status:    {dict(sorted(report.statuses.items()))}")
    print(
        f"patches checked:      {report.patches} ({report.rereviews} re-reviewed, "
        f"{report.unchecked} too deep for Python to check)"
    )
    print(f"clients hung up:      {report.hangups}")
    print(
        f"seconds:              {report.seconds:.1f} "
        f"({report.requests / report.seconds:.0f} requests/s)"
    )
    print(f"log records >= WARN:  {len(records)}")
    print(f"problems:             {len(report.problems)}")
    for problem in report.problems[:20]:
        print("  " + problem[:500])
    for record in records[:20]:
        print(f"  {record.levelname} {record.getMessage()[:500]}")
    return 1 if report.problems or records else 0


if __name__ == "__main__":
    sys.exit(main())
