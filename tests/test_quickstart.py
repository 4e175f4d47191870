"""The quickstart's claims, end to end (configs/quickstart.yaml, then configs/biased.yaml into the same
folder): an SFT model that learnt a demonstrator's position bias, then RLHF against a reward model trained on
checked pairs (PPO with three seeds), DPO on the same pairs, RLOO with three seeds and GRPO with the task's
verifier as its reward. On the 296 distinct prompts SFT held out (none trained on by any stage), each raises
the verifier's accuracy above SFT's, the paired 95% CI above zero, and the seeded claims survive their seeds.
Then the report as a reader sees it, the model cards, and the README's labelling commands."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_card import section

from hftune import pipeline

REPO = Path(__file__).resolve().parent.parent


def readme_commands(*starts: str) -> list[list[str]]:
    """The README's commands that begin with one of `starts` (continuation lines joined, comments dropped),
    as argv lists, in README order."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    lines = [line.split("  #")[0].strip() for line in text.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith(starts)]


def rank_by_the_verifier(address: str, prompts: int) -> int:
    """Rank every item the label page serves as a checker would (correct replies first, wrong ones after),
    through the page's own API with the write token it embeds; an item whose replies are all right or all
    wrong is skipped. Returns how many items were ranked."""
    import urllib.request

    from hftune.evaluation.verifiers import verify_answer

    page = urllib.request.urlopen(address).read().decode()
    token = re.search(r'<meta name="hftune-write-token" content="([^"]+)">', page).group(1)

    def call(path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"X-Hftune-Token": token, "Content-Type": "application/json"}
        request = urllib.request.Request(address.rstrip("/") + path, data=data, headers=headers)
        return json.loads(urllib.request.urlopen(request).read())

    ranked = 0
    state = call("/api/next?labeller=readme")
    assert state["total"] == prompts, state
    while state["item"] is not None:
        item = state["item"]
        prompt = item["prompt"] if isinstance(item["prompt"], str) else item["prompt"][-1]["content"]
        right = [verify_answer(prompt, c["text"]) for c in item["completions"]]
        body = {"labeller": "readme", "item": item["id"], "action": "skip"}
        if 0 < sum(right) < len(right):
            body |= {"action": "rank", "ranks": [1 if r else 2 for r in right]}
            ranked += 1
        state = call("/api/submit", body)
    return ranked


def label_then_train_a_reward_model_as_the_readme_says(run: Path, scratch: Path) -> None:
    """README's labelling loop, as written (only `--port 0` added, so the test takes a free port), in a
    folder where `runs/quickstart` is this test's quickstart run: `hftune label` with `order: uncertainty`
    (the items the reward model is least sure of first), a person ranking through the page's API, `label
    auto` (the reward model ranks the same items), `label stats`, then a reward model and PPO on them."""
    from hftune.label import items as label_items

    label, auto, stats, reward, ppo = readme_commands(
        "hftune label --model_name_or_path",
        "hftune label auto",
        "hftune label stats",
        "hftune reward --config configs/biased",
        "hftune ppo --config configs/biased",
    )
    (scratch / "runs").mkdir(parents=True)
    (scratch / "runs" / "quickstart").symlink_to(run)
    for shared in ("configs", "data_recipes", "eval"):
        (scratch / shared).symlink_to(REPO / shared)
    hftune = [sys.executable, "-m", "hftune"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [*hftune, *label[1:], "--port", "0"], cwd=scratch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env,
    )  # fmt: skip
    try:
        output = []
        while not (output and output[-1].startswith("label: open ")):
            line = server.stdout.readline()
            assert line, "hftune label stopped:\n" + "".join(output)
            output.append(line)
        ranked = rank_by_the_verifier(output[-1].split()[2], int(label[label.index("--max_prompts") + 1]))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(60)
    assert ranked >= 5, ranked
    # Active labelling: the first 20 items served are ones the reward model is less sure of than the first
    # 20 of the recipe (its margin: the top completion's score minus the best other text's).
    items = json.loads((run / "labels" / "items.json").read_text())["items"]
    served = label_items.mean_margin(items[:20])
    in_recipe_order = label_items.mean_margin(sorted(items, key=lambda item: item["position"])[:20])
    print(
        f"mean reward-model margin, first 20 items: served {served:.3f}, recipe order {in_recipe_order:.3f}"
    )
    assert served < in_recipe_order, (served, in_recipe_order)
    told = {}
    for name, argv in (("auto", auto), ("stats", stats), ("reward", reward), ("ppo", ppo)):
        done = subprocess.run([*hftune, *argv[1:]], cwd=scratch, text=True, capture_output=True, env=env)
        assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
        told[name] = done.stdout
    assert "reward model" in told["stats"], told["stats"]  # people against the reward model
    manifest = json.loads((run / "reward-labelled" / "manifest.json").read_text())
    data = manifest["data"]  # one row a ranking; some of their prompts held out for the RM's accuracy
    assert data["n_source_rows"] == data["trained_prompts"] + data["held_out_prompts"] == ranked, data
    assert f"{ranked} rankings by 1 labeller" in data["description"], data
    assert (run / "ppo-labelled" / "manifest.json").is_file()


