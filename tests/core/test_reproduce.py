"""``alignsmith reproduce``: a published artifact re-run from its card's lineage and compared, or a clear error."""

import json
import secrets
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from datasets import load_dataset
from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi, snapshot_download
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from alignsmith.cards import card_text
from alignsmith.cli import main
from alignsmith.frontmatter import card_metadata
from alignsmith.lineage import LINEAGE_KEY, ArtifactRef, Lineage, content_sha256, environment, read_lineage
from alignsmith.publish import commit_release
from alignsmith.recipes import OutputRepo
from alignsmith.reproduce import DIFFERS_EXIT_CODE, Report, _compare_tensors, _pin_references, set_mode

ROOT = Path(__file__).resolve().parents[2]
POOL = ROOT / "data/hh_rlhf/pool.jsonl"
POOL_ROWS = 40
TAMPERED_ROW = 5


@pytest.fixture(scope="module")
def org() -> str:
    return f"repro-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def in_repo_root():
    """The demo recipe reads its pool by a path relative to the repository, so builds and reproductions run there."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        yield


@pytest.fixture(scope="module")
def deita(hub, org, in_repo_root, tmp_path_factory) -> str:
    """The demo's Deita dataset (recipes/build/deita/demo.yaml) on a 40-row slice of its pool, with a tiny scorer
    published as recipes/chain/demo.yaml's first step does."""
    scorer = f"{org}/tiny-scorer"
    assert main(["models", "tiny", "--out", str(tmp_path_factory.mktemp("tiny") / "scorer"), "--hidden-size", "64",
                 "--max-position-embeddings", "2048", "--seed", "0", "--publish", scorer, "--tag", "v1.0.0",
                 "--hub", hub.url]) == 0
    repo = f"{org}/deita-hh-rlhf"
    models = [arg for key in ("complexity_scorer", "quality_scorer", "embedder") for arg in (f"--{key}.model", scorer)]
    assert main(["build", "deita", "--config", "recipes/build/deita/demo.yaml", "--hub", hub.url, *models,
                 "--pool.split", f"train[:{POOL_ROWS}]", "--shard_size", "16", "--selection.budget", "10",
                 "--work_dir", str(tmp_path_factory.mktemp("deita-work")), "--output.repo_id", repo]) == 0
    return repo


@pytest.fixture(scope="module")
def sft(hub, org, deita, tmp_path_factory) -> str:
    """recipes/train/sft/tiny.yaml on that dataset, a few steps."""
    repo = f"{org}/tiny-sft"
    data = f"[{{path: {deita}, config: selected, split: train, revision: v1.0.0}}]"
    assert main(["train", "sft", "--config", "recipes/train/sft/tiny.yaml", "--hub", hub.url,
                 "--base_model.path", f"{org}/tiny-scorer", "--data.datasets", data, "--training.max_steps", "4",
                 "--training.save_steps", "100", "--output.repo_id", repo,
                 "--output_dir", str(tmp_path_factory.mktemp("sft"))]) == 0
    return repo


def republish(source: str, target: str, edit: Callable[[dict[str, Any]], None]) -> str:
    """A copy of dataset ``source``@v1.0.0 at ``target``@v1.0.0 whose card lineage ``edit`` changed by hand."""
    folder = Path(snapshot_download(source, repo_type="dataset", revision="v1.0.0"))
    text = (folder / "README.md").read_text(encoding="utf-8")
    metadata = card_metadata(text)
    edit(metadata[LINEAGE_KEY])
    card = card_text(DatasetCard, metadata, text[REGEX_YAML_BLOCK.search(text).end():])
    ops = [CommitOperationAdd(path.relative_to(folder).as_posix(), str(path))
           for path in sorted(folder.rglob("*")) if path.is_file() and path.name != "README.md"]
    commit_release(OutputRepo(repo_id=target, tag="v1.0.0"), "dataset", [*ops, CommitOperationAdd(
        "README.md", card.encode())], "a copy with a hand-edited lineage")
    return target


