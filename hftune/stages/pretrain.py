"""`hftune pretrain`: a base model on plain text, from scratch or by continued pretraining.

    hftune pretrain --config configs/tiny/pretrain.yaml

From scratch (`init_architecture: llama`, ...): a byte-level BPE tokenizer with ChatML tokens is trained on
the recipe's text, a model of that architecture and size is initialised at random, and TRL's SFTTrainer
trains it as a language model on the same text (full fine-tuning, no LoRA, loss on every token).
Continued pretraining: leave `init_architecture` unset and name the model in `model_name_or_path`. The
data is any `language_modeling` recipe (e.g. `tiny_corpus`, a plain-text file, or a Hub corpus). The
output is a full model folder with its tokenizer, used by the SFT stage as its base.

Documents become training blocks GPT-style, by TRL's wrapped packing (`packing: true, packing_strategy:
wrapped`, this stage's defaults): each document is tokenized with EOS appended, the documents are
concatenated and cut into `max_length` blocks, so no document is dropped or cut short for its length
(`drop_partial_blocks` decides the short block at the end). A block may span documents: positions run
0..max_length-1 over the whole block and attention is causal over all of it, EOS being the only separator,
as in standard GPT-style pretraining. The held-out split is still by whole document (`eval_fraction`),
decided before anything is chunked. `tokens_trained` in metrics.json counts the tokens the run trained on.

A corpus too large for memory streams (`dataset_streaming: true`, with `max_steps`): see
`hftune.data.streaming`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftune import artifacts, distributed
from hftune.config import StageConfig, StageSchema, hftune_field, parse_stage_config
from hftune.errors import UserError
from hftune.models.tiny import ARCHITECTURES
from hftune.stages import causal_lm, common
from hftune.stages.causal_lm import TRL_CONFIGS  # noqa: F401 (the stage interface, for --help)
from hftune.stages.common import DataExtras, common_checks

logger = logging.getLogger(__name__)


@dataclass
class PretrainExtras(DataExtras):
    """From-scratch settings TRL's configs lack; names never clash with TRL's, but for the TRL key hftune
    owns (`gradient_checkpointing`: common.OWNED_TRAINING_KEYS)."""

    init_architecture: str | None = hftune_field(
        None,
        f"Build a new model of this architecture ({', '.join(ARCHITECTURES)}) with a tokenizer trained on "
        "the data, instead of continuing `model_name_or_path`.",
        choices=(None, *ARCHITECTURES),
    )
    init_vocab_size: int = hftune_field(1024, "From scratch: tokenizer vocabulary size.")
    init_hidden_size: int = hftune_field(64, "From scratch: hidden size.")
    init_num_layers: int = hftune_field(2, "From scratch: transformer layers.")
    init_num_heads: int = hftune_field(4, "From scratch: attention heads.")
    init_split_numbers: bool = hftune_field(
        False,
        "From scratch: the tokenizer cuts numbers from the text around them into groups of up to three "
        "digits before BPE (as LLaMA 3's and GPT-4's tokenizers do), so a number is the same tokens "
        "wherever it stands (byte-level BPE alone merges it with the space before it).",
    )
    drop_partial_blocks: bool = hftune_field(
        False,
        "Packing cuts the concatenated documents into `max_length` blocks; the last one is usually shorter. "
        "false: train on it, padded (the padding is not trained); true: drop it, so every block is full. "
        "Streaming (`dataset_streaming: true`), TRL packs 1,000 documents at a time, so a short block ends "
        "each 1,000 documents: true drops each of them. Streaming also computes no eval loss: documents "
        "`eval_fraction` holds out are skipped (and listed in prompts.json as held out).",
    )


def _check(values: dict[str, Any]) -> list[str]:
    problems = common_checks(values, needs_model=not values.get("init_architecture"), streams=True)
    if values.get("init_architecture"):
        if values.get("model_name_or_path"):
            problems.append(
                "`model_name_or_path` and `init_architecture`: choose one (continue, or start anew)"
            )
        if values.get("use_peft"):
            problems.append("`use_peft`: a model trained from scratch trains every weight; set it to false")
    if values.get("dataset_streaming"):
        if not (values.get("max_steps") or 0) > 0:
            problems.append(
                "`max_steps`: required (> 0) with `dataset_streaming: true`: a streamed corpus has no "
                "length, so the run's length cannot come from `num_train_epochs`"
            )
        if not _keeps_every_token(values.get("packing"), values.get("packing_strategy")):
            problems.append(
                "`dataset_streaming: true` needs `packing: true` with `packing_strategy: wrapped` (or "
                "bfd_split): streamed documents are never measured, so only packing that splits long ones "
                "keeps them whole"
            )
        if (values.get("dataloader_num_workers") or 0) > 0:
            problems.append(
                "`dataloader_num_workers` with `dataset_streaming: true`: the stream records which documents "
                "it trained on (prompts.json) as it is read, which worker processes would keep to themselves"
            )
        if values.get("init_architecture"):
            problems.append(
                "`init_architecture` with `dataset_streaming: true`: a new tokenizer is trained on the whole "
                "corpus, which streaming never loads; continue a model (`model_name_or_path`) instead"
            )
    return problems


def _keeps_every_token(packing: bool | None, strategy: str | None) -> bool:
    """Whether TRL's packing splits a document longer than max_length across blocks instead of cutting it
    (`bfd` truncates to max_length, and without packing TRL truncates each row)."""
    return bool(packing) and strategy in ("wrapped", "bfd_split")


def too_long(cfg: StageConfig) -> str:
    """How the corpus treats documents over max_length: kept whole when packing splits them into blocks,
    else dropped (TRL would truncate them)."""
    return "keep" if _keeps_every_token(cfg.training.packing, cfg.training.packing_strategy) else "drop"


def _streaming(cfg: StageConfig) -> bool:
    return bool(cfg.script.dataset_streaming)


EXTRAS = PretrainExtras
DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/pretrain",
    "use_peft": False,  # pretraining changes every weight
    "lora_target_modules": "all-linear",  # (for continued pretraining with `use_peft: true`)
    "assistant_only_loss": False,  # plain text: every token is trained
    # Concatenate-and-chunk (see the module docstring); the SFT stage refuses `wrapped`.
    "packing": True,
    "packing_strategy": "wrapped",
    # The Trainer's own count of the tokens it trained on (padding excluded): `tokens_trained`.
    "include_num_input_tokens_seen": "non_padding",
    **common.TRAINING_DEFAULTS,
}


def schema() -> StageSchema:
    return StageSchema(
        name="pretrain",
        classes={**causal_lm.trl_classes(), "hftune": PretrainExtras},
        defaults={**DEFAULTS, **common.hardware_defaults(liger=True)},
        check=_check,
        owned=common.OWNED_TRAINING_KEYS,
    )


def parse(
    config_path: str | None,
    argv: list[str] | None = None,
    *,
    values: dict[str, Any] | None = None,
    source: str | None = None,
) -> StageConfig:
    cfg = parse_stage_config(schema(), config_path, argv, values=values, source=source)
    from hftune.data.detect import AUTO
    from hftune.data.mixture import data_parts

    for part in data_parts(cfg.hftune, cfg.script):
        if part.recipe.format not in ("language_modeling", AUTO):  # (`dataset_name` data: checked when read)
            raise UserError(
                f"{cfg.source}: `data_recipe` {part.name} is {part.recipe.format} data; pretraining reads "
                "plain text (a `language_modeling` recipe such as tiny_corpus)"
            )
    return cfg


def _init_model(cfg: StageConfig, folder: Path) -> str:
    """A new tokenizer (trained on the data's text) and randomly initialised weights, saved to `folder`."""
    from hftune.data.mixture import data_parts, prepare_parts
    from hftune.models.tiny import build_tiny_model

    extras = cfg.hftune
    rows = prepare_parts(data_parts(extras, cfg.script), formats=("language_modeling",))
    lines = [row["text"] for row in rows.train]
    build_tiny_model(
        folder,
        arch=extras.init_architecture,
        corpus_lines=lines,
        vocab_size=extras.init_vocab_size,
        hidden_size=extras.init_hidden_size,
        num_layers=extras.init_num_layers,
        num_heads=extras.init_num_heads,
        split_numbers=extras.init_split_numbers,
        pretrain_steps=0,
        seed=cfg.training.seed,
    )
    return str(folder)


def _load_data(cfg: StageConfig, tokenizer, dirs: common.RunDirs):
    """The corpus: streamed (see `hftune.data.streaming`), or prepared as every stage's data is, keeping
    documents of any length when packing splits them (the held-out split is by whole document either way)."""
    if not _streaming(cfg):
        return common.load_data(cfg, tokenizer, dirs, too_long=too_long(cfg))
    from hftune.data.mixture import data_parts
    from hftune.data.prompt_keys import held_out_upstream
    from hftune.data.streaming import stream_corpus

    extras = cfg.hftune
    parts = data_parts(extras, cfg.script)
    if len(parts) > 1:
        raise UserError(
            f"{cfg.source}: `dataset_streaming: true` reads one source, not a `data_recipe` mixture"
        )
    recipe = parts[0].recipe
    data = stream_corpus(
        recipe,
        data_files=parts[0].data_files,
        strict=extras.data_strict,
        eval_fraction=extras.eval_fraction,
        seed=cfg.training.seed,
        max_rows=parts[0].max_samples,
        exclude=held_out_upstream(cfg.model.model_name_or_path),
    )
    logger.info("data: %s (so far: the stream is read as it trains)", data.summary())
    if extras.eval_fraction > 0:
        logger.info(
            "streaming: documents held out by eval_fraction %s are skipped and listed in prompts.json; no "
            "eval loss is computed (the held-out part of a stream cannot be measured without reading it all)",
            extras.eval_fraction,
        )
    return recipe, data


def _whole_blocks(trainer, cfg: StageConfig) -> dict[str, Any]:
    """Make the training blocks TRL packed what the stage promises, and count them.

    TRL's wrapped packing runs as a batched `map`, so it concatenates and cuts 1,000 documents at a time:
    every 1,000 documents end in a short block, not only the corpus. On a map-style dataset the short
    blocks (a handful) are packed again, with TRL's own `pack_dataset` over all of them at once, so every
    block is full but the last; `drop_partial_blocks` then drops that one. A stream cannot be re-packed
    ahead of time, so there each short block is kept or dropped as it comes."""
    import numpy as np
    import pyarrow.compute as pc
    from datasets import Dataset, concatenate_datasets
    from trl import pack_dataset

    length, drop = cfg.training.max_length, cfg.hftune.drop_partial_blocks
    blocks = trainer.train_dataset
    if not isinstance(blocks, Dataset):  # streamed
        if drop:
            trainer.train_dataset = blocks.filter(lambda block: len(block["input_ids"]) == length)
        return {}

    def sizes(dataset) -> np.ndarray:
        return pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_numpy()

    n = sizes(blocks)
    short = np.flatnonzero(n < length)
    if len(short) > 1:
        tail = pack_dataset(blocks.select(short), length, "wrapped", {"batch_size": None})
        blocks = concatenate_datasets([blocks.select(np.flatnonzero(n == length)), tail])
        n = sizes(blocks)
    corpus_tokens = int(n.sum())
    partial = int(n[-1]) if len(n) and n[-1] < length else 0
    if drop and partial:
        blocks = blocks.select(range(len(blocks) - 1))
    trainer.train_dataset = blocks
    return {
        "corpus_tokens": corpus_tokens,  # the training documents as TRL tokenized them, each with its EOS
        "train_blocks": len(blocks),
        "block_length": length,
        "partial_block_tokens": partial,
        "partial_block": "dropped" if drop and partial else "kept" if partial else "none",
    }


def prepare(cfg: StageConfig, *, resume: bool = False) -> common.Prepared:
    """The trainer and corpus, built and checked but not trained (for tests and inspection)."""
    from transformers import set_seed
    from trl import SFTTrainer

    from hftune.models import loading

    dirs = common.run_dirs(cfg, resume)
    model_args = common.model_args(cfg)
    if cfg.hftune.init_architecture:
        # The initial weights live in the work folder (so --resume finds them) and go with it afterwards:
        # the finished artifact is a full model that needs nothing else.
        # Built once a machine, each in a folder of its own (machines may share a filesystem); the other
        # processes load it. The same seed makes the same weights everywhere.
        init = dirs.work / f"init-node{distributed.node_rank()}"
        with distributed.local_main_first():
            if not (init / "config.json").is_file():
                _init_model(cfg, init)
        model_args = common.model_args(cfg, model_name_or_path=str(init))

    # Tokenizer and corpus first: every data problem surfaces before minutes of weight loading.
    tokenizer = common.load_stage_tokenizer(cfg, model_args.model_name_or_path)
    recipe, data = _load_data(cfg, tokenizer, dirs)
    causal_lm.check_format(recipe, ("language_modeling",), "pretraining")
    # Gradient checkpointing is decided for the model that trains (from scratch: the new one's folder).
    args = common.trainer_args(cfg, dirs, model_path=model_args.model_name_or_path)

    set_seed(args.seed)  # before any weight is drawn (LoRA, for continued pretraining with `use_peft`)
    model = loading.load_model(
        model_args.model_name_or_path,
        model_args,
        trust_remote_code=bool(args.trust_remote_code),
        gradient_checkpointing=args.gradient_checkpointing,
    )
    common.ignore_bias_buffers(model, cfg)
    # Wrapped blocks span documents on purpose; BFD packing (or padding-free rows) must keep them apart.
    wrapped = args.packing and args.packing_strategy == "wrapped"
    if (args.packing or args.padding_free) and not wrapped:
        causal_lm.check_packing_isolation(model, tokenizer, "packing" if args.packing else "padding_free")

    checkpoint = common.checkpoint_to_resume(dirs, cfg, resume, data)
    with common.trl_settings_are_user_errors(cfg.source):
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.eval,
            processing_class=tokenizer,
            peft_config=loading.lora_config(model_args),
        )
    # Wrapped blocks are plain text, every token a label (and may be a stream, unscannable).
    causal_lm.check_trainer(trainer, data, args, masks=not wrapped)
    return common.Prepared(trainer, data, recipe, tokenizer, checkpoint, dirs)