def words(text: str) -> str:
    """Text as its words, one space apart (a terminal's line breaks and list dashes, and the reports' " · "
    between metrics, are layout, not words)."""
    return " ".join(w for w in text.split() if w not in ("-", "·"))


def the_report_reads_on_any_screen(eval_dir: Path, terminal: str, screens: Path) -> None:
    """The quickstart's report.html in headless Chromium, on a 1400 px desktop and a 390 px phone: the verdict
    block says what the terminal said (the same words and numbers), every seeded variant is in every plot,
    the page never scrolls sideways, and a wide table keeps its first column in view when scrolled.
    Full-page screenshots of both land in `screens` (or $HFTUNE_SCREENSHOTS, to keep them)."""
    from report_page import (
        browser_ready,
        driver,
        first_column_stays,
        open_page,
        page_overflow,
        screenshot_full,
    )

    if not browser_ready():
        pytest.skip("needs selenium, chromium and chromedriver")
    from selenium.webdriver.common.by import By

    results = json.loads((eval_dir / "results.json").read_text())
    seeded = {
        name: [r["run"] for r in v["seed_runs"]]
        for name, v in results["variants"].items()
        if v.get("seed_runs")
    }
    assert seeded, "the quickstart trains PPO with several seeds"
    screens = Path(os.environ.get("HFTUNE_SCREENSHOTS") or screens)
    screens.mkdir(parents=True, exist_ok=True)
    told = words(terminal)
    for width, name in ((1400, "desktop"), (390, "phone")):
        with driver(width) as chrome:
            open_page(chrome, eval_dir / "report.html")
            assert chrome.find_element(By.TAG_NAME, "body").get_attribute("data-plots-ok") == "true"
            claims = chrome.find_elements(By.CSS_SELECTOR, "section#verdict li")
            assert len(claims) == len(results["verdicts"]) >= 3
            for claim in claims:
                assert words(claim.text) in told, (claim.text, terminal)
            figures = chrome.find_elements(By.CSS_SELECTOR, "section#plots figure")
            assert len(figures) >= 5
            for figure in figures:  # every plot is drawn, with each seeded variant (and its runs, per prompt)
                drawn = set(json.loads(figure.get_attribute("data-variants") or "[]"))
                assert set(seeded) <= drawn, (figure.text, drawn)
                title = figure.find_element(By.TAG_NAME, "h3").text
                if title in ("Reward per prompt", "Response length", "Reward vs KL to SFT"):
                    assert {run for runs in seeded.values() for run in runs} <= drawn, (figure.text, drawn)
            assert page_overflow(chrome) <= 0, name
            if width < 1000:
                assert first_column_stays(chrome, "table.stats"), name
            screenshot_full(chrome, screens / f"report-{name}.png")
    print(f"report screenshots: {screens}")


