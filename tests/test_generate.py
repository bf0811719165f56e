"""add_responses with the transformers engine on tiny models (columns, batching, seeds, bad input, caching), and
recipes/generate.py (1 and 2 processes, kill and resume, a failing endpoint).

The OpenAI-compatible engine is tested in test_engines_openai.py, the vLLM engine in test_engines_vllm.py.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_dataset, load_from_disk

import tiny
from car_hf import CARConfig, ConfigError, InputError
from car_hf.core.errors import GenerationError
from car_hf.generation.engines.base import finish, prompt_ids, stop_token_ids
from car_hf.generation.engines.transformers_engine import TransformersEngine, pad_left
from car_hf.generation.generate import ResponseGenerator, add_responses, read_prompt, resolve_engine
from car_hf.generation.teacher import TeacherConfig

END = 6  # <|end|>: the tiny chat template's end of turn
QUESTIONS = ["How do I cook rice?", "Why is the sky blue today?", "Hi", "Write a short note about the quiet harbor "
             "and the library across the bridge, please, with three tips to read faster.", "Tips to save money?"]


@pytest.fixture(scope="module")
def stopping_lm(tokenizer):
    """The tiny Llama, except that <|end|> replaces one token it writes in its first answer: greedy answers to
    QUESTIONS then end some turns early ("stop") and run others to max_new_tokens ("length")."""
    model = tiny.build_causal_lm(tokenizer)
    first = add_responses((model, tokenizer), max_new_tokens=12).generate(QUESTIONS)
    others = {t for g in first[1:] for t in g.token_ids}
    token = next(t for t in first[0].token_ids[3:] if t not in others)
    with torch.no_grad():
        model.lm_head.weight[END] = model.lm_head.weight[token] * 1.05
    return model


@pytest.fixture(scope="module")
def expected(tokenizer, stopping_lm):
    """Reference: each of QUESTIONS alone through model.generate (12 new tokens), no padding, cut at a stop token."""
    stops = [2, END]
    out = []
    for prompt in QUESTIONS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)["input_ids"]
        new = stopping_lm.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                   max_new_tokens=12, do_sample=False, eos_token_id=stops, pad_token_id=0)
        out.append(tuple(finish(new[0, len(ids):].tolist(), stops, tokenizer).token_ids))
    return out


# ------------------------------------------------------------------------------------------------ TeacherConfig
def test_teacher_config_fields_do_not_collide_with_scoring_or_trl():
    from trl import ModelConfig, ScriptArguments, SFTConfig

    ours = {f.name for f in dataclasses.fields(TeacherConfig)}
    for other in (CARConfig, SFTConfig, ModelConfig, ScriptArguments):
        assert not ours & {f.name for f in dataclasses.fields(other)}, other.__name__
    assert all(f.metadata.get("help") for f in dataclasses.fields(TeacherConfig))


@pytest.mark.parametrize("options,message", [
    ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"engine": "tgi"}, "engine must be one of"),
    ({"engine": "openai"}, "engine openai needs base_url"),
    ({"base_url": "http://x/v1", "engine": "vllm"}, "base_url is for engine openai"),
    ({"base_url": "http://x/v1", "chat_template": "{{ x }}"}, "the server applies its own"),
    ({"chat_template": "no/such/template.jinja"}, "neither a Jinja template nor a file"),
])
def test_teacher_config_refuses_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        TeacherConfig(teacher="m", **options)


def test_a_token_passed_as_api_key_env_is_refused_without_echoing_it():
    token = "hf_" + "a1B2" * 9
    with pytest.raises(ConfigError, match="NAME of an environment variable") as caught:
        TeacherConfig(teacher="m", base_url="http://x/v1", api_key_env=token)
    assert token not in str(caught.value)


def test_cache_key_follows_what_changes_the_text():
    base = add_responses("org/m", max_new_tokens=8)
    assert add_responses("org/m", max_new_tokens=8, max_retries=0, max_concurrency=1).cache_identity() == \
        base.cache_identity()
    for change in ({"system_prompt": "Be brief."}, {"temperature": 0.7}, {"revision": "v2"}, {"max_new_tokens": 9}):
        assert add_responses("org/m", **{"max_new_tokens": 8, **change}).cache_identity() != base.cache_identity()
    assert add_responses("org/m", teacher_device="cuda:3").cache_identity() == \
        add_responses("org/m", teacher_device="cuda:0").cache_identity()


# ------------------------------------------------------------------------------------------------ generation
def test_map_adds_responses_and_provenance_keeping_every_row_in_order(tokenizer, stopping_lm, expected):
    rows = [{"id": i, "instruction": q} for i, q in enumerate(QUESTIONS)]
    generator = add_responses((stopping_lm, tokenizer), max_new_tokens=12, teacher_name="tiny-teacher",
                              generation_column="answer")
    out = Dataset.from_list(rows).map(generator, batched=True, batch_size=3, with_indices=True)
    assert out["id"] == list(range(5)) and out["instruction"] == QUESTIONS
    assert out["answer_tokens"] == [len(ids) for ids in expected]
    assert out["answer_finish_reason"] == ["stop" if ids[-1] == END else "length" for ids in expected]
    assert "stop" in out["answer_finish_reason"] and "length" in out["answer_finish_reason"]
    assert out["answer_truncated"] == [reason == "length" for reason in out["answer_finish_reason"]]
    assert out["answer"] == [tokenizer.decode(ids, skip_special_tokens=True) for ids in expected]
    assert set(out["answer_teacher"]) == {"tiny-teacher"}
    provenance = json.loads(out["answer_provenance"][0])
    assert provenance | {"fingerprint": None} == {
        "teacher": generator.config.teacher, "revision": None, "fingerprint": None, "engine": "transformers",
        "system_prompt": None, "max_new_tokens": 12, "temperature": 0.0, "top_p": None, "seed": 0, "base_url": None,
        "car_hf_version": provenance["car_hf_version"]}


def test_batched_greedy_equals_one_at_a_time_token_for_token(tokenizer, stopping_lm, expected):
    """Left padding + mask: generate's position ids (mask cumsum) give each row the positions it has alone."""
    batched = add_responses((stopping_lm, tokenizer), max_new_tokens=12)
    alone = add_responses((stopping_lm, tokenizer), max_new_tokens=12, generation_batch_tokens=1)
    engine = batched.engine()
    prompts = [prompt_ids(tokenizer, read_prompt(q, row=0, column="p"), None, 0, "t") for q in QUESTIONS]
    assert len({len(p) for p in prompts}) >= 3 and engine.budget >= 5 * (max(map(len, prompts)) + 12)
    assert [g.token_ids for g in batched.generate(QUESTIONS)] == expected
    assert [g.token_ids for g in alone.generate(QUESTIONS)] == expected


