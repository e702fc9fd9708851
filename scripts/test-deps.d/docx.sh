#!/usr/bin/env bash
# Test-only dependencies of the docx plugin tests (tests/docx.rs): python-docx
# (independent reader of our output, fixture generator) and docxtpl (the
# reference implementation the results are compared with). Idempotent.
set -euo pipefail

want_docx=1.2.0
want_docxtpl=0.20.2
have() {
  python3 - "$@" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("python-docx") == sys.argv[1] and version("docxtpl") == sys.argv[2] else 1)
PY
}
if have "$want_docx" "$want_docxtpl"; then
  echo "==> docx test deps: present"
  exit 0
fi
echo "==> docx test deps: installing python-docx==$want_docx docxtpl==$want_docxtpl"
python3 -m pip install --quiet --disable-pip-version-check \
  "python-docx==$want_docx" "docxtpl==$want_docxtpl" \
  || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
    "python-docx==$want_docx" "docxtpl==$want_docxtpl"
