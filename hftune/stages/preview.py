"""`hftune data preview`: a recipe's rows, or the rows a stage's config would train on, rendered through the
tokenizer by `data/preview.py`. It lives beside the stages because a config's preview prepares its data as
the stage does: the stage's own parse, its data parts (one recipe, a mixture or `dataset_name`),
`common.prepare_rows` with its max_length, too_long and held-out split, and the TRL format it reads data
in; and both previews load the model's tokenizer (`models/`), which `data/` never does."""

from __future__ import annotations

from pathlib import Path

from hftune.errors import UserError
from hftune.stages import registry


def preview_recipe(
    recipe: str,
    model: str,
    *,
    chat_template: str | None = None,
    n: int = 3,
    max_length: int | None = None,
    data_files: str | None = None,
) -> str:
    """A recipe (a built-in name or a YAML path) or a data file / folder in a TRL format (its layout
    detected), rendered through `model`'s tokenizer."""
    from hftune.data.prepare import prepare_dataset
    from hftune.data.preview import preview
    from hftune.data.recipe import load_recipe
    from hftune.models.tokenizer import load_tokenizer

    # The recipe first: a bad name is refused at once, before a model (`tiny:ARCH` builds one) is loaded.

    if Path(recipe).exists() and Path(recipe).suffix not in (".yaml", ".yml"):
        from hftune.data.detect import dataset_recipe

        loaded = dataset_recipe(recipe)  # data in a TRL format: its layout is detected
    else:
        loaded = load_recipe(recipe)
    tokenizer = load_tokenizer(model, chat_template=chat_template)
    data = prepare_dataset(loaded, tokenizer=tokenizer, max_length=max_length, data_files=data_files)
    shown = preview(loaded, tokenizer, n=n, max_length=max_length, prepared=data)
    read_as = loaded.replaced(converter=data.converter, format=data.format)
    return shown + _ignored(read_as, data_files)


def preview_config(
    config: str,
    stage: str,
    *,
    model: str | None = None,
    chat_template: str | None = None,
    n: int = 3,
    max_length: int | None = None,
) -> str:
    """The rows `stage`'s config would train on (one recipe, a mixture or `dataset_name`, with its
    max_length, too_long and held-out split); `model`, `chat_template` and `max_length` override the
    config's."""
    from hftune.data.detect import AUTO
    from hftune.data.mixture import data_parts, read_as
    from hftune.data.preview import preview
    from hftune.models.tokenizer import load_tokenizer
    from hftune.stages.common import prepare_rows, stage_formats

    if stage not in registry.DATA_STAGES:
        raise UserError(
            f"data preview --stage: `{stage}` trains on no data; one of {', '.join(registry.DATA_STAGES)}"
        )
    module = registry.load(stage)
    # One module trains several stages (`hftune dpo --algorithm kto`): preview the one asked for.
    algorithm = registry.STAGES[stage].algorithm
    cfg = module.parse(config, ["--algorithm", algorithm] if algorithm else [])
    model = model or cfg.model.model_name_or_path
    if not model:
        raise UserError(f"{config} names no model (`model_name_or_path`): pass --model for its tokenizer")
    tokenizer = load_tokenizer(model, chat_template=chat_template or cfg.hftune.chat_template)
    max_length = max_length or getattr(cfg.training, "max_length", None)
    # Pretraining keeps long documents whole when it packs them into blocks; other stages say `too_long`.
    too_long = module.too_long(cfg) if stage == "pretrain" else getattr(cfg.hftune, "too_long", "drop")
    parts = data_parts(cfg.hftune, cfg.script)
    prepared = prepare_rows(
        cfg, parts, tokenizer, max_length=max_length, too_long=too_long, formats=stage_formats(cfg.stage)
    )
    shown = preview(
        read_as(parts, prepared), tokenizer, n=n, max_length=max_length, prepared=prepared, too_long=too_long
    )
    # A part's own recipe says what it reads; `dataset_name` data is read as its layout was detected.
    recipes = [part.recipe if part.recipe.converter != AUTO else read_as([part], prepared) for part in parts]
    return shown + "".join(_ignored(r, part.data_files) for r, part in zip(recipes, parts, strict=True))


def _ignored(recipe, data_files: str | None) -> str:
    """A line naming the data's columns that the recipe leaves unread (empty when it reads them all)."""
    from hftune.data.sources import load_rows, unread_columns

    _, columns, label = load_rows(recipe, data_files, max_rows=1)
    unread = unread_columns(recipe, columns)
    if not unread:
        return ""
    return f"\ncolumns ignored in {label} (the `{recipe.converter}` converter does not read them): " + (
        ", ".join(unread)
    )
