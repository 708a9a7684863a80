// conv_bwd_data v2..v4: the input gradient IS a forward convolution; this file only flips the weights.
//
// Substituting r' = KS-1-r, s' = KS-1-s in the gather form of v1 (and using KS-1 = 2P):
//
//   gx[n,c,h,v] = sum_{k,r,s} gy[n,k,h-r+P,v-s+P] w[k,c,r,s]
//               = sum_{k,r',s'} wt[c,k,r',s'] gy[n,k,h+r'-P,v+s'-P]
//   with wt[c,k,r',s'] = w[k,c,KS-1-r',KS-1-s']          (transposed in/out, rotated 180 degrees)
//
// which is exactly the forward stride-1 "same" convolution of gy (N, K, H, W) with wt (C, K, KS, KS),
// no bias, no ReLU. So backward-data version vN (N >= 2) = flip_transpose_weight (below) followed by
// the forward kernel conv_fwd_vN with C and K swapped: every speed-up of the forward path
// (tiling, register blocking, vector loads, double buffering) carries over unchanged, and the
// matrix view is the same implicit GEMM (gx[c][p] = sum_q Wt[c][q] Gy[q][p], q = (k, r', s')).
//
// Cost of the flip: one pass over the weights (K*C*KS*KS floats, at most a few MB for GoogLeNet),
// negligible next to the GEMM; the launcher keeps wt in a temporary buffer.
//
// Launch: grid.x = ceil(K*C*KS*KS / blockDim.x), 1-D blocks (the launcher uses 256).

template <int KS>
__global__ void flip_transpose_weight(const float* __restrict__ w, float* __restrict__ wt,
                                      int K, int C)
{
    constexpr int RS = KS * KS;
    const long long total = (long long)K * C * RS;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    // i indexes wt (C, K, KS, KS): gather from w so that writes are coalesced.
    const int s = (int)(i % KS);
    const int r = (int)((i / KS) % KS);
    const int k = (int)((i / RS) % K);
    const int c = (int)(i / ((long long)RS * K));
    wt[i] = w[(((long long)k * C + c) * KS + (KS - 1 - r)) * KS + (KS - 1 - s)];
}
