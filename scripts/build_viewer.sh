#!/usr/bin/env bash
# Build the web viewer's assets: NiiVue's self-contained UMD bundle from the npm registry, copied
# into the Python package (src/fastsam3d/server/static/vendor/), so an installed fastsam3d serves
# the viewer without Node.js. The result is committed; rerun after changing NIIVUE_VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."
NIIVUE_VERSION="${NIIVUE_VERSION:-0.69.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@niivue/niivue@${NIIVUE_VERSION}" >/dev/null && tar xzf niivue-niivue-*.tgz)
target=src/fastsam3d/server/static/vendor
mkdir -p "$target"
cp "$work/package/dist/niivue.umd.js" "$target/niivue.umd.js"
cp "$work/package/LICENSE" "$target/NIIVUE-LICENSE" 2>/dev/null || echo "NiiVue ${NIIVUE_VERSION}: BSD-2-Clause, https://github.com/niivue/niivue" > "$target/NIIVUE-LICENSE"
echo "NiiVue ${NIIVUE_VERSION} -> $target/niivue.umd.js ($(du -h "$target/niivue.umd.js" | cut -f1))"
