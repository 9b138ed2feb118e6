from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.run_soup import _best, soup
from ensemble.errors import TrainingError


def test_a_soup_is_the_mean_of_the_floating_tensors_and_keeps_the_last_counters() -> None:
    a = {"w": torch.tensor([1.0, 3.0]), "bn.num_batches_tracked": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 5.0]), "bn.num_batches_tracked": torch.tensor(9)}
    out = soup([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and out["w"].dtype == torch.float32
    assert int(out["bn.num_batches_tracked"]) == 9
    assert torch.equal(soup([a])["w"], a["w"])  # one run: its own weights


def test_runs_of_other_shapes_are_refused() -> None:
    with pytest.raises(TrainingError, match="keys or shapes"):
        soup([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(TrainingError, match="keys or shapes"):
        soup([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
    with pytest.raises(TrainingError, match="no weights"):
        soup([])


def test_a_run_of_another_member_or_without_best_pt_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"no best\.pt"):
        _best(tmp_path, "effnet_b7")
    torch.save(
        {"member": "resnet50", "input_size": 128, "state_dict": {"w": torch.zeros(1)}},
        tmp_path / "best.pt",
    )
    with pytest.raises(TrainingError, match="holds 'resnet50', not 'effnet_b7'"):
        _best(tmp_path, "effnet_b7")
    state, size = _best(tmp_path, "resnet50")
    assert size == 128 and torch.equal(state["w"], torch.zeros(1))


def test_a_saved_soup_starts_a_new_run_with_the_averaged_weights(tmp_path: Path) -> None:
    from bench.run_soup import save_soup
    from ensemble.training.loop import initial_model
    from tests.tiny_registry import REGISTRY

    spec = REGISTRY.get("toy_a")
    torch.manual_seed(0)
    states = [spec.build().state_dict() for _ in range(2)]
    averaged = soup(states)
    save_soup(tmp_path / "soup.pt", spec.name, 32, averaged, [tmp_path / "a", tmp_path / "b"])
    model = initial_model(spec, tmp_path / "soup.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, averaged[k]), k
    float_keys = [k for k, v in states[0].items() if v.is_floating_point() and v.numel() > 1]
    assert not torch.equal(model.state_dict()[float_keys[0]], states[0][float_keys[0]])
    with pytest.raises(TrainingError, match="holds toy_a"):
        initial_model(REGISTRY.get("toy_b"), tmp_path / "soup.pt")
