#!/usr/bin/env bash
# Formats every C++ / CUDA source of the repository with .clang-format
# (third_party/ excluded). --check changes nothing: it lists the files that
# differ and exits 1 when there are any (the test command runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.cpp' '*.cc' '*.h' '*.cu' '*.cuh' | grep -v '^third_party/')
if [[ "${1:-}" == "--check" ]]; then
  bad=()
  for f in "${files[@]}"; do
    clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
  done
  if ((${#bad[@]})); then
    echo "format: ${#bad[@]} file(s) differ from .clang-format (run tools/format.sh): ${bad[*]}" >&2
    exit 1
  fi
  echo "format: ${#files[@]} files formatted"
else
  clang-format -i "${files[@]}"
fi
