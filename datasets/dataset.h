// Image data sets held in memory as u8 tensors, their loaders, and toy 2-D distributions.
//
// Every loader validates its input and fails with a cm::Error that names the file: wrong magic
// numbers, truncated or oversized data, wrong record sizes, mixed image sizes or channel counts,
// labels out of range.
//
// Formats:
//   digits   the 8×8 UCI digits shipped with cm: gzip CSV, per line 64 gray levels 0..16 then the
//            label 0..9; pixels are scaled to 0..255 as round(v·255/16).
//   IDX      MNIST / Fashion-MNIST: big-endian magic 0x00000803 (u8 images, dims N, H, W) and
//            0x00000801 (u8 labels, dim N), raw or gzip-compressed (detected by the gzip magic).
//   CIFAR-10 binary batches: records of 1 label byte (0..9) + 3072 bytes (R, G, B planes of 32×32).
//   EDM      a folder or an uncompressed zip of PNGs plus an optional root dataset.json,
//            {"labels": [["00000/img00000000.png", 6], ...]} or {"labels": null}. Without
//            dataset.json (or with null labels) there are no labels; folder names never mean
//            classes. Images are taken in sorted order of their '/'-separated relative names.
//   npz      downsampled ImageNet (Chrabaszcz et al. 2017): a zip of data.npy (u8 [N, 3·R·R],
//            channel-planar) and labels.npy (integers 1..1000, stored here 0-based); a stored
//            (numpy.savez) data.npy is memory-mapped, not read: the images tensor is a view of
//            the file, paged in as batches touch it (its CRC is not checked); or openai's
//            image batches (guided-diffusion's reference batches, image_sample.py's and cm
//            sample's samples.npz): arr_0.npy u8 [N, H, W, C] (C = 1 or 3) and, optionally,
//            arr_1.npy, 0-based labels (num_classes = the largest + 1).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "tensor/tensor.h"

namespace cm::data {

struct ImageDataset {
  Tensor images;            // u8 [N, C, H, W], C = 1 or 3, contiguous
  Tensor labels;            // i64 [N]: the class 0..num_classes−1, or −1 where unlabelled
  int64_t num_classes = 0;  // 0 when the data set has no labels
  std::string source;       // what it was loaded from (the spec or path), for logs

  int64_t size() const { return images.size(0); }
  int64_t channels() const { return images.size(1); }
  int64_t height() const { return images.size(2); }
  int64_t width() const { return images.size(3); }
};

// ---- the shipped digits ---------------------------------------------------------------------
// Absolute path of datasets/data/digits.csv.gz (1797 images of 1×8×8, 10 classes).
std::string digits_path();
ImageDataset load_digits_csv(const std::string& path);

// ---- MNIST-style IDX ------------------------------------------------------------------------
// Images [N, 1, H, W]; num_classes = largest label + 1.
ImageDataset load_idx(const std::string& images_path, const std::string& labels_path);
// Fashion-MNIST, split "train" (60000 images) or "test" (10000), 1×28×28, 10 classes. The files
// (train-images-idx3-ubyte.gz, ...; raw files without .gz also do) are looked up in
// $CM_FASHION_MNIST_DIR when set, then in /usr/share/datasets/fashion-mnist (the Debian package
// dataset-fashion-mnist). A missing file is an error saying how to install it.
ImageDataset fashion_mnist(const std::string& split);

// ---- CIFAR-10 binary ------------------------------------------------------------------------
// `directory` holds data_batch_1.bin .. data_batch_5.bin (split "train") and test_batch.bin
// (split "test"). Images [N, 3, 32, 32], 10 classes.
ImageDataset load_cifar10_bin(const std::string& directory, const std::string& split);

// ---- EDM image folders and zips -------------------------------------------------------------
// All PNGs under `dir` (recursively); other image formats (.jpg, ...) are refused.
ImageDataset load_image_folder(const std::string& dir);
// The same layout inside a zip archive (stored or deflated entries).
ImageDataset load_edm_zip(const std::string& path);

// ---- downsampled ImageNet .npz --------------------------------------------------------------
ImageDataset load_imagenet_npz(const std::string& path);

// The header of a NumPy .npy file (format versions 1, 2 and 3), parsed strictly: the dict must
// hold exactly 'descr' (a little-endian or byte-order-free integer or float type such as '|u1' or
// '<i8'), 'fortran_order' (True/False) and 'shape' (a tuple of non-negative integers), and the data
// after the header must be exactly prod(shape)·itemsize bytes. `name` is used in errors.
struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  Shape shape;
  size_t itemsize = 0;
  size_t data_offset = 0;  // where the data begins
};
NpyHeader parse_npy_header(const uint8_t* data, size_t size, const std::string& name);

// ---- class tint -----------------------------------------------------------------------------
// An RGB data set made from a gray, labelled one, for colorization (the paper's Algorithm 4) on
// data where the colour is a function of the content: image i becomes v·c_k / 255 per channel,
// rounded, with v its gray level and c_k the k-th of ten saturated colours (tint_palette, none of
// them gray), k = label mod 10. Labels and classes are kept. RGB or unlabelled input is an error.
const std::array<std::array<uint8_t, 3>, 10>& tint_palette();
ImageDataset tint_by_class(const ImageDataset& gray);

// ---- by name, as the runner's configs reference data sets -----------------------------------
// spec grammar:
//   "digits"                        the shipped 8×8 digits
//   "fashion-mnist[:train|:test]"   Fashion-MNIST (default split: train)
//   "idx:<images>,<labels>"         a pair of IDX files
//   "cifar10:<dir>[:train|:test]"   CIFAR-10 binary batches (default split: train)
//   "folder:<dir>"                  an EDM image folder
//   "zip:<path>"                    an EDM dataset zip
//   "npz:<path>"                    a downsampled-ImageNet .npz, or openai's arr_0/arr_1 batch
//   "tint:<spec>"                   a gray, labelled data set in its classes' colours
//                                   (tint_by_class), e.g. "tint:fashion-mnist:test"
// Paths may contain ':' (the split is only taken from a trailing ":train" or ":test").
ImageDataset load_dataset(const std::string& spec);

// ---- toy 2-D distributions ------------------------------------------------------------------
// f32 [n, 2] samples of "moons", "swiss_roll", "eight_gaussians" or "checkerboard", a pure
// function of (name, n, seed): a Generator(seed) draws u = rand([n, 3], f64), then
// e = randn([n, 2], f64); row i uses u_i = (u0, u1, u2) and e_i = (e0, e1):
//   moons:           t = π·u0; (cos t, sin t) if u2 < ½ else (1 − cos t, ½ − sin t)  (the two
//                    moons of sklearn's make_moons), plus 0.05·e, minus (½, ¼), times 2;
//   swiss_roll:      t = 1.5π·(1 + 2·u0); (t·cos t, t·sin t) / 5 + 0.1·e;
//   eight_gaussians: k = ⌊8·u0⌋; 2·(cos(kπ/4), sin(kπ/4)) + 0.1·e;
//   checkerboard:    x = 4·u0 − 2; y = u1 − 2·⌊2·u2⌋ + (⌊x⌋ mod 2); 2·(x, y), so that
//                    ⌊X/2⌋ + ⌊Y/2⌋ is even for every point (X, Y) in [−4, 4)².
Tensor toy_2d(const std::string& name, int64_t n, uint64_t seed);

}  // namespace cm::data
