"""Chat models: transformers in this process (pinned, batched, adapters) and OpenAI-compatible endpoints.

The endpoint is tested against a real ``transformers serve`` on loopback serving the same tiny model
from the embedded Hub, and against a scripted loopback server for retries and errors.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from alignsmith.models import tiny
from alignsmith.models.chat import load_chat_model
from alignsmith.models.generation import ChatModelSpec, Completion, DecodingSettings
from alignsmith.models.hf_chat import ContextLengthError, HFChatModel, end_of_turn_id
from alignsmith.models.loading import ModelLoadError
from alignsmith.models.openai_chat import EndpointChatModel, EndpointError
from alignsmith.models.vision_chat import HFVisionChatModel, ImageCountError
from alignsmith.records import IMAGE_PLACEHOLDER

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Write a short poem about the sea and the wind at night."}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure! Here is"},
     {"role": "user", "content": "Explain how photosynthesis works in simple terms for a child."}],
    [{"role": "user", "content": "SELECT name, age FROM users;"}],
]
GREEDY = DecodingSettings(max_new_tokens=12)


def lively_causal_lm(out: Path, extra_stop: int | None = None) -> Path:
    """A tiny model whose greedy replies depend on the prompt.

    The plain tiny model (tied embeddings, small random layers) repeats the prompt's last token
    forever; seeded large projection weights make every layer matter. ``extra_stop`` adds a token
    to the generation config's EOS ids, to end replies at a known place.
    """
    tiny.build_causal_lm(out, seed=0, hidden_size=32, num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(out)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2 and "embed" not in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    if extra_stop is not None:
        model.generation_config.eos_token_id = [model.generation_config.eos_token_id, extra_stop]
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return lively_causal_lm(tmp_path_factory.mktemp("lively"))


@pytest.fixture(scope="module")
def chat(model_dir) -> HFChatModel:
    return HFChatModel(str(model_dir), batch_size=2)


@pytest.fixture(scope="module")
def hub_model(hub, model_dir) -> tuple[str, str]:
    """The lively model on the embedded Hub: (repo id, commit sha)."""
    api, repo = HfApi(), "chat-test/lively"
    api.create_repo(repo, exist_ok=True)
    return repo, api.upload_folder(repo_id=repo, folder_path=str(model_dir)).oid


# --- in-process transformers ---------------------------------------------------------------------------


def test_greedy_replies_are_the_same_batched_as_one_at_a_time(chat, model_dir):
    batched = chat.generate(CONVERSATIONS, GREEDY)
    alone = [HFChatModel(str(model_dir), batch_size=1).generate([c], GREEDY)[0] for c in CONVERSATIONS]
    assert batched == alone
    assert len({c.text for c in batched}) == len(CONVERSATIONS)  # replies depend on the prompt
    tok = AutoTokenizer.from_pretrained(model_dir)
    for conversation, reply in zip(CONVERSATIONS, batched):
        prompt = tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert reply.prompt_tokens == len(prompt["input_ids"])
        assert (reply.finish_reason, reply.completion_tokens, reply.first_token_logprobs) == ("length", 12, None)


def test_reply_matches_plain_generate_and_the_models_first_token_logprobs(chat, model_dir):
    """The reference: one unpadded prompt through transformers' own generate and forward."""
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    prompt = tok.apply_chat_template(CONVERSATIONS[1], add_generation_prompt=True, return_dict=True,
                                     return_tensors="pt")
    expected = model.generate(**prompt, max_new_tokens=5, do_sample=False)[0, prompt["input_ids"].shape[1]:]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(**prompt).logits[0, -1], dim=-1)
    reply = chat.generate([CONVERSATIONS[0], CONVERSATIONS[1]], DecodingSettings(max_new_tokens=5, top_logprobs=4))[1]
    assert reply.text == tok.decode(expected, skip_special_tokens=True)
    top = logprobs.topk(4)
    assert list(reply.first_token_logprobs) == [tok.decode([i]) for i in top.indices.tolist()]
    assert list(reply.first_token_logprobs.values()) == pytest.approx(top.values.tolist(), abs=1e-5)


RAW_PROMPTS = ["### Human: hi\n### Assistant: Sure, here is \"", "Once upon a time", "x"]


