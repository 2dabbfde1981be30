#!/usr/bin/env bash
# Rebuilds editor/dist/editor.js (CodeMirror 6 and the Rhai mode of index.js, one minified file)
# from the versions package-lock.json pins. The bundle is committed, so building the runner needs
# no Node; run this after changing index.js or the versions.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
npm run build
