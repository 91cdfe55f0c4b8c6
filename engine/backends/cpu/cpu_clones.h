// cpu_clones.h: ENG_CLONES, which compiles a function once per instruction set (AVX-512, x86-64-v3, baseline) and
// picks the clone at load time, so one binary runs the widest vectors each machine has. Off under AddressSanitizer,
// whose instrumentation and ifunc resolvers do not mix.
#pragma once

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define ENG_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#else
#define ENG_CLONES
#endif
