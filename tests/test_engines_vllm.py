"""The vllm engine over tests/vllm_double.py, a strict double of vLLM >= 0.11 (real signatures: unknown arguments are
refused; vLLM's errors on an over-long prompt and an unknown dtype; stop tokens returned as vLLM returns them).

vLLM needs a GPU; on one: ``pip install "car_hf[vllm]"`` and
``python recipes/generate.py --dataset_name prompts.jsonl --teacher Qwen/Qwen2.5-7B-Instruct --engine vllm
--tensor_parallel_size 2 --output_dir runs/gen`` (see car_hf/generation/engines/vllm_engine.py).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from datasets import Dataset, load_dataset

import tiny
import vllm_double
from car_hf import ConfigError, InputError
from car_hf.cli import main
from car_hf.core.data import map_scores
from car_hf.core.errors import GenerationError
from car_hf.generation.generate import add_responses, clear_engine_cache, map_batch_size, release_engines
from car_hf.generation.teacher import TEACHER_DTYPES, TeacherConfig
from vllm_double import END, DoubleLLM, SamplingParams

QUESTIONS = ["How do I cook rice?", "Hi", "Why is the sky blue?", "Tips to save money?", "Name a prime."]


@pytest.fixture
def fake_vllm(monkeypatch, tokenizer):
    module = vllm_double.install(monkeypatch, tokenizer)
    clear_engine_cache()  # an engine memoized by another test would be another test's double
    yield module
    clear_engine_cache()


def chat_ids(tokenizer, prompt):
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=True)["input_ids"]


# ------------------------------------------------------------------------------------------------ the double is strict
def test_the_double_refuses_what_vllm_refuses(fake_vllm, tokenizer):
    with pytest.raises(TypeError, match="max_num_seq"):
        DoubleLLM("m", max_num_seq=4)  # EngineArgs has max_num_seqs
    with pytest.raises(ValueError, match="Unknown dtype: 'bf16'"):
        DoubleLLM("m", dtype="bf16")
    with pytest.raises(TypeError, match="stop_token"):
        SamplingParams(stop_token=[2])
    with pytest.raises(ValueError, match="top_k must be 0"):
        SamplingParams(top_k=-2)
    llm = DoubleLLM("m", max_model_len=8)
    with pytest.raises(ValueError, match=r"The decoder prompt \(length 9\) is longer than the maximum model length "):
        llm.generate([{"prompt_token_ids": [7] * 9}], SamplingParams(max_tokens=4))
    assert llm.calls == []  # nothing ran
    (out,) = llm.generate([{"prompt_token_ids": [3, 7, 8, 9]}], SamplingParams(max_tokens=10, stop_token_ids=[END]))
    completion = out.outputs[0]  # respond: [9, 8, 7, <|end|>, ...]: the stop token is kept last, as vLLM does
    assert (completion.finish_reason, completion.stop_reason) == ("stop", END)
    assert list(completion.token_ids) == [9, 8, 7, END]


# ------------------------------------------------------------------------------------------------ engine options
def test_llm_and_sampling_params_get_exactly_the_configuration(fake_vllm, tokenizer):
    generator = add_responses("org/teacher-7b", engine="vllm", revision="v1.0", tensor_parallel_size=4,
                              generation_seed=11, teacher_dtype="bf16", temperature=0.6, top_p=0.95,
                              max_new_tokens=300, teacher_trust_remote_code=True, gpu_memory_utilization=0.7,
                              max_model_len=1024, enforce_eager=True,
                              engine_kwargs={"max_num_seqs": 512, "enable_prefix_caching": True})
    results = generator.generate(QUESTIONS[:2])
    (llm,) = DoubleLLM.instances
    assert llm.kwargs == {"model": "org/teacher-7b", "revision": "v1.0", "tokenizer_revision": "v1.0",
                          "dtype": "bfloat16", "seed": 11, "tensor_parallel_size": 4, "trust_remote_code": True,
                          "gpu_memory_utilization": 0.7, "enforce_eager": True, "max_model_len": 1024,
                          "max_num_seqs": 512, "enable_prefix_caching": True}
    (call,) = llm.calls
    assert call["params"] == SamplingParams(
        n=1, temperature=0.6, top_p=0.95, top_k=0, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0,
        frequency_penalty=0.0, max_tokens=300, seed=11, stop_token_ids=[2, END])  # <eos> and <|end|>
    assert call["prompts"] == [{"prompt_token_ids": chat_ids(tokenizer, p)} for p in QUESTIONS[:2]]
    for result, prompt in zip(results, QUESTIONS[:2]):
        answer = vllm_double.words(chat_ids(tokenizer, prompt))  # then <|end|>: kept last by vLLM, not in the text
        assert result.token_ids == (*answer, END) and result.tokens == len(answer) + 1
        assert result.finish_reason == "stop" and result.text == tokenizer.decode(answer)
    assert generator.record()["teacher_dtype"] == "bfloat16"


def test_engine_kwargs_are_checked_against_vllms_engine_args_before_the_model_loads(fake_vllm):
    with pytest.raises(ConfigError, match=r"engine_kwargs: 'max_num_seq' is not an option .*you mean 'max_num_seqs'"):
        add_responses("org/teacher-7b", engine="vllm", engine_kwargs={"max_num_seq": 4}).generate(["Hi"])
    assert DoubleLLM.instances == []
    with pytest.raises(ConfigError, match="engine_kwargs sets 'dtype', which car_hf sets from teacher_dtype"):
        TeacherConfig(teacher="m", engine="vllm", engine_kwargs={"dtype": "half"})
    with pytest.raises(ConfigError, match=r"\['gpu_memory_utilization'\] are options of engine vllm; engine "
                                          "transformers does not use them"):
        TeacherConfig(teacher="m", engine="transformers", gpu_memory_utilization=0.5)
    with pytest.raises(ConfigError, match="engine_kwargs must be a JSON object"):
        TeacherConfig(teacher="m", engine="vllm", engine_kwargs="{max_num_seqs: 4}")
    assert TeacherConfig(teacher="m", engine_kwargs='{"max_num_seqs": 4}').engine_kwargs == {"max_num_seqs": 4}


def test_dtype_names_are_validated_and_stored_as_vllms(fake_vllm):
    assert [TeacherConfig(teacher="m", teacher_dtype=d).teacher_dtype for d in ("bf16", "fp16", "fp32", "auto")] == [
        "bfloat16", "float16", "float32", "auto"]
    assert TeacherConfig(teacher="m", teacher_dtype=torch.bfloat16).teacher_dtype == "bfloat16"
    with pytest.raises(ConfigError, match=r"teacher_dtype must be one of .*got 'bfloat'"):
        TeacherConfig(teacher="m", teacher_dtype="bfloat")
    for alias in TEACHER_DTYPES:  # every accepted name reaches vLLM as one of its own (the double refuses others)
        add_responses("org/teacher-7b", engine="vllm", teacher_dtype=alias).generate(["Hi"])
    assert {llm.engine_args.dtype for llm in DoubleLLM.instances} == {"bfloat16", "float16", "float32", "auto"}
    from car_hf.core.devices import DTYPE_ALIASES  # the loaders' names: the same set

    assert set(TEACHER_DTYPES) - {"auto"} == set(DTYPE_ALIASES)


def test_engine_options_reach_the_config_from_yaml_and_the_command_line(tmp_path):
    from test_recipe_commands import load_recipe

    recipe = load_recipe("generate")  # recipes/generate.py's parser: TrlParser over TeacherConfig
    config_file = tmp_path / "gen.yaml"
    config_file.write_text("teacher: org/m\nengine: vllm\ngpu_memory_utilization: 0.8\nmax_model_len: 4096\n"
                           "enforce_eager: true\nengine_kwargs:\n  max_num_seqs: 64\n  quantization: fp8\n")
    _, config = recipe.make_parser().parse_args_and_config(["--config", str(config_file)])
    assert (config.gpu_memory_utilization, config.max_model_len, config.enforce_eager, config.engine_kwargs) == (
        0.8, 4096, True, {"max_num_seqs": 64, "quantization": "fp8"})
    from car_hf.cli import build_parser
    from car_hf.cli.teachers import _teacher_defaults

    args = build_parser().parse_args(["generate", "q.jsonl", "--teacher", "org/m", "--engine", "vllm", "-o", "o.jsonl",
                                      "--max-model-len", "2048", "--engine-kwargs", '{"max_num_seqs": 8}'])
    config = _teacher_defaults(args, teacher=args.teacher)
    assert (config.max_model_len, config.engine_kwargs) == (2048, {"max_num_seqs": 8})


# ------------------------------------------------------------------------------------------------ calls and stops
def test_a_map_hands_vllm_the_whole_chunk_in_one_call(fake_vllm):
    ds = Dataset.from_dict({"instruction": QUESTIONS})
    generator = add_responses("org/teacher-7b", engine="vllm", max_new_tokens=16)
    assert map_batch_size(generator, 2) is None and map_batch_size(add_responses("x", engine="transformers"), 2) == 2
    out = map_scores(ds, generator, batch_size=map_batch_size(generator, 2))
    assert [len(c["prompts"]) for c in DoubleLLM.instances[0].calls] == [5]  # not [2, 2, 1]
    assert out["response_truncated"] == [False] * 5 and len(DoubleLLM.instances) == 1


def test_vllm_and_transformers_engines_agree_token_for_token_under_greedy(fake_vllm, tokenizer):
    model = tiny.build_causal_lm(tokenizer)
    first = add_responses((model, tokenizer), max_new_tokens=12).generate(QUESTIONS)
    others = {t for g in first[1:] for t in g.token_ids}
    token = next(t for t in first[0].token_ids[3:] if t not in others)
    with torch.no_grad():  # <|end|> takes the place of a token of the first answer: it ends early, the rest do not
        model.lm_head.weight[END] = model.lm_head.weight[token] * 1.05

    def greedy(prompt_ids):
        ids = torch.tensor([prompt_ids])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=0)
        return out[0, len(prompt_ids):].tolist()

    DoubleLLM.respond = staticmethod(greedy)
    ds = Dataset.from_dict({"instruction": QUESTIONS})
    direct = ds.map(add_responses((model, tokenizer), max_new_tokens=12, teacher_name="t"), batched=True)
    served = ds.map(add_responses("org/tiny", engine="vllm", max_new_tokens=12, teacher_name="t"), batched=True)
    for column in ("response", "response_finish_reason", "response_truncated", "response_tokens"):
        assert served[column] == direct[column], column
    assert "stop" in direct["response_finish_reason"] and "length" in direct["response_finish_reason"]


def test_an_aborted_request_is_an_error_not_a_response(fake_vllm):
    DoubleLLM.finish_reason = "abort"
    with pytest.raises(GenerationError, match=r"row 0: vLLM ended the response with finish_reason 'abort'"):
        add_responses("org/teacher-7b", engine="vllm").generate(["Hi"])


# ------------------------------------------------------------------------------------------------ over-long prompts
def test_a_prompt_over_max_model_len_is_an_input_error_naming_the_row_before_anything_is_sent(fake_vllm, tokenizer):
    long = "word " * 40
    n = len(chat_ids(tokenizer, long))
    generator = add_responses("org/teacher-7b", engine="vllm", max_new_tokens=16, max_model_len=n + 10)
    ds = Dataset.from_dict({"instruction": ["Hi", long, "Hello"]})
    with pytest.raises(InputError, match=rf"row 1: the prompt is {n} tokens, and with max_new_tokens=16 the response "
                                         rf"would end past the {n + 10} tokens of 'org/teacher-7b'"):
        ds.map(generator, batched=True, with_indices=True)
    assert DoubleLLM.instances[0].calls == []  # vLLM got nothing (it would raise a bare ValueError, or cut short)


def test_cli_keeps_finished_chunks_when_a_prompt_does_not_fit_and_resumes(fake_vllm, tokenizer, tmp_path, capsys):
    data = tmp_path / "q.jsonl"
    prompts = QUESTIONS[:4] + ["word " * 40]
    data.write_text("".join(json.dumps({"instruction": p}) + "\n" for p in prompts))
    limit = max(len(chat_ids(tokenizer, p)) for p in QUESTIONS) + 8
    command = ["generate", str(data), "--teacher", "org/m", "--engine", "vllm", "--max-new-tokens", "8",
               "--chunk-rows", "2", "-o", str(tmp_path / "out.jsonl")]
    assert main([*command, "--max-model-len", str(limit)]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # besides progress bars
    assert line.startswith("car-hf generate: error: row 4: the prompt is")
    assert [len(c["prompts"]) for c in DoubleLLM.instances[0].calls] == [2, 2]  # chunks 0 and 1, kept
    assert len(list((tmp_path / "out.jsonl.checkpoint").glob("*/chunk-*"))) == 2
    clear_engine_cache()
    assert main([*command, "--max-model-len", "2048"]) == 0  # max_model_len changes no text: chunks are reused
    assert [len(c["prompts"]) for c in DoubleLLM.instances[-1].calls] == [1]
    rows = load_dataset("json", data_files=str(tmp_path / "out.jsonl"), split="train")
    assert rows["instruction"] == prompts and all(rows["response_tokens"])


# ------------------------------------------------------------------------------------------------ memory, install
def test_release_engines_shuts_vllm_down_and_frees_its_memory(fake_vllm):
    generator = add_responses("org/teacher-7b", engine="vllm")
    generator.generate(["Hi"])
    (llm,) = DoubleLLM.instances
    engine = generator.engine()
    assert release_engines() == 1
    assert llm.llm_engine.engine_core.shut_down and fake_vllm.cleanups == [False] and engine.llm is None
    with pytest.raises(GenerationError, match="was closed"):
        engine.generate([[{"role": "user", "content": "Hi"}]], [0])
    generator.generate(["Hi"])  # a new engine is built on demand
    assert len(DoubleLLM.instances) == 2 and release_engines() == 1 and release_engines() == 0


def test_auto_picks_vllm_on_a_gpu_machine_that_has_it(fake_vllm, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert add_responses("org/teacher-7b").config.engine == "vllm"


def test_without_vllm_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ConfigError, match=r'pip install "car_hf\[vllm\]"'):
        add_responses("org/teacher-7b", engine="vllm", max_new_tokens=5).generate(["Hi"])


def test_the_engines_documented_command_parses_with_the_recipes_options():
    import car_hf.generation.engines.vllm_engine as module
    from test_recipe_commands import _commands_in, load_recipe

    (command,) = _commands_in(module.__doc__, "car_hf/generation/engines/vllm_engine.py")
    args, config = load_recipe("generate").make_parser().parse_args_and_config(command.script_args)
    assert (config.engine, config.max_model_len, config.gpu_memory_utilization, args.output_dir) == (
        "vllm", 8192, 0.85, "runs/gen-qwen7b")
