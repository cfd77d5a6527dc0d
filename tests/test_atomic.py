"""Writers are atomic: a writer SIGKILLed at a random moment leaves the old or the new
complete file, never a truncated or mixed one.

The kill test starts ONE helper process (importing torch costs seconds); for each round it
forks a writer child that rewrites a target over and over, alternating two versions, and
reports each finished write. The test SIGKILLs that child at a random moment inside a write
(delays drawn from a seeded generator), then checks the target: it must load and equal one of
the two versions. Leftover temporary files are allowed, but only under hidden temporary names
beside the target (``.TARGET.*``; safetensors' own ``.tmpXXXXXX``), which no loader reads. Resume-after-kill of training is pinned in
``tests/test_training.py::test_killed_run_resumes_to_same_weights``.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dymo.data.dataset import SplitDataset
from dymo.errors import DataError
from dymo.utils.io import atomic_replace_from, atomic_write, load_tensors, read_json, save_tensors

KILLS = 5  # per writer
MODES = ("tensors", "json", "bundle", "dataset")

# Everything both processes build, deterministically: version 0 ("old") and 1 ("new") of each target.
VERSIONS = r'''
import torch
from dymo.data.synthetic import make_synthetic_splits

N_FLOATS = 3_000_000  # 12 MB


def tensors(v):
    return {"w": torch.arange(N_FLOATS, dtype=torch.float32) * (1 if v == 0 else -1), "v": torch.tensor([v])}


def json_doc(v):
    return {"version": v, "values": [v * 1_000_000 + i for i in range(40_000)]}


def classifier(v):
    from dymo.inference import DyMoClassifier
    from dymo.models.backbone import BackboneConfig, FlexibleBackbone
    from dymo.recovery.registry import get_recoverer
    from dymo.selection import compute_calibration

    data = make_synthetic_splits(60, 10, 10, kinds=("vector", "vector"), vector_dim=8)
    torch.manual_seed(v)
    cfg = BackboneConfig(dim=128, depth=3, heads=4, proj_dim=16)
    backbone = FlexibleBackbone(data.specs, data.num_classes, cfg).eval()
    cal = compute_calibration(backbone, data["train"], progress=False)
    rec = get_recoverer("oracle").fit(data["train"], progress=False)  # no scikit-learn import
    return DyMoClassifier(backbone, cal, rec, data.class_names)


def dataset(v):
    return make_synthetic_splits(3000, 1000, 1000, seed=10 * v, kinds=("vector", "vector"), vector_dim=200)
'''

HELPER = VERSIONS + r'''
import os
import sys
from pathlib import Path

from dymo.utils.io import save_tensors, write_json

torch.set_num_threads(1)
root = Path(sys.argv[1])
cache = {}


def writer(mode):
    out = root / mode  # one folder per writer
    if mode == "tensors":
        return lambda v: save_tensors(out / "w.safetensors", cache["tensors"][v])
    if mode == "json":
        return lambda v: write_json(out / "r.json", cache["json"][v])
    if mode == "bundle":
        return lambda v: cache["bundle"][v].save_pretrained(out / "bundle")
    return lambda v: cache["dataset"][v].save(out / "ds")


def build(mode):
    fn = {"tensors": tensors, "json": json_doc, "bundle": classifier, "dataset": dataset}[mode]
    return [fn(0), fn(1)]


for line in sys.stdin:
    mode = line.strip()
    if mode not in cache:
        cache[mode] = build(mode)  # before forking: the child only writes
    write = writer(mode)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            i = 0
            while True:
                write(i % 2)
                i += 1
                os.write(1, f"wrote {i}\n".encode())
        finally:
            os._exit(0)
    os.write(1, f"child {pid}\n".encode())
    os.waitpid(pid, 0)
    os.write(1, f"dead {pid}\n".encode())
'''

_ns: dict = {}
exec(VERSIONS, _ns)  # the same builders in this process, to compare against


class Helper:
    def __init__(self, root: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HELPER, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env
        )
        self.buf = b""

    def line(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                raise AssertionError("helper process timed out")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"helper process ended (rc {self.proc.wait()})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def expect(self, prefix: str) -> str:
        while True:
            line = self.line()
            if line.startswith(prefix):
                return line

    def kill_round(self, mode: str, rng: random.Random) -> int:
        """Start a writer child, let it finish two writes, SIGKILL it at a random moment of the
        next one(s); return how many writes it completed."""
        self.proc.stdin.write(f"{mode}\n".encode())
        self.proc.stdin.flush()
        pid = int(self.expect("child ").split()[1])
        self.expect("wrote 1")
        t0 = time.monotonic()
        self.expect("wrote 2")
        one_write = time.monotonic() - t0
        time.sleep(rng.uniform(0.0, 1.5 * one_write))
        os.kill(pid, signal.SIGKILL)
        done = 2
        while True:
            line = self.line()
            if line.startswith("wrote "):
                done = int(line.split()[1])
            elif line == f"dead {pid}":
                return done

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _only_hidden_leftovers(root: Path, target: str) -> None:
    """Besides the target only hidden temporaries: ours (``.TARGET.*``) or safetensors' own
    (``.tmpXXXXXX``, it also writes through a temporary file)."""
    for p in root.iterdir():
        ok = p.name == target or p.name.startswith(f".{target}.") or (p.name.startswith(".tmp") and p.is_file())
        assert ok, f"unexpected file {p.name}"
    assert (root / target).exists()


def _which_tensors(root: Path, versions) -> int:
    got = load_tensors(root / "w.safetensors")
    v = int(got["v"])
    assert torch.equal(got["w"], versions[v]["w"])
    return v


def _which_json(root: Path, versions) -> int:
    got = read_json(root / "r.json")
    v = got["version"]
    assert got == versions[v]
    return v


def _which_bundle(root: Path, versions) -> int:
    from dymo.inference import DyMoClassifier

    state = DyMoClassifier.from_pretrained(root / "bundle").backbone.state_dict()
    matches = [v for v in (0, 1) if all(torch.equal(t, versions[v].backbone.state_dict()[k]) for k, t in state.items())]
    assert len(matches) == 1
    return matches[0]


def _which_dataset(root: Path, versions) -> int | None:
    try:
        ds = SplitDataset.load(root / "ds")
    except DataError as e:  # an interrupted re-save reads as "not built", never as a mix
        assert "no meta.json" in str(e)
        return None
    found = set()
    for split, part in ds.splits.items():
        for name in [*ds.modalities, "labels"]:
            arr = np.asarray(part.labels if name == "labels" else part.arrays[name])
            hits = [v for v in (0, 1) if np.array_equal(arr, versions[v][split].labels if name == "labels" else versions[v][split].arrays[name])]
            assert hits, f"{split}/{name} is neither version"
            found.update(hits)
    assert len(found) == 1, "a mix of two versions"
    return found.pop()


CHECKS = {"tensors": ("w.safetensors", _which_tensors, lambda: [_ns["tensors"](0), _ns["tensors"](1)]),
          "json": ("r.json", _which_json, lambda: [_ns["json_doc"](0), _ns["json_doc"](1)]),
          "bundle": ("bundle", _which_bundle, lambda: [_ns["classifier"](0), _ns["classifier"](1)]),
          "dataset": ("ds", _which_dataset, lambda: [_ns["dataset"](0), _ns["dataset"](1)])}


def test_sigkilled_writers_leave_old_or_new_complete_files(tmp_path):
    torch.set_num_threads(1)
    helper = Helper(tmp_path)
    rng = random.Random(0)
    seen: dict[str, list] = {}
    try:
        for mode in MODES:
            target, which, build = CHECKS[mode]
            versions = build()
            for _ in range(KILLS):
                done = helper.kill_round(mode, rng)
                v = which(tmp_path / mode, versions)
                if mode != "dataset" or v is not None:
                    _only_hidden_leftovers(tmp_path / mode, target)
                    # the last finished write, or the one in flight when the rename had landed
                    assert v in ((done - 1) % 2, done % 2)
                seen.setdefault(mode, []).append(v)
    finally:
        helper.close()
    assert set(seen) == set(MODES) and all(len(v) == KILLS for v in seen.values())


# -- deterministic interruption points ------------------------------------------------------


def test_atomic_write_that_fails_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half of the new")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # the temporary file is removed


def test_replace_writer_that_fails_midway_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"w": torch.zeros(3)})

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_replace_from(half_then_fail, path)
    assert torch.equal(load_tensors(path)["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_bundle_killed_between_its_two_renames_still_loads(tmp_path):
    """save_pretrained over an existing bundle renames it to ``.NAME.old`` and then the new
    one into place; killed in between, the old bundle is what loads."""
    from dymo.inference import DyMoClassifier

    old = _ns["classifier"](0)
    path = old.save_pretrained(tmp_path / "bundle")
    os.replace(path, tmp_path / ".bundle.old")  # the state between the two renames
    loaded = DyMoClassifier.from_pretrained(path)
    for k, t in loaded.backbone.state_dict().items():
        assert torch.equal(t, old.backbone.state_dict()[k])
    # the next save puts a bundle in place again
    _ns["classifier"](1).save_pretrained(path)
    assert (path / "bundle.json").exists()


def test_dataset_resave_interrupted_midway_reads_as_not_built(tmp_path, monkeypatch):
    import dymo.data.dataset as dataset_mod

    a = _ns["dataset"](0)
    root = a.save(tmp_path / "ds")
    calls = {"n": 0}
    real = dataset_mod.save_npy

    def dies_after_two(path, array):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        real(path, array)

    monkeypatch.setattr(dataset_mod, "save_npy", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        _ns["dataset"](1).save(root)  # same shapes: a stale meta.json would load a silent mix
    with pytest.raises(DataError, match="no meta.json"):
        SplitDataset.load(root)


def test_atomic_files_get_the_umask_mode_not_mkstemps_0600(tmp_path) -> None:
    """mkstemp creates 0o600 files; what we rename into place must have open()'s mode."""
    import stat

    from dymo.utils.io import save_tensors, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        save_tensors(tmp_path / "w.safetensors", {"t": torch.zeros(2)})
        for name in ("a.json", "w.safetensors"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    finally:
        os.umask(old)


def test_a_folder_is_replaced_in_one_atomic_swap_where_the_system_can(tmp_path, monkeypatch):
    """Over an existing folder, ``staged_dir`` swaps old and new in one step (Linux
    ``renameat2``), so the target never disappears; elsewhere it falls back to two renames."""
    from dymo.utils import artifact

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "x").write_text("b")
    if not artifact.exchange_paths(a, b):
        pytest.skip("no atomic exchange on this system or file system")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
    target = tmp_path / "out"
    target.mkdir()
    (target / "v").write_text("old")
    real_replace = os.replace

    def no_vanishing(src, dst, *args, **kwargs):  # the two-rename fallback must not run
        assert Path(src) != target, "the target was renamed away"
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(artifact.os, "replace", no_vanishing)
    with artifact.staged_dir(target) as tmp:
        (tmp / "v").write_text("new")
    assert (target / "v").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the old one is removed
    # without the exchange, the two renames still give the new folder
    monkeypatch.setattr(artifact.os, "replace", real_replace)
    monkeypatch.setattr(artifact, "exchange_paths", lambda *_: False)
    with artifact.staged_dir(target) as tmp:
        (tmp / "v").write_text("newer")
    assert (target / "v").read_text() == "newer" and not (tmp_path / ".out.old").exists()
