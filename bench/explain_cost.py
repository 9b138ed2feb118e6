"""Explanation overhead: seconds per video for the analysis alone against the
analysis followed by every explanation at the default settings.

    python -m bench.explain_cost --videos ../shared/media/videos --json var/explain_cost.json

Members are the real architectures with random weights (time does not depend
on the weights), made by ``bench.speed``'s member factory and installed in
a temporary weights folder, so the Analyzer loads them the way a worker does.
For every video the analysis runs alone, then ``Explainer.run`` (which
repeats the same analysis and adds the explanations) on the same loaded
members; before that, both run once untimed on the first video, so one-time
costs (ONNX exports, imports, font cache, first-call kernel set-up for each
input shape) are not counted: the figures are a warm worker's.

``overhead`` compares the two runs; ``overhead_in_run`` divides the time of
the explanation stages by the analysis that preceded them in the same run,
which other processes on a shared machine disturb less.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import common
from bench.speed import random_member
from ensemble.config import (
    BACKENDS,
    DEFAULT_MIRROR,
    PRECISIONS,
    AnalysisConfig,
    Backend,
    Precision,
)
from ensemble.media import list_media, sniff
from ensemble.pipeline import Analyzer
from ensemble.registry import REGISTRY
from ensemble.weights import save_weights
from explain import ExplainConfig, Explainer

# Explanations may add at most this share of the analysis time (issue 3).
TARGET_OVERHEAD = 0.5


def install_random_members(names: Sequence[str], weights_dir: Path) -> None:
    """Random-init real architectures, saved where an Analyzer looks for weights."""
    torch.manual_seed(0)
    for name in names:
        member = random_member(REGISTRY.get(name).build().eval(), name, channels_last=True)
        save_weights(
            member.model.state_dict(),
            member.spec,
            weights_dir,
            provenance={"data": "random init, benchmark only"},
        )


def _warm_up(analyzer: Analyzer, explainer: Explainer, video: Path, tmp: Path) -> None:
    """One untimed run of both on ``video``: exports, imports, font cache, and
    the kernels oneDNN and ONNX Runtime set up on the first call of each input
    shape (a worker pays these once, not per video)."""
    analyzer.analyze(video)
    explainer.run(video, tmp / "warmup-out")


def measure(
    videos: Sequence[Path],
    frames: int = 32,
    members: Sequence[str] = tuple(REGISTRY.names()),
    explain_config: ExplainConfig | None = None,
    threads: int = 0,
    reference: Path | None = None,
    backend: Backend = "auto",
    precision: Precision = "auto",
    mirror: Sequence[str] = DEFAULT_MIRROR,
) -> dict[str, Any]:
    """Seconds per video: analysis alone, and analysis + explanations
    (``mirror``: the members that also score each face mirrored)."""
    with tempfile.TemporaryDirectory(prefix="trusttrace-explain-cost-") as tmp_name:
        tmp = Path(tmp_name)
        install_random_members(members, tmp / "weights")
        config = AnalysisConfig(
            weights_dir=tmp / "weights",
            cache_dir=Path(tempfile.gettempdir()) / "trusttrace-bench-cache",
            members=tuple(members),
            frames=frames,
            threads=threads,
            backend=backend,
            precision=precision,
            mirror=tuple(mirror),
        )
        analyzer = Analyzer(config, REGISTRY)
        analyzer.prepare()
        explainer = Explainer(analyzer, explain_config or ExplainConfig())
        _warm_up(analyzer, explainer, videos[0], tmp)
        rows = []
        for i, path in enumerate(videos):
            start = time.perf_counter()
            alone = analyzer.analyze(path)
            analysis_s = time.perf_counter() - start
            start = time.perf_counter()
            result, index = explainer.run(path, tmp / f"out{i}", reference=reference)
            explained_s = time.perf_counter() - start
            explain_stages = dict(index.timings) if index else {}
            in_run_analysis = result.timings.get("total", 0.0)
            rows.append(
                {
                    "file": path.name,
                    "status": alone.status,
                    "faces": len(alone.faces),
                    "analysis_s": round(analysis_s, 3),
                    "analysis_with_explanations_s": round(explained_s, 3),
                    "overhead": round(explained_s / analysis_s - 1.0, 3),
                    # The same ratio inside one run: explanation stages over the
                    # analysis that preceded them (less exposed to load from
                    # other processes between the two runs).
                    "overhead_in_run": round(
                        sum(explain_stages.values()) / max(in_run_analysis, 1e-9), 3
                    ),
                    "artifacts": len(index.artifacts) if index else 0,
                    "explain_stages_s": {k: round(v, 3) for k, v in explain_stages.items()},
                    "analysis_stages_s": {k: round(v, 3) for k, v in result.timings.items()},
                    "bytes_written": sum(
                        f.stat().st_size for f in (tmp / f"out{i}").rglob("*") if f.is_file()
                    ),
                }
            )
            logging.info("%s: %s", path.name, rows[-1])
    analysis = float(np.mean([r["analysis_s"] for r in rows]))
    explained = float(np.mean([r["analysis_with_explanations_s"] for r in rows]))
    return {
        "analysis_s_per_video": round(analysis, 3),
        "analysis_with_explanations_s_per_video": round(explained, 3),
        "overhead": round(explained / analysis - 1.0, 3),
        "overhead_in_run": round(float(np.mean([r["overhead_in_run"] for r in rows])), 3),
        "target_overhead": TARGET_OVERHEAD,
        "videos": rows,
        "frames": frames,
        "members": list(members),
        "backend": backend,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    common.add_analysis(parser, common.VIDEOS, REGISTRY.names())
    parser.add_argument("--reference", type=Path, help="reference media for every video")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="what runs the members (auto: OpenVINO)"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    videos = [p for p in list_media([args.videos]) if sniff(p).kind == "video"]
    if not videos:
        sys.exit(f"no videos in {args.videos}")
    names = common.names(args.members)
    report = measure(
        videos,
        args.frames,
        names,
        threads=args.threads,
        reference=args.reference,
        backend=args.backend,
        precision=args.precision,
    )
    print(json.dumps(report, indent=2))
    common.write_json(args.json, report)


if __name__ == "__main__":
    main()
