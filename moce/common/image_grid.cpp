// image_grid.cpp: titled rows of tiles rasterised into one RGB image and written as PNG.
#include "moce/common/image_grid.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <memory>

#include "data/image.h"
#include "data/transforms.h"
#include "engine/error.h"
#include "moce/common/plot.h"

namespace moce {

std::pair<int64_t, int64_t> write_titled_grid_png(const std::string& path, const std::vector<TitledRow>& rows,
                                                  int64_t tile, int64_t per_row) {
  ENG_CHECK(tile > 0 && !rows.empty() && per_row > 0, "{}: an empty grid ({} rows of {} images of {} pixels)", path,
            rows.size(), per_row, tile);
  const int64_t factor = std::max<int64_t>(1, (64 + tile - 1) / tile);  // tiles of at least 64 pixels
  const int64_t cell = tile * factor, pad = 2, scale = 2, title_h = 5 * scale + 6;
  const int64_t n_rows = int64_t(rows.size());
  const int64_t width = pad + per_row * (cell + pad), row_h = title_h + cell + pad, height = pad + n_rows * row_h;
  data::Image img;
  img.width = width;
  img.height = height;
  img.pixels.assign(size_t(width * height * 3), 255);
  for (int64_t r = 0; r < n_rows; r++) {
    const int64_t y0 = pad + r * row_h;
    std::string title = rows[size_t(r)].title;
    // The font draws lower case as upper case except 'e' (its exponent sign): titles are upper case throughout.
    std::transform(title.begin(), title.end(), title.begin(), [](unsigned char ch) { return char(std::toupper(ch)); });
    draw_text(img, int(pad), int(y0 + 3), title, int(scale), 0, 0, 0);
    const int64_t shown = std::min<int64_t>(per_row, int64_t(rows[size_t(r)].tiles.size()));
    for (int64_t k = 0; k < shown; k++) {
      const eng::Tensor& t0 = rows[size_t(r)].tiles[size_t(k)];
      if (!t0.defined()) continue;
      ENG_CHECK(t0.shape() == (eng::Shape{3, tile, tile}), "{}: row {} tile {} is {}, not [3, {}, {}]", path, r, k,
                eng::shape_str(t0.shape()), tile, tile);
      const eng::Tensor t = t0.to(eng::DType::F32).contiguous();
      const float* p = t.data<float>();
      const int64_t x0 = pad + k * (cell + pad), ty = y0 + title_h;
      for (int64_t y = 0; y < cell; y++)
        for (int64_t x = 0; x < cell; x++)
          for (int64_t ch = 0; ch < 3; ch++) {
            const float v = p[(ch * tile + y / factor) * tile + x / factor];
            img.pixels[size_t(((ty + y) * width + x0 + x) * 3 + ch)] =
                uint8_t(std::lround(255.0 * std::min(1.0f, std::max(0.0f, v))));
          }
    }
  }
  data::write_png(path, img);
  return {width, height};
}

eng::Tensor dataset_tile(const data::Dataset& ds, int64_t index, int64_t tile) {
  data::Pipeline resize;  // the model's view of the image, before normalisation
  resize.add(std::make_shared<data::ResizeShorter>(tile));
  resize.add(std::make_shared<data::CenterCrop>(tile, tile));
  try {
    return resize.apply(ds.get(index).image, 0, 0, index).contiguous();
  } catch (const data::CorruptImage&) {
    return eng::Tensor();
  }
}

}  // namespace moce
