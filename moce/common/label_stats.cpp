// label_stats.cpp: count entropy, NMI and purity.
#include "moce/common/label_stats.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "engine/error.h"

namespace moce {

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

}  // namespace moce
