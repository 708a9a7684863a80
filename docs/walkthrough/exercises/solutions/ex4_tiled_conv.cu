// Worked solution of exercise 4's kernels (the regions that replace the stub's TODOs).
//
// v1 is the definition, one output per thread: every input value is fetched again by each
// of the up to K*KS*KS threads that need it. v2 stages a TILE x TILE slice of the weights
// and of the (implicit) column matrix in shared memory, so each fetched value is reused by
// TILE threads; the price is two barriers per step of the reduction, and threads that own
// no output (past K or past N*H*W) still load zeros and reach every barrier.

__global__ void tiled_conv_v1(const float* x, const float* w, float* y,
                              int N, int C, int H, int W, int K, int KS)
{
// BEGIN YOUR CODE: v1
    const long long total = (long long)N * K * H * W;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;                     // no barrier in v1: an early exit is safe
    const int P = KS / 2;
    const int v = (int)(i % W);
    const int h = (int)((i / W) % H);
    const int k = (int)((i / ((long long)W * H)) % K);
    const int n = (int)(i / ((long long)W * H * K));
    float acc = 0.0f;
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < KS; ++r) {
            const int ih = h + r - P;
            if (ih < 0 || ih >= H) continue;
            for (int s = 0; s < KS; ++s) {
                const int iw = v + s - P;
                if (iw < 0 || iw >= W) continue;
                acc += w[((k * C + c) * KS + r) * KS + s] * x[((long long)(n * C + c) * H + ih) * W + iw];
            }
        }
    y[i] = acc;
// END YOUR CODE: v1
}

__global__ void tiled_conv_v2(const float* x, const float* w, float* y,
                              int N, int C, int H, int W, int K, int KS)
{
    __shared__ float As[TILE][TILE + 1];        // (declared in the stub, outside the region)
    __shared__ float Bs[TILE][TILE];
// BEGIN YOUR CODE: v2
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int P = KS / 2, RS = KS * KS, CRS = C * RS, HW = H * W;
    const int k = blockIdx.y * TILE + ty;       // output channel: row of Y
    const int p = blockIdx.x * TILE + tx;       // pixel (n, h, v): column of Y
    const bool p_ok = p < N * HW;
    const int n = p_ok ? p / HW : 0, h = p_ok ? (p % HW) / W : 0, v = p_ok ? p % W : 0;
    float acc = 0.0f;
    for (int q0 = 0; q0 < CRS; q0 += TILE) {
        const int qa = q0 + tx;                 // A[k][qa] = w.flat[k * CRS + qa]
        As[ty][tx] = (k < K && qa < CRS) ? w[(long long)k * CRS + qa] : 0.0f;
        const int qb = q0 + ty;                 // B[qb][p], qb = (c, r, s)
        float b = 0.0f;
        if (p_ok && qb < CRS) {
            const int c = qb / RS, r = (qb % RS) / KS, s = qb % KS;
            const int ih = h + r - P, iw = v + s - P;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                b = x[((long long)(n * C + c) * H + ih) * W + iw];
        }
        Bs[ty][tx] = b;
        __syncthreads();                        // the tiles are complete
        for (int q = 0; q < TILE; ++q) acc += As[ty][q] * Bs[q][tx];
        __syncthreads();                        // everyone is done reading them
    }
    if (k < K && p_ok) y[((long long)(n * K + k)) * HW + (p - n * HW)] = acc;
// END YOUR CODE: v2
}
