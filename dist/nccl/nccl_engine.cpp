// NCCL collectives over CUDA tensors (see nccl_engine.h).
#include "dist/nccl/nccl_engine.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <string>

#include "autograd/ops.h"

namespace cm::dist {

bool nccl_enabled() {
  const char* e = std::getenv("CM_NCCL");
  return !(e && std::string(e) == "0");
}

namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    case DType::i32:
      return ncclInt32;
    case DType::i64:
      return ncclInt64;
    case DType::u8:
    case DType::b8:
      return ncclUint8;
    default:
      return ncclFloat32;  // f16, bf16: all_reduce converts them to f32 first
  }
}

class Nccl final : public NcclEngine {
 public:
  Nccl(int rank, int size, int device, const std::function<void(void*, int)>& bcast)
      : rank_(rank), size_(size), device_(device) {
    ncclUniqueId id;
    if (rank == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    bcast(&id, int(sizeof id));
    stream_ = static_cast<cudaStream_t>(cuda::stream_handle(device));
    check(ncclCommInitRank(&comm_, size, id, rank), "ncclCommInitRank");
  }
  ~Nccl() override {
    if (comm_) ncclCommDestroy(comm_);
  }

  void all_reduce(Tensor& t, ReduceOp op) override {
    on_my_device(t, "all_reduce");
    NoGradGuard ng;
    const bool wide = t.dtype() == DType::f16 || t.dtype() == DType::bf16;
    Tensor w = wide ? to(detach(t), DType::f32) : t;
    ncclRedOp_t r = ncclSum;
    if (op == ReduceOp::Max) r = ncclMax;
    if (op == ReduceOp::Min) r = ncclMin;
    if (op == ReduceOp::Average) r = ncclAvg;
    if (w.numel() > 0)
      check(ncclAllReduce(w.data_ptr(), w.data_ptr(), size_t(w.numel()), nccl_type(w.dtype()), r,
                          comm_, stream_),
            "ncclAllReduce");
    if (wide) copy_(t, w);
  }

  void broadcast(Tensor& t, int root) override {
    on_my_device(t, "broadcast");
    if (t.nbytes() > 0)
      check(ncclBroadcast(t.data_ptr(), t.data_ptr(), t.nbytes(), ncclUint8, root, comm_, stream_),
            "ncclBroadcast");
  }

  Tensor all_gather(const Tensor& t0) override {
    on_my_device(t0, "all_gather");
    NoGradGuard ng;
    const Tensor t = detach(t0).contiguous();
    Shape shape = t.shape();
    shape.insert(shape.begin(), size_);
    Tensor out = empty(shape, {.dtype = t.dtype(), .device = t.device()});
    if (t.nbytes() > 0)
      check(ncclAllGather(t.data_ptr(), out.data_ptr(), t.nbytes(), ncclUint8, comm_, stream_),
            "ncclAllGather");
    return out;
  }

 private:
  void check(ncclResult_t rc, const char* what) const {
    if (rc == ncclSuccess) return;
    CM_FAIL("dist (rank ", rank_, " of ", size_, ", NCCL on cuda:", device_, "): ", what,
            " failed: ", ncclGetErrorString(rc));
  }
  void on_my_device(const Tensor& t, const char* op) const {
    CM_CHECK(t.device().is_cuda() && t.device().index == device_, op, " (rank ", rank_,
             "): NCCL's communicator is on cuda:", device_, ", the tensor on ", t.device().str(),
             " (one GPU per rank)");
  }

  int rank_, size_, device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

std::unique_ptr<NcclEngine> make_nccl_engine(int rank, int size, int device,
                                             const std::function<void(void*, int)>& bcast) {
  return std::make_unique<Nccl>(rank, size, device, bcast);
}

}  // namespace cm::dist
