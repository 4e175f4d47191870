"""ROUGE-L: F-measure of the longest common subsequence (LCS) of prediction and reference words.

Why: for open-ended answers with a reference (summaries, explanations) exact match is too strict, and
ROUGE-L rewards the reference's content appearing in the same order without requiring contiguous
n-grams, so it tolerates inserted or dropped words and paraphrased connectives better than BLEU. It is
the sentence-level ROUGE-L (``rougeL``, not the summary-level ``rougeLsum``) of Lin (2004) / Google's
``rouge_score``, re-implemented here in pure Python so nothing is installed or fetched.

Definition, per example, with P the prediction's tokens and R the reference's:

    precision = LCS(P, R) / |P|,  recall = LCS(P, R) / |R|,
    F = 2 * precision * recall / (precision + recall)  (= 2 * LCS / (|P| + |R|)),  F = 0 if LCS = 0.

Tokenisation follows ``rouge_score``'s default tokenizer without stemming: lowercase, then runs of
letters and digits (regex ``[^\\W_]+``, i.e. ``\\w+`` without the underscore, because ``rouge_score``
splits on "_"). For ASCII text this is exactly ``rouge_score``'s tokenisation; unlike it, non-ASCII
letters are kept instead of dropped, so non-English text is scored rather than silently zero.

Empty cases: a prediction or reference with no tokens (empty, whitespace or punctuation only) scores
0.0, *including when both are empty*, as in ``rouge_score``: an empty response must never earn credit,
and a reference with no words cannot be matched. Empty input lists give
``{"rouge_l": 0.0, "scores": []}``.

The LCS length is computed with the bit-parallel algorithm of Allison & Dix (1986) / Crochemore et al.
(2001) on Python integers (one big-integer add per token instead of a |P| x |R| table), which gives the
same result as the textbook dynamic programme and is fast for long responses.
"""

import re

import datasets
import evaluate

_CITATION = """\
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/W04-1013",
    pages = "74--81",
}
"""

_DESCRIPTION = """\
Sentence-level ROUGE-L F-measure: 2 * LCS / (|prediction| + |reference|) over lowercase word tokens
(runs of letters/digits, as rouge_score's default tokenizer without stemming). No tokens on either side
gives 0.0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): model outputs, one per example.
    references (list of str): one reference text per prediction.
Returns:
    rouge_l (float): mean of the per-example F-measures (0.0 for empty input).
    scores (list of float): ROUGE-L F-measure per prediction, in input order.
Examples:
    >>> rouge = evaluate.load("eval/metrics/rouge_l/rouge_l.py")
    >>> rouge.compute(predictions=["the cat sat"], references=["the cat sat"])
    {'rouge_l': 1.0, 'scores': [1.0]}
"""

_TOKEN_RE = re.compile(r"[^\W_]+")


def tokenize(text: str | None) -> list[str]:
    """Lowercase runs of letters and digits (rouge_score's default tokenizer, no stemming)."""
    return _TOKEN_RE.findall((text or "").lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (bit-parallel, exact).

    Bit i of ``v`` is 0 where the LCS of ``a[: i + 1]`` and the ``b`` prefix seen so far gains a
    token at ``a[i]``; the number of zero bits among the low ``len(a)`` bits is the LCS length.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_f(prediction: str | None, reference: str | None) -> float:
    pred, ref = tokenize(prediction), tokenize(reference)
    lcs = lcs_length(ref, pred)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=[
                "https://aclanthology.org/W04-1013",
                "https://github.com/google-research/google-research/tree/master/rouge",
            ],
        )

    def _compute(self, predictions, references):
        scores = [rouge_l_f(p, r) for p, r in zip(predictions, references, strict=True)]
        return {"rouge_l": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
