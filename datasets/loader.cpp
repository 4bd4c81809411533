// Loader: seeded per-epoch permutations, batch assembly (scaling, flips, one-hot labels), and the
// prefetch thread with its bounded queue.
#include "datasets/loader.h"

#include <array>
#include <cstring>
#include <functional>
#include <numeric>

#include "autograd/ops.h"
#include "tensor/random.h"

namespace cm::data {

namespace {

// The Philox block for (seed, epoch, i): key = seed, counter = (i lo, i hi, epoch lo, epoch hi).
Philox4 epoch_block(uint64_t seed, uint64_t epoch, uint64_t i) {
  return philox4x32_10(
      Philox4{{uint32_t(i), uint32_t(i >> 32), uint32_t(epoch), uint32_t(epoch >> 32)}},
      uint32_t(seed), uint32_t(seed >> 32));
}

bool flip_bit(uint64_t seed, uint64_t epoch, uint64_t position) {
  return (epoch_block(seed, epoch, position).v[2] >> 31) != 0;
}

// The draws of the random crop of position p in epoch e: randrange over lanes 0, 1, 2 of the block
// with the crop's own key, so that they are independent of the shuffle's and the flip's.
class CropDraws {
 public:
  CropDraws(uint64_t seed, uint64_t epoch, uint64_t position)
      : block_(epoch_block(seed + 0x9E3779B97F4A7C15ull, epoch, position)) {}
  int64_t operator()(int64_t n) {
    CM_CHECK(next_ < 4 && n >= 1 && uint64_t(n) <= (uint64_t(1) << 32),
             "Loader: internal error: random crop draw ", next_, " of range ", n);
    return int64_t((uint64_t(block_.v[next_++]) * uint64_t(n)) >> 32);
  }

 private:
  Philox4 block_;
  int next_ = 0;
};

// x / 127.5 − 1 for every u8 x, rounded once from the exact value.
const std::array<float, 256>& scale_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int x = 0; x < 256; ++x) t[size_t(x)] = float(double(x) / 127.5 - 1.0);
    return t;
  }();
  return table;
}

}  // namespace

std::vector<int64_t> Loader::epoch_order(int64_t n, uint64_t seed, uint64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t(0));
  for (int64_t i = n - 1; i >= 1; --i) {
    const Philox4 r = epoch_block(seed, epoch, uint64_t(i));
    const uint64_t x = (uint64_t(r.v[1]) << 32) | r.v[0];
    const auto j = int64_t((unsigned __int128)x * uint64_t(i + 1) >> 64);  // uniform in 0..i
    std::swap(order[size_t(i)], order[size_t(j)]);
  }
  return order;
}

Loader::Loader(ImageDataset dataset, LoaderOptions options, LoaderState start)
    : dataset_(std::move(dataset)), options_(std::move(options)) {
  if (dataset_.streamed()) {
    CM_CHECK(dataset_.reader && dataset_.streamed_shape.size() == 4, "Loader: '", dataset_.source,
             "' is streamed but has no reader or no [N, C, H, W] shape");
  } else {
    CM_CHECK(dataset_.images.dtype() == DType::u8 && dataset_.images.dim() == 4,
             "Loader: images of '", dataset_.source, "' must be u8 [N, C, H, W], got ",
             dtype_name(dataset_.images.dtype()), " ", shape_str(dataset_.images.shape()));
    dataset_.images = contiguous(to(dataset_.images, Device::cpu()));
  }
  CM_CHECK(options_.read_threads >= 1, "Loader: read_threads must be at least 1, got ",
           options_.read_threads);
  const int64_t n = dataset_.size();
  CM_CHECK(options_.batch_size >= 1 && options_.batch_size <= n, "Loader: batch_size must be 1..",
           n, " (the size of '", dataset_.source, "'), got ", options_.batch_size);
  CM_CHECK(dataset_.num_classes >= 0, "Loader: num_classes of '", dataset_.source,
           "' is negative: ", dataset_.num_classes);
  if (dataset_.labels.defined()) {
    CM_CHECK(dataset_.labels.dtype() == DType::i64 && dataset_.labels.shape() == Shape{n},
             "Loader: labels of '", dataset_.source, "' must be i64 [", n, "], got ",
             dtype_name(dataset_.labels.dtype()), " ", shape_str(dataset_.labels.shape()));
    dataset_.labels = contiguous(to(dataset_.labels, Device::cpu()));
    const int64_t* lab = dataset_.labels.data<int64_t>();
    for (int64_t i = 0; i < n; ++i)
      CM_CHECK(lab[i] >= -1 && lab[i] < dataset_.num_classes, "Loader: label ", i, " of '",
               dataset_.source, "' is ", lab[i], ", outside −1 .. ", dataset_.num_classes - 1);
  }
  CM_CHECK(options_.shard_count >= 1 && options_.shard_index >= 0 &&
               options_.shard_index < options_.shard_count &&
               options_.batch_size % options_.shard_count == 0,
           "Loader: a batch of ", options_.batch_size, " does not split into ",
           options_.shard_count, " equal shards (shard ", options_.shard_index, ")");
  CM_CHECK(!options_.random_crop || dataset_.height() == dataset_.width() ||
               (dataset_.reader && dataset_.reader->has_originals()),
           "Loader: random_crop makes square crops, but the images of '", dataset_.source, "' are ",
           dataset_.width(), "×", dataset_.height(), " (W×H)");
  batches_per_epoch_ = n / options_.batch_size;
  set_state(start);
}

