"""Per-member training recipes: the hyper-parameters each architecture is
trained with. The command line can override any of them.

Shared across members: AdamW (no weight decay on biases and normalisation
parameters), linear warm-up then cosine decay per step, binary cross-entropy
with label smoothing, balanced sampling, early stopping on validation log
loss. Values follow what the source projects used for these backbones
(selimsef's B7: lr 1e-4-ish, small batches at 380 px, SSIM blackout; polimi's
B4: lr 1e-5..1e-4 at 224 px), adapted to training from scratch.
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


RECIPES: dict[str, Recipe] = {
    "resnet50": Recipe(
        input_size=224, batch_size=64, epochs=25, lr=5e-4, drop_path=0.05, ema_decay=0.999
    ),
    "effnet_b7": Recipe(
        input_size=380,
        batch_size=12,
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
