// Asserts what matters about a rendered glm-fleet chart, beyond schema validity:
//   - every pool's StatefulSet runs the precision its values asked for, and a V100/T4 pool
//     never runs bf16 (nor naive fp16 without --allow-unsafe-fp16);
//   - nvidia.com/gpu requests and limits equal the pool's tensor-parallel size, and match
//     the worker's --tp-size flag;
//   - router and workers carry native gRPC liveness and readiness probes (grpc.health.v1),
//     workers a startup probe too, on their gRPC container port;
//   - the registration Secret is mounted read-only and passed to the binary as a flag;
//   - each pool has a headless Service (its StatefulSet's serviceName) with a metrics port;
//   - the router Service exposes gRPC and metrics ports;
//   - ServiceMonitors exist exactly when the monitoring.coreos.com/v1 API does;
//   - the dashboards ConfigMap carries the sidecar label and every dashboard file.
//
//   node check_rendered.mjs --modules DIR --values VALUES.yaml [--values MORE.yaml]
//        --chart CHART_DIR [--expect-servicemonitor yes|no] RENDERED.yaml
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
let modules = null, chart = null, expectSm = null, rendered = null;
const valuesFiles = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--modules") modules = args[++i];
  else if (args[i] === "--values") valuesFiles.push(args[++i]);
  else if (args[i] === "--chart") chart = args[++i];
  else if (args[i] === "--expect-servicemonitor") expectSm = args[++i] === "yes";
  else rendered = args[i];
}
const YAML = await import(pathToFileURL(path.join(modules, "yaml", "dist", "index.js")).href);

const errors = [];
const check = (cond, msg) => { if (!cond) errors.push(msg); };

// Values as helm sees them: the chart's defaults, then each -f file (lists replace lists).
function mergeValues(base, over) {
  if (over === null || typeof over !== "object" || Array.isArray(over)) return over;
  const out = { ...(base ?? {}) };
  for (const [k, v] of Object.entries(over)) out[k] = mergeValues(out[k], v);
  return out;
}
let values = YAML.parse(fs.readFileSync(path.join(chart, "values.yaml"), "utf8"));
for (const f of valuesFiles) values = mergeValues(values, YAML.parse(fs.readFileSync(f, "utf8")));

const objects = YAML.parseAllDocuments(fs.readFileSync(rendered, "utf8"))
  .map((d) => d.toJS()).filter((o) => o && o.kind);
const byKind = (kind) => objects.filter((o) => o.kind === kind);
const flagValue = (argsList, flag) => {
  const hit = (argsList ?? []).find((a) => a === flag || a.startsWith(flag + "="));
  return hit === undefined ? undefined : (hit.includes("=") ? hit.slice(flag.length + 1) : true);
};

function checkGrpcProbe(container, probeName, owner) {
  const probe = container[probeName];
  check(probe, `${owner}: ${probeName} missing`);
  if (!probe) return;
  check(probe.grpc, `${owner}: ${probeName} is not a native grpc probe (grpc.health.v1)`);
  const grpcPort = (container.ports ?? []).find((p) => p.name === "grpc")?.containerPort;
  check(probe.grpc && probe.grpc.port === grpcPort,
        `${owner}: ${probeName} probes port ${probe.grpc?.port}, the gRPC port is ${grpcPort}`);
}

function checkSecretMounted(podSpec, container, owner) {
  const secretName = values.registration.existingSecret ||
    byKind("Secret").find((s) => s.metadata.name.endsWith("-registration"))?.metadata.name;
  check(secretName, `${owner}: no registration Secret rendered and no existingSecret set`);
  const vol = (podSpec.volumes ?? []).find((v) => v.secret && v.secret.secretName === secretName);
  check(vol, `${owner}: registration Secret ${secretName} is not a volume`);
  if (!vol) return;
  const mount = (container.volumeMounts ?? []).find((m) => m.name === vol.name);
  check(mount && mount.readOnly === true && mount.mountPath === values.registration.mountPath,
        `${owner}: registration Secret not mounted read-only at ${values.registration.mountPath}`);
  const tokenFile = `${values.registration.mountPath}/${values.registration.secretKey}`;
  check(flagValue(container.args, "--registration-token-file") === tokenFile,
        `${owner}: --registration-token-file=${tokenFile} not passed`);
}

