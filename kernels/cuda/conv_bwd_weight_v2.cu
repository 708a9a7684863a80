// conv_bwd_weight_v2: implicit GEMM over pixels, register blocking, double buffering, split-K.
//
// Changed from v1: gw is computed as a matrix product whose reduction runs over the pixels,
//
//     gW[k][q] = sum_p A[k][p] * B[p][q]      k < K, q < C*KS*KS, p < N*H*W
//     A[k][p]  = gy[n, k, h, v]               p = (n, h, v)
//     B[p][q]  = x[n, c, h+r-P, v+s-P]        q = (c, r, s), 0 outside the image
//
// with the same machinery as conv_fwd_v4 (see there): a block owns a BM x BN tile of gW, each
// of its (BM/TM)*(BN/TN) threads accumulates TM x TN outputs in registers, reduction tiles of BK
// pixels go global -> registers -> shared memory (two buffers, one barrier per tile, the next
// tile's loads in flight during the FMAs). Both A and B tiles are stored as [pixel][column] so the
// inner loop is the forward kernel's, float4 fragments and all.
//
// What is different from the forward direction, and why:
// * The output is small (K x C*KS*KS, e.g. 384 x 832) and the reduction is long (N*H*W, e.g.
//   128*49 = 6272 or 128*784 = 100352). Tiling the output alone gives too few blocks to fill the
//   GPU (384x832 in 128x128 tiles is 21 blocks for 132 SMs), so the reduction is split among
//   gridDim.z blocks ("split-K"): block z sums pixels [z*chunk, (z+1)*chunk) and writes its partial
//   tile to a workspace slice; splitk_reduce then adds the slices in a fixed order. No atomics:
//   the result is deterministic. With gridDim.z == 1 the GEMM writes gw directly.
// * Loads walk pixels: thread tid always loads pixel column p_local = tid % BK of the tile (T is
//   a multiple of BK), so BK consecutive threads read BK consecutive addresses of gy and of x,
//   and the pixel's (n, h, v) is decomposed once per tile for both of its A and B loads.
//   The columns q a thread loads are fixed for the whole kernel, so their (c, r-P, s-P) are
//   decomposed once, before the loop.
//
//   x (N, C, H, W), gy (N, K, H, W), out: gw (K, C, KS, KS) or workspace (gridDim.z, K, C*KS*KS).
// Launch: block (BM/TM)*(BN/TN) threads (1-D), grid (ceil(CRS / BN), ceil(K / BM), splits),
//         chunk = pixels per split (a multiple of BK).

#include "tile_fma.cuh"

template <int BM, int BN, int BK, int TM, int TN, int KS>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
conv_bwd_weight_v2(const float* __restrict__ x, const float* __restrict__ gy,
                   float* __restrict__ out, int N, int C, int H, int W, int K, int chunk)
{
    constexpr int THREADS_M = BM / TM;
    constexpr int THREADS_N = BN / TN;
    constexpr int T = THREADS_M * THREADS_N;
    constexpr int RS = KS * KS;
    constexpr int P = KS / 2;
    constexpr int ROW_STEP = T / BK;                    // tile rows between a thread's loads
    constexpr int A_LOADS = (BM + ROW_STEP - 1) / ROW_STEP;
    constexpr int B_LOADS = (BN + ROW_STEP - 1) / ROW_STEP;
    static_assert(TM % 4 == 0 && TN % 4 == 0, "TM and TN are multiples of 4 (float4 fragments)");
    static_assert(BM % TM == 0 && BN % TN == 0, "tile must split evenly among threads");
    static_assert(T % BK == 0, "each thread must own one fixed pixel column of the tile");

    __shared__ __align__(16) float As[2][BK][BM + 4];   // As[p][k]
    __shared__ __align__(16) float Bs[2][BK][BN + 4];   // Bs[p][q]

    const int tid = threadIdx.x;
    const int tx = tid % THREADS_N;
    const int ty = tid / THREADS_N;
    const int HW = H * W;
    const int CRS = C * RS;
    const int NP = N * HW;
    const int q0 = blockIdx.x * BN;        // first gw column (c, r, s) of the tile
    const int m0 = blockIdx.y * BM;        // first output channel of the tile
    const int split = blockIdx.z;
    const int p_begin = split * chunk;
    const int p_end = (p_begin + chunk) < NP ? (p_begin + chunk) : NP;

    const int p_local = tid % BK;
    const int row0 = tid / BK;

    // Per-thread constants for the A rows (channels) and B columns (taps) it loads.
    int a_off[A_LOADS];                    // k*HW, or -1 when the row is outside the tile/K
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
        const int ml = row0 + i * ROW_STEP;
        const int m = m0 + ml;
        a_off[i] = (ml < BM && m < K) ? m * HW : -1;
    }
    int b_coff[B_LOADS], b_dr[B_LOADS], b_ds[B_LOADS];  // c*HW (-1: no column), r-P, s-P
