// Elementwise ops against PyTorch: outputs and input gradients of sum(output * weights) in f64,
// read from tests/golden/elementwise.json (written by tools/gen_op_goldens.py with torch).
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.h"

using namespace cm;
using namespace cm::test;
using nlohmann::json;

namespace {

const char* kGoldenPath = CM_SOURCE_DIR "/tests/golden/elementwise.json";

using CaseFn = std::function<Tensor(const std::vector<Tensor>&)>;

// The cm spelling of each golden case (the names tools/gen_op_goldens.py writes).
const std::map<std::string, CaseFn>& ops() {
  using V = std::vector<Tensor>;
  static const std::map<std::string, CaseFn> m = {
      {"gelu", [](const V& x) { return gelu(x[0]); }},
      {"silu", [](const V& x) { return silu(x[0]); }},
      {"sigmoid", [](const V& x) { return sigmoid(x[0]); }},
      {"tanh", [](const V& x) { return tanh(x[0]); }},
      {"exp", [](const V& x) { return exp(x[0]); }},
      {"log", [](const V& x) { return log(x[0]); }},
      {"sqrt", [](const V& x) { return sqrt(x[0]); }},
      {"rsqrt", [](const V& x) { return rsqrt(x[0]); }},
      {"reciprocal", [](const V& x) { return reciprocal(x[0]); }},
      {"erf", [](const V& x) { return erf(x[0]); }},
      {"expm1", [](const V& x) { return expm1(x[0]); }},
      {"log1p", [](const V& x) { return log1p(x[0]); }},
      {"sin", [](const V& x) { return sin(x[0]); }},
      {"cos", [](const V& x) { return cos(x[0]); }},
      {"relu", [](const V& x) { return relu(x[0]); }},
      {"abs", [](const V& x) { return abs(x[0]); }},
      {"square", [](const V& x) { return square(x[0]); }},
      {"pow_scalar_2.5", [](const V& x) { return pow(x[0], 2.5); }},
      {"pow_scalar_3", [](const V& x) { return pow(x[0], 3.0); }},
      {"rpow_scalar_2", [](const V& x) { return pow(2.0, x[0]); }},
      {"clamp", [](const V& x) { return clamp(x[0], -0.5, 0.5); }},
      {"clamp_lo", [](const V& x) { return clamp(x[0], -0.5, std::nullopt); }},
      {"clamp_hi", [](const V& x) { return clamp(x[0], std::nullopt, 0.5); }},
      {"add_alpha", [](const V& x) { return add(x[0], x[1], 2.5); }},
      {"sub", [](const V& x) { return sub(x[0], x[1]); }},
      {"mul", [](const V& x) { return mul(x[0], x[1]); }},
      {"div", [](const V& x) { return div(x[0], x[1]); }},
      {"pow", [](const V& x) { return pow(x[0], x[1]); }},
      {"lerp_0.3", [](const V& x) { return lerp(x[0], x[1], 0.3); }},
      {"lerp_0.75", [](const V& x) { return lerp(x[0], x[1], 0.75); }},
      {"maximum", [](const V& x) { return maximum(x[0], x[1]); }},
      {"minimum", [](const V& x) { return minimum(x[0], x[1]); }},
      {"maximum_random", [](const V& x) { return maximum(x[0], x[1]); }},
      {"rsub_scalar", [](const V& x) { return 1.75 - x[0]; }},
      {"rdiv_scalar", [](const V& x) { return 1.75 / x[0]; }},
      {"div_scalar", [](const V& x) { return x[0] / 1.75; }},
      {"where", [](const V& x) { return where(x[0], x[1], x[2]); }},
      {"where_scalar", [](const V& x) { return where(x[0], x[1], 0.5); }},
      {"composite", [](const V& x) { return silu(x[0]) * tanh(x[1]) + gelu(x[0] - x[1]); }},
  };
  return m;
}

const json& golden() {
  static const json doc = [] {
    std::ifstream f(kGoldenPath);
    REQUIRE_MESSAGE(f.good(), "cannot open ", kGoldenPath);
    return json::parse(f);
  }();
  return doc;
}

Shape shape_of(const json& t) {
  return t.at("shape").get<Shape>();
}

// A tensor from a golden entry (f64 values or bools), in the requested layout.
Tensor tensor_of(const json& t, Layout layout = Layout::Contiguous) {
  const Shape s = shape_of(t);
  if (t.at("dtype") == "bool") {
    const std::vector<bool> v = t.at("data").get<std::vector<bool>>();
    return with_layout(from_vector(v, s, {.dtype = DType::b8}), layout);
  }
  return with_layout(from_vector(t.at("data").get<std::vector<double>>(), s), layout);
}

// |got − want| ≤ rtol·|want| + atol elementwise; reports the first mismatch.
void check_close(const Tensor& got, const json& want, const std::string& what) {
  constexpr double rtol = 1e-10, atol = 1e-13;
  REQUIRE_MESSAGE((got.shape() == shape_of(want)), what, ": shape ", shape_str(got.shape()), " vs ",
                  shape_str(shape_of(want)));
  const std::vector<double> g = got.to_vector<double>();
  const std::vector<double> w = want.at("data").get<std::vector<double>>();
  std::string bad;
  for (size_t i = 0; i < g.size() && bad.empty(); ++i) {
    if (!(std::fabs(g[i] - w[i]) <= rtol * std::fabs(w[i]) + atol)) {
      std::ostringstream os;
      os.precision(17);
      os << what << ": element " << i << " is " << g[i] << ", PyTorch gives " << w[i];
      bad = os.str();
    }
  }
  CHECK_MESSAGE(bad.empty(), bad);
}

}  // namespace

TEST_SUITE("ops") {
  TEST_CASE("golden file covers every case this test knows, and nothing else") {
    const json& doc = golden();
    REQUIRE(doc.at("cases").is_array());
    std::set<std::string> seen;
    for (const json& c : doc.at("cases")) seen.insert(c.at("name").get<std::string>());
    for (const auto& [name, fn] : ops())
      CHECK_MESSAGE(seen.count(name) == 1, "missing golden case ", name);
    for (const std::string& name : seen)
      CHECK_MESSAGE(ops().count(name) == 1, "unknown golden case ", name);
  }

  TEST_CASE("elementwise outputs and gradients match PyTorch (f64)") {
    for (const json& c : golden().at("cases")) {
      const std::string name = c.at("name").get<std::string>();
      const auto it = ops().find(name);
      if (it == ops().end()) continue;  // reported by the coverage case
      // Contiguous inputs, and the same values in a transposed/strided layout.
      for (Layout layout : {Layout::Contiguous, Layout::Transposed}) {
        const std::string what = name + " (" + layout_name(layout) + ")";
        std::vector<Tensor> inputs;
        for (const json& t : c.at("inputs")) {
          Tensor x = tensor_of(t, layout);
          if (x.dtype() == DType::f64) x.set_requires_grad(true);
          inputs.push_back(x);
        }
        const Tensor y = it->second(inputs);
        check_close(y, c.at("output"), what + " output");
        sum(mul(y, tensor_of(c.at("weights")))).backward();
        const json& grads = c.at("grads");
        REQUIRE(grads.size() == inputs.size());
        for (size_t k = 0; k < inputs.size(); ++k) {
          if (grads[k].is_null()) continue;
          REQUIRE_MESSAGE(inputs[k].grad().defined(), what, ": no gradient for input ", k);
          check_close(inputs[k].grad(), grads[k], what + " grad " + std::to_string(k));
        }
      }
    }
  }
}
