"""Upload and download throughput of the embedded Hub against a plain file copy on the same disk.

A ~1 GB model folder (4 x 256 MB of random bytes named like safetensors shards) goes through
``HfApi.upload_folder`` and back through ``snapshot_download`` against an embedded Hub started
the zero-setup way (a background server process), and is copied once with ``shutil.copytree``
for reference. Everything lives in one temporary directory, so all three hit the same disk, and
each step is timed until its bytes are on disk (``os.sync``), as the Hub fsyncs what it stores.
Peak memory of the client and of the server shows that files are streamed, not held.

    python benchmarks/bench_hub_throughput.py                   # 4 x 256 MB
    python benchmarks/bench_hub_throughput.py --files 2 --file-mb 64
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from alignsmith.hub.local import configure_client_env, ensure_local_hub, stop_local_hub

CHUNK = 8 * 1024 * 1024


def write_random_files(folder: Path, count: int, size_mb: int) -> int:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    for i in range(count):
        with open(folder / f"model-{i + 1:05d}-of-{count:05d}.safetensors", "wb") as f:
            for _ in range(size_mb * 1024 * 1024 // CHUNK):
                f.write(os.urandom(CHUNK))
    return sum(p.stat().st_size for p in folder.iterdir())


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn) -> float:
    """Seconds for ``fn`` until its bytes are on disk, starting with no dirty pages of earlier steps."""
    os.sync()
    start = time.perf_counter()
    fn()
    os.sync()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--file-mb", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="alignsmith-bench-hub-", dir=args.workdir))
    hub = None
    try:
        source = work / "model"
        total = write_random_files(source, args.files, args.file_mb)
        megabytes = total / 1e6

        copy_s = timed(lambda: shutil.copytree(source, work / "copy"))

        hub = ensure_local_hub(work / "hub-root")
        configure_client_env(hub.url, hub.token)  # before huggingface_hub is imported
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        from huggingface_hub import HfApi, snapshot_download

        api = HfApi()
        repo = "bench/model"
        api.create_repo(repo)
        upload_s = timed(lambda: api.upload_folder(folder_path=source, repo_id=repo))
        download_dir = work / "download"
        download_s = timed(lambda: snapshot_download(repo, local_dir=download_dir, max_workers=4))

        for src in sorted(source.iterdir()):
            if sha256_of(src) != sha256_of(download_dir / src.name):
                raise SystemExit(f"downloaded {src.name} differs from the original")

        print(f"\n{args.files} files, {megabytes:,.0f} MB total, one disk ({work})\n")
        print(f"{'operation':<34}{'seconds':>9}{'MB/s':>9}{'vs copytree':>13}")
        for name, seconds in [
            ("shutil.copytree", copy_s),
            ("upload_folder (hash + LFS PUT)", upload_s),
            ("snapshot_download", download_s),
        ]:
            print(f"{name:<34}{seconds:>9.2f}{megabytes / seconds:>9.0f}{copy_s / seconds:>12.2f}x")
        client_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\npeak RSS: client {client_rss:,.0f} MB, server {peak_rss_mb(hub.pid):,.0f} MB")
        print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    finally:
        if hub is not None:
            stop_local_hub(hub.root)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