def test_complete_continues_raw_text_batched_as_alone_and_as_plain_generate(chat, model_dir):
    """Raw prompts (no chat template) share generate's batching: batched == alone == transformers' generate."""
    prompts = RAW_PROMPTS
    batched = chat.complete(prompts, GREEDY)
    alone = [HFChatModel(str(model_dir), batch_size=1).complete([p], GREEDY)[0] for p in prompts]
    assert batched == alone
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    encoded = tok(prompts[0], return_tensors="pt")
    expected = model.generate(**encoded, max_new_tokens=12, do_sample=False)[0, encoded["input_ids"].shape[1]:]
    assert batched[0].text == tok.decode(expected, skip_special_tokens=True)
    assert batched[0].prompt_tokens == encoded["input_ids"].shape[1]
    assert batched[0].text != chat.generate([[{"role": "user", "content": prompts[0]}]], GREEDY)[0].text


def test_rows_with_different_settings_come_back_in_input_order(chat):
    settings = [DecodingSettings(max_new_tokens=3), DecodingSettings(max_new_tokens=6),
                DecodingSettings(max_new_tokens=3), DecodingSettings(max_new_tokens=6, temperature=0.8, seed=1),
                DecodingSettings(max_new_tokens=3)]
    mixed = chat.generate(CONVERSATIONS, settings)
    short = chat.generate([CONVERSATIONS[i] for i in (0, 2, 4)], settings[0])
    assert [mixed[i] for i in (0, 2, 4)] == short
    assert mixed[1] == chat.generate([CONVERSATIONS[1]], settings[1])[0]
    assert [r.completion_tokens for r in mixed] == [3, 6, 3, 6, 3]
    with pytest.raises(ValueError, match="2 decoding settings for 5 conversations"):
        chat.generate(CONVERSATIONS, settings[:2])


def test_sampling_is_reproducible_from_the_seed_and_leaves_global_rng_alone(chat):
    sampled = DecodingSettings(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=7)
    state = torch.random.get_rng_state()
    first = chat.generate(CONVERSATIONS, sampled)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert chat.generate(CONVERSATIONS, sampled) == first
    other_seed = chat.generate(CONVERSATIONS, DecodingSettings(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=8))
    assert [r.text for r in other_seed] != [r.text for r in first]
    assert [r.text for r in first] != [r.text for r in chat.generate(CONVERSATIONS, GREEDY)]


def test_a_reply_stops_at_a_stop_token_which_is_counted_but_not_returned(tmp_path, chat):
    tok = chat.tokenizer
    prompt = tok.apply_chat_template(CONVERSATIONS[2], add_generation_prompt=True, return_dict=True,
                                     return_tensors="pt")
    greedy = chat.model.generate(**prompt, max_new_tokens=8, do_sample=False)[0, prompt["input_ids"].shape[1]:]
    tokens = greedy.tolist()
    # a token that first appears at position k > 0 of the greedy reply becomes an EOS id
    k = next(i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i])
    stopping = HFChatModel(str(lively_causal_lm(tmp_path / "stops", extra_stop=tokens[k])))
    reply = stopping.generate([CONVERSATIONS[2]], DecodingSettings(max_new_tokens=8))[0]
    assert (reply.finish_reason, reply.completion_tokens) == ("stop", k + 1)
    assert reply.text == tok.decode(tokens[:k], skip_special_tokens=True)


