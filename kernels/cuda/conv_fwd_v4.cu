// conv_fwd_v4: v3 + 16-byte vectorised global loads/stores + double buffering (register prefetch).
//
// Changed from v3, and why it should be faster:
// 1. Double buffering. v3 loads a tile, waits at a barrier, computes, waits again: while the
//    tile is in flight the FMA pipes idle, and while computing no loads are in flight. Here
//    shared memory holds two tiles. In iteration t the thread first issues the global loads of
//    tile t+1 into registers, then computes on tile t from shared memory (the loads' latency
//    hides behind TM*TN*BK FMAs), then writes the registers into the other shared buffer.
//    One barrier per tile is enough: the barrier ending iteration t-1 guarantees that every
//    thread finished reading buffer (t+1)&1 (= (t-1)&1) before anyone overwrites it in iteration t.
// 2. float4 loads of the weights: a row of A (one output channel) is contiguous, so four
//    reduction indices come in one 16-byte load (needs C*KS*KS % 4 == 0 and a 16-byte aligned w).
// 3. For 1x1 kernels B[c][p] = x[n, c, hw] is contiguous along p, so four pixels come in one
//    float4 load, and the tile row is stored to shared memory as one float4 (needs H*W % 4 == 0,
//    so that 4 consecutive pixels starting at a multiple of 4 never straddle two images).
//    For 3x3/5x5 the shifted, zero-padded gather stays scalar (still coalesced across the warp).
// 4. float4 stores of y (4 consecutive pixels of one channel; also needs H*W % 4 == 0).
// All of 2-4 are switched on together by the template flag VEC, which the launcher sets only
// when C*KS*KS % 4 == 0, H*W % 4 == 0 and every pointer is 16-byte aligned; with VEC = false
// this is v3 plus double buffering. (GoogLeNet: all layers qualify except the 7x7 ones.)
//
// The matrix view, thread layout and epilogue are those of v3; see there.
// Launch: block (BM/TM)*(BN/TN) threads (1-D), grid (ceil(N*H*W / BN), ceil(K / BM)).

#include "tile_fma.cuh"

