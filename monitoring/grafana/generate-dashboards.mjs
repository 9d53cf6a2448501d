// Writes the glm-fleet Grafana dashboards (dashboards/*.json) from the panel lists below, so
// the three dashboards share one layout, one datasource variable and one set of pool/worker
// variables. Edit here, then run:
//   node monitoring/grafana/generate-dashboards.mjs && monitoring/grafana/sync-chart-dashboards.sh
// `--check DIR` writes to DIR instead (tests/monitoring compares it with dashboards/).
// Every query here is evaluated against a live demo cluster by tests/monitoring.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const outDir = process.argv[2] === "--check" ? process.argv[3] : path.join(here, "dashboards");

const DS = { type: "prometheus", uid: "${datasource}" };
const POOL = 'pool=~"$pool"';
const WORKER = 'pool=~"$pool", instance=~"$worker"';

// ---- variables ----
const datasourceVar = {
  name: "datasource", label: "Data source", type: "datasource", query: "prometheus",
  current: {}, hide: 0, refresh: 1, regex: "", options: [],
};
const queryVar = (name, label, query, extra = {}) => ({
  name, label, type: "query", datasource: DS, query: { query, refId: `${name}-var` },
  definition: query, refresh: 2, sort: 1, multi: true, includeAll: true, allValue: ".*",
  current: { selected: true, text: ["All"], value: ["$__all"] }, options: [], hide: 0, regex: "",
  ...extra,
});
const poolVar = queryVar("pool", "Pool (model/precision)", "label_values(glm_worker_info, pool)");
const workerVar = queryVar("worker", "Worker", `label_values(glm_worker_info{${POOL}}, instance)`);

// ---- panels ----
const target = (expr, legendFormat = "", extra = {}) => ({ datasource: DS, expr, legendFormat, range: true, ...extra });
const quantiles = (metric, selector, by = "") => [0.5, 0.9, 0.99].map((q) => target(
  `histogram_quantile(${q}, sum by (le${by ? ", " + by : ""}) (rate(${metric}_bucket{${selector}}[$__rate_interval])))`,
  `p${Math.round(q * 100)}${by ? ` {{${by}}}` : ""}`));

function timeseries(title, description, targets, { unit = "short", stack = false, w = 12, h = 8, min } = {}) {
  return {
    type: "timeseries", title, description, datasource: DS, targets,
    fieldConfig: {
      defaults: {
        unit, ...(min !== undefined ? { min } : {}),
        custom: { drawStyle: "line", lineWidth: 1, fillOpacity: stack ? 40 : 10, showPoints: "never",
                  stacking: { mode: stack ? "normal" : "none", group: "A" } },
      },
      overrides: [],
    },
    options: { legend: { displayMode: "table", placement: "bottom", calcs: ["lastNotNull", "max"] },
               tooltip: { mode: "multi", sort: "desc" } },
    _size: { w, h },
  };
}
function stat(title, description, expr, { unit = "short", w = 6, h = 4, thresholds } = {}) {
  return {
    type: "stat", title, description, datasource: DS, targets: [target(expr, "", { instant: true, range: false })],
    fieldConfig: {
      defaults: { unit, thresholds: thresholds ?? { mode: "absolute", steps: [{ color: "green", value: null }] } },
      overrides: [],
    },
    options: { reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false }, colorMode: "value",
               graphMode: "area", textMode: "auto", justifyMode: "auto", orientation: "auto" },
    _size: { w, h },
  };
}
function table(title, description, expr, { w = 24, h = 8, exclude = [] } = {}) {
  const excludeByName = Object.fromEntries(["Time", "Value", "__name__", ...exclude].map((k) => [k, true]));
  return {
    type: "table", title, description, datasource: DS,
    targets: [target(expr, "", { instant: true, range: false, format: "table" })],
    transformations: [{ id: "organize", options: { excludeByName, indexByName: {}, renameByName: {} } }],
    fieldConfig: { defaults: {}, overrides: [] }, options: { showHeader: true, cellHeight: "sm" },
    _size: { w, h },
  };
}
// A counter that only appears once its event happened (a retry): 0 per pool until then, so
// the panel shows a flat line instead of "No data".
const rareByPool = (metric, matcher) =>
  `sum by (pool) (rate(${metric}{${POOL}, ${matcher}}[$__rate_interval])) or ` +
  `0 * sum by (pool) (rate(glm_requests_total{${POOL}}[$__rate_interval]))`;
