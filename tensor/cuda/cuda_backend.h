// The CUDA backend: kernels per family in this folder (elementwise.cu, reduce.cu, index.cu,
// random.cu, norm.cu, bias.cu), matrix products through cuBLAS (matmul.cpp), a caching allocator
// per device.
#pragma once

#include "tensor/backend.h"

namespace cm::cuda_impl {

class CudaBackend final : public Backend {
 public:
  std::string name() const override { return "cuda"; }
  Allocator& allocator(int device_index) override;
  void synchronize() override;

  void copy(const Tensor& src, const Tensor& dst) override;
  void copy_between_devices(const Tensor& src, const Tensor& dst) override;
  void fill(const Tensor& dst, double value) override;
  void adam_step(const Tensor& param, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                 const Tensor& grad, const AdamStep& s) override;
  void unary(UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out,
              double alpha) override;
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override;

  void reduce(ReduceOp op, const Tensor& x, const Tensor& out) override;
  void arg_reduce(bool is_max, const Tensor& x, int64_t dim, const Tensor& values,
                  const Tensor& indices) override;
  void softmax(const Tensor& x, int64_t dim, bool log, const Tensor& out) override;
  void softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim, bool log,
                        const Tensor& grad_in) override;

  void matmul(const Tensor& a, const Tensor& b, const Tensor& out) override;

  void conv2d(const Tensor& x, const Tensor& w, const Conv2dParams& p, const Tensor& out) override;
  void conv2d_backward_input(const Tensor& grad_out, const Tensor& w, const Conv2dParams& p,
                             const Tensor& grad_x) override;
  void conv2d_backward_weight(const Tensor& x, const Tensor& grad_out, const Conv2dParams& p,
                              const Tensor& grad_w) override;
  // norm.cu walks contiguous and channels-last activations alike
  bool group_norm_takes_channels_last() const override { return true; }
  // memory bounds the batch on a GPU; the recomputed passes are cheap next to the convolutions
  bool recompute_by_default() const override { return true; }
  void group_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups,
                  double eps, const Tensor& out, const Tensor& mean, const Tensor& rstd) override;
  void group_norm_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                           const Tensor& mean, const Tensor& rstd, int64_t groups,
                           const Tensor& grad_x, const Tensor& grad_w,
                           const Tensor& grad_b) override;
  // norm.cu: the fused forms, with the composite's bits (one pass fewer each way, no temporaries)
  void group_norm_silu(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups,
                       double eps, const Tensor& out, const Tensor& mean,
                       const Tensor& rstd) override;
  void group_norm_silu_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                                const Tensor& bias, const Tensor& mean, const Tensor& rstd,
                                int64_t groups, double eps, const Tensor& grad_x,
                                const Tensor& grad_w, const Tensor& grad_b) override;
  void group_norm_silu_shifted(const Tensor& x, const Tensor& shift, const Tensor& weight,
                               const Tensor& bias, int64_t groups, double eps, const Tensor& out,
                               const Tensor& mean, const Tensor& rstd) override;
  void group_norm_silu_shifted_backward(const Tensor& grad_out, const Tensor& x,
                                        const Tensor& shift, const Tensor& weight,
                                        const Tensor& bias, const Tensor& mean, const Tensor& rstd,
                                        int64_t groups, double eps, const Tensor& grad_x,
                                        const Tensor& grad_shift, const Tensor& grad_w,
                                        const Tensor& grad_b) override;
  // the apply kernel alone, on the stored statistics: the forward's second kernel, the same bits
  void group_norm_recompute(const Tensor& x, const Tensor& shift, const Tensor& weight,
                            const Tensor& bias, int64_t groups, double eps, bool silu,
                            const Tensor& mean, const Tensor& rstd, const Tensor& out) override;

  // bias.cu: the convolution's bias added by a per-channel kernel, its gradient summed per channel
  // by a deterministic two-stage kernel (the composites' generic broadcast add and reduction)
  void conv2d_bias(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p,
                   const Tensor& out) override;
  void conv2d_backward_weight_bias(const Tensor& x, const Tensor& grad_out, const Conv2dParams& p,
                                   const Tensor& grad_w, const Tensor& grad_b) override;

  // attention.cu: FlashAttention-2 on the tensor cores for f16/bf16, head sizes multiples of 16
  // up to 256. Not the default for `auto` until it has run on a card (tests/test_attention.cpp,
  // tests/test_cuda_nn.cpp in tools/gpu_device_run.sh): networks opt in with attention "fused".
  bool fused_attention_supports(DType dtype, int64_t d, int64_t dv) const override;
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, const Tensor& out,
                 const Tensor& lse) override;
  void attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, double scale, const Tensor& grad_q,
                          const Tensor& grad_k, const Tensor& grad_v) override;

  void index_select(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) override;
  void index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override;
  void gather(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) override;
  void scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override;

  void random(RandomKind kind, const Tensor& out, uint64_t seed, uint64_t first_block, double a,
              double b) override;
  // random.cu: draw, scale and multiply in one kernel, the composite's bits
  void dropout(const Tensor& x, double keep, double scale, uint64_t seed, uint64_t first_block,
               const Tensor& out, const Tensor& mask) override;
};

}  // namespace cm::cuda_impl
