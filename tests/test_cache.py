"""The one score cache: the same everything hits, a changed version / option / model / data misses."""

import json

import pytest
from datasets import Dataset

import tiny
from car_hf import add_car
from car_hf.core import cache as cache_module
from car_hf.core.cache import ScoreCache, data_fingerprint, scoring_key


def test_same_key_hits_and_any_change_misses(tmp_path, monkeypatch, tiny_model_dir):
    ds = Dataset.from_list(tiny.sample_rows(2, 2))
    scorer = add_car(base_model=str(tiny_model_dir), reward_column="judge_preference")
    key = scoring_key(scorer, ds, chunk_rows=4)
    first = ScoreCache(tmp_path, key)
    first.save("chunk-0", ds.select([0, 1]), meta={"rows": [0, 1]})

    again = ScoreCache(tmp_path, scoring_key(add_car(base_model=str(tiny_model_dir), reward_column="judge_preference"),
                                             Dataset.from_list(tiny.sample_rows(2, 2)), chunk_rows=4))
    assert again.folder == first.folder and again.names() == ["chunk-0"]
    data, meta = again.load("chunk-0")
    assert meta == {"rows": [0, 1]} and data["instruction"][:] == ds["instruction"][:2]

    changed_option = ScoreCache(tmp_path, scoring_key(
        add_car(base_model=str(tiny_model_dir), reward_column="judge_preference", max_length=64), ds, chunk_rows=4))
    assert changed_option.names() == [] and "scorer.config.score_max_length" in changed_option.differences()

    changed_data = ScoreCache(tmp_path, scoring_key(scorer, ds.select([1, 0, 2, 3]), chunk_rows=4))
    assert changed_data.names() == [] and "data" in changed_data.differences()

    monkeypatch.setattr(cache_module, "__version__", "999.0")  # an upgrade may compute losses differently
    upgraded = ScoreCache(tmp_path, scoring_key(scorer, ds, chunk_rows=4))
    assert upgraded.names() == [] and upgraded.differences()["car_hf_version"][1] == "999.0"
    assert ScoreCache(tmp_path, key).names() == ["chunk-0"]  # the old key's parts are left alone


def test_a_changed_local_model_misses(tmp_path, tiny_model_dir):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    ds = Dataset.from_list(tiny.sample_rows(1, 2))
    before = scoring_key(add_car(base_model=str(copy), reward_column="judge_preference"), ds)
    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5  # a different model in the same folder
    (copy / "config.json").write_text(json.dumps(config))
    after = scoring_key(add_car(base_model=str(copy), reward_column="judge_preference"), ds)
    assert before["scorer"]["base_model"] != after["scorer"]["base_model"]


def test_parts_are_atomic_and_unfinished_ones_are_cleared(tmp_path):
    cache = ScoreCache(tmp_path, {"k": 1})
    (cache.folder / ".tmp-chunk-1-deadbeef").mkdir()  # left by a killed writer
    (cache.folder / "chunk-2").mkdir()  # a folder without datasets' state.json is not a part
    cache = ScoreCache(tmp_path, {"k": 1})
    assert not (cache.folder / ".tmp-chunk-1-deadbeef").exists()
    assert cache.names() == [] and cache.load("chunk-2") is None
    cache.save("chunk-1", Dataset.from_dict({"x": [1.0]}))
    cache.save("chunk-1", Dataset.from_dict({"x": [2.0]}))  # a rewrite replaces, never stacks
    assert cache.names() == ["chunk-1"] and cache.load("chunk-1")[0]["x"][:] == [2.0]
    assert not list(cache.folder.glob(".tmp-*"))


def test_data_fingerprint_follows_content_not_object(tmp_path):
    rows = tiny.sample_rows(2, 2)
    assert data_fingerprint(Dataset.from_list(rows)) == data_fingerprint(Dataset.from_list(rows))
    assert data_fingerprint(Dataset.from_list(rows)) != data_fingerprint(Dataset.from_list(rows[::-1]))
    Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
    from datasets import load_from_disk

    saved = load_from_disk(tmp_path / "saved")
    assert data_fingerprint(saved) == saved._fingerprint == data_fingerprint(load_from_disk(tmp_path / "saved"))


@pytest.mark.parametrize("device, key", [(None, None), ("cpu", "cpu"), ("cuda:1", "cuda")])
def test_processes_on_different_gpus_share_a_key(device, key):
    from car_hf import CARConfig

    assert CARConfig(score_device=device).cache_key()["score_device"] == key
