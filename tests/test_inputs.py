"""The input boundary of `dymo predict` and `DyMoClassifier.predict` (docs/inputs.md).

`test_case<N>_*` pins numbered case N of the input-boundary issue (each failed before the
input layer existed); the other tests pin the remaining rules of docs/inputs.md. Tiny data: a
mixed image + vector + text bundle (standardised vector, MoPoE alphabet) with a retrieval
recoverer, which cannot fill empty values, and a vector-only bundle with a mean imputer, which
can. Comparisons: decisions exactly, probabilities to 1e-5 (the CLI writes 6 decimals; batch
composition only changes float summation order).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dymo.cli.main import app
from dymo.data.batch import MultimodalBatch
from dymo.data.dataset import MultimodalDataset, SplitDataset
from dymo.data.mst import decode_text, digit_texts, encode_text
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError, DataError
from dymo.inference import DyMoClassifier
from dymo.models import BackboneConfig
from dymo.recovery.registry import get_recoverer
from dymo.selection import SelectionConfig, compute_calibration
from dymo.training import TrainConfig, load_backbone, train_backbone

TINY = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8, encoder_options={"image_channels": [4, 8, 16]})
runner = CliRunner()
ATOL = 1e-5


# -- fixtures -----------------------------------------------------------------------------------


def _mixed_data() -> tuple[SplitDataset, dict[str, np.ndarray]]:
    """img (3, 8, 8), vec (5,) standardised with train mean/std (raw values around 50), txt (8,) MoPoE text."""
    protos = np.random.default_rng(1234)
    pat_img, pat_vec = protos.random((3, 8, 8, 3)), protos.normal(size=(3, 5))
    raw: dict[str, dict[str, np.ndarray]] = {}
    for split, n, seed in (("train", 90, 0), ("val", 30, 1), ("test", 24, 2)):
        rng = np.random.default_rng(seed)
        y = np.arange(n) % 3
        img = (np.clip(pat_img[y] * 0.7 + rng.random((n, 8, 8, 3)) * 0.3, 0, 1) * 255).astype(np.uint8)
        vec = 50.0 + 10.0 * pat_vec[y] + rng.normal(size=(n, 5)) * 3.0
        txt = encode_text(digit_texts(y, 8, rng), 8)
        raw[split] = {"y": y, "img": img, "vec": vec, "txt": txt}
    mean, std = raw["train"]["vec"].mean(0), raw["train"]["vec"].std(0)
    specs = [
        ModalitySpec("img", "image", (3, 8, 8)),
        ModalitySpec("vec", "vector", (5,), extra={"mean": mean.tolist(), "std": std.tolist()}),
        ModalitySpec("txt", "text", (8,), vocab_size=72, extra={"alphabet": "mopoe"}),
    ]
    names = ["0", "1", "2"]
    splits = {
        s: MultimodalDataset(
            specs, {"img": r["img"], "vec": ((r["vec"] - mean) / std).astype(np.float32), "txt": r["txt"]}, r["y"], names, name=f"mixed/{s}"
        )
        for s, r in raw.items()
    }
    stored = splits["test"].arrays["vec"].astype(np.float64)
    return SplitDataset("mixed", specs, names, splits), {"vec": stored * std + mean}


def _train(data: SplitDataset, root: Path, recoverer, epochs: int = 2, lr: float = 1e-3) -> DyMoClassifier:
    train = TrainConfig(epochs=epochs, batch_size=32, lr=lr, proto_start_epoch=1)
    run = train_backbone(data, root / "run", TINY, train, progress=False)
    backbone = load_backbone(run)
    cal = compute_calibration(backbone, data["train"], progress=False)
    return DyMoClassifier(backbone, cal, recoverer.fit(data["train"], progress=False), data.class_names)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    data, raw = _mixed_data()
    clf = _train(data, root, get_recoverer("retrieval", epochs=1, width=4, hidden=16, embed_dim=8))
    return data, raw, clf, clf.save_pretrained(root / "bundle")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Two standardised vector modalities and a mean imputer (it fills empty values)."""
    root = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(5)
    pats = rng.normal(size=(3, 6))
    splits, stats = {}, {}
    for split, n in (("train", 90), ("val", 30), ("test", 24)):
        y = np.arange(n) % 3
        arrays = {}
        for name, off in (("a", 20.0), ("b", -7.0)):
            x = off + 4.0 * pats[y] + rng.normal(size=(n, 6))
            if split == "train":
                stats[name] = (x.mean(0), x.std(0))
            arrays[name] = x
        splits[split] = (y, arrays)
    specs = [ModalitySpec(n, "vector", (6,), extra={"mean": stats[n][0].tolist(), "std": stats[n][1].tolist()}) for n in ("a", "b")]
    ds = {
        s: MultimodalDataset(specs, {n: ((x - stats[n][0]) / stats[n][1]).astype(np.float32) for n, x in arrays.items()}, y, ["0", "1", "2"])
        for s, (y, arrays) in splits.items()
    }
    data = SplitDataset("table", specs, ["0", "1", "2"], ds)
    clf = _train(data, root, get_recoverer("mean"))
    return data, stats, clf, clf.save_pretrained(root / "bundle")


