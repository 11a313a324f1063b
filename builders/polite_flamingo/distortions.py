"""The three Polite Flamingo response distortions, as pure seeded functions (no model calls here).

A rewriter learns to turn a distorted response back into the polite original, so the distortions must
match the published recipe (notes ``polite-flamingo.md`` §1.2-§1.4), not just look similar:

* **LLM-instructed** (§1.2): :func:`llm_instructed_prompt` renders the Guanaco prompt of the README
  byte for byte, with one of the 24 published commands spliced in with p = 0.5 (otherwise the empty
  string, which leaves a double space). The model continues after the opening quote;
  :func:`cut_at_closing_quote` keeps the text up to the first ASCII ``"`` and turns a continuation
  without one (or an empty one) into a :class:`Rejection`. The decoding settings are unpublished: the
  recipe chooses and records them.
* **Random augmentation** (§1.3): the four README steps, each with p = 0.5, intensities U(0, 1):
  truncate to the first k ``.``-pieces (k ~ U{1..n}, re-joined with ``""``), shuffle the ``.``-pieces
  (re-joined with ``""`` or ``"\\n"``), nlpaug ``RandomCharAug`` with an action drawn from
  insert/substitute/swap/delete, then nlpaug ``RandomWordAug`` with an action drawn from
  delete/swap/crop.
* **Captions and boxes** (§1.4): :func:`captions_and_boxes_input` lays out COCO captions and
  normalised boxes as in the PF-1M sample, after LLaVA's preamble.

What the augmenters match (read from nlpaug 1.1.11, the release current in 2023, and checked against
the repository HEAD ``63ca3ec``, where these parts differ only by refactoring; the README's calls set
only the action and the p values, so every other setting is nlpaug's default):

* Text is stripped, split into tokens with ``re.split(r"(\\W)")`` (whitespace dropped, so every
  punctuation mark is a token) and re-joined by nlpaug's reverse tokenizer (spaces, then its four
  punctuation/bracket rules). A text the augmenter touches therefore loses newlines and double spaces
  and gains spaces around apostrophes and hyphens, exactly as nlpaug's output does.
* Counts are ``ceil(p * size)`` clamped to [1, 10] and then to the number of candidates. Char level:
  words are drawn among tokens of 4+ characters (``min_char=4``), at most 10 of them
  (``aug_word_max``), with the count computed from *all* tokens; inside a word at most 10 positions
  (``aug_char_max``). Inserted and substituted characters come from A-Z, a-z, 0-9 and
  ``!@#$%^&*()_+``; swap is nlpaug's ``adjacent`` mode with its per-position case preservation;
  deleted-away words vanish. Word level: candidates are tokens that are not punctuation, at most 10
  (``aug_max``); swap is with an adjacent token, with nlpaug's capitalisation rules when position 0
  is involved and its ``i`` -> ``I`` fix; crop removes a run of ``count`` tokens from a random start
  in a random direction. When nothing can be drawn, delete and swap return the stripped input.
* Upstream quirks kept because they shape the data: removing token 0 re-writes token 1 from the
  *original* token 1 (capitalised), which brings token 1 back if it was removed too; a leftward crop
  can start before position ``count - 1`` and then wraps around to the end of the text.
* RandomCharAug's own default action is ``substitute`` and RandomWordAug's is ``delete``; neither
  default is used, because the README always passes a drawn action.

What is not matched:

* The random stream. Draws follow nlpaug's order where that is natural, but every draw comes from one
  ``random.Random`` per row, so outputs are distributed like nlpaug's, not identical to
  ``random.seed(s)`` runs of it.
* Upstream crashes. nlpaug's rightward crop with a count of 1 samples its start from an empty range
  (``ValueError``), and ``augment("")[0]`` raises ``IndexError`` when truncation leaves an empty
  text. The README pipeline produced no pair in those cases, so they come back as a
  :class:`Rejection` with that reason (about 0.5 % of rows for short LLaVA-style answers; they are
  the rows with a low word-level intensity, so rejecting them skews that draw slightly).
* nlpaug itself was not run here (no network), so equivalence rests on reading its source.

How often a text comes out unchanged depends on the corpus: 1/16 of rows apply no step, and a text
without any ``.`` survives both sentence steps, which lifts the rate (e.g. to about 7.6 % when about
7 % of the texts have no period).
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from alignsmith.errors import AlignsmithError
from alignsmith.seeding import row_rng

DistortionKind = Literal["llm_instructed", "random_augmentation", "captions_and_boxes"]


@dataclass(frozen=True)
class Distortion:
    """A distorted response and the parameters drawn to make it (JSON-serialisable, stored per row)."""

    kind: DistortionKind
    text: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """A row that yields no distorted text, with the reason kept for the build report."""

    kind: DistortionKind
    reason: str


class DistortionInputError(AlignsmithError):
    """A source row that cannot be turned into a distortion input: which row, which field, what is wrong."""

    def __init__(self, row_id: object, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"row {row_id!r}, {field}: {problem}")


# --- (a) LLM-instructed distortion ---------------------------------------------------------------

# Published constants (README l.313-353 = paper Table 5), typos included: the Guanaco model was
# prompted with exactly these strings.
DISTORTION_COMMANDS: tuple[str, ...] = (
    "Additionally, I have removed all the punctuation marks and capitalization in my response.",
    "To make my response more unnatural, I have added a little amount of typos and spelling mistakes.",
    "I have also added some grammatical errors to my response.",
    "Moreover, random words and sentences have been removed from my response.",
    "In addition, all letters in my response have been converted to uppercase.",
    "In addition, all letters in my response have been converted to lowercase.",
    "Furthermore, I have replaced certain words with their synonyms in my response.",
    "Additionally, I have inserted unnecessary repetition in my response.",
    "To make my response less coherent, I have rearranged the sentence structure.",
    "I have deliberately used incorrect tenses and verb conjugations in my response.",
    "Moreover, I have introduced unnecessary verbosity in my response.",
    "I make my response as short as possible by removing all unnecessary words and sentences.",
    "I have kept only the essential information and separated them by commas.",
    "I have removed any decorative formatting or styling, which may affect the readability of my response.",
    "I have rewritten the sentences and replaced words with their synonyms.",
    "I have reversed the order of sentences, presenting information from back to front.",
    "I made my response sounds more unprofessional and causual.",
    "Furthermore, I have made the language more complex and sophisticated in my response.",
    "To create ambiguity, I have added multiple interpretations in my sentences.",
    "Additionally, I have used unconventional metaphors and analogies in my response.",
    "To lower the quality of my response, I have added some irrelevant information.",
    "I picked one sentence from my response and repeated it multiple times, each time with a slight change.",
    "Now I use only five words to summarize my response.",
    "I made some modification to make my response less coherent and more unnatural.",
)
COMMAND_PROBABILITY = 0.5

GUANACO_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.\n"
)
DISTORTION_REQUEST = (
    "### Human: Your reply's style, tone, and politeness are excellent, and the content is very detailed. "
    "However, now I would like you to summarize the previous response, keeping only the most crucial "
    "information and removing all other less important content. I want a concise, straightforward reply "
    "without any redundancy. If you find that the overall quality of your response dropped, don't worry, "
    "it's fine. Note that, please do not add anything after giving me your rewritten response.\n"
)
PREFILL_BEFORE_COMMAND = (
    "### Assistant: Sure. I have rewritten my last response to a much shorter and more concise version, "
    "covering only the key information. I pretend to be a cold-hearted, non-talkative, socially inept "
    "robotic assistant to respond to your request. "
)
PREFILL_AFTER_COMMAND = (
    " The following is the as-short-as-possible, low-quality, highly-compressed, rewritten version of my "
    "previous response, and I will not add more content after finishing this response:\n\n\""
)
CLOSING_QUOTE = '"'


def render_llm_instructed_prompt(instruction: str, response: str, command: str | None) -> str:
    """The Guanaco prompt for one (instruction, response), ending in the pre-filled opening quote."""
    return (
        GUANACO_SYSTEM
        + f"### Human: {instruction}\n### Assistant: {response}\n"
        + DISTORTION_REQUEST
        + PREFILL_BEFORE_COMMAND
        + (command or "")
        + PREFILL_AFTER_COMMAND
    )


def llm_instructed_prompt(instruction: str, response: str, rng: random.Random) -> tuple[str, str | None]:
    """Draw the optional command (p = 0.5, uniform over the 24) and render the prompt; returns (prompt, command)."""
    command = rng.choice(DISTORTION_COMMANDS) if rng.random() < COMMAND_PROBABILITY else None
    return render_llm_instructed_prompt(instruction, response, command), command


def cut_at_closing_quote(continuation: str) -> str | Rejection:
    """The distorted text: the continuation up to the first ``"``, which closes the pre-filled quote.

    Without a closing quote the model ran on (or was cut by the token limit), so nothing marks where the
    rewritten response ends: that row is rejected, as is one whose quoted text is empty.
    """
    text, found, _ = continuation.partition(CLOSING_QUOTE)
    if not found:
        return Rejection("llm_instructed", "no closing quote in the continuation")
    if not text.strip():
        return Rejection("llm_instructed", "empty text before the closing quote")
    return text


# --- (b) random augmentation: nlpaug's tokenizer ----------------------------------------------------

_TOKEN_SPLIT = re.compile(r"(\W)")
_DETOKENIZE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\s([.,:;?!%]+)([ '\"`])"), r"\1\2"),
    (re.compile(r"\s([.,:;?!%]+)$"), r"\1"),
    (re.compile(r"\s([\[\(\{\<])\s"), r" \1"),
    (re.compile(r"\s([\]\)\}\>])\s"), r"\1 "),
)


def tokenize(text: str) -> list[str]:
    """nlpaug's default tokenizer: word runs and single non-word characters, whitespace dropped."""
    return [token for token in _TOKEN_SPLIT.split(text) if token.strip()]


