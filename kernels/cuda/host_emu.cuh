// host_emu.cuh: run the lab's CUDA kernels on the CPU, one OS thread per CUDA thread.
//
// Not used on the GPU. kernels/emu.py includes this header and then a kernel source (.cu) into a
// host C++20 translation unit, builds it with g++ and calls it through ctypes, so the index maths,
// bounds checks and barrier placement of every kernel can be checked against the NumPy reference
// on a machine without a GPU. It emulates only what the lab kernels use:
//
// * threadIdx (per OS thread), blockIdx / blockDim / gridDim (per launch);
// * __shared__ as function-local statics (shared by the threads of the one block that runs at a
//   time; blocks run one after another);
// * __syncthreads() as a std::barrier over the block's threads. A thread that returns leaves the
//   barrier (arrive_and_drop), as exited threads stop counting on the hardware;
// * float4 / make_float4 (16-byte aligned, so a misaligned vector access is as wrong here as there);
// * the qualifiers (__global__, __device__, __launch_bounds__, __align__, __restrict__) as no-ops
//   or their C++ equivalents.
//
// Warp-level behaviour (shuffles, implicit warp synchrony) is not emulated; the lab kernels do not
// rely on it. Shared memory starts zeroed here but uninitialised on the GPU: kernels must not read
// shared memory they did not write, and the tests' NaN-poisoned outputs catch unwritten outputs only.
#pragma once

#include <barrier>
#include <cmath>
#include <math.h>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }

namespace emu {
inline thread_local dim3 thread_idx;
inline dim3 block_idx, block_dim, grid_dim;
inline std::barrier<>* block_barrier = nullptr;

// Run `body` (the kernel call) for every thread of every block of the grid.
template <class F>
void launch(dim3 grid, dim3 block, F body) {
    const unsigned T = block.x * block.y * block.z;
    grid_dim = grid;
    block_dim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                block_idx = dim3(bx, by, bz);
                std::barrier<> bar((std::ptrdiff_t)T);
                block_barrier = &bar;
                std::vector<std::thread> threads;
                threads.reserve(T);
                for (unsigned t = 0; t < T; ++t)
                    threads.emplace_back([&, t] {
                        thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                        body();
                        bar.arrive_and_drop();
                    });
                for (auto& th : threads) th.join();
                block_barrier = nullptr;
            }
}
}  // namespace emu

#define threadIdx (::emu::thread_idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

inline void __syncthreads() { ::emu::block_barrier->arrive_and_wait(); }