def test_end_of_turn_token_is_read_from_the_chat_template():
    chatml = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert end_of_turn_id(tiny.build_tokenizer(chat_template=chatml)) == tiny.build_tokenizer().convert_tokens_to_ids(
        tiny.END_OF_TURN)
    plain = tiny.build_tokenizer(chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert end_of_turn_id(plain) is None


def test_replies_stop_at_the_context_and_a_prompt_that_fills_it_is_refused(chat):
    def prompt_tokens(conversation: list[dict]) -> int:
        return len(chat.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"])

    words = 1
    while prompt_tokens([{"role": "user", "content": "word " * (words + 1)}]) <= chat.context - 3:
        words += 1
    near_full = [{"role": "user", "content": "word " * words}]
    room = chat.context - prompt_tokens(near_full)
    reply = chat.generate([near_full], DecodingSettings(max_new_tokens=100))[0]
    assert 0 < reply.completion_tokens <= room <= 3  # generation stopped where the context ends
    with pytest.raises(ContextLengthError, match=f"conversation 1 renders to .* context is {chat.context}"):
        chat.generate([CONVERSATIONS[0], [{"role": "user", "content": "word " * chat.context}]], GREEDY)


def test_a_base_model_completes_raw_prompts_but_refuses_conversations_naming_itself(tmp_path):
    folder = tiny.build_causal_lm(tmp_path / "base-lm", hidden_size=32, num_layers=1,
                                  tokenizer=tiny.build_tokenizer(chat_template=None))
    base = HFChatModel(str(folder))
    assert base.complete(["The quick brown"], DecodingSettings(max_new_tokens=3))[0].completion_tokens <= 3
    with pytest.raises(ModelLoadError, match=r"chat_model: the tokenizer of '.*base-lm'.*has no chat template"):
        base.generate(CONVERSATIONS[:1], GREEDY)


def test_hub_model_is_pinned_and_a_missing_one_is_a_load_error(hub, hub_model, chat):
    repo, sha = hub_model
    pinned = HFChatModel(repo, revision="main")
    assert pinned.identity() == {"kind": "hf", "repo_id": repo, "sha": sha}
    assert pinned.model_sha == sha and pinned.model_revision == "main"
    assert pinned.generate(CONVERSATIONS[:2], GREEDY) == chat.generate(CONVERSATIONS[:2], GREEDY)
    local = chat.identity()
    assert local["repo_id"] == chat.model_ref.portable().repo_id and len(local["sha"]) == 64  # content hash
    with pytest.raises(ModelLoadError, match="chat_model: model 'chat-test/absent'"):
        HFChatModel("chat-test/absent")


def test_a_peft_adapter_runs_on_its_pinned_base(hub, hub_model, tmp_path):
    from peft import LoraConfig, get_peft_model

    repo, sha = hub_model
    base = AutoModelForCausalLM.from_pretrained(repo, revision=sha)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random A and B (init_lora_weights=False), so the adapter changes replies
        lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                                               revision=sha))
    lora.save_pretrained(tmp_path / "adapter")
    api = HfApi()
    api.create_repo("chat-test/lively-lora", exist_ok=True)
    adapter_sha = api.upload_folder(repo_id="chat-test/lively-lora", folder_path=str(tmp_path / "adapter")).oid

    adapted = HFChatModel("chat-test/lively-lora", batch_size=4)
    assert adapted.identity() == {"kind": "hf", "repo_id": "chat-test/lively-lora", "sha": adapter_sha,
                                  "base_repo_id": repo, "base_sha": sha}
    tok = AutoTokenizer.from_pretrained(repo, revision=sha)
    prompt = tok.apply_chat_template(CONVERSATIONS[3], add_generation_prompt=True, return_dict=True,
                                     return_tensors="pt")
    expected = lora.generate(**prompt, max_new_tokens=12, do_sample=False)[0, prompt["input_ids"].shape[1]:]
    replies = adapted.generate(CONVERSATIONS, GREEDY)
    assert replies[3].text == tok.decode(expected, skip_special_tokens=True)
    assert replies != HFChatModel(repo, revision=sha).generate(CONVERSATIONS, GREEDY)


def test_load_chat_model_picks_the_implementation(model_dir):
    local = load_chat_model(ChatModelSpec(model=str(model_dir), batch_size=3))
    assert isinstance(local, HFChatModel) and local.batch_size == 3
    remote = load_chat_model(ChatModelSpec(model="served-name", endpoint="http://127.0.0.1:9/v1/", batch_size=5))
    assert isinstance(remote, EndpointChatModel) and remote.batch_size == 5
    assert remote.identity() == {"kind": "endpoint", "url": "http://127.0.0.1:9/v1", "model": "served-name"}


class GenerateSpy:
    """Wraps a model's ``generate`` and keeps the keyword arguments of every call."""

    def __init__(self, generate) -> None:
        self.generate, self.calls = generate, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.generate(*args, **kwargs)


