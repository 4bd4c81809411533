// EDM's network pickles converted by tools/convert_edm_pkl.py: what EDM's own code computes with
// them (tools/gen_edm_pkl_golden.py: networks with random weights pickled as EDM's training loop
// writes them, EDMPrecond around SongUNet and DhariwalUNet, the VP and VE baselines'
// preconditionings), and the preconditionings' scalings against EDM's formulas.

#include <cmath>

#include "consistency/edm.h"
#include "runner/trainer.h"
#include "tests/golden_util.h"

using namespace cm;
using namespace cm::nn;
using namespace cm::test;
using consistency::NoiseLabels;
using consistency::Parameterization;

namespace {

struct Case {
  const char* name;
  const char* type;  // the network family
  Parameterization preconditioning;
  NoiseLabels labels;
  double sigma_min;  // the sampler's, EDM's generate.py clamp: max(0.002, net.sigma_min)
};

}  // namespace

TEST_SUITE("consistency") {
  TEST_CASE(
      "an EDM network pickle, converted, computes what EDM computes, and samples as it does") {
    for (const Case c :
         {Case{"edm_songunet", "songunet", Parameterization::Edm, NoiseLabels::EdmLog4, 0.002},
          Case{"edm_dhariwal", "dhariwal", Parameterization::Edm, NoiseLabels::EdmLog4, 0.002},
          Case{"vp", "songunet", Parameterization::Vp, NoiseLabels::VpTime, 0.002},
          Case{"ve", "songunet", Parameterization::Ve, NoiseLabels::VeLog, 0.02}}) {
      INFO(c.name);
      const runner::LoadedNetwork m = runner::load_network(
          kGoldenDir + "edm_pkl_" + c.name + ".safetensors", "ema", Device::cpu());
      CHECK(m.config.mode == "edm");
      CHECK(m.config.network.type == c.type);
      CHECK(m.config.network.preconditioning == c.preconditioning);
      CHECK(m.config.network.noise_labels == c.labels);
      CHECK(m.config.noise.sigma_min == c.sigma_min);
      CHECK(m.config.noise.sigma_max == 80);
      CHECK(m.weights.find("converted from network-snapshot-" + std::string(c.name) + ".pkl") !=
            std::string::npos);
      SafetensorsFile e(kGoldenDir + "edm_pkl_" + c.name + "_expected.safetensors");
      const bool cond = e.contains("class_labels");
      CHECK(cond == (m.config.network.label_dim() > 0));
      NoGradGuard ng;
      const consistency::Denoiser D(*m.net, m.config.network.preconditioning,
                                    m.config.network.noise_labels, m.config.noise);
      const double ed =
          rel_err(D(e.get("x"), e.get("sigmas"), cond ? e.get("class_labels") : Tensor()),
                  e.get("denoised"));
      CHECK_MESSAGE(ed <= 1e-5, "D(x, sigma): relative error ", ed);
      // generate.py's edm_sampler, 4 steps from the same latents (x kept in f64 there, f32 here)
      const Tensor heun = consistency::edm_heun_sample(
          D, e.get("latents"), cond ? e.get("heun_class_labels") : Tensor(), 4);
      const double eh = rel_err(heun, e.get("heun"));
      CHECK_MESSAGE(eh <= 1e-4, "Heun sampler: relative error ", eh);
    }
  }

  TEST_CASE("the VP and VE preconditionings are EDM's formulas") {
    // VPPrecond: c_skip 1, c_out −σ, c_in 1/√(σ² + 1), c_noise 999·t(σ) with t the inverse of
    // σ(t) = √(exp(β_d t²/2 + β_min t) − 1); VEPrecond: 1, σ, 1, ln(σ/2).
    const consistency::NoiseConstants nc;
    for (const double t : {1e-5, 0.01, 0.3, 1.0}) {
      const double sigma = consistency::VpSchedule::sigma(t);
      CHECK(consistency::VpSchedule::time(sigma) == doctest::Approx(t).epsilon(1e-9));
      const consistency::Scalings s =
          consistency::scalings(sigma, Parameterization::Vp, NoiseLabels::VpTime, nc);
      CHECK(s.c_skip == 1);
      CHECK(s.c_out == -sigma);
      CHECK(s.c_in == doctest::Approx(1 / std::sqrt(sigma * sigma + 1)).epsilon(1e-15));
      CHECK(s.c_noise == doctest::Approx(999 * t).epsilon(1e-9));
    }
    // EDM's σ range of VPPrecond: σ(ε_t = 1e-5) ≈ 0.001, σ(1) ≈ 152
    CHECK(consistency::VpSchedule::sigma(1) ==
          doctest::Approx(std::sqrt(std::exp(0.5 * 19.9 + 0.1) - 1)));
    const consistency::Scalings v =
        consistency::scalings(3.0, Parameterization::Ve, NoiseLabels::VeLog, nc);
    CHECK(v.c_skip == 1);
    CHECK(v.c_out == 3.0);
    CHECK(v.c_in == 1);
    CHECK(v.c_noise == doctest::Approx(std::log(1.5)));
    CHECK(consistency::parse_parameterization("vp") == Parameterization::Vp);
    CHECK(consistency::parameterization_name(Parameterization::Ve) == "ve");
    CHECK(consistency::parse_noise_labels("vp") == NoiseLabels::VpTime);
    CHECK(consistency::noise_labels_name(NoiseLabels::VeLog) == "ve");
    CHECK_THROWS_WITH_AS(consistency::parse_parameterization("iddpm"),
                         doctest::Contains("\"vp\" or \"ve\""), Error);
  }
}
