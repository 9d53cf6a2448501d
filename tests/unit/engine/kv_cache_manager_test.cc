#include "worker/engine/kv_cache_manager.h"

#include <algorithm>
#include <initializer_list>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace glm {
namespace {

TEST(KvCacheManager, AllocatesJustEnoughBlocksToCoverTokens) {
  KvCacheManager kv(/*num_blocks=*/8, /*block_size=*/4);
  EXPECT_EQ(kv.BlocksForTokens(0), 0);
  EXPECT_EQ(kv.BlocksForTokens(1), 1);
  EXPECT_EQ(kv.BlocksForTokens(4), 1);
  EXPECT_EQ(kv.BlocksForTokens(5), 2);
  std::vector<int32_t> table;
  ASSERT_TRUE(kv.Allocate(5, &table));
  EXPECT_EQ(table.size(), 2u);
  ASSERT_TRUE(kv.Allocate(8, &table));  // still covered: no new block
  EXPECT_EQ(table.size(), 2u);
  ASSERT_TRUE(kv.Allocate(9, &table));
  EXPECT_EQ(table.size(), 3u);
  EXPECT_EQ(kv.num_blocks_free(), 5);
  EXPECT_DOUBLE_EQ(kv.Usage(), 3.0 / 8.0);
  EXPECT_EQ(kv.capacity_tokens(), 32);
}

TEST(KvCacheManager, AllocationIsAllOrNothingAndBlocksAreDistinct) {
  KvCacheManager kv(4, 2);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(kv.Allocate(5, &a));   // 3 blocks
  EXPECT_FALSE(kv.Allocate(4, &b));  // needs 2, 1 free
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(kv.num_blocks_free(), 1);
  ASSERT_TRUE(kv.Allocate(2, &b));
  std::set<int32_t> all(a.begin(), a.end());
  all.insert(b.begin(), b.end());
  EXPECT_EQ(all.size(), 4u);
  for (int32_t block : all) EXPECT_TRUE(block >= 0 && block < 4);
  EXPECT_EQ(kv.num_blocks_free(), 0);
}

TEST(KvCacheManager, FreeReturnsEveryBlockAndClearsTheTable) {
  KvCacheManager kv(6, 3);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(kv.Allocate(9, &a));
  ASSERT_TRUE(kv.Allocate(7, &b));
  EXPECT_EQ(kv.num_blocks_free(), 0);
  kv.Free(&a);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(kv.num_blocks_free(), 3);
  kv.Free(&b);
  EXPECT_EQ(kv.num_blocks_free(), 6);
  EXPECT_DOUBLE_EQ(kv.Usage(), 0.0);
  // Everything is allocatable again.
  ASSERT_TRUE(kv.Allocate(18, &a));
  EXPECT_EQ(a.size(), 6u);
}

TEST(KvCacheManagerDeathTest, DoubleFreeIsAProgrammerError) {
  KvCacheManager kv(2, 2);
  std::vector<int32_t> a;
  ASSERT_TRUE(kv.Allocate(2, &a));
  std::vector<int32_t> copy = a;
  kv.Free(&a);
  EXPECT_DEATH(kv.Free(&copy), "freed twice");
}


// --- Prefix caching -------------------------------------------------------------------------

// Tokens 0..n-1 shifted by `base`: distinct contents per base.
std::vector<int32_t> Tokens(int32_t n, int32_t base = 100) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) t[static_cast<size_t>(i)] = base + i;
  return t;
}