def test_no_repeat_ngram_size_reaches_generate_and_is_recorded_only_when_set(chat, monkeypatch):
    spy = GenerateSpy(chat.model.generate)
    monkeypatch.setattr(chat.model, "generate", spy)
    blocked = DecodingSettings(max_new_tokens=12, no_repeat_ngram_size=1)
    chat.generate(CONVERSATIONS[:2], blocked)
    chat.complete(["Once upon a time"], blocked)
    chat.generate(CONVERSATIONS[:1], GREEDY)
    assert [call.get("no_repeat_ngram_size") for call in spy.calls] == [1, 1, None]
    assert "no_repeat_ngram_size" not in spy.calls[-1]  # unset: the model's generation_config decides
    # records and judge cache keys made before the field existed stay the same
    assert "no_repeat_ngram_size" not in GREEDY.to_dict() and blocked.to_dict()["no_repeat_ngram_size"] == 1
    with pytest.raises(ValueError, match="no_repeat_ngram_size must be at least 1"):
        DecodingSettings(no_repeat_ngram_size=0)


# --- image-text-to-text: raw prompt continuation ---------------------------------------------------------

VISION_PROMPTS = ["<image>\nDescribe the picture.\n### Assistant: Sure, here is \"", "Once upon a time <image> there",
                  "<image> and <image>: the same colour? Answer:", "x"]


def noise(seed: int, size: tuple[int, int]) -> Image.Image:
    import numpy as np

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8))


VISION_IMAGES = [[noise(0, (40, 30))], [noise(1, (32, 32))], [noise(2, (20, 64)), noise(3, (48, 48))], []]


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory) -> Path:
    return tiny.build_vision_language_model(tmp_path_factory.mktemp("vlm") / "tiny-vlm", seed=0)


def test_vision_complete_is_the_same_batched_as_alone_and_as_plain_generate(vlm_dir):
    """Raw prompts with images share generate's batching: batch 3 == batch 1 == transformers' own generate."""
    vision = HFVisionChatModel(str(vlm_dir), batch_size=1)
    alone = vision.complete(VISION_PROMPTS, VISION_IMAGES, GREEDY)
    vision.batch_size = 3
    batched = vision.complete(VISION_PROMPTS, VISION_IMAGES, GREEDY)
    assert batched == alone
    assert all(c.completion_tokens > 0 for c in alone)
    processor = AutoProcessor.from_pretrained(vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir).eval()
    encoded = processor(text=[VISION_PROMPTS[0]], images=VISION_IMAGES[0], return_tensors="pt")
    width = encoded["input_ids"].shape[1]
    assert encoded["input_ids"][0, 0] == processor.tokenizer.bos_token_id  # special tokens as at inference
    with torch.inference_mode():
        expected = model.generate(**encoded, max_new_tokens=12, do_sample=False)[0, width:]
    assert alone[0].text == processor.tokenizer.decode(expected, skip_special_tokens=True)
    assert alone[0].prompt_tokens == width == vision.prompt_tokens(VISION_PROMPTS[0], VISION_IMAGES[0])


def test_vision_complete_checks_images_context_and_passes_no_repeat_ngram_size(vlm_dir, monkeypatch):
    vision = HFVisionChatModel(str(vlm_dir), batch_size=2)
    with pytest.raises(ImageCountError, match="prompt 1: 2 <image> placeholder.*but 1 image"):
        vision.complete([VISION_PROMPTS[0], VISION_PROMPTS[2]], [VISION_IMAGES[0], VISION_IMAGES[0]], GREEDY)
    long = "word " * vision.context
    assert vision.prompt_tokens(long, []) >= vision.context
    with pytest.raises(ContextLengthError, match=f"prompt 1 renders to .* context is {vision.context}"):
        vision.complete([VISION_PROMPTS[3], long], [[], []], GREEDY)
    spy = GenerateSpy(vision.model.generate)
    monkeypatch.setattr(vision.model, "generate", spy)
    vision.complete(VISION_PROMPTS[:1], VISION_IMAGES[:1], DecodingSettings(max_new_tokens=4, no_repeat_ngram_size=3))
    vision.complete(VISION_PROMPTS[:1], VISION_IMAGES[:1], DecodingSettings(max_new_tokens=4))
    assert [call.get("no_repeat_ngram_size") for call in spy.calls] == [3, None]


