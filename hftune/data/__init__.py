"""Data recipes: load a dataset, convert its rows to a TRL format, check them, count what was dropped.

    from hftune.data import load_recipe, prepare_dataset
    data = prepare_dataset(load_recipe("tiny_alpaca"), tokenizer=tok, max_length=512, eval_fraction=0.1)
    print(data.summary())   # kept 400 of 400 rows (train 360, eval 40); dropped 0

Preference converters (`pairwise`, `hh_rlhf`, `ranked`) turn one row into one or more chosen/rejected
pairs for the reward model; a pair can be left out on its own (a tie, identical replies, too long) and is
counted in `dropped_pairs`, while the eval split still takes whole source rows:

    data = prepare_dataset(load_recipe("tiny_ranked"), eval_fraction=0.1)
    print(data.summary())   # kept 200 of 200 rows -> 1192 pairs (train 1072, eval 120); dropped 0 rows; ...

The modules, in the order a row meets them (each imports only those above it, bar type annotations):

    problems.py    RowProblem / PairProblem: why a row or a pair is left out; format_counts, is_blank
    converters.py  raw row -> conversation, text or preference pairs; the `converter` registry, CONVERTERS
    formats.py     checks per kind of converter output (KINDS); TRL formats (`trl_format`, FORMATS)
    recipe.py      the recipe YAML schema (Recipe, Source), strict parsing, built-ins; load_recipe (cached)
    files.py       local json/jsonl/csv/txt files read as written (no type inference); JsonInt, JsonFloat
    sources.py     a recipe's raw rows from a local file or the Hub; resolve_source_path, column checks
    detect.py      data already in a TRL format (`dataset_name`): its layout detected, read by a converter
    prepare.py     prepare_dataset: convert, check, drop accounting, split, fingerprint; PreparedData
    mixture.py     a stage's data: one recipe, a weighted mixture, or `dataset_name`; prepare_parts
    streaming.py   a pretraining corpus read lazily as an IterableDataset (`dataset_streaming`)
    preview.py     `hftune data preview`: prepared rows rendered with their trained tokens marked

Adding a converter or a format is one decorated function: see `converter` and `trl_format`.
"""

from hftune.data.converters import CONVERTERS, converter
from hftune.data.formats import FORMATS, trl_format
from hftune.data.prepare import load_prepared, prepare_dataset, save_prepared
from hftune.data.recipe import Recipe, Source, builtin_dir, list_recipes, load_recipe
from hftune.data.sources import resolve_source_path

__all__ = [
    "CONVERTERS",
    "FORMATS",
    "Recipe",
    "Source",
    "builtin_dir",
    "converter",
    "list_recipes",
    "load_prepared",
    "load_recipe",
    "prepare_dataset",
    "resolve_source_path",
    "save_prepared",
    "trl_format",
]
