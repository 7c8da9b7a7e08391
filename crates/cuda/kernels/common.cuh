// Shared by every kernel of morphogen's CUDA engine. NVRTC compiles the
// kernel files as one source, this file first; no system headers are used.

typedef unsigned int u32;
typedef unsigned long long u64;

#define FULL_WARP 0xffffffffu

__device__ __forceinline__ uint4 xor4(uint4 a, uint4 b) {
    return make_uint4(a.x ^ b.x, a.y ^ b.y, a.z ^ b.z, a.w ^ b.w);
}

__device__ __forceinline__ u64 global_thread() {
    return (u64)blockIdx.x * blockDim.x + threadIdx.x;
}
