// Improved precision and recall (Kynkäänniemi et al. 2019), as openai's evaluator computes them
// for the paper's ImageNet-64 and LSUN tables (openai/consistency_models evaluations/evaluator.py,
// ManifoldEstimator with its defaults: k = 3 neighbours, no radius clamping):
//
//   distances  squared Euclidean, d(u, v) = max(‖u‖² − 2·u·v + ‖v‖², 0), from one product of
//              feature blocks;
//   radii      each feature's distance to its k-th nearest neighbour in its own set, counting
//              itself as the 0-th (the (k+1)-th smallest of its row, which holds its own 0);
//   precision  the fraction of the samples that lie within the radius of some reference feature
//              (d ≤ r), recall the fraction of the reference features within the radius of some
//              sample.
//
// Features are the Inception pool3 vectors (eval/fid.h, 2048-d). The reference computes the
// distance blocks in float16 (falling back to float32 where that overflows); here they are
// float32 throughout, so a pair within an f16 rounding of a radius may count differently.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace cm::eval {

// d(u_i, v_j) for u [Nu, D], v [Nv, D] (floating, any device) -> f32 [Nu, Nv] on u's device.
Tensor squared_distances(const Tensor& u, const Tensor& v);

// The radius of each row of features [N, D] (N > k): f32 [N] on the CPU, computed `block` rows at
// a time (memory block·N floats).
Tensor manifold_radii(const Tensor& features, int64_t k = 3, int64_t block = 10000);

struct PrecisionRecall {
  double precision = 0;
  double recall = 0;
};

// ref [N1, D] (the real images' features), sample [N2, D] (the model's), N1, N2 > k.
PrecisionRecall precision_recall(const Tensor& ref, const Tensor& sample, int64_t k = 3,
                                 int64_t block = 10000);

}  // namespace cm::eval
