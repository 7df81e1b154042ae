// The world of one and the MPI communicator (engine/dist/comm.h). MPI runs with
// MPI_THREAD_FUNNELED: only the thread that initialised it (the trainer's) calls
// it. Non-blocking all-reduces progress inside MPI calls, so the gradient reducer
// calls test() on the ones in flight whenever it hands over another bucket.
// Tests: tests/test_dist.cpp, tests/dist_worker.cpp.
#include "engine/dist/comm.h"

#include <cstdlib>
#include <exception>
#include <mutex>

#include "engine/error.h"

#ifdef TTQ_HAS_MPI
// The C API only: Open MPI's deprecated C++ bindings need a library we do not link.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace ttq::dist {

namespace {

class SingleRequest final : public Request {
 public:
  void wait() override {}
  bool test() override { return true; }
};

class SingleComm final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "single"; }
  std::unique_ptr<Request> all_reduce_sum_async(Tensor& t) override {
    TTQ_CHECK(t.defined() && t.is_contiguous() && t.dtype() == DType::F32)
        << "all_reduce_sum: needs a contiguous F32 tensor, got " << t.str();
    return std::make_unique<SingleRequest>();
  }
  void all_reduce(std::vector<double>&, HostOp) override {}
  void broadcast(std::vector<uint8_t>&, int root) override {
    TTQ_CHECK(root == 0) << "broadcast: root " << root << " in a world of one";
  }
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::_Exit(code); }
};

#ifdef TTQ_HAS_MPI

// Every MPI return code goes through here: a failure throws with the call and MPI's message.
#define TTQ_MPI_CHECK(expr)                                                                              \
  do {                                                                                                   \
    const int ttq_mpi_rc_ = (expr);                                                                      \
    if (ttq_mpi_rc_ != MPI_SUCCESS) {                                                                    \
      char ttq_mpi_msg_[MPI_MAX_ERROR_STRING];                                                           \
      int ttq_mpi_len_ = 0;                                                                              \
      MPI_Error_string(ttq_mpi_rc_, ttq_mpi_msg_, &ttq_mpi_len_);                                        \
      TTQ_THROW() << #expr << " failed: " << std::string(ttq_mpi_msg_, ttq_mpi_len_) << " (" << __FILE__ \
                  << ":" << __LINE__ << ")";                                                             \
    }                                                                                                    \
  } while (0)

class MpiRequest final : public Request {
 public:
  explicit MpiRequest(MPI_Request r) : m_req(r) {}
  ~MpiRequest() override {
    if (m_req == MPI_REQUEST_NULL) return;
    // Unwinding an error: the peers may never join this reduction, so waiting
    // could hang; the rank is about to end the job (train::end_rank), and the
    // buffer is left to MPI rather than waited for. Otherwise wait, never throw.
    if (std::uncaught_exceptions() > 0) return;
    MPI_Wait(&m_req, MPI_STATUS_IGNORE);
  }
  void wait() override {
    if (m_req != MPI_REQUEST_NULL) TTQ_MPI_CHECK(MPI_Wait(&m_req, MPI_STATUS_IGNORE));
  }
  bool test() override {
    if (m_req == MPI_REQUEST_NULL) return true;
    int done = 0;
    TTQ_MPI_CHECK(MPI_Test(&m_req, &done, MPI_STATUS_IGNORE));
    return done != 0;
  }

 private:
  MPI_Request m_req;
};

class MpiComm final : public Communicator {
 public:
  MpiComm() {
    int initialized = 0;
    TTQ_MPI_CHECK(MPI_Initialized(&initialized));
    if (!initialized) {
      int provided = 0;
      TTQ_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
      m_owns = true;
    }
    // Errors come back as return codes (checked) rather than aborting inside MPI.
    TTQ_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    TTQ_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &m_rank));
    TTQ_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &m_size));
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (m_owns && !finalized) MPI_Finalize();
  }
  int rank() const override { return m_rank; }
  int size() const override { return m_size; }
  std::string name() const override { return "mpi"; }

  std::unique_ptr<Request> all_reduce_sum_async(Tensor& t) override {
    TTQ_CHECK(t.defined() && t.is_contiguous() && t.dtype() == DType::F32 && t.device().is_cpu())
        << "mpi all_reduce_sum: needs a contiguous F32 CPU tensor, got " << t.str();
    TTQ_CHECK(t.numel() <= INT32_MAX) << "mpi all_reduce_sum: " << t.numel() << " elements in one call";
    MPI_Request req = MPI_REQUEST_NULL;
    TTQ_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, t.data<float>(), static_cast<int>(t.numel()), MPI_FLOAT,
                                 MPI_SUM, MPI_COMM_WORLD, &req));
    return std::make_unique<MpiRequest>(req);
  }
  void all_reduce(std::vector<double>& v, HostOp op) override {
    const MPI_Op mop = op == HostOp::Sum ? MPI_SUM : op == HostOp::Min ? MPI_MIN : MPI_MAX;
    TTQ_MPI_CHECK(
        MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_DOUBLE, mop, MPI_COMM_WORLD));
  }
  void broadcast(std::vector<uint8_t>& bytes, int root) override {
    uint64_t n = bytes.size();
    TTQ_MPI_CHECK(MPI_Bcast(&n, 1, MPI_UINT64_T, root, MPI_COMM_WORLD));
    bytes.resize(n);
    TTQ_MPI_CHECK(MPI_Bcast(bytes.data(), static_cast<int>(n), MPI_BYTE, root, MPI_COMM_WORLD));
  }
  void barrier() override { TTQ_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  int m_rank = 0, m_size = 1;
  bool m_owns = false;
};

#endif  // TTQ_HAS_MPI

}  // namespace

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

bool mpi_compiled() {
#ifdef TTQ_HAS_MPI
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Communicator> make_single() { return std::make_unique<SingleComm>(); }

Communicator& world() {
  // Built once, on first use, by the thread that will make every MPI call; a
  // function-local static is destroyed (MPI finalised) at exit.
  static std::unique_ptr<Communicator> w = []() -> std::unique_ptr<Communicator> {
    if (!launched_by_mpi()) return make_single();
#ifdef TTQ_HAS_MPI
    return std::make_unique<MpiComm>();
#else
    TTQ_INPUT_ERROR() << "started by an MPI launcher (mpirun / srun), but this build has no MPI: "
                         "install libopenmpi-dev and build again";
#endif
  }();
  return *w;
}

}  // namespace ttq::dist
