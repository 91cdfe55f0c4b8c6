// stats.cpp: the size summary of an assignment (entropy, purity and NMI from common/label_stats.cpp).
#include "moce/cluster/stats.h"

namespace moce::cluster {

std::vector<int64_t> cluster_sizes(const std::vector<int32_t>& assign, int64_t clusters) {
  std::vector<int64_t> sizes(size_t(clusters), 0);
  for (int32_t a : assign) {
    ENG_CHECK(a >= 0 && a < clusters, "cluster id {} out of range [0, {})", a, clusters);
    sizes[size_t(a)]++;
  }
  return sizes;
}

nlohmann::json assignment_summary(const std::vector<int32_t>& assign, int64_t clusters,
                                  const std::vector<int64_t>* labels) {
  std::vector<int64_t> sizes = cluster_sizes(assign, clusters);
  std::vector<int64_t> sorted = sizes;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> empty;
  for (int64_t j = 0; j < clusters; j++)
    if (sizes[size_t(j)] == 0) empty.push_back(j);
  const double median = sorted.empty() ? 0.0
                        : sorted.size() % 2 ? double(sorted[sorted.size() / 2])
                                            : 0.5 * double(sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]);
  const double h = count_entropy(sizes);
  nlohmann::json j = {{"sizes", sizes},
                      {"min", sorted.empty() ? 0 : sorted.front()},
                      {"median", median},
                      {"max", sorted.empty() ? 0 : sorted.back()},
                      {"empty_clusters", empty},
                      {"num_empty", empty.size()},
                      {"size_entropy_nats", h},
                      {"size_entropy_normalised", clusters > 1 ? h / std::log(double(clusters)) : 1.0}};
  if (labels) {
    j["purity"] = purity(assign, *labels);
    j["nmi"] = nmi(assign, *labels);
  }
  return j;
}

}  // namespace moce::cluster
