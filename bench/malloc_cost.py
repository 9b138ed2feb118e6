"""What glibc's malloc costs an eager PyTorch job, with and without
``ensemble.runtime.keep_freed_memory`` (which training, export and
``evaluate`` turn on).

    python -m bench.malloc_cost --json var/bench/malloc.json
    python -m bench.malloc_cost --member effnet_autoatt_b4 --size 224 --batches 64,8

For each setting a fresh child process (malloc settings hold for a whole
process) measures, on random inputs (they cost what real ones do):

- ``eval``: fp32 forward passes under ``no_grad`` over ``--images`` inputs
  in batches of each ``--batches`` size, as export and ``evaluate`` run;
- ``train``: bf16-autocast, channels_last optimizer steps on batches of
  ``--train-batch``, as CPU training runs (skipped with ``--train-batch 0``).

It prints wall seconds, user and system CPU seconds, minor page faults and
images per second, and says what else was using the CPU. Stop training
before measuring: two cores are shared.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

from bench import common

SETTINGS = ("glibc-default", "keep-freed")


def _usage() -> tuple[float, float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt


def _since(start: tuple[float, float, float, int], images: int) -> dict[str, float]:
    wall, user, system, faults = (b - a for a, b in zip(start, _usage(), strict=True))
    return {
        "wall_s": round(wall, 2),
        "user_s": round(user, 2),
        "system_s": round(system, 2),
        "minor_faults": int(faults),
        "images_per_s": round(images / wall, 2),
    }


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """One setting's figures, in this process (the child's side)."""
    import torch

    from ensemble.registry import REGISTRY
    from ensemble.runtime import keep_freed_memory

    applied = keep_freed_memory() if config["setting"] == "keep-freed" else False
    torch.manual_seed(0)
    size, n = config["size"], config["images"]
    model = REGISTRY.get(config["member"]).build().eval().to(memory_format=torch.channels_last)
    x = torch.randn(n, 3, size, size).contiguous(memory_format=torch.channels_last)
    out: dict[str, Any] = {"setting": config["setting"], "applied": applied, "eval": {}}
    with torch.no_grad():
        for batch in config["batches"]:
            model(x[:batch])  # warm-up: oneDNN's kernels for this shape
            start = _usage()
            for i in range(0, n, batch):
                model(x[i : i + batch])
            out["eval"][str(batch)] = _since(start, n)
    tb = config["train_batch"]
    if tb:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        xb, yb = x[:tb].contiguous(memory_format=torch.channels_last), torch.ones(tb)

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(xb).reshape(-1).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        start = _usage()
        for _ in range(config["train_steps"]):
            step()
        out["train"] = _since(start, tb * config["train_steps"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--member", default="effnet_autoatt_b4")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=128, help="inputs per eval pass")
    parser.add_argument("--batches", default="64,8", help="eval batch sizes")
    parser.add_argument("--train-batch", type=int, default=32, help="0: no training steps")
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    cpu = common.cpu_snapshot()
    report: dict[str, Any] = {"cpu_before": cpu, "member": args.member, "size": args.size}
    for setting in SETTINGS:
        config = {
            "setting": setting,
            "member": args.member,
            "size": args.size,
            "images": args.images,
            "batches": [int(b) for b in common.names(args.batches)],
            "train_batch": args.train_batch,
            "train_steps": args.train_steps,
        }
        done = subprocess.run(
            [sys.executable, "-m", "bench.malloc_cost", "--child", json.dumps(config)],
            cwd=common.ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        report[setting] = result
        for batch, fig in result["eval"].items():
            print(f"{setting:14s} eval fp32 batch {batch:>3}: {_line(fig)}")
        if "train" in result:
            print(f"{setting:14s} train bf16 batch {args.train_batch:>3}: {_line(result['train'])}")
    print(
        f"{args.member} at {args.size} px, random inputs; other processes used "
        f"{cpu['other_processes_cpu_percent']}% CPU before the run"
        + ("" if cpu["idle"] else f" (busy: {cpu['busy_processes']})")
    )
    common.write_json(args.json, report)


def _line(fig: dict[str, float]) -> str:
    return (
        f"{fig['wall_s']:.1f} s wall, {fig['user_s']:.1f} s user, {fig['system_s']:.1f} s system, "
        f"{fig['minor_faults'] / 1e6:.2f}M minor faults, {fig['images_per_s']:.1f} img/s"
    )


if __name__ == "__main__":
    main()
