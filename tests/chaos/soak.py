"""The chaos soak, full form: ``python -m tests.chaos.soak --minutes 30`` (``make chaos``).

Runs the whole pipeline under ``queuewatch up`` against a broker of its own, publishes the
simulator's scenario at a fixed rate for ``--minutes``, SIGKILLs the aggregator, the sinks and
the broker (bursts too), freezes the sinks, scales the aggregator 1 -> 2 -> 1, then checks
every window and report against an offline replay of the log (``tests/support/soak_run.py``).
Exits 0 only when nothing differs; 1 on any difference or stall.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from queuewatch.platform.broker import fetch_jars
from queuewatch.resources import REPO_ROOT
from tests.support.soak_plan import PlanConfig
from tests.support.soak_run import SoakConfig, run_soak


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the soak, print its verdict; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="publishing time")
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock")
    parser.add_argument("--rate", type=float, default=20.0, help="reports per second")
    parser.add_argument("--invalid-share", type=float, default=0.03)
    parser.add_argument(
        "--catch-up-timeout", type=float, default=300.0, help="seconds; longer is a stall"
    )
    parser.add_argument(
        "--ci", action="store_true", help="the CI-sized plan (--minutes then sets its length)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="default: var/chaos/<time>-seed<seed>"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    workdir = args.workdir or (
        REPO_ROOT / "var" / "chaos" / f"{time.strftime('%Y%m%dT%H%M%S')}-seed{seed}"
    )
    if workdir.exists() and any(workdir.iterdir()):
        parser.error(
            f"{workdir} is not empty; every soak needs a fresh folder: remove it or pass "
            "another --workdir"
        )
    libs = Path(os.environ.get("QUEUEWATCH_KAFKA_LIBS", REPO_ROOT / "infra/kafka/target/libs"))
    plan = PlanConfig.ci(args.minutes * 60) if args.ci else PlanConfig.for_minutes(args.minutes)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds through run_soak's cleanup

    signal.signal(signal.SIGTERM, stop)
    config = SoakConfig(
        workdir=workdir,
        kafka_libs=fetch_jars(libs),
        plan=plan,
        seed=seed,
        rate=args.rate,
        invalid_share=args.invalid_share,
        catch_up_timeout_s=args.catch_up_timeout,
    )
    result = run_soak(config, echo=lambda text: print(text, flush=True))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
