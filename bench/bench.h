// Shared by the benchmark sources: the command-line options and the CUDA entry point.
#pragma once

#include <string>

struct BenchArgs {
  bool quick = false;  // smaller sizes, fewer repeats
  std::string filter;  // run only cases whose name contains this
  std::string device = "cpu";
};

// The GPU cases (bench_cuda.cpp); false where cm was built without CUDA or no device is present.
bool bench_cuda(const BenchArgs& args);

#include <cstdio>
#include <vector>

#include "autograd/ops.h"
#include "tensor/storage.h"

// Attention forward + backward on the shapes of the benchmark networks' attention layers, the
// fused kernel (Backend::attention) beside the composite (matmul, softmax, matmul), one JSON line
// per shape: both times (ms_of: the median ms of a callable, with the device's synchronisation),
// their ratio and both peaks from the caching allocator. `shapes`: {name, B·heads, L, head size}.
struct AttentionShape {
  const char* name;
  int64_t bh, length, head;
};
template <class Timer>
void bench_attention(const BenchArgs& args, cm::Device dev, cm::DType dt,
                     const std::vector<AttentionShape>& shapes, Timer&& ms_of) {
  for (const AttentionShape& s : shapes) {
    const std::string name = std::string("attention ") + cm::dtype_name(dt) + " " + s.name;
    if (!args.filter.empty() && name.find(args.filter) == std::string::npos) continue;
    const cm::TensorOptions o{.dtype = dt, .device = dev};
    cm::Tensor q = cm::randn({s.bh, s.length, s.head}, o),
               k = cm::randn({s.bh, s.length, s.head}, o),
               v = cm::randn({s.bh, s.length, s.head}, o),
               dy = cm::randn({s.bh, s.length, s.head}, o);
    for (cm::Tensor* t : {&q, &k, &v}) t->set_requires_grad(true);
    double ms[2], peak[2];
    const cm::AttentionKernel kernels[2] = {cm::AttentionKernel::Fused,
                                            cm::AttentionKernel::Composite};
    for (int i = 0; i < 2; ++i) {
      const cm::AttentionKernelGuard g(kernels[i]);
      const auto step = [&] {
        cm::scaled_dot_product_attention(q, k, v).backward(dy);
        for (cm::Tensor* t : {&q, &k, &v}) t->zero_grad();
      };
      ms[i] = ms_of(step, args.quick ? 3 : 7);
      cm::Allocator& a = cm::allocator_for(dev);
      cm::backend_for(dev).synchronize();
      a.reset_peak();
      const double before = double(a.stats().allocated);
      step();
      cm::backend_for(dev).synchronize();
      peak[i] = double(a.stats().peak_allocated) - before;
    }
    const bool fused = cm::backend_for(dev).fused_attention_supports(dt, s.head, s.head);
    std::printf(
        "{\"bench\":\"ops\",\"case\":\"%s [%lld, %lld, %lld] forward+backward\",\"device\":\"%s\","
        "\"ms\":%.4f,\"peak_bytes\":%.0f,\"fused\":%s,\"baseline\":\"composite\","
        "\"baseline_ms\":%.4f,\"baseline_peak_bytes\":%.0f,\"ratio\":%.3f}\n",
        name.c_str(), (long long)s.bh, (long long)s.length, (long long)s.head, dev.str().c_str(),
        ms[0], peak[0], fused ? "true" : "false", ms[1], peak[1], ms[1] / ms[0]);
    std::fflush(stdout);
  }
}
