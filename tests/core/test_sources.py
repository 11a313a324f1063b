"""Loading sources: local json/jsonl/parquet files and folders, the embedded Hub by revision, and clear errors."""

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import PIL.Image
import pytest
from huggingface_hub import HfApi

from alignsmith.converters import ExtraColumnsError
from alignsmith.recipes import RecipeError, build
from alignsmith.records import RecordError, conversation_features, dataset_from_rows
from alignsmith.sources import DatasetSource, SourceError, load_source

FIXTURES = Path(__file__).parents[1] / "fixtures" / "formats"

ALPACA_ROWS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_local_jsonl_records_its_sha256_and_resolves_images_next_to_it():
    loaded = load_source(DatasetSource(str(FIXTURES / "sharegpt.jsonl")))
    assert loaded.dataset.num_rows == 5
    assert (loaded.name, loaded.sha, loaded.is_hub) == ("sharegpt", None, False)
    assert loaded.files == {"sharegpt.jsonl": sha256(FIXTURES / "sharegpt.jsonl")}
    records = {r["id"]: r for r in loaded.to_records("conversation").records}
    assert records["sg-one-image"]["images"] == [{"bytes": None, "path": str(FIXTURES / "images" / "red.png")}]
    assert records["sharegpt-4"]["source"] == "sharegpt"


def test_local_json_list_and_the_requested_split_name():
    loaded = load_source(DatasetSource(str(FIXTURES / "alpaca.json"), split="validation"))
    assert loaded.dataset.split == "validation"
    assert loaded.dataset[0]["instruction"] == "Translate the sentence into French."
    ref = loaded.artifact_ref("pool")
    assert (ref.role, ref.repo_id, ref.repo_type) == ("pool", str(FIXTURES / "alpaca.json"), "local")
    assert ref.sha == sha256(FIXTURES / "alpaca.json")