#pragma unroll
    for (int i = 0; i < B_LOADS; ++i) {
        const int ql = row0 + i * ROW_STEP;
        const int q = q0 + ql;
        if (ql < BN && q < CRS) {
            const int c = q / RS;
            const int rs = q - c * RS;
            b_coff[i] = c * HW;
            b_dr[i] = rs / KS - P;
            b_ds[i] = rs % KS - P;
        } else {
            b_coff[i] = -1; b_dr[i] = 0; b_ds[i] = 0;
        }
    }

    float a_reg[A_LOADS], b_reg[B_LOADS];

    // Global -> registers for the tile of pixels starting at pt.
    auto load_tile = [&](int pt) {
        const int p = pt + p_local;
        const bool ok = p < p_end;
        int n = 0, hw = 0, h = 0, v = 0;
        if (ok) { n = p / HW; hw = p - n * HW; h = hw / W; v = hw - h * W; }
        const float* gyn = gy + (long long)n * K * HW + hw;
        const float* xn = x + (long long)n * C * HW;
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i)
            a_reg[i] = (ok && a_off[i] >= 0) ? gyn[a_off[i]] : 0.0f;
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            float val = 0.0f;
            if (ok && b_coff[i] >= 0) {
                const int ih = h + b_dr[i], iw = v + b_ds[i];
                if (ih >= 0 && ih < H && iw >= 0 && iw < W) val = xn[b_coff[i] + ih * W + iw];
            }
            b_reg[i] = val;
        }
    };

    auto store_tile = [&](int buf) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int ml = row0 + i * ROW_STEP;
            if (ml < BM) As[buf][p_local][ml] = a_reg[i];
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int ql = row0 + i * ROW_STEP;
            if (ql < BN) Bs[buf][p_local][ql] = b_reg[i];
        }
    };

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    // An empty split (p_begin >= NP) simply writes zeros.
    const int n_tiles = p_end > p_begin ? (p_end - p_begin + BK - 1) / BK : 0;
    if (n_tiles > 0) {
        load_tile(p_begin);
        store_tile(0);
    }
    __syncthreads();

    for (int t = 0; t < n_tiles; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < n_tiles;
        if (more) load_tile(p_begin + (t + 1) * BK);

        tile_fma<BK, TM, TN, THREADS_M, THREADS_N, BM + 4, BN + 4>(As[cur], Bs[cur], ty, tx, acc);

        if (more) store_tile(cur ^ 1);
        __syncthreads();
    }

    // Epilogue: row i -> channel m0 + (i/4)*THREADS_M*4 + ty*4 + i%4, column j likewise along q.
    float* dst = out + (long long)split * K * CRS;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + tile_frag<THREADS_M>(i, ty);
        if (m >= K) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int q = q0 + tile_frag<THREADS_N>(j, tx);
            if (q < CRS) dst[(long long)m * CRS + q] = acc[i][j];
        }
    }
}

// splitk_reduce: gw[i] = sum_z ws[z][i] over the `splits` partial products, in order z = 0, 1, ...
// Launch: grid.x = ceil(count / blockDim.x), 1-D blocks (the launcher uses 256).
__global__ void splitk_reduce(const float* __restrict__ ws, float* __restrict__ gw,
                              int count, int splits)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float acc = 0.0f;
    for (int z = 0; z < splits; ++z) acc += ws[(long long)z * count + i];
    gw[i] = acc;
}
