// Data-parallel gradient averaging in buckets that go out during backward.
//
// After backward over its shard of the batch, each rank holds the gradient of its shard; the
// optimizer needs their average over the ranks. One all-reduce after backward leaves the GPU idle
// for the whole transfer. The reducer cuts a module's flat gradient buffer (nn/flat.h) into
// buckets of about `bucket_bytes`, taking the parameters last to first (the order backward
// completes them), and starts a bucket's all-reduce (Communicator::all_reduce_async) as soon as
// the last of its gradients has been accumulated (a post-accumulate hook on each parameter),
// while backward goes on through the earlier layers. finish() sends what is left and waits.
//
//   net.flatten_parameters();
//   dist::GradientReducer reducer(net.flat_parameters(), comm);
//   reducer.prepare();   // before the step's backward
//   loss.backward();     // buckets go out as their gradients complete
//   reducer.finish();    // every rank: the ranks' average in each .grad()
//
// Every rank sends the buckets in the same order (bucket k only after k − 1), whatever order its
// own backward completes them in, as collectives require. A parameter that got no gradient in the
// step contributes zeros and has a zero gradient after finish(), on every rank. The hooks act
// only between prepare() and finish(): to accumulate gradients over several backward passes, call
// prepare() before the last one; a parameter whose gradient arrives a second time in one prepared
// step is an error (its bucket may be on the wire).
//
// Numerics: each element is averaged exactly as one all-reduce of the whole buffer averages it
// (the same sum over ranks, the same division), up to the order MPI's non-blocking algorithm adds
// the ranks' values in: bit for bit on two ranks (tested).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>

#include "dist/communicator.h"
#include "nn/flat.h"

namespace cm::dist {

struct ReducerOptions {
  // Bytes of gradient per bucket (a parameter larger than that is a bucket of its own); 0: one
  // bucket per flat buffer, sent when backward has completed it. PyTorch DDP's default is 25 MiB.
  int64_t bucket_bytes = int64_t(25) << 20;
  // The first bucket (the last layers, whose gradients are complete first) smaller, so that
  // communication starts early: DDP's 1 MiB. 0: as bucket_bytes.
  int64_t first_bucket_bytes = int64_t(1) << 20;

  // The options of a bucket size in MiB (train.allreduce_bucket_mb, cm bench --bucket-mb): the
  // first bucket 1 MiB, or the bucket size where that is smaller (0: one bucket per buffer).
  static ReducerOptions of_mib(double bucket_mib) {
    const int64_t bytes = int64_t(bucket_mib * double(1 << 20));
    return {.bucket_bytes = bytes, .first_bucket_bytes = std::min(bytes, int64_t(1) << 20)};
  }
};

class GradientReducer {
 public:
  // `flat`: a module's flat parameters with gradient buffers. Checks, with one collective, that
  // every rank cut the same buckets (an error on every rank otherwise).
  GradientReducer(std::shared_ptr<const nn::FlatParameters> flat, Communicator& comm,
                  ReducerOptions options = {});
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Arms the hooks for the coming backward (an error while a step is prepared and not finished).
  void prepare();
  // Sends the buckets backward did not complete (their missing gradients as zeros), waits for
  // every bucket, and disarms. After it every parameter's .grad() is its slot of the flat buffer
  // and holds the average over the ranks.
  void finish();

  size_t bucket_count() const;
  // Buckets of the last finished step that were sent from inside backward, before finish().
  size_t sent_during_backward() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace cm::dist
