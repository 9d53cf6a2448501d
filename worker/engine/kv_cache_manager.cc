#include "worker/engine/kv_cache_manager.h"

#include <algorithm>
#include <random>

#include "services/core/logging.h"

namespace glm {
namespace {

uint64_t Mix(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

uint64_t RandomSeed() {
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device();
}

}  // namespace

KvCacheManager::KvCacheManager(int32_t num_blocks, int32_t block_size, bool prefix_caching)
    : block_size_(block_size),
      prefix_caching_(prefix_caching),
      ref_(static_cast<size_t>(std::max(num_blocks, 0)), 0),
      prev_(ref_.size(), kNone),
      next_(ref_.size(), kNone),
      seed_(prefix_caching ? RandomSeed() : 0) {
  GLM_CHECK(num_blocks >= 0 && block_size > 0) << num_blocks << " blocks of " << block_size;
  // Handed out from the front: block 0 first.
  for (int32_t block = 0; block < num_blocks; ++block) PushFree(block, /*front=*/false);
  if (prefix_caching_) {
    hash_.assign(ref_.size(), 0);
    cached_.assign(ref_.size(), false);
    parent_.assign(ref_.size(), kBroken);
    epoch_.assign(ref_.size(), 0);
    parent_epoch_.assign(ref_.size(), 0);
    tokens_.assign(ref_.size() * static_cast<size_t>(block_size_), 0);
  }
}

double KvCacheManager::Usage() const {
  if (ref_.empty()) return 0.0;
  return 1.0 - static_cast<double>(num_free_) / static_cast<double>(ref_.size());
}

int32_t KvCacheManager::BlocksForTokens(int64_t num_tokens) const {
  return static_cast<int32_t>((num_tokens + block_size_ - 1) / block_size_);
}

int32_t KvCacheManager::BlocksMissing(const std::vector<int32_t>& block_table,
                                      int64_t num_tokens) const {
  int32_t missing = BlocksForTokens(num_tokens) - static_cast<int32_t>(block_table.size());
  return missing > 0 ? missing : 0;
}

void KvCacheManager::PushFree(int32_t block, bool front) {
  if (front) {
    prev_[block] = kNone;
    next_[block] = head_;
    if (head_ != kNone) prev_[head_] = block;
    head_ = block;
    if (tail_ == kNone) tail_ = block;
  } else {
    next_[block] = kNone;
    prev_[block] = tail_;
    if (tail_ != kNone) next_[tail_] = block;
    tail_ = block;
    if (head_ == kNone) head_ = block;
  }
  num_free_++;
}

void KvCacheManager::Unlink(int32_t block) {
  const int32_t before = prev_[block], after = next_[block];
  (before != kNone ? next_[before] : head_) = after;
  (after != kNone ? prev_[after] : tail_) = before;
  prev_[block] = next_[block] = kNone;
  num_free_--;
}

int32_t KvCacheManager::PopFree() {
  const int32_t block = head_;
  GLM_CHECK(block != kNone) << "no free KV block";
  Unlink(block);
  if (prefix_caching_ && cached_[block]) Uncache(block);  // its memory gets new K/V now
  return block;
}

void KvCacheManager::Uncache(int32_t block) {
  if (!cached_[block]) return;
  auto it = by_hash_.find(hash_[block]);
  if (it != by_hash_.end() && it->second == block) by_hash_.erase(it);
  cached_[block] = false;
  epoch_[block]++;  // blocks registered after this one no longer verify
}

bool KvCacheManager::Allocate(int64_t num_tokens, std::vector<int32_t>* block_table) {
  const int32_t missing = BlocksMissing(*block_table, num_tokens);
  if (missing > num_free_) return false;
  for (int32_t i = 0; i < missing; ++i) {
    const int32_t block = PopFree();
    ref_[block] = 1;
    block_table->push_back(block);
  }
  return true;
}

void KvCacheManager::Free(std::vector<int32_t>* block_table, bool keep_cached) {
  // Reverse order: never-cached blocks go to the front, so the table's first block is reused
  // first; cached ones to the back, so the table's last block is reclaimed first.
  for (auto it = block_table->rbegin(); it != block_table->rend(); ++it) {
    const int32_t block = *it;
    GLM_CHECK(block >= 0 && block < num_blocks_total()) << "block " << block << " out of range";
    GLM_CHECK(ref_[block] > 0) << "block " << block << " freed twice";
    if (prefix_caching_ && !keep_cached) Uncache(block);
    if (--ref_[block] > 0) continue;
    PushFree(block, /*front=*/!(prefix_caching_ && cached_[block]));
  }
  block_table->clear();
}

uint64_t KvCacheManager::ChainHash(uint64_t parent_hash, std::span<const int32_t> tokens) const {
  uint64_t h = Mix(parent_hash ^ seed_);
  for (int32_t token : tokens) {
    h = Mix(h ^ (static_cast<uint64_t>(static_cast<uint32_t>(token)) + 0x9e3779b97f4a7c15ull));
  }
  return h;
}

bool KvCacheManager::SameTokens(int32_t block, std::span<const int32_t> tokens) const {
  const int32_t* stored = tokens_.data() + static_cast<size_t>(block) * block_size_;
  return std::equal(tokens.begin(), tokens.end(), stored);
}

bool KvCacheManager::Verifies(int32_t block, std::span<const int32_t> tokens, int32_t parent) const {
  return cached_[block] && parent_[block] == parent && parent_epoch_[block] == EpochOf(parent) &&
         SameTokens(block, tokens);
}

int32_t KvCacheManager::Canonical(int32_t block) const {
  if (cached_[block]) return block;
  const int32_t parent = parent_[block];
  if (parent == kBroken || parent_epoch_[block] != EpochOf(parent)) return kBroken;
  auto it = by_hash_.find(hash_[block]);
  if (it == by_hash_.end()) return kBroken;
  const std::span<const int32_t> tokens(tokens_.data() + static_cast<size_t>(block) * block_size_,
                                        static_cast<size_t>(block_size_));
  return Verifies(it->second, tokens, parent) ? it->second : kBroken;
}

std::vector<int32_t> KvCacheManager::MatchPrefix(std::span<const int32_t> token_ids,
                                                 int32_t max_blocks) const {
  std::vector<int32_t> matched;
  if (!prefix_caching_) return matched;
  const int64_t full = static_cast<int64_t>(token_ids.size()) / block_size_;
  const int32_t limit = static_cast<int32_t>(std::min<int64_t>(full, std::max(max_blocks, 0)));
  uint64_t h = 0;
  int32_t parent = kNone;
  for (int32_t i = 0; i < limit; ++i) {
    const std::span<const int32_t> tokens = token_ids.subspan(static_cast<size_t>(i) * block_size_,
                                                              static_cast<size_t>(block_size_));
    h = ChainHash(h, tokens);
    auto it = by_hash_.find(h);
    if (it == by_hash_.end() || !Verifies(it->second, tokens, parent)) break;
    parent = it->second;
    matched.push_back(parent);
  }
  return matched;
}

bool KvCacheManager::AllocateWithPrefix(const std::vector<int32_t>& prefix, int64_t num_tokens,
                                        std::vector<int32_t>* block_table) {
  GLM_CHECK(block_table->empty()) << "a prefix starts an empty block table";
  GLM_CHECK(num_tokens > int64_t{static_cast<int32_t>(prefix.size())} * block_size_)
      << num_tokens << " tokens over " << prefix.size() << " cached blocks";
  // The matched blocks nobody references are free blocks now: taking them leaves fewer.
  const int32_t reclaimed = static_cast<int32_t>(
      std::count_if(prefix.begin(), prefix.end(), [&](int32_t b) { return ref_[b] == 0; }));
  const int32_t fresh = BlocksForTokens(num_tokens) - static_cast<int32_t>(prefix.size());
  if (fresh > num_free_ - reclaimed) return false;
  for (int32_t block : prefix) {
    GLM_CHECK(cached_[block]) << "block " << block << " is not cached";
    if (ref_[block]++ == 0) Unlink(block);
    block_table->push_back(block);
  }
  return Allocate(num_tokens, block_table);
}

void KvCacheManager::CacheFullBlocks(std::span<const int32_t> token_ids, int64_t num_computed,
                                     const std::vector<int32_t>& block_table, int32_t* num_hashed) {
  if (!prefix_caching_) return;
  const int64_t full = std::min<int64_t>(num_computed / block_size_,
                                         static_cast<int64_t>(block_table.size()));
  for (int32_t i = *num_hashed; i < full; ++i) {
    const int32_t block = block_table[static_cast<size_t>(i)];
    const std::span<const int32_t> tokens = token_ids.subspan(static_cast<size_t>(i) * block_size_,
                                                              static_cast<size_t>(block_size_));
    const int32_t before = i == 0 ? kNone : block_table[static_cast<size_t>(i - 1)];
    const int32_t parent = i == 0 ? kNone : Canonical(before);
    hash_[block] = ChainHash(i == 0 ? 0 : hash_[before], tokens);
    std::copy(tokens.begin(), tokens.end(), tokens_.begin() + static_cast<size_t>(block) * block_size_);
    parent_[block] = parent;
    parent_epoch_[block] = EpochOf(parent);
    if (parent != kBroken) {
      // Not inserted: a registered block holds these tokens under this prefix already (this one
      // stays private), or another block hashed the same (a collision: the first one stays).
      if (by_hash_.try_emplace(hash_[block], block).second) cached_[block] = true;
    }
  }
  *num_hashed = static_cast<int32_t>(std::max<int64_t>(full, *num_hashed));
}

}  // namespace glm