const row = (title) => ({ type: "row", title, collapsed: false, panels: [], _size: { w: 24, h: 1 } });
const red = (value) => ({ mode: "absolute", steps: [{ color: "green", value: null }, { color: "red", value }] });

// ---- dashboards ----
const overview = {
  uid: "glm-fleet-overview", title: "glm-fleet / Cluster overview",
  description: "Throughput, request outcomes, latency and queues of the whole glm-fleet cluster.",
  variables: [datasourceVar, poolVar],
  panels: [
    row("Now"),
    stat("Generated tokens/s", "Tokens the router streamed to clients per second, all selected pools.",
         `sum(rate(glm_generation_tokens_total{${POOL}}[$__rate_interval]))`, { unit: "short" }),
    stat("Requests/s", "Requests the router finished per second, any status.",
         `sum(rate(glm_requests_total{${POOL}}[$__rate_interval]))`, { unit: "reqps" }),
    stat("Error ratio", "Share of router requests that ended with a status other than OK.",
         `(sum(rate(glm_requests_total{${POOL}, code!="OK"}[$__rate_interval])) or vector(0)) / sum(rate(glm_requests_total{${POOL}}[$__rate_interval]))`,
         { unit: "percentunit", thresholds: red(0.01) }),
    stat("Live workers", "Worker groups the router holds as live (heartbeats arriving).",
         `sum(glm_pool_workers{${POOL}, state="live"})`, { thresholds: { mode: "absolute", steps: [{ color: "red", value: null }, { color: "green", value: 1 }] } }),
    row("Throughput"),
    timeseries("Generated tokens/s by pool", "Decode throughput: tokens the router streamed to clients per second.",
               [target(`sum by (pool) (rate(glm_generation_tokens_total{${POOL}}[$__rate_interval]))`, "{{pool}}")],
               { stack: true }),
    timeseries("Prompt tokens/s by pool", "Prefill throughput: prompt tokens of finished requests per second.",
               [target(`sum by (pool) (rate(glm_prompt_tokens_total{${POOL}}[$__rate_interval]))`, "{{pool}}")],
               { stack: true }),
    timeseries("Requests by status", "Router requests per second by pool and final gRPC status (pool \"none\": failed before placement).",
               [target(`sum by (pool, code) (rate(glm_requests_total{${POOL}}[$__rate_interval]))`, "{{pool}} {{code}}")],
               { unit: "reqps", stack: true }),
    timeseries("Worker requests by status", "Requests finished by workers per second, by gRPC status (a retried request counts on each worker it ran on).",
               [target(`sum by (pool, code) (rate(glm_worker_requests_total{${POOL}}[$__rate_interval]))`, "{{pool}} {{code}}")],
               { unit: "reqps", stack: true }),
    row("Latency"),
    timeseries("Time to first token", "From arrival at the router to the first token sent to the client; SLO: p99 under 2 s.",
               quantiles("glm_time_to_first_token_seconds", POOL), { unit: "s" }),
    timeseries("Inter-token latency", "Time between consecutive tokens sent to the client.",
               quantiles("glm_inter_token_latency_seconds", POOL), { unit: "s" }),
    timeseries("End-to-end latency", "From arrival at the router to the end of the request.",
               quantiles("glm_e2e_request_latency_seconds", POOL), { unit: "s" }),
    timeseries("Queue time", "From arrival at the router to the worker stream being opened (admission and placement).",
               quantiles("glm_queue_time_seconds", POOL), { unit: "s" }),
    row("Queues"),
    timeseries("Waiting requests by pool", "Requests waiting for admission into a worker's running batch, summed per pool.",
               [target(`sum by (pool) (glm_worker_waiting_requests{${POOL}})`, "{{pool}}")], { w: 8, min: 0 }),
    timeseries("Running requests by pool", "Requests in the workers' running batches, summed per pool.",
               [target(`sum by (pool) (glm_worker_running_requests{${POOL}})`, "{{pool}}")], { w: 8, min: 0, stack: true }),
    timeseries("Open streams by pool", "Streams the router has open to workers, per pool.",
               [target(`sum by (pool) (glm_running_requests{${POOL}})`, "{{pool}}")], { w: 8, min: 0, stack: true }),
  ],
};

