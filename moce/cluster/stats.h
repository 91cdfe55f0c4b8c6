// moce/cluster/stats.h: what clusters.json reports about an assignment: sizes, min/median/max, empty clusters, size
// entropy, and against labels the purity and the normalised mutual information (those three live in
// common/label_stats.h, shared with eval/'s routing report, and are reachable here under moce::cluster as before).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "moce/common/label_stats.h"

namespace moce::cluster {

std::vector<int64_t> cluster_sizes(const std::vector<int32_t>& assign, int64_t clusters);

using moce::count_entropy;
using moce::nmi;
using moce::purity;

// The size summary of one assignment; with labels (one per row, same order) also purity and NMI.
nlohmann::json assignment_summary(const std::vector<int32_t>& assign, int64_t clusters,
                                  const std::vector<int64_t>* labels = nullptr);

}  // namespace moce::cluster
