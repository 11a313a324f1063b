"""``alignsmith eval ...``: scoring LLM-judge outputs (MT-Bench grades, AlpacaEval win rates)."""

from alignsmith.cli import Command, CommandGroup

GROUP = CommandGroup("eval", "evaluation: LLM judges, win rates (lighteval and answer generation: planned)", "evaluation/", {
    "mtbench-score": Command(
        "MT-Bench scores per model from FastChat single-answer judgments, as FastChat's show_result computes them.",
        "evaluation.mtbench:cli",
    ),
    "winrate": Command(
        "AlpacaEval leaderboard rows (win rate, standard error, LC win rate) from pairwise annotations.",
        "evaluation.winrate:cli",
    ),
})
