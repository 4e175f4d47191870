"""SFT and pretraining on full logits where they are small, instead of TRL's chunked log-prob head.

From TRL 1.15 SFTTrainer patches the model so that its loss comes from a chunked kernel that never holds the
[batch, length, vocabulary] logits: a memory saving that matters for a 150k-token vocabulary on a GPU. With a
small vocabulary the logits are a few MiB, and the kernel's fp32 tiles cost more than they save: on the
quickstart's SFT (vocabulary 1024, batch 32, CPU) a step took 88 ms with the chunked head and 61 ms with full
logits. Here the model's own forward gives the logits (its scaling and soft-capping included) and the same
per-token outputs are read off them, so TRL's loss, metrics and reductions are untouched. The chunked head
stays wherever the logits would not be small (`LOGITS_BUDGET`), and on TRL versions without it nothing
changes.
"""

from __future__ import annotations

import types

# Above this many bytes of fp32 logits a batch (the logits, their log-softmax and its gradient held at
# once) the chunked head is kept.
LOGITS_BUDGET = 64 * 2**20


def logits_bytes(batch_size: int, max_length: int, vocab_size: int) -> int:
    return 3 * 4 * batch_size * max_length * vocab_size


def use_full_logits(trainer) -> bool:
    """Swap TRL's chunked head for full logits on `trainer`'s model when a batch's logits fit the budget;
    True when it did."""
    from trl.trainer import utils as trl_utils

    output = getattr(trl_utils, "FusedCausalLMOutput", None)
    args = trainer.args
    if output is None or args.max_length is None:
        return False  # no chunked head (TRL < 1.15), or rows of no bounded length
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    batch = max(args.per_device_train_batch_size, args.per_device_eval_batch_size)
    vocab_size = model.get_output_embeddings().weight.shape[0]
    if logits_bytes(batch, args.max_length, vocab_size) > LOGITS_BUDGET:
        return False
    if getattr(model.config.get_text_config(), "output_router_logits", False):
        return False  # MoE: TRL's head also adds the router's load-balancing loss
    chunked = model.forward  # TRL's patched forward: the model's own one unless `fused_lm_head=True`

    def forward(
        self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kw
    ):
        if not fused_lm_head:
            extra = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
            return chunked(*args, **kw, **{k: v for k, v in extra.items() if v is not None})
        kw["use_cache"] = False
        logits = chunked(*args, **kw).logits
        if shift_labels is None:  # as TRL's head: packed rows too are shifted as one row
            logits, labels = logits[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        return per_token_outputs(output, logits.float(), labels.to(logits.device), num_items_in_batch)

    model.forward = types.MethodType(forward, model)
    return True


def per_token_outputs(output_class, logits, labels, num_items_in_batch):
    """What TRL's chunked head returns, from full logits: each label's log-probability (0 where ignored),
    the entropy and whether the label was the top token (metrics only), and the mean negative
    log-likelihood."""
    import torch

    mask = labels != -100
    log_softmax = logits.log_softmax(-1)
    log_probs = log_softmax.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0)
    with torch.no_grad():
        entropy = -(log_softmax.exp() * log_softmax).sum(-1).masked_fill(~mask, 0)
        is_top1 = (logits.argmax(-1) == labels) & mask
    tokens = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return output_class(
        loss=-log_probs.sum() / tokens,
        log_probs=log_probs,
        entropy=entropy,
        is_top1=is_top1,
        label_mask=mask,
    )
