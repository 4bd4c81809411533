// `cm eval` and `cm classifier`, and the sampling that `cm sample` shares with `cm eval`.
//
//   cm eval RUN_DIR|CHECKPOINT [--metric domain|fid|is] [--n N | --seeds A-B] [--steps 1|2 |
//           --sigmas s1,s2,...] [--weights ema|ema:RATE|online|target] [--quantize floor|round]
//           [--classifier PATH] [--inception PATH] [--ref STATS.npz] [--device D] [--batch B]
//           [--out FILE] [--allow-nonfinite]
//     samples N images from the run's eval EMA (runner::load_network), quantises them, and
//     computes the metric:
//       domain  the Fréchet distance between the penultimate features of a classifier trained by
//               `cm classifier train` (eval/classifier.h) on the generated images and on the
//               classifier's real test split. Without --ref the reference statistics are computed
//               once and cached beside the classifier as <classifier>.ref-<split>.npz (mu, sigma
//               and the classifier's SHA-256, recomputed when the classifier file changes).
//       fid     FID with the FID Inception weights (--inception, tools/convert_fid_inception.py)
//               against --ref (a .npz of mu and sigma: EDM's or clean-fid's, or one made by
//               `cm eval --ref-only`); needs N ≥ 2048.
//       is      the Inception Score (torch-fidelity's 10 splits) with --inception.
//     and writes <run>/eval-<step>-<metric>-<nfe>step.json (or --out) with the value(s) and the
//     whole recipe: checkpoint and its SHA-256, weights, sampler, time points, NFE, N, seeds,
//     quantisation, the metric network and reference statistics with their SHA-256, device, batch,
//     date and cm's revision.
//
//   cm eval --ref-only --data SPEC --out STATS.npz [--metric fid|domain] [--inception PATH |
//           --classifier PATH] [--device D] [--batch B]
//     the reference statistics of a data set (as EDM's `fid.py ref`); FID refuses fewer than 2048
//     images (a rank-deficient covariance, the pitfall of the reference tools).
//
//   cm classifier train --data digits|fashion-mnist [--steps N] [--batch B] [--lr LR] [--seed S]
//           [--device D] [--out PATH]
//     trains the domain metric's classifier on the train split, measures its accuracy on the test
//     split, and saves both (with the configuration) in a safetensors checkpoint.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "runner/cli.h"  // the commands' structs; parse_seeds, parse_numbers
#include "runner/images.h"
#include "runner/trainer.h"

namespace cm::runner {

// How a run's images are drawn: consistency sampling through the time points `taus` (one step when
// empty), or EDM's Heun sampler for a teacher run (mode edm).
struct Sampler {
  std::string name;          // "consistency one-step", "consistency multistep", "edm heun"
  std::vector<double> taus;  // intermediate time points (consistency)
  int64_t heun_steps = 0;    // EDM
  int64_t nfe = 0;           // network evaluations per image
  // A class-conditional network's class for every image; nullopt: each seed's own (image_classes).
  std::optional<int64_t> fixed_class;
};

// The classes of the images of `seeds` for a network of `num_classes` classes: `fixed` for all,
// or, without it, each seed's own class drawn uniformly (a hash of the seed, so that an image
// depends only on its seed, as its noise does; the reference's image_sample.py draws the classes
// uniformly too).
std::vector<int64_t> image_classes(const std::vector<uint64_t>& seeds, int64_t num_classes,
                                   std::optional<int64_t> fixed);
// The class choice of --class checked against a loaded network: an error for a class out of
// range, or for --class given to an unconditional network.
void check_class_choice(const LoadedNetwork& m, std::optional<int64_t> fixed, bool given);
// From the options of `cm sample` and `cm eval`: --steps "1" or "2" (the run's
// sample.two_step_taus) or --sigmas (explicit time points, checked against the noise range).
// EDM runs always use their sample.teacher_steps Heun steps.
Sampler choose_sampler(const RunConfig& c, const std::string& steps, const std::string& sigmas);

// u8 images [len(seeds), C, H, W] on the CPU, drawn `batch` seeds at a time (image k depends only
// on seeds[k]) and quantised with `q`. Only the u8 images and one batch of floats are held. A
// batch with non-finite values (NaN, Inf) is an error naming how many and the first seeds
// affected, unless `allow_nonfinite`: then they quantise as quantize() does and a warning is
// printed on stderr.
// `on_batch` (when set) is called after each batch with the number of images done so far.
Tensor generate_images(const LoadedNetwork& m, const std::vector<uint64_t>& seeds, const Sampler& s,
                       Quantization q, Device device, int64_t batch, bool allow_nonfinite = false,
                       const std::function<void(int64_t)>& on_batch = {});

// generate_images across the ranks of `comm`: rank r draws the r-th of size() contiguous shares of
// the seeds (on its own device: cuda:<local rank> when `device` is a GPU), and every rank gets all
// the images, in seed order — the same bytes as one process draws (image k depends only on seed
// k). A rank that fails ends the job (cm's main aborts it).
// Rank 0's `on_batch` sees its own share's progress, scaled to the whole job.
Tensor generate_images_on_ranks(const LoadedNetwork& m, const std::vector<uint64_t>& seeds,
                                const Sampler& s, Quantization q, Device device, int64_t batch,
                                bool allow_nonfinite, dist::Communicator& comm,
                                const std::function<void(int64_t)>& on_batch = {});

// What n images of C×H×W need: in memory, the u8 images generate_images holds (n·C·H·W bytes)
// plus one float batch; on disk (with `files`, as `cm sample` writes them), one PNG per image, the
// grid and samples.npz (upper bounds: uncompressed PNG rows).
struct ImageFootprint {
  uint64_t memory = 0;
  uint64_t disk = 0;
};
ImageFootprint image_footprint(int64_t n, int64_t channels, int64_t resolution, int64_t batch,
                               bool files);
// MemAvailable of /proc/meminfo, in bytes; nullopt when unknown.
std::optional<uint64_t> available_memory();
// The space free to the user on the file system of `dir` (or of its nearest existing ancestor,
// when it is yet to be made), in bytes; nullopt when unknown.
std::optional<uint64_t> available_disk(const std::string& dir);
// Refuses (cm::Error with both figures) when `need` exceeds what is available; `what` starts the
// message ("64 images of 1×8×8"). An unknown availability is not checked.
void check_footprint(const std::string& what, const ImageFootprint& need,
                     std::optional<uint64_t> memory, std::optional<uint64_t> disk,
                     const std::string& dir);

// The commands. Input errors throw cm::Error with a message naming the option or the file; the
// return value is the exit code.
int run_eval(const EvalCommand& command);
int run_classifier(const ClassifierCommand& command);
// The same from argv as main's (argv[1] is "eval" or "classifier"): parse_command_line (usage
// errors are UsageError, a cm::Error), then run.
int cmd_eval(int argc, char** argv);
int cmd_classifier(int argc, char** argv);

}  // namespace cm::runner
