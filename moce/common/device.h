// device.h: the training device of the `moce` subcommands: the --device flag, and moving a model and its tensors
// between the host and that device.
#pragma once
#include <map>
#include <string>

#include "engine/tensor.h"
#include "model/mae.h"

namespace moce {

// The device a --device flag names, checked now: "cpu", "cuda" or "cuda:N". Without a usable GPU this throws one
// line naming the flag ("--device cuda<context>: no CUDA GPU was found ...", or "... this build has no CUDA
// backend ..."); `context` says where the value came from when it was not typed, e.g. " (saved in FILE)".
eng::Device device_from_flag(const std::string& value, const std::string& context = "");

// Moves every tensor of the model (parameters, which stay leaves that require grad, and fixed buffers) to `device`.
void move_to_device(model::MaskedAutoencoder& model, eng::Device device);

// Host copies of tensors (the tensors themselves when they are on the CPU already): what checkpoints are written from.
std::map<std::string, eng::Tensor> host_copies(const std::map<std::string, eng::Tensor>& tensors);

}  // namespace moce
