// GPU parity suite: every op on random, non-contiguous and broadcast inputs, CUDA against CPU,
// forward and backward, within the tolerance of the dtype; Philox draws bit for bit; the caching
// allocator's steady state. Each case exits with code 77 (CTest "skipped") where no GPU is present.
#include <cstdlib>
#include <cstring>

#include "tests/golden_util.h"
#include "tests/gpu_helpers.h"

using namespace cm;
using namespace cm::test;

namespace {

// An op under test: inputs (shapes and value domains) and the function.
struct OpCase {
  std::string name;
  std::vector<Shape> shapes;
  std::function<Tensor(const std::vector<Tensor>&)> f;
  double shift = 0;  // added to the inputs (e.g. positive domains)
  bool differentiable = true;
};

std::vector<OpCase> op_cases() {
  using V = const std::vector<Tensor>&;
  const Shape m{5, 7}, b1{7};
  std::vector<OpCase> c = {
      {"neg", {m}, [](V x) { return neg(x[0]); }},
      {"abs", {m}, [](V x) { return abs(x[0]); }},
      {"exp", {m}, [](V x) { return exp(x[0]); }},
      {"log", {m}, [](V x) { return log(abs(x[0])); }, 0.1},
      {"sqrt", {m}, [](V x) { return sqrt(abs(x[0])); }, 0.1},
      {"rsqrt", {m}, [](V x) { return rsqrt(add(abs(x[0]), 0.5)); }},
      {"square", {m}, [](V x) { return square(x[0]); }},
      {"reciprocal", {m}, [](V x) { return reciprocal(add(abs(x[0]), 0.5)); }},
      {"sin", {m}, [](V x) { return sin(x[0]); }},
      {"cos", {m}, [](V x) { return cos(x[0]); }},
      {"tanh", {m}, [](V x) { return tanh(x[0]); }},
      {"sigmoid", {m}, [](V x) { return sigmoid(x[0]); }},
      {"silu", {m}, [](V x) { return silu(x[0]); }},
      {"relu", {m}, [](V x) { return relu(x[0]); }},
      {"gelu", {m}, [](V x) { return gelu(x[0]); }},
      {"erf", {m}, [](V x) { return erf(x[0]); }},
      {"expm1", {m}, [](V x) { return expm1(x[0]); }},
      {"log1p", {m}, [](V x) { return log1p(abs(x[0])); }},
      {"pow_scalar", {m}, [](V x) { return pow(add(abs(x[0]), 0.1), 1.7); }},
      {"rpow_scalar", {m}, [](V x) { return pow(2.5, x[0]); }},
      {"clamp", {m}, [](V x) { return clamp(x[0], -0.5, 0.7); }},
      {"add_broadcast", {m, b1}, [](V x) { return add(x[0], x[1], 0.5); }},
      {"sub_broadcast", {{5, 1}, b1}, [](V x) { return sub(x[0], x[1]); }},
      {"mul_broadcast", {m, {1, 7}}, [](V x) { return mul(x[0], x[1]); }},
      {"div_broadcast", {m, b1}, [](V x) { return div(x[0], add(abs(x[1]), 0.5)); }},
      {"pow_tensor", {m, m}, [](V x) { return pow(add(abs(x[0]), 0.2), x[1]); }},
      {"maximum", {m, b1}, [](V x) { return maximum(x[0], x[1]); }},
      {"minimum", {m, b1}, [](V x) { return minimum(x[0], x[1]); }},
      {"lerp", {m, m}, [](V x) { return lerp(x[0], x[1], 0.3); }},
      {"add_scaled", {m, b1}, [](V x) { return add_scaled(x[0], x[1], 0.7071); }},
      {"scalar_forms",
       {m},
       [](V x) { return rdiv(2.0, add(abs(rsub(1.0, mul(x[0], 3.0))), 0.5)); }},
      {"div_scalar", {m}, [](V x) { return div(x[0], 7.0); }},  // a true division, as the CPU
      {"where", {m, m}, [](V x) { return where(gt(x[0], 0.0), x[0], mul(x[1], 2.0)); }},
      {"sum_all", {{4, 5, 6}}, [](V x) { return sum(x[0]); }},
      {"sum_dims",
       {{4, 5, 6}},
       [](V x) {
         return sum(x[0], {0, 2}, true);
       }},
      {"mean_dim", {{4, 5, 6}}, [](V x) { return mean(x[0], {1}); }},
      {"var", {{4, 5, 6}}, [](V x) { return var(x[0], {-1}); }},
      {"amax", {{4, 5, 6}}, [](V x) { return amax(x[0], {1}); }},
      {"amin",
       {{4, 5, 6}},
       [](V x) {
         return amin(x[0], {0, 2});
       }},
      {"max_dim", {{4, 5, 6}}, [](V x) { return max(x[0], 2).values; }},
      {"logsumexp", {{4, 5, 6}}, [](V x) { return logsumexp(x[0], {1}); }},
      {"softmax", {{3, 4, 9}}, [](V x) { return softmax(x[0], -1); }},
      {"softmax_mid", {{3, 4, 9}}, [](V x) { return softmax(x[0], 1); }},
      {"log_softmax", {{3, 4, 9}}, [](V x) { return log_softmax(x[0], 0); }},
      {"matmul_2d", {{6, 5}, {5, 7}}, [](V x) { return matmul(x[0], x[1]); }},
      {"matmul_batched_broadcast",
       {{2, 1, 4, 5}, {3, 5, 6}},
       [](V x) { return matmul(x[0], x[1]); }},
      {"matmul_vec", {{5}, {5, 7}}, [](V x) { return matmul(x[0], x[1]); }},
      {"matmul_transposed",
       {{5, 6}, {7, 5}},
       [](V x) { return matmul(x[0].transpose(0, 1), x[1].transpose(0, 1)); }},
      {"cat",
       {{2, 3}, {4, 3}},
       [](V x) {
         return cat({x[0], x[1]}, 0);
       }},
      {"stack_split",
       {{3, 4}, {3, 4}},
       [](V x) {
         return split(stack({x[0], x[1]}, 1), 1, 1)[1];
       }},
      {"pad_constant",
       {{2, 3, 4}},
       [](V x) {
         return pad(x[0], {1, 2, -1, 1}, PadMode::Constant, 0.5);
       }},
      {"pad_reflect",
       {{2, 3, 4}},
       [](V x) {
         return pad(x[0], {2, 1}, PadMode::Reflect);
       }},
      {"pad_replicate",
       {{2, 3, 4}},
       [](V x) {
         return pad(x[0], {1, 1, 2, 0}, PadMode::Replicate);
       }},
      {"views",
       {{4, 6}},
       [](V x) {
         return x[0].reshape({2, 12}).narrow(1, 3, 6).unsqueeze(0).expand({3, 2, 6});
       }},
      {"index_select",
       {{6, 4}},
       [](V x) {
         return index_select(x[0], 0,
                             from_vector<int64_t>({5, 0, 5, 2}, {4},
                                                  {.dtype = DType::i64, .device = x[0].device()}));
       }},
      {"gather",
       {{4, 5}},
       [](V x) {
         return gather(x[0], 1,
                       from_vector<int64_t>({0, 4, 4, 1, 2, 3, 0, 0}, {4, 2},
                                            {.dtype = DType::i64, .device = x[0].device()}));
       }},
      {"scatter_add",
       {{4, 5}, {4, 2}},
       [](V x) {
         return scatter_add(x[0], 1,
                            from_vector<int64_t>({0, 4, 4, 4, 2, 3, 0, 0}, {4, 2},
                                                 {.dtype = DType::i64, .device = x[0].device()}),
                            x[1]);
       }},
      {"index_add",
       {{5, 3}, {4, 3}},
       [](V x) {
         return index_add(x[0], 0,
                          from_vector<int64_t>({1, 1, 4, 0}, {4},
                                               {.dtype = DType::i64, .device = x[0].device()}),
                          x[1]);
       }},
  };
  return c;
}

// Runs case `oc` in dtype `dt` with inputs in `layout` on CPU and GPU; compares outputs and the
// gradients of sum(out · w).
void run_parity(const OpCase& oc, DType dt, Layout layout) {
  const std::string what = oc.name + " " + dtype_name(dt) + " " + layout_name(layout);
  std::vector<Tensor> xc, xg;
  for (size_t i = 0; i < oc.shapes.size(); ++i) {
    Tensor base = randn_input(oc.shapes[i], 100 + i, Layout::Contiguous, dt, 1.0, oc.shift);
    Tensor c = with_layout(base, layout), g = with_layout(to(base, kGpu), layout);
    const bool grad = oc.differentiable && is_floating(dt);
    if (grad) {
      c.set_requires_grad(true);
      g.set_requires_grad(true);
    }
    xc.push_back(c);
    xg.push_back(g);
  }
  Tensor yc = oc.f(xc), yg = oc.f(xg);
  CHECK(yg.device() == kGpu);
  check_close(yc, yg, device_tol(dt), what + " forward");
  if (!yc.requires_grad()) return;
  Tensor w = randn_input(yc.shape(), 7, Layout::Contiguous, dt);
  sum(mul(yc, w)).backward();
  sum(mul(yg, to(w, kGpu))).backward();
  for (size_t i = 0; i < xc.size(); ++i) {
    if (!xc[i].grad().defined()) continue;
    REQUIRE_MESSAGE(xg[i].grad().defined(), what, ": GPU gradient of input ", i, " missing");
    CHECK(xg[i].grad().device() == kGpu);
    check_close(xc[i].grad(), xg[i].grad(), 4 * device_tol(dt),
                what + " gradient of input " + std::to_string(i));
  }
}

// Every parameter gradient the golden file holds against the network's; returns how many.
int check_golden_param_grads(const nn::SafetensorsFile& f, const nn::Module& net, double tol,
                             const std::string& what) {
  int checked = 0;
  for (auto& [n, p] : net.named_parameters())
    if (f.contains("grad." + n)) {
      check_close(f.get("grad." + n), p.grad(), tol, what + " gradient of " + n);
      ++checked;
    }
  return checked;
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE("cuda: device discovery and transfers") {
    require_gpu();
    CHECK(cuda::device_count() >= 1);
    for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64,
                     DType::u8, DType::b8}) {
      Tensor h = to(randn_input({17, 3}, 1, Layout::Contiguous, DType::f64, 10.0), dt);
      Tensor d = to(h, kGpu);
      CHECK(d.device() == kGpu);
      Tensor back = to(d, Device::cpu());
      CHECK_MESSAGE(std::memcmp(back.data_ptr(), h.data_ptr(), h.nbytes()) == 0, dtype_name(dt),
                    " round trip");
    }
  }

  TEST_CASE("cuda: every op matches the CPU, forward and backward, in every layout") {
    require_gpu();
    for (const OpCase& oc : op_cases())
      for (DType dt : {DType::f32, DType::f64})
        for (Layout l : kLayouts) run_parity(oc, dt, l);
  }

  TEST_CASE("cuda: 16-bit dtypes match the CPU within their precision") {
    require_gpu();
    for (const OpCase& oc : op_cases())
      for (DType dt : {DType::f16, DType::bf16}) run_parity(oc, dt, Layout::Transposed);
  }

  TEST_CASE(
      "cuda: elementwise kernels' vectorised, misaligned and tail paths match the CPU exactly") {
    require_gpu();
    // Contiguous operands take the 16-byte vector kernel when every pointer is aligned, the
    // scalar kernel otherwise; lengths that are not a multiple of the vector width end in a tail.
    // Exact operations (add, multiply by a power of two, correctly rounded division by a scalar,
    // casts, comparisons, fill) must agree bit for bit with the CPU on every such combination.
    auto same = [](const Tensor& cpu, const Tensor& gpu, const std::string& what) {
      const Tensor g = to(gpu, Device::cpu()).contiguous(), c = cpu.contiguous();
      REQUIRE(g.nbytes() == c.nbytes());
      CHECK_MESSAGE(std::memcmp(g.data_ptr(), c.data_ptr(), c.nbytes()) == 0, what);
    };
    for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::u8}) {
      for (int64_t n : {1, 3, 4, 5, 8, 17, 1000, 4099}) {
        Tensor ha = to(
            abs(randn_input({n + 8}, uint64_t(11 + n), Layout::Contiguous, DType::f64, 40.0)), dt);
        Tensor hb = to(
            abs(randn_input({n + 8}, uint64_t(12 + n), Layout::Contiguous, DType::f64, 40.0)), dt);
        Tensor ga = to(ha, kGpu), gb = to(hb, kGpu);
        for (int64_t off : {0, 1, 2, 3}) {
          const std::string what = std::string(dtype_name(dt)) + " n=" + std::to_string(n) +
                                   " offset " + std::to_string(off);
          // a at offset off, b at offset 0: aligned together only when off is 0
          Tensor ca = narrow(ha, 0, off, n), cb = narrow(hb, 0, 0, n);
          Tensor xa = narrow(ga, 0, off, n), xb = narrow(gb, 0, 0, n);
          same(add(ca, cb), add(xa, xb), "add " + what);
          same(mul(ca, 2.0), mul(xa, 2.0), "mul_scalar " + what);
          same(div(ca, 7.0), div(xa, 7.0), "div_scalar " + what);  // IEEE division on both
          same(gt(ca, cb), gt(xa, xb), "gt " + what);
          for (DType t : {DType::f32, DType::bf16, DType::i32})
            same(to(ca, t), to(xa, t), std::string("to ") + dtype_name(t) + " " + what);
          Tensor cf = clone(ha), gf = clone(ga);
          Tensor cv = narrow(cf, 0, off, n), gv = narrow(gf, 0, off, n);
          fill_(cv, 3.0);
          fill_(gv, 3.0);
          same(cf, gf, "fill_ " + what);
        }
      }
    }
  }

  TEST_CASE("cuda: casts among all dtypes match the CPU bit for bit") {
    require_gpu();
    const DType all[] = {DType::f32, DType::f64, DType::f16, DType::bf16,
                         DType::i32, DType::i64, DType::u8,  DType::b8};
    for (DType from : all) {
      // values in [0, 250]: every conversion is defined (no negative or out-of-range integers)
      Tensor h =
          to(clamp(abs(randn_input({9, 11}, 3, Layout::Contiguous, DType::f64, 60.0)), 0.0, 250.0),
             from);
      Tensor g = with_layout(to(h, kGpu), Layout::Transposed);
      for (DType t : all) {
        Tensor a = to(h, t), b = to(to(g, t), Device::cpu()).contiguous();
        CHECK_MESSAGE(std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0, dtype_name(from),
                      " -> ", dtype_name(t));
      }
    }
  }

  TEST_CASE("cuda: comparisons, predicates and integer ops match the CPU exactly") {
    require_gpu();
    Tensor a = to(randn_input({6, 8}, 4, Layout::Contiguous, DType::f64, 3.0), DType::i64);
    Tensor b = to(randn_input({8}, 5, Layout::Contiguous, DType::f64, 3.0), DType::i64);
    Tensor ga = to(a, kGpu), gb = to(b, kGpu);
    auto same = [](const Tensor& x, const Tensor& y) {
      return x.to_vector<double>() == y.to_vector<double>();
    };
    CHECK(same(add(a, b), add(ga, gb)));
    CHECK(same(mul(a, b), mul(ga, gb)));
    CHECK(same(maximum(a, b), maximum(ga, gb)));
    CHECK(same(lt(a, b), lt(ga, gb)));
    CHECK(same(eq(a, 1.0), eq(ga, 1.0)));
    CHECK(same(sum(a, {0}), sum(ga, {0})));
    CHECK(same(amax(a, {1}), amax(ga, {1})));
    CHECK(same(argmax(a, 1), argmax(ga, 1)));
    CHECK(same(isfinite(div(a, b)), isfinite(div(ga, gb))));
    // what nn::count_nonfinite and grads_finite count: NaN and ±Inf, on float inputs
    Tensor f = from_vector<float>({1.f, NAN, INFINITY, -INFINITY, 0.f, -2.f}, {6});
    CHECK(same(logical_not(isfinite(f)), logical_not(isfinite(to(f, kGpu)))));
    CHECK(same(sum(logical_not(isfinite(f))), sum(logical_not(isfinite(to(f, kGpu))))));
  }

  TEST_CASE("cuda: Philox draws are bit-identical to the CPU") {
    require_gpu();
    for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
      for (uint64_t seed : {0ull, 1ull, 123456789ull, 0xffffffffffffull}) {
        Generator gc(seed, 7), gg(seed, 7);
        Tensor u = rand({1000, 33}, {.dtype = dt}, &gc),
               ug = rand({1000, 33}, {.dtype = dt, .device = kGpu}, &gg);
        Tensor n = randn({1000, 33}, {.dtype = dt}, &gc),
               ng = randn({1000, 33}, {.dtype = dt, .device = kGpu}, &gg);
        CHECK(gc.offset() == gg.offset());
        Tensor ub = to(ug, Device::cpu()), nb = to(ng, Device::cpu());
        CHECK_MESSAGE(std::memcmp(u.data_ptr(), ub.data_ptr(), u.nbytes()) == 0, "uniform ",
                      dtype_name(dt));
        CHECK_MESSAGE(std::memcmp(n.data_ptr(), nb.data_ptr(), n.nbytes()) == 0, "normal ",
                      dtype_name(dt));
      }
    }
    for (DType dt : {DType::i32, DType::i64}) {
      Generator gc(99), gg(99);
      Tensor a = randint(-5, 1000003, {4097}, {.dtype = dt}, &gc);
      Tensor b =
          to(randint(-5, 1000003, {4097}, {.dtype = dt, .device = kGpu}, &gg), Device::cpu());
      CHECK(std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0);
    }
    Generator gc(5), gg(5);
    Tensor a = bernoulli({5000}, 0.3, {}, &gc),
           b = to(bernoulli({5000}, 0.3, {.device = kGpu}, &gg), Device::cpu());
    CHECK(std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0);
  }

  TEST_CASE("cuda: matmul in every precision against an f64 reference") {
    require_gpu();
    Tensor a = randn_input({3, 96, 80}, 11), b = randn_input({80, 72}, 12);
    Tensor ref = matmul(a, b);
    for (DType dt : {DType::f32, DType::f16, DType::bf16, DType::f64}) {
      Tensor c = matmul(to(to(a, dt), kGpu), to(to(b, dt), kGpu));
      check_close(ref, to(c, DType::f64), dt == DType::f64 ? 1e-12 : 4 * device_tol(dt),
                  std::string("matmul ") + dtype_name(dt));
    }
    set_matmul_tf32(true);
    Tensor c = matmul(to(to(a, DType::f32), kGpu), to(to(b, DType::f32), kGpu));
    set_matmul_tf32(false);
    check_close(ref, to(c, DType::f64), 5e-3, "matmul tf32");
  }

  TEST_CASE("cuda: large reductions split into chunks stay exact and deterministic") {
    require_gpu();
    Tensor x = randn_input({3000000}, 21, Layout::Contiguous, DType::f32);
    Tensor g = to(x, kGpu);
    const double s1 = sum(g).item<double>(), s2 = sum(g).item<double>();
    CHECK(s1 == s2);  // bit-for-bit run to run
    CHECK(std::fabs(s1 - sum(to(x, DType::f64)).item<double>()) < 1e-2);
    check_close(sum(x, {0}, true), sum(g, {0}, true), 1e-5, "sum");
    Tensor m = to(randn_input({4096, 700}, 22, Layout::Transposed, DType::f32), kGpu);
    check_close(sum(to(m, Device::cpu()), {0}), sum(m, {0}), 1e-5, "column sums");
    check_close(amax(to(m, Device::cpu()), {1}), amax(m, {1}), 0, "row max");
  }

  TEST_CASE("cuda: the caching allocator reuses blocks in the steady state") {
    require_gpu();
    Allocator& alloc = allocator_for(kGpu);
    for (int i = 0; i < 3; ++i) Tensor t = mul(randn({1024, 1024}, {.device = kGpu}), 2.0);
    const MemoryStats before = alloc.stats();
    for (int i = 0; i < 20; ++i) Tensor t = mul(randn({1024, 1024}, {.device = kGpu}), 2.0);
    const MemoryStats after = alloc.stats();
    CHECK(after.num_system_allocs == before.num_system_allocs);
    CHECK(after.num_allocs > before.num_allocs);
    CHECK(after.peak_allocated >= 2 * 1024 * 1024 * 4);
    alloc.empty_cache();
    CHECK(alloc.stats().reserved == alloc.stats().allocated);
  }

  TEST_CASE("cuda: autograd graphs run on the GPU") {
    require_gpu();
    // A small MLP: the same loss and gradients on both devices.
    Tensor w1 = randn_input({8, 5}, 31), w2 = randn_input({3, 8}, 32), x = randn_input({16, 5}, 33);
    auto loss_of = [&](Device d) {
      Tensor a = detach(to(w1, d)), b = detach(to(w2, d));
      a.set_requires_grad(true);
      b.set_requires_grad(true);
      Tensor h = silu(matmul(to(x, d), a.transpose(0, 1)));
      Tensor y = log_softmax(matmul(h, b.transpose(0, 1)), 1);
      Tensor loss = neg(mean(sum(y, {1})));
      loss.backward();
      return std::vector<Tensor>{loss, a.grad(), b.grad()};
    };
    auto c = loss_of(Device::cpu()), g = loss_of(kGpu);
    for (size_t i = 0; i < c.size(); ++i)
      check_close(c[i], g[i], 1e-10, "mlp " + std::to_string(i));
  }

  TEST_CASE("cuda: errors name the op and the devices") {
    require_gpu();
    Tensor a = randn({3}), b = randn({3}, {.device = kGpu});
    CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("different devices"), Error);
    CHECK_THROWS_WITH_AS(to(b, Device::cuda(cuda::device_count())),
                         doctest::Contains("does not exist"), Error);
  }
}

