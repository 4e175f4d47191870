"""SFT rows tokenized once, by hftune, in the layout TRL's SFTTrainer makes for itself.

hftune must render every row through the chat template anyway, to measure it against `max_length`; TRL
then tokenized each row again, one at a time. Here that one rendering keeps its tokens: `input_ids` plus
the masks TRL builds labels from (`assistant_masks` for assistant-only loss, `completion_mask` for
prompt-completion rows). A dataset that has `input_ids` is one SFTTrainer treats as processed: it skips
its tokenizing pass and goes straight to labels, truncation and packing. The prepared rows, tokens
included, are what the data cache keeps, so a rerun tokenizes nothing at all.

Each call is the one TRL's `SFTTrainer._prepare_dataset` makes for that row format (TRL 1.12:
`apply_chat_template(..., tokenize=True, return_dict=True)` for chats, with the training template TRL
swaps in for one without generation markers; the tokenizer on `text + eos` for plain text), batched where
the rows share no `tools`; `tests/test_data_tokens.py` checks that the
labels TRL trains on come out identical both ways, for every format.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from jinja2 import TemplateError

from hftune.errors import UserError


def training_template(tokenizer, assistant_only_loss: bool) -> str | None:
    """The chat template SFTTrainer renders with: with assistant-only loss and a template without
    `{% generation %}` markers (Qwen2.5's, Llama 3's, ...), TRL swaps in its patched training version of it;
    otherwise None (the tokenizer's own). Resolved by TRL's own functions, so both sides agree."""
    if not assistant_only_loss or not tokenizer.chat_template:
        return None
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return None
    try:
        return get_training_chat_template(tokenizer)
    except (ValueError, NotImplementedError) as err:  # what TRL would refuse at the trainer's start
        raise UserError(f"assistant_only_loss: {err}") from None


def sft_columns(
    tokenizer,
    rows: list[dict[str, Any]],
    *,
    assistant_only_loss: bool,
    chat_template: str | None = None,
    batch_size: int = 512,
) -> list[dict[str, list[int]]]:
    """For each formatted SFT row ({"messages"}, {"prompt", "completion"} or {"text"}, with "tools" where
    a chat has them), the token columns TRL's SFTTrainer would compute for it; `chat_template` is
    `training_template`'s answer (None: the tokenizer's own)."""
    out: list[dict[str, list[int]] | None] = [None] * len(rows)
    template = {"chat_template": chat_template} if chat_template else {}
    masks = {**template, "return_assistant_tokens_mask": True} if assistant_only_loss else template

    def chats(kind: str) -> list[tuple[int, dict]]:
        return [(i, r) for i, r in enumerate(rows) if kind in r and isinstance(r[kind], list)]

    # Conversational language modelling: the whole chat, with its assistant mask.
    for batch in _batches(chats("messages"), batch_size):
        rendered = render(tokenizer, [(r["messages"], r.get("tools")) for _, r in batch], masks)
        for (i, _), ids in zip(batch, rendered, strict=True):
            out[i] = ids
    # Conversational prompt-completion: the prompt with the generation prompt, then the whole chat; the
    # completion is everything after the prompt's tokens (as TRL counts it).
    for batch in _batches(chats("prompt"), batch_size):
        prompts = render(
            tokenizer,
            [(r["prompt"], r.get("tools")) for _, r in batch],
            {**template, "add_generation_prompt": True},
        )
        whole = render(tokenizer, [(r["prompt"] + r["completion"], r.get("tools")) for _, r in batch], masks)
        for (i, _), prompt, full in zip(batch, prompts, whole, strict=True):
            n = len(prompt["input_ids"])
            full["completion_mask"] = [0] * n + [1] * (len(full["input_ids"]) - n)
            out[i] = full
    # Plain text: TRL appends EOS unless the text ends with it, then tokenizes.
    texts = [(i, r["text"]) for i, r in enumerate(rows) if isinstance(r.get("text"), str)]
    eos = tokenizer.eos_token or ""
    for batch in _batches(texts, batch_size):
        ids = tokenizer(text=[t if t.endswith(eos) else t + eos for _, t in batch])["input_ids"]
        for (i, _), row_ids in zip(batch, ids, strict=True):
            out[i] = {"input_ids": row_ids}
    missing = [i for i, cols in enumerate(out) if cols is None]
    if missing:
        raise ValueError(f"rows {missing[:5]} are in no SFT format hftune tokenizes")
    return out  # type: ignore[return-value]


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def render(tokenizer, chats: list[tuple[list, str | None]], kwargs: dict) -> list[dict[str, list[int]]]:
    """`apply_chat_template(**kwargs)` on each (turns, tools JSON or None): chats without tools in one
    batched call, a chat with tools on its own (the template takes one `tools` per call). A template that
    refuses a row is a UserError."""
    out: list[dict[str, list[int]] | None] = [None] * len(chats)
    plain = [i for i, (_, tools) in enumerate(chats) if not tools]
    with chat_template_errors():
        if plain:
            got = tokenizer.apply_chat_template(
                [chats[i][0] for i in plain], tokenize=True, return_dict=True, **kwargs
            )
            for n, i in enumerate(plain):
                out[i] = {k: list(got[k][n]) for k in ("input_ids", "assistant_masks") if k in got}
        for i, (turns, tools) in enumerate(chats):
            if tools:
                got = tokenizer.apply_chat_template(
                    turns, tools=json.loads(tools), tokenize=True, return_dict=True, **kwargs
                )
                out[i] = {k: list(got[k]) for k in ("input_ids", "assistant_masks") if k in got}
    return out  # type: ignore[return-value]


@contextlib.contextmanager
def chat_template_errors():
    """A template that refuses a row (a Jinja `raise_exception`) is the user's data or template: say so."""
    try:
        yield
    except TemplateError as err:
        raise UserError(
            f"the chat template cannot render these rows ({err}); a template that refuses some roles "
            "(e.g. no system turn) needs data, or a recipe `system_prompt`, that fits it"
        ) from None
