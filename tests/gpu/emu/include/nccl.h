// Fake NCCL header for the emulation build (only what NCCL_CHECK names).
#pragma once
enum ncclResult_t { ncclSuccess = 0 };
inline const char* ncclGetErrorString(ncclResult_t) { return "ncclEmu"; }
