"""MoPoE's CPU defaults and the authors' preset; the near-chance coherence warning."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from dymo.cli.main import app
from dymo.recovery.coherence import UnimodalClassifier, coherence_warnings, recovery_report
from dymo.recovery.mopoe import MOPOE_PRESETS, MoPoEConfig
from dymo.recovery.oracle import OracleRecoverer
from dymo.recovery.quality import ShuffledRecoverer
from test_recovery_common import make_split
from test_recovery_report import TINY as JUDGE


def test_defaults_are_the_settings_that_learn_on_cpu_and_paper_is_a_preset():
    cfg = MoPoEConfig()
    assert (cfg.beta, cfg.likelihood_scale, cfg.kl_warmup_epochs) == (1.0, 0.2, 1)
    assert MoPoEConfig(**MOPOE_PRESETS["cpu"]) == cfg
    paper = MoPoEConfig(**MOPOE_PRESETS["paper"])
    assert (paper.beta, paper.likelihood_scale, paper.kl_warmup_epochs) == (2.5, 0.75, 0)


def test_cli_preset_and_set_order(tmp_path):
    root = tmp_path / "synth"
    make_split(kinds=("image", "vector"), seed=3).save(root)
    runner = CliRunner()
    small = ["--set", "latent_dim=4", "--set", "hidden_dim=8", "--set", "image_channels=[4, 4]", "--epochs", "1", "--no-progress"]
    res = runner.invoke(app, ["train", "recovery", "--data", str(root), "--model", "mopoe", "--out", str(tmp_path / "p"),
                              "--preset", "paper", "--set", "beta=3.0", *small])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    text = json.dumps(cfg)
    assert '"beta": 3.0' in text and '"likelihood_scale": 0.75' in text  # --set wins over the preset
    res = runner.invoke(app, ["train", "recovery", "--data", str(root), "--model", "mopoe", "--out", str(tmp_path / "d"), *small])
    assert res.exit_code == 0, res.output
    assert '"likelihood_scale": 0.2' in (tmp_path / "d" / "config.json").read_text()
    res = runner.invoke(app, ["train", "recovery", "--data", str(root), "--model", "mopoe", "--out", str(tmp_path / "x"), "--preset", "fast", *small])
    assert res.exit_code == 2 and "no such preset" in res.output and "paper" in res.output
    res = runner.invoke(app, ["train", "recovery", "--data", str(root), "--model", "mean", "--out", str(tmp_path / "m"), "--preset", "paper"])
    assert res.exit_code == 2 and "known: none" in res.output


def test_coherence_near_chance_warns_and_good_coherence_does_not():
    torch.set_num_threads(1)
    split = make_split(kinds=("image", "vector", "text"), seed=13, n_test=60)
    clf = UnimodalClassifier(split.specs, split.class_names, JUDGE).fit(split["train"], progress=False)
    good = recovery_report(OracleRecoverer().fit(split["train"], progress=False), split["test"], clf, progress=False)
    assert good["warnings"] == [] and 0 < good["chance"] < 1
    bad = recovery_report(ShuffledRecoverer(OracleRecoverer(), seed=0).fit(split["train"], progress=False), split["test"], clf, progress=False)
    # real data of the wrong sample: coherence at chance (1/3 here), a warning per line
    assert len(bad["warnings"]) == 3 and all("near chance" in w for w in bad["warnings"])


def test_coherence_warning_rule():
    rep = {"chance": 0.1, "recoverer": "mopoe",
           "coherence": {"overall": 0.15, "by_num_observed": {"1": 0.12, "4": 0.9}},
           "reference_accuracy": {"overall": 0.95, "by_num_observed": {"1": 0.95, "4": 0.95}}}
    w = coherence_warnings(rep)
    assert len(w) == 2 and "overall" in w[0] and "given 1 observed" in w[1] and "mopoe" in w[0]
    rep["coherence"] = {"overall": 0.8, "by_num_observed": {"1": 0.8}}
    assert coherence_warnings(rep) == []
