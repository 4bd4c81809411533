// dist::Communicator: the local engine of a one-process job, and, when this suite runs under
// `mpirun -np 2` (the CTest case "dist: collectives on 2 MPI ranks"), MPI's collectives against
// values every rank can compute for itself: rank r holds arange(n) + 1000·r, so the sum over ranks
// is size·arange(n) + 1000·size(size−1)/2, exact in every dtype used here.
#include <cstdlib>

#include "dist/communicator.h"
#include "dist/reducer.h"
#include "nn/layers.h"
#include "tests/helpers.h"

using namespace cm;
using cm::dist::Communicator;
using cm::dist::launch_info;
using cm::dist::LaunchInfo;
using cm::dist::make_local_communicator;
using cm::dist::world;

namespace {

// rank r's values: arange(n) + 1000·r in `dt`.
Tensor rank_values(int64_t n, int r, DType dt) {
  return to(add(arange(0.0, double(n), 1.0, {.dtype = DType::f64}), 1000.0 * r), dt);
}

// A job as a rank sees it, for rank_device (no collectives).
struct FakeJob final : Communicator {
  int r, n, local;
  FakeJob(int r_, int n_, int local_) : r(r_), n(n_), local(local_) {}
  int rank() const override { return r; }
  int size() const override { return n; }
  int local_rank() const override { return local; }
  std::string engine() const override { return "fake"; }
  void all_reduce(Tensor&, dist::ReduceOp) override {}
  void broadcast(Tensor&, int) override {}
  Tensor all_gather(const Tensor& t) override { return t; }
  void barrier() override {}
  [[noreturn]] void abort_job(int code) override { std::exit(code); }
};

// Linear layers of `widths` with tanh between, some of them skipped by forward: several
// parameters of different sizes, some without a gradient.
struct Chain final : nn::Module {
  std::vector<std::shared_ptr<nn::Linear>> layers;
  std::vector<bool> used;
  Chain(const std::vector<int64_t>& widths, std::vector<bool> used_, uint64_t seed)
      : used(std::move(used_)) {
    Generator gen(seed);
    for (size_t i = 0; i + 1 < widths.size(); ++i) {
      std::string name = "l";  // not "l" + to_string: GCC 12's -Wrestrict false positive
      name += std::to_string(i);
      layers.push_back(register_module(
          name,
          std::make_shared<nn::Linear>(widths[i], widths[i + 1], true, nn::InitOptions{}, gen)));
    }
  }
  std::string type_name() const override { return "Chain"; }
  Tensor forward(Tensor x) const {
    for (size_t i = 0; i < layers.size(); ++i)
      if (used[i]) x = tanh(layers[i]->forward(x));
    return x;
  }
};

// A loss of rank r's own data (so the ranks' gradients differ).
Tensor chain_loss(const Chain& c, int r, int64_t width, uint64_t step = 0) {
  Generator g(100 + 7 * uint64_t(r) + 1000 * step);
  const Tensor x = randn({5, width}, {.device = c.layers[0]->weight.device()}, &g);
  return mean(square(c.forward(x)));
}

std::vector<Tensor> grads_of(const nn::Module& m) {
  std::vector<Tensor> g;
  for (const Tensor& p : m.parameters())
    g.push_back(p.grad().defined() ? clone(p.grad()) : Tensor());
  return g;
}

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE("rank_device: one GPU per rank, chosen by the node-local rank") {
    const FakeJob one(0, 1, 0), many(5, 8, 3);
    CHECK(dist::rank_device(Device::cuda(1), one, "/device") == Device::cuda(1));  // a job of one
    CHECK(dist::rank_device(Device::cpu(), many, "/device") == Device::cpu());
    CHECK(test::error_message_of([&] {
            dist::rank_device(Device::cuda(1), many, "/device");
          }).find("/device: \"cuda:1\" names one GPU") != std::string::npos);
    if (cuda::device_count() > 3) {
      CHECK(dist::rank_device(Device::cuda(0), many, "--device") == Device::cuda(3));
    } else {
      CHECK(test::error_message_of([&] {
              dist::rank_device(Device::cuda(0), many, "--device");
            }).find("rank 5 is rank 3 on its node, which shows") != std::string::npos);
    }
  }

