"""`hftune label` settings: which model samples, on which prompts, how, where the rankings go, and where the
page is served. One flat YAML file (or flags), parsed as strictly as a stage config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hftune.config import StageConfig, StageSchema, field_defaults, hftune_field, parse_stage_config

LOOPBACK = ("127.0.0.1", "localhost", "::1")
ORDERS = ("recipe", "uncertainty")  # `order`: see `items.serving_order`


@dataclass
class LabelSettings:
    """Sample K completions per prompt from a model, then serve a page where people rank them."""

    model_name_or_path: str | None = hftune_field(
        None, "The model whose completions are ranked: an SFT artifact folder, any model folder or a Hub id."
    )
    data_recipe: str | None = hftune_field(
        None,
        "Recipe whose prompts are labelled (conversational or prompt-only rows: each conversation up to its "
        "last reply is a prompt). Its held-out rows (`eval_fraction`, `split_seed`) and every prompt a stage "
        "behind the model held out are never shown.",
    )
    data_files: str | None = hftune_field(None, "A local file in the recipe's schema, instead of its source.")
    max_samples: int | None = hftune_field(None, "Read at most this many source rows.")
    eval_fraction: float = hftune_field(
        0.1, "The recipe's held-out fraction, as the stages use it: those prompts are never labelled."
    )
    split_seed: int = hftune_field(42, "Seed of the held-out split (the stages' `seed`).")
    max_prompts: int | None = hftune_field(None, "Label at most this many prompts (null: all).")
    num_completions: int = hftune_field(
        4, "Completions sampled per prompt (K): each ranking gives K(K-1)/2 pairs."
    )
    max_new_tokens: int = hftune_field(128, "Most tokens sampled per completion.")
    temperature: float = hftune_field(1.0, "Sampling temperature (top-k and top-p off).")
    seed: int = hftune_field(0, "Sampling seed: a prompt's completions depend only on it and the prompt.")
    batch_size: int = hftune_field(16, "Prompts per generation batch.")
    chat_template: str | None = hftune_field(
        None, "chatml, a .jinja file or a Jinja string (default: the model's)."
    )
    trust_remote_code: bool = hftune_field(
        False, "Run code shipped with the model (off unless you trust it)."
    )
    cache_dir: str | None = hftune_field(
        None, "Generation cache (default: $HFTUNE_CACHE or ~/.cache/hftune)."
    )
    order: str = hftune_field(
        "recipe",
        "The order items are served in. recipe: the recipe's. uncertainty: the items the `reward_model` is "
        "least sure of first, by margin = its top completion's score minus the best score of a completion "
        "with another text (smallest first; items whose completions are all one text last); with a "
        "`verifier`, the items where its top completion fails the verifier while another passes come "
        "before all others.",
    )
    reward_model: str | None = hftune_field(
        None,
        "A reward model folder (`hftune reward`) that scores every completion at sampling time, as the "
        "eval and PPO score replies; the scores and each item's margin go into items.json. Required by "
        "`order: uncertainty`.",
    )
    verifier: str | None = hftune_field(
        None,
        "Task verifier `module:function(prompt, response, reference) -> float` (as the eval's; passes at "
        ">= 0.5) run on every completion at sampling time; with `order: uncertainty`, the items where it "
        "and the reward model disagree come first. Needs `reward_model`.",
    )
    output_dir: str = hftune_field(
        "runs/labels",
        "Folder for items.json (the sampled completions), labels.jsonl (every submission and undo, appended "
        "as it comes), train.jsonl (the current rankings, rewritten after each) and recipe.yaml (`hftune "
        "reward --data_recipe OUTPUT_DIR/recipe.yaml`). A restart resumes it.",
    )
    host: str = hftune_field(
        "127.0.0.1", "Interface to serve on. Anything but loopback needs `allow_remote` and an access token."
    )
    port: int = hftune_field(7860, "Port to serve on (0: any free port).")
    allow_remote: bool = hftune_field(
        False,
        "Serve on a non-loopback `host`. Every request then needs the access token (HFTUNE_LABEL_TOKEN, "
        "or one made up and printed at start).",
    )
    guidelines: str | None = hftune_field(
        None,
        "What labellers should prefer, shown on the page as plain text: the text itself, or a .md / .txt "
        "file (read at start).",
    )
    hint: str | None = hftune_field(
        None,
        "A line shown with every prompt (what to look for): fixed text, or `module:function` called with "
        "each prompt's text at start, returning the line (or null: none).",
    )
    aggregate: str = hftune_field(
        "all",
        "What OUTPUT_DIR/train.jsonl (the reward stage's data) holds of the current rankings: `all` (each "
        "labeller's ranking of an item gives its pairs), `majority` (per item and pair of completions, "
        "most labellers' preference; tied votes dropped) or `labeller:NAME` (only that labeller's).",
    )


def _check(values: dict[str, Any]) -> list[str]:
    values = {**field_defaults(LabelSettings), **values}  # unset keys are LabelSettings' defaults
    problems = []
    for key in ("model_name_or_path", "data_recipe"):
        if not values.get(key):
            problems.append(f"`{key}`: required")
    if not 2 <= values["num_completions"] <= 26:
        # The page names completions A..Z; number keys rank up to 9, dragging any number.
        problems.append("`num_completions`: between 2 and 26 completions a prompt (number keys rank up to 9)")
    if values["order"] not in ORDERS:
        problems.append(f"`order`: one of {', '.join(ORDERS)}, got {values['order']!r}")
    elif values["order"] == "uncertainty" and not values.get("reward_model"):
        problems.append("`reward_model`: required by `order: uncertainty` (it measures how sure it is)")
    if values.get("verifier"):
        if ":" not in values["verifier"]:
            problems.append(f"`verifier`: expected `module:function`, got {values['verifier']!r}")
        if not values.get("reward_model"):
            problems.append("`verifier`: needs a `reward_model` to disagree with")
    from hftune.label.store import check_aggregate

    if bad_aggregate := check_aggregate(str(values["aggregate"])):
        problems.append(bad_aggregate)
    host = values["host"]
    if host not in LOOPBACK and not values.get("allow_remote"):
        problems.append(
            f"`host`: {host} is reachable from other machines; pass `allow_remote: true` "
            "(--allow_remote true) to serve there, behind an access token"
        )
    return problems


EXTRAS = LabelSettings
DEFAULTS: dict[str, Any] = {}
TRL_CONFIGS: tuple[str, ...] = ()


def schema() -> StageSchema:
    return StageSchema(name="label", classes={"hftune": LabelSettings}, defaults={}, check=_check)


def parse(config_path: str | None, argv: list[str] | None = None) -> StageConfig:
    return parse_stage_config(schema(), config_path, argv)
