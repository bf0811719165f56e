"""Cache parts are verified by content: a part whose data file was swapped for another part's, truncated, emptied
or edited, or whose record is broken, is never reused — it is computed again with a warning naming it (the result
equals an uninterrupted run's), or, where the caller cannot compute it, refused with one line naming its folder
and what to do. Here: the mechanism, score chunks and recipes/generate.py's chunks; the other cache users (trial,
adaptive rounds, training scores, pilot): test_cache_jobs.py."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset, load_from_disk

import tiny
from car_hf.core.cache import META_FILE, ScoreCache, rows_digest
from car_hf.core.errors import CacheError

DAMAGES = ["swap", "truncate", "empty", "edit", "record"]


def arrow_file(part: Path) -> Path:
    (data,) = part.glob("data-*.arrow")
    return data


def damage(part: Path, how: str, other: Path | None = None, column: str | None = None) -> None:
    """Damage a saved part the way a user or a faulty disk might. ``swap``: ``other``'s (valid) data file copied in;
    ``edit``: the first row's ``column`` (a string) changed in place, the file still valid; ``record``: the part's
    JSON record cut in half."""
    data = arrow_file(part)
    if how == "swap":
        shutil.copyfile(arrow_file(other), data)
    elif how == "truncate":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif how == "empty":
        data.write_bytes(b"")
    elif how == "edit":
        value = load_from_disk(str(part))[0][column].encode()
        edited = value[:-1] + (b"x" if value[-1:] != b"x" else b"y")
        assert data.read_bytes().count(value) >= 1
        data.write_bytes(data.read_bytes().replace(value, edited, 1))
        assert load_from_disk(str(part))[0][column].encode() == edited  # still a valid file, with another value
    elif how == "record":
        record = part / META_FILE
        record.write_text(record.read_text()[: len(record.read_text()) // 2])
    else:
        raise ValueError(how)


def warned(caplog, part: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and f"cache part {part} is not reused" in r.getMessage()]


# ------------------------------------------------------------------------------------------------ ScoreCache itself
def two_parts(tmp_path):
    cache = ScoreCache(tmp_path / "cache", {"k": 1})
    first, second = (Dataset.from_dict({"prompt": [f"question {i}", f"question {i + 1}"], "x": [i, i + 1]})
                     for i in (0, 2))
    cache.save("part-1", first, meta={"rows": [0, 2]}, inputs=rows_digest(first, [0, 1]))
    cache.save("part-2", second, meta={"rows": [2, 4]}, inputs=rows_digest(second, [2, 3]))
    return cache, first


@pytest.mark.parametrize("how", [*DAMAGES, "folder", "other key", "edited meta", "no record"])
def test_a_damaged_part_is_never_reused_and_a_refusal_is_one_line(tmp_path, caplog, how):
    cache, first = two_parts(tmp_path)
    inputs = rows_digest(first, [0, 1])
    part = cache.folder / "part-1"
    assert cache.load("part-1", inputs=inputs)[0].to_list() == first.to_list()
    if how == "folder":  # the whole part (data and record) of another name copied over
        shutil.rmtree(part)
        shutil.copytree(cache.folder / "part-2", part)
    elif how == "other key":  # the same part of another key (e.g. another teacher's) copied in
        other = ScoreCache(tmp_path / "cache", {"k": 2})
        other.save("part-1", first, meta={"rows": [0, 2]}, inputs=inputs)
        shutil.rmtree(part)
        shutil.copytree(other.folder / "part-1", part)
    elif how == "edited meta":
        record = json.loads((part / META_FILE).read_text())
        (part / META_FILE).write_text(json.dumps(record | {"rows": [2, 4]}))
    elif how == "no record":  # a part of an older car_hf
        (part / META_FILE).write_text(json.dumps({"rows": [0, 2]}))
    else:
        damage(part, how, cache.folder / "part-2", column="prompt")
    with caplog.at_level(logging.WARNING, logger="car_hf.core.cache"):
        assert cache.load("part-1", inputs=inputs) is None
    (message,) = warned(caplog, part)
    assert message.endswith("computing it again")
    with pytest.raises(CacheError) as refused:
        cache.require("part-1", inputs=inputs)
    line = str(refused.value)
    assert "\n" not in line and line.startswith(f"cache part {part} cannot be used: ")
    assert line.endswith("rerun the same command to compute it again (or delete that folder)")
    reason = {"swap": "data file data-00000-of-00001.arrow is not the one it was saved with",
              "truncate": "is not the one it was saved with (truncated, emptied, edited or replaced)",
              "empty": "is not the one it was saved with", "edit": "is not the one it was saved with",
              "record": f"its {META_FILE} is unreadable (JSONDecodeError", "folder": "it was saved as part 'part-2'",
              "other key": "under key", "edited meta": f"its {META_FILE} was edited after it was saved",
              "no record": "holds no integrity record"}[how]
    assert reason in message and reason in line
    # Saving it again (what the callers do) makes it whole.
    cache.save("part-1", first, meta={"rows": [0, 2]}, inputs=inputs)
    assert cache.load("part-1", inputs=inputs)[1] == {"rows": [0, 2]}


def test_a_part_computed_from_other_inputs_is_not_reused(tmp_path, caplog):
    cache, first = two_parts(tmp_path)
    with caplog.at_level(logging.WARNING, logger="car_hf.core.cache"):
        assert cache.load("part-1", inputs=rows_digest(first, [2, 3])) is None  # the same rows at other positions
        assert cache.load("part-1", inputs=rows_digest(first.select([1, 0]), [0, 1])) is None
        assert cache.load("part-1", inputs=lambda meta: rows_digest(first, range(*meta["rows"]))) is not None
    assert len(warned(caplog, cache.folder / "part-1")) == 2
    assert "computed from other inputs" in warned(caplog, cache.folder / "part-1")[0]
    cache.save("dict", first, inputs={"model": "a", "heldout": "h"})
    with caplog.at_level(logging.WARNING, logger="car_hf.core.cache"):
        assert cache.load("dict", inputs={"model": "b", "heldout": "h"}) is None
    assert "differing in model" in warned(caplog, cache.folder / "dict")[0]


@pytest.mark.parametrize("how", ["truncate", "replace", "remove"])
def test_an_attached_folder_is_verified_too(tmp_path, caplog, how):
    cache = ScoreCache(tmp_path / "cache", {"k": 1})
    model = cache.folder / "model-a"
    model.mkdir()
    (model / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (model / "checkpoint-1").mkdir()  # subfolders (checkpoints, merged/) do not count
    cache.save("a", Dataset.from_dict({"x": [1]}), inputs="records", attached=[model])
    (model / "checkpoint-1" / "optimizer.pt").write_bytes(b"later")
    assert cache.load("a", inputs="records") is not None
    if how == "truncate":
        (model / "weights.bin").write_bytes(bytes(range(256)))
    elif how == "replace":
        (model / "weights.bin").write_bytes(bytes(reversed(range(256))) * 4)
    else:
        (model / "weights.bin").unlink()
    with caplog.at_level(logging.WARNING, logger="car_hf.core.cache"):
        assert cache.load("a", inputs="records") is None
    assert "attached folder file weights.bin" in warned(caplog, cache.folder / "a")[0]


def test_rows_digest_is_content_and_positions_not_layout(tmp_path):
    rows = tiny.sample_rows(3, 2)
    ds = Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "saved"))
    pd.DataFrame(rows).to_json(tmp_path / "rows.jsonl", orient="records", lines=True)
    from datasets import load_dataset

    from_json = load_dataset("json", data_files=str(tmp_path / "rows.jsonl"), split="train")
    assert rows_digest(ds) == rows_digest(load_from_disk(str(tmp_path / "saved"))) == rows_digest(from_json)
    assert rows_digest(ds.select(range(2, 4)), range(2, 4)) == rows_digest(Dataset.from_list(rows[2:4]), [2, 3])
    assert rows_digest(ds.select([1, 0])) != rows_digest(ds.select([0, 1]))
    assert rows_digest(ds, range(1, 7)) != rows_digest(ds)
    changed = [dict(r) for r in rows]
    changed[3]["output"] += "!"
    assert rows_digest(Dataset.from_list(changed)) != rows_digest(ds)
    assert rows_digest(Dataset.from_list(changed), columns=["instruction"]) == rows_digest(ds, columns=["instruction"])


# ------------------------------------------------------------------------------------------------ score chunks
def add_length(batch, indices):
    """A stand-in scorer: the response's length as the reward (a function of the row only)."""
    return {"reward": [float(len(o)) for o in batch["output"]]}


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_score_chunk_is_scored_again_and_gather_refuses_one(tmp_path, caplog, how):
    from car_hf.core.cache import scoring_key
    from car_hf.core.distributed import chunk_name, gather_chunks, score_chunks

    ds = Dataset.from_list(tiny.sample_rows(3, 2))  # 6 rows: chunks of 2
    cache = ScoreCache(tmp_path / "cache", scoring_key(add_length, ds, chunk_rows=2))
    assert score_chunks(ds, add_length, cache, chunk_rows=2).scored == [0, 1, 2]
    expected = gather_chunks(cache, len(ds), 2, ds).to_list()
    part = cache.folder / chunk_name(1, 3)
    damage(part, how, cache.folder / chunk_name(2, 3), column="output")
    with pytest.raises(CacheError, match=rf"^cache part {part} cannot be used: .*rerun the same command"):
        gather_chunks(cache, len(ds), 2, ds)
    with caplog.at_level(logging.WARNING, logger="car_hf.core.cache"):
        progress = score_chunks(ds, add_length, cache, chunk_rows=2)
    assert progress.scored == [1] and progress.skipped == [0, 2] and len(warned(caplog, part)) == 1
    assert gather_chunks(cache, len(ds), 2, ds).to_list() == expected


