// logme.cpp: LogME's fixed-point iteration and the Jacobi eigen-decomposition under it (see the header).
#include "moce/search/logme.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/error.h"

namespace moce::search {

SymmetricEigen symmetric_eigen(std::vector<double> a, int64_t n) {
  ENG_CHECK(n >= 0 && int64_t(a.size()) == n * n, "symmetric_eigen: {} values for a {}x{} matrix", a.size(), n, n);
  const size_t N = size_t(n);
  std::vector<double> v(N * N, 0.0);
  for (size_t i = 0; i < N; i++) v[i * N + i] = 1.0;
  double total = 0;
  for (double x : a) total += x * x;
  for (int sweep = 0; sweep < 100; sweep++) {
    double off = 0;
    for (size_t p = 0; p < N; p++)
      for (size_t q = p + 1; q < N; q++) off += a[p * N + q] * a[p * N + q];
    if (off <= 1e-30 * total) break;
    for (size_t p = 0; p < N; p++) {
      for (size_t q = p + 1; q < N; q++) {
        const double apq = a[p * N + q];
        if (apq == 0) continue;
        const double app = a[p * N + p], aqq = a[q * N + q];
        // After a few sweeps an element below the diagonals' last digits is dropped rather than rotated away.
        if (sweep > 3 && std::abs(app) + 100 * std::abs(apq) == std::abs(app) &&
            std::abs(aqq) + 100 * std::abs(apq) == std::abs(aqq)) {
          a[p * N + q] = a[q * N + p] = 0;
          continue;
        }
        // The rotation that zeroes a_pq: t = tan(phi) with cot(2 phi) = theta, the smaller root (|phi| <= pi/4).
        const double theta = (aqq - app) / (2 * apq);
        const double t = std::abs(theta) > 1e150 ? 1 / (2 * theta)
                                                 : (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        a[p * N + p] = app - t * apq;
        a[q * N + q] = aqq + t * apq;
        a[p * N + q] = a[q * N + p] = 0;
        for (size_t k = 0; k < N; k++) {
          if (k == p || k == q) continue;
          const double g = a[k * N + p], h = a[k * N + q];
          a[k * N + p] = a[p * N + k] = c * g - s * h;
          a[k * N + q] = a[q * N + k] = s * g + c * h;
        }
        for (size_t k = 0; k < N; k++) {
          const double g = v[k * N + p], h = v[k * N + q];
          v[k * N + p] = c * g - s * h;
          v[k * N + q] = s * g + c * h;
        }
      }
    }
  }
  std::vector<size_t> order(N);
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t i, size_t j) { return a[i * N + i] > a[j * N + j]; });
  SymmetricEigen e;
  e.n = n;
  e.values.resize(N);
  e.vectors.resize(N * N);
  for (size_t j = 0; j < N; j++) {
    e.values[j] = a[order[j] * N + order[j]];
    for (size_t i = 0; i < N; i++) e.vectors[i * N + j] = v[i * N + order[j]];
  }
  return e;
}

namespace {

// One class's evidence maximisation: sigma = the squared singular values, x2 = (u_j . y)^2, res_x2 = |y|^2 - sum x2.
LogmeClass fit_class(const std::vector<double>& sigma, const std::vector<double>& x2, double res_x2, double N, double D) {
  LogmeClass c;
  double alpha = 1, beta = 1, m2 = 0, res2 = 0;
  for (int it = 0; it < 11; it++) {
    const double t = alpha / beta;
    double gamma = 0, m2_sum = 0, res_sum = 0;
    for (size_t j = 0; j < sigma.size(); j++) {
      gamma += sigma[j] / (sigma[j] + t);
      m2_sum += sigma[j] * x2[j] / ((t + sigma[j]) * (t + sigma[j]));
      const double shrink = 1 + sigma[j] / t;
      res_sum += x2[j] / (shrink * shrink);
    }
    m2 = m2_sum;
    res2 = res_sum + res_x2;
    alpha = gamma / (m2 + 1e-5);
    beta = (N - gamma) / (res2 + 1e-5);
    c.iterations = it + 1;
    if (std::abs(alpha / beta - t) / t <= 1e-3) break;
  }
  double log_det = 0;
  for (double s : sigma) log_det += std::log(alpha + beta * s);
  c.evidence = (D / 2 * std::log(alpha) + N / 2 * std::log(beta) - 0.5 * log_det - beta / 2 * res2 - alpha / 2 * m2 -
                N / 2 * std::log(2 * M_PI)) /
               N;
  c.alpha = alpha;
  c.beta = beta;
  return c;
}

}  // namespace

