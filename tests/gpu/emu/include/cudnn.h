// Fake cuDNN header for the emulation build (only what CUDNN_CHECK names).
#pragma once
enum cudnnStatus_t { CUDNN_STATUS_SUCCESS = 0 };
inline const char* cudnnGetErrorString(cudnnStatus_t) { return "CUDNN_STATUS_EMU"; }
