"""``python manage.py train_detector --member NAME --data DATA --out DIR``.

Trains one member with its recipe (``ensemble.training.recipes``); flags
override the recipe. With ``--export WEIGHTS_DIR`` the best model is then
calibrated on the validation split and installed there (int8 or fp16, see
``ensemble.training.export``). ``--export-only`` skips training and exports
an existing run in ``--out``.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from django.core.management.base import BaseCommand, CommandError, CommandParser

if TYPE_CHECKING:
    from analyses.config import TrusttraceSettings
    from ensemble.faces import FaceDetector

T = TypeVar("T")

logger = logging.getLogger(__name__)

DEFAULT_SBI_PROB = 0.5
DEFAULT_BLACKOUT_PROB = 0.5
# The teacher's share in a target with --teacher and no --distill.
DEFAULT_TEACHER_SHARE = 0.5


class Command(BaseCommand):
    help = "Train a detector member on a face-crop dataset; optionally calibrate and export it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--member", required=True, help="registry name of the member")
        parser.add_argument(
            "--data", type=Path, help="dataset folder or metadata.csv (not with --summary)"
        )
        parser.add_argument(
            "--out",
            type=Path,
            help="run folder (default: TRUSTTRACE_RUNS_DIR/<member>, outside the work tree)",
        )
        parser.add_argument("--epochs", type=int)
        parser.add_argument("--batch-size", type=int)
        parser.add_argument("--lr", type=float)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--sbi",
            type=float,
            nargs="?",
            const=DEFAULT_SBI_PROB,
            help=f"share of reals turned into self-blended fakes (flag alone: {DEFAULT_SBI_PROB})",
        )
        parser.add_argument(
            "--ssim-blackout",
            type=float,
            nargs="?",
            const=DEFAULT_BLACKOUT_PROB,
            help="share of fakes with part of the manipulated region blacked out",
        )
        parser.add_argument("--no-ema", action="store_true", help="turn the recipe's EMA off")
        parser.add_argument(
            "--ema-decay", type=float, help="EMA decay per step (default: the recipe's)"
        )
        parser.add_argument(
            "--warmup-epochs",
            type=float,
            help="linear LR warm-up in (fractional) epochs (default: the recipe's)",
        )
        parser.add_argument(
            "--drop-path",
            type=float,
            help="stochastic depth rate, 0 for none (default: the recipe's)",
        )
        parser.add_argument(
            "--weight-decay", type=float, help="AdamW weight decay (default: the recipe's)"
        )
        parser.add_argument("--patience", type=int, help="early-stopping patience in epochs")
        parser.add_argument("--input-size", type=int)
        parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
        parser.add_argument(
            "--device",
            default="auto",
            help="auto (CUDA when available, else CPU), cpu or cuda[:N]",
        )
        parser.add_argument("--limit", type=int, help="at most N training samples (balanced)")
        parser.add_argument(
            "--val-limit",
            type=int,
            help="at most N validation samples (export: the run's own limit by default)",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=0,
            help="validation data loader processes (training batches are built in-process "
            "from the in-memory crops)",
        )
        parser.add_argument("--no-augment", action="store_true")
        parser.add_argument(
            "--no-keypoints",
            action="store_true",
            help="do not run BlazeFace on crops without keypoints (SBI uses an ellipse)",
        )
        parser.add_argument(
            "--export",
            type=Path,
            metavar="WEIGHTS_DIR",
            help="calibrate the best model and install it under WEIGHTS_DIR/<member>/",
        )
        parser.add_argument(
            "--export-only", action="store_true", help="export an existing run, no training"
        )
        parser.add_argument(
            "--summary",
            action="store_true",
            help="print the run's validation figures as JSON (raw, and after a fitted "
            "temperature and bias, from its val_predictions.csv), no training or export",
        )
        parser.add_argument("--description", default="", help="data description for the manifest")
        parser.add_argument(
            "--crop",
            metavar="KIND:MARGIN[:SHIFT]",
            help="the face crop analysis cuts for the exported weights, framed like the "
            "training crops (python -m bench.crop_framing measures it; default: the crop the "
            "installed member's manifest records, else the registry's)",
        )
        parser.add_argument(
            "--precision",
            default="auto",
            choices=("auto", "bf16", "fp32"),
            help="auto: bf16 autocast on CUDA and on CPUs with AMX/AVX-512 BF16, else fp32",
        )
        parser.add_argument(
            "--time-budget",
            type=float,
            metavar="MINUTES",
            help="checkpoint and stop cleanly after this many minutes (resume with --resume)",
        )
        parser.add_argument(
            "--checkpoint-minutes",
            type=float,
            default=10.0,
            help="write a mid-epoch checkpoint at least this often (default 10)",
        )
        parser.add_argument(
            "--init-from",
            type=Path,
            metavar="SOURCE",
            help="start a new run from the member installed under a weights folder, "
            "or from a run folder's best.pt or a checkpoint file",
        )
        parser.add_argument(
            "--compile", action="store_true", help="torch.compile the model for training"
        )
        parser.add_argument(
            "--teacher",
            type=Path,
            nargs="+",
            metavar="SCORES",
            help="distil from the ensemble: score tables of the training crops "
            "(evaluate --faces DATA --split train --scores FILE), combined by the "
            "ensemble.json under --teacher-weights",
        )
        parser.add_argument(
            "--teacher-weights",
            type=Path,
            metavar="WEIGHTS_DIR",
            help="the weights folder whose ensemble.json combines the teacher's scores "
            "(default: the installed weights)",
        )
        parser.add_argument(
            "--distill",
            type=float,
            metavar="SHARE",
            help=f"the teacher's share in each target, above 0 and at most 1 "
            f"(default with --teacher: {DEFAULT_TEACHER_SHARE})",
        )
        pairing = parser.add_mutually_exclusive_group()
        pairing.add_argument(
            "--paired",
            dest="paired",
            action="store_true",
            default=None,
            help="batches of real/fake pairs from the same source (the recipe decides by default)",
        )
        pairing.add_argument("--no-paired", dest="paired", action="store_false")

    def _summary(self, out: Path) -> None:
        import json

        from ensemble.training.runfiles import summarize_run

        try:
            summary = summarize_run(out)
        except FileNotFoundError as e:
            raise CommandError(str(e)) from e
        self.stdout.write(json.dumps(summary, indent=2))

    def handle(self, *args: Any, **o: Any) -> None:
        from analyses.config import analysis_registry
        from ensemble.crops import CropPolicy
        from ensemble.errors import RegistryError, TrusttraceError
        from ensemble.training.data import blazeface_keypoints
        from ensemble.training.export import export_run
        from ensemble.training.loop import TrainConfig, resolve_recipe, train

        try:
            spec = analysis_registry().get(o["member"])
        except RegistryError as e:
            raise CommandError(str(e)) from e
        command = _command_line(o)
        o["out"] = o["out"] or _trusttrace().runs_dir / spec.name
        if o["summary"]:
            self._summary(o["out"])
            return
        if o["data"] is None:
            raise CommandError("--data is required (to train or export a run)")
        # Checked before hours of training, not after.
        if (o["teacher_weights"] is not None or o["distill"] is not None) and not o["teacher"]:
            raise CommandError("--teacher-weights and --distill go with --teacher SCORES...")
        crop = None
        if o["crop"]:
            if not (o["export"] or o["export_only"]):
                raise CommandError(
                    "--crop names the crop of exported weights: use it with --export"
                )
            try:
                crop = CropPolicy.parse(o["crop"])
            except TrusttraceError as e:
                raise CommandError(str(e)) from e
        try:
            if not o["export_only"]:
                config = TrainConfig(
                    member=spec.name,
                    data=o["data"],
                    out=o["out"],
                    epochs=o["epochs"],
                    batch_size=o["batch_size"],
                    lr=o["lr"],
                    seed=o["seed"],
                    sbi_prob=o["sbi"],
                    blackout_prob=o["ssim_blackout"],
                    no_ema=o["no_ema"],
                    ema_decay=o["ema_decay"],
                    warmup_epochs=o["warmup_epochs"],
                    drop_path=o["drop_path"],
                    weight_decay=o["weight_decay"],
                    patience=o["patience"],
                    input_size=o["input_size"],
                    device=o["device"],
                    limit=o["limit"],
                    val_limit=o["val_limit"],
                    num_workers=o["workers"],
                    augment=not o["no_augment"],
                    resume=o["resume"],
                    command=command,
                    precision=o["precision"],
                    time_budget=o["time_budget"],
                    checkpoint_minutes=o["checkpoint_minutes"],
                    cache_dir=_trusttrace().crops_cache_dir,
                    init_from=o["init_from"],
                    compile=o["compile"],
                    paired=o["paired"],
                    teacher_scores=tuple(o["teacher"] or ()),
                    teacher_weights=(
                        (o["teacher_weights"] or _trusttrace().weights_dir)
                        if o["teacher"]
                        else None
                    ),
                    distill=(
                        o["distill"]
                        if o["distill"] is not None
                        else DEFAULT_TEACHER_SHARE
                        if o["teacher"]
                        else 0.0
                    ),
                )
                # Keypoints are needed whenever the run uses SBI or the
                # blackout, from a flag or from the recipe (B7's blackout).
                recipe = resolve_recipe(config, spec)
                detect = None
                if (recipe.sbi_prob or recipe.blackout_prob) and not o["no_keypoints"]:
                    detect = self._detector(blazeface_keypoints)
                result = train(config, spec, detect=detect, progress=True)
                early = " (stopped early)" if result.stopped_early else ""
                if result.interrupted:
                    self.stdout.write(
                        f"{spec.name}: stopped with a checkpoint in {result.out} after "
                        f"{len(result.history)} finished epochs; continue with --resume"
                    )
                    if o["export"]:
                        self.stdout.write("not exporting an unfinished run (--export-only does)")
                    return
                self.stdout.write(
                    f"{spec.name}: best epoch {result.best_epoch} "
                    f"(val log loss {result.best_val_loss:.4f}), "
                    f"{len(result.history)} epochs{early}; logs in {result.out}"
                )
            if o["export"] or o["export_only"]:
                if not o["export"]:
                    raise CommandError("--export-only needs --export WEIGHTS_DIR")
                report = export_run(
                    o["out"],
                    spec,
                    o["export"],
                    data=o["data"],
                    description=o["description"],
                    val_limit=o["val_limit"],
                    crop=crop,
                )
                self.stdout.write(
                    f"Exported {spec.name} to {o['export'] / spec.name} as {report.quantization} "
                    f"(temperature {report.temperature:.3f}, bias {report.bias:.3f}, "
                    f"threshold {report.threshold:.3f}, "
                    f"val AUC fp32/int8/fp16 {report.auc})"
                )
        except TrusttraceError as e:
            raise CommandError(str(e)) from e

    @staticmethod
    def _detector(make: Callable[[FaceDetector], T]) -> T:
        from analyses.config import analysis_config
        from ensemble.faces import FaceDetector

        config = analysis_config()
        return make(FaceDetector.load(config.faces, config.cache_dir, config.device))


def _trusttrace() -> TrusttraceSettings:
    from analyses.config import trusttrace_settings

    return trusttrace_settings()


def _command_line(options: dict[str, Any]) -> str:
    """The command as typed, or (when called from code, where ``sys.argv`` is
    another program's) rebuilt from the options that were given."""
    if len(sys.argv) > 1 and sys.argv[1] == "train_detector":
        return "python manage.py " + shlex.join(sys.argv[1:])
    args = ["train_detector"]
    for key in sorted(options):
        value = options[key]
        if key in _DJANGO_OPTIONS or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return "python manage.py " + shlex.join(args) + "  # rebuilt from call_command options"


# Options every Django command has; not part of a training run's settings.
_DJANGO_OPTIONS = frozenset(
    {
        "verbosity",
        "settings",
        "pythonpath",
        "traceback",
        "no_color",
        "force_color",
        "skip_checks",
        "stdout",
        "stderr",
    }
)
