// The ImageNet metrics besides FID (the paper's Table 2): improved precision and recall against a
// brute-force f64 transcription of openai's evaluator (ManifoldEstimator, k = 3) and hand-worked
// cases, and sFID's spatial features against pytorch-fid's own Inception (golden file made by
// tools/gen_sfid_golden.py).
#include <algorithm>
#include <cmath>
#include <vector>

#include "eval/fid.h"
#include "eval/inception.h"
#include "eval/precision_recall.h"
#include "nn/safetensors.h"
#include "tests/golden_util.h"

using namespace cm;
using namespace cm::test;

namespace {

// The evaluator's definitions, in f64 loops: squared distances, the radius as the k-th entry
// (0-based) of each sorted row (the feature itself at 0), and the fractions within some radius.
eval::PrecisionRecall brute_force(const std::vector<std::vector<double>>& ref,
                                  const std::vector<std::vector<double>>& sample, int k) {
  auto d2 = [](const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
    return s;
  };
  auto radii = [&](const std::vector<std::vector<double>>& f) {
    std::vector<double> r;
    for (const auto& a : f) {
      std::vector<double> row;
      for (const auto& b : f) row.push_back(d2(a, b));
      std::sort(row.begin(), row.end());
      r.push_back(row[size_t(k)]);
    }
    return r;
  };
  const std::vector<double> rr = radii(ref), rs = radii(sample);
  eval::PrecisionRecall pr;
  for (const auto& s : sample) {
    bool in = false;
    for (size_t j = 0; j < ref.size(); ++j) in |= d2(s, ref[j]) <= rr[j];
    pr.precision += in;
  }
  for (const auto& r : ref) {
    bool in = false;
    for (size_t j = 0; j < sample.size(); ++j) in |= d2(r, sample[j]) <= rs[j];
    pr.recall += in;
  }
  pr.precision /= double(sample.size());
  pr.recall /= double(ref.size());
  return pr;
}

Tensor as_tensor(const std::vector<std::vector<double>>& rows) {
  std::vector<float> v;
  for (const auto& r : rows)
    for (double x : r) v.push_back(float(x));
  return from_vector(v, {int64_t(rows.size()), int64_t(rows[0].size())});
}

// Clustered features: `n` points around four fixed centres (noise from `seed`), shifted by
// `shift` in every coordinate, as f32 values (both sides see the same numbers).
std::vector<std::vector<double>> clusters(int n, int d, double shift, uint64_t seed) {
  Generator c(100), g(seed);
  const std::vector<float> centres = randn({4, d}, {}, &c).to_vector<float>();
  const std::vector<float> noise = randn({n, d}, {}, &g).to_vector<float>();
  std::vector<std::vector<double>> out(static_cast<size_t>(n),
                                       std::vector<double>(static_cast<size_t>(d)));
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < d; ++j)
      out[size_t(i)][size_t(j)] = double(
          float(3 * centres[size_t((i % 4) * d + j)] + 0.7 * noise[size_t(i * d + j)] + shift));
  return out;
}

}  // namespace

