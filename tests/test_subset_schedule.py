"""The training subset schedule: stratified (default) vs the paper's random K subsets."""

import pytest
import torch

from dymo.errors import ConfigError
from dymo.training import TrainConfig
from dymo.utils.subsets import masks_to_codes, sample_subsets, stratified_subsets


@pytest.mark.parametrize("m,k", [(5, 5), (3, 2), (2, 3), (1, 1)])
def test_stratified_covers_every_singleton_and_the_full_set_plus_the_random_draw(m, k):
    for seed in range(20):
        subsets = stratified_subsets(m, k, torch.Generator().manual_seed(seed))
        codes = masks_to_codes(subsets).tolist()
        assert len(codes) == len(set(codes)) and all(c > 0 for c in codes)
        fixed = {1 << i for i in range(m)} | {2**m - 1}
        assert set(codes[: len(fixed)]) == fixed  # the fixed part first
        drawn = masks_to_codes(sample_subsets(m, k, torch.Generator().manual_seed(seed))).tolist()
        assert set(codes) == fixed | set(drawn)  # the same random draw as the paper's schedule, plus the fixed part


def test_module_uses_the_configured_schedule():
    from dymo.data.specs import specs_to_list
    from dymo.data.synthetic import make_synthetic_splits
    from dymo.models import BackboneConfig
    from dymo.training.module import BackboneModule

    data = make_synthetic_splits(8, 4, 4)
    bb = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8, encoder_options={"image_channels": [4, 8, 16]}).to_dict()
    specs = specs_to_list(data.specs)
    paper = BackboneModule(specs, data.num_classes, bb, TrainConfig(subset_schedule="random").to_dict())
    strat = BackboneModule(specs, data.num_classes, bb, TrainConfig().to_dict())
    m = paper.backbone.num_modalities
    for step in range(10):
        p, s = masks_to_codes(paper.subsets_for_step(step)).tolist(), masks_to_codes(strat.subsets_for_step(step)).tolist()
        assert len(p) == paper.num_subsets
        assert set(s) == set(p) | {1 << i for i in range(m)} | {2**m - 1}


def test_config_validates_and_round_trips(tmp_path):
    assert TrainConfig().subset_schedule == "stratified"
    cfg = TrainConfig(subset_schedule="random")
    cfg.save(tmp_path / "t.json")
    assert TrainConfig.load(tmp_path / "t.json") == cfg
    with pytest.raises(ConfigError, match="subset_schedule"):
        TrainConfig.from_dict({"subset_schedule": "sizes"})


def test_a_run_from_before_the_option_resumes_as_the_paper_schedule(tmp_path):
    from dymo.data.synthetic import make_synthetic_splits
    from dymo.models import BackboneConfig
    from dymo.training import train_backbone
    from dymo.utils.io import read_json, write_json

    data = make_synthetic_splits(64, 32, 32)
    cfg = BackboneConfig(dim=16, heads=2, depth=1, proj_dim=8, encoder_options={"image_channels": [4, 8, 16]})
    run = tmp_path / "run"
    train_backbone(data, run, cfg, TrainConfig(epochs=1, batch_size=32, subset_schedule="random"), progress=False, evaluate_test=False)
    old = read_json(run / "config.json")
    del old["train"]["subset_schedule"]  # as written before the option existed
    write_json(run / "config.json", old)
    with pytest.raises(ConfigError, match="different 'train'"):
        train_backbone(data, run, cfg, TrainConfig(epochs=2, batch_size=32), progress=False, resume=True, evaluate_test=False)
    train_backbone(data, run, cfg, TrainConfig(epochs=2, batch_size=32, subset_schedule="random"), progress=False, resume=True, evaluate_test=False)
