// Optimizers (Adam, AdamW, RAdam against torch 1.13 trajectories), clip_grad_norm, warm-up,
// optimizer state save/load, EMA (fixed, EDM half-life, per-step, several at once, bound to a
// module) and the dynamic loss scaler.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "helpers.h"
#include "nn/amp.h"
#include "nn/ema.h"
#include "nn/module.h"
#include "nn/optim.h"

using namespace cm;
using namespace cm::test;
using nlohmann::json;

namespace {

const char* kGoldenPath = CM_SOURCE_DIR "/tests/golden/optim.json";

const json& golden() {
  static const json doc = [] {
    std::ifstream f(kGoldenPath);
    REQUIRE_MESSAGE(f.good(), "cannot open ", kGoldenPath);
    return json::parse(f);
  }();
  return doc;
}

Shape shape_at(size_t i) {
  return golden().at("shapes").at(i).get<Shape>();
}

// A leaf requiring grad with the given values and layout.
Tensor param_of(const std::vector<double>& v, const Shape& s, Layout layout,
                DType dtype = DType::f64) {
  Tensor t = with_layout(to(from_vector(v, s), dtype), layout);
  t.set_requires_grad(true);
  return t;
}

// max over elements of |got − want| / |want| (want nonzero in these tests).
double max_rel_err(const Tensor& got, const std::vector<double>& want) {
  const std::vector<double> g = got.to_vector<double>();
  REQUIRE(g.size() == want.size());
  double e = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const double d = std::abs(g[i] - want[i]) / std::max(std::abs(want[i]), 1e-300);
    e = std::max(e, std::isnan(d) ? INFINITY : d);
  }
  return e;
}

bool bit_identical(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector<double>(), y = b.to_vector<double>();
  if (x.size() != y.size()) return false;
  for (size_t i = 0; i < x.size(); ++i)
    if (std::memcmp(&x[i], &y[i], sizeof(double)) != 0) return false;
  return true;
}

nn::AdamOptions options_of(const json& o) {
  nn::AdamOptions opt;
  opt.lr = o.at("lr").get<double>();
  opt.beta1 = o.value("beta1", opt.beta1);
  opt.beta2 = o.value("beta2", opt.beta2);
  opt.eps = o.value("eps", opt.eps);
  opt.weight_decay = o.value("weight_decay", opt.weight_decay);
  opt.decoupled_weight_decay = o.value("decoupled", false);
  return opt;
}

std::unique_ptr<nn::Optimizer> make_optimizer(const std::string& kind, std::vector<Tensor> params,
                                              const nn::AdamOptions& opt) {
  if (kind == "adam") return std::make_unique<nn::Adam>(std::move(params), opt);
  if (kind == "adamw") return std::make_unique<nn::AdamW>(std::move(params), opt);
  REQUIRE(kind == "radam");
  return std::make_unique<nn::RAdam>(std::move(params), opt);
}

bool skipped(const json& c, int64_t step, int64_t param) {
  if (!c.contains("skip")) return false;
  for (const json& s : c.at("skip"))
    if (s.at(0).get<int64_t>() == step && s.at(1).get<int64_t>() == param) return true;
  return false;
}

// Gives params[i] the golden gradient of `step` (in `layout`), or none where the case skips it.
void set_golden_grads(const json& c, std::vector<Tensor>& params, int64_t step, Layout layout,
                      DType dtype) {
  for (size_t i = 0; i < params.size(); ++i) {
    if (skipped(c, step, int64_t(i))) {
      params[i].zero_grad();
      continue;
    }
    const auto g = golden().at("grads").at(size_t(step)).at(i).get<std::vector<double>>();
    params[i].set_grad(with_layout(to(from_vector(g, shape_at(i)), dtype), layout));
  }
}

std::vector<Tensor> golden_params(Layout layout, DType dtype = DType::f64) {
  std::vector<Tensor> ps;
  for (size_t i = 0; i < 2; ++i)
    ps.push_back(
        param_of(golden().at("init").at(i).get<std::vector<double>>(), shape_at(i), layout, dtype));
  return ps;
}

// Runs steps [from, to) of a golden case; sets the lr by the case's warm-up where it has one.
void run_golden_steps(const json& c, nn::Optimizer& opt, std::vector<Tensor>& params, int64_t from,
                      int64_t to, Layout grad_layout, DType dtype) {
  for (int64_t k = from; k < to; ++k) {
    if (c.contains("lrs"))
      opt.set_lr(nn::warmup_lr(c.at("options").at("lr").get<double>(), double(k),
                               c.at("warmup_steps").get<double>()));
    set_golden_grads(c, params, k, grad_layout, dtype);
    opt.step();
  }
}

// A two-parameter module for the EMA tests.
struct Tiny : nn::Module {
  Tensor w, b;
  explicit Tiny(uint64_t seed) {
    w = randn_input({2, 3}, seed);
    b = randn_input({3}, seed + 1);
    register_parameter("w", w);
    register_parameter("b", b);
  }
  std::string type_name() const override { return "Tiny"; }
};

// Adds a deterministic, step-dependent change to every source tensor (stands in for an optimizer
// step).
void perturb(std::vector<Tensor>& src, int step) {
  NoGradGuard ng;
  for (size_t i = 0; i < src.size(); ++i)
    add_(src[i], randn_input(src[i].shape(), 1000 + 17 * step + i), 0.3);
}

}  // namespace

