"""Shared pytest setup for car_hf's tests: tiny-model fixtures (the offline environment and ``--run-slow``: the
repository's top-level ``conftest.py``).

Session-scoped objects (tokenizers, models, saved folders) are shared by every test that asks for them: do not
modify them (no training, no ``padding_side`` change...). A test that needs its own copy builds one with the
``tiny`` helpers, e.g. ``tiny.build_causal_lm(tokenizer, seed=0)``, which costs a few milliseconds.
"""

import os
import sys
from pathlib import Path

# `import tiny` works in every pytest import mode, and from benchmarks that put tests/ on the path themselves.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import tiny  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # set by the top-level conftest.py


@pytest.fixture(scope="session")
def tokenizer():
    """Tiny byte-level BPE tokenizer with the chat template (see ``tiny.build_tokenizer``)."""
    return tiny.build_tokenizer()


@pytest.fixture(scope="session")
def plain_tokenizer():
    """The same tokenizer with no chat template: a base model's."""
    return tiny.build_tokenizer(chat_template=False)


@pytest.fixture(scope="session")
def causal_lm(tokenizer):
    """Tiny ``LlamaForCausalLM``, seed 0, float32, eval mode."""
    return tiny.build_causal_lm(tokenizer)


@pytest.fixture(scope="session")
def gemma3_lm(tokenizer):
    """Tiny ``Gemma3ForCausalLM`` with final-logit softcapping, seed 0, float32, eval mode."""
    return tiny.build_gemma3_lm(tokenizer)


@pytest.fixture(scope="session")
def reward_model(tokenizer):
    """Tiny ``LlamaForSequenceClassification`` with one label, seed 0, float32, eval mode."""
    return tiny.build_reward_model(tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, causal_lm, tokenizer):
    """A folder holding ``causal_lm`` and ``tokenizer`` (with its chat template), for code that loads from a path."""
    return tiny.save_tiny(causal_lm, tokenizer, tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory, reward_model, tokenizer):
    """A folder holding ``reward_model`` and ``tokenizer``, for code that loads from a path."""
    return tiny.save_tiny(reward_model, tokenizer, tmp_path_factory.mktemp("tiny_rm"))


@pytest.fixture
def rows():
    """A fresh copy of ``tiny.sample_rows()``: 6 instructions x 3 generators in the long layout (free to modify)."""
    return tiny.sample_rows()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Point the datasets cache at a fresh temp folder and return it.

    Sets ``HF_DATASETS_CACHE`` (seen by subprocesses) and, since ``datasets`` reads it once at import, the cache,
    downloads and extracted paths in ``datasets.config`` (seen by this process).
    """
    import datasets

    cache = tmp_path / "hf_datasets_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", cache / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", cache / "downloads" / "extracted")
    return cache
