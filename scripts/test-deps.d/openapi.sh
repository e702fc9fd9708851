#!/usr/bin/env bash
# openapi-spec-validator: the independent validator tests/openapi.rs runs on
# the server's GET /openapi.json. Installed from PyPI into a venv of its own
# (~/.cache/export-host/openapi), so the system Python is left alone.
# Idempotent.
set -euo pipefail

want=0.9.0
venv="${HOME}/.cache/export-host/openapi"
have() {
  "$venv/bin/python" - "$want" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("openapi-spec-validator") == sys.argv[1] else 1)
PY
}
if have && [ -x "$venv/bin/openapi-spec-validator" ]; then
  echo "==> openapi test deps: present"
  exit 0
fi
echo "==> openapi test deps: installing openapi-spec-validator==$want into $venv"
mkdir -p "$(dirname "$venv")"
if ! python3 -m venv "$venv"; then
  # Debian's python3 needs its venv package for this.
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openapi-spec-validator==$want"
"$venv/bin/openapi-spec-validator" --help >/dev/null
