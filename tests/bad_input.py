"""The harness every bad-input test uses: run `hftune` in-process on a bad input and check that it is
refused the way a user needs it to be.

`refused(argv, root, mentions=[...])` runs `hftune ARGV` with `root` as the current folder and asserts:
- the exit code (2 unless told otherwise),
- one readable message on stderr that names every string in `mentions` (the file, the key, the row),
- no Python traceback (an exception that escapes `cli.main` fails the test by itself),
- every file and folder under `root` that existed before the run is byte-identical after it, and nothing
  was added (no half-written artifact, no temporary file, no lock file).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root`: a file's sha256 (a symlink's target, a folder's '<dir>')."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "<dir>"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str], cwd: Path, capsys) -> tuple[int, str, str]:
    from hftune import cli

    capsys.readouterr()  # drop anything printed before
    old = Path.cwd()
    os.chdir(cwd)
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own usage errors (exit 2, one line, no traceback)
        code = exit_.code
    finally:
        os.chdir(old)
    out, err = capsys.readouterr()
    return code, out, err


def refused(
    argv: list[str],
    root: Path,
    capsys,
    *,
    mentions: list[str] = (),
    code: int = 2,
    allow_new: tuple[str, ...] = (),
) -> str:
    """Run `hftune ARGV` in `root`, assert it was refused cleanly and changed nothing; return stderr.
    `allow_new`: path prefixes (relative to root) a refusal may create (e.g. a cache)."""
    before = snapshot(root)
    rc, out, err = run_cli(argv, root, capsys)
    after = snapshot(root)
    assert rc == code, f"exit {rc}, expected {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    assert err.strip(), "no message on stderr"
    for needle in mentions:
        assert str(needle) in err, f"{needle!r} not named in:\n{err}"
    changed = {k for k in before if after.get(k) != before[k]}
    added = {k for k in after if k not in before and not k.startswith(allow_new or ("\0",))}
    assert not changed, f"changed or removed by a refused run: {sorted(changed)}"
    assert not added, f"left behind by a refused run: {sorted(added)}"
    return err


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path
