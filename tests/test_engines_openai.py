"""The openai engine against tests/openai_server.py: requests, order, retries, failures, and the token kept secret."""

from __future__ import annotations

import json
import pickle
import time

import pytest
from datasets import Dataset

from car_hf import ConfigError
from car_hf.errors import GenerationError
from car_hf.generate import add_responses
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
    assert {k: body[k] for k in ("model", "max_tokens", "temperature", "top_p", "seed")} == {
        "model": "tiny-served", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 5}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"] * 12
    provenance = json.loads(out["response_provenance"][0])
    assert (provenance["engine"], provenance["base_url"], provenance["top_p"]) == ("openai", server.base_url, 0.9)


def test_greedy_requests_send_temperature_zero_and_no_top_p(server):
    generator(server, top_p=0.5).generate(["Hi"])
    body = server.requests[0]["body"]
    assert body["temperature"] == 0 and "top_p" not in body


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


@pytest.mark.parametrize("failures", [["503", "503"], ["502", "500"], ["timeout"], ["malformed", "malformed"]])
def test_transient_failures_are_retried(server, failures):
    server.script = list(failures)
    server.delay = 1.0
    result = generator(server, max_concurrency=1, request_timeout=0.3).generate(["Hi"])
    assert result[0].text == "Echo: Hi"
    assert len(server.requests) == len(failures) + 1


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
