// The threaded loader and its pool of batch buffers (page-locked in place with
// cuda::host_register when a CUDA device is available, since Storage cannot adopt
// pinned allocations). Tested in tests/test_data.cpp.
#include "data/loader.h"

#include <algorithm>
#include <numeric>

#include "engine/cuda/runtime.h"
#include "engine/error.h"
#include "engine/rng.h"

namespace ttq::data {

namespace {

// Page-locks [p, p + n) through the engine's runtime; false when it cannot.
bool pin_host_range(void* p, size_t n) { return cuda::host_register(p, n); }
void unpin_host_range(void* p) { cuda::host_unregister(p); }

}  // namespace

struct Loader::Plan {
  int64_t epoch = 0;
  std::vector<int64_t> order;  // dataset indices in epoch order
  int64_t num_batches = 0;
};

// Batch image buffers, reused once nothing outside the pool refers to them,
// so page-locking is paid once per buffer rather than once per batch.
class Loader::BufferPool {
 public:
  BufferPool(bool pin, size_t max_buffers) : m_pin(pin), m_max(max_buffers) {}
  ~BufferPool() {
    for (Buffer& b : m_buffers) {
      if (b.pinned) unpin_host_range(b.tensor.raw_data());
    }
  }
  Tensor acquire(const Shape& shape, bool* pinned) {
    std::lock_guard<std::mutex> lock(m_mutex);
    for (Buffer& b : m_buffers) {
      // use_count 1: only the pool holds it, and only the pool (under this lock) hands it out.
      if (b.tensor.shape() == shape && b.tensor.storage().use_count() == 1) {
        *pinned = b.pinned;
        return b.tensor;
      }
    }
    Tensor t = Tensor::empty(shape, DType::F32);
    if (m_buffers.size() >= m_max) {  // the consumer is holding on to many batches: do not pool more
      *pinned = false;
      return t;
    }
    bool p = m_pin && pin_host_range(t.raw_data(), t.nbytes());
    m_buffers.push_back({t, p});
    *pinned = p;
    return t;
  }

