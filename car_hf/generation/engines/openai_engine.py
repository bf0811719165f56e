"""The ``openai`` engine: any OpenAI-compatible chat endpoint, through ``huggingface_hub.InferenceClient``.

``vllm serve``, Text Generation Inference, the llama.cpp server and Hugging Face Inference Providers
(``https://router.huggingface.co/v1``) all answer ``POST {base_url}/chat/completions``; the server applies the
teacher's chat template. ``max_concurrency`` requests are in flight at once (a thread pool over every prompt of
the call: the whole chunk, see :func:`car_hf.generation.generate.map_batch_size`); results come back in input order.

Sampling: every field that decides the text is sent (:func:`request_fields`), because a server fills the fields a
request leaves out from the model's ``generation_config.json`` (``vllm serve``: e.g. ``repetition_penalty`` 1.05,
``top_k`` 20) and would then write other text than the ``transformers`` and ``vllm`` engines under the same
recorded sampling: ``temperature``, ``top_p`` (1 when greedy), ``max_tokens``, ``seed``, ``n`` 1, ``stop`` none,
``presence_penalty`` and ``frequency_penalty`` 0, and in the body's extra fields (vLLM's, llama.cpp's names)
``top_k`` -1 (off), ``min_p`` 0 and ``repetition_penalty`` 1.

Failures: only transient ones are retried — HTTP 429 (honouring ``Retry-After`` up to 120 s), 408 and 5xx, a
timeout, a refused or dropped connection — up to ``max_retries`` times, after ``retry_backoff * 2**k`` seconds (at
most 60 s) times a random factor in [0.5, 1.5) (jitter: clients that failed together do not retry together).
Anything else fails the row at once: another 4xx (a refused token, an unknown model, a prompt over the server's
context), an answer that is not a chat completion, and a null or empty completion (``content`` null — e.g. a
reasoning model whose server put the text in ``reasoning_content`` — or ``""``). When a row fails, the others
finish, then :class:`~car_hf.core.errors.GenerationError` names the failed rows, the attempts and the cause, and carries
the responses generated (``partial``), which :class:`car_hf.generation.generate.ResponseGenerator` keeps so that a rerun asks
only for the rest. Retries are counted by cause (:attr:`OpenAIEngine.retries`) for the summaries of ``car-hf
generate`` and the recipes.

Secrets: the token is read from the environment variable ``api_key_env`` names when requests are sent, handed to
the client, never stored on the engine, never in an error message (a server echoing it back is masked). Without
``api_key_env`` no ``Authorization`` header is sent at all (``huggingface_hub`` would otherwise send your Hugging
Face token to whatever server ``base_url`` names). Credentials in ``base_url`` (``https://user:key@host/v1``,
``?api-key=...``) are masked (:func:`car_hf.generation.teacher.mask_secrets`) in every message, record and log line car_hf
writes, and in the request logs of ``httpx`` and ``huggingface_hub`` (:func:`mask_request_logs`).

Example:
    >>> import random
    >>> round(retry_delay(attempt=3, base=0.5, rng=random.Random(0)), 3), retry_delay(1, 0.5, retry_after="2")
    (2.689, 2.0)
    >>> request_fields(TeacherConfig(teacher="m", base_url="http://h/v1", max_new_tokens=64))["extra_body"]
    {'top_k': -1, 'min_p': 0.0, 'repetition_penalty': 1.0}
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from car_hf.core.errors import ConfigError, GenerationError
from car_hf.generation.teacher import TeacherConfig, api_key, mask_secrets
from car_hf.generation.engines.base import Generation, Messages

RETRY_STATUSES = frozenset({408, 429})  # and every 5xx
MAX_BACKOFF = 60.0
MAX_RETRY_AFTER = 120.0
# Transient transport failures, by class name anywhere in the exception's MRO, so that httpx, httpx2 and requests
# (whichever huggingface_hub release is installed) are all recognised without importing them.
_TIMEOUTS = frozenset({"TimeoutError", "TimeoutException", "Timeout"})
_CONNECTION = frozenset({"ConnectionError", "NetworkError", "RemoteProtocolError", "ProxyError"})
# What servers report besides OpenAI's "stop"/"length" (TGI: "eos_token", "stop_sequence").
_STOP_REASONS = {"stop": "stop", "eos_token": "stop", "stop_sequence": "stop", "eos": "stop", "length": "length"}
# The loggers that write request URLs: httpx's request line (INFO) and huggingface_hub's (DEBUG).
_REQUEST_LOGGERS = ("httpx", "httpx2", "httpcore", "huggingface_hub.utils._http")


class Unanswered(Exception):
    """A request that failed for good: its last error (secrets masked) and the number of attempts made."""

    def __init__(self, reason: str, attempts: int):
        super().__init__(reason)
        self.reason, self.attempts = reason, attempts


def retry_delay(attempt: int, base: float, retry_after: str | None = None, rng: Any = random) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2 ...): ``base * 2**(attempt - 1)`` (at most 60 s) times
    a jitter factor in [0.5, 1.5), and at least the server's ``Retry-After`` (up to 120 s) when it sent one."""
    delay = min(MAX_BACKOFF, base * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.5)
    try:
        return max(delay, min(MAX_RETRY_AFTER, float(retry_after))) if retry_after else delay
    except ValueError:  # an HTTP date: rare from inference servers, wait the backoff
        return delay