// a, then more.
std::vector<int32_t> Followed(std::vector<int32_t> a, std::initializer_list<int32_t> more) {
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

// What a sequence does: allocate for its tokens, "compute" them all, register its full blocks.
std::vector<int32_t> Computed(KvCacheManager& kv, const std::vector<int32_t>& tokens) {
  std::vector<int32_t> table;
  EXPECT_TRUE(kv.Allocate(static_cast<int64_t>(tokens.size()), &table));
  int32_t hashed = 0;
  kv.CacheFullBlocks(tokens, static_cast<int64_t>(tokens.size()), table, &hashed);
  EXPECT_EQ(hashed, kv.prefix_caching() ? static_cast<int32_t>(tokens.size()) / kv.block_size() : 0);
  return table;
}

TEST(KvCachePrefix, FullBlocksStayFindableAfterTheirSequenceFreesThem) {
  KvCacheManager kv(8, 4, /*prefix_caching=*/true);
  const std::vector<int32_t> tokens = Tokens(10);  // blocks: 4 + 4 full, 2 partial
  std::vector<int32_t> table = Computed(kv, tokens);
  const std::vector<int32_t> owned = table;
  EXPECT_EQ(kv.num_blocks_cached(), 2);
  kv.Free(&table);
  EXPECT_EQ(kv.num_blocks_free(), 8);  // cached blocks are free blocks
  EXPECT_DOUBLE_EQ(kv.Usage(), 0.0);

  EXPECT_EQ(kv.MatchPrefix(tokens, 8), (std::vector<int32_t>{owned[0], owned[1]}));  // not the partial
  EXPECT_EQ(kv.MatchPrefix(tokens, 1), (std::vector<int32_t>{owned[0]}));
  std::vector<int32_t> longer = Tokens(20);  // same first 10 tokens
  EXPECT_EQ(kv.MatchPrefix(longer, 8).size(), 2u);
  std::vector<int32_t> second_differs = tokens;
  second_differs[5] = 7;
  EXPECT_EQ(kv.MatchPrefix(second_differs, 8), (std::vector<int32_t>{owned[0]}));
  std::vector<int32_t> first_differs = tokens;
  first_differs[0] = 7;  // every later block hashes differently through the chain
  EXPECT_TRUE(kv.MatchPrefix(first_differs, 8).empty());
  EXPECT_TRUE(kv.MatchPrefix(std::vector<int32_t>(tokens.begin() + 4, tokens.end()), 8).empty())
      << "a block matches only at the position it was computed at";

  KvCacheManager plain(8, 4);
  std::vector<int32_t> plain_table = Computed(plain, tokens);
  plain.Free(&plain_table);
  EXPECT_TRUE(plain.MatchPrefix(tokens, 8).empty());
  EXPECT_EQ(plain.num_blocks_cached(), 0);
}

TEST(KvCachePrefix, SharedBlocksAreReferenceCounted) {
  KvCacheManager kv(6, 4, true);
  const std::vector<int32_t> tokens = Tokens(9);
  std::vector<int32_t> first = Computed(kv, tokens);  // 3 blocks, 2 cached
  const std::vector<int32_t> prefix = kv.MatchPrefix(tokens, 2);
  ASSERT_EQ(prefix.size(), 2u);
  std::vector<int32_t> second;
  ASSERT_TRUE(kv.AllocateWithPrefix(prefix, 11, &second));  // 2 shared + 1 new
  ASSERT_EQ(second.size(), 3u);
  EXPECT_EQ(second[0], first[0]);
  EXPECT_EQ(second[1], first[1]);
  EXPECT_NE(second[2], first[2]);
  EXPECT_EQ(kv.num_blocks_free(), 2);  // 4 distinct blocks in use
  kv.Free(&first);
  EXPECT_EQ(kv.num_blocks_free(), 3) << "the shared blocks are still the second sequence's";
  kv.Free(&second);
  EXPECT_EQ(kv.num_blocks_free(), 6);
}

TEST(KvCachePrefix, TakingFreeCachedBlocksCountsAgainstTheFreeBlocks) {
  KvCacheManager kv(4, 2, true);
  const std::vector<int32_t> tokens = Tokens(4);
  std::vector<int32_t> table = Computed(kv, tokens);
  kv.Free(&table);  // 2 cached, all 4 free
  const std::vector<int32_t> prefix = kv.MatchPrefix(tokens, 2);
  ASSERT_EQ(prefix.size(), 2u);
  std::vector<int32_t> want;
  // 2 cached + 3 fresh = 5 blocks of 4: refused, nothing taken.
  EXPECT_FALSE(kv.AllocateWithPrefix(prefix, 10, &want));
  EXPECT_TRUE(want.empty());
  EXPECT_EQ(kv.num_blocks_free(), 4);
  EXPECT_EQ(kv.MatchPrefix(tokens, 2), prefix) << "a refused allocation evicts nothing";
  ASSERT_TRUE(kv.AllocateWithPrefix(prefix, 8, &want));  // 2 cached + 2 fresh
  EXPECT_EQ(kv.num_blocks_free(), 0);
  EXPECT_EQ(kv.MatchPrefix(tokens, 2), prefix) << "fresh blocks came from the never-cached ones";
}

TEST(KvCachePrefix, NeverCachedBlocksGoFirstThenTheLeastRecentlyFreedLastBlockFirst) {
  KvCacheManager kv(5, 2, true);
  const std::vector<int32_t> a = Tokens(4, 100), b = Tokens(4, 200);
  std::vector<int32_t> ta = Computed(kv, a);  // blocks 0, 1
  std::vector<int32_t> tb = Computed(kv, b);  // blocks 2, 3
  kv.Free(&ta);
  kv.Free(&tb);  // free order: 4 (never cached), then a's 1, 0, then b's 3, 2
  std::vector<int32_t> t;
  ASSERT_TRUE(kv.Allocate(2, &t));
  EXPECT_EQ(t, (std::vector<int32_t>{4}));
  EXPECT_EQ(kv.num_blocks_cached(), 4);
  ASSERT_TRUE(kv.Allocate(4, &t));  // evicts a's second block: a keeps its first
  EXPECT_EQ(t.back(), 1);
  EXPECT_EQ(kv.MatchPrefix(a, 2).size(), 1u);
  EXPECT_EQ(kv.MatchPrefix(b, 2).size(), 2u);
  ASSERT_TRUE(kv.Allocate(6, &t));
  EXPECT_EQ(t.back(), 0);
  EXPECT_TRUE(kv.MatchPrefix(a, 2).empty());
  EXPECT_EQ(kv.num_blocks_cached(), 2);
}

TEST(KvCachePrefix, MatchingMovesABlockToTheBackOfTheEvictionOrder) {
  KvCacheManager kv(3, 2, true);
  const std::vector<int32_t> a = Tokens(2, 100), b = Tokens(2, 200), c = Tokens(2, 300);
  std::vector<int32_t> ta = Computed(kv, a), tb = Computed(kv, b), tc = Computed(kv, c);
  kv.Free(&ta);
  kv.Free(&tb);
  kv.Free(&tc);  // eviction order: a, b, c
  std::vector<int32_t> again;
  ASSERT_TRUE(kv.AllocateWithPrefix(kv.MatchPrefix(a, 1), 3, &again));  // a reused (+ evicts b)
  EXPECT_TRUE(kv.MatchPrefix(b, 1).empty());
  kv.Free(&again);  // a is now the most recently freed: c goes before it
  std::vector<int32_t> t;
  ASSERT_TRUE(kv.Allocate(2, &t));
  ASSERT_TRUE(kv.Allocate(4, &t));
  EXPECT_TRUE(kv.MatchPrefix(c, 1).empty());
  EXPECT_EQ(kv.MatchPrefix(a, 1).size(), 1u);
}

TEST(KvCachePrefix, FailedBlocksLeaveTheCacheAndTakeTheirDescendantsWithThem) {
  KvCacheManager kv(8, 2, true);
  const std::vector<int32_t> x = Tokens(2, 100);
  const std::vector<int32_t> xz = Followed(x, {300, 301});
  std::vector<int32_t> t1 = Computed(kv, x);  // x in one block
  // A second sequence continues x with z: its z block's parent is x's block.
  std::vector<int32_t> t2;
  ASSERT_TRUE(kv.AllocateWithPrefix(kv.MatchPrefix(xz, 1), 4, &t2));
  int32_t hashed = 1;
  kv.CacheFullBlocks(xz, 4, t2, &hashed);
  EXPECT_EQ(kv.MatchPrefix(xz, 2).size(), 2u);
  // The first sequence fails: x's block must not be found again, nor z's, which was computed
  // on top of it, even once x is computed afresh into another block.
  kv.Free(&t1, /*keep_cached=*/false);
  EXPECT_TRUE(kv.MatchPrefix(xz, 2).empty());
  kv.Free(&t2);
  std::vector<int32_t> t3 = Computed(kv, x);
  EXPECT_EQ(kv.MatchPrefix(xz, 2), (std::vector<int32_t>{t3[0]}));
  kv.Free(&t3);
}

TEST(KvCachePrefix, ADuplicateStaysPrivateAndItsSuccessorsChainToTheRegisteredCopy) {
  KvCacheManager kv(8, 2, true);
  const std::vector<int32_t> x = Tokens(2, 100);
  const std::vector<int32_t> xw = Followed(x, {400, 401});
  // Two sequences compute x at the same time, each in its own block; only the first registers.
  std::vector<int32_t> t1 = Computed(kv, x);
  std::vector<int32_t> t2;
  ASSERT_TRUE(kv.Allocate(4, &t2));
  int32_t hashed = 0;
  kv.CacheFullBlocks(xw, 2, t2, &hashed);
  EXPECT_EQ(kv.num_blocks_cached(), 1);
  EXPECT_EQ(kv.MatchPrefix(x, 1), (std::vector<int32_t>{t1[0]}));
  // The second goes on to w: that block is found after the registered copy of x.
  kv.CacheFullBlocks(xw, 4, t2, &hashed);
  EXPECT_EQ(hashed, 2);
  EXPECT_EQ(kv.MatchPrefix(xw, 2), (std::vector<int32_t>{t1[0], t2[1]}));
  kv.Free(&t1);
  kv.Free(&t2);
  EXPECT_EQ(kv.MatchPrefix(xw, 2).size(), 2u);
}

TEST(KvCachePrefix, EveryAllocatedBlockIsDistinctUnderChurn) {
  // Random admissions, prefix matches and frees: no block is ever in two tables unless both
  // matched it, and the free count always equals total minus distinct blocks in use.
  KvCacheManager kv(16, 2, true);
  std::vector<std::vector<int32_t>> tables, contents;
  uint32_t state = 12345;
  auto next = [&] { state = state * 1664525u + 1013904223u; return state >> 8; };
  for (int round = 0; round < 2000; ++round) {
    if (tables.size() < 5 && next() % 3 != 0) {
      std::vector<int32_t> tokens;
      const int n = 1 + static_cast<int>(next() % 9);
      for (int i = 0; i < n; ++i) tokens.push_back(static_cast<int32_t>(next() % 2));  // many shared prefixes
      std::vector<int32_t> prefix = kv.MatchPrefix(tokens, (n - 1) / 2);
      std::vector<int32_t> table;
      if (!kv.AllocateWithPrefix(prefix, n, &table)) continue;
      int32_t hashed = static_cast<int32_t>(prefix.size());
      kv.CacheFullBlocks(tokens, n, table, &hashed);
      tables.push_back(table);
      contents.push_back(tokens);
    } else if (!tables.empty()) {
      const size_t victim = next() % tables.size();
      kv.Free(&tables[victim], next() % 5 != 0);
      tables.erase(tables.begin() + static_cast<std::ptrdiff_t>(victim));
      contents.erase(contents.begin() + static_cast<std::ptrdiff_t>(victim));
    }
    std::set<int32_t> in_use;
    for (const auto& t : tables) in_use.insert(t.begin(), t.end());
    ASSERT_EQ(kv.num_blocks_free(), 16 - static_cast<int>(in_use.size())) << "round " << round;
    // A block shared by two tables holds the same tokens at the same place in both.
    for (size_t i = 0; i < tables.size(); ++i) {
      for (size_t j = i + 1; j < tables.size(); ++j) {
        for (size_t bi = 0; bi < tables[i].size(); ++bi) {
          for (size_t bj = 0; bj < tables[j].size(); ++bj) {
            if (tables[i][bi] != tables[j][bj]) continue;
            ASSERT_EQ(bi, bj) << "round " << round;
            ASSERT_TRUE(std::equal(contents[i].begin(), contents[i].begin() + 2 * (bi + 1),
                                   contents[j].begin()))
                << "round " << round << ": block " << tables[i][bi] << " shared by different prefixes";
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace glm
