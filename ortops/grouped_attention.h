// GroupedAttention (domain smoothrot.ort): masked softmax attention with grouped K/V heads, the
// exporter's scaled_dot_product_attention without materializing the repeated K/V heads.
//
// Inputs: Q float [B, H, S, D], K float [B, KV, T, D], V float [B, KV, T, D] (the present cache),
// mask bool [B or 1, 1 or H, S, T]. Attributes: scale (float), masked_value (float).
// Output [B, H, S, D]:
//   score[t] = scale · (Q[b, h, s] · K[b, h / (H / KV), t]) + (mask[b, h, s, t] ? 0 : masked_value)
//   p = softmax(score) (rows whose softmax is NaN become 0, the exporter's IsNaN guard)
//   out[b, h, s] = sum_t p[t] · V[b, h / (H / KV), t]
// The exporter's form repeats K and V to H heads (Expand + Reshape: two copies of the whole
// cache per layer and token) and transposes K (a third), all of which this op reads in place.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "ort_common.h"

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace smoothrot_ortops {

constexpr const char* kGroupedAttention = "GroupedAttention";

inline float dot_f32(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float sum = 0.0f;
#ifdef __AVX2__
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  sum = _mm_cvtss_f32(x);
#endif
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

inline void axpy_f32(float a, const float* x, float* y, int64_t n) {
  int64_t i = 0;
#ifdef __AVX2__
  const __m256 av = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
  for (; i < n; ++i) y[i] += a * x[i];
}

struct AttentionJob {
  const float *Q, *K, *V;
  const bool* mask;
  float* Y;
  int64_t B, H, KV, S, T, D;
  int64_t mask_b, mask_h;  // mask strides over batch and head (0 where broadcast)
  int64_t rows_per_task;   // (b, h, s) rows per task
  float scale, masked_value;
};

inline void attention_row(const AttentionJob& j, int64_t row, float* p) {
  const int64_t s = row % j.S, h = (row / j.S) % j.H, b = row / (j.S * j.H);
  const int64_t kv = h / (j.H / j.KV);
  const float* q = j.Q + row * j.D;
  const float* k = j.K + (b * j.KV + kv) * j.T * j.D;
  const float* v = j.V + (b * j.KV + kv) * j.T * j.D;
  const bool* m = j.mask + b * j.mask_b + h * j.mask_h + s * j.T;
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < j.T; ++t) {
    p[t] = j.scale * dot_f32(q, k + t * j.D, j.D) + (m[t] ? 0.0f : j.masked_value);
    top = std::max(top, p[t]);
  }
  float* y = j.Y + row * j.D;
  std::fill(y, y + j.D, 0.0f);
  if (!std::isfinite(top)) return;  // softmax would be NaN: the exporter's guard writes 0
  float total = 0.0f;
  for (int64_t t = 0; t < j.T; ++t) total += (p[t] = std::exp(p[t] - top));
  const float inv = 1.0f / total;
  for (int64_t t = 0; t < j.T; ++t) axpy_f32(p[t] * inv, v + t * j.D, y, j.D);
}

inline void attention_task(void* data, size_t task) {
  const AttentionJob& j = *static_cast<const AttentionJob*>(data);
  thread_local std::vector<float> scores;
  float* p = scratch(scores, static_cast<size_t>(j.T));
  const int64_t r0 = static_cast<int64_t>(task) * j.rows_per_task;
  const int64_t r1 = std::min(j.B * j.H * j.S, r0 + j.rows_per_task);
  for (int64_t row = r0; row < r1; ++row) attention_row(j, row, p);
}

struct AttentionKernel {
  float scale, masked_value;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded([&] { Compute(context); });
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    auto q = ctx.GetInput(0), k = ctx.GetInput(1), v = ctx.GetInput(2), mask = ctx.GetInput(3);
    const auto qs = q.GetTensorTypeAndShapeInfo().GetShape();
    const auto ks = k.GetTensorTypeAndShapeInfo().GetShape();
    const auto vs = v.GetTensorTypeAndShapeInfo().GetShape();
    const auto ms = mask.GetTensorTypeAndShapeInfo().GetShape();
    auto fail = [&](const std::string& what) {
      throw Ort::Exception(std::string(kGroupedAttention) + ": " + what + " (Q " + shape_str(qs) +
                               ", K " + shape_str(ks) + ", V " + shape_str(vs) + ", mask " +
                               shape_str(ms) + ")",
                           ORT_INVALID_ARGUMENT);
    };
    if (qs.size() != 4 || ks.size() != 4 || vs != ks || ms.size() != 4)
      fail("Q, K, V and mask must be 4-D and V shaped like K");
    const int64_t B = qs[0], H = qs[1], S = qs[2], D = qs[3], KV = ks[1], T = ks[2];
    if (ks[0] != B || ks[3] != D || KV < 1 || H % KV) fail("K must be [B, KV, T, D], KV | H");
    if ((ms[0] != B && ms[0] != 1) || (ms[1] != H && ms[1] != 1) || ms[2] != S || ms[3] != T)
      fail("mask must be [B or 1, H or 1, S, T]");
    auto y = ctx.GetOutput(0, qs);
    const int64_t rows = B * H * S;
    if (rows == 0) return;
    AttentionJob job{q.GetTensorData<float>(), k.GetTensorData<float>(),
                     v.GetTensorData<float>(), mask.GetTensorData<bool>(),
                     y.GetTensorMutableData<float>(), B, H, KV, S, T, D,
                     ms[0] == 1 ? 0 : ms[1] * S * T, ms[1] == 1 ? 0 : S * T, 0,
                     scale, masked_value};
    // ~16 tasks, but at least 4 rows each (a decode step has H rows of a few µs each).
    job.rows_per_task = std::max<int64_t>(4, (rows + 15) / 16);
    run_tasks(ctx, attention_task, (rows + job.rows_per_task - 1) / job.rows_per_task, &job);
  }
};

struct AttentionOp : Ort::CustomOpBase<AttentionOp, AttentionKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    float scale = 0.0f, masked = 0.0f;
    OrtStatus* st = api.KernelInfoGetAttribute_float(info, "scale", &scale);
    if (st == nullptr) st = api.KernelInfoGetAttribute_float(info, "masked_value", &masked);
    if (st != nullptr) return st;
    *kernel = new AttentionKernel{scale, masked};
    return nullptr;
  }
  const char* GetName() const { return kGroupedAttention; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace smoothrot_ortops