# -- helpers ------------------------------------------------------------------------------------


def _write_vec_csv(path: Path, ids, rows, header=True, width=5) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if header:
            w.writerow(["id", *[f"f{k}" for k in range(width)]])
        for sid, row in zip(ids, rows, strict=True):
            w.writerow([sid, *[repr(float(v)) if not isinstance(v, str) else v for v in row]])


def _write_txt_csv(path: Path, ids, texts) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows(zip(ids, texts, strict=True))


def _predict(bundle: Path, folder: Path, out: Path, *args: str):
    res = runner.invoke(app, ["predict", str(bundle), str(folder), "--out", str(out), *args])
    rows = list(csv.DictReader(open(out, encoding="utf-8"))) if out.exists() else None
    return res, rows


def _probs(rows, class_names) -> np.ndarray:
    return np.array([[float(r[f"p_{c}"]) for c in class_names] for r in rows])


def _api(clf: DyMoClassifier, split: MultimodalDataset, idx, observed_cols: list[int], **replace):
    batch = split.batch(list(idx))
    observed = torch.zeros(len(idx), len(split.specs), dtype=torch.bool)
    observed[:, observed_cols] = True
    batch = batch.with_observed(observed)
    if replace:
        batch = MultimodalBatch({**batch.data, **replace}, observed, batch.modalities)  # built by hand: raw
    return clf.predict(batch)


