#include "runner/bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "consistency/sampling.h"
#include "consistency/training.h"
#include "dist/communicator.h"
#include "dist/reducer.h"
#include "nn/ema.h"
#include "nn/optim.h"
#include "runner/config.h"
#include "tensor/cpu/blas.h"
#include "tensor/cpu/conv_onednn.h"

namespace cm::runner {

namespace {

double median(std::vector<double> v) {
  CM_CHECK(!v.empty(), "cm bench: no timings (--repeats must be positive)");
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int run_bench(const BenchCommand& command) {
  BenchCommand o = command;
  const Device dev = Device::parse(o.device);
  CM_CHECK(o.precision == "f32" || o.precision == "tf32" || o.precision == "bf16" ||
               o.precision == "f16",
           "--precision ", o.precision, ": expected f32, tf32, bf16 or f16");
  CM_CHECK(o.precision == "f32" || dev.is_cuda(), "--precision ", o.precision,
           " needs a GPU (--device cuda)");
  CM_CHECK(o.batch >= 0 && o.batch <= kMaxBatch, "--batch ", o.batch, ": expected 1 to ",
           kMaxBatch);
  CM_CHECK(o.repeats >= 0, "--repeats ", o.repeats, ": expected a positive integer");
  CM_CHECK(!o.cases.empty(), "cm bench: no --case to run");
  if (o.batch == 0) o.batch = dev.is_cuda() ? 128 : 64;
  if (o.repeats == 0) o.repeats = dev.is_cuda() ? 20 : 5;
  set_matmul_tf32(o.precision == "tf32");
  const DType compute = o.precision == "bf16"  ? DType::bf16
                        : o.precision == "f16" ? DType::f16
                                               : DType::f32;

  Generator gen(0);
  NetworkConfig cfg = network_from_preset(o.network);
  cfg.songunet.memory_format = cfg.adm.memory_format = cfg.dhariwal.memory_format = o.memory_format;
  cfg.songunet.recompute = cfg.adm.recompute = cfg.dhariwal.recompute = o.recompute;
  cfg.songunet.attention = cfg.adm.attention = cfg.dhariwal.attention = o.attention;
  const std::unique_ptr<nn::Network> net_ptr = cfg.make(gen), target_ptr = cfg.make(gen);
  nn::Network &net = *net_ptr, &target = *target_ptr;
  net.to(dev);
  target.to(dev);
  if (o.flat) {
    net.flatten_parameters();
    target.flatten_parameters(false);
  }
  nn::Ema target_ema(net.parameters(), target.parameters(), nn::EmaDecay::fixed(0.99));
  nn::RAdam opt(net.parameters(), {.lr = 1e-4});
  const consistency::NoiseConstants nc;
  const consistency::Denoiser f(net, consistency::Parameterization::Consistency, cfg.noise_labels,
                                nc, compute);
  const consistency::Denoiser ft(target, consistency::Parameterization::Consistency,
                                 cfg.noise_labels, nc, compute);
  const Shape shape = {o.batch, cfg.in_channels(), cfg.img_resolution(), cfg.img_resolution()};
  // a class-conditional network gets one-hot labels cycling through the classes
  Tensor labels;
  if (const int64_t classes = cfg.label_dim(); classes > 0) {
    std::vector<int64_t> k(static_cast<size_t>(o.batch));
    for (int64_t i = 0; i < o.batch; ++i) k[size_t(i)] = i % classes;
    labels = consistency::one_hot_classes(k, classes, dev);
  }
  Generator data(1), dropout(2);
  const Tensor x = clamp(randn(shape, {.device = dev}, &data), -1.0, 1.0);
  const std::vector<double> sigmas = consistency::karras_sigmas(18, nc);
  Backend& be = backend_for(dev);

  std::unique_ptr<dist::GradientReducer> reducer;  // ct in a job of the MPI engine
  for (const std::string& c : o.cases) {
    std::function<void()> run;
    std::string extra;           // case-specific fields of the JSON line
    double allreduce_bytes = 0;  // --case allreduce: the buffer averaged
    if (c == "forward" || c == "sample") {
      net.eval();
      const double s = c == "sample" ? nc.sigma_max : 1.0;
      run = [&, s] {
        NoGradGuard ng;
        f(c == "sample" ? mul(x, s) : x, full({o.batch}, s, {.device = dev}), labels);
      };
    } else if (c == "ct") {
      net.train();
      target.train();
      // under mpirun (or CM_DIST_ENGINE=mpi): a data-parallel step, --batch images per rank,
      // the gradients averaged over the ranks by the trainer's reducer
      dist::Communicator& comm = dist::world();
      if (comm.engine() != "local" && !reducer) {
        CM_CHECK(o.flat, "cm bench --case ct under mpirun: needs the flat buffers (--flat on)");
        reducer = std::make_unique<dist::GradientReducer>(
            net.flat_parameters(), comm, dist::ReducerOptions::of_mib(o.bucket_mb));
        char b[128];
        std::snprintf(b, sizeof b,
                      ",\"ranks\":%d,\"engine\":\"%s\",\"bucket_mb\":%g,\"buckets\":%zu",
                      comm.size(), comm.engine().c_str(), o.bucket_mb, reducer->bucket_count());
        extra = b;
      }
      run = [&] {
        consistency::StepLoss r = consistency::ct_loss(f, ft, x, labels, sigmas, {}, data, dropout);
        if (reducer) reducer->prepare();
        r.loss.backward();
        if (reducer) reducer->finish();
        opt.step();
        opt.zero_grad();
        target_ema.update(0.99);
      };
    } else if (c == "allreduce") {
      // the data-parallel step's communication: the average of the flat gradient buffer over the
      // job's ranks (mpirun -np K cm bench --case allreduce)
      const std::shared_ptr<const nn::FlatParameters> flat = net.flat_parameters();
      CM_CHECK(flat && flat->grads().groups().size() == 1,
               "cm bench --case allreduce: needs the flat gradient buffer (--flat on)");
      dist::Communicator& comm = dist::world();
      Tensor g = flat->grads().groups()[0].data;
      run = [&comm, g]() mutable { comm.all_reduce(g, dist::ReduceOp::Average); };
      allreduce_bytes = double(g.nbytes());
      extra = ",\"ranks\":" + std::to_string(comm.size()) + ",\"engine\":\"" + comm.engine() +
              "\",\"buffer_bytes\":" + std::to_string(g.nbytes());
    } else {
      CM_FAIL("cm bench: unknown case \"", c, "\" (expected forward, ct, sample or allreduce)");
    }
    for (int i = 0; i < 2; ++i) run();  // warm-up (allocator, algorithm caches)
    be.synchronize();
    allocator_for(dev).reset_peak();
    std::vector<double> ms;
    for (int64_t i = 0; i < o.repeats; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      run();
      be.synchronize();
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    const double m = median(ms);
    const MemoryStats mem = allocator_for(dev).stats();
    if (c == "allreduce") {
      // NCCL's conventions: algorithm bandwidth = bytes / time, bus bandwidth = algbw·2(K − 1)/K
      const dist::Communicator& comm = dist::world();
      const double algbw = allreduce_bytes / (m * 1e-3) / 1e9, k = double(comm.size());
      char b[96];
      std::snprintf(b, sizeof b, ",\"algbw_GBps\":%.2f,\"busbw_GBps\":%.2f", algbw,
                    algbw * 2 * (k - 1) / k);
      extra += b;
      if (comm.rank() != 0) continue;  // rank 0 reports
    }
    if (c == "ct" && reducer && dist::world().rank() != 0) continue;
    // What ran the convolutions and the products: every figure says which kernels it measured.
    const MemoryFormat format = nn::resolve_memory_format(o.memory_format, be);
    const std::string conv = dev.is_cuda() ? "cudnn" : cpu::onednn::conv_backend_name();
    const std::string blas = dev.is_cuda() ? "cublas" : "openblas " + cpu::blas::core_name();
    // the attention kernel asked for: fused runs where the backend's kernel takes the dtype and
    // head size (Backend::fused_attention_supports), the composite elsewhere
    const AttentionKernel ak = nn::resolve_attention(o.attention);
    const bool fused = ak == AttentionKernel::Fused ||
                       (ak == AttentionKernel::Auto && be.fused_attention_by_default());
    std::printf(
        "{\"bench\":\"cm\",\"case\":\"%s\",\"network\":\"%s\",\"device\":\"%s\",\"dtype\":\"%s\","
        "\"batch\":%lld,"
        "\"ms_per_step\":%.3f,\"images_per_s\":%.1f,\"peak_memory_bytes\":%lld,\"repeats\":%lld,"
        "\"memory_format\":\"%s\",\"recompute\":%s,\"attention\":\"%s\",\"conv\":\"%s\","
        "\"blas\":\"%s\",\"flat\":%s%s}\n",
        c.c_str(), o.network.c_str(), dev.str().c_str(), o.precision.c_str(), (long long)o.batch, m,
        double(o.batch) / m * 1e3, (long long)mem.peak_allocated, (long long)o.repeats,
        memory_format_name(format), nn::resolve_recompute(o.recompute, be) ? "true" : "false",
        fused ? "fused" : "composite", conv.c_str(), blas.c_str(), o.flat ? "true" : "false",
        extra.c_str());
    std::fflush(stdout);
  }
  return 0;
}

int cmd_bench(int argc, char** argv) {
  const Command c = parse_command_line(argc, argv);
  if (const Help* h = std::get_if<Help>(&c)) {
    std::puts(h->text.c_str());
    return 0;
  }
  const BenchCommand* b = std::get_if<BenchCommand>(&c);
  CM_CHECK(b, "cmd_bench: argv[1] is not \"bench\"");
  return run_bench(*b);
}

}  // namespace cm::runner
