/* A measurement, not product code: the per-row quantisation chains of the shipped int8 MiniLM
   graph, each fused into one pass per row (the row stays in L1), to measure what ONNX
   Runtime's separate elementwise kernels cost (docs/performance-model.md, "A fused kernel,
   prototyped"). Same formulas as scripts/build_minilm_pertoken.py. Built and timed by
   fused_chains.py; nothing in the service loads it. */
#include <math.h>
#include <stdint.h>

static inline uint8_t sat(float v) { v = v < 0.f ? 0.f : (v > 255.f ? 255.f : v); return (uint8_t)v; }

/* FFN: y = gelu_tanh(x * rowscale + bias); scale = max(rowmax/(255-z), -rowmin/z, 1e-30);
   q = sat(round_half_even(y / scale) + z). Writes y too (tmp, one row). */
void ffn_chain(const float* x, const float* rs, const float* b, int rows, int n, int z,
               uint8_t* q, float* qs, float* tmp) {
  for (int r = 0; r < rows; r++) {
    const float* xr = x + (long)r * n; float s = rs[r];
    float hi = -3.0e38f, lo = 3.0e38f;
    #pragma omp simd reduction(max:hi) reduction(min:lo)
    for (int i = 0; i < n; i++) {
      float v = xr[i] * s + b[i];
      float u = 0.7978845608f * (v + 0.044715f * v * v * v);
      float au = fminf(fabsf(u), 10.f);               /* tanh(10) rounds to 1 in float */
      float t = copysignf(1.f - 2.f / (expf(2.f * au) + 1.f), u);
      float y = 0.5f * v * (1.f + t);
      tmp[i] = y;
      hi = y > hi ? y : hi; lo = y < lo ? y : lo;
    }
    float sc = fmaxf(fmaxf(hi * (1.f / (255 - z)), lo * (-1.f / z)), 1e-30f);
    qs[r] = sc;
    uint8_t* qr = q + (long)r * n;
    #pragma omp simd
    for (int i = 0; i < n; i++) qr[i] = sat(nearbyintf(tmp[i] / sc) + (float)z);
  }
}

/* 384-wide: xs = x * smooth (smooth may be NULL); scale = max(max|xs| / 127, 1e-30);
   q = sat(round_half_even(xs / scale) + 128). */
void row_quant(const float* x, const float* sm, int rows, int n, uint8_t* q, float* qs) {
  for (int r = 0; r < rows; r++) {
    const float* xr = x + (long)r * n; float mx = 0.f;
    if (sm) {
      #pragma omp simd reduction(max:mx)
      for (int i = 0; i < n; i++) mx = fmaxf(mx, fabsf(xr[i] * sm[i]));
    } else {
      #pragma omp simd reduction(max:mx)
      for (int i = 0; i < n; i++) mx = fmaxf(mx, fabsf(xr[i]));
    }
    float sc = fmaxf(mx * (1.f / 127), 1e-30f); qs[r] = sc;
    uint8_t* qr = q + (long)r * n;
    if (sm) {
      #pragma omp simd
      for (int i = 0; i < n; i++) qr[i] = sat(nearbyintf((xr[i] * sm[i]) / sc) + 128.f);
    } else {
      #pragma omp simd
      for (int i = 0; i < n; i++) qr[i] = sat(nearbyintf(xr[i] / sc) + 128.f);
    }
  }
}
