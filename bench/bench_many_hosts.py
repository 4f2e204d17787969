"""The store as the queue, measured: the embedded default against the release before the
redesign, and a PostgreSQL store beside SQLite, in one run.

Every server runs the echo app behind its own runners (``openfal serve``, API keys on, no
per-key limits in the way) on this machine, driven by the same load generator as
bench/bench_gateway.py. The release before and this tree run side by side and each point is
measured on one, then the other, ``--rounds`` times (medians compared), so that a machine
whose speed drifts (other tenants of its host) slows both alike:

* the embedded default (SQLite) at ``--before`` (a git revision, default 1c8a707: the last
  commit before the store became the queue, run from a git worktree) and at this tree:
  durable submits/s (acknowledged once committed) at 64 connections and direct-run latency
  at one connection (the goals are a ratio of at least 0.9 and at most 1.1), and queued
  round trips/s at 64 connections;
* this tree on PostgreSQL (a server started here, ``fsync`` on) beside SQLite: durable
  submits/s and queued round trips/s (submit, poll, result) at 64 connections.

Usage::

    python bench/bench_many_hosts.py [--duration 5] [--rounds 3] [--before REV] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import uvloop
from bench_gateway import (
    ECHO,
    Bench,
    QueueClient,
    Section,
    admin_key,
    direct,
    environment,
    first_echo,
    render_markdown,
    render_text,
)

from openfal.testing import ServerProcess

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from services_pg import PostgresServer  # noqa: E402  (the tests' PostgreSQL starter)

SERVE_ARGS = ["--key-concurrency", "0", "--max-waiting-direct", "0", "--no-builtin",
              "--app", "openfal.models.echo::Echo"]


@contextmanager
def worktree(revision: str, folder: Path) -> Iterator[Path]:
    """The source tree of ``revision``, checked out beside this one."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(folder),
                    revision], check=True)
    try:
        yield folder / "src"
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
                       check=False)


def server(data_dir: Path, name: str, *more: str, source: Path | None = None) -> ServerProcess:
    """``openfal serve`` from this tree, or from ``source`` (another revision's src/)."""
    command = [sys.executable, "-m", "openfal", "serve", "--port", "0", "--data-dir",
               str(data_dir), *SERVE_ARGS, *more]
    if source is not None:
        command = ["env", f"PYTHONPATH={source}", *command]
    return ServerProcess(data_dir, [], command=command, name=name)


async def measure_alternately(bench: Bench, targets: list[ServerProcess], concurrency: int,
                              rounds: int) -> None:
    """Each point on each server in turn, ``rounds`` times: a machine whose speed drifts
    (other tenants of its host) then slows both sides alike."""
    for target in targets:
        await first_echo(target)
    queues = {target.name: QueueClient(target.url) for target in targets}
    for _ in range(rounds):
        for target in targets:
            await bench.measure("direct run", target, 1, direct(f"{target.url}/{ECHO}"))
        for target in targets:
            await bench.measure("queued round trip", target, concurrency,
                                queues[target.name].round_trip)
        for target in targets:
            await bench.measure("durable submit", target, concurrency,
                                queues[target.name].submit_only)


async def measure_queue(bench: Bench, target: ServerProcess, concurrency: int) -> None:
    await first_echo(target)
    queue = QueueClient(target.url)
    # Round trips first: submits outrun the echo app and leave a backlog behind them.
    await bench.measure("queued round trip", target, concurrency, queue.round_trip)
    await bench.measure("durable submit", target, concurrency, queue.submit_only)


def run_server(bench: Bench, target: ServerProcess, measure, concurrency: int) -> None:
    with target:
        target.headers = {"authorization": f"Key {admin_key(target.data_dir)}"}
        uvloop.run(measure(bench, target, concurrency))


