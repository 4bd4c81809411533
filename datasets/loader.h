// Loader: training batches from an ImageDataset, in memory or streamed (each batch's images read
// by options.read_threads threads as it is prepared, on the prefetch thread when prefetching).
//
//   data::Loader loader(data::load_dataset("digits"), {.batch_size = 64, .seed = 1,
//                                                     .random_flip = true, .device = dev});
//   for (int step = 0; ...; ++step) {
//     data::Batch b = loader.next();  // images f32 [64, 1, 8, 8] in [−1, 1], labels one-hot
//     ...
//     checkpoint.loader = loader.state();  // restore with Loader(..., saved_state)
//   }
//
// Order. Epoch e visits the data set in the order of a permutation that is a pure function of
// (seed, e): a Fisher–Yates shuffle whose swap at step i (i = N−1 .. 1) takes j = ⌊x·(i+1)/2^64⌋
// from the 64-bit value x in lanes 0–1 of the Philox block with key `seed` and counter
// (i, e) (i in counter words 0–1, e in words 2–3). Nothing depends on thread timing, the prefetch
// setting or the device.
//
// Fixed batch size. An epoch is ⌊N / batch_size⌋ batches; the N mod batch_size samples left over
// at the end of an epoch's permutation are dropped (a different set each epoch), so every batch has
// exactly batch_size samples, as training wants.
//
// Random crops. With random_crop, the sample at position p of epoch e's order is cropped as the
// reference's random_crop_arr crops it (ImageDataset::read_random_crop: from the full-resolution
// image of the reference's image folders, else from the stored, square image), its three draws
// (short side, row, column) taken from lanes 0, 1, 2 of the Philox block with key
// seed + 0x9E3779B97F4A7C15 and counter (p, e): randrange(n) = ⌊u·n / 2^32⌋ for the 32-bit lane
// u. The crop comes before the flip, as in the reference. Like the flips, it is a pure function
// of (seed, epoch, position): the same for every shard count, thread count and resume point.
//
// Flips. With random_flip, the sample at position p of epoch e's order is mirrored left–right
// when bit 31 of lane 2 of the Philox block (key seed, counter (p, e)) is set: probability ½,
// independent of the shuffle's lanes.
//
// Resuming. state() is the position of the batch the next call to next() returns; a Loader
// constructed with (or set_state to) a saved state returns exactly the batches the original would
// have returned from there on.
//
// Threads. With prefetch (the default) a background thread prepares up to two batches ahead on the
// CPU; next() takes the oldest and moves it to options.device on the caller's thread. An exception
// thrown while preparing a batch (by `transform`, say) is rethrown by the next() that would have
// returned that batch, and by every next() after it until set_state(). Destruction stops and joins
// the thread at once, whatever the position in the epoch.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "datasets/dataset.h"

namespace cm::data {

struct LoaderState {
  uint64_t epoch = 0;
  uint64_t index = 0;  // batch index within the epoch, 0 .. batches_per_epoch − 1
  bool operator==(const LoaderState&) const = default;
};

struct Batch {
  Tensor images;         // f32 [B, C, H, W]: pixel x becomes x / 127.5 − 1, in [−1, 1]
  Tensor labels;         // f32 [B, num_classes] one-hot (all zero for an unlabelled sample);
                         // undefined when the data set has no classes or labels are off
  Tensor indices;        // i64 [B] on the CPU: the data set rows in this batch
  LoaderState position;  // which batch this is
};

struct LoaderOptions {
  int64_t batch_size = 0;  // required: 1 .. N
  uint64_t seed = 0;
  bool shuffle = true;  // false: every epoch in data set order
  bool random_flip = false;
  bool random_crop = false;  // the reference's random_crop_arr (see the top of this file)
  bool labels = true;        // false: no labels even when the data set has classes
  bool prefetch = true;      // prepare batches on a background thread
  int read_threads = 4;      // threads decoding a streamed data set's batch, or random-cropping one
  // Data-parallel shards: each batch is rows [shard_index·b, (shard_index + 1)·b) of the batch of
  // batch_size rows, b = batch_size / shard_count (which must divide it); positions, epochs and
  // the visiting order stay those of the whole batch, so the shards of one step are the batch.
  int64_t shard_index = 0, shard_count = 1;
  Device device = Device::cpu();
  // Runs on each CPU batch where it is prepared (on the prefetch thread when prefetching), before
  // next() returns it; may modify the batch's tensors in place. Must be a pure function of the
  // batch for resumes to be exact.
  std::function<void(Batch&)> transform = nullptr;
};

class Loader {
 public:
  // Takes the data set by value (its tensors are shared, not copied). Checks the options and the
  // data set (u8 images [N, C, H, W]; labels i64 [N] in −1 .. num_classes − 1).
  Loader(ImageDataset dataset, LoaderOptions options, LoaderState start = {});
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // The batch at state(), then advances state() by one batch (to the next epoch after the last).
  Batch next();
  LoaderState state() const { return state_; }
  // Moves to `s` (index < batches_per_epoch()), discarding prefetched batches and any pending
  // error.
  void set_state(LoaderState s);

  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  const ImageDataset& dataset() const { return dataset_; }
  const LoaderOptions& options() const { return options_; }

  // Epoch `epoch`'s visiting order of n samples (see the top of this file).
  static std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, uint64_t epoch);

 private:
  Batch produce(LoaderState pos);  // prepares one batch on the CPU (producer side only)
  LoaderState advance(LoaderState s) const;
  void start_worker(LoaderState from);
  void stop_worker();
  void worker_loop(LoaderState from);

  ImageDataset dataset_;
  LoaderOptions options_;
  int64_t batches_per_epoch_ = 0;
  LoaderState state_;  // caller side

  // Producer side: the order of the epoch being prepared.
  uint64_t order_epoch_ = 0;
  std::vector<int64_t> order_;

  // Prefetch thread and its queue.
  static constexpr size_t kQueueDepth = 2;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch> queue_;
  std::exception_ptr error_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace cm::data
