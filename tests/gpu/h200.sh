#!/usr/bin/env bash
# Maintainers' driver for the GPU suite on a lent H200 (the `device` tool: one command <= 10 min, a machine idle for
# 30 s is given back). Long suites run as a background job that outlives each command; every call collects its
# logs, results and reports into $OUT.
#   bash tests/gpu/h200.sh resplit [SIZE]          here, before staging: cut .stage/p* into parts of SIZE (default 55M)
#                                                  so a part plus this repository fits one call's 64 MiB
#   bash tests/gpu/h200.sh stage K                 copy .stage/pK (bash ../shared/gpu/prepare.sh) to /tmp/stage
#   bash tests/gpu/h200.sh install                 unpack the wheels (after the last part)
#   bash tests/gpu/h200.sh start NAME PYTEST_ARGS [--- NAME2 PYTEST_ARGS2 ...]
#                                                  run pytest with the GPU environment as background job NAME (then
#                                                  NAME2, ... one after another, each with its own log and rc)
#   bash tests/gpu/h200.sh wait NAME SECONDS       wait for it (at most SECONDS), collect, print the tail
#   bash tests/gpu/h200.sh sh NAME CMD...          run CMD (e.g. python3 -m harness.cli.main gate ...) in the foreground with
#                                                  the GPU environment and HARNESS_CACHE=/tmp/jobs/cache, log NAME.log
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
jobs=/tmp/jobs
mkdir -p "$jobs"
gpu_env() {
  export PYTHONPATH="$PWD:/tmp/site_v:/tmp/site_c" HARNESS_QUANT_PYTHONPATH="$PWD:/tmp/site_q:/tmp/site_c"
  # the 72B-shape checkpoint (44.5 GB): RAM-backed /dev/shm when it has room, else the disk
  local shm; shm=$(df --output=avail -B1G /dev/shm 2>/dev/null | tail -1 | tr -d ' ')
  if [ "${shm:-0}" -ge 50 ]; then export HARNESS_SYNTH_DIR=/dev/shm/synth72b; else export HARNESS_SYNTH_DIR=/tmp/synth72b; fi
  export HARNESS_GPU_RESULTS="$jobs/gpu-results.json"
  export HARNESS_GPU_REPORTS="$jobs/reports" HARNESS_BENCH_DIR="$jobs/bench" PYTHONUNBUFFERED=1
  # hosts of several GPUs: NVLink multicast stays off (KINDS.md); the vLLM backend sets the same by default
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 VLLM_ALLREDUCE_USE_SYMM_MEM=0
}
collect() {
  [ -n "${OUT:-}" ] || return 0
  cp "$jobs"/*.log "$jobs"/gpu-results.json "$OUT"/ 2>/dev/null
  [ -d "$jobs/reports" ] && tar czf "$OUT/reports.tgz" -C "$jobs" reports 2>/dev/null
  [ -d "$jobs/benchmarks" ] && tar czf "$OUT/benchmarks.tgz" -C "$jobs" benchmarks 2>/dev/null
  return 0
}
case "${1:-}" in
  resplit)
    size=${2:-55M}; tmp=$(mktemp -d)
    cp "$(printf '%s\n' .stage/p* | sort -V | tail -1)/install.sh" "$tmp/" || exit 1
    for d in $(printf '%s\n' .stage/p* | sort -V); do cat "$d"/part.*; done | split -b "$size" -d -a 2 - "$tmp/part." || exit 1
    rm -rf .stage/p*; n=0
    for f in $(printf '%s\n' "$tmp"/part.* | sort -V); do mkdir -p ".stage/p$n"; mv "$f" ".stage/p$n/"; n=$((n + 1)); done
    mv "$tmp/install.sh" ".stage/p$((n - 1))/"; rmdir "$tmp"
    du -sh .stage/p* | sed 's/^/  /'; echo "parts: $n (p0..p$((n - 1))); the last one carries install.sh" ;;
  stage) mkdir -p /tmp/stage && cp ".stage/p$2"/* /tmp/stage/ && find /tmp/stage -maxdepth 1 -type f | wc -l ;;
  install) bash /tmp/stage/install.sh && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
             && df -h /dev/shm /tmp | tail -2 && free -g | head -2 ;;
  start)
    # one pytest run, or several one after another in the same background job, separated by ---: each has its own
    # log, exit code and summary line, so a later run cut by device time leaves the earlier ones whole
    shift
    gpu_env
    script=""
    while [ $# -gt 0 ]; do
      name=$1; shift; args=""
      while [ $# -gt 0 ] && [ "$1" != "---" ]; do args+="$(printf '%q ' "$1")"; shift; done
      [ $# -gt 0 ] && shift  # the ---
      script+="python3 -m pytest -p no:cacheprovider -v -rA --benchmark-storage=file://$jobs/benchmarks \
        --benchmark-autosave $args > $jobs/$name.log 2>&1; echo \$? > $jobs/$name.rc; "
      echo "queued $name: pytest $args"
    done
    setsid nohup bash -c "$script" < /dev/null > /dev/null 2>&1 &
    echo "started" ;;
  wait)
    name=$2; deadline=$((SECONDS + $3))
    while [ ! -f "$jobs/$name.rc" ] && [ $SECONDS -lt $deadline ]; do sleep 5; done
    collect
    grep -E "PASSED|FAILED|ERROR|SKIPPED|RESULT|passed|failed" "$jobs/$name.log" | tail -40
    tail -c 3000 "$jobs/$name.log"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader
    if [ -f "$jobs/$name.rc" ]; then echo "DONE $name rc=$(cat "$jobs/$name.rc")"; else echo "RUNNING $name"; fi ;;
  sh)
    name=$2; shift 2
    gpu_env
    export HARNESS_CACHE="${HARNESS_CACHE:-$jobs/cache}"
    ( "$@" ) > "$jobs/$name.log" 2>&1; rc=$?; echo $rc > "$jobs/$name.rc"
    collect
    tail -c 2500 "$jobs/$name.log"; echo "DONE $name rc=$rc" ;;
  *) sed -n 2,14p "$0"; exit 2 ;;
esac
