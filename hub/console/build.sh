#!/usr/bin/env bash
# Rebuilds dist/app.js from src/*.ts with the pinned TypeScript compiler
# (package-lock.json). The hub embeds dist/ and static/ at compile time, so
# `cargo build` never needs Node.js; commit dist/ with the sources.
# Needs node and npm (Debian: apt-get install nodejs npm).
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --silent
npx --no-install tsc -p .
