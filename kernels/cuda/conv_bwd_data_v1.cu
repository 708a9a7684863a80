// conv_bwd_data_v1: the obviously-right input gradient. One thread per element of gx.
//
// For the stride-1 "same" convolution y[n,k,h,v] = sum_{c,r,s} w[k,c,r,s] x[n,c,h+r-P,v+s-P]
// (P = KS/2), the chain rule gives, written in gather form (no atomics, deterministic):
//
//   gx[n,c,h,v] = sum_{k,r,s} gy[n,k,h-r+P,v-s+P] * w[k,c,r,s]     (terms outside gy are zero)
//
// Thread i owns gx.flat[i] and walks all K*KS*KS terms straight from global memory.
//   gy (N, K, H, W), w (K, C, KS, KS), gx (N, C, H, W).
// Launch: grid.x = ceil(N*C*H*W / blockDim.x), any 1-D block size (the launcher uses 256).

template <int KS>
__global__ void conv_bwd_data_v1(const float* __restrict__ gy, const float* __restrict__ w,
                                 float* __restrict__ gx, int N, int C, int H, int W, int K)
{
    constexpr int P = KS / 2;
    const long long total = (long long)N * C * H * W;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;  // no barrier in this kernel

    const int v = (int)(i % W);
    const int h = (int)((i / W) % H);
    const int c = (int)((i / ((long long)W * H)) % C);
    const int n = (int)(i / ((long long)W * H * C));

    float acc = 0.0f;
    for (int k = 0; k < K; ++k) {
        const float* gyk = gy + ((long long)n * K + k) * H * W;
        const float* wkc = w + ((long long)k * C + c) * KS * KS;
        for (int r = 0; r < KS; ++r) {
            const int oh = h - r + P;
            if (oh < 0 || oh >= H) continue;
            for (int s = 0; s < KS; ++s) {
                const int ow = v - s + P;
                if (ow < 0 || ow >= W) continue;
                acc += gyk[oh * W + ow] * wkc[r * KS + s];
            }
        }
    }
    gx[i] = acc;
}
