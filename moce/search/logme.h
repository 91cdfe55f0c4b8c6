// logme.h: LogME (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning"), the
// evidence of a Bayesian linear model from features to one-hot labels, maximised over its prior and noise precisions
// (alpha, beta) by the fixed-point iteration of thuml/LogME's LogME._fit_fixed_point (the default `_fit` there;
// ../shared/REFERENCES.md spells it out). All in f64; the SVD of the features comes from our own symmetric
// eigen-decomposition (cyclic Jacobi): of f^T f when N > D (as the reference's truncated_svd, keeping the singular
// values above 1e-10), of f f^T otherwise (the reference's thin SVD of f: all min(N, D) values kept).
// Tests: tests/test_search_methods.cpp (suite 'search methods') against tests/fixtures/logme_reference.json, written by
// tests/fixtures/make_logme_fixture.py (a numpy transcription of the reference).
#pragma once
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace moce::search {

// Eigenvalues (descending) and eigenvectors of a symmetric n x n matrix; vectors[i * n + j] is component i of the
// eigenvector of values[j] (column j). Cyclic Jacobi rotations in a fixed order until the off-diagonal mass is below
// 1e-30 of the whole (or 100 sweeps): deterministic, accurate to about 1e-15 of the largest eigenvalue.
struct SymmetricEigen {
  int64_t n = 0;
  std::vector<double> values, vectors;
};
// a: row-major n x n, symmetric (only its values are used as given: the caller makes it symmetric).
SymmetricEigen symmetric_eigen(std::vector<double> a, int64_t n);

struct LogmeClass {
  double evidence = 0;  // the class's log evidence divided by N
  double alpha = 0, beta = 0;
  int iterations = 0;   // fixed-point steps taken (at most 11, as the reference)
};

struct LogmeResult {
  double score = 0;               // the mean of the classes' evidence (the LogME value)
  int64_t rank = 0;               // singular values kept
  std::vector<LogmeClass> classes;  // classes 0 .. max(label), as the reference (an absent class below the max counts)
};

// features [N, D] (any float dtype, any device), labels [N] integers >= 0. Throws one line for an empty set, a shape
// mismatch, a negative label or a non-finite feature; `what` names the input in the error.
LogmeResult logme(const eng::Tensor& features, const eng::Tensor& labels, const char* what = "LogME");

}  // namespace moce::search
