"""What a new user meets first: the demo keeps earlier work, a started Hub is announced, tests clean up,
help examples name the right model."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from alignsmith.hub.local import stop_local_hub
from alignsmith.recipes import describe

ROOT = Path(__file__).resolve().parents[2]


def _stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_rerunning_the_demo_keeps_the_previous_run_and_says_where(tmp_path):
    """scripts/demo.sh in a copy whose setup, CLI and interpreter are stubs: only its own logic runs."""
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    _stub(tmp_path / "scripts" / "setup.sh", "exit 0\n")
    _stub(tmp_path / ".venv" / "bin" / "alignsmith", 'echo "$@" >> "$(dirname "$0")/calls"\n')
    _stub(tmp_path / ".venv" / "bin" / "python", "cat > /dev/null\n")
    previous = tmp_path / "runs" / "demo" / "hub" / "repos"
    previous.mkdir(parents=True)
    (previous / "published-model").write_text("weights")

    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    kept = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("demo.")]
    assert len(kept) == 1 and (kept[0] / "hub" / "repos" / "published-model").read_text() == "weights"
    assert f"kept in runs/{kept[0].name}" in done.stdout
    assert "chain run --config recipes/chain/demo.yaml" in (tmp_path / ".venv" / "bin" / "calls").read_text()
    # output redirected (no terminal): the Space is not served, its command is shown
    assert "Serve the results Space with: alignsmith space serve --config recipes/space/serve/demo.yaml" in done.stdout


def test_a_command_that_starts_a_background_hub_says_so_even_when_it_fails(tmp_path):
    """In a child process, as a user runs it: connecting re-points this process's clients at the new Hub."""
    root = tmp_path / "new-hub"
    recipe = tmp_path / "convert.yaml"
    recipe.write_text(f"hub_root: {root}\nsource: {{path: {tmp_path / 'missing.jsonl'}}}\noutput: {{repo_id: o/d}}\n")
    try:
        done = subprocess.run([sys.executable, "-m", "alignsmith.cli", "build", "convert", "--config", str(recipe)],
                              capture_output=True, text=True, timeout=120)
    finally:
        stopped = stop_local_hub(root)
    assert stopped, "the command started no Hub"
    assert done.returncode == 1 and "missing.jsonl" in done.stderr
    assert "started the embedded Hub" in done.stderr and f"alignsmith hub stop --root {root}" in done.stderr


def test_the_test_session_leaves_no_hf_home_behind(tmp_path):
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not list(scratch.glob("alignsmith-test-*")), "the session left folders in the temp dir"
    assert tempfile.gettempdir() != str(scratch)  # this session's own temp dir is untouched by the child


def test_each_scorer_key_names_its_own_released_model():
    from builders.deita.recipe import DeitaRecipe

    help_of = {key: text for key, _, text in describe(DeitaRecipe)}
    assert "hkust-nlp/deita-quality-scorer as quality_scorer" in help_of["quality_scorer.model"]
    assert "hkust-nlp/deita-complexity-scorer as complexity_scorer" in help_of["complexity_scorer.model"]
