"""Missing-modality scenarios: one definition each, seeded, never an empty sample; mask CSVs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dymo.data.scenarios import (
    Scenario,
    effective_missing_rate,
    load_mask_csv,
    parse_scenario,
    save_mask_csv,
    value_mask,
)
from dymo.errors import ScenarioError


@pytest.mark.parametrize("text", ["none", "random:0.4", "count:2", "fixed:1,3", "fixed:m0,m4", "file:x.csv"])
def test_parse_round_trip(text):
    assert str(parse_scenario(text)) == text
    assert parse_scenario(str(parse_scenario(text))) == parse_scenario(text)


@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("eta", [0.0, 0.2, 0.5, 0.8, 0.95])
def test_effective_rate_formula_matches_enumeration(eta, m):
    expected = 0.0
    for pattern in itertools.product([0, 1], repeat=m):  # 1 = missing before the repair
        k = sum(pattern)
        p = eta**k * (1 - eta) ** (m - k)
        expected += p * (m - 1 if k == m else k) / m
    assert effective_missing_rate(eta, m) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("eta", [0.2, 0.8])
def test_random_empirical_rate_and_never_empty(eta):
    obs = parse_scenario(f"random:{eta}").sample(20_000, 5, seed=0)
    assert obs.shape == (20_000, 5) and obs.dtype == bool
    assert obs.any(axis=1).all()
    rate = 1 - obs.mean()
    assert rate == pytest.approx(effective_missing_rate(eta, 5), abs=0.01)
    # per-modality rates are the same (restoration is uniform over modalities)
    assert np.ptp(1 - obs.mean(axis=0)) < 0.03


def test_random_high_eta_two_modalities():
    obs = parse_scenario("random:0.9").sample(10_000, 2, seed=3)
    assert obs.any(axis=1).all()
    assert 1 - obs.mean() == pytest.approx(0.9 - 0.81 / 2, abs=0.01)
    assert np.ptp(obs.mean(axis=0)) < 0.03


def test_seeded():
    s = parse_scenario("random:0.5")
    assert np.array_equal(s.sample(500, 5, seed=1), s.sample(500, 5, seed=1))
    assert not np.array_equal(s.sample(500, 5, seed=1), s.sample(500, 5, seed=2))
    c = parse_scenario("count:2")
    assert np.array_equal(c.sample(500, 5, seed=1), c.sample(500, 5, seed=1))


def test_random_zero_is_complete():
    assert parse_scenario("random:0").sample(100, 4).all()
    assert parse_scenario("none").sample(100, 4).all()


@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_count_exact_and_uniform(k):
    obs = parse_scenario(f"count:{k}").sample(10_000, 5, seed=0)
    assert ((~obs).sum(axis=1) == k).all()
    patterns, counts = np.unique(obs, axis=0, return_counts=True)
    n_patterns = len(list(itertools.combinations(range(5), k)))
    assert len(patterns) == n_patterns
    assert counts.max() / counts.min() < 1.25 if n_patterns > 1 else True


def test_count_too_large():
    with pytest.raises(ScenarioError, match=r"K must be in 0\.\.4"):
        parse_scenario("count:5").sample(10, 5)
    with pytest.raises(ScenarioError, match="K must be"):
        parse_scenario("count:-1")
    with pytest.raises(ScenarioError, match="integer"):
        parse_scenario("count:two")


def test_fixed_by_index_and_name():
    obs = parse_scenario("fixed:1,3").sample(7, 5)
    assert (obs == np.array([True, False, True, False, True])).all()
    names = ["m0", "m1", "m2", "m3", "m4"]
    assert np.array_equal(parse_scenario("fixed:m1,m3").sample(7, 5, names=names), obs)
    mixed = parse_scenario("fixed:m1, 3").sample(7, 5, names=names)
    assert np.array_equal(mixed, obs)


def test_fixed_errors():
    with pytest.raises(ScenarioError, match="index 5 outside 0..4"):
        parse_scenario("fixed:5").sample(3, 5)
    with pytest.raises(ScenarioError, match="pass the dataset's modality names"):
        parse_scenario("fixed:image").sample(3, 2)
    with pytest.raises(ScenarioError, match="unknown modality 'text'"):
        parse_scenario("fixed:text").sample(3, 2, names=["image", "table"])
    with pytest.raises(ScenarioError, match="every modality would be missing"):
        parse_scenario("fixed:0,1").sample(3, 2)
    with pytest.raises(ScenarioError, match="listed twice"):
        parse_scenario("fixed:1,1")
    with pytest.raises(ScenarioError, match="empty item"):
        parse_scenario("fixed:1,,2")


@pytest.mark.parametrize(
    "text, match",
    [
        ("dropout:0.3", "unknown scenario"),
        ("", "empty scenario"),
        ("random:1.0", r"ETA in \[0, 1\)"),
        ("random:-0.1", r"ETA in \[0, 1\)"),
        ("random:abc", "must be a number"),
        ("random", "needs an argument"),
        ("none:3", "takes no argument"),
    ],
)
def test_parse_errors(text, match):
    with pytest.raises(ScenarioError, match=match):
        parse_scenario(text)


def test_effective_rate_rejects_bad_eta():
    with pytest.raises(ScenarioError):
        effective_missing_rate(1.0, 5)


def test_expected_rates():
    assert parse_scenario("count:2").expected_missing_rate(5) == 0.4
    assert parse_scenario("fixed:0").expected_missing_rate(4) == 0.25
    assert parse_scenario("none").expected_missing_rate(3) == 0.0
    assert parse_scenario("random:0.8").expected_missing_rate(5) == pytest.approx(0.8 - 0.8**5 / 5)


# -- mask CSV files -----------------------------------------------------------------------


def test_csv_round_trip_and_format(tmp_path):
    obs = parse_scenario("random:0.6").sample(50, 5, seed=4)
    path = tmp_path / "mask.csv"
    save_mask_csv(path, obs)
    lines = path.read_text().splitlines()
    assert len(lines) == 50
    first = [int(v) for v in lines[0].split(",")]
    assert first == (~obs[0]).astype(int).tolist()  # 1 = missing, no header
    assert np.array_equal(load_mask_csv(path, 50, 5), obs)
    assert np.array_equal(Scenario("file", path=str(path)).sample(50, 5), obs)
    assert np.array_equal(parse_scenario(f"file:{path}").sample(50, 5), obs)


def test_csv_shape_mismatch(tmp_path):
    path = tmp_path / "mask.csv"
    save_mask_csv(path, parse_scenario("count:1").sample(10, 3))
    with pytest.raises(ScenarioError, match="10 rows, but the dataset has 12 samples"):
        load_mask_csv(path, 12, 3)
    with pytest.raises(ScenarioError, match="3 columns, but the dataset has 5 modalities"):
        parse_scenario(f"file:{path}").sample(10, 5)


@pytest.mark.parametrize(
    "text, match",
    [
        ("0,1\n2,0\n", "line 2, column 1: value '2'"),
        ("0,1\n0,x\n", "line 2, column 2: value 'x'"),
        ("0,1\n1,1\n0,0\n", r"line 2 \(sample 1\): every modality is missing"),
        ("0,1\n0,1,0\n", "line 2 has 3 columns"),
        ("", "empty mask file"),
    ],
)
def test_csv_bad_content(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=match):
        load_mask_csv(path)


def test_csv_missing_file_and_bad_save(tmp_path):
    with pytest.raises(ScenarioError, match="not found"):
        load_mask_csv(tmp_path / "nope.csv")
    with pytest.raises(ScenarioError, match="sample 1: every modality missing"):
        save_mask_csv(tmp_path / "m.csv", np.array([[True, False], [False, False]]))
    assert not (tmp_path / "m.csv").exists()


# -- value-level missingness --------------------------------------------------------------


def test_value_mask():
    mask = value_mask((4000, 20), 0.3, seed=0)
    assert mask.shape == (4000, 20) and mask.dtype == bool
    assert 1 - mask.mean() == pytest.approx(0.3, abs=0.01)
    assert np.array_equal(mask, value_mask((4000, 20), 0.3, seed=0))
    assert not np.array_equal(mask, value_mask((4000, 20), 0.3, seed=1))
    assert value_mask(5, 0.0).all() and not value_mask(5, 1.0).any()
    with pytest.raises(ScenarioError, match="gamma"):
        value_mask((3, 3), 1.5)
