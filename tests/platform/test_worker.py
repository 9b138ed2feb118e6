"""A real Celery worker process analyses a generated clip end to end, over a
real redis-server and over the embedded filesystem transport."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ensemble.runtime import resolve_backend
from tests.platform import stack

pytestmark = pytest.mark.slow


def _run_driver(env: dict[str, str], clip: Path) -> dict:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("worker_driver.py")), str(clip)],
        env=env,
        cwd=stack.ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check(result: dict, log: Path) -> None:
    assert result["status"] == "done", (result, log.read_text()[-3000:])
    assert set(result["model_versions"]) == {"tiny_a", "tiny_b"}
    # The worker runs the production default backend (OpenVINO on this CPU).
    expected = resolve_backend(os.environ.get("TRUSTTRACE_BACKEND", "auto"), "cpu")
    assert result["backends"] == [expected], result
    assert result["frames"] > 0 and result["series_persons"] >= 1
    assert 0.0 <= result["score"] <= 1.0
    # The worker ran the real explainer: Grad-CAM of each member, and the chart.
    assert {"gradcam:tiny_a", "gradcam:tiny_b", "chart:"} <= set(result["artifacts"]), result
    statuses = [s for s, _ in result["stages"]]
    assert statuses[0] == "pending" and "running" in statuses and statuses[-1] == "done"
    text = log.read_text()
    assert "analyses.analyze_submission" in text and "succeeded" in text


@pytest.fixture
def clip(media_dir: Path) -> Path:
    return media_dir / "person.mp4"


def test_worker_over_redis_analyzes_a_clip(
    tmp_path: Path, tiny_weights: Path, blazeface_cache: Path, clip: Path
) -> None:
    if not Path(stack.REDIS).exists():
        pytest.skip("redis-server is not installed (make test installs it as root)")
    with stack.redis_server(tmp_path) as url:
        env = stack.site_env(tmp_path / "var", tiny_weights, blazeface_cache, broker=url)
        stack.manage(env, "migrate", "--noinput")
        log = tmp_path / "worker.log"
        with stack.process(stack.worker_args(), env, log):
            result = _run_driver(env, clip)
    _check(result, log)


def test_worker_over_the_embedded_transport_analyzes_a_clip(
    tmp_path: Path, tiny_weights: Path, blazeface_cache: Path, clip: Path
) -> None:
    env = stack.site_env(tmp_path / "var", tiny_weights, blazeface_cache)
    stack.manage(env, "migrate", "--noinput")
    log = tmp_path / "worker.log"
    with stack.process(stack.worker_args(), env, log):
        result = _run_driver(env, clip)
    _check(result, log)
    assert (tmp_path / "var" / "queue" / "control").is_dir()


def test_worker_settings_suit_long_jobs() -> None:
    from analyses.tasks import analyze_submission
    from trusttrace.celery import app

    conf = app.conf
    assert analyze_submission.name == "analyses.analyze_submission"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert 0 < conf.task_soft_time_limit < conf.task_time_limit
    assert conf.task_ignore_result
    # The worker parent imports the task module only: no pipeline, no models,
    # no CUDA context (models load lazily in the child that runs a job).
    code = (
        "import sys, django; django.setup(); from trusttrace.celery import app; "
        "app.loader.import_default_modules(); import analyses.tasks; "
        "print('ensemble.pipeline' in sys.modules, 'explain' in sys.modules)"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "trusttrace.settings.test",
        "PYTHONPATH": os.pathsep.join(["platform", "."]),
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]
