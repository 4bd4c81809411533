// The CPU backend: parallel loops (loops.h) with a contiguous fast path, BLAS for matrix products.
// Each family of kernels has its own file in this folder (elementwise, reduce, matmul, index,
// random); this class only gathers them behind the Backend interface.
#pragma once

#include "tensor/backend.h"

namespace cm::cpu {

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  Allocator& allocator(int device_index) override;
  void synchronize() override {}

  void copy(const Tensor& src, const Tensor& dst) override;
  void copy_between_devices(const Tensor& src, const Tensor& dst) override;
  void fill(const Tensor& dst, double value) override;
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
  void conv2d_bias(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p,
                   const Tensor& out) override;
  void conv2d_backward_weight_bias(const Tensor& x, const Tensor& grad_out, const Conv2dParams& p,
                                   const Tensor& grad_w, const Tensor& grad_b) override;
  bool group_norm_takes_channels_last() const override { return true; }
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
  // channels-last where oneDNN runs the convolutions (conv_onednn.h), else contiguous
  MemoryFormat preferred_conv_format() const override;
  void group_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups,
                  double eps, const Tensor& out, const Tensor& mean, const Tensor& rstd) override;
  void group_norm_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                           const Tensor& mean, const Tensor& rstd, int64_t groups,
                           const Tensor& grad_x, const Tensor& grad_w,
                           const Tensor& grad_b) override;

  // attention.cpp: FlashAttention-2's tiling over OpenBLAS products, every floating dtype
  bool fused_attention_supports(DType dtype, int64_t d, int64_t dv) const override;
  bool fused_attention_by_default() const override { return true; }
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, const Tensor& out,
                 const Tensor& lse) override;
  void attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, double scale, const Tensor& grad_q,
                          const Tensor& grad_k, const Tensor& grad_v) override;

  void adam_step(const Tensor& param, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                 const Tensor& grad, const AdamStep& s) override;

  void index_select(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) override;
  void index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override;
  void gather(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) override;
  void scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override;

  void random(RandomKind kind, const Tensor& out, uint64_t seed, uint64_t first_block, double a,
              double b) override;
  void dropout(const Tensor& x, double keep, double scale, uint64_t seed, uint64_t first_block,
               const Tensor& out, const Tensor& mask) override;
};

CpuBackend& cpu_backend();

}  // namespace cm::cpu
