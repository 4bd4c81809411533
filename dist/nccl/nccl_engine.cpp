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
    compute_ = static_cast<cudaStream_t>(cuda::stream_handle(device));
    const DeviceGuard on(device_);
    cuda_check(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking),
               "cudaStreamCreateWithFlags");
    cuda_check(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate");
    check(ncclCommInitRank(&comm_, size, id, rank), "ncclCommInitRank");
  }
  ~Nccl() override {
    const DeviceGuard on(device_);
    if (comm_stream_) cudaStreamSynchronize(comm_stream_);
    if (comm_) ncclCommDestroy(comm_);
    if (ready_) cudaEventDestroy(ready_);
    if (comm_stream_) cudaStreamDestroy(comm_stream_);
  }

  void all_reduce(Tensor& t, ReduceOp op) override { all_reduce_async(t, op)->wait(); }

  std::unique_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op) override {
    on_my_device(t, "all_reduce");
    NoGradGuard ng;
    const bool wide = t.dtype() == DType::f16 || t.dtype() == DType::bf16;
    Tensor w = wide ? to(detach(t), DType::f32) : t;
    ncclRedOp_t r = ncclSum;
    if (op == ReduceOp::Max) r = ncclMax;
    if (op == ReduceOp::Min) r = ncclMin;
    if (op == ReduceOp::Average) r = ncclAvg;
    return enqueue(
        [&] {
          if (w.numel() > 0)
            check(ncclAllReduce(w.data_ptr(), w.data_ptr(), size_t(w.numel()), nccl_type(w.dtype()),
                                r, comm_, comm_stream_),
                  "ncclAllReduce");
        },
        wide ? t : Tensor(), w);
  }

  void broadcast(Tensor& t, int root) override {
    on_my_device(t, "broadcast");
    enqueue([&] {
      if (t.nbytes() > 0)
        check(ncclBroadcast(t.data_ptr(), t.data_ptr(), t.nbytes(), ncclUint8, root, comm_,
                            comm_stream_),
              "ncclBroadcast");
    })->wait();
  }

  Tensor all_gather(const Tensor& t0) override {
    on_my_device(t0, "all_gather");
    NoGradGuard ng;
    const Tensor t = detach(t0).contiguous();
    Shape shape = t.shape();
    shape.insert(shape.begin(), size_);
    Tensor out = empty(shape, {.dtype = t.dtype(), .device = t.device()});
    enqueue([&] {
      if (t.nbytes() > 0)
        check(
            ncclAllGather(t.data_ptr(), out.data_ptr(), t.nbytes(), ncclUint8, comm_, comm_stream_),
            "ncclAllGather");
    })->wait();
    return out;
  }

 private:
  // A collective queued on the communication stream: wait() makes cm's stream wait for it (and
  // copies a 16-bit tensor's f32 result back, queued after that); the host never blocks.
  class NcclWork final : public Work {
   public:
    NcclWork(Nccl& e, cudaEvent_t done, Tensor narrow, Tensor wide)
        : e_(e), done_(done), narrow_(std::move(narrow)), wide_(std::move(wide)) {}
    ~NcclWork() override {
      if (done_) {
        try {
          wait();
        } catch (...) {
        }
      }
    }
    void wait() override {
      if (!done_) return;
      const DeviceGuard on(e_.device_);
      e_.cuda_check(cudaStreamWaitEvent(e_.compute_, done_, 0), "cudaStreamWaitEvent");
      cudaEventDestroy(done_);
      done_ = nullptr;
      if (narrow_.defined()) copy_(narrow_, wide_);
      narrow_ = wide_ = Tensor();
    }
    bool test() override {
      if (!done_) return true;
      const cudaError_t rc = cudaEventQuery(done_);
      if (rc == cudaErrorNotReady) return false;
      e_.cuda_check(rc, "cudaEventQuery");
      return true;
    }

   private:
    Nccl& e_;
    cudaEvent_t done_;
    Tensor narrow_, wide_;  // a 16-bit tensor and its f32 copy that NCCL reduced
  };

  // Makes the current device `d` for a scope (the engine's calls run on its GPU).
  struct DeviceGuard {
    explicit DeviceGuard(int d) {
      cudaGetDevice(&prev);
      if (prev != d) cudaSetDevice(d);
      set = prev != d;
    }
    ~DeviceGuard() {
      if (set) cudaSetDevice(prev);
    }
    int prev = 0;
    bool set = false;
  };

  // Queues `call` (NCCL calls on comm_stream_) after what is queued on cm's stream so far, and
  // returns the Work whose wait() makes cm's stream wait for it (then copies wide into narrow,
  // where given).
  template <class F>
  std::unique_ptr<Work> enqueue(F call, Tensor narrow = {}, Tensor wide = {}) {
    const DeviceGuard on(device_);
    cuda_check(cudaEventRecord(ready_, compute_), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(comm_stream_, ready_, 0), "cudaStreamWaitEvent");
    call();
    cudaEvent_t done = nullptr;
    cuda_check(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
    cuda_check(cudaEventRecord(done, comm_stream_), "cudaEventRecord");
    return std::make_unique<NcclWork>(*this, done, std::move(narrow), std::move(wide));
  }
  void cuda_check(cudaError_t rc, const char* what) const {
    if (rc == cudaSuccess) return;
    CM_FAIL("dist (rank ", rank_, " of ", size_, ", NCCL on cuda:", device_, "): ", what,
            " failed: ", cudaGetErrorString(rc));
  }
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
  cudaStream_t compute_ = nullptr;      // cm's stream of the device
  cudaStream_t comm_stream_ = nullptr;  // the engine's: every NCCL call, in the order issued
  cudaEvent_t ready_ = nullptr;         // recorded on compute_ before each collective
};

}  // namespace

std::unique_ptr<NcclEngine> make_nccl_engine(int rank, int size, int device,
                                             const std::function<void(void*, int)>& bcast) {
  return std::make_unique<Nccl>(rank, size, device, bcast);
}

}  // namespace cm::dist
