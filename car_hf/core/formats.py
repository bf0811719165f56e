"""Row layouts, validation, and rendering of (prompt, response) pairs into token ids.

car_hf reads three layouts, detected from the column names (or named explicitly):

* ``messages``: a list of ``{"role", "content"}`` dicts; the LAST assistant turn is the response,
  everything before it is the prompt (earlier assistant turns included, masked like the prompt).
* ``prompt`` / ``completion``: TRL's standard form (two strings) or conversational form (lists of
  messages); a string prompt is taken as one user turn.
* ``instruction`` + ``response`` (or ``output``): the Alpaca / AlpacaEval / Magpie form.

Rendering follows TRL's ``SFTTrainer`` tokenization for prompt-completion data, so that the tokens
car_hf scores are exactly the tokens a completion-only SFT step trains on:

* with a chat template: ``prompt_ids = apply_chat_template(prompt, add_generation_prompt=True)``,
  ``ids = apply_chat_template(prompt + [assistant])``; response tokens start where the two diverge
  (TRL's ``common_prefix_length``) and include the end-of-turn token and whatever the template
  writes after it.
* without one: the :data:`PLAIN_TEMPLATE` (configurable) renders the prompt as text, and the
  completion is ``response + eos_token``, both tokenized with the tokenizer's special tokens.

Example:
    >>> from car_hf.core.formats import detect_layout
    >>> detect_layout(["instruction", "output", "generator"]).kind
    'instruction'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from car_hf.core.config import PLAIN_TEMPLATE
from car_hf.core.errors import InputError


RESPONSE_FALLBACKS = ("response", "output", "completion")


@dataclass(frozen=True)
class Layout:
    """Which columns hold the conversation.

    ``kind`` is ``"messages"``, ``"prompt_completion"`` or ``"instruction"``; ``prompt`` and
    ``response`` name the two columns (``prompt`` is unused for ``"messages"``).
    """

    kind: str
    prompt: str | None
    response: str


@dataclass(frozen=True)
class Example:
    """One (prompt, response) pair: ``prompt`` as chat messages, ``response`` as text."""

    prompt: list[dict[str, str]]
    response: str


@dataclass(frozen=True)
class Rendered:
    """Token ids of one example and where its response starts (``start == len(ids)``: none)."""

    ids: list[int]
    start: int
    truncated: bool

    @property
    def n_response(self) -> int:
        return len(self.ids) - self.start


def detect_layout(
    column_names: Sequence[str],
    *,
    messages: str | None = None,
    prompt: str | None = None,
    response: str | None = None,
) -> Layout:
    """Find the layout of a dataset from its column names.

    Explicit names win: ``messages="conv"`` or ``prompt="question", response="answer"``. Otherwise
    the first match of ``messages``, ``prompt``+``completion``, ``instruction``+``response``/``output``.

    Raises:
        InputError: naming the missing column and listing the columns present.
    """
    names = list(column_names)

    def need(column: str, role: str) -> str:
        if column not in names:
            raise InputError(f"column {column!r} ({role}) is missing; the dataset has columns {names}")
        return column

    if messages is not None:
        return Layout("messages", None, need(messages, "messages"))
    if prompt is not None or response is not None:
        prompt = prompt or ("prompt" if "prompt" in names else "instruction")
        if response is None:
            response = next((c for c in RESPONSE_FALLBACKS if c in names), "response")
        kind = "prompt_completion" if prompt == "prompt" else "instruction"
        return Layout(kind, need(prompt, "prompt"), need(response, "response"))
    if "messages" in names:
        return Layout("messages", None, "messages")
    if "prompt" in names and "completion" in names:
        return Layout("prompt_completion", "prompt", "completion")
    if "instruction" in names:
        for column in RESPONSE_FALLBACKS:
            if column in names:
                return Layout("instruction", "instruction", column)
    raise InputError(
        "cannot tell which columns hold the prompt and the response: expected 'messages', "
        "'prompt'+'completion', or 'instruction'+'response'/'output' (or pass messages=, or "
        f"prompt= and response=); the dataset has columns {names}"
    )


def _where(row: int, column: str) -> str:
    return f"row {row}, column {column!r}"


def _check_text(value: Any, row: int, column: str, what: str) -> str:
    if value is None:
        raise InputError(f"{_where(row, column)}: {what} is None")
    if isinstance(value, float) and math.isnan(value):
        raise InputError(f"{_where(row, column)}: {what} is NaN")
    if not isinstance(value, str):
        raise InputError(f"{_where(row, column)}: {what} must be a string, got {type(value).__name__}")
    return value


def _check_messages(value: Any, row: int, column: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{_where(row, column)}: expected a non-empty list of messages, got {value!r:.80}")
    for turn in value:
        if not isinstance(turn, Mapping) or "role" not in turn or "content" not in turn:
            raise InputError(f"{_where(row, column)}: each message needs 'role' and 'content', got {turn!r:.80}")
        _check_text(turn["content"], row, column, f"the content of a {turn['role']!r} message")
    return [{"role": turn["role"], "content": turn["content"]} for turn in value]


def row_example(batch: Mapping[str, Sequence[Any]], i: int, layout: Layout, row: int) -> Example:
    """Read row ``i`` of a batched ``batch`` as an :class:`Example` (``row`` names it in errors)."""
    value = batch[layout.response][i]
    if layout.kind == "messages":
        turns = _check_messages(value, row, layout.response)
        last = max((k for k, turn in enumerate(turns) if turn["role"] == "assistant"), default=None)
        if last is None:
            raise InputError(f"{_where(row, layout.response)}: the conversation has no assistant turn to score")
        return Example(turns[:last], turns[last]["content"])
    prompt_value = batch[layout.prompt][i]
    if isinstance(prompt_value, list):
        prompt = _check_messages(prompt_value, row, layout.prompt)
    else:
        prompt = [{"role": "user", "content": _check_text(prompt_value, row, layout.prompt, "the prompt")}]
    if isinstance(value, list):
        turns = _check_messages(value, row, layout.response)
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise InputError(f"{_where(row, layout.response)}: a conversational completion must be one assistant turn")
        return Example(prompt, turns[0]["content"])
    return Example(prompt, _check_text(value, row, layout.response, "the response"))


def _plain_prompt(prompt: list[dict[str, str]], plain_template: str) -> str:
    """Render chat messages as plain text: each user turn through the template, answers appended."""
    text, system = "", ""
    for turn in prompt:
        if turn["role"] == "system":
            system += turn["content"] + "\n\n"
        elif turn["role"] == "user":
            text += plain_template.format(prompt=system + turn["content"])
            system = ""
        else:
            text += turn["content"] + "\n\n"
    return text


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share (where TRL starts the completion)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _ids(encoded: Any) -> list[int]:
    # apply_chat_template(tokenize=True) returns a BatchEncoding in transformers 5, a list before.
    return list(encoded["input_ids"] if isinstance(encoded, Mapping) else encoded)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def sft_record(example: Example, tokenizer: Any, plain_template: str = PLAIN_TEMPLATE) -> dict[str, Any]:
    """The TRL prompt-completion record that trains on exactly the tokens car_hf scores.

    Conversational (``prompt``/``completion`` message lists) when the tokenizer has a chat
    template; plain text otherwise (TRL appends ``eos_token`` to the completion itself).
    """
    if has_chat_template(tokenizer):
        return {"prompt": example.prompt, "completion": [{"role": "assistant", "content": example.response}]}
    return {"prompt": _plain_prompt(example.prompt, plain_template), "completion": example.response}


def render(
    example: Example,
    tokenizer: Any,
    *,
    max_length: int | None,
    plain_template: str = PLAIN_TEMPLATE,
) -> Rendered:
    """Token ids of ``example`` and the index of its first response token, as TRL tokenizes it.

    Sequences longer than ``max_length`` are cut on the right (TRL's ``truncation_mode="keep_start"``)
    and flagged ``truncated``; if the cut removes every response token, ``start == len(ids)``.
    """
    if has_chat_template(tokenizer):
        assistant = {"role": "assistant", "content": example.response}
        prompt_ids = _ids(tokenizer.apply_chat_template(example.prompt, add_generation_prompt=True, tokenize=True))
        ids = _ids(tokenizer.apply_chat_template(example.prompt + [assistant], tokenize=True))
    else:
        prompt_text = _plain_prompt(example.prompt, plain_template)
        prompt_ids = tokenizer(prompt_text)["input_ids"]
        ids = tokenizer(prompt_text + example.response + tokenizer.eos_token)["input_ids"]
    start = common_prefix_length(prompt_ids, ids)
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids = ids[:max_length]
        start = min(start, len(ids))
    return Rendered(list(ids), start, truncated)


def is_empty(text: str) -> bool:
    return not text.strip()


def zoo_to_long(
    batch: Mapping[str, Sequence[Any]],
    *,
    generators: Sequence[str] | None = None,
    reward_key: str | None = None,
    id_column: str = "uuid",
    instruction_column: str = "instruction",
) -> dict[str, list[Any]]:
    """Turn the paper's wide Generator-Zoo layout into long rows (one per instruction × generator).

    Magpie-100K-Generator-Zoo has ``uuid``, ``instruction`` and one struct column per generator
    (``{"content": str, "<reward model>": float, ...}``). Use with
    ``ds.map(zoo_to_long, batched=True, remove_columns=ds.column_names, fn_kwargs={...})``.
    Output columns: ``instruction_id``, ``instruction``, ``generator``, ``response`` and, for each
    reward-model key in the structs, a float column of that name; with ``reward_key`` its value is
    also copied to ``reward``. Generators default to every struct column with a ``content`` field.

    Example:
        >>> wide = {"uuid": ["u1"], "instruction": ["Hi"],
        ...         "gen-a": [{"content": "Hello", "RM": 0.7}], "gen-b": [{"content": "Hey", "RM": 0.2}]}
        >>> long = zoo_to_long(wide, reward_key="RM")
        >>> long["generator"], long["reward"]
        (['gen-a', 'gen-b'], [0.7, 0.2])
    """
    names = list(batch.keys())
    for column in (id_column, instruction_column):
        if column not in names:
            raise InputError(f"column {column!r} is missing from the wide zoo layout; columns: {names}")
    if generators is None:
        generators = [
            c for c in names
            if c not in (id_column, instruction_column)
            and any(isinstance(v, Mapping) and "content" in v for v in batch[c])
        ]
    missing = [g for g in generators if g not in names]
    if missing:
        raise InputError(f"generator column(s) {missing} are missing; columns: {names}")
    first = next((v for g in generators for v in batch[g] if isinstance(v, Mapping)), {})
    score_keys = [k for k, v in first.items() if k != "content" and isinstance(v, (int, float))]
    out: dict[str, list[Any]] = {"instruction_id": [], "instruction": [], "generator": [], "response": []}
    out.update({k: [] for k in score_keys})
    if reward_key is not None:
        if reward_key not in score_keys:
            raise InputError(f"reward key {reward_key!r} is not in the generator structs; keys: {score_keys}")
        out["reward"] = []
    for i in range(len(batch[id_column])):
        for generator in generators:
            cell = batch[generator][i]
            if not isinstance(cell, Mapping):
                raise InputError(f"row {i}, column {generator!r}: expected a struct with 'content', got {cell!r:.80}")
            out["instruction_id"].append(batch[id_column][i])
            out["instruction"].append(batch[instruction_column][i])
            out["generator"].append(generator)
            out["response"].append(cell.get("content"))
            for key in score_keys:
                out[key].append(cell.get(key))
            if reward_key is not None:
                out["reward"].append(cell.get(reward_key))
    return out
