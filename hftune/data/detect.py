"""Data already in one of TRL's standard formats (`dataset_name` with no recipe): which one, read how.

    dataset_name: data/chats.jsonl      # or a folder of data files, or a Hub dataset id

`dataset_recipe` builds a recipe whose converter and format are `auto`; `prepare_dataset` calls `detect`
on the rows it loaded, which names the converter that reads that layout and the TRL format the stage
trains on, and logs what it found. Rows are then checked exactly as a recipe's are (the same converters).

Prompt/reply layouts become conversations, as in every hftune recipe: a `prompt` text is the user turn,
a `completion` (or `chosen` / `rejected`) text the assistant's reply. Every stage after SFT renders
prompts through the chat template, so the model is trained in the shape it will be prompted in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftune.data.converters import CONVERTERS
from hftune.data.formats import FORMATS
from hftune.data.recipe import LOCAL_BUILDERS, Recipe, Source
from hftune.errors import UserError

logger = logging.getLogger("hftune.data")

AUTO = "auto"  # the converter and format of a recipe whose rows say which they are


@dataclass(frozen=True)
class Layout:
    """One TRL layout: the columns that identify it, the converter that reads it, the format it prefers."""

    name: str  # as the log says it
    columns: frozenset[str]
    converter: str
    format: str
    # Extra condition on the first row (e.g. hh-rlhf transcripts are texts starting with "Human:").
    test: Any = None


def _hh_transcript(row: Mapping[str, Any]) -> bool:
    chosen = row.get("chosen")
    return isinstance(chosen, str) and chosen.lstrip().startswith("Human:")


def _turn_lists(row: Mapping[str, Any]) -> bool:
    return isinstance(row.get("chosen"), list)


# Most specific first: a row with `prompt`, `completion` and `label` is unpaired preference data, not
# prompt-completion data with an extra column.
LAYOUTS = (
    Layout("conversational (messages)", frozenset({"messages"}), "messages", "conversational"),
    Layout(
        "ShareGPT preference (conversations, chosen, rejected)",
        frozenset({"conversations", "chosen", "rejected"}),
        "sharegpt_preference",
        "preference",
    ),
    Layout("ShareGPT (conversations)", frozenset({"conversations"}), "sharegpt", "conversational"),
    Layout(
        "unpaired preference (prompt, completion, label)",
        frozenset({"prompt", "completion", "label"}),
        "unpaired",
        "unpaired_preference",
    ),
    Layout(
        "preference with an explicit prompt (prompt, chosen, rejected)",
        frozenset({"prompt", "chosen", "rejected"}),
        "pairwise",
        "preference",
    ),
    Layout(
        "system / question / chosen / rejected",
        frozenset({"question", "chosen", "rejected"}),
        "system_question",
        "preference",
    ),
    Layout(
        "preference with an implicit prompt (chosen, rejected conversations)",
        frozenset({"chosen", "rejected"}),
        "pairwise",
        "implicit_preference",
        _turn_lists,
    ),
    Layout(
        "hh-rlhf transcripts (chosen, rejected)",
        frozenset({"chosen", "rejected"}),
        "hh_rlhf",
        "preference",
        _hh_transcript,
    ),
    Layout(
        "prompt-completion (prompt, completion)",
        frozenset({"prompt", "completion"}),
        "prompt_completion",
        "prompt_completion",
    ),
    Layout("prompt-only (prompt)", frozenset({"prompt"}), "prompt_only", "prompt_only"),
    Layout("language modeling (text)", frozenset({"text"}), "text", "language_modeling"),
)


def dataset_source(dataset_name: str, config: str | None, split: str) -> Source:
    """Where `dataset_name` points: a local data file or folder (as TRL's scripts accept), else a Hub id."""
    path = Path(dataset_name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix not in LOCAL_BUILDERS:
            raise UserError(
                f"`dataset_name`: {dataset_name} is a `{path.suffix}` file; "
                f"use one of {', '.join(LOCAL_BUILDERS)}"
            )
        return Source(path=str(path.resolve()), split=split)
    return Source(hub=dataset_name, split=split, config=config)


def dataset_recipe(dataset_name: str, config: str | None = None, split: str = "train") -> Recipe:
    """A recipe for data in a TRL format: its layout is detected from the rows when they are read."""
    return Recipe(
        name=Path(dataset_name).name if Path(dataset_name).exists() else dataset_name,
        path=None,
        source=dataset_source(dataset_name, config, split),
        format=AUTO,
        converter=AUTO,
        description=f"{dataset_name}, read in the TRL format its columns show",
    )


def detect(
    recipe: Recipe, columns: Sequence[str], rows: Sequence[Mapping[str, Any]], formats: Sequence[str] | None
) -> Recipe:
    """`recipe` (converter and format `auto`) with the converter and format its rows' layout calls for.

    `formats` are the TRL formats the stage trains on (None: any). Rows can fit several layouts (an
    UltraFeedback row has `messages` and `prompt` / `chosen` / `rejected`): the first layout the stage can
    train on is taken, read as its own format when the stage takes that, else as the first of `formats`
    its converter's output fits (a conversation as a prompt for RL). A layout that only reads fewer of the
    same columns than one the stage cannot take is never a fallback: prompt / completion / label rows are
    KTO data, and SFT must not train on their undesirable completions."""
    present = set(columns)
    first = rows[0] if len(rows) else {}
    found = [
        layout
        for layout in LAYOUTS
        if layout.columns <= present and (layout.test is None or layout.test(first))
    ]
    if not found:
        _no_layout(recipe, columns, present)
    unfit: list[Layout] = []
    for layout in found:
        chosen = _format_for(layout, formats)
        if chosen is not None and not any(layout.columns <= other.columns for other in unfit):
            break
        unfit.append(layout)
    else:
        raise UserError(
            f"{recipe.source.describe()} is {found[0].name} data; this stage trains on "
            f"{', '.join(formats or ())} rows"
        )
    tools = " with a `tools` column" if "tools" in present and layout.converter == "messages" else ""
    logger.info(
        "%s: detected TRL format %s%s; read with the `%s` converter as `%s` rows",
        recipe.source.describe(),
        layout.name,
        tools,
        layout.converter,
        chosen,
    )
    return recipe.replaced(converter=layout.converter, format=chosen, mapping={})


def _format_for(layout: Layout, formats: Sequence[str] | None) -> str | None:
    """The TRL format `layout` is read as for a stage training on `formats`; None when it takes none."""
    if formats is None or layout.format in formats:
        return layout.format
    kind = CONVERTERS[layout.converter].yields
    return next((name for name in formats if kind in FORMATS[name].accepts), None)


def _no_layout(recipe: Recipe, columns: Sequence[str], present: set[str]) -> None:
    """Refuse columns that fit no TRL layout, saying what would."""
    if {"chosen", "rejected"} <= present:
        raise UserError(
            f"{recipe.source.describe()}: `chosen` and `rejected` are texts with no prompt; hftune needs "
            "the prompt: a `prompt` column, conversations (lists of turns), or hh-rlhf transcripts"
        )
    known = "; ".join(sorted({", ".join(sorted(layout.columns)) for layout in LAYOUTS}))
    raise UserError(
        f"{recipe.source.describe()}: columns {', '.join(columns)} are none of TRL's standard formats "
        f"(columns: {known}). Write a data recipe that maps them (see `hftune data list` and the "
        "README's Data section)."
    )
