// Op benchmarks: one JSON line per case. Matrix products are measured in GFLOP/s beside the BLAS
// call alone on the same operands; elementwise ops and reductions in GB/s (bytes read + written)
// beside a plain memcpy of the same number of bytes. Times are medians over repeated runs after a
// warm-up. Attention: the fused kernel beside the composite, forward and backward.
//   cm_bench_ops [--device cpu|cuda] [--quick] [--filter SUBSTRING]
// The CUDA cases (bench_cuda.cpp, built with CUDA) compare against cuBLAS alone and a
// device-to-device copy.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "bench/bench.h"
#include "tensor/cpu/blas.h"

namespace {

using Clock = std::chrono::steady_clock;

// Median milliseconds of `reps` runs of f after `warmup` runs.
double median_ms(const std::function<void()>& f, int reps, int warmup = 2) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto t0 = Clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

using Args = BenchArgs;

bool selected(const Args& a, const std::string& name) {
  return a.filter.empty() || name.find(a.filter) != std::string::npos;
}

void bench_matmul(const Args& args) {
  const std::vector<int64_t> sizes =
      args.quick ? std::vector<int64_t>{256} : std::vector<int64_t>{128, 256, 512, 1024};
  for (int64_t n : sizes) {
    const std::string name =
        "matmul f32 " + std::to_string(n) + "x" + std::to_string(n) + "x" + std::to_string(n);
    if (!selected(args, name)) continue;
    cm::Tensor a = cm::randn({n, n}), b = cm::randn({n, n});
    cm::Tensor c = cm::empty({n, n});
    const int reps = n >= 1024 ? 5 : 11;
    const double ms = median_ms([&] { cm::matmul(a, b); }, reps);
    const float* ap = a.data<float>();
    const float* bp = b.data<float>();
    float* cp = c.data<float>();
    const double blas_ms = median_ms(
        [&] { cm::cpu::blas::sgemm(false, false, n, n, n, 1.0f, ap, n, bp, n, 0.0f, cp, n); },
        reps);
    const double flop = 2.0 * double(n) * double(n) * double(n);
    std::printf(
        "{\"bench\":\"ops\",\"case\":\"%s\",\"device\":\"cpu\",\"ms\":%.4f,\"gflops\":%.2f,"
        "\"baseline\":\"sgemm\",\"baseline_ms\":%.4f,\"baseline_gflops\":%.2f,\"ratio\":%.3f}"
        "\n",
        name.c_str(), ms, flop / ms / 1e6, blas_ms, flop / blas_ms / 1e6, blas_ms / ms);
  }
}

// GB/s of an op moving `bytes`, beside memcpy of the same number of bytes.
void report_bandwidth(const std::string& name, double ms, double bytes) {
  static std::vector<char> src, dst;
  src.assign(size_t(bytes / 2), 1);
  dst.assign(size_t(bytes / 2), 0);
  // memcpy of N bytes reads N and writes N: copy bytes/2 so that it moves `bytes` in all.
  const double copy_ms = median_ms([&] { std::memcpy(dst.data(), src.data(), src.size()); }, 11);
  std::printf(
      "{\"bench\":\"ops\",\"case\":\"%s\",\"device\":\"cpu\",\"ms\":%.4f,\"gbps\":%.2f,"
      "\"baseline\":\"memcpy\",\"baseline_ms\":%.4f,\"baseline_gbps\":%.2f,\"ratio\":%.3f}\n",
      name.c_str(), ms, bytes / ms / 1e6, copy_ms, bytes / copy_ms / 1e6, copy_ms / ms);
}

void bench_elementwise(const Args& args) {
  const int64_t n = args.quick ? (1 << 20) : (1 << 24);
  const double fb = 4.0 * double(n);  // bytes of one f32 tensor
  cm::Tensor a = cm::randn({n}), b = cm::randn({n});
  struct Case {
    std::string name;
    std::function<void()> run;
    double bytes;
  };
  std::vector<Case> cases = {
      {"add f32 contiguous", [&] { cm::add(a, b); }, 3 * fb},
      {"mul_scalar f32", [&] { cm::mul(a, 2.0); }, 2 * fb},
      {"exp f32", [&] { cm::exp(a); }, 2 * fb},
      {"silu f32", [&] { cm::silu(a); }, 2 * fb},
      {"add_ f32 in place",
       [&] {
         cm::NoGradGuard g;
         cm::add_(a, b, 1e-9);
       },
       3 * fb},
      {"copy f32->bf16", [&] { cm::to(a, cm::DType::bf16); }, 1.5 * fb},
  };
  const int64_t r = 4096, c = n / 4096;
  cm::Tensor m = cm::randn({r, c}), row = cm::randn({c});
  cases.push_back({"add f32 broadcast row", [&] { cm::add(m, row); }, 2 * fb});
  cases.push_back(
      {"add f32 transposed", [&] { cm::add(m.transpose(0, 1), m.transpose(0, 1)); }, 3 * fb});
  cases.push_back({"sum f32 all", [&] { cm::sum(a); }, fb});
  cases.push_back({"sum f32 last dim", [&] { cm::sum(m, {1}); }, fb});
  cases.push_back({"sum f32 first dim", [&] { cm::sum(m, {0}); }, fb});
  cases.push_back({"softmax f32 last dim", [&] { cm::softmax(m, 1); }, 2 * fb});
  // The U-Net's activation ops on a channels-last [N, 128, 16, 16] batch of n elements: the
  // minimal traffic is one read and one write forward, reads of x and dy and a write of dx
  // backward.
  const cm::Tensor act =
      cm::to_memory_format(cm::randn({n / 32768, 128, 16, 16}), cm::MemoryFormat::ChannelsLast);
  const cm::Tensor gn_w = cm::randn({128}), gn_b = cm::randn({128});
  cm::Tensor act_leaf = cm::detach(act);
  act_leaf.set_requires_grad(true);
  const cm::Tensor act_grad =
      cm::to_memory_format(cm::randn(act.shape()), cm::MemoryFormat::ChannelsLast);
  cases.push_back({"group_norm_silu f32 channels-last",
                   [&] {
                     cm::NoGradGuard g;
                     cm::group_norm_silu(act, 32, gn_w, gn_b, 1e-6);
                   },
                   2 * fb});
  cases.push_back({"group_norm_silu f32 channels-last forward+backward",
                   [&] { cm::group_norm_silu(act_leaf, 32, gn_w, gn_b, 1e-6).backward(act_grad); },
                   5 * fb});
  cm::Generator drop_gen(1);
  cases.push_back({"dropout f32 channels-last forward+backward",
                   [&] { cm::dropout(act_leaf, 0.1, true, drop_gen).backward(act_grad); }, 5 * fb});
  for (const Case& k : cases) {
    if (!selected(args, k.name)) continue;
    report_bandwidth(k.name + " n=" + std::to_string(n), median_ms(k.run, args.quick ? 5 : 11),
                     k.bytes);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (s == "--quick")
      args.quick = true;
    else if (s == "--filter" && i + 1 < argc)
      args.filter = argv[++i];
    else if (s == "--device" && i + 1 < argc)
      args.device = argv[++i];
    else {
      std::fprintf(stderr,
                   "cm_bench_ops: unknown argument '%s'\nusage: cm_bench_ops [--device cpu|cuda] "
                   "[--quick] [--filter S]\n",
                   s.c_str());
      return 2;
    }
  }
  try {
    if (args.device == "cuda") {
      if (!bench_cuda(args)) {
        std::fprintf(stderr, "cm_bench_ops: no CUDA device (or cm was built without CUDA)\n");
        return 1;
      }
      return 0;
    }
    if (args.device != "cpu") {
      std::fprintf(stderr, "cm_bench_ops: --device must be cpu or cuda, got '%s'\n",
                   args.device.c_str());
      return 2;
    }
    bench_matmul(args);
    bench_elementwise(args);
    // ddpmpp's 16×16 layer (one 256-channel head) at batch 8, ADM-64's 32×32 (six 64-channel
    // heads) at batch 2
    bench_attention(args, cm::Device::cpu(), cm::DType::f32,
                    {{"ddpmpp-cifar10 16x16", 8, 256, 256}, {"adm-imagenet64 32x32", 12, 1024, 64}},
                    [](const std::function<void()>& f, int reps) { return median_ms(f, reps); });
  } catch (const cm::Error& e) {
    std::fprintf(stderr, "cm_bench_ops: %s\n", e.what());
    return 1;
  }
  return 0;
}
