"""Training throughput per member and mode, in images per second.

    python -m bench.train_speed --json var/train_speed.json
    python -m bench.train_speed --members resnet50 --sizes 128,224 --modes fp32,bf16

Modes (one optimizer step = forward, BCE loss, backward, AdamW step; random
init and random inputs, which cost the same as real ones):

- ``fp32``: the eager fp32 path with NCHW tensors, as training ran before;
- ``bf16``: bf16 autocast and channels_last (what ``--precision auto`` picks
  on a CPU with AMX or AVX-512 BF16, see ``ensemble.training.loop``);
- ``bf16-compile``: the same under ``torch.compile`` (compile time reported
  apart, with the two warm-up steps, and not counted in img/s);
- ``fp32-cl``: fp32 with channels_last (what ``--precision fp32`` trains
  with, on a CPU without bf16 kernels), and ``fp32-cl-compile`` the same
  under ``torch.compile``.

The data side is measured too: crops per second read from JPEG files
(decode and resize per step, as before) and from the in-memory crop store,
each followed by the training augmentation.

Two cores are shared with anything else running; the JSON says what else
was running (the load average before the run) and the thread count. End
a training run before benchmarking (SIGINT writes its checkpoint): one
paused with SIGSTOP keeps its memory, and B7's (20 GB with its crop store)
and a compiled model do not fit in 24 GB together.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench import common
from ensemble.registry import REGISTRY
from ensemble.training.augment import augment, build_augment
from ensemble.training.batches import CropStore
from ensemble.training.data import load_samples, read_rgb, resize_to, select
from ensemble.training.loop import cpu_has_bf16

MODES = ("fp32", "bf16", "bf16-compile")
OTHER_MODES = ("fp32-cl", "fp32-cl-compile")
DEFAULT_SIZES = {"resnet50": (128, 224), "effnet_autoatt_b4": (160, 224), "effnet_b7": (128, 224)}
DEFAULT_BATCH = {"resnet50": 32, "effnet_autoatt_b4": 16, "effnet_b7": 8}
WARMUP_STEPS = 2


def step_speed(
    name: str, size: int, mode: str, batch: int, steps: int
) -> dict[str, float | str | None]:
    """Images per second of ``steps`` optimizer steps after a warm-up."""
    torch.manual_seed(0)
    model: nn.Module = REGISTRY.get(name).build().train()
    if mode not in MODES + OTHER_MODES:
        raise SystemExit(f"unknown mode {mode!r}; known: {', '.join(MODES + OTHER_MODES)}")
    bf16 = mode.startswith("bf16")
    compiled = mode.endswith("-compile")
    fmt = torch.channels_last if bf16 or mode.startswith("fp32-cl") else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    run: nn.Module = model
    compile_s = None
    if compiled:
        run = torch.compile(model)  # type: ignore[assignment]
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = (torch.arange(batch) % 2).float()

    def one_step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = run(x).reshape(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    started = time.perf_counter()
    for _ in range(WARMUP_STEPS):
        one_step()
    if compiled:
        compile_s = round(time.perf_counter() - started, 1)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - t)
    median = float(np.median(times))
    return {
        "member": name,
        "size": size,
        "mode": mode,
        "batch": batch,
        "steps": steps,
        "img_per_s": round(batch / median, 2),
        "step_s_median": round(median, 3),
        "compile_and_warmup_s": compile_s,
    }


def data_speed(data: Path, size: int, n: int) -> dict[str, float]:
    """Crops per second from JPEG files and from the crop store, augmented."""
    samples = select(load_samples(data), "train")[:n]
    paths = [s.path for s in samples]
    compose = build_augment()
    t = time.perf_counter()
    for i, path in enumerate(paths):
        augment(compose, resize_to(read_rgb(path), None, size)[0], i)
    from_files = len(paths) / (time.perf_counter() - t)
    store = CropStore(paths, size)
    t = time.perf_counter()
    for i, path in enumerate(paths):
        stored = store.get(path, None)
        assert stored is not None
        augment(compose, stored[0], i)
    from_store = len(paths) / (time.perf_counter() - t)
    return {
        "size": size,
        "crops": len(paths),
        "jpeg_per_s": round(from_files, 1),
        "store_per_s": round(from_store, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--members", default="resnet50,effnet_autoatt_b4,effnet_b7")
    parser.add_argument("--sizes", help="comma-separated input sizes (default per member)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, help="batch size (default per member)")
    parser.add_argument("--data", type=Path, default=common.DFDC_FACES, help="face-crop dataset")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for name in common.names(args.members):
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else DEFAULT_SIZES[name]
        for size in sizes:
            fp32 = None
            for mode in args.modes.split(","):
                batch = args.batch or DEFAULT_BATCH.get(name, 16)
                row = step_speed(name, size, mode, batch, args.steps)
                if mode == "fp32":
                    fp32 = row["img_per_s"]
                if fp32 and mode != "fp32":
                    row["speedup_vs_fp32"] = round(float(row["img_per_s"] or 0) / float(fp32), 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    data = None
    if args.data.is_dir():
        data = data_speed(args.data, 128, 300)
        print(json.dumps({"data": data}), flush=True)
    result = {
        "rows": rows,
        "data": data,
        "threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_bf16(),
        "load_average_before": [round(v, 2) for v in load],
        "note": "load average >= 1 before the run means something else was using the cores",
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
