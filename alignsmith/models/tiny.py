"""Tiny, deterministic, offline models that stand in for Hub checkpoints.

Tests, demos and benchmarks need folders that behave exactly like a downloaded model id
(`from_pretrained`, trl, peft, lighteval) on machines that cannot reach the Hub. Everything here
is built from a seed: the same arguments always give byte-identical files, so a test can pin a
model by construction instead of by download.
"""

from __future__ import annotations

import argparse
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AddedToken,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    BertConfig,
    BertModel,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from alignsmith.cards import RANDOM_WEIGHTS_MARKER, RANDOM_WEIGHTS_TAG

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")
END_OF_TURN = "<|end|>"
log = logging.getLogger(__name__)

SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, *ROLE_TOKENS, END_OF_TURN)

IMAGE_TOKEN = "<image>"


def _chat_template(content: str, prelude: str = "") -> str:
    """The chat format, with `content` the Jinja expression that renders one message's content.

    Assistant content (and the EOS that ends it) sits inside {% generation %} so trl's
    `assistant_only_loss=True` can mask everything else, and a model trained on it learns to stop.
    """
    return (
        prelude + "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ '<|assistant|>' }}{% generation %}{{ " + content + " + eos_token }}{% endgeneration %}"
        "{% else %}"
        "{{ '<|' + message['role'] + '|>' + " + content + " + '<|end|>' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )


CHAT_TEMPLATE = _chat_template("message['content']")

# The same format for processors: content is a string or a list of parts (as transformers and trl
# write multimodal messages), each `{"type": "image"}` part becoming the `<image>` the processor expands.
VISION_CHAT_TEMPLATE = _chat_template(
    "render(message['content'])",
    prelude="{% macro render(content) %}"
    "{% if content is string %}{{ content }}"
    "{% else %}{% for part in content %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endmacro %}",
)

# A small, varied corpus: enough merges to make realistic-looking token lengths, prompts of the
# Deita scorers and the Vicuna template included so they tokenize compactly.
_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea and the wind at night.",
    "Explain how photosynthesis works in simple terms for a child.",
    "Give me three tips for staying healthy during the winter months.",
    "Translate the following sentence into German: I like reading books.",
    "Summarize the plot of a story where a robot learns to paint.",
    "How do I sort a list of numbers in Python? Use sorted(numbers) or numbers.sort().",
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "SELECT name, age FROM users WHERE age > 30 ORDER BY name;",
    "The meeting is scheduled for 3 pm on Tuesday, 12 March 2024.",
    "Please list the steps to bake a loaf of bread at home.",
    "I'm sorry, but I can't help with that request.",
    "Sure! Here is a detailed, step-by-step answer to your question.",
    "You are a helpful assistant. Please identify the complexity score of the following user query.",
    "You are a helpful assistant. Please identify the quality score of the Response corresponding to the Question.",
    "##Query: ##Complexity: #Question#: #Response#: ##Quality:",
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions. USER: ASSISTANT:",
    "Numbers: 0 1 2 3 4 5 6 7 8 9, 10, 42, 100, 2048, 3.14159.",
    "Why is the sky blue? Sunlight is scattered by the molecules in the air, and blue light scatters most.",
    "Describe the image in detail, including the colors, objects and people you can see.",
    "Is it safe to eat raw cookie dough? It can contain raw eggs and uncooked flour.",
    "Compare the advantages and disadvantages of renewable energy sources.",
    "Café, naïve, über, señor, Zürich: accents and unicode text should round-trip.",
    "{braces} [brackets] (parentheses) <angles> \"quotes\" 'apostrophes' and back\\slashes.",
)
_CORPUS_REPEATS = 20


