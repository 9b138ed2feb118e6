"""Which models the site runs: the configured members, their installed
weights, and the backend and combination a worker would use."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from analyses.config import analysis_config, analysis_registry
from analyses.models import WeightsVersion
from analyses.services.errors import ModelsUnavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberStatus:
    """One ensemble member as installed on this site."""

    name: str
    installed: bool
    weights_sha256: str | None
    architecture: str
    input_size: int
    provenance: dict[str, Any]
    problem: str | None
    # The problem in words that name no server path or command (for anyone
    # but the site's staff, who see ``problem``).
    brief: str | None = None
    # The calibration in the manifest: sigmoid(logit / temperature + bias).
    temperature: float = 1.0
    bias: float = 0.0


def models_status() -> list[MemberStatus]:
    """Every configured member with its installed weights (manifest only: cheap)."""
    from ensemble.errors import MissingWeightsError, RegistryError, TrusttraceError
    from ensemble.weights import read_manifest

    config = analysis_config()
    registry = analysis_registry()
    out = []
    for name in config.members:
        try:
            registry.get(name)
            manifest = read_manifest(config.weights_dir, name)
        except TrusttraceError as e:
            if isinstance(e, MissingWeightsError):
                brief = f"No weights are installed for detector '{name}'."
            elif isinstance(e, RegistryError):
                brief = f"This version of the site has no detector '{name}'."
            else:
                brief = f"The weights installed for detector '{name}' cannot be used."
            out.append(MemberStatus(name, False, None, "", 0, {}, str(e), brief))
            continue
        out.append(
            MemberStatus(
                name,
                True,
                manifest.weights_sha256,
                manifest.architecture,
                manifest.input_size,
                dict(manifest.provenance),
                None,
                temperature=manifest.temperature,
                bias=manifest.bias,
            )
        )
    return out


@dataclass(frozen=True)
class RuntimeStatus:
    """What a worker started with these settings on this machine runs the
    members on, and how their scores are combined."""

    backend: str
    precision: str
    combination: str
    problem: str | None = None

    @property
    def brief(self) -> str | None:
        """``problem`` for anyone but staff: that there is one, not its paths."""
        if self.problem is None:
            return None
        return "The members cannot run as configured here; the site's staff can see why."


def runtime_status() -> RuntimeStatus:
    """The backend and precision the settings resolve to here, and whether
    ``weights/ensemble.json`` fits the installed members."""
    from ensemble.calibration import Combiner, read_calibration
    from ensemble.errors import TrusttraceError
    from ensemble.runtime import resolve_backend, resolve_precision
    from ensemble.weights import read_manifest

    config = analysis_config()
    try:
        backend = resolve_backend(config.backend, config.device)
        precision = resolve_precision(config.precision, backend, config.device)
    except TrusttraceError as e:  # a ConfigError: this machine cannot run them
        return RuntimeStatus(config.backend, config.precision, "", str(e))
    try:
        manifests = {n: read_manifest(config.weights_dir, n) for n in config.members}
        combiner = Combiner.for_members(
            read_calibration(config.weights_dir),
            {n: m.weights_sha256 for n, m in manifests.items()},
            {n: m.temperature for n, m in manifests.items()},
            [n for n in config.members if n in config.mirror],
            {n: m.bias for n, m in manifests.items()},
            {n: m.inputs for n, m in manifests.items()},
        )
    except TrusttraceError as e:
        return RuntimeStatus(backend, precision, "mean of the members", str(e))
    if combiner.calibration is not None:
        c = combiner.calibration
        cv = c.metrics.get("cross_validated", {})
        figures = (
            f" (validation log loss {cv['log_loss']:.3f}, ECE {cv['ece']:.3f}, cross-validated)"
            if "log_loss" in cv and "ece" in cv
            else ""
        )
        bias = f"{'+' if c.bias >= 0 else '-'} {abs(c.bias):.3f}"
        if c.member_weights is None:
            combination = (
                f"mean of the members, recalibrated: sigmoid({c.slope:.3f} * logit(mean) "
                f"{bias}){figures}"
            )
        else:
            terms = " + ".join(f"{w:.2f} * logit({m})" for m, w in sorted(c.member_weights.items()))
            combination = (
                f"weighted mean of the members' logits, recalibrated: "
                f"sigmoid({c.slope:.3f} * ({terms}) {bias}){figures}"
            )
    elif combiner.skipped:
        combination = f"mean of the members (ensemble calibration not applied: {combiner.skipped})"
    else:
        combination = "mean of the members (no ensemble calibration installed)"
    mirrored = [n for n in config.members if n in config.mirror]
    if mirrored:
        combination += f"; {', '.join(mirrored)} scoring each face as is and mirrored"
    return RuntimeStatus(backend, precision, combination)


def require_models() -> list[MemberStatus]:
    """The members, or :class:`ModelsUnavailable` saying what is missing."""
    members = models_status()
    problems = [m.problem for m in members if m.problem]
    if problems:
        # The paths and commands are for the operator (the log, the models
        # page for staff); the person refused is told what, not where.
        logger.warning("uploads refused: %s", " ".join(problems))
        briefs = [m.brief or "" for m in members if m.problem]
        raise ModelsUnavailable(
            "This site cannot analyse media yet: " + " ".join(briefs), "no_weights"
        )
    return members


def record_weights_versions(members: list[MemberStatus]) -> None:
    """Remember each weights version seen (shown read-only in the admin),
    with the calibration last seen for it: ``calibrate_member`` changes a
    member's temperature and bias (and provenance) but not its weights."""
    for m in members:
        if m.weights_sha256:
            seen = {
                "architecture": m.architecture,
                "input_size": m.input_size,
                "provenance": m.provenance,
                "temperature": m.temperature,
                "bias": m.bias,
            }
            row, created = WeightsVersion.objects.get_or_create(
                member=m.name, weights_sha256=m.weights_sha256, defaults=seen
            )
            if not created and (row.temperature, row.bias) != (m.temperature, m.bias):
                WeightsVersion.objects.filter(pk=row.pk).update(
                    temperature=m.temperature, bias=m.bias, provenance=m.provenance
                )
