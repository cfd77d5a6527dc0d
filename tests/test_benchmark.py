"""The benchmark harness on tiny synthetic data: the outputs and their rows, upper bounds kept
apart, resumability (a rerun evaluates nothing and trains nothing; deleted cells, and only
those, are recomputed with the same values), the self-contained HTML, the quality sweep, the
scale guard and the CLI."""

from __future__ import annotations

import base64
import json
import logging
import re
import warnings

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import dymo.evaluation.benchmark as bench
from dymo.cli.benchmark_cmd import split_scenarios
from dymo.data.synthetic import make_synthetic_splits
from dymo.errors import ConfigError
from dymo.evaluation.benchmark import BenchmarkConfig, plan_methods, run_benchmark

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="lightning")

BB = {"dim": 16, "heads": 2, "depth": 1, "proj_dim": 8, "encoder_options": {"vector_hidden": 16}}
FIT = {"batch_size": 32, "eval_batch_size": 64}
MODEL_SETTINGS = {
    "backbone": BB,
    "train": {"batch_size": 32, "proto_start_epoch": 0},
    "baselines": {
        "moddrop": {"backbone": BB, "train": FIT},
        "concat": {"encoder": {"dim": 16, "hidden": 16, "encoder_options": {"vector_hidden": 16}}, "train": FIT},
    },
}
METHODS = ["dymo", "fuse-all", "simultaneous", "iterative", "discard", "moddrop", "concat", "oracle-complete", "oracle-selection"]
SCENARIOS = ["random:0.3", "random:0.6"]
SEEDS = [0, 1]
# per scenario and seed: 10 methods (oracle-selection brings its shuffled control), one recoverer
PER_GROUP = 10
NON_NUMERIC_OR_TIMING = ["seconds"]


def tiny_config(**changes) -> BenchmarkConfig:
    cfg = dict(
        methods=METHODS, missing=SCENARIOS, seeds=SEEDS, recovery=["mean"], epochs=1, quality_sweep=True,
        batch_size=16, **MODEL_SETTINGS,
    )
    cfg.update(changes)
    return BenchmarkConfig.from_dict(cfg)


@pytest.fixture(scope="module")
def data():
    return make_synthetic_splits(80, 32, 40, kinds=("vector", "vector", "vector"), seed=0, signal=[1.0, 0.6, 0.3])


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench")
    result = run_benchmark(data, tiny_config(command="dymo benchmark --data synthetic"), out, progress=False)
    return out, result


def _counting(monkeypatch) -> list:
    calls: list = []
    real = bench._evaluate_group

    def counted(scenario, seed, cells, *args, **kwargs):
        calls.append((scenario, seed, [c.key for c in cells]))
        return real(scenario, seed, cells, *args, **kwargs)

    monkeypatch.setattr(bench, "_evaluate_group", counted)
    return calls


def _no_training(monkeypatch) -> None:
    def fail(*a, **k):
        raise AssertionError("a model was trained again")

    import dymo.baselines.base
    import dymo.recovery.base
    import dymo.training.run

    real_fit = dymo.recovery.base.Recoverer.fit

    def recoverer_fit(self, *a, **k):
        if self.name == "mean":  # the trained one; wrappers and the oracle "fit" by design
            fail()
        return real_fit(self, *a, **k)

    monkeypatch.setattr(dymo.training.run, "train_backbone", fail)
    monkeypatch.setattr(dymo.baselines.base.Baseline, "fit", fail)
    monkeypatch.setattr(dymo.recovery.base.Recoverer, "fit", recoverer_fit)
    import dymo.selection.calibration

    monkeypatch.setattr(dymo.selection.calibration, "compute_calibration", fail)


def _stable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=NON_NUMERIC_OR_TIMING).sort_values(["method", "scenario", "seed", "recoverer"]).reset_index(drop=True)


# -- plan --------------------------------------------------------------------------------------


