// dist::Communicator: the local engine of a one-process job, and, when this suite runs under
// `mpirun -np 2` (the CTest case "dist: collectives on 2 MPI ranks"), MPI's collectives against
// values every rank can compute for itself: rank r holds arange(n) + 1000·r, so the sum over ranks
// is size·arange(n) + 1000·size(size−1)/2, exact in every dtype used here.
#include <cstdlib>

#include "dist/communicator.h"
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
}