def detokenize(tokens: Sequence[str]) -> str:
    """nlpaug's default reverse tokenizer; emptied tokens are left out, as nlpaug's Doc does."""
    text = " ".join(token for token in tokens if token)
    for pattern, replacement in _DETOKENIZE_RULES:
        text = pattern.sub(replacement, text)
    return text.strip()


def _count(size: int, p: float, cap: int) -> int:
    """nlpaug's augmentation count: ceil(p * size), at least 1, at most ``cap``."""
    return min(max(math.ceil(p * size), 1), cap)


# --- char level (RandomCharAug) -----------------------------------------------------------------------

CHAR_ACTIONS = ("insert", "substitute", "swap", "delete")
CHAR_CANDIDATES = string.ascii_uppercase + string.ascii_lowercase + string.digits + "!@#$%^&*()_+"
CHAR_WORD_MAX = 10  # aug_word_max
CHAR_MAX = 10  # aug_char_max
MIN_CHAR = 4  # min_char: shorter words are never drawn


@dataclass(frozen=True)
class CharEdit:
    """One word the char augmenter drew: its token index, before/after, and how many positions were drawn."""

    index: int
    before: str
    after: str
    chars: int


def _adjacent(position: int, last: int, rng: random.Random) -> int:
    """nlpaug's adjacent swap partner: forced inwards at either end, else left or right at random."""
    if position == 0:
        return 1
    if position == last:
        return last - 1
    return position + rng.choice((-1, 1))


