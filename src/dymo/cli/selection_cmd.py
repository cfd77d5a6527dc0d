"""`dymo calibrate RUN` and `dymo evaluate RUN`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from dymo.cli.common import check_positive, check_unique, console, friendly_errors
from dymo.errors import ConfigError

app = typer.Typer()  # calibrate / evaluate / predict / bundle, added to the root by dymo.cli.main

CALIBRATION_FILE = "calibration.safetensors"


SCALE_HELP = "Lightning: processes/devices per node (a count or 'auto')."


def scale_options(accelerator: str, devices: str, strategy: str, num_nodes: int) -> Any:
    from dymo.utils.scale import ScaleOptions, parse_devices

    return ScaleOptions(accelerator=accelerator, devices=parse_devices(devices), strategy=strategy, num_nodes=num_nodes)


@app.command("calibrate")
@friendly_errors
def calibrate_cmd(
    run: Path = typer.Argument(..., help="Backbone run folder (from `dymo train backbone`)."),
    data: str | None = typer.Option(None, help="Dataset (default: the one the run was trained on)."),
    max_samples: int | None = typer.Option(None, help="Use only the first N training samples (default: all)."),
    batch_size: int = typer.Option(512),
    samples_per_class: int | None = typer.Option(
        None, help="Estimate each (subset, class) pair from this many training samples (a seeded sample, faster, "
        "approximate; see docs/selection.md). Default: every sample."
    ),
    seed: int = typer.Option(0, help="Seed of the calibration sample."),
    bf16: bool = typer.Option(
        False, help="Compute the features in bfloat16 (every sample and subset, lower precision; faster only with "
        "bf16 matrix units; see docs/selection.md)."
    ),
    accelerator: str = typer.Option("cpu", help="Lightning accelerator: cpu, gpu, auto."),
    devices: str = typer.Option("1", help=SCALE_HELP),
    strategy: str = typer.Option("auto", help="Lightning strategy, e.g. ddp (processes start by re-running this command)."),
    num_nodes: int = typer.Option(1, help="Lightning: machines (the run folder must be shared)."),
    tune_threshold: bool = typer.Option(
        False, help="Also tune the acceptance threshold tau (per number of observed modalities) on the VALIDATION split with --recovery, and store it with the calibration."
    ),
    recovery: Path | None = typer.Option(None, help="Recovery run folder whose recoveries the threshold is tuned for (with --tune-threshold)."),
    tune_missing: str = typer.Option("random:0.4,random:0.6,random:0.8", help="Simulated missing scenarios on validation (with --tune-threshold)."),
    tune_seeds: str = typer.Option("0,1", help="Mask seeds per scenario (with --tune-threshold)."),
    max_val_samples: int | None = typer.Option(None, help="Tune on the first N validation samples (default: all)."),
    reuse_statistics: bool = typer.Option(False, help="Keep the run's existing calibration statistics; only (re)tune the threshold."),
) -> None:
    """Compute DyMo's calibration statistics (per-subset prototypes and spreads) on the training set
    (a sample counts for the subsets it observes); with --tune-threshold also the acceptance rule,
    tuned on validation data."""
    import io

    import torch

    from dymo.data.registry import open_dataset
    from dymo.selection.calibration import (
        calibration_item_features,
        calibration_plan,
        check_sample_size,
        finish_calibration,
        low_precision_copy,
    )
    from dymo.training.run import load_backbone, read_run_config
    from dymo.utils.artifact import check_output, sha256_file
    from dymo.utils.scale import run_chunks

    check_positive(batch_size, "--batch-size")
    check_positive(max_samples, "--max-samples")
    check_positive(samples_per_class, "--samples-per-class")
    check_sample_size(samples_per_class, 5)
    check_positive(max_val_samples, "--max-val-samples")
    if tune_threshold and recovery is None:
        raise ConfigError("--tune-threshold needs --recovery (the recoverer the threshold is tuned for)")
    if recovery is not None and not tune_threshold:
        raise ConfigError("--recovery is only used with --tune-threshold")
    if reuse_statistics and not tune_threshold:
        raise ConfigError("--reuse-statistics only makes sense with --tune-threshold")
    options = scale_options(accelerator, devices, strategy, num_nodes)
    backbone = load_backbone(run)
    check_output(run / CALIBRATION_FILE, "calibration", replace=True, option="calibration file")
    ref = data or read_run_config(run)["data"]["name"]
    ds = open_dataset(ref)
    if reuse_statistics:
        from dymo.selection.calibration import Calibration

        cal = Calibration.load(run / CALIBRATION_FILE)
        _tune_and_save(run, cal, backbone, ds, recovery, tune_missing, tune_seeds, max_val_samples)  # type: ignore[arg-type]
        return
    train = ds["train"]
    if max_samples is not None and max_samples < len(train):
        train = train.subset(range(max_samples))
    plan = calibration_plan(train, samples_per_class, seed, batch_size)
    features_of = low_precision_copy(backbone.eval(), torch.bfloat16 if bf16 else None)

    def process(i: int, device: Any) -> bytes:
        codes, labels, z = calibration_item_features(features_of, train, plan[i])
        buf = io.BytesIO()
        torch.save({"codes": codes, "labels": labels, "z": z}, buf)
        return buf.getvalue()

    parts = run_chunks(len(plan), process, run / ".calibration.parts", options, model=features_of, target=run / CALIBRATION_FILE)
    if parts is None:  # not the first process
        return

    def features() -> Any:
        for part in parts:
            d = torch.load(io.BytesIO(part), weights_only=True)
            yield d["codes"], d["labels"], d["z"]

    cal = finish_calibration(features(), train, backbone.config.metric)
    if tune_threshold:
        _tune_and_save(run, cal, backbone, ds, recovery, tune_missing, tune_seeds, max_val_samples)  # type: ignore[arg-type]
        return
    # Records the weights it was computed with: a retrained backbone makes it stale (refused).
    cal.save(run / CALIBRATION_FILE, backbone_sha256=sha256_file(run / "backbone.safetensors"))
    how = "every sample" if samples_per_class is None else f"at most {samples_per_class} samples per (subset, class)"
    how += ", bfloat16 features" if bf16 else ""
    console.print(f"[green]calibrated[/] on {len(train)} training samples ({how}) -> {run / CALIBRATION_FILE}")


def _tune_and_save(run: Path, cal: Any, backbone: Any, ds: Any, recovery: Path, tune_missing: str, tune_seeds: str, max_val_samples: int | None) -> None:
    """Tune the acceptance rule on the validation split, attach it to ``cal`` and save it."""
    from dymo.recovery.registry import load_recoverer
    from dymo.selection.tuning import tune_threshold
    from dymo.utils.artifact import sha256_file

    val = ds["val"]
    if max_val_samples is not None and max_val_samples < len(val):
        val = val.subset(range(max_val_samples))
    seeds = [int(s) for s in tune_seeds.split(",") if s.strip()]
    scenarios = [s.strip() for s in tune_missing.split(",") if s.strip()]
    rec = load_recoverer(recovery, train=ds["train"])
    cal.threshold = None
    cal.threshold = tune_threshold(backbone, cal, rec, val, scenarios=scenarios, seeds=seeds, recoverer_name=str(recovery))
    _print_tuning(cal.threshold)
    cal.save(run / CALIBRATION_FILE, backbone_sha256=sha256_file(run / "backbone.safetensors"))
    console.print(f"[green]calibrated[/] with a tuned acceptance rule -> {run / CALIBRATION_FILE}")


def _print_tuning(tuned: Any) -> None:
    table = Table(title=f"acceptance threshold, validation accuracy (%) ({tuned.n_val} samples x {len(tuned.scenarios)} scenarios x {len(tuned.seeds)} seeds)")
    table.add_column("observed")
    table.add_column("n")
    rows = tuned.accuracy_table()
    names = list(rows[0]["accuracy"]) if rows else []
    for name in names:
        table.add_column(f"tau {name}")
    table.add_column("chosen tau")
    for r in rows:
        cells = ["-" if r["accuracy"][k] is None else f"{100 * r['accuracy'][k]:.2f}" for k in names]
        table.add_row(str(r["observed"]), str(r["n"]), *cells, f"{r['tau']:g}")
    console.print(table)
    console.print(
        f"samples that add a recovery: prediction = {tuned.added_weight:g} x used modalities + "
        f"{1 - tuned.added_weight:g} x observed only, probabilities at temperature {tuned.added_temperature:g}"
    )


@app.command("evaluate")
@friendly_errors
def evaluate_cmd(
    run: Path = typer.Argument(..., help="Backbone run folder (calibrated for the dymo/iterative/simultaneous methods)."),
    recovery: Path | None = typer.Option(None, help="Recovery run folder (from `dymo train recovery`)."),
    method: str = typer.Option("discard,fuse-all,dymo", help="Comma-separated: dymo, iterative, simultaneous, fuse-all, discard."),
    missing: str = typer.Option("random:0.6", help="Scenario: random:ETA, count:K, fixed:I,J, none, or file:MASK.csv."),
    seed: int = typer.Option(0, help="Seed of the missing-modality mask."),
    data: str | None = typer.Option(None, help="Dataset (default: the run's)."),
    split: str = typer.Option("test"),
    max_added: int | None = typer.Option(None, help="Budget: at most this many recovered modalities per sample."),
    value_missing: str | None = typer.Option(None, help="Partly missing tables on top: value:GAMMA or feature:GAMMA (vector modalities)."),
    batch_size: int = typer.Option(512),
    out: Path | None = typer.Option(None, help="Also write the metrics as JSON here."),
    force: bool = typer.Option(False, "--force", help="Replace an existing metrics file written by dymo."),
    accelerator: str = typer.Option("cpu", help="Lightning accelerator (with --devices/--strategy/--num-nodes)."),
    devices: str = typer.Option("1", help=SCALE_HELP + " Other than 1: the batches run through Lightning."),
    strategy: str = typer.Option("auto", help="Lightning strategy, e.g. ddp (processes start by re-running this command)."),
    num_nodes: int = typer.Option(1, help="Lightning: machines (the run folder must be shared)."),
) -> None:
    """Evaluate selection methods under a missing-modality scenario; prints accuracy, steps and acceptance."""
    from dymo.data.registry import open_dataset
    from dymo.evaluation.pipeline import evaluate_methods
    from dymo.recovery.registry import load_recoverer
    from dymo.selection.calibration import Calibration
    from dymo.training.run import load_backbone, read_run_config
    from dymo.utils.artifact import check_output
    from dymo.utils.io import write_json

    check_positive(batch_size, "--batch-size")
    methods = [m.strip() for m in method.split(",") if m.strip()]
    if not methods:
        raise ConfigError("--method: name at least one method")
    check_unique(methods, "--method")
    if out is not None:
        if out.suffix.lower() != ".json":
            raise ConfigError(f"--out {out}: the metrics file must end in .json")
        check_output(out, "metrics", force=force)
    backbone = load_backbone(run)
    cal_path = run / CALIBRATION_FILE
    cal = Calibration.load(cal_path) if cal_path.exists() else None
    if cal is not None:
        cal.check_backbone(run / "backbone.safetensors", cal_path, f"run `dymo calibrate {run}` again")
    ref = data or read_run_config(run)["data"]["name"]
    dataset = open_dataset(ref)
    rec = load_recoverer(recovery) if recovery else None
    selection = {"max_added": max_added} if max_added is not None else {}
    scaled = devices != "1" or strategy != "auto" or num_nodes != 1
    scale = scale_options(accelerator, devices, strategy, num_nodes) if scaled else None
    metrics = evaluate_methods(
        backbone, cal, rec, dataset[split], missing, methods, seed=seed, batch_size=batch_size, selection=selection,
        value_missing=value_missing, scale=scale, parts_dir=run / ".evaluate.parts",
    )
    if metrics is None:  # not the first process
        return
    print_metrics(metrics, title=f"{ref}/{split} — missing {missing}" + (f", values {value_missing}" if value_missing else "") + f", seed {seed}")
    if out:
        write_json(out, {m: v.to_dict() for m, v in metrics.items()})
        console.print(f"wrote {out}")


def print_metrics(metrics: dict, title: str) -> None:
    table = Table(title=title)
    for col in ("method", "accuracy", "balanced acc", "macro-F1", "AUC", "ECE", "steps/sample", "accepted", "acc by #observed", "s"):
        table.add_column(col)

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    for m, r in metrics.items():
        by = " ".join(f"{k}:{v:.3f}" for k, v in sorted(r.accuracy_by_num_observed.items()))
        table.add_row(
            m, f"{r.accuracy:.4f}", num(r.balanced_accuracy), num(r.macro_f1), num(r.auc), num(r.ece), f"{r.avg_steps:.2f}",
            "-" if r.acceptance_rate is None else f"{r.acceptance_rate:.1%}", by, f"{r.seconds:.1f}",
        )
    from rich.console import Console

    Console().print(table)


def _predict_records(clf: Any, folder: Any, chunk: list[str], selection: Any, preprocessed: bool) -> list[dict]:
    """Records of one chunk of sample ids, in the chunk's order (errors included)."""
    import re

    from dymo.errors import DataError

    records: dict[str, dict] = {}
    batch, errors = folder.load(chunk)
    batch.preprocessed = preprocessed
    ok = [i for i, sid in enumerate(chunk) if sid not in errors]
    if ok:
        try:
            preds = [(ok, clf.predict(batch.index(ok), selection))]
        except DataError:
            # One bad sample (e.g. an empty cell in an observed table row) must not fail the
            # others: predict this chunk sample by sample and mark only the bad ones.
            preds = []
            for i in ok:
                try:
                    preds.append(([i], clf.predict(batch.index([i]), selection)))
                except DataError as e:
                    errors[chunk[i]] = re.sub(r"\bsample 0\b", "this sample", str(e))
        for idx, pred in preds:
            for rec in pred.to_records([chunk[i] for i in idx]):
                records[rec["sample"]] = {**rec, "status": "ok"}
    for sid, msg in errors.items():
        records[sid] = {"sample": sid, "status": "error", "error": msg}
    return [records[sid] for sid in chunk]


