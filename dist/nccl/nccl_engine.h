// NCCL, the GPU engine of the MPI communicator (dist/mpi/mpi_communicator.cpp): collectives over
// CUDA tensors run by NCCL with no staging through host memory, on a communication stream of the
// engine's own: each collective starts after the work queued so far on cm's stream of the device,
// and what is queued there after it waits for it (for all_reduce at once, for all_reduce_async at
// its wait()), so communication overlaps computation and the host never blocks. The NCCL
// communicator is made at the first GPU collective, from an id rank 0 draws (ncclGetUniqueId) and
// the job's MPI broadcasts; it stays bound to that device. Built with -DCM_NCCL=ON|AUTO in a build
// with CUDA and MPI (NCCL 2 from the CUDA Toolkit); without it (dist/nccl/no_nccl.cpp)
// nccl_enabled() is false and GPU tensors are staged through the host. CM_NCCL=0 in the environment
// stages them even where NCCL is built (to compare the two).
#pragma once

#include <functional>
#include <memory>

#include "dist/communicator.h"

namespace cm::dist {

class NcclEngine {
 public:
  virtual ~NcclEngine() = default;
  // In place, every rank passing the same shape and dtype (the caller checked): f32, f64, f16
  // and bf16 (the 16-bit ones reduced in f32, as the MPI engine), i32, i64.
  virtual void all_reduce(Tensor& t, ReduceOp op) = 0;
  virtual std::unique_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op) = 0;
  virtual void broadcast(Tensor& t, int root) = 0;
  virtual Tensor all_gather(const Tensor& t) = 0;
};

// Whether this build has NCCL and the environment does not turn it off (CM_NCCL=0).
bool nccl_enabled();

// The engine for a job of `size` ranks on CUDA device `device`; broadcast_from_root sends rank 0's
// bytes to every rank (the job's MPI_Bcast), for the NCCL id.
std::unique_ptr<NcclEngine> make_nccl_engine(
    int rank, int size, int device,
    const std::function<void(void* data, int bytes)>& broadcast_from_root);

}  // namespace cm::dist