 private:
  struct Buffer {
    Tensor tensor;
    bool pinned;
  };
  std::mutex m_mutex;
  std::vector<Buffer> m_buffers;
  bool m_pin;
  size_t m_max;
};

Loader::Loader(std::shared_ptr<const Dataset> dataset, Preprocess preprocess, LoaderOptions options)
    : m_dataset(std::move(dataset)), m_pre(preprocess), m_opt(options) {
  TTQ_CHECK(m_dataset != nullptr) << "Loader: null dataset";
  TTQ_CHECK(m_opt.shard_count >= 1 && m_opt.shard_rank >= 0 && m_opt.shard_rank < m_opt.shard_count &&
            m_opt.min_batch >= 1)
      << "Loader: shard " << m_opt.shard_rank << " of " << m_opt.shard_count << ", min_batch "
      << m_opt.min_batch;
  TTQ_CHECK(m_opt.batch_size > 0 && m_opt.workers >= 1 && m_opt.prefetch >= 1)
      << "Loader: batch_size " << m_opt.batch_size << ", workers " << m_opt.workers << ", prefetch "
      << m_opt.prefetch;
  bool pin = m_opt.pin_memory && cuda::available();
  m_pool = std::make_unique<BufferPool>(pin, static_cast<size_t>(m_opt.prefetch + m_opt.workers + 2));
  for (int i = 0; i < m_opt.workers; ++i) m_threads.emplace_back([this] { worker_loop(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(m_mutex);
    m_stop = true;
  }
  m_work_cv.notify_all();
  for (std::thread& t : m_threads) t.join();
  m_ready.clear();
}

int64_t Loader::batches_per_epoch() const {
  const int64_t n = m_dataset->size(), b = m_opt.batch_size, rem = n % b;
  return n / b + (!m_opt.drop_last && rem > 0 && rem >= m_opt.min_batch ? 1 : 0);
}

std::pair<int64_t, int64_t> Loader::shard_range(int64_t k) const {
  const int64_t begin = k * m_opt.batch_size;
  const int64_t len = std::min<int64_t>(m_opt.batch_size, m_dataset->size() - begin);
  const int64_t q = len / m_opt.shard_count, r = len % m_opt.shard_count, s = m_opt.shard_rank;
  const int64_t first = begin + s * q + std::min(s, r);
  return {first, first + q + (s < r ? 1 : 0)};
}

std::shared_ptr<const Loader::Plan> Loader::make_plan(int64_t epoch) const {
  auto plan = std::make_shared<Plan>();
  plan->epoch = epoch;
  plan->order.resize(static_cast<size_t>(m_dataset->size()));
  std::iota(plan->order.begin(), plan->order.end(), int64_t(0));
  if (m_opt.shuffle) {
    Generator g(rng::draw64(m_opt.seed ^ 0x73687566'666c6521ull, static_cast<uint64_t>(epoch)));
    for (size_t i = plan->order.size(); i > 1; --i) std::swap(plan->order[i - 1], plan->order[g.below(i)]);
  }
  plan->num_batches = batches_per_epoch();
  return plan;
}

std::vector<int64_t> Loader::batch_samples(int64_t epoch, int64_t k) const {
  auto plan = make_plan(epoch);
  TTQ_CHECK(k >= 0 && k < plan->num_batches) << "batch_samples: batch " << k << " of " << plan->num_batches;
  auto b = plan->order.begin() + k * m_opt.batch_size;
  auto e = plan->order.begin() + std::min<int64_t>((k + 1) * m_opt.batch_size, m_dataset->size());
  return {b, e};
}

void Loader::start_epoch(int64_t epoch, int64_t first_batch) {
  auto plan = make_plan(epoch);
  TTQ_CHECK(first_batch >= 0 && first_batch <= plan->num_batches)
      << "Loader::start_epoch: batch " << first_batch << " outside [0, " << plan->num_batches << "]";
  std::map<int64_t, Batch> discarded;
  {
    std::lock_guard<std::mutex> lock(m_mutex);
    ++m_generation;
    m_plan = std::move(plan);
    m_next_claim = m_next_yield = first_batch;
    m_skipped = 0;
    discarded.swap(m_ready);
    m_errors.clear();
  }
  m_work_cv.notify_all();
}

std::optional<Batch> Loader::next() {
  std::unique_lock<std::mutex> lock(m_mutex);
  TTQ_CHECK(m_plan != nullptr) << "Loader::next: call start_epoch first";
  for (;;) {
    if (m_next_yield >= m_plan->num_batches) return std::nullopt;
    const int64_t k = m_next_yield;
    m_ready_cv.wait(lock, [&] { return m_ready.count(k) != 0 || m_errors.count(k) != 0; });
    ++m_next_yield;
    m_work_cv.notify_all();
    if (auto e = m_errors.find(k); e != m_errors.end()) {
      std::exception_ptr ex = e->second;
      m_errors.erase(e);
      std::rethrow_exception(ex);
    }
    auto it = m_ready.find(k);
    Batch b = std::move(it->second);
    m_ready.erase(it);
    m_skipped += b.skipped;
    if (b.size() == 0) continue;
    return b;
  }
}

int64_t Loader::epoch() const {
  std::lock_guard<std::mutex> lock(m_mutex);
  return m_plan ? m_plan->epoch : -1;
}

int64_t Loader::position() const {
  std::lock_guard<std::mutex> lock(m_mutex);
  return m_next_yield;
}

int64_t Loader::skipped_in_epoch() const {
  std::lock_guard<std::mutex> lock(m_mutex);
  return m_skipped;
}

void Loader::worker_loop() {
  std::unique_lock<std::mutex> lock(m_mutex);
  for (;;) {
    m_work_cv.wait(lock, [&] {
      return m_stop || (m_plan != nullptr && m_next_claim < m_plan->num_batches &&
                        m_next_claim < m_next_yield + m_opt.prefetch);
    });
    if (m_stop) return;
    const int64_t k = m_next_claim++;
    const uint64_t generation = m_generation;
    std::shared_ptr<const Plan> plan = m_plan;
    lock.unlock();
    Batch b;
    std::exception_ptr error;
    try {
      b = build(*plan, k);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    if (generation != m_generation) continue;  // the epoch was restarted meanwhile
    if (error) {
      m_errors[k] = error;
    } else {
      m_ready.emplace(k, std::move(b));
    }
    m_ready_cv.notify_all();
  }
}

Batch Loader::build(const Plan& plan, int64_t k) {
  // The largest shard of a batch of batch_size samples.
  const int64_t bs = (m_opt.batch_size + m_opt.shard_count - 1) / m_opt.shard_count;
  const auto [begin, end] = shard_range(k);
  const int64_t per_image = int64_t(m_pre.channels) * m_pre.crop * m_pre.crop;

  Batch b;
  b.index = k;
  Tensor images = m_pool->acquire({bs, m_pre.channels, m_pre.crop, m_pre.crop}, &b.pinned);
  Tensor labels = Tensor::empty({bs}, DType::I64);
  float* img_out = images.data<float>();
  int64_t* lab_out = labels.data<int64_t>();
  Image img;
  int64_t n = 0;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t idx = plan.order[static_cast<size_t>(p)];
    if (!m_dataset->load(idx, &img)) {
      ++b.skipped;
      b.skipped_items.push_back(m_dataset->item_name(idx));
      continue;
    }
    // Data kept at its own size or channels (IDX, Tiny ImageNet) is fitted here.
    if (img.channels != m_pre.channels || img.width != m_pre.image_size || img.height != m_pre.image_size)
      img = fit_image(img, m_pre.channels, m_pre.image_size);
    uint64_t key = sample_key(m_opt.seed, static_cast<uint64_t>(plan.epoch), static_cast<uint64_t>(idx));
    data::preprocess(img, m_pre, m_opt.augment, key, img_out + n * per_image);
    lab_out[n] = m_dataset->label(idx);
    b.samples.push_back(idx);
    ++n;
  }
  b.images = n == bs ? images : images.narrow(0, 0, n);
  b.labels = n == bs ? labels : labels.narrow(0, 0, n);
  return b;
}

}  // namespace ttq::data