def test_stop_tokens_come_from_the_chat_template_and_eos(tokenizer):
    assert stop_token_ids(tokenizer, None, None) == [2, END]
    assert stop_token_ids(tokenizer, None, [11, 12]) == [2, END, 11, 12]
    chatml = "{% for m in messages %}{{ '<|user|>' + m['content'] + '<|system|>' }}{% endfor %}" \
             "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    assert stop_token_ids(tokenizer, chatml, None) == [2, 5]  # <|system|> closes turns in that template
    assert finish([9, 10, END, 0, 0], [2, END], tokenizer) == finish([9, 10, END], [2, END], tokenizer)
    assert finish([9, 10, 11], [2, END], tokenizer).finish_reason == "length"
    ids, mask = pad_left([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tokenizer, causal_lm):
    def sample(seed):
        return [g.text for g in add_responses((causal_lm, tokenizer), max_new_tokens=10, temperature=1.0,
                                              top_p=0.9, generation_seed=seed).generate(QUESTIONS[:3])]

    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = sample(1)
    assert torch.equal(torch.get_rng_state(), state)
    assert sample(1) == first and sample(2) != first
    greedy = add_responses((causal_lm, tokenizer), max_new_tokens=10).generate(QUESTIONS[:3])
    assert [g.text for g in greedy] != first


def test_system_prompt_goes_first_through_the_chat_template(tokenizer, causal_lm):
    generator = add_responses((causal_lm, tokenizer), max_new_tokens=4, system_prompt="Answer in French.")
    messages = read_prompt("Hi", row=0, column="instruction", system_prompt="Answer in French.")
    assert tokenizer.decode(prompt_ids(tokenizer, messages, None, 0, "t")) == \
        "<bos><|system|>\nAnswer in French.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    plain = add_responses((causal_lm, tokenizer), max_new_tokens=4)
    assert generator.generate(["Hi"])[0].token_ids != plain.generate(["Hi"])[0].token_ids
    assert generator.config.label.startswith("model-") and "[system " in generator.config.label


def test_max_new_tokens_cut_is_flagged(tokenizer, causal_lm):
    out = Dataset.from_dict({"prompt": QUESTIONS[:2]}).map(add_responses((causal_lm, tokenizer), max_new_tokens=3),
                                                           batched=True)
    assert out["response_truncated"] == [True, True] and out["response_finish_reason"] == ["length", "length"]
    assert out["response_tokens"] == [3, 3]


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("value,message", [
    ("   ", r"row 7, column 'prompt': the prompt is empty"),
    (None, r"row 7, column 'prompt': the prompt is None"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
     r"row 7, column 'prompt': the conversation ends with an assistant turn.*messages\[:-1\]"),
    ([{"role": "user", "content": ""}], "row 7, column 'prompt': the prompt is empty"),
    ([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}], "its own system turn"),
])
def test_bad_rows_name_the_dataset_row_and_column(tokenizer, causal_lm, value, message):
    good = [{"role": "user", "content": "Hi"}] if isinstance(value, list) else "Hi"
    ds = Dataset.from_dict({"prompt": [good] * 7 + [value]})
    generator = add_responses((causal_lm, tokenizer), max_new_tokens=2, system_prompt="Be brief.")
    with pytest.raises(InputError, match=message):
        ds.map(generator, batched=True, batch_size=4, with_indices=True)


