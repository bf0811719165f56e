"""recipes/pilot.py under accelerate launch with 2 CPU processes (gloo): the evaluations are divided between the
processes, and the report equals one process's (the same effective batch: 2 x 4 rows vs. 1 x 8)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
from test_pilot import N_TRAIN, heldout_of, scripted_pool

from car_hf.evaluation.pilot import BASELINE
from car_hf.generation.tasks import make_tasks

REPO = Path(__file__).resolve().parents[1]


def pilot_command(tmp_path: Path, model: Path, out: str, batch: int) -> list[str]:
    return ["recipes/pilot.py", "--config", "recipes/configs/pilot_tiny_cpu.yaml", "--model_name_or_path", str(model),
            "--dataset_name", str(tmp_path / "pool.jsonl"), "--heldout_name", str(tmp_path / "heldout.jsonl"),
            "--output_dir", str(tmp_path / out), "--teachers", "right", "all wrong",
            "--per_device_train_batch_size", str(batch)]


def run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-2000:]}\n{result.stderr[-5000:]}"
    return result


def test_two_processes_share_the_evaluations_and_report_what_one_process_reports(tmp_path, tiny_model_dir):
    tasks = make_tasks(N_TRAIN + 20, seed=0, types=["count_letters"])
    scripted_pool(tasks).to_json(tmp_path / "pool.jsonl")
    heldout_of(tasks).to_json(tmp_path / "heldout.jsonl")
    two = run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "29641", *pilot_command(tmp_path, tiny_model_dir, "two", 4)], tmp_path)
    one = run([sys.executable, *pilot_command(tmp_path, tiny_model_dir, "one", 8)], tmp_path)

    # Divided: the untuned student first on process 0, then one tuned student per process.
    evaluated: dict[int, list[str]] = {0: [], 1: []}
    for rank, name in re.findall(r"\[rank (\d)/2\] INFO car_hf\.evaluation\.pilot: evaluating (.+)", two.stderr):
        evaluated[int(rank)].append(name)
    assert evaluated == {0: [BASELINE, "right"], 1: ["all wrong"]}
    assert one.stderr.count("INFO car_hf.evaluation.pilot: evaluating ") == 3 and "[rank" not in one.stderr  # one does all

    # Equal to one process: the same realized values, the same answers item by item.
    reports = {n: json.loads((tmp_path / n / "report.json").read_text()) for n in ("one", "two")}
    realized = {n: {t["teacher"]: t["realized"] for t in r["teachers"]} for n, r in reports.items()}
    assert realized["one"] == realized["two"] and realized["one"]["all wrong"] == 0.0
    assert reports["two"]["cost"]["total"]["processes"] == 2 and reports["one"]["cost"]["total"]["processes"] == 1
    items = {n: pd.read_csv(tmp_path / n / "items.csv") for n in ("one", "two")}
    assert items["one"][["student", "response", "correct"]].equals(items["two"][["student", "response", "correct"]])
    # The report is printed once, by the main process.
    assert one.stdout.count("## Pilot: predicted vs. realized (accuracy)") == 1
    assert two.stdout.count("## Pilot: predicted vs. realized (accuracy)") == 1
