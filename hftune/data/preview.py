"""`hftune data preview`: what the trainer will actually see for a recipe, before any model loads.

Renders the first few prepared rows through the tokenizer's chat template with the tokens that carry
loss highlighted, using the same assistant mask TRL's SFTTrainer uses with `assistant_only_loss=True`,
then token-length statistics over all rows (including those `max_length` would drop) and the drop summary:

    hftune data preview tiny_alpaca --model runs/tiny --max_length 256
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from hftune.data.prepare import PreparedData, prepare_dataset, token_lengths
from hftune.data.recipe import Recipe, load_recipe

GREEN = "\x1b[42m\x1b[30m"
RESET = "\x1b[0m"
OPEN, CLOSE = "⟦", "⟧"
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")

NO_MASK_NOTE = (
    "NOTE: this chat template has no {% generation %} ... {% endgeneration %} markers, so it yields no "
    "assistant-token mask: TRL's assistant_only_loss=True would fail, and without it every token of these "
    "conversations would be trained. Wrap the assistant content in the template with those markers, or use a "
    "built-in template."
)


def _template(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one is what apply_chat_template uses
        template = template.get("default")
    return template or ""


def _tools(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A row's tool schemas for the chat template: its `tools` column is a JSON string (or absent / None),
    which SFTTrainer json.loads the same way."""
    tools = row.get("tools")
    return json.loads(tools) if isinstance(tools, str) else tools


def _render(row: dict[str, Any], tokenizer, has_markers: bool) -> tuple[list[int], list[int] | None]:
    """Token ids and the trained-token mask (None when the template cannot say), mirroring TRL's SFT."""
    if "text" in row:
        ids = tokenizer(row["text"])["input_ids"]
        return ids, [1] * len(ids)
    conversation = row["messages"] if "messages" in row else row["prompt"] + row["completion"]
    tools = _tools(row)
    encoded = tokenizer.apply_chat_template(
        conversation, tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=has_markers
    )
    ids = list(encoded["input_ids"])
    mask = list(encoded["assistant_masks"]) if has_markers else None
    if "prompt" in row:
        # Prompt-completion rows train on the completion only (TRL's completion_only_loss default).
        prompt = tokenizer.apply_chat_template(
            row["prompt"], tools=tools, tokenize=True, return_dict=True, add_generation_prompt=True
        )
        completion = [0] * len(prompt["input_ids"]) + [1] * (len(ids) - len(prompt["input_ids"]))
        mask = completion if mask is None else [a & b for a, b in zip(mask, completion, strict=True)]
    return ids, mask


PAIR_FORMATS = ("preference", "implicit_preference")
UNPAIRED_FORMAT = "unpaired_preference"


def _render_pair(row: dict[str, Any], tokenizer, color: bool) -> str:
    """Chosen and rejected, encoded exactly as reward training and scoring encode them."""
    from hftune.models.scoring import encode, prompt_length

    if row.get("prompt") is not None:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    else:
        prompt, chosen, rejected = row["chosen"][:-1], row["chosen"][-1:], row["rejected"][-1:]
    sequences = {
        "chosen": encode(tokenizer, prompt, chosen[-1]["content"]),
        "rejected": encode(tokenizer, prompt, rejected[-1]["content"]),
    }
    shared = prompt_length(tokenizer, prompt)
    lines = []
    for name, ids in sequences.items():
        mask = [0] * shared + [1] * (len(ids) - shared)
        lines.append(f"[{name}: {len(ids)} tokens]")
        lines.append(_highlight(tokenizer, ids, mask, color))
    if "margin" in row:
        lines.append(f"[margin: {row['margin']}]")
    return "\n".join(lines)


def _render_prompt(row: dict[str, Any], tokenizer) -> str:
    ids = tokenizer.apply_chat_template(
        row["prompt"], tools=_tools(row), tokenize=True, return_dict=True, add_generation_prompt=True
    )["input_ids"]
    return f"[{len(ids)} tokens]\n" + tokenizer.decode(ids, skip_special_tokens=False).rstrip("\n")


def _highlight(tokenizer, ids: list[int], mask: list[int], color: bool) -> str:
    spans: list[tuple[int, list[int]]] = []
    for token, bit in zip(ids, mask, strict=True):
        if spans and spans[-1][0] == bit:
            spans[-1][1].append(token)
        else:
            spans.append((bit, [token]))
    parts = []
    for bit, tokens in spans:
        piece = tokenizer.decode(tokens, skip_special_tokens=False)
        if not bit:
            parts.append(piece)
        elif color:
            # Per line, so the background does not bleed across the terminal's line ends.
            parts.append("\n".join(f"{GREEN}{line}{RESET}" if line else line for line in piece.split("\n")))
        else:
            parts.append(f"{OPEN}{piece}{CLOSE}")
    return "".join(parts)


def _percentile(sorted_values: list[int], p: float) -> int:
    # Nearest rank: always an actual row length, so "p95 412" means a real row has 412 tokens.
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def length_stats(lengths: list[int], max_length: int | None, too_long: str = "drop") -> str:
    """count, mean, p50, p95, max and how many exceed max_length, as a few readable lines."""
    if not lengths:
        return "token lengths: no rows"
    values = sorted(lengths)
    mean = sum(values) / len(values)
    lines = [
        f"token lengths over {len(values)} rows: mean {mean:.1f}, p50 {_percentile(values, 50)}, "
        f"p95 {_percentile(values, 95)}, max {values[-1]}"
    ]
    if max_length is None:
        lines.append("max_length not set: no row is dropped for length")
    else:
        over = sum(n > max_length for n in values)
        fate = {"drop": " (dropped as too_long)", "truncate": " (their final reply is truncated to fit)"}
        lines.append(f"{over} rows exceed max_length {max_length}" + (fate.get(too_long, "") if over else ""))
    return "\n".join(lines)