def _csv_columns(class_names: list[str]) -> list[str]:
    from dymo.utils.artifact import PREDICTIONS_HEADER

    return [*PREDICTIONS_HEADER.split(","), *[f"p_{c}" for c in class_names], "observed", "recovered", "used", "steps", "error"]


def _format_records(records: list[dict], fmt: str, class_names: list[str]) -> bytes:
    """CSV rows (no header) or JSON array items (each indented as in ``json.dump(indent=1)``)."""
    import csv
    import io
    import json

    if fmt == "json":
        items = ["\n".join(" " + line for line in json.dumps(r, indent=1).splitlines()) for r in records]
        return ",\n".join(items).encode()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_csv_columns(class_names))
    for r in records:
        row = {"sample": r["sample"], "status": r["status"], "error": r.get("error", "")}
        if r["status"] == "ok":
            row.update({f"p_{c}": p for c, p in r["probabilities"].items()})
            row.update(
                predicted_class=r["predicted_class"], observed=";".join(r["observed"]), recovered=";".join(r["recovered"]),
                used=";".join(r["used"]), steps=json.dumps(r["steps"]),
            )
        w.writerow(row)
    return buf.getvalue().encode()


@app.command("predict")
@friendly_errors
def predict_cmd(
    bundle: Path = typer.Argument(..., help="Model bundle folder (see `dymo bundle` / the demo)."),
    input: Path = typer.Argument(..., help="Input folder: <modality>/<id>.<ext> for images, <modality>.csv (header id,...) for vectors/text."),
    out: Path = typer.Option(Path("predictions.csv"), help="Output .csv or .json."),
    batch_size: int = typer.Option(256, help="Samples per forward pass (>= 1)."),
    method: str | None = typer.Option(None, help="Override the bundle's selection method."),
    force: bool = typer.Option(False, "--force", help="Replace an existing predictions file written by dymo."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check every bundle file against its sha256 (skip for speed)."),
    inputs: str = typer.Option(
        "raw", help="raw: vector CSVs hold values as in the source data (the model's standardisation is applied); "
        "model: they are already standardised."
    ),
    accelerator: str = typer.Option("cpu", help="Lightning accelerator: cpu, gpu, auto."),
    devices: str = typer.Option("1", help=SCALE_HELP),
    strategy: str = typer.Option("auto", help="Lightning strategy, e.g. ddp (processes start by re-running this command)."),
    num_nodes: int = typer.Option(1, help="Lightning: machines (the output folder must be shared)."),
) -> None:
    """Predict samples with any modalities missing; write class, probabilities, modalities observed/recovered/used and rewards.

    Inputs are raw by default: images as files (any Pillow format and bit depth), vector values as in the source data, text as plain strings; the bundle's own preprocessing (stored in its specs, summarised under "inputs" in bundle.json) is applied as in training.

    One output row per sample, in input order (CSV rows as first seen, then ids found only as image files, by name). The rules: docs/inputs.md.

    Samples are read, predicted and written one batch at a time (bounded memory); with
    --devices/--strategy the batches are shared among processes and the output is the same as
    with one process.
    """
    import csv
    import io

    from dymo.errors import ConfigError
    from dymo.inference.classifier import DyMoClassifier
    from dymo.inference.folder import InputFolder
    from dymo.selection.selector import SelectionConfig
    from dymo.utils.artifact import check_output
    from dymo.utils.io import atomic_write
    from dymo.utils.scale import run_chunks

    # every option is checked before any work
    if out.suffix.lower() not in (".csv", ".json"):
        raise ConfigError(f"--out {out}: must end in .csv or .json")
    check_positive(batch_size, "--batch-size")
    if inputs not in ("raw", "model"):
        raise ConfigError(f"--inputs must be 'raw' or 'model', got {inputs!r}")
    if method is not None:
        SelectionConfig(method=method)  # type: ignore[arg-type]  # ConfigError naming the known methods
    check_output(out, "predictions", force=force, inputs=[bundle, input])
    clf = DyMoClassifier.from_pretrained(bundle, verify=verify)
    options = scale_options(accelerator, devices, strategy, num_nodes)
    folder = InputFolder.scan(input, clf.specs)
    for note in folder.notes:
        console.print(f"note: {note}", soft_wrap=True)
    selection = SelectionConfig.from_dict({**clf.selection.to_dict(), "method": method}) if method else None
    ids = folder.ids
    fmt = out.suffix.lower()[1:]
    num_chunks = (len(ids) + batch_size - 1) // batch_size
    counts = {"error": 0}

    def process(i: int, device: Any) -> bytes:
        records = _predict_records(clf, folder, ids[i * batch_size : (i + 1) * batch_size], selection, inputs == "model")
        return _format_records(records, fmt, clf.class_names)

    parts = run_chunks(num_chunks, process, out.parent / f".{out.name}.parts", options, model=clf.backbone, target=out)
    if parts is None:  # not the first process
        return
    with atomic_write(out, "wb") as f:
        if fmt == "json":
            f.write(b"[\n" if ids else b"[")
        else:
            head = io.StringIO()
            csv.DictWriter(head, fieldnames=_csv_columns(clf.class_names)).writeheader()
            f.write(head.getvalue().encode())
        for i, part in enumerate(parts):
            if fmt == "json":
                f.write((b",\n" if i else b"") + part)
                counts["error"] += part.count(b'\n  "status": "error"')
            else:
                f.write(part)
                counts["error"] += sum(row[1] == "error" for row in csv.reader(io.StringIO(part.decode())))
        if fmt == "json":
            f.write(b"\n]" if ids else b"]")
    n_err = counts["error"]
    console.print(f"[green]wrote[/] {out}: {len(ids) - n_err} predicted, {n_err} failed" + (" (see the error column)" if n_err else ""))


@app.command("bundle")
@friendly_errors
def bundle_cmd(
    run: Path = typer.Argument(..., help="Calibrated backbone run folder."),
    recovery: Path = typer.Option(..., help="Recovery run folder."),
    out: Path = typer.Option(..., help="Bundle folder to write."),
    method: str = typer.Option("dymo", help="Default selection method of the bundle."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle (never anything else)."),
) -> None:
    """Assemble a model bundle (backbone + calibration + recoverer + selection config) for `dymo predict`."""
    from dymo.inference.classifier import DyMoClassifier
    from dymo.selection.selector import SelectionConfig
    from dymo.utils.artifact import check_output

    check_output(out, "bundle", force=force, inputs=[run, recovery])  # before any work
    clf = DyMoClassifier.from_run(run, recovery, SelectionConfig.from_dict({"method": method}))
    tuned = clf.calibration.threshold
    if tuned is not None and Path(tuned.recoverer).resolve() != recovery.resolve():
        console.print(
            f"[yellow]warning:[/] the calibration's acceptance threshold was tuned for {tuned.recoverer}, not {recovery}; "
            f"rerun `dymo calibrate {run} --tune-threshold --recovery {recovery} --reuse-statistics`"
        )
    clf.save_pretrained(out, force=force, inputs=[run, recovery])
    console.print(f"[green]bundle[/] written to {out}")