LogmeResult logme(const eng::Tensor& features, const eng::Tensor& labels, const char* what) {
  ENG_CHECK(features.defined() && features.dim() == 2 && eng::is_floating(features.dtype()),
            "{}: features must be a float [N, D] matrix, got {}", what,
            features.defined() ? eng::shape_str(features.shape()) : "undefined");
  const int64_t n = features.size(0), d = features.size(1);
  ENG_CHECK(n > 0 && d > 0, "{}: the feature matrix {} is empty", what, eng::shape_str(features.shape()));
  ENG_CHECK(labels.defined() && labels.dim() == 1 && labels.size(0) == n, "{}: labels must be [{}], got {}", what, n,
            labels.defined() ? eng::shape_str(labels.shape()) : "undefined");
  const std::vector<double> f = features.to(eng::Device::cpu()).to_vector<double>();
  for (size_t i = 0; i < f.size(); i++)
    ENG_CHECK(std::isfinite(f[i]), "{}: feature {} of row {} is not finite", what, int64_t(i) % d, int64_t(i) / d);
  const std::vector<int64_t> y = labels.to(eng::Device::cpu()).to_vector<int64_t>();
  int64_t classes = 0;
  for (size_t i = 0; i < y.size(); i++) {
    ENG_CHECK(y[i] >= 0, "{}: label {} of row {} is negative", what, y[i], i);
    classes = std::max(classes, y[i] + 1);
  }
  const size_t N = size_t(n), D = size_t(d);

  // sigma_j = s_j^2 and, per class c, x_j = u_j . y_c, where f = U S V^T.
  std::vector<double> sigma;
  std::vector<std::vector<double>> x(static_cast<size_t>(classes));
  if (n > d) {
    // f^T f = V S^2 V^T; u_j = f v_j / s_j, so u_j . y_c = v_j . (f^T y_c) / s_j, with f^T y_c the class's feature sum.
    std::vector<double> gram(D * D, 0.0);
    for (size_t i = 0; i < N; i++) {
      const double* row = &f[i * D];
      for (size_t p = 0; p < D; p++) {
        const double rp = row[p];
        for (size_t q = p; q < D; q++) gram[p * D + q] += rp * row[q];
      }
    }
    for (size_t p = 0; p < D; p++)
      for (size_t q = 0; q < p; q++) gram[p * D + q] = gram[q * D + p];
    const SymmetricEigen e = symmetric_eigen(std::move(gram), d);
    std::vector<double> class_sum(size_t(classes) * D, 0.0);
    for (size_t i = 0; i < N; i++)
      for (size_t p = 0; p < D; p++) class_sum[size_t(y[i]) * D + p] += f[i * D + p];
    for (size_t j = 0; j < D; j++) {
      // The reference takes the singular values of f^T f (|eigenvalue|) and keeps sqrt > 1e-10 as f's rank.
      const double s = std::sqrt(std::abs(e.values[j]));
      if (!(s > 1e-10)) continue;
      sigma.push_back(s * s);
      for (size_t c = 0; c < size_t(classes); c++) {
        double dot = 0;
        for (size_t p = 0; p < D; p++) dot += e.vectors[p * D + j] * class_sum[c * D + p];
        x[c].push_back(dot / s);
      }
    }
  } else {
    // f f^T = U S^2 U^T: U is N x N, all N values kept (the reference's thin SVD of f does not truncate).
    std::vector<double> gram(N * N, 0.0);
    for (size_t p = 0; p < N; p++)
      for (size_t q = p; q < N; q++) {
        double dot = 0;
        for (size_t k = 0; k < D; k++) dot += f[p * D + k] * f[q * D + k];
        gram[p * N + q] = gram[q * N + p] = dot;
      }
    const SymmetricEigen e = symmetric_eigen(std::move(gram), n);
    for (size_t j = 0; j < N; j++) {
      const double s = std::sqrt(std::abs(e.values[j]));
      sigma.push_back(s * s);
      for (size_t c = 0; c < size_t(classes); c++) {
        double dot = 0;
        for (size_t i = 0; i < N; i++)
          if (size_t(y[i]) == c) dot += e.vectors[i * N + j];
        x[c].push_back(dot);
      }
    }
  }

  LogmeResult r;
  r.rank = int64_t(sigma.size());
  std::vector<int64_t> members(size_t(classes), 0);
  for (int64_t l : y) members[size_t(l)]++;
  for (size_t c = 0; c < size_t(classes); c++) {
    std::vector<double> x2(x[c].size());
    double sum_x2 = 0;
    for (size_t j = 0; j < x2.size(); j++) sum_x2 += x2[j] = x[c][j] * x[c][j];
    // |y_c|^2 is the class's size (one-hot); what the kept directions do not explain is fitted by nothing.
    r.classes.push_back(fit_class(sigma, x2, double(members[c]) - sum_x2, double(n), double(d)));
    r.score += r.classes.back().evidence;
  }
  r.score /= double(classes);
  return r;
}

}  // namespace moce::search
