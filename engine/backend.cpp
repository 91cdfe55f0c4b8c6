// backend.cpp: the Backend interface's default bodies: "not implemented on this device" errors for operations and
// "no" for optional capabilities (the lookup of a device's backend is in backend_registry.cpp).
#include "engine/backend.h"

#include "engine/error.h"

namespace eng {

void Backend::not_implemented(const char* op) const {
  ENG_FAIL("op '{}' is not implemented on the {} backend yet", op, name());
}

#define ENG_BACKEND_OP(name, params) \
  void Backend::name params { not_implemented(#name); }
#define ENG_BACKEND_QUERY(name, params, answer) \
  bool Backend::name params const { return answer; }
#include "engine/backend_methods.inc"

}  // namespace eng
