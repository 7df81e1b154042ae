// Data-parallel training (train/distributed.h). Tests: tests/test_dist.cpp.
#include "train/distributed.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/error.h"
#include "engine/nn/layers.h"
#include "engine/ops/ops.h"
#include "train/options.h"

namespace ttq::train {

namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

}  // namespace

Distributed::Distributed() : m_comm(&dist::world()) {}

Distributed::~Distributed() {
  if (m_sync_bn) ops::set_batch_norm_sync({});
}

TrainOptions Distributed::global_options(TrainOptions raw) const {
  if (!active()) return raw;
  const int64_t n = size();
  if (raw.batch != kUnset) {
    check_flag_range("--batch", raw.batch, limits::kBatch);
    raw.batch *= n;
  } else if (!raw.resume) {
    raw.batch = resolve_defaults(raw).batch * n;
  }
  TTQ_INPUT_CHECK(raw.batch == kUnset || raw.batch <= limits::kBatch.hi)
      << "--batch " << raw.batch / n << " x " << n << " ranks: a global batch of " << raw.batch
      << " is above " << limits::kBatch.hi;
  return raw;
}

void Distributed::check_batch(const TrainOptions& o) const {
  if (!active()) return;
  TTQ_INPUT_CHECK(o.batch % size() == 0)
      << "--batch: the run's global batch of " << o.batch << " does not split into " << size()
      << " equal shards (resume with a rank count that divides it)";
}

void Distributed::check_same(const std::string& what, const std::string& text) const {
  if (!active()) return;
  std::vector<uint8_t> ref(text.begin(), text.end());
  m_comm->broadcast(ref, 0);
  const std::string ref_text(ref.begin(), ref.end());
  // Per rank: differs or not; and the first line that differs (for the message).
  std::vector<double> v(static_cast<size_t>(size()) + 1, 0.0);
  const bool differs = fnv1a(ref_text) != fnv1a(text) || ref_text != text;
  v[static_cast<size_t>(rank())] = differs ? 1 : 0;
  const std::vector<std::string> mine = lines_of(text), theirs = lines_of(ref_text);
  size_t first = 0;
  while (first < mine.size() && first < theirs.size() && mine[first] == theirs[first]) ++first;
  std::vector<double> first_line{differs ? static_cast<double>(first) : 1e18};
  m_comm->all_reduce(v, dist::HostOp::Sum);
  m_comm->all_reduce(first_line, dist::HostOp::Min);
  std::string ranks;
  for (int r = 0; r < size(); ++r)
    if (v[static_cast<size_t>(r)] != 0) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
  if (ranks.empty()) return;
  if (rank() != 0) throw PeerError(2);
  std::string at;
  const size_t line = static_cast<size_t>(first_line[0]);
  if (line < theirs.size()) {
    at = theirs[line];
    at.erase(0, at.find_first_not_of(' '));
    if (!at.empty() && at.back() == ',') at.pop_back();
  }
  TTQ_INPUT_ERROR() << "rank " << ranks << ": " << what << " differ from rank 0's"
                    << (at.empty() ? std::string() : " (rank 0 has " + at + ")")
                    << "; every rank must run the same command on the same data";
}

data::LoaderOptions Distributed::shard(data::LoaderOptions lo, bool training) const {
  if (!active()) return lo;
  lo.shard_rank = rank();
  lo.shard_count = size();
  if (training) {
    lo.min_batch = size();
  } else {
    lo.batch_size *= size();
  }
  return lo;
}

std::string Distributed::device_flag(const std::string& flag) const {
  if (!active() || !(flag.empty() || flag == "cuda") || !cuda::available()) return flag;
  int local = 0;
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}) {
    if (const char* e = std::getenv(v)) {
      local = std::atoi(e);
      break;
    }
  }
  return "cuda:" + std::to_string(local % std::max(1, cuda::device_count()));
}

void Distributed::attach(optim::Optimizer& opt, Device device, bool sync_bn, std::ostream& log) {
  if (!active()) return;
  std::vector<Tensor> params;
  for (size_t g = 0; g < opt.num_groups(); ++g)
    for (const Tensor& p : opt.group(g).params) params.push_back(p);
  dist::Communicator* grads = m_comm;
  if (device.is_cuda()) {
    TTQ_INPUT_CHECK(dist::nccl_compiled())
        << "--device " << device.str() << ": training on CUDA with several ranks needs NCCL, and this "
        << "build has none (build with CUDA and nccl.h / libnccl, or train with --device cpu)";
    m_device_comm = dist::make_nccl(*m_comm, device.index);
    grads = m_device_comm.get();
  }
  m_reducer = std::make_unique<dist::GradReducer>(*grads, params);
  if (rank() > 0) {
    Generator& g = nn::global_generator();
    g.set_state(g.seed() ^ (0x9e3779b97f4a7c15ull * static_cast<uint64_t>(rank())), g.offset());
  }
  if (sync_bn) {
    dist::Communicator* c = m_comm;
    ops::set_batch_norm_sync([c](std::vector<double>& v) { c->all_reduce(v, dist::HostOp::Sum); });
    m_sync_bn = true;
  }
  log << "data parallel: " << size() << " ranks (" << m_comm->name() << ", gradients over " << grads->name()
      << "), " << m_reducer->num_buckets() << " gradient buckets of " << m_reducer->bytes_per_step()
      << " bytes in all, batch norm " << (sync_bn ? "synchronised (--sync-bn)" : "per rank") << "\n";
}