def test_plan_names_methods_per_metric_and_adds_the_shuffled_control():
    one = [m.name for m in plan_methods(["dymo", "discard", "oracle-selection"], ["cosine"])]
    assert one == ["dymo", "discard", "oracle-selection", "oracle-selection-shuffled"]
    two = [m.name for m in plan_methods(["dymo", "moddrop"], ["cosine", "euclidean"])]
    assert two == ["dymo-cosine", "dymo-euclidean", "moddrop"]
    assert [m.name for m in plan_methods(["dymo-euclidean"], ["cosine", "euclidean"])] == ["dymo-euclidean"]
    with pytest.raises(ConfigError, match="euclidean metric"):
        plan_methods(["dymo-euclidean"], ["cosine"])
    with pytest.raises(ConfigError, match="unknown method 'dymoo'"):
        plan_methods(["dymoo"], ["cosine"])


def test_split_scenarios_keeps_fixed_lists_together():
    assert split_scenarios(["fixed:0,2,random:0.2", "count:1,none"]) == ["fixed:0,2", "random:0.2", "count:1", "none"]


# -- outputs -----------------------------------------------------------------------------------


def test_outputs_exist_with_one_row_per_cell(first_run):
    out, result = first_run
    for name in ("results.csv", "results.md", "accuracy_vs_missing.png", "ablation.md", "selection_stats.md",
                 "report.html", "quality_sweep.csv", "quality_sweep.md", "quality_sweep.png", "benchmark.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    df = pd.read_csv(out / "results.csv")
    assert len(df) == PER_GROUP * len(SCENARIOS) * len(SEEDS)
    assert not df.duplicated(["method", "scenario", "seed", "recoverer"]).any()
    assert {"accuracy", "balanced_accuracy", "macro_f1", "auc", "ece", "steps", "acceptance", "seconds", "recoverer", "family"} <= set(df.columns)
    assert df["balanced_accuracy"].between(0, 1).all() and df["macro_f1"].between(0, 1).all()
    md = (out / "results.md").read_text()
    assert "### Balanced accuracy" in md and "### Macro-F1" in md and "### ECE" in md
    assert set(df["scenario"]) == set(SCENARIOS) and set(df["seed"]) == set(SEEDS)
    # recovery-free methods are recorded once, without a recoverer
    assert set(df[df["method"].isin(["discard", "moddrop", "oracle-complete"])]["recoverer"]) == {"none"}
    assert set(df[df["method"].isin(["dymo", "concat", "oracle-selection"])]["recoverer"]) == {"mean"}
    assert df["accuracy"].between(0, 1).all()
    # + the sweep: fuse-all, dymo-paper and dymo at 7 recovery qualities (discard at random:0.6 is a main cell)
    assert result.computed == len(df) + len(SEEDS) * 3 * 7


def test_methods_behave_as_defined(first_run):
    df = pd.read_csv(first_run[0] / "results.csv").set_index(["method", "scenario", "seed"])
    for s in SCENARIOS:
        for seed in SEEDS:
            fuse = df.loc[("fuse-all", s, seed)]
            assert fuse["acceptance"] == pytest.approx(1.0)  # every recovered modality is used
            assert fuse["steps"] == pytest.approx(3 * fuse["missing_rate"])  # = missing modalities per sample
            assert df.loc[("discard", s, seed)]["steps"] == 0
            assert 0 <= df.loc[("dymo", s, seed)]["acceptance"] <= 1


def test_upper_bounds_are_kept_apart_and_marked(first_run):
    out = first_run[0]
    md = (out / "results.md").read_text()
    main, upper = md.split("### Upper bounds", 1)
    main_table = main.split("### Accuracy", 1)[1]
    assert "| dymo |" in main_table and "| moddrop |" in main_table
    assert "oracle" not in main_table
    for name in ("oracle-complete", "oracle-selection", "oracle-selection-shuffled"):
        assert f"| {name} |" in upper.split("###", 1)[0]
    assert "EXPERIMENT-ONLY" in upper
    assert set(pd.read_csv(out / "results.csv").query("family == 'upper'")["method"]) == {
        "oracle-complete", "oracle-selection", "oracle-selection-shuffled"}
    ablation = (out / "ablation.md").read_text()
    for name in ("fuse-all", "simultaneous", "iterative", "dymo"):
        assert f"| {name} |" in ablation
    stats = (out / "selection_stats.md").read_text()
    assert "dymo: steps and acceptance" in stats and "accept v2" in stats


def test_html_is_self_contained(first_run):
    out = first_run[0]
    text = (out / "report.html").read_text()
    assert "dymo benchmark --data synthetic" in text  # the command line
    assert "<td>train</td><td>80</td>" in text and "<td>test</td><td>40</td>" in text  # the scale
    assert text.count("<table>") >= 5
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 2  # accuracy vs missing + the quality sweep
    assert base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<tr class='upper'><td>oracle-selection-shuffled</td>" in text
    assert "http://" not in text and "https://" not in text and "<link" not in text


def test_quality_sweep(first_run):
    out = first_run[0]
    sweep = pd.read_csv(out / "quality_sweep.csv")
    assert set(sweep["method"]) == {"discard", "fuse-all", "dymo-paper", "dymo"}
    assert len(sweep) == 4 * 2 * 4 * len(SEEDS)
    assert sorted(set(sweep["p"])) == [0.0, 0.25, 0.5, 0.75]
    main = pd.read_csv(out / "results.csv").set_index(["method", "scenario", "seed"])
    for seed in SEEDS:
        # clean oracle recovery + fuse all = the backbone on the complete data = oracle-complete
        clean = sweep.query("method == 'fuse-all' and p == 0 and seed == @seed")["accuracy"]
        assert clean.to_numpy() == pytest.approx(main.loc[("oracle-complete", "random:0.6", seed)]["accuracy"])
        # discard ignores recovery: the same at every level
        assert sweep.query("method == 'discard' and seed == @seed")["accuracy"].nunique() == 1
    # fully misaligned recoveries must hurt fusing all of them
    fuse = sweep.query("method == 'fuse-all' and sweep == 'misaligned'").groupby("p")["accuracy"].mean()
    assert fuse[0.75] < fuse[0.0]


# -- resumability ------------------------------------------------------------------------------


def test_rerun_skips_every_finished_cell_and_trains_nothing(first_run, data, monkeypatch):
    out, first = first_run
    before = _stable(pd.read_csv(out / "results.csv"))
    calls = _counting(monkeypatch)
    _no_training(monkeypatch)
    again = run_benchmark(data, tiny_config(command="dymo benchmark --data synthetic"), out, progress=False)
    assert calls == [] and again.computed == 0 and again.skipped == first.computed
    pd.testing.assert_frame_equal(_stable(pd.read_csv(out / "results.csv")), before)


def test_deleted_cells_are_recomputed_alone_with_the_same_values(first_run, data, monkeypatch):
    out, _ = first_run
    before = _stable(pd.read_csv(out / "results.csv"))
    cells = sorted((out / "cells").glob("*.json"))
    victims = [p for p in cells if p.name.startswith(("dymo-cosine__random_0.3__s1", "oracle-selection-shuffled__random_0.6__s0"))]
    assert len(victims) == 2
    keys = set()
    for p in victims:
        d = json.loads(p.read_text())
        keys.add((d["method"], d["scenario"], d["seed"], d["recoverer"]))
        p.unlink()
    calls = _counting(monkeypatch)
    _no_training(monkeypatch)
    again = run_benchmark(data, tiny_config(command="dymo benchmark --data synthetic"), out, progress=False)
    assert again.computed == 2
    assert {k for _, _, ks in calls for k in ks} == keys and len(calls) == 2
    assert len(list((out / "cells").glob("*.json"))) == len(cells)
    # recomputed cells (the shuffled control's draws included) give the same numbers
    pd.testing.assert_frame_equal(_stable(pd.read_csv(out / "results.csv")), before)


def test_a_copied_folder_resumes_and_an_older_record_in_place_is_accepted(first_run, data, tmp_path, monkeypatch):
    import shutil

    out, first = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    _no_training(monkeypatch)
    again = run_benchmark(data, tiny_config(command="dymo benchmark --data synthetic"), copy, progress=False)
    assert again.computed == 0 and again.skipped == first.computed
    record = json.loads((copy / "benchmark.json").read_text())
    assert record["sources"]["backbone-cosine"] == "trained:backbone-cosine"
    # a folder written before: the trained backbone recorded by its path in that folder
    record["sources"]["backbone-cosine"] = str(copy / "models" / "backbone-cosine")
    (copy / "benchmark.json").write_text(json.dumps(record))
    assert run_benchmark(data, tiny_config(command="dymo benchmark --data synthetic"), copy, progress=False).computed == 0
    # ... but a backbone from elsewhere is still another source
    record["sources"]["backbone-cosine"] = str(tmp_path / "elsewhere" / "backbone-cosine")
    (copy / "benchmark.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="backbone-cosine came from"):
        run_benchmark(data, tiny_config(command="dymo benchmark --data synthetic"), copy, progress=False)


def test_a_different_scale_is_refused(first_run, data):
    with pytest.raises(ConfigError, match="another scale.*sizes"):
        run_benchmark(data, tiny_config(max_test_samples=20), first_run[0], progress=False)


def test_cli_resumes_the_same_folder(first_run, data, tmp_path):
    from dymo.cli.main import app

    out = first_run[0]
    folder = tmp_path / "synthetic"
    data.save(folder)
    cfg = tmp_path / "models.json"
    cfg.write_text(json.dumps(MODEL_SETTINGS))
    args = [
        "benchmark", "--data", str(folder), "--out", str(out), "--methods", ",".join(METHODS),
        "--missing", ",".join(SCENARIOS), "--seeds", "0,1", "--recovery", "mean", "--epochs", "1",
        "--batch-size", "16", "--config", str(cfg), "--quality-sweep", "--no-progress",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "0 cells computed" in res.output and "report.html" in res.output
    assert "dymo benchmark" in (out / "report.html").read_text()
    bad = CliRunner().invoke(app, [*args[:-1], "--config", str(tmp_path / "models.json"), "--missing", "random:1.5"])
    assert bad.exit_code == 2 and "random:ETA needs ETA in [0, 1)" in bad.output


def test_device_option_is_checked_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """`--device` names a device this machine has; a bad one is one `error:` line, exit 2, and
    no benchmark folder."""
    from dymo.cli.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, words in (("cuda", "no CUDA device"), ("tpu", "--device 'tpu'"), ("cuda:x", "--device 'cuda:x'")):
        out = tmp_path / f"b-{device.replace(':', '-')}"
        with pytest.raises(SystemExit) as exit_info:
            main(["benchmark", "--data", "mfeat", "--out", str(out), "--device", device])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err
        assert not out.exists()
    with pytest.raises(ConfigError, match="benchmark: device 'cuda'"):
        BenchmarkConfig(device="cuda")


def test_baselines_train_on_the_run_device(monkeypatch):
    """On a CUDA run every baseline's training engine gets the GPU accelerator (the config
    file's settings still win), without changing the run's recorded scale."""
    from dymo.evaluation.benchmark_plan import baseline_overrides

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = BenchmarkConfig(device="cuda", baselines={"qmf": {"train": {"batch_size": 64}}})
    assert baseline_overrides("qmf", cfg) == {"train": {"epochs": 3, "accelerator": "gpu", "batch_size": 64}}
    assert baseline_overrides("qmf", BenchmarkConfig()) == {"train": {"epochs": 3}}
    assert "device" not in json.dumps(cfg.baselines)