def every_card_reads(run: Path) -> None:
    """`hftune card --eval` on every model the quickstart trained: each loads with huggingface_hub, with a
    license, model-index results for each evaluated model (a seed run: its own numbers, not the mean), the
    sections a reader decides on, and an adapter's base_model only where it is a Hub id (the quickstart's
    lineage starts from scratch: until its SFT model is pushed, an adapter names it with --base-model-id)."""
    from huggingface_hub import ModelCard

    from hftune.publish import card

    results = json.loads((run / "eval" / "results.json").read_text())
    seeds = {r["model"]: r["run"] for r in results["variants"]["rlhf"]["seed_runs"]}
    for key in ("pretrain", "sft", "reward", "ppo-seed1", "ppo-seed2", "ppo-seed3", "dpo"):
        folder = run / key
        text = card.render(folder, eval_dir=run / "eval")
        data = ModelCard(text).data
        assert data.license == "other" and "No license was given" in text, key
        for title in ("Intended use", "Out-of-scope use", "Limitations", "Lineage", "Training config"):
            assert section(text, title), (key, title)
        adapter = (folder / "adapter_config.json").is_file()
        assert data.base_model is None, (key, data.base_model)  # no Hub model behind a from-scratch lineage
        if key == "reward":
            assert section(text, "Reward model accuracy") and not data.eval_results
            continue
        numbers = {r.metric_type: r.metric_value for r in data.eval_results}
        seed_run = seeds.get(str(folder)) or seeds.get(os.path.relpath(folder))
        if seed_run:  # a seed's card: its own verifier accuracy, beside the variant's mean in the table
            own = [
                json.loads(line)["variants"][seed_run]["verified"]
                for line in (run / "eval" / "samples.jsonl").read_text().splitlines()
            ]
            assert numbers["verifier"] == pytest.approx(sum(own) / len(own)), key
            assert f"**{seed_run} (this model)**" in section(text, "Evaluation")
        assert "verifier" in numbers and section(text, "Evaluation"), key
        if key.startswith(("ppo", "dpo")):
            assert section(text, "Verdict") and adapter, key
            named = ModelCard(
                card.render(folder, base_model_id="me/quickstart-sft", license="apache-2.0")
            ).data
            assert named.base_model == "me/quickstart-sft" and named.base_model_relation == "adapter"
            assert named.license == "apache-2.0"


def gain(variant: dict, metric: str) -> dict:
    return variant["vs_baseline"][metric]


def assert_kl_held(run: Path, keys: list[str]) -> None:
    """Every RL run trained to its last step with no alarm, its KL to SFT under `max_kl` at every step."""
    for key in keys:
        folder = run / key
        assert "alarm" not in json.loads((folder / "manifest.json").read_text())["metrics"], key
        max_kl = yaml.safe_load((folder / "config.hftune.yaml").read_text())["max_kl"]
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        kl = [r.get("objective/kl", r.get("kl")) for r in rows]
        assert None not in kl and max(kl) < max_kl, (key, max(kl), max_kl)


