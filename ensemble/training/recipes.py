"""Per-member training recipes: the hyper-parameters each architecture is
trained with. The command line can override any of them.

Shared across members: AdamW (no weight decay on biases and normalisation
parameters), linear warm-up then cosine decay per step, binary cross-entropy
with label smoothing, balanced sampling, early stopping on validation log
loss. Values follow what the source projects used for these backbones
(selimsef's B7: lr 1e-4-ish, small batches, SSIM blackout; polimi's B4:
lr 1e-5..1e-4 at 224 px), adapted to training from scratch. Every recipe's
input size is the registry's ``input_size`` for the member (a test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ensemble.registry import MemberSpec


@dataclass(frozen=True)
class Recipe:
    input_size: int
    batch_size: int
    epochs: int
    lr: float
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.05
    drop_path: float = 0.0
    ema_decay: float | None = None
    patience: int = 3
    # Share of real samples turned into self-blended pseudo-fakes (0: off).
    sbi_prob: float = 0.0
    # Share of fake samples with part of their manipulated region blacked out.
    blackout_prob: float = 0.0
    grad_clip: float = 1.0
    # Batches of real/fake pairs from the same source (batches.epoch_plan).
    paired: bool = False
    # Dropout rate set on every nn.Dropout of the model (None: the architecture's).
    head_dropout: float | None = None


RECIPES: dict[str, Recipe] = {
    # 128 px on the CPU: bf16 ResNet-50 trains at about 29 img/s there on
    # two cores against 20 at 160 and about 10 at 224 (issue 12's table and
    # bench/train_speed.py), so a session sees several epochs; paired batches,
    # AdamW 2e-3 with warm-up and cosine, dropout 0.2 in the dense head were
    # the best of the probes in issue 12 (val AUC 0.747 after 2.7 epochs).
    "resnet50": Recipe(
        input_size=128,
        batch_size=64,
        epochs=7,
        lr=2e-3,
        warmup_epochs=0.3,
        drop_path=0.05,
        ema_decay=0.999,
        paired=True,
        head_dropout=0.2,
    ),
    # 224 px, the size the registry serves the project's own B7 weights at
    # (380 is only for imported selimsef checkpoints); dfdc_faces crops are
    # 224 px anyway.
    "effnet_b7": Recipe(
        input_size=224,
        batch_size=24,
        epochs=25,
        lr=2e-4,
        drop_path=0.2,
        ema_decay=0.9995,
        blackout_prob=0.5,
    ),
    "effnet_autoatt_b4": Recipe(
        input_size=224, batch_size=32, epochs=25, lr=3e-4, drop_path=0.2, ema_decay=0.999
    ),
}

# Anything else (test members, smoke runs): short and simple.
DEFAULT_RECIPE = Recipe(
    input_size=64, batch_size=16, epochs=2, lr=1e-3, weight_decay=0.0, warmup_epochs=0.0
)


def recipe_for(spec: MemberSpec) -> Recipe:
    """The member's recipe; unknown members get :data:`DEFAULT_RECIPE` at their input size."""
    if spec.name in RECIPES:
        return RECIPES[spec.name]
    from dataclasses import replace

    return replace(DEFAULT_RECIPE, input_size=spec.input_size)
