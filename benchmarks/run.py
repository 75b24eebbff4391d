"""`make bench`: leveret against the other Python AMQP clients, written up in docs/benchmarks.md.

Runs the shared harness (../shared/bench/run.py, see its README) with leveret's adapter
(benchmarks/leveret_bench.py) and the peer clients on identical workloads against a private
RabbitMQ node started here (or --url), then writes docs/benchmarks.md (tables with ratios
against the raw floor and the peers) and docs/benchmarks.png (bar charts).

The peers run in their own venv (default .bench-venv: aio-pika, aiormq, pika and matplotlib;
carehare in .bench-venv-carehare because it pins pamqp<4), created on first use, so neither
they nor matplotlib are ever needed by leveret or its tests. leveret itself runs from the
interpreter running this script.

    python benchmarks/run.py                         # everything, a few minutes
    python benchmarks/run.py --repeat 1 --n 5000     # a quick look
    python benchmarks/run.py --from-json results.json  # only rewrite the docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HARNESS = ROOT.parent / "shared" / "bench" / "run.py"
PEERS = ["aio_pika", "aiormq", "pika", "pika_select"]
BATCH_THREADS = "leveret:blocking_threads_batch"  # the threads under opt-in SCHED_BATCH
# leveret run another way (each on one workload, skipped on the others)
VARIANTS = [
    "leveret:tasks",
    "leveret:blocking_many",
    "leveret:blocking_threads",
    BATCH_THREADS,
    "leveret:defaults",
]
BLOCKING = ["leveret:blocking_many", "leveret:blocking_threads"]
# The floor of threaded blocking publishing (benchmarks/threads_floor_bench.py): no library.
THREADS_FLOOR = "threads_floor"
FLOORS = [THREADS_FLOOR]
CLIENTS = ["leveret", *VARIANTS, *PEERS, THREADS_FLOOR, "raw_limit"]
WORKLOADS = ["publish_confirm", "consume_ack", "rpc_latency"]
BENCH_PACKAGES = ["aio-pika", "aiormq", "pika", "matplotlib"]
BENCH_IMPORTS = "import aio_pika, aiormq, pika, matplotlib"
RAW = "raw_limit"
CPU, RATE = "cpu_us_per_msg", "msgs_per_s"  # per run; a cell has their _median, _min, _max
DESCRIPTIONS = {
    "publish_confirm": "N publishes of 128 B to a fresh queue with publisher confirms, "
    "at most 1000 unconfirmed, until all are confirmed",
    "consume_ack": "N messages of 128 B from a pre-filled queue, prefetch 1000, each acked",
    "rpc_latency": "sequential request/reply calls of 64 B (server and client in one process)",
}


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- venvs --------------------------------------------------------------------------------------


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _imports(python: Path, statement: str) -> bool:
    return (
        python.exists()
        and subprocess.run([python, "-c", statement], capture_output=True).returncode == 0
    )


def ensure_venv(venv: Path, packages: list[str], imports: str, install: bool) -> Path | None:
    """The venv's python once `imports` works in it, installing `packages` if allowed."""
    python = _venv_python(venv)
    if _imports(python, imports):
        return python
    if not install:
        return None
    log(f"installing {' '.join(packages)} into {venv}")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if subprocess.run([*pip, *packages]).returncode != 0:
        return None
    return python if _imports(python, imports) else None


# -- the broker ---------------------------------------------------------------------------------