  TEST_CASE("the local engine: a job of one, collectives are the identity") {
    auto c = make_local_communicator();
    CHECK(c->rank() == 0);
    CHECK(c->size() == 1);
    CHECK(c->engine() == "local");
    Tensor t = rank_values(5, 0, DType::f32);
    const Tensor before = clone(t);
    c->all_reduce(t, dist::ReduceOp::Sum);
    c->all_reduce(t, dist::ReduceOp::Average);
    c->broadcast(t, 0);
    c->barrier();
    CHECK(max_abs_diff(t, before) == 0);
    CHECK(c->all_gather(t).shape() == Shape{1, 5});
    Tensor i = rank_values(3, 0, DType::i64);
    CHECK(test::error_message_of([&] {
            c->all_reduce(i, dist::ReduceOp::Average);
          }).find("floating-point") != std::string::npos);
    CHECK(test::error_message_of([&] { c->broadcast(t, 1); }).find("root 1") != std::string::npos);
    Tensor strided = slice(rank_values(6, 0, DType::f32), 0, 0, 6, 2);
    CHECK(test::error_message_of([&] {
            c->all_reduce(strided, dist::ReduceOp::Sum);
          }).find("contiguous") != std::string::npos);
  }

  TEST_CASE("the launcher's environment is read without initialising anything") {
    const LaunchInfo l = launch_info();
    CHECK(l.size >= 1);
    CHECK(l.rank >= 0);
    CHECK(l.rank < l.size);
    CHECK(world().size() == l.size);
    CHECK(world().rank() == l.rank);
    const char* forced = std::getenv("CM_DIST_ENGINE");  // mpi: the MPI engine for a job of one
    if (l.size == 1)
      CHECK(world().engine() == (forced && std::string(forced) == "mpi" ? "mpi" : "local"));
  }

  TEST_CASE("MPI collectives across ranks equal what every rank computes alone") {
    Communicator& w = world();
    if (w.size() == 1) {
      MESSAGE("a job of one process: the MPI cases run under mpirun (ctest -L dist)");
      return;
    }
    const int n = w.size(), r = w.rank();
    CHECK(w.engine() == "mpi");
    CHECK(w.local_rank() >= 0);
    for (DType dt : {DType::f32, DType::f64, DType::i32, DType::i64, DType::f16, DType::bf16}) {
      CAPTURE(dtype_name(dt));
      const int64_t len = dt == DType::f16 || dt == DType::bf16 ? 7 : 1001;
      const double offset = dt == DType::f16 || dt == DType::bf16 ? 1.0 : 1000.0;
      Tensor t = to(add(arange(0.0, double(len), 1.0, {.dtype = DType::f64}), offset * r), dt);
      w.all_reduce(t, dist::ReduceOp::Sum);
      const Tensor want = add(mul(arange(0.0, double(len), 1.0, {.dtype = DType::f64}), double(n)),
                              offset * n * (n - 1) / 2.0);
      CHECK(max_abs_diff(to(t, DType::f64), want) == 0);
      Tensor m = to(add(arange(0.0, double(len), 1.0, {.dtype = DType::f64}), offset * r), dt);
      w.all_reduce(m, dist::ReduceOp::Max);
      CHECK(max_abs_diff(
                to(m, DType::f64),
                add(arange(0.0, double(len), 1.0, {.dtype = DType::f64}), offset * (n - 1))) == 0);
    }
    Tensor avg = rank_values(10, r, DType::f64);
    w.all_reduce(avg, dist::ReduceOp::Average);
    CHECK(max_abs_diff(avg, add(arange(0.0, 10.0, 1.0, {.dtype = DType::f64}),
                                1000.0 * (n - 1) / 2.0)) == 0);
    // broadcast from the last rank, of a dtype MPI does not reduce
    Tensor b = to(rank_values(33, r, DType::f64), DType::u8);
    w.broadcast(b, n - 1);
    CHECK(max_abs_diff(to(b, DType::f64),
                       to(to(rank_values(33, n - 1, DType::f64), DType::u8), DType::f64)) == 0);
    // all_gather: rank order along a new leading dim
    const Tensor g = w.all_gather(rank_values(4, r, DType::f32));
    REQUIRE(g.shape() == Shape{int64_t(n), 4});
    for (int k = 0; k < n; ++k)
      CHECK(max_abs_diff(select(g, 0, k), rank_values(4, k, DType::f32)) == 0);
    w.barrier();
    // ranks passing different tensors: an error on every rank, never a hang or a read past a buffer
    Tensor odd = rank_values(3 + r, r, DType::f32);
    const std::string e = test::error_message_of([&] { w.all_reduce(odd, dist::ReduceOp::Sum); });
    CHECK(e.find("the ranks passed different tensors") != std::string::npos);
    CHECK(e.find("rank " + std::to_string(r)) != std::string::npos);
    Tensor mixed = rank_values(3, r, r == 0 ? DType::f32 : DType::f64);
    CHECK(test::error_message_of([&] { w.broadcast(mixed, 0); }).find("different tensors") !=
          std::string::npos);
    w.barrier();
  }

