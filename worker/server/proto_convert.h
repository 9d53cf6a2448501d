// Conversions between glm.v1 protos and engine types, and the request checks shared by the
// router (first line of defence, before placement) and the worker (which may be called
// directly). One copy so both answer a bad request with the same words.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "glm/v1/capability.pb.h"
#include "glm/v1/generation.pb.h"
#include "worker/engine/request.h"
#include "worker/precision/precision.h"

namespace glm {

glm::v1::Precision PrecisionToProto(Precision precision);
// nullopt for PRECISION_UNSPECIFIED (= auto) and unknown values.
std::optional<Precision> PrecisionFromProto(glm::v1::Precision precision);

// Worker -> router contract for the non-finite guard: the worker ends the call with DATA_LOSS
// (the engine's message: step, precision, worker) and this trailing-metadata key set to "1";
// the router then retries once on a safer pool (docs/PRECISION.md).
inline constexpr char kNonFiniteMetadataKey[] = "glm-nonfinite";
// "fp32", "bf16", "fp16", "fp16-safe"; "auto" for UNSPECIFIED.
std::string PrecisionLabel(glm::v1::Precision precision);
// Parses the labels above (case-insensitive); false for anything else.
bool ParsePrecisionLabel(const std::string& label, glm::v1::Precision* out);

glm::v1::FinishReason FinishReasonToProto(FinishReason reason);
std::string FinishReasonLabel(glm::v1::FinishReason reason);  // "eos", "stop", ...

// The compute_capability metric label of a worker group: "<major>.<minor>" of its first device
// ("9.0" H100, "7.0" V100, also when simulated), "cpu" for a CPU device or none.
std::string ComputeCapabilityLabel(const glm::v1::Capability& capability);

// Limits a request must respect; messages name the field and the allowed range.
struct RequestLimits {
  int32_t max_tokens_limit = 4096;    // largest max_tokens accepted
  int32_t max_stop_strings = 16;
  int32_t max_stop_string_bytes = 256;
};

// INVALID_ARGUMENT naming the field when a value is out of range or not finite.
absl::StatusOr<SamplingParams> SamplingFromProto(const glm::v1::SamplingParams& sampling);
absl::Status ValidateStops(const google::protobuf::RepeatedPtrField<std::string>& stop,
                           const RequestLimits& limits);
absl::Status ValidateMaxTokens(int32_t max_tokens, const RequestLimits& limits);
// logprobs in 0..kMaxLogprobs.
absl::Status ValidateLogprobs(int32_t logprobs);

}  // namespace glm