// ---- router ----
const routers = byKind("Deployment").filter((d) => d.metadata.labels?.["app.kubernetes.io/component"] === "router");
check(routers.length === 1, `expected 1 router Deployment, found ${routers.length}`);
for (const d of routers) {
  const c = d.spec.template.spec.containers[0];
  checkGrpcProbe(c, "livenessProbe", "router");
  checkGrpcProbe(c, "readinessProbe", "router");
  checkSecretMounted(d.spec.template.spec, c, "router");
  const svc = byKind("Service").find((s) => s.metadata.name === d.metadata.name);
  check(svc, "router Service missing");
  const ports = new Set((svc?.spec.ports ?? []).map((p) => p.name));
  check(ports.has("grpc") && ports.has("metrics"), "router Service lacks grpc or metrics port");
}
check(byKind("PodDisruptionBudget").some((p) => p.spec.selector.matchLabels["app.kubernetes.io/component"] === "router"),
      "router PodDisruptionBudget missing");

// ---- pools ----
const sets = byKind("StatefulSet");
check(sets.length === values.pools.length, `expected ${values.pools.length} worker StatefulSets, found ${sets.length}`);
for (const pool of values.pools) {
  const owner = `pool ${pool.name}`;
  const sts = sets.find((s) => s.metadata.labels?.["glm-fleet/pool"] === pool.name);
  check(sts, `${owner}: StatefulSet missing`);
  if (!sts) continue;
  const podSpec = sts.spec.template.spec;
  const c = podSpec.containers.find((x) => x.name === "worker");
  const precision = flagValue(c.args, "--precision");
  check(precision === pool.precision, `${owner}: --precision=${precision}, values say ${pool.precision}`);
  if (pool.gpu === "v100" || pool.gpu === "t4") {
    check(precision !== "bf16", `${owner}: a ${pool.gpu} pool runs bf16 (needs sm80+)`);
  }
  if (precision === "fp16") {
    check(flagValue(c.args, "--allow-unsafe-fp16") === true, `${owner}: naive fp16 without --allow-unsafe-fp16`);
  }
  const tp = pool.tensorParallel;
  check(Number(flagValue(c.args, "--tp-size")) === tp, `${owner}: --tp-size is not ${tp}`);
  const prefixCaching = String(pool.prefixCaching ?? values.workerDefaults.prefixCaching ?? false);
  check(flagValue(c.args, "--enable-prefix-caching") === prefixCaching,
        `${owner}: --enable-prefix-caching=${flagValue(c.args, "--enable-prefix-caching")}, values say ${prefixCaching}`);
  const gpuLimit = c.resources?.limits?.["nvidia.com/gpu"];
  const gpuRequest = c.resources?.requests?.["nvidia.com/gpu"];
  if (pool.gpu === "cpu") {
    check(gpuLimit === undefined, `${owner}: a CPU pool asks for GPUs`);
  } else {
    check(Number(gpuLimit) === tp, `${owner}: nvidia.com/gpu limit ${gpuLimit} != tensorParallel ${tp}`);
    check(Number(gpuRequest) === tp, `${owner}: nvidia.com/gpu request ${gpuRequest} != tensorParallel ${tp}`);
    const selector = pool.nodeSelector ?? values.gpuNodeSelectors[pool.gpu];
    check(JSON.stringify(podSpec.nodeSelector) === JSON.stringify(selector),
          `${owner}: nodeSelector ${JSON.stringify(podSpec.nodeSelector)} != ${JSON.stringify(selector)}`);
  }
  if (pool.gpu === "v100" || pool.gpu === "t4") {
    const product = podSpec.nodeSelector?.["nvidia.com/gpu.product"] ?? "";
    check(/v100|t4/i.test(product), `${owner}: a ${pool.gpu} pool is not pinned to ${pool.gpu} nodes (${product})`);
  }
  checkGrpcProbe(c, "livenessProbe", owner);
  checkGrpcProbe(c, "readinessProbe", owner);
  checkGrpcProbe(c, "startupProbe", owner);
  checkSecretMounted(podSpec, c, owner);
  const modelVol = (podSpec.volumes ?? []).find((v) => v.name === "model");
  const modelMount = (c.volumeMounts ?? []).find((m) => m.name === "model");
  check(modelVol && modelMount?.readOnly && flagValue(c.args, "--model")?.startsWith(modelMount.mountPath),
        `${owner}: model volume not mounted read-only where --model points`);
  const headless = byKind("Service").find((s) => s.metadata.name === sts.spec.serviceName);
  check(headless && headless.spec.clusterIP === "None",
        `${owner}: serviceName ${sts.spec.serviceName} is not a headless Service`);
  check(headless && headless.spec.ports.some((p) => p.name === "metrics"), `${owner}: headless Service lacks metrics port`);
  if (tp > 1) {
    check(flagValue(c.args, "--nccl-rendezvous")?.includes(`.${sts.spec.serviceName}:`),
          `${owner}: TP ${tp} without an NCCL rendezvous through the headless Service`);
  }
  check(byKind("PodDisruptionBudget").some((p) => p.spec.selector.matchLabels["glm-fleet/pool"] === pool.name),
        `${owner}: PodDisruptionBudget missing`);
  const wantHpa = Boolean((pool.autoscaling ?? values.workerDefaults.autoscaling)?.enabled);
  const hpa = byKind("HorizontalPodAutoscaler").find((h) => h.spec.scaleTargetRef.name === sts.metadata.name);
  check(Boolean(hpa) === wantHpa, `${owner}: HPA ${hpa ? "present" : "absent"}, autoscaling.enabled=${wantHpa}`);
  if (hpa) check(sts.spec.replicas === undefined, `${owner}: HPA and a fixed replicas fight over the StatefulSet`);
}

