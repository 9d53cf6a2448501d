#include "worker/server/proto_convert.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace glm {
namespace {

TEST(ProtoConvert, PrecisionRoundTripsAndUnspecifiedIsAuto) {
  for (Precision p : {Precision::kFp32, Precision::kBf16, Precision::kFp16, Precision::kFp16Safe}) {
    EXPECT_EQ(PrecisionFromProto(PrecisionToProto(p)), p);
  }
  EXPECT_FALSE(PrecisionFromProto(glm::v1::PRECISION_UNSPECIFIED).has_value());
  EXPECT_EQ(PrecisionLabel(glm::v1::PRECISION_UNSPECIFIED), "auto");
  EXPECT_EQ(PrecisionLabel(glm::v1::PRECISION_FP16_SAFE), "fp16-safe");
  glm::v1::Precision parsed;
  EXPECT_TRUE(ParsePrecisionLabel("BF16", &parsed));
  EXPECT_EQ(parsed, glm::v1::PRECISION_BF16);
  EXPECT_FALSE(ParsePrecisionLabel("int4", &parsed));
}

TEST(ProtoConvert, ComputeCapabilityLabelIsMajorDotMinorOrCpu) {
  glm::v1::Capability capability;
  EXPECT_EQ(ComputeCapabilityLabel(capability), "cpu");   // no device
  glm::v1::Device* device = capability.add_devices();
  device->set_kind(glm::v1::DEVICE_KIND_CPU);
  EXPECT_EQ(ComputeCapabilityLabel(capability), "cpu");
  device->set_kind(glm::v1::DEVICE_KIND_CUDA);
  device->set_compute_capability_major(9);
  EXPECT_EQ(ComputeCapabilityLabel(capability), "9.0");
  device->set_compute_capability_major(7);
  device->set_simulated("v100");
  EXPECT_EQ(ComputeCapabilityLabel(capability), "7.0");
  device->set_compute_capability_major(8);
  device->set_compute_capability_minor(6);
  EXPECT_EQ(ComputeCapabilityLabel(capability), "8.6");
}

TEST(ProtoConvert, SamplingDefaultsWhenFieldsAreUnset) {
  auto sampling = SamplingFromProto(glm::v1::SamplingParams());
  ASSERT_TRUE(sampling.ok());
  EXPECT_EQ(sampling->temperature, 1.0f);
  EXPECT_EQ(sampling->top_p, 1.0f);
  EXPECT_EQ(sampling->top_k, 0);
}

TEST(ProtoConvert, BadSamplingValuesNameTheFieldAndRange) {
  struct Case {
    std::function<void(glm::v1::SamplingParams*)> set;
    std::string field;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<Case> cases = {
      {[](auto* s) { s->set_temperature(-1); }, "temperature"},
      {[&](auto* s) { s->set_temperature(nan); }, "temperature"},
      {[](auto* s) { s->set_top_p(0); }, "top_p"},
      {[](auto* s) { s->set_top_p(1.5f); }, "top_p"},
      {[](auto* s) { s->set_top_k(-3); }, "top_k"},
      {[](auto* s) { s->set_repetition_penalty(0); }, "repetition_penalty"},
      {[](auto* s) { s->set_repetition_penalty(INFINITY); }, "repetition_penalty"},
  };
  for (const Case& c : cases) {
    glm::v1::SamplingParams params;
    c.set(&params);
    auto result = SamplingFromProto(params);
    ASSERT_FALSE(result.ok()) << c.field;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(result.status().message().find(c.field), std::string::npos) << result.status();
  }
}

TEST(ProtoConvert, MaxTokensAndStopsAreBounded) {
  RequestLimits limits;
  limits.max_tokens_limit = 100;
  EXPECT_TRUE(ValidateMaxTokens(0, limits).ok());
  EXPECT_TRUE(ValidateMaxTokens(100, limits).ok());
  EXPECT_FALSE(ValidateMaxTokens(101, limits).ok());
  EXPECT_FALSE(ValidateMaxTokens(-1, limits).ok());
  google::protobuf::RepeatedPtrField<std::string> stops;
  *stops.Add() = "\n\n";
  EXPECT_TRUE(ValidateStops(stops, limits).ok());
  *stops.Add() = "";
  EXPECT_FALSE(ValidateStops(stops, limits).ok());
}

TEST(ProtoConvert, LogprobsAreBoundedWithAMessageGivingTheRange) {
  EXPECT_TRUE(ValidateLogprobs(0).ok());
  EXPECT_TRUE(ValidateLogprobs(kMaxLogprobs).ok());
  for (int32_t bad : {-1, kMaxLogprobs + 1}) {
    const absl::Status s = ValidateLogprobs(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("use 0 (none) to 20"), std::string::npos) << s;
  }
}

}  // namespace
}  // namespace glm
