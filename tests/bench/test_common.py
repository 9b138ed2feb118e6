"""The benchmarks are a package run as ``python -m bench.NAME``: each imports
without touching sys.path, shows its command line in --help, and shares the
options and the JSON report of ``bench.common``."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import common

ROOT = Path(__file__).resolve().parents[2]
# Every module of the package but the shared one: a list kept by hand missed
# half of them, and a rename broke one (run_soup) with no test failing.
BENCHMARKS = tuple(
    sorted(m.name for m in pkgutil.iter_modules([str(ROOT / "bench")]) if m.name != "common")
)


def test_every_benchmark_module_is_checked() -> None:
    assert len(BENCHMARKS) >= 17 and "run_soup" in BENCHMARKS and "common" not in BENCHMARKS


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_shows_its_module_command_line_and_json_option(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module = importlib.import_module(f"bench.{name}")
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out
    assert f"python -m bench.{name}" in usage and "--json JSON" in usage
    assert "python bench/" not in module.__doc__


def test_a_benchmark_runs_as_a_module_from_the_repository_root() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-m", "bench.provenance_cost", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--no-signed" in out.stdout


def test_shared_options_parse_with_their_defaults() -> None:
    parser = common.parser("doc")
    common.add_dataset(parser, split="val", limit=512)
    common.add_analysis(parser, common.CLIP, ["a", "b"])
    args = parser.parse_args(["--members", " a, ,c ", "--limit", "3"])
    assert (args.data, args.split, args.limit) == (common.DFDC_FACES, "val", 3)
    assert (args.videos, args.frames, args.threads, args.json) == (common.CLIP, 32, 0, None)
    assert common.names(args.members) == ["a", "c"]
    assert common.names(parser.parse_args([]).members) == ["a", "b"]


def test_the_json_report_is_written_with_its_folders_and_only_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "var" / "bench" / "out.json"
    common.write_json(None, {"x": 1})
    assert not (tmp_path / "var").exists()
    common.write_json(target, {"x": 1, "rows": [0.5]})
    assert json.loads(target.read_text(encoding="utf-8")) == {"x": 1, "rows": [0.5]}
    assert target.read_text(encoding="utf-8").endswith("}\n")
