"""BLEU-4: modified n-gram precision (n = 1..4) with a brevity penalty, per sentence and per corpus.

Why: BLEU measures how much of a response's wording (and word order, through the 2- to 4-grams) is
backed by the reference; it is the standard overlap metric for translation-like tasks and a cheap,
reproducible proxy for "did the model say what the reference says". It complements ROUGE-L (recall of
an in-order subsequence) with clipped n-gram precision, and the brevity penalty stops short answers from
scoring high precision by saying little. Pure Python re-implementation (no sacrebleu/nltk) so nothing is
installed or fetched; with one reference per prediction it follows sacrebleu's definitions:

Tokenisation: sacrebleu's default "13a" tokenizer (mteval-v13a): punctuation and symbols are split from
words, "." and "," are kept inside numbers ("3.14", "1,000"), "-" is split only after a digit, and
apostrophes stay inside words ("don't"). Case-sensitive unless ``lowercase=True``.

Counts: for each order n, ``correct[n]`` is the number of the prediction's n-grams that appear in the
reference, each clipped to its count in the reference (Papineni et al., 2002), and ``total[n]`` the
number of the prediction's n-grams. c = prediction length, r = reference length (tokens), and the
brevity penalty is BP = 1 if c >= r, exp(1 - r / c) if 0 < c < r, 0 if c = 0.

``bleu`` (the aggregate): corpus BLEU (Papineni): ``correct`` and ``total`` are summed over all examples
before dividing, c and r are summed for one BP, BLEU = BP * exp(mean_n log(correct[n] / total[n])),
without smoothing (one n-gram order with no match anywhere in the corpus gives 0.0). Only if no
prediction in the whole corpus has n tokens (total[n] = 0, where Papineni's ratio is 0/0) is the mean
taken over the orders below n (sacrebleu's "effective order"), so identical short strings score 1.0.
``precisions`` are the corpus ratios correct[n] / total[n] (0.0 where total[n] = 0), in [0, 1].

``scores`` (per example): sentence BLEU exactly as sacrebleu's ``sentence_bleu`` defaults: "exp"
smoothing (mteval-v13a / NIST geometric smoothing, Chen & Cherry 2014 method 3: the k-th order with zero
matches gets precision 1 / (2^k * total[n]) instead of 0) and effective order (orders longer than the
sentence are left out of the mean), so short partial matches are not all zero. A prediction with no
n-gram match at all (including an empty prediction, even against an empty reference) scores 0.0.

All BLEU values are in [0, 1] (sacrebleu reports 0-100). Empty input lists give
``{"bleu": 0.0, "scores": [], "precisions": [0.0, 0.0, 0.0, 0.0], "brevity_penalty": 0.0}``.
"""

import math
import re
from collections import Counter

import datasets
import evaluate

_CITATION = """\
@inproceedings{papineni-etal-2002-bleu,
    title = "{B}leu: a Method for Automatic Evaluation of Machine Translation",
    author = "Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing",
    booktitle = "Proceedings of the 40th Annual Meeting of the Association for Computational Linguistics",
    year = "2002",
    url = "https://aclanthology.org/P02-1040",
    pages = "311--318",
}
@inproceedings{chen-cherry-2014-systematic,
    title = "A Systematic Comparison of Smoothing Techniques for Sentence-Level {BLEU}",
    author = "Chen, Boxing and Cherry, Colin",
    booktitle = "Proceedings of the Ninth Workshop on Statistical Machine Translation",
    year = "2014",
    url = "https://aclanthology.org/W14-3346",
    pages = "362--367",
}
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    url = "https://aclanthology.org/W18-6319",
    pages = "186--191",
}
"""

_DESCRIPTION = """\
BLEU-4 with uniform weights and brevity penalty on 13a-tokenised text, one reference per prediction.
The aggregate is corpus BLEU (clipped counts summed over the corpus, one brevity penalty, no smoothing);
the per-example scores are sentence BLEU with sacrebleu's "exp" smoothing and effective order.
All values in [0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): model outputs, one per example.
    references (list of str): one reference string per prediction.
    lowercase (bool, default False): lowercase both sides before tokenising.
Returns:
    bleu (float): corpus BLEU-4 in [0, 1] (0.0 for empty input).
    scores (list of float): smoothed sentence BLEU-4 per prediction, in input order.
    precisions (list of 4 floats): corpus modified n-gram precisions p1..p4.
    brevity_penalty (float): the corpus brevity penalty.
Examples:
    >>> bleu = evaluate.load("eval/metrics/bleu/bleu.py")
    >>> bleu.compute(predictions=["the cat sat on the mat."], references=["the cat sat on the mat."])["bleu"]
    1.0
"""