  TEST_CASE("GPU tensors (NCCL where built, else staged): collectives equal the CPU's") {
    Communicator& w = world();
    if (!cuda::is_available() || w.engine() != "mpi") {
      MESSAGE("needs a GPU and the MPI engine (mpirun, or CM_DIST_ENGINE=mpi for a job of one)");
      return;
    }
    const int n = w.size(), r = w.rank();
    const Device gpu = Device::cuda(w.local_rank());
    for (DType dt : {DType::f32, DType::f64, DType::i64, DType::bf16}) {
      CAPTURE(dtype_name(dt));
      const int64_t len = dt == DType::bf16 ? 7 : 100'003;  // bf16: sums exact in 8 bits
      const double offset = dt == DType::bf16 ? 1.0 : 1000.0;
      Tensor c = to(add(arange(0.0, double(len), 1.0, {.dtype = DType::f64}), offset * r), dt);
      Tensor g = to(c, gpu);
      w.all_reduce(c, dist::ReduceOp::Sum);
      w.all_reduce(g, dist::ReduceOp::Sum);
      CHECK(g.device() == gpu);
      CHECK(max_abs_diff(to(g, DType::f64), to(c, DType::f64)) == 0);
      if (is_floating(dt)) {
        Tensor ca = to(rank_values(len, r, dt), Device::cpu()), ga = to(ca, gpu);
        w.all_reduce(ca, dist::ReduceOp::Average);
        w.all_reduce(ga, dist::ReduceOp::Average);
        CHECK(max_abs_diff(to(ga, DType::f64), to(ca, DType::f64)) <= 1e-6 * 1000.0 * n);
      }
    }
    // asynchronous: on the communication stream, ordered with cm's by events
    for (DType dt : {DType::f32, DType::bf16}) {
      CAPTURE(dtype_name(dt));
      Tensor ca = to(rank_values(1003, r, DType::f32), dt), ga = to(ca, gpu);
      w.all_reduce(ca, dist::ReduceOp::Average);
      Tensor gb = mul(ga, 1.0);  // queued on cm's stream just before the collective reads it
      auto work = w.all_reduce_async(gb, dist::ReduceOp::Average);
      work->wait();
      CHECK(max_abs_diff(to(gb, DType::f64), to(ca, DType::f64)) <= 1e-6 * 1000.0 * n);
    }
    {  // the reducer on the GPU: buckets equal one blocking all-reduce, bit for bit
      const std::vector<int64_t> widths = {6, 40, 3, 50, 20, 1, 8};
      const std::vector<bool> all(widths.size() - 1, true);
      Chain ref(widths, all, 3), m(widths, all, 3);
      ref.to(gpu);
      m.to(gpu);
      ref.flatten_parameters();
      m.flatten_parameters();
      chain_loss(ref, r, widths[0]).backward();
      for (const nn::FlatBuffers::Group& g : ref.flat_parameters()->grads().groups()) {
        Tensor d = g.data;
        w.all_reduce(d, dist::ReduceOp::Average);
      }
      dist::GradientReducer red(m.flat_parameters(), w,
                                {.bucket_bytes = 256, .first_bucket_bytes = 0});
      red.prepare();
      chain_loss(m, r, widths[0]).backward();
      red.finish();
      CHECK(red.sent_during_backward() == red.bucket_count());
      const std::vector<Tensor> want = grads_of(ref), got = grads_of(m);
      for (size_t i = 0; i < got.size(); ++i) CHECK(max_abs_diff(got[i], want[i]) == 0);
    }
    Tensor b = to(to(rank_values(33, r, DType::f64), DType::f32), gpu);
    w.broadcast(b, n - 1);
    CHECK(max_abs_diff(to(b, DType::f64), rank_values(33, n - 1, DType::f64)) == 0);
    const Tensor ag = w.all_gather(to(rank_values(5, r, DType::f32), gpu));
    REQUIRE(ag.shape() == Shape{int64_t(n), 5});
    CHECK(ag.device() == gpu);
    for (int k = 0; k < n; ++k)
      CHECK(max_abs_diff(select(to(ag, Device::cpu()), 0, k), rank_values(5, k, DType::f32)) == 0);
    w.barrier();
  }