StepAgreement Distributed::agree_step(int64_t batch_index, int64_t n, double loss, double correct,
                                      bool stop) const {
  StepAgreement a;
  if (!active()) {
    a.count = static_cast<double>(n);
    a.loss = loss;
    a.correct = correct;
    a.stop = stop;
    return a;
  }
  const double k = static_cast<double>(batch_index), dn = static_cast<double>(n);
  std::vector<double> v{dn, loss * dn, correct, stop ? 1.0 : 0.0, k, k * k};
  m_comm->all_reduce(v, dist::HostOp::Sum);
  // Every rank at batch k: sum k = N k and sum k^2 = N k^2 (exact in doubles).
  const double ranks = static_cast<double>(size());
  TTQ_INPUT_CHECK(v[4] * v[4] == ranks * v[5] && v[4] == ranks * k)
      << "data parallel: the ranks are at different batches (batch " << batch_index + 1 << " on rank "
      << rank() << "): a rank could read none of its shard of a batch";
  a.count = v[0];
  a.loss = v[1] / v[0];
  a.correct = v[2];
  a.stop = v[3] > 0;
  a.weight = dn / v[0];
  return a;
}

void Distributed::backward(const Tensor& loss, const StepAgreement& a) {
  if (!active()) {
    loss.backward();
    return;
  }
  // The loss is this rank's mean: scaled by its share, the sum over ranks is the global batch's mean.
  loss.backward(Tensor::full(loss.shape(), a.weight, loss.dtype(), loss.device()));
  m_reducer->finish();
  m_wait += m_reducer->last_wait_seconds();
}

int Distributed::agreed_stop_signal() const {
  if (!active()) return stop_signal();
  std::vector<double> v{static_cast<double>(stop_signal())};
  m_comm->all_reduce(v, dist::HostOp::Max);
  return static_cast<int>(v[0]);
}

EvalResult Distributed::reduce(EvalResult e) const {
  if (!active()) return e;
  std::vector<double> classes{static_cast<double>(e.classes)};
  m_comm->all_reduce(classes, dist::HostOp::Max);
  const int64_t c = static_cast<int64_t>(classes[0]);
  if (e.classes == 0) {
    e.classes = c;
    e.confusion.assign(static_cast<size_t>(c * (c + 1)), 0);
  }
  TTQ_CHECK(e.classes == c) << "data parallel: the ranks' logits differ in width";
  const double n = static_cast<double>(e.count);
  std::vector<double> v{e.loss * n, e.top1 * n, e.top5 * n, n};
  for (int64_t x : e.confusion) v.push_back(static_cast<double>(x));
  m_comm->all_reduce(v, dist::HostOp::Sum);
  e.count = static_cast<int64_t>(v[3]);
  e.loss = e.count > 0 ? v[0] / v[3] : 0;
  e.top1 = e.count > 0 ? v[1] / v[3] : 0;
  e.top5 = e.count > 0 ? v[2] / v[3] : 0;
  for (size_t i = 0; i < e.confusion.size(); ++i) e.confusion[i] = static_cast<int64_t>(v[4 + i]);
  std::vector<double> secs{e.seconds};
  m_comm->all_reduce(secs, dist::HostOp::Max);
  e.seconds = secs[0];
  return e;
}

double Distributed::take_wait_seconds() {
  const double w = m_wait;
  m_wait = 0;
  return w;
}

int64_t per_rank_batch(int64_t batch, const std::string& source) {
  const int64_t n = dist::world().size();
  if (n == 1 || batch == kUnset) return batch;
  TTQ_INPUT_CHECK(batch % n == 0) << source << ": its batch of " << batch << " does not split into " << n
                                  << " equal shards (give --batch, per rank)";
  return batch / n;
}

std::string fingerprint(const data::Dataset& d) {
  std::string all = std::to_string(d.size()) + " items";
  for (const std::string& c : d.class_names()) all += "\n" + c;
  uint64_t h = fnv1a(all);
  for (int64_t i = 0; i < d.size(); ++i) {
    const std::string item = d.item_name(i) + "\t" + std::to_string(d.label(i));
    h = (h ^ fnv1a(item)) * 1099511628211ull;
  }
  std::ostringstream os;
  os << all.substr(0, all.find('\n')) << ", " << d.num_classes() << " classes, items " << std::hex << h;
  return os.str();
}

std::string fingerprint(nn::Module& m) {
  std::ostringstream os;
  for (auto& [name, t] : m.state_dict()) {
    const Tensor c = t.to(Device::cpu()).contiguous();
    const std::string bytes(static_cast<const char*>(c.raw_data()), c.nbytes());
    os << name << " " << std::hex << fnv1a(bytes) << std::dec << "\n";
  }
  return os.str();
}

std::ostream& null_log() {
  static std::ostream null(nullptr);  // no buffer: every write fails and is dropped
  return null;
}

int end_rank(int code) {
  if (code == 0 || code == 130 || code == 143 || !dist::launched_by_mpi() || !dist::mpi_compiled())
    return code;
  dist::Communicator& w = dist::world();
  if (w.size() > 1) w.abort(code);
  return code;
}

}  // namespace ttq::train