def test_a_prompt_over_the_models_context_is_an_input_error_naming_the_row(tokenizer):
    model = tiny.build_causal_lm(tokenizer)
    model.config.max_position_embeddings = 40
    ds = Dataset.from_dict({"prompt": ["Hi", "word " * 30, "Hello"]})
    with pytest.raises(InputError, match=r"row 1: the prompt is \d+ tokens, and with max_new_tokens=8 the response "
                                         r"would end past the 40 tokens .*max_position_embeddings"):
        ds.map(add_responses((model, tokenizer), max_new_tokens=8), batched=True, with_indices=True)


def test_kept_responses_survive_the_process_for_the_same_teacher_and_prompt_only(tmp_path, caplog):
    from car_hf.generation.engines import Generation
    from car_hf.generation.generate import _KEPT, clear_engine_cache
    from car_hf.generation.resume import keeping_responses

    class Failing:  # an engine that answered "a" and then failed on "b"
        name = "test"

        def generate(self, prompts, rows):
            kept = {i: Generation(f"kept {p[-1]['content']}", "stop", 2) for i, p in enumerate(prompts)
                    if p[-1]["content"] != "b"}
            raise GenerationError("b failed", partial=kept, failed=[r for r, p in zip(rows, prompts)
                                                                     if p[-1]["content"] == "b"])

    generator = add_responses("org/served", base_url="http://127.0.0.1:9/v1")
    generator._build_engine = lambda device: Failing()
    path = tmp_path / "ckpt" / "kept.json"
    with pytest.raises(GenerationError) as caught, keeping_responses(path):
        generator.generate(["a", "b"])
    assert caught.value.failed == [1] and path.exists()
    clear_engine_cache()  # a new process
    assert _KEPT == {}
    other = add_responses("org/served", base_url="http://127.0.0.1:9/v1", max_new_tokens=7)  # other options
    with keeping_responses(path):
        assert len(_KEPT) == 1
        other_keys = {(other.digest, k[1]) for k in _KEPT}
        assert not other_keys & set(_KEPT)  # never used for another teacher configuration
        generator._build_engine = lambda device: type("Echo", (), {"generate": lambda self, p, r: [
            Generation(f"new {m[-1]['content']}", "stop", 2) for m in p]})()
        assert [g.text for g in generator.generate(["a", "b"])] == ["kept a", "new b"]
    assert not path.exists()  # consumed
    path.write_text('{"kept_responses": [{"generator": ')  # damaged: ignored, with a warning
    with caplog.at_level("WARNING"), keeping_responses(path):
        pass
    assert "ignoring the kept responses in" in caplog.text
    clear_engine_cache()


def test_missing_prompt_column_lists_the_columns():
    with pytest.raises(InputError, match=r"no prompt column.*input_column=.*\['question', 'answer'\]"):
        add_responses("org/m")({"question": ["Hi"], "answer": ["Yo"]})
    with pytest.raises(InputError, match=r"column 'q' \(input_column: the prompts\) is missing"):
        add_responses("org/m", input_column="q")({"question": ["Hi"]})


def test_teacher_without_chat_template_says_how_to_pass_one(tmp_path, plain_tokenizer, tokenizer):
    model = tiny.build_causal_lm(plain_tokenizer)
    with pytest.raises(ConfigError, match=r"the teacher 'plain-base' has no chat template.*chat_template="):
        add_responses((model, plain_tokenizer), teacher="plain-base").generate(["Hi"])
    template = tmp_path / "chat.jinja"
    template.write_text(tiny.CHAT_TEMPLATE)
    from_file = add_responses((model, plain_tokenizer), chat_template=str(template), max_new_tokens=4)
    from_text = add_responses((model, plain_tokenizer), chat_template=tiny.CHAT_TEMPLATE, max_new_tokens=4)
    assert from_file.generate(["Hi"]) == from_text.generate(["Hi"])
    assert from_file.cache_identity() == from_text.cache_identity()  # the template counts by its text


