"""The ``openai`` engine: any OpenAI-compatible chat endpoint, through ``huggingface_hub.InferenceClient``.

``vllm serve``, Text Generation Inference, the llama.cpp server and Hugging Face Inference Providers
(``https://router.huggingface.co/v1``) all answer ``POST {base_url}/chat/completions``; the server applies the
teacher's chat template. ``max_concurrency`` requests are in flight at once (a thread pool); results come back
in input order.

Failures: a 429, 408, 409, 425 or 5xx answer, a timeout, a dropped connection or an answer that is not a chat
completion is retried up to ``max_retries`` times, after ``retry_backoff * 2**k`` seconds (at most 60 s; a
429's ``Retry-After`` is honoured up to 120 s). Other 4xx answers (a refused token, an unknown model) fail at
once. When a request still fails, the other requests finish, then :class:`~car_hf.errors.GenerationError`
names the failed rows, the number of attempts and the last error, and carries the responses generated
(``partial``), which :class:`car_hf.generate.ResponseGenerator` keeps so that a rerun asks only for the rest.

The token: read from the environment variable ``api_key_env`` names when requests are sent, handed to the
client, never stored on the engine, never in an error message (a server echoing it back is masked). Without
``api_key_env`` no ``Authorization`` header is sent at all (``huggingface_hub`` would otherwise send your
Hugging Face token to whatever server ``base_url`` names).

Example:
    >>> retry_delay(attempt=3, base=0.5), retry_delay(attempt=1, base=0.5, retry_after="2")
    (2.0, 2.0)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from ..errors import ConfigError, GenerationError
from ..teacher import TeacherConfig, api_key
from .base import Generation, Messages

RETRY_STATUSES = frozenset({408, 409, 425, 429})  # and every 5xx
MAX_BACKOFF = 60.0
MAX_RETRY_AFTER = 120.0
# What servers report besides OpenAI's "stop"/"length" (TGI: "eos_token", "stop_sequence").
_STOP_REASONS = {"stop": "stop", "eos_token": "stop", "stop_sequence": "stop", "eos": "stop", "length": "length"}


class Unanswered(Exception):
    """A request that failed for good: its last error (token masked) and the number of attempts made."""

    def __init__(self, reason: str, attempts: int):
        super().__init__(reason)
        self.reason, self.attempts = reason, attempts


def retry_delay(attempt: int, base: float, retry_after: str | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2 ...): exponential, or the server's Retry-After."""
    delay = min(MAX_BACKOFF, base * 2 ** (attempt - 1))
    try:
        return max(delay, min(MAX_RETRY_AFTER, float(retry_after))) if retry_after else delay
    except ValueError:  # an HTTP date: rare from inference servers, wait the backoff
        return delay


def read_completion(output: Any) -> Generation:
    """The :class:`Generation` in a chat completion; ``ValueError`` when it is not one."""
    try:
        choice = output.choices[0]
        text, reason = choice.message.content, choice.finish_reason
        usage = getattr(output, "usage", None)
        tokens = getattr(usage, "completion_tokens", None) if usage is not None else None
    except (AttributeError, IndexError, KeyError, TypeError) as error:
        raise ValueError(f"the answer is not a chat completion ({type(error).__name__}: {error})") from error
    if not isinstance(text, str) or not isinstance(reason, str):
        raise ValueError(f"the answer has no text or no finish_reason (content={text!r:.40}, finish_reason={reason!r})")
    return Generation(text, _STOP_REASONS.get(reason, reason), int(tokens) if tokens is not None else None)


class OpenAIEngine:
    """Generate through an OpenAI-compatible endpoint; see the module docstring."""

    name: ClassVar[str] = "openai"

    def __init__(self, config: TeacherConfig):
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise ConfigError(
                f"engine openai sends its requests through huggingface_hub, whose offline mode (HF_HUB_OFFLINE=1) "
                f"blocks every request, even to {config.base_url}: run this job with HF_HUB_OFFLINE=0 (nothing is "
                "downloaded: the server holds the model)")
        self.config = config
        api_key(config)  # an unset variable fails now, before any request

    def generate(self, prompts: Sequence[Messages], rows: Sequence[Any]) -> list[Generation]:
        from huggingface_hub import InferenceClient

        token = api_key(self.config)
        # headers={"authorization": None} drops the header huggingface_hub would fill with the local HF token.
        client = InferenceClient(base_url=self.config.base_url, api_key=token, timeout=self.config.request_timeout,
                                 headers=None if token else {"authorization": None})
        with ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, max(len(prompts), 1))) as pool:
            futures = [pool.submit(self._request, client, messages, token) for messages in prompts]
            outcomes = [future.exception() or future.result() for future in futures]
        failed = [(row, outcome) for row, outcome in zip(rows, outcomes) if not isinstance(outcome, Generation)]
        if failed:
            partial = {i: outcome for i, outcome in enumerate(outcomes) if isinstance(outcome, Generation)}
            raise GenerationError(self._failure_message(failed, len(prompts)), partial=partial)
        return outcomes  # type: ignore[return-value]  # all Generations

    def _request(self, client: Any, messages: Messages, token: str | None) -> Generation:
        from huggingface_hub.errors import HfHubHTTPError

        config = self.config
        sampling = {"temperature": config.temperature, "seed": config.generation_seed}
        if not config.greedy:
            sampling["top_p"] = config.top_p
        attempts = config.max_retries + 1
        for attempt in range(1, attempts + 1):
            retry_after = None
            try:
                output = client.chat_completion(messages=messages, model=config.teacher,
                                                max_tokens=config.max_new_tokens, **sampling)
                return read_completion(output)
            except HfHubHTTPError as error:
                status = error.response.status_code if error.response is not None else None
                reason = f"HTTP {status}: {_first_line(error)}"
                if status is not None and status < 500 and status not in RETRY_STATUSES:
                    raise Unanswered(_mask(reason, token), attempt) from None
                retry_after = error.response.headers.get("retry-after") if error.response is not None else None
            except Exception as error:  # timeouts, dropped connections, malformed answers: all worth a retry
                reason = f"{type(error).__name__}: {_first_line(error)}"
            if attempt < attempts:
                time.sleep(retry_delay(attempt, config.retry_backoff, retry_after))
        raise Unanswered(_mask(reason, token), attempts)

    def _failure_message(self, failed: list[tuple[Any, BaseException]], total: int) -> str:
        config = self.config
        rows = ", ".join(str(row) for row, _ in failed[:10]) + (" ..." if len(failed) > 10 else "")
        row, first = failed[0]
        attempts = getattr(first, "attempts", 1)
        return (f"{len(failed)} of {total} request(s) to {config.base_url} (model {config.teacher!r}) failed; "
                f"rows {rows}. Row {row}: failed after {attempts} attempt(s): {first}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _mask(text: str, token: str | None) -> str:
    """``text`` with the token replaced, in case a server echoes request headers in its error body."""
    return text.replace(token, "***") if token else text
