// KV_PREFETCH(p): asks the CPU to fetch the cache line at p ahead of a read (no effect on
// what the program computes). GCC and Clang have the builtin; elsewhere (MSVC) it is a no-op,
// so that every csrc file builds with any compiler: the one guarded definition they all use.
#pragma once

#if defined(__GNUC__) || defined(__clang__)
#define KV_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define KV_PREFETCH(p) ((void)(p))
#endif
