// The MPI engine of dist::Communicator (dist/mpi/mpi_communicator.cpp), or its stub in a build
// without MPI (dist/mpi/no_mpi.cpp: has_mpi() is false and make_mpi_communicator() throws).
#pragma once

#include <memory>

#include "dist/communicator.h"

namespace cm::dist {

// MPI_COMM_WORLD, initialised here (MPI_Init_thread, funneled: collectives come from the thread
// that made it) and finalised at exit. Errors return (MPI_ERRORS_RETURN) and become cm::Errors
// naming the rank, the operation and MPI's message.
std::unique_ptr<Communicator> make_mpi_communicator();

}  // namespace cm::dist
