"""The eval report writer: report.md / report.html from results.json + samples.jsonl structures.

The fixture is built here (seeded) in the harness's schema, so these tests need no model. The HTML is also
opened in headless Chromium, which is the only way to know its inline plots decode and its script runs.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time

import numpy as np
import pytest

from hftune.evaluation.report import summary_table, write_reports
from hftune.evaluation.report.html import FOLD_AT

VARIANTS = {"base": "base", "sft": "sft", "rlhf": "rlhf", "reference": "reference"}
EVIL = "Sure | here you go:\n<script>alert(1)</script>\nline two | end"
N_PROMPTS = 12
METRIC_INFO = {
    "reward": ("greedy", True, "Reward-model score of the greedy reply."),
    "expected_reward": ("sampled", True, "Mean reward of the sampled replies."),
    "kl_to_sft": ("sampled", False, "KL(policy || SFT) estimated on the policy's samples."),
    "length": ("greedy", None, "Tokens in the greedy reply."),
    "eos_rate": ("greedy", True, "Fraction of greedy replies that ended with EOS."),
    "loop_rate": ("greedy", False, "Fraction of greedy replies stuck in a loop."),
    "distinct_2": ("sampled", True, "Distinct bigrams / bigrams over the samples."),
    "exact_match": ("greedy", True, "Reply equals the reference (normalised)."),
    "verifier": ("greedy", True, "Task verifier: 1.0 = correct."),
}


def _summary(values: np.ndarray, boot: np.ndarray) -> dict:
    means = values[boot].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"mean": float(values.mean()), "ci_low": float(low), "ci_high": float(high), "n": len(values)}


def _win_rates(rewards: dict[str, np.ndarray], boot: np.ndarray) -> dict:
    out: dict[str, dict] = {}
    for a, ra in rewards.items():
        out[a] = {}
        for b, rb in rewards.items():
            out[a][b] = _summary(np.where(ra > rb, 1.0, np.where(ra < rb, 0.0, 0.5)), boot)
    return out


@pytest.fixture
def eval_output():
    """(results, samples) as the harness writes them: 4 variants, 12 prompts, some metrics missing."""
    rng = np.random.default_rng(0)
    boot = rng.integers(0, N_PROMPTS, size=(400, N_PROMPTS))
    pairs = [(int(a), int(b)) for a, b in rng.integers(1, 20, size=(N_PROMPTS, 2))]
    shift = {"base": -1.0, "sft": 0.0, "rlhf": 0.8, "reference": 0.5}
    per_prompt: dict[str, dict[str, np.ndarray]] = {}
    for name in VARIANTS:
        m = {
            "reward": rng.normal(shift[name], 0.6, N_PROMPTS),
            "length": rng.integers(6, 32, N_PROMPTS).astype(float),
            "eos_rate": (rng.random(N_PROMPTS) < (0.5 if name == "base" else 0.95)).astype(float),
            "loop_rate": (rng.random(N_PROMPTS) < (0.3 if name == "base" else 0.05)).astype(float),
            "exact_match": (rng.random(N_PROMPTS) < 0.2 + 0.2 * shift[name]).astype(float),
            "verifier": (rng.random(N_PROMPTS) < 0.3 + 0.3 * shift[name]).astype(float),
        }
        if name != "reference":  # the reference answers have no samples and no policy to compare
            m["expected_reward"] = m["reward"] + rng.normal(-0.1, 0.2, N_PROMPTS)
            m["kl_to_sft"] = np.abs(rng.normal({"base": 6.0, "sft": 0.0, "rlhf": 3.0}[name], 0.5, N_PROMPTS))
            m["distinct_2"] = rng.uniform(0.4, 0.9, N_PROMPTS)
        per_prompt[name] = m
    variants = {}
    for name, kind in VARIANTS.items():
        metrics = {k: _summary(v, boot) for k, v in per_prompt[name].items()}
        diffs = {
            k: _summary(v - per_prompt["sft"][k], boot)
            for k, v in per_prompt[name].items()
            if name != "sft" and k in per_prompt["sft"]
        }
        model = None if kind == "reference" else f"runs/{name}"
        variants[name] = {"kind": kind, "model": model, "metrics": metrics, "vs_baseline": diffs}
    rewards = {n: m["reward"] for n, m in per_prompt.items()}
    win_rates = _win_rates(rewards, boot)
    results = {
        "suite": {"name": "tiny-math <arith> & co", "confidence": 0.95, "bootstrap_samples": 400},
        "n_prompts": N_PROMPTS,
        "baseline": "sft",
        "decoding": {
            "greedy": {"max_new_tokens": 32, "do_sample": False},
            "sampling": {
                "temperature": 1.0,
                "top_k": 0,
                "top_p": 1.0,
                "num_samples": 4,
                "seed": 0,
                "max_new_tokens": 32,
            },
        },
        "metric_info": {
            k: {"decoding": d, "higher_is_better": h, "description": t}
            for k, (d, h, t) in METRIC_INFO.items()
        },
        "variants": variants,
        "win_rates": win_rates,
        "training": {
            "rlhf": {
                "metrics": {"reward": "objective/scores", "kl": "objective/kl"},
                "runs": {
                    "rlhf": {"step": [1, 2, 3, 4], "reward": [0.1, 0.3, 0.4, 0.6], "kl": [0, 0.2, 0.5, 0.7]}
                },
            }
        },
        "judge": {
            "model": "judge-mini",
            "win_rates": {
                "rlhf": {"sft": win_rates["rlhf"]["sft"]},
                "sft": {"rlhf": win_rates["sft"]["rlhf"]},
            },
            "n_disagreements": 2,
        },
    }
    samples = []
    for i, (a, b) in enumerate(pairs):
        replies = {}
        for name in VARIANTS:
            text = f"{a} + {b} = {a + b}." if name != "base" else f"{a} + {b} is a sum. Q: what is"
            replies[name] = {
                "response": EVIL if (i == 0 and name == "rlhf") else text,
                "reward": float(per_prompt[name]["reward"][i]),
                "length": int(per_prompt[name]["length"][i]),
                "ended": bool(per_prompt[name]["eos_rate"][i]),
                "verified": float(per_prompt[name]["verifier"][i]),
            }
            if name != "reference":
                replies[name]["samples"] = [
                    {"response": text, "reward": float(rng.normal()), "length": 9, "ended": True}
                    for _ in range(4)
                ]
        samples.append(
            {
                "prompt_index": i,
                "prompt": f"What is {a} + {b}?",
                "reference": f"{a} + {b} = {a + b}.",
                "variants": replies,
            }
        )
    return results, samples


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)]


def test_reports_are_complete_and_escaped(tmp_path, eval_output):
    results, samples = eval_output
    write_reports(tmp_path, results, samples)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.md"]  # no temp files left
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()

    for text in (md, page):
        for name in VARIANTS:
            assert name in text
        for metric in METRIC_INFO:
            assert metric in text
        assert "<script>alert(1)</script>" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert "temperature=1.0" in text and "do_sample=false" in text  # both decodings recorded
        assert "judge-mini" in text
    assert "tiny-math &lt;arith&gt; &amp; co" in md and "tiny-math &lt;arith&gt; &amp; co" in page
    assert md.startswith("# Eval report: tiny-math &lt;arith&gt; &amp; co (12 prompts)")

    # The multi-line reply with pipes stays one table row in Markdown, its pipes escaped.
    [row] = [line for line in md.splitlines() if "alert(1)" in line]
    assert row.startswith("| rlhf |") and row.endswith("|")
    assert "Sure \\| here you go:<br>&lt;script&gt;" in row
    assert row.count("|") - row.count("\\|") == 5  # 4 cells

    # rlhf beats sft on reward by construction: marked as significantly better in both reports.
    assert "▲" in md and 'class="better"' in page
    # The reference variant has no KL: a '-' cell, not a crash or a 0.
    ref_row = next(line for line in md.splitlines() if line.startswith("| reference |"))
    assert " - |" in ref_row

    images = _images(page)
    assert len(images) == 5
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000 for png in images)
    assert "Plot skipped" not in page
    assert 'src="http' not in page and "<link" not in page  # self-contained


def test_a_variant_name_is_escaped_in_every_table(tmp_path, eval_output):
    results, samples = eval_output
    evil = "<img src=x onerror=alert(1)>"

    def rename(mapping: dict) -> dict:
        return {evil if k == "base" else k: v for k, v in mapping.items()}

    results = {
        **results,
        "variants": rename(results["variants"]),
        "win_rates": {evil if a == "base" else a: rename(row) for a, row in results["win_rates"].items()},
    }
    samples = [{**s, "variants": rename(s["variants"])} for s in samples]
    write_reports(tmp_path, results, samples)
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    for text in (md, page):
        assert "<img src=x" not in text and "onerror=alert(1)>" not in text
    # Variants, metrics, paired differences, the win-rate matrix (a row and a column) and 5 examples; the
    # HTML has every prompt in its browser instead (a column head and a choice for A and for B), and the
    # names each plot draws (reward, win rates, reward vs KL, length: `data-variants`).
    assert md.count("&lt;img src=x onerror=alert(1)&gt;") == 10
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") == 12
    drawn = re.findall(r'<figure data-variants="([^"]*)"', page)
    assert sum("&lt;img src=x onerror=alert(1)&gt;" in names for names in drawn) == 4
    assert '<th data-v="0">&lt;img src=x onerror=alert(1)&gt;</th>' in page


def test_plots_degrade_without_data(tmp_path, eval_output):
    results, _ = eval_output
    results = {**results, "win_rates": {}, "judge": None, "baseline": None, "training": None}
    for v in results["variants"].values():
        v["metrics"].pop("kl_to_sft", None)
        v["vs_baseline"] = {}
    write_reports(tmp_path, results, [])
    page = (tmp_path / "report.html").read_text()
    assert _images(page) == []
    assert page.count("Plot skipped") == 5
    assert "no variant has both a reward and kl_to_sft" in page
    assert "No baseline" in (tmp_path / "report.md").read_text()

    # Next to nothing at all still gives two (near-empty) reports.
    write_reports(tmp_path / "empty", {"variants": {}}, [])
    assert "Eval report" in (tmp_path / "empty" / "report.html").read_text()
    assert summary_table({"variants": {}}).strip() == "variant"


def test_summary_table(eval_output):
    results, _ = eval_output
    wide = summary_table(results, width=1000)
    lines = wide.splitlines()[: 1 + len(VARIANTS)]
    header = lines[0].split()
    assert header[:4] == ["variant", "reward", "win", "vs"]
    for metric in ("verifier", "exact_match", "kl_to_sft", "length", "eos_rate", "loop_rate"):
        assert metric in header
    assert "distinct_2" not in header  # not a headline metric
    assert [line.split()[0] for line in lines[1:]] == list(VARIANTS)
    # Each cell is the mean ± the wider side of its interval (never understating it).
    reward = results["variants"]["rlhf"]["metrics"]["reward"]
    spread = max(reward["mean"] - reward["ci_low"], reward["ci_high"] - reward["mean"])
    assert f"{reward['mean']:.3f} ±{spread:.3f}" in lines[3]
    assert "0.500 ±0.000" in lines[2]  # sft vs itself
    # The reference row has no kl_to_sft: its cell is '-', in the kl_to_sft column.
    column = lines[0].index("kl_to_sft")
    assert lines[4][column] == "-"
    assert "Left out" not in wide
    # At the terminal's 100 columns the last columns are left out, and named.
    table = summary_table(results)
    assert max(map(len, table.splitlines())) <= 100
    kept = table.splitlines()[0].split()
    assert kept[:4] == header[:4] and len(kept) < len(header)
    left_out = next(line for line in table.splitlines() if line.startswith("Left out to fit 100 columns: "))
    assert "loop_rate" not in kept and left_out.endswith("loop_rate (see report.md).")


def _browser() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def _chromium(tmp_path) -> list[str]:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start. --enable-logging=stderr
    # with --v=0 prints the page's console, so an uncaught JS error shows up as "Uncaught ..." there.
    flags = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    return [*flags, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]


@pytest.mark.integration  # launches a process
@pytest.mark.skipif(_browser() is None, reason="no chromium / google-chrome binary")
def test_html_renders_in_chromium(tmp_path, eval_output):
    from PIL import Image

    results, samples = eval_output
    write_reports(tmp_path, results, samples)
    url = (tmp_path / "report.html").as_uri()
    flags = _chromium(tmp_path)

    started = time.monotonic()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=True)
    assert 'data-plots-ok="true"' in dom.stdout
    assert re.search(r"<title>hftune report: ok", dom.stdout)
    assert "Uncaught" not in dom.stderr

    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,3000", "--hide-scrollbars", url],
        capture_output=True,
        timeout=60,
        check=True,
    )
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert rgb.shape[:2] == (3000, 1280)
    # Strongly coloured pixels: the plots' marks. Text, borders and the tables' pale tints stay below this
    # (about 60k such pixels with the plots, under 1k with the <img> tags removed).
    saturated = (rgb.max(axis=2) - rgb.min(axis=2)) > 100
    assert saturated.sum() > 25_000, saturated.sum()
    assert time.monotonic() - started < 60


def test_every_prompt_is_in_the_page(tmp_path, eval_output):
    """The browser's rows are plain HTML: all there, escaped and readable without the script."""
    results, samples = eval_output
    long = "word " * 200
    samples[2]["variants"]["sft"]["response"] = long
    samples[4]["prompt"] = "<img src=x onerror=alert(1)> & friends"
    write_reports(tmp_path, results, samples)
    page = (tmp_path / "report.html").read_text()
    body = page.split('<div id="browse">')[1].split("</tbody>")[0]

    rows = re.findall(r'<tr data-r="([^"]*)">(.*?)</tr>', body, re.S)
    assert len(rows) == N_PROMPTS
    for (rewards, row), sample in zip(rows, samples, strict=True):
        assert f'<td class="bi">{sample["prompt_index"]}</td>' in row
        replies = sample["variants"]
        assert rewards.split() == [repr(replies[v]["reward"]) for v in VARIANTS]  # read by the script
        # The pair shown when the page opens: the RLHF policy against the baseline, computed in the page.
        difference = replies["rlhf"]["reward"] - replies["sft"]["reward"]
        assert f'">{difference:+.3f}</td>' in row
    assert '<th class="bd">rlhf − sft</th>' in body

    assert "<img src=x" not in page and "<script>alert(1)</script>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; friends" in body
    assert "Sure | here you go:\n&lt;script&gt;alert(1)&lt;/script&gt;" in body  # the reply, as text
    # A long reply: its start, and the rest a click away (all of it in the page).
    fold = f"{long[:FOLD_AT]}</span><details><summary>… {1000 - FOLD_AT} more characters</summary>"
    assert f'{fold}<span class="text">{long[FOLD_AT:]}</span></details>' in body
    assert '<form class="controls" hidden>' in body  # controls only show once the script runs
    # The reference has its own column, so it is not repeated under each prompt.
    assert "Reference:" not in body


