// Zero-shot editing with a consistency model: the paper's Algorithm 4 (Song et al. 2023, appendix;
// openai/consistency_models `cm/karras_diffusion.py`: iterative_inpainting, _colorization,
// _superres). No training for the task: the edit is a constraint in the space of an orthogonal
// linear map A (A⁻¹ = Aᵀ) with a binary mask Ω over A's output (1 = to be generated, 0 = known
// from the reference y):
//
//   y ← A⁻¹[(A y) ⊙ (1 − Ω) + fill·Ω]                the degraded reference (fill −1, the paper's;
//                                                    none for stroke-guided generation: y itself)
//   x ← f(y + τ_1·z, τ_1);   x ← A⁻¹[(A y) ⊙ (1 − Ω) + (A x) ⊙ Ω]
//   for m = 2 … M:  x ← f(x + √(τ_m² − ε²)·z, τ_m);   x ← A⁻¹[(A y) ⊙ (1 − Ω) + (A x) ⊙ Ω]
//
// with f's output clamped to [−1, 1] (as the multistep sampler), ε = σ_min, and image k's noise z
// from its own seed (draw m for step m, as consistency_sample), so a result depends only on its
// reference and seed.
//
// The maps: the identity (inpainting, stroke-guided generation), a per-pixel 3×3 rotation of the
// channels whose first row is the normalised luma (0.2989, 0.5870, 0.1140) (colorization: the luma
// is known), and a per-patch P²×P² rotation whose first row is the normalised all-ones vector
// (super-resolution: each patch's mean is known). Coefficients are laid out in image shape:
// channel k holds coefficient k (colorization); in each p×p patch, position (i, j) holds
// coefficient i·p + j (super-resolution), so the known mean sits at each patch's top-left pixel.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "consistency/edm.h"

namespace cm::consistency {

// An orthogonal linear map on images [N, C, H, W] and its inverse (its transpose).
struct EditTransform {
  std::string name;
  std::function<Tensor(const Tensor&)> forward;  // A x
  std::function<Tensor(const Tensor&)> inverse;  // Aᵀ x
};

EditTransform identity_transform();
EditTransform colorization_transform();           // needs C = 3
EditTransform superres_transform(int64_t patch);  // needs H and W divisible by patch

// The rotations themselves, row-major f64 (A's rows): an orthonormal basis whose first vector is
// `first` normalised (Gram–Schmidt of `first`, e_2, e_3, …, skipping dependent vectors).
std::vector<double> orthogonal_with_first_row(const std::vector<double>& first);
std::vector<double> colorization_matrix();        // 3×3
std::vector<double> patch_matrix(int64_t patch);  // patch²×patch²

// Masks Ω over A's output, f32 0/1 of shape [1, C, H, W] (broadcast over the batch).
Tensor colorization_mask(int64_t height, int64_t width);  // channel 0 known, 1 and 2 generated
Tensor superres_mask(int64_t channels, int64_t height, int64_t width, int64_t patch);
// A box of generated pixels [top, top + h) × [left, left + w) in every channel.
Tensor box_mask(int64_t channels, int64_t height, int64_t width, int64_t top, int64_t left,
                int64_t h, int64_t w);
// The centre square of half the side (the paper's inpainting figures use a centred region).
Tensor center_square_mask(int64_t channels, int64_t height, int64_t width);
// A capital letter (A–Z) of a 5×7 bitmap font, scaled by the largest integer that keeps it within
// 80 % of the image (at least 1) and centred: the reference inpaints a letter "S"
// (openai/consistency_models iterative_inpainting draws one with PIL).
Tensor letter_mask(int64_t channels, int64_t height, int64_t width, char letter = 'S');
// Per image, `count` boxes with sides between ⌈1/8⌉ and ⌊1/3⌋ of the image's at uniform places,
// drawn from the image's seed (Philox counter 2^62 on, far past any noise draw): [N, C, H, W], so
// an image's mask depends only on its seed.
Tensor random_boxes_mask(const std::vector<uint64_t>& seeds, int64_t channels, int64_t height,
                         int64_t width, int64_t count = 3);

// f of the algorithm: an estimate of the clean image from x at noise level τ (the same τ for the
// batch), before clipping.
using EditFunction = std::function<Tensor(const Tensor& x, double tau)>;
// A consistency model's f(x, τ) (the Consistency parameterisation).
EditFunction consistency_function(const Denoiser& f, const Tensor& class_labels = {});
// What a consistency model distils, from an EDM teacher D: the probability-flow ODE solved from τ
// down to 0 by EDM's Heun sampler on `steps` Karras points from τ to σ_min (then 0; NFE
// 2·steps − 1; steps = 1: one Euler step, the denoiser D(x, τ) itself). Lets `cm edit` run the
// teacher through Algorithm 4 as a baseline.
EditFunction teacher_ode_function(const Denoiser& d, int64_t steps,
                                  const Tensor& class_labels = {});

struct EditOptions {
  std::vector<double> taus;  // τ_1 > … > τ_M, each in [σ_min, σ_max)… τ_1 may be σ_max
  // The value of the unknown coefficients in the degraded reference (the paper's −1); none: they
  // keep the reference's own values (stroke-guided generation starts from the painting itself).
  std::optional<double> fill = -1.0;
  bool clip = true;  // clamp f's output to [−1, 1]
  // Called after each time point with the number done (a progress line); may be empty.
  std::function<void(size_t)> on_point = {};
};

struct EditResult {
  Tensor degraded;  // y with its unknown part filled: [N, C, H, W]
  Tensor result;    // the edit
};

// Algorithm 4 for the references `y` [N, C, H, W] in [−1, 1] with the seeds of their noise; Ω of
// shape [1, C, H, W] or [N, C, H, W]; `c` gives ε = σ_min and the range of the τ.
EditResult edit(const EditFunction& f, const NoiseConstants& c, const Tensor& y,
                const EditTransform& a, const Tensor& omega, const std::vector<uint64_t>& seeds,
                const EditOptions& o);
// The same with a consistency model (consistency_function(f, class_labels)).
EditResult edit(const Denoiser& f, const Tensor& y, const EditTransform& a, const Tensor& omega,
                const std::vector<uint64_t>& seeds, const EditOptions& o,
                const Tensor& class_labels = {});

}  // namespace cm::consistency