def run_side_by_side(bench: Bench, targets: list[ServerProcess], concurrency: int,
                     rounds: int) -> None:
    with ExitStack() as running:
        for target in targets:
            running.enter_context(target)
            target.headers = {"authorization": f"Key {admin_key(target.data_dir)}"}
        uvloop.run(measure_alternately(bench, targets, concurrency, rounds))


def median_figure(bench: Bench, scenario: str, target: str, concurrency: int,
                  latency: bool) -> float:
    """The median over the rounds of a point's p50 latency (ms) or throughput."""
    points = [p for p in bench.points
              if (p.scenario, p.target, p.concurrency) == (scenario, target, concurrency)]
    return statistics.median(p.percentile_ms(0.5) if latency else p.throughput
                             for p in points)


def ratio_row(bench: Bench, scenario: str, concurrency: int, before: str, now: str,
              goal: str, latency: bool) -> list[str]:
    figures = (median_figure(bench, scenario, before, concurrency, latency),
               median_figure(bench, scenario, now, concurrency, latency))
    unit = "ms p50" if latency else "/s"
    return [f"{scenario} (c={concurrency})", f"{figures[0]:.2f} {unit}",
            f"{figures[1]:.2f} {unit}", f"{figures[1] / figures[0]:.2f}", goal]


def sections(bench: Bench, concurrency: int) -> list[Section]:
    embedded = Section(
        "Embedded default: this tree against the release before the redesign",
        ["measure", "before", "now", "now / before", "goal"],
        [ratio_row(bench, "durable submit", concurrency, "before", "sqlite", ">= 0.9", False),
         ratio_row(bench, "direct run", 1, "before", "sqlite", "<= 1.1", True),
         ratio_row(bench, "queued round trip", concurrency, "before", "sqlite", "-", False)])
    rows = []
    for scenario in ("durable submit", "queued round trip"):
        sqlite = bench.find(scenario, "sqlite-q", concurrency)
        postgres = bench.find(scenario, "postgres", concurrency)
        rows.append([f"{scenario} (c={concurrency})", f"{sqlite.throughput:.0f}/s",
                     f"{postgres.throughput:.0f}/s",
                     f"{postgres.throughput / sqlite.throughput:.2f}"])
    shared = Section("PostgreSQL beside SQLite (this tree)",
                     ["measure", "SQLite", "PostgreSQL", "PostgreSQL / SQLite"], rows)
    return [embedded, shared]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds measured per point (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of unmeasured load before each point (default 1)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="connections for the throughput points (default 64)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times each point is measured on the release before and on "
                        "this tree, in turn; the report takes the median (default 3)")
    parser.add_argument("--before", default="1c8a707",
                        help="the revision to compare the embedded default with")
    parser.add_argument("--markdown", type=Path, help="also write the report as markdown here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    bench = Bench(args.duration, args.warmup)
    intro = [*environment(), f"before: {args.before}; {args.duration:g} s measured per point "
             f"after {args.warmup:g} s of warm-up; closed-loop workers, one keep-alive "
             f"connection each; the release before and this tree side by side, each point "
             f"on each in turn, {args.rounds} rounds, medians compared"]
    print("\n".join(intro), flush=True)
    with tempfile.TemporaryDirectory(prefix="openfal-bench-") as tmp:
        root = Path(tmp)
        with worktree(args.before, root / "before-src") as before_src:
            run_side_by_side(bench, [server(root / "before", "before", source=before_src),
                                     server(root / "now", "sqlite")],
                             args.concurrency, args.rounds)
        run_server(bench, server(root / "queue", "sqlite-q"), measure_queue, args.concurrency)
        postgres = PostgresServer.start(durable=True)
        try:
            url = postgres.create_database()
            run_server(bench, server(root / "pg", "postgres", "--store", url), measure_queue,
                       args.concurrency)
        finally:
            postgres.stop()
    report = sections(bench, args.concurrency)
    print(render_text(report), end="")
    if args.markdown is not None:
        args.markdown.write_text(render_markdown(intro, report))


if __name__ == "__main__":
    main()
