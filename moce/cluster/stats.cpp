// stats.cpp: sizes, entropy, purity and NMI of an assignment.
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

double count_entropy(const std::vector<int64_t>& counts) {
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  double h = 0;
  for (int64_t c : counts)
    if (c > 0) {
      const double p = double(c) / double(total);
      h -= p * std::log(p);
    }
  return h;
}

double nmi(const std::vector<int32_t>& a, const std::vector<int64_t>& b) {
  ENG_CHECK(a.size() == b.size(), "nmi: {} assignments for {} labels", a.size(), b.size());
  std::map<std::pair<int64_t, int64_t>, int64_t> joint;
  std::map<int64_t, int64_t> ca, cb;
  for (size_t i = 0; i < a.size(); i++) {
    joint[{a[i], b[i]}]++;
    ca[a[i]]++;
    cb[b[i]]++;
  }
  const double n = double(a.size());
  double mi = 0;
  for (const auto& [key, nij] : joint)
    mi += double(nij) / n * std::log(n * double(nij) / (double(ca[key.first]) * double(cb[key.second])));
  auto entropy = [&](const std::map<int64_t, int64_t>& m) {
    double h = 0;
    for (const auto& kv : m) h -= double(kv.second) / n * std::log(double(kv.second) / n);
    return h;
  };
  const double ha = entropy(ca), hb = entropy(cb);
  if (ha + hb <= 0) return 1.0;
  return std::max(0.0, mi / ((ha + hb) / 2));
}

double purity(const std::vector<int32_t>& a, const std::vector<int64_t>& labels) {
  ENG_CHECK(a.size() == labels.size(), "purity: {} assignments for {} labels", a.size(), labels.size());
  if (a.empty()) return 0;
  std::map<int32_t, std::map<int64_t, int64_t>> per;
  for (size_t i = 0; i < a.size(); i++) per[a[i]][labels[i]]++;
  int64_t hit = 0;
  for (const auto& kv : per) {
    int64_t best = 0;
    for (const auto& lv : kv.second) best = std::max(best, lv.second);
    hit += best;
  }
  return double(hit) / double(a.size());
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
