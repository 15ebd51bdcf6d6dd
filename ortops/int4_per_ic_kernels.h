// Compute kernels of MatMulInt4PerIC (no ONNX Runtime dependency).
//
// Weights: row n of B holds output channel n over k, two nibbles per byte (low nibble = even k),
// nibble = q + 8. Scales are per input channel k, one row per group of `group` output channels.
//
// GEMV (few rows of A): for each column group j the activations are pre-scaled once,
// xs_j[k] = a[k] * scales[j, k], and every output n of the group is a dot product of xs_j with
// the int4 row n. Level 0 keeps xs_j in fp32 (stored permuted so that the even/odd nibbles of 8
// weight bytes meet 8 contiguous floats each); level 4 quantizes xs_j to int8 per block of 32 k
// (llama.cpp Q8-style) and uses _mm256_maddubs_epi16 on the unsigned nibbles; the "-8" is folded
// into one correction term per group.
// GEMM (many rows of A) lives in int4_per_ic_gemm.h.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace smoothrot_ortops {

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

#ifdef __AVX2__
// Per int32 lane i: sum over bytes 4i..4i+3 of lo*x_lo + hi*x_hi, the unsigned nibbles of `v`
// times signed int8 activations; the same integers on both paths (AVX2's int16 partial sums stay
// within 2 * 2 * 15 * 127 = 7620, so they never saturate). VNNI (where -march=native finds it)
// does it in two instructions, AVX2 in five.
inline __m256i dot_nibbles(__m256i v, __m256i x_lo, __m256i x_hi) {
  const __m256i m4 = _mm256_set1_epi8(0xF);
  const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, x_lo), hi, x_hi);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), lo, x_lo), hi,
                                 x_hi);
#else
  const __m256i p16 =
      _mm256_add_epi16(_mm256_maddubs_epi16(lo, x_lo), _mm256_maddubs_epi16(hi, x_hi));
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
#endif
}

inline float hsum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}
#endif

// ---------------------------------------------------------------- activation preparation
// tmp (length round_up(K, 64)) = a * s (a itself where s is null: per-OC), zero padded.
inline void scale_padded(const float* a, const float* s, int64_t K, float* tmp) {
  int64_t k = 0;
  if (s == nullptr) {
    std::memcpy(tmp, a, sizeof(float) * K);
    k = K;
  }
#ifdef __AVX2__
  for (; k + 8 <= K; k += 8)
    _mm256_storeu_ps(tmp + k, _mm256_mul_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(s + k)));
#endif
  for (; k < K; ++k) tmp[k] = a[k] * s[k];
  for (; k < round_up(K, 64); ++k) tmp[k] = 0.0f;
}

// Level 0. xsp (length round_up(K, 16)): unit u of 16 k holds
// [xs[16u + 2i] for i < 8, xs[16u + 2i + 1] for i < 8] (the order the dot kernel unpacks nibbles).
// Returns corr = -8 * sum(xs), the "- 8" of every nibble.
inline float prescale_f32(const float* a, const float* s, int64_t K, float* tmp, float* xsp) {
  scale_padded(a, s, K, tmp);
  float sum = 0.0f;
  const int64_t K16 = round_up(K, 16);
  for (int64_t u = 0; u < K16; u += 16) {
#ifdef __AVX2__
    const __m256 x0 = _mm256_loadu_ps(tmp + u), x1 = _mm256_loadu_ps(tmp + u + 8);
    const __m256 ev = _mm256_shuffle_ps(x0, x1, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 od = _mm256_shuffle_ps(x0, x1, _MM_SHUFFLE(3, 1, 3, 1));
    _mm256_storeu_ps(xsp + u, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), 0xD8)));
    _mm256_storeu_ps(xsp + u + 8,
                     _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od), 0xD8)));
    sum += hsum(_mm256_add_ps(x0, x1));
#else
    for (int64_t i = 0; i < 8; ++i) {
      xsp[u + i] = tmp[u + 2 * i];
      xsp[u + 8 + i] = tmp[u + 2 * i + 1];
      sum += tmp[u + 2 * i] + tmp[u + 2 * i + 1];
    }
#endif
  }
  return -8.0f * sum;
}

#ifdef __AVX2__

