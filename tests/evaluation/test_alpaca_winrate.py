"""AlpacaEval-style pairwise judging and win rates: seeded order, un-swapping, leaderboard numbers, LC."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from alignsmith.cli import main
from evaluation.length_control import length_controlled_winrate
from evaluation.pairwise import (
    is_switched,
    logprob_preference,
    parse_ranking,
    preference,
    render_pairwise,
    template,
    unswitch,
)
from evaluation.winrate import get_winrate, leaderboard

SHARED = Path("/work/shared/data/eval_prompts/alpaca_eval")
BUNDLED = Path(__file__).resolve().parents[2] / "evaluation" / "data" / "alpaca_eval"


@pytest.mark.skipif(not SHARED.exists(), reason="the shared AlpacaEval data is not on this machine")
@pytest.mark.parametrize(("bundled", "shared"), [
    ("LICENSE", "LICENSE"),
    ("alpaca_eval_gpt4/alpaca_eval.txt", "evaluators_configs/alpaca_eval_gpt4/alpaca_eval.txt"),
    ("alpaca_eval_gpt4/configs.yaml", "evaluators_configs/alpaca_eval_gpt4/configs.yaml"),
    ("alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt", "evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt"),
    ("weighted_alpaca_eval_gpt4_turbo/configs.yaml", "evaluators_configs/weighted_alpaca_eval_gpt4_turbo/configs.yaml"),
])
def test_bundled_prompts_are_alpaca_evals_byte_for_byte(bundled, shared):
    assert (BUNDLED / bundled).read_bytes() == (SHARED / shared).read_bytes()


def _instructions(switched: bool) -> str:
    return next(f"Write a haiku about number {i}." for i in range(100) if is_switched(f"Write a haiku about number {i}.") == switched)


def test_order_is_seeded_by_the_instruction_as_alpaca_eval_does():
    for i in range(20):
        text = f"instruction {i}"
        expected = random.Random("is_switched_outputs" + text + "123").random() * 2 >= 1  # choices([False, True])
        assert is_switched(text) is expected
    decisions = [is_switched(f"instruction {i}") for i in range(200)]
    assert 60 < sum(decisions) < 140  # a fair coin, not a constant


def test_ranking_prompt_rendering_and_unswapping():
    instruction = _instructions(switched=True)
    prompt = render_pairwise(instruction, "baseline says {output_2}", "model says hi")
    assert prompt.switched
    user = template("alpaca_eval_gpt4").split("<|im_start|>user\n")[1].split("\n<|im_end|>")[0]
    user = user.replace("{instruction}", instruction, 1).replace("{output_1}", "model says hi", 1)
    user = user.replace("{output_2}", "baseline says {output_2}", 1)
    assert prompt.messages == [
        {"role": "system", "content": "You are a helpful assistant, that ranks models by the quality of their answers."},
        {"role": "user", "content": user},
    ]
    # the judge ranks the first-shown answer (the model's) best: in the row's order, output_2 wins
    judged = parse_ranking("[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]")
    assert judged == 1 and unswitch(judged, prompt.switched) == 2
    assert preference("baseline says {output_2}", "model says hi", judged, prompt.switched) == 2

    kept = render_pairwise(_instructions(switched=False), "base", "model")
    assert not kept.switched and '"""base"""' in kept.messages[1]["content"].split("model_2")[0]
    assert unswitch(1, kept.switched) == 1
    assert preference("same", "same", judged, True) == 1.5


@pytest.mark.parametrize(("completion", "rank"), [
    ("[{'model': 'model_1', 'rank': 2}, {'model': 'model_2', 'rank': 1}]", 2),
    ("[{'model': 'model_1', 'rank': 3}, {'model': 'model_2', 'rank': 1}]", math.nan),
    ("model_1 is better", math.nan),
    ("", math.nan),
])
def test_ranking_parser(completion, rank):
    assert parse_ranking(completion) == rank or (math.isnan(rank) and math.isnan(parse_ranking(completion)))


def test_logprob_preference_weights_m_against_M():
    top = [{"token": "M", "logprob": -0.017597131}, {"token": "m", "logprob": -4.048847},
           {"token": "Both", "logprob": -14.9}]
    p_m = math.exp(-4.048847) / (math.exp(-4.048847) + math.exp(-0.017597131))
    assert logprob_preference(top) == pytest.approx(2 - p_m)
    assert logprob_preference([{"token": "M", "logprob": -0.1}]) == 2.0
    assert math.isnan(logprob_preference([{"token": "The", "logprob": -0.1}]))
    assert unswitch(logprob_preference(top), True) == pytest.approx(1 + p_m)
    rendered = render_pairwise("Say hi.", "hi", "hello", "weighted_alpaca_eval_gpt4_turbo").messages
    assert rendered[1]["content"].endswith("## Best Model Identifier")


ROWS = [  # (preference as published, output_2) for the model "my-model" against gpt4_1106_preview
    (2, "a" * 10), (1.0, "b" * 20), ("1.5", "c" * 30), (0, "d" * 40), (None, "e" * 50),
    (1.75, "f" * 60), (1.2, "g" * 70), (2.0, "h" * 80), (2.5, "i" * 90), ("2", "j" * 100),
]


def _annotations(path: Path) -> Path:
    rows = [{"instruction": f"instruction {i}", "output_1": "x" * 55, "generator_1": "gpt4_1106_preview",
             "dataset": "helpful_base", "output_2": out, "generator_2": "my-model", "annotator": "weighted_alpaca_eval_gpt4_turbo",
             "preference": pref, "raw_completion": None} for i, (pref, out) in enumerate(ROWS)]
    rows += [{**r, "generator_2": "gpt4_1106_preview", "output_2": r["output_1"], "preference": 1.5} for r in rows]
    path.write_text(json.dumps(rows, indent=2))
    return path


def _expected_row() -> dict:
    # by hand: 0 -> 1.5 (draw); None and 2.5 dropped; q = p - 1 over the 8 kept rows
    q = [1, 0, 0.5, 0.5, 0.75, 0.2, 1, 1]
    mean = sum(q) / 8
    sem = math.sqrt(sum((x - mean) ** 2 for x in q) / 7) / math.sqrt(8)
    # discrete: 1.75 -> 2, 1.2 -> 1, 2.5 -> 2 (half to even, and kept), 1.5 and 0 draws, None dropped
    discrete = [1, 0, 0.5, 0.5, 1, 0, 1, 1, 1]
    return {"generator": "my-model", "win_rate": 61.875, "standard_error": sem * 100, "n_wins": 4, "n_wins_base": 2,
            "n_draws": 2, "n_total": 8, "discrete_win_rate": sum(discrete) / 9 * 100, "avg_length": 55}


def test_winrate_reproduces_a_leaderboard_row(tmp_path):
    from evaluation.winrate import read_annotations

    rows = leaderboard(read_annotations(_annotations(tmp_path / "annotations.json")))
    mine = next(r for r in rows if r["generator"] == "my-model")
    assert mine == pytest.approx(_expected_row())
    assert mine["standard_error"] == pytest.approx(13.6256, abs=1e-4)
    itself = next(r for r in rows if r["generator"] == "gpt4_1106_preview")
    assert (itself["win_rate"], itself["n_draws"], itself["discrete_win_rate"]) == (50.0, 10, 50.0)


def test_get_winrate_edge_cases():
    assert get_winrate([2])["n_total"] == 1 and math.isnan(get_winrate([2])["standard_error"])
    assert math.isnan(get_winrate([None, 3])["win_rate"])


def test_cli_winrate_json(tmp_path, capsys):
    path = _annotations(tmp_path / "annotations.json")
    assert main(["eval", "winrate", "--annotations", str(path), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == pytest.approx(_expected_row())
    assert list(lines[0])[:8] == ["generator", "win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total",
                                  "discrete_win_rate"]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "i", "output_1": "a", "output_2": "b", "generator_1": "x",
                                "generator_2": "y", "preference": "left"}]))
    assert main(["eval", "winrate", "--annotations", str(bad)]) == 1
    assert "bad.json: record 0: field 'preference' is not a number" in capsys.readouterr().err


def _synthetic(n: int, weights: tuple[float, float, float], seed: int = 0):
    """Rows drawn from the LC GLM itself: tanh(std length diff), difficulty and bias weights known."""
    rng = np.random.default_rng(seed)
    baseline_len = rng.integers(200, 2000, n)
    model_len = np.maximum(1, baseline_len + rng.normal(300, 600, n).astype(int))
    delta = baseline_len - model_len
    difficulty = rng.normal(0, 1, n)
    logits = weights[0] * np.tanh(delta / delta.std(ddof=1)) + weights[1] * difficulty + weights[2]
    wins = rng.random(n) < 1 / (1 + np.exp(-logits))
    return [2.0 if w else 1.0 for w in wins], baseline_len.tolist(), model_len.tolist(), difficulty.tolist()


def test_length_controlled_glm_recovers_known_coefficients():
    true = (-1.2, 0.8, 0.4)  # longer model outputs win more; harder instructions favour the model; a small bias
    prefs, base, model, difficulty = _synthetic(4000, true)
    lc = length_controlled_winrate(prefs, base, model, difficulty)
    assert lc.glm == "length_controlled_noreg"
    assert list(lc.weights.values()) == pytest.approx(list(true), abs=0.15)
    expected = 100 * np.mean(1 / (1 + np.exp(-(true[1] * np.array(difficulty) + true[2]))))
    assert lc.winrate == pytest.approx(expected, abs=2.0)
    assert lc.winrate < 100 * (np.mean(prefs) - 1)  # the length advantage is taken out
    assert 0 < lc.standard_error < 1


def test_length_controlled_against_itself_is_50():
    lc = length_controlled_winrate([1.5, 1.5, None, 1.5], [5, 6, 7, 8], [5, 6, 7, 8], [0.1, 0.2, 0.3, 0.4], is_baseline=True)
    assert (lc.winrate, lc.standard_error) == (50.0, 0.0)


def test_cli_length_controlled(tmp_path, capsys):
    prefs, base, model, difficulty = _synthetic(300, (-1.0, 0.5, 0.2), seed=1)
    rows = [{"instruction": f"i{i}", "output_1": "x" * b, "output_2": "y" * m, "generator_1": "base", "generator_2": "model",
             "preference": p} for i, (p, b, m) in enumerate(zip(prefs, base, model))]
    rows += [{**r, "generator_2": "base", "output_2": r["output_1"], "preference": 1.5} for r in rows]
    (tmp_path / "annotations.json").write_text(json.dumps(rows))
    with open(tmp_path / "instruction_difficulty.csv", "w", newline="") as f:
        csv.writer(f).writerows([["", "instruction_difficulty"], *enumerate(difficulty)])
    argv = ["eval", "winrate", "--annotations", str(tmp_path / "annotations.json"), "--json",
            "--instruction-difficulty", str(tmp_path / "instruction_difficulty.csv")]
    assert main(argv) == 0
    by_name = {r["generator"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert by_name["base"]["length_controlled_winrate"] == 50.0
    direct = length_controlled_winrate(prefs, base, model, difficulty)
    assert by_name["model"]["length_controlled_winrate"] == pytest.approx(direct.winrate)
    assert by_name["model"]["lc_glm"] == "length_controlled_noreg"

    short = tmp_path / "short.csv"
    short.write_text("index,instruction_difficulty\n0,0.5\n")
    assert main(argv[:-1] + [str(short)]) == 1
    assert "no instruction difficulty for index 1" in capsys.readouterr().err


def test_regularised_glm_with_gamed_baselines(tmp_path):
    from evaluation.length_control import read_gamed

    prefs, base, model, difficulty = _synthetic(200, (-1.0, 0.5, 0.2), seed=2)
    gamed_path = tmp_path / "df_gamed.csv"
    with open(gamed_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "model", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline"])
        for name, sign in (("gpt4_1106_preview_verbose", -1.0), ("gpt4_1106_preview_concise", 1.0)):
            for i, d in enumerate(difficulty):
                writer.writerow([i, name, 0.7 if sign < 0 else 0.3, sign, d, False])
    gamed = read_gamed(gamed_path)
    assert gamed.difficulty_by_index[3] == pytest.approx(difficulty[3])
    lc = length_controlled_winrate(prefs, base, model, difficulty, gamed=gamed)
    assert lc.glm == "length_controlled_v1" and 0 < lc.winrate < 100


def test_fit_matches_alpaca_evals_own_fit():
    """Coefficients from AlpacaEval's fit_LogisticRegressionCV run on the same rows (scikit-learn 1.9.1)."""
    prefs, base, model, difficulty = _synthetic(805, (-0.6, 1.0, -0.3), seed=3)
    lc = length_controlled_winrate(prefs, base, model, difficulty)
    assert list(lc.weights.values()) == pytest.approx([-0.60934679, 1.00787106, -0.19458787], abs=1e-6)
