// The bucketed, overlapped gradient average (see reducer.h).
#include "dist/reducer.h"

#include <vector>

#include "autograd/ops.h"

namespace cm::dist {

struct GradientReducer::State {
  struct Bucket {
    Tensor span;                 // the bucket's part of a flat gradient buffer (with padding)
    std::vector<size_t> params;  // its parameters, last to first
    size_t remaining = 0;        // of them, how many gradients have not arrived this step
    std::unique_ptr<Work> work;  // its all-reduce, once sent
  };

  std::shared_ptr<const nn::FlatParameters> flat;
  Communicator* comm = nullptr;
  std::vector<Bucket> buckets;  // in the order they are sent
  std::vector<size_t> bucket_of;
  std::vector<char> arrived;
  bool armed = false;
  size_t next = 0;                   // the next bucket to send
  size_t finished = 0;               // buckets [0, finished) are known to have completed
  size_t last_sent_in_backward = 0;  // of the last finished step: `next` when finish() began

  // A parameter's hook: its gradient for this step is complete.
  void on_gradient(size_t i) {
    if (!armed) return;
    const Tensor& p = flat->params().view(i);
    CM_CHECK(!arrived[i], "GradientReducer (rank ", comm->rank(), "): parameter ", i, " (",
             shape_str(p.shape()),
             ") received a second gradient in one step, after its bucket may have been sent; "
             "to accumulate over several backward passes, call prepare() before the last one");
    arrived[i] = 1;
    if (!flat->grad_in_slot(i)) {  // a gradient set by hand: into the buffer, where it is sent
      NoGradGuard ng;
      Tensor slot = flat->grads().view(i);
      copy_(slot, p.grad());
      p.set_grad(slot);
    }
    --buckets[bucket_of[i]].remaining;
    while (next < buckets.size() && buckets[next].remaining == 0) send(buckets[next]);
    // let the engine progress (MPI moves a non-blocking collective on inside its own calls)
    while (finished < next && buckets[finished].work->test()) ++finished;
  }

  void send(Bucket& b) {
    b.work = comm->all_reduce_async(b.span, ReduceOp::Average);
    ++next;
  }
};

GradientReducer::GradientReducer(std::shared_ptr<const nn::FlatParameters> flat, Communicator& comm,
                                 ReducerOptions options)
    : state_(std::make_shared<State>()) {
  CM_CHECK(flat != nullptr && flat->grads().size() == flat->params().size(),
           "GradientReducer: the module's parameters are not in flat buffers with gradient "
           "buffers (Module::flatten_parameters())");
  CM_CHECK(options.bucket_bytes >= 0 && options.first_bucket_bytes >= 0,
           "GradientReducer: bucket sizes must be >= 0 bytes, got ", options.bucket_bytes, " and ",
           options.first_bucket_bytes);
  State& s = *state_;
  s.flat = std::move(flat);
  s.comm = &comm;
  const nn::FlatBuffers& grads = s.flat->grads();
  s.bucket_of.assign(grads.size(), 0);
  s.arrived.assign(grads.size(), 0);

  // Cut each buffer into buckets, its tensors taken last to first.
  for (const nn::FlatBuffers::Group& g : grads.groups()) {
    std::vector<size_t> cur;
    int64_t bytes = 0;
    auto close = [&] {
      if (cur.empty()) return;
      State::Bucket b;
      b.span = grads.span(cur.back(), cur.front());
      for (size_t i : cur) s.bucket_of[i] = s.buckets.size();
      b.params = std::move(cur);
      s.buckets.push_back(std::move(b));
      cur.clear();
      bytes = 0;
    };
    for (auto it = g.members.rbegin(); it != g.members.rend(); ++it) {
      const int64_t cap = s.buckets.empty() && options.first_bucket_bytes > 0
                              ? options.first_bucket_bytes
                              : options.bucket_bytes;
      const int64_t nb = int64_t(grads.view(*it).nbytes());
      if (!cur.empty() && options.bucket_bytes > 0 && bytes + nb > cap) close();
      cur.push_back(*it);
      bytes += nb;
    }
    close();
  }

  // Every rank must send the same buckets, or the collectives would mismatch (or hang).
  int64_t elements = 0;
  uint64_t checksum = 0;  // unsigned: wraps around, as a hash should
  auto mix = [&checksum](int64_t v) { checksum = checksum * 1000003u + uint64_t(v); };
  for (const State::Bucket& b : s.buckets) {
    elements += b.span.numel();
    mix(b.span.numel());
    mix(int64_t(b.span.dtype()));
    for (size_t i : b.params) mix(grads.view(i).numel());
  }
  Tensor mine = zeros({3}, {.dtype = DType::i64});
  int64_t* m = mine.data<int64_t>();
  m[0] = int64_t(s.buckets.size());
  m[1] = elements;
  m[2] = int64_t(checksum);  // the same bits (C++20: modular)
  const Tensor all = comm.all_gather(mine).contiguous();
  const int64_t* a = all.data<int64_t>();
  for (int r = 0; r < comm.size(); ++r)
    CM_CHECK(a[3 * r] == m[0] && a[3 * r + 1] == m[1] && a[3 * r + 2] == m[2],
             "GradientReducer (rank ", comm.rank(), "): rank ", r, " cut ", a[3 * r],
             " gradient buckets over ", a[3 * r + 1], " elements, this rank ", m[0], " over ", m[1],
             " (or the same counts of other tensors): every rank must train the same network with "
             "the same bucket size");

  const std::weak_ptr<State> weak = state_;
  for (size_t i = 0; i < s.flat->params().size(); ++i)
    s.flat->params().view(i).register_post_accumulate_grad_hook([weak, i](const Tensor&) {
      if (const std::shared_ptr<State> st = weak.lock()) st->on_gradient(i);
    });
}

GradientReducer::~GradientReducer() = default;  // buckets in flight wait in their Work's end

void GradientReducer::prepare() {
  State& s = *state_;
  CM_CHECK(!s.armed, "GradientReducer::prepare: the previous step was not finished (finish())");
  std::fill(s.arrived.begin(), s.arrived.end(), 0);
  for (State::Bucket& b : s.buckets) {
    b.remaining = b.params.size();
    b.work.reset();
  }
  s.next = s.finished = 0;
  s.armed = true;
}

void GradientReducer::finish() {
  State& s = *state_;
  CM_CHECK(s.armed, "GradientReducer::finish without prepare()");
  s.armed = false;
  s.last_sent_in_backward = s.next;
  NoGradGuard ng;
  for (size_t k = s.next; k < s.buckets.size(); ++k) {
    State::Bucket& b = s.buckets[k];
    for (size_t i : b.params) {
      if (s.arrived[i]) continue;
      // no gradient reached it on this rank: it contributes zeros, and gets the average
      Tensor slot = s.flat->grads().view(i);
      zero_(slot);
      s.flat->params().view(i).set_grad(slot);
    }
    s.send(b);
  }
  for (State::Bucket& b : s.buckets) {
    b.work->wait();
    b.work.reset();
  }
}

size_t GradientReducer::bucket_count() const {
  return state_->buckets.size();
}

size_t GradientReducer::sent_during_backward() const {
  return state_->last_sent_in_backward;
}

}  // namespace cm::dist
