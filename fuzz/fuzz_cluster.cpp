// fuzz_cluster.cpp: libFuzzer target over the files of a `moce cluster` folder that the later stages read:
// centroids.safetensors (read_centroids), assignments.safetensors (ClusterLookup), the feature bank with its
// paths file (read_bank, mapped in place or copied) and clusters.json (cluster_folder_pool).
// Input: byte 0 picks the file (mod 5); for the bank, byte 1 is the length of the paths file cut from the end
// (255: no paths file). The rest is written to a scratch folder, since the readers take paths.
// Checked: no crash or sanitizer report; a refusal is an eng::Error of one line naming the file; what is accepted is
// usable: centroids [M, d] with M, d >= 1; every assignment a cluster in [0, clusters); a bank whose rows all read.
#include <cmath>

#include "fuzz/fuzz_common.h"
#include "moce/cluster/io.h"
#include "moce/train/expert_training.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int kind = data[0] % 5;
  const uint8_t* body = data + 1;
  size_t n = size - 1;
  if (kind == 0) {
    const std::string path = fuzz::write_scratch("centroids.safetensors", body, n);
    fuzz::run_checked("cluster", path, [&] {
      moce::cluster::CentroidsFile c = moce::cluster::read_centroids(path);
      if (c.centroids.dim() != 2 || c.centroids.size(0) < 1 || c.centroids.size(1) < 1)
        fuzz::fail("cluster", "accepted centroids of shape", eng::shape_str(c.centroids.shape()));
    });
  } else if (kind == 1) {
    const std::string path = fuzz::write_scratch("assignments.safetensors", body, n);
    fuzz::run_checked("cluster", path, [&] {
      moce::cluster::ClusterLookup lookup(path);
      if (lookup.clusters() < 1) fuzz::fail("cluster", "accepted a cluster count", std::to_string(lookup.clusters()));
      for (int64_t image = 0; image < 64; image++) {
        int32_t c;
        try {
          c = lookup.cluster_of_image(image);
        } catch (const eng::Error& e) {
          fuzz::check_refusal("cluster", e, path);
          continue;
        }
        if (c < 0 || c >= lookup.clusters()) fuzz::fail("cluster", "accepted an assignment outside [0, clusters)", std::to_string(c));
      }
    });
  } else if (kind == 2 || kind == 3) {
    const size_t paths_len = body[0] == 255 ? 0 : std::min<size_t>(body[0], n - 1);
    const bool has_paths = body[0] != 255;
    body++;
    n--;
    const std::string path = fuzz::write_scratch("bank.safetensors", body, n - paths_len);
    if (has_paths)
      fuzz::write_scratch("bank.safetensors.paths", body + n - paths_len, paths_len);
    else
      fuzz::remove_scratch("bank.safetensors.paths");
    fuzz::run_checked("cluster", path, [&] {
      moce::cluster::FeatureBank bank = moce::cluster::read_bank(path, /*in_place=*/kind == 2);
      if (bank.n < 0 || bank.d < 0 || int64_t(bank.image_index.size()) != bank.n)
        fuzz::fail("cluster", "accepted a bank of inconsistent size", std::to_string(bank.n) + " x " + std::to_string(bank.d));
      double sum = 0;
      for (int64_t r = 0; r < bank.n; r++)
        for (int64_t c = 0; c < bank.d; c++) sum += bank.value(r, c);  // every row readable (ASan / the mapping's end)
      (void)sum;
    });
  } else {
    const std::string path = fuzz::write_scratch("clusters.json", body, n);
    fuzz::run_checked("cluster", fuzz::scratch_dir(), [&] {
      const std::string pool = moce::cluster_folder_pool(fuzz::scratch_dir());
      if (pool.empty()) fuzz::fail("cluster", "accepted an empty pool name", "");
    });
  }
  return 0;
}
