"""Benchmark alignsmith's Deita selection against the reference per-candidate loop.

Two comparisons on the same inputs and machine (selected ids must be identical, in order):
clustered N=20,000 x d=256 with no budget, and clustered N=5,000 x d=4,096 with no budget. Then
the paper-scale run alone (N=300,000 x d=4,096, budget 10,000, float16 embeddings in a memory map
on disk), in a fresh process so that its peak RSS is its own; the reference loop is not run at
that scale (it would take hours).

    python benchmarks/bench_selection.py            # full run (about 15 minutes on 2 cores, mostly the reference loop)
    python benchmarks/bench_selection.py --quick    # smaller sizes, about a minute
"""

from __future__ import annotations

import os

# Both cores for BLAS and torch; must be set before numpy/torch are imported.
os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = "2"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from builders.deita.selection import combine_scores, select_diverse  # noqa: E402
from hardware import load_average  # noqa: E402

GENERATION_CHUNK = 8192


def turn_scores(n: int, seed: int) -> tuple[list[list[float]], list[list[float]]]:
    """1-3 turns per row, per-turn complexity and quality scores uniform in [1, 6]."""
    rng = np.random.default_rng(seed)
    turns = rng.integers(1, 4, size=n)
    complexity = [rng.uniform(1, 6, t).tolist() for t in turns]
    quality = [rng.uniform(1, 6, t).tolist() for t in turns]
    return complexity, quality