Loader::~Loader() {
  stop_worker();
}

void Loader::set_state(LoaderState s) {
  CM_CHECK(s.index < uint64_t(batches_per_epoch_), "Loader: state index ", s.index,
           " is past the end of an epoch of ", batches_per_epoch_, " batches");
  stop_worker();
  state_ = s;
  queue_.clear();
  error_ = nullptr;
  if (options_.prefetch) start_worker(s);
}

LoaderState Loader::advance(LoaderState s) const {
  if (++s.index == uint64_t(batches_per_epoch_)) {
    s.index = 0;
    ++s.epoch;
  }
  return s;
}

Batch Loader::produce(LoaderState pos) {
  const int64_t n = dataset_.size();
  if (order_.empty() || order_epoch_ != pos.epoch) {
    if (options_.shuffle) {
      order_ = epoch_order(n, options_.seed, pos.epoch);
    } else {
      order_.resize(size_t(n));
      std::iota(order_.begin(), order_.end(), int64_t(0));
    }
    order_epoch_ = pos.epoch;
  }
  // this shard's rows of the batch: [first, first + B) of the batch_size rows
  const int64_t B = options_.batch_size / options_.shard_count, first = options_.shard_index * B,
                C = dataset_.channels(), H = dataset_.height(), W = dataset_.width();
  const bool with_labels = options_.labels && dataset_.num_classes > 0 && dataset_.labels.defined();
  const int64_t K = dataset_.num_classes;

  Batch b;
  b.position = pos;
  b.images = empty({B, C, H, W});
  b.indices = empty({B}, {.dtype = DType::i64});
  if (with_labels) b.labels = zeros({B, K});
  const std::array<float, 256>& lut = scale_table();
  float* dst = b.images.data<float>();
  int64_t* idx = b.indices.data<int64_t>();
  // position in the epoch's order of the batch's row k
  auto position = [&](int64_t k) {
    return pos.index * uint64_t(options_.batch_size) + uint64_t(first + k);
  };
  // A streamed data set's images, and random crops, are made first, by several threads
  // (decoding and resampling dominate).
  const bool staged = dataset_.streamed() || options_.random_crop;
  std::vector<uint8_t> streamed;
  if (staged) {
    streamed.resize(size_t(B * C * H * W));
    parallel_rows(B, options_.read_threads, [&](int64_t k) {
      const uint64_t p = position(k);
      uint8_t* out = streamed.data() + k * C * H * W;
      if (options_.random_crop) {
        CropDraws draws(options_.seed, pos.epoch, p);
        dataset_.read_random_crop(order_[size_t(p)], std::ref(draws), out);
      } else {
        dataset_.read(order_[size_t(p)], out);
      }
    });
  }
  for (int64_t k = 0; k < B; ++k) {
    const uint64_t p = position(k);
    const int64_t row = order_[size_t(p)];
    idx[k] = row;
    const bool flip = options_.random_flip && flip_bit(options_.seed, pos.epoch, p);
    const uint8_t* src = staged ? streamed.data() + k * C * H * W
                                : dataset_.images.data<uint8_t>() + row * C * H * W;
    float* out = dst + k * C * H * W;
    for (int64_t r = 0; r < C * H; ++r) {
      const uint8_t* s = src + r * W;
      float* o = out + r * W;
      if (flip) {
        for (int64_t w = 0; w < W; ++w) o[w] = lut[s[W - 1 - w]];
      } else {
        for (int64_t w = 0; w < W; ++w) o[w] = lut[s[w]];
      }
    }
    if (with_labels) {
      const int64_t label = dataset_.labels.data<int64_t>()[row];
      if (label >= 0) b.labels.data<float>()[k * K + label] = 1.0f;
    }
  }
  if (options_.transform) options_.transform(b);
  return b;
}

Batch Loader::next() {
  Batch b;
  if (!options_.prefetch) {
    b = produce(state_);
  } else {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !queue_.empty() || error_; });
    if (queue_.empty()) std::rethrow_exception(error_);
    b = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    cv_.notify_all();
  }
  CM_CHECK(b.position == state_, "Loader: internal error: prepared batch (epoch ", b.position.epoch,
           ", index ", b.position.index, ") is not the expected one (epoch ", state_.epoch,
           ", index ", state_.index, ")");
  state_ = advance(state_);
  if (options_.device != Device::cpu()) {
    b.images = to(b.images, options_.device);
    if (b.labels.defined()) b.labels = to(b.labels, options_.device);
  }
  return b;
}

void Loader::start_worker(LoaderState from) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = false;
  }
  worker_ = std::thread([this, from] { worker_loop(from); });
}

void Loader::stop_worker() {
  if (!worker_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

void Loader::worker_loop(LoaderState pos) {
  try {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || queue_.size() < kQueueDepth; });
        if (stop_) return;
      }
      Batch b = produce(pos);  // outside the lock: the caller keeps training meanwhile
      pos = advance(pos);
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stop_) return;
        queue_.push_back(std::move(b));
      }
      cv_.notify_all();
    }
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = std::current_exception();
    }
    cv_.notify_all();
  }
}

}  // namespace cm::data
