"""Exact match: the share of predictions that equal their reference after light normalisation.

Why: for short-answer prompts (arithmetic, capitals, one-word answers) a string match is the most
transparent correctness signal there is, and unlike overlap metrics (ROUGE, BLEU) it gives no partial
credit to a wrong answer that happens to share words with the reference. The normalisation absorbs the
formatting noise that differs between base, SFT and RLHF models without rewarding wrong content:

* always: strip leading/trailing whitespace and collapse every internal whitespace run to one space;
* ``ignore_case=True``: compare ``str.casefold()`` forms (so also "Straße" == "STRASSE");
* ``ignore_punctuation=True``: delete ASCII punctuation (``string.punctuation``, which includes symbols
  such as ``$ + = ^``) and every Unicode punctuation character (categories P*), then collapse whitespace
  again. Characters are deleted, not replaced by a space (as in the Hub's ``exact_match``), so
  "Paris." == "Paris" and "U.S.A" == "USA", but "state-of-the-art" != "state of the art".

Per example the score is 1.0 or 0.0, in input order; the aggregate ``exact_match`` is their mean.
Two strings that are empty after normalisation match (1.0). Empty input lists give
``{"exact_match": 0.0, "scores": []}``. ``None`` entries are treated as "".

Standard library only, loaded by path with ``evaluate.load(".../exact_match/exact_match.py")``.
"""

import re
import string
import unicodedata

import datasets
import evaluate

_DESCRIPTION = """\
Exact string match between each prediction and its reference after whitespace normalisation (strip,
collapse internal whitespace), optionally case-insensitive (casefold) and/or ignoring punctuation.
Scores are 1.0/0.0 per example; the aggregate is their mean.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): model outputs, one per example.
    references (list of str): the expected answers, one per prediction.
    ignore_case (bool, default False): compare casefolded strings.
    ignore_punctuation (bool, default False): delete ASCII and Unicode punctuation before comparing.
Returns:
    exact_match (float): mean of the per-example scores (0.0 for empty input).
    scores (list of float): 1.0 or 0.0 per prediction, in input order.
Examples:
    >>> em = evaluate.load("eval/metrics/exact_match/exact_match.py")
    >>> em.compute(predictions=["  Paris. ", "paris"], references=["Paris.", "Paris"])
    {'exact_match': 0.5, 'scores': [1.0, 0.0]}
    >>> em.compute(predictions=["paris!"], references=["Paris"], ignore_case=True, ignore_punctuation=True)
    {'exact_match': 1.0, 'scores': [1.0]}
"""

_WHITESPACE_RE = re.compile(r"\s+")
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def _is_punctuation(ch: str) -> bool:
    return ch in _ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


def normalize(text: str | None, ignore_case: bool = False, ignore_punctuation: bool = False) -> str:
    """The form that is compared: whitespace-normalised, optionally casefolded and punctuation-free."""
    text = text or ""
    if ignore_punctuation:
        text = "".join(ch for ch in text if not _is_punctuation(ch))
    if ignore_case:
        text = text.casefold()
    return _WHITESPACE_RE.sub(" ", text).strip()


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, ignore_case: bool = False, ignore_punctuation: bool = False):
        scores = [
            float(
                normalize(p, ignore_case, ignore_punctuation) == normalize(r, ignore_case, ignore_punctuation)
            )
            for p, r in zip(predictions, references, strict=True)
        ]
        return {"exact_match": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
