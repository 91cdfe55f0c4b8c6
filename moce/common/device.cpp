// device.cpp: the --device flag and moving a model to its device; see device.h.
#include "moce/common/device.h"

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/stream.h"

namespace moce {

eng::Device device_from_flag(const std::string& value, const std::string& context) {
  eng::Device d;
  try {
    d = eng::Device::parse(value);
  } catch (const eng::Error&) {
    ENG_FAIL("--device {}{}: unknown device; expected cpu, cuda or cuda:N", value, context);
  }
  if (d.is_cpu()) return d;
  ENG_CHECK(eng::built_with_cuda(), "--device {}{}: this build has no CUDA backend (made without nvcc and cuBLAS, or with "
            "CUDA=0); use --device cpu", value, context);
  ENG_CHECK(eng::cuda_available(), "--device {}{}: no CUDA GPU was found (check nvidia-smi and CUDA_VISIBLE_DEVICES); "
            "use --device cpu", value, context);
  const int n = eng::gpu_count();
  ENG_CHECK(d.index >= 0 && d.index < n, "--device {}{}: only {} CUDA GPU{} visible (cuda:0 to cuda:{})", value, context,
            n, n == 1 ? " is" : "s are", n - 1);
  return d;
}

void move_to_device(model::MaskedAutoencoder& model, eng::Device device) {
  model.visit([&](const std::string&, eng::Tensor& t) {
    if (t.device() == device) return;
    const bool trainable = t.requires_grad();
    t = t.detach().to(device).detach();
    if (trainable) t.requires_grad_(true);
  });
}

std::map<std::string, eng::Tensor> host_copies(const std::map<std::string, eng::Tensor>& tensors) {
  std::map<std::string, eng::Tensor> out;
  for (const auto& [name, t] : tensors) out[name] = t.device().is_cpu() ? t : t.detach().to(eng::Device::cpu());
  return out;
}

}  // namespace moce
