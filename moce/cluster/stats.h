// moce/cluster/stats.h: what clusters.json reports about an assignment: sizes, min/median/max, empty clusters, size
// entropy, and against labels the purity and the normalised mutual information.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/error.h"

namespace moce::cluster {

std::vector<int64_t> cluster_sizes(const std::vector<int32_t>& assign, int64_t clusters);

// Shannon entropy (nats) of a count vector's distribution; 0 for an empty one.
double count_entropy(const std::vector<int64_t>& counts);

// Normalised mutual information between two labelings with the arithmetic mean of the entropies as the normaliser
// (scikit-learn's default): NMI = I(U; V) / ((H(U) + H(V)) / 2); 1 when both are one single group.
double nmi(const std::vector<int32_t>& a, const std::vector<int64_t>& b);

// Fraction of images whose label is the most frequent label of their cluster.
double purity(const std::vector<int32_t>& a, const std::vector<int64_t>& labels);

// The size summary of one assignment; with labels (one per row, same order) also purity and NMI.
nlohmann::json assignment_summary(const std::vector<int32_t>& assign, int64_t clusters,
                                  const std::vector<int64_t>* labels = nullptr);

}  // namespace moce::cluster
