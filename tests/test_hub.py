"""car_hf.publishing.hub against a loopback Hub: dry-run folders, byte-exact uploads, retries, auth, token hygiene.

How the real ``huggingface_hub`` client is pointed at ``tests/hub_server.py`` (the ``hub`` fixture):

* ``huggingface_hub.constants.ENDPOINT`` is monkeypatched to the server's URL. ``HF_ENDPOINT`` is read
  into that constant at import time, so setting the variable now would do nothing; ``HfApi()`` reads
  the constant when it is constructed and car_hf.publishing.hub builds one per call, so nothing else caches it
  (``datasets.config.HF_ENDPOINT`` is only used by ``push_to_hub``, which car_hf.publishing.hub does not call).
* ``constants.HF_HUB_OFFLINE`` is set to False: the client checks it before every request, and
  ``tests/conftest.py`` sets ``HF_HUB_OFFLINE=1`` for the rest of the suite.
* ``constants.HF_HUB_DISABLE_TELEMETRY`` is set to True: otherwise the client's first request fetches
  ``/api/agent-harnesses`` to build its user agent and caches the answer under ``HF_HOME``.
* ``car_hf.publishing.hub.RETRY_BASE_SECONDS`` is made tiny so retry tests take milliseconds.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset, DatasetDict, load_dataset
from hub_server import TOKEN, HubServer
from huggingface_hub import DatasetCard, ModelCard, constants

from car_hf.publishing import hub as car_hub
from car_hf.publishing.cards import CARD_BEGIN, CONFIG_KEYS, dataset_card, model_card
from car_hf.core.errors import HubAuthError, PublishError
from car_hf.publishing.hub import push_dataset, push_model, write_dataset_folder

BAD_TOKEN = "hf_not_the_right_token_0987654321zyxw"
GENERATORS = ["gemma-2-9b-it", "Llama-3.1-70B-Instruct", "gpt-4"]
BETA = 0.5


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    with HubServer() as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(car_hub, "RETRY_BASE_SECONDS", 0.001)
        # push_dataset stages its folder in the temp dir: keep it under tmp_path so tests can scan it.
        staging = tmp_path / "staging"
        staging.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(staging))
        yield server
        assert server.unknown == [], f"the client called endpoints the test server does not implement: {server.unknown}"


def scored_dataset() -> Dataset:
    """3 generators × 4 rows with every car_hf column: one NaN loss (nothing left), one truncated row."""
    rows = []
    for g, generator in enumerate(GENERATORS):
        for i in range(4):
            loss = 0.6 + 0.3 * g + 0.1 * i
            tokens, truncated = 20 + i, False
            if (g, i) == (0, 3):
                loss, tokens, truncated = math.nan, 0, True
            reward = 0.1 + 0.02 * i - 0.01 * g
            rows.append({
                "instruction": f"Question {i}: what is {i} + {g}?",
                "response": f"{generator} says {i + g}.",
                "generator": generator,
                "reward": reward,
                "base_loss": loss,
                "base_loss_tokens": tokens,
                "base_loss_truncated": truncated,
                "car": reward / (1 + BETA * loss),
                "base_loss_unconditioned": 2.0,
                "ifd": loss / 2.0,
            })
    return Dataset.from_list(rows)


def leaderboard_table(ds: Dataset) -> pd.DataFrame:
    frame = ds.to_pandas()
    scored = frame[frame.base_loss.notna()]
    table = scored.groupby("generator").agg(reward=("reward", "mean"), base_loss=("base_loss", "mean")).reset_index()
    table["n"] = frame.groupby("generator").size().loc[table.generator].to_numpy()
    table["n_scored"] = scored.groupby("generator").size().loc[table.generator].to_numpy()
    table["car"] = table.reward / (1 + BETA * table.base_loss)
    table["car_low"], table["car_high"] = table.car * 0.9, table.car * 1.1
    table = table.sort_values("car", ascending=False).reset_index(drop=True)
    table["rank"] = range(1, len(table) + 1)
    table = table[["generator", "n", "n_scored", "reward", "base_loss", "car", "rank", "car_low", "car_high"]]
    table.attrs["car"] = {
        "base_model": "google/gemma-3-270m",
        "base_model_revision": "main",
        "reward_model": None,
        "reward_model_revision": None,
        "reward_column": "judge_preference",
        "beta": BETA,
        "reward_transform": "raise",
        "loss_definition": "mean NLL per response token under the base model's chat template, prompt masked",
        "truncation": "right-truncated at max_length=2048 tokens; flagged in base_loss_truncated",
        "car_hf_version": "0.1.0",
    }
    return table


@pytest.fixture
def scored() -> tuple[Dataset, pd.DataFrame]:
    ds = scored_dataset()
    return ds, leaderboard_table(ds)


@pytest.fixture
def plot(tmp_path: Path) -> Path:
    """A small, real PNG (8-byte signature, IHDR, IDAT, IEND) written without matplotlib."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes([y * 60, 0, 120]) * 4 for y in range(4))  # 4 rows: filter byte + 4 RGB
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path = tmp_path / "car_ranking.png"
    path.write_bytes(png)
    return path


