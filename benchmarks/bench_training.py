"""Training throughput with and without packing, through alignsmith's own SFT path.

Every run trains one epoch on the same conversations (the bundled HH-RLHF pool, a seeded sample) with
the same per-device batch size, once per packing mode:

* ``off``: one conversation per row, padded to the longest in the batch;
* ``bfd``: trl's default packing, whole conversations best-fit into padding-free rows whose position
  ids restart per conversation (FlashAttention's varlen kernels then skip attention across
  conversations; sdpa and eager compute the whole packed row);
* ``wrapped``: conversations concatenated and cut into ``max_length`` rows (no padding at all).

Tokens are non-padding tokens; the first steps (allocator, kernels) are left out of the timing.

    python benchmarks/bench_training.py                  # CPU: hidden 256, 4 layers, float32
    python benchmarks/bench_training.py --device cuda    # GPU: a 1B-shaped Llama in bf16, plus FLOP/s vs peak
    python benchmarks/bench_training.py --device cuda --attn-implementation flash_attention_2

On a shared CPU machine, OMP_NUM_THREADS=1 gives repeatable figures. On a GPU the model FLOPs are
estimated as 6 * parameters * tokens and compared with the GPU's dense bf16 peak (looked up by name,
or given with --peak-tflops).
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

from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "data" / "hh_rlhf" / "pool.jsonl"
POOL_ROWS = 600  # conversations in the bundled pool

# dense (not sparse) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0,
                    "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


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


class Throughput(TrainerCallback):
    """Non-padding tokens per second after the warm-up steps."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.start: tuple[float, int] | None = None
        self.end: tuple[float, int] | None = None

    def on_step_end(self, args, state, control, **kwargs) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        mark = (time.perf_counter(), state.num_input_tokens_seen)
        if state.global_step == self.warmup_steps:
            self.start = mark
        self.end = mark

    def tokens_per_second(self) -> tuple[int, float]:
        if self.start is None or self.end is None or self.end[0] <= self.start[0]:
            raise RuntimeError(f"no steps after the {self.warmup_steps} warm-up steps: use more conversations")
        tokens = self.end[1] - self.start[1]
        return tokens, tokens / (self.end[0] - self.start[0])


def build_model(setup: Setup, folder: Path) -> int:
    """A random Llama of ``setup``'s shape with alignsmith's tiny tokenizer; returns its parameter count."""
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
    return sum(p.numel() for p in model.parameters())


PACKINGS = {"off": {"packing": False}, "bfd": {"packing": True, "packing_strategy": "bfd"},
            "wrapped": {"packing": True, "packing_strategy": "wrapped"}}


def run_once(setup: Setup, model_dir: Path, work: Path, packing: str, device: str, attn: str | None) -> dict:
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
    meter = Throughput(setup.warmup_steps)
    result = train(recipe, callbacks=[meter])
    tokens, per_second = meter.tokens_per_second()
    return {"steps": result.metrics["global_step"], "tokens": tokens, "tokens_per_second": per_second,
            "seconds": tokens / per_second}


def peak_tflops(override: float | None) -> tuple[str, float]:
    import torch

    name = torch.cuda.get_device_name()
    if override is not None:
        return name, override
    for key, value in BF16_PEAK_TFLOPS.items():  # most specific names first
        if key in name:
            return name, value
    sys.exit(f"unknown bf16 peak for {name!r}: pass --peak-tflops (dense bf16 TFLOP/s from the data sheet)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU dense bf16 peak (default: by GPU name)")
    parser.add_argument("--attn-implementation", default=None,
                        help="sdpa, eager or flash_attention_2 (default: transformers' choice)")
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda needs a CUDA GPU, and torch sees none (the CPU variant is the default)")
    setup = CPU if args.device == "cpu" else GPU
    if args.device == "cuda":
        device_name, peak = peak_tflops(args.peak_tflops)
    else:
        device_name, peak = f"CPU, {torch.get_num_threads()} threads", None

    from alignsmith.endpoint import connect
    from alignsmith.hub.local import stop_local_hub
    from alignsmith.recipes import HubRecipe

    with tempfile.TemporaryDirectory(prefix="alignsmith-bench-") as tmp:
        work = Path(tmp)
        connect(HubRecipe(hub="local", hub_root=str(work / "hub")))  # the releases go to a throwaway embedded Hub
        try:
            params = build_model(setup, work / "model")
            rows = {mode: run_once(setup, work / "model", work, mode, args.device, args.attn_implementation)
                    for mode in PACKINGS}
        finally:
            stop_local_hub(work / "hub")

    print(f"\ncommand: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} python "
          + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"device: {device_name}; model: Llama hidden {setup.hidden_size}, {setup.num_layers} layers, "
          f"{params / 1e6:.1f}M parameters, {setup.dtype}, attention {args.attn_implementation or 'default'}; "
          f"{setup.conversations} HH-RLHF conversations, batch {setup.batch_size}, max_length {setup.max_length}, "
          f"1 epoch ({setup.warmup_steps} warm-up steps untimed)")
    header = "| packing | steps | tokens timed | seconds | tokens/s |"
    if peak is not None:
        header += " TFLOP/s (6·N·T) | % of bf16 peak |"
    print("\n" + header)
    print("|" + "---|" * (header.count("|") - 1))
    for packing, row in rows.items():
        line = (f"| {packing} | {row['steps']:.0f} | {row['tokens']:,.0f} | {row['seconds']:.2f} "
                f"| {row['tokens_per_second']:,.0f} |")
        if peak is not None:
            tflops = 6 * params * row["tokens_per_second"] / 1e12
            line += f" {tflops:.1f} | {100 * tflops / peak:.1f}% |"
        print(line)
    for packing in ("bfd", "wrapped"):
        speedup = rows[packing]["tokens_per_second"] / rows["off"]["tokens_per_second"]
        print(f"packing {packing}: {speedup:.2f}x the tokens/s of padded batches")


if __name__ == "__main__":
    main()
