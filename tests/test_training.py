"""Training through Lightning: DDP (2 CPU processes, gloo) matches one process with the same
global batch; a run killed mid-way resumes to the same final weights; the run folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dymo.training.run import load_backbone

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=240, check=False) if not check else _checked([sys.executable, str(SCRIPT), *args], env)


def _checked(cmd, env):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _last_weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path):
    # 3 epochs, prototype loss from the second: the all-reduced prototypes are exercised too.
    _run(str(tmp_path / "single"), "--devices", "1", "--batch-size", "32", "--epochs", "3")
    _run(str(tmp_path / "ddp"), "--devices", "2", "--batch-size", "16", "--strategy", "ddp", "--epochs", "3")
    w1, w2 = _last_weights(tmp_path / "single"), _last_weights(tmp_path / "ddp")
    assert w1.keys() == w2.keys()
    for k in w1:
        a, b = w1[k], w2[k]
        if k.endswith("self_attn.in_proj_bias"):
            # The key bias has an exactly-zero gradient (softmax is shift-invariant); Adam divides
            # its ~1e-10 float noise by sqrt(v) and moves it by up to lr per step either way.
            d = a.shape[0] // 3
            a, b = torch.cat([a[:d], a[2 * d :]]), torch.cat([b[:d], b[2 * d :]])
        # Same global batch, same subsets, gradients averaged over ranks: equal up to float
        # summation order (gloo all-reduce), hence a tolerance rather than bit equality.
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=k)
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 12  # 3 epochs x 4 steps: 128 samples, 2 ranks x 16 per step


@pytest.mark.slow
def test_killed_run_resumes_to_same_weights(tmp_path):
    _run(str(tmp_path / "full"), "--epochs", "3")
    killed = _run(str(tmp_path / "killed"), "--epochs", "3", "--kill-at-epoch", "2", check=False)
    assert killed.returncode == -9  # really SIGKILLed mid-run
    assert not (tmp_path / "killed" / "backbone.safetensors").exists()
    _run(str(tmp_path / "killed"), "--epochs", "3", "--resume")
    w_full, w_resumed = _last_weights(tmp_path / "full"), _last_weights(tmp_path / "killed")
    for k in w_full:
        torch.testing.assert_close(w_full[k], w_resumed[k], atol=0, rtol=0, msg=k)  # bit-identical on CPU


def test_run_folder_contents(tmp_path):
    from dymo.data.synthetic import make_synthetic_splits
    from dymo.models import BackboneConfig
    from dymo.training import TrainConfig, train_backbone

    data = make_synthetic_splits(96, 32, 32)
    cfg = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8, encoder_options={"image_channels": [4, 8, 16]})
    run = train_backbone(data, tmp_path / "run", cfg, TrainConfig(epochs=2, batch_size=32), progress=False)
    for name in ("config.json", "backbone.safetensors", "metrics.json", "logs/metrics.csv"):
        assert (run / name).exists(), name
    model = load_backbone(run)
    assert model.config == cfg
    import json

    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["test"]["all_modalities"] <= 1 and set(m["test"]["single"]) == {"i0", "i1", "v2"}


def test_resume_with_more_epochs_extends_the_run(tmp_path):
    from dymo.data.synthetic import make_synthetic_splits
    from dymo.errors import ConfigError
    from dymo.models import BackboneConfig
    from dymo.training import TrainConfig, train_backbone

    data = make_synthetic_splits(64, 32, 32)
    cfg = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8, encoder_options={"image_channels": [4, 8, 16]})
    run = tmp_path / "run"
    train_backbone(data, run, cfg, TrainConfig(epochs=1, batch_size=32, patience=10), progress=False, evaluate_test=False)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 0
    train_backbone(data, run, cfg, TrainConfig(epochs=2, batch_size=32, patience=10), progress=False, resume=True, evaluate_test=False)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4  # one more epoch of 2 steps, not a restart
    first, second = (run / "logs" / "metrics.csv").read_text(), (run / "logs" / "resume-1" / "metrics.csv").read_text()
    assert "\n0," in first and "\n1," in second  # the first part's log is kept, the extension logs beside it
    with pytest.raises(ConfigError, match="different 'train'"):  # fewer epochs is not an extension
        train_backbone(data, run, cfg, TrainConfig(epochs=1, batch_size=32, patience=10), progress=False, resume=True)
    with pytest.raises(ConfigError, match="different 'train'"):  # anything else must match
        train_backbone(data, run, cfg, TrainConfig(epochs=3, batch_size=32, lr=0.01, patience=10), progress=False, resume=True)


def test_the_default_budget_scales_with_the_data():
    from dymo.training.config import AUTO_MAX_EPOCHS, AUTO_MIN_EPOCHS, TrainConfig, auto_epochs

    # about 1,000 optimizer steps, within [4, 100] epochs
    assert auto_epochs(605, 256) == AUTO_MAX_EPOCHS  # a small table: 3 steps per epoch
    assert auto_epochs(10_000, 256) == 25 and auto_epochs(60_000, 256) == 5
    assert auto_epochs(10**7, 256) == AUTO_MIN_EPOCHS
    assert auto_epochs(5_000, 64) == 13  # 79 steps per epoch
    cfg = TrainConfig()
    assert cfg.epochs is None and cfg.with_budget(10_000).epochs == 25
    assert cfg.with_budget(10_000).min_epochs == 3 and cfg.with_budget(605).min_epochs == 34
    assert TrainConfig(epochs=7).with_budget(10_000).epochs == 7  # a set budget is kept
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # round-trips with the budget unresolved


def test_an_unset_budget_is_resolved_recorded_and_stopped_early(tmp_path):
    """train_backbone with epochs=None trains at most auto_epochs(...) epochs, records that number
    in config.json (what --resume compares), and early stopping ends it when validation stalls."""
    import json

    from dymo.data.synthetic import make_synthetic_splits
    from dymo.models import BackboneConfig
    from dymo.training import TrainConfig, train_backbone
    from dymo.training.config import auto_epochs

    data = make_synthetic_splits(64, 16, 16, kinds=("vector", "vector"), vector_dim=4, num_classes=2)
    cfg = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8)
    run = train_backbone(data, tmp_path / "run", cfg, TrainConfig(batch_size=32, patience=1), progress=False, evaluate_test=False)
    recorded = json.loads((run / "config.json").read_text())["train"]
    assert recorded["epochs"] == auto_epochs(64, 32) == 100
    assert recorded["min_epochs"] == 50  # about 100 steps at 2 steps per epoch before early stopping may end it
    ran = json.loads((run / "metrics.json").read_text())["epochs_run"]
    assert 50 <= ran < 100  # patience 1 on a 16-sample validation split stops long before 100
