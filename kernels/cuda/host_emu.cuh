// host_emu.cuh: run the lab's CUDA kernels on the CPU, one OS thread per CUDA thread.
//
// Not used on the GPU. kernels/emu.py includes this header and then a kernel source (.cu) into a
// host C++20 translation unit, builds it with g++ and calls it through ctypes, so the index maths,
// bounds checks and barrier placement of every kernel can be checked against the NumPy reference
// on a machine without a GPU. It emulates only what the lab kernels use:
//
// * threadIdx and blockIdx (per OS thread), blockDim / gridDim (per launch);
// * __shared__ as function-local statics (shared by the threads of the one block that runs at a
//   time; blocks run one after another, on the same OS threads);
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
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }

namespace emu {
inline thread_local dim3 thread_idx, block_idx;
inline thread_local std::barrier<>* block_barrier = nullptr;
inline dim3 block_dim, grid_dim;

// Run `body` (the kernel call) for every thread of every block of the grid. One OS thread per
// CUDA thread of a block, reused for every block (blocks run one after another): each block has
// its own barrier for __syncthreads(), which a thread leaves when its kernel call returns (as
// exited threads stop counting on the hardware), and every thread waits at `next` before
// starting the following block, so no block touches __shared__ while the previous one still does.
template <class F>
void launch(dim3 grid, dim3 block, F body) {
    const unsigned T = block.x * block.y * block.z;
    const unsigned B = grid.x * grid.y * grid.z;
    grid_dim = grid;
    block_dim = block;
    std::vector<std::unique_ptr<std::barrier<>>> bars;
    bars.reserve(B);
    for (unsigned b = 0; b < B; ++b) bars.emplace_back(new std::barrier<>((std::ptrdiff_t)T));
    std::barrier<> next((std::ptrdiff_t)T);
    std::vector<std::thread> threads;
    threads.reserve(T);
    for (unsigned t = 0; t < T; ++t)
        threads.emplace_back([&, t] {
            thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            for (unsigned b = 0; b < B; ++b) {
                block_idx = dim3(b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y));
                block_barrier = bars[b].get();
                body();
                bars[b]->arrive_and_drop();
                next.arrive_and_wait();
            }
            block_barrier = nullptr;
        });
    for (auto& th : threads) th.join();
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
