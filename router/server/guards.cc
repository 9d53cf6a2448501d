#include "router/server/guards.h"

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "services/core/logging.h"

ABSL_FLAG(std::string, placement, "least-load",
          "placement inside a pool: least-load (fewest requests, then KV use) or p2c (power of "
          "two choices)");
ABSL_FLAG(int, prefix_affinity_tokens, 32,
          "prefix affinity: requests whose first N prompt tokens match prefer the same worker, "
          "where the worker's prefix cache holds their KV (shorter prompts: plain placement; "
          "0 = off)");
ABSL_FLAG(int, affinity_load_slack, 4,
          "prefix affinity yields when the preferred worker has more than this many requests "
          "above the least-loaded one");
ABSL_FLAG(int, max_streams_per_worker, 64,
          "streams this router keeps open to one worker; beyond, requests wait in the router "
          "queue (0 = no limit, no queueing)");
ABSL_FLAG(int, queue_size, 256,
          "requests that may wait per (model, precision) when every worker is at capacity; "
          "beyond: RESOURCE_EXHAUSTED with retry-after-ms");
ABSL_FLAG(int, queue_timeout_ms, 60000,
          "longest wait in the router queue (a tighter client deadline wins): RESOURCE_EXHAUSTED");
ABSL_FLAG(int, stall_timeout_ms, 20000,
          "a worker with work whose step counter and streams do not advance this long is "
          "ejected and its requests migrate (0 = off)");
ABSL_FLAG(int, eject_backoff_ms, 1000, "first ejection lasts at least this long (doubles per ejection)");
ABSL_FLAG(int, max_eject_backoff_ms, 30000, "cap of the ejection backoff");
ABSL_FLAG(std::string, api_keys_file, "",
          "file of API keys (one per line) the public endpoint requires as "
          "'authorization: Bearer <key>' (empty = open)");
ABSL_FLAG(int, max_prompt_bytes, 1 << 20, "largest prompt (or chat text) in bytes");
ABSL_FLAG(int, max_prompt_tokens, 0, "largest prompt in tokens (0 = only the model context bounds it)");
ABSL_FLAG(int, max_stop_strings, 16, "most stop strings per request");
ABSL_FLAG(int, max_stop_string_bytes, 256, "longest stop string in bytes");
ABSL_FLAG(int, max_request_bytes, 4 << 20,
          "largest request message the router accepts (gRPC max receive size): RESOURCE_EXHAUSTED beyond");

namespace glm {
namespace {

absl::Status NonNegative(const char* flag, int value) {
  if (value >= 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", value, " must be >= 0"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<RouterGuards>> RouterGuards::FromFlags(WorkerRegistry* registry) {
  auto guards = std::make_unique<RouterGuards>();
  const std::string policy = absl::GetFlag(FLAGS_placement);
  if (!ParsePlacementPolicy(policy, &guards->placer_options.policy)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--placement=", policy, " is not a policy: use least-load or p2c"));
  }
  struct Check {
    const char* name;
    int value;
  };
  for (const Check& c : {Check{"prefix-affinity-tokens", absl::GetFlag(FLAGS_prefix_affinity_tokens)},
                         Check{"affinity-load-slack", absl::GetFlag(FLAGS_affinity_load_slack)},
                         Check{"max-streams-per-worker", absl::GetFlag(FLAGS_max_streams_per_worker)},
                         Check{"queue-size", absl::GetFlag(FLAGS_queue_size)},
                         Check{"queue-timeout-ms", absl::GetFlag(FLAGS_queue_timeout_ms)},
                         Check{"stall-timeout-ms", absl::GetFlag(FLAGS_stall_timeout_ms)},
                         Check{"eject-backoff-ms", absl::GetFlag(FLAGS_eject_backoff_ms)},
                         Check{"max-eject-backoff-ms", absl::GetFlag(FLAGS_max_eject_backoff_ms)},
                         Check{"max-prompt-tokens", absl::GetFlag(FLAGS_max_prompt_tokens)},
                         Check{"max-stop-strings", absl::GetFlag(FLAGS_max_stop_strings)},
                         Check{"max-stop-string-bytes", absl::GetFlag(FLAGS_max_stop_string_bytes)}}) {
    if (absl::Status s = NonNegative(c.name, c.value); !s.ok()) return s;
  }
  if (absl::GetFlag(FLAGS_max_prompt_bytes) < 1 || absl::GetFlag(FLAGS_max_request_bytes) < 1024) {
    return absl::InvalidArgumentError(
        "--max-prompt-bytes must be >= 1 and --max-request-bytes >= 1024");
  }
  guards->placer_options.affinity_prefix_tokens = absl::GetFlag(FLAGS_prefix_affinity_tokens);
  guards->placer_options.affinity_load_slack = absl::GetFlag(FLAGS_affinity_load_slack);

  AdmissionOptions admission;
  admission.max_queue = absl::GetFlag(FLAGS_queue_size);
  admission.max_wait = absl::Milliseconds(absl::GetFlag(FLAGS_queue_timeout_ms));
  guards->admission = std::make_unique<AdmissionQueue>(admission);

  HealthOptions health;
  health.stall_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_stall_timeout_ms));
  health.eject_backoff = absl::Milliseconds(absl::GetFlag(FLAGS_eject_backoff_ms));
  health.max_eject_backoff = absl::Milliseconds(
      std::max(absl::GetFlag(FLAGS_eject_backoff_ms), absl::GetFlag(FLAGS_max_eject_backoff_ms)));
  guards->calls = std::make_unique<ActiveCalls>();
  guards->health = std::make_unique<HealthMonitor>(registry, guards->calls.get(), health);

  if (const std::string path = absl::GetFlag(FLAGS_api_keys_file); !path.empty()) {
    absl::StatusOr<ApiKeys> keys = ApiKeys::FromFile(path);
    if (!keys.ok()) return keys.status();
    GLM_LOG(INFO) << "public endpoint needs an API key (" << keys->size() << " keys loaded)";
    guards->api_keys = std::move(*keys);
  }
  guards->max_request_bytes = absl::GetFlag(FLAGS_max_request_bytes);
  return guards;
}

void RouterGuards::Configure(GenerationServiceOptions* options) const {
  options->max_prompt_bytes = absl::GetFlag(FLAGS_max_prompt_bytes);
  options->max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  options->limits.max_stop_strings = absl::GetFlag(FLAGS_max_stop_strings);
  options->limits.max_stop_string_bytes = absl::GetFlag(FLAGS_max_stop_string_bytes);
  options->max_streams_per_worker = absl::GetFlag(FLAGS_max_streams_per_worker);
}

void RouterGuards::Attach(GenerationServiceImpl* service) {
  service->SetGuards(admission.get(), health.get(), calls.get(), api_keys ? &*api_keys : nullptr);
}

}  // namespace glm
