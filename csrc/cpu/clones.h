#pragma once
// GRACE_FAST_CLONES before a function compiles it twice, for AVX2+FMA (x86-64-v3) and for the baseline ISA;
// the loader picks the clone the CPU runs. Wheels stay portable without -march=native.

#if defined(__x86_64__)
#define GRACE_FAST_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define GRACE_FAST_CLONES
#endif
