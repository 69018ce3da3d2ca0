"""``gpumix check`` on one large manifest file, against a C-YAML parse of the same file.

Generates N Deployments (one model per GPU type, a few overlapping pairs) and N
HorizontalPodAutoscalers (some without a ceiling) in one multi-document file, then
times (CPU time, best of ``--repeat``), in the same process and run:

* baseline: ``list(yaml.load_all(text, Loader=yaml.CSafeLoader))`` (reading the file
  included);
* check: ``gpumix check -f FILE -o json`` (reading, every rule, the report);

and, each in a fresh interpreter, the peak memory (max RSS) of both.  Goals: the check
within 5x of the baseline at 10,000 + 10,000, and the 10k/1k time ratio <= 15x.  Run::

    python benchmarks/bench_check.py                    # 1,000 and 10,000 of each
    python benchmarks/bench_check.py --sizes 2000 --repeat 1
"""

from __future__ import annotations

import argparse
import gc
import io
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

import yaml

from gpumix.cli import main

GPU_TYPES = ("A100", "A40", "L20", "H100")


def deployment(ns: str, name: str, model: str, gpu: str, distinct: bool) -> str:
    extra_sel = f"\n      gpumix.io/deployment: {name}" if distinct else ""
    extra_tpl = f"\n        gpumix.io/deployment: {name}" if distinct else ""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
  labels:
    gpumix.io/model: {model}
    app.kubernetes.io/part-of: serving
spec:
  replicas: 2
  selector:
    matchLabels:
      gpumix.io/model: {model}{extra_sel}
  template:
    metadata:
      labels:
        gpumix.io/model: {model}{extra_tpl}
        app.kubernetes.io/part-of: serving
    spec:
      nodeSelector:
        nvidia.com/gpu.product: {gpu}
      containers:
        - name: engine
          image: vllm/vllm-openai:v0.6.0
          args: ["--model", "{model}", "--port", "8000"]
          ports:
            - containerPort: 8000
          resources:
            limits:
              nvidia.com/gpu: 1
"""


def hpa(ns: str, name: str, ceiling: int | None) -> str:
    line = f"\n  maxReplicas: {ceiling}" if ceiling is not None else ""
    return f"""\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {name}
  namespace: {ns}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {name}
  minReplicas: 1{line}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target: {{type: Utilization, averageUtilization: 80}}
"""


def manifest(n: int, namespaces: int) -> str:
    docs: list[str] = []
    for i in range(n):
        ns = f"team-{i % namespaces}"
        gpu = GPU_TYPES[i % len(GPU_TYPES)]
        model = f"model-{i // len(GPU_TYPES)}"
        # one model group in 50 keeps the broad selectors (an overlap error per pair)
        distinct = (i // len(GPU_TYPES)) % 50 != 0
        name = f"{model}-{gpu.lower()}"
        docs.append(deployment(ns, name, model, gpu, distinct))
        docs.append(hpa(ns, name, None if i % 97 == 0 else 8))
    return "---\n".join(docs)


def best(fn: Callable[[], object], repeat: int) -> float:
    """The least CPU time of ``repeat`` runs: the process is single-threaded, and CPU time
    is far less disturbed than wall time by other jobs on a shared machine."""
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def baseline(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return len(list(yaml.load_all(f.read(), Loader=yaml.CSafeLoader)))


def check(path: str) -> int:
    with redirect_stdout(io.StringIO()):
        return main(["check", "-f", path, "-o", "json"])


def peak_rss_mb(code: str) -> float:
    """Peak RSS of a fresh interpreter running ``code``, in MB (``VmHWM``: the peak of
    this process's own memory; ``ru_maxrss`` would carry over the parent's at fork)."""
    script = (
        code + "\nprint([ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True
    ).stdout.split()
    return int(out[-2]) / 1024


def main_(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, "
        f"PyYAML {yaml.__version__} (libyaml: {yaml.__with_libyaml__}), "
        f"{os.cpu_count()} CPUs, {platform.machine()}"
    )
    print(
        "| Deployments + HPAs | file | C-YAML parse (CPU) | gpumix check (CPU) | ratio | "
        "peak RSS parse | peak RSS check |"
    )
    print("|---|---|---|---|---|---|---|")
    timings: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = str(Path(tmp) / f"manifests-{n}.yaml")
            Path(path).write_text(manifest(n, args.namespaces), encoding="utf-8")
            size_mb = os.path.getsize(path) / 1e6
            code = check(path)
            assert code == 1, f"the generated file has overlaps: exit 1, got {code}"
            t_base = best(lambda p=path: baseline(p), args.repeat)
            t_check = best(lambda p=path: check(p), args.repeat)
            timings[n] = t_check
            rss_base = peak_rss_mb(
                f"import yaml\nlist(yaml.load_all(open({path!r}).read(), Loader=yaml.CSafeLoader))"
            )
            rss_check = peak_rss_mb(
                "import io, contextlib\nfrom gpumix.cli import main\n"
                "with contextlib.redirect_stdout(io.StringIO()):\n"
                f"    main(['check', '-f', {path!r}, '-o', 'json'])"
            )
            print(
                f"| {n:,} + {n:,} | {size_mb:.1f} MB | {t_base:.2f} s | {t_check:.2f} s | "
                f"{t_check / t_base:.2f}x | {rss_base:.0f} MB | {rss_check:.0f} MB |"
            )
    sizes = sorted(timings)
    for small, large in itertools.pairwise(sizes):
        print(
            f"\n{large:,}/{small:,}: check time ratio {timings[large] / timings[small]:.1f}x "
            f"(size ratio {large / small:.0f}x)"
        )


if __name__ == "__main__":
    main_()
