// fuzz_cifar.cpp: libFuzzer target over data::CifarBinary (the CIFAR-10 binary reader: records of 1 label byte +
// 3072 planar RGB bytes). The first input byte picks the class list (none = CIFAR-10's ten names, or 1..16 names
// as batches.meta.txt gives them), the rest is written to a scratch file, since the reader takes paths.
// Checked: no crash or sanitizer report; a refusal is an eng::Error of one line naming the file; an accepted file
// gives size / 3073 samples, each [3, 32, 32] in [0, 1] with a label below the class count, and ids naming the file.
#include <cmath>

#include "data/dataset.h"
#include "fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::vector<std::string> classes;
  for (int c = 0; c < (data[0] % 17); c++) classes.push_back("class" + std::to_string(c));
  const std::string path = fuzz::write_scratch("data_batch_1.bin", data + 1, size - 1);
  fuzz::run_checked("cifar", path, [&] {
    data::CifarBinary ds({path}, classes);
    const int64_t n = ds.size();
    if (n != int64_t((size - 1) / 3073) || (size - 1) % 3073 != 0) fuzz::fail("cifar", "accepted a file of a size", "");
    const int64_t classes_n = classes.empty() ? 10 : int64_t(classes.size());
    for (int64_t i : {int64_t(0), n / 2, n - 1}) {
      data::Sample s = ds.get(i);
      if (s.label < 0 || s.label >= classes_n || ds.label(i) != s.label) fuzz::fail("cifar", "label out of range", "");
      if (s.image.shape() != std::vector<int64_t>{3, 32, 32}) fuzz::fail("cifar", "sample shape", "");
      const float* p = s.image.data<float>();
      for (int64_t k = 0; k < 3 * 32 * 32; k++)
        if (!(p[k] >= 0.0f && p[k] <= 1.0f)) fuzz::fail("cifar", "pixel outside [0, 1]", "");
      if (ds.id(i).rfind(path, 0) != 0) fuzz::fail("cifar", "sample id does not name the file", ds.id(i));
    }
    for (int64_t bad : {int64_t(-1), n}) {
      bool refused = false;
      try {
        ds.get(bad);
      } catch (const eng::Error&) {
        refused = true;
      }
      if (!refused) fuzz::fail("cifar", "an index outside the data set was accepted", std::to_string(bad));
    }
  });
  return 0;
}
