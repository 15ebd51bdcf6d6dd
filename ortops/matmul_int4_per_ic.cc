// ONNX Runtime custom-op library (CPU), domain smoothrot.ort:
//
//   MatMulInt4PerIC: Y[..., n] = sum_k A[..., k] * scales[n / group, k] * (nibble(B[n], k) - 8)
//   MatMulInt4PerOC: Y[..., n] = sum_k A[..., k] * scales[n, k / group] * (nibble(B[n], k) - 8)
//   KroneckerRotation: Y = X · (A ⊗ H_p / √p) per row (kron_rotation.h)
//   GroupedAttention: masked softmax attention over grouped K/V heads (grouped_attention.h)
//
// Inputs: A float [..., K], B uint8 [N, ceil(K/2)] (low nibble = even k), scales float
// [N/group, K] (per-IC) or [N, K/group] (per-OC). Attributes: K, N, group, accuracy_level
// (0 = fp32, 4 = int8 activations for a single row). Work is split over output channels (and
// row blocks for large M) with ORT's intra-op pool.
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "int4_per_ic_gemm.h"
#include "grouped_attention.h"
#include "int4_per_ic_kernels.h"
#include "kron_rotation.h"
#include "ort_common.h"

namespace {

using namespace smoothrot_ortops;

constexpr const char* kDomain = "smoothrot.ort";
constexpr const char* kPerIc = "MatMulInt4PerIC";
constexpr const char* kPerOc = "MatMulInt4PerOC";
constexpr int64_t kGemmMinRows = 16;  // from this many rows of A on: dequantize + fp32 tiles
constexpr int64_t kGemmRows = 192;   // rows of A per GEMM task (16 output channels each)
constexpr int64_t kInlinePrep = 1 << 15;     // GEMV: prepare activations inline up to this size
constexpr int64_t kGemvTaskBytes = 1 << 15;  // GEMV: packed weight bytes per task
constexpr int64_t kMultiUnits = 64;          // GEMV, several rows: K block (16-k units)

struct Job {
  const float* A;
  const uint8_t* B;
  const float* S;
  float* Y;
  int64_t M, K, N, group, Kb, level;
  int64_t rows_per_task, n_tasks, m_tasks;
  // GEMV: activations prepared per (row m, group g), item i = m * G + g.
  int64_t G, stride;  // stride: floats (level 0) or int8 (level 4) per item
  float* xsp;         // level 0: [M * G, stride]
  int8_t* xq;         // level 4: [M * G, stride]
  float* sv;          // level 4: [M * G, stride / 8]
  float* corr;        // [M * G]: the "- 8" (and block scales' share) folded per item
  bool per_oc;        // scales [N, K / group] (else [N / group, K])
  float* gcorr;       // per-OC GEMV: the "- 8" per K group
  int64_t groups, pairs_per_group;  // per-OC GEMV: K / group, group / 64
};

// Per-OC GEMV (one row of A, int8 activations), task t: output channels of the task.
void gemv_oc_task(void* data, size_t t) {
  const Job& j = *static_cast<const Job*>(data);
  const int64_t n0 = static_cast<int64_t>(t) * j.rows_per_task;
  const int64_t n1 = std::min(j.N, n0 + j.rows_per_task);
  gemv_i8_oc(j.xq, j.sv, j.gcorr, j.B, j.S, j.groups, j.pairs_per_group, n0, n1, j.Y + n0);
}

// GEMV phase 1, item i: scale (and for level 4 quantize) row m's activations for group g.
void prep_task(void* data, size_t i) {
  const Job& j = *static_cast<const Job*>(data);
  thread_local std::vector<float> tmp;
  const int64_t m = static_cast<int64_t>(i) / j.G, g = static_cast<int64_t>(i) % j.G;
  const float* a = j.A + m * j.K;
  const float* s = j.S + g * j.K;
  float* t = scratch(tmp, static_cast<size_t>(round_up(j.K, 64)));
  if (j.level >= 4)
    j.corr[i] = quantize_i8(a, s, j.K, t, j.xq + i * j.stride, j.sv + i * (j.stride / 8));
  else
    j.corr[i] = prescale_f32(a, s, j.K, t, j.xsp + i * j.stride);
}

// GEMV phase 2, task t: output channels [t * rows_per_task, ...) for every row of A.
void gemv_task(void* data, size_t t) {
  const Job& j = *static_cast<const Job*>(data);
  const int64_t n_begin = static_cast<int64_t>(t) * j.rows_per_task;
  const int64_t n_end = std::min(j.N, n_begin + j.rows_per_task);
  if (j.M == 1) {
    for (int64_t n0 = n_begin; n0 < n_end;) {
      const int64_t g = n0 / j.group, n1 = std::min(n_end, (g + 1) * j.group);
      if (j.level >= 4)
        gemv_i8(j.xq + g * j.stride, j.sv + g * (j.stride / 8), j.corr[g], j.B, j.Kb, n0, n1,
                j.Y + n0);
      else
        gemv_f32(j.xsp + g * j.stride, j.corr[g], j.B, j.Kb, n0, n1, j.Y + n0);
      n0 = n1;
    }
    return;
  }
  // Several rows (fp32 activations whatever the level): unpack each int4 row once for 4 rows;
  // K is blocked so that 4 activation slices (4 x 4 KiB) stay in L1.
  const int64_t units = (j.Kb + 7) / 8;
  for (int64_t u0 = 0; u0 < units; u0 += kMultiUnits) {
    const int64_t u1 = std::min(units, u0 + kMultiUnits);
    for (int64_t n = n_begin; n < n_end; ++n) {
      const int64_t g = n / j.group;
      const uint8_t* w = j.B + n * j.Kb;
      for (int64_t m = 0; m < j.M; m += 4) {
        const float* xs[4];
        float corr[4];
        const int64_t rm = std::min<int64_t>(4, j.M - m);
        for (int64_t r = 0; r < rm; ++r) {
          xs[r] = j.xsp + ((m + r) * j.G + g) * j.stride;
          corr[r] = j.corr[(m + r) * j.G + g];
        }
        float* y = j.Y + m * j.N + n;
        const bool first = u0 == 0;
        switch (rm) {
          case 4: dot_f32_multi<4>(xs, corr, w, j.Kb, u0, u1, first, y, j.N); break;
          case 3: dot_f32_multi<3>(xs, corr, w, j.Kb, u0, u1, first, y, j.N); break;
          case 2: dot_f32_multi<2>(xs, corr, w, j.Kb, u0, u1, first, y, j.N); break;
          default: dot_f32_multi<1>(xs, corr, w, j.Kb, u0, u1, first, y, j.N); break;
        }
      }
    }
  }
}

// GEMM task t: a block of kGemmRows rows x kPanel output channels.
void gemm_task(void* data, size_t t) {
  const Job& j = *static_cast<const Job*>(data);
  thread_local std::vector<float> rows, panel, wide;
  const int64_t tn = static_cast<int64_t>(t) % j.n_tasks, tm = static_cast<int64_t>(t) / j.n_tasks;
  const int64_t n0 = tn * kPanel, n1 = std::min(j.N, n0 + kPanel);
  const int64_t m0 = tm * kGemmRows, m1 = std::min(j.M, m0 + kGemmRows);
  float* r = scratch(rows, static_cast<size_t>(kPanel * round_up(j.K, 16)));
  float* p = scratch(panel, static_cast<size_t>(kPanel * j.K));
  float* w = j.per_oc ? scratch(wide, static_cast<size_t>(j.K)) : nullptr;
  dequant_panel(j.B, j.S, j.K, j.group, j.per_oc, n0, n1, r, p, w);
  gemm_panel(j.A, j.K, p, m0, m1, n0, n1, j.Y, j.N);
}

// Rows of A per task for the GEMV paths: ~kGemvTaskBytes of packed weights (a multiple of 4
// rows), and >= ~16 tasks.
int64_t gemv_rows_per_task(int64_t N, int64_t Kb) {
  const int64_t rows = std::max<int64_t>(4, round_up(kGemvTaskBytes / Kb, 4));
  return std::min(rows, std::max<int64_t>(4, round_up((N + 15) / 16, 4)));
}

struct Kernel {
  int64_t K, N, group, level;
  bool per_oc;
  const char* op_type;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded([&] { Compute(context); });
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    auto a = ctx.GetInput(0), b = ctx.GetInput(1), s = ctx.GetInput(2);
    const auto a_shape = a.GetTensorTypeAndShapeInfo().GetShape();
    const auto b_shape = b.GetTensorTypeAndShapeInfo().GetShape();
    const auto s_shape = s.GetTensorTypeAndShapeInfo().GetShape();
    const int64_t Kb = (K + 1) / 2;
    auto fail = [&](const std::string& what) {
      throw Ort::Exception(std::string(op_type) + " (K=" + std::to_string(K) + ", N=" +
                               std::to_string(N) + ", group=" + std::to_string(group) +
                               "): " + what,
                           ORT_INVALID_ARGUMENT);
    };
    if (a_shape.empty() || a_shape.back() != K)
      fail("input A must have shape [..., " + std::to_string(K) + "], got " + shape_str(a_shape));
    if (b_shape != std::vector<int64_t>{N, Kb})
      fail("input B must have shape [" + std::to_string(N) + ", " + std::to_string(Kb) +
           "], got " + shape_str(b_shape));
    const std::vector<int64_t> want = per_oc ? std::vector<int64_t>{N, K / group}
                                             : std::vector<int64_t>{N / group, K};
    if (s_shape != want) fail("input scales must have shape " + shape_str(want) + ", got " +
                              shape_str(s_shape));
    std::vector<int64_t> y_shape = a_shape;
    y_shape.back() = N;
    auto y = ctx.GetOutput(0, y_shape);
    int64_t M = 1;
    for (size_t i = 0; i + 1 < a_shape.size(); ++i) M *= a_shape[i];
    if (M == 0) return;