def failure_cause(error: BaseException) -> tuple[str, bool]:
    """What went wrong, in a few words (``"HTTP 503"``, ``"timeout"``, ``"connection error"``, the exception's
    type), and whether it is transient, i.e. worth a retry."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status}", status in RETRY_STATUSES or status >= 500
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & _TIMEOUTS:
        return "timeout", True
    if names & _CONNECTION:
        return "connection error", True
    return type(error).__name__, False


def request_fields(config: TeacherConfig) -> dict[str, Any]:
    """The sampling fields of every request (``InferenceClient.chat_completion``'s keyword arguments)."""
    return {"max_tokens": config.max_new_tokens, "temperature": config.temperature,
            "top_p": 1.0 if config.greedy else config.top_p, "seed": config.generation_seed, "n": 1, "stop": [],
            "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "extra_body": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}}


def read_completion(output: Any) -> Generation:
    """The :class:`Generation` in a chat completion; ``ValueError`` when it is not one, or when it is empty."""
    try:
        choice = output.choices[0]
        text, reason = choice.message.content, choice.finish_reason
        usage = getattr(output, "usage", None)
        tokens = getattr(usage, "completion_tokens", None) if usage is not None else None
    except (AttributeError, IndexError, KeyError, TypeError) as error:
        raise ValueError(f"the answer is not a chat completion ({type(error).__name__}: {error})") from error
    if not isinstance(text, str) or not text:
        raise ValueError(f"the server answered with an empty completion (content {text!r}, finish_reason {reason!r}; "
                         "a reasoning model's server may have put the text in reasoning_content)")
    if not isinstance(reason, str):
        raise ValueError(f"the answer has no finish_reason (finish_reason={reason!r})")
    return Generation(text, _STOP_REASONS.get(reason, reason), int(tokens) if tokens is not None else None)


class _MaskSecrets(logging.Filter):
    """Masks URL credentials in the records of the logger it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_MASK = _MaskSecrets()


def mask_request_logs() -> None:
    """Attach the credential mask to the loggers of the HTTP stack, which write each request's URL (idempotent)."""
    for name in _REQUEST_LOGGERS:
        logger = logging.getLogger(name)
        if _MASK not in logger.filters:
            logger.addFilter(_MASK)


class OpenAIEngine:
    """Generate through an OpenAI-compatible endpoint; see the module docstring."""

    name: ClassVar[str] = "openai"

    def __init__(self, config: TeacherConfig):
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise ConfigError(
                f"engine openai sends its requests through huggingface_hub, whose offline mode (HF_HUB_OFFLINE=1) "
                f"blocks every request, even to {mask_secrets(config.base_url)}: run this job with HF_HUB_OFFLINE=0 "
                "(nothing is downloaded: the server holds the model)")
        self.config = config
        api_key(config)  # an unset variable fails now, before any request
        mask_request_logs()
        self.retries: Counter[str] = Counter()
        """Retries made by this engine, by cause (``"HTTP 503"``, ``"timeout"`` ...)."""
        self._lock = threading.Lock()

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
            raise GenerationError(self._failure_message(failed, len(prompts)), partial=partial,
                                  failed=[row for row, _ in failed])
        return outcomes  # type: ignore[return-value]  # all Generations

    def _request(self, client: Any, messages: Messages, token: str | None) -> Generation:
        config = self.config
        attempts = config.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                output = client.chat_completion(messages=messages, model=config.teacher, **request_fields(config))
            except Exception as error:  # classified below: only transient failures are retried
                cause, transient = failure_cause(error)
                reason = self._masked(f"{cause}: {_first_line(error)}" if cause.startswith("HTTP") else
                                      f"{cause} ({type(error).__name__}: {_first_line(error)})", token)
                if not transient:
                    raise Unanswered(reason, attempt) from None
                if attempt == attempts:
                    break
                with self._lock:
                    self.retries[cause] += 1
                response = getattr(error, "response", None)
                retry_after = response.headers.get("retry-after") if response is not None else None
                time.sleep(retry_delay(attempt, config.retry_backoff, retry_after))
                continue
            try:
                return read_completion(output)
            except ValueError as error:  # a 200 that holds no response: asking again would get the same
                raise Unanswered(self._masked(str(error), token), attempt) from None
        raise Unanswered(reason, attempts)

    def _masked(self, text: str, token: str | None) -> str:
        """``text`` with the token (a server may echo request headers) and URL credentials masked."""
        return mask_secrets(text.replace(token, "***") if token else text)

    def _failure_message(self, failed: list[tuple[Any, BaseException]], total: int) -> str:
        config = self.config
        rows = ", ".join(str(row) for row, _ in failed[:10]) + (" ..." if len(failed) > 10 else "")
        row, first = failed[0]
        attempts = getattr(first, "attempts", 1)
        return (f"{len(failed)} of {total} request(s) to {mask_secrets(config.base_url)} (model {config.teacher!r}) "
                f"failed; rows {rows}. Row {row}: failed after {attempts} attempt(s): {first}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
