"""The vllm engine over a fake ``vllm`` module: what car_hf passes to LLM and SamplingParams, and what it reads back.

vLLM needs a GPU; on one: ``pip install "car_hf[vllm]"`` and
``python recipes/generate.py --dataset_name prompts.jsonl --teacher Qwen/Qwen2.5-7B-Instruct --engine vllm
--tensor_parallel_size 2 --output_dir runs/gen`` (see car_hf/engines/vllm_engine.py).
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass

import pytest
import torch
from datasets import Dataset

from car_hf import ConfigError
from car_hf.errors import GenerationError
from car_hf.generate import add_responses, clear_engine_cache


@dataclass
class FakeCompletion:
    text: str
    finish_reason: str
    token_ids: list[int]


@dataclass
class FakeRequestOutput:
    outputs: list[FakeCompletion]


class FakeLLM:
    """Records its construction and every generate call; answers with the prompt's length and a fixed ending."""

    instances: list[FakeLLM] = []
    tokenizer = None
    finish_reason = None  # set to force one

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[tuple] = []
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return FakeLLM.tokenizer

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append((prompts, sampling_params, use_tqdm))
        outputs = []
        for prompt in prompts:
            n = len(prompt["prompt_token_ids"])
            reason = FakeLLM.finish_reason or ("length" if n % 2 else "stop")
            outputs.append(FakeRequestOutput([FakeCompletion(f"answer to {n} tokens", reason, [7] * (n % 5 + 1))]))
        return outputs


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch, tokenizer):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # find_spec("vllm") sees it installed
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    FakeLLM.instances, FakeLLM.tokenizer, FakeLLM.finish_reason = [], tokenizer, None
    monkeypatch.setitem(sys.modules, "vllm", module)
    clear_engine_cache()  # an engine memoized by another test would be another test's fake
    yield module
    clear_engine_cache()


def test_llm_and_sampling_params_get_exactly_the_configuration(fake_vllm, tokenizer):
    generator = add_responses("org/teacher-7b", engine="vllm", revision="v1.0", tensor_parallel_size=4,
                              generation_seed=11, teacher_dtype="bfloat16", temperature=0.6, top_p=0.95,
                              max_new_tokens=300, teacher_trust_remote_code=True)
    prompts = ["How do I cook rice?", "Hi"]
    results = generator.generate(prompts)
    (llm,) = FakeLLM.instances
    assert llm.kwargs == {"model": "org/teacher-7b", "revision": "v1.0", "tokenizer_revision": "v1.0",
                          "dtype": "bfloat16", "seed": 11, "tensor_parallel_size": 4, "trust_remote_code": True}
    (inputs, params, use_tqdm), = llm.calls
    assert params.kwargs == {"n": 1, "temperature": 0.6, "top_p": 0.95, "max_tokens": 300, "seed": 11,
                             "stop_token_ids": [2, 6]}  # <eos> and the template's end of turn <|end|>
    expected_ids = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                  tokenize=True)["input_ids"] for p in prompts]
    assert inputs == [{"prompt_token_ids": ids} for ids in expected_ids] and use_tqdm is False
    n = [len(ids) for ids in expected_ids]
    assert [r.text for r in results] == [f"answer to {k} tokens" for k in n]
    assert [r.finish_reason for r in results] == ["length" if k % 2 else "stop" for k in n]
    assert [r.tokens for r in results] == [k % 5 + 1 for k in n]
    assert [r.token_ids for r in results] == [(7,) * (k % 5 + 1) for k in n]


def test_map_reads_outputs_back_into_the_columns_and_builds_the_engine_once(fake_vllm):
    ds = Dataset.from_dict({"instruction": ["How do I cook rice?", "Hi", "Why is the sky blue?"]})
    generator = add_responses("org/teacher-7b", engine="vllm", max_new_tokens=16)
    out = ds.map(generator, batched=True, batch_size=2)
    assert out["response"][1].startswith("answer to ") and len(FakeLLM.instances) == 1
    assert out["response_truncated"] == [r == "length" for r in out["response_finish_reason"]]
    assert FakeLLM.instances[0].calls[0][1].kwargs["temperature"] == 0.0  # greedy
    assert FakeLLM.instances[0].calls[0][1].kwargs["top_p"] == 1.0
    assert [len(c[0]) for c in FakeLLM.instances[0].calls] == [2, 1]


def test_auto_picks_vllm_on_a_gpu_machine_that_has_it(fake_vllm, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert add_responses("org/teacher-7b").config.engine == "vllm"


def test_an_aborted_request_is_an_error_not_a_response(fake_vllm):
    FakeLLM.finish_reason = "abort"
    with pytest.raises(GenerationError, match=r"row 0: vLLM ended the response with finish_reason 'abort'"):
        add_responses("org/teacher-7b", engine="vllm").generate(["Hi"])


def test_without_vllm_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ConfigError, match=r'pip install "car_hf\[vllm\]"'):
        add_responses("org/teacher-7b", engine="vllm", max_new_tokens=5).generate(["Hi"])
