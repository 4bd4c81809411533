// Consistency models against known values and the reference implementations: the scalings at σ_min
// and σ_max, the 18-point Karras grid, N(k) and μ(k) at the spec's example points, iCT's schedule
// and index distribution, the distances, sampling's time points and seeding, and golden values from
// openai/consistency_models' consistency_losses and EDM's loss and Heun sampler
// (tools/gen_consistency_golden.py).
#include <numeric>

#include "consistency/sampling.h"
#include "consistency/training.h"
#include "tests/golden_util.h"

using namespace cm;
using namespace cm::consistency;
using namespace cm::test;

namespace {

// The tiny DDPM++ of tests/golden/songunet_ddpmpp.safetensors, its weights scaled by `scale`.
std::unique_ptr<nn::SongUNet> golden_net(double scale, DType dtype) {
  nn::SafetensorsFile f(kGoldenDir + "songunet_ddpmpp.safetensors");
  Generator gen(0);
  auto net =
      std::make_unique<nn::SongUNet>(songunet_config_from_json(f.metadata().at("config")), gen);
  net->load_state_dict(golden_weights(f));
  net->to(dtype);
  {
    NoGradGuard ng;
    for (Tensor p : net->parameters()) mul_(p, scale);
  }
  net->eval();
  return net;
}

}  // namespace