# --- a real OpenAI-compatible server: transformers serve -----------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(serve, hub_model) -> str:
    """``transformers serve`` on loopback, pinned to the Hub model's commit: its base URL."""
    repo, sha = hub_model
    return serve(f"{repo}@{sha}")


def test_transformers_serve_replies_match_the_in_process_model(served, hub_model, chat):
    repo, sha = hub_model
    endpoint = EndpointChatModel(served, f"{repo}@{sha}", batch_size=3, timeout=60)
    replies = endpoint.generate(CONVERSATIONS, GREEDY)
    assert replies == chat.generate(CONVERSATIONS, GREEDY)  # text, finish_reason and token counts
    assert all(r.text and r.finish_reason == "length" for r in replies)
    assert endpoint.identity() == {"kind": "endpoint", "url": served, "model": f"{repo}@{sha}"}


def test_transformers_serve_completes_raw_prompts_as_the_in_process_model(served, hub_model, chat):
    """``/completions`` continues the raw text (no chat template): the same greedy replies as ``complete`` here."""
    repo, sha = hub_model
    endpoint = EndpointChatModel(served, f"{repo}@{sha}", batch_size=2, timeout=60)
    replies = endpoint.complete(RAW_PROMPTS, GREEDY)
    assert replies == chat.complete(RAW_PROMPTS, GREEDY)  # text, finish_reason and token counts
    assert all(r.text for r in replies)
    assert replies[0].text != endpoint.generate([[{"role": "user", "content": RAW_PROMPTS[0]}]], GREEDY)[0].text


def test_transformers_serve_refusals_are_endpoint_errors(served, hub_model):
    repo, sha = hub_model
    with pytest.raises(EndpointError, match=rf"{served}/chat/completions \(model 'someone/else'\): HTTP 400: .*pinned"):
        EndpointChatModel(served, "someone/else", max_retries=0).generate(CONVERSATIONS[:1], GREEDY)
    with pytest.raises(EndpointError, match="top_logprobs.*returned none"):  # transformers serve ignores logprobs
        EndpointChatModel(served, f"{repo}@{sha}").generate(CONVERSATIONS[:1], DecodingSettings(top_logprobs=3))


# --- retries and errors, against a scripted loopback server ----------------------------------------------


class Script:
    """Responses a loopback server plays in order (the last repeats), and the requests it received."""

    def __init__(self, *responses: tuple[int, dict | str, dict]) -> None:
        self.responses = list(responses)
        self.requests: list[tuple[dict, dict]] = []  # (headers, JSON body)
        self.lock = threading.Lock()

    def next(self, headers: dict, body: dict) -> tuple[int, dict | str, dict]:
        with self.lock:
            self.requests.append((headers, body))
            return self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]


def reply(text: str = "hi", finish: str = "stop", logprobs: dict | None = None) -> tuple[int, dict, dict]:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = {"content": [{"token": text, "logprob": -0.1, "top_logprobs": [
            {"token": token, "logprob": value} for token, value in logprobs.items()]}]}
    return 200, {"choices": [choice], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}, {}


@pytest.fixture
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script(reply())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, payload, headers = script.next({**dict(self.headers), ":path": self.path}, body)
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1", script
    server.shutdown()
    server.server_close()


def test_requests_carry_the_settings_and_key_and_replies_parse(scripted, monkeypatch):
    url, script = scripted
    script.responses = [reply("A", logprobs={"A": -0.2, "B": -1.7})]
    monkeypatch.setenv("TEST_CHAT_KEY", "sekret")
    model = EndpointChatModel(url + "/", "m", api_key_env="TEST_CHAT_KEY", batch_size=2)
    settings = DecodingSettings(temperature=0.5, top_p=0.9, max_new_tokens=5, seed=3, top_logprobs=2)
    replies = model.generate(CONVERSATIONS[:3], settings)
    assert [r.first_token_logprobs for r in replies] == [{"A": -0.2, "B": -1.7}] * 3
    assert (replies[0].text, replies[0].finish_reason, replies[0].prompt_tokens, replies[0].completion_tokens) == (
        "A", "stop", 7, 2)
    headers, body = script.requests[0]
    assert headers["Authorization"] == "Bearer sekret"
    assert {k: body[k] for k in ("model", "temperature", "top_p", "max_tokens", "seed", "logprobs", "top_logprobs")} \
        == {"model": "m", "temperature": 0.5, "top_p": 0.9, "max_tokens": 5, "seed": 3, "logprobs": True,
            "top_logprobs": 2}
    assert sorted(json.dumps(b["messages"]) for _, b in script.requests) == sorted(
        json.dumps(c) for c in CONVERSATIONS[:3])
    monkeypatch.delenv("TEST_CHAT_KEY")
    model.generate(CONVERSATIONS[:1], GREEDY)
    assert "Authorization" not in script.requests[-1][0] and "logprobs" not in script.requests[-1][1]