def build_tokenizer(
    seed: int = 0,
    vocab_size: int = 512,
    model_max_length: int = 512,
    chat_template: str | None = CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the built-in corpus.

    Digits are split individually before byte-level encoding (as LLaMA and Mistral do), so "1".."6"
    are single tokens and never merge with a preceding space: a prompt ending in a space is followed
    by the bare digit, which is what the Deita scorers read. The seed shuffles the corpus, which
    changes merge order; the same seed always gives the same tokenizer. Without a chat template
    (``chat_template=None``) text is encoded as is by libraries that prefer chat formatting.
    """
    corpus = list(_CORPUS) * _CORPUS_REPEATS
    random.Random(seed).shuffle(corpus)
    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        add_bos_token=True,
        chat_template=chat_template,
        model_max_length=model_max_length,
    )


# LLaMA-style decoders share every config field name, so one set of arguments builds any of them.
ARCHITECTURES: dict[str, type[PretrainedConfig]] = {
    "llama": LlamaConfig,
    "qwen2": Qwen2Config,
    "mistral": MistralConfig,
}


# Saved in config.json (and kept by models trained from it), so every dataset card built with a tiny model
# warns that its numbers are meaningless (see alignsmith.publish.random_weight_refs).
_RANDOM_WEIGHTS = {RANDOM_WEIGHTS_MARKER: True}


def _seeded_init(seed: int, build: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    """Initialise weights from `seed` without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _decoder_config(
    config_class: type[PretrainedConfig], tok: PreTrainedTokenizerBase, **fields: object
) -> PretrainedConfig:
    """A decoder config whose vocabulary and special token ids are the tokenizer's."""
    return config_class(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **fields,
    )


def _greedy_generation_config(tok: PreTrainedTokenizerBase) -> GenerationConfig:
    """Greedy and short, so generations from a tiny model are reproducible and fast."""
    return GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )


def build_causal_lm(
    out_dir: str | Path,
    *,
    architecture: str = "llama",
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    vocab_size: int = 512,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Save a randomly initialised causal LM, its tokenizer and generation config to `out_dir`.

    The folder loads wherever a Hub model id does; the defaults make a ~107k-parameter model.
    `intermediate_size` defaults to twice the hidden size. Without `tokenizer`, one is trained with
    `build_tokenizer(seed, vocab_size)`.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}")
    tok = tokenizer or build_tokenizer(
        seed=seed, vocab_size=vocab_size, model_max_length=max_position_embeddings
    )
    config = _decoder_config(
        ARCHITECTURES[architecture], tok,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        **_RANDOM_WEIGHTS,
    )
    model = _seeded_init(seed, lambda: AutoModelForCausalLM.from_config(config))
    model.generation_config = _greedy_generation_config(tok)
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_sentence_transformer(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    max_position_embeddings: int = 512,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Save a tiny BERT-like encoder with mean pooling as a sentence-transformers model folder.

    `SentenceTransformer(out_dir)` loads it like any Hub embedding model. The default tokenizer has
    no chat template: sentence-transformers would otherwise wrap every text in it.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    tok = tokenizer or build_tokenizer(seed=seed, model_max_length=max_position_embeddings, chat_template=None)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tok.pad_token_id,
        **_RANDOM_WEIGHTS,
    )
    encoder = _seeded_init(seed, lambda: BertModel(config))
    out = Path(out_dir)
    encoder.save_pretrained(out)
    tok.save_pretrained(out)
    model = SentenceTransformer(modules=[Transformer(str(out)), Pooling(hidden_size, "mean")], device="cpu")
    model.save(str(out))
    return out


