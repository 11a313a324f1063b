"""Training throughput with and without packing, through alignsmith's own SFT path.

Every run trains one epoch on the same conversations (the bundled HH-RLHF pool, a seeded sample) with
the same per-device batch size, once per packing mode:

* ``off``: one conversation per row, padded to the longest in the batch;
* ``bfd``: trl's default packing, whole conversations best-fit into padding-free rows whose position
  ids restart per conversation (FlashAttention's varlen kernels then skip attention across
  conversations; sdpa and eager compute the whole packed row, one row of up to batch × max_length
  tokens, with a dense block-diagonal mask);
* ``wrapped``: conversations concatenated and cut into ``max_length`` rows (no padding at all).

Tokens are non-padding tokens; the first steps (allocator, kernels) are left out of the timing.

    python benchmarks/bench_training.py                  # CPU: hidden 256, 4 layers, float32
    python benchmarks/bench_training.py --device cuda    # GPU: a 1B-shaped Llama in bf16, plus FLOP/s vs peak
    python benchmarks/bench_training.py --device cuda --attn-implementation sdpa

On a GPU attention defaults to flash_attention_2, as the GPU recipes set it; without flash-attn the
run falls back to transformers' default and says that its bfd figure does not represent the recipes.
On a shared CPU machine, OMP_NUM_THREADS=1 gives repeatable figures. Model FLOPs per step are 3× the
forward pass of benchmarks/flops.py (embeddings 0, attention over each sequence the model attends
within: a bfd conversation, a wrapped row, an unpacked conversation; the fused LM head only where a
label follows), counted from each batch's inputs; on a GPU they are compared with its dense bf16
peak (benchmarks/hardware.py, by exact device name, or --peak-tflops).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from flops import TRAINING, DecoderShape
from hardware import fraction_of_peak, gpu_peak

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "data" / "hh_rlhf" / "pool.jsonl"
POOL_ROWS = 600  # conversations in the bundled pool

@dataclass(frozen=True)
class Setup:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    dtype: str
    batch_size: int
    max_length: int
    conversations: int
    warmup_steps: int


CPU = Setup(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512, vocab_size=512,
            dtype="float32", batch_size=8, max_length=512, conversations=160, warmup_steps=2)
# TinyLlama-1.1B's shape
GPU = Setup(hidden_size=2048, num_layers=22, num_heads=32, num_kv_heads=4, intermediate_size=5632, vocab_size=32000,
            dtype="bfloat16", batch_size=8, max_length=2048, conversations=POOL_ROWS, warmup_steps=3)


@dataclass(frozen=True)
class Rates:
    steps: int
    tokens: int
    seconds: float
    flops: float  # model FLOPs of the timed steps

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


class Throughput(TrainerCallback):
    """Non-padding tokens and model FLOPs per second after the warm-up steps."""

    def __init__(self, warmup_steps: int, shape: DecoderShape) -> None:
        self.warmup_steps, self.shape = warmup_steps, shape
        self.flops: Any = 0.0  # a device tensor once counting starts: adding to it needs no device sync
        self.start: tuple[float, int, float] | None = None
        self.end: tuple[float, int, float] | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        """Adds one training step's FLOPs (3·F) for the batch the model is about to run.

        Attention spans restart where position ids restart (bfd's padding-free rows); without
        position ids every row is one right-padded sequence. A token at position p attends to p + 1
        keys, so Σ (p + 1) over real tokens is K. The fused LM head projects the positions whose next
        label is not -100.
        """
        import torch

        mask, positions, labels = kwargs.get("attention_mask"), kwargs.get("position_ids"), kwargs["labels"]
        if positions is None:
            positions = mask.cumsum(-1) - 1
        real = torch.ones_like(positions, dtype=torch.float64) if mask is None else mask.double()
        tokens, pairs = real.sum(), ((positions + 1).double() * real).sum()
        self.flops = self.flops + 3 * self.shape.forward_flops(tokens, pairs, (labels[..., 1:] != -100).double().sum())

    def on_step_end(self, args, state, control, **kwargs) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        mark = (time.perf_counter(), state.num_input_tokens_seen, float(self.flops))
        if state.global_step == self.warmup_steps:
            self.start = mark
        self.end = mark

    def rates(self, steps: int) -> Rates:
        if self.start is None or self.end is None or self.end[0] <= self.start[0]:
            raise RuntimeError(f"no steps after the {self.warmup_steps} warm-up steps: use more conversations")
        (t0, tokens0, flops0), (t1, tokens1, flops1) = self.start, self.end
        return Rates(steps, tokens1 - tokens0, t1 - t0, flops1 - flops0)


def build_model(setup: Setup, folder: Path) -> tuple[int, DecoderShape]:
    """A random Llama of ``setup``'s shape with alignsmith's tiny tokenizer; its parameter count and shape."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from alignsmith.models.tiny import build_tokenizer

    tokenizer = build_tokenizer(vocab_size=min(setup.vocab_size, 512), model_max_length=setup.max_length)
    config = LlamaConfig(
        vocab_size=max(setup.vocab_size, len(tokenizer)), hidden_size=setup.hidden_size,
        intermediate_size=setup.intermediate_size, num_hidden_layers=setup.num_layers,
        num_attention_heads=setup.num_heads, num_key_value_heads=setup.num_kv_heads,
        max_position_embeddings=setup.max_length, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(getattr(torch, setup.dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters()), DecoderShape.of(model)


PACKINGS = {"off": {"packing": False}, "bfd": {"packing": True, "packing_strategy": "bfd"},
            "wrapped": {"packing": True, "packing_strategy": "wrapped"}}


def run_once(
    setup: Setup, shape: DecoderShape, model_dir: Path, work: Path, packing: str, device: str, attn: str | None
) -> Rates:
    from alignsmith.recipes import build

    from training.recipes import SFTRecipe
    from training.train import train

    name = f"packing-{packing}"
    recipe = build(SFTRecipe, {
        "base_model": {"path": str(model_dir), "dtype": setup.dtype, "attn_implementation": attn},
        "data": {"datasets": [{"path": str(POOL), "format": "sharegpt", "weight": setup.conversations / POOL_ROWS}],
                 "seed": 0},
        "training": {
            "use_cpu": device == "cpu", "bf16": setup.dtype == "bfloat16", "activation_checkpointing": False,
            "num_train_epochs": 1, "per_device_train_batch_size": setup.batch_size, "max_length": setup.max_length,
            **PACKINGS[packing], "learning_rate": 1e-4, "save_strategy": "no", "logging_steps": 1000,
            "report_to": "none", "disable_tqdm": True, "include_num_input_tokens_seen": "non_padding", "seed": 0,
        },
        "output": {"repo_id": f"bench/{name}"},
        "output_dir": str(work / name),
    })
    meter = Throughput(setup.warmup_steps, shape)
    result = train(recipe, callbacks=[meter])
    return meter.rates(int(result.metrics["global_step"]))


def attention(device: str, requested: str | None, setup: Setup) -> tuple[str | None, str]:
    """The attention implementation to train with, and a line saying whether bfd's figure represents the recipes."""
    from transformers.utils import is_flash_attn_2_available

    available = is_flash_attn_2_available()
    chosen = requested or ("flash_attention_2" if device == "cuda" and available else None)
    if chosen == "flash_attention_2":
        return chosen, "attention: flash_attention_2, as the GPU recipes set it (none across bfd's conversations)"
    missing = "" if available else " (flash-attn is not installed)"
    return chosen, (
        f"NOTE: attention {chosen or 'transformers default (sdpa)'}, not flash_attention_2{missing}: bfd makes each "
        f"batch one row of up to {setup.batch_size} x {setup.max_length} tokens, computed in full with a dense "
        f"block-diagonal mask, so the bfd row does not represent the GPU recipes (they set flash_attention_2); its "
        f"FLOPs count only the attention within conversations"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU dense bf16 peak (default: by GPU name)")
    parser.add_argument("--attn-implementation", default=None,
                        help="sdpa, eager or flash_attention_2 (default: flash_attention_2 on a GPU where installed, "
                             "else transformers' choice)")
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda needs a CUDA GPU, and torch sees none (the CPU variant is the default)")
    setup = CPU if args.device == "cpu" else GPU
    if args.device == "cuda":
        peak, device_line = gpu_peak(torch.cuda.get_device_name(), args.peak_tflops)
        unit, unit_name = 1e12, "TFLOP/s"
    else:
        peak, device_line = None, f"CPU, {torch.get_num_threads()} threads"
        unit, unit_name = 1e9, "GFLOP/s"
    attn, attention_line = attention(args.device, args.attn_implementation, setup)

    from alignsmith.endpoint import connect
    from alignsmith.hub.local import stop_local_hub
    from alignsmith.recipes import HubRecipe

    with tempfile.TemporaryDirectory(prefix="alignsmith-bench-") as tmp:
        work = Path(tmp)
        connect(HubRecipe(hub="local", hub_root=str(work / "hub")))  # the releases go to a throwaway embedded Hub
        try:
            params, shape = build_model(setup, work / "model")
            rows = {mode: run_once(setup, shape, work / "model", work, mode, args.device, attn) for mode in PACKINGS}
        finally:
            stop_local_hub(work / "hub")

    print(f"\ncommand: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} python "
          + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"device: {device_line}; model: Llama hidden {setup.hidden_size}, {setup.num_layers} layers, "
          f"{params / 1e6:.1f}M parameters, {setup.dtype}; "
          f"{setup.conversations} HH-RLHF conversations, batch {setup.batch_size}, max_length {setup.max_length}, "
          f"1 epoch ({setup.warmup_steps} warm-up steps untimed)")
    print(attention_line)
    print(f"FLOPs per training step: {TRAINING}, {shape.legend()}; K from each batch's position ids or padding "
          f"mask, k = positions followed by a label (fused LM head, assistant-only loss)")
    header = f"| packing | steps | tokens timed | seconds | tokens/s | {unit_name} ({TRAINING}) |"
    if args.device == "cuda":
        header += " % of dense bf16 peak |"
    print("\n" + header)
    print("|" + "---|" * (header.count("|") - 1))
    for packing, row in rows.items():
        achieved = row.flops / row.seconds
        line = (f"| {packing} | {row.steps} | {row.tokens:,} | {row.seconds:.2f} | {row.tokens_per_second:,.0f} "
                f"| {achieved / unit:,.2f} |")
        if args.device == "cuda":
            line += f" {fraction_of_peak(achieved, peak)} |"
        print(line)
    for packing in ("bfd", "wrapped"):
        speedup = rows[packing].tokens_per_second / rows["off"].tokens_per_second
        print(f"packing {packing}: {speedup:.2f}x the tokens/s of padded batches")


if __name__ == "__main__":
    main()
