#!/usr/bin/env bash
# The README's first command: a glm-fleet cluster on this machine, end to end.
#   installs dependencies (scripts/install-deps.sh), builds into build/ (-j2), makes a demo
#   checkpoint with glm-mkmodel, starts one glm-router and two CPU glm-workers on loopback,
#   streams a generation and a chat turn through glmctl, two requests that share a long system
#   prompt (the second is served from the worker's prefix cache), shows `glmctl workers` and a
#   few metric lines, then shuts everything down with SIGTERM.
# Every wait is bounded; on any failure the cluster is stopped and the logs' tails printed.
#   GLM_JOBS=N           build jobs (default 2)
#   GLM_BUILD_DIR=DIR    build folder (default build)
#   GLM_DEMO_MODEL=DIR   serve this checkpoint instead of a generated one (e.g. a real GLM-4)
#   GLM_SKIP_DEPS=1      skip install-deps.sh
#   GLM_METRICS_PORT_BASE=N  router /metrics on N, workers on N+1, N+2 (default 9400, as
#                        monitoring/prometheus/prometheus.yml scrapes)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
JOBS=${GLM_JOBS:-2}
BUILD=${GLM_BUILD_DIR:-build}
WORK=$(mktemp -d /tmp/glm-demo-XXXXXX)
ROUTER_PORT=${GLM_ROUTER_PORT:-50051}
METRICS_PORT_BASE=${GLM_METRICS_PORT_BASE:-9400}
PIDS=()

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  local code=$?
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$code" != 0 ]; then
    echo "demo failed (exit $code); last log lines:" >&2
    for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
  fi
  exit "$code"
}
trap cleanup EXIT

# wait_ready FILE PREFIX SECONDS: waits for the READY line a binary prints; echoes it.
wait_ready() {
  local file=$1 prefix=$2 seconds=$3
  for _ in $(seq 1 $((seconds * 10))); do
    if grep -q "^$prefix" "$file" 2>/dev/null; then grep "^$prefix" "$file" | head -n1; return 0; fi
    sleep 0.1
  done
  echo "timed out after ${seconds}s waiting for $prefix in $file" >&2
  return 1
}
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }

if [ "${GLM_SKIP_DEPS:-0}" != "1" ]; then
  say "installing dependencies"
  GLM_DEPS_MINIMAL=1 bash scripts/install-deps.sh
fi

say "building (-j$JOBS into $BUILD/)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGLM_WITH_GRPC=ON >"$WORK/cmake.log"
cmake --build "$BUILD" -j"$JOBS" --target glm-router glm-worker glmctl glm-mkmodel

MODEL=${GLM_DEMO_MODEL:-}
if [ -z "$MODEL" ]; then
  say "making a demo checkpoint (random weights, real GLM-4 layout)"
  MODEL="$WORK/demo"
  "$BUILD/tools/glm-mkmodel/glm-mkmodel" --out "$MODEL" --preset demo --seed 1
fi
NAME=$(basename "$MODEL")

say "starting glm-router on 127.0.0.1:$ROUTER_PORT and two CPU workers"
"$BUILD/router/server/glm-router" --host 127.0.0.1 --port "$ROUTER_PORT" \
  --metrics-port "$METRICS_PORT_BASE" --tokenizer "$NAME=$MODEL" >"$WORK/router.out" 2>"$WORK/router.log" &
PIDS+=($!)
ready=$(wait_ready "$WORK/router.out" GLM_ROUTER_READY 30)
ROUTER_METRICS=$(field metrics_port "$ready")
ROUTER="127.0.0.1:$ROUTER_PORT"
echo "router ready: $ready"

WORKER_METRICS=()
for i in 0 1; do
  "$BUILD/worker/server/glm-worker" --model "$MODEL" --model-name "$NAME" --host 127.0.0.1 \
    --port 0 --metrics-port "$((METRICS_PORT_BASE + 1 + i))" --router "$ROUTER" \
    --worker-id "cpu-worker-$i" --threads 1 --precision fp32 >"$WORK/worker$i.out" 2>"$WORK/worker$i.log" &
  PIDS+=($!)
done
for i in 0 1; do
  ready=$(wait_ready "$WORK/worker$i.out" GLM_WORKER_READY 120)
  WORKER_METRICS+=("$(field metrics_port "$ready")")
  echo "worker ready: $ready"
done
for _ in $(seq 1 100); do
  live=$("$BUILD/tools/glmctl/glmctl" --router "$ROUTER" workers 2>/dev/null | grep -c " live " || true)
  [ "$live" -ge 2 ] && break
  sleep 0.1
done

say "glmctl health"
"$BUILD/tools/glmctl/glmctl" --router "$ROUTER" health

say "glmctl generate (streams as tokens arrive; random weights => random words)"
"$BUILD/tools/glmctl/glmctl" --router "$ROUTER" generate --prompt "The capital of France is" \
  --max-tokens 32 --temperature 0.8 --seed 42

say "glmctl chat (one turn from stdin)"
echo "Hello! Who are you?" | "$BUILD/tools/glmctl/glmctl" --router "$ROUTER" chat --max-tokens 24 --temperature 0

say "prefix caching: two requests with one long system prompt (the router sends both to one worker)"
SYSTEM="You are the demo assistant of glm-fleet. Answer in one short sentence, stay polite, and \
never invent facts about the cluster you run on: its router, its two CPU workers and their pools."
for question in "What is a KV cache?" "What does a router do?"; do
  "$BUILD/tools/glmctl/glmctl" --router "$ROUTER" generate --prompt "$SYSTEM Question: $question" \
    --max-tokens 8 --temperature 0 --json |
    grep -oE '"(cached_prompt_tokens|prompt_tokens|worker)":("[^"]*"|[0-9]+)' | tr '\n' ' '
  echo
done

say "glmctl workers"
"$BUILD/tools/glmctl/glmctl" --router "$ROUTER" workers

say "a few metrics (router :$ROUTER_METRICS, worker :${WORKER_METRICS[0]})"
curl -s --max-time 5 "http://127.0.0.1:$ROUTER_METRICS/metrics" |
  grep -E '^glm_(requests_total|generation_tokens_total|pool_workers|time_to_first_token_seconds_count)' || true
curl -s --max-time 5 "http://127.0.0.1:${WORKER_METRICS[0]}/metrics" |
  grep -E '^glm_worker_(running_requests|kv_cache_usage_ratio|generation_tokens_total|prefix_cache_hit_tokens_total|info)' || true

say "shutting down (SIGTERM: workers deregister and drain, router finishes open streams)"
for pid in "${PIDS[@]}"; do kill -TERM "$pid"; done
for pid in "${PIDS[@]}"; do
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then echo "process $pid did not exit in 15 s" >&2; exit 1; fi
  wait "$pid" || { echo "process $pid exited with an error" >&2; exit 1; }
done
PIDS=()
say "done: logs in $WORK"
