// moce/common/image_grid.h: a PNG of titled rows of image tiles (the paper's Figure 3b: samples per cluster, per
// expert), and a data set's image as the model sees it (resized and centre-cropped), for its tiles.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "data/dataset.h"
#include "engine/tensor.h"

namespace moce {

// One row of the grid: its title (drawn upper case in the plot font) and its tiles, each [3, tile, tile] f32 in
// [0, 1] (clamped), or undefined for a blank cell.
struct TitledRow {
  std::string title;
  std::vector<eng::Tensor> tiles;
};

// Writes the rows (atomically, through data::write_png) with `per_row` cells each, the tiles upscaled by an integer
// factor to at least 64 pixels, a title strip above each row. Returns [width, height]. Throws naming `path` for an
// empty grid or a tile that is not [3, tile, tile].
std::pair<int64_t, int64_t> write_titled_grid_png(const std::string& path, const std::vector<TitledRow>& rows,
                                                  int64_t tile, int64_t per_row);

// Image `index` of `ds` resized (shorter side) and centre-cropped to tile x tile, before normalisation, [3, tile,
// tile]; undefined when the image does not decode (a blank cell, as the loader skips it).
eng::Tensor dataset_tile(const data::Dataset& ds, int64_t index, int64_t tile);

}  // namespace moce
