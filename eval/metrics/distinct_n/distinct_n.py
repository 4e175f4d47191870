"""Distinct-n: the diversity of the K responses sampled for one prompt (unique n-grams / all n-grams).

Why: RLHF and best-of-N push a policy towards its reward model's favourite answer, and a collapsed
policy answers every sample of a prompt with (nearly) the same text; a low distinct-n across the K
samples of a prompt is the cheapest signal of that mode collapse, with no reference needed. Comparing
base, SFT and RLHF models on the same prompts shows how much sampling diversity each stage costs.

Definition, per prompt: tokenise each of its K responses into lowercase word tokens (runs of letters
and digits, regex ``[^\\W_]+`` on the lowercased text, as the ROUGE-L metric here), take the n-grams
*within* each response (never across two responses), and score

    distinct_n = |set of n-grams over all K responses| / (number of n-grams over all K responses),

0.0 when the prompt's responses have no n-gram at all (all empty or shorter than n tokens). 1.0 means
no n-gram is repeated anywhere in the K responses; K identical responses give at most 1 / K.
Note: Li et al. (2016) divide by the number of generated *tokens*; dividing by the number of n-grams,
as here, keeps the score in [0, 1] for every n and makes distinct-n of different n comparable.

``scores`` holds one value per prompt (per element of ``predictions``), in input order; the aggregate
``distinct_n`` is their unweighted mean (every prompt counts the same), and ``n`` echoes the order used.
Empty input lists give ``{"distinct_n": 0.0, "scores": [], "n": n}``.
"""

import re

import datasets
import evaluate

_CITATION = """\
@inproceedings{li-etal-2016-diversity,
    title = "A Diversity-Promoting Objective Function for Neural Conversation Models",
    author = "Li, Jiwei and Galley, Michel and Brockett, Chris and Gao, Jianfeng and Dolan, Bill",
    booktitle = "Proceedings of the 2016 Conference of the North {A}merican Chapter of the Association for
                 Computational Linguistics: Human Language Technologies",
    year = "2016",
    url = "https://aclanthology.org/N16-1014",
    pages = "110--119",
}
"""

_DESCRIPTION = """\
Distinct-n over the K sampled responses of each prompt: unique n-grams / total n-grams (lowercase word
tokens, n-grams within each response), 0.0 when there are no n-grams. Aggregate: mean over prompts.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of str): for each prompt, its K sampled responses.
    n (int, default 1): the n-gram order, >= 1.
Returns:
    distinct_n (float): mean of the per-prompt scores (0.0 for empty input).
    scores (list of float): distinct-n per prompt, in input order.
    n (int): the n-gram order used.
Examples:
    >>> distinct = evaluate.load("eval/metrics/distinct_n/distinct_n.py")
    >>> distinct.compute(predictions=[["a b", "a c"]], n=1)
    {'distinct_n': 0.75, 'scores': [0.75], 'n': 1}
"""

_TOKEN_RE = re.compile(r"[^\W_]+")


def tokenize(text: str | None) -> list[str]:
    return _TOKEN_RE.findall((text or "").lower())


def distinct_n(responses: list[str], n: int) -> float:
    """Unique / total n-grams over all responses of one prompt (0.0 without n-grams)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for response in responses or []:
        tokens = tokenize(response)
        for i in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[i : i + n]))
            total += 1
    return len(seen) / total if total else 0.0


class DistinctN(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string"))}),
            reference_urls=["https://aclanthology.org/N16-1014"],
        )

    def _compute(self, predictions, n: int = 1):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"distinct_n: `n` must be an integer >= 1, got {n!r}")
        scores = [distinct_n(responses, n) for responses in predictions]
        return {"distinct_n": sum(scores) / len(scores) if scores else 0.0, "scores": scores, "n": n}
