// tile_fma.cuh: the register-blocked micro-kernel shared by conv_fwd_v3, conv_fwd_v4 and
// conv_bwd_weight_v2 (one copy, so a fix or a tuning change reaches all three).
//
// A block of THREADS_M x THREADS_N threads computes a BM x BN tile of a matrix product
// C[m][n] = sum_q A[m][q] B[q][n]. One reduction tile of BK steps sits in shared memory as
// As[q][m] (A transposed) and Bs[q][n], rows padded (LDA = BM + 4, LDB = BN + 4) so that every
// row starts 16-byte aligned. Thread (ty, tx) owns TM x TN outputs, TM/4 groups of 4 rows and
// TN/4 groups of 4 columns:
//
//     row i -> tile_frag<THREADS_M>(i, ty) = (i / 4) * THREADS_M * 4 + ty * 4 + i % 4
//     col j -> tile_frag<THREADS_N>(j, tx)   (same rule)
//
// so neighbouring threads read neighbouring float4s of a shared row (no bank conflicts within
// a quarter warp) and, in the epilogues, write neighbouring outputs. Per reduction step q a
// thread reads TM/4 + TN/4 float4s and does TM * TN FMAs (8x8: 64 FMAs per 16 floats read).
#pragma once

// Offset inside the tile of a thread's fragment element i (row or column), see above.
template <int THREADS>
__device__ __forceinline__ int tile_frag(int i, int t)
{
    return (i / 4) * THREADS * 4 + t * 4 + (i % 4);
}

// acc[i][j] += sum_{q < BK} As[q][row i] * Bs[q][col j] for this thread's fragment.
template <int BK, int TM, int TN, int THREADS_M, int THREADS_N, int LDA, int LDB>
__device__ __forceinline__ void tile_fma(const float (*__restrict__ As)[LDA],
                                         const float (*__restrict__ Bs)[LDB],
                                         int ty, int tx, float (&acc)[TM][TN])
{
    static_assert(TM % 4 == 0 && TN % 4 == 0, "TM and TN are multiples of 4 (float4 fragments)");
    static_assert(LDA % 4 == 0 && LDB % 4 == 0, "padded rows must keep 16-byte alignment");
#pragma unroll
    for (int q = 0; q < BK; ++q) {
        float a[TM], b[TN];
#pragma unroll
        for (int g = 0; g < TM / 4; ++g) {
            const float4 v = *reinterpret_cast<const float4*>(&As[q][g * THREADS_M * 4 + ty * 4]);
            a[g * 4 + 0] = v.x; a[g * 4 + 1] = v.y; a[g * 4 + 2] = v.z; a[g * 4 + 3] = v.w;
        }
#pragma unroll
        for (int g = 0; g < TN / 4; ++g) {
            const float4 v = *reinterpret_cast<const float4*>(&Bs[q][g * THREADS_N * 4 + tx * 4]);
            b[g * 4 + 0] = v.x; b[g * 4 + 1] = v.y; b[g * 4 + 2] = v.z; b[g * 4 + 3] = v.w;
        }
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
}