DRIVER = """<script>
(function () {
  var form = document.querySelector("#browse form"), steps = STEPS, seen = [];
  steps.forEach(function (step) {
    Object.keys(step).forEach(function (name) {
      var el = form.elements[name];
      if (el.tagName === "SELECT") {
        var chosen = Array.prototype.filter.call(el.options, function (o) { return o.text === step[name]; });
        el.value = chosen.length ? chosen[0].value : step[name];
      } else {
        el.value = step[name];
      }
      el.dispatchEvent(new Event("input", {bubbles: true}));
    });
    var shown = Array.prototype.filter.call(document.querySelectorAll("#browse tbody tr"), function (tr) {
      return tr.getClientRects().length > 0;
    });
    seen.push(shown.map(function (tr) { return tr.cells[0].textContent; }).join(","));
  });
  document.body.setAttribute("data-seen", seen.join(";"));
  document.body.setAttribute("data-images", String(document.images.length));
})();
</script>"""


def _drive(page: str, steps: list[dict[str, str]]) -> str:
    """The page plus a script that, after the report's own script, sets the browser's controls as a reader
    would (picks an option by its text, types in the box), firing the events a reader's input fires, and
    records after each step the prompt index of each row the browser shows, top to bottom."""
    return page.replace("</body>", DRIVER.replace("STEPS", json.dumps(steps)) + "\n</body>")


