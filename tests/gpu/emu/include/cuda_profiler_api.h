// Fake cuda_profiler_api.h for the CPU emulation build: cudaProfilerStart/Stop live in cuda_runtime.h here.
#pragma once
#include "cuda_runtime.h"
