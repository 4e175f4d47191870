"""The eval harness's text metrics (`eval/metrics/<name>/<name>.py`) as `evaluate` modules loaded by path.

Every metric is loaded with `evaluate.load(<absolute path>)` with networking disabled (any socket connect
is recorded and refused, and the test fails if one was attempted) and a temporary, cold HF cache:

* `test_load_by_path_offline_in_fresh_process` proves it from scratch: a fresh interpreter whose
  environment says offline and whose HF_HOME / HF_MODULES_CACHE / HF_METRICS_CACHE are empty temp dirs,
  with the socket guard installed *before* `import evaluate` (evaluate.config reads the environment once,
  at import time, so setting it later in this process would prove nothing);
* the value tests share one in-process load (module fixture) under the same guard, with the same
  environment and the already-imported `evaluate.config` pointed at a temp cache.

Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

METRICS_DIR = Path(__file__).resolve().parent.parent / "eval" / "metrics"
NAMES = ("exact_match", "rouge_l", "bleu", "distinct_n", "repetition")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}


def metric_path(name: str) -> str:
    return str(METRICS_DIR / name / f"{name}.py")


def test_one_module_per_metric_folder():
    for name in NAMES:
        assert sorted(p.name for p in (METRICS_DIR / name).glob("*.py")) == [f"{name}.py"]


# ---------------------------------------------------------------------------------------------------
# Offline loading from a cold cache, in a fresh interpreter

_FRESH_PROCESS_SCRIPT = r"""
import json, socket, sys
from pathlib import Path

attempts = []
_real_connect = socket.socket.connect


def _refuse_connect(self, address, *args, **kwargs):
    if self.family == getattr(socket, "AF_UNIX", None):  # local IPC, not network
        return _real_connect(self, address, *args, **kwargs)
    attempts.append(repr(address))
    raise OSError(f"network disabled in this test: connect to {address!r}")


def _refuse_create_connection(address, *args, **kwargs):
    attempts.append(repr(address))
    raise OSError(f"network disabled in this test: create_connection to {address!r}")


socket.socket.connect = _refuse_connect
socket.socket.connect_ex = _refuse_connect
socket.create_connection = _refuse_create_connection

import evaluate  # after the guard: importing must not go online either

metrics_dir = Path(sys.argv[1])
calls = {
    "exact_match": {"predictions": [" Paris ", "paris"], "references": ["Paris", "Paris"]},
    "rouge_l": {"predictions": ["police kill the gunman"], "references": ["police killed the gunman"]},
    "bleu": {"predictions": ["the cat sat on the mat ."], "references": ["the cat sat on the mat."]},
    "distinct_n": {"predictions": [["a b", "a c"]], "n": 1},
    "repetition": {"predictions": ["the the the", "The capital of France is Paris."]},
}
out = {
    "offline": evaluate.config.HF_EVALUATE_OFFLINE,
    "modules_cache": str(evaluate.config.HF_MODULES_CACHE),
    "results": {},
    "names": {},
    "modules": {},
}
for name, kwargs in calls.items():
    metric = evaluate.load(str(metrics_dir / name / f"{name}.py"))
    out["results"][name] = metric.compute(**kwargs)
    out["names"][name] = metric.name
    out["modules"][name] = type(metric).__module__
    # a second load reuses the copy in the modules cache (same content hash)
    assert type(evaluate.load(str(metrics_dir / name / f"{name}.py"))).__module__ == out["modules"][name]
out["attempts"] = list(attempts)

# the guard really intercepts: an HTTP request (never sent) is recorded and refused
import urllib.request

try:
    urllib.request.urlopen("http://192.0.2.1/", timeout=1)
except OSError:
    pass
