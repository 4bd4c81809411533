// GPU cases of cm_bench_ops: matrix products in TFLOP/s beside cuBLAS alone on the same operands
// (f32, TF32, bf16), elementwise ops and reductions in GB/s beside a device-to-device copy of the
// same bytes, the caching allocator beside cudaMalloc/cudaFree, and fused attention beside the
// composite.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "bench/bench.h"

namespace {

const cm::Device kGpu = cm::Device::cuda(0);

// Median ms of reps runs, each bracketed by a whole-device synchronisation: cm's ops run on its
// own non-blocking stream and the baselines on the legacy default stream, and a stream
// synchronisation would not wait for the other stream's work.
double gpu_ms(const std::function<void()>& f, int reps) {
  for (int i = 0; i < 3; ++i) f();
  cudaDeviceSynchronize();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    cudaDeviceSynchronize();
    t.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

bool selected(const BenchArgs& a, const std::string& name) {
  return a.filter.empty() || name.find(a.filter) != std::string::npos;
}

void bench_matmul(const BenchArgs& args) {
  cublasHandle_t h;
  cublasCreate(&h);
  const std::vector<int64_t> sizes =
      args.quick ? std::vector<int64_t>{1024} : std::vector<int64_t>{1024, 2048, 4096, 8192};
  struct Prec {
    const char* name;
    cm::DType dtype;
    bool tf32;
    cudaDataType_t type;
    cublasComputeType_t compute;
  };
  const Prec precs[] = {{"f32", cm::DType::f32, false, CUDA_R_32F, CUBLAS_COMPUTE_32F},
                        {"tf32", cm::DType::f32, true, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32},
                        {"bf16", cm::DType::bf16, false, CUDA_R_16BF, CUBLAS_COMPUTE_32F}};
  for (const Prec& p : precs) {
    for (int64_t n : sizes) {
      const std::string name = std::string("matmul ") + p.name + " " + std::to_string(n) + "^3";
      if (!selected(args, name)) continue;
      cm::Tensor a = cm::randn({n, n}, {.dtype = p.dtype, .device = kGpu});
      cm::Tensor b = cm::randn({n, n}, {.dtype = p.dtype, .device = kGpu});
      cm::Tensor c = cm::empty({n, n}, {.dtype = p.dtype, .device = kGpu});
      cm::set_matmul_tf32(p.tf32);
      const double ms = gpu_ms([&] { cm::matmul(a, b); }, 10);
      cm::set_matmul_tf32(false);
      const float one = 1, zero = 0;
      cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
      const double base = gpu_ms(
          [&] {
            status = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, int(n), int(n), int(n), &one,
                                  b.data_ptr(), p.type, int(n), a.data_ptr(), p.type, int(n), &zero,
                                  c.data_ptr(), p.type, int(n), p.compute, CUBLAS_GEMM_DEFAULT);
          },
          10);
      if (status != CUBLAS_STATUS_SUCCESS) {
        std::fprintf(stderr, "cm_bench_ops: cublasGemmEx failed for %s (status %d)\n", name.c_str(),
                     int(status));
        continue;
      }
      const double flop = 2.0 * double(n) * double(n) * double(n);
      std::printf(
          "{\"bench\":\"ops\",\"case\":\"%s\",\"device\":\"cuda\",\"ms\":%.4f,\"tflops\":%.2f,"
          "\"baseline\":\"cublasGemmEx\","
          "\"baseline_ms\":%.4f,\"baseline_tflops\":%.2f,\"ratio\":%.3f}\n",
          name.c_str(), ms, flop / ms / 1e9, base, flop / base / 1e9, base / ms);
    }
  }
  cublasDestroy(h);
}

void bench_bandwidth(const BenchArgs& args) {
  const int64_t n = args.quick ? (1 << 24) : (1 << 27);
  const double fb = 4.0 * double(n);
  cm::Tensor a = cm::randn({n}, {.device = kGpu}), b = cm::randn({n}, {.device = kGpu});
  cm::Tensor dst = cm::empty({n}, {.device = kGpu});
  const int64_t r = 8192, c = n / 8192;
  cm::Tensor m = cm::randn({r, c}, {.device = kGpu});
  struct Case {
    std::string name;
    std::function<void()> run;
    double bytes;
  };
  const std::vector<Case> cases = {
      {"add f32", [&] { cm::add(a, b); }, 3 * fb},
      {"mul_scalar f32", [&] { cm::mul(a, 2.0); }, 2 * fb},
      {"silu f32", [&] { cm::silu(a); }, 2 * fb},
      {"add_ f32 in place",
       [&] {
         cm::NoGradGuard g;
         cm::add_(a, b, 1e-9);
       },
       3 * fb},
      {"copy f32->bf16", [&] { cm::to(a, cm::DType::bf16); }, 1.5 * fb},
      {"add f32 transposed", [&] { cm::add(m.transpose(0, 1), m.transpose(0, 1)); }, 3 * fb},
      {"sum f32 all", [&] { cm::sum(a); }, fb},
      {"sum f32 last dim", [&] { cm::sum(m, {1}); }, fb},
      {"sum f32 first dim", [&] { cm::sum(m, {0}); }, fb},
      {"softmax f32 last dim", [&] { cm::softmax(m, 1); }, 2 * fb},
  };
  for (const Case& k : cases) {
    if (!selected(args, k.name)) continue;
    const double ms = gpu_ms(k.run, 20);
    // a device-to-device copy moving the same number of bytes (read + write)
    const size_t copy_bytes = size_t(k.bytes / 2);
    const double base = gpu_ms(
        [&] {
          if (cudaMemcpyAsync(dst.data_ptr(), a.data_ptr(), std::min(copy_bytes, a.nbytes()),
                              cudaMemcpyDeviceToDevice) != cudaSuccess)
            std::fprintf(stderr, "cm_bench_ops: cudaMemcpyAsync failed\n");
        },
        20);
    std::printf(
        "{\"bench\":\"ops\",\"case\":\"%s "
        "n=%lld\",\"device\":\"cuda\",\"ms\":%.4f,\"gbps\":%.1f,\"baseline\":\"cudaMemcpy "
        "D2D\",\"baseline_ms\":%.4f,\"baseline_gbps\":%.1f,\"ratio\":%.3f}\n",
        k.name.c_str(), (long long)n, ms, k.bytes / ms / 1e6, base,
        2.0 * double(std::min(copy_bytes, a.nbytes())) / base / 1e6, base / ms);
  }
}

void bench_allocator(const BenchArgs& args) {
  if (!selected(args, "allocator")) return;
  const int iters = 1000;
  const int64_t n = 1 << 20;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) cm::Tensor t = cm::empty({n}, {.device = kGpu});
  const double cached_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
      iters;
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) {
    void* p = nullptr;
    cudaMalloc(&p, size_t(n) * 4);
    cudaFree(p);
  }
  const double raw_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
      iters;
  const cm::MemoryStats s = cm::allocator_for(kGpu).stats();
  std::printf(
      "{\"bench\":\"ops\",\"case\":\"allocator 4 MiB "
      "alloc+free\",\"device\":\"cuda\",\"us\":%.3f,\"baseline\":\"cudaMalloc+"
      "cudaFree\",\"baseline_us\":%.3f,\"ratio\":%.1f,\"system_allocs\":%lld,\"allocs\":%lld,"
      "\"peak_reserved\":%lld}\n",
      cached_us, raw_us, raw_us / cached_us, (long long)s.num_system_allocs,
      (long long)s.num_allocs, (long long)s.peak_reserved);
}

}  // namespace

bool bench_cuda(const BenchArgs& args) {
  if (!cm::cuda::is_available()) return false;
  bench_matmul(args);
  bench_bandwidth(args);
  bench_allocator(args);
  // ddpmpp-cifar10's 16×16 layer (one 256-channel head) at batch 512, ADM-64's 32×32 (six
  // 64-channel heads) at batch 64: the bf16 and f16 steps' shapes
  for (const cm::DType dt : {cm::DType::bf16, cm::DType::f16})
    bench_attention(
        args, kGpu, dt,
        {{"ddpmpp-cifar10 16x16", 512, 256, 256}, {"adm-imagenet64 32x32", 384, 1024, 64}},
        [](const std::function<void()>& f, int reps) { return gpu_ms(f, reps); });
  return true;
}