def run(cfg: StageConfig, *, resume: bool = False) -> causal_lm.Result:
    p = prepare(cfg, resume=resume)
    trainer, data, args = p.trainer, p.data, cfg.training
    wrapped = args.packing and args.packing_strategy == "wrapped"
    counts = _whole_blocks(trainer, cfg) if wrapped else {}  # (BFD bins are short by design)

    metrics = causal_lm.train(trainer, p.checkpoint)
    if args.include_num_input_tokens_seen == "non_padding":
        # The Trainer's count of the non-padding input tokens of every batch it trained on: each epoch
        # counts again (a token seen twice trained twice), and a resumed run starts from the count its
        # checkpoint saved, so it is the tokens behind the saved weights. With every block trained once
        # it equals corpus_tokens (less the partial block when dropped).
        counts["tokens_trained"] = trainer.state.num_input_tokens_seen
    if _streaming(cfg):
        counts["documents_streamed"] = data.n_train  # read into the packer (see hftune.data.streaming)
    metrics.update(counts)

    if cfg.hftune.init_architecture:
        parents = [{"role": "init", "from_scratch": cfg.hftune.init_architecture}]
    else:
        parents = [artifacts.parent_ref(cfg.model.model_name_or_path, "base_model")]
    n_train = (
        data.n_train if _streaming(cfg) else len(data.train) if args.packing else len(trainer.train_dataset)
    )
    manifest = common.save_artifact(
        p.dirs,
        cfg,
        stage="pretrain",
        trainer=trainer,
        tokenizer=p.tokenizer,
        metrics=metrics,
        parents=parents,
        data={**common.data_manifest(p.recipe, data, cfg.hftune.data_files, n_train), **counts},
        prepared=data,
        write_extra=lambda out: common.save_generation_config(trainer.model, p.tokenizer, out),
    )
    return causal_lm.Result(p.dirs.final, metrics, manifest, trainer)


def summary(result: causal_lm.Result) -> str:
    """What `hftune pretrain` prints when it finishes: the causal-LM lines, led by the tokens trained."""
    m = result.metrics
    lines = []
    if "tokens_trained" in m:
        of = f" of a {m['corpus_tokens']:,}-token corpus" if "corpus_tokens" in m else ""
        blocks = f" in {m['train_blocks']:,} blocks of {m['block_length']}" if "train_blocks" in m else ""
        lines.append(f"trained on {m['tokens_trained']:,} tokens{of}{blocks}")
    return "\n".join([*lines, causal_lm.summary(result)])
