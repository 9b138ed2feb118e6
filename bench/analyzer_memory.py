"""Where a worker's memory goes: resident set after each stage of an analysis.

    python -m bench.analyzer_memory ../shared/media/videos/aaronchong888_abofeumbvv.mp4 \
        [--repeats 2] [--explain] [--json var/bench/memory.json]

Builds the site's ``Analyzer`` exactly as a worker does (the settings'
members, weights, backend and precision), then analyses the file
``--repeats`` times, printing the process's VmRSS and VmHWM (peak) from
/proc/self/status after importing, after loading the members, and after each
analysis (with its seconds per stage); with ``--explain``, each analysis
also writes its explanations (to a temporary folder), as a worker's job
does. Issue 15's target is a peak of at most 2 GB for the 32-frame clip.
Linux only (it reads /proc).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench import common

common.use_site()  # the Django site, as manage.py finds it


def memory_mb() -> dict[str, float]:
    """VmRSS and VmHWM of this process, in MB."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    parser.add_argument("media", type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--explain",
        action="store_true",
        help="run the analyses with their explanations, as the worker does (explain.Explainer)",
    )
    args = parser.parse_args(argv)

    stages: list[dict[str, object]] = []

    def record(stage: str, **extra: object) -> None:
        row = {"stage": stage, **memory_mb(), **extra}
        stages.append(row)
        print(f"{stage:<24} RSS {row['VmRSS']:8.0f} MB   peak {row['VmHWM']:8.0f} MB", flush=True)

    record("start")
    import django

    django.setup()
    from analyses.config import analysis_config, analysis_registry
    from ensemble.pipeline import Analyzer

    if args.explain:
        from explain import ExplainConfig, Explainer

    record("imports")
    config = analysis_config()
    analyzer = Analyzer(config, analysis_registry())
    members = analyzer.members
    backends = sorted({f"{m.backend}/{m.compute_precision}" for m in members.values()})
    record("members loaded", members=sorted(members), backends=backends)
    explainer = Explainer(analyzer, ExplainConfig()) if args.explain else None
    for i in range(args.repeats):
        if explainer is None:
            result = analyzer.analyze(args.media)
        else:
            with tempfile.TemporaryDirectory() as out:
                result, _ = explainer.run(args.media, Path(out))
        timings = {k: round(v, 3) for k, v in result.timings.items()}
        record(f"analysis {i + 1}", status=result.status, faces=len(result.faces), timings=timings)
        print("    seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "media": str(args.media),
            "backends": backends,
            "explain": args.explain,
            "stages": stages,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