def _insert(chars: list[str], positions: list[int], rng: random.Random) -> None:
    for position in sorted(positions, reverse=True):
        chars.insert(position, rng.choice(CHAR_CANDIDATES))


def _substitute(chars: list[str], positions: list[int], rng: random.Random) -> None:
    for position in sorted(positions):
        chars[position] = rng.choice(CHAR_CANDIDATES)


def _swap(chars: list[str], positions: list[int], rng: random.Random) -> None:
    """Swap letters but keep each position's case, as nlpaug does ("This" -> "Htis")."""
    for position in positions:
        other = _adjacent(position, len(chars) - 1, rng)
        upper, other_upper = chars[position].isupper(), chars[other].isupper()
        chars[position], chars[other] = chars[other], chars[position]
        chars[position] = chars[position].upper() if upper else chars[position].lower()
        chars[other] = chars[other].upper() if other_upper else chars[other].lower()


def _delete(chars: list[str], positions: list[int], rng: random.Random) -> None:
    for position in sorted(positions, reverse=True):
        del chars[position]


_CHAR_ACTION_FUNCTIONS: Mapping[str, Callable[[list[str], list[int], random.Random], None]] = {
    "insert": _insert,
    "substitute": _substitute,
    "swap": _swap,
    "delete": _delete,
}


def random_char_augment(
    text: str, rng: random.Random, *, action: str, aug_char_p: float, aug_word_p: float
) -> tuple[str, list[CharEdit]]:
    """nlpaug ``RandomCharAug(action, aug_char_p, aug_word_p)`` with its default caps; returns (text, edits)."""
    if action not in _CHAR_ACTION_FUNCTIONS:
        raise ValueError(f"char action must be one of {CHAR_ACTIONS}, got {action!r}")
    text = text.strip()
    if not text:
        return text, []
    tokens = tokenize(text)
    eligible = [i for i, token in enumerate(tokens) if len(token) >= MIN_CHAR]
    drawn = rng.sample(eligible, min(_count(len(tokens), aug_word_p, CHAR_WORD_MAX), len(eligible)))
    out = list(tokens)
    edits = []
    for index in sorted(drawn):
        chars = list(tokens[index])
        positions = rng.sample(range(len(chars)), min(_count(len(chars), aug_char_p, CHAR_MAX), len(chars)))
        _CHAR_ACTION_FUNCTIONS[action](chars, positions, rng)
        out[index] = "".join(chars)
        edits.append(CharEdit(index, tokens[index], out[index], len(positions)))
    return detokenize(out), edits


