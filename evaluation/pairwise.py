"""AlpacaEval-style pairwise judging: the judge prompt, its seeded output order, and reading preferences.

Matches AlpacaEval (``tatsu-lab/alpaca_eval``) so that our preferences feed its win rates unchanged:

* the output order is randomised per row, seeded by the instruction alone (the same pair is always
  shown the same way, whichever model asks), and the preference is un-swapped (``3 - p``) after parsing;
* the template is filled by replacing each ``{placeholder}``'s first occurrence in turn (AlpacaEval does
  not use ``str.format``: its prompts contain literal braces), then split into chat messages at
  ``<|im_start|>`` as AlpacaEval does for chat judges;
* a preference is 1 when ``output_1`` wins, 2 when ``output_2`` wins, 1.5 for identical outputs (never
  sent to the judge), NaN when the judge's answer cannot be read.

Prompts are AlpacaEval's, bundled under ``evaluation/data/alpaca_eval`` (Apache-2.0).
"""

from __future__ import annotations

import ast
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Any, Mapping, Sequence

from evaluation.inputs import DATA_DIR

ALPACA_DIR = DATA_DIR / "alpaca_eval"
# evaluator name -> its prompt template, as in AlpacaEval's evaluators_configs
TEMPLATES = {
    "alpaca_eval_gpt4": ALPACA_DIR / "alpaca_eval_gpt4" / "alpaca_eval.txt",  # ranking_parser
    "weighted_alpaca_eval_gpt4_turbo": ALPACA_DIR / "alpaca_eval_clf_gpt4_turbo" / "alpaca_eval_clf.txt",  # logprob_parser
}
SEED = 123  # AlpacaEval's annotator seed, part of every order decision
SWITCH_KEY = "is_switched_outputs"  # AlpacaEval's switch column name, the prefix of the order seed
PLACEHOLDER = re.compile(r"{([^ \s]+?)}")  # AlpacaEval's placeholder pattern
START, END = "<|im_start|>", "<|im_end|>"
DRAW = 1.5


@cache
def template(evaluator: str) -> str:
    """The prompt template of an AlpacaEval evaluator (``alpaca_eval_gpt4``, ``weighted_alpaca_eval_gpt4_turbo``)."""
    if evaluator not in TEMPLATES:
        raise ValueError(f"unknown evaluator {evaluator!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[evaluator].read_text(encoding="utf-8")


def is_switched(instruction: str, seed: int = SEED) -> bool:
    """Whether AlpacaEval shows this instruction's outputs swapped: a coin seeded by the instruction."""
    return random.Random(SWITCH_KEY + instruction + str(seed)).choices([False, True], k=1)[0]


def fill_template(text: str, fields: Mapping[str, Any]) -> str:
    """Replace each placeholder's first occurrence, in order of first appearance, as AlpacaEval's ``make_prompts``."""
    for name in Counter(PLACEHOLDER.findall(text)):
        text = text.replace("{" + name + "}", str(fields[name]), 1)
    return text


def chatml_to_messages(prompt: str) -> list[dict[str, str]]:
    """Split a ``<|im_start|>role ... <|im_end|>`` prompt into messages, stripping each, as AlpacaEval does."""
    prompt = prompt.strip()
    if not (prompt.startswith(START) and prompt.endswith(END)):
        raise ValueError("a chat judge prompt must start with <|im_start|> and end with <|im_end|>")
    messages = []
    for block in prompt.split(START)[1:]:
        role, _, rest = block.partition("\n")
        messages.append({"role": role.strip(), "content": rest.split(END, 1)[0].strip()})
    return messages


@dataclass(frozen=True)
class PairwisePrompt:
    """What goes to the judge for one row, and whether its outputs were swapped (to undo after parsing)."""

    messages: list[dict[str, str]]
    switched: bool


def render_pairwise(instruction: str, output_1: str, output_2: str, evaluator: str = "alpaca_eval_gpt4") -> PairwisePrompt:
    """The judge messages for one row, with ``output_1``/``output_2`` in AlpacaEval's seeded order."""
    switched = is_switched(instruction)
    if switched:
        output_1, output_2 = output_2, output_1
    text = fill_template(template(evaluator), {"instruction": instruction, "output_1": output_1, "output_2": output_2})
    return PairwisePrompt(chatml_to_messages(text), switched)


def unswitch(preference: float, switched: bool) -> float:
    """The preference in the row's own order: a swapped row's judge said ``3 - p`` (1 <-> 2, floats mirrored)."""
    return 3 - preference if switched else preference


def parse_ranking(completion: str, model_1_name: str = "model_1") -> float:
    """The rank AlpacaEval's ``ranking_parser`` reads for ``model_1`` (1 or 2), else NaN.

    The completion must be a Python literal list of ``{'model': ..., 'rank': ...}``; anything else,
    or a rank other than 1 or 2, is NaN (AlpacaEval logs it and drops the row from win rates).
    """
    try:
        ranking = ast.literal_eval(completion)
        rank = next(entry for entry in ranking if entry["model"] == model_1_name)["rank"]
    except Exception:  # noqa: BLE001 - AlpacaEval treats any unreadable completion as no annotation
        return math.nan
    return rank if rank in (1, 2) else math.nan


def logprob_preference(
    top_logprobs: Sequence[Mapping[str, Any]],
    numerator_token: str = "m",
    denominator_tokens: Sequence[str] = ("m", "M"),
) -> float:
    """AlpacaEval's weighted preference from a judge's first-token logprobs: ``2 - P(m) / (P(m) + P(M))``.

    ``m`` names ``output_1`` in the prompt, so 1 means ``output_1`` surely wins and 2 that it surely
    loses. A token missing from ``top_logprobs`` has probability 0; if none is present, NaN.
    ``top_logprobs`` is OpenAI's list of ``{"token", "logprob"}`` (for the weighted judge: top 5).
    """
    wanted = set(denominator_tokens) | {numerator_token}
    logprobs = {entry["token"]: entry["logprob"] for entry in top_logprobs if entry["token"] in wanted}
    if not logprobs:
        return math.nan
    numerator = logprobs.get(numerator_token, -math.inf)
    denominator = _logsumexp([logprobs.get(t, -math.inf) for t in denominator_tokens])
    return 2 - math.exp(numerator - denominator)


def _logsumexp(values: Sequence[float]) -> float:
    """log(sum(exp(v))) without overflow; -inf when every value is -inf (then the preference is out of range)."""
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


def preference(output_1: str, output_2: str, judged: float, switched: bool) -> float:
    """A row's final preference: 1.5 for identical outputs (AlpacaEval never asks the judge), else un-swapped."""
    return DRAW if output_1 == output_2 else unswitch(judged, switched)
