// The ranks' side of tests/test_dist.cpp: GoogleTest cases run by every rank of
// `mpirun -np 2 dist_worker` (each case skips in a process started alone). Every
// rank draws the same seeded inputs, keeps its own shard, and checks what the
// ranks compute together against what one process computes on the whole:
// all-reduces against hand sums, synchronised BatchNorm against batch_norm2d on
// the whole batch (forward, running statistics, every gradient), the bucketed
// gradient reducer against the whole batch's gradients; NCCL's sums of CUDA
// tensors where each rank has a GPU of its own.
#include <cmath>

#include "engine/autograd.h"
#include "engine/dist/comm.h"
#include "engine/dist/reducer.h"
#include "engine/nn/layers.h"
#include "engine/ops/ops.h"
#include "engine/optim/optimizer.h"
#include "tests/test_util.h"
#include "train/distributed.h"

namespace ttq {
namespace {

dist::Communicator& ranks() { return dist::world(); }

#define TTQ_NEED_RANKS()                                                                    \
  do {                                                                                      \
    if (!dist::launched_by_mpi() || ranks().size() < 2) GTEST_SKIP() << "not under mpirun"; \
  } while (0)

// Rows [r * n / size, (r + 1) * n / size) of dim 0: this rank's shard.
Tensor shard(const Tensor& t) {
  const int64_t n = t.size(0), r = ranks().rank(), s = ranks().size();
  return t.narrow(0, r * n / s, (r + 1) * n / s - r * n / s).contiguous();
}

// The same tensor on every rank? (max |t - rank 0's t|, over MPI.)
double spread(const Tensor& t) {
  Tensor lo = t.contiguous().clone(), hi = t.contiguous().clone();
  std::vector<double> a = lo.to_vector<double>(), b = a;
  ranks().all_reduce(a, dist::HostOp::Min);
  ranks().all_reduce(b, dist::HostOp::Max);
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, b[i] - a[i]);
  return m;
}

TEST(DistWorker, AllReduceSumsTensorsAndHostVectors) {
  TTQ_NEED_RANKS();
  const int r = ranks().rank(), s = ranks().size();
  // Rank r holds t_r[i] = (r + 1) * (i + 1) + 0.5: the sum is known in closed form.
  std::vector<float> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((r + 1) * (i + 1)) + 0.5f;
  Tensor t = Tensor::from_vector(v, {10, 100});
  auto req = ranks().all_reduce_sum_async(t);
  req->wait();
  const std::vector<float> got = t.to_vector<float>();
  const double ranks_sum = s * (s + 1) / 2.0;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i], static_cast<float>(ranks_sum * (i + 1) + 0.5 * s)) << "element " << i;
  std::vector<double> h{double(r), double(r), double(r)};
  ranks().all_reduce(h, dist::HostOp::Sum);
  EXPECT_EQ(h[0], s * (s - 1) / 2.0);
  std::vector<double> mn{double(r)}, mx{double(r)};
  ranks().all_reduce(mn, dist::HostOp::Min);
  ranks().all_reduce(mx, dist::HostOp::Max);
  EXPECT_EQ(mn[0], 0);
  EXPECT_EQ(mx[0], s - 1);
  std::vector<uint8_t> bytes;
  if (r == 0) bytes = {1, 2, 3, 250};
  ranks().broadcast(bytes, 0);
  EXPECT_EQ(bytes, (std::vector<uint8_t>{1, 2, 3, 250}));
}

