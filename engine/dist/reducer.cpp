// Bucketed gradient all-reduce (engine/dist/reducer.h). Buckets are fixed at
// construction, so every rank starts the same reductions in the same order
// whatever the order its hooks fire in: bucket k starts once its slots are all
// ready and buckets 0..k-1 have started. Tests: tests/test_dist.cpp,
// tests/dist_worker.cpp.
#include "engine/dist/reducer.h"

#include <chrono>

#include "engine/autograd.h"
#include "engine/error.h"

namespace ttq::dist {

GradReducer::GradReducer(Communicator& comm, std::vector<Tensor> params, size_t bucket_bytes) : m_comm(comm) {
  TTQ_CHECK(!params.empty()) << "GradReducer: no parameters";
  const Device dev = params[0].device();
  // Reverse order: backward finishes the last layers' gradients first.
  for (auto it = params.rbegin(); it != params.rend(); ++it) {
    const Tensor& p = *it;
    TTQ_CHECK(p.defined() && p.is_contiguous() && p.dtype() == DType::F32 && p.requires_grad() &&
              !p.autograd_meta()->grad_fn && p.device() == dev)
        << "GradReducer: parameters must be contiguous F32 leaves requiring grad on one device, got "
        << p.str();
    const int64_t bytes = p.numel() * 4;
    if (m_buckets.empty() ||
        (!m_buckets.back().slots.empty() &&
         (m_buckets.back().buffer.numel() * 4 + bytes > static_cast<int64_t>(bucket_bytes)))) {
      m_buckets.emplace_back();
    }
    Bucket& b = m_buckets.back();
    Slot s;
    s.param = p;
    s.bucket = static_cast<int>(m_buckets.size()) - 1;
    s.offset = b.buffer.defined() ? b.buffer.numel() : 0;
    b.slots.push_back(static_cast<int>(m_slots.size()));
    // The buffer's size is only counted here; it is allocated below.
    b.buffer = Tensor::empty({s.offset + p.numel()}, DType::F32, Device::cpu());
    m_slots.push_back(std::move(s));
  }
  for (Bucket& b : m_buckets) b.buffer = Tensor::zeros({b.buffer.numel()}, DType::F32, dev);
  for (size_t i = 0; i < m_slots.size(); ++i) {
    autograd::set_grad_ready_hook(m_slots[i].param,
                                  [this, i](const Tensor& g) { on_ready(static_cast<int>(i), g); });
  }
}

GradReducer::~GradReducer() {
  for (Slot& s : m_slots) s.param.autograd_meta()->grad_ready = nullptr;
  // Requests still in flight (an exception between backward and finish) wait in their destructors.
}

int64_t GradReducer::bytes_per_step() const {
  int64_t n = 0;
  for (const Bucket& b : m_buckets) n += b.buffer.nbytes();
  return static_cast<int64_t>(n);
}

void GradReducer::on_ready(int slot, const Tensor& grad) {
  Slot& s = m_slots[static_cast<size_t>(slot)];
  Bucket& b = m_buckets[static_cast<size_t>(s.bucket)];
  TTQ_CHECK(!b.request) << "GradReducer: a gradient arrived for a bucket already reduced (two backward "
                           "passes without finish()?)";
  Tensor dst = b.buffer.narrow(0, s.offset, s.param.numel()).view(s.param.shape());
  dst.copy_(grad);
  if (!s.ready) {
    s.ready = true;
    ++b.ready;
  }
  launch_ready();
  // MPI moves non-blocking reductions forward only inside its calls.
  for (Bucket& o : m_buckets)
    if (o.request) o.request->test();
}

void GradReducer::launch_ready() {
  while (m_next_launch < num_buckets()) {
    Bucket& b = m_buckets[static_cast<size_t>(m_next_launch)];
    if (b.ready < static_cast<int>(b.slots.size())) return;
    launch(m_next_launch++);
  }
}

void GradReducer::launch(int bucket) {
  Bucket& b = m_buckets[static_cast<size_t>(bucket)];
  for (int si : b.slots) {  // a parameter without a gradient on this rank adds zeros
    Slot& s = m_slots[static_cast<size_t>(si)];
    if (!s.ready) b.buffer.narrow(0, s.offset, s.param.numel()).fill_(0.0);
  }
  b.request = m_comm.all_reduce_sum_async(b.buffer);
}

void GradReducer::finish() {
  const auto t0 = std::chrono::steady_clock::now();
  while (m_next_launch < num_buckets()) launch(m_next_launch++);
  for (Bucket& b : m_buckets) {
    b.request->wait();
    b.request.reset();
  }
  m_wait_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (Slot& s : m_slots) {
    Bucket& b = m_buckets[static_cast<size_t>(s.bucket)];
    s.param.set_grad(b.buffer.narrow(0, s.offset, s.param.numel()).view(s.param.shape()));
    s.ready = false;
  }
  for (Bucket& b : m_buckets) b.ready = 0;
  m_next_launch = 0;
}

}  // namespace ttq::dist