# ------------------------------------------------------------------------------------------------ generation chunks
@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_generation_chunk_is_generated_again(tmp_path, monkeypatch, hf_cache, caplog, how):
    """The issue's case: recipes/generate.py reused a chunk whose file was another chunk's (wrong instructions in the
    output, exit 0), and a truncated chunk ended in a raw pyarrow traceback."""
    import datasets.fingerprint
    import huggingface_hub.constants

    from openai_server import OpenAIServer
    from test_generate import generate_recipe, read_generated

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.fingerprint, "_CACHING_ENABLED", datasets.fingerprint._CACHING_ENABLED)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(6)))
    with OpenAIServer(lifetime=60) as server:
        args, config = generate_recipe.make_parser().parse_args_and_config(
            ["--dataset_name", str(data), "--teacher", "served", "--base_url", server.base_url, "--chunk_rows", "2",
             "--map_batch_size", "2", "--output_dir", str(tmp_path / "out"), "--cpu", "true"])
        generate_recipe.main(args, config)
        expected = read_generated(tmp_path / "out")
        (folder,) = (tmp_path / "out" / "cache").glob("*/key.json")
        part = folder.parent / "chunk-00000-of-00003"
        damage(part, how, folder.parent / "chunk-00002-of-00003", column="response")
        asked = len(server.requests)
        with caplog.at_level(logging.WARNING, logger="car_hf.core.cache"):
            generate_recipe.main(args, config)
        assert sorted(r["body"]["messages"][-1]["content"] for r in server.requests[asked:]) == \
            ["question 0", "question 1"]  # only the damaged chunk (its requests run concurrently)
    assert len(warned(caplog, part)) == 1
    assert read_generated(tmp_path / "out") == expected
    assert [r["prompt"] for r in expected] == [f"question {i}" for i in range(6)]
    assert [r["response"] for r in expected] == [f"Echo: question {i}" for i in range(6)]
