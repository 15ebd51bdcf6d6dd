// GEMM path of MatMulInt4PerIC (many rows of A): a chunk of 16 output channels is dequantized
// once to an fp32 panel W[k][16] (scales applied) and reused by every row of A through a 6 x 16
// register-tiled outer-product kernel (12 AVX2 accumulators).
#pragma once

#include <cstdint>
#include <cstring>

#include "int4_per_ic_kernels.h"

namespace smoothrot_ortops {

constexpr int64_t kPanel = 16;  // output channels per panel

// panel[k * 16 + c] = scale(n, k) * q[n, k] for n = n0 + c < n1 (0 otherwise), k < K, with
// scale(n, k) = scales[n / group, k] (per-IC) or scales[n, k / group] (per_oc; group % 16 == 0).
// rows: scratch of 16 * round_up(K, 16) floats; wide: scratch of K floats (per-OC scales).
inline void dequant_panel(const uint8_t* B, const float* S, int64_t K, int64_t group, bool per_oc,
                          int64_t n0, int64_t n1, float* rows, float* panel, float* wide) {
  const int64_t Kb = (K + 1) / 2, K16 = round_up(K, 16);
  for (int64_t c = 0; c < kPanel; ++c) {
    float* out = rows + c * K16;
    const int64_t n = n0 + c;
    if (n >= n1) {
      std::memset(out, 0, sizeof(float) * K16);
      continue;
    }
    const uint8_t* row = B + n * Kb;
    const float* s = S + (n / group) * K;
    if (per_oc) {  // this row's group scales, one per k (K / group of them)
      for (int64_t k = 0; k < K; ++k) wide[k] = S[n * (K / group) + k / group];
      s = wide;
    }
    int64_t k = 0;
#ifdef __AVX2__
    const __m128i m4 = _mm_set1_epi8(0xF), eight = _mm_set1_epi8(8);
    for (; k + 16 <= K; k += 16) {
      const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k / 2));
      const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
      const __m128i q = _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), eight);
      const __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
      const __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
      _mm256_storeu_ps(out + k, _mm256_mul_ps(f0, _mm256_loadu_ps(s + k)));
      _mm256_storeu_ps(out + k + 8, _mm256_mul_ps(f1, _mm256_loadu_ps(s + k + 8)));
    }
#endif
    for (; k < K; ++k) {
      const int nib = (k % 2) ? (row[k / 2] >> 4) : (row[k / 2] & 0xF);
      out[k] = s[k] * static_cast<float>(nib - 8);
    }
    for (; k < K16; ++k) out[k] = 0.0f;
  }
  int64_t k = 0;
#ifdef __AVX2__
  for (; k + 8 <= K; k += 8) {  // 8 x 8 transposes: rows[c][k..k+8) -> panel[k..k+8][c]
    for (int64_t c0 = 0; c0 < kPanel; c0 += 8) {
      __m256 r[8], t[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows + (c0 + i) * K16 + k);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(panel + (k + i) * kPanel + c0, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(panel + (k + i + 4) * kPanel + c0,
                         _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
      }
    }
  }
#endif
  for (; k < K; ++k)
    for (int64_t c = 0; c < kPanel; ++c) panel[k * kPanel + c] = rows[c * K16 + k];
}

#ifdef __AVX2__
inline void store_row(float* y, __m256 lo, __m256 hi, int64_t cols) {
  if (cols == kPanel) {
    _mm256_storeu_ps(y, lo);
    _mm256_storeu_ps(y + 8, hi);
  } else {
    alignas(32) float tmp[kPanel];
    _mm256_store_ps(tmp, lo);
    _mm256_store_ps(tmp + 8, hi);
    std::memcpy(y, tmp, sizeof(float) * cols);
  }
}
#endif

// Y[m, n0 + c] = sum_k A[m, k] * panel[k][c] for MR (6 or 1) rows starting at A (row stride K).
// Accumulators are named variables: GCC spills an accumulator array every iteration.
template <int MR>
inline void panel_tile(const float* A, int64_t K, const float* panel, float* Y, int64_t N,
                       int64_t cols) {
  static_assert(MR == 6 || MR == 1, "6-row or 1-row tiles");
#ifdef __AVX2__
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t k = 0; k < K; ++k) {
    const __m256 w0 = _mm256_loadu_ps(panel + k * kPanel);
    const __m256 w1 = _mm256_loadu_ps(panel + k * kPanel + 8);
    __m256 a = _mm256_broadcast_ss(A + k);
    c00 = _mm256_fmadd_ps(a, w0, c00);
    c01 = _mm256_fmadd_ps(a, w1, c01);
    if (MR == 6) {
      a = _mm256_broadcast_ss(A + K + k);
      c10 = _mm256_fmadd_ps(a, w0, c10);
      c11 = _mm256_fmadd_ps(a, w1, c11);
      a = _mm256_broadcast_ss(A + 2 * K + k);
      c20 = _mm256_fmadd_ps(a, w0, c20);
      c21 = _mm256_fmadd_ps(a, w1, c21);
      a = _mm256_broadcast_ss(A + 3 * K + k);
      c30 = _mm256_fmadd_ps(a, w0, c30);
      c31 = _mm256_fmadd_ps(a, w1, c31);
      a = _mm256_broadcast_ss(A + 4 * K + k);
      c40 = _mm256_fmadd_ps(a, w0, c40);
      c41 = _mm256_fmadd_ps(a, w1, c41);
      a = _mm256_broadcast_ss(A + 5 * K + k);
      c50 = _mm256_fmadd_ps(a, w0, c50);
      c51 = _mm256_fmadd_ps(a, w1, c51);
    }
  }
  store_row(Y, c00, c01, cols);
  if (MR == 6) {
    store_row(Y + N, c10, c11, cols);
    store_row(Y + 2 * N, c20, c21, cols);
    store_row(Y + 3 * N, c30, c31, cols);
    store_row(Y + 4 * N, c40, c41, cols);
    store_row(Y + 5 * N, c50, c51, cols);
  }
#else
  for (int r = 0; r < MR; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float v = 0.0f;
      for (int64_t k = 0; k < K; ++k) v += A[r * K + k] * panel[k * kPanel + c];
      Y[r * N + c] = v;
    }
#endif
}

// Rows [m0, m1) of Y, output channels [n0, n1) (n1 - n0 <= 16) from a dequantized panel.
inline void gemm_panel(const float* A, int64_t K, const float* panel, int64_t m0, int64_t m1,
                       int64_t n0, int64_t n1, float* Y, int64_t N) {
  const int64_t cols = n1 - n0;
  int64_t m = m0;
  for (; m + 6 <= m1; m += 6) panel_tile<6>(A + m * K, K, panel, Y + m * N + n0, N, cols);
  for (; m < m1; ++m) panel_tile<1>(A + m * K, K, panel, Y + m * N + n0, N, cols);
}

}  // namespace smoothrot_ortops