@pytest.mark.e2e
@pytest.mark.slow(330)
def test_rlhf_and_dpo_fix_the_biased_demonstrations_on_held_out_prompts(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.chdir(REPO)  # as the rerun below: relative paths are read from here in both
    pipeline.run(str(REPO / "configs/quickstart.yaml"), output_dir=str(run))
    terminal = capsys.readouterr().out
    # The report as a reader opens it, on a desktop and on a phone; the cards of every model trained.
    the_report_reads_on_any_screen(run / "eval", terminal, tmp_path / "screens")
    every_card_reads(run)
    results = json.loads((run / "eval" / "results.json").read_text())
    audit = results["contamination"]
    # The 313 rows SFT held out hold 296 distinct prompts (prompt and reference): each is evaluated once.
    assert results["n_prompts"] == results["duplicates"]["n_distinct"] == 296, results["duplicates"]
    assert audit["clean_prompts"] == 296 and {s["stage"] for s in audit["stages"].values()} >= {"sft", "ppo"}
    v = results["variants"]
    base, sft, ppo, dpo = v["base"], v["sft"], v["rlhf"], v["dpo"]

    # base < SFT < RLHF on the verifier (the ground truth) and on the reward model.
    for metric in ("verifier", "reward"):
        means = [x["metrics"][metric]["mean"] for x in (base, sft, ppo)]
        assert means == sorted(means) and len(set(means)) == 3, (metric, means)
        claim = gain(ppo, metric)
        assert claim["ci_low"] > 0 and claim["seeds"]["n"] == 3 and claim["survives_seeds"], (metric, claim)
    assert ppo["trained_against_reward_model"] is True
    # The verdict results.json records (and the terminal, report.md and report.html print), on the verifier.
    claim = {v["claim"]: v for v in results["verdicts"]}["rlhf vs sft"]
    assert claim["metric"] == "verifier" and claim["seeds"]["n"] == 3 and claim["word"] == "holds", claim
    # What RL costs, measured: it moved away from SFT, and the reward model is partly gamed (exact
    # answers fall while the verifier's accuracy rises).
    assert ppo["metrics"]["kl_to_sft"]["mean"] > 0
    assert_kl_held(run, ["ppo-seed1", "ppo-seed2", "ppo-seed3"])

    # DPO beside it, on the same pairs, never scored by the reward model it did not train against.
    assert dpo["metrics"]["verifier"]["n"] == 296
    for metric in ("verifier", "reward"):
        assert gain(dpo, metric)["ci_low"] > 0, (metric, gain(dpo, metric))
        assert dpo["metrics"][metric]["mean"] > sft["metrics"][metric]["mean"]
    assert dpo["trained_against_reward_model"] is False
    metrics = json.loads((run / "dpo" / "metrics.json").read_text())
    assert metrics["heldout/rewards/accuracies"] > 0.8
    assert metrics["heldout/logps/chosen"] > metrics["heldout_before/logps/chosen"]  # not the squeeze

    # `make quickstart` again: every stage up to date, answered from the ledger without importing torch
    # (about 0.5 s alone; the bound leaves room for a suite running in parallel).
    script = (
        "import sys\n"
        "from hftune import cli\n"
        f"code = cli.main(['pipeline', '--config', 'configs/quickstart.yaml', '--output_dir', '{run}'])\n"
        "print('imported:', [m for m in ('torch', 'transformers', 'trl') if m in sys.modules])\n"
        "sys.exit(code)\n"
    )
    started = time.time()
    again = subprocess.run([sys.executable, "-c", script], cwd=REPO, text=True, capture_output=True)
    assert again.returncode == 0 and "imported: []" in again.stdout, (again.stdout, again.stderr)
    assert time.time() - started < 5, time.time() - started
    assert again.stdout.count(" skip ") == 8, again.stdout  # pretrain, sft, reward, 3 ppo seeds, dpo, eval

    # configs/biased.yaml into the same folder: the shared stages are skipped, RLOO and GRPO train.
    before = json.loads((run / "pipeline.json").read_text())
    pipeline.run(str(REPO / "configs/biased.yaml"), output_dir=str(run))
    after = json.loads((run / "pipeline.json").read_text())
    shared = ["pretrain", "sft", "reward", "ppo-seed1", "ppo-seed2", "ppo-seed3", "dpo"]
    assert all(after[k] == before[k] for k in shared), "a stage the quickstart trained was trained again"
    assert {"rloo-seed1", "rloo-seed2", "rloo-seed3", "grpo"} <= set(after)
    v = json.loads((run / "eval" / "results.json").read_text())["variants"]
    rloo, grpo = v["rloo"], v["grpo"]
    for metric in ("verifier", "reward"):
        claim = gain(rloo, metric)
        assert claim["ci_low"] > 0 and claim["survives_seeds"], (metric, claim)
    assert_kl_held(run, ["rloo-seed1", "rloo-seed2", "rloo-seed3", "grpo"])
    assert gain(grpo, "verifier")["ci_low"] > 0, gain(grpo, "verifier")
    assert grpo["trained_against_reward_model"] is False  # its reward was the verifier alone

    # After `make quickstart`, the README's labelling commands work as written.
    label_then_train_a_reward_model_as_the_readme_says(run, tmp_path / "readme")
