// dist::Communicator over MPI_COMM_WORLD. Tensors on a GPU go to NCCL where it is built
// (dist/nccl/nccl_engine.h), else they are staged through host memory; f16 and bf16 are reduced
// in f32.
#include "dist/mpi/mpi_communicator.h"

#include <mpi.h>

#include <cstdlib>
#include <vector>

#include "autograd/ops.h"
#include "dist/nccl/nccl_engine.h"

namespace cm::dist {

bool has_mpi() {
  return true;
}

namespace {

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::f64:
      return MPI_DOUBLE;
    case DType::i32:
      return MPI_INT32_T;
    case DType::i64:
      return MPI_INT64_T;
    case DType::u8:
    case DType::b8:
      return MPI_UINT8_T;
    default:
      return MPI_DATATYPE_NULL;  // f16, bf16: reduced in f32
  }
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Max:
      return MPI_MAX;
    case ReduceOp::Min:
      return MPI_MIN;
    default:
      return MPI_SUM;
  }
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      std::atexit(finalize_at_exit);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm node;
    check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
          "MPI_Comm_split_type");
    MPI_Comm_rank(node, &local_rank_);
    MPI_Comm_free(&node);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  std::string engine() const override { return "mpi"; }

  void all_reduce(Tensor& t, ReduceOp op) override {
    check_reducible(t, op, "all_reduce");
    same_on_every_rank(t, "all_reduce");
    if (NcclEngine* n = nccl_for(t)) return n->all_reduce(t, op);
    NoGradGuard ng;
    const bool staged = t.device().is_cuda() || mpi_type(t.dtype()) == MPI_DATATYPE_NULL;
    Tensor h = staged ? to(to(detach(t), Device::cpu()),
                           mpi_type(t.dtype()) == MPI_DATATYPE_NULL ? DType::f32 : t.dtype())
                            .contiguous()
                      : t;
    if (h.numel() > 0)
      check(MPI_Allreduce(MPI_IN_PLACE, h.data_ptr(), int_count(h), mpi_type(h.dtype()), mpi_op(op),
                          MPI_COMM_WORLD),
            "MPI_Allreduce");
    if (op == ReduceOp::Average) h = div(h, double(size_));
    if (staged || op == ReduceOp::Average) copy_(t, h);
  }

  // CPU tensors of MPI's own dtypes: MPI_Iallreduce, the average's division at wait() (the same
  // division as all_reduce's, so both give the same bits); others at once, as all_reduce.
  std::unique_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op) override {
    check_reducible(t, op, "all_reduce_async");
    if (NcclEngine* n = nccl_for(t)) return n->all_reduce_async(t, op);
    if (t.device().is_cuda() || mpi_type(t.dtype()) == MPI_DATATYPE_NULL || t.numel() == 0) {
      all_reduce(t, op);
      return finished_work();
    }
    MPI_Request req = MPI_REQUEST_NULL;
    check(MPI_Iallreduce(MPI_IN_PLACE, t.data_ptr(), int_count(t), mpi_type(t.dtype()), mpi_op(op),
                         MPI_COMM_WORLD, &req),
          "MPI_Iallreduce");
    return std::make_unique<MpiWork>(*this, req, t, op == ReduceOp::Average);
  }

  void broadcast(Tensor& t, int root) override {
    check_tensor(t, "broadcast");
    CM_CHECK(root >= 0 && root < size_, "broadcast (rank ", rank_, "): root ", root,
             " is not a rank of a job of ", size_);
    same_on_every_rank(t, "broadcast");
    if (NcclEngine* n = nccl_for(t)) return n->broadcast(t, root);
    NoGradGuard ng;
    const bool staged = t.device().is_cuda();
    Tensor h = staged ? to(detach(t), Device::cpu()).contiguous() : t;
    if (h.nbytes() > 0)
      check(MPI_Bcast(h.data_ptr(), int_bytes(h), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    if (staged) copy_(t, h);
  }

  Tensor all_gather(const Tensor& t) override {
    CM_CHECK(t.defined(), "all_gather (rank ", rank_, "): undefined tensor");
    same_on_every_rank(t, "all_gather");
    if (NcclEngine* n = nccl_for(t)) return n->all_gather(t);
    NoGradGuard ng;
    const Tensor h = to(detach(t), Device::cpu()).contiguous();
    Shape shape = h.shape();
    shape.insert(shape.begin(), size_);
    Tensor out = empty(shape, {.dtype = h.dtype()});
    if (h.nbytes() > 0)
      check(MPI_Allgather(h.data_ptr(), int_bytes(h), MPI_BYTE, out.data_ptr(), int_bytes(h),
                          MPI_BYTE, MPI_COMM_WORLD),
            "MPI_Allgather");
    return t.device().is_cuda() ? to(out, t.device()) : out;
  }

  void barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
  [[noreturn]] void abort_job(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);  // MPI_Abort does not return; in case an implementation does
  }

 private:
  // An MPI_Iallreduce in flight over a CPU tensor.
  class MpiWork final : public Work {
   public:
    MpiWork(const MpiCommunicator& c, MPI_Request req, Tensor t, bool average)
        : c_(c), req_(req), t_(std::move(t)), average_(average) {}
    ~MpiWork() override {
      // MPI forbids freeing the request of a collective in flight: finish it (the other ranks
      // are in it too, or the job is being aborted)
      if (!done_) MPI_Wait(&req_, MPI_STATUS_IGNORE);
    }
    void wait() override {
      if (done_) return;
      c_.check(MPI_Wait(&req_, MPI_STATUS_IGNORE), "MPI_Wait (all_reduce)");
      finish();
    }
    bool test() override {
      if (done_) return true;
      int flag = 0;
      c_.check(MPI_Test(&req_, &flag, MPI_STATUS_IGNORE), "MPI_Test (all_reduce)");
      if (flag) finish();
      return done_;
    }

   private:
    void finish() {
      done_ = true;
      if (!average_) return;
      NoGradGuard ng;
      copy_(t_, div(t_, double(c_.size_)));
    }
    const MpiCommunicator& c_;
    MPI_Request req_;
    Tensor t_;
    bool average_;
    bool done_ = false;
  };

  // NCCL for a CUDA tensor where it is built and enabled (made at the first GPU collective, on
  // the tensor's device), else null: the tensor is staged through the host.
  NcclEngine* nccl_for(const Tensor& t) {
    if (!t.device().is_cuda() || !nccl_enabled()) return nullptr;
    if (!nccl_)
      nccl_ = make_nccl_engine(rank_, size_, t.device().index, [this](void* data, int bytes) {
        check(MPI_Bcast(data, bytes, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast (NCCL id)");
      });
    return nccl_.get();
  }
  void check(int rc, const char* what) const {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    CM_FAIL("dist (rank ", rank_, " of ", size_, "): ", what, " failed: ", std::string(msg, len));
  }
  void check_tensor(const Tensor& t, const char* op) const {
    CM_CHECK(t.defined() && t.is_contiguous(), op, " (rank ", rank_,
             "): expected a contiguous tensor (a flat buffer or a whole parameter)");
  }
  // What all_reduce and all_reduce_async accept: a contiguous tensor of a reducible dtype, and a
  // floating one for Average.
  void check_reducible(const Tensor& t, ReduceOp op, const char* what) const {
    check_tensor(t, what);
    CM_CHECK(op != ReduceOp::Average || is_floating(t.dtype()), what, " (rank ", rank_,
             "): Average needs a floating-point tensor, got ", dtype_name(t.dtype()));
    CM_CHECK(t.dtype() != DType::b8 && t.dtype() != DType::u8, what, " (rank ", rank_,
             "): ", dtype_name(t.dtype()), " tensors are not reduced");
  }
  int int_count(const Tensor& t) const {
    CM_CHECK(t.numel() <= INT32_MAX, "dist (rank ", rank_, "): ", t.numel(),
             " elements is more than one MPI call takes; split the buffer");
    return int(t.numel());
  }
  int int_bytes(const Tensor& t) const {
    CM_CHECK(t.nbytes() <= size_t(INT32_MAX), "dist (rank ", rank_, "): ", t.nbytes(),
             " bytes is more than one MPI call takes; split the buffer");
    return int(t.nbytes());
  }
  // One small all-reduce of (numel, dtype) as max and −min: a rank whose tensor differs would
  // otherwise make MPI read past its buffer or hang.
  void same_on_every_rank(const Tensor& t, const char* op) const {
    int64_t v[4] = {t.numel(), int64_t(t.dtype()), -t.numel(), -int64_t(t.dtype())};
    check(MPI_Allreduce(MPI_IN_PLACE, v, 4, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD),
          "MPI_Allreduce (shape check)");
    CM_CHECK(v[0] == -v[2] && v[1] == -v[3], op, " (rank ", rank_, " of ", size_,
             "): the ranks passed different tensors: this rank ", shape_str(t.shape()), " ",
             dtype_name(t.dtype()), ", element counts between ", -v[2], " and ", v[0],
             " across ranks; every rank must pass the same shape and dtype");
  }

  int rank_ = 0, size_ = 1, local_rank_ = 0;
  std::unique_ptr<NcclEngine> nccl_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() {
  return std::make_unique<MpiCommunicator>();
}

}  // namespace cm::dist