def reproduce(*args: str) -> int:
    return main(["reproduce", *args, "--revision", "v1.0.0"])


def test_the_demo_deita_dataset_reproduces_identically_from_its_card(hub, deita, org, capsys):
    assert reproduce(deita, "--hub", hub.url) == 0
    out = capsys.readouterr().out
    assert f"reproduce dataset {deita}@v1.0.0" in out and "alignsmith build deita" in out
    assert "comparison: exact (versions, device and threads match the recorded run: bitwise)" in out
    assert "pool: local data/hh_rlhf/pool.jsonl sha256" in out and "(content matches)" in out
    for config in ("selected", "scored", "embeddings"):
        assert f"identical dataset config {config} (train " in out
    assert "result: IDENTICAL" in out

    # it re-ran: a new release in the scratch namespace, its scorers pinned to the commits the card records
    original, _ = read_lineage(deita, "dataset", "v1.0.0")
    tag = out.split(f"reproduction: dataset {org}-reproduce/deita-hh-rlhf@")[1].split()[0]
    again, sha = read_lineage(f"{org}-reproduce/deita-hh-rlhf", "dataset", tag)
    assert [m.sha for m in again.models] == [m.sha for m in original.models]
    assert again.recipe["complexity_scorer"]["revision"] == original.models[0].sha
    assert again.inputs[0].sha == original.inputs[0].sha and sha != read_lineage(deita, "dataset", "v1.0.0")[1]


def test_the_sft_model_reproduces_identically_weight_by_weight(hub, sft, capsys):
    assert reproduce(sft, "--repo-type", "model", "--hub", hub.url, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "identical" and report["mode"] == "exact" and report["command"] == "train sft"
    weights = [c for c in report["checks"] if c["what"].startswith("weights model.safetensors")]
    assert weights and weights[0]["status"] == "identical"
    assert any(c["what"].startswith("metrics") and c["status"] == "identical" for c in report["checks"])
    assert any(line.startswith("base_model: model ") and line.endswith("(pinned)") for line in report["inputs"])


def test_a_lineage_pointing_at_a_tampered_copy_of_its_input_reports_the_first_differing_row(hub, deita, org, capsys):
    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines()[:POOL_ROWS]]
    rows[TAMPERED_ROW]["conversations"][1]["value"] += " (edited)"
    source = load_dataset(deita, "scored", revision="v1.0.0", split="train")[0]["source"]  # the local file's name
    copy = "".join(json.dumps({**row, "source": source}) + "\n" for row in rows)
    commit_release(OutputRepo(repo_id=f"{org}/pool-copy", tag="v1"), "dataset",
                   [CommitOperationAdd("pool.jsonl", copy.encode())], "the pool, one row edited")
    copy_sha = HfApi().repo_info(f"{org}/pool-copy", repo_type="dataset", revision="v1").sha

    def point_at_copy(lineage: dict[str, Any]) -> None:
        lineage["recipe"]["pool"].update(path=f"{org}/pool-copy", revision="v1")
        lineage["inputs"] = [{"role": "pool", "repo_id": f"{org}/pool-copy", "repo_type": "dataset",
                              "revision": "v1", "sha": copy_sha}]

    tampered = republish(deita, f"{org}/deita-tampered", point_at_copy)
    assert reproduce(tampered, "--hub", hub.url) == DIFFERS_EXIT_CODE
    out = capsys.readouterr().out
    assert f"pool: dataset {org}/pool-copy @ {copy_sha} (pinned)" in out
    row_id = rows[TAMPERED_ROW]["id"]
    scored = next(line for line in out.splitlines() if "dataset config scored" in line)
    assert scored.startswith("  differs   dataset config scored (train 40 rows; content hash ")
    assert f"train: first differing row {TAMPERED_ROW} (id {row_id!r}), column 'messages'" in scored
    assert "result: DIFFERS" in out


