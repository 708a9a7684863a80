// conv_bwd_weight_v1: the obviously-right weight gradient. One thread per element of gw.
//
// For y[n,k,h,v] = sum_{c,r,s} w[k,c,r,s] x[n,c,h+r-P,v+s-P] (stride 1, P = KS/2):
//
//   gw[k,c,r,s] = sum_{n,h,v} gy[n,k,h,v] * x[n,c,h+r-P,v+s-P]     (x outside the image is zero)
//
// Thread i owns gw.flat[i] and sums N*H*W products serially from global memory. There are only
// K*C*KS*KS threads (a few hundred thousand at most) and each does a long serial loop, so this
// is slow, but it is the definition, line by line.
//   x (N, C, H, W), gy (N, K, H, W), gw (K, C, KS, KS).
// Launch: grid.x = ceil(K*C*KS*KS / blockDim.x), 1-D blocks (the launcher uses 256).

template <int KS>
__global__ void conv_bwd_weight_v1(const float* __restrict__ x, const float* __restrict__ gy,
                                   float* __restrict__ gw, int N, int C, int H, int W, int K)
{
    constexpr int P = KS / 2;
    const long long total = (long long)K * C * KS * KS;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;  // no barrier in this kernel

    const int s = (int)(i % KS);
    const int r = (int)((i / KS) % KS);
    const int c = (int)((i / (KS * KS)) % C);
    const int k = (int)(i / ((long long)KS * KS * C));
    const int HW = H * W;

    // Only output rows/columns whose shifted input is inside the image contribute.
    const int h_lo = (P - r) > 0 ? (P - r) : 0, h_hi = (H + P - r) < H ? (H + P - r) : H;
    const int v_lo = (P - s) > 0 ? (P - s) : 0, v_hi = (W + P - s) < W ? (W + P - s) : W;

    float acc = 0.0f;
    for (int n = 0; n < N; ++n) {
        const float* gyk = gy + ((long long)n * K + k) * HW;
        const float* xc = x + ((long long)n * C + c) * HW;
        for (int h = h_lo; h < h_hi; ++h)
            for (int v = v_lo; v < v_hi; ++v)
                acc += gyk[h * W + v] * xc[(h + r - P) * W + (v + s - P)];
    }
    gw[i] = acc;
}