class Broker:
    """A private node from leveret.testing, or the broker at --url."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.node: Any = None

    def __enter__(self) -> Broker:
        if self.url is None:
            from leveret.testing import RabbitMQNode

            log("starting a private RabbitMQ node")
            self.node = RabbitMQNode.start()
            self.url = self.node.url
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.node is not None:
            log("stopping the node")
            self.node.stop()

    def pid(self) -> str:
        """beam.smp's pid, for the harness's broker CPU figures ("none" if unknown)."""
        if self.node is None:
            return "auto"
        try:
            text = (Path(self.node.base_dir) / "node.pid").read_text().strip()
        except OSError:
            return "none"
        return text if text.isdigit() else "none"

    def version(self) -> str | None:
        if self.node is None:
            return None
        try:
            return str(self.node.ctl("version").strip())
        except Exception:  # noqa: BLE001 - a nicety for the report
            return None


# -- running ------------------------------------------------------------------------------------


def run_harness(args: argparse.Namespace, bench_python: Path, clients: list[str], out: Path) -> int:
    with Broker(args.url) as broker:
        assert broker.url is not None
        command = [
            str(bench_python),
            str(args.harness),
            "--client-dir",
            str(ROOT / "benchmarks"),
            "--python-for",
            f"leveret={sys.executable}",
            "--clients",
            ",".join(clients),
            "--workloads",
            ",".join(args.workloads),
            "--n",
            str(args.n),
            "--rpc-calls",
            str(args.rpc_calls),
            "--repeat",
            str(args.repeat),
            "--url",
            broker.url,
            "--broker-pid",
            broker.pid(),
            "--json",
            str(out),
        ]
        log(" ".join(command))
        # The targets must hold without uvloop: the blocking facade would pick it up if installed.
        env = {**os.environ, "LEVERET_EVENT_LOOP": "asyncio"}
        code = subprocess.run(command, env=env).returncode
        memory = run_memory(broker.url, args.memory_n) if args.memory_n else None
        if out.exists():
            data = json.loads(out.read_text())
            data["memory"] = memory
            data["meta"]["broker_version"] = broker.version()
            data["meta"]["machine"] = (
                f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
            )
            out.write_text(json.dumps(data, indent=1, sort_keys=True))
    return code


def run_memory(url: str, n: int) -> dict[str, Any] | None:
    """benchmarks/memory.py: tracemalloc over n messages through a publisher and a consumer."""
    command = [sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--url", url, "--n", str(n)]
    log(" ".join(command))
    done = subprocess.run(command, capture_output=True, text=True)
    if not done.stdout.strip():
        log(f"memory run failed: {done.stderr.strip()[-500:]}")
        return None
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- the report ---------------------------------------------------------------------------------


def _cells(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s["client"], s["workload"]): s for s in data["summary"]}


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if value >= 100 or digits == 0 else f"{value:.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def _status(cell: dict[str, Any]) -> str | None:
    """Why a cell has no figures, or None when it has them."""
    if cell.get("skipped"):
        return f"skipped: {cell['skipped']}"
    if not cell.get("ok_runs"):
        return f"failed: {'; '.join(str(e) for e in cell.get('errors', []))[:200]}"
    return None


def workload_table(
    cells: dict[tuple[str, str], dict[str, Any]], clients: list[str], workload: str
) -> list[str]:
    rpc = workload == "rpc_latency"
    key = "p50_us_median" if rpc else "cpu_us_per_msg_median"
    raw = cells.get((RAW, workload), {}).get(key)
    ours = cells.get(("leveret", workload), {}).get(key)
    if rpc:
        head = "| client | calls/s | p50 µs | p99 µs | CPU µs/call | p50 vs raw floor | p50 vs leveret |"
    else:
        head = "| client | msgs/s | CPU µs/msg | broker CPU µs/msg | CPU vs raw floor | CPU vs leveret |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for client in clients:
        cell = cells.get((client, workload))
        if cell is None or (client in (*VARIANTS, *FLOORS) and cell.get("skipped")):
            continue
        name = f"**{client}**" if client == "leveret" else client
        why = _status(cell)
        if why is not None:
            lines.append(f"| {name} | {why} |" + " |" * (head.count("|") - 3))
            continue
        runs = (
            f" ({cell['ok_runs']}/{cell['runs']} runs)" if cell["ok_runs"] != cell["runs"] else ""
        )
        value = cell.get(key)
        if rpc:
            lines.append(
                f"| {name}{runs} | {_num(cell.get('msgs_per_s_median'))} | {_num(value)} "
                f"| {_num(cell.get('p99_us_median'))} | {_num(cell.get('cpu_us_per_msg_median'))} "
                f"| {_ratio(value, raw)} | {_ratio(value, ours)} |"
            )
        else:
            lines.append(
                f"| {name}{runs} | {_num(cell.get('msgs_per_s_median'))} | {_num(value, 1)} "
                f"| {_num(cell.get('broker_cpu_us_per_msg_median'), 1)} "
                f"| {_ratio(value, raw)} | {_ratio(value, ours)} |"
            )
    return lines


def headline(
    cells: dict[tuple[str, str], dict[str, Any]], clients: list[str], workload: str
) -> str | None:
    """One sentence: leveret against the floor and the best peer."""
    rpc = workload == "rpc_latency"
    key = "p50_us_median" if rpc else "cpu_us_per_msg_median"
    ours = cells.get(("leveret", workload), {}).get(key)
    raw = cells.get((RAW, workload), {}).get(key)
    peers = [
        (cells[(c, workload)].get(key), c)
        for c in clients
        if c not in ("leveret", RAW, *VARIANTS, *FLOORS) and (c, workload) in cells
    ]
    peers = [(v, c) for v, c in peers if v is not None]
    if ours is None:
        return None
    rate = cells[("leveret", workload)].get("msgs_per_s_median")
    unit = "calls/s" if rpc else "msgs/s"
    what = "median round trip" if rpc else "client CPU per message"
    text = f"`{workload}`: leveret {_num(rate)} {unit}, {what} {_num(ours, 0 if rpc else 1)} µs"
    if raw:
        text += f" ({ours / raw:.1f}x the raw floor)"
    if peers:
        best, name = min(peers)
        text += (
            f"; best peer {name}: {_num(best, 0 if rpc else 1)} µs ({best / ours:.2f}x leveret's)"
        )
    return text + "."


def _value(
    cells: dict[tuple[str, str], dict[str, Any]], client: str, workload: str, key: str
) -> Any:
    return cells.get((client, workload), {}).get(key)


def _per_repetition(
    data: dict[str, Any], top: str, bottom: str, workload: str, key: str
) -> list[float]:
    """`top / bottom` within each repetition in which both ran (minutes apart, not hours)."""
    values = {
        (run["client"], run["rep"]): run[key]
        for run in data.get("runs", [])
        if run.get("workload") == workload and run.get("ok") and run.get(key)
    }
    return sorted(
        value / values[(bottom, rep)]
        for (client, rep), value in values.items()
        if client == top and (bottom, rep) in values
    )


def _target(what: str, shown: str, met: bool | None) -> str:
    verdict = "-" if met is None else "met" if met else "**not met**"
    return f"| {what} | {shown} | {verdict} |"


def targets(data: dict[str, Any]) -> list[str]:
    """The performance targets, each with the figure from this run and whether it holds."""
    cells = _cells(data)
    cpu, rate, p50 = "cpu_us_per_msg_median", "msgs_per_s_median", "p50_us_median"
    pub, con, rpc = "publish_confirm", "consume_ack", "rpc_latency"
    rows = ["| target | this run | |", "|---|---|---|"]

    def at_most(what: str, value: float | None, limit: float, unit: str) -> None:
        shown = "-" if value is None else f"{_num(value, 1)} {unit}"
        rows.append(_target(what, shown, None if value is None else value <= limit))

    def spread(top: str, bottom: str, workload: str, key: str) -> str:
        ratios = _per_repetition(data, top, bottom, workload, key)
        return f" ({ratios[0]:.2f}-{ratios[-1]:.2f}x)" if len(ratios) > 1 else ""

    def ratio_at_least(
        what: str,
        clients: tuple[str, str],
        workload: str,
        key: str,
        floor: float,
    ) -> None:
        top = _value(cells, clients[0], workload, f"{key}_median")
        bottom = _value(cells, clients[1], workload, f"{key}_median")
        if top is None or not bottom:
            rows.append(_target(what, "-", None))
            return
        shown = f"{top / bottom:.2f}x" + spread(*clients, workload, key)
        rows.append(_target(what, shown, top / bottom >= floor))

    ours_pub = _value(cells, "leveret", pub, cpu)
    at_most("publish: client CPU per message at most 15 µs", ours_pub, 15, "µs")
    ratio_at_least(
        "publish: CPU 2x better than pika_select", ("pika_select", "leveret"), pub, CPU, 2
    )
    ratio_at_least("publish: CPU 20x better than aio_pika", ("aio_pika", "leveret"), pub, CPU, 20)
    ratio_at_least("publish: throughput 80% of the raw floor", ("leveret", RAW), pub, RATE, 0.8)
    at_most(
        "consume: client CPU per message at most 20 µs",
        _value(cells, "leveret", con, cpu),
        20,
        "µs",
    )
    ratio_at_least("consume: throughput 70% of the raw floor", ("leveret", RAW), con, RATE, 0.7)
    ours_rpc = _value(cells, "leveret", rpc, p50)
    raw_rpc = _value(cells, RAW, rpc, p50)
    if ours_rpc is not None and raw_rpc:
        rows.append(
            _target(
                "RPC: p50 at most 1.1x the raw floor's",
                f"{ours_rpc / raw_rpc:.2f}x" + spread("leveret", RAW, rpc, "p50_us"),
                ours_rpc <= 1.1 * raw_rpc,
            )
        )
    peers = [_value(cells, c, rpc, p50) for c in [*PEERS, "carehare"]]
    peers = [v for v in peers if v is not None]
    if ours_rpc is not None and peers:
        rows.append(
            _target(
                "RPC: p50 below every peer's",
                f"{_num(ours_rpc)} µs vs best peer {_num(min(peers))} µs",
                ours_rpc < min(peers),
            )
        )
    pika_rate = _value(cells, "pika", pub, rate)
    for variant, label in zip(BLOCKING, ("publish_many", "16 publishing threads"), strict=True):
        ratio_at_least(
            f"blocking {label}: 5x pika's BlockingConnection", (variant, "pika"), pub, RATE, 5
        )
    ratio_at_least(
        "the same 16 threads, each in `batch_scheduling()` (opt-in): 5x pika's",
        (BATCH_THREADS, "pika"),
        pub,
        RATE,
        5,
    )
    floor_rate = _value(cells, THREADS_FLOOR, pub, rate)
    threads_rate = _value(cells, "leveret:blocking_threads", pub, rate)
    if floor_rate and pika_rate:
        shown = f"{floor_rate / pika_rate:.2f}x pika's" + spread(THREADS_FLOOR, "pika", pub, RATE)
        if threads_rate:
            shown += f"; leveret's 16 threads reach {threads_rate / floor_rate:.2f} of it"
        rows.append(
            _target("reference, no library: the same 16 threads over a raw socket", shown, None)
        )
    memory = data.get("memory")
    if memory:
        rows.append(
            _target(
                f"memory flat over {memory['n']:,} messages (tracemalloc)",
                f"{memory['growth_bytes'] / 1024:+,.0f} KiB after warm-up",
                bool(memory["flat"]),
            )
        )
    return rows  # fmt: skip


def memory_section(memory: dict[str, Any] | None) -> list[str]:
    if not memory:
        return []
    samples = ", ".join(f"{heap / 2**20:.1f}" for _, heap in memory["samples"])
    lines = [
        "## Memory",
        "",
        f"`benchmarks/memory.py`: {memory['mode']}; {memory['n']:,} messages of "
        f"{memory['size']} B in {memory['seconds']} s. Python heap (MiB, tracemalloc, after a "
        f"full collection) every {memory['n'] // 20:,} messages: {samples}.",
        "",
        f"Median of the four samples after warm-up: {memory['baseline_bytes'] / 2**20:.2f} MiB; "
        f"median of the last four: {(memory['baseline_bytes'] + memory['growth_bytes']) / 2**20:.2f}"
        f" MiB; growth {memory['growth_bytes'] / 1024:+,.0f} KiB (flat means at most "
        f"{memory['flat_limit_bytes'] / 1024:,.0f} KiB, one byte per message at 1,000,000).",
        "",
    ]
    if memory.get("growing_sites"):
        lines += ["Largest growing allocation sites (between samples 2 and 20):", ""]
        lines += [f"- `{site}`" for site in memory["growing_sites"]]
        lines.append("")
    return lines


def render(data: dict[str, Any], png: str | None) -> str:
    meta = data["meta"]
    cells = _cells(data)
    clients = list(dict.fromkeys(s["client"] for s in data["summary"]))
    workloads = list(dict.fromkeys(s["workload"] for s in data["summary"]))
    versions = {
        k: v
        for info in meta.get("versions", {}).values()
        if isinstance(info, dict)
        for k, v in info.items()
    }
    lines = [
        "# Benchmarks",
        "",
        "leveret against the other Python AMQP 0-9-1 clients, on identical workloads, measured by",
        "the shared harness (`../shared/bench/run.py`) with leveret's adapter",
        "`benchmarks/leveret_bench.py` (public API only). Regenerate with `make bench`",
        "(`python benchmarks/run.py`), which also writes this page and `benchmarks.png`.",
        "",
        f"Measured {meta.get('started', '?')}: {meta.get('machine', '?')}, "
        f"Python {versions.get('python', '?')}, RabbitMQ {meta.get('broker_version') or '?'}, "
        "broker and clients on the same machine (a private node on loopback).",
        f"N = {meta['n']:,} messages (128 B), {meta['rpc_calls']:,} RPC calls (64 B), window "
        f"{meta['window']}, prefetch {meta['prefetch']}; each cell is the median of {meta['repeat']} "
        "runs, each run a fresh process. Versions: "
        + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if k != "python")
        + ".",
        "",
        "*raw_limit* is the harness's stdlib-only client of struct-packed frames with no API at all:",
        "the pure-Python floor. CPU is the client process's user+sys time per message",
        "(`getrusage`), the steadier figure when broker and client share the cores; a ratio",
        "above 1 means more CPU (or a slower round trip) than the reference column.",
        "",
    ]
    for workload in workloads:
        sentence = headline(cells, clients, workload)
        if sentence:
            lines.append(f"- {sentence}")
    lines.append("")
    lines += [
        "## Targets",
        "",
        "A ratio is of the two clients' medians. In brackets: the lowest and the highest",
        "ratio of the same two clients within one repetition (each repetition runs every",
        "client once, one after another), to show how far a single run can swing.",
        "",
        *targets(data),
        "",
    ]
    if png:
        lines += [f"![throughput and CPU per message]({png})", ""]
    for workload in workloads:
        lines += [f"## {workload}", "", DESCRIPTIONS.get(workload, ""), ""]
        lines += workload_table(cells, clients, workload)
        lines += ["", "How each client ran it (the adapter's own description):", ""]
        for client in clients:
            modes = cells.get((client, workload), {}).get("modes")
            if modes and any(modes):
                lines.append(f"- {client}: {'; '.join(m for m in modes if m)}")
        lines.append("")
    lines += memory_section(data.get("memory"))
    lines += [
        "## Notes",
        "",
        "- Every run is verified: the harness checks queue depths independently after each",
        "  process exits (N after publishing, 0 after consuming) and that every RPC reply",
        "  matches its request; a failed check fails the cell.",
        "- leveret has no fire-and-forget publish (every `publish()` waits for its confirm), so",
        "  the harness's `publish_noconfirm` workload does not apply to it.",
        "- `publish_confirm`: every adapter runs the same line,",
        "  `asyncio.ensure_future(x.publish(...))`, under a semaphore of 1000. leveret's",
        "  `publish()` sends at once and returns its confirm's future (a `PublishFuture`), so",
        "  no task is made per message; `leveret:tasks` wraps each publish in a task, as a",
        "  coroutine-returning publish would need, to show what that costs.",
        "- `rpc_latency`: the `leveret` row runs the workload as specified, no-ack consumers",
        "  and no TTL on requests (`serve(..., no_ack=True)`, `call(...,",
        "  expire_unanswered=False)`). `leveret:defaults` keeps leveret's defaults: each",
        "  request acked once its reply is sent (the same write; a server that dies has its",
        "  request redelivered) and expiring after the call's timeout; both cost the broker",
        "  work on every call.",
        "- `rpc_latency`: `serve()` runs each request's handler in a task of its own (so that it",
        "  may await, is bounded by `concurrency` and is cancelled on close), and starts it the",
        "  way Python 3.12's eager tasks do, on 3.11 too: the handler's first step runs in the",
        "  turn that read the request, so an echo handler's reply goes out in that turn, as",
        "  raw_limit's does from its read callback (3 loop turns a call each). Replies come to",
        "  an exclusive reply queue of the client's connection: against RabbitMQ's direct",
        '  reply-to (`rpc_replies="direct"`), measured here with raw_limit\'s own frames, the',
        "  round trip took about 10% less time and the broker about 15% less CPU a call.",
        "  Counted with callgrind outside the harness (server and client in one process, as",
        "  here): 307,000 instructions a call for leveret, 186,000 for raw_limit.",
        "- leveret runs on asyncio's own event loop here (`LEVERET_EVENT_LOOP=asyncio`), not",
        "  uvloop, even where `leveret[speed]` is installed.",
        "- `leveret:blocking_many` and `leveret:blocking_threads` are the blocking facade",
        "  (`leveret.blocking`, also `leveret:blocking_threads_batch` below), beside `pika`",
        "  (pika's BlockingConnection, one publish at a time as its API allows); they run",
        "  `publish_confirm` only, as does `leveret:tasks`;",
        "  `leveret:defaults` runs `rpc_latency` only.",
        "- `leveret:blocking_threads` is bound by thread wakeups, not by Python code: each",
        "  message puts its thread to sleep until its confirm and wakes it (the I/O thread",
        "  wakes one, each woken thread the next, one burst of sends per round), and every",
        "  wakeup moves the GIL. On the 2-core VM this page was first made on (outside the",
        "  harness, asyncio loop): about 1.7 voluntary context switches and 19 µs of kernel",
        "  CPU a message;",
        "  1 thread 3,200 msgs/s, 16 threads 13,000, 32 threads 14,800, 64 threads 15,700.",
        "  A round with 16 threads: one write of 16 publishes, about 500 µs until their",
        "  confirms come back, then about 400 µs to wake the 16 threads in turn. A bare",
        "  CPython lock handoff between two threads costs about 16 µs on that VM, so the",
        "  wakeups, not the code around them, set the pace. Measured and dropped: threads",
        "  writing their own publishes (one lock shared with the I/O thread: about 35%",
        "  slower), two or more relays taking turns (slower), the outcome handed over as the",
        "  confirm is read instead of a loop turn later (no change), half a round's publishes",
        "  sent while the other half's threads are woken (more context switches, no gain).",
        "  `publish_many` (one thread, one wait for a whole batch) avoids the wakeups.",
        "- `threads_floor` (`benchmarks/threads_floor_bench.py`) is that workload with no",
        "  library: stdlib only, one blocking socket, frames encoded once, a reader thread",
        "  waking the confirmed threads one at a time, each thread sending its own publish",
        "  (the fastest of the designs above; `threads_floor:kick`, a writer thread sending",
        "  each burst as leveret's I/O thread does, was 5-10% slower). It is the floor of",
        "  threaded blocking publishing on this machine, as raw_limit is for the others, and",
        "  it sets the threads target in context: where the floor itself stays under 5x",
        "  pika's BlockingConnection, no client can reach it on the default scheduler.",
        "- `leveret:blocking_threads_batch` is the same 16 threads, each running its loop in",
        "  `leveret.blocking.batch_scheduling()`, an opt-in that puts the thread under Linux's",
        "  SCHED_BATCH policy for the block (see docs/blocking.md). Under the default policy",
        "  a woken thread preempts the thread that woke it, which holds the GIL, and sleeps",
        "  again until the GIL is free: outside the harness, 1.66 voluntary and 0.74",
        "  involuntary context switches a message, against 1.16 and 0.04 under SCHED_BATCH,",
        "  and the bare lock handoff of the note above drops from 16 µs to 8.5 µs. It is",
        "  shown beside the default, not instead of it: it changes how the thread is",
        "  scheduled, so it stays the caller's choice. Switching the policy around each",
        "  publish instead was measured to lose the gain (more context switches, not fewer).",
        "  Also measured and dropped, on a bare 16-thread handoff chain: the wakeup made",
        "  with the GIL released (a compiled futex wake-then-wait called through ctypes)",
        "  cut the context switches from 2.8 to 1.3 a handoff but not the time (14 µs",
        "  against 13; 3.4 µs under SCHED_BATCH that day), and EEVDF slices from 0.1 to",
        "  100 ms (`sched_setattr`) changed nothing: it is the preemption itself that costs.",
        "- `consume_ack` is bimodal from run to run, for every client: in some runs the broker",
        "  goes quiet for 10 to 25 ms about sixty times while it delivers. Traced in leveret's",
        "  client, every delivery received had been acked when each pause began, so the",
        "  broker had credit for 1000 more. A 50,000-message run then takes about 0.8 s",
        "  instead of 0.42 s for leveret, and 1.0 s instead of 0.5 s for raw_limit (outside",
        "  the harness, same node, six runs each). Which runs are hit changes with timing",
        "  after the pre-fill (settling 1, 2 or 3 s did not avoid it), so a median of five can",
        "  fall either way: read the consume rows' max column beside the median.",
        "- raw_limit is a floor for CPU per message, not a ceiling for throughput: with broker",
        "  and client on the same cores, msgs/s also depends on how the broker is scheduled,",
        "  so a client can pass it in msgs/s while using more CPU.",
        "- Absolute figures depend on the machine and on whatever else runs on it; compare",
        "  within one table, re-run everything together when comparing.",
        "",
    ]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: str) -> None:
    """Bar charts: throughput per workload, and CPU per message (RPC: median latency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _cells(data)
    clients = list(dict.fromkeys(s["client"] for s in data["summary"]))
    workloads = list(dict.fromkeys(s["workload"] for s in data["summary"]))
    figure, axes = plt.subplots(2, len(workloads), figsize=(4.2 * len(workloads), 7), squeeze=False)
    for column, workload in enumerate(workloads):
        rpc = workload == "rpc_latency"
        rows = [
            ("msgs_per_s_median", "calls/s" if rpc else "msgs/s (higher is better)"),
            ("p50_us_median" if rpc else "cpu_us_per_msg_median",
             "p50 µs (lower is better)" if rpc else "client CPU µs/msg (lower is better)"),
        ]  # fmt: skip
        for row, (key, label) in enumerate(rows):
            axis = axes[row][column]
            names = [c for c in clients if cells.get((c, workload), {}).get(key) is not None]
            values = [cells[(c, workload)][key] for c in names]
            colours = [
                "#d9480f" if c.startswith("leveret") else "#868e96" if c == RAW else "#4c6ef5"
                for c in names
            ]
            bars = axis.bar(names, values, color=colours)
            axis.bar_label(bars, labels=[_num(v, 0 if v >= 100 else 1) for v in values], fontsize=7)
            axis.set_title(f"{workload}: {label}", fontsize=9)
            axis.tick_params(axis="x", labelrotation=35, labelsize=8)
            axis.tick_params(axis="y", labelsize=8)
            axis.margins(y=0.15)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_docs(data: dict[str, Any], docs: Path, bench_python: Path | None) -> None:
    docs.mkdir(exist_ok=True)
    png = docs / "benchmarks.png"
    drawn = False
    if bench_python is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(data, handle)
        try:
            drawn = (
                subprocess.run([bench_python, __file__, "--plot", handle.name, str(png)]).returncode
                == 0
            )
        finally:
            os.unlink(handle.name)
    if not drawn:
        log("no matplotlib: docs/benchmarks.png not drawn")
    (docs / "benchmarks.md").write_text(render(data, png.name if drawn or png.exists() else None))
    log(f"wrote {docs / 'benchmarks.md'}" + (f" and {png}" if drawn else ""))


# -- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n",
        type=int,
        default=50000,
        help="messages per publish/consume run (the harness default)",
    )
    parser.add_argument("--rpc-calls", type=int, default=3000)
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="runs per cell (the median is kept); 5, as single runs here vary by up to 40%%",
    )
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help="carehare is added when it installs"
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--url", help="use this broker instead of starting a private node")
    parser.add_argument(
        "--harness", type=Path, default=Path(os.environ.get("BENCH_HARNESS", DEFAULT_HARNESS))
    )
    parser.add_argument(
        "--bench-venv", type=Path, default=Path(os.environ.get("BENCH_VENV", ROOT / ".bench-venv"))
    )
    parser.add_argument(
        "--no-install", action="store_true", help="never pip install into the bench venvs"
    )
    parser.add_argument("--no-carehare", action="store_true")
    parser.add_argument("--json", type=Path, help="keep the raw results here")
    parser.add_argument(
        "--memory-n",
        type=int,
        default=1_000_000,
        help="messages for the tracemalloc memory run (0: skip it)",
    )
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--from-json", type=Path, help="only rewrite the docs from saved results")
    parser.add_argument("--plot", nargs=2, metavar=("JSON", "PNG"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.plot:  # runs in the bench venv, where matplotlib is
        plot(json.loads(Path(args.plot[0]).read_text()), args.plot[1])
        return 0
    install = not args.no_install
    bench_python = ensure_venv(args.bench_venv, BENCH_PACKAGES, BENCH_IMPORTS, install)
    if args.from_json:
        write_docs(json.loads(args.from_json.read_text()), args.docs, bench_python)
        return 0
    if bench_python is None:
        log(f"no usable bench venv at {args.bench_venv} (pip install {' '.join(BENCH_PACKAGES)})")
        return 1
    if not args.harness.exists():
        log(f"no harness at {args.harness} (--harness or BENCH_HARNESS)")
        return 1
    args.workloads = [w for w in args.workloads.split(",") if w]
    clients = [c for c in args.clients.split(",") if c]
    carehare = Path(f"{args.bench_venv}-carehare")
    if not args.no_carehare and "carehare" not in clients:
        if ensure_venv(carehare, ["carehare"], "import carehare", install) is not None:
            clients.insert(clients.index(RAW) if RAW in clients else len(clients), "carehare")
        else:
            log("carehare is not installable here: left out")
    out = args.json or Path(tempfile.gettempdir()) / f"leveret-bench-{os.getpid()}.json"
    started = time.monotonic()
    code = run_harness(args, bench_python, clients, out)
    log(f"harness finished in {time.monotonic() - started:.0f} s (exit code {code})")
    if not out.exists():
        return code or 1
    write_docs(json.loads(out.read_text()), args.docs, bench_python)
    if args.json is None:
        out.unlink()
    return code


if __name__ == "__main__":
    sys.exit(main())
