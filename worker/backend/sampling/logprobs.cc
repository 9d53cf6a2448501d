#include "worker/backend/sampling/logprobs.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace glm {

void LogSoftmaxTop(std::span<const float> row, int32_t token, int32_t n, RowLogprobs* out) {
  float max_logit = -std::numeric_limits<float>::infinity();
  for (float v : row) max_logit = std::max(max_logit, v);
  double sum = 0.0;
  for (float v : row) sum += std::exp(static_cast<double>(v) - max_logit);
  const double lse = max_logit + std::log(sum);
  out->token_logprob = static_cast<float>(row[static_cast<size_t>(token)] - lse);
  // Selection with a sorted window of n: a candidate enters only if it beats the window's last.
  n = std::min<int32_t>(n, static_cast<int32_t>(row.size()));
  std::vector<int32_t> best;
  best.reserve(static_cast<size_t>(n) + 1);
  auto better = [&](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); };
  for (int32_t v = 0; v < static_cast<int32_t>(row.size()); ++v) {
    if (static_cast<int32_t>(best.size()) == n && !better(v, best.back())) continue;
    best.insert(std::upper_bound(best.begin(), best.end(), v, better), v);
    if (static_cast<int32_t>(best.size()) > n) best.pop_back();
  }
  out->top.clear();
  for (int32_t v : best) out->top.push_back({v, static_cast<float>(row[static_cast<size_t>(v)] - lse)});
}

}  // namespace glm
