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


def _png(path: Path, w: int, h: int, depth: int = 8, body: bytes = b"\0" * 64) -> None:
    """An RGB PNG written by hand: ``body`` is the raw scanlines (each led by a filter byte 0)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, depth, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))


def _bomb_png(path: Path, w: int = 20000, h: int = 20000) -> None:
    """A PNG whose header claims w x h pixels (a decompression bomb), a few hundred bytes on disk."""
    _png(path, w, h)


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


# -- the other rules of docs/inputs.md ---------------------------------------------------------

IMG_SPEC = ModalitySpec("img", "image", (3, 8, 8))
GREY_SPEC = ModalitySpec("g", "image", (1, 8, 8))


def _rgb(seed: int = 0, size: tuple[int, int] = (8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", ["png", "bmp", "tiff", "webp", "gif", "ppm", "jpg", "no-extension"])
def test_any_format_pillow_reads_is_read(tmp_path, ext):
    from dymo.data.kinds import IMAGE

    rgb = _rgb()
    path = tmp_path / ("s0" if ext == "no-extension" else f"s0.{ext}")
    fmt = {"jpg": "JPEG", "no-extension": "PNG", "webp": "WEBP"}.get(ext, ext.upper())
    kwargs = {"lossless": True} if ext == "webp" else {}
    Image.fromarray(rgb).save(path, format=fmt, **kwargs)
    x = IMAGE.read_file(path, IMG_SPEC)
    assert x.shape == (3, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255  # lossless except jpg/gif
    np.testing.assert_allclose(x, expected, atol=1e-6)
    if ext not in ("jpg", "gif"):
        np.testing.assert_allclose(x, rgb.transpose(2, 0, 1) / 255, atol=1e-6)


def test_image_modes_follow_the_documented_rule(tmp_path):
    from dymo.data.kinds import IMAGE

    rgb = _rgb(1)
    grey = rgb[..., 0]
    cases = {
        "RGBA": (Image.fromarray(np.dstack([rgb, np.full((8, 8), 7, np.uint8)])), rgb / 255),  # alpha dropped
        "P": (Image.fromarray(rgb).quantize(16), None),
        "L": (Image.fromarray(grey), np.repeat(grey[..., None], 3, 2) / 255),  # grey repeated to 3 channels
        "LA": (Image.fromarray(np.dstack([grey, grey])), np.repeat(grey[..., None], 3, 2) / 255),
        "1": (Image.fromarray(grey > 127), np.repeat((grey > 127)[..., None], 3, 2) * 1.0),
        "I;16": (Image.fromarray(grey.astype(np.uint16) * 257), np.repeat(grey[..., None], 3, 2) / 255),
        "I": (Image.fromarray(grey.astype(np.int32) * 257), np.repeat(grey[..., None], 3, 2) / 255),
        "F": (Image.fromarray(grey.astype(np.float32) / 255), np.repeat(grey[..., None], 3, 2) / 255),
    }
    for mode, (im, expected) in cases.items():
        assert im.mode == mode
        path = tmp_path / f"{mode.replace(';', '_')}.{'tiff' if mode in ('I', 'F', 'LA') else 'png'}"
        im.save(path)
        x = IMAGE.read_file(path, IMG_SPEC)
        if expected is None:  # a palette image: its palette colours
            expected = np.asarray(im.convert("RGB")) / 255
        np.testing.assert_allclose(x, np.asarray(expected, dtype=np.float64).transpose(2, 0, 1), atol=1e-6, err_msg=mode)
    # Pillow reads a 16-bit colour PNG as 8-bit RGB (the high byte)
    rgb16 = (np.arange(8 * 8 * 3).reshape(8, 8, 3) * 900).astype(">u2")
    raw = b"".join(b"\0" + rgb16[r].tobytes() for r in range(8))
    _png(tmp_path / "rgb16.png", 8, 8, depth=16, body=raw)
    np.testing.assert_allclose(IMAGE.read_file(tmp_path / "rgb16.png", IMG_SPEC), (rgb16 >> 8).transpose(2, 0, 1) / 255, atol=1e-6)
    # colour -> one channel: the luminance 0.299 R + 0.587 G + 0.114 B
    Image.fromarray(rgb).save(tmp_path / "c.png")
    lum = (rgb / 255) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(IMAGE.read_file(tmp_path / "c.png", GREY_SPEC)[0], lum, atol=1e-6)


def test_images_refused_per_file_with_the_reason(tmp_path):
    from dymo.data.kinds import IMAGE

    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(tmp_path / "big.tiff")
    Image.fromarray(np.full((8, 8), 3.5, np.float32)).save(tmp_path / "f.tiff")
    frames = [Image.fromarray(_rgb(s)) for s in range(2)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), mode="RGBA").save(tmp_path / "four.png")
    (tmp_path / "text.png").write_text("not an image")
    four = ModalitySpec("q", "image", (2, 8, 8))
    for name, spec, reason in [
        ("big.tiff", IMG_SPEC, "values 70000..70000 (only 0..65535"),
        ("f.tiff", IMG_SPEC, "float image must hold values in [0, 1]"),
        ("anim.gif", IMG_SPEC, "multi-frame image (2 frames)"),
        ("four.png", four, "an image of 3 channel(s) for modality 'q' of 2"),
        ("text.png", IMG_SPEC, "unreadable image (UnidentifiedImageError"),
    ]:
        with pytest.raises(DataError) as e:
            IMAGE.read_file(tmp_path / name, spec)
        assert str(e.value).startswith(str(tmp_path / name)) and reason in str(e.value), str(e.value)


def test_image_size_and_exif_orientation(tmp_path):
    from dymo.data.kinds import IMAGE

    big = _rgb(2, (16, 32))  # H=16, W=32
    Image.fromarray(big).save(tmp_path / "big.png")
    x = IMAGE.read_file(tmp_path / "big.png", IMG_SPEC)
    assert x.shape == (3, 8, 8)
    ref = np.stack([np.asarray(Image.fromarray((big[..., c] / 255).astype(np.float32)).resize((8, 8), Image.BILINEAR)) for c in range(3)])
    np.testing.assert_allclose(x, np.clip(ref, 0, 1), atol=1e-6)
    # EXIF orientation 6 ("rotate 90 CW to view") is applied
    tall = _rgb(3, (8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(tall).save(tmp_path / "rot.png", exif=exif)
    np.testing.assert_allclose(IMAGE.read_file(tmp_path / "rot.png", IMG_SPEC), np.rot90(tall, -1).transpose(2, 0, 1) / 255, atol=1e-6)


def test_image_folder_hidden_files_ambiguous_ids_and_natural_order(mixed, tmp_path):
    data, _, _, bundle = mixed
    ids = ["a10", "a2", "a1", "B7"]
    _save_images(tmp_path / "in" / "img", data["test"], ids, range(4))
    Image.fromarray(_rgb()).save(tmp_path / "in" / "img" / "a2.jpg")  # a2 twice: ambiguous
    Image.fromarray(_rgb()).save(tmp_path / "in" / "img" / "b7.png")  # b7 / B7 differ only in case
    (tmp_path / "in" / "img" / ".DS_Store").write_bytes(b"\0\0")
    (tmp_path / "in" / "img" / "thumbs").mkdir()
    (tmp_path / "in" / "README.txt").write_text("my samples")
    res, rows = _predict(bundle, tmp_path / "in", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    assert [r["sample"] for r in rows] == ["a1", "a2", "a10", "B7", "b7"]
    status = {r["sample"]: (r["status"], r["error"]) for r in rows}
    assert status["a1"][0] == status["a10"][0] == "ok"
    assert status["a2"][0] == "error" and "'a2' is ambiguous, 2 files: a2.jpg, a2.png" in status["a2"][1]
    assert status["B7"][0] == status["b7"][0] == "error" and "differ only in case" in status["b7"][1]
    out = " ".join(res.output.split())
    assert "hidden file(s) not read: .DS_Store" in out and "sub-folder(s) not read: thumbs" in out
    assert "not read (names no modality): README.txt" in out
    assert "modality 'vec': no vec.csv, missing for every sample" in out


def test_whole_file_problems_fail_the_run_before_any_prediction(mixed, tmp_path):
    data, raw, _, bundle = mixed
    cases = {
        "latin-1": ("vec.csv", "id,a,b,c,d,e\nv0,1,2,3,4,5\nv\xe9,1,2,3,4,5\n".encode("latin-1"), ["vec.csv: line 3 is not UTF-8"]),
        "width": ("vec.csv", b"id,a,b,c\nv0,1,2,3\n", ["vec.csv: the header has 3 columns after 'id', modality 'vec' needs 5"]),
        "text-width": ("txt.csv", b"id,text,extra\nt0,one,x\n", ["txt.csv: the header has 2 columns after 'id'"]),
        "empty-id": ("vec.csv", b"id,a,b,c,d,e\n,1,2,3,4,5\n", ["vec.csv: line 2: empty sample id"]),
        "unknown-csv": ("audio.csv", b"id,x\n", ["file(s) ['audio.csv'] name no modality"]),
        "image-as-csv": ("img.csv", b"id,x\n", ["img.csv: modality 'img' is a image modality; it needs a sub-folder img/"]),
    }
    for case, (name, content, fragments) in cases.items():
        folder = tmp_path / case
        folder.mkdir()
        (folder / name).write_bytes(content)
        res, _ = _predict(bundle, folder, tmp_path / f"{case}.csv")
        _cli_error(res, *fragments)
        assert not (tmp_path / f"{case}.csv").exists(), case
    # UTF-8 with a byte-order mark is fine
    (tmp_path / "bom").mkdir()
    _write_vec_csv(tmp_path / "bom" / "vec.csv", ["v0"], raw["vec"][:1])
    (tmp_path / "bom" / "vec.csv").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "bom" / "vec.csv").read_bytes())
    res, rows = _predict(bundle, tmp_path / "bom", tmp_path / "bom.csv")
    assert res.exit_code == 0 and rows[0]["status"] == "ok", res.output


def test_bad_rows_fail_their_sample_only(mixed, tmp_path):
    data, raw, _, bundle = mixed
    rows_in = [list(r) for r in raw["vec"][:5]]
    rows_in[1][3] = "abc"
    rows_in[2][0] = "inf"
    rows_in[3] = [""] * 5  # nothing: vec missing for v3, which then has no modality
    rows_in[4][1] = " 7.5 "  # spaces around a number are fine
    (tmp_path / "in").mkdir()
    _write_vec_csv(tmp_path / "in" / "vec.csv", [f"v{i}" for i in range(5)], rows_in)
    _write_txt_csv(tmp_path / "in" / "txt.csv", ["t0", "t1", "t2", "t3"], ["  zero  ", "Zero", "", "one, two"])
    res, rows = _predict(bundle, tmp_path / "in", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    got = {r["sample"]: r for r in rows}
    assert "vec.csv, sample 'v1' (line 3): column 5: 'abc' is not a number" in got["v1"]["error"]
    assert "vec.csv, sample 'v2' (line 4): column 2: infinite value 'inf'" in got["v2"]["error"]
    assert got["v3"]["error"] == "no observed modality: dymo needs at least one"
    assert got["v0"]["status"] == got["v4"]["status"] == got["t0"]["status"] == got["t3"]["status"] == "ok"
    assert "txt.csv, sample 't1' (line 3): text modality 'txt': character(s) 'Z' are outside the model's alphabet" in got["t1"]["error"]
    assert got["t2"]["error"] == "no observed modality: dymo needs at least one"  # an empty text cell = missing


def test_text_is_encoded_as_the_dataset_builders_do(mixed):
    from dymo.data.kinds import TEXT

    spec = mixed[0].specs[2]
    texts = ["  seven ", "one", "a much longer text than eight", None]
    ids, errors = TEXT.encode(texts, spec)
    assert not errors
    np.testing.assert_array_equal(ids[:3].numpy(), encode_text(texts[:3], 8))  # cut to 8, padded with 0
    assert ids[3].tolist() == [0] * 8 and ids[0].tolist()[:3] == [70, 70, 19]  # ' ' is id 70, 's' id 19
    custom = ModalitySpec("t", "text", (4,), vocab_size=4, extra={"alphabet": "abc"})
    assert TEXT.encode(["cab"], custom)[0].tolist() == [[3, 1, 2, 0]]
    with pytest.raises(DataError, match="stores no alphabet"):
        TEXT.encode(["x"], ModalitySpec("t", "text", (4,), vocab_size=4))


def test_api_text_as_strings_and_token_range(mixed):
    data, _, clf, _ = mixed
    batch = data["test"].batch(range(6))
    strings = [decode_text(t) for t in data["test"].arrays["txt"][:6]]
    as_text = clf.predict(dataclasses.replace(batch, data={**batch.data, "txt": strings}))
    as_ids = clf.predict(batch)
    assert as_text.classes == as_ids.classes
    torch.testing.assert_close(as_text.probabilities, as_ids.probabilities, atol=ATOL, rtol=0)
    bad = batch.data["txt"].clone()
    bad[2, 0] = 72
    with pytest.raises(DataError, match=r"sample 2: text modality 'txt' holds token id 72, outside \[0, 72\)"):
        clf.predict(dataclasses.replace(batch, data={**batch.data, "txt": bad}))
    with pytest.raises(DataError, match="sample 1: text modality 'txt': character"):
        clf.predict(dataclasses.replace(batch, data={**batch.data, "txt": ["one", "ONE", "two", "a", "b", "c"]}))


def test_api_image_layout_hint_and_non_finite(mixed):
    data, _, clf, _ = mixed
    batch = data["test"].batch(range(4))
    hwc = torch.zeros(4, 8, 8, 3)
    with pytest.raises(DataError, match=r"tensor shape \(4, 8, 8, 3\), expected \(4, 3, 8, 8\) \(this looks like \(B, H, W, C\)"):
        clf.predict(dataclasses.replace(batch, data={**batch.data, "img": hwc}))
    x = batch.data["img"].clone()
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="sample 1: observed modality 'img' holds NaN or Inf"):
        clf.predict(dataclasses.replace(batch, data={**batch.data, "img": x}))
    with pytest.raises(DataError, match="expected a torch tensor or numpy array, got list"):
        clf.predict(dataclasses.replace(batch, data={**batch.data, "vec": [[0.0] * 5] * 4}))


def test_categorical_codes_are_checked():
    from dymo.data.kinds import VECTOR

    spec = ModalitySpec("tab", "vector", (3,), extra={"field_lengths": [1, 4, 1]})
    ok = torch.tensor([[0.5, 3.0, -1.0], [0.1, float("nan"), 2.0]])
    x, holes = VECTOR.prepare(ok, spec, torch.ones(2, dtype=torch.bool), holes_ok=True)
    assert holes.tolist() == [False, True]
    for bad in (4.0, 1.5, -1.0):
        with pytest.raises(DataError, match=rf"sample 1: modality 'tab' column 1 holds {bad:g}, not a category code in 0..3"):
            VECTOR.prepare(torch.tensor([[0.0, 1.0, 0.0], [0.0, bad, 0.0]]), spec, torch.ones(2, dtype=torch.bool))


def test_options_are_checked_before_any_work(mixed, tmp_path):
    _, raw, _, bundle = mixed
    (tmp_path / "in").mkdir()
    _write_vec_csv(tmp_path / "in" / "vec.csv", ["v0"], raw["vec"][:1])
    for args, fragment in [
        (["--out", str(tmp_path / "p.txt")], "must end in .csv or .json"),
        (["--inputs", "scaled"], "--inputs must be 'raw' or 'model', got 'scaled'"),
        (["--method", "best"], "'best' is not one of"),
    ]:
        res = runner.invoke(app, ["predict", str(bundle), str(tmp_path / "in"), "--out", str(tmp_path / "p.csv"), *args])
        _cli_error(res, fragment)
    assert not (tmp_path / "p.csv").exists()


def test_bundle_states_what_it_expects(mixed):
    _, _, clf, bundle = mixed
    meta = json.loads((bundle / "bundle.json").read_text())
    inputs = meta["inputs"]
    assert inputs["default"] == "raw" and inputs == clf.expected_inputs()
    mods = inputs["modalities"]
    assert mods["img"]["channels"] == 3 and mods["img"]["size"] == [8, 8]
    assert "standardises them with the spec's mean/std" in mods["vec"]["values"]
    assert mods["txt"]["alphabet"] == "mopoe" and mods["txt"]["length"] == 8
    assert DyMoClassifier.from_pretrained(bundle).expected_inputs() == inputs


def test_text_csv_for_a_model_without_alphabet_fails_the_run(tmp_path):
    from dymo.inference.folder import InputFolder

    specs = [ModalitySpec("v", "vector", (2,)), ModalitySpec("t", "text", (4,), vocab_size=9)]
    _write_vec_csv(tmp_path / "v.csv", ["a"], [[1.0, 2.0]], width=2)
    folder = InputFolder.scan(tmp_path, specs)  # no t.csv: fine, t is missing
    batch, errors = folder.load(folder.ids)
    assert not errors and batch.observed.tolist() == [[True, False]]
    _write_txt_csv(tmp_path / "t.csv", ["a"], ["abc"])
    with pytest.raises(DataError, match="text modality 't': the spec stores no alphabet"):
        InputFolder.scan(tmp_path, specs)
