// The threaded data loader: worker threads decode and augment whole batches
// ahead of the consumer (at most `prefetch` batches ahead), batches come out in
// order, the epoch's order is a seeded shuffle, and every random choice is keyed
// by (seed, epoch, sample index): the batches do not depend on the number of
// workers or on timing, and an epoch can start at any batch (exact resume).
// Tested in tests/test_data.cpp; throughput in bench/bench_loader.cpp.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "data/augment.h"
#include "data/dataset.h"
#include "engine/tensor.h"

namespace ttq::data {

struct LoaderOptions {
  int64_t batch_size = 128;
  int workers = 2;
  int prefetch = 4;  // batches decoded ahead of the consumer (bounded queue)
  bool shuffle = true;
  bool augment = true;  // training augmentation; false: the validation transform
  bool drop_last = false;
  uint64_t seed = 0;
  // Data parallelism: batch_size is the global batch, and this loader yields
  // shard `shard_rank` of `shard_count` of each: a contiguous slice of the batch's
  // samples, slices differing in size by at most one (the first ones larger),
  // together the whole batch in its order. Every choice stays keyed by (seed,
  // epoch, sample index), so a sample looks the same on whichever process draws it.
  int shard_rank = 0;
  int shard_count = 1;
  // A last batch of fewer samples is left out of the epoch (as drop_last does with
  // batch_size): sharded training needs a sample on every process.
  int64_t min_batch = 1;
  // Page-lock batch memory (cudaHostRegister) when ttq::cuda::available(), for
  // faster host-to-device copies; silently pageable otherwise.
  bool pin_memory = true;
};

struct Batch {
  int64_t index = 0;             // position in the epoch's batch order
  Tensor images;                 // [B, C, crop, crop] F32, CPU
  Tensor labels;                 // [B] I64, CPU
  std::vector<int64_t> samples;  // dataset indices of the B samples, in order
  int64_t skipped = 0;           // samples of this batch's range that could not be loaded
  std::vector<std::string> skipped_items;
  bool pinned = false;  // images live in page-locked memory
  int64_t size() const { return static_cast<int64_t>(samples.size()); }
};

// One consumer thread calls start_epoch() and next(); the workers are internal.
class Loader {
 public:
  // Images of another size or channel count than p's are fitted with
  // fit_image() (data/augment.h). requires: options.batch_size > 0, workers >= 1,
  // prefetch >= 1.
  Loader(std::shared_ptr<const Dataset> dataset, Preprocess preprocess, LoaderOptions options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Batches in one epoch: ceil(N / B), or floor(N / B) with drop_last or when the
  // last batch is smaller than min_batch.
  int64_t batches_per_epoch() const;
  // Starts (or restarts) epoch `epoch` at batch `first_batch`; work of a
  // previous epoch still in flight is discarded.
  void start_epoch(int64_t epoch, int64_t first_batch = 0);
  // The next batch of the current epoch in order, or nullopt at the epoch's
  // end. Samples that cannot be loaded are left out of their batch (which is
  // then shorter); a batch with none left is passed over. Rethrows a worker's
  // exception.
  std::optional<Batch> next();

  int64_t epoch() const;
  int64_t position() const;          // index of the batch next() will return next
  int64_t skipped_in_epoch() const;  // samples skipped in the batches returned this epoch
  // The dataset indices of batch k of an epoch (before skipping bad files), the
  // whole batch whatever the shard.
  std::vector<int64_t> batch_samples(int64_t epoch, int64_t k) const;
  const Dataset& dataset() const { return *m_dataset; }
  const Preprocess& preprocess() const { return m_pre; }
  const LoaderOptions& options() const { return m_opt; }

 private:
  struct Plan;
  class BufferPool;
  void worker_loop();
  Batch build(const Plan& plan, int64_t k);
  // [begin, end) of this loader's shard of batch k in the epoch's order.
  std::pair<int64_t, int64_t> shard_range(int64_t k) const;
  std::shared_ptr<const Plan> make_plan(int64_t epoch) const;

  std::shared_ptr<const Dataset> m_dataset;
  Preprocess m_pre;
  LoaderOptions m_opt;
  std::unique_ptr<BufferPool> m_pool;

  mutable std::mutex m_mutex;
  std::condition_variable m_work_cv;   // workers wait for work
  std::condition_variable m_ready_cv;  // the consumer waits for its batch
  std::shared_ptr<const Plan> m_plan;
  uint64_t m_generation = 0;
  int64_t m_next_claim = 0;
  int64_t m_next_yield = 0;
  int64_t m_skipped = 0;
  std::map<int64_t, Batch> m_ready;
  std::map<int64_t, std::exception_ptr> m_errors;
  bool m_stop = false;
  std::vector<std::thread> m_threads;
};

}  // namespace ttq::data
