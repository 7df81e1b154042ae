// The NCCL communicator (engine/dist/comm.h): all-reduces of CUDA tensors on a
// stream of their own, ordered after the work the engine's compute stream had
// queued when the reduction started (an event), and before the work queued after
// wait() (the compute stream waits on the reduction's event; the host does not
// block). Host vectors, broadcasts and barriers go through the bootstrap (MPI).
// Built only when nccl.h and libnccl are found with CUDA (TTQ_HAS_NCCL); it
// needs a GPU per rank: tests/test_dist.cpp skips its case without one.
#include "engine/dist/comm.h"
#include "engine/error.h"

#if defined(TTQ_HAS_NCCL) && defined(TTQ_HAS_CUDA)
#include <nccl.h>

#include <cstdlib>
#include <cstring>

#include "engine/cuda/check.h"
#include "engine/cuda/runtime.h"

// Every NCCL return code goes through here: a failure throws with the call and NCCL's message.
#define TTQ_NCCL_CHECK(expr)                                                                      \
  do {                                                                                            \
    ncclResult_t ttq_nccl_rc_ = (expr);                                                           \
    if (ttq_nccl_rc_ != ncclSuccess)                                                              \
      TTQ_THROW() << "NCCL error " << ncclGetErrorString(ttq_nccl_rc_) << " in " << #expr << " (" \
                  << __FILE__ << ":" << __LINE__ << ")";                                          \
  } while (0)
#endif

namespace ttq::dist {

bool nccl_compiled() {
#if defined(TTQ_HAS_NCCL) && defined(TTQ_HAS_CUDA)
  return true;
#else
  return false;
#endif
}

#if defined(TTQ_HAS_NCCL) && defined(TTQ_HAS_CUDA)

namespace {

class NcclRequest final : public Request {
 public:
  explicit NcclRequest(cudaEvent_t done) : m_done(done) {}
  ~NcclRequest() override { TTQ_CUDA_CHECK_NOTHROW(cudaEventDestroy(m_done)); }
  void wait() override {
    // Later work on the compute stream runs after the reduction; the host goes on.
    TTQ_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(cuda::current_stream()), m_done, 0));
  }
  bool test() override {
    const cudaError_t e = cudaEventQuery(m_done);
    if (e == cudaErrorNotReady) return false;
    TTQ_CUDA_CHECK(e);
    return true;
  }

 private:
  cudaEvent_t m_done;
};

class NcclComm final : public Communicator {
 public:
  NcclComm(Communicator& bootstrap, int device) : m_boot(bootstrap), m_device(device) {
    TTQ_CHECK(cuda::available()) << "nccl: no CUDA device";
    TTQ_CUDA_CHECK(cudaSetDevice(device));
    ncclUniqueId id;
    std::vector<uint8_t> bytes(sizeof(id));
    if (bootstrap.rank() == 0) {
      TTQ_NCCL_CHECK(ncclGetUniqueId(&id));
      std::memcpy(bytes.data(), &id, sizeof(id));
    }
    bootstrap.broadcast(bytes, 0);
    TTQ_CHECK(bytes.size() == sizeof(id)) << "nccl: the unique id arrived with " << bytes.size() << " bytes";
    std::memcpy(&id, bytes.data(), sizeof(id));
    TTQ_NCCL_CHECK(ncclCommInitRank(&m_comm, bootstrap.size(), id, bootstrap.rank()));
    TTQ_CUDA_CHECK(cudaStreamCreateWithFlags(&m_stream, cudaStreamNonBlocking));
  }
  ~NcclComm() override {
    ncclCommDestroy(m_comm);
    TTQ_CUDA_CHECK_NOTHROW(cudaStreamDestroy(m_stream));
  }
  int rank() const override { return m_boot.rank(); }
  int size() const override { return m_boot.size(); }
  std::string name() const override { return "nccl"; }

  std::unique_ptr<Request> all_reduce_sum_async(Tensor& t) override {
    TTQ_CHECK(t.defined() && t.is_contiguous() && t.dtype() == DType::F32 && t.device().is_cuda() &&
              t.device().index == m_device)
        << "nccl all_reduce_sum: needs a contiguous F32 tensor on cuda:" << m_device << ", got " << t.str();
    cudaEvent_t ready = nullptr, done = nullptr;
    TTQ_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    TTQ_CUDA_CHECK(cudaEventRecord(ready, static_cast<cudaStream_t>(cuda::current_stream())));
    TTQ_CUDA_CHECK(cudaStreamWaitEvent(m_stream, ready, 0));
    TTQ_CUDA_CHECK(cudaEventDestroy(ready));
    TTQ_NCCL_CHECK(ncclAllReduce(t.data<float>(), t.data<float>(), static_cast<size_t>(t.numel()), ncclFloat,
                                 ncclSum, m_comm, m_stream));
    TTQ_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    TTQ_CUDA_CHECK(cudaEventRecord(done, m_stream));
    return std::make_unique<NcclRequest>(done);
  }
  void all_reduce(std::vector<double>& v, HostOp op) override { m_boot.all_reduce(v, op); }
  void broadcast(std::vector<uint8_t>& bytes, int root) override { m_boot.broadcast(bytes, root); }
  void barrier() override { m_boot.barrier(); }
  [[noreturn]] void abort(int code) override {
    ncclCommAbort(m_comm);
    m_boot.abort(code);
    std::_Exit(code);  // not reached: abort ends the process
  }

 private:
  Communicator& m_boot;
  int m_device;
  ncclComm_t m_comm = nullptr;
  cudaStream_t m_stream = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl(Communicator& bootstrap, int device) {
  return std::make_unique<NcclComm>(bootstrap, device);
}

#else

std::unique_ptr<Communicator> make_nccl(Communicator&, int) {
  TTQ_THROW() << "nccl: this build has no NCCL (CUDA with nccl.h and libnccl)";
}

#endif

}  // namespace ttq::dist
