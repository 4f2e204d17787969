"""Every performance goal in one command: the gateway and queue (bench_gateway.py, with Cog
as the peer), dynamic batching (bench_batching.py), cold starts (bench_cold_start.py) and,
when a CUDA GPU is present, FLUX on it (bench_flux.py). Each bench prints its own figures
as it finishes; the goals, each a ratio measured in this run with its verdict, come last.
Usage::

    python bench/performance_goals.py [--duration 5] [--rounds 3] [--markdown FILE] [--no-cog]

``--markdown`` writes the gateway's tables and the goals table, as docs/benchmarks.md
shows them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import bench_batching
import bench_cold_start
import bench_flux
import bench_gateway
from bench_gateway import Section, render_markdown, render_text

GPU_ROW_WITHOUT_CUDA = ["FLUX on a CUDA GPU, bf16 (bench_flux.py)",
                        "no CUDA device on this machine", "not run"]


def cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds measured per gateway point (default 5)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the batching and cold start benches (default 3)")
    parser.add_argument("--markdown", type=Path, help="also write the report as markdown here")
    parser.add_argument("--no-cog", action="store_true", help="leave Cog out")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    gateway_args = ["--duration", str(args.duration), *(["--no-cog"] if args.no_cog else [])]
    if args.markdown is not None:
        gateway_args += ["--markdown", str(args.markdown)]
    goals = bench_gateway.bench_main(bench_gateway.parse_args(gateway_args)).rows
    print()
    goals.append(bench_batching.main(["--rounds", str(args.rounds)]))
    print()
    goals += bench_cold_start.main(["--rounds", str(args.rounds)])
    print()
    goals.append(bench_flux.main(["--requests", "10", "--channels-last"])
                 if cuda_present() else GPU_ROW_WITHOUT_CUDA)
    section = Section("Performance goals, measured in this run", ["goal", "measured", "verdict"],
                      goals)
    print(render_text([section]), end="")
    if args.markdown is not None:
        with args.markdown.open("a") as markdown:
            markdown.write("\n" + render_markdown([], [section]))


if __name__ == "__main__":
    main()