@pytest.mark.integration  # launches a process
@pytest.mark.skipif(_browser() is None, reason="no chromium / google-chrome binary")
def test_browser_sorts_and_filters_in_chromium(tmp_path, eval_output):
    results, samples = eval_output
    evil = "<img src=x onerror=\"document.body.setAttribute('data-pwned', 1)\">"
    samples[1]["variants"]["sft"]["response"] = evil
    samples[6]["prompt"] = evil
    samples[3]["variants"]["sft"]["reward"] = None  # no difference: never "loses", sorted last
    samples[5]["variants"]["sft"]["reward"] = samples[5]["variants"]["rlhf"]["reward"]  # a tie
    samples[7]["variants"]["sft"]["reward"] = samples[7]["variants"]["rlhf"]["reward"] + 1.0  # SFT wins
    write_reports(tmp_path, results, samples)
    page = (tmp_path / "report.html").read_text()

    def difference(sample: dict) -> float | None:
        a, b = sample["variants"]["sft"]["reward"], sample["variants"]["rlhf"]["reward"]
        return None if a is None or b is None else a - b

    # A = sft, B = rlhf (not the pair the page opens with): where does SFT lose to the RLHF policy?
    loses = sorted(
        (s for s in samples if (d := difference(s)) is not None and d < 0),
        key=lambda s: (difference(s), s["prompt_index"]),
    )
    ranked = sorted(
        (s for s in samples if difference(s) is not None), key=lambda s: (difference(s), s["prompt_index"])
    )
    needle = "WHAT IS " + loses[0]["prompt"].split()[2]  # case-insensitive, and a strict narrowing
    narrowed = [s for s in loses if needle.lower() in s["prompt"].lower()]
    assert 2 <= len(loses) < N_PROMPTS - 2 and 1 <= len(narrowed) < len(loses)
    steps = [
        {},  # as the page opens
        {"a": "sft", "b": "rlhf", "sort": "A − B, ascending"},
        {"only": "A loses to B (A − B < 0)"},
        {"q": needle},
        {"q": "", "only": "every prompt", "sort": "A − B, descending"},
    ]
    driven = tmp_path / "driven.html"
    driven.write_text(_drive(page, steps))
    dom = subprocess.run(
        [*_chromium(tmp_path), "--dump-dom", driven.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Uncaught" not in dom.stderr
    [seen] = re.findall(r'data-seen="([^"]*)"', dom.stdout)
    opened, ascending, losing, filtered, descending = (step.split(",") for step in seen.split(";"))

    def indexes(rows: list[dict]) -> list[str]:
        return [str(s["prompt_index"]) for s in rows]

    assert opened == indexes(samples)
    assert ascending == [*indexes(ranked), "3"]  # the prompt without a difference last
    assert losing == indexes(loses)
    assert filtered == indexes(narrowed)
    assert descending == [*indexes(sorted(ranked, key=lambda s: (-difference(s), s["prompt_index"]))), "3"]
    # The header follows the choice, and the evil reply and prompt are text (4 plots, no other image).
    assert re.search(r'<th class="bd">sft − rlhf</th>', dom.stdout)
    assert re.search(r"<body[^>]* data-images=\"5\"", dom.stdout)
    assert not re.search(r"<body[^>]* data-pwned", dom.stdout)
    assert re.search(r"of 12 prompts shown", dom.stdout)
