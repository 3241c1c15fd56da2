"""scripts/run_image_classification.py: a small ViT built from config on real digits (scikit-learn), from image folders."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "run_image_classification.py")


def load_script():
    spec = importlib.util.spec_from_file_location("run_image_classification", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_image_classification"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits_folders(tmp_path_factory):
    """scikit-learn's 1,797 real 8x8 handwritten digits as PNG image folders (one subfolder per class)."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    for rank, i in enumerate(order):
        split = "validation" if rank < 300 else "train"
        folder = root / split / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 255 / 16).round().astype(np.uint8), mode="L").save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("vit")
    config = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=128, num_labels=10)
    ViTForImageClassification(config).save_pretrained(root)
    ViTImageProcessorPil(size={"height": 8, "width": 8}, image_mean=[0.5], image_std=[0.5]).save_pretrained(root)
    return root


def test_vit_on_digits_reaches_target_with_accuracy_well_above_chance(digits_folders, vit_dir, tmp_path):
    out = tmp_path / "run"
    summary = load_script().main([
        "--model_name_or_path", str(vit_dir), "--train_dir", str(digits_folders / "train"),
        "--validation_dir", str(digits_folders / "validation"), "--output_dir", str(out),
        "--max_steps", "300", "--per_device_train_batch_size", "32", "--learning_rate", "3e-3",
        "--warmup_steps", "20", "--report_to", "none", "--save_strategy", "no", "--use_cpu",
        "--target_sparsity", "0.8", "--pruning_start", "0.1", "--pruning_end", "0.6", "--harden_at", "0.8",
        "--disable_tqdm", "true", "--seed", "0",
    ])
    assert summary["sparsity"] == 0.8
    assert summary["eval_accuracy"] > 0.6, summary  # chance is 0.1
    export = out / "export"
    # the export is a plain checkpoint: load it in a process that cannot import pdp_hf
    code = (
        "import sys\n"
        "sys.modules['pdp_hf'] = None\n"
        "from transformers import AutoModelForImageClassification\n"
        f"m = AutoModelForImageClassification.from_pretrained({str(export)!r})\n"
        "print(sum(int((p == 0).sum()) for n, p in m.named_parameters() if n.endswith('weight') and ('proj' in n or 'fc' in n)))\n"
    )
    zeros = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()[-1])
    assert zeros == round(0.8 * 64 * 64) * 4 * 2 + round(0.8 * 64 * 128) * 2 * 2
