// The backend a build without CUDA has for CUDA devices: every kernel fails with its name, so a
// program that asks for the GPU learns exactly what it asked for and why it cannot have it.
#include "tensor/backend.h"

namespace cm {
namespace {

[[noreturn]] void no_cuda(const char* what) {
  CM_FAIL(what, ": no CUDA backend (cm was built without CUDA; reconfigure with -DCM_CUDA=ON)");
}

class NoCudaAllocator final : public Allocator {
 public:
  void* allocate(size_t) override { no_cuda("allocate"); }
  void deallocate(void*, size_t) override {}
  MemoryStats stats() const override { return {}; }
  void reset_peak() override {}
};

class NoCudaBackend final : public Backend {
 public:
  std::string name() const override { return "cuda (not built)"; }
  Allocator& allocator(int) override {
    static NoCudaAllocator a;
    return a;
  }
  void synchronize() override { no_cuda("synchronize"); }
  void copy(const Tensor&, const Tensor&) override { no_cuda("copy"); }
  void copy_between_devices(const Tensor&, const Tensor&) override {
    no_cuda("copy_between_devices");
  }
  void fill(const Tensor&, double) override { no_cuda("fill"); }
  void adam_step(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                 const AdamStep&) override {
    no_cuda("adam_step");
  }
  void unary(UnaryOp op, const Tensor&, const Tensor&, double, double) override {
    no_cuda(unary_op_name(op));
  }
  void binary(BinaryOp op, const Tensor&, const Tensor&, const Tensor&, double) override {
    no_cuda(binary_op_name(op));
  }
  void where(const Tensor&, const Tensor&, const Tensor&, const Tensor&) override {
    no_cuda("where");
  }
  void reduce(ReduceOp op, const Tensor&, const Tensor&) override { no_cuda(reduce_op_name(op)); }
  void arg_reduce(bool is_max, const Tensor&, int64_t, const Tensor&, const Tensor&) override {
    no_cuda(is_max ? "max" : "min");
  }
  void softmax(const Tensor&, int64_t, bool log, const Tensor&) override {
    no_cuda(log ? "log_softmax" : "softmax");
  }
  void softmax_backward(const Tensor&, const Tensor&, int64_t, bool, const Tensor&) override {
    no_cuda("softmax_backward");
  }
  void matmul(const Tensor&, const Tensor&, const Tensor&) override { no_cuda("matmul"); }
  void conv2d(const Tensor&, const Tensor&, const Conv2dParams&, const Tensor&) override {
    no_cuda("conv2d");
  }
  void conv2d_backward_input(const Tensor&, const Tensor&, const Conv2dParams&,
                             const Tensor&) override {
    no_cuda("conv2d_backward_input");
  }
  void conv2d_backward_weight(const Tensor&, const Tensor&, const Conv2dParams&,
                              const Tensor&) override {
    no_cuda("conv2d_backward_weight");
  }
  void group_norm(const Tensor&, const Tensor&, const Tensor&, int64_t, double, const Tensor&,
                  const Tensor&, const Tensor&) override {
    no_cuda("group_norm");
  }
  void group_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                           const Tensor&, int64_t, const Tensor&, const Tensor&,
                           const Tensor&) override {
    no_cuda("group_norm_backward");
  }
  void index_select(const Tensor&, int64_t, const Tensor&, const Tensor&) override {
    no_cuda("index_select");
  }
  void index_add(const Tensor&, int64_t, const Tensor&, const Tensor&) override {
    no_cuda("index_add");
  }
  void gather(const Tensor&, int64_t, const Tensor&, const Tensor&) override { no_cuda("gather"); }
  void scatter_add(const Tensor&, int64_t, const Tensor&, const Tensor&) override {
    no_cuda("scatter_add");
  }
  void random(RandomKind, const Tensor&, uint64_t, uint64_t, double, double) override {
    no_cuda("random");
  }
};

}  // namespace

Backend& cuda_backend() {
  static NoCudaBackend backend;
  return backend;
}

namespace cuda {
bool is_available() {
  return false;
}
int device_count() {
  return 0;
}
void* stream_handle(int) {
  CM_FAIL("cuda::stream_handle: this cm was built without CUDA");
}
}  // namespace cuda

}  // namespace cm
