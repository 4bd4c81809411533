// Image resampling as PIL (Pillow) does it for 8-bit images, byte for byte, and the reference's
// center_crop_arr built on it (openai/guided-diffusion and openai/consistency_models
// image_datasets.py), so that a folder of ImageNet JPEGs gives cm the pixels it gives the
// reference.
//
// pil_resize is Pillow's Resample.c for 8 bits per channel: a separable convolution, horizontal
// pass first (then vertical), each output sample a sum over the input samples in the filter's
// support scaled by max(1, in/out) around the centre (x + ½)·in/out, weights normalised to sum 1,
// then rounded to fixed point with 22 fraction bits; a pass rounds its sums and clamps to 0..255.
// A pass whose size is unchanged is skipped, and equal sizes return a copy, as Image.resize does.
#pragma once

#include <cstdint>
#include <functional>

#include "tensor/tensor.h"

namespace cm::data {

enum class ResampleFilter {
  Box,      // PIL's Image.BOX: support ½, weight 1 on (−½, ½]
  Bicubic,  // PIL's Image.BICUBIC: support 2, Keys' cubic with a = −½
};

// u8 [C, H, W] resized to [C, out_h, out_w] (both ≥ 1).
Tensor pil_resize(const Tensor& image, int64_t out_w, int64_t out_h, ResampleFilter filter);

// The reference's center_crop_arr(pil_image, size): halve with BOX while the short side is at
// least 2·size, resize with BICUBIC so that the short side is `size` (the long side
// round(long·size/short), Python's round, half to even), then crop the centre size×size
// ((H − size) // 2 rows and (W − size) // 2 columns off the top and left).
Tensor center_crop_arr(const Tensor& image, int64_t size);

// The reference's random_crop_arr(pil_image, size) (openai/consistency_models image_datasets.py,
// min_crop_frac 0.8, max_crop_frac 1.0), its draws taken from `randrange`, which must return a
// value uniform in [0, n) when called with n ≥ 1, as Python's random.randrange(n) does:
//   1. the short side s = ceil(size / 1.0) + randrange(ceil(size / 0.8) − ceil(size / 1.0) + 1)
//      (so s is in size .. ceil(1.25·size));
//   2. halve with BOX while the short side is at least 2·s, resize with BICUBIC so that the short
//      side is s (the long side round(long·s/short), Python's round);
//   3. crop size×size at row randrange(h − size + 1), column randrange(w − size + 1).
// randrange is called exactly three times, in that order.
Tensor random_crop_arr(const Tensor& image, int64_t size,
                       const std::function<int64_t(int64_t)>& randrange);

}  // namespace cm::data