def squeezed(text: str) -> str:
    """Markdown with the padding of ``DataFrame.to_markdown`` tables removed: ``| a   | b |`` → ``| a | b |``."""
    return re.sub(r" {2,}", " ", text)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_rows(expected: Dataset, actual: Dataset) -> None:
    assert actual.features == expected.features
    pd.testing.assert_frame_equal(actual.to_pandas(), expected.to_pandas())  # NaN-aware


# --------------------------------------------------------------------------------------------------
# The dry-run folder and the cards (no server)
# --------------------------------------------------------------------------------------------------
def test_dry_run_folder_reads_back_identically(scored, plot, tmp_path):
    ds, table = scored
    folder = write_dataset_folder(ds, tmp_path / "out", leaderboard=table, plot=plot, repo_id="me/zoo-car")

    assert sorted(folder_files(folder)) == [
        "README.md", "car_ranking.png", "data/train-00000-of-00001.parquet", "leaderboard.csv", "leaderboard.md",
    ]
    assert_same_rows(ds, load_dataset(str(folder), split="train"))
    assert (folder / "car_ranking.png").read_bytes() == plot.read_bytes()
    pd.testing.assert_frame_equal(pd.read_csv(folder / "leaderboard.csv"), table, check_dtype=False)
    assert "| 1 | gemma-2-9b-it |" in (folder / "leaderboard.md").read_text()

    # A folder car_hf wrote is emptied by the next dry run; other files in it make it refuse.
    write_dataset_folder(ds, folder, leaderboard=table)
    assert not (folder / "car_ranking.png").exists()
    (folder / "notes.txt").write_text("mine")  # never deleted by a dry run
    with pytest.raises(FileExistsError, match="notes.txt"):
        write_dataset_folder(ds, folder)
    assert (folder / "notes.txt").read_text() == "mine"


