#!/usr/bin/env bash
# Run the README's commands exactly as written: the main job (scripts/demo.sh), then every code block
# marked `<!-- readme-check -->`, in order, in one shell (bash blocks as they are, python blocks with
# the project's interpreter), so that variables one block exports are there for the next.
set -euo pipefail
cd "$(dirname "$0")/.."
time bash scripts/demo.sh  # its wall time, as the README quotes it
script=$(mktemp)
trap 'rm -f "$script"' EXIT
python3 - README.md >"$script" <<'PY'
import re, sys

text = open(sys.argv[1], encoding="utf-8").read()
print("set -euo pipefail")
for number, (lang, body) in enumerate(re.findall(r"<!-- readme-check -->\n```(bash|python)\n(.*?)```", text, re.S), 1):
    print(f"echo '--- README block {number} ({lang})'")
    print(body if lang == "bash" else f".venv/bin/python - <<'README_PY'\n{body}README_PY")
PY
grep -q "README block" "$script" || { echo "check_readme: no marked README blocks found" >&2; exit 1; }
bash "$script"
ALIGNSMITH_HUB_ROOT=runs/demo/hub .venv/bin/alignsmith hub stop
echo "README commands: all ran"
