// host_device.h: ENG_HOST_DEVICE, the mark of a function compiled for both the host and the GPU (nvcc), so the CPU
// and CUDA backends share one copy of per-element math.
#pragma once

#ifdef __CUDACC__
#define ENG_HOST_DEVICE __host__ __device__
#else
#define ENG_HOST_DEVICE
#endif