// Synchronised BN on shards == batch_norm2d on the whole batch.
TEST(DistWorker, SyncBatchNormMatchesTheWholeBatch) {
  TTQ_NEED_RANKS();
  for (const Shape& shape : {Shape{6, 5, 7, 3}, Shape{4, 3, 1, 1}, Shape{8, 16, 4, 4}}) {
    SCOPED_TRACE(shape_str(shape));
    const int64_t c = shape[1];
    // Offset and scale per channel: a mean far from 0 tests the variance's gathering.
    Tensor x = test::rand(shape, 11);
    {
      std::vector<float> xv = x.to_vector<float>();
      for (size_t i = 0; i < xv.size(); ++i) xv[i] = xv[i] * 3.0f + 5.0f * static_cast<float>((i / 7) % 3);
      x = Tensor::from_vector(xv, shape);
    }
    const Tensor w0 = test::rand({c}, 12), b0 = test::rand({c}, 13), gy = test::rand(shape, 14);
    // One process, the whole batch.
    Tensor xf = x.clone().set_requires_grad(true), wf = w0.clone().set_requires_grad(true),
           bf = b0.clone().set_requires_grad(true);
    Tensor rmf = test::rand({c}, 15), rvf = Tensor::full({c}, 2.0);
    Tensor yf = ops::batch_norm2d(xf, wf, bf, rmf, rvf, true, 0.1, 1e-5);
    yf.backward(gy);
    // The ranks, each on its shard, synchronised.
    ops::set_batch_norm_sync([](std::vector<double>& v) { ranks().all_reduce(v, dist::HostOp::Sum); });
    Tensor xs = shard(x).set_requires_grad(true), ws = w0.clone().set_requires_grad(true),
           bs = b0.clone().set_requires_grad(true);
    Tensor rms = test::rand({c}, 15), rvs = Tensor::full({c}, 2.0);
    Tensor ys = ops::batch_norm2d(xs, ws, bs, rms, rvs, true, 0.1, 1e-5);
    ys.backward(shard(gy));
    ops::set_batch_norm_sync({});
    EXPECT_LT(test::max_rel_error(ys, shard(yf)), 2e-6);
    EXPECT_LT(test::max_rel_error(rms, rmf), 2e-6);
    EXPECT_LT(test::max_rel_error(rvs, rvf), 2e-6);
    EXPECT_LT(test::max_rel_error(xs.grad(), shard(xf.grad())), 2e-5);
    // The parameters' gradients are the ranks' sums (the reducer adds them).
    Tensor gw = ws.grad().clone(), gb = bs.grad().clone();
    ranks().all_reduce_sum(gw);
    ranks().all_reduce_sum(gb);
    EXPECT_LT(test::max_rel_error(gw, wf.grad()), 2e-5);
    EXPECT_LT(test::max_rel_error(gb, bf.grad()), 2e-5);
  }
}

// The reducer's sums (bucketed, started from the hooks during backward) == the
// gradients of the whole batch's mean loss, for buckets of every size.
TEST(DistWorker, GradReducerSumsEveryRanksGradients) {
  TTQ_NEED_RANKS();
  const Tensor x = test::rand({8, 3, 6, 6}, 21);
  const Tensor w1 = test::rand({5, 3, 3, 3}, 22), w2 = test::rand({7, 5 * 4 * 4}, 23),
               b2 = test::rand({7}, 24);
  const Tensor y = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 0}, {8});
  auto loss_of = [](const Tensor& xb, const Tensor& yb, const std::vector<Tensor>& p) {
    Tensor h = ops::relu(ops::conv2d(xb, p[0], Tensor()));
    // w1 is used twice: its gradient is final only after both uses.
    h = ops::add(h, ops::relu(ops::conv2d(xb, p[0], Tensor())));
    return ops::cross_entropy(ops::linear(ops::flatten(h), p[1], p[2]), yb);
  };
  auto params = [&] {
    return std::vector<Tensor>{w1.clone().set_requires_grad(true), w2.clone().set_requires_grad(true),
                               b2.clone().set_requires_grad(true)};
  };
  std::vector<Tensor> whole = params();
  loss_of(x, y, whole).backward();
  for (size_t bucket_bytes : {size_t(1), size_t(600), size_t(1) << 20}) {
    SCOPED_TRACE("bucket_bytes " + std::to_string(bucket_bytes));
    std::vector<Tensor> mine = params();
    dist::GradReducer reducer(ranks(), mine, bucket_bytes);
    for (int step = 0; step < 2; ++step) {  // the buckets are reused
      for (Tensor& p : mine) p.zero_grad();
      Tensor loss = loss_of(shard(x), shard(y), mine);
      const double share = static_cast<double>(shard(x).size(0)) / x.size(0);
      loss.backward(Tensor::full(loss.shape(), share));
      reducer.finish();
      for (size_t i = 0; i < mine.size(); ++i) {
        EXPECT_LT(test::max_rel_error(mine[i].grad(), whole[i].grad()), 1e-5) << "parameter " << i;
        EXPECT_EQ(spread(mine[i].grad()), 0.0) << "parameter " << i << " differs between ranks";
      }
    }
  }
}

