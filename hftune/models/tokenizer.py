"""Tokenizers: loading one (with the chat template a config names and a pad distinct from eos), and the
one check that two tokenizers read text the same way, which every chained stage and the eval rely on.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hftune.errors import UserError
from hftune.models.templates import resolve_chat_template

logger = logging.getLogger(__name__)

# Pad tokens that many tokenizers ship but do not declare as pad.
_PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>", "<|fim_pad|>")
SPECIAL_TOKENS = ("eos_token_id", "pad_token_id", "bos_token_id")


def load_tokenizer(
    name_or_path: str,
    *,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    revision: str = "main",
):
    """Load a tokenizer, set its chat template (config wins) and a pad token distinct from eos."""
    from transformers import AutoTokenizer

    folder = Path(name_or_path)
    if folder.is_dir() and (folder / "tokenizer_config.json").is_file():
        path = str(folder)  # a tokenizer folder (with or without a model)
    else:
        from hftune.models.loading import resolve_source

        path = resolve_source(name_or_path).tokenizer_path
    if trust_remote_code:
        from hftune.models.loading import warn_remote_code

        warn_remote_code(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as err:
        raise UserError(f"could not load a tokenizer from {path!r}: {err}") from None

    if chat_template:
        template, end_of_turn = resolve_chat_template(chat_template)
        tok.chat_template = template
        if end_of_turn:
            if end_of_turn not in tok.get_vocab():
                raise UserError(
                    f"chat_template {chat_template!r} needs the token {end_of_turn!r}, which the tokenizer "
                    f"of {name_or_path} does not have; pick a template that uses its own special tokens "
                    "(a Jinja string or .jinja file) or a model that has them"
                )
            # The token that ends an assistant turn is where generation must stop.
            tok.eos_token = end_of_turn
    set_pad_token(tok)
    return tok


def set_pad_token(tok) -> None:
    """pad != eos where possible: a pad that equals eos gets masked out of the labels, so the model
    never learns to stop."""
    if tok.pad_token is not None and tok.pad_token != tok.eos_token:
        return
    vocab = tok.get_vocab()
    for candidate in _PAD_CANDIDATES:
        if candidate in vocab and candidate != tok.eos_token:
            tok.pad_token = candidate
            return
    if tok.unk_token is not None and tok.unk_token != tok.eos_token:
        tok.pad_token = tok.unk_token
        return
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    logger.warning(
        "tokenizer has no pad token distinct from eos (%r); padding with eos. Labels still keep each eos "
        "that ends a turn, but check generations stop.",
        tok.eos_token,
    )


def encode_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """A conversation through the chat template up to where the assistant's reply starts: the ids
    generation continues from (RL rollouts, the eval) and the prompt part scoring measures."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(ids["input_ids"])


def differences(a, b, *, rendering: bool = True) -> list[str]:
    """How two tokenizers would read or render text differently: "vocabulary", and unless
    `rendering=False` (a base model without a template, compared by its vocabulary alone) "chat template"
    and "eos" / "pad" / "bos" token. Empty when they are the same: the one definition of "the same
    tokenizer" that every chained stage and the eval use."""
    found = ["vocabulary"] if a.get_vocab() != b.get_vocab() else []
    if rendering:
        if a.chat_template != b.chat_template:
            found.append("chat template")
        found += [f"{s.removesuffix('_id')}" for s in SPECIAL_TOKENS if getattr(a, s) != getattr(b, s)]
    return found


def check_same_tokenizer(a, b, a_name: str, b_name: str, *, fix: str, rendering: bool = True) -> None:
    """Refuse two tokenizers that differ (see `differences`), naming both and what differs. Invariant:
    one tokenizer and one chat template across SFT, the reward model, RL and the eval."""
    found = differences(a, b, rendering=rendering)
    if found:
        verb = "differs" if len(found) == 1 else "differ"
        raise UserError(
            f"{a_name} and {b_name} do not read text the same way: their {' and '.join(found)} {verb}; {fix}"
        )
