// conv_fwd_v3: implicit GEMM, shared-memory tiles + register blocking (TM x TN outputs per thread).
//
// Same matrix view as v2 (Y[k][p] = sum_q A[k][q] B[q][p], A = weights, B gathered from x),
// but a block now owns a BM x BN tile of Y (BM output channels x BN pixels) with only
// (BM/TM)*(BN/TN) threads, and each thread accumulates a TM x TN sub-tile in registers.
//
// Why it is faster: in v2 every FMA needed two shared-memory loads. Here, for each q of the
// reduction, a thread loads TM values of A and TN values of B from shared memory (as float4s)
// and does TM*TN FMAs with them: for 8x8 that is 64 FMAs per 16 loaded floats (4 float4
// loads), so shared-memory bandwidth stops being the limit and the FMA pipes can be kept busy.
// Bigger tiles also cut global traffic: each A element is reused BN times, each B element BM times.
//
// Layout choices:
// * As is stored transposed, As[q][k], so a thread's TM channels for one q are contiguous
//   (float4 reads). Rows are padded by 4 floats to keep 16-byte alignment while spreading the
//   transposing stores over more banks.
// * A thread's TM rows are not contiguous: they are TM/4 groups of 4, the groups THREADS_M*4 apart
//   (same for columns). Neighbouring threads then read neighbouring float4s of a shared row
//   (no bank conflicts inside a quarter warp) and neighbouring threads store neighbouring pixels.
// * Each thread always loads the same B column (pixel): T is a multiple of BN, so the pixel's
//   (n, h, v) is decomposed once, before the loop; per tap only c, r, s are derived, with
//   divisions by the compile-time constants KS*KS and KS.
//
// Loads here are scalar and the block waits for each tile to arrive before computing (v4 changes both).
//
// Launch: block (BM/TM)*(BN/TN) threads (1-D), grid (ceil(N*H*W / BN), ceil(K / BM)).

#include "tile_fma.cuh"

template <int BM, int BN, int BK, int TM, int TN, int KS>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
conv_fwd_v3(const float* __restrict__ x, const float* __restrict__ w,
            const float* __restrict__ bias, float* __restrict__ y,
            int N, int C, int H, int W, int K, int has_bias, int relu)
{
    constexpr int THREADS_M = BM / TM;
    constexpr int THREADS_N = BN / TN;
    constexpr int T = THREADS_M * THREADS_N;
    constexpr int RS = KS * KS;
    constexpr int P = KS / 2;
    constexpr int A_LOADS = (BM * BK + T - 1) / T;   // A elements per thread per tile
    constexpr int B_LOADS = (BK * BN + T - 1) / T;   // B elements per thread per tile
    constexpr int B_ROW_STEP = T / BN;               // B rows between a thread's loads
    static_assert(TM % 4 == 0 && TN % 4 == 0, "TM and TN are multiples of 4 (float4 fragments)");
    static_assert(BM % TM == 0 && BN % TN == 0, "tile must split evenly among threads");
    static_assert(T % BN == 0, "each thread must own one fixed B column");

    __shared__ __align__(16) float As[BK][BM + 4];
    __shared__ __align__(16) float Bs[BK][BN + 4];

    const int tid = threadIdx.x;
    const int tx = tid % THREADS_N;   // column group of this thread's outputs
    const int ty = tid / THREADS_N;   // row group
    const int HW = H * W;
    const int CRS = C * RS;
    const int NP = N * HW;
    const int m0 = blockIdx.y * BM;   // first output channel of the tile
    const int p0 = blockIdx.x * BN;   // first pixel of the tile

    // The B column this thread loads, fixed for the whole kernel.
    const int b_col = tid % BN;
    const int b_row0 = tid / BN;
    const int pb = p0 + b_col;
    const bool pb_ok = pb < NP;
    int bn = 0, bh = 0, bv = 0;
    if (pb_ok) { bn = pb / HW; const int hw = pb - bn * HW; bh = hw / W; bv = hw - bh * W; }
    const float* xn = x + (long long)bn * C * HW;

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    for (int q0 = 0; q0 < CRS; q0 += BK) {
        // A tile (BM x BK), stored transposed: element e -> row e / BK, reduction index e % BK.
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int e = tid + i * T;
            if (e < BM * BK) {
                const int ml = e / BK, ql = e % BK;
                const int m = m0 + ml, q = q0 + ql;
                As[ql][ml] = (m < K && q < CRS) ? w[(long long)m * CRS + q] : 0.0f;
            }
        }
        // B tile (BK x BN): rows b_row0, b_row0 + B_ROW_STEP, ... of this thread's column.
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int ql = b_row0 + i * B_ROW_STEP;
            if (ql < BK) {
                const int q = q0 + ql;
                float val = 0.0f;
                if (pb_ok && q < CRS) {
                    const int c = q / RS;
                    const int rs = q - c * RS;
                    const int r = rs / KS, s = rs % KS;
                    const int ih = bh + r - P, iw = bv + s - P;
                    if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                        val = xn[(long long)c * HW + ih * W + iw];
                }
                Bs[ql][b_col] = val;
            }
        }
        __syncthreads();

        tile_fma<BK, TM, TN, THREADS_M, THREADS_N, BM + 4, BN + 4>(As, Bs, ty, tx, acc);
        __syncthreads();  // the next iteration overwrites As and Bs
    }

    // Epilogue: output column j of this thread is pixel p0 + (j/4)*THREADS_N*4 + tx*4 + j%4.
    long long col_off[TN];  // offset of y[n, 0, h, v] for each column, -1 past the end
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int p = p0 + tile_frag<THREADS_N>(j, tx);
        if (p < NP) {
            const int n = p / HW;
            col_off[j] = (long long)n * K * HW + (p - n * HW);
        } else {
            col_off[j] = -1;
        }
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + tile_frag<THREADS_M>(i, ty);
        if (m >= K) continue;
        const float bv_m = has_bias ? bias[m] : 0.0f;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            if (col_off[j] < 0) continue;
            float out = acc[i][j] + bv_m;
            if (relu && out < 0.0f) out = 0.0f;
            y[col_off[j] + (long long)m * HW] = out;
        }
    }
}