TEST_SUITE("nn") {
  // ---- optimizers against PyTorch
  // ---------------------------------------------------------------------------------

  TEST_CASE("optim: golden file is complete") {
    std::set<std::string> names;
    for (const json& c : golden().at("cases")) names.insert(c.at("name").get<std::string>());
    for (const char* n :
         {"adam_default", "adam_wd", "adamw", "adamw_default", "radam_default", "radam_b2_0.8",
          "radam_b2_0.7_wd", "radam_decoupled", "adam_warmup_skip", "radam_warmup_skip"})
      CHECK_MESSAGE(names.count(n), "missing golden case ", n);
    CHECK(golden().at("grads").size() == 10);
  }

  TEST_CASE("optim: Adam, AdamW and RAdam follow torch's trajectories in f64 (every layout)") {
    for (const json& c : golden().at("cases")) {
      const std::string name = c.at("name").get<std::string>();
      for (size_t li = 0; li < kLayouts.size(); ++li) {
        const Layout layout = kLayouts[li], grad_layout = kLayouts[(li + 1) % kLayouts.size()];
        CAPTURE(name);
        CAPTURE(layout_name(layout));
        std::vector<Tensor> params = golden_params(layout);
        auto opt =
            make_optimizer(c.at("kind").get<std::string>(), params, options_of(c.at("options")));
        const json& traj = c.at("params_after_step");
        REQUIRE(traj.size() == 10);
        for (int64_t k = 0; k < 10; ++k) {
          if (c.contains("lrs")) {
            // the schedule helper reproduces the generator's lr·min(k / warmup, 1) exactly
            const double lr = nn::warmup_lr(c.at("options").at("lr").get<double>(), double(k),
                                            c.at("warmup_steps").get<double>());
            CHECK(lr == c.at("lrs").at(size_t(k)).get<double>());
          }
          run_golden_steps(c, *opt, params, k, k + 1, grad_layout, DType::f64);
          for (size_t i = 0; i < params.size(); ++i) {
            const double e =
                max_rel_err(params[i], traj.at(size_t(k)).at(i).get<std::vector<double>>());
            CHECK_MESSAGE(e <= 1e-12, name, " step ", k + 1, " param ", i, ": relative error ", e);
          }
        }
        CHECK(opt->steps() == 10);
        // per-parameter step counts lag by the steps where the parameter had no gradient
        for (size_t i = 0; i < params.size(); ++i) {
          int64_t expected = 10;
          for (int64_t k = 0; k < 10; ++k) expected -= skipped(c, k, int64_t(i));
          REQUIRE(opt->param_state(i) != nullptr);
          CHECK(opt->param_state(i)->step == expected);
        }
        // the parameters stay leaves that require grad, with their layout
        CHECK(params[0].requires_grad());
        CHECK(params[0].is_leaf());
      }
    }
  }

  TEST_CASE("optim: f32 parameters follow the f64 trajectory to f32 accuracy, with f32 state") {
    for (const char* name : {"adam_wd", "radam_b2_0.8", "adamw"}) {
      CAPTURE(name);
      const json* c = nullptr;
      for (const json& x : golden().at("cases"))
        if (x.at("name") == name) c = &x;
      REQUIRE(c != nullptr);
      std::vector<Tensor> params = golden_params(Layout::Contiguous, DType::f32);
      auto opt =
          make_optimizer(c->at("kind").get<std::string>(), params, options_of(c->at("options")));
      run_golden_steps(*c, *opt, params, 0, 10, Layout::Contiguous, DType::f32);
      for (size_t i = 0; i < params.size(); ++i) {
        CHECK(params[i].dtype() == DType::f32);
        CHECK(opt->param_state(i)->tensors.at("exp_avg").dtype() == DType::f32);
        CHECK(opt->param_state(i)->tensors.at("exp_avg_sq").dtype() == DType::f32);
        CHECK(max_rel_err(params[i],
                          c->at("params_after_step").at(9).at(i).get<std::vector<double>>()) <
              1e-4);
      }
    }
  }

  TEST_CASE("optim: RAdam uses the un-adapted update while rho_t <= 5") {
    // beta2 = 0.8: rho_inf = 9, rho_1 = 1 <= 5, so step 1 is param −= lr·m̂ = lr·g exactly (m̂ = g).
    Tensor p = param_of({1.0, -2.0, 0.5}, {3}, Layout::Contiguous);
    nn::RAdam opt({p}, {.lr = 0.1, .beta2 = 0.8});
    p.set_grad(from_vector<double>({0.3, 0.7, -1e-9}, {3}));
    opt.step();
    const std::vector<double> want = {1.0 - 0.1 * 0.3, -2.0 - 0.1 * 0.7, 0.5 + 0.1 * 1e-9};
    CHECK(max_rel_err(p, want) < 1e-15);  // no division by √v: a tiny gradient gives a tiny update
  }

  TEST_CASE("optim: step skips parameters without a gradient — zero_grad drops gradients") {
    Tensor a = param_of({1, 2}, {2}, Layout::Contiguous),
           b = param_of({3, 4}, {2}, Layout::Contiguous);
    nn::Adam opt({a, b}, {.lr = 0.1});
    a.set_grad(from_vector<double>({1, -1}, {2}));
    opt.step();
    // first Adam step moves each element by lr·sign(g) (up to eps)
    CHECK(max_rel_err(a, {0.9, 2.1}) < 1e-7);
    CHECK(b.to_vector<double>() == std::vector<double>{3, 4});
    CHECK(opt.param_state(1) == nullptr);
    CHECK(opt.state().count("1.step") == 0);
    opt.zero_grad();
    CHECK_FALSE(a.grad().defined());
    CHECK_FALSE(b.grad().defined());
    opt.step();  // nothing has a gradient: nothing changes, the step is still counted
    CHECK(max_rel_err(a, {0.9, 2.1}) < 1e-7);
    CHECK(opt.steps() == 2);
    CHECK(opt.param_state(0)->step == 1);
  }

  TEST_CASE("optim: state save/load into a fresh optimizer continues bit-identically") {
    for (const char* name : {"adam_wd", "radam_warmup_skip", "adamw", "radam_b2_0.7_wd"}) {
      for (DType dtype : {DType::f64, DType::f32}) {
        CAPTURE(name);
        CAPTURE(dtype_name(dtype));
        const json* c = nullptr;
        for (const json& x : golden().at("cases"))
          if (x.at("name") == name) c = &x;
        REQUIRE(c != nullptr);
        const std::string kind = c->at("kind").get<std::string>();
        const nn::AdamOptions o = options_of(c->at("options"));
        // straight run of 10 steps
        std::vector<Tensor> p1 = golden_params(Layout::Contiguous, dtype);
        auto opt1 = make_optimizer(kind, p1, o);
        run_golden_steps(*c, *opt1, p1, 0, 10, Layout::Contiguous, dtype);
        // 5 steps, save, a fresh optimizer over copies of the parameters, load, 5 more
        std::vector<Tensor> p2 = golden_params(Layout::Contiguous, dtype);
        std::map<std::string, Tensor> saved;
        {
          auto opt2 = make_optimizer(kind, p2, o);
          run_golden_steps(*c, *opt2, p2, 0, 5, Layout::Contiguous, dtype);
          saved = opt2->state();
        }
        std::vector<Tensor> p3;
        for (const Tensor& p : p2)
          p3.push_back(param_of(p.to_vector<double>(), p.shape(), Layout::Strided, dtype));
        nn::AdamOptions other = o;
        other.lr = 123;  // load_state restores the learning rate
        auto opt3 = make_optimizer(kind, p3, other);
        opt3->load_state(saved);
        CHECK(opt3->lr() == saved.at("lr").item<double>());
        CHECK(opt3->lr() != 123);
        CHECK(opt3->steps() == 5);
        run_golden_steps(*c, *opt3, p3, 5, 10, Layout::Contiguous, dtype);
        for (size_t i = 0; i < p1.size(); ++i) {
          CHECK(bit_identical(p1[i], p3[i]));
          CHECK(opt1->param_state(i)->step == opt3->param_state(i)->step);
          for (const char* s : {"exp_avg", "exp_avg_sq"})
            CHECK(bit_identical(opt1->param_state(i)->tensors.at(s),
                                opt3->param_state(i)->tensors.at(s)));
        }
        // the saved state is a copy: stepping on did not change it
        CHECK(saved.at("steps").item<double>() == 5);
      }
    }
  }

  TEST_CASE("optim: state keys, and load_state errors name the problem") {
    Tensor a = param_of({1, 2, 3}, {3}, Layout::Contiguous),
           b = param_of({4, 5}, {2}, Layout::Contiguous);
    nn::RAdam opt({a, b}, {.lr = 0.01});
    a.set_grad(from_vector<double>({1, 2, 3}, {3}));
    opt.step();
    auto st = opt.state();
    CHECK(st.size() == 5);
    for (const char* k : {"steps", "lr", "0.step", "0.exp_avg", "0.exp_avg_sq"})
      CHECK_MESSAGE(st.count(k), k);
    CHECK(st.at("0.step").dtype() == DType::i64);
    CHECK(st.at("0.step").item<int64_t>() == 1);
    // exp_avg after one step = (1 − β1)·g
    CHECK(max_rel_err(st.at("0.exp_avg"), {0.1, 0.2, 0.3}) < 1e-15);

    nn::RAdam fresh(
        {a.detach().clone().set_requires_grad(true), b.detach().clone().set_requires_grad(true)},
        {});
    auto broken = st;
    broken.erase("0.exp_avg_sq");
    CHECK_THROWS_WITH_AS(fresh.load_state(broken), doctest::Contains("missing \"0.exp_avg_sq\""),
                         cm::Error);
    broken = st;
    broken["0.momentum"] = zeros({3});
    CHECK_THROWS_WITH_AS(fresh.load_state(broken), doctest::Contains("unexpected \"0.momentum\""),
                         cm::Error);
    broken = st;
    broken["7.step"] = scalar_tensor(1, {.dtype = DType::i64});
    CHECK_THROWS_WITH_AS(fresh.load_state(broken), doctest::Contains("unexpected \"7.step\""),
                         cm::Error);
    broken = st;
    broken["0.exp_avg"] = zeros({4});
    CHECK_THROWS_WITH_AS(fresh.load_state(broken), doctest::Contains("RAdam::load_state"),
                         cm::Error);
    broken = st;
    broken.erase("lr");
    CHECK_THROWS_AS(fresh.load_state(broken), cm::Error);
    broken = st;
    broken["1.exp_avg"] = zeros({2});  // a tensor without its parameter's step
    CHECK_THROWS_AS(fresh.load_state(broken), cm::Error);
    // a failed load leaves the optimizer untouched
    CHECK(fresh.steps() == 0);
    CHECK(fresh.param_state(0) == nullptr);
  }

  TEST_CASE("optim: construction and step errors") {
    Tensor p = param_of({1, 2}, {2}, Layout::Contiguous);
    CHECK_THROWS_WITH_AS(nn::Adam({p, p}, {}), doctest::Contains("appears twice"), cm::Error);
    CHECK_THROWS_WITH_AS(nn::Adam({mul(p, 2.0)}, {}), doctest::Contains("not a leaf"), cm::Error);
    CHECK_THROWS_AS(nn::Adam({zeros({2}, {.dtype = DType::i64})}, {}), cm::Error);
    CHECK_THROWS_AS(nn::Adam({Tensor()}, {}), cm::Error);
    CHECK_THROWS_WITH_AS(nn::RAdam({p}, {.beta2 = 1.0}), doctest::Contains("RAdam: invalid beta2"),
                         cm::Error);
    CHECK_THROWS_AS(nn::Adam({p}, {.lr = -1}), cm::Error);
    CHECK_THROWS_AS(nn::AdamW({p}, {.eps = -1}), cm::Error);
    CHECK_THROWS_AS(nn::Adam({p}, {.weight_decay = -0.1}), cm::Error);
    nn::Adam opt({p}, {});
    CHECK_THROWS_AS(opt.set_lr(-1), cm::Error);
    p.set_grad(from_vector<float>({1, 2}, {2}));  // f32 gradient of an f64 parameter
    CHECK_THROWS_WITH_AS(opt.step(), doctest::Contains("Adam::step: the gradient of parameter 0"),
                         cm::Error);
  }

  TEST_CASE("optim: clip_grad_norm matches torch.nn.utils.clip_grad_norm_") {
    for (const json& c : golden().at("clip_grad_norm")) {
      for (Layout layout : kLayouts) {
        CAPTURE(layout_name(layout));
        const double max_norm = c.at("max_norm").get<double>();
        std::vector<Tensor> ps = {
            param_of({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, shape_at(0), Layout::Contiguous),
            param_of({0, 0, 0, 0, 0}, shape_at(1), Layout::Contiguous),
            param_of({0, 0}, {2}, Layout::Contiguous)};  // no gradient
        for (size_t i = 0; i < 2; ++i)
          ps[i].set_grad(with_layout(
              from_vector(c.at("grads").at(i).get<std::vector<double>>(), shape_at(i)), layout));
        const double before = nn::grad_norm(ps);
        const double total = nn::clip_grad_norm(ps, max_norm);
        const double want = c.at("total_norm").get<double>();
        CHECK(std::abs(total - want) <= 1e-12 * want);
        CHECK(before == total);
        for (size_t i = 0; i < 2; ++i)
          CHECK(max_rel_err(ps[i].grad(), c.at("clipped").at(i).get<std::vector<double>>()) <=
                1e-12);
        CHECK_FALSE(ps[2].grad().defined());
        if (max_norm < want) CHECK(std::abs(nn::grad_norm(ps) - max_norm) < 1e-6);
      }
    }
  }

  TEST_CASE("optim: grad_norm and clip_grad_norm edge cases") {
    Tensor a = param_of({0, 0, 0}, {3}, Layout::Contiguous);
    CHECK(nn::grad_norm({a}) == 0.0);
    CHECK(nn::clip_grad_norm({a}, 1.0) == 0.0);
    // f32 gradients: the norm is accumulated in f64 (3-4-5 triangle)
    Tensor f = param_of({0, 0}, {2}, Layout::Contiguous, DType::f32);
    f.set_grad(from_vector<float>({3, 4}, {2}));
    CHECK(nn::grad_norm({f}) == 5.0);
    // as torch, an infinite norm gives a zero factor: finite entries become 0, the infinite one NaN
    a.set_grad(from_vector<double>({1, INFINITY, -2}, {3}));
    CHECK(std::isinf(nn::clip_grad_norm({a}, 1.0)));
    const auto g = a.grad().to_vector<double>();
    CHECK(g[0] == 0.0);
    CHECK(std::isnan(g[1]));
    CHECK(g[2] == 0.0);
    a.set_grad(from_vector<double>({1, NAN, -2}, {3}));
    CHECK(std::isnan(nn::clip_grad_norm({a}, 1.0)));
    CHECK(std::isnan(a.grad().to_vector<double>()[0]));
    CHECK_THROWS_AS(nn::clip_grad_norm({a}, -1.0), cm::Error);
  }

  TEST_CASE("optim: grads_finite") {
    for (Layout layout : kLayouts) {
      CAPTURE(layout_name(layout));
      Tensor a = param_of({1, 2, 3, 4}, {2, 2}, Layout::Contiguous),
             b = param_of({1, 2}, {2}, Layout::Contiguous);
      CHECK(nn::grads_finite({a, b}));  // no gradients at all
      a.set_grad(with_layout(from_vector<double>({1, -1e300, 0, 5}, {2, 2}), layout));
      CHECK(nn::grads_finite({a, b}));
      b.set_grad(with_layout(from_vector<double>({0, -INFINITY}, {2}), layout));
      CHECK_FALSE(nn::grads_finite({a, b}));
      CHECK(nn::grads_finite({a}));
      a.set_grad(with_layout(from_vector<double>({1, 2, NAN, 4}, {2, 2}), layout));
      CHECK_FALSE(nn::grads_finite({a}));
      Tensor h = param_of({1, 2}, {2}, Layout::Contiguous, DType::f16);
      h.set_grad(with_layout(from_vector<double>({65504, 1}, {2}).to(DType::f16), layout));
      CHECK(nn::grads_finite({h}));
      h.set_grad(with_layout(from_vector<double>({70000, 1}, {2}).to(DType::f16),
                             layout));  // overflows f16
      CHECK_FALSE(nn::grads_finite({h}));
    }
  }

  TEST_CASE("optim: warmup_lr is EDM's linear ramp") {
    CHECK(nn::warmup_lr(1e-3, 0, 10) == 0.0);
    CHECK(nn::warmup_lr(1e-3, 5, 10) == 1e-3 * 0.5);
    CHECK(nn::warmup_lr(1e-3, 10, 10) == 1e-3);
    CHECK(nn::warmup_lr(1e-3, 25, 10) == 1e-3);
    CHECK(nn::warmup_lr(1e-3, 7, 0) == 1e-3);  // no warm-up
    // EDM CIFAR: lr 10e-4 ramped over 10 Mimg, at cur_nimg = 100 batches of 512
    CHECK(nn::warmup_lr(10e-4, 51200, 10000 * 1000) ==
          doctest::Approx(1e-3 * 51200 / 1e7).epsilon(1e-15));
    // consistency-models teacher (jcm): warm-up 1e7/512 steps
    CHECK(nn::warmup_lr(1e-3, 9765.625, 1e7 / 512) == doctest::Approx(0.5e-3).epsilon(1e-15));
  }

  // ---- EMA
  // ----------------------------------------------------------------------------------------------------------

  TEST_CASE("ema: fixed decay against the closed form") {
    for (Layout layout : kLayouts) {
      CAPTURE(layout_name(layout));
      // the shadow starts at e0; the source then jumps to p and stays: e_k = p + d^k·(e0 − p)
      const std::vector<double> e0 = {1, -2, 3, 0.5, 4, -1}, pv = {0.5, 0.25, -1, 2, 8, 3};
      Tensor src = param_of(e0, {2, 3}, layout);
      nn::Ema ema({src}, nn::EmaDecay::fixed(0.9));
      {
        NoGradGuard ng;
        copy_(src, from_vector(pv, {2, 3}));
      }
      for (int k = 1; k <= 7; ++k) {
        CHECK(ema.step(4) == 0.9);
        std::vector<double> want(6);
        for (size_t i = 0; i < 6; ++i) want[i] = pv[i] + std::pow(0.9, k) * (e0[i] - pv[i]);
        CHECK(max_rel_err(ema.shadow()[0], want) < 1e-14);
      }
      CHECK(ema.updates() == 7);
      CHECK(ema.images_seen() == 28);
      CHECK(ema.shadow()[0].is_contiguous());  // own copies are fresh tensors
      CHECK_FALSE(ema.shadow()[0].requires_grad());
      // source untouched
      CHECK(src.to_vector<double>() == pv);
    }
  }

  TEST_CASE("ema: decay 0 copies exactly, decay 1 keeps the shadow") {
    Tensor src = param_of({0.1, 0.7, 1e-300, -3.3}, {4}, Layout::Contiguous);
    nn::Ema ema({src});
    {
      NoGradGuard ng;
      add_(src, from_vector<double>({1e-3, 1e10, 1.0 / 3, 1e-17}, {4}));
    }
    const auto before = ema.shadow()[0].to_vector<double>();
    ema.update(1.0);
    CHECK(ema.shadow()[0].to_vector<double>() == before);
    ema.update(0.0);
    CHECK(bit_identical(ema.shadow()[0], src));
    CHECK(ema.updates() == 2);
    CHECK_THROWS_WITH_AS(ema.update(1.5), doctest::Contains("Ema::update"), cm::Error);
    CHECK_THROWS_AS(ema.update(-0.1), cm::Error);
  }

  TEST_CASE("ema: EDM half-life with ramp-up, against values computed by hand") {
    // beta = 0.5^(batch / max(halflife_nimg, 1e-8)), halflife_nimg = min(halflife_kimg·1000,
    // ratio·nimg)
    CHECK(nn::edm_ema_beta(512, 0, 500, 0.05) == 0.0);  // first update: halflife 0 → copy
    // nimg = 51200: halflife = min(500000, 2560) = 2560 → 0.5^0.2
    CHECK(nn::edm_ema_beta(512, 51200, 500, 0.05) ==
          doctest::Approx(0.87055056329612413).epsilon(1e-15));
    // nimg = 2e6: halflife = min(500000, 100000) → 0.5^0.00512
    CHECK(nn::edm_ema_beta(512, 2e6, 500, 0.05) ==
          doctest::Approx(0.99645737638624650).epsilon(1e-15));
    // past the ramp (nimg = 1e7): halflife 500000 → 0.5^0.001024 = exp(ln 0.5 / (0.5e6 / 512))
    CHECK(nn::edm_ema_beta(512, 1e7, 500, 0.05) ==
          doctest::Approx(0.99929046912326990).epsilon(1e-15));
    // without ramp-up the half-life is used from the start
    CHECK(nn::edm_ema_beta(512, 0, 500, std::nullopt) ==
          doctest::Approx(0.99929046912326990).epsilon(1e-15));
    // halflife 0 without ramp-up: max(0, 1e-8) → beta 0
    CHECK(nn::edm_ema_beta(512, 1000, 0, std::nullopt) == 0.0);
    CHECK_THROWS_AS(nn::edm_ema_beta(0, 0, 500, 0.05), cm::Error);

    // Ema::step with the half-life rule: half-life 1 kimg, ramp-up ratio 0.5, batch 100 → at nimg =
    // 0, 100, 200, 300 the half-life is min(1000, 0.5·nimg) = 0, 50, 100, 150 images and beta =
    // 0.5^(100 / halflife)
    Tensor src = param_of({1, 2, 3}, {3}, Layout::Strided);
    Tensor start = param_of({9, 9, 9}, {3}, Layout::Contiguous);
    nn::Ema ema({start}, nn::EmaDecay::half_life(1, 0.5));
    std::vector<double> host = {9, 9, 9};
    const double want_betas[] = {0.0, 0.25, 0.5,
                                 0.62996052494743658};  // 0.5^(100/h), h = 0, 50, 100, 150
    for (int k = 0; k < 4; ++k) {
      {
        NoGradGuard ng;
        copy_(start, mul(src, double(k + 1)));
      }
      const double beta = ema.step(100);
      CHECK(beta == doctest::Approx(want_betas[k]).epsilon(1e-15));
      for (size_t i = 0; i < 3; ++i)
        host[i] = beta * host[i] + (1 - beta) * double(i + 1) * (k + 1);
      CHECK(max_rel_err(ema.shadow()[0], host) < 1e-14);
    }
    CHECK(ema.images_seen() == 400);
    CHECK(ema.rule().kind() == nn::EmaDecay::Kind::HalfLife);
  }

  TEST_CASE("ema: several EMAs of one model and a per-step target network bound to a module") {
    Tiny net(1), target(50);  // target starts different: binding copies the online weights into it
    std::vector<Tensor> src = net.parameters();
    // consistency training's μ(k) = exp(s0·ln μ0 / N(k)) with a toy N(k) = 2 + k
    auto mu = [](int64_t k) { return std::exp(2.0 * std::log(0.9) / double(2 + k)); };
    nn::Ema eval1(src, nn::EmaDecay::fixed(0.9));
    nn::Ema eval2(src, nn::EmaDecay::fixed(0.999));
    nn::Ema tgt(src, target.parameters(), nn::EmaDecay::per_step(mu));
    for (size_t i = 0; i < 2; ++i) CHECK(bit_identical(target.parameters()[i], src[i]));
    CHECK(tgt.shadow()[0].same(target.w));  // the module's parameters are the shadows
    CHECK(tgt.rule().kind() == nn::EmaDecay::Kind::PerStep);

    std::vector<std::vector<double>> h1, h2, ht;
    for (const Tensor& s : src) {
      h1.push_back(s.to_vector<double>());
      h2.push_back(s.to_vector<double>());
      ht.push_back(s.to_vector<double>());
    }
    for (int k = 0; k < 6; ++k) {
      perturb(src, k);
      eval1.step();
      eval2.step();
      CHECK(tgt.step() == doctest::Approx(mu(k)).epsilon(1e-15));
      for (size_t i = 0; i < src.size(); ++i) {
        const auto v = src[i].to_vector<double>();
        for (size_t j = 0; j < v.size(); ++j) {
          h1[i][j] = 0.9 * h1[i][j] + 0.1 * v[j];
          h2[i][j] = 0.999 * h2[i][j] + (1 - 0.999) * v[j];
          ht[i][j] = mu(k) * ht[i][j] + (1 - mu(k)) * v[j];
        }
        CHECK(max_rel_err(eval1.shadow()[i], h1[i]) < 1e-13);
        CHECK(max_rel_err(eval2.shadow()[i], h2[i]) < 1e-13);
        CHECK(max_rel_err(i == 0 ? target.w : target.b, ht[i]) < 1e-13);
      }
    }
    // the EMAs differ from each other and from the online weights
    CHECK(max_abs_diff(eval1.shadow()[0], eval2.shadow()[0]) > 1e-3);
    CHECK(max_abs_diff(eval1.shadow()[0], net.w) > 1e-3);

    // copy_to a module (to sample from an EMA), copy_from back, reset_to_source
    Tiny sample(99);
    eval2.copy_to(sample);
    CHECK(bit_identical(sample.w, eval2.shadow()[0]));
    CHECK(bit_identical(sample.b, eval2.shadow()[1]));
    CHECK(sample.w.requires_grad());
    eval1.copy_from(sample);
    CHECK(bit_identical(eval1.shadow()[0], eval2.shadow()[0]));
    eval1.reset_to_source();
    CHECK(bit_identical(eval1.shadow()[1], net.b));
    CHECK(eval1.updates() == 6);  // resets do not count

    // errors
    Tiny other(3);
    CHECK_THROWS_WITH_AS(nn::Ema(src, {other.w}, nn::EmaDecay::fixed(0.5)),
                         doctest::Contains("1 shadow tensors"), cm::Error);
    CHECK_THROWS_AS(nn::Ema(src, {other.b, other.w}, nn::EmaDecay::fixed(0.5)),
                    cm::Error);                                               // shapes swapped
    CHECK_THROWS_AS(nn::Ema(src, src, nn::EmaDecay::fixed(0.5)), cm::Error);  // shadow == source
    CHECK_THROWS_AS(nn::Ema({src[0], src[0]}), cm::Error);
    CHECK_THROWS_AS(nn::EmaDecay::fixed(1.5), cm::Error);
    CHECK_THROWS_AS(nn::EmaDecay::per_step(nullptr), cm::Error);
    nn::Ema bad(src, nn::EmaDecay::per_step([](int64_t) { return 2.0; }));
    CHECK_THROWS_AS(bad.step(), cm::Error);
  }

  TEST_CASE("ema: f16 sources get f32 shadows") {
    Tensor h = param_of({0.1, 0.2, 0.3}, {3}, Layout::Contiguous, DType::f16);
    nn::Ema ema({h}, nn::EmaDecay::fixed(0.99));
    CHECK(ema.shadow()[0].dtype() == DType::f32);
    const auto h0 = h.to_vector<double>();
    {
      NoGradGuard ng;
      add_(h, 1.0);
    }
    const auto h1 = h.to_vector<double>();
    for (int k = 0; k < 50; ++k) ema.step();
    // e_50 = h1 + 0.99^50·(h0 − h1), to f32 accuracy (an f16 shadow, with ulp 2^-10 near 1, would
    // be off by far more than 1e-5)
    std::vector<double> want;
    for (size_t i = 0; i < h0.size(); ++i)
      want.push_back(h1[i] + std::pow(0.99, 50) * (h0[i] - h1[i]));
    CHECK(max_rel_err(ema.shadow()[0], want) < 1e-5);
  }

  TEST_CASE("ema: state save/load continues identically, errors list the problems") {
    Tiny net(7), tnet(8);
    std::vector<Tensor> src = net.parameters();
    nn::Ema a(src, nn::EmaDecay::half_life(0.5, 0.05));
    for (int k = 0; k < 3; ++k) {
      perturb(src, k);
      a.step(64);
    }
    const auto saved = a.state();
    CHECK(saved.size() == 4);
    CHECK(saved.at("updates").item<int64_t>() == 3);
    CHECK(saved.at("images_seen").item<double>() == 192);
    // a bound EMA restored from the state: the module's tensors take the values in place
    nn::Ema b(src, tnet.parameters(), nn::EmaDecay::half_life(0.5, 0.05));
    b.load_state(saved);
    CHECK(b.shadow()[0].same(tnet.w));
    for (int k = 3; k < 6; ++k) {
      perturb(src, k);
      CHECK(a.step(64) == b.step(64));
    }
    CHECK(bit_identical(a.shadow()[0], tnet.w));
    CHECK(bit_identical(a.shadow()[1], tnet.b));
    CHECK(b.images_seen() == 384);

    auto broken = saved;
    broken.erase("1.shadow");
    CHECK_THROWS_WITH_AS(b.load_state(broken), doctest::Contains("missing \"1.shadow\""),
                         cm::Error);
    broken = saved;
    broken["2.shadow"] = zeros({1});
    CHECK_THROWS_WITH_AS(b.load_state(broken), doctest::Contains("unexpected \"2.shadow\""),
                         cm::Error);
    broken = saved;
    broken["0.shadow"] = zeros({3, 2});
    CHECK_THROWS_WITH_AS(b.load_state(broken), doctest::Contains("has shape"), cm::Error);
    CHECK(b.updates() == 6);  // unchanged by the failed loads
  }

  // ---- dynamic loss scaler
  // ---------------------------------------------------------------------------------------

  TEST_CASE("amp: scale, unscale, grow and back off as the consistency models' fp16 trainer") {
    nn::DynamicLossScaler s;
    CHECK(s.lg() == 20.0);
    CHECK(s.scale_factor() == 1048576.0);
    // scale(loss) multiplies the loss, and so its gradients, by 2^20
    Tensor x = param_of({1, 2, 3}, {3}, Layout::Contiguous, DType::f32);
    Tensor loss = sum(mul(x, from_vector<float>({0.5f, -0.25f, 2.0f}, {3})));
    Tensor scaled = s.scale(loss);
    CHECK(scaled.item<double>() == doctest::Approx(loss.item<double>() * 1048576.0).epsilon(1e-7));
    scaled.backward();
    CHECK(x.grad().to_vector<double>() == std::vector<double>{524288.0, -262144.0, 2097152.0});
    CHECK(s.unscale_and_check({x}));
    CHECK(x.grad().to_vector<double>() == std::vector<double>{0.5, -0.25, 2.0});
    CHECK(s.lg() == doctest::Approx(20.001).epsilon(1e-15));
    CHECK(s.good_steps() == 1);
    CHECK(s.skipped_steps() == 0);

    // inf and NaN gradients: skip, drop the gradients, lg − 1
    Tensor y = param_of({1, 2}, {2}, Layout::Contiguous, DType::f32);
    x.set_grad(from_vector<float>({1, 2, 3}, {3}));
    y.set_grad(from_vector<float>({INFINITY, 0}, {2}));
    CHECK_FALSE(s.unscale_and_check({x, y}));
    CHECK_FALSE(x.grad().defined());
    CHECK_FALSE(y.grad().defined());
    CHECK(s.lg() == doctest::Approx(19.001).epsilon(1e-15));
    y.set_grad(from_vector<float>({1, NAN}, {2}));
    CHECK_FALSE(s.unscale_and_check({x, y}));
    CHECK(s.skipped_steps() == 2);
    CHECK(s.scale_decreases() == 2);

    // a sequence: lg = 20 + 0.001·good − skipped
    int good = 1, bad = 2;
    for (int k = 0; k < 30; ++k) {
      const bool overflow = k % 7 == 3;
      x.set_grad(from_vector<float>({1, overflow ? NAN : 2.0f, 3}, {3}));
      CHECK(s.unscale_and_check({x}) == !overflow);
      (overflow ? bad : good) += 1;
      CHECK(s.lg() == doctest::Approx(20 + 0.001 * good - bad).epsilon(1e-12));
    }
    CHECK(s.good_steps() == good);
    CHECK(s.skipped_steps() == bad);
    CHECK(s.scale_increases() == good);
    CHECK(s.scale_decreases() == bad);
    // the scale doubles after 1000 good steps
    nn::DynamicLossScaler t;
    Tensor z = param_of({1}, {1}, Layout::Contiguous, DType::f32);
    for (int k = 0; k < 1000; ++k) {
      z.set_grad(from_vector<float>({1}, {1}));
      t.unscale_and_check({z});
    }
    CHECK(t.scale_factor() == doctest::Approx(2097152.0).epsilon(1e-9));
  }

  TEST_CASE("amp: loss scaling keeps small f16 gradients that would flush to zero") {
    // loss = 1e-8 · Σ x (computed in f32 from an f16 x): dloss/dx = 1e-8, below f16's smallest
    // subnormal
    for (bool use_scaler : {false, true}) {
      Tensor x = param_of({1, 2, 3, 4}, {4}, Layout::Contiguous, DType::f16);
      Tensor loss = mul(sum(to(x, DType::f32)), 1e-8);
      nn::DynamicLossScaler s;
      (use_scaler ? s.scale(loss) : loss).backward();
      Tensor master = param_of({1, 2, 3, 4}, {4}, Layout::Contiguous, DType::f32);
      master.set_grad(to(x.grad(), DType::f32));
      if (!use_scaler) {
        CHECK(x.grad().to_vector<double>() == std::vector<double>{0, 0, 0, 0});
        continue;
      }
      REQUIRE(s.unscale_and_check({master}));
      CHECK(max_rel_err(master.grad(), {1e-8, 1e-8, 1e-8, 1e-8}) <
            1e-3);  // f16 precision of 1e-8·2^20
    }
    // an f16 loss is refused: its scaled gradient 2^20 would overflow f16
    nn::DynamicLossScaler s;
    Tensor h = param_of({1}, {1}, Layout::Contiguous, DType::f16);
    CHECK_THROWS_WITH_AS(s.scale(sum(h)), doctest::Contains("DynamicLossScaler::scale"), cm::Error);
  }

  TEST_CASE("amp: configurable constants, clamps, state") {
    nn::DynamicLossScaler s(
        {.initial_lg = 3, .growth = 0.5, .backoff = 2, .min_lg = 0, .max_lg = 4});
    Tensor x = param_of({1}, {1}, Layout::Contiguous);
    auto step = [&](double g) {
      x.set_grad(from_vector<double>({g}, {1}));
      return s.unscale_and_check({x});
    };
    CHECK(step(8));
    CHECK(x.grad().item<double>() == 1.0);  // unscaled by 2^3
    CHECK(s.lg() == 3.5);
    CHECK(step(1));
    CHECK(s.lg() == 4.0);
    CHECK(step(1));  // clamped at max_lg: not an increase
    CHECK(s.lg() == 4.0);
    CHECK(s.scale_increases() == 2);
    CHECK(s.good_steps() == 3);
    CHECK_FALSE(step(INFINITY));
    CHECK(s.lg() == 2.0);
    CHECK_FALSE(step(NAN));
    CHECK(s.lg() == 0.0);
    CHECK_FALSE(step(-INFINITY));  // clamped at min_lg: not a decrease
    CHECK(s.lg() == 0.0);
    CHECK(s.skipped_steps() == 3);
    CHECK(s.scale_decreases() == 2);

    const auto st = s.state();
    CHECK(st.size() == 5);
    nn::DynamicLossScaler r;
    r.load_state(st);
    CHECK(r.lg() == 0.0);
    CHECK(r.good_steps() == 3);
    CHECK(r.skipped_steps() == 3);
    CHECK(r.scale_increases() == 2);
    CHECK(r.scale_decreases() == 2);
    auto broken = st;
    broken.erase("lg");
    CHECK_THROWS_WITH_AS(r.load_state(broken), doctest::Contains("missing \"lg\""), cm::Error);
    broken = st;
    broken["extra"] = zeros({1});
    CHECK_THROWS_WITH_AS(r.load_state(broken), doctest::Contains("unexpected \"extra\""),
                         cm::Error);

    CHECK_THROWS_AS(nn::DynamicLossScaler({.initial_lg = 5, .max_lg = 4}), cm::Error);
    CHECK_THROWS_AS(nn::DynamicLossScaler({.growth = -1}), cm::Error);
  }

  // ---- flat buffers (nn/flat.h)
  // ---------------------------------------------------------------------------------

  // A module of odd-sized parameters (so that the padding between them is exercised), in dtype.
  struct Odd : nn::Module {
    std::vector<Tensor> ts;
    Odd(uint64_t seed, DType dtype, const std::vector<Shape>& shapes) {
      ts.resize(shapes.size());
      for (size_t i = 0; i < shapes.size(); ++i) {
        ts[i] = randn_input(shapes[i], seed + i, Layout::Contiguous, dtype);
        std::string name = "p";
        name += std::to_string(i);
        register_parameter(name, ts[i]);
      }
    }
    std::string type_name() const override { return "Odd"; }
  };
  const std::vector<Shape> kOddShapes = {{3}, {5, 7}, {1}, {4, 3, 3, 3}, {17}, {2, 9}};

  // A loss whose gradient with respect to params[i] is grads[i] exactly (none where undefined),
  // so that backward writes the gradients through the engine into their slots.
  void backward_with(const std::vector<Tensor>& params, const std::vector<Tensor>& grads) {
    Tensor loss;
    for (size_t i = 0; i < params.size(); ++i) {
      if (!grads[i].defined()) continue;
      const Tensor t = sum(mul(params[i], grads[i]));
      loss = loss.defined() ? add(loss, t) : t;
    }
    if (loss.defined()) loss.backward();
  }

  TEST_CASE("flat: the layout is aligned, padded with zeros, and one buffer per dtype and device") {
    Odd m(1, DType::f32, kOddShapes);
    const std::vector<Tensor> before = m.parameters();
    std::vector<std::vector<double>> values;
    for (const Tensor& t : before) values.push_back(t.to_vector<double>());
    m.flatten_parameters();
    const auto flat = m.flat_parameters();
    REQUIRE(flat != nullptr);
    const nn::FlatBuffers& fp = flat->params();
    REQUIRE(fp.groups().size() == 1);
    const Tensor& data = fp.groups()[0].data;
    const std::vector<Tensor> ps = m.parameters();
    int64_t covered = 0;
    for (size_t i = 0; i < ps.size(); ++i) {
      CHECK(ps[i].storage() == data.storage());
      CHECK(ps[i].is_contiguous());
      CHECK(ps[i].is_leaf());
      CHECK(ps[i].requires_grad());
      CHECK(ps[i].to_vector<double>() == values[i]);  // values kept
      CHECK(fp.offset_of(i) % 16 == 0);               // 64 bytes of f32
      CHECK(ps[i].grad_slot().defined());
      CHECK(ps[i].grad_slot().storage() == flat->grads().groups()[0].data.storage());
      covered += ps[i].numel();
    }
    CHECK(data.numel() > covered);
    // padding zero: the buffer's sum of squares is the parameters'
    double ss = 0;
    for (const Tensor& p : ps) ss += sum(square(to(p, DType::f64))).item<double>();
    CHECK(sum(square(to(data, DType::f64))).item<double>() == doctest::Approx(ss).epsilon(1e-12));
    // span: tensors 1..3 and the padding between them
    const Tensor sp = fp.span(1, 3);
    CHECK(sp.numel() == fp.offset_of(3) + ps[3].numel() - fp.offset_of(1));
    CHECK_THROWS_AS(fp.span(3, 1), cm::Error);
    // FlatParameters::of finds the buffers from the parameters only, and only from them all
    CHECK(nn::FlatParameters::of(ps) == flat);
    CHECK(nn::FlatParameters::of({ps[0], ps[1]}) == nullptr);
    CHECK(nn::FlatParameters::of(before) == nullptr);
    // two dtypes: two buffers
    Odd mixed(2, DType::f32, {{3}, {4}});
    mixed.ts[1] = to(mixed.ts[1], DType::f64).detach();
    mixed.ts[1].set_requires_grad(true);
    mixed.flatten_parameters();
    REQUIRE(mixed.flat_parameters() != nullptr);
    CHECK(mixed.flat_parameters()->params().groups().size() == 2);
    CHECK(mixed.flat_parameters()->params().offset_of(1) == 0);
    // to() flattens again after moving; a module without gradient buffers has no slots
    m.to(DType::f64);
    REQUIRE(m.flat_parameters() != nullptr);
    CHECK(m.parameters()[0].dtype() == DType::f64);
    CHECK(m.flat_parameters()->params().offset_of(1) % 8 == 0);
    Odd target(3, DType::f32, kOddShapes);
    target.flatten_parameters(false);
    REQUIRE(target.flat_parameters() != nullptr);
    CHECK(target.flat_parameters()->grads().size() == 0);
    CHECK_FALSE(target.parameters()[0].grad_slot().defined());
  }

  TEST_CASE("flat: backward writes gradients into their slots, accumulates, and skips unused") {
    Odd m(4, DType::f64, kOddShapes);
    m.flatten_parameters();
    const auto flat = m.flat_parameters();
    const std::vector<Tensor> ps = m.parameters();
    std::vector<Tensor> gs;
    for (size_t i = 0; i < ps.size(); ++i) gs.push_back(randn_input(ps[i].shape(), 40 + i));
    std::vector<Tensor> some = gs;
    some[2] = Tensor();  // parameter 2 is not used
    backward_with(ps, some);
    for (size_t i = 0; i < ps.size(); ++i) {
      CAPTURE(i);
      if (i == 2) {
        CHECK_FALSE(ps[i].grad().defined());
        CHECK_FALSE(flat->grad_in_slot(i));
        continue;
      }
      CHECK(flat->grad_in_slot(i));
      CHECK(bit_identical(ps[i].grad(), gs[i]));
    }
    CHECK_FALSE(flat->grads_in_buffers());
    backward_with(ps, gs);  // a second backward accumulates (parameter 2's first is written)
    for (size_t i = 0; i < ps.size(); ++i) {
      const Tensor want = i == 2 ? gs[i] : add(gs[i], gs[i]);
      CHECK(max_abs_diff(ps[i].grad(), want) == 0);
    }
    CHECK(flat->grads_in_buffers());
    m.zero_grad();
    CHECK_FALSE(ps[0].grad().defined());
    backward_with(ps, gs);  // after zero_grad the slots are written again, not added to
    CHECK(max_abs_diff(ps[0].grad(), gs[0]) == 0);
    // slots must match their leaves
    Tensor leaf = grad_input({3}, 1);
    CHECK_THROWS_WITH_AS(leaf.set_grad_slot(zeros({4}, {.dtype = DType::f64})),
                         doctest::Contains("does not match"), cm::Error);
    CHECK_THROWS_AS(leaf.set_grad_slot(zeros({3}, {.dtype = DType::f32})), cm::Error);
  }

  TEST_CASE("flat: Adam, AdamW and RAdam over flat buffers follow torch's trajectories") {
    for (const json& c : golden().at("cases")) {
      const std::string name = c.at("name").get<std::string>();
      CAPTURE(name);
      Odd m(0, DType::f64, {shape_at(0), shape_at(1)});
      for (size_t i = 0; i < 2; ++i) {
        NoGradGuard ng;
        copy_(m.ts[i],
              from_vector(golden().at("init").at(i).get<std::vector<double>>(), shape_at(i)));
      }
      m.flatten_parameters();
      std::vector<Tensor> params = m.parameters();
      auto opt =
          make_optimizer(c.at("kind").get<std::string>(), params, options_of(c.at("options")));
      for (int64_t k = 0; k < 10; ++k) {
        if (c.contains("lrs"))
          opt->set_lr(nn::warmup_lr(c.at("options").at("lr").get<double>(), double(k),
                                    c.at("warmup_steps").get<double>()));
        std::vector<Tensor> gs;
        for (size_t i = 0; i < 2; ++i)
          gs.push_back(
              skipped(c, k, int64_t(i))
                  ? Tensor()
                  : from_vector(golden().at("grads").at(size_t(k)).at(i).get<std::vector<double>>(),
                                shape_at(i)));
        backward_with(params, gs);
        opt->step();
        opt->zero_grad();
        for (size_t i = 0; i < 2; ++i) {
          const double e = max_rel_err(
              params[i], c.at("params_after_step").at(size_t(k)).at(i).get<std::vector<double>>());
          CHECK_MESSAGE(e <= 1e-12, name, " step ", k + 1, " param ", i, ": relative error ", e);
        }
      }
      // the moments are views of flat buffers; what is saved has the per-parameter shapes
      const nn::ParamState* s = opt->param_state(1);
      REQUIRE(s != nullptr);
      CHECK(s->tensors.at("exp_avg").storage() != params[1].storage());
      CHECK(opt->state().at("1.exp_avg").shape() == shape_at(1));
    }
  }

  TEST_CASE(
      "flat: fused updates over buffers equal fused updates per parameter, and the composite") {
    for (const char* kind : {"adam", "adamw", "radam"}) {
      for (DType dt : {DType::f32, DType::f64}) {
        CAPTURE(kind);
        CAPTURE(dtype_name(dt));
        // the same model three times: flat + fused, per parameter + fused, per parameter +
        // composite
        Odd a(7, dt, kOddShapes), b(7, dt, kOddShapes), c(7, dt, kOddShapes);
        a.flatten_parameters();
        nn::AdamOptions o{.lr = 1e-2, .beta2 = 0.95, .weight_decay = 0.1};
        std::vector<Tensor> pa = a.parameters(), pb = b.parameters(), pc = c.parameters();
        auto oa = make_optimizer(kind, pa, o);
        auto ob = make_optimizer(kind, pb, o);
        nn::AdamOptions composite = o;
        composite.fused = false;
        auto oc = make_optimizer(kind, pc, composite);
        for (int k = 0; k < 8; ++k) {  // RAdam: un-adapted steps first (beta2 0.95: rho_t > 5 at 7)
          std::vector<Tensor> gs;
          for (size_t i = 0; i < pa.size(); ++i)
            gs.push_back(randn_input(pa[i].shape(), 100 * k + i, Layout::Contiguous, dt));
          if (k == 3) gs[4] = Tensor();  // a parameter without a gradient splits the run
          backward_with(pa, gs);
          backward_with(pb, gs);
          backward_with(pc, gs);
          oa->step();
          ob->step();
          oc->step();
          oa->zero_grad();
          ob->zero_grad();
          oc->zero_grad();
        }
        const double tol = dt == DType::f32 ? 1e-6 : 1e-14;
        for (size_t i = 0; i < pa.size(); ++i) {
          CAPTURE(i);
          CHECK(bit_identical(pa[i], pb[i]));  // one kernel, whatever the span
          CHECK(max_abs_diff(pa[i], pc[i]) <= tol * (1 + max_abs_diff(pc[i], zeros_like(pc[i]))));
          CHECK(oa->param_state(i)->step == oc->param_state(i)->step);
        }
        CHECK(oa->param_state(4)->step == 7);
        // the padding stayed zero
        const Tensor& data = a.flat_parameters()->params().groups()[0].data;
        double ss = 0;
        for (const Tensor& p : pa) ss += sum(square(to(p, DType::f64))).item<double>();
        CHECK(sum(square(to(data, DType::f64))).item<double>() ==
              doctest::Approx(ss).epsilon(1e-12));
      }
    }
  }

  TEST_CASE("flat: optimizer state saved from flat loads into per-parameter and back, exactly") {
    Odd a(11, DType::f32, kOddShapes), b(11, DType::f32, kOddShapes);
    a.flatten_parameters();
    std::vector<Tensor> pa = a.parameters(), pb = b.parameters();
    nn::RAdam oa(pa, {.lr = 1e-3}), ob(pb, {.lr = 1e-3});
    for (int k = 0; k < 3; ++k) {
      std::vector<Tensor> gs;
      for (size_t i = 0; i < pa.size(); ++i)
        gs.push_back(randn_input(pa[i].shape(), 300 + 10 * k + i, Layout::Contiguous, DType::f32));
      backward_with(pa, gs);
      backward_with(pb, gs);
      oa.step();
      ob.step();
      oa.zero_grad();
      ob.zero_grad();
    }
    // cross-load: a's state into a fresh per-parameter optimizer and b's into a fresh flat one
    Odd a2(12, DType::f32, kOddShapes), b2(12, DType::f32, kOddShapes);
    b2.flatten_parameters();
    a2.load_state_dict(a.state_dict());
    b2.load_state_dict(b.state_dict());
    std::vector<Tensor> pa2 = a2.parameters(), pb2 = b2.parameters();
    nn::RAdam oa2(pa2, {.lr = 1e-3}), ob2(pb2, {.lr = 1e-3});
    oa2.load_state(oa.state());
    ob2.load_state(ob.state());
    std::vector<Tensor> gs;
    for (size_t i = 0; i < pa.size(); ++i)
      gs.push_back(randn_input(pa[i].shape(), 999 + i, Layout::Contiguous, DType::f32));
    for (auto* x : {&pa, &pb, &pa2, &pb2}) backward_with(*x, gs);
    oa.step();
    ob.step();
    oa2.step();
    ob2.step();
    for (size_t i = 0; i < pa.size(); ++i) {
      CHECK(bit_identical(pa2[i], pa[i]));
      CHECK(bit_identical(pb2[i], pb[i]));
      CHECK(bit_identical(pa[i], pb[i]));
    }
  }

  TEST_CASE("flat: gradient norm, clipping, the finite check and EMAs a buffer at a time") {
    Odd a(21, DType::f32, kOddShapes), b(21, DType::f32, kOddShapes), t(5, DType::f32, kOddShapes);
    a.flatten_parameters();
    t.flatten_parameters(false);
    std::vector<Tensor> pa = a.parameters(), pb = b.parameters();
    std::vector<Tensor> gs;
    for (size_t i = 0; i < pa.size(); ++i)
      gs.push_back(randn_input(pa[i].shape(), 500 + i, Layout::Contiguous, DType::f32));
    backward_with(pa, gs);
    backward_with(pb, gs);
    REQUIRE(a.flat_parameters()->grads_in_buffers());
    CHECK(nn::grad_norm(pa) == doctest::Approx(nn::grad_norm(pb)).epsilon(1e-12));
    CHECK(nn::grads_finite(pa));
    CHECK(nn::clip_grad_norm(pa, 0.5) ==
          doctest::Approx(nn::clip_grad_norm(pb, 0.5)).epsilon(1e-12));
    for (size_t i = 0; i < pa.size(); ++i) CHECK(bit_identical(pa[i].grad(), pb[i].grad()));
    CHECK(nn::grad_norm(pa) == doctest::Approx(0.5).epsilon(1e-5));
    nn::scale_grads(pa, 2.0);
    CHECK(nn::grad_norm(pa) == doctest::Approx(1.0).epsilon(1e-5));
    // a non-finite gradient is found in the buffer; clipping by a NaN factor goes tensor by
    // tensor, so the padding stays zero and the next finite step is finite again
    {
      NoGradGuard ng;
      Tensor g = pa[3].grad();
      fill_(g, std::numeric_limits<double>::quiet_NaN());
    }
    CHECK_FALSE(nn::grads_finite(pa));
    nn::clip_grad_norm(pa, 1.0);
    a.zero_grad();
    backward_with(pa, gs);
    CHECK(nn::grads_finite(pa));
    double ss = 0;
    for (const Tensor& g : gs) ss += sum(square(to(g, DType::f64))).item<double>();
    CHECK(nn::grad_norm(pa) == doctest::Approx(std::sqrt(ss)).epsilon(1e-12));
    // EMAs: own flat shadows and a bound flat target equal the tensor-by-tensor ones exactly
    nn::Ema ea(pa, nn::EmaDecay::fixed(0.9)), eb(pb, nn::EmaDecay::fixed(0.9));
    Odd tb(5, DType::f32, kOddShapes);
    nn::Ema ta(pa, t.parameters(), nn::EmaDecay::fixed(0.5)),
        tbe(pb, tb.parameters(), nn::EmaDecay::fixed(0.5));
    CHECK(ea.shadow()[0].storage() == ea.shadow()[1].storage());  // flat
    CHECK(eb.shadow()[0].storage() != eb.shadow()[1].storage());
    for (int k = 0; k < 3; ++k) {
      perturb(pa, k);
      perturb(pb, k);
      ea.step();
      eb.step();
      ta.update(k == 1 ? 0.0 : 0.7);
      tbe.update(k == 1 ? 0.0 : 0.7);
    }
    for (size_t i = 0; i < pa.size(); ++i) {
      CHECK(bit_identical(ea.shadow()[i], eb.shadow()[i]));
      CHECK(bit_identical(t.parameters()[i], tb.parameters()[i]));
    }
  }
}
