#include "worker/server/proto_convert.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace glm {

glm::v1::Precision PrecisionToProto(Precision precision) {
  switch (precision) {
    case Precision::kFp32: return glm::v1::PRECISION_FP32;
    case Precision::kBf16: return glm::v1::PRECISION_BF16;
    case Precision::kFp16: return glm::v1::PRECISION_FP16;
    case Precision::kFp16Safe: return glm::v1::PRECISION_FP16_SAFE;
  }
  return glm::v1::PRECISION_UNSPECIFIED;
}

std::optional<Precision> PrecisionFromProto(glm::v1::Precision precision) {
  switch (precision) {
    case glm::v1::PRECISION_FP32: return Precision::kFp32;
    case glm::v1::PRECISION_BF16: return Precision::kBf16;
    case glm::v1::PRECISION_FP16: return Precision::kFp16;
    case glm::v1::PRECISION_FP16_SAFE: return Precision::kFp16Safe;
    default: return std::nullopt;
  }
}

std::string PrecisionLabel(glm::v1::Precision precision) {
  std::optional<Precision> p = PrecisionFromProto(precision);
  return p ? PrecisionName(*p) : "auto";
}

bool ParsePrecisionLabel(const std::string& label, glm::v1::Precision* out) {
  std::string lower = absl::AsciiStrToLower(label);
  if (lower == "auto" || lower.empty()) {
    *out = glm::v1::PRECISION_UNSPECIFIED;
    return true;
  }
  Precision p;
  if (!ParsePrecision(lower, &p)) return false;
  *out = PrecisionToProto(p);
  return true;
}

glm::v1::FinishReason FinishReasonToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kEos: return glm::v1::FINISH_REASON_EOS;
    case FinishReason::kStopString: return glm::v1::FINISH_REASON_STOP;
    case FinishReason::kLength: return glm::v1::FINISH_REASON_LENGTH;
    case FinishReason::kCancelled: return glm::v1::FINISH_REASON_CANCELLED;
    case FinishReason::kError: return glm::v1::FINISH_REASON_ERROR;
    case FinishReason::kNone: break;
  }
  return glm::v1::FINISH_REASON_UNSPECIFIED;
}

std::string ComputeCapabilityLabel(const glm::v1::Capability& capability) {
  if (capability.devices_size() == 0) return "cpu";
  const glm::v1::Device& device = capability.devices(0);
  if (device.compute_capability_major() <= 0) return "cpu";   // CPU devices report 0
  return absl::StrCat(device.compute_capability_major(), ".", device.compute_capability_minor());
}

std::string FinishReasonLabel(glm::v1::FinishReason reason) {
  switch (reason) {
    case glm::v1::FINISH_REASON_EOS: return "eos";
    case glm::v1::FINISH_REASON_STOP: return "stop";
    case glm::v1::FINISH_REASON_LENGTH: return "length";
    case glm::v1::FINISH_REASON_CANCELLED: return "cancelled";
    case glm::v1::FINISH_REASON_ERROR: return "error";
    default: return "unspecified";
  }
}

absl::StatusOr<SamplingParams> SamplingFromProto(const glm::v1::SamplingParams& sampling) {
  SamplingParams out;
  if (sampling.has_temperature()) {
    float t = sampling.temperature();
    if (!std::isfinite(t) || t < 0.0f || t > 100.0f) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sampling.temperature is ", t, ": use a value in [0, 100] (0 = greedy)"));
    }
    out.temperature = t;
  }
  if (sampling.has_top_p()) {
    float p = sampling.top_p();
    if (!std::isfinite(p) || p <= 0.0f || p > 1.0f) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.top_p is ", p, ": use a value in (0, 1] (1 = off)"));
    }
    out.top_p = p;
  }
  if (sampling.has_top_k()) {
    if (sampling.top_k() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.top_k is ", sampling.top_k(), ": use 0 (off) or a positive count"));
    }
    out.top_k = sampling.top_k();
  }
  if (sampling.has_repetition_penalty()) {
    float r = sampling.repetition_penalty();
    if (!std::isfinite(r) || r <= 0.0f || r > 10.0f) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sampling.repetition_penalty is ", r, ": use a value in (0, 10] (1 = off)"));
    }
    out.repetition_penalty = r;
  }
  if (sampling.has_seed()) out.seed = sampling.seed();
  return out;
}

absl::Status ValidateStops(const google::protobuf::RepeatedPtrField<std::string>& stop,
                           const RequestLimits& limits) {
  if (stop.size() > limits.max_stop_strings) {
    return absl::InvalidArgumentError(absl::StrCat("stop has ", stop.size(),
                                                   " strings: send at most ",
                                                   limits.max_stop_strings));
  }
  for (const std::string& s : stop) {
    if (s.empty()) return absl::InvalidArgumentError("stop contains an empty string: remove it");
    if (static_cast<int32_t>(s.size()) > limits.max_stop_string_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("a stop string has ", s.size(),
                                                     " bytes: keep each under ",
                                                     limits.max_stop_string_bytes));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateMaxTokens(int32_t max_tokens, const RequestLimits& limits) {
  if (max_tokens < 0 || max_tokens > limits.max_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens is ", max_tokens, ": use 1..",
                                                   limits.max_tokens_limit,
                                                   " (0 = the server default)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateLogprobs(int32_t logprobs) {
  if (logprobs < 0 || logprobs > kMaxLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("logprobs is ", logprobs, ": use 0 (none) to ",
                                                   kMaxLogprobs, " (the most likely tokens a position)"));
  }
  return absl::OkStatus();
}

}  // namespace glm
