// moce/common/label_stats.h: agreement of a grouping with labels, for any room that groups images (clusters in
// cluster/, experts in eval/'s routing report): the normalised mutual information and the purity, and the entropy of
// a count vector.
#pragma once
#include <cstdint>
#include <vector>

namespace moce {

// Shannon entropy (nats) of a count vector's distribution; 0 for an empty one.
double count_entropy(const std::vector<int64_t>& counts);

// Normalised mutual information between two labelings with the arithmetic mean of the entropies as the normaliser
// (scikit-learn's default): NMI = I(U; V) / ((H(U) + H(V)) / 2); 1 when both are one single group.
double nmi(const std::vector<int32_t>& a, const std::vector<int64_t>& b);

// Fraction of images whose label is the most frequent label of their group.
double purity(const std::vector<int32_t>& a, const std::vector<int64_t>& labels);

}  // namespace moce
