"""``alignsmith chain run``: steps checked at load (naming the step), run in order, skipped once published."""

import json
import secrets
from pathlib import Path

import pytest
import yaml

from alignsmith.chain import ChainRecipe, ChainRecipeError
from alignsmith.cli import main
from alignsmith.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[2]


def _write_chain(path: Path, steps: list[dict], hub: str = "local") -> Path:
    path.write_text(yaml.safe_dump({"hub": hub, "steps": steps}), encoding="utf-8")
    return path


def test_the_shipped_demo_chain_loads_every_step(monkeypatch):
    monkeypatch.chdir(ROOT)  # step recipes are paths relative to the repository, as in scripts/demo.sh
    recipe = load_recipe(ChainRecipe, "recipes/chain/demo.yaml")
    planned = recipe.planned()
    assert [p.step.command for p in planned[:2]] == ["models tiny", "build deita"]
    assert all(p.recipe.hub == "local" for p in planned if p.recipe is not None)
    assert all(p.argv[-2:] == ["--hub", "local"] for p in planned if p.recipe is None)


def test_an_unknown_command_fails_at_load_naming_the_step(tmp_path):
    path = _write_chain(tmp_path / "chain.yaml", [
        {"name": "ok", "command": "models tiny", "args": ["--out", str(tmp_path / "m")]},
        {"name": "typo", "command": "build deitta", "config": "x.yaml"},
    ])
    with pytest.raises(ChainRecipeError, match=r"steps\[1\] \(typo\): unknown command 'build deitta'"):
        load_recipe(ChainRecipe, path)


def test_a_bad_key_in_a_step_recipe_fails_at_load_naming_the_step(tmp_path):
    path = _write_chain(tmp_path / "chain.yaml", [
        {"name": "models", "command": "models tiny", "args": ["--out", str(tmp_path / "m")]},
        {"name": "deita", "command": "build deita", "config": str(ROOT / "recipes/build/deita/demo.yaml"),
         "overrides": {"selection.budgt": 3}},
    ])
    with pytest.raises(ChainRecipeError, match=r"steps\[1\] \(deita\).*unknown key 'budgt' \(did you mean 'budget'"):
        load_recipe(ChainRecipe, path)


def test_a_recipe_command_given_args_is_refused(tmp_path):
    path = _write_chain(tmp_path / "chain.yaml", [{"name": "convert", "command": "build convert", "args": ["-x"]}])
    with pytest.raises(ChainRecipeError, match=r"steps\[0\] \(convert\): build convert takes a recipe"):
        load_recipe(ChainRecipe, path)


def test_a_chain_runs_on_the_hub_prints_its_summary_and_a_rerun_skips_what_is_published(hub, tmp_path, capsys):
    org = f"chain-{secrets.token_hex(3)}"
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": f"r{i}", "conversations": [
        {"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}]}) + "\n"
        for i in range(3)), encoding="utf-8")
    convert = tmp_path / "convert.yaml"
    convert.write_text(yaml.safe_dump({
        "source": {"path": str(rows), "format": "sharegpt"}, "kind": "conversation",
        "output": {"repo_id": f"{org}/rows", "tag": "v1.0.0"}}), encoding="utf-8")
    chain = _write_chain(tmp_path / "chain.yaml", [
        {"name": "model", "command": "models tiny",
         "args": ["--out", str(tmp_path / "tiny"), "--publish", f"{org}/tiny", "--tag", "v1.0.0"]},
        {"name": "rows", "command": "build convert", "config": str(convert), "overrides": {"output.license": "mit"}},
    ], hub=hub.url)

    assert main(["chain", "run", "--config", str(chain)]) == 0
    first = capsys.readouterr().out
    assert f"published to {hub.url}" in first
    assert f"1. model (models tiny)\n       model {org}/tiny@v1.0.0 = " in first
    assert f"2. rows (build convert)\n       dataset {org}/rows@v1.0.0 = " in first
    assert "already published" not in first

    assert main(["chain", "run", "--config", str(chain)]) == 0
    again = capsys.readouterr().out
    assert again.count("(already published)") == 2
    sha = first.split(f"{org}/rows@v1.0.0 = ")[1].split()[0]
    assert f"{org}/rows@v1.0.0 = {sha} (already published)" in again


def test_a_failing_step_stops_the_chain_naming_it(hub, tmp_path, capsys):
    org = f"chain-{secrets.token_hex(3)}"
    convert = tmp_path / "convert.yaml"
    convert.write_text(yaml.safe_dump({
        "source": {"path": str(tmp_path / "missing.jsonl"), "format": "sharegpt"}, "kind": "conversation",
        "output": {"repo_id": f"{org}/rows", "tag": "v1.0.0"}}), encoding="utf-8")
    chain = _write_chain(tmp_path / "chain.yaml", [
        {"name": "rows", "command": "build convert", "config": str(convert)},
        {"name": "never", "command": "models tiny", "args": ["--out", str(tmp_path / "tiny")]},
    ], hub=hub.url)
    assert main(["chain", "run", "--config", str(chain)]) == 1
    err = capsys.readouterr().err
    assert "step 1 'rows' (build convert) failed" in err
    assert not (tmp_path / "tiny").exists()
