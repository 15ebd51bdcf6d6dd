// Helpers shared by the ONNX Runtime kernels of this library (include after the ORT C++ API).
#pragma once

#include <string>
#include <vector>

namespace smoothrot_ortops {

template <typename T>
T* scratch(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

inline void run_tasks(Ort::KernelContext& ctx, void (*fn)(void*, size_t), int64_t tasks, void* job) {
  if (tasks == 1) fn(job, 0);
  else ctx.ParallelFor(fn, static_cast<size_t>(tasks), 0, job);
}

// Runs a kernel body, turning exceptions into ORT statuses (nothing may unwind into ORT).
template <typename F>
OrtStatusPtr guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
}

}  // namespace smoothrot_ortops
