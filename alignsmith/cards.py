"""Dataset and model cards that follow the Hub's conventions and carry alignsmith lineage.

Metadata goes in the YAML front matter (``configs``, ``dataset_info``, ``source_datasets``,
``base_model``, ``datasets``...) so the Hub, ``datasets`` and ``transformers`` understand it;
the markdown body is for people: how to load it, what is in it, and plots of the distributions.
Cards are built and read with ``huggingface_hub``'s card classes, so they are written and parsed
the way the Hub's own clients do (and read back with :func:`alignsmith.frontmatter.card_metadata`).
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from alignsmith.lineage import LINEAGE_KEY, ArtifactRef, Lineage

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, RepoCard

RANDOM_WEIGHTS_TAG = "random-weights"  # card tag of a model with random weights, and of data made with one
RANDOM_WEIGHTS_MARKER = "alignsmith_random_weights"  # config.json key of the models `alignsmith models tiny` builds


@dataclass
class Figure:
    """A picture shipped with the card (stored in the repo under ``assets/``)."""

    filename: str
    caption: str
    png: bytes

    @property
    def path_in_repo(self) -> str:
        return f"assets/{self.filename}"


@dataclass
class CardContent:
    """What a builder or trainer wants to say, beyond the metadata alignsmith fills in itself."""

    title: str
    summary: str
    license: str | None = None
    tags: list[str] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    extra_sections: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # extra front-matter keys
    config_descriptions: dict[str, str] = field(default_factory=dict)  # config -> what it holds, if it is published
    citation: str | None = None  # BibTeX of the method's paper, shown in a "Citation" section


def card_text(card_class: type["RepoCard"], metadata: Mapping[str, Any], body: str) -> str:
    """The card's text, its front matter written by ``card_class``'s card data.

    Later keys of ``metadata`` win, as in a dict. The text is read back through ``card_class`` so a
    value YAML cannot load safely (a numpy scalar, say) fails here rather than on the Hub.
    """
    data = card_class.card_data_class(**metadata)
    return str(card_class(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"))


def dataset_metadata(configs: Mapping[str, Mapping[str, Any]], default_config: str | None) -> dict[str, Any]:
    """``configs:`` and ``dataset_info:`` blocks for splits written as ``{config}/{split}-*.parquet``."""
    config_block, info_block = [], []
    for name, splits in configs.items():
        entry: dict[str, Any] = {"config_name": name}
        if name == default_config:
            entry["default"] = True
        entry["data_files"] = [{"split": split, "path": f"{name}/{split}-*.parquet"} for split in splits]
        config_block.append(entry)
        first = next(iter(splits.values()))
        info_block.append(
            {
                "config_name": name,
                "features": first.features._to_yaml_list(),
                "splits": [
                    {"name": split, "num_bytes": int(ds.data.nbytes), "num_examples": len(ds)}
                    for split, ds in splits.items()
                ],
            }
        )
    return {"configs": config_block, "dataset_info": info_block}


_SIZE_BOUNDS = ("1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T")


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` bucket for ``rows``: ``n<1K``, ``1K<n<10K``, ..., ``n>1T``."""
    lower = None
    for exponent, bound in enumerate(_SIZE_BOUNDS, start=3):
        if rows < 10**exponent:
            return f"{lower}<n<{bound}" if lower else f"n<{bound}"
        lower = bound
    return f"n>{lower}"


def _configs_section(configs: Mapping[str, Mapping[str, Any]], descriptions: Mapping[str, str]) -> str:
    """The configs actually published, with their splits' sizes and what the builder says each holds."""
    lines = ["## Configs", ""]
    for name, splits in configs.items():
        sizes = ", ".join(f"{split}: {len(ds)} rows" for split, ds in splits.items())
        description = f": {descriptions[name]}" if name in descriptions else ""
        lines.append(f"- `{name}` ({sizes}){description}")
    return "\n".join(lines)


def _random_weights_warning(refs: Sequence[ArtifactRef]) -> str:
    """A warning no reader can miss: numbers made with random weights look like real ones."""
    if not refs:
        return ""
    listed = "\n".join(f"> - {ref.role}: `{ref.repo_id}`" for ref in refs)
    return (
        "> [!WARNING]\n"
        "> Built with models that have **random weights** (e.g. made by `alignsmith models tiny` to exercise "
        "pipelines offline), or from data made with them: its scores, embeddings and selections are "
        "meaningless. Use it to test pipelines, never to train or evaluate a model.\n>\n" + listed
    )


