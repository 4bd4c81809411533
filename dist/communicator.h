// Communication between the processes of a job (data-parallel training, evaluation across ranks):
// a Communicator with the job's size, this process's rank and its rank on its node, and the
// collectives over tensors (in place, every rank passing the same shape and dtype).
//
// Engines: the local one (a job of one process, always built: every collective is the identity)
// and MPI (dist/mpi/, built with -DCM_MPI=ON|AUTO where an MPI is found, CPU tensors; a build
// without it compiles dist/mpi/no_mpi.cpp, whose world() refuses a job of several ranks with a
// clear message). Launchers: `mpirun -np K cm ...`, or SLURM's `srun` (through its PMI); a plain
// `cm ...` is a job of one and needs no MPI at run time.
//
// Determinism: the local engine is exact; MPI's all-reduce sums in an order fixed by the
// implementation for a given world size (the same every step), so two runs of one job agree bit for
// bit, and a K-rank sum agrees with a single process's up to float reduction order.
#pragma once

#include <memory>
#include <string>

#include "tensor/tensor.h"

namespace cm::dist {

enum class ReduceOp { Sum, Average, Max, Min };

// A collective in flight (Communicator::all_reduce_async). wait() returns once the result is the
// tensor's for whatever is queued after it: on the CPU the data is there; on a GPU cm's stream of
// the device waits for the communication stream (the host does not). test() lets the engine make
// progress without blocking (MPI progresses inside its calls) and says whether it has finished.
// Dropping an unfinished Work waits for it.
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
  virtual bool test() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;            // 0 .. size() − 1
  virtual int size() const = 0;            // processes in the job
  virtual int local_rank() const = 0;      // rank among the job's processes on this machine
  virtual std::string engine() const = 0;  // "local", "mpi"

  // t ← the reduction of every rank's t, on every rank. t: contiguous, f32, f64, f16, bf16 (reduced
  // in f32), i32 or i64 (Average: floating dtypes only). Shapes and dtypes that differ between
  // ranks are an error on every rank, naming the ranks' values.
  virtual void all_reduce(Tensor& t, ReduceOp op) = 0;
  // all_reduce started now and finished by the Work's wait(), so that computation can go on
  // meanwhile (the data-parallel reducer's buckets, dist/reducer.h). t must not be read or written
  // until then. Unlike all_reduce it does not check that the ranks passed the same shape and
  // dtype (that check is a collective of its own): the caller makes sure, once, that they do.
  // Engines without an asynchronous path for t (the local one, GPU tensors staged through the
  // host, 16-bit dtypes on MPI) reduce it at once and return a finished Work.
  virtual std::unique_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op);
  // t ← root's t, on every rank (any dtype; contiguous).
  virtual void broadcast(Tensor& t, int root) = 0;
  // The ranks' t concatenated along a new leading dim in rank order: [size(), ...t.shape()].
  virtual Tensor all_gather(const Tensor& t) = 0;
  virtual void barrier() = 0;
  // Ends the whole job now with `code` (MPI_Abort), so that a rank that fails never leaves the
  // others waiting in a collective; the local engine exits the process.
  [[noreturn]] virtual void abort_job(int code) = 0;
};

// A Work that has already finished.
std::unique_ptr<Work> finished_work();

// The job of one process.
std::unique_ptr<Communicator> make_local_communicator();

// The communicator of this process's job, made at first use: MPI when this build has it and the
// process was started by mpirun or srun, the local one otherwise. A build without MPI started as
// one rank of several is an error saying so (never K copies of a single-process run).
Communicator& world();

// The job's size and this process's rank as the launcher's environment tells them (OpenMPI's
// OMPI_COMM_WORLD_*, PMI_*/PMIX_*, SLURM_*), without initialising anything; {0, 1} outside a job.
struct LaunchInfo {
  int rank = 0, size = 1, local_rank = 0;
  std::string launcher;  // "", "mpirun", "slurm"
};
LaunchInfo launch_info();

// Whether this build has MPI.
bool has_mpi();

// The device a rank works on: `requested` in a job of one; in a job of several, a CUDA request
// ("cuda", index 0) becomes the GPU of the rank's node-local rank (one GPU per rank; which GPUs a
// node shows is CUDA_VISIBLE_DEVICES's business). `what` names the setting in errors ("/device",
// "--device"): a GPU index asked for by a job of several, or more ranks on a node than it shows
// GPUs, are errors.
Device rank_device(Device requested, const Communicator& comm, const std::string& what);

}  // namespace cm::dist
