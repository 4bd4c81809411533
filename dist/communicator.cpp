#include "dist/communicator.h"

#include <cstdlib>
#include <mutex>

#include "autograd/ops.h"
#include "dist/mpi/mpi_communicator.h"

namespace cm::dist {

namespace {

class FinishedWork final : public Work {
 public:
  void wait() override {}
  bool test() override { return true; }
};

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  std::string engine() const override { return "local"; }
  void all_reduce(Tensor& t, ReduceOp op) override {
    CM_CHECK(t.defined() && t.is_contiguous(), "all_reduce: expected a contiguous tensor");
    CM_CHECK(op != ReduceOp::Average || is_floating(t.dtype()),
             "all_reduce: Average needs a floating-point tensor, got ", dtype_name(t.dtype()));
  }
  void broadcast(Tensor& t, int root) override {
    CM_CHECK(t.defined() && t.is_contiguous(), "broadcast: expected a contiguous tensor");
    CM_CHECK(root == 0, "broadcast: root ", root, " is not a rank of a job of 1");
  }
  Tensor all_gather(const Tensor& t) override { return unsqueeze(t, 0).contiguous(); }
  void barrier() override {}
  [[noreturn]] void abort_job(int code) override { std::exit(code); }
};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return (end && *end == '\0' && x >= 0 && x < (1 << 24)) ? int(x) : fallback;
}

}  // namespace

std::unique_ptr<Work> finished_work() {
  return std::make_unique<FinishedWork>();
}

std::unique_ptr<Work> Communicator::all_reduce_async(Tensor& t, ReduceOp op) {
  all_reduce(t, op);
  return finished_work();
}

std::unique_ptr<Communicator> make_local_communicator() {
  return std::make_unique<LocalCommunicator>();
}

LaunchInfo launch_info() {
  LaunchInfo l;
  if (std::getenv("OMPI_COMM_WORLD_SIZE")) {
    l.launcher = "mpirun";
    l.size = env_int("OMPI_COMM_WORLD_SIZE", 1);
    l.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    l.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
  } else if (std::getenv("PMIX_RANK") || std::getenv("PMI_SIZE")) {
    l.launcher = "mpirun";
    l.size = env_int("PMI_SIZE", 1);
    l.rank = env_int("PMIX_RANK", env_int("PMI_RANK", 0));
    l.local_rank = env_int("MPI_LOCALRANKID", 0);
  } else if (std::getenv("SLURM_NTASKS") && std::getenv("SLURM_PROCID")) {
    l.launcher = "slurm";
    l.size = env_int("SLURM_NTASKS", 1);
    l.rank = env_int("SLURM_PROCID", 0);
    l.local_rank = env_int("SLURM_LOCALID", 0);
  }
  return l;
}

Device rank_device(Device requested, const Communicator& comm, const std::string& what) {
  if (!requested.is_cuda() || comm.size() == 1) return requested;
  CM_CHECK(requested.index == 0, what, ": \"", requested.str(),
           "\" names one GPU, but in a job of ", comm.size(),
           " ranks each rank takes the GPU of its node-local rank: ask for \"cuda\"");
  const int local = comm.local_rank(), visible = cuda::device_count();
  CM_CHECK(local < visible, "rank ", comm.rank(), " is rank ", local, " on its node, which shows ",
           visible,
           " CUDA device(s): start at most one rank per GPU (mpirun -np, or "
           "CUDA_VISIBLE_DEVICES)");
  return Device::cuda(local);
}

Communicator& world() {
  static std::once_flag once;
  static std::unique_ptr<Communicator> comm;
  std::call_once(once, [] {
    const LaunchInfo l = launch_info();
    // CM_DIST_ENGINE=mpi: the MPI engine (and NCCL) even for a job of one, to test them alone
    const char* forced = std::getenv("CM_DIST_ENGINE");
    if (l.size <= 1 && forced && std::string(forced) == "mpi") {
      CM_CHECK(has_mpi(), "CM_DIST_ENGINE=mpi: this cm was built without MPI");
      comm = make_mpi_communicator();
      return;
    }
    if (l.size <= 1) {
      comm = make_local_communicator();
      return;
    }
    CM_CHECK(has_mpi(), "this cm was built without MPI, but ", l.launcher, " started it as rank ",
             l.rank, " of ", l.size,
             ": rebuild with -DCM_MPI=ON (Debian: libopenmpi-dev), or run it as a single process");
    comm = make_mpi_communicator();
  });
  return *comm;
}

}  // namespace cm::dist
