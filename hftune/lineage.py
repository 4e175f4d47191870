"""The lineage of an artifact: every model behind it, read from the `parents` of each `manifest.json`
(base -> SFT -> reward model -> PPO, or a random initialisation for a line pretrained from scratch). The
manifests are the user's files by the time they are read: each is checked, and a broken one is a
UserError that names it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftune import artifacts
from hftune.errors import UserError

# Roles a manifest gives the model a stage started from; every other parent (a reward model) is a side input.
_MAIN_ROLES = ("base_model", "sft_model", "model", "adapter", "policy")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def is_hub_id(name: str) -> bool:
    """A name a Hub user can load: `org/name` or `name`, and not a folder on this machine (nor `tiny:ARCH`:
    a Hub id has no `:`)."""
    if name.startswith((".", "/", "~")) or Path(name).exists():
        return False
    return bool(_HUB_ID.match(name)) and not name.endswith((".", "-"))


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's manifest.json, checked to be one hftune wrote (None: there is none)."""
    path = Path(folder) / artifacts.MANIFEST
    if not path.is_file():
        return None
    manifest = artifacts.read_json(path, ", so not a manifest hftune wrote")
    problem = _manifest_problem(manifest)
    if problem:
        raise UserError(f"{path}: {problem}, so not a manifest hftune wrote (was it edited by hand?)")
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    if not isinstance(manifest.get("stage"), str) or not manifest["stage"]:
        return "no `stage` name"
    for key in ("metrics", "data", "libraries"):
        if not isinstance(manifest.get(key) or {}, dict):
            return f"`{key}` is not an object"
    parents = manifest.get("parents") or []
    if not isinstance(parents, list) or not all(isinstance(p, dict) for p in parents):
        return "`parents` is not a list of objects"
    for ref in parents:
        name = ref.get("from_scratch") or ref.get("name_or_path")
        if not isinstance(name, str) or not name:
            return "a parent has neither `name_or_path` nor `from_scratch`"
    return None


@dataclass
class Node:
    """One model of the lineage: a finished hftune stage (with its manifest), a base model, or the random
    initialisation a from-scratch pretraining started from."""

    name: str  # as the manifest that mentions it names it
    manifest: dict[str, Any] | None = None
    folder: Path | None = None
    role: str | None = None
    note: str | None = None  # e.g. "changed since" when the recorded manifest hash no longer matches
    from_scratch: str | None = None  # the architecture, for the random initialisation of a pretraining

    @property
    def stage(self) -> str:
        if self.from_scratch:
            return "init"
        return (self.manifest or {}).get("stage") or "base"


@dataclass
class Lineage:
    nodes: list[Node] = field(default_factory=list)  # parents before children; the folder itself is last

    @property
    def root(self) -> Node:
        """The model the policy line started from: follow the main parent until there is none. For a line
        pretrained from scratch, the pretraining stage (`from_scratch` says so)."""
        node = self.nodes[-1]
        by_name = {_key(n.name): n for n in self.nodes}
        while node.manifest:
            parents = [
                p
                for p in node.manifest.get("parents") or []
                if p.get("role") in _MAIN_ROLES and p.get("name_or_path")
            ]
            if not parents:
                break
            node = by_name.get(_key(parents[0]["name_or_path"]), Node(parents[0]["name_or_path"]))
        return node

    @property
    def from_scratch(self) -> str | None:
        """The architecture the root was initialised with at random, if it was pretrained from scratch."""
        for ref in (self.root.manifest or {}).get("parents") or []:
            if ref.get("from_scratch"):
                return str(ref["from_scratch"])
        return None

    def local_only(self) -> list[str]:
        return [n.name for n in self.nodes if not n.manifest and not n.from_scratch and not is_hub_id(n.name)]


def _key(name: str) -> str:
    return os.path.realpath(name) if Path(name).exists() else name


def lineage(folder: str | os.PathLike) -> Lineage:
    """Every model behind `folder`, walking `parents` recursively (each model once)."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise UserError(f"{folder} is a file, not a stage folder (a folder with manifest.json)")
    manifest = read_manifest(folder)
    if manifest is None:
        raise UserError(
            f"{folder}: no manifest.json, so not a finished hftune stage (still running, or failed?)"
        )
    out = Lineage()
    seen: set[str] = set()

    def visit(node: Node, depth: int) -> None:
        if depth > 16:
            raise UserError(f"{folder}: manifests name each other as parents more than 16 deep (a cycle?)")
        for ref in (node.manifest or {}).get("parents") or []:
            name = _ref_name(ref)
            if _key(name) in seen:
                continue
            seen.add(_key(name))
            visit(_parent_node(ref), depth + 1)
        out.nodes.append(node)

    seen.add(_key(str(folder)))
    visit(Node(str(folder), manifest, folder, role="this model"), 0)
    return out


def _ref_name(ref: dict[str, Any]) -> str:
    if ref.get("from_scratch"):
        return f"random {ref['from_scratch']} weights"
    return ref["name_or_path"]


def _parent_node(ref: dict[str, Any]) -> Node:
    if ref.get("from_scratch"):
        return Node(_ref_name(ref), role=ref.get("role"), from_scratch=str(ref["from_scratch"]))
    name = ref["name_or_path"]
    path = Path(name)
    node = Node(name, role=ref.get("role"))
    if (path / artifacts.MANIFEST).is_file():
        node.manifest, node.folder = read_manifest(path), path
        recorded = ref.get("manifest_sha256")
        if recorded and recorded != artifacts.manifest_sha256(path):
            node.note = "changed since it was used (its manifest differs from the recorded hash)"
    elif ref.get("stage"):
        # The parent was an hftune stage when it was used, but its folder is not here any more.
        node.note = f"{ref['stage']} stage; folder not found on this machine"
    return node
