// Data-parallel training (mpirun -np N ttq_train ...): what run_training does
// differently when it is one of N ranks. Each rank trains on a disjoint shard of
// every global batch (N x --batch samples, in the order one process with that
// batch would see them), gradients of every trained tensor (weights, BN, TTQ's
// Wp / Wn) are summed across ranks in buckets while backward runs
// (dist::GradReducer: MPI for CPU tensors, NCCL for CUDA ones), so the optimiser
// state stays identical on every rank; --sync-bn normalises with the global
// batch's statistics (ops::set_batch_norm_sync). Rank 0 alone writes the run
// folder; validation is sharded and its sums reduced; the final test runs on
// rank 0. In a world of one every member is a no-op and the run is exactly the
// single-process one. Docs: README.md ("Data-parallel training"). Tests:
// tests/test_dist.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <stdexcept>
#include <string>

#include "data/loader.h"
#include "engine/device.h"
#include "engine/dist/comm.h"
#include "engine/dist/reducer.h"
#include "engine/nn/module.h"
#include "engine/optim/optimizer.h"
#include "train/evaluate.h"
#include "train/trainer.h"

namespace ttq::train {

// Thrown on the ranks but rank 0 for an error that every rank detected alike
// and that rank 0 reports (the tool exits with `code` without another line).
struct PeerError : std::runtime_error {
  explicit PeerError(int c) : std::runtime_error("reported by rank 0"), code(c) {}
  int code;
};

// The numbers of one training step, over the global batch.
struct StepAgreement {
  double count = 0;    // samples in the global batch
  double loss = 0;     // mean loss over them
  double correct = 0;  // top-1 hits
  bool stop = false;   // some rank received SIGINT / SIGTERM
  double weight = 1;   // this rank's share of the global batch (its loss's backward seed)
};

class Distributed {
 public:
  // The world this process runs in (dist::world()).
  Distributed();
  ~Distributed();
  int rank() const { return m_comm->rank(); }
  int size() const { return m_comm->size(); }
  bool active() const { return size() > 1; }
  bool writer() const { return rank() == 0; }

  // --batch is per rank: the run's batch (config.json, the loader) is the global
  // one, N x --batch (the default per-rank batch when not given). On --resume the
  // run's global batch is kept and --batch, when given, must be it / N.
  TrainOptions global_options(TrainOptions raw) const;
  // After resolution: the global batch splits into N equal shards (resume with
  // another rank count), else ttq::InputError naming --batch.
  void check_batch(const TrainOptions& resolved) const;

  // Every rank must run the same command on the same data: each text (the
  // resolved options, the data's fingerprint) is compared across ranks; a
  // difference is one ttq::InputError line on rank 0 (PeerError elsewhere).
  void check_same(const std::string& what, const std::string& text) const;

  // The loader options of this rank's shard. Training: the global batch, and a
  // last batch with fewer samples than ranks is left out of the epoch.
  // Evaluation: eval_batch per rank.
  data::LoaderOptions shard(data::LoaderOptions lo, bool training) const;

  // --device for this rank: "" or "cuda" with a CUDA device present picks
  // cuda:(local rank mod devices) (the launcher's OMPI_COMM_WORLD_LOCAL_RANK or
  // SLURM_LOCALID), one GPU per rank; any other value is kept.
  std::string device_flag(const std::string& flag) const;

  // After the optimiser exists: every tensor it updates gets its gradient summed
  // over the ranks (CPU: MPI; CUDA: NCCL). --sync-bn: BN statistics are global.
  // Dropout: each rank but 0 moves to a stream of its own (the ranks' shards get
  // independent masks; rank 0 keeps the run's stream, which checkpoints record).
  void attach(optim::Optimizer& opt, Device device, bool sync_bn, std::ostream& log);

  // Before backward: the global batch's count, mean loss, hits and stop request.
  // Throws ttq::InputError when the ranks are not at the same batch.
  StepAgreement agree_step(int64_t batch_index, int64_t n, double loss, double correct, bool stop) const;
  // backward of this rank's loss scaled by its share, then the gradient sums.
  void backward(const Tensor& loss, const StepAgreement& a);
  // The stop request of any rank (the signal number, 0: none).
  int agreed_stop_signal() const;

  // Validation: this rank's pass over its shard, summed over the ranks.
  EvalResult reduce(EvalResult local) const;

  // Seconds spent waiting for gradient sums since the last call, and steps.
  double take_wait_seconds();
  int64_t gradient_bytes() const { return m_reducer ? m_reducer->bytes_per_step() : 0; }

 private:
  dist::Communicator* m_comm = nullptr;
  std::unique_ptr<dist::Communicator> m_device_comm;  // NCCL, for CUDA gradients
  std::unique_ptr<dist::GradReducer> m_reducer;
  double m_wait = 0;
  bool m_sync_bn = false;
};

// --config FILE under N ranks: the file's batch is its run's global batch, kept:
// the per-rank --batch is batch / N (ttq::InputError naming `source` when N does
// not divide it). In a world of one, `batch`.
int64_t per_rank_batch(int64_t batch, const std::string& source);

// What check_same compares beyond the options: a data set's size, classes and
// every item's name and label; a module's state (parameters and buffers) bit for bit.
std::string fingerprint(const data::Dataset& d);
std::string fingerprint(nn::Module& m);
// A stream that drops everything: the log of the ranks but rank 0.
std::ostream& null_log();

// A distributed job's rank ends with `code`: 0 and the agreed stop codes
// (130, 143) as every rank does; any other code ends every rank of the job now
// (MPI_Abort), so that no rank waits for this one forever. Returns `code` in a
// world of one.
int end_rank(int code);

}  // namespace ttq::train