def unit_centres(n_centres: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((n_centres, dim), dtype=np.float32)
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def clustered_rows(
    centres: np.ndarray, n: int, noise: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """Noisy copies of random centres, randomly rescaled.

    Per-row noise of norm ~U[noise] around a unit centre puts the cosine of two rows of one
    cluster near 1/sqrt((1+s1^2)(1+s2^2)), so with noise around 0.33 many pairs straddle 0.9.
    """
    dim = centres.shape[1]
    sigma = rng.uniform(*noise, size=(n, 1)).astype(np.float32) / np.sqrt(dim)
    rows = centres[rng.integers(0, len(centres), n)] + sigma * rng.standard_normal((n, dim), dtype=np.float32)
    return rows * rng.uniform(0.5, 2.0, size=(n, 1)).astype(np.float32)


def compare_case(name: str, n: int, dim: int, n_centres: int, noise: tuple[float, float], seed: int) -> dict:
    # Imported here so that the paper-scale worker process does not carry torch and pandas in its RSS.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference_deita_selection import reference_select

    rng = np.random.default_rng(seed)
    embeddings = clustered_rows(unit_centres(n_centres, dim, rng), n, noise, rng)
    complexity, quality = turn_scores(n, seed)

    start = time.perf_counter()
    reference = reference_select(complexity, quality, embeddings, threshold=0.9, data_size=-1)
    reference_s = time.perf_counter() - start

    start = time.perf_counter()
    final = combine_scores(complexity, quality)
    ours = select_diverse(final, embeddings, budget=None, max_similarity=0.9, tie_order="reference")
    ours_s = time.perf_counter() - start

    identical = ours.selected.tolist() == reference
    if not identical:
        first = next((i for i, (a, b) in enumerate(zip(ours.selected, reference)) if a != b), None)
        print(f"  {name}: MISMATCH: {len(ours.selected)} vs {len(reference)} rows, first difference at {first}")
    return {
        "case": name,
        "selected": len(ours.selected),
        "rejected": ours.counts.rejected_too_similar,
        "reference_s": reference_s,
        "alignsmith_s": ours_s,
        "identical": identical,
        "load": load_average(),
    }


def write_paper_pool(path: Path, n: int, dim: int, n_centres: int, seed: int) -> None:
    """float16 [n, dim] memory map, written chunk by chunk."""
    rng = np.random.default_rng(seed)
    centres = unit_centres(n_centres, dim, rng)
    pool = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for start in range(0, n, GENERATION_CHUNK):
        stop = min(start + GENERATION_CHUNK, n)
        pool[start:stop] = clustered_rows(centres, stop - start, (0.2, 0.45), rng)
    pool.flush()
    del pool


def resident_gib(field: str) -> float:
    """A ``/proc/self/status`` memory field (Linux), in GiB; NaN elsewhere."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return float("nan")
    return int(line.split()[1]) / 2**20


def paper_worker(path: Path, budget: int, seed: int) -> None:
    """Runs in its own process: score combination + selection over the memory-mapped pool."""
    embeddings = np.load(path, mmap_mode="r")
    complexity, quality = turn_scores(embeddings.shape[0], seed)
    start = time.perf_counter()
    final = combine_scores(complexity, quality)
    scores_s = time.perf_counter() - start
    start = time.perf_counter()
    result = select_diverse(final, embeddings, budget=budget, max_similarity=0.9)
    select_s = time.perf_counter() - start
    counts = result.counts
    print(
        json.dumps(
            {
                "scores_s": scores_s,
                "select_s": select_s,
                "selected": counts.selected,
                "scanned": counts.scanned,
                "rejected": counts.rejected_too_similar,
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
                "anon_gib": resident_gib("RssAnon"),
                "file_gib": resident_gib("RssFile"),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a minute instead of ten)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-comparison", action="store_true", help="only the paper-scale run")
    parser.add_argument("--skip-paper-scale", action="store_true", help="only the comparisons with the reference")
    parser.add_argument("--workdir", type=Path, default=None, help="where the paper-scale memory map goes")
    parser.add_argument("--paper-worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=10_000, help="paper-scale budget")
    args = parser.parse_args()
    if args.paper_worker is not None:
        paper_worker(args.paper_worker, args.budget, args.seed)
        return

    small_n, wide_n, paper_n = (4_000, 1_000, 30_000) if args.quick else (20_000, 5_000, 300_000)
    budget = min(args.budget, paper_n // 10) if args.quick else args.budget
    command = "OMP_NUM_THREADS=2 python " + " ".join(sys.argv)
    print(f"command: {command}")
    print(f"threads: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} (BLAS and torch); cpus {os.cpu_count()}")
    if not args.skip_comparison:
        print("reference = per-candidate torch loop (batch_size=1); alignsmith = blocked numpy, block_size 1024;")
        print("both include the final-score computation and the sort; max_similarity 0.9, no budget.\n")
        rows = [
            compare_case(f"clustered N={small_n:,} d=256", small_n, 256, small_n // 4, (0.35, 0.35), args.seed),
            compare_case(f"clustered N={wide_n:,} d=4096", wide_n, 4096, wide_n // 4, (0.2, 0.45), args.seed),
        ]
        header = ("case", "selected", "rejected", "reference s", "alignsmith s", "speedup")
        print("{:<28} {:>9} {:>9} {:>12} {:>13} {:>8}  identical  load 1/5/15 min".format(*header))
        for r in rows:
            print(
                f"{r['case']:<28} {r['selected']:>9,} {r['rejected']:>9,} {r['reference_s']:>12.2f} "
                f"{r['alignsmith_s']:>13.3f} {r['reference_s'] / r['alignsmith_s']:>7.0f}x  {r['identical']!s:<9}  {r['load']}"
            )
        if not all(r["identical"] for r in rows):
            sys.exit("alignsmith's selection differs from the reference loop")
    if args.skip_paper_scale:
        return

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = Path(tmp) / "pool.npy"
        start = time.perf_counter()
        write_paper_pool(path, paper_n, 4096, paper_n // 15, args.seed)
        size_gib, write_s = path.stat().st_size / 2**30, time.perf_counter() - start
        print(f"\npaper scale: wrote a {size_gib:.2f} GiB float16 memmap in {write_s:.0f} s")
        worker = [sys.executable, __file__, "--paper-worker", str(path), "--budget", str(budget)]
        worker += ["--seed", str(args.seed)]
        start = time.perf_counter()
        out = subprocess.run(worker, capture_output=True, text=True)
        wall_s = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"paper-scale worker failed:\n{out.stderr}")
    paper = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"(fresh process, page cache warm from writing; the reference loop is not run at this scale; "
          f"load 1/5/15 min {load_average()})")
    print(
        f"peak RSS counts the memory-mapped file pages the kernel maps around each row read; at exit the process "
        f"held {paper['anon_gib']:.2f} GiB anonymous + {paper['file_gib']:.2f} GiB file-backed (page cache)"
    )
    print(
        f"{'case':<44} {'selected':>9} {'scanned':>9} {'rejected':>9} {'scores s':>9} {'select s':>9} "
        f"{'process s':>10} {'peak RSS GiB':>12}"
    )
    print(
        f"{f'N={paper_n:,} d=4096 f16 memmap, budget {budget:,}':<44} {paper['selected']:>9,} {paper['scanned']:>9,} "
        f"{paper['rejected']:>9,} {paper['scores_s']:>9.2f} {paper['select_s']:>9.2f} {wall_s:>10.1f} "
        f"{paper['peak_rss_gib']:>12.2f}"
    )


if __name__ == "__main__":
    main()