def test_no_repeat_ngram_size_is_refused_before_any_request(scripted):
    url, script = scripted
    settings = [GREEDY, DecodingSettings(max_new_tokens=12, no_repeat_ngram_size=3)]
    with pytest.raises(EndpointError, match=r"conversation 1: no_repeat_ngram_size=3 .*OpenAI API has no such"):
        EndpointChatModel(url, "m").generate(CONVERSATIONS[:2], settings)
    assert script.requests == []


def test_429_and_5xx_are_retried_with_backoff(scripted):
    url, script = scripted
    script.responses = [(503, "overloaded", {}), (429, "slow down", {"Retry-After": "0.2"}), reply("done")]
    start = time.monotonic()
    replies = EndpointChatModel(url, "m", max_retries=3, backoff=0.01).generate(CONVERSATIONS[:1], GREEDY)
    assert replies[0].text == "done" and len(script.requests) == 3
    assert time.monotonic() - start >= 0.2  # the server's Retry-After was honoured


def test_retries_are_bounded_and_the_error_names_url_model_and_status(scripted):
    url, script = scripted
    script.responses = [(500, "boom " * 300, {})]
    with pytest.raises(EndpointError, match=rf"{url}/chat/completions \(model 'm'\): failed after 3 attempts; "
                                            r"last: HTTP 500: boom boom") as err:
        EndpointChatModel(url, "m", max_retries=2, backoff=0.01).generate(CONVERSATIONS[:1], GREEDY)
    assert len(script.requests) == 3 and len(str(err.value)) < 800  # the body is an excerpt


def test_client_errors_fail_at_once_with_the_body(scripted):
    url, script = scripted
    script.responses = [(400, {"error": {"message": "max_tokens is too large"}}, {})]
    with pytest.raises(EndpointError, match="HTTP 400: .*max_tokens is too large"):
        EndpointChatModel(url, "m", backoff=0.01).generate(CONVERSATIONS, GREEDY)
    assert 1 <= len(script.requests) <= len(CONVERSATIONS)  # nothing retried; unsent requests dropped


def test_unusable_replies_are_endpoint_errors(scripted):
    url, script = scripted
    script.responses = [(200, "<html>not json</html>", {})]
    with pytest.raises(EndpointError, match="not JSON: '<html>not json</html>'"):
        EndpointChatModel(url, "m").generate(CONVERSATIONS[:1], GREEDY)
    script.responses = [(200, {"choices": []}, {})]
    with pytest.raises(EndpointError, match="unexpected response"):
        EndpointChatModel(url, "m").generate(CONVERSATIONS[:1], GREEDY)


def test_an_unreachable_server_is_retried_then_named():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError, match=rf"{url}/chat/completions \(model 'm'\): failed after 2 attempts; "
                                            "last: ConnectError"):
        EndpointChatModel(url, "m", max_retries=1, backoff=0.01).generate(CONVERSATIONS[:1], GREEDY)


def text_reply(text: str, finish: str = "stop") -> tuple[int, dict, dict]:
    """A ``/completions`` response."""
    return 200, {"choices": [{"index": 0, "text": text, "finish_reason": finish}],
                 "usage": {"prompt_tokens": 7, "completion_tokens": 2}}, {}


