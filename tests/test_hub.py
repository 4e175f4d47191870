"""Publishing: `hftune card` and `hftune push`. The dry run stages exactly the files a Hub user needs, with a
card whose metadata the Hub's own parser reads; the real upload goes through huggingface_hub's own client code
against a fake Hub behind its HTTP transport (one commit listing every file, the token only in the
Authorization header and nowhere else); user errors exit 2 with one line."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hftune import cli
from hftune.publish import card, hub

REPO = Path(__file__).resolve().parent.parent
TOKEN = "hf_" + "FakeT0kenForTests" * 2  # shaped like a real token, so the value patterns apply too
REPO_ID = "someone/tiny-sft"
# What a LoRA SFT folder uploads: adapter, tokenizer + chat template, card, manifest, config, metrics.
ADAPTER_UPLOAD = {
    "adapter_model.safetensors",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "README.md",
    "manifest.json",
    "config.hftune.yaml",
    "metrics.json",
}


@pytest.fixture
def artifact(lora_sft, tmp_path) -> Path:
    """A copy of the SFT folder with what must never be uploaded beside it: pickles, a checkpoint, a work
    folder, logs, and the token pasted into the config and the metrics."""
    folder = tmp_path / "sft"
    shutil.copytree(lora_sft, folder)
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "optimizer.pt").write_bytes(b"pickle")
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "adapter_model.safetensors").write_bytes(b"old")
    (tmp_path / "sft.work").mkdir()
    config = yaml.safe_load((folder / "config.hftune.yaml").read_text())
    config["run_name"] = f"run-{TOKEN}"
    (folder / "config.hftune.yaml").write_text(yaml.safe_dump(config))
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "note": TOKEN}))
    return folder


def error_line(capsys_or_fd) -> str:
    err = capsys_or_fd.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


# ------------------------------------------------------------------------------------------------- cards


def test_dry_run_stages_exactly_the_upload_with_a_card_the_hub_parses(
    artifact, tmp_path, monkeypatch, capsys
):
    from huggingface_hub import ModelCard

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "staged"
    assert cli.main(["push", str(artifact), "--repo-id", REPO_ID, "--dry-run", str(out)]) == 0

    assert {p.name for p in out.iterdir()} == ADAPTER_UPLOAD
    assert (out / "manifest.json").read_bytes() == (artifact / "manifest.json").read_bytes()
    assert (out / "adapter_model.safetensors").read_bytes() == (
        artifact / "adapter_model.safetensors"
    ).read_bytes()
    for path in out.iterdir():
        assert TOKEN.encode() not in path.read_bytes(), path.name

    data = ModelCard((out / "README.md").read_text()).data
    assert data.base_model == "tiny:llama"  # the root of the lineage, as the SFT manifest names it
    assert data.library_name == "peft"
    assert data.pipeline_tag == "text-generation"
    assert {"hftune", "trl", "peft", "lora", "sft", "tiny_alpaca"} <= set(data.tags)
    assert not data.datasets  # a local recipe is a tag, not a Hub dataset
    text = (out / "README.md").read_text()
    assert "cannot be loaded from the Hub" in text  # the adapter's base is a local folder
    assert f'PeftModel.from_pretrained(base, "{REPO_ID}")' in text
    assert "No evaluation was given" in text
    assert "eval_loss" in text and "learning_rate: 0.005" in text
    assert TOKEN not in capsys.readouterr().err


def test_base_model_id_rewrites_the_uploaded_adapter_config_only(artifact, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "staged"
    hub.push(artifact, REPO_ID, dry_run=out, base_model_id="someone/tiny-llama")
    staged = json.loads((out / "adapter_config.json").read_text())
    assert staged["base_model_name_or_path"] == "someone/tiny-llama"
    original = json.loads((artifact / "adapter_config.json").read_text())
    assert original["base_model_name_or_path"] != "someone/tiny-llama"
    assert {k: v for k, v in staged.items() if k != "base_model_name_or_path"} == {
        k: v for k, v in original.items() if k != "base_model_name_or_path"
    }
    text = (out / "README.md").read_text()
    assert ModelCard(text).data.base_model == "someone/tiny-llama"
    assert "cannot be loaded from the Hub" not in text


def test_card_metadata_names_hub_datasets_and_the_local_base_license(lora_sft, tmp_path):
    from huggingface_hub import ModelCard

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# A base model\n")
    folder = tmp_path / "sft"
    shutil.copytree(lora_sft, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["parents"] = [{"role": "base_model", "name_or_path": str(base)}]
    # As `write_json(default=str)` records a recipe's `data.Source`.
    manifest["data"]["source"] = "Source(hub='tatsu-lab/alpaca', path=None, split='train', config=None)"
    (folder / "manifest.json").write_text(json.dumps(manifest))

    data = ModelCard(card.render(folder)).data
    assert data.base_model == str(base)
    assert data.license == "apache-2.0"
    assert data.datasets == ["tatsu-lab/alpaca"]
    assert "tiny_alpaca" not in data.tags


def test_card_tabulates_an_eval_folder_with_intervals(lora_sft, tmp_path):
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()

    def stat(mean):
        return {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "n": 40}

    results = {
        "baseline": "sft",
        "variants": {
            "sft": {"metrics": {"reward": stat(0.2), "verifier": stat(0.1), "length": stat(9.0)}},
            "rlhf": {"metrics": {"reward": stat(0.9), "verifier": stat(0.2), "kl_to_sft": stat(1.1)}},
        },
        "win_rates": {"rlhf": {"sft": stat(0.7)}, "sft": {"rlhf": stat(0.3)}},
    }
    (eval_dir / "results.json").write_text(json.dumps(results))
    text = card.render(lora_sft, eval_dir=eval_dir)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    # The report's formatting: one precision per cell, from its largest magnitude.
    assert "0.900 [0.800, 1.000]" in rows["reward"] and "0.200 [0.100, 0.300]" in rows["reward"]
    assert "0.700 [0.600, 0.800]" in rows["win vs sft ↑"]
    assert "1.100 [1.000, 1.200]" in rows["kl_to_sft"] and rows["kl_to_sft"].count("| - |") == 1
    assert list(rows).index("reward") < list(rows).index("win vs sft ↑") < list(rows).index("verifier")
    assert "n (prompts per cell): 40" in text
    assert "does not list" in text  # this eval did not compare the SFT folder itself


def test_card_shows_the_reports_metrics_table_escaped(lora_sft, tmp_path):
    from hftune.evaluation.report import render_markdown

    evil = "<img src=x onerror=alert(1)>"

    def stat(mean):
        return {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "n": 8}

    metrics = ("zz_custom", "length", "kl_to_sft", "verifier", "reward", "expected_reward", "aa_custom")
    results = {
        "baseline": "sft",
        "metric_info": {"reward": {"decoding": "greedy", "higher_is_better": True, "description": "score"}},
        "variants": {name: {"metrics": {m: stat(0.5) for m in metrics}} for name in ("sft", evil)},
        "win_rates": {evil: {"sft": stat(0.6)}, "sft": {evil: stat(0.4)}},
    }
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "results.json").write_text(json.dumps(results))
    text = card.render(lora_sft, eval_dir=eval_dir)
    report = render_markdown(results, [])
    for page in (text, report):
        assert "<img" not in page and "onerror=alert(1)&gt;" in page

    evaluation = text[text.index("## Evaluation") : text.index("## How to load")].splitlines()
    card_rows = [line.split(" | ")[0].removeprefix("| ") for line in evaluation if line.startswith("| ")]
    assert card_rows[0] == "metric"
    report_header = next(line for line in report.splitlines() if line.startswith("| variant | reward"))
    assert card_rows[1:] == report_header.strip("| ").split(" | ")[1:]
    assert card_rows[1:3] == ["reward ↑", "win vs sft ↑"] and card_rows[-2:] == ["aa_custom", "zz_custom"]


@pytest.mark.slow  # the `chain` fixture trains a full SFT and a reward model (shared with the RL tests)
def test_card_of_a_reward_model_on_a_full_model_chain(chain):
    from huggingface_hub import ModelCard

    text = card.render(chain["rm"])
    data = ModelCard(text).data
    assert data.pipeline_tag == "text-classification"
    assert data.base_model == chain["sft"]  # the LoRA reward model loads on the full-FT SFT folder
    assert data.base_model_relation == "adapter"
    assert {"reward-model", "sft"} <= set(data.tags)
    lineage = text[text.index("## Lineage") : text.index("## Evaluation")]
    assert lineage.index("| supervised fine-tuning |") < lineage.index("| reward model |")
    assert "accuracy" in lineage
    assert "AutoModelForSequenceClassification" in text


# ------------------------------------------------------------------------------------------------ upload


@dataclass
class Call:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class FakeHub:
    """Just enough of the Hub's HTTP API for `create_repo` and `create_commit`: repo creation, README
    validation, the preupload check (safetensors go to LFS), the LFS batch API with a basic transfer to a
    fake storage host, LFS verify, and the ndjson commit endpoint."""

    STORAGE = "storage.fake-hub.test"

    def __init__(self, http):
        self.http = http
        self.fail: dict[str, int] = {}  # "create" / "storage" -> the status that request gets
        self.calls: list[Call] = []
        self.lfs_uploads: dict[str, bytes] = {}
        self.commits: list[list[dict]] = []

    def json(self, data, status=200):
        return self.http.Response(status, json=data)

    def handle(self, request):
        body = request.read()
        self.calls.append(Call(request.method, str(request.url), dict(request.headers), body))
        path, method = request.url.path, request.method
        if request.url.host == self.STORAGE and method == "PUT":
            if "storage" in self.fail:
                return self.http.Response(self.fail["storage"], text="AccessDenied")
            self.lfs_uploads[path.rsplit("/", 1)[-1]] = body
            return self.http.Response(200)
        if method == "POST" and path == "/api/repos/create":
            if "create" in self.fail:
                return self.json(
                    {"error": "Invalid credentials in Authorization header"}, self.fail["create"]
                )
            return self.json({"url": f"https://huggingface.co/{REPO_ID}", "name": REPO_ID})
        if method == "POST" and path == "/api/validate-yaml":
            return self.json({"errors": [], "warnings": []})
        if method == "POST" and path == f"/api/models/{REPO_ID}/preupload/main":
            files = json.loads(body)["files"]
            modes = [
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                    "shouldIgnore": False,
                    "oid": None,
                }
                for f in files
            ]
            return self.json({"files": modes})
        if method == "POST" and path == f"/{REPO_ID}.git/info/lfs/objects/batch":
            objects = [
                {
                    "oid": o["oid"],
                    "size": o["size"],
                    "authenticated": True,
                    "actions": {
                        "upload": {"href": f"https://{self.STORAGE}/upload/{o['oid']}"},
                        "verify": {"href": f"https://huggingface.co/{REPO_ID}.git/info/lfs/objects/verify"},
                    },
                }
                for o in json.loads(body)["objects"]
            ]
            return self.json({"transfer": "basic", "objects": objects})
        if method == "POST" and path == f"/{REPO_ID}.git/info/lfs/objects/verify":
            return self.json({"success": True})
        if method == "POST" and path == f"/api/models/{REPO_ID}/commit/main":
            self.commits.append([json.loads(line) for line in body.decode().splitlines() if line.strip()])
            oid = "c0ffee" * 6 + "abcd"
            return self.json(
                {
                    "commitUrl": f"https://huggingface.co/{REPO_ID}/commit/{oid}",
                    "commitOid": oid,
                    "success": True,
                }
            )
        return self.json({"error": f"fake hub: no route for {method} {path}"}, 404)


@pytest.fixture
def fake_hub(monkeypatch):
    """huggingface_hub's real client code with its HTTP client built on a mock transport: every request
    it sends (whichever of httpx / httpx2 this version uses) is answered by FakeHub, nothing leaves."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    http = getattr(_http, "httpx2", None) or getattr(_http, "httpx", None)
    if http is None or not hasattr(_http, "hf_request_event_hook"):
        pytest.skip("this huggingface_hub does not build its HTTP client with httpx")
    server = FakeHub(http)
    # The transport is fake, so the tests' offline mode has nothing to protect here; Xet uploads run in
    # Rust outside Python's HTTP layer, so this test takes the LFS path (HF_HUB_DISABLE_XET=1 does the same).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)

    def client():
        return http.Client(
            transport=http.MockTransport(server.handle),
            event_hooks={
                "request": [_http.hf_request_event_hook]
            },  # as the default client, minus the network
            follow_redirects=True,
        )

    huggingface_hub.set_client_factory(client)
    try:
        yield server
    finally:
        huggingface_hub.set_client_factory(_http.default_client_factory)