def preview(
    recipe: Recipe | str,
    tokenizer,
    *,
    n: int = 3,
    max_length: int | None = None,
    data_files: str | None = None,
    color: bool | None = None,
    prepared: PreparedData | None = None,
    too_long: str = "drop",
) -> str:
    """The preview text: `n` rendered examples with trained tokens marked, length stats, drop summary.

    `color` None means ANSI colour when stdout is a terminal; otherwise trained spans are ⟦bracketed⟧.
    `prepared`: rows already prepared (a stage config's mixture or `dataset_name` data), with `too_long`
    as the stage handles long rows ("keep": a pretraining corpus, concatenated and cut into blocks).
    """
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    if color is None:
        color = sys.stdout.isatty()
    data = prepared or prepare_dataset(
        recipe, tokenizer=tokenizer, max_length=max_length, data_files=data_files, too_long=too_long
    )
    # Data in a TRL format is read as its detected layout says.
    recipe = recipe.replaced(converter=data.converter, format=data.format)
    has_markers = bool(_GENERATION_TAG.search(_template(tokenizer)))
    out = [
        f"recipe {recipe.name}: {data.source} -> {recipe.format} rows via the {recipe.converter} converter"
    ]
    paired = recipe.format in PAIR_FORMATS
    unpaired = recipe.format == UNPAIRED_FORMAT
    if paired:
        legend = f"{GREEN}highlighted{RESET}" if color else f"{OPEN}bracketed{CLOSE}"
        out.append(f"each pair as the reward model scores it; the replies it compares are {legend}")
    elif recipe.format == "prompt_only":
        out.append("prompts as the policy sees them before it generates (nothing here is trained on)")
    elif unpaired:
        legend = f"{GREEN}highlighted{RESET}" if color else f"{OPEN}bracketed{CLOSE}"
        out.append(
            f"each prompt with one completion, {legend}; its label says whether the completion is desirable "
            "(an unpaired preference, as KTO reads it)"
        )
    elif recipe.format == "conversational" and not has_markers:
        out.append(NO_MASK_NOTE)
    else:
        legend = f"{GREEN}highlighted{RESET}" if color else f"{OPEN}bracketed{CLOSE}"
        out.append(f"tokens that carry loss are {legend}")

    for k in range(min(n, len(data.train))):
        row = data.train[k]
        if paired or recipe.format == "prompt_only":
            out += ["", f"--- example {k + 1} (source row {data.train_indices[k]}) ---"]
            out.append(_render_pair(row, tokenizer, color) if paired else _render_prompt(row, tokenizer))
            continue
        ids, mask = _render(row, tokenizer, has_markers)
        trained = f"{sum(mask)} trained" if mask is not None else "trained tokens unknown"
        out += [
            "",
            f"--- example {k + 1} (source row {data.train_indices[k]}): {len(ids)} tokens, {trained} ---",
        ]
        if mask is None:
            out.append(tokenizer.decode(ids, skip_special_tokens=False).rstrip("\n"))
            continue
        if not any(mask):
            out.append(
                "NOTE: no token of this example is trained; TRL refuses such rows with assistant_only_loss."
            )
        # The template's final newline is untrained filler; dropping it keeps examples one blank line apart.
        out.append(_highlight(tokenizer, ids, mask, color).rstrip("\n"))
        if unpaired:
            out.append(f"[label: {'true (desirable)' if row['label'] else 'false (undesirable)'}]")

    if data.sources:  # a mixture
        out.append("")
    for part in data.sources:
        out.append(
            f"part {part['recipe']} (weight {part['weight']:g}): {part['n_train']} training rows, "
            f"{part['n_eval']} held out, of {part['n_source_rows']} source rows"
        )
    if too_long == "keep" and recipe.format == "language_modeling":
        out += ["", corpus_stats(data, tokenizer, max_length), data.summary()]
    else:
        out += ["", length_stats(data.token_lengths or [], max_length, too_long), data.summary()]
    return "\n".join(out)


def corpus_stats(data: PreparedData, tokenizer, max_length: int | None) -> str:
    """A pretraining corpus as the stage trains on it: documents (each with EOS, as TRL appends it) are
    concatenated and cut into max_length blocks, so no document is dropped or cut for its length."""
    lines = []
    for name, split in (("train", data.train), ("held out", data.eval)):
        if split is None:
            continue
        tokens = sum(token_lengths(tokenizer, [[row["text"]] for row in split]))
        line = f"{name}: {len(split)} documents, {tokens:,} tokens (each document + EOS)"
        if max_length and name == "train":
            full, rest = divmod(tokens, max_length)
            line += f" -> {full:,} blocks of {max_length}" + (f" and one of {rest}" if rest else "")
        lines.append(line)
    lines.append("0 dropped for length: documents are concatenated and cut into max_length blocks")
    return "\n".join(lines)