def test_dataset_dict_is_sharded_like_push_to_hub(scored, tmp_path):
    ds, table = scored
    splits = DatasetDict({"train": ds.select(range(8)), "test": ds.select(range(8, 12))})
    folder = write_dataset_folder(splits, tmp_path / "out", leaderboard=table, max_shard_size=300)

    shards = [p for p in folder_files(folder) if p.startswith("data/")]
    for split in splits:
        names = sorted(p for p in shards if p.startswith(f"data/{split}-"))
        n = len(names)
        assert names == [f"data/{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    assert len(shards) > 2  # 300 bytes per shard: the splits did not fit in one file each
    loaded = load_dataset(str(folder))
    assert set(loaded) == {"train", "test"}
    for split in splits:
        assert_same_rows(splits[split], loaded[split])


def test_dataset_card_metadata_and_body(scored):
    ds, table = scored
    card = dataset_card(ds, leaderboard=table, plot_filename="car_ranking.png", repo_id="me/zoo-car",
                        source_dataset="tatsu-lab/alpaca_eval")
    card = DatasetCard(str(card))  # what a reader of README.md parses
    data = card.data
    assert data["license"] == "other"
    assert data["task_categories"] == ["text-generation"]
    assert {"car", "instruction-tuning", "car_hf"} <= set(data["tags"])
    assert data["size_categories"] == ["n<1K"]
    assert list(data["car_hf"]) == list(CONFIG_KEYS)
    assert data["car_hf"]["beta"] == BETA and data["car_hf"]["reward_column"] == "judge_preference"
    assert data["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]

    text = card.text
    assert "![ranking](car_ranking.png)" in text
    assert "| rank | generator | n | n_scored | reward | base_loss | car | car CI |" in text
    top = table.iloc[0]
    assert f"| 1 | {top.generator} | 4 |" in text and f"[{top.car_low:.4f}, {top.car_high:.4f}]" in text
    assert "`reward / (1 + β · base_loss)` of the two means, β = 0.5" in text  # checked against the table
    assert "nats per token" in text and "Truncated rows: 1 of 12" in text and "Missing (NaN) in 1 of 12 rows" in text
    assert "arXiv:2411.07133" in text and "Stronger Models are NOT Stronger Teachers for Instruction Tuning" in text
    assert "Poovendran, Radha" in text and 'load_dataset("me/zoo-car")' in text
    assert "not recorded" not in text


def test_card_of_a_real_rank_generators_table(tmp_path):
    from car_hf import rank_generators

    ds = scored_dataset()
    recorded_by_ranking = ("reward_column", "reward_transform", "beta", "loss_definition")
    config = {k: v for k, v in leaderboard_table(ds).attrs["car"].items() if k not in recorded_by_ranking}
    table = rank_generators(ds, beta=BETA, n_bootstrap=50, config=config)
    folder = write_dataset_folder(ds, tmp_path / "out", leaderboard=table)
    card = DatasetCard((folder / "README.md").read_text())
    assert {"confidence", "n_bootstrap", "paired_by"} <= set(card.data["car_hf"])
    assert "| car | car CI | p_best | ppl |" in card.text and "95% bootstrap confidence interval" in card.text
    assert "`reward_low/high`" in card.text and "reward_low" not in (folder / "leaderboard.md").read_text()
    assert "rank_generators(ds, by='generator', beta=0.5, reward_transform='raise'" in card.text
    pd.testing.assert_frame_equal(pd.read_csv(folder / "leaderboard.csv"), table, check_dtype=False)


def test_card_flags_a_missing_scoring_configuration():
    ds = scored_dataset()
    card = dataset_card(ds, license="apache-2.0")
    assert card.data["license"] == "apache-2.0"
    assert all(card.data["car_hf"][key] is None for key in CONFIG_KEYS)
    assert "does not record base_model, beta" in card.text


def test_model_card_and_its_checks():
    card = model_card(base_model="google/gemma-3-270m", dataset_repo="me/zoo-car",
                      selection_summary={"rows_kept": 300, "rows_total": 1200, "beta": BETA, "cutoff": 0.07,
                                         "generator_mix": {"gemma-2-9b-it": 250, "gpt-4": 50}},
                      hyperparameters={"learning_rate": 2e-5, "num_train_epochs": 2})
    assert card.data.base_model == "google/gemma-3-270m" and card.data.datasets == ["me/zoo-car"]
    assert {"car", "car_hf", "sft", "trl"} <= set(card.data.tags) and card.data.library_name == "transformers"
    text = squeezed(card.text)
    assert "| `rows_kept / rows_total` | 300 / 1200 (25.0%) |" in text
    assert "| `gemma-2-9b-it` | 250 |" in text and "| `learning_rate` | 2e-05 |" in text
    with pytest.raises(ValueError, match="Hub id"):
        model_card(base_model="/tmp/some/local/model")


# --------------------------------------------------------------------------------------------------
# Pushing to the loopback Hub
# --------------------------------------------------------------------------------------------------
def test_push_lands_byte_for_byte_with_private_branch_and_message(hub, scored, plot, tmp_path):
    ds, table = scored
    dry = push_dataset(ds, "me/zoo-car", leaderboard=table, plot=plot, dry_run=tmp_path / "dry")
    assert dry == tmp_path / "dry" and hub.requests == []  # a dry run sends nothing

    url = push_dataset(ds, "me/zoo-car", leaderboard=table, plot=plot, private=True, revision="car-v1",
                       commit_message="CAR scores, beta=0.5", token=TOKEN)

    repo = hub.repo("me/zoo-car")
    assert repo.private
    remote = hub.files("me/zoo-car", revision="car-v1")
    assert remote.pop(".gitattributes")  # the Hub's own file, created with the repo
    assert remote == folder_files(dry)  # parquet, README, PNG, CSV, MD: byte for byte
    assert list(hub.files("me/zoo-car", revision="main")) == [".gitattributes"]  # main is untouched
    [commit] = hub.commits
    assert commit["summary"] == "CAR scores, beta=0.5" and commit["revision"] == "car-v1"
    assert url == f"{hub.url}/datasets/me/zoo-car/commit/{commit['sha']}"
    assert not list(Path(tempfile.gettempdir()).iterdir())  # the staging folder is gone after success


def test_a_new_push_deletes_stale_shards(hub, scored):
    ds, table = scored
    push_dataset(ds, "me/zoo-car", leaderboard=table, token=TOKEN, max_shard_size=300)
    before = [p for p in hub.files("me/zoo-car") if p.startswith("data/")]
    push_dataset(ds, "me/zoo-car", leaderboard=table, token=TOKEN)
    after = [p for p in hub.files("me/zoo-car") if p.startswith("data/")]
    assert len(before) > 1 and after == ["data/train-00000-of-00001.parquet"]
    assert hub.commits[1]["deleted"] == before


def test_5xx_on_the_commit_is_retried(hub, scored, caplog):
    ds, table = scored
    hub.fail_commits = 1
    with caplog.at_level(logging.WARNING, logger="car_hf"):
        push_dataset(ds, "me/zoo-car", leaderboard=table, token=TOKEN, max_retries=2)
    commit_calls = [r for r in hub.requests if "/commit/" in r[1]]
    assert len(commit_calls) == 2 and len(hub.commits) == 1
    assert "HTTP 503, retry 1/2" in caplog.text


def test_persistent_5xx_gives_a_clear_error_and_keeps_the_folder(hub, scored, plot):
    ds, table = scored
    before = ds.to_pandas()
    hub.fail_commits = 2
    with pytest.raises(PublishError) as failure:
        push_dataset(ds, "me/zoo-car", leaderboard=table, plot=plot, token=TOKEN, max_retries=1)
    message = str(failure.value)
    assert "committing 5 files to dataset repo me/zoo-car@main failed after 2 attempt(s), last: HTTP 503" in message
    kept = Path(message.split("kept at ")[1].split(" (")[0])
    assert sorted(folder_files(kept)) == sorted([
        "README.md", "car_ranking.png", "data/train-00000-of-00001.parquet", "leaderboard.csv", "leaderboard.md",
    ])
    assert hub.commits == []
    pd.testing.assert_frame_equal(ds.to_pandas(), before)  # the user's data is untouched

    # The faults are used up: calling again succeeds and uploads the same files.
    push_dataset(ds, "me/zoo-car", leaderboard=table, plot=plot, token=TOKEN, max_retries=1)
    remote = hub.files("me/zoo-car")
    remote.pop(".gitattributes")
    assert remote == folder_files(kept)


def test_bad_token_is_a_clear_error(hub, scored):
    ds, table = scored
    with pytest.raises(HubAuthError, match=r"rejected the token \(HTTP 401\) while creating dataset repo me/zoo-car"):
        push_dataset(ds, "me/zoo-car", leaderboard=table, token=BAD_TOKEN)
    assert hub.repos == {} and hub.commits == []


def test_private_push_into_an_existing_public_repo_is_refused(hub, scored):
    ds, table = scored
    push_dataset(ds, "me/zoo-car", leaderboard=table, token=TOKEN, private=False)
    with pytest.raises(PublishError, match="already exists and is public"):
        push_dataset(ds, "me/zoo-car", leaderboard=table, token=TOKEN, private=True)
    assert len(hub.commits) == 1


def test_the_token_never_appears_anywhere(hub, scored, plot, tmp_path, caplog, capfd):
    ds, table = scored
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    messages = []
    push_dataset(ds, "me/zoo-car", leaderboard=table, plot=plot, token=TOKEN)
    hub.fail_commits = 5
    for token in (TOKEN, BAD_TOKEN):  # a new repo: re-pushing identical files would not even commit
        with pytest.raises(PublishError) as failure:
            push_dataset(ds, "me/other", leaderboard=table, plot=plot, token=token, max_retries=1)
        messages.append(str(failure.value))
    assert "HTTP 503" in messages[0] and "HTTP 401" in messages[1]
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    push_model(model, "me/tuned", base_model="google/gemma-3-270m", dataset_repo="me/zoo-car", token=TOKEN)

    captured = capfd.readouterr()
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    uploaded = [content for repo in hub.repos.values() for files in repo.snapshots.values() for content in files.values()]
    for secret in (TOKEN, BAD_TOKEN):
        assert secret not in caplog.text and secret not in captured.out and secret not in captured.err
        assert all(secret not in message for message in messages)
        assert all(secret.encode() not in content for content in written + uploaded)
    assert caplog.text  # the scan saw real log output


def test_push_model_merges_the_trainer_card_and_skips_checkpoints(hub, tmp_path):
    model = tmp_path / "sft-out"
    (model / "checkpoint-10").mkdir(parents=True)
    (model / "checkpoint-10" / "optimizer.pt").write_bytes(b"\x00" * 64)
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    (model / "README.md").write_text(
        "---\nbase_model: /tmp/gemma-converted\nlibrary_name: transformers\nmodel_name: sft-out\n"
        "tags:\n- generated_from_trainer\n- trl\n---\n\n# Model Card for sft-out\n\n"
        "This model is a fine-tuned version of gemma.\n\n## Training procedure\n\nTrained with SFT.\n"
    )
    summary = {"rows_kept": 6, "rows_total": 12, "beta": BETA, "generator_mix": {"gemma-2-9b-it": 6}}
    url = push_model(model, "me/tuned", base_model="google/gemma-3-270m", dataset_repo="me/zoo-car",
                     selection_summary=summary, hyperparameters={"learning_rate": 2e-5},
                     private=True, revision="car-v1", commit_message="tuned on CAR top half", token=TOKEN)

    remote = hub.files("me/tuned", repo_type="model", revision="car-v1")
    assert sorted(remote) == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    assert remote["model.safetensors"] == (model / "model.safetensors").read_bytes()
    assert hub.repo("me/tuned", "model").private and hub.commits[0]["summary"] == "tuned on CAR top half"
    assert url.endswith(hub.commits[0]["sha"])

    card = ModelCard(remote["README.md"].decode())
    assert remote["README.md"] == (model / "README.md").read_bytes()
    assert card.data.base_model == "google/gemma-3-270m" and card.data.datasets == ["me/zoo-car"]
    assert card.data.model_name == "sft-out"  # the trainer's metadata is kept
    assert {"generated_from_trainer", "trl", "car", "car_hf", "sft"} <= set(card.data.tags)
    assert f"({hub.url}/datasets/me/zoo-car)" in card.text  # the card links the dataset
    text = squeezed(card.text)
    assert text.index("# Model Card for sft-out") < text.index(CARD_BEGIN) < text.index("## Training procedure")
    assert "| `rows_kept / rows_total` | 6 / 12 (50.0%) |" in text

    # Pushing again replaces the car_hf section instead of adding a second one.
    (model / "adapter_config.json").write_text("{}")
    push_model(model, "me/tuned", base_model="google/gemma-3-270m", dataset_repo="me/zoo-car",
               selection_summary={**summary, "rows_kept": 3}, token=TOKEN, dry_run=True)
    text = (model / "README.md").read_text()
    assert text.count(CARD_BEGIN) == 1 and "3 / 12 (25.0%)" in text and "6 / 12" not in text
    assert ModelCard(text).data.library_name == "peft"
    assert len(hub.commits) == 1  # the dry run sent nothing


@pytest.mark.parametrize("repo_id", ["me/alpaca car", "me/a/b", "me/x--y", "-me/x", "me/x.git"])
def test_an_invalid_repo_id_is_refused_before_anything_is_written(repo_id, scored, tmp_path, capsys):
    from car_hf.cli import main
    from car_hf.publishing.folders import write_ranking
    from car_hf.core.errors import ConfigError

    ds, table = scored
    out = tmp_path / "dry"
    with pytest.raises(ConfigError, match=rf"^repo_id {re.escape(repr(repo_id))} is not a Hub repo id: "):
        push_dataset(ds, repo_id, leaderboard=table, dry_run=out)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="is not a Hub repo id"):
        push_model(model, repo_id, base_model="org/base", dry_run=True)
    assert not (model / "README.md").exists() and not out.exists()
    # The CLI: one line, exit status 2, for a ranking folder and a model folder alike; no dry-run folder made.
    ranking = tmp_path / "ranking"
    write_ranking(ranking, table, ds)
    for folder in (ranking, model):
        capsys.readouterr()
        assert main(["push", "--dry-run", str(out), "--base-model", "org/base", "--", str(folder), repo_id]) == 2
        err = capsys.readouterr().err
        assert re.fullmatch(rf"car-hf push: error: repo_id {re.escape(repr(repo_id))} is not a Hub repo id: .+\n", err)
        assert not out.exists()
    assert car_hub.check_repo_id("me/alpaca-car.v2") == "me/alpaca-car.v2"
