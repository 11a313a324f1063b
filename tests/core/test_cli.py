"""The CLI as a user meets it: help everywhere, clear errors, and `build convert` end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import load_dataset
from huggingface_hub import hf_hub_download

from alignsmith.cli import command_groups, main
from alignsmith.lineage import read_lineage

FIXTURES = Path(__file__).parents[1] / "fixtures" / "formats"
DATA = Path(__file__).parents[2] / "data" / "hh_rlhf"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignsmith.cli", *args], capture_output=True, text=True, timeout=120)


def test_top_level_and_group_help_list_every_command():
    top = run_cli("--help")
    assert top.returncode == 0
    for name, group in command_groups().items():
        assert f"{name}:" in top.stdout and f"({group.package})" in top.stdout
        group_help = run_cli(name, "--help")
        assert group_help.returncode == 0 and all(command in group_help.stdout for command in group.commands)


@pytest.mark.parametrize("group, name", [(g, n) for g, group in command_groups().items() for n in group.commands])
def test_every_command_has_help(group, name):
    words = [group] if name == group else [group, name]  # a group's one command named for it: `alignsmith reproduce`
    done = run_cli(*words, "--help")
    assert done.returncode == 0, done.stderr
    assert f"alignsmith {' '.join(words)}" in done.stdout


@pytest.mark.parametrize(("old", "new"), [("data convert", "build convert"), ("deita build", "build deita"),
                                          ("train preferences", "build preferences")])
def test_old_spellings_still_run_with_a_deprecation_message(tmp_path, old, new):
    done = run_cli(*old.split(), "--config", str(tmp_path / "missing.yaml"))
    assert f"'{old}' is deprecated" in done.stderr and f"use 'alignsmith {new}'" in done.stderr
    assert done.returncode == 1 and "recipe file not found" in done.stderr  # it ran the new command


def test_a_bug_keeps_its_traceback_while_bad_input_is_one_line(monkeypatch, capsys, tmp_path):
    import builders.convert

    def broken(recipe):
        raise KeyError("a bug")

    monkeypatch.setattr(builders.convert, "run", broken)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"hub": "http://127.0.0.1:1", "source": {"path": str(FIXTURES / "sharegpt.jsonl")},
                                      "output": {"repo_id": "o/d"}}))
    assert main(["build", "convert", "--config", str(recipe)]) == 1  # the unreachable Hub is named first
    assert "cannot reach http://127.0.0.1:1/" in capsys.readouterr().err
    monkeypatch.setattr("alignsmith.endpoint.connect", lambda recipe: "http://unused")
    with pytest.raises(KeyError, match="a bug"):
        main(["build", "convert", "--config", str(recipe)])


def test_unknown_stage_command_and_recipe_key_are_clear_errors(tmp_path, capsys):
    assert main(["nope"]) == 2 and "unknown group 'nope'" in capsys.readouterr().err
    assert main(["build", "nope"]) == 2 and "unknown command" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"source": {"path": str(FIXTURES / "sharegpt.jsonl")},
                                      "output": {"repo_id": "o/d"}, "outptu": 1}))
    assert main(["build", "convert", "--config", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert "unknown key 'outptu'" in err and "did you mean 'output'" in err and "Traceback" not in err


def test_an_unreachable_hub_is_a_clear_error():
    done = run_cli("lineage", "show", "org/anything", "--hub", "http://127.0.0.1:1")
    assert done.returncode == 1
    assert "cannot reach http://127.0.0.1:1/" in done.stderr and "Traceback" not in done.stderr


def convert_recipe(tmp_path, hub, source: Path, fmt: str, repo_id: str, **keys) -> Path:
    recipe = tmp_path / "convert.yaml"
    recipe.write_text(yaml.safe_dump({"hub": hub.url, "source": {"path": str(source), "format": fmt},
                                      "output": {"repo_id": repo_id, "tag": "v1"}, **keys}))
    return recipe


def test_data_convert_publishes_records_and_keeps_rejected_rows(tmp_path, hub):
    recipe = convert_recipe(tmp_path, hub, FIXTURES / "sharegpt_broken.jsonl", "sharegpt", "cli-test/sharegpt")
    rows = sum(1 for line in (FIXTURES / "sharegpt_broken.jsonl").read_text().splitlines() if line.strip())
    assert main(["build", "convert", "--config", str(recipe)]) == 0
    records = load_dataset("cli-test/sharegpt", "default", revision="v1", split="train")
    rejected = load_dataset("cli-test/sharegpt", "rejected", revision="v1", split="train")
    assert records.num_rows + rejected.num_rows == rows and rejected.num_rows > 0
    assert "sg-empty" in rejected["id"] and all(rejected["reason"]) and all(rejected["raw"])
    lineage, _ = read_lineage("cli-test/sharegpt", "dataset", "v1")
    assert lineage.command == "build convert" and lineage.recipe["source"]["format"] == "sharegpt"


def test_data_convert_in_error_mode_names_the_record(tmp_path, hub, capsys):
    recipe = convert_recipe(tmp_path, hub, FIXTURES / "sharegpt_broken.jsonl", "sharegpt", "cli-test/never",
                            on_invalid="error")
    assert main(["build", "convert", "--config", str(recipe)]) == 1
    assert "record 'sg-empty' (row 0)" in capsys.readouterr().err


def test_bundled_preferences_convert_to_trl_pairs(tmp_path, hub):
    recipe = convert_recipe(tmp_path, hub, DATA / "preferences.jsonl", "hh_rlhf", "cli-test/hh-prefs",
                            kind="preference")
    assert main(["build", "convert", "--config", str(recipe)]) == 0
    prefs = load_dataset("cli-test/hh-prefs", "default", revision="v1", split="train")
    row = prefs[0]
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["chosen"] != row["rejected"]


def test_data_convert_carries_tools_and_extra_columns_and_lists_them_in_the_card(tmp_path, hub):
    pool = tmp_path / "pool.jsonl"
    rows = [json.loads(line) for line in (FIXTURES / "sharegpt_tools.jsonl").read_text().splitlines()]
    pool.write_text("".join(json.dumps({**row, "example_input": "x"}) + "\n" for row in rows), encoding="utf-8")
    recipe = convert_recipe(tmp_path, hub, pool, "sharegpt", "cli-test/tools")
    assert main(["build", "convert", "--config", str(recipe)]) == 0
    records = load_dataset("cli-test/tools", "default", revision="v1", split="train")
    assert records[0]["tools"][0]["function"]["name"] == "convert_currency"
    assert [json.loads(m) for m in records["metadata"]] == [{"example_input": "x"}] * 2
    card = open(hf_hub_download("cli-test/tools", "README.md", repo_type="dataset", revision="v1"), encoding="utf-8")
    assert "column carried in metadata: example_input" in card.read()


def test_data_convert_with_extra_columns_error_names_them_and_the_key(tmp_path, hub, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"instruction": "Q", "output": "A", "example_input": "x"}) + "\n", encoding="utf-8")
    recipe = tmp_path / "convert.yaml"
    recipe.write_text(yaml.safe_dump({"hub": hub.url, "source": {"path": str(pool), "extra_columns": "error"},
                                      "output": {"repo_id": "cli-test/never", "tag": "v1"}}))
    assert main(["build", "convert", "--config", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert "['example_input'] are not read by the 'alpaca' format" in err and "extra_columns: drop" in err
