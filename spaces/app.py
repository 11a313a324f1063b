"""The Gradio app: models next to their evaluation results, their lineage and the data they came from.

Every action is a named API endpoint, so ``gradio_client`` (and tests) reach exactly what a visitor does.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import gradio as gr
import pandas as pd

from spaces import data
from spaces.chat import EMPTY_REPLY, stream_reply
from spaces.config import RepoAt
from spaces.source import HubSource


class Views:
    """The app's actions over one :class:`HubSource`; each method backs one endpoint."""

    def __init__(self, source: HubSource) -> None:
        self.source = source

    def leaderboard(self, search: str, chosen: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        table = data.filter_leaderboard(data.leaderboard(self.source.results()), search, chosen or [])
        return table, data.plot_data(table)

    def training_data(self, score: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Each leaderboard model@sha with the data it trained on (from its lineage and the cards), and the
        points of ``score`` against its training rows."""
        board = data.leaderboard(self.source.results())
        trained = {(m, s): found for m, s in zip(board.model, board.model_sha)
                   if (found := self._trained_on(m, s)) is not None}
        table = data.training_table(board, trained)
        return table, data.training_plot(table, score)

    def _trained_on(self, model: str, sha: str) -> dict[str, Any] | None:
        """What ``model@sha`` trained on; None when the Hub has no such model (a local folder, say)."""
        from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            found = self.source.lineage(model, "model", sha)
            datasets = {}
            for ref in found[0].inputs if found else []:
                if ref.repo_type == "dataset" and ref.sha:
                    parent = self.source.lineage(ref.repo_id, "dataset", ref.sha)
                    datasets[f"{ref.repo_id}@{ref.sha}"] = (
                        parent[0] if parent else None, ref.sha,
                        data.card_statistics(self.source.readme(ref.repo_id, "dataset", ref.sha)))
            stats = data.card_statistics(self.source.readme(model, "model", sha))
        except (HFValidationError, RepositoryNotFoundError, RevisionNotFoundError):
            return None
        return data.trained_on(found[0] if found else None, stats, datasets)

    def model(self, model: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str | None]:
        """Card metadata, lineage (two levels), results at exactly this revision, and the loss figure."""
        ref, sha = RepoAt.parse(model), self.source.sha(model)
        found = self.source.lineage(ref.repo_id, "model", sha)
        if found is None:
            lineage = pd.DataFrame(columns=data.LINEAGE_COLUMNS)
        else:
            upstream = {f"{r.repo_id}@{r.sha}": parent for r in found[0].inputs if r.repo_type == "dataset"
                        if (parent := self.source.lineage(r.repo_id, "dataset", r.sha)) is not None}
            lineage = data.lineage_table(f"{ref.repo_id}@{sha[:12]}", found[0], upstream)
        results = data.model_results(self.source.results(), ref.repo_id, sha)
        return (data.card_summary(self.source.card(model)), lineage, results,
                self.source.figure(model, "assets/loss.png"))

    def chat(self, model: str, message: str, history: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        messages = [{"role": m["role"], "content": _text(m["content"])} for m in history or []]
        messages = [m for m in messages if m["content"] != EMPTY_REPLY]  # a note of the app's, not the model's
        messages.append({"role": "user", "content": message})
        for reply in stream_reply(self.source.chat_model(model), messages, self.source.config.max_new_tokens):
            yield [*messages, {"role": "assistant", "content": reply}]

    def side_by_side(self, model_a: str, model_b: str, prompt: str) -> Iterator[tuple[str, str]]:
        messages = [{"role": "user", "content": prompt}]
        a = ""
        for a in stream_reply(self.source.chat_model(model_a), messages, self.source.config.max_new_tokens):
            yield a, ""
        for b in stream_reply(self.source.chat_model(model_b), messages, self.source.config.max_new_tokens):
            yield a, b

    def saved_answers(self, answers_a: str, answers_b: str) -> pd.DataFrame:
        judgments = [self.source.dataset(j, "judgments") for j in self.source.config.judgments]
        graded = pd.concat(judgments, ignore_index=True) if judgments else pd.DataFrame()
        return data.paired_answers(self.source.dataset(answers_a, "answers"), self.source.dataset(answers_b, "answers"),
                                   graded)

    def mt_bench_categories(self) -> pd.DataFrame:
        judgments = [self.source.dataset(j, "judgments") for j in self.source.config.judgments]
        return data.category_scores(pd.concat(judgments, ignore_index=True) if judgments else pd.DataFrame())

    def deita(self, dataset: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Decision counts, score distributions, selected rows and rejected rows of a Deita dataset."""
        scored = self.source.dataset(dataset, "scored")
        return (data.decision_counts(scored), data.deita_scores(scored),
                data.deita_selected(self.source.dataset(dataset, "selected")), self.rejected(dataset))

    def pf_sources(self, dataset: str) -> gr.Dropdown:
        sources = [c for c in self.source.configs(dataset) if c not in ("rejected", "multiturn")]
        return gr.Dropdown(choices=sources, value=sources[0] if sources else None)

    def pf_source(self, dataset: str, config: str) -> tuple[list[tuple[Any, str]], pd.DataFrame]:
        """One source config: its images (captioned by row id) and every row's original, rewrite and scores."""
        rows = self.source.dataset(dataset, config)
        images = [(_image(imgs[0]), rid) for rid, imgs in zip(rows.id, rows.images) if len(imgs)]
        return images, data.pf_rows(rows)

    def rejected(self, dataset: str) -> pd.DataFrame:
        """The dataset's rejected rows with their reasons; none when it rejected nothing (no such config)."""
        if "rejected" not in self.source.configs(dataset):
            return pd.DataFrame(columns=data.REJECTED_COLUMNS)
        return data.rejected_rows(self.source.dataset(dataset, "rejected"))


def _text(content: Any) -> str:
    """A chatbot message's text (Gradio may hand back a list of content parts)."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _image(value: dict[str, Any]) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else value["path"]


def build_demo(source: HubSource) -> gr.Blocks:
    """The Space's Blocks app over ``source``; every action has an ``api_name``."""
    views, config = Views(source), source.config
    board, _ = views.leaderboard("", [])
    models = config.models
    with gr.Blocks(title=config.title) as demo:
        gr.Markdown(f"# {config.title}\nEverything here is read from the Hub at pinned revisions.")
        with gr.Tab("Leaderboard"):
            with gr.Row():
                search = gr.Textbox(label="Search models", placeholder="model id or sha")
                chosen = gr.CheckboxGroup(data.benchmarks(board), label="Benchmarks (none: all)")
            table = gr.Dataframe(board, label="Results", interactive=False, pinned_columns=1, show_search="filter",
                                 buttons=["fullscreen", "copy"], wrap=True)
            plot = gr.BarPlot(data.plot_data(board), x="bar", y="value", color="model", label="Scores",
                              x_title="score | model")
            gr.on([search.submit, chosen.change], views.leaderboard, [search, chosen], [table, plot],
                  api_name="leaderboard")
            gr.Markdown("### Score against training data\nEach model's training dataset (from its lineage), the "
                        "selection strategy that made it, and its training rows (from its card).")
            scores = data.score_columns(board)
            score = gr.Dropdown(scores, value=data.widest_score(board), label="Score (benchmark/metric)")
            training = gr.Dataframe(label="Training data and scores", interactive=False, wrap=True)
            training_plot = gr.ScatterPlot(x="training_rows", y="value", color="strategy",
                                           label="Score against training rows",
                                           x_title="training rows", y_title="score", tooltip=["model", "strategy"])
            score.change(views.training_data, score, [training, training_plot], api_name="training_data")
        with gr.Tab("Model"):
            model = gr.Dropdown(models, value=models[0] if models else None, label="Model @ revision")
            card = gr.Dataframe(label="Card", interactive=False)
            lineage = gr.Dataframe(label="Lineage (what it was made from, and what made that)", interactive=False)
            results = gr.Dataframe(label="Results at this revision", interactive=False)
            loss = gr.Image(label="Training loss (from the card)", type="filepath")
            model.change(views.model, model, [card, lineage, results, loss], api_name="model")
        with gr.Tab("Chat"):
            chat_model = gr.Dropdown(models, value=models[0] if models else None, label="Model @ revision")
            chatbot = gr.Chatbot(label="Chat")
            message = gr.Textbox(label="Message")
            message.submit(views.chat, [chat_model, message, chatbot], chatbot, api_name="chat")
        with gr.Tab("Side by side"):
            with gr.Row():
                model_a = gr.Dropdown(models, value=models[0] if models else None, label="Model A")
                model_b = gr.Dropdown(models, value=models[-1] if models else None, label="Model B")
            prompt = gr.Textbox(label="Prompt")
            with gr.Row():
                reply_a, reply_b = gr.Textbox(label="A"), gr.Textbox(label="B")
            prompt.submit(views.side_by_side, [model_a, model_b, prompt], [reply_a, reply_b], api_name="side_by_side")
            if config.answers:
                gr.Markdown("### Saved MT-Bench answers" + (" with judge scores" if config.judgments else ""))
                with gr.Row():
                    answers_a = gr.Dropdown(config.answers, value=config.answers[0], label="Answers A")
                    answers_b = gr.Dropdown(config.answers, value=config.answers[-1], label="Answers B")
                saved = gr.Dataframe(label="Answers", interactive=False, wrap=True)
                compare = gr.Button("Compare")
                compare.click(views.saved_answers, [answers_a, answers_b], saved, api_name="saved_answers")
            if config.judgments:
                categories = gr.BarPlot(x="bar", y="score", color="model", x_title="category | model",
                                        label="MT-Bench score by category (readable judgments only)")
                by_category = gr.Button("Scores by category")
                by_category.click(views.mt_bench_categories, None, categories, api_name="mt_bench_categories")
        with gr.Tab("Dataset explorer"):
            if config.deita:
                gr.Markdown("### Deita")
                deita = gr.Dropdown(config.deita, value=config.deita[0], label="Deita dataset")
                decisions = gr.Dataframe(label="Selection decisions", interactive=False)
                scores = gr.LinePlot(x="bin", y="count", color="series", label="Score distributions")
                selected = gr.Dataframe(label="Selected (by rank)", interactive=False, wrap=True)
                rejected = gr.Dataframe(label="Rejected", interactive=False, wrap=True)
                deita.change(views.deita, deita, [decisions, scores, selected, rejected], api_name="deita")
            if config.pf:
                gr.Markdown("### Polite Flamingo")
                pf = gr.Dropdown(config.pf, value=config.pf[0], label="PF dataset")
                pf_config = gr.Dropdown(label="Source")
                gallery = gr.Gallery(label="Images", columns=6)
                pf_table = gr.Dataframe(label="original -> output, with filter scores", interactive=False, wrap=True)
                pf_rejected = gr.Dataframe(label="Rejected (stage, reason)", interactive=False, wrap=True)
                pf.change(views.pf_sources, pf, pf_config, api_name="pf_sources")
                pf_config.change(views.pf_source, [pf, pf_config], [gallery, pf_table], api_name="pf_source")
                pf.change(views.rejected, pf, pf_rejected, api_name="pf_rejected")
        # a visit opens on the first model and datasets already shown; these loads are not API endpoints
        hidden = {"api_visibility": "private"}
        demo.load(views.training_data, score, [training, training_plot], **hidden)
        if models:
            demo.load(views.model, model, [card, lineage, results, loss], **hidden)
        if config.deita:
            demo.load(views.deita, deita, [decisions, scores, selected, rejected], **hidden)
        if config.pf:
            demo.load(views.pf_sources, pf, pf_config, **hidden)
            demo.load(views.rejected, pf, pf_rejected, **hidden)
    return demo