// R rows (pointers w[r], each Kb bytes) against xsp; 8 bytes = 16 k per step.
// Accumulates nibble * xs (nibble in 0..15) and adds corr = -8 * sum(xs) at the end.
template <int R>
inline void dot_f32_rows(const float* xsp, const uint8_t* const* w, int64_t Kb, float corr,
                         float* y) {
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi32(0xF);
  const int64_t units = Kb / 8;
  auto step = [&](int r, const uint8_t* p, __m256 xlo, __m256 xhi) {
    const __m256i d = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    const __m256i lo = _mm256_and_si256(d, m4), hi = _mm256_srli_epi32(d, 4);
    acc[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), xlo, acc[r][0]);
    acc[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), xhi, acc[r][1]);
  };
  for (int64_t u = 0; u < units; ++u) {
    const __m256 xlo = _mm256_loadu_ps(xsp + 16 * u), xhi = _mm256_loadu_ps(xsp + 16 * u + 8);
    for (int r = 0; r < R; ++r) step(r, w[r] + 8 * u, xlo, xhi);
  }
  if (Kb % 8) {
    const __m256 xlo = _mm256_loadu_ps(xsp + 16 * units), xhi = _mm256_loadu_ps(xsp + 16 * units + 8);
    for (int r = 0; r < R; ++r) {
      uint8_t tail[8] = {0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88};
      std::memcpy(tail, w[r] + 8 * units, Kb % 8);
      step(r, tail, xlo, xhi);
    }
  }
  for (int r = 0; r < R; ++r) y[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1])) + corr;
}
#endif

// Several rows of A (RM prescaled vectors xs[r], corr[r]) against one int4 row w: the nibbles are
// unpacked once and reused by every row. Covers 16-k units [u0, u1) of ceil(Kb / 8) (callers
// block K so the RM activation slices stay in L1): y[r * ldy] = (or +=, unless first) the partial
// dot product, plus corr[r] with the first block.
template <int RM>
inline void dot_f32_multi(const float* const* xs, const float* corr, const uint8_t* w, int64_t Kb,
                          int64_t u0, int64_t u1, bool first, float* y, int64_t ldy) {
#ifdef __AVX2__
  __m256 acc[RM][2];
  for (int r = 0; r < RM; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi32(0xF);
  const int64_t units = Kb / 8;
  auto step = [&](const uint8_t* p, int64_t u) {
    const __m256i d = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(d, m4));
    const __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(d, 4));
    for (int r = 0; r < RM; ++r) {
      acc[r][0] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xs[r] + 16 * u), acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xs[r] + 16 * u + 8), acc[r][1]);
    }
  };
  for (int64_t u = u0; u < std::min(u1, units); ++u) step(w + 8 * u, u);
  if (Kb % 8 && u1 > units) {
    uint8_t tail[8] = {0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88};
    std::memcpy(tail, w + 8 * units, Kb % 8);
    step(tail, units);
  }
  for (int r = 0; r < RM; ++r) {
    const float v = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
    y[r * ldy] = first ? v + corr[r] : y[r * ldy] + v;
  }
#else
  for (int r = 0; r < RM; ++r) {
    float acc = first ? corr[r] : y[r * ldy];
    for (int64_t j = 8 * u0; j < std::min(Kb, 8 * u1); ++j) {
      const int64_t u = j / 8 * 16, i = j % 8;
      acc += static_cast<float>(w[j] & 0xF) * xs[r][u + i];
      acc += static_cast<float>(w[j] >> 4) * xs[r][u + 8 + i];
    }
    y[r * ldy] = acc;
  }
#endif
}

// y[n - n0] for n in [n0, n1): rows of B against one prescaled activation vector.
inline void gemv_f32(const float* xsp, float corr, const uint8_t* B, int64_t Kb, int64_t n0,
                     int64_t n1, float* y) {
  int64_t n = n0;
#ifdef __AVX2__
  for (; n + 4 <= n1; n += 4) {
    const uint8_t* w[4] = {B + n * Kb, B + (n + 1) * Kb, B + (n + 2) * Kb, B + (n + 3) * Kb};
    dot_f32_rows<4>(xsp, w, Kb, corr, y + (n - n0));
  }
  for (; n < n1; ++n) {
    const uint8_t* w[1] = {B + n * Kb};
    dot_f32_rows<1>(xsp, w, Kb, corr, y + (n - n0));
  }
#else
  for (; n < n1; ++n) {
    const uint8_t* row = B + n * Kb;
    float acc = 0.0f;
    for (int64_t j = 0; j < Kb; ++j) {
      const int64_t u = j / 8 * 16, i = j % 8;
      acc += static_cast<float>(row[j] & 0xF) * xsp[u + i];
      acc += static_cast<float>(row[j] >> 4) * xsp[u + 8 + i];
    }
    y[n - n0] = acc + corr;
  }
#endif
}

