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
//   openai   the reference's image folders (load_reference_folder), center-cropped at load;
//            their reader also serves each image at its own resolution, for random crops.
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
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace cm::data {

// The images of a streamed data set, read when asked: read(i, dst) writes image i (0 ≤ i < N) as
// C·H·W bytes, channel-planar, to dst. Safe to call from several threads at once. An image that
// cannot be decoded, or is not [C, H, W], is a cm::Error naming its file.
class ImageReader {
 public:
  virtual ~ImageReader() = default;
  virtual void read(int64_t index, uint8_t* dst) const = 0;
  // Whether original() gives the images as they were before the data set's crop (the reference's
  // image folders): then a data set keeps its reader even when its images are in memory, so
  // that random crops (ImageDataset::read_random_crop) start from the full image.
  virtual bool has_originals() const { return false; }
  // Image `index` at its own resolution, u8 [C, h, w], before any crop; only if has_originals().
  virtual Tensor original(int64_t index) const;
};

// A data set's images are either in memory (`images`: decoded at load, or a view of a mapped file
// whose pages the batches bring in) or streamed (`reader`, with `images` undefined: image folders
// and zips too large to decode at once, data sets of several files). Both give the same bytes:
// read(), rows(), read_random_crop() and the Loader serve either, so what a run trains on does
// not depend on it. (An in-memory data set keeps its `reader` where the reader has originals.)
struct ImageDataset {
  Tensor images;            // u8 [N, C, H, W], C = 1 or 3, contiguous; undefined when streamed
  Tensor labels;            // i64 [N]: the class 0..num_classes−1, or −1 where unlabelled
  int64_t num_classes = 0;  // 0 when the data set has no labels
  std::string source;       // what it was loaded from (the spec or path), for logs
  std::shared_ptr<const ImageReader> reader;  // a streamed data set's images
  Shape streamed_shape;                       // a streamed data set's [N, C, H, W]

  bool streamed() const { return !images.defined(); }
  const Shape& shape() const { return images.defined() ? images.shape() : streamed_shape; }
  int64_t size() const { return shape()[0]; }
  int64_t channels() const { return shape()[1]; }
  int64_t height() const { return shape()[2]; }
  int64_t width() const { return shape()[3]; }
  // Image i as C·H·W bytes into dst.
  void read(int64_t i, uint8_t* dst) const;
  // Images first .. first + count − 1 as u8 [count, C, H, W] on the CPU: a view of `images`, or
  // read by up to `threads` threads (0: one per core) from a streamed data set.
  Tensor rows(int64_t first, int64_t count, int threads = 0) const;
  // Image i randomly cropped to the data set's H×W as the reference's random_crop_arr crops it
  // (datasets/resize.h, its three draws from randrange), as C·H·W bytes into dst: from the image
  // at its own resolution where the reader has originals (the reference's image folders: exactly
  // the reference's random_crop=True pixels), else from the stored image, which must be square
  // (scaled up by 1 .. 1.25 and cropped back).
  void read_random_crop(int64_t i, const std::function<int64_t(int64_t)>& randrange,
                        uint8_t* dst) const;
};

// Runs fn(i) for i in [0, n) on up to `threads` threads (0: one per core), i taken in interleaved
// order; the first exception thrown by any fn is rethrown once every thread has stopped.
void parallel_rows(int64_t n, int threads, const std::function<void(int64_t)>& fn);

// How load_dataset keeps a data set's images.
enum class Residency {
  Auto,    // image folders and zips in memory when decoded they take at most memory_limit
           // bytes, streamed otherwise; several .npz files through a reader over the files
  Memory,  // everything decoded into one tensor at load
  Stream,  // image folders, zips and several .npz files read image by image as batches need them
};
struct LoadOptions {
  Residency residency = Residency::Auto;
  uint64_t memory_limit = uint64_t(4) << 30;  // Auto's threshold, in bytes of decoded images
  int threads = 0;                            // decoding threads at load (0: one per core)
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
// All PNGs under `dir` (recursively); other image formats (.jpg, ...) are refused. Streamed, the
// names, dataset.json and the first image are read at load and each image when a batch needs
// it (an image of another size is then the error, naming its file).
ImageDataset load_image_folder(const std::string& dir, const LoadOptions& options = {});
// The same layout inside a zip archive (stored or deflated entries).
ImageDataset load_edm_zip(const std::string& path, const LoadOptions& options = {});

// ---- the reference's image folders ---------------------------------------------------------
// openai/guided-diffusion's and openai/consistency_models' image_datasets.py layout (ImageNet's
// train folder as distributed, LSUN exported by datasets/lsun_bedroom.py): every .jpg, .jpeg and
// .png file (any case) under `dir`, each directory's entries taken in sorted order, subdirectories
// entered where they come; the class of an image is its file name up to the first '_'
// (n01440764_10026.JPEG → n01440764), classes numbered in sorted order of their names (so every
// such folder is labelled; data.labels decides whether a run uses them). Each image is decoded
// by its content (JPEG or PNG), made RGB (gray replicated, alpha dropped, CMYK converted), and
// center_crop_arr'd to size×size (datasets/resize.h) — the reference's pixels, byte for byte.
// GIFs are refused. In memory or streamed as `options` say.
ImageDataset load_reference_folder(const std::string& dir, int64_t size,
                                   const LoadOptions& options = {});

// ---- downsampled ImageNet .npz --------------------------------------------------------------
ImageDataset load_imagenet_npz(const std::string& path);
// Several .npz files of one image size, as one data set in the order given (ImageNet-64's
// train_data_batch_1 .. 10): image i of the whole is image i − offset of its file. Each file is
// loaded as load_imagenet_npz loads it (mapped where stored); the whole is streamed through a
// reader over them, or with Residency::Memory copied into one tensor. Labels and num_classes are
// the files' (the largest); files of different image shapes, or some labelled and some not, are
// an error naming both.
ImageDataset load_npz_files(const std::vector<std::string>& paths, const LoadOptions& options = {});
// The .npz files of a directory in natural order (digit runs compared as numbers:
// train_data_batch_2 before train_data_batch_10); none is an error naming the directory.
std::vector<std::string> npz_files_in(const std::string& dir);

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
//   "openai:<dir>:<size>"           the reference's image folder (load_reference_folder)
//   "npz:<path>[,<path>...]"        a downsampled-ImageNet .npz, or openai's arr_0/arr_1 batch;
//                                   several (load_npz_files), or a directory of them (npz_files_in)
//   "tint:<spec>"                   a gray, labelled data set in its classes' colours
//                                   (tint_by_class), e.g. "tint:fashion-mnist:test"
// Paths may contain ':' (the split is only taken from a trailing ":train" or ":test").
ImageDataset load_dataset(const std::string& spec, const LoadOptions& options = {});

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