def test_engine_choice(monkeypatch, tokenizer, causal_lm):
    import importlib.util

    assert resolve_engine(TeacherConfig(teacher="m")) == "transformers"  # no vLLM, no GPU here
    assert resolve_engine(TeacherConfig(teacher="m", base_url="http://h/v1")) == "openai"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "vllm" else None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_engine(TeacherConfig(teacher="m")) == "vllm"
    assert resolve_engine(TeacherConfig(teacher="m"), loaded=True) == "transformers"
    with pytest.raises(ConfigError, match="engine vllm cannot use a loaded"):
        add_responses((causal_lm, tokenizer), engine="vllm")
    with pytest.raises(ConfigError, match="needs a teacher"):
        add_responses(max_new_tokens=3)


# ------------------------------------------------------------------------------------------------ recipe and caching
def test_pickles_as_its_recipe_and_a_second_map_hits_the_datasets_cache(tmp_path, hf_cache, tiny_model_dir,
                                                                        monkeypatch):
    generator = add_responses(str(tiny_model_dir), max_new_tokens=4)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in QUESTIONS))
    ds = load_dataset("json", data_files=str(data), split="train")
    first = ds.map(generator, batched=True)
    blob = pickle.dumps(generator)
    assert len(blob) < 4000 and isinstance(pickle.loads(blob), ResponseGenerator)
    assert pickle.loads(blob).cache_identity() == generator.cache_identity()

    def refuse(self, prompts, rows):
        raise AssertionError("generated again instead of reading the datasets cache")

    monkeypatch.setattr(TransformersEngine, "generate", refuse)
    again = ds.map(add_responses(str(tiny_model_dir), max_new_tokens=4), batched=True)
    assert again["response"] == first["response"] and again.cache_files == first.cache_files


# ------------------------------------------------------------------------------------------------ recipes/generate.py
from test_recipe_commands import load_recipe  # noqa: E402
from test_recipes import CONFIGS, RECIPES, accelerate, run, workdir  # noqa: E402,F401 - workdir: a fixture
from test_recipes import TWO_CPU as SCORE_TWO_CPU  # noqa: E402

generate_recipe = load_recipe("generate")
TWO_CPU = (*SCORE_TWO_CPU[:-1], "29633")  # another port than test_recipes': both may run at once
GENERATE = ("--config", str(CONFIGS / "generate_tiny_cpu.yaml"))


def read_generated(folder: Path) -> list[dict]:
    return load_from_disk(str(folder / "generated")).to_list()


def progress(folder: Path, world: int) -> list[dict]:
    return [json.loads((folder / f"progress-{r:05d}-of-{world:05d}.json").read_text()) for r in range(world)]


def test_recipe_two_processes_equal_one_and_resume_after_a_kill(workdir):
    run([sys.executable, str(RECIPES / "generate.py"), *GENERATE, "--output_dir", "runs/gen-1"], workdir)
    single = read_generated(workdir / "runs" / "gen-1")
    assert len(single) == 8 and len({r["instruction"] for r in single}) == 8  # unique_prompts: 24 rows -> 8
    assert [r["instruction"] for r in single] == list(dict.fromkeys(
        json.loads(line)["instruction"] for line in (workdir / "runs/tiny-data/train.jsonl").read_text().splitlines()))
    assert all(r["response_tokens"] and r["response_teacher"].startswith("runs/tiny-model [system ") for r in single)
    config = json.loads((workdir / "runs" / "gen-1" / "generated" / "car_config.json").read_text())
    assert config["system_prompt"] == "You are a concise assistant." and config["n_rows"] == 8

    out = workdir / "runs" / "gen-2"
    killed = run(accelerate(*TWO_CPU, str(RECIPES / "generate.py"), *GENERATE, "--output_dir", "runs/gen-2"), workdir,
                 env={"CAR_HF_FAIL_AFTER_CHUNKS": "1"}, check=False)
    assert killed.returncode != 0 and not (out / "generated").exists()
    # Each process exits after its first chunk (0 and 2); the launcher may stop the other one before it saves.
    done = sorted(int(p.name.split("-")[1]) for p in (out / "cache").glob("*/chunk-*"))
    assert done in ([0], [2], [0, 2]), done

    run(accelerate(*TWO_CPU, str(RECIPES / "generate.py"), *GENERATE, "--output_dir", "runs/gen-2"), workdir)
    ranks = progress(out, 2)
    assert [p["chunks"] for p in ranks] == [[0, 1], [2]]
    assert sorted(c for p in ranks for c in p["skipped"]) == done  # nothing generated twice
    assert sorted(c for p in ranks for c in p["scored"]) == [c for c in range(3) if c not in done]
    assert read_generated(out) == single  # greedy: 2 processes give the rows of 1, row for row