// The trainer's side: after attach, dropout draws from a stream of each rank's
// own (rank 0 keeps the run's), and the attached reducer sums the optimiser's
// gradients.
TEST(DistWorker, AttachGivesEachRankItsDropoutStream) {
  TTQ_NEED_RANKS();
  nn::manual_seed(5);
  Tensor w = test::rand({4, 4}, 41).set_requires_grad(true);
  optim::SGD opt({w}, optim::SGDOptions{0.1});
  train::Distributed d;
  d.attach(opt, Device::cpu(), false, train::null_log());
  const Generator& g = nn::global_generator();
  if (ranks().rank() == 0) {
    EXPECT_EQ(g.seed(), 5u);
  }
  std::vector<double> seeds(static_cast<size_t>(ranks().size()), 0.0);
  seeds[static_cast<size_t>(ranks().rank())] = static_cast<double>(g.seed() % (uint64_t(1) << 52));
  ranks().all_reduce(seeds, dist::HostOp::Sum);
  for (size_t a = 0; a < seeds.size(); ++a)
    for (size_t b = a + 1; b < seeds.size(); ++b) EXPECT_NE(seeds[a], seeds[b]) << "ranks " << a << ", " << b;
  // Dropout masks of the same shape differ between ranks.
  Tensor ones = Tensor::ones({64});
  nn::Dropout drop(0.5);
  drop.train();
  EXPECT_GT(spread(drop.forward(ones)), 0.0);
  // The loss seeded with this rank's share; the reducer sums: the gradient is the same on every rank.
  const train::StepAgreement a = d.agree_step(0, 1, 0.0, 0.0, false);
  opt.zero_grad();
  Tensor loss = ops::sum(ops::mul(w, Tensor::full({4, 4}, static_cast<double>(ranks().rank() + 1))));
  d.backward(loss, a);
  EXPECT_EQ(a.count, ranks().size());
  EXPECT_EQ(spread(w.grad()), 0.0);
  // sum over ranks r of (r + 1) / size = (size + 1) / 2 for every element.
  EXPECT_LT(test::max_rel_error(w.grad(), Tensor::full({4, 4}, (ranks().size() + 1) / 2.0)), 1e-6);
}

// NCCL: CUDA tensors summed on the device, one GPU per rank (rank r on cuda:r).
TEST(DistWorker, NcclSumsCudaTensors) {
  TTQ_NEED_RANKS();
  if (!dist::nccl_compiled()) GTEST_SKIP() << "built without NCCL";
  if (cuda::device_count() < ranks().size()) GTEST_SKIP() << "fewer CUDA devices than ranks";
  const int r = ranks().rank(), s = ranks().size();
  auto nccl = dist::make_nccl(ranks(), r);
  const Tensor host = test::rand({3, 1000}, 31 + static_cast<uint64_t>(r));
  Tensor t = host.to(Device::cuda(r));
  nccl->all_reduce_sum_async(t)->wait();
  // The reference: every rank's tensor, summed on the host in rank order.
  std::vector<float> e(3000, 0.0f);
  for (int q = 0; q < s; ++q) {
    const std::vector<float> v = test::rand({3, 1000}, 31 + static_cast<uint64_t>(q)).to_vector<float>();
    for (size_t i = 0; i < e.size(); ++i) e[i] += v[i];
  }
  EXPECT_LT(test::max_rel_error(t.to(Device::cpu()), Tensor::from_vector(e, {3, 1000})), 1e-6);
}

}  // namespace
}  // namespace ttq