out["probe_recorded"] = len(attempts) > len(out["attempts"])
print("RESULT " + json.dumps(out))
"""


@pytest.mark.integration  # launches a process
def test_load_by_path_offline_in_fresh_process(tmp_path):
    hf_home = tmp_path / "hf"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_CACHE"))}
    env.update(OFFLINE_ENV)
    env.update(
        HF_HOME=str(hf_home),
        HF_MODULES_CACHE=str(hf_home / "modules"),
        HF_METRICS_CACHE=str(hf_home / "metrics"),
        HF_EVALUATE_CACHE=str(hf_home / "evaluate"),
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS_SCRIPT, str(METRICS_DIR)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])

    assert out["attempts"] == []  # nothing tried to reach the network
    assert out["probe_recorded"] is True  # ... and the guard would have seen it
    assert out["offline"] is True
    assert out["modules_cache"] == str(hf_home / "modules")
    for name in NAMES:
        # evaluate copied the script into the (cold) modules cache under a content hash and imported it
        # from there: evaluate_modules.metrics.<name>.<hash>.<name>
        prefix, metric_name, digest, module = out["modules"][name].rsplit(".", 3)
        assert (prefix, metric_name, module) == ("evaluate_modules.metrics", name, name)
        copy = hf_home / "modules" / "evaluate_modules" / "metrics" / name / digest / f"{name}.py"
        assert copy.read_text(encoding="utf-8") == Path(metric_path(name)).read_text(encoding="utf-8")
        assert out["names"][name] == name
        assert (hf_home / "metrics" / name).is_dir()  # compute()'s Arrow scratch files went to the temp cache

    res = out["results"]
    assert res["exact_match"] == {"exact_match": 0.5, "scores": [1.0, 0.0]}
    assert res["rouge_l"]["scores"] == [pytest.approx(0.75)]
    assert res["bleu"]["bleu"] == pytest.approx(1.0)
    assert res["distinct_n"] == {"distinct_n": 0.75, "scores": [0.75], "n": 1}
    assert res["repetition"]["scores"] == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------------
# In-process: one offline load of every metric for the value tests


@pytest.fixture(scope="module")
def metrics(tmp_path_factory):
    attempts: list[str] = []
    real_connect = socket.socket.connect

    def refuse_connect(self, address, *args, **kwargs):
        if self.family == getattr(socket, "AF_UNIX", None):  # local IPC, not network
            return real_connect(self, address, *args, **kwargs)
        attempts.append(repr(address))
        raise OSError(f"network disabled in this test: connect to {address!r}")

    def refuse_create_connection(address, *args, **kwargs):
        attempts.append(repr(address))
        raise OSError(f"network disabled in this test: create_connection to {address!r}")

    hf_home = tmp_path_factory.mktemp("hf-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse_connect)
        mp.setattr(socket.socket, "connect_ex", refuse_connect)
        mp.setattr(socket, "create_connection", refuse_create_connection)
        for key, value in OFFLINE_ENV.items():
            mp.setenv(key, value)
        mp.setenv("HF_HOME", str(hf_home))
        mp.setenv("HF_MODULES_CACHE", str(hf_home / "modules"))
        mp.setenv("HF_METRICS_CACHE", str(hf_home / "metrics"))

        import evaluate

        # evaluate.config read the environment when evaluate was first imported (maybe by another test):
        # point what evaluate.load / compute use at the temp cache and offline mode explicitly.
        mp.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
        mp.setattr(evaluate.config, "HF_MODULES_CACHE", hf_home / "modules")
        mp.setattr(evaluate.config, "HF_METRICS_CACHE", hf_home / "metrics")
        # The copied scripts are imported as `evaluate_modules.<...>`, a package bound to the modules cache
        # of its first import in this process and found through sys.path, to which evaluate *appends* each
        # modules cache: put ours first, hide an earlier binding (restored afterwards) and drop ours after.
        (hf_home / "modules").mkdir()
        mp.setattr(sys, "path", list(sys.path))
        mp.syspath_prepend(str(hf_home / "modules"))
        before = set(sys.modules)
        for key in [k for k in sys.modules if k.split(".")[0] == "evaluate_modules"]:
            mp.delitem(sys.modules, key)

        loaded = {name: evaluate.load(metric_path(name)) for name in NAMES}
        yield loaded

        for key in [k for k in sys.modules if k.split(".")[0] == "evaluate_modules" and k not in before]:
            del sys.modules[key]
    assert attempts == [], f"network attempted: {attempts}"


def fresh_in_memory(name: str):
    """A new instance with keep_in_memory=True, for calls that raise (use under the `metrics` fixture).

    An exception inside compute() leaves an on-disk instance's Arrow cache file locked: its next
    compute() waits 1 s for that lock and then writes a new uuid-named file. In-memory instances keep no
    files or locks, so the shared instances stay clean and fast.
    """
    import evaluate

    return evaluate.load(metric_path(name), keep_in_memory=True)


def module_of(metric):
    """The imported metric script (for its helper functions and docstring)."""
    return sys.modules[type(metric).__module__]


def test_loaded_from_temp_cache_with_info(metrics):
    for name, metric in metrics.items():
        assert metric.name == name
        assert type(metric).__module__.startswith(f"evaluate_modules.metrics.{name}.")
        assert Path(module_of(metric).__file__).is_relative_to(Path(os.environ["HF_MODULES_CACHE"]))
        assert len(module_of(metric).__doc__) > 300  # what it measures and why
        assert metric.description and metric.inputs_description
        expected_inputs = (
            {"predictions"} if name in ("distinct_n", "repetition") else {"predictions", "references"}
        )
        assert set(metric.features) == expected_inputs
        if name != "exact_match":
            assert metric.citation


# ---------------------------------------------------------------------------------------------------
# exact_match


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # cases:  ws   case  punct  u-punct  casefold  hyphen  wrong  empty
        ({}, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
        ({"ignore_case": True}, [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]),
        ({"ignore_punctuation": True}, [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
        ({"ignore_case": True, "ignore_punctuation": True}, [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]),
    ],
)
def test_exact_match_normalisation(metrics, options, expected):
    predictions = [
        "  New   York\n\tCity ",
        "paris",
        "Paris.",
        "« PARIS ! »",
        "STRASSE",
        "state-of-the-art",
        "Lyon",
        " ",
    ]
    references = ["New York City", "Paris", "Paris", "paris", "straße", "state of the art", "Paris", ""]
    result = metrics["exact_match"].compute(predictions=predictions, references=references, **options)
    assert result["scores"] == expected
    assert result["exact_match"] == pytest.approx(sum(expected) / len(expected))


# ---------------------------------------------------------------------------------------------------
# rouge_l


def test_rouge_l_hand_computed(metrics):
    predictions = [
        "police kill the gunman",  # Lin (2004): LCS with the reference = police the gunman = 3 -> 2*3/(4+4)
        "the gunman kill police",  # LCS = the gunman = 2 -> 2*2/8
        "Police, killed the GUNMAN!",  # lowercase word tokens: identical -> 1.0
        "a b c d",  # vs "a x c": LCS = a c = 2; P = 2/4, R = 2/3, F = 2PR/(P+R) = 4/7
        "",  # empty prediction -> 0.0
        "...",  # no word tokens -> 0.0, even against a reference without tokens
        "snake_case",  # underscore splits like rouge_score: [snake, case] vs [snake] -> 2*1/3
    ]
    references = ["police killed the gunman"] * 3 + ["a x c", "police", "!!", "snake"]
    result = metrics["rouge_l"].compute(predictions=predictions, references=references)
    expected = [0.75, 0.5, 1.0, 4 / 7, 0.0, 0.0, 2 / 3]
    assert result["scores"] == pytest.approx(expected)
    assert result["rouge_l"] == pytest.approx(sum(expected) / len(expected))


def test_rouge_l_bit_parallel_lcs_matches_dynamic_programme(metrics):
    lcs_length = module_of(metrics["rouge_l"]).lcs_length

    def lcs_dp(a, b):
        prev = [0] * (len(b) + 1)
        for x in a:
            cur = [0]
            for j, y in enumerate(b):
                cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
            prev = cur
        return prev[-1]

    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 25))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 25))]
        assert lcs_length(a, b) == lcs_dp(a, b)


# ---------------------------------------------------------------------------------------------------
# bleu


def test_bleu_identical_strings_score_one(metrics):
    texts = ["The cat sat on the mat.", "Yes.", "It costs $3.50, doesn't it?"]
    result = metrics["bleu"].compute(predictions=texts, references=texts)
    assert result["bleu"] == pytest.approx(1.0)
    assert result["scores"] == pytest.approx([1.0, 1.0, 1.0])  # "Yes." = [Yes, .]: effective order 2
    assert result["precisions"] == pytest.approx([1.0] * 4)
    assert result["brevity_penalty"] == 1.0
    # a corpus of sentences shorter than 4 tokens: no 3-/4-grams at all, the mean is over orders 1-2
    assert metrics["bleu"].compute(predictions=["Yes."], references=["Yes."])["bleu"] == pytest.approx(1.0)


def test_bleu_corpus_hand_computed(metrics):
    predictions = ["the cat is on the mat", "a dog runs in the park"]
    references = ["the cat sat on the mat", "a dog runs in the big park"]
    # Sentence 1 (c=6, r=6), clipped matches / prediction n-grams:
    #   1-grams: the x2, cat, on, mat match ("is" does not)                              5/6
    #   2-grams: the cat, on the, the mat  (not: cat is, is on)                          3/5
    #   3-grams: on the mat  (not: the cat is, cat is on, is on the)                     1/4
    #   4-grams: the cat is on, cat is on the, is on the mat: none                       0/3
    # Sentence 2 (c=6, r=7):
    #   1-grams: a, dog, runs, in, the, park all match                                   6/6
    #   2-grams: a dog, dog runs, runs in, in the  (not: the park)                       4/5
    #   3-grams: a dog runs, dog runs in, runs in the  (not: in the park)                3/4
    #   4-grams: a dog runs in, dog runs in the  (not: runs in the park)                 2/3
    # Corpus: p1 = 11/12, p2 = 7/10, p3 = 4/8, p4 = 2/6; c = 12 < r = 13 -> BP = exp(1 - 13/12)
    p = [11 / 12, 7 / 10, 4 / 8, 2 / 6]
    bp = math.exp(1 - 13 / 12)
    expected = bp * (p[0] * p[1] * p[2] * p[3]) ** 0.25  # = 0.52614...
    result = metrics["bleu"].compute(predictions=predictions, references=references)
    assert result["precisions"] == pytest.approx(p)
    assert result["brevity_penalty"] == pytest.approx(bp)
    assert result["bleu"] == pytest.approx(expected)
    assert result["bleu"] == pytest.approx(0.52614, abs=1e-5)
    # sentence 1 has no 4-gram match: "exp" smoothing gives p4 = 1 / (2 * 3) instead of 0
    s1 = (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    s2 = math.exp(1 - 7 / 6) * (1 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    assert result["scores"] == pytest.approx([s1, s2])


def test_bleu_smoothing_keeps_short_partial_matches_positive(metrics):
    # "the cat sat down quickly" vs "the cat sat on the mat": p1 = 3/5, p2 = 2/4, p3 = 1/3, no 4-gram
    # match of 2 -> exp smoothing p4 = 1/(2*2); c = 5 < r = 6 -> BP = exp(1 - 6/5)
    result = metrics["bleu"].compute(
        predictions=["the cat sat down quickly"], references=["the cat sat on the mat"]
    )
    assert result["scores"][0] == pytest.approx(math.exp(-0.2) * (3 / 5 * 2 / 4 * 1 / 3 * 1 / 4) ** 0.25)
    assert result["scores"][0] > 0.3
    assert result["bleu"] == 0.0  # corpus BLEU is not smoothed: no 4-gram match in the corpus
    assert result["precisions"] == pytest.approx([3 / 5, 2 / 4, 1 / 3, 0.0])
    # shorter than 4 tokens: effective order 3, all matching -> only the brevity penalty exp(1 - 6/3)
    short = metrics["bleu"].compute(predictions=["the cat sat"], references=["the cat sat on the mat"])
    assert short["scores"][0] == pytest.approx(math.exp(-1))


def test_bleu_tokenisation_and_zero_cases(metrics):
    tokenize = module_of(metrics["bleu"]).tokenize_13a
    assert tokenize("Hello, world! It's 3.14 and 1,000 (approx.) 3-4") == [
        "Hello", ",", "world", "!", "It's", "3.14", "and", "1,000", "(", "approx", ".", ")", "3", "-", "4"
    ]  # fmt: skip
    result = metrics["bleu"].compute(
        predictions=["the cat sat on the mat.", "xyz", "", "The Cat"],
        references=["the cat sat on the mat .", "abc", "", "the cat"],
    )
    # 13a splits the final "." -> identical; no match -> 0; empty prediction -> 0; case-sensitive -> 0
    assert result["scores"] == pytest.approx([1.0, 0.0, 0.0, 0.0])
    lowered = metrics["bleu"].compute(predictions=["The Cat"], references=["the cat"], lowercase=True)
    assert lowered["scores"] == pytest.approx([1.0])


# ---------------------------------------------------------------------------------------------------
# distinct_n


def test_distinct_n_hand_computed(metrics):
    predictions = [
        ["a b c", "a b d"],  # 1-grams: a b c a b d = 4 unique / 6;  2-grams: ab bc ab bd = 3 / 4
        ["x x", ""],  # 1-grams: 1/2;  2-grams: "x x" = 1/1
        [],  # no responses: 0.0
        ["The cat.", "the CAT"],  # lowercase words: the cat the cat = 2/4;  2-grams: 1/2
        ["a", "a"],  # 1-grams 1/2;  no 2-gram inside a response (none across responses) -> 0.0
    ]
    one = metrics["distinct_n"].compute(predictions=predictions)
    assert one["scores"] == pytest.approx([4 / 6, 1 / 2, 0.0, 2 / 4, 1 / 2])
    assert one["distinct_n"] == pytest.approx((4 / 6 + 1 / 2 + 0 + 2 / 4 + 1 / 2) / 5)
    assert one["n"] == 1
    two = metrics["distinct_n"].compute(predictions=predictions, n=2)
    assert two["scores"] == pytest.approx([3 / 4, 1.0, 0.0, 1 / 2, 0.0])
    assert two["n"] == 2
    with pytest.raises(ValueError, match="n"):
        fresh_in_memory("distinct_n").compute(predictions=predictions, n=0)


# ---------------------------------------------------------------------------------------------------
# repetition


def test_repetition_flags_loops_not_normal_text(metrics):
    predictions = [
        "2 + 3 = 5. 2 + 3 = 5. 2 + 3 = 5.",  # 3-gram (2 3 5) x3; 4-grams: 6, 3 unique -> fraction 3/6
        "The capital of France is Paris.",
        "the the the",  # 1-gram x3
        "a b a b a b",  # 2-gram x3
        "a b a b a",  # 2.5 copies: no loop
        "I think that that is right, and the answer is 42.",  # two repeats only
        "It costs 10,000,000,000 dollars. Wait... what?!!!",  # number is one token, punctuation ignored
        "Paris is the capital of France. It is known for the Eiffel Tower, museums and cafes.",
    ]
    result = metrics["repetition"].compute(predictions=predictions)
    assert result["scores"] == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert result["loop_rate"] == pytest.approx(3 / 8)
    # a b a b a b: 4-grams abab baba abab -> 1 of 3 repeats an earlier one
    assert result["repeated_ngram_fraction"] == pytest.approx([0.5, 0.0, 0.0, 1 / 3, 0.0, 0.0, 0.0, 0.0])


def test_repetition_periods_and_fraction_rule(metrics):
    rep = metrics["repetition"]
    eight = " ".join(f"w{i}" for i in range(8))
    nine = " ".join(f"w{i}" for i in range(9))
    # with the fraction rule off (a fraction is always < 1), only periods up to 8 count
    off = rep.compute(
        predictions=[f"{eight} {eight} {eight}", f"{nine} {nine} {nine}"], max_repeated_fraction=1.0
    )
    assert off["scores"] == [1.0, 0.0]
    # 9-gram x3: 27 tokens, 24 4-grams, 9 unique -> fraction 15/24 = 0.625 >= 0.5: a loop by default
    default = rep.compute(predictions=[f"{nine} {nine} {nine}"])
    assert default["repeated_ngram_fraction"] == pytest.approx([15 / 24])
    assert default["scores"] == [1.0]
    # "a b c d e" four times with distinct words between: no consecutive repeat; 4-grams: 4 blocks x 2
    # (abcd, bcde) + 3 separators x 4 crossing ones = 20, unique 2 + 12 = 14 -> fraction 6/20 = 0.3
    spaced = "a b c d e x a b c d e y a b c d e z a b c d e"
    assert rep.compute(predictions=[spaced])["repeated_ngram_fraction"] == pytest.approx([0.3])
    assert rep.compute(predictions=[spaced])["scores"] == [0.0]
    assert rep.compute(predictions=[spaced], max_repeated_fraction=0.3)["scores"] == [1.0]
    # the fraction rule needs >= 4 four-grams: "a"x5 has 2 (fraction 1/2), "a"x7 has 4 (fraction 3/4)
    short = rep.compute(predictions=["a a a a a", "a a a a a a a"], min_repeats=8)
    assert short["repeated_ngram_fraction"] == pytest.approx([0.5, 0.75])
    assert short["scores"] == [0.0, 1.0]
    # min_repeats=2 makes a doubled word a loop
    assert rep.compute(predictions=["that that is"], min_repeats=2)["scores"] == [1.0]
    with pytest.raises(ValueError, match="min_repeats"):
        fresh_in_memory("repetition").compute(predictions=["x"], min_repeats=1)


# ---------------------------------------------------------------------------------------------------
# Shared contract: one score per prediction in input order, empty inputs, evaluate's input checks

_CASES = {
    "exact_match": (["Paris", "Lyon", "Nice"], ["Paris", "Paris", "Paris"], {}),  # 1, 0, 0
    "rouge_l": (["a b c d", "police kill the gunman", "zzz"], ["a x c", "police killed the gunman", "y"], {}),
    "bleu": (["the cat sat", "xyz", "the cat sat on the mat"], ["the cat sat on the mat"] * 3, {}),
    "distinct_n": ([["a b", "a c"], ["x x x"], ["p q"]], None, {"n": 1}),  # 3/4, 1/3, 1
    "repetition": (["the the the", "The capital of France is Paris.", "Hello there."], None, {}),  # 1, 0, 0
}
AGGREGATE = {
    "exact_match": "exact_match",
    "rouge_l": "rouge_l",
    "distinct_n": "distinct_n",
    "repetition": "loop_rate",
}


@pytest.mark.parametrize("name", NAMES)
def test_scores_one_per_prediction_in_order(metrics, name):
    predictions, references, options = _CASES[name]
    inputs = {"predictions": predictions} | ({"references": references} if references else {})
    result = metrics[name].compute(**inputs, **options)
    forward = result["scores"]
    assert len(forward) == len(predictions)
    assert forward != list(reversed(forward))  # so that the order check below means something
    reversed_inputs = {key: list(reversed(value)) for key, value in inputs.items()}
    assert metrics[name].compute(**reversed_inputs, **options)["scores"] == list(reversed(forward))
    if name in AGGREGATE:  # bleu's aggregate is corpus BLEU, not the mean of sentence BLEU
        assert result[AGGREGATE[name]] == pytest.approx(sum(forward) / len(forward))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("exact_match", {"exact_match": 0.0, "scores": []}),
        ("rouge_l", {"rouge_l": 0.0, "scores": []}),
        ("bleu", {"bleu": 0.0, "scores": [], "precisions": [0.0] * 4, "brevity_penalty": 0.0}),
        ("distinct_n", {"distinct_n": 0.0, "scores": [], "n": 1}),
        ("repetition", {"loop_rate": 0.0, "scores": [], "repeated_ngram_fraction": []}),
    ],
)
def test_empty_input(metrics, name, expected):
    inputs = {"predictions": []} | ({} if name in ("distinct_n", "repetition") else {"references": []})
    assert metrics[name].compute(**inputs) == expected


def test_evaluate_input_checks(metrics):
    with pytest.raises(ValueError, match="Mismatch"):
        fresh_in_memory("bleu").compute(predictions=["a", "b"], references=["a"])
    with pytest.raises(ValueError, match="expected a list"):  # distinct_n wants K responses per prompt
        fresh_in_memory("distinct_n").compute(predictions=["a b c"])
    with pytest.raises(TypeError):  # unknown options reach _compute and are rejected there
        fresh_in_memory("exact_match").compute(predictions=["a"], references=["a"], ignore_spaces=True)
    # an in-memory instance recovers from a failed call, with the same values as the on-disk one
    metric = fresh_in_memory("repetition")
    with pytest.raises(ValueError, match="max_repeated_fraction"):
        metric.compute(predictions=["x"], max_repeated_fraction=0.0)
    assert metric.compute(predictions=["a b a b a b", "x"]) == metrics["repetition"].compute(
        predictions=["a b a b a b", "x"]
    )
