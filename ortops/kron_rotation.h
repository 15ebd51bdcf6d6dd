// KroneckerRotation (domain smoothrot.ort): y = x · (A ⊗ H_p / √p) for every row x of X.
//
// Inputs: X float [..., n], A float [m, m]; p = n / m must be a power of two and H_p is the
// Sylvester Hadamard matrix. With x viewed as X_r [m, p] (row-major), y viewed the same way is
// Aᵀ · X_r · H_p / √p. The online-rotation pass writes that as Reshape → MatMul(·, H_p/√p) →
// MatMul(Aᵀ, ·) → Reshape, four ONNX Runtime dispatches and three intermediate tensors per
// site; this op does it in one, with a fast Walsh–Hadamard transform (p·log2 p adds per row of
// X_r) instead of the p×p MatMul.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "ort_common.h"

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace smoothrot_ortops {

// In-place unnormalized Walsh–Hadamard transform of t[0..p) (p a power of two): t := t · H_p.
inline void fwht(float* t, int64_t p) {
  for (int64_t h = 1; h < p; h *= 2) {
    for (int64_t i = 0; i < p; i += 2 * h) {
      int64_t j = i;
#ifdef __AVX2__
      for (; j + 8 <= i + h; j += 8) {
        const __m256 a = _mm256_loadu_ps(t + j), b = _mm256_loadu_ps(t + j + h);
        _mm256_storeu_ps(t + j, _mm256_add_ps(a, b));
        _mm256_storeu_ps(t + j + h, _mm256_sub_ps(a, b));
      }
#endif
      for (; j < i + h; ++j) {
        const float a = t[j], b = t[j + h];
        t[j] = a + b;
        t[j + h] = a - b;
      }
    }
  }
}

// One row: t (scratch, m·p floats) := X_r · H_p; y := Aᵀ · t · (1/√p).
inline void kron_rotate_row(const float* x, const float* A, int64_t m, int64_t p, float norm,
                            float* t, float* y) {
  for (int64_t i = 0; i < m; ++i) {
    std::copy(x + i * p, x + (i + 1) * p, t + i * p);
    fwht(t + i * p, p);
  }
  for (int64_t k = 0; k < m; ++k) {
    float* yk = y + k * p;
    std::fill(yk, yk + p, 0.0f);
    for (int64_t i = 0; i < m; ++i) {
      const float a = A[i * m + k] * norm;
      const float* ti = t + i * p;
      int64_t j = 0;
#ifdef __AVX2__
      const __m256 av = _mm256_set1_ps(a);
      for (; j + 8 <= p; j += 8)
        _mm256_storeu_ps(yk + j, _mm256_fmadd_ps(av, _mm256_loadu_ps(ti + j),
                                                 _mm256_loadu_ps(yk + j)));
#endif
      for (; j < p; ++j) yk[j] += a * ti[j];
    }
  }
}

struct KronJob {
  const float* X;
  const float* A;
  float* Y;
  int64_t m, p, rows, rows_per_task;
  float norm;
};

inline void kron_rotate_task(void* data, size_t task) {
  const KronJob& j = *static_cast<const KronJob*>(data);
  thread_local std::vector<float> scratch_rows;
  const int64_t n = j.m * j.p;
  if (static_cast<int64_t>(scratch_rows.size()) < n) scratch_rows.resize(static_cast<size_t>(n));
  const int64_t r0 = static_cast<int64_t>(task) * j.rows_per_task;
  const int64_t r1 = std::min(j.rows, r0 + j.rows_per_task);
  for (int64_t r = r0; r < r1; ++r)
    kron_rotate_row(j.X + r * n, j.A, j.m, j.p, j.norm, scratch_rows.data(), j.Y + r * n);
}

constexpr const char* kKronRotation = "KroneckerRotation";
constexpr int64_t kRotationTasks = 16;  // row blocks of a multi-row rotation

struct RotationKernel {
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded([&] { Compute(context); });
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    auto x = ctx.GetInput(0), a = ctx.GetInput(1);
    const auto x_shape = x.GetTensorTypeAndShapeInfo().GetShape();
    const auto a_shape = a.GetTensorTypeAndShapeInfo().GetShape();
    auto fail = [&](const std::string& what) {
      throw Ort::Exception(std::string(kKronRotation) + ": " + what + " (X " + shape_str(x_shape) +
                               ", A " + shape_str(a_shape) + ")",
                           ORT_INVALID_ARGUMENT);
    };
    if (a_shape.size() != 2 || a_shape[0] != a_shape[1] || a_shape[0] < 1)
      fail("A must be a square [m, m] matrix");
    const int64_t m = a_shape[0];
    if (x_shape.empty() || x_shape.back() < 1 || x_shape.back() % m) fail("m must divide X's last dim");
    const int64_t p = x_shape.back() / m;
    if (p & (p - 1)) fail("X's last dim / m must be a power of two");
    auto y = ctx.GetOutput(0, x_shape);
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < x_shape.size(); ++i) rows *= x_shape[i];
    if (rows == 0) return;
    KronJob job{x.GetTensorData<float>(), a.GetTensorData<float>(),
                y.GetTensorMutableData<float>(), m, p, rows, 0,
                static_cast<float>(1.0 / std::sqrt(static_cast<double>(p)))};
    job.rows_per_task = (rows + kRotationTasks - 1) / kRotationTasks;
    run_tasks(ctx, kron_rotate_task, (rows + job.rows_per_task - 1) / job.rows_per_task, &job);
  }
};

struct RotationOp : Ort::CustomOpBase<RotationOp, RotationKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo*, void** kernel) const {
    *kernel = new RotationKernel{};
    return nullptr;
  }
  const char* GetName() const { return kKronRotation; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace smoothrot_ortops