def _square_image_processor(image_size: int, patch_size: int) -> CLIPImageProcessorPil:
    """CLIP's PIL image processor (no torchvision here) for ``image_size`` squares cut in whole patches: images
    are resized (shortest edge) and centre-cropped."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def build_vision_language_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    max_position_embeddings: int = 2048,
) -> Path:
    """Save a LLaVA-style model (CLIP vision tower, projector, Llama decoder) and its processor.

    The folder loads with `AutoProcessor` and `AutoModelForImageTextToText` like a Hub VLM and trains
    in trl's SFT on image+text conversations. The processor expands each `<image>` to one token per
    patch, (image_size // patch_size) ** 2, matching what the projector feeds the decoder: CLIP's CLS
    token is dropped by the "default" feature selection. The default context is longer than the text
    models' because every image takes that many tokens. Its image processor is the PIL one, as
    there is no torchvision here.
    """
    image_processor = _square_image_processor(image_size, patch_size)
    tok = build_tokenizer(seed=seed, model_max_length=max_position_embeddings, chat_template=VISION_CHAT_TEMPLATE)
    tok.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    image_tokens = (image_size // patch_size) ** 2
    vision = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    text = _decoder_config(
        LlamaConfig, tok,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=image_tokens,
        vision_feature_select_strategy="default",
        **_RANDOM_WEIGHTS,
    )
    model = _seeded_init(seed, lambda: AutoModelForImageTextToText.from_config(config))
    model.generation_config = _greedy_generation_config(tok)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, which "default" selection removes again
        chat_template=VISION_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _with_post_processor(tok: PreTrainedTokenizerBase, *, pair: bool) -> PreTrainedTokenizerBase:
    """Make `tok` wrap every text in BOS ... EOS (and a pair as BOS a EOS b EOS).

    Encoders (BERT, DeBERTa, CLIP) read the sequence marks: CLIP pools at the first EOS, a cross-encoder
    sees where the premise ends. The template is saved with the tokenizer, so the folder reloads with it.
    """
    from tokenizers import processors

    bos, eos = tok.bos_token, tok.eos_token
    specials = [(bos, tok.bos_token_id), (eos, tok.eos_token_id)]
    template = {"pair": f"{bos} $A {eos} $B:1 {eos}:1"} if pair else {}
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=specials, **template
    )
    return tok


def build_sequence_classifier(
    out_dir: str | Path,
    *,
    num_labels: int,
    id2label: Sequence[str] | dict[int, str] | None = None,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    max_position_embeddings: int = 512,
) -> Path:
    """Save a tiny BERT sequence classifier (a cross-encoder or a reward model) and its tokenizer.

    It loads with `AutoModelForSequenceClassification` and `AutoTokenizer` as an NLI cross-encoder
    (``num_labels=3, id2label=['contradiction', 'entailment', 'neutral']``) or a reward model
    (``num_labels=1``) does. The tokenizer encodes a pair as ``BOS a EOS b EOS``, as BERT-style
    cross-encoders do ([CLS] a [SEP] b [SEP]); it has no chat template.
    """
    from transformers import AutoModelForSequenceClassification

    if id2label is not None:
        labels = dict(id2label) if isinstance(id2label, dict) else dict(enumerate(id2label))
        if len(labels) != num_labels:
            raise ValueError(f"id2label has {len(labels)} labels but num_labels is {num_labels}")
    else:
        labels = {i: f"LABEL_{i}" for i in range(num_labels)}
    tok = build_tokenizer(seed=seed, model_max_length=max_position_embeddings, chat_template=None)
    tok = _with_post_processor(tok, pair=True)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tok.pad_token_id,
        num_labels=num_labels,
        id2label=labels,
        label2id={name: i for i, name in labels.items()},
        **_RANDOM_WEIGHTS,
    )
    model = _seeded_init(seed, lambda: AutoModelForSequenceClassification.from_config(config))
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def build_clip_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    projection_dim: int = 16,
    max_position_embeddings: int = 77,
) -> Path:
    """Save a tiny dual-encoder `CLIPModel` and its `CLIPProcessor` (PIL image processor: no torchvision here).

    Like OpenAI's CLIP, texts are wrapped in ``<|startoftext|> ... <|endoftext|>``, the text tower pools
    at the first ``<|endoftext|>`` and the context is 77 tokens. Images are resized (shortest edge) and
    centre-cropped to ``image_size``. Loads with `CLIPModel` and `AutoProcessor`/`CLIPProcessor`.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    image_processor = _square_image_processor(image_size, patch_size)
    tok = build_tokenizer(seed=seed, model_max_length=max_position_embeddings, chat_template=None)
    # ids past the shared special tokens: CLIP treats an EOS id of 2 as "pool at the largest id" (legacy)
    tok.add_special_tokens({"bos_token": CLIP_BOS, "eos_token": CLIP_EOS})
    tok = _with_post_processor(tok, pair=False)
    layers = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
    )
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            max_position_embeddings=max_position_embeddings,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **layers,
        ),
        vision_config=dict(image_size=image_size, patch_size=patch_size, **layers),
        projection_dim=projection_dim,
        **_RANDOM_WEIGHTS,
    )
    model = _seeded_init(seed, lambda: CLIPModel(config))
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tok)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# (library_name, pipeline_tag) of each kind's model card: what the Hub shows and which widget it offers.
_CARD_KINDS = {
    "causal_lm": ("transformers", "text-generation"),
    "sentence_transformer": ("sentence-transformers", "sentence-similarity"),
    "vision_language": ("transformers", "image-text-to-text"),
    "sequence_classifier": ("transformers", "text-classification"),
    "clip": ("transformers", "zero-shot-image-classification"),
}