def test_recipe_checks_inputs_before_loading_a_model(workdir, tmp_path, monkeypatch):
    import car_hf.core.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input error was reported")

    monkeypatch.setattr(car_hf.core.models, "load_model", refuse)
    monkeypatch.chdir(workdir)
    args, config = generate_recipe.make_parser().parse_args_and_config(
        [*GENERATE, "--input_column", "question", "--output_dir", str(tmp_path / "out")])
    with pytest.raises(InputError, match=r"column 'question' \(input_column: the prompts\) is missing"):
        generate_recipe.main(args, config)
    args, config = generate_recipe.make_parser().parse_args_and_config(
        [*GENERATE, "--teacher", str(tmp_path / "no-such-model"), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ConfigError, match="teacher: no such model folder"):
        generate_recipe.main(args, config)


def test_recipe_keeps_the_chunks_and_rows_of_a_failing_endpoint_and_resumes(tmp_path, monkeypatch, hf_cache):
    import datasets.fingerprint
    import huggingface_hub.constants

    from car_hf.generation.generate import clear_engine_cache
    from openai_server import OpenAIServer

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # main() turns datasets' caching off for the process: switch it back on after this test.
    monkeypatch.setattr(datasets.fingerprint, "_CACHING_ENABLED", datasets.fingerprint._CACHING_ENABLED)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(5)))
    with OpenAIServer(lifetime=60) as server:
        server.fail_if = lambda body: "503" if body["messages"][-1]["content"] == "question 4" else None
        server.latency = 0.05  # requests overlap: the whole chunk is one call, paced by max_concurrency only
        args, config = generate_recipe.make_parser().parse_args_and_config(
            ["--dataset_name", str(data), "--teacher", "served", "--base_url", server.base_url, "--max_retries", "1",
             "--retry_backoff", "0.01", "--chunk_rows", "3", "--map_batch_size", "1", "--max_concurrency", "3",
             "--output_dir", str(tmp_path / "out"), "--cpu", "true"])
        with pytest.raises(GenerationError, match=r"Row 4: failed after 2 attempt\(s\): HTTP 503"):
            generate_recipe.main(args, config)
        assert server.max_in_flight == 3  # not 1 (map_batch_size): the chunk's 3 rows at once
        assert len(list((tmp_path / "out" / "cache").glob("*/chunk-*"))) == 1  # chunk 0 (rows 0-2) is kept
        kept = json.loads((tmp_path / "out" / "kept-responses.json").read_text())["kept_responses"]
        assert [e["text"] for e in kept] == ["Echo: question 3"]  # and the finished row of the failed chunk
        clear_engine_cache()  # as in a new process: only the file remembers row 3
        asked = len(server.requests)
        server.fail_if = None
        generate_recipe.main(args, config)
        assert [r["body"]["messages"][-1]["content"] for r in server.requests[asked:]] == ["question 4"]
    assert progress(tmp_path / "out", 1)[0]["skipped"] == [0]
    assert [r["response"] for r in read_generated(tmp_path / "out")] == [f"Echo: question {i}" for i in range(5)]
    assert not (tmp_path / "out" / "kept-responses.json").exists()


def test_recipe_exit_codes_and_one_line_errors(tmp_path):
    """Run as documented (a script): 3 with the re-run command when rows failed, 2 for a user error."""
    from openai_server import OpenAIServer

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(3)))
    command = [sys.executable, str(RECIPES / "generate.py"), "--dataset_name", str(data), "--teacher", "served",
               "--max_retries", "1", "--retry_backoff", "0.01", "--output_dir", str(tmp_path / "out")]
    with OpenAIServer(lifetime=120) as server:
        server.fail_if = lambda body: "503" if body["messages"][-1]["content"] == "question 1" else None
        url = server.base_url
        failed = run([*command, "--base_url", url], tmp_path, env={"HF_HUB_OFFLINE": "0"}, check=False)
    assert failed.returncode == 3, failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("generate.py: error: generation failed for 1 row(s) (1): 1 of 3 request(s)")
    assert "retried 1 request(s)" in failed.stderr and line.endswith(f"{tmp_path / 'out'} --base_url {url}")
    refused = run([*command, "--teacher_dtype", "bfloat"], tmp_path, check=False)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(
        "generate.py: error: teacher_dtype must be one of")
