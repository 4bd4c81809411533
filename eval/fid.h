// FID and Inception Score computed the way the reference tools compute them (pytorch-fid,
// clean-fid's legacy_tensorflow mode, EDM's fid.py, torch-fidelity, openai's evaluator):
//
//   input     u8 images -> TF1's resize_bilinear to 299×299 (the "funky alignment" the Inception
//             graph applies, which clean-fid's legacy_tensorflow mode, EDM, torch-fidelity and
//             openai's evaluators all reproduce) -> (x − 128)/128 -> FidInceptionV3
//             (eval/inception.h) -> pool3 features [N, 2048] and logits [N, 1008];
//   FID       mean and covariance of the features accumulated in f64 (FeatureStats), kept as .npz
//             files with keys "mu" and "sigma" (the format of EDM's and clean-fid's reference
//             statistics), and the Fréchet distance between two such Gaussians, in f64 on the
//             CPU through symmetric eigendecompositions and singular values (LAPACK's dsyevd and
//             dgesdd) instead of scipy's general sqrtm;
//   IS        torch-fidelity's Inception Score (what the CM code reports for CIFAR-10): 10 splits
//             of the shuffled samples, mean and standard deviation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace cm::eval {

// ---- the input path --------------------------------------------------------------------------

// TF1's tf.image.resize_bilinear(align_corners=False) (TensorFlow's resize_bilinear_op.cc, as the
// Inception graph runs it): along each dim, output pixel i samples the input coordinate
// src = i·scale with scale = in/out computed in f32, between i0 = ⌊src⌋ and i1 = min(i0 + 1,
// in − 1) with weight t = src − i0 (no half-pixel offset, clamped to the border); along W first,
// then H, each step a + (b − a)·t in the output dtype. This is what torch-fidelity's
// interpolate_bilinear_2d_like_tensorflow1x ("slow") computes, bit for bit in f32, and what
// openai's affine_grid/grid_sample emulation approximates to within 1e-3 on the 0..255 scale.
// x [N, C, H, W] u8 (converted to f32) or floating -> [N, C, out_h, out_w] in f32 (or x's floating
// dtype); any device.
Tensor resize_bilinear_tf1(const Tensor& x, int64_t out_h, int64_t out_w);

// u8 images [N, C, H, W] with C = 3, or C = 1 (repeated to 3 channels, as EDM's fid.py does) ->
// f32 [N, 3, 299, 299] = (resize_bilinear_tf1(x, 299, 299) − 128)/128 on the images' device.
Tensor inception_input(const Tensor& images_u8);
inline constexpr int64_t kInceptionSize = 299;

// ---- statistics ------------------------------------------------------------------------------

// The Gaussian of a feature set: mu f64 [D], sigma f64 [D, D], on the CPU.
struct FidStats {
  Tensor mu;
  Tensor sigma;
  int64_t dim() const { return mu.size(0); }
};

// Mean and covariance of feature vectors fed in batches, in f64. Each batch's mean m_b and
// centred scatter S_b = (X − m_b)ᵀ(X − m_b) are merged into the running ones (Chan, Golub and
// LeVeque's pairwise update): with δ = m_b − m and n' = n + n_b,
//   m ← m + δ·n_b/n',   S ← S + S_b + δδᵀ·n·n_b/n',
// which avoids the cancellation of Σxxᵀ − n·mmᵀ when the mean is large against the spread. The
// sums live on the device of the first batch (a GPU keeps them there); the batches may be any
// floating dtype. The covariance is unbiased (S/(n − 1)), as numpy.cov and EDM's fid.py.
class FeatureStats {
 public:
  explicit FeatureStats(int64_t dim);
  // features [B, dim]; an empty batch is ignored.
  void add(const Tensor& features);
  int64_t count() const { return n_; }
  int64_t dim() const { return dim_; }
  // Needs at least two samples.
  FidStats stats() const;

 private:
  int64_t dim_;
  int64_t n_ = 0;
  Tensor mean_;     // f64 [dim]
  Tensor scatter_;  // f64 [dim, dim]
};

// The statistics of a whole feature matrix [N, D] (N ≥ 2), as one FeatureStats batch.
FidStats compute_stats(const Tensor& features);

