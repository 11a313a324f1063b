#!/usr/bin/env bash
# The main job, offline: set up, start an embedded Hub under runs/demo/hub, publish a tiny scorer,
# run the Deita builder on the bundled HH-RLHF pool, and read the published dataset back by tag.
# Rerunning starts afresh (published tags are never moved) and keeps the previous run: runs/demo, with its
# embedded Hub and everything published to it, is moved aside to runs/demo.<date-time> first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_DISABLE_TELEMETRY=1 HF_UPDATE_DOWNLOAD_COUNTS=0 GRADIO_ANALYTICS_ENABLED=False \
       OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
export ALIGNSMITH_HUB_ROOT="$PWD/runs/demo/hub"
PATH="$PWD/.venv/bin:$PATH"

alignsmith hub stop >/dev/null
if [ -e runs/demo ]; then
  kept="runs/demo.$(date +%Y%m%d-%H%M%S)"
  mv runs/demo "$kept"
  echo "The previous demo (its embedded Hub and everything published to it) is kept in $kept;"
  echo "serve it with: alignsmith hub start --root $kept/hub"
fi

# 1. a tiny, untrained scorer published to the embedded Hub (stands in for hkust-nlp/deita-*-scorer)
alignsmith models tiny --out runs/demo/models/tiny-scorer --hidden-size 64 --max-position-embeddings 2048 --seed 0 \
    --publish alignsmith-demo/tiny-scorer --tag v1.0.0

# 2. the Deita builder: score, embed, select, publish alignsmith-demo/deita-hh-rlhf@v1.0.0
alignsmith build deita --config recipes/build/deita/demo.yaml

# 3. consume it as any user would
eval "$(alignsmith hub start | tail -n 1)"
python - <<'PY'
from datasets import get_dataset_config_names, load_dataset
from alignsmith.lineage import read_lineage

repo = "alignsmith-demo/deita-hh-rlhf"
configs = get_dataset_config_names(repo, revision="v1.0.0")
selected = load_dataset(repo, "selected", revision="v1.0.0", split="train")
scored = load_dataset(repo, "scored", revision="v1.0.0", split="train")
rejected = load_dataset(repo, "rejected", revision="v1.0.0", split="train").num_rows if "rejected" in configs else 0
lineage, sha = read_lineage(repo, "dataset", "v1.0.0")
print(f"\n{repo}@v1.0.0 = {sha} (configs: {', '.join(configs)})")
print(f"  scored: {scored.num_rows} rows, rejected: {rejected} rows")
print(f"  selected: {selected.num_rows} rows; top row {selected[0]['id']!r} (final score {selected[0]['final_score']:.3f})")
print(f"  lineage: pool {lineage.inputs[0].repo_id} sha256 {lineage.inputs[0].sha[:12]}, "
      + ", ".join(f"{m.role} {m.repo_id}@{m.sha[:12]}" for m in lineage.models))
PY
echo "The embedded Hub keeps running in the background (alignsmith hub stop to stop it)."
