#!/usr/bin/env bash
# Run the test suite against the NEWEST releases of mwork's dependencies, past the tested ranges of
# pyproject.toml and the exact versions of constraints.txt, and say what broke: which packages are
# newer than tested, and which tests failed.
#
#   bash scripts/test_newest.sh                        # the whole suite, in ./.venv-newest
#   bash scripts/test_newest.sh tests/test_families.py # any pytest arguments
#   bash scripts/test_newest.sh --write-constraints    # after a green run: constraints.txt from it
#
# torch stays at the tested CPU wheel (an unpinned torch pulls a multi-GB CUDA build); set
# TORCH_SPEC (e.g. "torch==2.14.1") to try another. The virtual environment is $NEWEST_VENV
# (default .venv-newest, git-ignored) and is reused; the log is $NEWEST_VENV/pytest.log.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${NEWEST_VENV:-.venv-newest}
PY=${PYTHON:-python3}
write=0
if [ "${1:-}" = "--write-constraints" ]; then write=1; shift; fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
# every dependency and extra of pyproject.toml by name only (no range), upgraded to its newest release
names=$("$VENV/bin/python" - <<'EOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = project["dependencies"] + [r for extra in ("default-model", "test") for r in project["optional-dependencies"][extra]]
print(" ".join(n for n in (re.match(r"[A-Za-z0-9_.\-]+", r).group(0) for r in reqs) if n.lower() != "torch"))
EOF
)
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet --upgrade --upgrade-strategy eager $names
"$VENV/bin/python" -m pip install --quiet --no-deps -e .

if [ "$write" = 1 ]; then
  { sed -n '/^#/p' constraints.txt
    "$VENV/bin/python" -m pip freeze --exclude-editable | grep -viE '^(torch|mwork)[= ]'
  } > constraints.txt.new
  mv constraints.txt.new constraints.txt
  echo "constraints.txt now lists $VENV's versions; widen the ranges in pyproject.toml to match"
  exit 0
fi

set +e
"$VENV/bin/python" -m pytest -q -ra -p no:cacheprovider "$@" 2>&1 | tee "$VENV/pytest.log"
status=${PIPESTATUS[0]}
set -e

echo
echo "== newer than tested (constraints.txt -> $VENV) =="
"$VENV/bin/python" - "$VENV" <<'EOF'
import re, subprocess, sys
pin = lambda text: {m[1].lower().replace("_", "-"): m[2] for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M)}
tested = pin(open("constraints.txt").read())
now = pin(subprocess.run([f"{sys.argv[1]}/bin/python", "-m", "pip", "freeze"], capture_output=True, text=True).stdout)
rows = [(n, tested[n], now[n]) for n in sorted(now) if n in tested and tested[n] != now[n]]
rows += [(n, "-", now[n]) for n in sorted(now) if n not in tested and n not in ("mwork", "torch")]
for name, old, new in rows:
    print(f"  {name}: {old} -> {new}")
print("  (none)" if not rows else f"  {len(rows)} package(s)")
EOF
echo "== what broke =="
if [ "$status" = 0 ]; then
  echo "  nothing: the suite passes with the newest releases (--write-constraints records them)"
else
  grep -E '^(FAILED|ERROR) ' "$VENV/pytest.log" | sed 's/^/  /' || true
  echo "  pytest exit status $status; full log: $VENV/pytest.log"
fi
exit "$status"