def test_raw_prompts_go_to_completions_with_the_settings(scripted):
    url, script = scripted
    script.responses = [text_reply("go on", "length")]
    settings = DecodingSettings(temperature=0.7, top_p=0.9, max_new_tokens=5, seed=3)
    replies = EndpointChatModel(url, "m", batch_size=1).complete(["Once upon", "x"], settings)
    assert replies == [Completion("go on", "length", 7, 2)] * 2
    assert [(headers[":path"], body) for headers, body in script.requests] == [
        ("/v1/completions", {"model": "m", "temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "seed": 3, "prompt": p})
        for p in ("Once upon", "x")]
    script.responses = [(400, "prompt too long", {})]
    with pytest.raises(EndpointError, match=rf"{url}/completions \(model 'm'\): HTTP 400: prompt too long"):
        EndpointChatModel(url, "m").complete(["x"], GREEDY)
    with pytest.raises(EndpointError, match=r"prompt 0: no_repeat_ngram_size=3"):
        EndpointChatModel(url, "m").complete(["x"], DecodingSettings(no_repeat_ngram_size=3))


def test_raw_prompts_with_images_go_to_chat_completions_as_text_and_image_parts(scripted):
    """No OpenAI route continues raw text with images: one user message, images where the placeholders were."""
    url, script = scripted
    pictures = [noise(0, (40, 30)), noise(1, (20, 64))]
    prompt = f"Look: {IMAGE_PLACEHOLDER} and{IMAGE_PLACEHOLDER}\n(Revised Response) "
    with pytest.raises(EndpointError, match=f"prompt 0: 2 {IMAGE_PLACEHOLDER} placeholder.*but 1 image"):
        EndpointChatModel(url, "m").complete([prompt], GREEDY, images=[pictures[:1]])
    assert script.requests == []
    replies = EndpointChatModel(url, "m").complete([prompt], GREEDY, images=[pictures])
    assert replies == [Completion("hi", "stop", 7, 2)]
    ((headers, body),) = script.requests
    assert headers[":path"] == "/v1/chat/completions"
    parts = body["messages"][0]["content"]
    urls = [part.pop("image_url")["url"] for part in parts if part["type"] == "image_url"]
    assert body == {"model": "m", "temperature": 0.0, "top_p": 1.0, "max_tokens": 12, "seed": 0, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image_url"},
                                     {"type": "text", "text": " and"}, {"type": "image_url"},
                                     {"type": "text", "text": "\n(Revised Response) "}]}]}
    prefix = "data:image/png;base64,"
    assert all(u.startswith(prefix) for u in urls)
    sent = [Image.open(io.BytesIO(base64.b64decode(u[len(prefix):]))) for u in urls]
    assert [s.tobytes() for s in sent] == [p.tobytes() for p in pictures]  # lossless, in placeholder order


def test_transformers_serve_reads_the_image_parts_where_the_placeholders_were(serve, hub, vlm_dir):
    """A VLM behind transformers serve gets each raw prompt as one user message of text and image parts: it
    answers as the in-process model answers that message (the server's chat template wraps it)."""
    api, repo = HfApi(), "chat-test/tiny-vlm"
    api.create_repo(repo, exist_ok=True)
    sha = api.upload_folder(repo_id=repo, folder_path=str(vlm_dir)).oid
    endpoint = EndpointChatModel(serve(f"{repo}@{sha}"), f"{repo}@{sha}", batch_size=2, timeout=60)
    replies = endpoint.complete(VISION_PROMPTS[:3], GREEDY, images=VISION_IMAGES[:3])
    vision = HFVisionChatModel(str(vlm_dir), batch_size=1)
    messages = [[{"role": "user", "content": prompt}] for prompt in VISION_PROMPTS[:3]]
    assert replies == vision.generate(messages, GREEDY, images=VISION_IMAGES[:3])
    assert all(r.text for r in replies)


def test_a_work_fingerprint_follows_the_served_model_not_its_address():
    from alignsmith.models.generation import work_identity

    here, there = (ChatModelSpec(model="org/judge", endpoint=url) for url in ("http://node-1:8000/v1", "http://node-7:8000/v1"))
    assert work_identity(here) == work_identity(there) == work_identity(ChatModelSpec(model="org/judge"))
    assert work_identity(here) != work_identity(ChatModelSpec(model="org/other", endpoint="http://node-1:8000/v1"))
