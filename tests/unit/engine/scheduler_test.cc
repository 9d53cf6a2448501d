#include "worker/engine/scheduler.h"

#include <algorithm>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace glm {
namespace {

// Sequences without any model: the scheduler only looks at token counts and block tables.
std::unique_ptr<Sequence> MakeSeq(int64_t id, int32_t prompt_len, int32_t priority = 0) {
  auto seq = std::make_unique<Sequence>();
  seq->seq_id = id;
  seq->arrival_order = id;
  seq->request.request_id = absl::StrCat("r", id);
  seq->request.priority = priority;
  seq->token_ids.assign(static_cast<size_t>(prompt_len), 7);
  seq->num_prompt_tokens = prompt_len;
  return seq;
}

// What the engine does after a forward pass: mark computed, and append a sampled token to
// every sequence that finished its prefill.
void CompleteStep(Scheduler& scheduler, const SchedulerOutput& out) {
  scheduler.OnStepDone(out);
  for (const ScheduledSequence& s : out.scheduled) {
    if (s.seq->num_computed_tokens == s.seq->num_tokens()) s.seq->token_ids.push_back(9);
  }
}

void AddAll(Scheduler& scheduler, std::initializer_list<Sequence*> seqs) {
  for (Sequence* seq : seqs) scheduler.AddWaiting(seq);
}

int32_t TokensOf(const SchedulerOutput& out, const Sequence* seq) {
  for (const ScheduledSequence& s : out.scheduled) if (s.seq == seq) return s.num_new_tokens;
  return 0;
}

TEST(Scheduler, LongPromptIsChunkedUnderTheTokenBudget) {
  KvCacheManager kv(64, 4);
  Scheduler scheduler({/*max_num_seqs=*/8, /*max_num_batched_tokens=*/10}, &kv);
  auto seq = MakeSeq(0, 25);
  scheduler.AddWaiting(seq.get());
  std::vector<int32_t> chunks;
  while (seq->num_computed_tokens < 25) {
    SchedulerOutput out = scheduler.Schedule();
    ASSERT_EQ(out.scheduled.size(), 1u);
    chunks.push_back(out.scheduled[0].num_new_tokens);
    EXPECT_EQ(seq->block_table.size(),
              static_cast<size_t>(kv.BlocksForTokens(seq->num_computed_tokens + chunks.back())));
    CompleteStep(scheduler, out);
  }
  EXPECT_EQ(chunks, (std::vector<int32_t>{10, 10, 5}));
  EXPECT_TRUE(seq->is_decode());
}

TEST(Scheduler, DecodesComeFirstThenPrefillChunksShareTheBudget) {
  KvCacheManager kv(64, 4);
  Scheduler scheduler({8, 6}, &kv);
  auto a = MakeSeq(0, 3);
  auto b = MakeSeq(1, 3);
  AddAll(scheduler, {a.get(), b.get()});
  CompleteStep(scheduler, scheduler.Schedule());  // both prefilled (3 + 3)
  ASSERT_TRUE(a->is_decode() && b->is_decode());
  auto c = MakeSeq(2, 20);
  scheduler.AddWaiting(c.get());
  SchedulerOutput out = scheduler.Schedule();
  ASSERT_EQ(out.scheduled.size(), 3u);
  EXPECT_EQ(out.scheduled[0].seq, a.get());
  EXPECT_EQ(out.scheduled[1].seq, b.get());
  EXPECT_EQ(out.scheduled[0].num_new_tokens, 1);
  EXPECT_EQ(out.scheduled[1].num_new_tokens, 1);
  EXPECT_EQ(out.scheduled[2].seq, c.get());
  EXPECT_EQ(out.scheduled[2].num_new_tokens, 4);  // 6 - 2 decodes
  EXPECT_EQ(out.num_batched_tokens, 6);
}

TEST(Scheduler, WaitingAdmitsByPriorityThenArrivalWithinMaxNumSeqs) {
  KvCacheManager kv(64, 4);
  Scheduler scheduler({/*max_num_seqs=*/2, 100}, &kv);
  auto low = MakeSeq(0, 2, 0);
  auto high = MakeSeq(1, 2, 5);
  auto low2 = MakeSeq(2, 2, 0);
  auto high2 = MakeSeq(3, 2, 5);
  AddAll(scheduler, {low.get(), high.get(), low2.get(), high2.get()});
  SchedulerOutput out = scheduler.Schedule();
  ASSERT_EQ(out.scheduled.size(), 2u);
  EXPECT_EQ(out.scheduled[0].seq, high.get());
  EXPECT_EQ(out.scheduled[1].seq, high2.get());
  EXPECT_EQ(scheduler.waiting().front(), low.get());
  EXPECT_EQ(scheduler.num_running(), 2);
}

TEST(Scheduler, DecodeWithoutABlockPreemptsTheMostRecentlyAdmitted) {
  // 3 blocks of 2 tokens: a and b (2 prompt tokens each) hold one block each. Their decodes need
  // a second block each and only one is free: a (admitted first) gets it, b (the most recently
  // admitted) is preempted, and nothing waiting is admitted in that step.
  KvCacheManager kv(3, 2);
  Scheduler scheduler({8, 100}, &kv);
  auto a = MakeSeq(0, 2);
  auto b = MakeSeq(1, 2);
  AddAll(scheduler, {a.get(), b.get()});
  CompleteStep(scheduler, scheduler.Schedule());
  auto c = MakeSeq(2, 2);
  scheduler.AddWaiting(c.get());
  SchedulerOutput out = scheduler.Schedule();  // decodes of a, b need blocks: none for c
  EXPECT_EQ(out.num_preempted, 1);
  EXPECT_EQ(TokensOf(out, a.get()), 1);
  // b (admitted after a) was preempted to give a its block; c was not admitted this step.
  EXPECT_EQ(TokensOf(out, b.get()), 0);
  EXPECT_EQ(TokensOf(out, c.get()), 0);
  EXPECT_EQ(b->num_computed_tokens, 0);
  EXPECT_TRUE(b->block_table.empty());
  EXPECT_EQ(b->token_ids.size(), 3u);  // its generated token is kept, to be recomputed
  EXPECT_EQ(scheduler.waiting().front(), b.get());
  EXPECT_EQ(scheduler.total_preemptions(), 1);
}

SchedulerOptions PrefillFirst(int32_t max_num_seqs, int32_t budget, int32_t max_prefill_only) {
  SchedulerOptions o;
  o.max_num_seqs = max_num_seqs;
  o.max_num_batched_tokens = budget;
  o.policy = SchedulingPolicy::kPrefillFirst;
  o.max_prefill_only_steps = max_prefill_only;
  return o;
}

// The same arrivals as DecodesComeFirstThenPrefillChunksShareTheBudget, prefill-first: while c's
// prompt is fed (4 chunks of the 6-token budget), a and b wait; then all three decode together.
TEST(Scheduler, PrefillFirstPrefillsArrivalsBeforeTheDecodesResume) {
  KvCacheManager kv(64, 4);
  Scheduler scheduler(PrefillFirst(8, 6, 16), &kv);
  auto a = MakeSeq(0, 3);
  auto b = MakeSeq(1, 3);
  AddAll(scheduler, {a.get(), b.get()});
  CompleteStep(scheduler, scheduler.Schedule());  // both prefilled (3 + 3): nobody decoded yet
  ASSERT_TRUE(a->is_decode() && b->is_decode());
  auto c = MakeSeq(2, 20);
  scheduler.AddWaiting(c.get());
  std::vector<int32_t> chunks;
  while (!c->is_decode()) {
    SchedulerOutput out = scheduler.Schedule();
    ASSERT_EQ(out.scheduled.size(), 1u) << "only c's prefill while it lasts";
    ASSERT_EQ(out.scheduled[0].seq, c.get());
    chunks.push_back(out.scheduled[0].num_new_tokens);
    CompleteStep(scheduler, out);
  }
  EXPECT_EQ(chunks, (std::vector<int32_t>{6, 6, 6, 2}));
  SchedulerOutput out = scheduler.Schedule();
  EXPECT_EQ(out.scheduled.size(), 3u);
  EXPECT_EQ(TokensOf(out, a.get()), 1);
  EXPECT_EQ(TokensOf(out, b.get()), 1);
  EXPECT_EQ(TokensOf(out, c.get()), 1);
}

// The decodes wait max_prefill_only_steps steps in a row at most: a 30-token prompt fed 5 tokens
// a step would hold them for 6 steps; with a bound of 2, every third step carries the decode
// (and the rest of the budget goes to the prompt's next chunk, as in the mixed policy).
TEST(Scheduler, PrefillFirstLetsTheDecodesRunAfterTheBound) {
  KvCacheManager kv(64, 4);
  Scheduler scheduler(PrefillFirst(8, 5, 2), &kv);
  auto a = MakeSeq(0, 2);
  scheduler.AddWaiting(a.get());
  CompleteStep(scheduler, scheduler.Schedule());
  ASSERT_TRUE(a->is_decode());
  auto c = MakeSeq(1, 30);
  scheduler.AddWaiting(c.get());
  std::string pattern;  // P: prefill only, M: a's decode with c's chunk
  while (!c->is_decode()) {
    SchedulerOutput out = scheduler.Schedule();
    const int32_t a_tokens = TokensOf(out, a.get());
    pattern += a_tokens ? 'M' : 'P';
    EXPECT_EQ(TokensOf(out, c.get()), a_tokens ? std::min(4, 30 - c->num_computed_tokens)
                                               : std::min(5, 30 - c->num_computed_tokens));
    CompleteStep(scheduler, out);
    ASSERT_LT(pattern.size(), 20u);
  }
  EXPECT_EQ(pattern, "PPMPPMP");  // c: 5+5+4+5+5+4+2 = 30
}

// With nothing to prefill (the waiting head does not fit max_num_seqs), prefill-first schedules
// the decodes: a waiting request never stalls the running ones.
TEST(Scheduler, PrefillFirstDecodesWhenNothingCanBeAdmitted) {
  KvCacheManager kv(64, 4);
  Scheduler scheduler(PrefillFirst(/*max_num_seqs=*/1, 100, 16), &kv);
  auto a = MakeSeq(0, 2);
  auto b = MakeSeq(1, 2);
  AddAll(scheduler, {a.get(), b.get()});
  CompleteStep(scheduler, scheduler.Schedule());  // a admitted; b waits for a slot
  ASSERT_TRUE(a->is_decode());
  for (int step = 0; step < 3; ++step) {
    SchedulerOutput out = scheduler.Schedule();
    ASSERT_EQ(out.scheduled.size(), 1u);
    EXPECT_EQ(out.scheduled[0].seq, a.get());
    EXPECT_EQ(out.scheduled[0].num_new_tokens, 1);
    CompleteStep(scheduler, out);
  }
  EXPECT_EQ(scheduler.waiting().front(), b.get());
}

TEST(Scheduler, RemoveFreesBlocksWherever) {
  KvCacheManager kv(8, 4);
  Scheduler scheduler({1, 100}, &kv);
  auto a = MakeSeq(0, 9);
  auto b = MakeSeq(1, 3);
  AddAll(scheduler, {a.get(), b.get()});
  scheduler.Schedule();
  EXPECT_EQ(kv.num_blocks_free(), 5);
  scheduler.Remove(a.get());
  scheduler.Remove(b.get());
  EXPECT_EQ(kv.num_blocks_free(), 8);
  EXPECT_FALSE(scheduler.has_work());
}

// Prefix caching: an admission takes the cached blocks of its leading tokens without spending
// budget on them (every token here is 7: the blocks differ only by position).
TEST(Scheduler, CachedPrefixTokensCostNoBudget) {
  KvCacheManager kv(64, 4, /*prefix_caching=*/true);
  Scheduler scheduler({/*max_num_seqs=*/4, /*max_num_batched_tokens=*/5}, &kv);
  auto first = MakeSeq(0, 12);
  scheduler.AddWaiting(first.get());
  while (!first->is_decode()) CompleteStep(scheduler, scheduler.Schedule());  // 5 + 5 + 2
  scheduler.Remove(first.get());
  EXPECT_EQ(kv.num_blocks_cached(), 3);

  auto second = MakeSeq(1, 12);  // the same 12 tokens: 2 blocks found, the third computed
  scheduler.AddWaiting(second.get());
  SchedulerOutput out = scheduler.Schedule();
  ASSERT_EQ(out.scheduled.size(), 1u);
  EXPECT_EQ(second->num_computed_tokens, 8);
  EXPECT_EQ(TokensOf(out, second.get()), 4) << "4 tokens fit a budget of 5: the 8 cached cost nothing";
  CompleteStep(scheduler, out);
  EXPECT_TRUE(second->is_decode());
  EXPECT_EQ(scheduler.prefix_hit_tokens(), 8);
  EXPECT_EQ(scheduler.prefix_queried_tokens(), 24);
  EXPECT_EQ(second->num_cached_prompt_tokens, 8);
}

// A prompt whose last chunk is a single token is still a prefill, not a decode: under
// prefill-first it runs while a decoding sequence waits.
TEST(Scheduler, APromptsOneTokenLastChunkIsPrefillWork) {
  KvCacheManager kv(64, 4);
  Scheduler scheduler({/*max_num_seqs=*/4, /*max_num_batched_tokens=*/5, SchedulingPolicy::kPrefillFirst}, &kv);
  auto a = MakeSeq(0, 3);
  scheduler.AddWaiting(a.get());
  CompleteStep(scheduler, scheduler.Schedule());
  ASSERT_TRUE(a->is_decode());
  auto b = MakeSeq(1, 11);  // chunks of 5, 5, then 1
  scheduler.AddWaiting(b.get());
  for (int step = 0; step < 2; ++step) CompleteStep(scheduler, scheduler.Schedule());
  ASSERT_EQ(b->num_uncomputed(), 1);
  EXPECT_FALSE(b->is_decode()) << "its last token is a prompt token";
  SchedulerOutput out = scheduler.Schedule();
  EXPECT_EQ(TokensOf(out, b.get()), 1);
  EXPECT_EQ(TokensOf(out, a.get()), 0) << "prefill-first: the decode waits for the prefill's last token";
  CompleteStep(scheduler, out);
  EXPECT_TRUE(b->is_decode());
}

}  // namespace
}  // namespace glm
