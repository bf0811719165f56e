"""pytest setup for the whole repository: the offline environment and the ``slow`` marker.

At the repository root so that it applies to ``tests/`` and to the doctests of ``car_hf/`` alike
(``pyproject.toml``: ``testpaths = ["tests", "car_hf"]``, ``--doctest-modules``). The environment is fixed at
import, before anything imports transformers or datasets: the Hugging Face Hub and datasets are offline,
tokenizers does not fork threads, and torch uses at most 2 threads (the machines have 2 cores).
"""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))


def pytest_addoption(parser):
    """Add ``--run-slow``."""
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    """Skip ``slow`` tests unless ``--run-slow`` is given or ``CAR_HF_RUN_SLOW=1``."""
    if config.getoption("--run-slow") or os.environ.get("CAR_HF_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow or set CAR_HF_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
