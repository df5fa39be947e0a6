#!/usr/bin/env bash
# The GPU quality gate as CI runs it: examples/ci/github-actions-gpu.yml calls this script, step by step, so a
# workstation runs exactly what the workflow runs (and the workflow is never untested prose).
#   bash scripts/ci-local.sh [gate|summary|all]       (default: all = gate, then summary)
#   gate     pytest -m gpu on the config's gate tests: JUnit XML, the report folders and the benchmarks under $CI_OUT;
#            benchmarks compared with the newest stored run in $CI_OUT/benchmarks (the main branch's, restored by CI)
#            and failing beyond $BENCH_FAIL (default mean:25%); every run is saved there for the next one
#   summary  the newest gate report (report.md) on stdout, for a job summary
# Settings (environment): HARNESS_CONFIG (configs/tiny.yaml), RECIPE (the config's recipes), BACKEND (the config's),
# MARK (gpu; empty: every gate test, e.g. the tiny default on a CPU), CI_OUT (ci-out), BENCH_FAIL (mean:25%),
# PYTHON (python3), DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
config=${HARNESS_CONFIG:-configs/tiny.yaml}
out=${CI_OUT:-ci-out}
mark=${MARK-gpu}
py=${PYTHON:-python3}
run() { if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi; }

gate() {
  mkdir -p "$out/benchmarks" "$out/reports"
  local args=(-m pytest -p no:cacheprovider --harness-config "$config" --harness-report-dir "$out/reports"
              --junitxml "$out/junit.xml" --benchmark-storage "file://$out/benchmarks" --benchmark-autosave)
  [ -n "$mark" ] && args+=(-m "$mark")
  [ -n "${RECIPE:-}" ] && args+=(--recipe "$RECIPE")
  [ -n "${BACKEND:-}" ] && args+=(--backend "$BACKEND")
  # a stored run to compare with (the main branch's): compare, and fail on a slowdown beyond BENCH_FAIL
  if compgen -G "$out/benchmarks/*/*.json" > /dev/null; then
    args+=(--benchmark-compare --benchmark-compare-fail "${BENCH_FAIL:-mean:25%}")
  fi
  run "$py" "${args[@]}"
}

summary() {
  local newest="" d
  for d in "$out"/reports/*/; do  # report folders are named by their time: the last one is the newest
    if [ -d "$d" ]; then newest=$d; fi
  done
  if [ -z "$newest" ]; then echo "no gate report under $out/reports"; return 0; fi
  run cat "${newest}report.md"
}

case "${1:-all}" in
  gate) gate ;;
  summary) summary ;;
  all) rc=0; gate || rc=$?; summary; exit $rc ;;
  *) sed -n 2,11p "$0"; exit 2 ;;
esac