  TEST_CASE("all_reduce_async: several in flight at once equal all_reduce, bit for bit") {
    Communicator& w = world();
    const int r = w.rank();
    std::vector<Tensor> async, sync;
    std::vector<std::unique_ptr<dist::Work>> works;
    const std::vector<DType> dts = {DType::f32, DType::f64, DType::bf16, DType::f32};
    for (size_t k = 0; k < dts.size(); ++k) {
      Generator g(11 + 5 * uint64_t(r) + k);
      Tensor t = to(randn({int64_t(1000 + 37 * k)}, {}, &g), dts[k]);
      sync.push_back(clone(t));
      w.all_reduce(sync.back(), dist::ReduceOp::Average);
      async.push_back(t);
    }
    for (size_t k = 0; k < dts.size(); ++k)
      works.push_back(w.all_reduce_async(async[k], dist::ReduceOp::Average));
    Tensor i = rank_values(9, r, DType::i64);
    auto wi = w.all_reduce_async(i, dist::ReduceOp::Sum);
    for (size_t k = dts.size(); k-- > 0;) works[k]->wait();  // in any order
    wi->wait();
    CHECK(wi->test());
    for (size_t k = 0; k < dts.size(); ++k) {
      CAPTURE(dtype_name(dts[k]));
      CHECK(works[k]->test());
      CHECK(max_abs_diff(to(async[k], DType::f64), to(sync[k], DType::f64)) == 0);
    }
    const int n = w.size();
    CHECK(max_abs_diff(to(i, DType::f64),
                       add(mul(arange(0.0, 9.0, 1.0, {.dtype = DType::f64}), double(n)),
                           1000.0 * n * (n - 1) / 2.0)) == 0);
    Tensor bad = rank_values(3, r, DType::i32);
    CHECK(test::error_message_of([&] {
            w.all_reduce_async(bad, dist::ReduceOp::Average);
          }).find("floating-point") != std::string::npos);
  }

  TEST_CASE("GradientReducer: buckets sent during backward average as one all-reduce does") {
    Communicator& w = world();
    const int r = w.rank();
    const std::vector<int64_t> widths = {6, 40, 3, 50, 20, 1, 8};
    const std::vector<bool> all(widths.size() - 1, true);
    // the reference: this rank's gradients, averaged by one blocking all-reduce of the buffer
    Chain ref(widths, all, 3);
    ref.flatten_parameters();
    chain_loss(ref, r, widths[0]).backward();
    for (const nn::FlatBuffers::Group& g : ref.flat_parameters()->grads().groups()) {
      Tensor d = g.data;
      w.all_reduce(d, dist::ReduceOp::Average);
    }
    const std::vector<Tensor> want = grads_of(ref);

    for (int64_t bucket : {int64_t(256), int64_t(2000), int64_t(0)}) {
      CAPTURE(bucket);
      Chain m(widths, all, 3);
      m.flatten_parameters();
      dist::GradientReducer red(m.flat_parameters(), w,
                                {.bucket_bytes = bucket, .first_bucket_bytes = 0});
      if (bucket == 256) CHECK(red.bucket_count() >= 6);  // 12 tensors, several per bucket
      if (bucket == 0) CHECK(red.bucket_count() == 1);
      for (int step = 0; step < 2; ++step) {
        red.prepare();
        chain_loss(m, r, widths[0]).backward();
        red.finish();
        // every bucket completed inside backward (every parameter had a gradient)
        CHECK(red.sent_during_backward() == red.bucket_count());
        const std::vector<Tensor> got = grads_of(m);
        REQUIRE(got.size() == want.size());
        for (size_t i = 0; i < got.size(); ++i) CHECK(max_abs_diff(got[i], want[i]) == 0);
        m.zero_grad();
      }
    }
  }

