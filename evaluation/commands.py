"""``alignsmith eval ...``: answering prompt sets, LLM judges, lighteval benchmarks and scoring judges' outputs."""

from alignsmith.cli import Command, CommandGroup

GROUP = CommandGroup("eval", "evaluation: answers, LLM judges, lighteval, win rates", "evaluation/", {
    "answers": Command(
        "A chat model's answers to MT-Bench or a prompt dataset (resumable), published as a dataset.",
        "evaluation.answers:run",
        recipe="evaluation.answers:AnswersRecipe",
        example="recipes/eval/answers/tiny.yaml",
    ),
    "judge": Command(
        "An LLM judge grades an answers dataset (MT-Bench single or AlpacaEval pairwise), cached; publishes the judgments.",
        "evaluation.judging:run",
        recipe="evaluation.judging:JudgeRecipe",
        example="recipes/eval/judge/tiny.yaml",
    ),
    "lighteval": Command(
        "lighteval benchmarks (custom tasks over Hub datasets, Open LLM Leaderboard tasks) on a pinned model; "
        "results appended to a results dataset and the model card's model-index.",
        "evaluation.lighteval_run:run",
        recipe="evaluation.lighteval_run:LightevalRecipe",
        example="recipes/eval/lighteval/tiny.yaml",
    ),
    "metrics": Command(
        "Polite Flamingo's judge-free metrics of an answers dataset (VQA by NLI, ROUGE-L, STS, reward win rate, "
        "POPE), appended to a results dataset and the model card's model-index.",
        "evaluation.reference_metrics:run",
        recipe="evaluation.reference_metrics:MetricsRecipe",
        example="recipes/eval/metrics/tiny.yaml",
    ),
    "run": Command(
        "Answers, judgments and results for several models from one recipe; a rerun skips what is published.",
        "evaluation.run:run",
        recipe="evaluation.run:EvalRunRecipe",
        example="recipes/eval/run/tiny.yaml",
    ),
    "mtbench-score": Command(
        "MT-Bench scores per model from FastChat single-answer judgments, as FastChat's show_result computes them.",
        "evaluation.mtbench:cli",
    ),
    "winrate": Command(
        "AlpacaEval leaderboard rows (win rate, standard error, LC win rate) from pairwise annotations.",
        "evaluation.winrate:cli",
    ),
})
