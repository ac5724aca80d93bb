"""The Compress service under load: accept latency of Compress and GetJob throughput.

A real ``tpet serve`` runs in its own process (state in a temporary folder, metrics on, no job
slots: max_concurrent_jobs 0, so jobs are stored and queued but never run). The store is
first filled with --jobs jobs; then, from this process:

  flat out --clients threads, each with its own channel, submit --per-client Compress calls
           back to back; every call is timed (p50, p99, max in ms) and the total rate
           reported. Each call parses and validates the spec, checks its paths against the
           data roots (the job reads Fashion-MNIST from /usr/share/datasets), writes the job
           and its first event to SQLite and answers. With every client waiting on the
           server, latency is the queue ahead of a call: clients / throughput.
  paced    the same clients send --rate Compress calls per second in all, at random
           (Poisson) times, for --seconds: the latency a pipeline sees at that load.
  getjob   the same threads call GetJob on random stored jobs for --seconds, back to back;
           calls per second, and p50/p99 latency.

Both sides share this machine's cores: the client threads are Python too, so the figures
are a floor for what a remote client fleet would see.

    .venv/bin/python bench/service_bench.py                  # 1,000 jobs, 32 clients
    .venv/bin/python bench/service_bench.py --json /tmp/service.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from service.client import TpetClient  # noqa: E402

SPEC = {"name": "bench", "teacher": {"path": "teacher.pt2"},
        "data": {"source": "fashion-mnist"}, "training": {"epochs": 1}}
TARGETS = {"accept_p99_ms": 20.0, "getjob_per_s": 1500.0}


def serve(state: Path) -> tuple[subprocess.Popen, str]:
    """Start ``tpet serve`` (queue only) and return it with its address."""
    config = state / "server.yaml"
    config.write_text(f"port: 0\nmetrics_port: 0\nstate_dir: {state / 'state'}\n"
                      "max_concurrent_jobs: 0\nmax_queued: 1000000\ngpus: []\n")
    log = state / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--config",
                                    str(config)], cwd=ROOT, stderr=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        match = re.search(r"tpet: serving on (\S+)", log.read_text())
        if match:
            return process, match.group(1)
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"tpet serve did not start:\n{log.read_text()}")


def fill(address: str, jobs: int, clients: int) -> list[str]:
    def submit(i: int) -> str:
        return local_client(address).compress(SPEC, request_id=f"fill-{i}").id
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(submit, range(jobs)))


_local = threading.local()


def local_client(address: str) -> TpetClient:
    """One client (one channel) per thread, as separate pipeline processes would have."""
    if getattr(_local, "client", None) is None:
        _local.client = TpetClient(address, retries=0)
    return _local.client


NextCall = Callable[[], "Callable[[], Any] | None"]  # the next call to time, None: done


def timed_calls(clients: int, work: Callable[[int], NextCall]) -> tuple[list[float], float]:
    """On ``clients`` threads started together, ``work(thread)`` gives a function that
    returns the next call to time (after any pacing delay) or None when done; return every
    call's seconds and the wall time."""
    barrier = threading.Barrier(clients + 1)
    times: list[list[float]] = [[] for _ in range(clients)]

    def loop(t: int) -> None:
        next_call = work(t)
        barrier.wait()
        while (call := next_call()) is not None:
            start = time.perf_counter()
            call()
            times[t].append(time.perf_counter() - start)

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return [x for per in times for x in per], time.perf_counter() - start


def bench_accept(address: str, clients: int, per_client: int) -> dict[str, float]:
    """``per_client`` Compress calls from each client, back to back."""
    def work(t: int) -> NextCall:
        client, left = local_client(address), [per_client]

        def next_call() -> Callable[[], Any] | None:
            left[0] -= 1
            return (lambda: client.compress(SPEC)) if left[0] >= 0 else None
        return next_call
    times, wall = timed_calls(clients, work)
    return summary(times, wall)


def bench_paced(address: str, clients: int, rate: float, seconds: float) -> dict[str, float]:
    """Compress calls at ``rate`` per second in all for ``seconds``, each client sending at
    random (Poisson) times, as independent pipelines would."""
    end = time.perf_counter() + seconds

    def work(t: int) -> NextCall:
        client, rng, due = local_client(address), random.Random(t), [time.perf_counter()]

        def next_call() -> Callable[[], Any] | None:
            due[0] += rng.expovariate(rate / clients)
            if due[0] > end:
                return None
            time.sleep(max(0.0, due[0] - time.perf_counter()))
            return lambda: client.compress(SPEC)
        return next_call
    times, wall = timed_calls(clients, work)
    return summary(times, wall)


def bench_getjob(address: str, clients: int, seconds: float, ids: list[str]) -> dict[str, float]:
    deadline = time.perf_counter() + seconds

    def work(t: int) -> NextCall:
        client, rng = local_client(address), random.Random(t)
        return lambda: (None if time.perf_counter() > deadline
                        else lambda: client.get_job(rng.choice(ids)))
    times, wall = timed_calls(clients, work)
    return summary(times, wall)


def summary(times: list[float], wall: float) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {"calls": len(ms), "per_s": len(ms) / wall, "p50_ms": statistics.median(ms),
            "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))], "max_ms": ms[-1]}


def report(args: argparse.Namespace, accept: dict, paced: dict, getjob: dict,
           stored: int) -> str:
    rows = [("Compress, flat out", accept, f"p99 < {TARGETS['accept_p99_ms']:g} ms",
             accept["p99_ms"] < TARGETS["accept_p99_ms"]),
            (f"Compress, {args.rate:g}/s", paced, f"p99 < {TARGETS['accept_p99_ms']:g} ms",
             paced["p99_ms"] < TARGETS["accept_p99_ms"]),
            ("GetJob", getjob, f">= {TARGETS['getjob_per_s']:g}/s",
             getjob["per_s"] >= TARGETS["getjob_per_s"])]
    lines = [f"store: {stored} jobs (queued, not run); {args.clients} client threads; "
             f"{os.cpu_count()} CPUs; Python {platform.python_version()}", "",
             f"{'call':<20} {'calls':>6} {'per s':>8} {'p50 ms':>7} {'p99 ms':>7} "
             f"{'max ms':>7}  target"]
    for name, r, target, met in rows:
        lines.append(f"{name:<20} {r['calls']:>6} {r['per_s']:>8.0f} {r['p50_ms']:>7.2f} "
                     f"{r['p99_ms']:>7.2f} {r['max_ms']:>7.1f}  {target} "
                     f"({'met' if met else 'MISSED'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs stored before timing")
    parser.add_argument("--clients", type=int, default=32, help="concurrent client threads")
    parser.add_argument("--per-client", type=int, default=30, help="Compress calls each")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="Compress calls per second in all, for the paced phase")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="length of the paced and the GetJob phases")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tpet-bench-") as tmp:
        process, address = serve(Path(tmp))
        try:
            ids = fill(address, args.jobs, args.clients)
            accept = bench_accept(address, args.clients, args.per_client)
            paced = bench_paced(address, args.clients, args.rate, args.seconds)
            getjob = bench_getjob(address, args.clients, args.seconds, ids)
        finally:
            process.terminate()
            process.wait(timeout=30)
    stored = args.jobs + accept["calls"] + paced["calls"]
    print(report(args, accept, paced, getjob, stored))
    if args.json:
        Path(args.json).write_text(json.dumps({"accept": accept, "paced": paced,
                                               "rate": args.rate, "getjob": getjob,
                                               "jobs": args.jobs, "clients": args.clients},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