MAX_ORDER = 4


def tokenize_13a(line: str) -> list[str]:
    """sacrebleu's ``Tokenizer13a`` (mteval-v13a.pl's tokenisation) on one line."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    # punctuation and symbols, except ' - . , (handled below) and letters/digits
    line = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", line)
    line = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", line)  # period/comma unless preceded by a digit
    line = re.sub(r"([\.,])([^0-9])", r" \1 \2", line)  # period/comma unless followed by a digit
    line = re.sub(r"([0-9])(-)", r"\1 \2 ", line)  # dash preceded by a digit
    return line.split()


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def ngram_stats(prediction: list[str], reference: list[str]) -> tuple[list[int], list[int]]:
    """Clipped n-gram matches and prediction n-gram counts for n = 1..MAX_ORDER."""
    correct, total = [], []
    for n in range(1, MAX_ORDER + 1):
        pred_counts, ref_counts = _ngrams(prediction, n), _ngrams(reference, n)
        correct.append(sum(min(c, ref_counts[g]) for g, c in pred_counts.items()))
        total.append(max(len(prediction) - n + 1, 0))
    return correct, total


def brevity_penalty(sys_len: int, ref_len: int) -> float:
    if sys_len >= ref_len:
        return 1.0
    return math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0


def bleu_from_stats(
    correct: list[int], total: list[int], sys_len: int, ref_len: int, smooth_exp: bool
) -> tuple[float, list[float], float]:
    """(BLEU, precisions, brevity penalty) from n-gram statistics, with effective order.

    Mirrors sacrebleu's ``BLEU.compute_bleu(..., effective_order=True)`` with smooth_method "exp"
    (``smooth_exp=True``) or "none", returning fractions instead of percentages.
    """
    bp = brevity_penalty(sys_len, ref_len)
    precisions = [c / t if t else 0.0 for c, t in zip(correct, total, strict=True)]
    if not any(correct):
        return 0.0, precisions, bp
    log_sum, order, zero_matches = 0.0, 0, 0
    for c, t in zip(correct, total, strict=True):
        if t == 0:  # no n-grams of this order (or longer) in the prediction(s): effective order
            break
        order += 1
        if c == 0:
            if not smooth_exp:
                return 0.0, precisions, bp
            zero_matches += 1
            log_sum += math.log(1.0 / (2**zero_matches * t))
        else:
            log_sum += math.log(c / t)
    return bp * math.exp(log_sum / order), precisions, bp


def sentence_bleu(prediction: str, reference: str, lowercase: bool = False) -> float:
    """Smoothed ("exp"), effective-order BLEU-4 of one prediction against one reference."""
    pred, ref = _prepare(prediction, lowercase), _prepare(reference, lowercase)
    correct, total = ngram_stats(pred, ref)
    return bleu_from_stats(correct, total, len(pred), len(ref), smooth_exp=True)[0]


def _prepare(text: str | None, lowercase: bool) -> list[str]:
    text = text or ""
    return tokenize_13a(text.lower() if lowercase else text)


class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://aclanthology.org/P02-1040", "https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, lowercase: bool = False):
        scores: list[float] = []
        corpus_correct, corpus_total = [0] * MAX_ORDER, [0] * MAX_ORDER
        sys_len = ref_len = 0
        for prediction, reference in zip(predictions, references, strict=True):
            pred, ref = _prepare(prediction, lowercase), _prepare(reference, lowercase)
            correct, total = ngram_stats(pred, ref)
            scores.append(bleu_from_stats(correct, total, len(pred), len(ref), smooth_exp=True)[0])
            corpus_correct = [a + b for a, b in zip(corpus_correct, correct, strict=True)]
            corpus_total = [a + b for a, b in zip(corpus_total, total, strict=True)]
            sys_len += len(pred)
            ref_len += len(ref)
        if not scores:
            return {"bleu": 0.0, "scores": [], "precisions": [0.0] * MAX_ORDER, "brevity_penalty": 0.0}
        bleu, precisions, bp = bleu_from_stats(
            corpus_correct, corpus_total, sys_len, ref_len, smooth_exp=False
        )
        return {"bleu": bleu, "scores": scores, "precisions": precisions, "brevity_penalty": bp}
