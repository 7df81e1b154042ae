// Communicators for data-parallel training across processes and machines: one
// interface, two backends. MPI (Open MPI) starts the job (mpirun, Slurm), bootstraps
// every other backend and reduces CPU tensors and host vectors; NCCL reduces CUDA
// tensors, its unique id broadcast over MPI. Each is compiled only when found
// (TTQ_HAS_MPI, TTQ_HAS_NCCL); without MPI every process is a world of one.
// Implementations: engine/dist/comm.cpp (MPI and the world of one),
// engine/dist/comm_nccl.cpp. Tests: tests/test_dist.cpp (which runs
// tests/dist_worker.cpp under mpirun).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace ttq::dist {

// An all-reduce in flight. wait() blocks until the result is in the tensor it was
// started on; test() asks without blocking (and lets MPI progress the transfer).
class Request {
 public:
  virtual ~Request() = default;
  virtual void wait() = 0;
  virtual bool test() = 0;
};

enum class HostOp { Sum, Min, Max };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The backend's name: "single", "mpi" or "nccl".
  virtual std::string name() const = 0;

  // requires t contiguous F32 on a device the backend reduces (MPI: the CPU; NCCL:
  // its CUDA device), the same numel on every rank, every rank starting its
  // reductions in the same order. ensures (after wait) t = the sum over ranks.
  virtual std::unique_ptr<Request> all_reduce_sum_async(Tensor& t) = 0;
  void all_reduce_sum(Tensor& t) { all_reduce_sum_async(t)->wait(); }

  // Host vectors (statistics, flags, counts): reduced in place, blocking; every
  // rank passes the same length. Always over MPI (bootstrap) where it exists.
  virtual void all_reduce(std::vector<double>& v, HostOp op) = 0;
  // bytes from rank `root` to every rank (resized on receivers).
  virtual void broadcast(std::vector<uint8_t>& bytes, int root) = 0;
  virtual void barrier() = 0;
  // Ends every process of the job at once with `code` (MPI_Abort): what a rank
  // that cannot go on does, so that no other rank waits for it forever.
  [[noreturn]] virtual void abort(int code) = 0;
};

// True when this process was started by a launcher that runs several ranks
// (mpirun / mpiexec: OMPI_COMM_WORLD_SIZE or PMI_SIZE; srun with PMIx: PMIX_RANK),
// whatever the size. A process started on its own never initialises MPI.
bool launched_by_mpi();

// The job's world: MPI_COMM_WORLD when launched_by_mpi() and MPI is compiled in
// (MPI is initialised on the first call and finalised at exit), else a world of
// one. Throws ttq::InputError when launched by mpirun but built without MPI.
Communicator& world();
bool mpi_compiled();
bool nccl_compiled();

// A world of one, for the single-process path and tests: sums are identities.
std::unique_ptr<Communicator> make_single();

// NCCL over the ranks of `bootstrap` on CUDA device `device` (rank 0 makes the
// unique id, bootstrap broadcasts it). Throws ttq::Error without NCCL or CUDA.
std::unique_ptr<Communicator> make_nccl(Communicator& bootstrap, int device);

}  // namespace ttq::dist
