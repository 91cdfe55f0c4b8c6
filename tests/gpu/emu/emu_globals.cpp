// emu_globals.cpp: the CUDA emulator's globals (tests/gpu/emu/include/emu_core.h): the running thread's indices,
// the launch in progress, and counters of the fake cuBLAS calls.
#include "cuda_runtime.h"

namespace emu {
Ctx* g_cur = nullptr;
Launch* g_launch = nullptr;
uint64_t g_switches = 0;
int g_gemm_calls_classic = 0, g_gemm_calls_lt = 0, g_gemm_calls_grouped = 0;
}  // namespace emu
