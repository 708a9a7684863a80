// conv_bias_grad: gb[k] = sum_{n,h,v} gy[n,k,h,v]. One block per output channel.
//
// Each thread sums a strided slice of the N*H*W values of channel k (consecutive threads read
// consecutive addresses inside each image), then the block adds the per-thread partial sums
// with a tree in shared memory. The summation order is fixed, so the result is deterministic.
// Launch: grid.x = K, blockDim.x = BLOCK (a power of two; the launcher uses 256).

template <int BLOCK>
__global__ void __launch_bounds__(BLOCK)
conv_bias_grad(const float* __restrict__ gy, float* __restrict__ gb, int N, int K, int HW)
{
    static_assert((BLOCK & (BLOCK - 1)) == 0, "BLOCK must be a power of two");
    __shared__ float partial[BLOCK];
    const int k = blockIdx.x;
    const int tid = threadIdx.x;

    float acc = 0.0f;
    for (int n = 0; n < N; ++n) {
        const float* g = gy + ((long long)n * K + k) * HW;
        for (int j = tid; j < HW; j += BLOCK) acc += g[j];
    }
    partial[tid] = acc;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride /= 2) {
        if (tid < stride) partial[tid] += partial[tid + stride];
        __syncthreads();
    }
    if (tid == 0) gb[k] = partial[0];
}