def _cli_error(res, *fragments: str) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _bomb_png(path: Path, w: int = 20000, h: int = 20000) -> None:
    """A PNG whose header claims w x h pixels (a decompression bomb), a few hundred bytes on disk."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _save_images(folder: Path, split: MultimodalDataset, ids, idx) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for sid, i in zip(ids, idx, strict=True):
        Image.fromarray(np.asarray(split.arrays["img"][i])).save(folder / f"{sid}.png")


# -- the numbered cases ---------------------------------------------------------------------------


def test_case1_text_csv_is_encoded_with_the_bundle_alphabet(mixed, tmp_path):
    data, _, clf, bundle = mixed
    test = data["test"]
    idx = range(12)
    ids = [f"t{i}" for i in idx]
    (tmp_path / "in").mkdir()
    texts = [decode_text(test.arrays["txt"][i]) for i in idx]
    assert texts[0].strip() in ("zero", "one", "two") and len(texts[0]) == 8  # e.g. "  zero  ": blanks are characters
    _write_txt_csv(tmp_path / "in" / "txt.csv", ids, texts)
    res, rows = _predict(bundle, tmp_path / "in", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    api = _api(clf, test, idx, [2])
    assert [r["predicted_class"] for r in rows] == api.classes
    np.testing.assert_allclose(_probs(rows, clf.class_names), api.probabilities.numpy(), atol=ATOL)


def test_case2_raw_vector_csv_values_are_standardised_with_the_bundle_statistics(mixed, tmp_path):
    data, raw, clf, bundle = mixed
    test = data["test"]
    idx = range(12)
    (tmp_path / "in").mkdir()
    _write_vec_csv(tmp_path / "in" / "vec.csv", [f"v{i}" for i in idx], raw["vec"][list(idx)])
    res, rows = _predict(bundle, tmp_path / "in", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    api = _api(clf, test, idx, [1])
    assert [r["predicted_class"] for r in rows] == api.classes
    np.testing.assert_allclose(_probs(rows, clf.class_names), api.probabilities.numpy(), atol=ATOL)
    # the Python API takes raw values too: a batch built by hand is raw by default
    own = _api(clf, test, idx, [1], vec=torch.from_numpy(raw["vec"][list(idx)]))
    assert own.classes == api.classes
    torch.testing.assert_close(own.probabilities, api.probabilities, atol=ATOL, rtol=0)
    # ... and `--inputs model` reads already standardised CSV values
    (tmp_path / "std").mkdir()
    _write_vec_csv(tmp_path / "std" / "vec.csv", [f"v{i}" for i in idx], test.arrays["vec"][list(idx)])
    res, rows = _predict(bundle, tmp_path / "std", tmp_path / "q.csv", "--inputs", "model")
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(_probs(rows, clf.class_names), api.probabilities.numpy(), atol=ATOL)


def test_case3_16_bit_png_is_scaled_not_saturated(mixed, tmp_path):
    data, _, clf, bundle = mixed
    test = data["test"]
    idx = list(range(12))
    (tmp_path / "in" / "img").mkdir(parents=True)
    grey16 = []
    for i in idx:
        rgb = test.arrays["img"][i].astype(np.float64) / 255.0
        g = np.rint((rgb @ [0.299, 0.587, 0.114]) * 65535).astype(np.uint16)
        Image.fromarray(g).save(tmp_path / "in" / "img" / f"g{i}.png")  # mode I;16
        grey16.append(g)
    with Image.open(tmp_path / "in" / "img" / "g0.png") as im:
        assert im.mode == "I;16"
    res, rows = _predict(bundle, tmp_path / "in", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    # the documented rule: 16-bit grey / 65535, repeated to the modality's 3 channels
    expected = torch.from_numpy(np.stack(grey16).astype(np.float32) / 65535.0)[:, None].expand(-1, 3, -1, -1)
    api = _api(clf, test, idx, [0], img=expected.contiguous())
    assert [r["predicted_class"] for r in rows] == api.classes
    np.testing.assert_allclose(_probs(rows, clf.class_names), api.probabilities.numpy(), atol=ATOL)


def test_case4_csv_without_header_fails_clearly_instead_of_losing_a_sample(mixed, tmp_path):
    data, raw, _, bundle = mixed
    (tmp_path / "in").mkdir()
    _write_vec_csv(tmp_path / "in" / "vec.csv", ["v0", "v1", "v2"], raw["vec"][:3], header=False)
    res, _ = _predict(bundle, tmp_path / "in", tmp_path / "p.csv")
    _cli_error(res, "vec.csv", "line 1", "header", "'v0'")
    assert not (tmp_path / "p.csv").exists()


def test_case5_duplicate_id_fails_that_sample_only(mixed, tmp_path):
    data, raw, _, bundle = mixed
    (tmp_path / "in").mkdir()
    _write_vec_csv(tmp_path / "in" / "vec.csv", ["v0", "v1", "v2", "v1"], raw["vec"][:4])
    res, rows = _predict(bundle, tmp_path / "in", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    assert [r["sample"] for r in rows] == ["v0", "v1", "v2"]
    assert rows[1]["status"] == "error" and "'v1' is on lines 3, 5" in rows[1]["error"] and "vec.csv" in rows[1]["error"]
    assert rows[0]["status"] == rows[2]["status"] == "ok"


@pytest.mark.parametrize("size", ["-1", "0"])
def test_case6_batch_size_below_one_is_refused_before_any_work(mixed, tmp_path, size):
    data, raw, _, bundle = mixed
    (tmp_path / "in").mkdir()
    _write_vec_csv(tmp_path / "in" / "vec.csv", ["v0"], raw["vec"][:1])
    res, _ = _predict(bundle, tmp_path / "in", tmp_path / "p.csv", "--batch-size", size)
    _cli_error(res, f"--batch-size must be >= 1, got {size}")
    assert not (tmp_path / "p.csv").exists()


def test_case7_decompression_bomb_fails_only_its_sample(mixed, tmp_path):
    data, _, clf, bundle = mixed
    ids = [f"s{i}" for i in range(8)]
    _save_images(tmp_path / "in" / "img", data["test"], ids, range(8))
    _bomb_png(tmp_path / "in" / "img" / "s3.png")
    res, rows = _predict(bundle, tmp_path / "in", tmp_path / "p.csv", "--batch-size", "3")
    assert res.exit_code == 0, res.output
    assert [r["sample"] for r in rows] == ids
    assert rows[3]["status"] == "error" and "s3.png" in rows[3]["error"] and "decompression" in rows[3]["error"]
    assert all(r["status"] == "ok" for k, r in enumerate(rows) if k != 3)


def test_case8a_api_refuses_images_in_0_255(mixed):
    data, _, clf, _ = mixed
    batch = data["test"].batch(range(4))
    with pytest.raises(DataError, match=r"sample 0: image modality 'img' holds values in \[.*\]; images are floats in \[0, 1\]"):
        clf.predict(MultimodalBatch({**batch.data, "img": batch.data["img"] * 255.0}, batch.observed, batch.modalities))
    # uint8 0..255 is the other accepted form
    as_uint8 = dataclasses.replace(batch, data={**batch.data, "img": torch.from_numpy(data["test"].arrays["img"][:4]).permute(0, 3, 1, 2).contiguous()})
    assert clf.predict(as_uint8).classes == clf.predict(batch).classes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_case8b_api_accepts_any_float_dtype(mixed, dtype):
    data, _, clf, _ = mixed
    batch = data["test"].batch(range(12))
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in batch.data.items()}
    got = clf.predict(dataclasses.replace(batch, data=cast))
    # the same as float32 inputs holding the same (rounded) values
    ref = clf.predict(dataclasses.replace(batch, data={k: (v.float() if v.is_floating_point() else v) for k, v in cast.items()}))
    assert got.classes == ref.classes
    torch.testing.assert_close(got.probabilities, ref.probabilities, atol=ATOL, rtol=0)


def test_case8c_api_accepts_numpy_arrays(mixed):
    data, _, clf, _ = mixed
    batch = data["test"].batch(range(12))
    observed = np.ones((12, 3), dtype=bool)
    observed[::2, 0] = False
    tensors = batch.with_observed(torch.from_numpy(observed))
    arrays = dataclasses.replace(tensors, data={k: v.numpy() for k, v in batch.data.items()})
    a, b = clf.predict(arrays), clf.predict(tensors)
    assert a.classes == b.classes and torch.equal(a.used, b.used)
    torch.testing.assert_close(a.probabilities, b.probabilities, atol=ATOL, rtol=0)


def test_case8d_api_takes_a_method_name_as_selection(mixed):
    data, _, clf, _ = mixed
    batch = data["test"].batch(range(12))
    observed = torch.ones(12, 3, dtype=torch.bool)
    observed[:, 1:] = False
    batch = batch.with_observed(observed)
    by_name = clf.predict(batch, "discard")
    by_config = clf.predict(batch, SelectionConfig(method="discard"))
    assert by_name.classes == by_config.classes and torch.equal(by_name.used, observed)
    with pytest.raises(ConfigError, match="'best' is not one of"):
        clf.predict(batch, "best")
    with pytest.raises(ConfigError, match="selection must be a SelectionConfig, a method name or None, got int"):
        clf.predict(batch, 3)


def test_case9_output_keeps_the_input_order(mixed, tmp_path):
    data, raw, _, bundle = mixed
    ids = [f"d{i}" for i in range(12)]
    rows_in = [list(r) for r in raw["vec"][:12]]
    rows_in[5] = ["x"] * 5  # a failed sample keeps its place
    (tmp_path / "in").mkdir()
    _write_vec_csv(tmp_path / "in" / "vec.csv", ids, rows_in)
    for out in ("p.csv", "p.json"):
        res = runner.invoke(app, ["predict", str(bundle), str(tmp_path / "in"), "--out", str(tmp_path / out), "--batch-size", "5"])
        assert res.exit_code == 0, res.output
        got = [r["sample"] for r in csv.DictReader(open(tmp_path / out))] if out.endswith("csv") else [r["sample"] for r in json.loads((tmp_path / out).read_text())]
        assert got == ids  # not d0, d1, d10, d11, d2, ...
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["status"] for r in rows] == ["ok"] * 5 + ["error"] + ["ok"] * 6


def test_case10_partly_empty_row_is_filled_when_the_recoverer_can(table, tmp_path):
    data, stats, clf, bundle = table
    test = data["test"]
    raw_a = test.arrays["a"][:6].astype(np.float64) * stats["a"][1] + stats["a"][0]
    raw_b = test.arrays["b"][:6].astype(np.float64) * stats["b"][1] + stats["b"][0]
    rows_a = [list(r) for r in raw_a]
    rows_a[2][1] = ""  # one empty cell in an observed row
    rows_a[4][0] = rows_a[4][3] = "NaN"
    ids = [f"r{i}" for i in range(6)]
    (tmp_path / "in").mkdir()
    _write_vec_csv(tmp_path / "in" / "a.csv", ids, rows_a, width=6)
    _write_vec_csv(tmp_path / "in" / "b.csv", ids, raw_b, width=6)
    res, rows = _predict(bundle, tmp_path / "in", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    assert all(r["status"] == "ok" for r in rows), rows
    assert rows[2]["observed"] == "a;b" and rows[2]["recovered"] == "a" and rows[0]["recovered"] == ""
    # the API gives the same answer on the same raw values with NaN holes
    x = torch.from_numpy(raw_a.copy())
    x[2, 1] = x[4, 0] = x[4, 3] = float("nan")
    api = clf.predict(MultimodalBatch({"a": x, "b": torch.from_numpy(raw_b)}, torch.ones(6, 2, dtype=torch.bool), ("a", "b")))
    assert [r["predicted_class"] for r in rows] == api.classes
    np.testing.assert_allclose(_probs(rows, clf.class_names), api.probabilities.numpy(), atol=ATOL)
    assert api.recovered[2].tolist() == [True, False] and api.observed.all()


def test_case10_partly_empty_row_is_a_sample_error_when_the_recoverer_cannot(mixed, tmp_path):
    data, raw, clf, bundle = mixed
    rows_in = [list(r) for r in raw["vec"][:4]]
    rows_in[1][2] = ""
    (tmp_path / "in").mkdir()
    _write_vec_csv(tmp_path / "in" / "vec.csv", ["v0", "v1", "v2", "v3"], rows_in)
    res, rows = _predict(bundle, tmp_path / "in", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "ok"]
    assert "this sample: observed modality 'vec' holds NaN or Inf (NaN = an empty value" in rows[1]["error"]
    assert not getattr(clf.recoverer, "allows_missing_values", False)


# -- the folder written from a test split predicts as `dymo evaluate` does -----------------------


def _write_split_folder(root: Path, split: MultimodalDataset, observed: np.ndarray) -> list[str]:
    """The test split as a user's input folder: PNG files, raw-valued vector CSVs, text CSVs; a
    modality unobserved in ``observed`` has no file / row for that sample."""
    from dymo.data.kinds import TEXT, VECTOR

    ids = [f"s{i}" for i in range(len(split))]
    root.mkdir(parents=True)
    for j, spec in enumerate(split.specs):
        keep = [i for i in range(len(split)) if observed[i, j]]
        arr = np.asarray(split.arrays[spec.name])
        if spec.kind == "image":
            (root / spec.name).mkdir()
            for i in keep:
                img = arr[i]
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(root / spec.name / f"{ids[i]}.png")
        elif spec.kind == "vector":
            mean, std = VECTOR.statistics(spec)
            _write_vec_csv(root / f"{spec.name}.csv", [ids[i] for i in keep], arr[keep].astype(np.float64) * std + mean, width=spec.shape[0])
        else:
            _write_txt_csv(root / f"{spec.name}.csv", [ids[i] for i in keep], [decode_text(arr[i], TEXT.alphabet(spec)) for i in keep])
    return ids


def test_predict_folder_matches_evaluate_on_polymnist_mfeat_and_mnist_text(tmp_path):
    """A demo-like bundle (backbone + DyMo calibration + retrieval recoverer) predicts a folder
    written from the test split (raw CSV values for mfeat, text CSV for MNIST-Text) exactly as
    `dymo evaluate` scores the same samples under the same mask: the same decision for every
    sample, hence the same accuracy. (Tiny training: the accuracies themselves are low, e.g.
    PolyMNIST from 200 tuples stays near chance; what is checked is that the folder path and the
    evaluation path see the same model inputs.)"""
    from dymo.data.mfeat import MFeatConfig, build_mfeat
    from dymo.data.mnist_text import MNISTTextConfig, build_mnist_text
    from dymo.data.polymnist import PolyMNISTConfig, build_polymnist
    from dymo.data.scenarios import parse_scenario
    from dymo.evaluation.pipeline import evaluate_methods

    mfeat = build_mfeat(MFeatConfig(seed=0))
    mfeat.splits = {"train": mfeat["train"].subset(range(300)), "val": mfeat["val"].subset(range(60)), "test": mfeat["test"].subset(range(40))}
    datasets = {
        "polymnist": build_polymnist(PolyMNISTConfig(n_train=200, n_val=40, n_test=40, seed=0)).dataset,
        "mfeat": mfeat,
        "mnist-text": build_mnist_text(MNISTTextConfig(n_train=200, n_val=40, n_test=40)),
    }
    for name, data in datasets.items():
        root = tmp_path / name
        rec = get_recoverer("retrieval", epochs=1, width=4, hidden=16, embed_dim=8)
        clf = _train(data, root, rec, epochs=4, lr=3e-3)
        bundle = clf.save_pretrained(root / "bundle")
        test = data["test"]
        observed = parse_scenario("random:0.5").sample(len(test), len(test.specs), seed=1, names=test.modalities)
        assert not observed.all() and observed.any(axis=1).all()
        ids = _write_split_folder(root / "in", test, observed)
        res, rows = _predict(bundle, root / "in", root / "p.csv")
        assert res.exit_code == 0, (name, res.output)
        assert sorted(r["sample"] for r in rows) == sorted(ids) and all(r["status"] == "ok" for r in rows), name
        by_id = {r["sample"]: r for r in rows}
        rows = [by_id[sid] for sid in ids]  # (the output order is the input order, pinned by case 9)
        metrics, results = evaluate_methods(
            clf.backbone, clf.calibration, clf.recoverer, test, "none", ["dymo"], observed=torch.from_numpy(observed),
            progress=False, keep_results=True,
        )
        evaluated = torch.cat([r.predictions for r in results["dymo"]]).tolist()
        predicted = [clf.class_names.index(r["predicted_class"]) for r in rows]
        assert predicted == evaluated, name
        accuracy = float(np.mean(np.array(predicted) == test.labels))
        assert accuracy == pytest.approx(metrics["dymo"].accuracy, abs=1e-6), name  # metrics hold float32
        probs = torch.cat([r.probabilities for r in results["dymo"]]).numpy()
        np.testing.assert_allclose(_probs(rows, clf.class_names), probs, atol=1e-4, err_msg=name)
