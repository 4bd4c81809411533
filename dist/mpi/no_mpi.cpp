// A build without MPI: the local engine only.
#include "dist/mpi/mpi_communicator.h"

namespace cm::dist {

bool has_mpi() {
  return false;
}

std::unique_ptr<Communicator> make_mpi_communicator() {
  CM_FAIL(
      "dist: this cm was built without MPI (configure with -DCM_MPI=ON; Debian: "
      "libopenmpi-dev)");
}

}  // namespace cm::dist