TEST_SUITE("consistency") {
  TEST_CASE("scalings at sigma_min and sigma_max") {
    const NoiseConstants c;
    const Scalings lo =
        scalings(c.sigma_min, Parameterization::Consistency, NoiseLabels::EdmLog4, c);
    CHECK(lo.c_skip == 1.0);
    CHECK(lo.c_out == 0.0);
    const Scalings hi = scalings(80, Parameterization::Consistency, NoiseLabels::EdmLog4, c);
    // c_skip(80) = 0.25 / (79.998² + 0.25), c_out(80) = 0.5 · 79.998 / √(6400.25)
    CHECK(hi.c_skip == doctest::Approx(0.25 / (79.998 * 79.998 + 0.25)).epsilon(1e-12));
    CHECK(hi.c_skip == doctest::Approx(3.9e-5).epsilon(0.01));
    CHECK(hi.c_out == doctest::Approx(0.49998).epsilon(1e-5));
    CHECK(hi.c_in == doctest::Approx(1 / std::sqrt(6400.25)).epsilon(1e-12));
    CHECK(hi.c_noise == doctest::Approx(std::log(80.0) / 4).epsilon(1e-12));
    const Scalings t = scalings(1.0, Parameterization::Edm, NoiseLabels::Adm250, c);
    CHECK(t.c_skip == doctest::Approx(0.2).epsilon(1e-12));
    CHECK(t.c_out == doctest::Approx(0.5 / std::sqrt(1.25)).epsilon(1e-12));
    CHECK(t.c_noise == 0.0);
  }

  TEST_CASE("the 18-point Karras grid of the spec") {
    const std::vector<double> expected = {80,     57.586, 40.786, 28.375, 19.353, 12.910,
                                          8.401,  5.315,  3.257,  1.923,  1.088,  0.5853,
                                          0.2964, 0.1395, 0.0599, 0.0229, 0.0075, 0.002};
    const std::vector<double> s = karras_sigmas(18, {});
    REQUIRE(s.size() == 18);
    for (size_t i = 0; i < s.size(); ++i)
      CHECK_MESSAGE(s[i] == doctest::Approx(expected[i]).epsilon(2e-3), i);
    CHECK(s.front() == 80);
    CHECK(s.back() == 0.002);
    for (size_t i = 1; i < s.size(); ++i) CHECK(s[i] < s[i - 1]);
    CHECK_THROWS_AS(karras_sigmas(1, {}), Error);
  }

  TEST_CASE("N(k) and mu(k) at the spec's example points") {
    Schedule cifar;  // code form: s0 2, s1 150, mu0 0.9, K 800k
    CHECK(cifar.n(0) == 2);
    CHECK(cifar.mu(0) == doctest::Approx(0.81).epsilon(1e-12));
    CHECK(cifar.n(1000) == 6);
    CHECK(cifar.n(100000) == 54);
    CHECK(cifar.mu(100000) == doctest::Approx(0.99603).epsilon(2e-6));
    CHECK(cifar.n(400000) == 107);
    CHECK(cifar.n(800000) == 151);
    CHECK(cifar.mu(800000) == doctest::Approx(0.99860).epsilon(2e-6));
    CHECK(cifar.n(2000000) == 151);  // past K the schedule stays at its end
    Schedule imagenet{.s1 = 200, .mu0 = 0.95};
    CHECK(imagenet.n(800000) == 201);
    CHECK(imagenet.mu(800000) == doctest::Approx(0.99949).epsilon(2e-6));
    CHECK(imagenet.mu(0) == doctest::Approx(0.9025).epsilon(1e-12));
    Schedule paper{.kind = ScheduleKind::AdaptivePaper};
    CHECK(paper.n(0) == 2);
    CHECK(paper.mu(0) == doctest::Approx(0.9).epsilon(1e-12));  // the paper's μ(0) = μ0
    Schedule fixed{.kind = ScheduleKind::Fixed, .fixed_n = 18, .fixed_mu = 0};
    CHECK(fixed.n(12345) == 18);
    CHECK(fixed.mu(12345) == 0);
  }

  TEST_CASE("iCT's exponential curriculum and lognormal index distribution") {
    Schedule ict{.kind = ScheduleKind::Exponential, .s0 = 10, .s1 = 1280, .total_steps = 400000};
    CHECK(ict.n(0) == 11);
    CHECK(ict.n(49999) == 11);
    CHECK(ict.n(50000) == 21);
    CHECK(ict.n(100000) == 41);
    CHECK(ict.n(350000) == 1281);
    CHECK(ict.n(399999) == 1281);
    CHECK(ict.mu(100000) == 0);
    const std::vector<double> s = karras_sigmas(ict.n(350000), {});
    const std::vector<double> p = lognormal_index_probs(s, -1.1, 2.0);
    CHECK(std::accumulate(p.begin(), p.end(), 0.0) == doctest::Approx(1.0).epsilon(1e-12));
    // the most likely pair sits around σ = exp(P_mean) (densest in ln σ near the mean)
    const size_t mode = size_t(std::max_element(p.begin(), p.end()) - p.begin());
    CHECK(s[mode] > std::exp(-1.1) * 0.5);
    CHECK(s[mode + 1] < std::exp(-1.1) * 2);
    // sampled indices follow the probabilities
    Generator gen(3);
    LossOptions o{.sampling = IndexSampling::Lognormal};
    const std::vector<double> s11 = karras_sigmas(11, {});
    const std::vector<double> p11 = lognormal_index_probs(s11, -1.1, 2.0);
    const std::vector<int64_t> idx = sample_indices(40000, s11, o, gen);
    std::vector<double> freq(p11.size(), 0.0);
    for (int64_t j : idx) freq[size_t(j)] += 1.0 / 40000;
    for (size_t j = 0; j < p11.size(); ++j) CHECK_MESSAGE(std::fabs(freq[j] - p11[j]) < 0.01, j);
  }

  TEST_CASE("distances and weightings in closed form") {
    Tensor a = randn_input({3, 2, 4, 4}, 1), b = randn_input({3, 2, 4, 4}, 2);
    const std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
    const std::vector<double> l2 = distance(a, b, Distance::L2).to_vector<double>();
    const std::vector<double> l1 = distance(a, b, Distance::L1).to_vector<double>();
    const std::vector<double> ph = distance(a, b, Distance::PseudoHuber).to_vector<double>();
    const double c = 0.00054 * std::sqrt(32.0);
    for (int i = 0; i < 3; ++i) {
      double s2 = 0, s1 = 0;
      for (int j = 0; j < 32; ++j) {
        const double d = va[size_t(i * 32 + j)] - vb[size_t(i * 32 + j)];
        s2 += d * d;
        s1 += std::fabs(d);
      }
      CHECK(l2[size_t(i)] == doctest::Approx(s2 / 32).epsilon(1e-12));
      CHECK(l1[size_t(i)] == doctest::Approx(s1 / 32).epsilon(1e-12));
      CHECK(ph[size_t(i)] == doctest::Approx(std::sqrt(s2 + c * c) - c).epsilon(1e-12));
    }
    const Tensor hi = from_vector<double>({2.0, 0.5}, {2}),
                 lo = from_vector<double>({1.5, 0.25}, {2});
    CHECK(weighting(hi, lo, Weighting::Snr, 0.5).to_vector<double>() ==
          std::vector<double>{0.25, 4.0});
    CHECK(weighting(hi, lo, Weighting::Karras, 0.5).to_vector<double>() ==
          std::vector<double>{4.25, 8.0});
    CHECK(weighting(hi, lo, Weighting::TruncatedSnr, 0.5).to_vector<double>() ==
          std::vector<double>{1.0, 4.0});
    CHECK(weighting(hi, lo, Weighting::Ict, 0.5).to_vector<double>() ==
          std::vector<double>{2.0, 4.0});
  }

  TEST_CASE("sampling time points: validation and the openai ts convention") {
    const NoiseConstants c;
    CHECK_NOTHROW(validate_time_points({1.0, 0.5}, c));
    CHECK_THROWS_WITH_AS(validate_time_points({0.5, 1.0}, c),
                         doctest::Contains("strictly decreasing"), Error);
    CHECK_THROWS_WITH_AS(validate_time_points({80.0}, c), doctest::Contains("outside"), Error);
    CHECK_THROWS_WITH_AS(validate_time_points({0.001}, c), doctest::Contains("outside"), Error);
    // the spec's two-step settings: CD ImageNet-64 (40, ts 0,22,39) and CT ImageNet-64 (201, ts
    // 0,106,200)
    CHECK(time_points_from_indices({0, 22, 39}, 40, c)[0] == doctest::Approx(1.382).epsilon(1e-3));
    CHECK(time_points_from_indices({0, 106, 200}, 201, c)[0] ==
          doctest::Approx(1.913).epsilon(1e-3));
    CHECK(time_points_from_indices({0, 17}, 18, c).empty());
    CHECK_THROWS_WITH_AS(time_points_from_indices({0, 10, 25}, 40, c),
                         doctest::Contains("must end at index 39"), Error);
    CHECK_THROWS_WITH_AS(time_points_from_indices({3, 39}, 40, c),
                         doctest::Contains("start at index 0"), Error);
  }

  TEST_CASE("per-image seeds make image k independent of the batch") {
    auto net = golden_net(1.0, DType::f32);
    Denoiser f(*net, Parameterization::Consistency, NoiseLabels::EdmLog4, {});
    const Shape img = {2, 8, 8};
    const SampleOptions two_step{.taus = {0.8}};
    const Tensor batch = consistency_sample(f, {11, 12, 13}, img, {}, two_step, Device::cpu());
    const Tensor single = consistency_sample(f, {12}, img, {}, two_step, Device::cpu());
    // the noise is bit-identical; the network's arithmetic may round differently in another batch
    // (BLAS blocks the products by their sizes), so the images agree to f32 precision
    for (int64_t draw = 0; draw < 2; ++draw)
      CHECK(max_abs_diff(select(per_image_noise({11, 12, 13}, img, draw, Device::cpu()), 0, 1),
                         select(per_image_noise({12}, img, draw, Device::cpu()), 0, 0)) == 0);
    CHECK(max_abs_diff(select(batch, 0, 1), select(single, 0, 0)) < 1e-5);
    CHECK(amax(abs(batch)).item<double>() <= 1.0);  // clipped to [−1, 1]
    const Tensor other = consistency_sample(f, {14}, img, {}, two_step, Device::cpu());
    CHECK(max_abs_diff(other, single) > 0);
  }

  TEST_CASE("CT and CD losses and gradients match openai/consistency_models") {
    nn::SafetensorsFile g(kGoldenDir + "consistency.safetensors");
    const int64_t num_scales = std::stoll(g.metadata().at("num_scales"));
    const std::vector<double> sigmas = karras_sigmas(num_scales, {});
    const Tensor x = g.get("input.x"), z = g.get("input.noise");
    const std::vector<int64_t> idx = g.get("input.indices").to_vector<int64_t>();
    struct Variant {
      std::string name;
      bool cd;
      Solver solver;
      Distance dist;
      Weighting w;
    };
    const std::vector<Variant> variants = {
        {"ct_l2_uniform", false, Solver::Euler, Distance::L2, Weighting::Uniform},
        {"ct_l1_karras", false, Solver::Euler, Distance::L1, Weighting::Karras},
        {"cd_heun_l2_uniform", true, Solver::Heun, Distance::L2, Weighting::Uniform},
        {"cd_euler_l2_truncated-snr", true, Solver::Euler, Distance::L2, Weighting::TruncatedSnr}};
    for (const Variant& v : variants) {
      auto online = golden_net(1.0, DType::f64), target = golden_net(0.95, DType::f64),
           teacher = golden_net(1.1, DType::f64);
      Denoiser fo(*online, Parameterization::Consistency, NoiseLabels::EdmLog4, {});
      Denoiser ft(*target, Parameterization::Consistency, NoiseLabels::EdmLog4, {});
      Denoiser fteach(*teacher, Parameterization::Edm, NoiseLabels::EdmLog4, {});
      LossOptions o{.distance = v.dist, .weighting = v.w};
      Generator dropout(0);
      StepLoss r = v.cd ? cd_loss_at(fo, ft, fteach, x, {}, sigmas, idx, z, v.solver, o, dropout)
                        : ct_loss_at(fo, ft, x, {}, sigmas, idx, z, o, dropout);
      CHECK_MESSAGE(rel_err(r.per_sample, g.get(v.name + ".loss")) < 1e-9, v.name);
      r.loss.backward();
      for (auto& [n, p] : online->named_parameters()) {
        if (!g.contains(v.name + ".grad." + n)) continue;
        CHECK_MESSAGE(rel_err(p.grad(), g.get(v.name + ".grad." + n)) < 1e-8, v.name,
                      " gradient of ", n);
      }
    }
  }

  TEST_CASE("EDM's loss and Heun sampler match EDM") {
    nn::SafetensorsFile g(kGoldenDir + "consistency.safetensors");
    // EDMPrecond runs its network in f32 (it casts x to float32), so these agree to f32 precision.
    auto teacher = golden_net(1.1, DType::f32);
    Denoiser D(*teacher, Parameterization::Edm, NoiseLabels::EdmLog4, {});
    const Tensor x = to(g.get("input.x"), DType::f32);
    Tensor loss = edm_loss_at(D, x, {}, {}, to(g.get("edm_loss.rnd_normal"), DType::f32),
                              to(g.get("edm_loss.noise"), DType::f32));
    const double ref = g.get("edm_loss.sum").item<double>() / double(x.size(0));
    CHECK(loss.item<double>() == doctest::Approx(ref).epsilon(1e-5));
    loss.backward();
    for (auto& [n, p] : teacher->named_parameters())
      if (g.contains("edm_loss.grad." + n))
        CHECK_MESSAGE(
            rel_err(p.grad(), mul(g.get("edm_loss.grad." + n), 1.0 / double(x.size(0)))) < 1e-4, n);
    const Tensor out = edm_heun_sample(D, to(g.get("edm_heun.latents"), DType::f32), {}, 6);
    CHECK(rel_err(out, g.get("edm_heun.out")) < 1e-4);
  }
}