TEST_SUITE("eval") {
  TEST_CASE("precision and recall: a hand-worked 1-D case") {
    // ref 0..4, k = 1: every radius is 1 (the nearest other point, squared). Samples 0.5, 2.9, 10,
    // 20: 0.5 and 2.9 lie within a reference radius (precision 1/2); the samples' own radii are
    // 5.76, 5.76, 50.41, 100, which cover every reference point (recall 1).
    const Tensor ref = from_vector(std::vector<float>{0, 1, 2, 3, 4}, {5, 1});
    const Tensor sample = from_vector(std::vector<float>{0.5f, 10, 2.9f, 20}, {4, 1});
    const std::vector<float> r = eval::manifold_radii(ref, 1).to_vector<float>();
    for (float x : r) CHECK(x == doctest::Approx(1.0));
    const eval::PrecisionRecall pr = eval::precision_recall(ref, sample, 1);
    CHECK(pr.precision == 0.5);
    CHECK(pr.recall == 1.0);
  }

  TEST_CASE("precision and recall: openai's evaluator's definitions, whatever the blocking") {
    const auto ref = clusters(60, 8, 0.0, 1), sample = clusters(45, 8, 0.8, 2);
    const eval::PrecisionRecall want = brute_force(ref, sample, 3);
    CHECK(want.precision > 0.05);  // a case with something to count on both sides
    CHECK(want.precision < 0.95);
    CHECK(want.recall > 0.05);
    CHECK(want.recall < 0.95);
    for (int64_t block : {7, 16, 10000}) {
      const eval::PrecisionRecall got =
          eval::precision_recall(as_tensor(ref), as_tensor(sample), 3, block);
      CHECK_MESSAGE(got.precision == want.precision, "block ", block);
      CHECK_MESSAGE(got.recall == want.recall, "block ", block);
    }
    // the same set: everything within its own manifold; a far set: nothing
    const eval::PrecisionRecall same = eval::precision_recall(as_tensor(ref), as_tensor(ref));
    CHECK(same.precision == 1.0);
    CHECK(same.recall == 1.0);
    const eval::PrecisionRecall far =
        eval::precision_recall(as_tensor(ref), as_tensor(clusters(45, 8, 1000.0, 2)));
    CHECK(far.precision == 0.0);
    CHECK(far.recall == 0.0);
  }

  TEST_CASE("squared distances: the evaluator's norm expansion, clamped at zero") {
    const auto a = clusters(9, 5, 0.0, 3), b = clusters(7, 5, 0.5, 4);
    const std::vector<float> d =
        eval::squared_distances(as_tensor(a), as_tensor(b)).to_vector<float>();
    for (size_t i = 0; i < a.size(); ++i)
      for (size_t j = 0; j < b.size(); ++j) {
        double want = 0;
        for (size_t k = 0; k < 5; ++k) want += (a[i][k] - b[j][k]) * (a[i][k] - b[j][k]);
        CHECK(std::fabs(d[i * b.size() + j] - want) <= 1e-4 * std::max(1.0, want));
      }
    const std::vector<float> self =
        eval::squared_distances(as_tensor(a), as_tensor(a)).to_vector<float>();
    for (float x : self) CHECK(x >= 0);  // clamped: round-off never gives a negative distance
  }

  TEST_CASE("precision and recall: too few features or mismatched dims are errors") {
    const Tensor three = zeros({3, 2}), five = zeros({5, 2}), other = zeros({5, 3});
    check_error([&] { eval::precision_recall(three, five); }, {"3 reference features", "k = 3"});
    check_error([&] { eval::precision_recall(five, other); }, {"dim 2", "dim 3"});
  }

  TEST_CASE("FidInceptionV3: sFID's spatial features are pytorch-fid's Mixed_6d 1x1 branch, HWC") {
    nn::SafetensorsFile w(kGoldenDir + "fid_inception_small.safetensors");
    nn::SafetensorsFile g(kGoldenDir + "fid_inception_small_spatial.safetensors");
    eval::FidInceptionV3 net({.width_divisor = 32, .num_classes = 16});
    std::map<std::string, Tensor> state;
    for (const std::string& n : w.names())
      if (n.rfind("input.", 0) != 0 && n.rfind("output.", 0) != 0 && n.rfind("gray.", 0) != 0)
        state[n] = w.get(n);
    net.load_state_dict(state, true);
    net.to(DType::f64);
    NoGradGuard ng;
    const Tensor x = to(g.get("input"), DType::f64);
    const auto out = net.forward(x, false, true);
    CHECK(rel_err(out.pool, g.get("pool")) <= 1e-10);
    CHECK(rel_err(out.spatial, g.get("spatial")) <= 1e-10);
    // asking for them changes nothing else
    CHECK(rel_err(net.forward(x, false, false).pool, out.pool) == 0);
    CHECK(!net.forward(x, false, false).spatial.defined());
  }
}