// .npz with "mu" (f64 [D]) and "sigma" (f64 [D, D]), as numpy.savez(path, mu=mu, sigma=sigma);
// sFID's spatial statistics go under "mu_s" and "sigma_s", as in openai's reference batches.
void save_stats_npz(const std::string& path, const FidStats& stats,
                    const std::string& mu_key = "mu", const std::string& sigma_key = "sigma");
// Reads "mu" and "sigma" (or the keys given: "mu_s", "sigma_s" for sFID) from an .npz (other
// arrays, such as the images of openai's reference batches, are not read). f32 arrays are widened
// to f64. Errors name the file: a missing key (listing those present), mu not 1-D, sigma not
// [D, D] for mu's D, a non-floating dtype, or non-finite values.
FidStats load_stats_npz(const std::string& path, const std::string& mu_key = "mu",
                        const std::string& sigma_key = "sigma");

// ---- the Fréchet distance --------------------------------------------------------------------

// The eigendecomposition of a symmetric matrix a [n, n] (only its lower triangle is read, LAPACK
// dsyevd on the CPU, in f64): values ascending, and with vectors, an orthonormal vectors [n, n]
// whose column i belongs to values[i] (numpy.linalg.eigh's convention).
struct SymmetricEigen {
  Tensor values;   // f64 [n]
  Tensor vectors;  // f64 [n, n] (undefined without vectors)
};
SymmetricEigen eigh(const Tensor& a, bool vectors = true);

// The singular values of a [m, n] (f64 on the CPU, LAPACK dgesdd), descending: f64 [min(m, n)].
Tensor singular_values(const Tensor& a);

// FID = ‖μ1 − μ2‖² + Tr Σ1 + Tr Σ2 − 2·Tr √(Σ1Σ2), in f64 on the CPU, through symmetric
// eigendecompositions instead of a general (non-symmetric) matrix square root. With
// A = Σ1^{1/2} and B = Σ2^{1/2} (from eigh, negative eigenvalues clamped to 0), Σ1Σ2 is similar
// to M = A·Σ2·A = (AB)(AB)ᵀ, so Tr √(Σ1Σ2) = Σ_i √λ_i(M) = Σ_i σ_i(AB), the singular values of
// AB. They are summed directly: taking √ of M's eigenvalues would turn the round-off ε‖M‖ of
// the near-zero ones (rank-deficient covariances, fewer samples than dimensions) into √ε·‖AB‖
// each, while the singular values carry ε‖AB‖; so identical statistics give 0 to round-off.
// Both covariances are symmetrised ((Σ + Σᵀ)/2) first. The result is not clamped: statistics
// that agree to round-off may give a tiny negative number. For D = 2048 it takes two
// eigendecompositions, three products and an SVD: about 10 s on two cores.
double frechet_distance(const FidStats& a, const FidStats& b);

// ---- Inception Score -------------------------------------------------------------------------

struct InceptionScore {
  double mean = 0;
  double std = 0;
};

// torch-fidelity's isc_features_to_metric with its defaults (splits 10, shuffle, seed 2020):
// logits [N, C] (any floating dtype and device; torch-fidelity feeds its "logits_unbiased",
// FidInceptionV3's logits) are converted to f64; when shuffle, the rows are reordered by NumPy's
// RandomState(seed).permutation(N); split k holds rows [k·N/splits, (k+1)·N/splits); each split
// scores exp(mean_x Σ_y p(y|x)·(log p(y|x) − log p(y))) with p = softmax(logits) and p(y) the
// split's mean of p; the result is the mean and the population standard deviation (np.std) of
// the split scores. Needs N ≥ splits ≥ 1.
InceptionScore inception_score(const Tensor& logits, int64_t splits = 10, bool shuffle = true,
                               uint32_t seed = 2020);

// numpy.random.RandomState(seed).permutation(n): arange(n) shuffled by Fisher–Yates from the last
// element down, each index j ∈ [0, i] drawn from MT19937 (init_genrand(seed)) by masked
// rejection (NumPy's legacy random_interval).
std::vector<int64_t> numpy_legacy_permutation(int64_t n, uint32_t seed);

}  // namespace cm::eval