def cli(argv: Sequence[str]) -> int:
    """``alignsmith models tiny``: build a seeded tiny model and optionally publish it to the Hub."""
    parser = argparse.ArgumentParser(prog="alignsmith models tiny", description=cli.__doc__)
    parser.add_argument("--out", required=True, help="Folder to save the model into.")
    parser.add_argument("--kind", choices=sorted(_CARD_KINDS), default="causal_lm")
    parser.add_argument("--architecture", default="llama", help="Decoder architecture (causal_lm only).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--max-position-embeddings", type=int, default=None,
                        help="Context length (causal_lm: 512, vision_language: 2048; rotary positions, so it adds "
                        "no weights).")
    parser.add_argument("--image-size", type=int, default=32, help="Image side in pixels (vision_language, clip).")
    parser.add_argument("--patch-size", type=int, default=8, help="Vision patch side (vision_language, clip).")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="sequence_classifier: its label names in id order (e.g. contradiction entailment "
                        "neutral for an NLI cross-encoder); unset: one output, a reward model.")
    parser.add_argument("--publish", metavar="REPO_ID", help="Also publish the folder as this model repo.")
    parser.add_argument("--tag", default=None, help="Version tag of the published model.")
    parser.add_argument("--hub", default="local", help="'local', 'huggingface' or a Hub URL.")
    parser.add_argument("--hub-root", default=None, help="Storage folder of the embedded Hub.")
    args = parser.parse_args(argv)

    # unset, the context length is the builder's own default
    context = {} if args.max_position_embeddings is None else {"max_position_embeddings": args.max_position_embeddings}
    if args.kind == "causal_lm":
        out = build_causal_lm(args.out, architecture=args.architecture, seed=args.seed,
                              hidden_size=args.hidden_size, num_layers=args.num_layers, **context)
    elif args.kind == "vision_language":
        out = build_vision_language_model(args.out, seed=args.seed, hidden_size=args.hidden_size,
                                          num_layers=args.num_layers, image_size=args.image_size,
                                          patch_size=args.patch_size, **context)
    elif args.kind == "sequence_classifier":
        out = build_sequence_classifier(args.out, num_labels=len(args.labels or [None]), id2label=args.labels,
                                        seed=args.seed, hidden_size=args.hidden_size, num_layers=args.num_layers)
    elif args.kind == "clip":
        out = build_clip_model(args.out, seed=args.seed, hidden_size=args.hidden_size, num_layers=args.num_layers,
                               image_size=args.image_size, patch_size=args.patch_size)
    else:
        out = build_sentence_transformer(args.out, seed=args.seed, hidden_size=args.hidden_size,
                                              num_layers=args.num_layers)
    log.info("tiny %s saved to %s", args.kind, out)
    if args.publish:
        _publish(Path(out), args)
    return 0


def _publish(folder: Path, args: argparse.Namespace) -> None:
    from alignsmith.cards import CardContent, model_card
    from alignsmith.endpoint import connect
    from alignsmith.lineage import Lineage
    from alignsmith.publish import publish_folder
    from alignsmith.recipes import HubRecipe, OutputRepo

    connect(HubRecipe(hub=args.hub, hub_root=args.hub_root))
    output = OutputRepo(repo_id=args.publish, tag=args.tag)
    recipe = {k: v for k, v in vars(args).items() if k not in ("hub", "hub_root")}
    lineage = Lineage(command="models tiny", recipe=recipe)
    content = CardContent(
        title=f"Tiny {args.kind} ({args.architecture}, seed {args.seed})",
        summary="A randomly initialised tiny model built by `alignsmith models tiny`. It exists to exercise "
        "pipelines offline; its outputs (scores, generations) are meaningless.",
        license="apache-2.0",
        tags=["tiny", RANDOM_WEIGHTS_TAG],
    )
    library, pipeline = _CARD_KINDS[args.kind]
    card = model_card(args.publish, content, lineage, base_model=None, library_name=library,
                      pipeline_tag=pipeline, revision_hint=args.tag or "main")
    release = publish_folder(output, folder, card, lineage)
    print(f"published {release.repo_id}@{release.commit_sha} (revision {release.revision})")
