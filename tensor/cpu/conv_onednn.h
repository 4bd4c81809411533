// The oneDNN backend of the CPU convolutions (internal to tensor/cpu/; conv.cpp dispatches to it).
//
// cm's own convolution (conv.cpp: im2col + OpenBLAS sgemm, per sample chunk) is the reference; for
// f32 convolutions with a spatial kernel oneDNN's channels-last kernels (brgconv / jit avx512_core,
// avx2 on older machines) are 1.5× faster over a CT step (docs/cpu-speed.md has the measurements
// and the choice). oneDNN picks the widest vector unit of the machine itself, whatever
// OPENBLAS_CORETYPE tells OpenBLAS.
//
// Layouts: the primitives always run on NHWC activations (oneDNN's blocked weight layout inside).
// An operand that is NHWC-dense in memory (channels fastest, see is_channels_last) is used in
// place, an NCHW-contiguous one is reordered into an NHWC buffer first (and an NCHW output is
// reordered back), so the result is the same whichever layout the tensors have: reorders are exact
// copies. A channels-last network therefore pays no conversion at all.
//
// Numerics: f32 with FMA in oneDNN's blocking order, so results differ from conv.cpp's in the last
// bits; forward and backward-data compute each output element on one thread in a fixed order;
// backward-weights reduces over the batch in per-thread partial sums, so it is deterministic for a
// fixed thread count (as resume needs) but may change in the last bits with the thread count.
//
// Selection (uses_onednn): built with oneDNN (CMake CM_ONEDNN), f32 compute, more than one input
// channel (grouped and depthwise convolutions included: the resampling filters of the U-Nets), a
// kernel larger than 1×1 (1×1 convolutions go to oneDNN only when the operands are already
// channels-last: their im2col is free), not inside a parallel item, an implementation other than
// oneDNN's reference loops available for the shape, and CM_CONV not set to "im2col" (which forces
// conv.cpp's path, to compare or bisect).
//
// CM_CONV=winograd (opt-in) runs the 3×3 stride-1 convolutions with oneDNN's Winograd F(4×4, 3×3)
// kernels on its blocked layout: 1.4× faster over a CT step's convolutions on an AVX-512 machine
// (docs/cpu-speed.md), at the cost of f32 accuracy (the transforms lose a few bits more than a
// direct sum: still within the f32 tests' 2e-5 of the largest value, but not a different
// rounding of the same sum), so it is never the default.
#pragma once

#include <string>

#include "tensor/backend.h"
#include "tensor/tensor.h"

namespace cm::cpu::onednn {

// Whether oneDNN is built in, and whether its path may run now: on by default, off when CM_CONV is
// "im2col" at start-up; set_enabled(false) forces conv.cpp's path (tests and benchmarks that
// compare the two; not meant to be flipped while convolutions run on other threads).
bool available();
bool enabled();
void set_enabled(bool on);

enum class ConvPass { Forward, BackwardInput, BackwardWeight };

// The geometry in conv2d's terms whatever the pass: x [N, C, H, W], w [Co, C, kh, kw],
// y [N, Co, Ho, Wo].
struct ConvShape {
  int64_t N, C, H, W, Co, kh, kw, Ho, Wo;
  Conv2dParams p;
};

// True when the pass runs on oneDNN (see the selection rules above). a, b, out are the pass's
// operands as CpuBackend receives them (forward: x, w, y; backward-input: gy, w, gx;
// backward-weight: x, gy, gw), all f32. fused_bias: the call will pass run() a bias (forward) or
// a bias gradient (backward-weight), whose primitive is a different one.
bool uses_onednn(ConvPass pass, const ConvShape& s, const Tensor& a, const Tensor& b,
                 const Tensor& out, bool fused_bias = false);

// Runs the pass (after uses_onednn said yes): out = pass(a, b), out overwritten. `bias` (forward
// only) is added in the kernel's epilogue; `grad_bias` (backward-weight only) receives Σ_{n,h,w} of
// the output gradient from the same pass. Both [Co] f32 contiguous, or undefined.
void run(ConvPass pass, const ConvShape& s, const Tensor& a, const Tensor& b, const Tensor& out,
         const Tensor& bias = {}, const Tensor& grad_bias = {});

// "onednn 2.6.3 (avx512_core)" or "im2col+openblas": what runs the f32 3×3 convolutions, for
// cm bench's report.
std::string conv_backend_name();

}  // namespace cm::cpu::onednn