const pools = {
  uid: "glm-fleet-pools", title: "glm-fleet / Pools and precision",
  description: "Capacity of each (model, precision) pool, the devices behind it, and the non-finite guard.",
  variables: [datasourceVar, poolVar],
  panels: [
    row("Capacity"),
    timeseries("Workers by state", "Worker groups the router holds per pool, by registry state.",
               [target(`sum by (pool, state) (glm_pool_workers{${POOL}})`, "{{pool}} {{state}}")],
               { stack: true, min: 0 }),
    timeseries("Worker groups per pool", "Worker groups that report themselves (glm_worker_info) per pool.",
               [target(`count by (pool) (glm_worker_info{${POOL}})`, "{{pool}}")], { min: 0 }),
    timeseries("KV cache blocks per pool", "Paged KV cache capacity per pool: used and free blocks over all its workers.",
               [target(`sum by (pool, state) (glm_worker_kv_cache_blocks{${POOL}})`, "{{pool}} {{state}}")],
               { stack: true, min: 0 }),
    timeseries("KV cache usage per pool", "Used / total KV blocks over the pool's workers.",
               [target(`sum by (pool) (glm_worker_kv_cache_blocks{${POOL}, state="used"}) / sum by (pool) (glm_worker_kv_cache_blocks{${POOL}})`, "{{pool}}")],
               { unit: "percentunit", min: 0 }),
    row("Devices"),
    table("Worker groups", "Every worker group: its device, compute capability, precision and tensor-parallel size (glm_worker_info).",
          `max by (pool, instance, worker, device, compute_capability, precision, tp_size) (glm_worker_info{${POOL}})`),
    row("Precision safety"),
    stat("Non-finite hits (range)", "Requests failed by the non-finite logits guard in the selected time range; should be 0.",
         `sum(increase(glm_worker_nonfinite_total{${POOL}}[$__range]))`, { thresholds: red(1), w: 6 }),
    timeseries("Non-finite hits by pool", "Requests the guard failed per second, by pool: a pool running a precision its model overflows in.",
               [target(`sum by (pool) (rate(glm_worker_nonfinite_total{${POOL}}[$__rate_interval]))`, "{{pool}}")],
               { w: 18, min: 0 }),
    timeseries("Retries", "Requests the router resent to another worker before any token was sent (worker error, non-finite guard), by pool.",
               [target(rareByPool("glm_retries_total", 'reason="retry"'), "{{pool}}")], { min: 0 }),
    timeseries("Migrations", "Streams the router moved to another worker group mid-generation (worker died or stream broke), by pool.",
               [target(rareByPool("glm_retries_total", 'reason="migration"'), "{{pool}}")], { min: 0 }),
    timeseries("Preemptions by pool", "Requests preempted for KV blocks (recomputed later) per second.",
               [target(`sum by (pool) (rate(glm_worker_preemptions_total{${POOL}}[$__rate_interval]))`, "{{pool}}")],
               { min: 0, w: 24 }),
  ],
};

