"""One server setting, several values, one gallery: which value serves identify best.

Fills one data directory once, then restarts the server on it with each value in turn
(interleaved, ``--rounds`` times, so that the machine's drift falls on every value alike)
and drives identify-by-embedding the same way each time.  Prints each run and writes JSON.

    python -m faceid.benchmarks.settings_ab --gallery-size 1000000 --setting FACEID_BATCH_INFLIGHT=1,2
    python -m faceid.benchmarks.settings_ab --gallery-size 1000000 --setting FACEID_PROCESSES=1,2 --channels 8
"""

from __future__ import annotations

import argparse
import signal
import tempfile
from pathlib import Path
from typing import Any

from faceid.benchmarks.common import machine, write_json
from faceid.benchmarks.load import Workload, fill_gallery, run_load, summary
from faceid.server.app import spawn


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery-size", type=int, default=100_000)
    ap.add_argument("--setting", required=True, help="NAME=V1,V2,… (a FACEID_ environment setting)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1, help="connections (for FACEID_PROCESSES > 1)")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args(argv)
    name, values = args.setting.split("=", 1)
    print(
        f"settings_ab: {name} in {values.split(',')}, {args.rounds} rounds, gallery {args.gallery_size:,}, "
        f"identify-embedding at c={args.concurrency} over {args.channels} connection(s), "
        f"{args.duration:g} s after {args.warmup:g} s"
    )
    print(f"machine: {machine()}")
    runs: list[dict[str, Any]] = []
    key = ""
    with tempfile.TemporaryDirectory(prefix="faceid-ab-") as tmp:
        for round_ in range(args.rounds):
            for value in values.split(","):
                proc, address, first_key = spawn(Path(tmp), env={name: value})
                key = first_key or key
                try:
                    fill_gallery(address, args.gallery_size if not runs else 0, key)
                    r = run_load(
                        address,
                        Workload("identify-embedding"),
                        args.concurrency,
                        1,
                        args.warmup,
                        args.duration,
                        key,
                        args.channels,
                    )
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(120)
                r.pop("latencies_ms", None)
                runs.append({"round": round_, "value": value, **r})
                print(f"{name}={value:<6} " + summary(r), flush=True)
    payload = {"benchmark": "settings_ab", "setting": name, "gallery_size": args.gallery_size, "runs": runs}
    payload["machine"] = machine()
    write_json(args.out / f"settings_ab_{name.lower()}.json", payload)
    return payload


if __name__ == "__main__":
    main()