def _statistics_table(stats: Mapping[str, Any]) -> str:
    if not stats:
        return ""
    rows = "\n".join(f"| {key} | {value} |" for key, value in stats.items())
    return f"## Statistics\n\n| | |\n|---|---|\n{rows}\n"


def _lineage_section(lineage: Lineage) -> str:
    lines = ["## Lineage", "", f"Built with alignsmith {lineage.alignsmith_version} (`alignsmith {lineage.command}`) on {lineage.created_at}.", ""]
    for title, refs in (("Inputs", lineage.inputs), ("Models", lineage.models)):
        if refs:
            lines.append(f"{title}:")
            lines += [f"- {r.role}: `{r.repo_id}` ({r.repo_type}) @ `{r.sha or r.revision or 'unpinned'}`" for r in refs]
            lines.append("")
    lines += ["The full resolved recipe is in the card metadata (`alignsmith.recipe`) and in `alignsmith_recipe.yaml`.", ""]
    return "\n".join(lines)


def _body(content: CardContent, lineage: Lineage, usage: str, *, configs: str = "",
          random_weights: Sequence[ArtifactRef] = ()) -> str:
    parts = [f"# {content.title}", _random_weights_warning(random_weights), content.summary, "## Usage", usage,
             configs, _statistics_table(content.statistics)]
    parts += [f"![{fig.caption}]({fig.path_in_repo})\n\n*{fig.caption}*" for fig in content.figures]
    parts += [f"## {title}\n\n{text}" for title, text in content.extra_sections.items()]
    if content.citation:
        parts.append(f"## Citation\n\n```bibtex\n{content.citation.strip()}\n```")
    parts.append(_lineage_section(lineage))
    return "\n\n".join(p for p in parts if p)


def dataset_card(
    repo_id: str,
    configs: Mapping[str, Mapping[str, Any]],
    content: CardContent,
    lineage: Lineage,
    *,
    default_config: str | None = None,
    revision_hint: str = "main",
    language: Sequence[str] | None = None,
    random_weights: Sequence[ArtifactRef] = (),
) -> str:
    """A ``DatasetCard`` declaring the ``{config}/{split}`` parquet layout and linking the source datasets.

    ``size_categories`` counts the rows ``load_dataset(repo_id)`` gives (the default config, else the
    first); ``random_weights`` (see :func:`alignsmith.publish.random_weight_refs`) tags and warns. The
    lineage is written :meth:`~alignsmith.lineage.Lineage.portable`: no path of the builder's machine.
    """
    from huggingface_hub import DatasetCard

    lineage = lineage.portable()
    first = default_config or next(iter(configs))
    metadata = {
        "pretty_name": content.title,
        "language": list(language or []) or None,  # None-valued keys are left out of the card
        "license": content.license or None,
        "tags": sorted({"alignsmith", *content.tags, *([RANDOM_WEIGHTS_TAG] if random_weights else [])}),
        "size_categories": [size_category(sum(len(ds) for ds in configs[first].values()))],
        "source_datasets": lineage.source_datasets() or None,
        **content.metadata,
        **dataset_metadata(configs, default_config),
        LINEAGE_KEY: lineage.to_metadata(),
    }
    usage = (
        "```python\nfrom datasets import load_dataset\n\n"
        f'ds = load_dataset("{repo_id}", "{first}", revision="{revision_hint}")\n```'
    )
    body = _body(content, lineage, usage, configs=_configs_section(configs, content.config_descriptions),
                 random_weights=[ref.portable() for ref in random_weights])
    return card_text(DatasetCard, metadata, body)


def model_card(
    repo_id: str,
    content: CardContent,
    lineage: Lineage,
    *,
    base_model: str | None,
    library_name: str = "transformers",
    pipeline_tag: str = "text-generation",
    eval_results: Sequence["EvalResult"] = (),
    revision_hint: str = "main",
) -> str:
    """A ``ModelCard`` whose ``datasets`` list links the training data's Hub pages.

    ``eval_results`` (``huggingface_hub.EvalResult``) become the card's ``model-index`` under the
    name ``repo_id``, the shape the Hub and leaderboards read. The card's loading snippet follows
    ``pipeline_tag`` and ``library_name``.
    """
    from huggingface_hub import ModelCard

    metadata = {
        "base_model": base_model or None,  # None-valued keys are left out of the card
        "library_name": library_name,
        "pipeline_tag": pipeline_tag,
        "license": content.license or None,
        "tags": sorted({"alignsmith", *content.tags}),
        "datasets": lineage.source_datasets() or None,
        "eval_results": list(eval_results) or None,
        "model_name": repo_id if eval_results else None,
        **content.metadata,
        LINEAGE_KEY: lineage.to_metadata(),
    }
    load = _loading_snippet(repo_id, revision_hint, library_name, pipeline_tag)
    return card_text(ModelCard, metadata, _body(content, lineage, load))


