"""Typed settings: environment variables that do not parse stop every process
with the variable's name; good values parse; settings.TRUSTTRACE is read
through one typed object."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from analyses.config import TrusttraceSettings, trusttrace_settings
from trusttrace.settings.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_path,
    env_str,
)

ROOT = Path(__file__).resolve().parents[2]
VAR = "TRUSTTRACE_TEST_VALUE"


@pytest.fixture
def var(monkeypatch: pytest.MonkeyPatch) -> Any:
    def set_to(value: str) -> None:
        monkeypatch.setenv(VAR, value)

    monkeypatch.delenv(VAR, raising=False)
    return set_to


def _refused(read: Any, *args: Any) -> str:
    with pytest.raises(ImproperlyConfigured) as caught:
        read(VAR, *args)
    assert VAR in str(caught.value)
    return str(caught.value)


def test_unset_variables_give_the_defaults(var: Any) -> None:
    assert env_int(VAR, 7) == 7
    assert env_float(VAR, 900) == 900.0 and isinstance(env_float(VAR, 900), float)
    assert env_bool(VAR, True) is True and env_bool(VAR, False) is False
    assert env_list(VAR, ("a", "b")) == ["a", "b"]
    assert env_choice(VAR, ("auto", "torch"), "auto") == "auto"
    assert env_str(VAR, "x") == "x"
    assert env_path(VAR, Path("/d")) == Path("/d")


@pytest.mark.parametrize("text, value", [("32", 32), (" 5 ", 5), ("-1", -1), ("1_000", 1000)])
def test_whole_numbers_parse(var: Any, text: str, value: int) -> None:
    var(text)
    assert env_int(VAR, 0) == value


@pytest.mark.parametrize("text", ["3.5", "many", "", "32 frames", "1e3"])
def test_an_int_that_is_not_one_is_refused_with_the_name(var: Any, text: str) -> None:
    var(text)
    assert "is not a whole number" in _refused(env_int, 0)


@pytest.mark.parametrize("text, value", [("0.25", 0.25), ("900", 900.0), ("1e3", 1000.0)])
def test_numbers_parse(var: Any, text: str, value: float) -> None:
    var(text)
    assert env_float(VAR, 0.0) == value


@pytest.mark.parametrize("text", ["0.5abc", "half", "", "nan", "1,5"])
def test_a_float_that_is_not_one_is_refused_with_the_name(var: Any, text: str) -> None:
    # django-environ's Env.float reads "0.5abc" as 0.5 and "1e3" as 13.0.
    var(text)
    assert "is not a number" in _refused(env_float, 0.0)


@pytest.mark.parametrize("text", ["1", "true", "YES", " on ", "y", "ok"])
def test_true_words_are_true(var: Any, text: str) -> None:
    var(text)
    assert env_bool(VAR, False) is True


@pytest.mark.parametrize("text", ["0", "false", "No", "off", "n", ""])
def test_false_words_are_false(var: Any, text: str) -> None:
    var(text)
    assert env_bool(VAR, True) is False


@pytest.mark.parametrize("text", ["yes-please", "ture", "2", "enabled"])
def test_a_typo_in_a_boolean_is_refused_not_read_as_false(var: Any, text: str) -> None:
    var(text)
    message = _refused(env_bool, False)
    assert repr(text) in message and "true or false" in message


def test_lists_drop_blanks_and_empty_items(var: Any) -> None:
    var(" resnet50, effnet_b7,,")
    assert env_list(VAR, ()) == ["resnet50", "effnet_b7"]
    var("")
    assert env_list(VAR, ("a",)) == []


def test_a_choice_outside_the_literal_is_refused_with_the_choices(var: Any) -> None:
    var("openvino")
    assert env_choice(VAR, ("auto", "openvino"), "auto") == "openvino"
    var("OpenVINO")
    message = _refused(env_choice, ("auto", "openvino"), "auto")
    assert "one of auto, openvino" in message


def _start(**env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "trusttrace.settings.test",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
        **env,
    }
    code = "import django; django.setup(); print('started')"
    return subprocess.run(
        [sys.executable, "-c", code],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "name, value, says",
    [
        ("TRUSTTRACE_FRAMES", "thirty-two", "is not a whole number"),
        ("DJANGO_EMAIL_USE_TLS", "yes-please", "is not true or false"),
        ("TRUSTTRACE_THRESHOLD", "0.5abc", "is not a number"),
        ("TRUSTTRACE_PRECISION", "fp16", "is not one of auto, fp32, bf16"),
        ("TRUSTTRACE_AGGREGATION", "median", "is not one of mean, confident"),
    ],
)
def test_a_bad_variable_stops_django_from_starting(name: str, value: str, says: str) -> None:
    out = _start(**{name: value})
    assert out.returncode != 0 and "started" not in out.stdout
    assert "ImproperlyConfigured" in out.stderr and f"{name}={value!r} {says}" in out.stderr


@pytest.mark.parametrize(
    "env, says",
    [
        ({"TRUSTTRACE_HEARTBEAT_S": "0"}, "TRUSTTRACE_HEARTBEAT_S (0.0) must be above 0"),
        ({"TRUSTTRACE_REAPER_INTERVAL_S": "-1"}, "TRUSTTRACE_REAPER_INTERVAL_S (-1.0) must be"),
        (
            {"TRUSTTRACE_HEARTBEAT_S": "60", "TRUSTTRACE_STALE_RUNNING_S": "90"},
            "TRUSTTRACE_STALE_RUNNING_S (90.0) must be at least twice TRUSTTRACE_HEARTBEAT_S",
        ),
    ],
)
def test_reaper_clocks_that_would_reap_live_jobs_stop_django_from_starting(
    env: dict[str, str], says: str
) -> None:
    out = _start(**env)
    assert out.returncode != 0 and "started" not in out.stdout
    assert "ImproperlyConfigured" in out.stderr and says in out.stderr


def test_good_variables_reach_the_typed_settings() -> None:
    code = (
        "import django; django.setup(); from analyses.config import trusttrace_settings as t; "
        "s = t(); print(s.frames, s.threshold, s.members, s.backend, s.precision, "
        "s.c2pa_trust_anchors, s.mirror)"
    )
    env = {
        "TRUSTTRACE_FRAMES": "12",
        "TRUSTTRACE_THRESHOLD": "0.6",
        "TRUSTTRACE_MEMBERS": "tiny_a, tiny_b",
        "TRUSTTRACE_BACKEND": "torch",
        "TRUSTTRACE_PRECISION": "fp32",
        "TRUSTTRACE_C2PA_TRUST_ANCHORS": "/etc/c2pa/anchors.pem",
        "TRUSTTRACE_MIRROR": "",  # none
        "DJANGO_SETTINGS_MODULE": "trusttrace.settings.test",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    last = out.stdout.split("\n")[-2]
    assert last == "12 0.6 ('tiny_a', 'tiny_b') torch fp32 /etc/c2pa/anchors.pem ()"


# --- settings.TRUSTTRACE, typed ------------------------------------------------


def test_the_typed_settings_convert_paths_numbers_and_lists(settings: Any) -> None:
    changed = {
        "WEIGHTS_DIR": "/srv/weights",
        "STALE_RUNNING_S": 30,
        "MEMBERS": ["tiny_a"],
        "BACKEND": "torch",
    }
    settings.TRUSTTRACE = {**settings.TRUSTTRACE, **changed}
    s = trusttrace_settings()
    assert s.weights_dir == Path("/srv/weights") and isinstance(s.weights_dir, Path)
    assert s.stale_running_s == 30.0 and isinstance(s.stale_running_s, float)
    assert s.members == ("tiny_a",) and s.backend == "torch"
    assert s.mirror == ("effnet_autoatt_b4",)  # the default
    settings.TRUSTTRACE = {**settings.TRUSTTRACE, "MIRROR": ["tiny_a"]}
    assert trusttrace_settings().mirror == ("tiny_a",)


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("MAX_UPLOAD_BYTES", "1 GiB", "must be a whole number, got '1 GiB'"),
        ("MAX_UPLOAD_BYTES", True, "must be a whole number, got True"),
        ("BACKEND", "gpu", "must be one of 'auto', 'torch', 'onnxruntime', 'openvino'"),
        ("MEMBERS", "tiny_a,tiny_b", "must be a list or tuple of names"),
        ("HEARTBEAT_S", None, "must be a number, got None"),
    ],
)
def test_a_wrong_type_in_settings_trusttrace_is_refused_with_the_key(
    settings: Any, key: str, value: object, says: str
) -> None:
    settings.TRUSTTRACE = {**settings.TRUSTTRACE, key: value}
    with pytest.raises(ImproperlyConfigured, match=f"TRUSTTRACE\\['{key}'\\]") as caught:
        trusttrace_settings()
    assert says in str(caught.value)


def test_c2pa_trust_anchors_is_an_optional_path(settings: Any, tmp_path: Path) -> None:
    from analyses.services.probing import c2pa_trust_anchors

    values = {k: v for k, v in settings.TRUSTTRACE.items() if k != "C2PA_TRUST_ANCHORS"}
    assert TrusttraceSettings.from_mapping(values).c2pa_trust_anchors is None
    for unset in (None, ""):
        s = TrusttraceSettings.from_mapping({**values, "C2PA_TRUST_ANCHORS": unset})
        assert s.c2pa_trust_anchors is None
    pem = tmp_path / "anchors.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    settings.TRUSTTRACE = {**values, "C2PA_TRUST_ANCHORS": str(pem)}
    assert trusttrace_settings().c2pa_trust_anchors == pem
    assert c2pa_trust_anchors() == "-----BEGIN CERTIFICATE-----\n"
    settings.TRUSTTRACE = {**values, "C2PA_TRUST_ANCHORS": 42}
    with pytest.raises(ImproperlyConfigured, match="'C2PA_TRUST_ANCHORS'\\] must be a path"):
        trusttrace_settings()


def test_a_missing_key_is_named_and_backend_and_precision_default_to_auto(settings: Any) -> None:
    values = {k: v for k, v in settings.TRUSTTRACE.items() if k not in ("BACKEND", "PRECISION")}
    s = TrusttraceSettings.from_mapping(values)
    assert (s.backend, s.precision) == ("auto", "auto")
    del values["FRAMES"]
    with pytest.raises(ImproperlyConfigured, match=r"settings\.TRUSTTRACE has no FRAMES"):
        TrusttraceSettings.from_mapping(values)


def test_local_settings_answer_to_the_names_in_django_allowed_hosts(tmp_path: Path) -> None:
    code = "from django.conf import settings; print(settings.ALLOWED_HOSTS)"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "trusttrace.settings.local",
        "TRUSTTRACE_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_ALLOWED_HOSTS": "myhost.lan,10.0.0.5",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
    }
    out = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); " + code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    # Before: localhost only, so `make run ADDR=0.0.0.0:8000` answered 400 to other machines.
    hosts = out.stdout.strip().splitlines()[-1]
    assert hosts == "['localhost', '127.0.0.1', '[::1]', 'myhost.lan', '10.0.0.5']"


_READ_THEN_WRITE = """
import threading, time
import django
django.setup()
from django.db import connection, transaction
with connection.cursor() as c:
    c.execute("CREATE TABLE counter (n INTEGER)")
    c.execute("INSERT INTO counter VALUES (0)")
errors = []
def add_one():
    try:
        with transaction.atomic(), connection.cursor() as c:
            c.execute("SELECT n FROM counter")
            n = c.fetchone()[0]
            time.sleep(0.3)
            c.execute("UPDATE counter SET n = %s", [n + 1])
    except Exception as e:
        errors.append(str(e))
    finally:
        connection.close()
threads = [threading.Thread(target=add_one) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join()
with connection.cursor() as c:
    c.execute("SELECT n FROM counter")
    print(c.fetchone()[0], errors)
"""


def test_sqlite_transactions_that_read_then_write_wait_their_turn(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "trusttrace.settings.local",
        "TRUSTTRACE_VAR_DIR": str(tmp_path / "var"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
    }
    env.pop("DATABASE_URL", None)
    env.pop("POSTGRES_DB", None)
    out = subprocess.run(
        [sys.executable, "-c", _READ_THEN_WRITE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    # Before (deferred transactions): all but one failed at once with
    # "database is locked" (a read lock cannot be upgraded while another
    # reader holds one), and the count was lost.
    assert out.stdout.strip().splitlines()[-1] == "3 []"
