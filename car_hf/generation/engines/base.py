"""What every generation engine shares: the :class:`Generation` record, the :class:`Engine` interface, and the
tokenizer-side steps of the engines that tokenize themselves (transformers, vLLM).

An engine turns chat prompts (lists of ``{"role", "content"}`` messages ending with a user turn, the system
prompt already in place) into one :class:`Generation` each, in input order. ``rows`` name the prompts' dataset
rows in errors. Engines are built in the process that generates and never pickled.

The stop tokens of a chat model are its end-of-turn token (found by rendering a probe conversation with its
chat template: the first special token after the assistant's text) plus its ``eos_token_id`` s, so a teacher
stops where its template ends an assistant turn even when its generation config lists only ``<eos>``.

Example:
    >>> Generation("Hello!", "stop", 3).truncated, Generation("Once upon a", "length", 3).truncated
    (False, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from car_hf.core.errors import ConfigError, InputError
from car_hf.core.formats import _ids, common_prefix_length, has_chat_template

Messages = list[dict[str, str]]
FINISH_REASONS = ("stop", "length")

_PROBE = "Xq7car"  # a text no template writes by itself: where it ends, the assistant's content ends


@dataclass(frozen=True)
class Generation:
    """One generated response: its text, why it ended and how many tokens the teacher generated.

    ``finish_reason`` is ``"stop"`` (the teacher ended its turn) or ``"length"`` (cut at ``max_new_tokens``: the
    response is incomplete); a server may report another reason (``"content_filter"``), kept as it says.
    ``tokens`` counts the generated tokens, end-of-turn token included (``None``: the server did not say);
    ``token_ids`` are those tokens, when the engine has them (transformers, vLLM; not an HTTP endpoint).
    """

    text: str
    finish_reason: str
    tokens: int | None
    token_ids: tuple[int, ...] | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class Engine(Protocol):
    """Generates one response per chat prompt, in input order."""

    name: ClassVar[str]

    def generate(self, prompts: Sequence[Messages], rows: Sequence[Any]) -> list[Generation]: ...


def check_chat_template(tokenizer: Any, template: str | None, teacher: str) -> None:
    """A teacher must have a chat template (its own, or ``chat_template=``): say which one and how to pass it."""
    if template is None and not has_chat_template(tokenizer):
        raise ConfigError(
            f"the teacher {teacher!r} has no chat template, so car_hf cannot tell how it expects a conversation: "
            "pass one with chat_template= (add_responses(..., chat_template=...), --chat_template), a Jinja "
            "string or a .jinja file, e.g. the template of the instruct model it was tuned from"
        )


def prompt_ids(tokenizer: Any, messages: Messages, template: str | None, row: Any, teacher: str) -> list[int]:
    """Token ids of ``messages`` rendered with the chat template and the assistant's generation prompt."""
    try:
        return _ids(tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                                  tokenize=True))
    except Exception as error:  # Jinja's TemplateError, or raise_exception() in the template itself
        raise InputError(f"row {row}: the chat template of {teacher!r} refused this conversation: {error}") from error


def check_context(ids: Sequence[Sequence[int]], rows: Sequence[Any], max_new_tokens: int, context: int | None,
                  teacher: str, limit: str) -> None:
    """Every prompt must leave ``max_new_tokens`` of room in the teacher's ``context`` (``limit`` says whose:
    vLLM's max_model_len, the model's max_position_embeddings): else an :class:`InputError` naming the rows, raised
    before any prompt is generated for."""
    if context is None:
        return
    over = [(row, len(i)) for row, i in zip(rows, ids) if len(i) + max_new_tokens > context]
    if over:
        row, n = over[0]
        more = f" (also rows {', '.join(str(r) for r, _ in over[1:11])}{' ...' if len(over) > 11 else ''})" \
            if len(over) > 1 else ""
        raise InputError(f"row {row}{more}: the prompt is {n} tokens, and with max_new_tokens={max_new_tokens} the "
                         f"response would end past the {context} tokens of {teacher!r}'s context ({limit}): shorten "
                         "or drop the row, or lower max_new_tokens (or, for vLLM, raise max_model_len up to the "
                         "model's context)")


def stop_token_ids(tokenizer: Any, template: str | None, eos: int | Sequence[int] | None) -> list[int]:
    """The end-of-turn token of the chat template, ``eos`` (the model's generation config) and the tokenizer's."""
    user = [{"role": "user", "content": "Hi"}]
    opened = _ids(tokenizer.apply_chat_template(user, chat_template=template, add_generation_prompt=True,
                                                tokenize=True))
    closed = _ids(tokenizer.apply_chat_template(user + [{"role": "assistant", "content": _PROBE}],
                                                chat_template=template, tokenize=True))
    tail = closed[common_prefix_length(opened, closed):]
    end = next((k for k in range(len(tail)) if _PROBE in tokenizer.decode(tail[: k + 1])), len(tail))
    special = set(tokenizer.all_special_ids)
    stops = {next((t for t in tail[end + 1:] if t in special), None)}
    stops |= set([eos] if isinstance(eos, int) else eos or [])
    stops.add(tokenizer.eos_token_id)
    return sorted(t for t in stops if t is not None)


def finish(new_ids: Sequence[int], stops: Sequence[int], tokenizer: Any) -> Generation:
    """The :class:`Generation` of ``new_ids`` (generated ids, possibly padded after a stop token)."""
    stop_set = set(stops)
    end = next((k for k, t in enumerate(new_ids) if t in stop_set), None)
    generated = tuple(new_ids[: end + 1] if end is not None else new_ids)
    text = tokenizer.decode(generated[:end] if end is not None else generated, skip_special_tokens=True)
    return Generation(text, "stop" if end is not None else "length", len(generated), generated)
