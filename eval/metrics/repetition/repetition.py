"""Repetition: does a response degenerate into a loop, and how much of it is repeated 4-grams.

Why: greedy or low-temperature decoding of base (and badly tuned) models falls into repetition loops
("2 + 3 = 5. 2 + 3 = 5. 2 + 3 = 5. ...", "the the the"), which inflates length, wastes the token budget
and can fool overlap metrics and reward models; the loop rate is a direct, reference-free measure of
that degeneration (Holtzman et al., 2020), and SFT/RLHF should bring it down.

Tokens: lowercase word tokens, i.e. runs of letters and digits, where a number keeps its decimal/
thousands separators as one token ("3.14", "1,000,000": otherwise "10,000,000,000" would read as the
loop "000 000 000"). Punctuation is ignored, so "Wait..." or "!!!" are not loops.

Per example, ``repeated_ngram_fraction`` is the share of the response's 4-grams that repeat an earlier
4-gram of the same response, ``1 - unique 4-grams / total 4-grams`` (seq-rep-4 of Welleck et al., 2020);
0.0 when the response has no 4-gram. The loop flag (the per-example ``scores``) is 1.0 when either

* some n-gram of 1..8 tokens occurs at least ``min_repeats`` times *consecutively* (default 3):
  "the the the" (n = 1), "a b a b a b" (n = 2), "2 + 3 = 5. 2 + 3 = 5. 2 + 3 = 5." (n = 3); or
* the response has at least 4 four-grams and ``repeated_ngram_fraction >= max_repeated_fraction``
  (default 0.5): it keeps restating the same phrases even when they are not back to back;

and 0.0 otherwise. A word said three times in a row on purpose ("no, no, no") is flagged as well; that is
rare in normal answers, while two repeats ("that that", a sentence restated once) are not flagged.

The aggregate ``loop_rate`` is the mean of the flags. Empty input lists give
``{"loop_rate": 0.0, "scores": [], "repeated_ngram_fraction": []}``.
"""

import re

import datasets
import evaluate

_CITATION = """\
@inproceedings{holtzman2020curious,
    title = {The Curious Case of Neural Text Degeneration},
    author = {Holtzman, Ari and Buys, Jan and Du, Li and Forbes, Maxwell and Choi, Yejin},
    booktitle = {International Conference on Learning Representations},
    year = {2020},
    url = {https://openreview.net/forum?id=rygGQyrFvH},
}
@inproceedings{welleck2020neural,
    title = {Neural Text Generation With Unlikelihood Training},
    author = {Welleck, Sean and Kulikov, Ilia and Roller, Stephen and Dinan, Emily and Cho, Kyunghyun
              and Weston, Jason},
    booktitle = {International Conference on Learning Representations},
    year = {2020},
    url = {https://openreview.net/forum?id=SJeYe0NtvH},
}
"""

_DESCRIPTION = """\
Per-response loop flag (an n-gram of 1..8 words repeated `min_repeats` times back to back, or at least
`max_repeated_fraction` of the 4-grams repeated) and repeated-4-gram fraction; aggregate: loop rate.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): model outputs.
    min_repeats (int, default 3): consecutive occurrences of an n-gram (n = 1..8) that make a loop, >= 2.
    max_repeated_fraction (float, default 0.5): repeated-4-gram fraction that makes a loop, in (0, 1];
        only applied to responses with at least 4 four-grams.
Returns:
    loop_rate (float): mean of the loop flags (0.0 for empty input).
    scores (list of float): loop flag 1.0/0.0 per prediction, in input order.
    repeated_ngram_fraction (list of float): 1 - unique/total 4-grams per prediction (0.0 without 4-grams).
Examples:
    >>> rep = evaluate.load("eval/metrics/repetition/repetition.py")
    >>> rep.compute(predictions=["2 + 3 = 5. 2 + 3 = 5. 2 + 3 = 5.", "The capital of France is Paris."])
    {'loop_rate': 0.5, 'scores': [1.0, 0.0], 'repeated_ngram_fraction': [0.5, 0.0]}
"""

MAX_PERIOD = 8  # longest n-gram checked for consecutive repeats
FRACTION_ORDER = 4  # n of the repeated-n-gram fraction
MIN_NGRAMS_FOR_FRACTION = 4  # the fraction rule needs at least this many 4-grams

_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)*|[^\W_]+")


def tokenize(text: str | None) -> list[str]:
    """Lowercase words; numbers keep their decimal/thousands separators ("1,000.5" is one token)."""
    return _TOKEN_RE.findall((text or "").lower())


def repeated_ngram_fraction(tokens: list[str], n: int = FRACTION_ORDER) -> float:
    """1 - unique/total n-grams (the share of n-grams that repeat an earlier one); 0.0 without n-grams."""
    ngrams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return (len(ngrams) - len(set(ngrams))) / len(ngrams) if ngrams else 0.0


def has_consecutive_repeat(tokens: list[str], min_repeats: int, max_period: int = MAX_PERIOD) -> bool:
    """Whether some k-gram (k <= max_period) occurs ``min_repeats`` times back to back.

    A k-gram repeated m times in a row is exactly a stretch where ``tokens[j] == tokens[j + k]`` holds
    for k * (m - 1) consecutive positions j, so each period k is one linear scan.
    """
    for k in range(1, max_period + 1):
        needed = k * (min_repeats - 1)
        if needed + k > len(tokens):
            break  # too short for min_repeats copies of a k-gram, and of any longer one
        run = 0
        for j in range(len(tokens) - k):
            if tokens[j] == tokens[j + k]:
                run += 1
                if run >= needed:
                    return True
            else:
                run = 0
    return False


class Repetition(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=[
                "https://openreview.net/forum?id=rygGQyrFvH",
                "https://openreview.net/forum?id=SJeYe0NtvH",
            ],
        )

    def _compute(self, predictions, min_repeats: int = 3, max_repeated_fraction: float = 0.5):
        if isinstance(min_repeats, bool) or not isinstance(min_repeats, int) or min_repeats < 2:
            raise ValueError(f"repetition: `min_repeats` must be an integer >= 2, got {min_repeats!r}")
        if not 0.0 < max_repeated_fraction <= 1.0:
            raise ValueError(
                f"repetition: `max_repeated_fraction` must be in (0, 1], got {max_repeated_fraction!r}"
            )
        flags: list[float] = []
        fractions: list[float] = []
        for prediction in predictions:
            tokens = tokenize(prediction)
            fraction = repeated_ngram_fraction(tokens)
            enough_ngrams = len(tokens) - FRACTION_ORDER + 1 >= MIN_NGRAMS_FOR_FRACTION
            looped = has_consecutive_repeat(tokens, min_repeats) or (
                enough_ngrams and fraction >= max_repeated_fraction
            )
            flags.append(float(looped))
            fractions.append(fraction)
        return {
            "loop_rate": sum(flags) / len(flags) if flags else 0.0,
            "scores": flags,
            "repeated_ngram_fraction": fractions,
        }
