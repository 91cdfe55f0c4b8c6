// report.h: the whole evaluation of a pre-trained MAE, what `moce eval-mae` runs: features of both sets, k-NN,
// linear probe, reconstruction PSNR and pictures, gathered into one JSON report (eval.json).
//
//   features        moce/eval/features.h       k-NN            moce/eval/knn.h
//   linear probe    moce/eval/linear_probe.h   reconstruction  moce/eval/reconstruction.h
#pragma once
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "model/mae.h"
#include "moce/eval/features.h"
#include "moce/eval/knn.h"
#include "moce/eval/linear_probe.h"
#include "moce/eval/reconstruction.h"

namespace moce {

struct EvalMaeOptions {
  std::string out_dir;            // receives eval.json and reconstructions.png (created if missing)
  KnnOptions knn;
  ProbeOptions probe;
  ReconOptions recon;
  ExtractOptions extract;
  bool run_knn = true, run_probe = true, run_recon = true;
  nlohmann::json inputs = nlohmann::json::object();  // what the caller wants recorded (checkpoint, flags)
  bool verbose = true;                               // progress lines on stdout
};

// Features of both sets, k-NN, linear probe, reconstruction PSNR and the PNG; writes <out>/eval.json
// (atomically) and <out>/reconstructions.png, and returns the JSON it wrote.
nlohmann::json evaluate_mae(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> train,
                            std::shared_ptr<const data::Dataset> test, const EvalMaeOptions& options);

}  // namespace moce
