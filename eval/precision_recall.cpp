#include "eval/precision_recall.h"

#include <algorithm>
#include <vector>

#include "autograd/ops.h"

namespace cm::eval {

Tensor squared_distances(const Tensor& u_in, const Tensor& v_in) {
  CM_CHECK(u_in.dim() == 2 && v_in.dim() == 2 && u_in.size(1) == v_in.size(1),
           "squared_distances: expected u [Nu, D] and v [Nv, D], got ", shape_str(u_in.shape()),
           " and ", shape_str(v_in.shape()));
  CM_CHECK(is_floating(u_in.dtype()) && is_floating(v_in.dtype()),
           "squared_distances: features must be floating");
  NoGradGuard ng;
  const Tensor u = to(u_in, DType::f32), v = to(to(v_in, u_in.device()), DType::f32);
  const Tensor nu = sum(square(u), {1}, true);                     // [Nu, 1]
  const Tensor nv = reshape(sum(square(v), {1}, false), {1, -1});  // [1, Nv]
  const Tensor d = add(sub(nu, mul(matmul(u, transpose(v, 0, 1)), 2.0)), nv);
  return maximum(d, 0.0);
}

namespace {
void check_features(const Tensor& f, int64_t k, const char* what) {
  CM_CHECK(f.dim() == 2 && is_floating(f.dtype()), "precision/recall: ", what,
           " features must be floating [N, D], got ", shape_str(f.shape()));
  CM_CHECK(k >= 1, "precision/recall: k must be positive, got ", k);
  CM_CHECK(f.size(0) > k, "precision/recall: ", f.size(0), " ", what,
           " features; the k-th neighbour needs more than k = ", k);
}

// Rows [begin, end) of `a` against all of `b`, a block of columns at a time:
// a_in_b[i] |= d(a_i, b_j) ≤ radius_b[j] for some j (a_i within the radius of some b_j), and
// b_in_a[j] |= d(a_i, b_j) ≤ radius_a[i] for some i.
void mark(const Tensor& a, int64_t begin, int64_t end, const std::vector<float>& radius_a,
          const Tensor& b, const std::vector<float>& radius_b, std::vector<char>& a_in_b,
          std::vector<char>& b_in_a, int64_t block) {
  const Tensor rows = narrow(a, 0, begin, end - begin);
  for (int64_t c0 = 0; c0 < b.size(0); c0 += block) {
    const int64_t c1 = std::min(b.size(0), c0 + block);
    const Tensor d =
        contiguous(to(squared_distances(rows, narrow(b, 0, c0, c1 - c0)), Device::cpu()));
    const float* p = static_cast<const float*>(d.data_ptr());
    const int64_t w = c1 - c0;
    for (int64_t i = 0; i < end - begin; ++i)
      for (int64_t j = 0; j < w; ++j) {
        const float dij = p[i * w + j];
        if (dij <= radius_b[size_t(c0 + j)]) a_in_b[size_t(begin + i)] = 1;
        if (dij <= radius_a[size_t(begin + i)]) b_in_a[size_t(c0 + j)] = 1;
      }
  }
}
}  // namespace

Tensor manifold_radii(const Tensor& features, int64_t k, int64_t block) {
  check_features(features, k, "");
  CM_CHECK(block > 0, "manifold_radii: block must be positive");
  const int64_t n = features.size(0);
  std::vector<float> radii(static_cast<size_t>(n));
  std::vector<float> row(static_cast<size_t>(n));
  for (int64_t r0 = 0; r0 < n; r0 += block) {
    const int64_t r1 = std::min(n, r0 + block);
    const Tensor d = contiguous(
        to(squared_distances(narrow(features, 0, r0, r1 - r0), features), Device::cpu()));
    const float* p = static_cast<const float*>(d.data_ptr());
    for (int64_t i = 0; i < r1 - r0; ++i) {
      std::copy(p + i * n, p + (i + 1) * n, row.begin());
      // the (k+1)-th smallest: index k of the sorted row, whose index 0 is the feature itself
      std::nth_element(row.begin(), row.begin() + k, row.end());
      radii[size_t(r0 + i)] = row[size_t(k)];
    }
  }
  return from_vector(radii, {n});
}

PrecisionRecall precision_recall(const Tensor& ref, const Tensor& sample, int64_t k,
                                 int64_t block) {
  check_features(ref, k, "reference");
  check_features(sample, k, "sample");
  CM_CHECK(ref.size(1) == sample.size(1), "precision/recall: reference features of dim ",
           ref.size(1), ", sample features of dim ", sample.size(1));
  const std::vector<float> r_ref = manifold_radii(ref, k, block).to_vector<float>();
  const std::vector<float> r_sample = manifold_radii(sample, k, block).to_vector<float>();
  std::vector<char> ref_in(size_t(ref.size(0)), 0), sample_in(size_t(sample.size(0)), 0);
  for (int64_t r0 = 0; r0 < ref.size(0); r0 += block)
    mark(ref, r0, std::min(ref.size(0), r0 + block), r_ref, sample, r_sample, ref_in, sample_in,
         block);
  PrecisionRecall out;
  for (char c : sample_in) out.precision += c;
  for (char c : ref_in) out.recall += c;
  out.precision /= double(sample.size(0));
  out.recall /= double(ref.size(0));
  return out;
}

}  // namespace cm::eval
