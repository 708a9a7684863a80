// conv_fwd_v2: implicit GEMM with shared-memory tiles. One thread per output, TILE x TILE block.
//
// Changed from v1: the convolution is now read as a matrix product with no im2col buffer,
//
//     Y[k][p] = sum_q A[k][q] * B[q][p]       k < K, p < N*H*W, q < C*KS*KS
//     A[k][q] = w.flat[k*CRS + q]            (the weights already are this row-major matrix)
//     B[q][p] = x[n, c, h+r-P, v+s-P]        q = (c, r, s), p = (n, h, v), 0 outside the image
//
// and a block computes a TILE x TILE tile of Y (TILE output channels x TILE pixels). The
// reduction runs in steps of TILE: the block first copies a TILE x TILE slice of A and of B
// into shared memory (each thread fetches one element of each, the B element gathered on the
// fly from x: that gather is the "implicit" im2col), synchronises, and then every thread reads
// its row of A and column of B from shared memory. Each global value loaded is now reused
// TILE times from shared memory instead of being re-fetched, so global traffic drops by about
// TILE (16x) and the kernel moves from latency-bound towards shared-memory-bandwidth-bound.
// Each thread still does 1 FMA per 2 shared loads, which is the next limit (v3 fixes it).
//
// Coalescing: threadIdx.x walks pixels p, so a warp's B loads hit consecutive x addresses
// (same c, r, s; consecutive v) and its y stores are consecutive. A loads walk q, consecutive in w.
//
// Launch: block (TILE, TILE), grid (ceil(N*H*W / TILE), ceil(K / TILE)).

template <int TILE, int KS>
__global__ void __launch_bounds__(TILE * TILE)
conv_fwd_v2(const float* __restrict__ x, const float* __restrict__ w,
            const float* __restrict__ bias, float* __restrict__ y,
            int N, int C, int H, int W, int K, int has_bias, int relu)
{
    constexpr int RS = KS * KS;
    constexpr int P = KS / 2;
    __shared__ float As[TILE][TILE + 1];  // As[k][q]; +1 keeps a warp's column reads off one bank
    __shared__ float Bs[TILE][TILE];      // Bs[q][p]

    const int tx = threadIdx.x;            // pixel within the tile
    const int ty = threadIdx.y;            // output channel within the tile
    const int HW = H * W;
    const int CRS = C * RS;
    const int NP = N * HW;                 // launcher checks N*H*W < 2^31
    const int k = blockIdx.y * TILE + ty;  // this thread's output channel
    const int p = blockIdx.x * TILE + tx;  // this thread's pixel (also the B column it loads)

    // The pixel p is fixed for the whole reduction: decompose it once.
    const bool p_ok = p < NP;
    int n = 0, h = 0, v = 0;
    if (p_ok) { n = p / HW; const int hw = p - n * HW; h = hw / W; v = hw - h * W; }
    const float* xn = x + (long long)n * C * HW;
    // The A row this thread loads is the channel of row ty of the tile, i.e. k itself.
    const float* wk = w + (long long)k * CRS;

    float acc = 0.0f;
    for (int q0 = 0; q0 < CRS; q0 += TILE) {
        // A tile: thread (ty, tx) loads A[k][q0 + tx].
        const int qa = q0 + tx;
        As[ty][tx] = (k < K && qa < CRS) ? wk[qa] : 0.0f;

        // B tile: thread (ty, tx) loads B[q0 + ty][p], gathered from x.
        const int qb = q0 + ty;
        float bval = 0.0f;
        if (p_ok && qb < CRS) {
            const int c = qb / RS;           // RS is a compile-time constant: cheap division
            const int rs = qb - c * RS;
            const int r = rs / KS, s = rs - (rs / KS) * KS;
            const int ih = h + r - P, iw = v + s - P;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) bval = xn[(long long)c * HW + ih * W + iw];
        }
        Bs[ty][tx] = bval;
        __syncthreads();

#pragma unroll
        for (int q = 0; q < TILE; ++q) acc += As[ty][q] * Bs[q][tx];
        __syncthreads();  // before the next iteration overwrites the tiles
    }

    if (k < K && p_ok) {
        if (has_bias) acc += bias[k];
        if (relu && acc < 0.0f) acc = 0.0f;
        y[((long long)n * K + k) * HW + (p - n * HW)] = acc;
    }
}
