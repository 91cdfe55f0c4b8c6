// fuzz_image.cpp: libFuzzer target over data::decode_image_bytes (stb_image behind our wrapper: JPEG, PNG,
// PPM/PGM, BMP), the decoder every ImageFolder sample goes through, then image_to_tensor.
// Checked: no crash or sanitizer report; a refusal is an eng::Error (CorruptImage included) of one line naming the
// file; an accepted image has positive sides and height x width x 3 bytes, and converts to a [3, H, W] tensor.
#include "data/image.h"
#include "fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string name = "fuzz-input";
  fuzz::run_checked("image", name, [&] {
    data::Image img = data::decode_image_bytes(data, size, name);
    if (img.height <= 0 || img.width <= 0) fuzz::fail("image", "accepted an image with a side <= 0", "");
    if (img.pixels.size() != size_t(img.height) * size_t(img.width) * 3)
      fuzz::fail("image", "pixel buffer size does not match the sides", "");
    eng::Tensor t = data::image_to_tensor(img);
    if (t.shape() != std::vector<int64_t>{3, img.height, img.width}) fuzz::fail("image", "tensor shape", "");
  });
  return 0;
}
