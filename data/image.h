// image.h: decoding image files (JPEG, PNG, PPM/PGM, BMP via stb_image) and writing PNGs (stb_image_write).
//
// Every decoded image has 3 channels: the models always take RGB, so grayscale is expanded by copying
// the gray value into R, G and B, and an alpha channel is dropped (not composited over any background).
// 16-bit PNGs are reduced to 8 bits by stb_image.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/tensor.h"

namespace data {

// A file that exists and was read but does not decode: truncated, corrupt, or not an image at all.
// The loader catches exactly this type to skip the image (or rethrows it in strict mode); any other
// error (a missing or unreadable file, a bad argument) is not a property of the image and always propagates.
struct CorruptImage : eng::Error {
  using eng::Error::Error;
};

// 8-bit RGB pixels, row-major H x W x 3 (interleaved), as decoders and PNG writers use them.
struct Image {
  int64_t height = 0;
  int64_t width = 0;
  std::vector<uint8_t> pixels;  // height * width * 3 bytes
};

// Reads and decodes one file. Throws eng::Error when the file cannot be read (message names it and the OS
// reason), CorruptImage when it cannot be decoded (message names it and stb_image's reason).
Image decode_image(const std::string& path);
// Decodes an in-memory file; `name` is used in error messages.
Image decode_image_bytes(const uint8_t* bytes, size_t size, const std::string& name);

// HxWx3 uint8 -> f32 [3, H, W] in [0, 1] (value / 255, as torchvision's ToTensor).
eng::Tensor image_to_tensor(const Image& image);
// [3, H, W] or [1, H, W] or [H, W] floating tensor in [0, 1] -> 8-bit RGB: clamp to [0, 1], then
// round(255 x). Non-finite values are an error naming `what`.
Image tensor_to_image(const eng::Tensor& chw, const std::string& what = "tensor");

// Writes a PNG, first to a temporary file beside `path`, then renamed over it, so a reader never sees
// half a picture and an existing file survives a failed write. Errors name the path.
void write_png(const std::string& path, const Image& image);
void write_png(const std::string& path, const eng::Tensor& chw);  // via tensor_to_image

// Tiles images [N, C, H, W] (C = 1 or 3, values in [0, 1]) into one picture [3, H', W'] with `ncols`
// columns and `padding` pixels of `pad_value` between and around the tiles, for result pictures.
eng::Tensor make_grid(const eng::Tensor& images, int64_t ncols, int64_t padding = 2, float pad_value = 1.0f);

}  // namespace data