// SongUNet on the GPU against EDM's PyTorch outputs (the CPU test is tests/test_songunet.cpp).
TEST_SUITE("gpu") {
  TEST_CASE("cuda: SongUNet matches EDM's outputs and gradients on the GPU, in both formats") {
    require_gpu();
    for (const std::string format : {"contiguous", "channels_last"})
      for (const std::string flavour0 : {"ddpmpp", "ncsnpp"}) {
        const std::string flavour = flavour0 + " " + format;
        nn::SafetensorsFile f(kGoldenDir + "songunet_" + flavour0 + ".safetensors");
        nn::SongUNetConfig c = songunet_config_from_json(f.metadata().at("config"));
        c.memory_format = format;  // channels-last: cuDNN in NHWC, GroupNorm's NHWC kernels
        Generator gen(0);
        nn::SongUNet net(c, gen);
        net.load_state_dict(golden_weights(f));
        net.to(kGpu);
        net.eval();
        Tensor x = to(f.get("input.x"), kGpu);
        x.set_requires_grad(true);
        Tensor out = net.forward(x, to(f.get("input.noise_labels"), kGpu));
        check_close(f.get("output"), out, 1e-5, flavour + " output");
        sum(mul(out, to(f.get("input.weights"), kGpu))).backward();
        check_close(f.get("grad.x"), x.grad(), 1e-4, flavour + " input gradient");
        check_golden_param_grads(f, net, 1e-4, flavour);
      }
  }

  TEST_CASE("cuda: ADM U-Net matches the reference UNetModel's outputs and gradients on the GPU") {
    require_gpu();
    for (const std::string flavour : {"film", "plain"}) {
      nn::SafetensorsFile f(kGoldenDir + "adm_" + flavour + ".safetensors");
      Generator gen(0);
      nn::AdmUNet net(adm_config_from_json(f.metadata().at("config")), gen);
      net.load_state_dict(golden_weights(f));
      net.to(kGpu);
      net.eval();
      Tensor x = to(f.get("input.x"), kGpu);
      x.set_requires_grad(true);
      Tensor labels;
      if (f.contains("input.class_labels")) labels = to(f.get("input.class_labels"), kGpu);
      Tensor out = net.forward(x, to(f.get("input.noise_labels"), kGpu), labels);
      check_close(f.get("output"), out, 1e-4, flavour + " output");
      sum(mul(out, to(f.get("input.weights"), kGpu))).backward();
      check_close(f.get("grad.x"), x.grad(), 1e-4, flavour + " input gradient");
      check_golden_param_grads(f, net, 1e-4, flavour);
    }
  }
  TEST_CASE("cuda: DhariwalUNet matches EDM's outputs and gradients on the GPU, in both formats") {
    require_gpu();
    nn::SafetensorsFile f(kGoldenDir + "dhariwal_tiny.safetensors");
    for (const std::string format : {"contiguous", "channels_last"}) {
      nn::DhariwalUNetConfig c = dhariwal_config_from_json(f.metadata().at("config"));
      c.memory_format = format;
      Generator gen(0);
      nn::DhariwalUNet net(c, gen);
      net.load_state_dict(golden_weights(f));
      net.to(kGpu);
      net.eval();
      Tensor x = to(f.get("input.x"), kGpu);
      x.set_requires_grad(true);
      Tensor labels, augment;
      if (f.contains("input.class_labels")) labels = to(f.get("input.class_labels"), kGpu);
      if (f.contains("input.augment_labels")) augment = to(f.get("input.augment_labels"), kGpu);
      Tensor out = net.forward(x, to(f.get("input.noise_labels"), kGpu), labels, augment);
      check_close(f.get("output"), out, 1e-4, format + " output");
      sum(mul(out, to(f.get("input.weights"), kGpu))).backward();
      check_close(f.get("grad.x"), x.grad(), 1e-4, format + " input gradient");
      CHECK(check_golden_param_grads(f, net, 1e-4, format) == 9);
    }
  }
}
