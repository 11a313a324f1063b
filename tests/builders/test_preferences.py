"""``build preferences``: DPO datasets mixed from published preference sets, bad rows kept aside."""

from __future__ import annotations

import json

import pytest
from datasets import load_dataset
from huggingface_hub import hf_hub_download

from alignsmith.cards import CardContent
from alignsmith.frontmatter import card_metadata
from alignsmith.lineage import Lineage, read_lineage
from alignsmith.publish import publish_dataset
from alignsmith.recipes import OutputRepo, RecipeError, build, to_dict

from alignsmith.mixtures import MixtureEntry, MixtureError, MixtureRecipe, shuffle_and_split
from builders.preferences import PreferencesRecipe, run

NS = "prefs-tests"
HH_ROWS = [
    {"id": f"hh-{i}", "chosen": f"\n\nHuman: Is {i} even?\n\nAssistant: Let me check: {'yes' if i % 2 == 0 else 'no'}.",
     "rejected": f"\n\nHuman: Is {i} even?\n\nAssistant: I won't say."}
    for i in range(10)
] + [
    {"id": "hh-diverges-early", "chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Bye\n\nAssistant: Bye!",
     "rejected": "\n\nHuman: Hello\n\nAssistant: Hi.\n\nHuman: Bye\n\nAssistant: Go."},
    {"id": "hh-ends-with-human", "chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Bye",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello."},
]
TRL_ROWS = [
    {"id": f"trl-{i}", "prompt": [{"role": "user", "content": f"Name a colour ({i})."}],
     "chosen": [{"role": "assistant", "content": "Blue."}], "rejected": [{"role": "assistant", "content": "No."}]}
    for i in range(6)
] + [{"id": "hh-3", "prompt": [{"role": "user", "content": "Reused id."}],
      "chosen": [{"role": "assistant", "content": "A."}], "rejected": [{"role": "assistant", "content": "B."}]}]


@pytest.fixture(scope="module")
def sources(hub) -> dict[str, str]:
    import datasets

    repos = {"hh": f"{NS}/hh-raw", "trl": f"{NS}/trl-pairs"}
    for name, rows in (("hh", HH_ROWS), ("trl", TRL_ROWS)):
        configs = {"default": {"train": datasets.Dataset.from_list(rows)}}
        publish_dataset(OutputRepo(repo_id=repos[name], tag="v1"), configs,
                        CardContent(title=repos[name], summary="raw pairs"), Lineage(command="test", recipe={}))
    return repos


def test_pairs_from_hh_dialogues_and_trl_rows_are_mixed_split_and_published_with_rejections(sources):
    recipe = build(PreferencesRecipe, {
        "data": {"datasets": [{"path": sources["hh"], "revision": "v1", "format": "hh_rlhf"},
                              {"path": sources["trl"], "revision": "v1", "weight": 0.5}],
                 "seed": 3, "eval_size": 4},
        "output": {"repo_id": f"{NS}/mixed", "tag": "v1"},
    })
    release = run(recipe)

    train = load_dataset(release.repo_id, revision="v1", split="train")
    test = load_dataset(release.repo_id, revision="v1", split="test")
    # 10 valid HH pairs + half of the 6 valid trl pairs (its 7th row reuses an HH id)
    assert (len(train), len(test)) == (9, 4)
    pairs = {row["id"]: row for row in [*train, *test]}
    assert sum(i.startswith("hh-") for i in pairs) == 10 and sum(i.startswith("trl-") for i in pairs) == 3
    assert pairs["hh-4"]["prompt"] == [{"role": "user", "content": "Is 4 even?"}]
    assert pairs["hh-4"]["chosen"] == [{"role": "assistant", "content": "Let me check: yes."}]
    assert pairs["hh-4"]["rejected"] == [{"role": "assistant", "content": "I won't say."}]

    rejected = {row["id"]: row for row in load_dataset(release.repo_id, "rejected", revision="v1", split="train")}
    assert set(rejected) == {"hh-diverges-early", "hh-ends-with-human", "hh-3"}
    assert rejected["hh-diverges-early"]["code"] == "prompt_mismatch"
    assert rejected["hh-3"]["code"] == "duplicate_id"
    assert rejected["hh-3"]["dataset"].startswith(f"dataset '{sources['trl']}'")

    lineage, _ = read_lineage(release.repo_id, "dataset", "v1")
    assert [ref.repo_id for ref in lineage.inputs] == [sources["hh"], sources["trl"]]
    assert all(len(ref.sha) == 40 for ref in lineage.inputs)

    again = run(build(PreferencesRecipe, {**to_dict(recipe), "output": {"repo_id": f"{NS}/mixed-again", "tag": "v1"}}))
    assert load_dataset(again.repo_id, revision="v1", split="test")["id"] == test["id"]  # the split is seeded


def test_weights_above_one_are_refused_because_they_would_publish_repeated_pairs():
    with pytest.raises(RecipeError, match="repeated pairs"):
        build(PreferencesRecipe, {"data": {"datasets": [{"path": "org/pairs", "weight": 2}]},
                                  "output": {"repo_id": "org/out"}})


def test_ids_stay_unique_across_entries_that_read_the_same_folder(hub, tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name, rows in (("a.jsonl", TRL_ROWS[:4]), ("b.jsonl", TRL_ROWS[2:6])):
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = build(PreferencesRecipe, {
        "data": {"datasets": [{"path": str(folder), "data_files": name} for name in ("a.jsonl", "b.jsonl")]},
        "output": {"repo_id": f"{NS}/same-folder", "tag": "v1"},
    })
    release = run(recipe)

    published = load_dataset(release.repo_id, revision="v1", split="train")["id"]
    assert sorted(published) == [f"trl-{i}" for i in range(6)]
    rejected = load_dataset(release.repo_id, "rejected", revision="v1", split="train")
    assert sorted(rejected["id"]) == ["trl-2", "trl-3"] and set(rejected["code"]) == {"duplicate_id"}
    assert all("data.datasets[0]" in reason for reason in rejected["reason"])

    card = open(hf_hub_download(release.repo_id, "README.md", repo_type="dataset", revision="v1")).read()
    assert str(tmp_path) not in card  # neither in the statistics, the lineage nor the recipe
    assert "| data.datasets[1] (pairs): pairs used | 2 of 2 valid (2 rejected) |" in card
    assert card_metadata(card)["alignsmith"]["recipe"]["data"]["datasets"][0]["path"] == "pairs"
    configs = card.split("## Configs\n\n")[1].split("\n\n")[0].splitlines()
    assert configs == ["- `default` (train: 6 rows): the mixed, shuffled pairs; `test`, when there is one, holds out "
                       "`data.eval_size` of them.",
                       "- `rejected` (train: 2 rows): every row that is not a valid pair, with the `data.datasets` "
                       "entry it came from, the record id, field and reason."]


@pytest.mark.parametrize(("eval_size", "held_out"), [(0.25, 3), (4, 4), (0.95, None), (10, None)])
def test_the_held_out_split_rounds_a_fraction_up_and_must_leave_rows_to_train_on(eval_size, held_out):
    import datasets

    rows = datasets.Dataset.from_list([{"id": f"r{i}"} for i in range(10)])
    data = MixtureRecipe(datasets=[MixtureEntry(path="org/pairs")], eval_size=eval_size, seed=1)
    if held_out is None:
        with pytest.raises(MixtureError, match=f"data.eval_size: {eval_size} holds out 10 of the mixture's 10"):
            shuffle_and_split(rows, data)
        return
    train, test = shuffle_and_split(rows, data)
    assert (len(train), len(test)) == (10 - held_out, held_out)
    assert sorted([*train["id"], *test["id"]]) == sorted(rows["id"])