    Job job{};
    job.A = a.GetTensorData<float>();
    job.B = b.GetTensorData<uint8_t>();
    job.S = s.GetTensorData<float>();
    job.Y = y.GetTensorMutableData<float>();
    job.M = M, job.K = K, job.N = N, job.group = group, job.Kb = Kb, job.level = level;
    job.per_oc = per_oc;
    if (per_oc && M == 1 && level >= 4 && group % 64 == 0) {
      thread_local std::vector<float> fbuf, cbuf, tbuf;
      thread_local std::vector<int8_t> qbuf;
      job.groups = K / group, job.pairs_per_group = group / 64;
      job.xq = scratch(qbuf, static_cast<size_t>(K));
      job.sv = scratch(fbuf, static_cast<size_t>(K / 8));
      float* bcorr = scratch(cbuf, static_cast<size_t>(K / 32 + job.groups));
      job.gcorr = bcorr + K / 32;
      quantize_i8(job.A, nullptr, K, scratch(tbuf, static_cast<size_t>(K)), job.xq, job.sv, bcorr);
      for (int64_t g = 0; g < job.groups; ++g) {
        float c = 0.0f;
        for (int64_t b = g * group / 32; b < (g + 1) * group / 32; ++b) c += bcorr[b];
        job.gcorr[g] = c;
      }
      job.rows_per_task = gemv_rows_per_task(N, Kb);
      run_tasks(ctx, gemv_oc_task, (N + job.rows_per_task - 1) / job.rows_per_task, &job);
    } else if (M < kGemmMinRows && !per_oc) {
      // Buffers belong to the calling thread (concurrent Run calls each have their own).
      thread_local std::vector<float> fbuf, cbuf;
      thread_local std::vector<int8_t> qbuf;
      job.G = N / group;
      const int64_t items = M * job.G;
      job.level = M == 1 ? level : 0;  // int8 activations only pay off for a single row
      if (job.level >= 4) {
        job.stride = round_up(K, 64);
        job.xq = scratch(qbuf, static_cast<size_t>(items * job.stride));
        job.sv = scratch(fbuf, static_cast<size_t>(items * job.stride / 8));
        job.corr = scratch(cbuf, static_cast<size_t>(items));
      } else {
        job.stride = round_up(K, 16);
        job.xsp = scratch(fbuf, static_cast<size_t>(items * job.stride));
        job.corr = scratch(cbuf, static_cast<size_t>(items));
      }
      if (items * K <= kInlinePrep || items == 1) {
        for (int64_t i = 0; i < items; ++i) prep_task(&job, static_cast<size_t>(i));
      } else {
        ctx.ParallelFor(prep_task, static_cast<size_t>(items), 0, &job);
      }
      job.rows_per_task = gemv_rows_per_task(N, Kb);
      run_tasks(ctx, gemv_task, (N + job.rows_per_task - 1) / job.rows_per_task, &job);
    } else {  // many rows, or per-OC at level 0 / a group of 16 or 32: dequantize + fp32 tiles
      job.n_tasks = (N + kPanel - 1) / kPanel;
      job.m_tasks = (M + kGemmRows - 1) / kGemmRows;
      ctx.ParallelFor(gemm_task, static_cast<size_t>(job.n_tasks * job.m_tasks), 0, &job);
    }
  }
};