// ---- monitoring ----
const monitors = byKind("ServiceMonitor");
if (expectSm !== null) {
  check(expectSm ? monitors.length === 2 : monitors.length === 0,
        `ServiceMonitors: ${monitors.length}, expected ${expectSm ? 2 : 0}`);
}
if (values.monitoring.grafanaDashboards.enabled) {
  const cm = byKind("ConfigMap").find((m) => m.metadata.name.endsWith("-dashboards"));
  check(cm, "dashboards ConfigMap missing");
  const label = values.monitoring.grafanaDashboards.label;
  check(cm?.metadata.labels?.[label] === String(values.monitoring.grafanaDashboards.labelValue),
        `dashboards ConfigMap lacks the sidecar label ${label}`);
  const want = fs.readdirSync(path.join(chart, "dashboards")).filter((f) => f.endsWith(".json")).sort();
  check(cm && JSON.stringify(Object.keys(cm.data).sort()) === JSON.stringify(want),
        `dashboards ConfigMap holds ${Object.keys(cm?.data ?? {})}, chart has ${want}`);
  for (const [name, text] of Object.entries(cm?.data ?? {})) {
    try { JSON.parse(text); } catch (e) { errors.push(`dashboard ${name} in the ConfigMap is not JSON: ${e.message}`); }
  }
}

if (errors.length) {
  for (const e of errors) console.error(`check_rendered: ${e}`);
  process.exit(1);
}
console.log(`check_rendered: ${objects.length} objects, ${values.pools.length} pool(s): all assertions hold`);
