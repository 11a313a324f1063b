#!/usr/bin/env bash
# The main job, offline: set up, then run the whole chain of recipes/chain/demo.yaml on an embedded Hub
# under runs/demo/hub with tiny models (Deita on the bundled HH-RLHF pool, SFT, preferences, SFT then DPO,
# evaluation, Polite Flamingo from raw annotations to a tuned and evaluated model), print what each step
# published where, and read the Deita dataset back by tag as any user would.
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

# 1. the chain: every step's command and recipe is checked first; each step publishes to the embedded Hub
alignsmith chain run --config recipes/chain/demo.yaml

# 2. consume what it published as any user would
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

# 3. the results Space over all of it; in a terminal it is served until Ctrl-C, otherwise the command is shown
serve="alignsmith space serve --config recipes/space/serve/demo.yaml"
if [ -t 1 ]; then
  echo "Serving the results Space (Ctrl-C stops it):"
  $serve
else
  echo "Serve the results Space with: $serve"
fi
