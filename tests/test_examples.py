"""The examples run: examples/qat_digits.py's short mode trains on sklearn's real digits and
its quantized models learn (thresholds from 8 seeds of --quick, measured 2026-12-04: QAT 97.8%
or better at 4, 3 and 2 bits; post-training 2-bit 71-92%); examples/qat_cifar10.py's data and
model code run end to end on a few random images in CIFAR-10's own file format."""

import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # as when run as a script: the examples import qat_recipe
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_qat_digits_quick(seed, tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (the examples extra)")
    digits = load("qat_digits")
    plot = tmp_path / "digits.png"
    results = digits.main(["--quick", "--no-reference", "--seed", str(seed), "--plot", str(plot)])
    assert results["float"]["qat"] >= 95.0
    for bits in (4, 3, 2):
        row = results[f"{bits}-bit"]
        assert row["qat"] >= 95.0, row  # worst of 8 seeds: 97.8%
        assert row["at_floor"] == 0, row
    assert results["2-bit"]["qat"] > results["2-bit"]["ptq"]  # training recovers what rounding lost
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.stat().st_size > 1000


def fake_cifar10(root: Path, seed: int, per_batch: int = 8) -> None:
    """cifar-10-batches-py as CIFAR-10 ships it (pickled dicts of uint8 rows and labels), random."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))


def test_qat_cifar10_runs_on_random_images(seed, tmp_path):
    cifar = load("qat_cifar10")
    fake_cifar10(tmp_path, seed)
    x, y, x_test, y_test = cifar.load_cifar10(tmp_path)
    assert x.shape == (40, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (40,) and x_test.shape == (8, 3, 32, 32)
    # The augmentation: a window of the zero-padded image, flipped or not.
    g = torch.Generator().manual_seed(seed)
    out = cifar.augment(x[:4], g)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    padded = cifar.normalize(torch.nn.functional.pad(x[:4], (4, 4, 4, 4)))
    for i in range(4):
        windows = [padded[i, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    model = cifar.ResNet20()
    assert model(out).shape == (4, 10)
    assert sum(p.numel() for p in model.parameters()) == 269_722  # ResNet-20 with parameter-free shortcuts: 0.27M
    results = cifar.main(["--data", str(tmp_path), "--bits", "4", "2", "--float-epochs", "1", "--qat-epochs", "1",
                          "--batch", "16", "--device", "cpu", "--seed", str(seed), "--plot", str(tmp_path / "c.png"),
                          "--float-checkpoint", str(tmp_path / "float.pt")])
    assert set(results) == {"float", "4-bit", "2-bit"}
    assert all(0 <= r["qat"] <= 100 and r["reference_s"] > 0 for k, r in results.items() if k != "float")
    assert (tmp_path / "float.pt").exists()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "c.png").stat().st_size > 1000


def test_llm_qat_quick(seed, tmp_path):
    """Weight-only per-group QAT of the small transformer on the standard library's source: the
    quantized models train (their held-out loss falls below what calibration alone gives, and
    at 4 bits ends near float's) and no step sits at its floor."""
    llm = load("llm_qat")
    plot = tmp_path / "llm.png"
    results = llm.main(["--quick", "--seed", str(seed), "--plot", str(plot)])
    float_final = results["float"]["final"]
    assert float_final < results["pretrain"]["evals"][0][1]  # the float model learned the text
    four, two = results["4-bit g32"], results["2-bit g32"]
    assert four["final"] < float_final + 0.1, four
    assert two["final"] < two["ptq"], two
    assert four["at_floor"] == 0 and two["at_floor"] == 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.stat().st_size > 1000
