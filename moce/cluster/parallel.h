// moce/cluster/parallel.h: the parallel loop of the clustering code: the engine's host loop (engine/host_parallel.h).
#pragma once
#include "engine/host_parallel.h"

namespace moce::cluster {

using eng::parallel_for;

}  // namespace moce::cluster
