// Helpers for tests/gpu: skip without a device, typed device buffers filled from fp32 vectors.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "worker/model/dtype.h"

namespace glm::testing {

// Empty when a CUDA device is usable, otherwise why not.
inline std::string NoCudaDeviceReason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(err);
  }
  if (n == 0) return "cudaGetDeviceCount found 0 devices";
  return "";
}

#define GLM_REQUIRE_CUDA_DEVICE()                                            \
  do {                                                                       \
    const std::string glm_why_ = ::glm::testing::NoCudaDeviceReason();       \
    if (!glm_why_.empty()) GTEST_SKIP() << "no CUDA device: " << glm_why_;   \
  } while (0)

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

// Every got[i] finite and |got - want| <= tol * (|want| + floor): one rounding step of the type,
// or accumulation order. Names the first five misses.
inline void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, float tol,
                 float floor, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool ok = std::isfinite(got[i]) && std::fabs(got[i] - want[i]) <= tol * (std::fabs(want[i]) + floor);
    if (!ok && ++bad <= 5) ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i];
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " elements differ";
}

// fp32 -> stored type -> fp32 (what a buffer of that type holds).
inline float RoundThrough(DType dt, float x) {
  switch (dt) {
    case DType::kF32: return x;
    case DType::kBF16: return Bf16ToFp32(Fp32ToBf16(x));
    case DType::kF16: return Fp16ToFp32(Fp32ToFp16(x));
  }
  return x;
}

// A device buffer of `n` elements of `dt`.
class TypedBuffer {
 public:
  TypedBuffer(DType dt, int64_t n) : dt_(dt), n_(n) {
    if (cudaMalloc(&ptr_, Bytes()) != cudaSuccess) ptr_ = nullptr;
  }
  ~TypedBuffer() { if (ptr_) cudaFree(ptr_); }
  TypedBuffer(const TypedBuffer&) = delete;
  TypedBuffer& operator=(const TypedBuffer&) = delete;
  size_t Bytes() const { return static_cast<size_t>(n_) * DTypeSize(dt_); }
  void* get() const { return ptr_; }
  template <typename T> T* as() const { return static_cast<T*>(ptr_); }

  // Uploads fp32 values (rounded to the type); returns the rounded values.
  std::vector<float> Upload(const std::vector<float>& v) {
    std::vector<uint8_t> raw(Bytes());
    std::vector<float> rounded(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      rounded[i] = RoundThrough(dt_, v[i]);
      if (dt_ == DType::kF32) std::memcpy(&raw[i * 4], &v[i], 4);
      if (dt_ == DType::kBF16) { uint16_t h = Fp32ToBf16(v[i]); std::memcpy(&raw[i * 2], &h, 2); }
      if (dt_ == DType::kF16) { uint16_t h = Fp32ToFp16(v[i]); std::memcpy(&raw[i * 2], &h, 2); }
    }
    cudaMemcpy(ptr_, raw.data(), std::min(raw.size(), v.size() * DTypeSize(dt_)), cudaMemcpyHostToDevice);
    return rounded;
  }
  // Fills every byte with 0xff: NaN in every float type (a poisoned output).
  void Poison() { cudaMemset(ptr_, 0xff, Bytes()); }
  std::vector<float> Download() const {
    std::vector<uint8_t> raw(Bytes());
    cudaDeviceSynchronize();
    cudaMemcpy(raw.data(), ptr_, raw.size(), cudaMemcpyDeviceToHost);
    std::vector<float> out(n_);
    for (int64_t i = 0; i < n_; ++i) {
      if (dt_ == DType::kF32) std::memcpy(&out[i], &raw[i * 4], 4);
      if (dt_ == DType::kBF16) { uint16_t h; std::memcpy(&h, &raw[i * 2], 2); out[i] = Bf16ToFp32(h); }
      if (dt_ == DType::kF16) { uint16_t h; std::memcpy(&h, &raw[i * 2], 2); out[i] = Fp16ToFp32(h); }
    }
    return out;
  }

 private:
  DType dt_;
  int64_t n_;
  void* ptr_ = nullptr;
};

inline void UploadInts(void** dev, const std::vector<int32_t>& v) {
  cudaMalloc(dev, std::max<size_t>(v.size(), 1) * 4);
  cudaMemcpy(*dev, v.data(), v.size() * 4, cudaMemcpyHostToDevice);
}

// The rotary inverse frequencies 1 / 10000^(2i / rot) of a rot-wide rotary, i < rot / 2, as a
// device fp32 array (the kernels' inv_freq argument; cudaFree it); returns the host copy.
inline std::vector<float> UploadInvFreq(void** dev, int rot) {
  std::vector<float> inv(rot / 2);
  for (int i = 0; i < rot / 2; ++i) inv[i] = 1.0f / std::pow(10000.0f, float(2 * i) / float(rot));
  cudaMalloc(dev, std::max<size_t>(inv.size(), 1) * 4);
  cudaMemcpy(*dev, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice);
  return inv;
}

// Cheap deterministic uniform values in [lo, hi).
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float Uniform(float lo, float hi) { return lo + (hi - lo) * static_cast<float>((Next() >> 40) * (1.0 / 16777216.0)); }
  std::vector<float> Vector(int64_t n, float lo, float hi) {
    std::vector<float> v(n);
    for (auto& x : v) x = Uniform(lo, hi);
    return v;
  }

 private:
  uint64_t s_;
};

}  // namespace glm::testing
