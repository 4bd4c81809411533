#include "runner/bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "consistency/training.h"
#include "nn/ema.h"
#include "nn/optim.h"

namespace cm::runner {

namespace {

struct Options {
  std::string network = "ddpmpp-small-28";
  std::string device = "cpu";
  int64_t batch = 0;              // 0: 64 on the CPU, 128 on a GPU
  std::string precision = "f32";  // f32, tf32 (f32 with TF32 matmul/conv), bf16, f16
  std::vector<std::string> cases = {"forward", "ct", "sample"};
  int repeats = 0;  // 0: 5 on the CPU, 20 on a GPU
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  Options o;
  for (int i = 2; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&]() -> std::string {
      CM_CHECK(i + 1 < argc, "cm bench: ", s, " needs a value");
      return argv[++i];
    };
    if (s == "--network")
      o.network = value();
    else if (s == "--device")
      o.device = value();
    else if (s == "--batch")
      o.batch = std::stoll(value());
    else if (s == "--precision")
      o.precision = value();
    else if (s == "--case")
      o.cases = {value()};
    else if (s == "--repeats")
      o.repeats = std::stoi(value());
    else if (s == "--help") {
      std::puts(
          "cm bench [--network NAME] [--device cpu|cuda] [--batch B] [--precision "
          "f32|tf32|bf16|f16]\n"
          "         [--case forward|ct|sample] [--repeats R]");
      return 0;
    } else
      CM_FAIL("cm bench: unknown argument ", s);
  }
  const Device dev = Device::parse(o.device);
  CM_CHECK(o.precision == "f32" || o.precision == "tf32" || o.precision == "bf16" ||
               o.precision == "f16",
           "cm bench: --precision must be f32, tf32, bf16 or f16, got ", o.precision);
  CM_CHECK(o.precision == "f32" || dev.is_cuda(), "cm bench: --precision ", o.precision,
           " needs a GPU");
  if (o.batch == 0) o.batch = dev.is_cuda() ? 128 : 64;
  if (o.repeats == 0) o.repeats = dev.is_cuda() ? 20 : 5;
  set_matmul_tf32(o.precision == "tf32");
  const DType compute = o.precision == "bf16"  ? DType::bf16
                        : o.precision == "f16" ? DType::f16
                                               : DType::f32;

  Generator gen(0);
  nn::SongUNetConfig cfg = nn::songunet_preset(o.network);
  nn::SongUNet net(cfg, gen), target(cfg, gen);
  net.to(dev);
  target.to(dev);
  nn::Ema target_ema(net.parameters(), target.parameters(), nn::EmaDecay::fixed(0.99));
  nn::RAdam opt(net.parameters(), {.lr = 1e-4});
  const consistency::NoiseConstants nc;
  const consistency::Denoiser f(net, consistency::Parameterization::Consistency,
                                consistency::NoiseLabels::EdmLog4, nc, compute);
  const consistency::Denoiser ft(target, consistency::Parameterization::Consistency,
                                 consistency::NoiseLabels::EdmLog4, nc, compute);
  const Shape shape = {o.batch, cfg.in_channels, cfg.img_resolution, cfg.img_resolution};
  Generator data(1), dropout(2);
  const Tensor x = clamp(randn(shape, {.device = dev}, &data), -1.0, 1.0);
  const std::vector<double> sigmas = consistency::karras_sigmas(18, nc);
  Backend& be = backend_for(dev);

  for (const std::string& c : o.cases) {
    std::function<void()> run;
    if (c == "forward" || c == "sample") {
      net.eval();
      const double s = c == "sample" ? nc.sigma_max : 1.0;
      run = [&, s] {
        NoGradGuard ng;
        f(c == "sample" ? mul(x, s) : x, full({o.batch}, s, {.device = dev}));
      };
    } else if (c == "ct") {
      net.train();
      target.train();
      run = [&] {
        consistency::StepLoss r = consistency::ct_loss(f, ft, x, {}, sigmas, {}, data, dropout);
        r.loss.backward();
        opt.step();
        opt.zero_grad();
        target_ema.update(0.99);
      };
    } else {
      CM_FAIL("cm bench: unknown case \"", c, "\" (expected forward, ct or sample)");
    }
    for (int i = 0; i < 2; ++i) run();  // warm-up (allocator, algorithm caches)
    be.synchronize();
    allocator_for(dev).reset_peak();
    std::vector<double> ms;
    for (int i = 0; i < o.repeats; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      run();
      be.synchronize();
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    const double m = median(ms);
    const MemoryStats mem = allocator_for(dev).stats();
    std::printf(
        "{\"bench\":\"cm\",\"case\":\"%s\",\"network\":\"%s\",\"device\":\"%s\",\"dtype\":\"%s\","
        "\"batch\":%lld,"
        "\"ms_per_step\":%.3f,\"images_per_s\":%.1f,\"peak_memory_bytes\":%lld,\"repeats\":%d}\n",
        c.c_str(), o.network.c_str(), dev.str().c_str(), o.precision.c_str(), (long long)o.batch, m,
        double(o.batch) / m * 1e3, (long long)mem.peak_allocated, o.repeats);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace cm::runner
