"""Member calibration fitted on validation logits, and Platt scaling for the
ensemble (:mod:`ensemble.calibration`).

A member's calibrated probability is ``sigmoid(logit / T + bias)``
(:func:`ensemble.scoring.calibrate`): Platt scaling, written as a temperature
and a bias. :func:`fit_member_calibration` fits both to minimise the
validation negative log-likelihood (the temperature through its log, with
L-BFGS, so it stays positive). A temperature alone (:func:`fit_temperature`)
can make a member more or less confident but cannot move the point where it
says 0.5: a member whose scores lean to one side (B7 generation 4 called too
many fakes real, ECE 0.106 with a temperature alone) needs the bias.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch

from ensemble.errors import TrusttraceError

# Temperatures are kept in this range: a validation set that is separated
# perfectly would otherwise drive T towards 0.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
LBFGS_STEPS = 100
# Platt slopes are kept in the reciprocal range, inside the fit: the bias
# (and the weights) are optimised for the slope that is returned.
LOG_SLOPE_RANGE = (-math.log(MAX_TEMPERATURE), -math.log(MIN_TEMPERATURE))


class CalibrationError(TrusttraceError, ValueError):
    """Logits and labels that no temperature can be fitted to."""


def nll(logits: npt.ArrayLike, labels: npt.ArrayLike, temperature: float) -> float:
    """Mean binary negative log-likelihood of ``sigmoid(logits / T)``."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64)) / temperature
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    return float(torch.nn.functional.binary_cross_entropy_with_logits(z, y))


def fit_temperature(logits: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The temperature minimising validation NLL (L-BFGS on ``log T``)."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64)).reshape(-1)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64)).reshape(-1)
    if z.shape != y.shape or len(z) == 0:
        raise CalibrationError(f"need as many labels as logits (got {len(z)} and {len(y)})")
    if not bool(torch.isfinite(z).all()):
        raise CalibrationError("logits contain NaN or infinity")
    if len(torch.unique(y)) < 2:
        raise CalibrationError("temperature needs both real and fake validation samples")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    t = math.exp(float(log_t.detach()))
    if not math.isfinite(t):  # max(nan, lo) is nan: no clamp catches it
        raise CalibrationError("the temperature fit diverged (non-finite logits or labels?)")
    return float(min(max(t, MIN_TEMPERATURE), MAX_TEMPERATURE))


def fit_member_calibration(logits: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """``(temperature, bias)`` minimising the validation NLL of
    ``sigmoid(logit / temperature + bias)``: :func:`fit_platt` on the logits,
    its slope's reciprocal being the temperature (kept in ``MIN_TEMPERATURE ..
    MAX_TEMPERATURE``)."""
    slope, bias = fit_platt(logits, labels)
    if not (math.isfinite(slope) and math.isfinite(bias)):
        raise CalibrationError("the calibration fit diverged (non-finite logits or labels?)")
    temperature = min(max(1.0 / slope, MIN_TEMPERATURE), MAX_TEMPERATURE)
    return float(temperature), float(bias)


def fit_platt(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """``(slope, bias)`` minimising the NLL of ``sigmoid(slope * x + bias)``
    (Platt scaling on a score ``x``, here the logit of the members' mean).
    The slope is optimised through its log, so it stays positive: the map never
    reverses the ranking. It is bounded to ``1/MAX_TEMPERATURE ..
    1/MIN_TEMPERATURE`` inside the fit, so a separable set gets the bias that
    goes with the bounded slope (a boundary where the classes meet), not the
    bias of an unbounded one."""
    x = torch.as_tensor(np.asarray(scores, dtype=np.float64)).reshape(-1)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64)).reshape(-1)
    if x.shape != y.shape or len(x) == 0:
        raise CalibrationError(f"need as many labels as scores (got {len(x)} and {len(y)})")
    if not bool(torch.isfinite(x).all()):
        raise CalibrationError("scores contain NaN or infinity")
    if len(torch.unique(y)) < 2:
        raise CalibrationError("Platt scaling needs both real and fake samples")
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # slope (see _slope), bias
    opt = torch.optim.LBFGS([params], lr=0.5, max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = _slope(params[0]) * x + params[1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    p = params.detach()
    return float(_slope(p[0])), float(p[1])


def fit_weighted_platt(
    scores: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[tuple[float, ...], float, float]:
    """``(weights, slope, bias)`` minimising the NLL of
    ``sigmoid(slope * (scores @ weights) + bias)`` for a ``(n, k)`` matrix of
    per-member logits: a weighted mean of the members' logits, then Platt.

    The weights are a softmax (positive, summing to 1) and the slope is
    optimised as its log, so every member can only push the score in the
    direction of its own evidence and the map never reverses a ranking. A
    member that adds nothing gets a weight near 0, not a negative one."""
    x = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64)).reshape(-1)
    if x.ndim != 2 or x.shape[0] != len(y) or len(y) == 0 or x.shape[1] == 0:
        raise CalibrationError(
            f"need an (n, members) score matrix and n labels (got {tuple(x.shape)} and {len(y)})"
        )
    if not bool(torch.isfinite(x).all()):
        raise CalibrationError("scores contain NaN or infinity")
    if len(torch.unique(y)) < 2:
        raise CalibrationError("Platt scaling needs both real and fake samples")
    k = x.shape[1]
    # Softmax logits of the weights, slope (see _slope), bias: equal weights, slope 1.
    params = torch.zeros(k + 2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=0.5, max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        w = torch.softmax(params[:k], 0)
        z = _slope(params[k]) * (x @ w) + params[k + 1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    for _ in range(5):  # LBFGS stops early on flat softmax directions; a few restarts converge
        opt.step(closure)  # type: ignore[no-untyped-call]
    p = params.detach()
    weights = tuple(float(v) for v in torch.softmax(p[:k], 0))
    return weights, float(_slope(p[k])), float(p[k + 1])


def _slope(u: torch.Tensor) -> torch.Tensor:
    """The Platt slope of an unbounded parameter: its log is squashed into
    ``LOG_SLOPE_RANGE`` by a sigmoid (u = 0 is slope 1, the range being
    symmetric), so the bound holds inside the fit with a gradient that never
    vanishes abruptly and the other parameters fit the bounded slope."""
    lo, hi = LOG_SLOPE_RANGE
    return (lo + (hi - lo) * torch.sigmoid(u)).exp()