def test_local_parquet_and_compressed_jsonl(tmp_path):
    datasets.Dataset.from_list(ALPACA_ROWS).to_parquet(tmp_path / "pool.parquet")
    parquet = load_source(DatasetSource(str(tmp_path / "pool.parquet")))
    assert parquet.dataset.to_list() == ALPACA_ROWS
    assert parquet.files == {"pool.parquet": sha256(tmp_path / "pool.parquet")}

    with (
        open(FIXTURES / "hh_rlhf" / "harmless-base_test_sample.jsonl", "rb") as src,
        gzip.open(tmp_path / "hh.jsonl.gz", "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    compressed = load_source(DatasetSource(str(tmp_path / "hh.jsonl.gz"), format="hh_rlhf"))
    assert compressed.name == "hh"
    result = compressed.to_records("preference", on_invalid="reject")
    assert result.summary()["converted"] == 3 and result.summary()["rejected"] == 3


def test_file_names_with_dots_keep_distinct_sources_and_ids(tmp_path):
    write_jsonl(tmp_path / "pool.v1.jsonl", ALPACA_ROWS)
    with gzip.open(tmp_path / "pool.v2.jsonl.gz", "wt", encoding="utf-8") as out:
        out.write("".join(json.dumps(row) + "\n" for row in ALPACA_ROWS))
    loaded = [load_source(DatasetSource(str(tmp_path / name))) for name in ("pool.v1.jsonl", "pool.v2.jsonl.gz")]
    assert [source.name for source in loaded] == ["pool.v1", "pool.v2"]
    ids = [record["id"] for source in loaded for record in source.to_records("conversation").records]
    assert ids == ["pool.v1-0", "pool.v1-1", "pool.v2-0", "pool.v2-1"]


def test_broken_rows_survive_arrow_loading_unchanged():
    # mixed types (a number where text belongs) must reach validation as they are, not coerced to strings
    name = "sharegpt_broken.jsonl"
    loaded = load_source(DatasetSource(str(FIXTURES / name)))
    result = loaded.to_records("conversation", on_invalid="reject")
    number_row = next(r for r in result.rejected if r["id"] == "sg-number-value")
    assert (number_row["field"], number_row["code"]) == ("conversations[1].value", "wrong_type")
    assert len(result.rejected) == 18


def test_local_folder_with_splits_and_column_renames(tmp_path):
    rows = [{"question": r["instruction"], "answer": r["output"]} for r in ALPACA_ROWS]
    write_jsonl(tmp_path / "qa" / "data" / "train.jsonl", rows)
    write_jsonl(tmp_path / "qa" / "data" / "test.jsonl", rows[:1])
    (tmp_path / "qa" / "README.md").write_text("# not data\n", encoding="utf-8")
    columns = {"question": "instruction", "answer": "output"}
    loaded = load_source(DatasetSource(str(tmp_path / "qa"), split="test", columns=columns, format="alpaca"))
    assert loaded.name == "qa"
    assert loaded.files == {"data/test.jsonl": sha256(tmp_path / "qa" / "data" / "test.jsonl")}
    assert loaded.to_records("conversation").records == [
        {
            "id": "qa-0",
            "source": "qa",
            "messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
            "images": [],
        }
    ]
    selected = load_source(DatasetSource(str(tmp_path / "qa"), data_files="data/train.jsonl"))
    assert selected.dataset.num_rows == 2
    assert list(selected.files) == ["data/train.jsonl"]


def test_hub_source_is_pinned_to_the_resolved_commit(hub):
    api = HfApi()
    repo = "alignsmith-tests/sources-pool"
    first = datasets.Dataset.from_list(ALPACA_ROWS).push_to_hub(repo).oid
    api.create_tag(repo, tag="v1", repo_type="dataset")
    datasets.Dataset.from_list(ALPACA_ROWS[:1]).push_to_hub(repo)

    tagged = load_source(DatasetSource(repo, revision="v1"))
    assert tagged.is_hub and tagged.sha == first
    assert tagged.dataset.to_list() == ALPACA_ROWS
    ref = tagged.artifact_ref("pool")
    assert (ref.repo_id, ref.repo_type, ref.revision, ref.sha) == (repo, "dataset", "v1", first)
    assert [r["id"] for r in tagged.to_records("conversation").records] == [f"{repo}-0", f"{repo}-1"]

    latest = load_source(DatasetSource(repo))
    assert latest.sha == api.dataset_info(repo).sha != first
    assert latest.dataset.num_rows == 1


def test_hub_errors_name_the_source(hub):
    repo = "alignsmith-tests/sources-errors"
    datasets.Dataset.from_list(ALPACA_ROWS).push_to_hub(repo)
    with pytest.raises(SourceError, match=r"'alignsmith-tests/no-such-dataset' .*: no such dataset repo on http://127"):
        load_source(DatasetSource("alignsmith-tests/no-such-dataset"))
    with pytest.raises(SourceError, match=r"revision='v9'.*: no such revision 'v9'"):
        load_source(DatasetSource(repo, revision="v9"))
    with pytest.raises(SourceError, match=r"split 'test'\): .*Unknown split \"test\""):
        load_source(DatasetSource(repo, split="test"))
    with pytest.raises(SourceError, match="config='nope'.*BuilderConfig 'nope' not found"):
        load_source(DatasetSource(repo, config="nope"))


@pytest.mark.parametrize(
    "make_source, message",
    [
        (lambda tmp: DatasetSource(str(tmp / "missing.jsonl")), "no such file or folder"),
        (lambda tmp: DatasetSource("not a repo id"), "no such file or folder"),
        (lambda tmp: DatasetSource(str(write_jsonl(tmp / "rows.csv", ALPACA_ROWS))), "unsupported file type"),
        (
            lambda tmp: DatasetSource(str(write_jsonl(tmp / "rows.jsonl", ALPACA_ROWS)), revision="v1"),
            "revision applies only to Hub repos",
        ),
        (
            lambda tmp: DatasetSource(str(write_jsonl(tmp / "rows.jsonl", ALPACA_ROWS)), config="x"),
            "config and data_files apply",
        ),
        (
            lambda tmp: DatasetSource(str(write_jsonl(tmp / "d" / "train.jsonl", ALPACA_ROWS).parent), split="test"),
            "has no split 'test' (it has 'train')",
        ),
        (
            lambda tmp: DatasetSource(str(write_jsonl(tmp / "d" / "train.jsonl", ALPACA_ROWS).parent), split="test[:1]"),
            "has no split 'test' (it has 'train')",
        ),
        (
            lambda tmp: DatasetSource(str(write_jsonl(tmp / "rows.jsonl", ALPACA_ROWS)), split="train[:x]"),
            "Unrecognized instruction format",
        ),
        (
            lambda tmp: DatasetSource(str(write_jsonl(tmp / "rows.jsonl", ALPACA_ROWS)), columns={"prompt": "x"}),
            "cannot rename columns",
        ),
    ],
)
def test_local_errors_name_the_source(tmp_path, make_source, message):
    src = make_source(tmp_path)
    with pytest.raises(SourceError) as info:
        load_source(src)
    assert repr(src.path) in str(info.value) and message in str(info.value)


def test_unreadable_file_is_a_source_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "fine", "output": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"bad\.jsonl.*JSON parse error"):
        load_source(DatasetSource(str(bad)))


def test_unknown_row_format_is_refused_up_front():
    with pytest.raises(SourceError, match="unknown format 'csv'"):
        DatasetSource("org/name", format="csv")


BUNDLED = Path(__file__).parents[2] / "data" / "hh_rlhf"
SHARED_HH = Path(__file__).parents[3] / "shared" / "data" / "preferences" / "hh_rlhf" / "harmless-base_test.jsonl.gz"


def test_bundled_hh_rlhf_demo_data_is_valid():
    pool = load_source(DatasetSource(str(BUNDLED / "pool.jsonl"))).to_records("conversation")
    pairs = load_source(DatasetSource(str(BUNDLED / "preferences.jsonl"))).to_records("preference")
    assert (pool.summary()["converted"], pairs.summary()["converted"]) == (600, 300)
    assert pool.summary()["formats"] == {"sharegpt": 600} and pairs.summary()["formats"] == {"hh_rlhf": 300}
    # DPO demos use prompts the SFT pool does not contain
    assert not {r["id"] for r in pool.records} & {r["id"] for r in pairs.records}
    assert all(path.stat().st_size < 1_000_000 for path in BUNDLED.glob("*.jsonl"))


@pytest.mark.skipif(not SHARED_HH.exists(), reason="needs the shared HH-RLHF source file")
def test_bundled_hh_rlhf_demo_data_is_reproducible(tmp_path):
    subprocess.run(
        [sys.executable, str(BUNDLED / "derive.py"), "--source", str(SHARED_HH), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("pool.jsonl", "preferences.jsonl"):
        assert (tmp_path / name).read_bytes() == (BUNDLED / name).read_bytes()


def test_published_records_load_back_losslessly(tmp_path):
    jpeg = io.BytesIO()
    PIL.Image.new("RGB", (8, 8), (200, 30, 30)).save(jpeg, format="JPEG", quality=70)
    record = {
        "id": "vqa-1",
        "source": "org/vqa",
        "messages": [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "Red."}],
        "images": [{"bytes": jpeg.getvalue(), "path": None}],
    }
    dataset_from_rows([record], conversation_features()).to_parquet(tmp_path / "vqa.parquet")
    (back,) = load_source(DatasetSource(str(tmp_path / "vqa.parquet"))).to_records("conversation").records
    # the JPEG bytes come back as stored (not decoded and re-encoded), and the row keeps its own source
    assert back == record


def test_local_files_and_folders_take_sliced_splits(tmp_path):
    rows = [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    for source in (str(path), str(path.parent)):
        loaded = load_source(DatasetSource(source, split="train[2:5]"))
        assert [r["messages"][0]["content"] for r in loaded.to_records("conversation").records] == ["Q2", "Q3", "Q4"]
        assert loaded.files == {str(path.relative_to(source)) if source != str(path) else "train.jsonl": sha256(path)}
    assert load_source(DatasetSource(str(path), split="train[:10%]")).dataset.num_rows == 1


def test_a_file_of_named_dialogues_gives_one_row_per_key():
    loaded = load_source(DatasetSource(str(FIXTURES / "named_dialogues.json")))
    records = {r["id"]: r for r in loaded.to_records("conversation").records}
    assert list(records) == ["greeting", "maths"]
    assert records["maths"]["messages"][0] == {"role": "system", "content": "Be brief."}  # a key only one has
    sliced = load_source(DatasetSource(str(FIXTURES / "named_dialogues.json"), split="train[1:]"))
    assert [r["id"] for r in sliced.to_records("conversation").records] == ["maths"]


def test_named_dialogues_with_a_conflicting_inner_id_are_refused(tmp_path):
    path = tmp_path / "named.json"
    path.write_text(json.dumps({"a": {"id": "b", "instruction": "Q", "output": "A"}}), encoding="utf-8")
    with pytest.raises(SourceError, match="dialogue 'a' has id 'b'"):
        load_source(DatasetSource(str(path)))


def test_non_utf8_bytes_reject_the_row_naming_file_row_and_field():
    loaded = load_source(DatasetSource(str(FIXTURES / "latin1.jsonl")))
    result = loaded.to_records("conversation", on_invalid="reject")
    assert [r["id"] for r in result.records] == ["ok-1"]
    assert [(r["id"], r["row_index"], r["field"], r["code"]) for r in result.rejected] == [
        ("latin1-byte", 1, "instruction", "malformed"),
        ("nested", 2, "conversations[0].value", "malformed"),
    ]
    assert "not valid UTF-8 (byte 0xe9 at position 9)" in result.rejected[0]["reason"]
    assert "latin1.jsonl" in result.rejected[0]["reason"]
    assert json.loads(result.rejected[0]["raw"])["instruction"] == "Spell caf\ufffd."
    with pytest.raises(RecordError) as info:
        loaded.to_records("conversation")
    assert str(info.value).startswith("record 'latin1-byte' (row 1), field 'instruction': not valid UTF-8")
    assert "latin1.jsonl" in str(info.value)


def test_extra_columns_policy_is_a_recipe_key(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{**ALPACA_ROWS[0], "example_input": "x"}])
    carried = load_source(build(DatasetSource, {"path": str(path)})).to_records("conversation", on_invalid="reject")
    assert json.loads(carried.records[0]["metadata"]) == {"example_input": "x"}
    dropped = load_source(DatasetSource(str(path), extra_columns="drop")).to_records("conversation")
    assert "metadata" not in dropped.records[0] and dropped.dropped_columns == {"example_input": 1}
    with pytest.raises(ExtraColumnsError, match=r"\['example_input'\]"):
        load_source(DatasetSource(str(path), extra_columns="error")).to_records("conversation", on_invalid="reject")
    with pytest.raises(RecipeError, match="extra_columns"):
        build(DatasetSource, {"path": str(path), "extra_columns": "keep"})


def test_published_tools_and_metadata_load_back_losslessly(tmp_path):
    source = load_source(DatasetSource(str(FIXTURES / "sharegpt_tools.jsonl")))
    records = source.to_records("conversation").records
    records[0]["metadata"] = '{"origin": "glaive"}'
    dataset_from_rows(records, conversation_features()).to_parquet(tmp_path / "tools.parquet")
    back = load_source(DatasetSource(str(tmp_path / "tools.parquet"))).to_records("conversation").records
    assert back == records
