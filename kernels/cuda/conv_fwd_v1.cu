// conv_fwd_v1: the obviously-right forward convolution. One thread per output element.
//
// Problem (all versions): stride-1 "same" convolution, float32, NCHW.
//   x    (N, C, H, W)       input activations
//   w    (K, C, KS, KS)     weights, KS in {1, 3, 5}, padding P = KS / 2
//   bias (K,)               read only when has_bias != 0
//   y    (N, K, H, W)       y[n,k,h,v] = bias[k] + sum_{c,r,s} w[k,c,r,s] * x[n,c,h+r-P,v+s-P]
//                           (out-of-range x reads are the zero padding), then max(0, .) if relu.
//
// What this version is for: a baseline to validate the others against on the GPU and to show
// the index maths once, plainly. Thread i owns y.flat[i]; it walks all C*KS*KS taps and
// reads x and w straight from global memory. Each input value is re-read by up to K*KS*KS
// threads, served by L1/L2, so this is slow (memory-latency bound) but every line is easy to check.
//
// Launch: grid.x = ceil(N*K*H*W / blockDim.x), any 1-D block size (the launcher uses 256).

template <int KS>
__global__ void conv_fwd_v1(const float* __restrict__ x, const float* __restrict__ w,
                            const float* __restrict__ bias, float* __restrict__ y,
                            int N, int C, int H, int W, int K, int has_bias, int relu)
{
    constexpr int P = KS / 2;
    const long long total = (long long)N * K * H * W;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;  // no barrier in this kernel, so an early exit is safe

    // y.flat[i] -> (n, k, h, v); v is the column (w is taken by the weights).
    const int v = (int)(i % W);
    const int h = (int)((i / W) % H);
    const int k = (int)((i / ((long long)W * H)) % K);
    const int n = (int)(i / ((long long)W * H * K));

    float acc = has_bias ? bias[k] : 0.0f;
    for (int c = 0; c < C; ++c) {
        const float* xc = x + ((long long)n * C + c) * H * W;
        const float* wc = w + ((long long)k * C + c) * KS * KS;
        for (int r = 0; r < KS; ++r) {
            const int ih = h + r - P;
            if (ih < 0 || ih >= H) continue;
            for (int s = 0; s < KS; ++s) {
                const int iw = v + s - P;
                if (iw < 0 || iw >= W) continue;
                acc += wc[r * KS + s] * xc[ih * W + iw];
            }
        }
    }
    y[i] = (relu && acc < 0.0f) ? 0.0f : acc;
}