@pytest.fixture
def all_logs(caplog):
    """Every log record at DEBUG, huggingface_hub's included (it does not propagate to the root logger)."""
    hub_logger = logging.getLogger("huggingface_hub")
    old_level = hub_logger.level
    hub_logger.setLevel(logging.DEBUG)
    hub_logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    try:
        yield caplog
    finally:
        hub_logger.removeHandler(caplog.handler)
        hub_logger.setLevel(old_level)


def test_push_is_one_commit_through_the_hub_client_and_the_token_stays_in_the_header(
    artifact, fake_hub, monkeypatch, capfd, all_logs
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    staged_seen: dict[str, bytes] = {}
    real_upload = hub.upload

    def spy(staged, files, *args, **kwargs):
        staged_seen.update({p.name: p.read_bytes() for p in staged.iterdir()})
        return real_upload(staged, files, *args, **kwargs)

    monkeypatch.setattr(hub, "upload", spy)
    code = cli.main(["push", str(artifact), "--repo-id", REPO_ID, "--private", "--commit-message", "tiny"])
    out, err = capfd.readouterr()
    assert code == 0, err

    # The staging folder held exactly the upload, and no file in it holds the token.
    assert set(staged_seen) == ADAPTER_UPLOAD
    assert all(TOKEN.encode() not in data for data in staged_seen.values())

    # One repo creation (private), then one commit that lists every staged file.
    calls = fake_hub.calls
    create = [c for c in calls if c.url.endswith("/api/repos/create")]
    assert len(create) == 1 and json.loads(create[0].body)["visibility"] == "private"
    assert len(fake_hub.commits) == 1
    header, *ops = fake_hub.commits[0]
    assert header["value"]["summary"] == "tiny"
    assert {op["value"]["path"] for op in ops} == ADAPTER_UPLOAD
    # Small files went inline, the weights through LFS: the bytes PUT to storage are the staged file's.
    for op in ops:
        data = staged_seen[op["value"]["path"]]
        if op["key"] == "lfsFile":
            assert op["value"]["oid"] == hashlib.sha256(data).hexdigest()
            assert fake_hub.lfs_uploads[op["value"]["oid"]] == data
        else:
            assert op["key"] == "file" and base64.b64decode(op["value"]["content"]) == data
    assert {op["value"]["path"] for op in ops if op["key"] == "lfsFile"} == {"adapter_model.safetensors"}

    # The token went to the Hub in the Authorization header, to storage not at all, and nowhere else
    # (huggingface_hub also fetches its public agent registry, unauthenticated; the fake answers 404).
    for call in calls:
        if FakeHub.STORAGE in call.url or call.url.endswith("/api/agent-harnesses"):
            assert "authorization" not in call.headers
        else:
            assert call.headers["authorization"] == f"Bearer {TOKEN}", call.url
        assert TOKEN.encode() not in call.body
        assert TOKEN not in call.url
    assert all_logs.records, "expected log records (staging, repo, commit)"
    for text in (out, err, all_logs.text, *(str(r.args) for r in all_logs.records)):
        assert TOKEN not in text
    assert f"https://huggingface.co/{REPO_ID}/commit/" in out


@pytest.mark.parametrize(
    ("where", "status", "expected"),
    [("create", 401, "hf auth login"), ("storage", 403, "Error while uploading 'adapter_model.safetensors'")],
)
def test_hub_errors_are_one_line_without_the_token(
    artifact, fake_hub, monkeypatch, capfd, where, status, expected
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake_hub.fail[where] = status
    assert cli.main(["push", str(artifact), "--repo-id", REPO_ID]) == 2
    out, err = capfd.readouterr()
    line = err[err.index("hftune: error:") :].strip()  # after huggingface_hub's progress bar, if any
    assert "\n" not in line and line.startswith("hftune: error: push to someone/tiny-sft failed"), err
    assert expected in line, line
    assert str(status) in line
    assert "Traceback" not in err and TOKEN not in err + out
    assert not fake_hub.commits


def test_push_without_a_token_exits_2_saying_how_to_log_in(artifact, monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    assert cli.main(["push", str(artifact), "--repo-id", REPO_ID]) == 2
    line = error_line(capsys)
    assert "no Hugging Face token" in line and "HF_TOKEN" in line and "hf auth login" in line


def test_push_user_errors_exit_2_with_one_line(artifact, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(artifact, unfinished)
    (unfinished / "manifest.json").unlink()
    cases = [
        (
            ["push", str(unfinished), "--repo-id", REPO_ID, "--dry-run", str(tmp_path / "o")],
            "no manifest.json",
        ),
        (["push", str(tmp_path / "sft.work"), "--repo-id", REPO_ID], "work folder"),
        (["push", str(artifact), "--repo-id", "not a repo"], "expected ORG/NAME"),
        (["push", str(artifact), "--repo-id", REPO_ID, "--dry-run", str(artifact)], "outside"),
        (
            ["push", str(artifact), "--repo-id", REPO_ID, "--dry-run", str(tmp_path / "o"), "--eval", "nope"],
            "results.json",
        ),
        (
            [
                "push",
                str(artifact),
                "--repo-id",
                REPO_ID,
                "--dry-run",
                str(tmp_path / "o"),
                "--base-model-id",
                "/x",
            ],
            "Hub model id",
        ),
        (["card", str(unfinished)], "no manifest.json"),
    ]
    for argv, expected in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("hftune: error:") and expected in err[0], (argv, err)
    assert (artifact / "manifest.json").is_file()  # --dry-run never replaced the artifact itself
    assert not (tmp_path / "o").exists()