# how each kind of model loads: (imports, model line, processing line); "{at}" is the repo and revision
_LOADERS = {
    "image-text-to-text": ("from transformers import AutoModelForImageTextToText, AutoProcessor",
                           "model = AutoModelForImageTextToText.from_pretrained({at})",
                           "processor = AutoProcessor.from_pretrained({at})"),
    "text-classification": ("from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                            "model = AutoModelForSequenceClassification.from_pretrained({at})",
                            "tokenizer = AutoTokenizer.from_pretrained({at})"),
    "zero-shot-image-classification": ("from transformers import AutoModel, AutoProcessor",
                                       "model = AutoModel.from_pretrained({at})",
                                       "processor = AutoProcessor.from_pretrained({at})"),
    "text-generation": ("from transformers import AutoModelForCausalLM, AutoTokenizer",
                        "model = AutoModelForCausalLM.from_pretrained({at})",
                        "tokenizer = AutoTokenizer.from_pretrained({at})"),
}


def _loading_snippet(repo_id: str, revision: str, library_name: str, pipeline_tag: str) -> str:
    """How to load the release with the library and auto classes of its kind; an adapter on the base its
    config pins."""
    at = f'"{repo_id}", revision="{revision}"'
    if library_name == "sentence-transformers":
        lines = ["from sentence_transformers import SentenceTransformer", "",
                 f"model = SentenceTransformer({at})"]
    elif library_name == "peft" and pipeline_tag == "image-text-to-text":
        lines = ["from peft import PeftConfig, PeftModel",
                 "from transformers import AutoModelForImageTextToText, AutoProcessor", "",
                 f"config = PeftConfig.from_pretrained({at})",
                 "base = AutoModelForImageTextToText.from_pretrained(config.base_model_name_or_path, "
                 "revision=config.revision)",
                 f"model = PeftModel.from_pretrained(base, {at})",
                 f"processor = AutoProcessor.from_pretrained({at})"]
    elif library_name == "peft":
        lines = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                 f"model = AutoPeftModelForCausalLM.from_pretrained({at})",
                 f"tokenizer = AutoTokenizer.from_pretrained({at})"]
    else:
        imports, model, processing = _LOADERS.get(pipeline_tag, _LOADERS["text-generation"])
        lines = [imports, "", model.format(at=at), processing.format(at=at)]
    return "```python\n" + "\n".join(lines) + "\n```"


def histogram(series: Mapping[str, Sequence[float]], title: str, xlabel: str, filename: str, bins: int = 40) -> Figure:
    """Overlaid histograms as a PNG, for distributions a researcher would rather see than read."""
    import numpy as np

    with _figure(title, xlabel, "rows", filename) as (ax, figures):
        for label, values in series.items():
            values = np.asarray(values, dtype=float)
            values = values[np.isfinite(values)]
            if values.size:
                ax.hist(values, bins=bins, alpha=0.55, label=f"{label} (n={values.size})")
    return figures[0]


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str, ylabel: str, filename: str
) -> Figure:
    """Curves (``label -> (x, y)``) as a PNG, e.g. a training loss by step."""
    with _figure(title, xlabel, ylabel, filename) as (ax, figures):
        for label, (x, y) in series.items():
            if len(x):
                ax.plot(x, y, marker="." if len(x) < 50 else None, label=label)
    return figures[0]


@contextmanager
def _figure(title: str, xlabel: str, ylabel: str, filename: str) -> Iterator[tuple[Any, list[Figure]]]:
    """One matplotlib axis to draw on; on exit the PNG is appended to the yielded list."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    figures: list[Figure] = []
    try:
        yield ax, figures
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        figures.append(Figure(filename, title, buffer.getvalue()))
    finally:
        plt.close(fig)
