#!/usr/bin/env bash
# Schemathesis: the HTTP fuzzer tests/fuzz.rs runs against the server's own
# GET /openapi.json (no 5xx, no crash). Installed from PyPI into a venv of
# its own (~/.cache/export-host/fuzz). hypothesis is pinned: newer releases
# break hypothesis-jsonschema 0.23.1, which schemathesis 4.1.4 uses.
# Idempotent.
set -euo pipefail

st=4.1.4
hyp=6.135.0
venv="${HOME}/.cache/export-host/fuzz"
have() {
  "$venv/bin/python" - "$st" "$hyp" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if (version("schemathesis"), version("hypothesis")) == (sys.argv[1], sys.argv[2]) else 1)
PY
}
if have && [ -x "$venv/bin/schemathesis" ]; then
  echo "==> fuzz test deps: present"
  exit 0
fi
echo "==> fuzz test deps: installing schemathesis==$st (hypothesis==$hyp) into $venv"
mkdir -p "$(dirname "$venv")"
rm -rf "$venv"
if ! python3 -m venv "$venv"; then
  # Debian's python3 needs its venv package for this.
  rm -rf "$venv"
  apt-get update -qq || true
  apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$st" "hypothesis==$hyp"
"$venv/bin/schemathesis" --version >/dev/null