  TEST_CASE("GradientReducer: unused parameters, accumulation, a second gradient, mismatches") {
    Communicator& w = world();
    const int r = w.rank();
    const std::vector<int64_t> widths = {4, 30, 30, 5};
    // layer 1 unused: its gradients are zeros on every rank after finish(), not stale values
    Chain m(widths, {true, false, true}, 5);
    m.flatten_parameters();
    dist::GradientReducer red(m.flat_parameters(), w,
                              {.bucket_bytes = 128, .first_bucket_bytes = 0});
    for (int step = 0; step < 2; ++step) {  // step 1: the slots hold step 0's values
      red.prepare();
      chain_loss(m, r, widths[0], uint64_t(step)).backward();
      red.finish();
      CHECK(red.sent_during_backward() < red.bucket_count());  // layer 1's buckets at finish()
      for (const Tensor& p : m.layers[1]->parameters()) {
        REQUIRE(p.grad().defined());
        CHECK(amax(abs(p.grad())).item<double>() == 0);
      }
      for (const Tensor& p : m.layers[0]->parameters())
        CHECK(amax(abs(p.grad())).item<double>() > 0);
      if (step == 0) {  // scribble on the unused layer's slots: finish() must zero them
        for (const Tensor& p : m.layers[1]->parameters()) {
          Tensor g = p.grad();
          fill_(g, 3.0);
        }
      }
      m.zero_grad();
    }

    // gradient accumulation: the first backward unprepared (no communication), then the last
    Chain a(widths, {true, true, true}, 5), b(widths, {true, true, true}, 5);
    a.flatten_parameters();
    b.flatten_parameters();
    dist::GradientReducer ra(a.flat_parameters(), w, {.bucket_bytes = 512});
    chain_loss(a, r, widths[0], 1).backward();
    ra.prepare();
    chain_loss(a, r, widths[0], 2).backward();
    ra.finish();
    chain_loss(b, r, widths[0], 1).backward();
    chain_loss(b, r, widths[0], 2).backward();
    for (const nn::FlatBuffers::Group& g : b.flat_parameters()->grads().groups()) {
      Tensor d = g.data;
      w.all_reduce(d, dist::ReduceOp::Average);
    }
    const std::vector<Tensor> ga = grads_of(a), gb = grads_of(b);
    for (size_t i = 0; i < ga.size(); ++i) CHECK(max_abs_diff(ga[i], gb[i]) == 0);

    // a second gradient in one prepared step: an error (its bucket may be on the wire)
    a.zero_grad();
    ra.prepare();
    chain_loss(a, r, widths[0], 1).backward();
    CHECK(test::error_message_of([&] {
            chain_loss(a, r, widths[0], 2).backward();
          }).find("received a second gradient in one step") != std::string::npos);
    CHECK(test::error_message_of([&] { ra.prepare(); }).find("was not finished") !=
          std::string::npos);
    ra.finish();
    CHECK(test::error_message_of([&] { ra.finish(); }).find("without prepare") !=
          std::string::npos);
    CHECK(test::error_message_of([&] {
            Chain plain(widths, {true, true, true}, 5);
            dist::GradientReducer bad(plain.flat_parameters(), w);
          }).find("flat buffers") != std::string::npos);

    if (w.size() > 1) {  // ranks whose networks differ: refused on every rank, no collective hangs
      Chain odd({4, 30 + r, 5}, {true, true}, 5);
      odd.flatten_parameters();
      CHECK(test::error_message_of([&] {
              dist::GradientReducer bad(odd.flat_parameters(), w);
            }).find("every rank must train the same network") != std::string::npos);
    }
    w.barrier();
  }
}
