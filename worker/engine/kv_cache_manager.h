// Paged KV block allocator: hands out fixed-size blocks (block ids, never tensors) and grows/frees
// the block table a sequence carries. It knows nothing about requests or scheduling; the backend
// owns the memory the block ids index.
//
// Prefix caching (optional, vLLM v1's automatic prefix caching in shape): a full block whose K/V
// were computed is registered under the hash of its tokens chained to its parent's, and stays
// findable after its sequence frees it, until its memory is needed again. A new (or preempted)
// sequence whose leading tokens match registered blocks takes references on them and computes
// only the rest. Blocks are reference-counted; a block nobody references is free, and free blocks
// are handed out never-cached first, then cached ones least recently freed first (a sequence's
// later blocks before its earlier ones, which more prompts share).
//
// A hash only finds a candidate: a match also needs the block's tokens equal and its parent the
// block matched one position earlier, in the same incarnation (every block has an epoch, bumped
// whenever it loses its cached identity), so a hash collision or a re-used parent can never hand
// a sequence another prefix's K/V.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace glm {

class KvCacheManager {
 public:
  KvCacheManager(int32_t num_blocks, int32_t block_size, bool prefix_caching = false);

  int32_t block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  int32_t num_blocks_total() const { return static_cast<int32_t>(ref_.size()); }
  // Blocks no sequence references (cached ones included: they are reclaimed on demand).
  int32_t num_blocks_free() const { return num_free_; }
  // Blocks a prefix lookup can find (referenced or not).
  int32_t num_blocks_cached() const { return static_cast<int32_t>(by_hash_.size()); }
  // Fraction of blocks referenced by sequences, [0, 1].
  double Usage() const;
  // Tokens the whole pool can hold.
  int64_t capacity_tokens() const { return int64_t{num_blocks_total()} * block_size_; }

  // Blocks needed to hold num_tokens tokens.
  int32_t BlocksForTokens(int64_t num_tokens) const;
  // Blocks block_table still lacks to cover num_tokens tokens (0 when it already does).
  int32_t BlocksMissing(const std::vector<int32_t>& block_table, int64_t num_tokens) const;

  // Appends blocks to block_table until it covers num_tokens tokens. All or nothing: returns
  // false and changes nothing when there are too few free blocks.
  bool Allocate(int64_t num_tokens, std::vector<int32_t>* block_table);
  // Drops one reference on every block of block_table and clears it. keep_cached = false also
  // makes its blocks unfindable (a sequence whose step failed: its K/V are not to be trusted).
  void Free(std::vector<int32_t>* block_table, bool keep_cached = true);

  // Prefix caching (empty without it): the registered blocks holding token_ids' first full
  // blocks, at most max_blocks of them, in order. Takes no references.
  std::vector<int32_t> MatchPrefix(std::span<const int32_t> token_ids, int32_t max_blocks) const;
  // block_table (empty) gets the matched blocks `prefix` (one reference each), then fresh blocks
  // up to num_tokens tokens (num_tokens > prefix.size() * block_size). All or nothing.
  bool AllocateWithPrefix(const std::vector<int32_t>& prefix, int64_t num_tokens,
                          std::vector<int32_t>* block_table);
  // Registers the full blocks of block_table that hold computed tokens (the first num_computed
  // of token_ids) and are not registered yet: blocks *num_hashed onwards; advances *num_hashed.
  // Blocks must be registered in order, each after its K/V are written. A block whose tokens a
  // registered block already holds under the same prefix stays private (one copy is findable).
  void CacheFullBlocks(std::span<const int32_t> token_ids, int64_t num_computed,
                       const std::vector<int32_t>& block_table, int32_t* num_hashed);

 private:
  static constexpr int32_t kNone = -1;    // parent_: the block starts the sequence
  static constexpr int32_t kBroken = -2;  // parent_: no registered prefix leads to the block
  void PushFree(int32_t block, bool front);
  void Unlink(int32_t block);
  int32_t PopFree();                // the next block to hand out, evicted from the cache if cached
  void Uncache(int32_t block);      // unfindable from now on; children no longer verify
  bool SameTokens(int32_t block, std::span<const int32_t> tokens) const;
  // Whether registered block `block` holds `tokens` right after `parent` (kNone: at the start).
  bool Verifies(int32_t block, std::span<const int32_t> tokens, int32_t parent) const;
  // The registered block holding what hashed block `block` holds, under the same prefix (itself
  // when registered); kBroken when there is none.
  int32_t Canonical(int32_t block) const;
  uint32_t EpochOf(int32_t parent) const { return parent >= 0 ? epoch_[parent] : 0; }
  uint64_t ChainHash(uint64_t parent_hash, std::span<const int32_t> tokens) const;

  int32_t block_size_;
  bool prefix_caching_;
  std::vector<int32_t> ref_;         // [num_blocks] sequences referencing the block
  // Free blocks (ref 0) as a doubly linked list in hand-out order: never-cached blocks at the
  // front, cached ones appended as they are freed.
  std::vector<int32_t> prev_, next_;
  int32_t head_ = kNone, tail_ = kNone, num_free_ = 0;
  // Prefix caching, per block: its content hash and tokens once full and hashed, its canonical
  // parent (the registered block before it; kNone at the start) and that parent's epoch.
  std::vector<uint64_t> hash_;
  std::vector<bool> cached_;
  std::vector<int32_t> parent_;
  std::vector<uint32_t> epoch_, parent_epoch_;
  std::vector<int32_t> tokens_;      // [num_blocks][block_size]
  absl::flat_hash_map<uint64_t, int32_t> by_hash_;  // registered blocks
  uint64_t seed_;                    // per process: hashes are not predictable from outside
};

}  // namespace glm