const workers = {
  uid: "glm-fleet-workers", title: "glm-fleet / Workers",
  description: "One worker group at a time: GPU memory, KV cache, batch and engine progress.",
  variables: [datasourceVar, poolVar, workerVar],
  panels: [
    row("Memory"),
    timeseries("GPU memory by kind", "Weights, KV cache, activations and free GPU memory of each worker (stacked: the total is the GPU).",
               [target(`sum by (instance, kind) (glm_worker_gpu_memory_bytes{${WORKER}})`, "{{instance}} {{kind}}")],
               { unit: "bytes", stack: true }),
    timeseries("KV cache usage", "Used / total KV blocks per worker; above 95% requests wait and get preempted.",
               [target(`glm_worker_kv_cache_usage_ratio{${WORKER}}`, "{{instance}}")],
               { unit: "percentunit", min: 0 }),
    timeseries("KV cache blocks", "Used and free KV blocks per worker.",
               [target(`sum by (instance, state) (glm_worker_kv_cache_blocks{${WORKER}})`, "{{instance}} {{state}}")],
               { stack: true, min: 0 }),
    timeseries("Prefix cache hit rate", "Share of the prompt tokens looked up at admission that the worker's prefix cache held (not computed): shared system prompts and earlier turns; 0 with --enable_prefix_caching=false.",
               [target(`sum by (instance) (rate(glm_worker_prefix_cache_hit_tokens_total{${WORKER}}[$__rate_interval])) / sum by (instance) (rate(glm_worker_prefix_cache_queried_tokens_total{${WORKER}}[$__rate_interval]))`, "{{instance}}")],
               { unit: "percentunit", min: 0 }),
    timeseries("Prefix cache blocks", "KV blocks a prefix lookup can find, in use or free (free ones are reclaimed least recently used first).",
               [target(`glm_worker_prefix_cache_blocks{${WORKER}}`, "{{instance}}")], { min: 0 }),
    row("Batch"),
    timeseries("Batch size", "Sequences in each worker's last engine step.",
               [target(`glm_worker_batch_size{${WORKER}}`, "{{instance}}")], { min: 0 }),
    timeseries("Batch size distribution", "p50/p90/p99 of sequences per engine step.",
               quantiles("glm_worker_step_batch_size", WORKER), { min: 0 }),
    timeseries("Running and waiting", "Requests in the running batch and waiting for admission, per worker.",
               [target(`glm_worker_running_requests{${WORKER}}`, "{{instance}} running"),
                target(`glm_worker_waiting_requests{${WORKER}}`, "{{instance}} waiting")], { min: 0 }),
    timeseries("Engine steps/s", "Forward passes per second; flat while requests run means a stalled worker.",
               [target(`rate(glm_worker_steps{${WORKER}}[$__rate_interval])`, "{{instance}}")], { min: 0 }),
    row("Throughput"),
    timeseries("Generated tokens/s", "Tokens each worker streamed per second.",
               [target(`rate(glm_worker_generation_tokens_total{${WORKER}}[$__rate_interval])`, "{{instance}}")], { min: 0, w: 8 }),
    timeseries("Time to first token p99", "From arrival at the worker to its first token, per worker.",
               quantiles("glm_worker_time_to_first_token_seconds", WORKER, "instance").slice(2), { unit: "s", w: 8 }),
    timeseries("Worker queue time p99", "From arrival at the worker to admission into its running batch, per worker.",
               quantiles("glm_worker_queue_time_seconds", WORKER, "instance").slice(2), { unit: "s", w: 8 }),
  ],
};

// ---- layout and write ----
function build(d) {
  let x = 0, y = 0, rowH = 0, id = 1;
  const panels = d.panels.map((p) => {
    const { w, h } = p._size;
    if (x + w > 24) { x = 0; y += rowH; rowH = 0; }
    const out = { id: id++, ...p, gridPos: { h, w, x, y } };
    delete out._size;
    if (out.targets) out.targets = out.targets.map((t, i) => ({ ...t, refId: String.fromCharCode(65 + i) }));
    x += w; rowH = Math.max(rowH, h);
    if (p.type === "row") { x = 0; y += h; rowH = 0; }
    return out;
  });
  return {
    uid: d.uid, title: d.title, description: d.description, tags: ["glm-fleet"],
    editable: true, graphTooltip: 1, schemaVersion: 39, version: 1, refresh: "30s",
    time: { from: "now-1h", to: "now" }, timepicker: {}, timezone: "browser", fiscalYearStartMonth: 0,
    annotations: { list: [{ builtIn: 1, datasource: { type: "grafana", uid: "-- Grafana --" }, enable: true,
                            hide: true, iconColor: "rgba(0, 211, 255, 1)", name: "Annotations & Alerts",
                            type: "dashboard" }] },
    links: [{ title: "glm-fleet", type: "dashboards", tags: ["glm-fleet"], asDropdown: true, includeVars: true, keepTime: true }],
    templating: { list: d.variables },
    panels,
  };
}

fs.mkdirSync(outDir, { recursive: true });
for (const [file, d] of [["glm-fleet-overview.json", overview], ["glm-fleet-pools.json", pools],
                         ["glm-fleet-workers.json", workers]]) {
  fs.writeFileSync(path.join(outDir, file), JSON.stringify(build(d), null, 2) + "\n");
}
console.log(`generate-dashboards: wrote 3 dashboards to ${outDir}`);
