// Sampling from a consistency model: one step, and the paper's Algorithm 1 (multistep consistency
// sampling). Every image draws its noise from its own generator seeded by its seed, so image k is
// the same whatever the batch size or device.
#pragma once

#include <cstdint>
#include <vector>

#include "consistency/edm.h"

namespace cm::consistency {

// Checks the intermediate time points τ_1 > τ_2 > … (strictly decreasing, each in [σ_min, σ_max));
// errors name the offending entry.
void validate_time_points(const std::vector<double>& taus, const NoiseConstants& c);

// The σ values of the openai code's `ts` convention: indices into a Karras grid of `n` points, the
// first 0 (σ_max) and the last n−1 (σ_min, which only ends the loop). Returns the intermediate τ's.
std::vector<double> time_points_from_indices(const std::vector<int64_t>& ts, int64_t n,
                                             const NoiseConstants& c);

struct SampleOptions {
  std::vector<double> taus;  // intermediate time points; empty = one-step sampling
  bool clip = true;  // clamp each denoised image to [−1, 1] (the released code's clip_denoised)
};

// Algorithm 1: x = f(σ_max·z, σ_max); for each τ: x = f(x + √(τ² − σ_min²)·z, τ). Images are
// [len(seeds), C, H, W] f32 on `device`; image k's noise comes from Generator(seeds[k]).
Tensor consistency_sample(const Denoiser& f, const std::vector<uint64_t>& seeds,
                          const Shape& image_shape, const Tensor& class_labels,
                          const SampleOptions& o, Device device);

// One-hot class rows [len(classes), num_classes], f32 on `device`: the class labels a
// class-conditional network takes (each class in 0 .. num_classes − 1).
Tensor one_hot_classes(const std::vector<int64_t>& classes, int64_t num_classes, Device device);

// N(0, I) noise [len(seeds), *image_shape], row k from Generator(seeds[k]) advancing `draws` times
// first.
Tensor per_image_noise(const std::vector<uint64_t>& seeds, const Shape& image_shape, int64_t draw,
                       Device device);

}  // namespace cm::consistency
