// Exercise 4, the kernels: a convolution in CUDA, v1 (one thread per output) then v2
// (shared-memory tiles). ex4_tiled_conv.py builds them, runs them on the CPU through the
// emulation (kernels/emu.py: every CUDA thread an OS thread, __syncthreads a barrier) and
// checks them against the float64 NumPy reference of the kernel lab (kernels/lab.py).
//
// The problem: stride-1 "same" convolution, float32, NCHW, no bias.
//   x (N, C, H, W), w (K, C, KS, KS) with KS odd and padding P = KS / 2, y (N, K, H, W):
//   y[n,k,h,v] = sum_{c,r,s} w[k,c,r,s] * x[n, c, h+r-P, v+s-P]   (x outside the image is 0)
//
// v1. Launch: 1-D blocks of 128 threads, grid.x = ceil(N*K*H*W / 128). Thread
// i = blockIdx.x * blockDim.x + threadIdx.x owns y.flat[i]: decompose i into (n, k, h, v)
// (v fastest, as in memory), loop over c, r, s, skip taps outside the image, write y[i].
// Threads past the end (i >= N*K*H*W) must write nothing.
//
// v2. The same sums read as a matrix product, Y[k][p] = sum_q A[k][q] B[q][p], with
// A = w viewed as (K, C*KS*KS) and B[q][p] = x[n, c, h+r-P, v+s-P] for q = (c, r, s) and
// p = (n, h, v): the column matrix of im2col, never built ("implicit GEMM"). A block of
// TILE x TILE threads computes a TILE x TILE tile of Y: threadIdx.y the output channel
// k = blockIdx.y*TILE + ty, threadIdx.x the pixel p = blockIdx.x*TILE + tx. For q0 = 0,
// TILE, 2*TILE, ... : every thread loads one element of A (As[ty][tx] = A[k][q0+tx]) and
// one of B (Bs[ty][tx] = B[q0+ty][p], gathered from x), 0 when out of range;
// __syncthreads(); then acc += As[ty][q] * Bs[q][tx] for q < TILE; __syncthreads() again
// before the next loads overwrite the tiles. Each value brought from global memory is then
// used TILE times from shared memory. Launch: block (TILE, TILE), grid
// (ceil(N*H*W / TILE), ceil(K / TILE)). Every thread must reach every __syncthreads(), so
// do not return early: guard the loads and the final store instead.

#define TILE 8

__global__ void tiled_conv_v1(const float* x, const float* w, float* y,
                              int N, int C, int H, int W, int K, int KS)
{
// BEGIN YOUR CODE: v1
// END YOUR CODE: v1
}

__global__ void tiled_conv_v2(const float* x, const float* w, float* y,
                              int N, int C, int H, int W, int K, int KS)
{
    __shared__ float As[TILE][TILE + 1];   // +1: a warp reading a column hits 8 banks, not 1
    __shared__ float Bs[TILE][TILE];
// BEGIN YOUR CODE: v2
// END YOUR CODE: v2
}
