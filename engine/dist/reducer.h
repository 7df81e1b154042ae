// Bucketed gradient all-reduce overlapped with backward (as PyTorch DDP, llm.c):
// parameters are grouped, in reverse order (the order backward finishes them),
// into buckets of about `bucket_bytes`; a grad_ready hook (engine/autograd.h)
// copies each final gradient into its bucket's flat buffer, and a full bucket
// starts its all-reduce at once, in bucket order on every rank, while backward
// goes on. finish() starts what is left, waits, and gives each parameter its
// reduced gradient. Implementation: engine/dist/reducer.cpp. Tests:
// tests/test_dist.cpp and tests/dist_worker.cpp (reduced == sum of every rank's
// gradients, computed on one rank).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/dist/comm.h"
#include "engine/tensor.h"

namespace ttq::dist {

class GradReducer {
 public:
  // requires every parameter a contiguous F32 leaf that requires grad, all on one
  // device the communicator reduces, the same list (shapes, order) on every rank.
  // ensures a grad_ready hook on each (removed by the destructor).
  GradReducer(Communicator& comm, std::vector<Tensor> params, size_t bucket_bytes = size_t(25) << 20);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // After backward: starts the buckets not yet started (a parameter that got no
  // gradient contributes zeros), waits for all, and sets every parameter's
  // gradient to the sum over ranks (a view of its bucket, valid until the next
  // backward), also those that got no gradient in the pass (zeros from every
  // rank that had none).
  void finish();

  int64_t num_buckets() const { return static_cast<int64_t>(m_buckets.size()); }
  // Seconds the last finish() spent waiting for reductions (communication not
  // hidden behind backward), and the bytes each step reduces.
  double last_wait_seconds() const { return m_wait_seconds; }
  int64_t bytes_per_step() const;

 private:
  struct Slot {
    Tensor param;
    int bucket = 0;
    int64_t offset = 0;  // in the bucket's buffer, elements
    bool ready = false;
  };
  struct Bucket {
    Tensor buffer;  // flat F32 on the parameters' device
    std::vector<int> slots;
    int ready = 0;
    std::unique_ptr<Request> request;
  };
  void on_ready(int slot, const Tensor& grad);
  void launch_ready();  // starts the next buckets whose slots are all ready, in order
  void launch(int bucket);

  Communicator& m_comm;
  std::vector<Slot> m_slots;
  std::vector<Bucket> m_buckets;
  int m_next_launch = 0;
  double m_wait_seconds = 0;
};

}  // namespace ttq::dist