int64_t optional_int(const OrtApi& api, const OrtKernelInfo* info, const char* name,
                     int64_t fallback) {
  int64_t v = fallback;
  OrtStatus* st = api.KernelInfoGetAttribute_int64(info, name, &v);
  if (st != nullptr) {
    api.ReleaseStatus(st);
    return fallback;
  }
  return v;
}

struct Op : Ort::CustomOpBase<Op, Kernel, true> {
  const char* op_type;
  bool per_oc;

  Op(const char* name, bool oc) : op_type(name), per_oc(oc) {}

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      Ort::ConstKernelInfo ki(info);
      const int64_t K = ki.GetAttribute<int64_t>("K"), N = ki.GetAttribute<int64_t>("N");
      const int64_t group = ki.GetAttribute<int64_t>("group");
      const int64_t level = optional_int(api, info, "accuracy_level", 0);
      const bool ok = per_oc ? K % group == 0 && group % 16 == 0 : N % group == 0;
      if (K < 1 || N < 1 || group < 1 || !ok)
        throw std::invalid_argument(
            std::string("needs K >= 1, N >= 1, group >= 1 and ") +
            (per_oc ? "K % group == 0 (group a multiple of 16)" : "N % group == 0") +
            ", got K=" + std::to_string(K) + " N=" + std::to_string(N) +
            " group=" + std::to_string(group));
      if (level < 0 || level > 4)
        throw std::invalid_argument("accuracy_level must be in 0..4, got " + std::to_string(level));
      *kernel = new Kernel{K, N, group, level, per_oc, op_type};
      return nullptr;
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, (std::string(op_type) + ": " + e.what()).c_str());
    }
  }
  const char* GetName() const { return op_type; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // runtime older than the headers: nothing we can report
  Ort::InitApi(api);
  static const Op per_ic{kPerIc, false}, per_oc{kPerOc, true};
  static const smoothrot_ortops::RotationOp rotation;
  static const smoothrot_ortops::AttentionOp attention;
  // Domains must outlive every session that uses them: keep them for the life of the process.
  static std::mutex mu;
  static auto* domains = new std::vector<Ort::CustomOpDomain>();
  try {
    Ort::CustomOpDomain domain{kDomain};
    domain.Add(&per_ic);
    domain.Add(&per_oc);
    domain.Add(&rotation);
    domain.Add(&attention);
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(mu);
    domains->push_back(std::move(domain));
    return nullptr;
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}