template <int BM, int BN, int BK, int TM, int TN, int KS, bool VEC>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
conv_fwd_v4(const float* __restrict__ x, const float* __restrict__ w,
            const float* __restrict__ bias, float* __restrict__ y,
            int N, int C, int H, int W, int K, int has_bias, int relu)
{
    constexpr int THREADS_M = BM / TM;
    constexpr int THREADS_N = BN / TN;
    constexpr int T = THREADS_M * THREADS_N;
    constexpr int RS = KS * KS;
    constexpr int P = KS / 2;
    constexpr int AV = VEC ? 4 : 1;                  // floats per A load
    constexpr int BV = (VEC && KS == 1) ? 4 : 1;     // floats per B load
    constexpr int A_ITEMS = BM * BK / AV;
    constexpr int A_LOADS = (A_ITEMS + T - 1) / T;
    constexpr int B_COLS = BN / BV;                  // B load slots per tile row
    constexpr int B_LOADS = (BK * B_COLS + T - 1) / T;
    constexpr int B_ROW_STEP = T / B_COLS;
    static_assert(TM % 4 == 0 && TN % 4 == 0, "TM and TN are multiples of 4 (float4 fragments)");
    static_assert(BM % TM == 0 && BN % TN == 0, "tile must split evenly among threads");
    static_assert(BK % AV == 0, "BK must be a multiple of the A vector width");
    static_assert(T % B_COLS == 0, "each thread must own one fixed B column (group)");

    __shared__ __align__(16) float As[2][BK][BM + 4];
    __shared__ __align__(16) float Bs[2][BK][BN + 4];

    const int tid = threadIdx.x;
    const int tx = tid % THREADS_N;
    const int ty = tid / THREADS_N;
    const int HW = H * W;
    const int CRS = C * RS;
    const int NP = N * HW;
    const int m0 = blockIdx.y * BM;
    const int p0 = blockIdx.x * BN;

    // This thread's B column (group of BV pixels), fixed for the whole kernel.
    const int b_col = (tid % B_COLS) * BV;
    const int b_row0 = tid / B_COLS;
    const int pb = p0 + b_col;
    const bool pb_ok = pb < NP;  // with BV == 4, NP % 4 == 0 so the whole group is in range
    int bn = 0, bhw = 0, bh = 0, bv = 0;
    if (pb_ok) { bn = pb / HW; bhw = pb - bn * HW; bh = bhw / W; bv = bhw - bh * W; }
    const float* xn = x + (long long)bn * C * HW;

    float a_reg[A_LOADS][AV];   // the next tile, on its way from global memory
    float b_reg[B_LOADS][BV];

    // Global -> registers for the tile starting at reduction index q0.
    auto load_tile = [&](int q0) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int e = tid + i * T;
            const int ml = e / (BK / AV), ql = (e % (BK / AV)) * AV;
            const int m = m0 + ml, q = q0 + ql;
            // With AV == 4, CRS % 4 == 0 and q % 4 == 0: the 4 values are all in range or none.
            const bool ok = e < A_ITEMS && m < K && q < CRS;
            if constexpr (AV == 4) {
                float4 t = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (ok) t = *reinterpret_cast<const float4*>(w + (long long)m * CRS + q);
                a_reg[i][0] = t.x; a_reg[i][1] = t.y; a_reg[i][2] = t.z; a_reg[i][3] = t.w;
            } else {
                a_reg[i][0] = ok ? w[(long long)m * CRS + q] : 0.0f;
            }
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int ql = b_row0 + i * B_ROW_STEP;
            const int q = q0 + ql;
            if constexpr (BV == 4) {
                // 1x1: q is the channel; the 4 pixels are contiguous and 16-byte aligned.
                float4 t = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (ql < BK && pb_ok && q < CRS)
                    t = *reinterpret_cast<const float4*>(xn + (long long)q * HW + bhw);
                b_reg[i][0] = t.x; b_reg[i][1] = t.y; b_reg[i][2] = t.z; b_reg[i][3] = t.w;
            } else {
                float val = 0.0f;
                if (ql < BK && pb_ok && q < CRS) {
                    const int c = q / RS;
                    const int rs = q - c * RS;
                    const int r = rs / KS, s = rs % KS;
                    const int ih = bh + r - P, iw = bv + s - P;
                    if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                        val = xn[(long long)c * HW + ih * W + iw];
                }
                b_reg[i][0] = val;
            }
        }
    };

    // Registers -> shared buffer `buf` (A transposed to As[q][m]).
    auto store_tile = [&](int buf) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int e = tid + i * T;
            if (e < A_ITEMS) {
                const int ml = e / (BK / AV), ql = (e % (BK / AV)) * AV;
#pragma unroll
                for (int u = 0; u < AV; ++u) As[buf][ql + u][ml] = a_reg[i][u];
            }
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int ql = b_row0 + i * B_ROW_STEP;
            if (ql < BK) {
                if constexpr (BV == 4) {
                    *reinterpret_cast<float4*>(&Bs[buf][ql][b_col]) =
                        make_float4(b_reg[i][0], b_reg[i][1], b_reg[i][2], b_reg[i][3]);
                } else {
                    Bs[buf][ql][b_col] = b_reg[i][0];
                }
            }
        }
    };

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    const int n_tiles = (CRS + BK - 1) / BK;
    load_tile(0);
    store_tile(0);
    __syncthreads();

    for (int t = 0; t < n_tiles; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < n_tiles;
        if (more) load_tile((t + 1) * BK);  // in flight while we compute below

        tile_fma<BK, TM, TN, THREADS_M, THREADS_N, BM + 4, BN + 4>(As[cur], Bs[cur], ty, tx, acc);

        if (more) store_tile(cur ^ 1);
        __syncthreads();
    }

    // Epilogue. Column group g of this thread covers pixels p0 + g*THREADS_N*4 + tx*4 + {0..3}.
#pragma unroll
    for (int g = 0; g < TN / 4; ++g) {
        const int pg = p0 + tile_frag<THREADS_N>(g * 4, tx);
        long long off[4];  // offset of y[n, 0, h, v] per pixel, -1 past the end
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int p = pg + u;
            if (p < NP) { const int n = p / HW; off[u] = (long long)n * K * HW + (p - n * HW); }
            else off[u] = -1;
        }
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int m = m0 + tile_frag<THREADS_M>(i, ty);
            if (m >= K) continue;
            const float bias_m = has_bias ? bias[m] : 0.0f;
            float out[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                out[u] = acc[i][g * 4 + u] + bias_m;
                if (relu && out[u] < 0.0f) out[u] = 0.0f;
            }
            if constexpr (VEC) {
                // HW % 4 == 0 and pg % 4 == 0: the 4 pixels share one image and one aligned float4.
                if (off[0] >= 0)
                    *reinterpret_cast<float4*>(y + off[0] + (long long)m * HW) =
                        make_float4(out[0], out[1], out[2], out[3]);
            } else {
#pragma unroll
                for (int u = 0; u < 4; ++u)
                    if (off[u] >= 0) y[off[u] + (long long)m * HW] = out[u];
            }
        }
    }
}