def test_a_card_without_lineage_is_a_clear_error(hub, org, capsys):
    commit_release(OutputRepo(repo_id=f"{org}/plain", tag="v1.0.0"), "dataset",
                   [CommitOperationAdd("README.md", b"---\nlicense: mit\n---\n\n# Not made by alignsmith\n")], "plain")
    assert reproduce(f"{org}/plain", "--hub", hub.url) == 1
    assert f"dataset {org}/plain@v1.0.0 has no alignsmith lineage in its card" in capsys.readouterr().err


def test_an_input_whose_recorded_sha_no_longer_resolves_is_named(hub, deita, org, capsys):
    def lose_the_scorer(lineage: dict[str, Any]) -> None:
        lineage["models"][0]["sha"] = "0" * 40

    gone = republish(deita, f"{org}/deita-gone", lose_the_scorer)
    assert reproduce(gone, "--hub", hub.url) == 1
    err = capsys.readouterr().err
    assert f"input complexity_scorer: model {org}/tiny-scorer @ {'0' * 40} (recorded in the lineage) no longer " \
           "resolves" in err


def test_a_recipe_that_no_longer_parses_names_the_key(hub, deita, org, capsys):
    def old_spelling(lineage: dict[str, Any]) -> None:
        lineage["recipe"]["selection"]["budgt"] = lineage["recipe"]["selection"].pop("budget")

    old = republish(deita, f"{org}/deita-old", old_spelling)
    assert reproduce(old, "--hub", hub.url) == 1
    err = capsys.readouterr().err
    assert "the recipe its lineage records (alignsmith 0.1.0) no longer parses" in err
    assert "selection: unknown key 'budgt' (did you mean 'budget'?)" in err


def test_a_local_input_is_checked_at_the_path_the_recipe_names_not_at_a_key_of_the_same_name(in_repo_root):
    """recipes/eval/lighteval/tiny.yaml: task ``name: tiny_mc`` reads ``repo: data/eval/tiny_mc``."""
    folder = "data/eval/tiny_mc"
    ref = ArtifactRef("tasks[tiny_mc]", "tiny_mc", "local", None, content_sha256(ROOT / folder))
    lines = _pin_references({"tasks": [{"name": "tiny_mc", "repo": folder}]}, [ref])
    assert lines == [f"tasks[tiny_mc]: local {folder} sha256 {ref.sha} (content matches)"]


def test_other_versions_device_or_threads_compare_within_a_stated_tolerance():
    here = environment()
    elsewhere = {**here, "torch": "2.0.0", "device": "cuda (NVIDIA H100)", "cpu_threads": "8"}
    report = Report("x", "build deita")
    rtol, atol = set_mode(report, Lineage("build deita", {}, environment=elsewhere), here)
    assert report.mode == "tolerance"
    assert report.mode_reason.startswith("torch, device, cpu_threads differ from the recorded run; floats within rtol")
    assert report.environment["device"] == ("cuda (NVIDIA H100)", here["device"])
    a = {"w": torch.ones(4, 4)}
    nudged = {"w": a["w"] + 1e-7}
    assert _compare_tensors("m", a, nudged, rtol, atol).status == "close"
    assert _compare_tensors("m", a, nudged, 0.0, 0.0).status == "differs"
    assert _compare_tensors("m", a, {"w": a["w"] * 1.1}, rtol, atol).status == "differs"

    old_card = Lineage.from_metadata({"command": "build deita", "recipe": {}})  # before versions were recorded
    assert old_card.environment == {}
    set_mode(report, old_card, here)
    assert report.mode == "tolerance" and "predates recorded versions, device and threads" in report.mode_reason
    assert set_mode(report, Lineage("build deita", {}, environment=here), here) == (0.0, 0.0)


def test_reproduce_is_a_top_level_command(capsys):
    assert main(["--help"]) == 0
    assert "reproduce: re-run what made a published artifact" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["reproduce", "--help"])
    assert exit_.value.code == 0 and "usage: alignsmith reproduce [-h]" in capsys.readouterr().out
