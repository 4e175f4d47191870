"""Honest prompt counts and per-task subtotals in `hftune eval`, without a model: repeated rows are evaluated
once (and recorded), a suite's `tasks` tags prompts (a regex mapping or a function), `measures` gives each
task's means and paired differences over that task's prompts alone, and the report shows them."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from hftune.errors import UserError
from hftune.evaluation import seeds, stats
from hftune.evaluation.contamination import summary_line
from hftune.evaluation.measures import aggregate, task_subtotals
from hftune.evaluation.prompts import distinct, task_labels
from hftune.evaluation.report import render_html, render_markdown
from hftune.evaluation.report.tasks import section
from hftune.evaluation.suite import Suite, parse, rlhf_variants
from hftune.evaluation.verifiers import larger_position
from hftune.models.generation import Decoding


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ----------------------------------------------------------------------------------------------- duplicates


def test_each_distinct_prompt_is_kept_once_at_its_first_place_and_the_repeats_are_counted():
    rows = ["a", "b", "a", "c", "b", "a", "d"]
    pairs = [(_user(q), f"answer {q}") for q in rows]
    keys = [f"key-{i}" for i in range(len(rows))]
    kept, kept_keys, duplicates = distinct(pairs, keys, None)
    assert [m[-1]["content"] for m, _ in kept] == ["a", "b", "c", "d"]
    assert kept_keys == ["key-0", "key-1", "key-3", "key-6"]  # each first occurrence's key
    assert duplicates["n_rows"] == 7 and duplicates["n_distinct"] == 4 and duplicates["n_dropped"] == 3
    assert [(r["prompt"], r["count"]) for r in duplicates["repeated"]] == [("a", 3), ("b", 2)]
    assert duplicates["repeated"][0]["reference"] == "answer a"


def test_max_prompts_counts_distinct_prompts_and_the_counts_are_of_the_rows_behind_them():
    pairs = [(_user(q), None) for q in ["a", "a", "b", "c", "c", "c", "a"]]
    kept, _, duplicates = distinct(pairs, ["k"] * len(pairs), 2)
    assert [m[-1]["content"] for m, _ in kept] == ["a", "b"]  # two distinct prompts, not two rows
    # The three rows of `a` and the one of `b`; `c` was not evaluated, so its repeats are not listed.
    assert (duplicates["n_rows"], duplicates["n_distinct"], duplicates["n_dropped"]) == (4, 2, 2)
    assert [(r["prompt"], r["count"]) for r in duplicates["repeated"]] == [("a", 3)]


def test_the_same_question_with_another_reference_or_system_turn_is_not_a_duplicate():
    system = [{"role": "system", "content": "Be brief."}, *_user("Which is larger, 3 or 5?")]
    pairs = [
        (_user("Which is larger, 3 or 5?"), "5 is larger than 3."),
        (_user("Which is larger, 3 or 5?"), "3 is larger than 5."),  # a wrong demonstration: its own row
        (system, "5 is larger than 3."),  # the model sees another conversation
        (_user("Which is larger, 3 or 5?"), "5 is larger than 3."),
    ]
    kept, _, duplicates = distinct(pairs, ["k"] * 4, None)
    assert kept == pairs[:3]
    assert duplicates["n_dropped"] == 1 and duplicates["repeated"][0]["count"] == 2


def test_the_audit_line_says_how_many_rows_the_distinct_prompts_stand_for():
    audit = {"n_prompts": 281, "stages": {}, "contaminated_prompts": [], "clean_prompts": 281}
    assert "duplicates" not in summary_line(audit)
    audit["duplicates"] = {"n_rows": 300, "n_distinct": 281, "n_dropped": 19, "repeated": []}
    assert "281 distinct prompts (300 rows, 19 repeats dropped" in summary_line(audit)


# ----------------------------------------------------------------------------------------------- tasks key


def _suite(tmp_path, tasks_yaml: str):
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        f"data_recipe: tiny_alpaca\nsft_model: some/sft\nvariants: [sft]\nmetrics: [length]\n{tasks_yaml}"
    )
    return parse(str(suite)).hftune


def test_a_tasks_mapping_tags_by_the_first_pattern_found_and_the_rest_is_other(tmp_path):
    suite = _suite(tmp_path, "tasks: {arithmetic: '^What is \\d', capital: 'capital', any_what: '^What'}\n")
    prompts = ["What is 3 + 4?", "What is the capital of Peru?", "What now?", "Sort 3, 1."]
    labels = task_labels(suite.tasks, [_user(p) for p in prompts], [None] * 4)
    assert labels == ["arithmetic", "capital", "any_what", "other"]


def _problem_lines(err: pytest.ExceptionInfo) -> list[str]:
    return [line for line in str(err.value).splitlines() if "`tasks" in line]


def test_a_bad_regex_or_path_in_tasks_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(UserError) as err:
        _suite(tmp_path, "tasks: {good: '^What', broken: 'Which (is'}\n")
    (line,) = _problem_lines(err)
    assert "`tasks.broken`" in line and "bad regex" in line and "missing )" in line
    with pytest.raises(UserError) as err:
        _suite(tmp_path, "tasks: just_a_module\n")
    (line,) = _problem_lines(err)
    assert "`tasks`" in line and "module:function" in line
    with pytest.raises(UserError) as err:
        _suite(tmp_path, "tasks: {}\n")
    assert len(_problem_lines(err)) == 1


def test_a_tasks_function_is_called_with_prompt_and_reference(tmp_path, monkeypatch):
    module = types.ModuleType("my_tasks")
    module.by_reference = lambda prompt, reference: f"{prompt[:5]}/{reference or 'none'}"
    module.broken = lambda prompt, reference: 1 / 0
    module.unnamed = lambda prompt, reference: None
    monkeypatch.setitem(sys.modules, "my_tasks", module)
    suite = _suite(tmp_path, "tasks: my_tasks:by_reference\n")
    labels = task_labels(suite.tasks, [_user("Hello there"), _user("Sort 2, 1.")], ["hi", None])
    assert labels == ["Hello/hi", "Sort /none"]
    for spec, expected in [
        ("my_tasks:missing", "cannot import my_tasks:missing"),
        ("no_such_module_here:f", "cannot import no_such_module_here:f"),
        ("my_tasks:broken", "failed on prompt 0"),
        ("my_tasks:unnamed", "not a task name"),
    ]:
        with pytest.raises(UserError) as err:
            task_labels(spec, [_user("Hello")], [None])
        message = str(err.value)
        assert message.startswith("`tasks`: ") and expected in message and "\n" not in message


def test_the_biased_suite_splits_compare_prompts_by_where_the_larger_number_is():
    assert larger_position("Which is larger, 81 or 112?") == "second larger"
    assert larger_position("Which is larger, 191 or 121?", "121 is larger than 191.") == "first larger"
    assert larger_position("which is  larger, 7 or 7?") == "equal"
    assert larger_position("What is 3 + 4?") == "other"


def test_the_built_in_suites_tag_their_prompts():
    tiny, biased = parse("tiny").hftune, parse("biased").hftune
    prompts = [
        "What is 12 * 3?",
        "Compute the result of this expression.\n\n4 - 9",
        "Reverse the word 'cotton'.",
        "How many times does the letter 'a' appear in 'banana'?",
        "What is the capital of Peru?",
        "Which is larger, 4 or 9?",
        "Sort these numbers in ascending order: 3, 1, 2.",
    ]
    labels = task_labels(tiny.tasks, [_user(p) for p in prompts], [None] * len(prompts))
    assert labels == ["arithmetic", "arithmetic", "reverse", "count", "capital", "compare", "sort"]
    assert task_labels(biased.tasks, [_user(prompts[5])], [None]) == ["second larger"]


# ----------------------------------------------------------------------------------------------- subtotals


def _per_prompt(n: int) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    sft = {
        "verifier": (rng.random(n) < 0.5).astype(float),
        "reward": rng.normal(0, 1, n),
        "distinct_2": rng.random(n),
    }
    runs = {
        f"rlhf@ppo-seed{k}": {"verifier": (rng.random(n) < 0.7).astype(float), "reward": rng.normal(1, 1, n)}
        for k in (1, 2)
    }
    return {"sft": sft, **runs}


def test_each_task_gets_the_means_and_paired_differences_of_its_own_prompts():
    n = 30
    tasks = ["b" if i % 3 else "a" for i in range(n)]
    tasks[4] = "other"
    tasks[-1] = "other"
    per_prompt = _per_prompt(n)
    per_prompt["sft"]["reward"][0] = np.nan  # a prompt not measured is left out of its task's mean
    suite = Suite(
        rlhf_models={"rlhf": ["runs/ppo-seed1", "runs/ppo-seed2"]},
        variants=["sft", "rlhf"],
        metrics=["reward", "verifier", "distinct"],
        bootstrap_samples=300,
    )
    boot = stats.Bootstrap(n, 300, suite.confidence, seed=0)
    paths = {"sft": "runs/sft", **rlhf_variants(suite)}
    results = aggregate(suite, per_prompt, boot, paths, Decoding(8), Decoding(8, 1.0), tasks=tasks)
    by_task = results["tasks"]
    assert list(by_task) == ["a", "b", "other"]  # first appearance, `other` last
    labels = np.asarray(tasks)
    # The seeded variant's per-prompt value is the mean over its runs, as everywhere else.
    rlhf = (per_prompt["rlhf@ppo-seed1"]["verifier"] + per_prompt["rlhf@ppo-seed2"]["verifier"]) / 2
    for task, entry in by_task.items():
        chosen = labels == task
        assert entry["n"] == chosen.sum()
        sft = entry["variants"]["sft"]
        assert sft["verifier"]["mean"] == pytest.approx(per_prompt["sft"]["verifier"][chosen].mean())
        assert sft["reward"]["mean"] == pytest.approx(np.nanmean(per_prompt["sft"]["reward"][chosen]))
        assert "distinct_2" not in sft  # headline metrics only
        assert entry["variants"]["rlhf"]["verifier"]["mean"] == pytest.approx(rlhf[chosen].mean())
        difference = entry["vs_baseline"]["rlhf"]["verifier"]
        assert difference["mean"] == pytest.approx((rlhf - per_prompt["sft"]["verifier"])[chosen].mean())
        assert difference["ci_low"] <= difference["mean"] <= difference["ci_high"]
        assert "sft" not in entry["vs_baseline"]
        # Across seeds too, on this task's prompts: each run's mean paired difference, and the rule's verdict.
        per_run = [
            (per_prompt[f"rlhf@ppo-seed{k}"]["verifier"] - per_prompt["sft"]["verifier"])[chosen].mean()
            for k in (1, 2)
        ]
        assert difference["seeds"]["per_seed"] == pytest.approx(per_run)
        assert difference["survives_seeds"] is seeds.survives(difference, difference["seeds"], 0.0)
    assert by_task["a"]["variants"]["sft"]["reward"]["n"] == by_task["a"]["n"] - 1
    assert "tasks" not in aggregate(suite, per_prompt, boot, paths, Decoding(8), Decoding(8, 1.0))


def test_a_small_task_gets_a_wider_interval_than_the_whole_eval():
    n = 200
    per_prompt = {"sft": {"verifier": np.tile([0.0, 1.0], n // 2)}}
    tasks = ["small" if i < 10 else "large" for i in range(n)]
    suite = Suite(sft_model="runs/sft", variants=["sft"], metrics=["verifier"], bootstrap_samples=500)
    by_task = task_subtotals(suite, per_prompt, tasks, "sft")
    width = {
        t: e["variants"]["sft"]["verifier"]["ci_high"] - e["variants"]["sft"]["verifier"]["ci_low"]
        for t, e in by_task.items()
    }
    assert width["small"] > 2 * width["large"]


# ----------------------------------------------------------------------------------------------- report


def _results(by_task: dict | None) -> dict:
    verifier = {"decoding": "greedy", "higher_is_better": True, "description": "correct"}
    summary = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 20}
    results = {
        "suite": {"name": "biased", "confidence": 0.95},
        "n_prompts": 40,
        "baseline": "sft",
        "metric_info": {"verifier": verifier},
        "variants": {
            v: {"kind": v, "model": f"runs/{v}", "metrics": {"verifier": summary}, "vs_baseline": {}}
            for v in ("sft", "rlhf")
        },
        "win_rates": {},
    }
    if by_task is not None:
        results["tasks"] = by_task
    return results


def _stat(mean: float, low: float, high: float, n: int) -> dict:
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": n}


def test_the_by_task_section_renders_in_markdown_and_html():
    by_task = {
        "first larger": {
            "n": 21,
            "variants": {
                "sft": {"verifier": _stat(0.95, 0.9, 1.0, 21)},
                "rlhf": {"verifier": _stat(0.9, 0.8, 1.0, 21)},
            },
            "vs_baseline": {"rlhf": {"verifier": _stat(-0.05, -0.15, 0.05, 21)}},
        },
        "second <larger>": {
            "n": 19,
            "variants": {
                "sft": {"verifier": _stat(0.2, 0.05, 0.4, 19)},
                "rlhf": {"verifier": _stat(0.6, 0.4, 0.8, 19)},
            },
            "vs_baseline": {"rlhf": {"verifier": _stat(0.4, 0.2, 0.6, 19)}},
        },
    }
    results = _results(by_task)
    part = section(results)
    assert part.title == "By task (verifier)"
    assert [c.text for c in part.table.header][:2] == ["task", "n"]
    first, second = part.table.rows
    assert [c.text for c in first[:2]] == ["first larger", "21"]
    assert first[-1].mark is None and second[-1].mark == "better"  # only the CI that excludes 0 is marked
    markdown = render_markdown(results, [])
    assert "## By task (verifier)" in markdown
    row = "| second &lt;larger&gt; | 19 | 0.200 [0.050, 0.400] | 0.600 [0.400, 0.800] | "
    row += "**+0.400 [+0.200, +0.600] ▲** |"
    assert row in markdown
    page = render_html(results, [])
    assert "By task (verifier)" in page and "second &lt;larger&gt;" in page and "<larger>" not in page
    assert section(_results(None)) is None and "By task" not in render_markdown(_results(None), [])
