#!/usr/bin/env bash
# Test-only dependencies of the pdf plugin tests (tests/pdf.rs): independent
# PDF readers (qpdf, poppler-utils: pdftotext, pdffonts, pdfinfo, pdfimages)
# and fonts for the host's font index: DejaVu (text, mono, and DejaVu Math
# TeX Gyre for equations) and Noto CJK. Idempotent: installs only what is
# missing.
set -euo pipefail

missing=()
command -v qpdf >/dev/null 2>&1 || missing+=(qpdf)
for tool in pdftotext pdffonts pdfinfo pdfimages; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    missing+=(poppler-utils)
    break
  fi
done
for pkg in fonts-dejavu-core fonts-dejavu-extra fonts-noto-cjk; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "==> pdf test deps: present"
  exit 0
fi

echo "==> pdf test deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
