"""Publishing CAR-scored datasets and CAR-selected models to the Hugging Face Hub: the folder, then one commit.

The cards themselves are :mod:`car_hf.publishing.cards`; this module writes folders and uploads them.

* :func:`write_dataset_folder` writes the exact folder that would be uploaded — Parquet shards in the
  layout ``Dataset.push_to_hub`` produces (``data/{split}-00000-of-00001.parquet``), ``README.md``
  (the card from :func:`~car_hf.publishing.cards.dataset_card`), the ranking plot, ``leaderboard.csv`` and
  ``leaderboard.md``. ``datasets.load_dataset(folder)`` reads it back.
* :func:`push_dataset` writes that same folder (or, with ``dry_run=<folder>``, only writes it) and
  sends it in a single commit, which also deletes ``data/`` files the new upload does not contain
  (shards of an earlier, bigger push). What lands on the Hub is byte for byte the dry-run folder;
  ``Dataset.push_to_hub`` is not used because it writes its own README in a separate commit.
* :func:`push_model` writes the model card into a trained model's folder
  (:func:`~car_hf.publishing.cards.write_model_card`, merged into a card the trainer wrote) and uploads the
  folder in one commit.

Failures: HTTP 5xx/429 answers and dropped connections are retried ``max_retries`` times with
exponential backoff (``huggingface_hub`` itself retries the pre-upload call but not the commit),
then a :class:`~car_hf.core.errors.PublishError` names the step that failed and where the local files
are; a rejected token (401) or a refused write (403) raises :class:`~car_hf.core.errors.HubAuthError` at
once. No message, log line, card or file written here ever contains the token.

The Hub address comes from ``huggingface_hub.constants.ENDPOINT`` (``HF_ENDPOINT``).

Example:
    >>> import tempfile
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"generator": ["a", "b"], "reward": [1.0, 2.0], "base_loss": [1.0, 0.5],
    ...                         "base_loss_tokens": [9, 7], "base_loss_truncated": [False, False],
    ...                         "car": [0.5, 1.6]})
    >>> folder = write_dataset_folder(ds, tempfile.mkdtemp(), scoring_config={"beta": 1.0})
    >>> sorted(p.name for p in folder.rglob("*") if p.is_file())
    ['README.md', 'train-00000-of-00001.parquet']
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pandas as pd
from datasets import Dataset, DatasetDict
from datasets import config as datasets_config
from datasets.arrow_writer import get_writer_batch_size_from_data_size, get_writer_batch_size_from_features
from datasets.utils.py_utils import convert_file_size_to_int
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, HFValidationError, filter_repo_objects, validate_repo_id

from car_hf.publishing.cards import (  # re-exported: car_hf.publishing.hub was where the cards lived
    CARD_BEGIN,
    CARD_END,
    CONFIG_KEYS,
    DATA_DIR,
    dataset_card,
    dataset_splits,
    leaderboard_markdown,
    leaderboard_page,
    model_card,
    write_model_card,
)
from car_hf.core.errors import ConfigError, HubAuthError, PublishError
from car_hf.publishing.eval_results import (
    evaluation_section,
    model_index_results,
    read_evaluation_record,
    write_eval_results,
)

__all__ = [
    "CARD_BEGIN",
    "CARD_END",
    "CONFIG_KEYS",
    "HubAuthError",
    "PublishError",
    "dataset_card",
    "leaderboard_markdown",
    "model_card",
    "push_dataset",
    "push_model",
    "write_dataset_folder",
    "write_model_card",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Files of a model folder never uploaded: the ones Trainer.push_to_hub skips, plus git/cache folders.
MODEL_IGNORE_PATTERNS = ["_*", "checkpoint-*", *DEFAULT_IGNORE_PATTERNS]
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
RETRY_BASE_SECONDS = 2.0  # first wait; doubles per retry, capped at RETRY_MAX_SECONDS
RETRY_MAX_SECONDS = 30.0


# --------------------------------------------------------------------------------------------------
# The dataset folder
# --------------------------------------------------------------------------------------------------
def _write_parquet(splits: Mapping[str, Dataset], folder: Path, max_shard_size: int | str | None) -> int:
    """Write ``data/{split}-{i:05d}-of-{n:05d}.parquet`` as ``push_to_hub`` shards them; return the bytes."""
    shard_bytes = convert_file_size_to_int(max_shard_size or datasets_config.MAX_SHARD_SIZE)
    total = 0
    for name, split in splits.items():
        nbytes = split.data.nbytes  # what push_to_hub shards by (for text columns)
        num_shards = int(nbytes / shard_bytes) + 1
        batch_size = get_writer_batch_size_from_features(split.features) or get_writer_batch_size_from_data_size(
            len(split), nbytes
        )
        for index in range(num_shards):
            shard = split.shard(num_shards=num_shards, index=index, contiguous=True)
            path = folder / DATA_DIR / f"{name}-{index:05d}-of-{num_shards:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            shard.to_parquet(path, batch_size=batch_size)
            total += path.stat().st_size
    return total


def _prepare_folder(folder: Path) -> None:
    """Make ``folder`` an empty directory, removing only what an earlier write_dataset_folder wrote there."""
    entries = list(folder.iterdir()) if folder.exists() else []
    if entries:
        readme = folder / "README.md"
        ours = readme.is_file() and re.search(r"^car_hf:", readme.read_text(encoding="utf-8"), re.MULTILINE)
        foreign = [e.name for e in entries if e.name not in ("README.md", "leaderboard.csv", "leaderboard.md",
                                                              DATA_DIR) and e.suffix != ".png"]
        if not ours or foreign:
            raise FileExistsError(
                f"{folder} is not empty and holds files car_hf.publishing.hub did not write ({', '.join(foreign) or 'README.md'})"
                "; choose an empty or new folder"
            )
        for entry in entries:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def write_dataset_folder(
    dataset: Dataset | DatasetDict,
    folder: str | Path,
    *,
    leaderboard: pd.DataFrame | None = None,
    scoring_config: Mapping[str, Any] | None = None,
    plot: str | Path | None = None,
    max_shard_size: int | str | None = None,
    **card_kwargs: Any,
) -> Path:
    """Write the exact folder :func:`push_dataset` uploads, and return its path.

    Contents: ``data/{split}-{i:05d}-of-{n:05d}.parquet`` (one shard per ``max_shard_size``, 500MB by
    default, as ``push_to_hub``), ``README.md`` (:func:`dataset_card`, with the Parquet download
    size), the plot PNG under its own file name, and with a leaderboard ``leaderboard.csv`` (full
    precision) and ``leaderboard.md``. ``datasets.load_dataset(str(folder))`` reads the rows back.
    A folder a previous call wrote is emptied first; a non-empty folder holding anything else is refused.
    ``card_kwargs`` go to :func:`dataset_card` (``repo_id``, ``license``, ``source_dataset``).

    Example:
        >>> import tempfile
        >>> from datasets import Dataset, load_dataset
        >>> ds = Dataset.from_dict({"reward": [1.0, 2.0], "base_loss": [2.0, 1.0], "base_loss_tokens": [5, 4],
        ...                         "base_loss_truncated": [False, True], "car": [1 / 3, 1.0]})
        >>> folder = write_dataset_folder(ds, tempfile.mkdtemp(), scoring_config={"beta": 1.0})
        >>> load_dataset(str(folder), split="train")["reward"][:]
        [1.0, 2.0]
    """
    splits = dataset_splits(dataset)
    folder = Path(folder)
    _prepare_folder(folder)
    download_size = _write_parquet(splits, folder, max_shard_size)
    plot_filename = None
    if plot is not None:
        plot_filename = Path(plot).name
        shutil.copyfile(plot, folder / plot_filename)
    card = dataset_card(dataset, leaderboard=leaderboard, scoring_config=scoring_config, plot_filename=plot_filename,
                        download_size=download_size, **card_kwargs)
    card.save(folder / "README.md")
    if leaderboard is not None:
        leaderboard.to_csv(folder / "leaderboard.csv", index=False)
        (folder / "leaderboard.md").write_text(leaderboard_page(leaderboard, scoring_config), encoding="utf-8",
                                               newline="\n")
    return folder


def _redact(text: str, token: str | bool | None) -> str:
    """``text`` with the token (given, or the one huggingface_hub would use) masked."""
    secret = token if isinstance(token, str) else get_token()
    return text.replace(secret, "hf_***") if secret else text


def _retrying(step: str, call: Callable[[], T], *, token: str | bool | None, max_retries: int, local_note: str) -> T:
    """Run ``call``; retry 5xx/429/connection failures with backoff; turn failures into car_hf errors."""
    for attempt in range(max_retries + 1):
        try:
            return call()
        except HfHubHTTPError as err:
            status = getattr(err.response, "status_code", None)
            detail = _redact(str(err), token).strip()
            if status in (401, 403):
                what = "rejected the token" if status == 401 else "refused the write with this token"
                raise HubAuthError(
                    f"The Hub at {constants.ENDPOINT} {what} (HTTP {status}) while {step}. Use a valid token with "
                    f"write access (token=..., HF_TOKEN or `hf auth login`). {local_note}\nHub answer: {detail}"
                ) from None  # the chained error's request holds the Authorization header
            reason = f"HTTP {status}"
            if status not in RETRY_STATUS:
                raise PublishError(f"{step} failed ({reason}). {local_note}\nHub answer: {detail}") from None
        except httpx2.TransportError as err:
            reason, detail = f"connection error {type(err).__name__}", _redact(str(err), token)
        if attempt == max_retries:
            raise PublishError(
                f"{step} failed after {attempt + 1} attempt(s), last: {reason}. {local_note}\nLast error: {detail}"
            ) from None
        wait = min(RETRY_BASE_SECONDS * 2**attempt, RETRY_MAX_SECONDS)
        logger.warning("%s: %s, retry %d/%d in %.1fs", step, reason, attempt + 1, max_retries, wait)
        time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises


def _prepare_repo(api: HfApi, repo_id: str, repo_type: str, *, private: bool, revision: str | None,
                  retry: Callable[[str, Callable[[], T]], T]) -> str:
    """Create the repo (and branch) if missing; return the repo id with its namespace."""
    url = retry(f"creating {repo_type} repo {repo_id}",
                lambda: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True))
    repo_id = url.repo_id
    if private:
        # The Hub keeps an existing repo's visibility: never upload "private" data into a public repo.
        info = retry(f"reading {repo_type} repo {repo_id}", lambda: api.repo_info(repo_id, repo_type=repo_type))
        if not info.private:
            raise PublishError(
                f"private=True but the {repo_type} repo {repo_id} already exists and is public; nothing was "
                "uploaded. Make it private first (HfApi.update_repo_settings(..., private=True)) or pass private=False."
            )
    if revision is not None and not revision.startswith("refs/pr/"):  # the Hub refuses branches named refs/pr/*
        retry(f"creating branch {revision} of {repo_id}",
              lambda: api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True))
    return repo_id


def _commit_folder(api: HfApi, folder: Path, repo_id: str, repo_type: str, *, revision: str | None,
                   commit_message: str, replace_prefix: str | None, ignore_patterns: list[str] | None,
                   retry: Callable[[str, Callable[[], T]], T]) -> str:
    """Upload every file of ``folder`` in one commit; delete remote ``replace_prefix`` files not in it."""
    paths = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    paths = list(filter_repo_objects(paths, ignore_patterns=ignore_patterns))
    uploaded = set(paths)

    def commit() -> Any:
        # Fresh operations on every attempt: create_commit mutates them and refuses to reuse them.
        stale = []
        if replace_prefix is not None:
            remote = api.list_repo_files(repo_id, repo_type=repo_type, revision=revision)
            stale = [p for p in remote if p.startswith(replace_prefix) and p not in uploaded]
        operations = [CommitOperationDelete(path_in_repo=p) for p in stale]
        operations += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=folder / p) for p in paths]
        return api.create_commit(repo_id, operations, commit_message=commit_message, repo_type=repo_type,
                                 revision=revision)

    logger.info("uploading %d files to %s repo %s (revision %s)", len(paths), repo_type, repo_id, revision or "main")
    info = retry(f"committing {len(paths)} files to {repo_type} repo {repo_id}@{revision or 'main'}", commit)
    return info.commit_url


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if the Hub would take it (``huggingface_hub``'s own rule: ``name`` or ``namespace/name``,
    letters, digits, ``-``, ``_``, ``.``); else a ConfigError saying why. Checked before anything is written,
    so a dry run refuses what the real push would.

    Example:
        >>> check_repo_id("me/alpaca-car")
        'me/alpaca-car'
        >>> check_repo_id("me/alpaca car")
        Traceback (most recent call last):
        ...
        car_hf.core.errors.ConfigError: repo_id 'me/alpaca car' is not a Hub repo id: Repo id must use alphanumeric chars, '-', '_' or '.'. The name cannot start or end with '-' or '.' and the maximum length is 96: 'me/alpaca car'.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ConfigError(f"repo_id {repo_id!r} is not a Hub repo id: {error}") from None
    return repo_id


def push_dataset(
    dataset: Dataset | DatasetDict,
    repo_id: str,
    *,
    leaderboard: pd.DataFrame | None = None,
    scoring_config: Mapping[str, Any] | None = None,
    plot: str | Path | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: str | Path | None = None,
    max_retries: int = 3,
    max_shard_size: int | str | None = None,
    **card_kwargs: Any,
) -> str | Path:
    """Publish a CAR-scored dataset with its card, leaderboard and plot in one commit.

    With ``dry_run=<folder>``: :func:`write_dataset_folder` into it and return the path; nothing is
    sent. Otherwise the same folder is written to a temporary directory, the repo is created if
    missing (``private`` applies at creation; ``private=True`` on an existing public repo is refused),
    the ``revision`` branch is created if missing, and the folder is committed (``data/`` files it
    does not contain are deleted in the same commit). Returns the commit URL. A temporary folder is
    removed on success and kept on failure, with its path in the :class:`PublishError`.

    Example:
        >>> url = push_dataset(scored, "me/alpaca-car", leaderboard=table, plot="ranking.png",
        ...                    private=True, revision="v1", commit_message="β=1")  # doctest: +SKIP
        >>> push_dataset(scored, "me/alpaca-car", leaderboard=table, dry_run="out/")  # doctest: +SKIP
        PosixPath('out')
    """
    check_repo_id(repo_id)
    if dry_run is not None:
        return write_dataset_folder(dataset, dry_run, leaderboard=leaderboard, scoring_config=scoring_config,
                                    plot=plot, max_shard_size=max_shard_size, repo_id=repo_id, **card_kwargs)
    staging = Path(tempfile.mkdtemp(prefix="car_hf-push-"))
    try:
        folder = write_dataset_folder(dataset, staging, leaderboard=leaderboard, scoring_config=scoring_config,
                                      plot=plot, max_shard_size=max_shard_size, repo_id=repo_id, **card_kwargs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing worth keeping: the data never got written
        raise
    note = (f"Nothing local was changed; the folder being uploaded is kept at {folder} "
            "(re-run push_dataset, or upload that folder as it is).")

    def retry(step: str, call: Callable[[], T]) -> T:
        return _retrying(step, call, token=token, max_retries=max_retries, local_note=note)

    api = HfApi(token=token)
    repo_id = _prepare_repo(api, repo_id, "dataset", private=private, revision=revision, retry=retry)
    url = _commit_folder(api, folder, repo_id, "dataset", revision=revision,
                         commit_message=commit_message or "Upload CAR-scored dataset (car_hf)",
                         replace_prefix=f"{DATA_DIR}/", ignore_patterns=None, retry=retry)
    shutil.rmtree(staging)
    return url


def push_model(
    folder: str | Path,
    repo_id: str,
    *,
    base_model: str | None,
    dataset_repo: str | None = None,
    selection_summary: Mapping[str, Any] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    scoring: Mapping[str, Any] | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    license: str | None = None,
    max_retries: int = 3,
    evaluation: Mapping[str, Any] | None = None,
) -> str | Path:
    """Write the model card into ``folder`` and upload the folder in one commit.

    The student's evaluation (``evaluation``, default the record ``recipes/evaluate_student.py`` left in the
    folder) goes into the card's ``model-index`` and, for harness tasks over Hub benchmarks, into
    ``.eval_results/<task>.yaml`` (:mod:`car_hf.publishing.eval_results`).

    The card is written by :func:`~car_hf.publishing.cards.write_model_card` (the one model-card writer; see it
    for how a card the trainer wrote is merged, not replaced). Uploaded: every file except
    ``checkpoint-*``, ``_*`` and ``.git``/cache folders (what ``Trainer.push_to_hub`` skips).
    ``dry_run=True`` writes the card and returns the folder without sending anything; otherwise
    returns the commit URL.

    Example:
        >>> push_model("out/sft", "me/gemma-car", base_model="google/gemma-3-270m",
        ...            dataset_repo="me/alpaca-car", selection_summary={"rows_kept": 800, "rows_total": 2000},
        ...            hyperparameters={"learning_rate": 2e-5})  # doctest: +SKIP
    """
    check_repo_id(repo_id)
    folder = Path(folder)
    evaluation = evaluation or read_evaluation_record(folder)
    write_model_card(folder, base_model=base_model, dataset_repo=dataset_repo, selection=selection_summary,
                     hyperparameters=hyperparameters, scoring=scoring, license=license, repo_id=repo_id,
                     eval_results=model_index_results(evaluation) if evaluation else None,
                     evaluation_section=evaluation_section(evaluation) if evaluation else None)
    if evaluation:
        write_eval_results(folder, evaluation, repo_id)
    if dry_run:
        return folder
    note = f"The model folder {folder} is unchanged apart from its README.md (the card); re-run push_model to retry."

    def retry(step: str, call: Callable[[], T]) -> T:
        return _retrying(step, call, token=token, max_retries=max_retries, local_note=note)

    api = HfApi(token=token)
    repo_id = _prepare_repo(api, repo_id, "model", private=private, revision=revision, retry=retry)
    return _commit_folder(api, folder, repo_id, "model", revision=revision,
                          commit_message=commit_message or "Upload model tuned on CAR-selected data (car_hf)",
                          replace_prefix=None, ignore_patterns=MODEL_IGNORE_PATTERNS, retry=retry)
