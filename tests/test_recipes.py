"""The training and scoring recipes: recipes/sft.py, recipes/score.py, their configs and accelerate configs.

The end-to-end runs go through ``accelerate launch`` (or ``python``) in a subprocess, offline, in a temp folder
holding the tiny model and data that ``recipes/tiny_model.py`` writes; argument and input checks run in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import Dataset, concatenate_datasets, load_from_disk

from car_hf import ConfigError, InputError
from test_recipe_commands import load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
CONFIGS = RECIPES / "configs"


tiny_model = load_recipe("tiny_model")
sft = load_recipe("sft")
score = load_recipe("score")


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True)
def _datasets_cache_in_tmp(hf_cache):
    """In-process runs cache what datasets loads under tmp_path (conftest's hf_cache), never in the user's cache."""
    return hf_cache


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder laid out like a clone after `python recipes/tiny_model.py`: runs/tiny-model, runs/tiny-data."""
    folder = tmp_path_factory.mktemp("recipes")
    tiny_model.write_tiny_model(folder / "runs" / "tiny-model")
    tiny_model.write_tiny_data(folder / "runs" / "tiny-data")
    return folder


def run(command: list[str], cwd: Path, *, env: dict[str, str] | None = None, check: bool = True, timeout: int = 240):
    # One thread: the tiny model gains nothing from two, and on a busy 2-core machine torch's second thread can
    # make a step ten times slower (ENVIRONMENT.md, gotcha 7).
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                    HF_DATASETS_CACHE=str(cwd / ".hf_datasets_cache"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    full_env.update(env or {})
    result = subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def accelerate(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *args]


ONE_CPU = ("--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
TWO_CPU = ("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "29617")


def parse_sft(*argv: str):
    return sft.make_parser().parse_args_and_config(list(argv))


def sft_args(workdir: Path, tmp_path: Path, *overrides: str):
    return parse_sft("--config", str(CONFIGS / "sft_tiny_cpu.yaml"), "--model_name_or_path",
                     str(workdir / "runs" / "tiny-model"), "--dataset_name",
                     str(workdir / "runs" / "tiny-data" / "train.jsonl"), "--output_dir", str(tmp_path / "out"),
                     *overrides)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if anything loads a model or builds the trainer."""
    import transformers
    import trl

    import car_hf.core.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded (or the trainer built) before the input error was reported")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(car_hf.core.models, "load_model", refuse)
    monkeypatch.setattr(trl.SFTTrainer, "__init__", refuse)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


# ------------------------------------------------------------------------------------------------ tiny model script
def test_tiny_model_script_writes_a_chat_model_and_zoo_data(workdir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workdir / "runs" / "tiny-model")
    assert "{% generation %}" in tokenizer.chat_template  # TRL's assistant_only_loss works with it
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yo."}],
                                         tokenize=False)
    assert text == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\nYo.<|im_end|>\n"
    model = AutoModelForCausalLM.from_pretrained(workdir / "runs" / "tiny-model")
    assert model.config.vocab_size == len(tokenizer) and model.config.num_hidden_layers == 2
    rows = [json.loads(line) for line in (workdir / "runs" / "tiny-data" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and {r["generator"] for r in rows} == set(tiny_model.GENERATORS)
    assert all(0 < r["judge_preference"] < 1 for r in rows)
    assert [r["instruction_id"] for r in rows[:6]] == [0, 0, 0, 1, 1, 1]  # instruction-major, paired generators


# ------------------------------------------------------------------------------------------------ sft.py end to end
def test_sft_tiny_cpu_trains_selects_saves_merges_and_pushes(workdir):
    """accelerate launch of the tiny config: CAR scoring with the tuned model, top-2/3 selection, LoRA, merge, push.

    The push goes to tests/hub_server.py (a loopback Hub): the uploaded card must carry the CAR sections.
    """
    from hub_server import TOKEN, HubServer

    out = workdir / "runs" / "sft-tiny-cpu"
    with HubServer(lifetime=600) as hub:
        run(accelerate(*ONE_CPU, str(RECIPES / "sft.py"), "--config", str(CONFIGS / "sft_tiny_cpu.yaml"),
                       "--card_base_model", "car-hf/tiny-random-llama", "--push_to_hub", "true",
                       "--hub_model_id", "car-hf/tiny-car-sft"), workdir,
            env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_TELEMETRY": "1"})
        assert hub.unknown == []
        uploaded = hub.files("car-hf/tiny-car-sft", "model")
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "trainer_state.json"} <= set(uploaded)
    assert not [name for name in uploaded if name.startswith("_car_scored")]  # the scores stay local
    assert uploaded["README.md"] == (out / "README.md").read_bytes()

    # Scores: car_hf's base_loss of the model being tuned, at the training max_length (256).
    from car_hf import add_base_loss

    # The score cache: one key, the 24 rows in 6 chunks of scoring_chunk_rows=4, all scored by the one process.
    parts = sorted((out / "_car_scored" / "cache").glob("*/chunk-*"))
    assert [p.name for p in parts] == [f"chunk-{c:05d}-of-00006" for c in range(6)]
    scored = concatenate_datasets([load_from_disk(str(p)) for p in parts])
    expected = Dataset.from_list(tiny_model.synthetic_rows()).map(
        add_base_loss(str(workdir / "runs" / "tiny-model"), max_length=256), batched=True)
    assert list(scored["base_loss"]) == pytest.approx(list(expected["base_loss"]), abs=1e-6)
    progress = json.loads((out / "_car_scored" / "progress-00000-of-00001.json").read_text())
    assert progress["scored"] == list(range(6))

    # Selection: the 16 best-CAR rows of 24, recorded in trainer_state.json and the model card.
    from car_hf.training.callbacks import read_selection_summary

    state = json.loads((out / "trainer_state.json").read_text())
    summary = read_selection_summary(out)
    assert (summary["rows_kept"], summary["rows_total"], summary["top_fraction"]) == (16, 24, 0.66)
    car = pd.Series(list(scored["reward"])) / (1 + pd.Series(list(scored["base_loss"])))
    assert summary["cutoff"] == pytest.approx(car.sort_values(ascending=False).iloc[15])
    card = (out / "README.md").read_text()
    assert card.count("## CAR data selection") == 1 and "16 of 24 rows" in card
    assert "No selection summary was recorded" not in card
    assert "<!-- car_hf:begin -->" in card and "base_model: car-hf/tiny-random-llama" in card

    # Training: the loss falls (the first logged step is before any update).
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses
    assert losses[-1] < losses[0] - 1.0, losses

    # Adapter and merged model reload with the same logits; both differ from the untrained base.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert (out / "adapter_config.json").is_file() and (out / "merged" / "config.json").is_file()
    merged_card = (out / "merged" / "README.md").read_text()
    assert merged_card.count("## CAR data selection") == 1 and "library_name: transformers" in merged_card
    assert "library_name: peft" in card
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    base_logits = logits(AutoModelForCausalLM.from_pretrained(workdir / "runs" / "tiny-model").eval(), ids)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(workdir / "runs" / "tiny-model"),
                                        str(out)).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    adapter_logits, merged_logits = logits(adapted, ids), logits(merged, ids)
    assert (adapter_logits - merged_logits).abs().max().item() < 1e-5
    assert (adapter_logits - base_logits).abs().max().item() > 1e-2


# ------------------------------------------------------------------------------------------------ sft.py input errors
def test_sft_missing_file_and_column_fail_before_any_model_load(workdir, tmp_path, no_model_loading):
    with pytest.raises(ConfigError, match="no such file or folder"):
        sft.main(*sft_args(workdir, tmp_path, "--dataset_name", "runs/nope/train.jsonl"))
    with pytest.raises(ConfigError, match="no such model folder"):
        sft.main(*sft_args(workdir, tmp_path, "--model_name_or_path", str(tmp_path / "missing-model")))
    with pytest.raises(InputError, match=r"column 'quality' \(reward_column: rewards of each row\) is missing.*judge_pre"):
        sft.main(*sft_args(workdir, tmp_path, "--reward_column", "quality"))
    with pytest.raises(InputError, match="column 'answer' .* is missing"):
        sft.main(*sft_args(workdir, tmp_path, "--response_column", "answer"))
    with pytest.raises(ConfigError, match="top_fraction.*1.5"):
        sft.main(*sft_args(workdir, tmp_path, "--select_value", "1.5"))
    assert not (tmp_path / "out").exists()


def test_sft_generator_selection_needs_a_generator_column(workdir, tmp_path, no_model_loading):
    rows = [{k: v for k, v in r.items() if k != "generator"} for r in tiny_model.synthetic_rows(2)]
    data = tmp_path / "no_generator.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    script_args, *others = sft_args(workdir, tmp_path, "--dataset_name", str(data), "--select", "generator")
    script_args.select_value = None  # the tiny config's top_fraction value: generator selection takes none
    with pytest.raises(InputError, match=r"column 'generator' \(generator of each row, needed by select: generator"):
        sft.main(script_args, *others)


def test_sft_selection_keeping_no_row_fails_before_training(workdir, tmp_path, no_model_loading):
    """Scored data: the empty selection is found without loading any model."""
    rows = [dict(r, reward=r["judge_preference"], base_loss=1.0 + i / 10) for i, r in
            enumerate(tiny_model.synthetic_rows(2))]
    data = tmp_path / "scored.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"keeps 0 of 6 rows"):
        sft.main(*sft_args(workdir, tmp_path, "--dataset_name", str(data), "--select", "threshold",
                           "--select_value", "1e9"))


def test_sft_assistant_only_loss_needs_a_chat_template(workdir, tmp_path, no_model_loading):
    plain = tmp_path / "plain-model"
    shutil.copytree(workdir / "runs" / "tiny-model", plain)
    (plain / "chat_template.jinja").unlink()
    with pytest.raises(ConfigError, match="assistant_only_loss: true needs a chat template"):
        sft.main(*sft_args(workdir, tmp_path, "--model_name_or_path", str(plain), "--assistant_only_loss", "true"))


def test_negative_rewards_need_a_transform_before_any_model_load(workdir, tmp_path, no_model_loading):
    rows = [dict(r, judge_preference=r["judge_preference"] - 0.5) for r in tiny_model.synthetic_rows(2)]
    data = tmp_path / "negative.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match=r"'judge_preference' has \d negative reward.*reward_transform to sigmoid"):
        sft.main(*sft_args(workdir, tmp_path, "--dataset_name", str(data)))
    args, config = score.make_parser().parse_args_and_config(
        ["--config", str(CONFIGS / "score_tiny_cpu.yaml"), "--dataset_name", str(data)])
    with pytest.raises(InputError, match="negative reward.*reward_transform to sigmoid"):
        score.main(args, config)


def test_sft_raw_data_empty_selection_is_reported_after_scoring_but_before_training(workdir, tmp_path, monkeypatch):
    import trl

    def refuse(*args, **kwargs):
        raise AssertionError("the trainer was built")

    monkeypatch.setattr(trl.SFTTrainer, "__init__", refuse)
    with pytest.raises(ValueError, match="keeps 0 of 24 rows"):
        sft.main(*sft_args(workdir, tmp_path, "--select", "threshold", "--select_value", "1e9"))
    assert len(list((tmp_path / "out" / "_car_scored" / "cache").glob("*/chunk-*/state.json"))) == 6  # scored, refused
    assert not (tmp_path / "out" / "adapter_config.json").exists()


# ------------------------------------------------------------------------------------------------ configs
REALISTIC = {"qwen2.5-0.5b_lora.yaml": 8, "qwen2.5-0.5b_full.yaml": 8, "llama-3.2-1b_lora.yaml": 8}


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_realistic_sft_configs_parse_with_the_papers_settings(name, monkeypatch):
    import transformers.training_args
    from trl import get_peft_config

    # bf16: true is refused on a machine without a bf16 GPU; these configs are for GPU machines.
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    script_args, training_args, model_args, config = parse_sft("--config", str(CONFIGS / name))
    gpus = REALISTIC[name]
    assert training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * gpus == 32
    assert training_args.num_train_epochs == 2 and training_args.warmup_steps == 100
    assert str(training_args.lr_scheduler_type.value) == "cosine"
    assert training_args.max_length == 4096 and training_args.bf16 is True and model_args.dtype == "bfloat16"
    assert training_args.completion_only_loss is True and training_args.activation_checkpointing is True
    if model_args.use_peft:
        assert 1e-4 <= training_args.learning_rate <= 2e-4
        peft_config = get_peft_config(model_args)
        assert peft_config.r == 16 and "q_proj" in peft_config.target_modules
        assert script_args.merge_adapter is True
    else:
        assert training_args.learning_rate == 2e-5
    from car_hf.training.selection import check_selection

    check_selection(script_args.select, script_args.select_value)
    assert script_args.select in ("generator", "best_of_n") and config.reward_transform == "sigmoid"
    assert script_args.dataset_name.startswith("runs/score-magpie-")
    assert script_args.card_dataset == "Magpie-Align/Magpie-100K-Generator-Zoo"


def test_score_configs_parse():
    magpie, magpie_config = score.make_parser().parse_args_and_config(["--config", str(CONFIGS / "score_magpie.yaml")])
    assert magpie.dataset_layout == "wide" and magpie.zoo_reward_key == "Skywork-Reward-Gemma-2-27B"
    assert magpie_config.score_max_length == 4096 and magpie_config.reward_transform == "sigmoid"
    zoo, zoo_config = score.make_parser().parse_args_and_config(["--config", str(CONFIGS / "score_zoo_gemma.yaml")])
    assert zoo_config.base_model == "google/gemma-3-270m" and zoo_config.reward_column == "judge_preference"
    assert (REPO / zoo.dataset_name).resolve() == (REPO.parent / "shared" / "data" / "alpaca_eval_zoo" /
                                                   "zoo.jsonl.gz").resolve()


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero3", "DEEPSPEED")])
def test_accelerate_configs_load_and_validate(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = str(RECIPES / "accelerate" / f"{name}.yaml")
    config = load_config_from_file(path)
    assert config.distributed_type.value == kind and config.num_processes == 8 and config.mixed_precision == "bf16"
    parser = launch_command_parser()
    options = {action.dest for action in parser._actions}
    unknown = [k for k in [*config.fsdp_config, *config.deepspeed_config] if k not in options]
    assert not unknown, f"not accelerate launch options: {unknown}"
    args = parser.parse_args(["--config_file", path, "recipes/sft.py", "--config", "c.yaml"])
    _validate_launch_command(args)
    assert args.num_processes == 8 and args.mixed_precision == "bf16"
    if kind == "MULTI_GPU":
        assert args.multi_gpu
    elif kind == "FSDP":
        from unittest import mock

        from accelerate.utils import FullyShardedDataParallelPlugin
        from accelerate.utils.launch import prepare_multi_gpu_env

        with mock.patch.dict(os.environ, prepare_multi_gpu_env(args)):
            plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
        assert "FULL_STATE_DICT" in str(plugin.state_dict_type) and plugin.activation_checkpointing is False
    else:
        assert args.use_deepspeed and int(args.zero_stage) == 3 and args.zero3_save_16bit_model in (True, "true")


# ------------------------------------------------------------------------------------------------ score.py
SCORE = ("--config", str(CONFIGS / "score_tiny_cpu.yaml"), "--max_instructions", "5")  # 15 rows: odd on purpose


def read_scored(folder: Path) -> pd.DataFrame:
    return load_from_disk(str(folder / "scored")).to_pandas()


@pytest.fixture(scope="module")
def single_process_scores(workdir):
    run([sys.executable, str(RECIPES / "score.py"), *SCORE, "--output_dir", "runs/score-1"], workdir)
    return read_scored(workdir / "runs" / "score-1")


def test_score_single_process_output(workdir, single_process_scores):
    out = workdir / "runs" / "score-1"
    df = single_process_scores
    rows = tiny_model.synthetic_rows()[:15]
    assert len(df) == 15 and df["output"].tolist() == [r["output"] for r in rows]  # every row, in order
    assert df["reward"].tolist() == [r["judge_preference"] for r in rows]
    assert (df["car"] - df["reward"] / (1 + df["base_loss"])).abs().max() < 1e-12
    assert df["base_loss"].between(4, 9).all() and (df["base_loss_tokens"] > 0).all()
    leaderboard = pd.read_csv(out / "leaderboard.csv")
    assert set(leaderboard["generator"]) == set(tiny_model.GENERATORS) and (leaderboard["n"] == 5).all()
    assert "CAR = reward / (1 + beta * base_loss)" in (out / "leaderboard.md").read_text()
    config = json.loads((out / "car_config.json").read_text())
    assert config["reward_column"] == "judge_preference" and config["n_rows"] == 15 and config["chunk_rows"] == 4
    assert config["score_max_length"] == 256 and config["car_hf_version"]
    (key,) = (out / "cache").iterdir()  # one configuration, four chunks of 4, 4, 4 and 3 rows
    assert sorted(p.name for p in key.glob("chunk-*")) == [f"chunk-{c:05d}-of-00004" for c in range(4)]
    progress = json.loads((out / "progress-00000-of-00001.json").read_text())
    assert progress["scored"] == [0, 1, 2, 3] and progress["skipped"] == []


def test_score_output_is_a_ranking_folder_car_hf_push_publishes(workdir, single_process_scores, tmp_path):
    from car_hf.cli import main as cli

    assert cli(["push", str(workdir / "runs" / "score-1"), "me/tiny-scores", "--dry-run", str(tmp_path / "up")]) == 0
    card = (tmp_path / "up" / "README.md").read_text()
    assert "judge_preference" in card and "leaderboard" in card.lower()
    assert len(load_from_disk(str(workdir / "runs" / "score-1" / "scored"))) == 15


def test_score_two_processes_equals_one_process(workdir, single_process_scores):
    run(accelerate(*TWO_CPU, str(RECIPES / "score.py"), *SCORE, "--output_dir", "runs/score-2"), workdir)
    out = workdir / "runs" / "score-2"
    pd.testing.assert_frame_equal(read_scored(out), single_process_scores, check_exact=True)
    progress = [json.loads((out / f"progress-{r:05d}-of-00002.json").read_text()) for r in range(2)]
    assert [p["chunks"] for p in progress] == [[0, 1], [2, 3]]  # contiguous, no chunk twice, none left out


def test_score_resumes_after_a_kill_without_rescoring(workdir, single_process_scores):
    out = workdir / "runs" / "score-resume"
    killed = run(accelerate(*TWO_CPU, str(RECIPES / "score.py"), *SCORE, "--output_dir", "runs/score-resume"),
                 workdir, env={"CAR_HF_FAIL_AFTER_CHUNKS": "1"}, check=False)
    assert killed.returncode != 0
    # Each process exits after its first chunk (0 and 2); the launcher may stop the other one before it saves.
    done = [int(p.name.split("-")[1]) for p in (out / "cache").glob("*/chunk-*")]
    assert sorted(done) in ([0], [2], [0, 2]), done
    assert not (out / "scored").exists()

    # Resume on one process (the world size may change: chunks do not depend on it).
    run([sys.executable, str(RECIPES / "score.py"), *SCORE, "--output_dir", "runs/score-resume"], workdir)
    progress = json.loads((out / "progress-00000-of-00001.json").read_text())
    assert progress["skipped"] == sorted(done)  # nothing scored twice
    assert progress["scored"] == [c for c in range(4) if c not in done]
    pd.testing.assert_frame_equal(read_scored(out), single_process_scores, check_exact=True)


def test_score_input_errors_before_any_model_load(workdir, tmp_path, no_model_loading):
    args, config = score.make_parser().parse_args_and_config(
        ["--config", str(CONFIGS / "score_tiny_cpu.yaml"), "--dataset_name",
         str(workdir / "runs" / "tiny-data" / "train.jsonl"), "--reward_column", "stars"])
    with pytest.raises(InputError, match=r"column 'stars' .* is missing.*judge_preference"):
        score.main(args, config)
    args.dataset_name = str(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="no such file or folder"):
        score.main(args, config)