// ---------------------------------------------------------------- level 4: int8 activations
// Pair p covers 64 k (32 weight bytes; blocks 2p and 2p+1 of 32 k).
// xq[64p + i] = q(xs[64p + 2i]), xq[64p + 32 + i] = q(xs[64p + 2i + 1]) for i < 32;
// sv[8p .. 8p+4) = d(2p), sv[8p+4 .. 8p+8) = d(2p+1); returns corr = -8 * sum_b d_b * sum(xq_b),
// and, where bcorr is not null, each block's share of it in bcorr[b] (per-OC weight scales
// multiply it group by group).
inline float quantize_i8(const float* a, const float* s, int64_t K, float* tmp, int8_t* xq,
                         float* sv, float* bcorr = nullptr) {
  scale_padded(a, s, K, tmp);
  const int64_t K64 = round_up(K, 64);
  float corr = 0.0f;
  for (int64_t b = 0; b < K64 / 32; ++b) {
    const float* x = tmp + 32 * b;
    const int64_t p = b / 2, half = b % 2;
    int sum = 0;
    float amax = 0.0f;
#ifdef __AVX2__
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4], mx = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + 8 * i);
      mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    __m256i q[4];
    for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));  // nearest-even
    const __m256i s32 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    sum = _mm_cvtsi128_si32(s4);
    // int32 x 32 -> int8 x 32 in k order (packs interleave 128-bit lanes; permute undoes it) ...
    __m256i b8 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    b8 = _mm256_permutevar8x32_epi32(b8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // ... then evens to the low 128 bits, odds to the high 128 bits.
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2,
                                           4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    b8 = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(b8, split), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + 64 * p + 16 * half),
                     _mm256_castsi256_si128(b8));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + 64 * p + 32 + 16 * half),
                     _mm256_extracti128_si256(b8, 1));
#else
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int i = 0; i < 32; ++i) {
      const int q = static_cast<int>(std::nearbyint(x[i] * inv));
      sum += q;
      const int64_t kk = 32 * half + i;  // offset inside the pair
      xq[64 * p + (kk % 2) * 32 + kk / 2] = static_cast<int8_t>(q);
    }
#endif
    const float d = amax / 127.0f;
    for (int i = 0; i < 4; ++i) sv[8 * p + 4 * half + i] = d;
    corr -= 8.0f * d * static_cast<float>(sum);
    if (bcorr != nullptr) bcorr[b] = -8.0f * d * static_cast<float>(sum);
  }
  return corr;
}

#ifdef __AVX2__
template <int R>
inline void dot_i8_rows(const int8_t* xq, const float* sv, const uint8_t* const* w, int64_t Kb,
                        float corr, float* y) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const int64_t pairs = Kb / 32;
  auto step = [&](int r, const uint8_t* p, __m256i xlo, __m256i xhi, __m256 s) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_nibbles(v, xlo, xhi)), s, acc[r]);
  };
  for (int64_t p = 0; p < pairs; ++p) {
    const __m256i xlo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * p));
    const __m256i xhi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * p + 32));
    const __m256 s = _mm256_loadu_ps(sv + 8 * p);
    for (int r = 0; r < R; ++r) step(r, w[r] + 32 * p, xlo, xhi, s);
  }
  if (Kb % 32) {
    const __m256i xlo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * pairs));
    const __m256i xhi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * pairs + 32));
    const __m256 s = _mm256_loadu_ps(sv + 8 * pairs);
    for (int r = 0; r < R; ++r) {
      alignas(32) uint8_t tail[32] = {};
      std::memcpy(tail, w[r] + 32 * pairs, Kb % 32);
      step(r, tail, xlo, xhi, s);
    }
  }
  for (int r = 0; r < R; ++r) y[r] = hsum(acc[r]) + corr;
}
#endif

