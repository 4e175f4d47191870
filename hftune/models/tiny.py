"""Tiny local models: a small transformer of a real architecture with a BPE tokenizer trained here.

Nothing can be downloaded in tests or in the offline quickstart, so hftune builds its own models and
saves them with `save_pretrained`; they then load through exactly the same code path as a Hub id.

    hftune tiny runs/tiny-llama --arch llama

A config can also ask for one by name: `model_name_or_path: tiny:llama` builds (once, cached) and
uses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from hftune.artifacts import atomic_dir
from hftune.errors import UserError
from hftune.models.templates import CHATML, CHATML_SPECIAL_TOKENS

logger = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt2")
PAD, EOT = "<|pad|>", "<|endoftext|>"
TINY_PREFIX = "tiny:"
TINY_PRETRAIN_STEPS = 300  # `tiny:ARCH` models are briefly pretrained (about 10 s on 2 CPU cores)


NUM_HEADS = 4  # attention heads of every tiny model (hidden_size must be a multiple)


def check_sizes(
    *, vocab_size: int, hidden_size: int, num_layers: int, pretrain_steps: int, seed: int
) -> None:
    """`hftune tiny`'s sizes, every impossible one named at once (as its flags) before anything is built."""
    problems = [
        f"--{name}: must be {'at least 1' if low else 'at least 0'}, got {value}"
        for name, value, low in (
            ("vocab_size", vocab_size, 1),
            ("hidden_size", hidden_size, 1),
            ("num_layers", num_layers, 1),
            ("pretrain_steps", pretrain_steps, 0),
            ("seed", seed, 0),
        )
        if value < low
    ]
    if hidden_size >= 1 and hidden_size % NUM_HEADS:
        problems.append(
            f"--hidden_size: must be a multiple of {NUM_HEADS} (the attention heads), got {hidden_size}"
        )
    if problems:
        raise UserError("\n".join(problems))


def model_config(arch: str, vocab_size: int, hidden: int, layers: int, heads: int, max_len: int, ids: dict):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, pad_token_id=ids["pad"], eos_token_id=ids["eos"], bos_token_id=None)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_len, **common)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
    return cls(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
        **common,
    )


def train_tokenizer(lines: Iterable[str], vocab_size: int, split_numbers: bool = False):
    """A byte-level BPE tokenizer (GPT-2/Qwen style, no BOS) with ChatML tokens and a separate pad.

    `split_numbers`: numbers are cut from the text around them into groups of up to three digits before BPE
    (as LLaMA 3's and GPT-4's tokenizers do), so a number is the same tokens wherever it stands; plain
    byte-level BPE merges a number with the space before it, so "172" after a space and at the start of a
    reply are different tokens, and a model must learn both spellings of every number."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\d{1,3}"), behavior="isolated"), byte_level])
        if split_numbers
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    specials = [EOT, PAD, *CHATML_SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    # eos is the end-of-turn token: the model must learn to stop after an assistant reply, and generation
    # stops there (as in Qwen's instruct tokenizers). pad is a token of its own so it is never trained as eos.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=[EOT, "<|im_start|>"],
        chat_template=CHATML,
        model_max_length=4096,
    )


def default_corpus() -> list[str]:
    """The text `tiny:ARCH` tokenizers and models learn from: 2,000 lines of the synthetic tasks, shipped as
    package data (`tests/synthetic.py` generates it; a test checks the two agree)."""
    text = (resources.files("hftune.models") / "tiny_corpus.txt").read_text(encoding="utf-8")
    return text.splitlines()


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    arch: str = "llama",
    corpus_lines: Iterable[str] | None = None,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = NUM_HEADS,
    max_position_embeddings: int = 1024,
    split_numbers: bool = False,
    pretrain_steps: int = 0,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Build and save a tiny model + tokenizer; returns the folder (new, empty or hftune's, unless
    `overwrite`).

    With `pretrain_steps` > 0 the model is first trained briefly as a plain language model on the same
    corpus, so it behaves like a (very small) base model: LoRA on a random network barely moves the loss,
    which would make every downstream test and the quickstart meaningless.
    """
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    lines = list(corpus_lines) if corpus_lines is not None else default_corpus()
    with atomic_dir(out, overwrite=overwrite, what="OUTPUT_DIR") as tmp:
        tokenizer = train_tokenizer(lines, vocab_size, split_numbers=split_numbers)
        ids = {"pad": tokenizer.pad_token_id, "eos": tokenizer.eos_token_id}
        config = model_config(
            arch, len(tokenizer), hidden_size, num_layers, num_heads, max_position_embeddings, ids
        )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        if pretrain_steps:
            _pretrain(model, tokenizer, lines, pretrain_steps, seed)
        model.generation_config.pad_token_id = ids["pad"]
        model.generation_config.eos_token_id = ids["eos"]
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "hftune_tiny.json").write_text(
            json.dumps(
                {
                    "arch": arch,
                    "vocab_size": len(tokenizer),
                    "hidden_size": hidden_size,
                    "num_layers": num_layers,
                    "split_numbers": split_numbers,
                    "pretrain_steps": pretrain_steps,
                    "seed": seed,
                },
                indent=2,
            )
        )
    logger.info("built tiny %s model (%d parameters) in %s", arch, model.num_parameters(), out)
    return out


def _pretrain(model, tokenizer, lines: list[str], steps: int, seed: int, block: int = 128) -> None:
    """A few hundred steps of next-token prediction on the corpus, packed into fixed-length blocks."""
    import torch
    from tqdm.auto import tqdm

    stream: list[int] = []
    for line in lines:
        stream += tokenizer(line, add_special_tokens=False)["input_ids"] + [
            tokenizer.convert_tokens_to_ids(EOT)
        ]
    n_blocks = len(stream) // block
    data = torch.tensor(stream[: n_blocks * block]).view(n_blocks, block)
    gen = torch.Generator().manual_seed(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    bar = tqdm(range(steps), desc="pretraining tiny model", leave=False)
    for _ in bar:
        batch = data[torch.randint(0, n_blocks, (16,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    logger.info("pretrained tiny model for %d steps (final loss %.3f)", steps, loss.item())


def cache_root() -> Path:
    return Path(os.environ.get("HFTUNE_CACHE", Path.home() / ".cache" / "hftune"))


def tiny_path(spec: str) -> Path:
    """Where `tiny:ARCH` is cached (built or not)."""
    arch = spec[len(TINY_PREFIX) :] or "llama"
    # The built-in template is part of the key: a model cached with an older chatml (one without tools,
    # say) must not be handed out as today's.
    key = hashlib.sha256(f"{arch}-v2-{TINY_PRETRAIN_STEPS}-{CHATML}".encode()).hexdigest()[:12]
    return cache_root() / "tiny" / f"{arch}-{key}"


def resolve_tiny(spec: str) -> str:
    """`tiny:llama` -> path of a cached tiny model of that architecture, built on first use."""
    arch = spec[len(TINY_PREFIX) :] or "llama"
    path = tiny_path(spec)
    if not (path / "config.json").is_file():
        from filelock import FileLock

        # Several processes may ask at once (a multi-process stage, parallel tests): one builds, the rest
        # wait and find it built.
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not (path / "config.json").is_file():
                build_tiny_model(path, arch=arch, pretrain_steps=TINY_PRETRAIN_STEPS)
    return str(path)
