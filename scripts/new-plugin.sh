#!/usr/bin/env bash
# Start a new format plugin from plugins/template in one command:
#   scripts/new-plugin.sh NAME
# creates plugins/NAME (crate export-host-NAME, plugin and output format NAME)
# and adds it to the plugins workspace. Then edit plugins/NAME/src/lib.rs and
#   scripts/build-plugins.sh NAME     # -> plugins/dist/NAME.wasm (hot-loaded by a running server)
# NAME: lowercase letters, digits and '-', starting with a letter.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/plugins"

name="${1:-}"
if [ $# -ne 1 ] || ! [[ "$name" =~ ^[a-z][a-z0-9-]{0,39}$ ]]; then
  echo "usage: scripts/new-plugin.sh NAME   (NAME: lowercase letters, digits, '-'; starts with a letter)" >&2
  exit 2
fi
case "$name" in
  kit|template|dist|target) echo "NAME must not be '$name' (reserved)" >&2; exit 2 ;;
esac
if [ -e "$name" ]; then
  echo "plugins/$name already exists" >&2
  exit 1
fi
if [ ! -f template/Cargo.toml ] || [ ! -f template/src/lib.rs ]; then
  echo "plugins/template is missing" >&2
  exit 1
fi

# Copy the sources only (no build output), then rename crate, plugin and format.
mkdir -p "$name/src"
cp template/Cargo.toml "$name/Cargo.toml"
cp template/src/lib.rs "$name/src/lib.rs"
sed -i \
  -e "s/^name = \"export-host-template\"$/name = \"export-host-$name\"/" \
  -e "s/^description = \".*\"$/description = \"$name: an export-host format plugin\"/" \
  -e '/^# A minimal format plugin to start from/,/^# this directory/d' \
  -e '/^# and renames the crate, plugin and format\.$/d' \
  "$name/Cargo.toml"
sed -i \
  -e "s/^const NAME: &str = \"template\";$/const NAME: \&str = \"$name\";/" \
  -e "s|^//! \`template\` plugin: the starting point for a new format plugin$|//! \`$name\` plugin, started from plugins/template|" \
  -e "s|^//! (\`scripts/new-plugin.sh NAME\` copies it)\. It renders|//! (\`scripts/new-plugin.sh\`). It renders|" \
  -e "s|scripts/build-plugins.sh template\` → \`plugins/dist/template.wasm|scripts/build-plugins.sh $name\` → \`plugins/dist/$name.wasm|" \
  "$name/src/lib.rs"
if ! grep -q "^name = \"export-host-$name\"$" "$name/Cargo.toml" \
   || ! grep -q "^const NAME: &str = \"$name\";$" "$name/src/lib.rs"; then
  rm -rf "$name"
  echo "plugins/template changed shape: cannot rename its crate or format" >&2
  exit 1
fi

# Add the crate to the workspace members (one line: members = [...]).
if ! grep -q '^members = \[' Cargo.toml; then
  echo "plugins/Cargo.toml: no 'members = [...]' line; add \"$name\" to the members by hand" >&2
elif ! grep -q "^members = \[.*\"$name\"" Cargo.toml; then
  sed -i "s/^members = \[\(.*\)\]$/members = [\1, \"$name\"]/" Cargo.toml
fi

echo "created plugins/$name (crate export-host-$name, output format \"$name\")"
echo "next: edit plugins/$name/src/lib.rs, then scripts/build-plugins.sh $name"
