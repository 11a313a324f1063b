"""Dataset and model cards that follow the Hub's conventions and carry alignsmith lineage.

Metadata goes in the YAML front matter (``configs``, ``dataset_info``, ``source_datasets``,
``base_model``, ``datasets``...) so the Hub, ``datasets`` and ``transformers`` understand it;
the markdown body is for people: how to load it, what is in it, and plots of the distributions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

from alignsmith.lineage import LINEAGE_KEY, Lineage

if TYPE_CHECKING:
    from huggingface_hub import EvalResult


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


def render(metadata: Mapping[str, Any], body: str) -> str:
    front = yaml.safe_dump(dict(metadata), sort_keys=False, allow_unicode=True, width=120)
    return f"---\n{front}---\n\n{body.strip()}\n"


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


def _body(content: CardContent, lineage: Lineage, usage: str) -> str:
    parts = [f"# {content.title}", content.summary, "## Usage", usage, _statistics_table(content.statistics)]
    parts += [f"![{fig.caption}]({fig.path_in_repo})\n\n*{fig.caption}*" for fig in content.figures]
    parts += [f"## {title}\n\n{text}" for title, text in content.extra_sections.items()]
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
) -> str:
    metadata: dict[str, Any] = {}
    if content.license:
        metadata["license"] = content.license
    metadata["tags"] = sorted({"alignsmith", *content.tags})
    if lineage.source_datasets():
        metadata["source_datasets"] = lineage.source_datasets()
    metadata.update(content.metadata)
    metadata.update(dataset_metadata(configs, default_config))
    metadata[LINEAGE_KEY] = lineage.to_metadata()
    first = default_config or next(iter(configs))
    usage = (
        "```python\nfrom datasets import load_dataset\n\n"
        f'ds = load_dataset("{repo_id}", "{first}", revision="{revision_hint}")\n```\n\n'
        "Configs: " + ", ".join(f"`{c}` ({', '.join(s)})" for c, s in configs.items()) + "."
    )
    return render(metadata, _body(content, lineage, usage))


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
    """A model card whose ``datasets`` list links the training data's Hub pages.

    ``eval_results`` (``huggingface_hub.EvalResult``) become the card's ``model-index``, the shape the
    Hub and leaderboards read.
    """
    metadata: dict[str, Any] = {}
    if base_model:
        metadata["base_model"] = base_model
    metadata["library_name"] = library_name
    metadata["pipeline_tag"] = pipeline_tag
    if content.license:
        metadata["license"] = content.license
    metadata["tags"] = sorted({"alignsmith", *content.tags})
    if lineage.source_datasets():
        metadata["datasets"] = lineage.source_datasets()
    if eval_results:
        from huggingface_hub.repocard_data import eval_results_to_model_index

        metadata["model-index"] = eval_results_to_model_index(repo_id, list(eval_results))
    metadata.update(content.metadata)
    metadata[LINEAGE_KEY] = lineage.to_metadata()
    if library_name == "peft":
        load = (
            "```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}", revision="{revision_hint}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", revision="{revision_hint}")\n```'
        )
    else:
        load = (
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", revision="{revision_hint}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", revision="{revision_hint}")\n```'
        )
    return render(metadata, _body(content, lineage, load))


def histogram(series: Mapping[str, Sequence[float]], title: str, xlabel: str, filename: str, bins: int = 40) -> Figure:
    """Overlaid histograms as a PNG, for distributions a researcher would rather see than read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for label, values in series.items():
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            ax.hist(values, bins=bins, alpha=0.55, label=f"{label} (n={values.size})")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return Figure(filename, title, buffer.getvalue())