# --- word level (RandomWordAug) -----------------------------------------------------------------------

WORD_ACTIONS = ("delete", "swap", "crop")
WORD_MAX = 10  # aug_max


def _word_case(word: str) -> str:
    """nlpaug's case classes; a single capital letter counts as 'capitalize'."""
    if not word:
        return "empty"
    if len(word) == 1 and word.isupper():
        return "capitalize"
    if word.isupper():
        return "upper"
    if word.islower():
        return "lower"
    if any(c.isupper() for c in word[1:]):
        return "mixed"
    return "capitalize" if word[0].isupper() else "unknown"


def _align_capitalization(source: str, target: str) -> str:
    """The word that moves into position 0 takes the capital of the word that left it."""
    if _word_case(source) == "capitalize" and _word_case(target) == "lower":
        return target.capitalize()
    return target


def _swap_words(out: list[str], i: int, j: int) -> None:
    """nlpaug's swap of the current tokens at i and j, moving the sentence capital when position 0 is involved."""
    a, b = out[i], out[j]
    if i != 0 and j != 0:
        out[i], out[j] = b, a
        return
    if i == 0:
        out[i] = b.capitalize() if _word_case(a) == "capitalize" and _word_case(b) == "lower" else b
        out[j] = a.lower() if _word_case(a) == "capitalize" else a
    else:
        out[j] = a.capitalize() if _word_case(a) == "lower" else a
        out[i] = b.lower() if _word_case(b) == "capitalize" else b
    for k in (i, j):
        if out[k] == "i":
            out[k] = "I"


def _remove(out: list[str], tokens: Sequence[str], indices: Sequence[int]) -> None:
    """Empty the tokens from the highest index down; removing token 0 re-writes token 1 from the original."""
    for index in sorted(indices, reverse=True):
        out[index] = ""
        if index == 0:
            out[1] = _align_capitalization(tokens[0], tokens[1])


def random_word_augment(
    text: str, rng: random.Random, *, action: str, aug_p: float
) -> tuple[str, list[int]] | Rejection:
    """nlpaug ``RandomWordAug(action, aug_p)`` with its default cap; returns (text, token indices acted on)."""
    if action not in WORD_ACTIONS:
        raise ValueError(f"word action must be one of {WORD_ACTIONS}, got {action!r}")
    text = text.strip()
    if not text:
        return text, []
    tokens = tokenize(text)
    count = _count(len(tokens), aug_p, WORD_MAX)
    out = list(tokens)
    if action == "crop":
        if not tokens:
            return text, []
        direction = rng.choice((-1, 1))
        if direction > 0 and count == 1:
            return Rejection("random_augmentation", "nlpaug crop of a count of 1 to the right has no start to draw")
        start = rng.randrange(len(tokens) - count + 1)
        indices = [(start + k * direction) % len(tokens) for k in range(count)]
        if len(tokens) < 2:
            return text, []
        _remove(out, tokens, [start + k * direction for k in range(count)])
        return detokenize(out), sorted(indices)
    eligible = [i for i, token in enumerate(tokens) if token not in string.punctuation]
    drawn = rng.sample(eligible, min(count, len(eligible)))
    if not drawn or len(tokens) < 2:
        return text, []
    if action == "delete":
        _remove(out, tokens, drawn)
    else:
        for index in drawn:
            _swap_words(out, index, _adjacent(index, len(tokens) - 1, rng))
    return detokenize(out), sorted(drawn)


# --- (b) the README's four steps ------------------------------------------------------------------------

STEP_PROBABILITY = 0.5