inline void gemv_i8(const int8_t* xq, const float* sv, float corr, const uint8_t* B, int64_t Kb,
                    int64_t n0, int64_t n1, float* y) {
  int64_t n = n0;
#ifdef __AVX2__
  for (; n + 4 <= n1; n += 4) {
    const uint8_t* w[4] = {B + n * Kb, B + (n + 1) * Kb, B + (n + 2) * Kb, B + (n + 3) * Kb};
    dot_i8_rows<4>(xq, sv, w, Kb, corr, y + (n - n0));
  }
  for (; n < n1; ++n) {
    const uint8_t* w[1] = {B + n * Kb};
    dot_i8_rows<1>(xq, sv, w, Kb, corr, y + (n - n0));
  }
#else
  for (; n < n1; ++n) {
    const uint8_t* row = B + n * Kb;
    float acc = 0.0f;
    for (int64_t j0 = 0; j0 < Kb; j0 += 16) {  // one block of 32 k
      int sum = 0;
      for (int64_t j = j0; j < std::min(Kb, j0 + 16); ++j) {
        const int64_t p = j / 32, i = j % 32;
        sum += (row[j] & 0xF) * xq[64 * p + i] + (row[j] >> 4) * xq[64 * p + 32 + i];
      }
      acc += static_cast<float>(sum) * sv[8 * (j0 / 32) + 4 * ((j0 / 16) % 2)];
    }
    y[n - n0] = acc + corr;
  }
#endif
}

// ---------------------------------------------------------------- per-OC (MatMulInt4PerOC)
// Row n's scales ws[n, g] change along k every `group` (a multiple of 64, so a group is whole
// pairs): y[n] = sum_g ws[n, g] * (sum_{pairs p of g} d_p . dot_p + gcorr[g]), gcorr[g] the
// "- 8" of group g (sum of its blocks' bcorr). One int8 activation vector serves every row.
#ifdef __AVX2__
template <int R>
inline void dot_i8_rows_oc(const int8_t* xq, const float* sv, const float* gcorr,
                           const uint8_t* const* w, const float* const* ws, int64_t groups,
                           int64_t pairs_per_group, float* y) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256 part[R];
    for (int r = 0; r < R; ++r) part[r] = _mm256_setzero_ps();
    for (int64_t p = g * pairs_per_group; p < (g + 1) * pairs_per_group; ++p) {
      const __m256i xlo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * p));
      const __m256i xhi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * p + 32));
      const __m256 s = _mm256_loadu_ps(sv + 8 * p);
      for (int r = 0; r < R; ++r) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + 32 * p));
        part[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_nibbles(v, xlo, xhi)), s, part[r]);
      }
    }
    // gcorr[g] spread over the 8 lanes so that hsum(acc) adds it once.
    const __m256 c = _mm256_set1_ps(gcorr[g] * 0.125f);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_add_ps(part[r], c), _mm256_set1_ps(ws[r][g]), acc[r]);
  }
  for (int r = 0; r < R; ++r) y[r] = hsum(acc[r]);
}
#endif

// y[n - n0] for n in [n0, n1); WS: scales [N, groups]; K = 64 * groups * pairs_per_group.
inline void gemv_i8_oc(const int8_t* xq, const float* sv, const float* gcorr, const uint8_t* B,
                       const float* WS, int64_t groups, int64_t pairs_per_group, int64_t n0,
                       int64_t n1, float* y) {
  const int64_t Kb = 32 * groups * pairs_per_group;
  int64_t n = n0;
#ifdef __AVX2__
  for (; n + 4 <= n1; n += 4) {
    const uint8_t* w[4] = {B + n * Kb, B + (n + 1) * Kb, B + (n + 2) * Kb, B + (n + 3) * Kb};
    const float* ws[4] = {WS + n * groups, WS + (n + 1) * groups, WS + (n + 2) * groups,
                          WS + (n + 3) * groups};
    dot_i8_rows_oc<4>(xq, sv, gcorr, w, ws, groups, pairs_per_group, y + (n - n0));
  }
  for (; n < n1; ++n) {
    const uint8_t* w[1] = {B + n * Kb};
    const float* ws[1] = {WS + n * groups};
    dot_i8_rows_oc<1>(xq, sv, gcorr, w, ws, groups, pairs_per_group, y + (n - n0));
  }
#else
  for (; n < n1; ++n) {
    const uint8_t* row = B + n * Kb;
    float acc = 0.0f;
    for (int64_t g = 0; g < groups; ++g) {
      float part = gcorr[g];
      for (int64_t p = g * pairs_per_group; p < (g + 1) * pairs_per_group; ++p)
        for (int half = 0; half < 2; ++half) {
          int sum = 0;
          for (int64_t j = 32 * p + 16 * half; j < 32 * p + 16 * half + 16; ++j) {
            const int64_t i = j % 32;
            sum += (row[j] & 0xF) * xq[64 * p + i] + (row[j] >> 4) * xq[64 * p + 32 + i];
          }
          part += static_cast<float>(sum) * sv[8 * p + 4 * half];
        }
      acc += part * WS[n * groups + g];
    }
    y[n - n0] = acc;
  }
#endif
}

}  // namespace smoothrot_ortops
