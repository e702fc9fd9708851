#!/usr/bin/env bash
# Build format plugins (plugins/) and test guests (tests/guests/) as
# wasm32-wasip2 components; copy them to plugins/dist/ and target/test-guests/.
#   scripts/build-plugins.sh            # everything
#   scripts/build-plugins.sh text chaos # only these (a plugin or test guest name)
# Installs the wasm target if it is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "==> installing the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi

export CARGO_TARGET_DIR="$root/target/wasm"
out="$CARGO_TARGET_DIR/wasm32-wasip2/release"
mkdir -p plugins/dist target/test-guests

plugin_names() { for c in plugins/*/Cargo.toml; do n="$(basename "$(dirname "$c")")"; [ "$n" = kit ] || echo "$n"; done; }
guest_names() { for c in tests/guests/*/Cargo.toml; do basename "$(dirname "$c")"; done; }

plugins=() guests=()
if [ $# -eq 0 ]; then
  mapfile -t plugins < <(plugin_names)
  mapfile -t guests < <(guest_names)
else
  for name in "$@"; do
    if [ -f "plugins/$name/Cargo.toml" ]; then plugins+=("$name")
    elif [ -f "tests/guests/$name/Cargo.toml" ]; then guests+=("$name")
    else echo "no plugin or test guest named $name" >&2; exit 2; fi
  done
fi

if [ ${#plugins[@]} -gt 0 ]; then
  echo "==> building format plugins: ${plugins[*]}"
  (cd plugins && cargo build --release --target wasm32-wasip2 $(printf -- '-p export-host-%s ' "${plugins[@]}"))
  for name in "${plugins[@]}"; do
    artifact="$out/export_host_${name//-/_}.wasm"
    # A crate that is still a placeholder (no renderer export) is not a plugin.
    if [ -f "$artifact" ] && grep -q "export-host:plugin/renderer" "$artifact"; then
      cp "$artifact" "plugins/dist/$name.wasm"
    fi
  done
fi
if [ ${#guests[@]} -gt 0 ]; then
  echo "==> building test guests: ${guests[*]}"
  (cd tests/guests && cargo build --release --target wasm32-wasip2 $(printf -- '-p guest-%s ' "${guests[@]}"))
  for name in "${guests[@]}"; do
    cp "$out/guest_${name//-/_}.wasm" "target/test-guests/$name.wasm"
  done
fi
echo "==> plugins/dist: $(ls plugins/dist | tr '\n' ' ')"
