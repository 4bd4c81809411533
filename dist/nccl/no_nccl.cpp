// A build without NCCL: GPU tensors are staged through host memory by the MPI engine.
#include "dist/nccl/nccl_engine.h"

namespace cm::dist {

bool nccl_enabled() {
  return false;
}

std::unique_ptr<NcclEngine> make_nccl_engine(int, int, int,
                                             const std::function<void(void*, int)>&) {
  CM_FAIL("dist: this cm was built without NCCL (configure with -DCM_NCCL=ON and CUDA)");
}

}  // namespace cm::dist
