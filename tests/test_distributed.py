"""Chunked scoring over processes: every chunk once, resumable through the score cache, rows in order."""

import pytest
from datasets import Dataset

import tiny
from car_hf import add_car
from car_hf.core.cache import ScoreCache, scoring_key
from car_hf.core.distributed import chunk_bounds, chunk_name, gather_chunks, score_chunks, shard_chunks


def test_shards_of_chunks_cover_every_chunk_once():
    for n_chunks in range(12):
        for world in range(1, 6):
            owned = [c for rank in range(world) for c in shard_chunks(n_chunks, world, rank)]
            assert owned == list(range(n_chunks))
    assert chunk_bounds(15, 4) == [(0, 4), (4, 8), (8, 12), (12, 15)]
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        chunk_bounds(3, 0)


def test_two_ranks_equal_one_and_a_rerun_scores_nothing(tmp_path, tokenizer, causal_lm):
    ds = Dataset.from_list(tiny.sample_rows(5, 2))  # 10 rows: chunks of 4, 4, 2
    scorer = add_car(base_model=(causal_lm, tokenizer), reward_column="judge_preference")
    one = ScoreCache(tmp_path / "one", scoring_key(scorer, ds, chunk_rows=4))
    progress = score_chunks(ds, scorer, one, chunk_rows=4, batch_size=3)
    assert progress.scored == [0, 1, 2] and progress.skipped == []
    single = gather_chunks(one, len(ds), 4)

    two = ScoreCache(tmp_path / "two", scoring_key(scorer, ds, chunk_rows=4))
    ranks = [score_chunks(ds, scorer, two, chunk_rows=4, rank=r, world=2, batch_size=3) for r in range(2)]
    assert [p.chunks for p in ranks] == [[0, 1], [2]]
    both = gather_chunks(two, len(ds), 4)
    assert both["base_loss"][:] == single["base_loss"][:] and both["output"][:] == ds["output"][:]

    again = score_chunks(ds, scorer, one, chunk_rows=4, batch_size=3)
    assert again.scored == [] and again.skipped == [0, 1, 2]


def test_gather_names_a_missing_or_foreign_chunk(tmp_path):
    cache = ScoreCache(tmp_path, {"k": 1})
    cache.save(chunk_name(0, 2), Dataset.from_dict({"x": [1, 2]}), meta={"rows": [0, 2]})
    with pytest.raises(RuntimeError, match=r"chunk 1 \(rows 2-2\) is missing"):
        gather_chunks(cache, 3, 2)
    cache.save(chunk_name(1, 2), Dataset.from_dict({"x": [3, 4]}), meta={"rows": [2, 4]})
    with pytest.raises(RuntimeError, match="holds 2 rows"):
        gather_chunks(cache, 3, 2)