def random_augmentation(text: str, rng: random.Random) -> Distortion | Rejection:
    """The README's text augmentation: truncate, shuffle, char level, word level, each with p = 0.5.

    ``params["steps"]`` lists the steps applied; each applied step stores what it drew.
    """
    params: dict[str, Any] = {"steps": []}
    if rng.random() < STEP_PROBABILITY:
        pieces = text.split(".")
        k = rng.randint(1, len(pieces))
        text = "".join(pieces[:k])
        params["steps"].append("truncate")
        params["truncate"] = {"pieces": len(pieces), "k": k}
    if rng.random() < STEP_PROBABILITY:
        pieces = text.split(".")
        order = list(range(len(pieces)))
        rng.shuffle(order)
        joiner = rng.choice(("", "\n"))
        text = joiner.join(pieces[i] for i in order)
        params["steps"].append("shuffle")
        params["shuffle"] = {"order": order, "joiner": joiner}
    if rng.random() < STEP_PROBABILITY:
        action, aug_char_p, aug_word_p = rng.choice(CHAR_ACTIONS), rng.random(), rng.random()
        if not text:
            return Rejection("random_augmentation", "empty text reached the char augmenter (nlpaug returns no output)")
        text, edits = random_char_augment(text, rng, action=action, aug_char_p=aug_char_p, aug_word_p=aug_word_p)
        params["steps"].append("char")
        params["char"] = {
            "action": action,
            "aug_char_p": aug_char_p,
            "aug_word_p": aug_word_p,
            "words": len(edits),
            "chars": [edit.chars for edit in edits],
        }
    if rng.random() < STEP_PROBABILITY:
        action, aug_p = rng.choice(WORD_ACTIONS), rng.random()
        if not text:
            return Rejection("random_augmentation", "empty text reached the word augmenter (nlpaug returns no output)")
        result = random_word_augment(text, rng, action=action, aug_p=aug_p)
        if isinstance(result, Rejection):
            return result
        text, indices = result
        params["steps"].append("word")
        params["word"] = {"action": action, "aug_p": aug_p, "words": len(indices)}
    return Distortion("random_augmentation", text, params)


def random_augmentations(texts: Sequence[str], row_ids: Sequence[str], seed: int) -> list[Distortion | Rejection]:
    """:func:`random_augmentation` for a batch, each row drawing from its own (seed, row id) generator."""
    if len(texts) != len(row_ids):
        raise ValueError(f"{len(texts)} texts but {len(row_ids)} row ids")
    return [random_augmentation(text, row_rng(seed, row_id)) for text, row_id in zip(texts, row_ids)]


# --- (c) captions and boxes ------------------------------------------------------------------------------

# LLaVA's box description as Polite Flamingo quoted it (README l.280), grammar included.
BOX_PREAMBLE = (
    "The followings are specific object locations within the image, along with detailed coordinates. "
    "These coordinates are in the form of bounding boxes, represented as (x1, y1, x2, y2) with floating "
    "numbers ranging from 0 to 1. These values correspond to the top left x, top left y, bottom right x, "
    "and bottom right y."
)


def _box(row_id: object, index: int, instance: object) -> str:
    """One ``category: [x1, y1, x2, y2]`` line, coordinates in [0, 1] rounded to 3 decimals."""
    where = f"instances[{index}]"
    if not isinstance(instance, Mapping) or not isinstance(instance.get("category"), str):
        raise DistortionInputError(row_id, where, "expected {'category': str, 'bbox': [4 numbers]}")
    bbox = instance.get("bbox")
    if (
        not isinstance(bbox, Sequence)
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    ):
        raise DistortionInputError(row_id, where, f"bbox must be 4 numbers, got {bbox!r}")
    if not all(0.0 <= v <= 1.0 for v in bbox):
        raise DistortionInputError(row_id, where, f"bbox {list(bbox)} is not normalised to [0, 1]")
    coordinates = ", ".join(repr(round(float(v), 3)) for v in bbox)
    return f"{instance['category']}: [{coordinates}]\n"


def captions_and_boxes_input(row: Mapping[str, Any]) -> str:
    """The distorted input for a LLaVA-detail row: captions, blank line, preamble, one box per line.

    Matches the PF-1M sample: captions joined by newlines as given (trailing spaces kept), then
    ``\\n\\n``, the preamble, ``\\n`` and ``category: [x1, y1, x2, y2]\\n`` for every instance in order.
    """
    row_id = row.get("id")
    captions = row.get("captions")
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
        raise DistortionInputError(row_id, "captions", "must be a non-empty list of strings")
    instances = row.get("instances")
    if not isinstance(instances, list):
        raise DistortionInputError(row_id, "instances", "must be a list")
    boxes = "".join(_box(row_id, i, instance) for i, instance in enumerate(instances))
    return "\n".join(captions) + "\n\n" + BOX_PREAMBLE + "\n" + boxes
