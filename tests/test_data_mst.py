"""MNIST-SVHN-Text read from the published MoPoE / DyMo layout (a tiny fixture written here)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from dymo.data.mst import (
    DIGIT_NAMES,
    MOPOE_ALPHABET,
    MSTConfig,
    decode_text,
    digit_texts,
    encode_text,
    read_alphabet,
    read_mst,
)
from dymo.data.registry import build_dataset, load_or_build
from dymo.errors import ConfigError, DataError

N_MNIST = {"train": 40, "test": 30}
N_SVHN = {"train": 50, "test": 25}


def _digits(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % 10)


def _pairs(m_lab: np.ndarray, s_lab: np.ndarray, mult: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """mmvae's rand_match_on_idx: per class, ``mult`` random matchings of equal-label rows."""
    rng = np.random.default_rng(seed)
    mi, si = [], []
    for c in range(10):
        a, b = np.nonzero(m_lab == c)[0], np.nonzero(s_lab == c)[0]
        n = min(len(a), len(b))
        for _ in range(mult):
            mi.append(rng.permutation(a[:n]))
            si.append(rng.permutation(b[:n]))
    return np.concatenate(mi), np.concatenate(si)


def write_mst(root: Path, val: bool = False, raw_mnist: bool = False, idx_in_root: bool = False) -> dict:
    """The layout of siyi-wind/DyMo datasets/MSTDataset.py. Pixel values encode (row, label) so
    that the test can tell which source row a pair's image came from."""
    truth = {}
    splits = {"train": "train", "test": "test", **({"val": "test"} if val else {})}
    for split, like in splits.items():
        m_lab = _digits(N_MNIST[like], 1 + len(split))
        s_lab = _digits(N_SVHN[like], 7 + len(split))
        m_img = np.zeros((len(m_lab), 28, 28), dtype=np.uint8)
        m_img[:, 0, 0] = np.arange(len(m_lab))  # row id
        m_img[:, 1, 1] = m_lab * 20
        s_x = np.zeros((32, 32, 3, len(s_lab)), dtype=np.uint8)
        s_x[0, 0, 0, :] = np.arange(len(s_lab))
        s_x[1, 1, 2, :] = s_lab * 20
        s_y = np.where(s_lab == 0, 10, s_lab).reshape(-1, 1)  # SVHN writes digit 0 as 10
        pt_name = {"train": "training.pt", "test": "test.pt", "val": "val.pt"}[split]
        (root / "MNIST" / "processed").mkdir(parents=True, exist_ok=True)
        if raw_mnist and split != "val":
            raw = root / "MNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            prefix = "train" if split == "train" else "t10k"
            header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in m_img.shape)
            with gzip.open(raw / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
                f.write(header + m_img.tobytes())
            (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
                bytes([0, 0, 8, 1]) + len(m_lab).to_bytes(4, "big") + m_lab.astype(np.uint8).tobytes()
            )
        else:
            torch.save((torch.from_numpy(m_img), torch.from_numpy(m_lab.astype(np.int64))), root / "MNIST" / "processed" / pt_name)
        (root / "SVHN").mkdir(exist_ok=True)
        scipy.io.savemat(root / "SVHN" / f"{split}_32x32.mat", {"X": s_x, "y": s_y})
        mi, si = _pairs(m_lab, s_lab, 3, seed=len(split))
        folder = root if idx_in_root else root / "MNIST_SVHN" / "processed"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(torch.from_numpy(mi), folder / f"{split}-ms-mnist-idx.pt")
        torch.save(torch.from_numpy(si), folder / f"{split}-ms-svhn-idx.pt")
        truth[split] = (mi, si, m_lab, s_lab)
    return truth


@pytest.fixture
def mst_root(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "MNIST_SVHN_TEXT"
    return root, write_mst(root)


def test_text_encoding_follows_mopoe():
    ids = encode_text(["  three ", "ab\u00e9"], 8)
    assert ids.dtype == np.int64 and ids.shape == (2, 8)
    # MoPoE's char2Index(alphabet, c) = alphabet.find(c); ours is that + 1, 0 = padding/unknown.
    assert ids[0, 0] == MOPOE_ALPHABET.find(" ") + 1 == 70
    assert ids[0, 2] == MOPOE_ALPHABET.find("t") + 1
    assert list(ids[1]) == [1, 2, 0, 0, 0, 0, 0, 0]  # 'é' is outside the alphabet -> 0
    assert decode_text(ids[0]) == "  three "
    assert encode_text(["-"], 1)[0, 0] == 37  # '-' appears twice; the first occurrence wins
    assert len(MOPOE_ALPHABET) == 71


def test_digit_texts_use_mopoes_offset_rule():
    labels = np.repeat(np.arange(10), 200)
    texts = digit_texts(labels, 8, seed=0)
    starts = {d: set() for d in range(10)}
    for d, t in zip(labels, texts, strict=True):
        assert len(t) == 8 and t.strip() == DIGIT_NAMES[d]
        starts[d].add(t.index(DIGIT_NAMES[d]))
    # random.randint(0, len_seq - 1 - len(name)): 'three' starts at 0..2, 'one' at 0..4
    assert starts[3] == {0, 1, 2} and starts[1] == {0, 1, 2, 3, 4}
    assert digit_texts(labels, 8, seed=0) == texts and digit_texts(labels, 8, seed=1) != texts


def test_read_alphabet(tmp_path: Path):
    import json

    p = tmp_path / "alphabet.json"
    p.write_text(json.dumps(list(MOPOE_ALPHABET)))
    assert read_alphabet(p) == MOPOE_ALPHABET
    p.write_text('["ab"]')
    with pytest.raises(DataError, match="one-character"):
        read_alphabet(p)


def test_reads_pairs_images_and_text(mst_root):
    root, truth = mst_root
    ds = read_mst(MSTConfig(source=str(root), seed=3))
    assert ds.modalities == ("mnist", "svhn", "text")
    assert [s.shape for s in ds.specs] == [(1, 28, 28), (3, 32, 32), (8,)]
    assert ds.specs[2].vocab_size == 72
    mi, si, m_lab, _ = truth["train"]
    train = ds["train"]
    assert len(train) == len(mi)
    # pair p = MNIST row mi[p] + SVHN row si[p], label = their digit
    assert np.array_equal(train.arrays["mnist"][:, 0, 0, 0], mi)
    assert np.array_equal(train.arrays["svhn"][:, 0, 0, 0], si)
    assert np.array_equal(train.labels, m_lab[mi])
    assert np.array_equal(train.arrays["svhn"][:, 1, 1, 2] // 20, train.labels)  # SVHN's 10 became 0
    for row in range(0, len(train), 7):
        assert decode_text(train.arrays["text"][row]).strip() == DIGIT_NAMES[train.labels[row]]
    # no val files: a seeded 10% of the test pairs became val, disjoint from test
    n_test = len(truth["test"][0])
    assert len(ds["val"]) == round(0.1 * n_test) and len(ds["val"]) + len(ds["test"]) == n_test
    batch = train.batch([0, 1, 2])
    batch.validate(ds.specs, ds.num_classes)
    assert batch.data["mnist"].shape == (3, 1, 28, 28) and batch.data["text"].dtype == torch.long
    again = read_mst(MSTConfig(source=str(root), seed=3))
    assert np.array_equal(again["train"].arrays["text"], train.arrays["text"])
    other = read_mst(MSTConfig(source=str(root), seed=4))
    assert not np.array_equal(other["train"].arrays["text"], train.arrays["text"])


def test_val_files_caps_and_other_locations(tmp_path: Path):
    root = tmp_path / "a"
    truth = write_mst(root, val=True, raw_mnist=True, idx_in_root=True)
    ds = read_mst(MSTConfig(source=str(root), n_train=17))
    assert len(ds["val"]) == len(truth["val"][0]) and len(ds["test"]) == len(truth["test"][0])
    assert len(ds["train"]) == 17
    mi, _, m_lab, _ = truth["train"]
    rows = ds["train"].arrays["mnist"][:, 0, 0, 0]  # raw idx-ubyte MNIST was read
    assert set(rows) <= set(mi) and np.array_equal(ds["train"].labels, m_lab[rows])


def test_bad_layouts_name_the_file(mst_root, tmp_path: Path):
    root, truth = mst_root
    with pytest.raises(ConfigError, match="source"):
        read_mst(MSTConfig())
    with pytest.raises(DataError, match="not found"):
        read_mst(MSTConfig(source=str(tmp_path / "nope")))
    folder = root / "MNIST_SVHN" / "processed"
    mi, si, m_lab, s_lab = truth["train"]
    bad = si.copy()
    p = 5
    bad[p] = int(np.nonzero(s_lab != m_lab[mi[p]])[0][0])  # an SVHN row of another digit
    torch.save(torch.from_numpy(bad), folder / "train-ms-svhn-idx.pt")
    with pytest.raises(DataError, match=rf"pair {p} joins MNIST row {mi[p]} \(digit {m_lab[mi[p]]}\)"):
        read_mst(MSTConfig(source=str(root)))
    bad[p] = 10_000
    torch.save(torch.from_numpy(bad), folder / "train-ms-svhn-idx.pt")
    with pytest.raises(DataError, match=rf"pair {p} points to SVHN row 10000"):
        read_mst(MSTConfig(source=str(root)))
    torch.save(bad.tolist()[:5], folder / "train-ms-svhn-idx.pt")
    with pytest.raises(DataError, match="5 pairs|has 5"):
        read_mst(MSTConfig(source=str(root)))
    torch.save(np.arange(3), folder / "train-ms-svhn-idx.pt")  # a numpy pickle: refused, not unpickled
    with pytest.raises(DataError, match="weights_only"):
        read_mst(MSTConfig(source=str(root)))
    (folder / "train-ms-svhn-idx.pt").unlink()
    with pytest.raises(DataError, match="train-ms-mnist-idx.pt"):
        read_mst(MSTConfig(source=str(root)))


def test_registry_build_and_load(mst_root, tmp_path: Path):
    root, _ = mst_root
    data = tmp_path / "data"
    with pytest.raises(DataError, match="build_dataset"):
        load_or_build("mst", root=data)
    built = build_dataset("mst", root=data, source=str(root))
    loaded = load_or_build("mst", root=data)  # no options: whatever finished build is there
    assert loaded.build_info["config"]["source"] == str(root)
    for split in ("train", "val", "test"):
        for name in loaded.modalities:
            assert np.array_equal(np.asarray(loaded[split].arrays[name]), built[split].arrays[name])
    with pytest.raises(ConfigError, match="source"):
        build_dataset("mst", root=data)


def test_cli_builds_mst_from_source(mst_root, tmp_path: Path):
    from typer.testing import CliRunner

    from dymo.cli.main import app

    root, _ = mst_root
    res = CliRunner().invoke(app, ["data", "build", "mst", "--source", str(root), "--root", str(tmp_path / "d"), "--set", "n_train=6"])
    assert res.exit_code == 0, res.output
    ds = load_or_build("mst", root=tmp_path / "d")
    assert len(ds["train"]) == 6 and ds.build_info["config"]["source"] == str(root.resolve())
