#!/usr/bin/env bash
# Build the format plugins (plugins/) and the test guests (tests/guests/) as
# wasm32-wasip2 components and copy them to plugins/dist/ and
# target/test-guests/. Installs the wasm target if it is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "==> installing the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi

export CARGO_TARGET_DIR="$root/target/wasm"
echo "==> building format plugins (plugins/)"
(cd plugins && cargo build --release --target wasm32-wasip2)
echo "==> building test guests (tests/guests/)"
(cd tests/guests && cargo build --release --target wasm32-wasip2)

out="$CARGO_TARGET_DIR/wasm32-wasip2/release"
mkdir -p plugins/dist target/test-guests
for crate in plugins/*/; do
  name="$(basename "$crate")"
  [ "$name" = kit ] || [ "$name" = dist ] || [ "$name" = template ] && continue
  [ -f "$crate/Cargo.toml" ] || continue
  artifact="$out/export_host_${name//-/_}.wasm"
  # A crate that is still a placeholder (no exports) builds no component.
  if [ -f "$artifact" ] && grep -q "export-host:plugin/renderer" "$artifact"; then
    cp "$artifact" "plugins/dist/$name.wasm"
  fi
done
for crate in tests/guests/*/; do
  name="$(basename "$crate")"
  [ -f "$crate/Cargo.toml" ] || continue
  cp "$out/guest_${name//-/_}.wasm" "target/test-guests/$name.wasm"
done
echo "==> plugins: $(ls plugins/dist | tr '\n' ' ')"
echo "==> test guests: $(ls target/test-guests | tr '\n' ' ')"
