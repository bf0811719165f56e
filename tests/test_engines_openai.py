"""The openai engine against tests/openai_server.py: requests, order, retries, failures, and the token kept secret."""

from __future__ import annotations

import json
import logging
import pickle
import random
import time

import pytest
from datasets import Dataset

from car_hf import ConfigError
from car_hf.core.errors import GenerationError
from car_hf.generation.engines.openai_engine import request_fields, retry_delay
from car_hf.generation.generate import add_responses
from car_hf.generation.teacher import TeacherConfig, mask_secrets
from openai_server import OpenAIServer, canned

SECRET = "sk-test-0123456789abcdef0123456789"


@pytest.fixture(autouse=True)
def hub_online(monkeypatch):
    """huggingface_hub's offline mode blocks every request, a loopback server's too (test_offline_mode_...)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_local_login_token_never_sent_anywhere")
    monkeypatch.setenv("CAR_HF_TEST_KEY", SECRET)


@pytest.fixture
def server():
    with OpenAIServer(lifetime=60) as running:
        yield running


def generator(server, **options):
    defaults = dict(base_url=server.base_url, max_new_tokens=8, retry_backoff=0.01, max_retries=2,
                    request_timeout=5.0)
    return add_responses("tiny-served", **(defaults | options))


def test_requests_carry_the_conversation_and_sampling_and_results_keep_input_order(server):
    questions = [f"question number {i}" for i in range(12)]
    server.responder = canned({q: f"answer {i}" for i, q in enumerate(questions)})
    server.latency = 0.05  # requests overlap
    ds = Dataset.from_dict({"instruction": questions})
    out = ds.map(generator(server, system_prompt="Be brief.", temperature=0.7, top_p=0.9, generation_seed=5,
                           max_concurrency=4), batched=True, batch_size=12)
    assert out["response"] == [f"answer {i}" for i in range(12)]
    assert out["response_finish_reason"] == ["stop"] * 12 and out["response_tokens"] == [3] * 12
    assert 1 < server.max_in_flight <= 4
    body = server.requests[0]["body"]
    assert {k: v for k, v in body.items() if k not in ("messages", "stream")} == {
        "model": "tiny-served", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 5, "n": 1, "stop": [],
        "presence_penalty": 0.0, "frequency_penalty": 0.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"] * 12
    provenance = json.loads(out["response_provenance"][0])
    assert (provenance["engine"], provenance["base_url"], provenance["top_p"]) == ("openai", server.base_url, 0.9)


def test_greedy_requests_send_every_sampling_field_so_the_server_fills_in_none(server):
    generator(server, top_p=0.5).generate(["Hi"])  # vllm serve would take the rest from generation_config.json
    body = server.requests[0]["body"]
    assert {k: v for k, v in body.items() if k not in ("messages", "model", "stream")} == {
        "max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": 0, "n": 1, "stop": [], "presence_penalty": 0.0,
        "frequency_penalty": 0.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}
    assert request_fields(TeacherConfig(teacher="m", base_url="http://h/v1"))["extra_body"] == {
        "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}


def test_length_finish_is_flagged_with_the_servers_token_count(server):
    out = Dataset.from_dict({"prompt": ["one two three four five six seven eight nine", "short"]}).map(
        generator(server, max_new_tokens=4), batched=True)
    assert out["response"] == ["Echo: one two three", "Echo: short"]
    assert out["response_finish_reason"] == ["length", "stop"] and out["response_truncated"] == [True, False]
    assert out["response_tokens"] == [4, 3]


def test_a_server_answering_with_the_tiny_model_gives_the_transformers_engine_columns(server, tokenizer, causal_lm):
    local = add_responses((causal_lm, tokenizer), max_new_tokens=6, teacher_name="tiny")

    def respond(messages, max_tokens):
        (answer,) = local.generate([messages])
        return answer.text, answer.finish_reason, answer.tokens

    server.responder = respond
    ds = Dataset.from_dict({"prompt": ["How do I cook rice?", "Hi", "Why is the sky blue?"]})
    direct = ds.map(local, batched=True)
    served = ds.map(generator(server, max_new_tokens=6, teacher_name="tiny", max_concurrency=1), batched=True)
    for column in ("response", "response_finish_reason", "response_truncated", "response_tokens", "response_teacher"):
        assert served[column] == direct[column], column
    assert json.loads(served["response_provenance"][0])["engine"] == "openai"


@pytest.mark.parametrize("failures, causes", [
    (["503", "503"], {"HTTP 503": 2}), (["502", "500"], {"HTTP 502": 1, "HTTP 500": 1}), (["429"], {"HTTP 429": 1}),
    (["timeout"], {"timeout": 1}), (["drop", "drop"], {"connection error": 2})])
def test_transient_failures_are_retried_and_counted(server, failures, causes):
    server.script = list(failures)
    server.delay = 1.0
    gen = generator(server, max_concurrency=1, request_timeout=0.3)
    assert gen.generate(["Hi"])[0].text == "Echo: Hi"
    assert len(server.requests) == len(failures) + 1
    assert dict(gen.retries()) == causes


@pytest.mark.parametrize("failure, message", [
    ("400", r"HTTP 400"), ("404", r"HTTP 404"), ("malformed", r"JSONDecodeError|not a chat completion|Expecting"),
    ("null", r"empty completion \(content None"), ("empty", r"empty completion \(content ''")])
def test_other_failures_fail_the_row_at_once(server, failure, message):
    server.fail_if = lambda body: failure if body["messages"][-1]["content"] == "bad" else None
    gen = generator(server, max_retries=5)
    with pytest.raises(GenerationError, match=rf"1 of 3 request\(s\).*rows 1\. Row 1: failed after 1 attempt\(s\): "
                                              rf".*({message})") as caught:
        gen.generate(["a", "bad", "c"])
    assert len(server.requests) == 3 and caught.value.failed == [1] and sorted(caught.value.partial) == [0, 2]
    assert not gen.retries()


def test_backoff_doubles_with_jitter_and_honours_retry_after():
    rng = random.Random(1)
    delays = [retry_delay(attempt, 1.0, rng=rng) for attempt in (1, 2, 3, 4) for _ in range(50)]
    for k, attempt in enumerate((1, 2, 3, 4)):
        chunk = delays[50 * k: 50 * (k + 1)]
        assert 0.5 * 2 ** (attempt - 1) <= min(chunk) and max(chunk) < 1.5 * 2 ** (attempt - 1)
        assert len(set(chunk)) == 50  # jittered: no two clients wait the same
    assert retry_delay(30, 1.0, rng=rng) < 90 and retry_delay(1, 0.01, retry_after="3") == 3.0
    assert retry_delay(1, 0.01, retry_after="999") == 120.0


def test_429_waits_for_retry_after(server):
    server.script, server.retry_after = ["429"], 0.4
    start = time.perf_counter()
    assert generator(server, retry_backoff=0.01).generate(["Hi"])[0].text == "Echo: Hi"
    assert time.perf_counter() - start >= 0.4 and len(server.requests) == 2


def test_an_endpoint_that_keeps_failing_raises_after_the_retries_without_the_token(server):
    server.fail_always = "500"  # its error bodies quote the Authorization header
    with pytest.raises(GenerationError) as caught:
        generator(server, api_key_env="CAR_HF_TEST_KEY", max_retries=3).generate(["a", "b"], rows=[10, 11])
    message = str(caught.value)
    assert "2 of 2 request(s)" in message and "rows 10, 11" in message and "after 4 attempt(s)" in message
    assert "HTTP 500" in message and SECRET not in message and SECRET not in repr(caught.value.__cause__)
    assert len(server.requests) == 8
    assert all(r["headers"]["authorization"] == f"Bearer {SECRET}" for r in server.requests)


def test_responses_generated_before_a_failure_are_kept_and_not_requested_again(server):
    server.fail_if = lambda body: "503" if body["messages"][-1]["content"] == "poison" else None
    ds = Dataset.from_dict({"instruction": ["a", "poison", "c", "d"]})
    gen = generator(server, max_retries=1)
    with pytest.raises(GenerationError, match=r"Row 1: failed after 2 attempt\(s\).*the 3 of 4 response\(s\) of "
                                              r"this batch generated before the failure are kept"):
        ds.map(gen, batched=True, with_indices=True)
    asked = len(server.requests)
    server.fail_if = None
    out = ds.map(gen, batched=True, with_indices=True)
    assert out["response"] == ["Echo: a", "Echo: poison", "Echo: c", "Echo: d"]
    assert [r["body"]["messages"][-1]["content"] for r in server.requests[asked:]] == ["poison"]


def test_client_errors_fail_at_once(server):
    server.token = "the-right-token"
    with pytest.raises(GenerationError, match=r"after 1 attempt\(s\): HTTP 401") as caught:
        generator(server, api_key_env="CAR_HF_TEST_KEY", max_retries=5).generate(["Hi"])
    assert len(server.requests) == 1 and SECRET not in str(caught.value)


def test_no_token_is_sent_without_api_key_env_and_the_token_is_nowhere(server):
    generator(server).generate(["Hi"])
    assert "authorization" not in server.requests[0]["headers"]  # not even the local HF_TOKEN

    keyed = generator(server, api_key_env="CAR_HF_TEST_KEY")
    out = Dataset.from_dict({"prompt": ["Hi"]}).map(keyed, batched=True)
    assert server.requests[-1]["headers"]["authorization"] == f"Bearer {SECRET}"
    for text in (repr(keyed), pickle.dumps(keyed).decode("latin-1"), json.dumps(keyed.record()),
                 json.dumps(keyed.cache_identity()), json.dumps(out.to_dict())):
        assert SECRET not in text
    assert keyed.record()["api_key_env"] == "CAR_HF_TEST_KEY"


def test_unset_key_variable_and_offline_mode_are_config_errors(server, monkeypatch):
    with pytest.raises(ConfigError, match="api_key_env='CAR_HF_UNSET_KEY': that environment variable is not set"):
        generator(server, api_key_env="CAR_HF_UNSET_KEY").generate(["Hi"])
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="offline mode.*HF_HUB_OFFLINE=0"):
        generator(server, max_new_tokens=9).generate(["Hi"])
    assert server.requests == []


def test_credentials_in_base_url_are_masked_in_every_file_message_and_log(server, tmp_path, caplog, capsys,
                                                                          tiny_model_dir, hf_cache):
    from car_hf.cli import main

    password, key = "pw-0123456789-secret", "qk-9876543210-secret"
    url = server.base_url.replace("http://", f"http://me:{password}@") + f"?api-key={key}&deployment=d1"
    assert mask_secrets(url) == server.base_url.replace("http://", "http://***@") + "?api-key=***&deployment=d1"
    caplog.set_level(logging.DEBUG)  # httpx and huggingface_hub log every request's URL at INFO and DEBUG
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"question {i}"}) + "\n" for i in range(6)))
    common = ["--base-url", url, "--max-new-tokens", "6", "--max-retries", "1", "--retry-backoff", "0.01"]
    server.fail_if = lambda body: "500" if body["messages"][-1]["content"] == "question 3" else None
    generate = ["generate", str(data), "--teacher", "served", *common, "-o", str(tmp_path / "gen.parquet")]
    assert main(generate) == 3  # its error line quotes the URL the server saw
    server.fail_if = None
    assert main(generate) == 0
    teachers = tmp_path / "teachers.yaml"
    teachers.write_text("".join(f"- {{teacher: served, teacher_name: {name}, max_new_tokens: {n}}}\n"
                                for name, n in (("terse", 2), ("wordy", 6))))
    assert main(["trial", str(data), "--teachers", str(teachers), *common, "--base-model", str(tiny_model_dir),
                 "--reward-model", "test_cli_teachers:length_reward", "--bootstrap", "20",
                 "--output-dir", str(tmp_path / "trial")]) == 0
    assert main(["push", str(tmp_path / "trial"), "me/trial", "--dry-run", str(tmp_path / "card")]) == 0
    captured = capsys.readouterr()
    assert all(f"api-key={key}" in r["path"] for r in server.requests)  # the server got the key, every time
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != data and p != teachers]
    assert any(p.name == "README.md" for p in written) and any(p.name.endswith("car_config.json") for p in written)
    assert any("provenance" in p.read_bytes().decode("latin-1") for p in written)
    for secret in (password, key):
        for path in written:
            assert secret.encode() not in path.read_bytes(), path
        for text in (caplog.text, captured.out, captured.err):
            assert secret not in text
    assert "api-key=***" in captured.err and "127.0.0.1" in caplog.text  # masked, not dropped
