// smoothrot_run: greedy generation with the engine.trt that `smoothrot build` writes.
// The engine's I/O contract is in README.md; every dimension (layers, KV heads, head size,
// vocabulary, longest prompt and context) is read from the engine itself. Builds against
// TensorRT 10.x or TensorRT-RTX 1.x, whose runtime APIs are the same for what is used here.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

// An engine only loads in the library flavour it was built with: catch a header/library mix-up
// at compile time rather than as a version error at run time.
#if defined(SMOOTHROT_TENSORRT_RTX) && !defined(TRT_MAJOR_RTX)
#error "SMOOTHROT_TENSORRT_RTX=ON but these are TensorRT headers: set TRT_INCLUDE_DIR to TensorRT-RTX's"
#elif !defined(SMOOTHROT_TENSORRT_RTX) && defined(TRT_MAJOR_RTX)
#error "these are TensorRT-RTX headers: configure with -DSMOOTHROT_TENSORRT_RTX=ON"
#endif

namespace nv = nvinfer1;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void fail(std::string const& msg) { throw std::runtime_error(msg); }

#define CUDA_CHECK(call)                                                                                   \
    do {                                                                                                   \
        cudaError_t err_ = (call);                                                                         \
        if (err_ != cudaSuccess) fail(std::string("CUDA: ") + #call + ": " + cudaGetErrorString(err_));   \
    } while (0)

// TensorRT calls return false / nullptr and explain themselves through the logger.
void trtCheck(bool ok, std::string const& what) {
    if (!ok) fail("TensorRT: " + what + " failed (see the [TensorRT] messages above)");
}

class Logger : public nv::ILogger {
public:
    bool verbose = false;
    void log(Severity severity, char const* msg) noexcept override {
        if (severity <= Severity::kWARNING || (verbose && severity <= Severity::kINFO))
            std::fprintf(stderr, "[TensorRT] %s\n", msg);
    }
};

// Owning handles, so that every early exit (exceptions included) frees what it allocated.
struct CudaFree { void operator()(void* p) const { cudaFree(p); } };
struct CudaFreeHost { void operator()(void* p) const { cudaFreeHost(p); } };
struct CudaStreamDestroy { void operator()(cudaStream_t s) const { cudaStreamDestroy(s); } };
using DeviceBuffer = std::unique_ptr<void, CudaFree>;
using Stream = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, CudaStreamDestroy>;

DeviceBuffer deviceAlloc(int64_t bytes) {  // cudaMalloc aligns to 256 bytes, as TensorRT requires
    void* p = nullptr;
    cudaError_t const err = cudaMalloc(&p, static_cast<size_t>(std::max<int64_t>(bytes, 256)));
    if (err != cudaSuccess)
        fail("CUDA: cannot allocate " + std::to_string(bytes >> 20) + " MiB on the GPU: " + cudaGetErrorString(err));
    return DeviceBuffer(p);
}

nv::Dims makeDims(std::initializer_list<int64_t> v) {
    nv::Dims d{};
    d.nbDims = static_cast<int32_t>(v.size());
    std::copy(v.begin(), v.end(), d.d);
    return d;
}
std::string str(nv::Dims const& d) {
    std::string s = "[";
    for (int32_t i = 0; i < d.nbDims; ++i) s += (i ? ", " : "") + std::to_string(d.d[i]);
    return s + "]";
}
std::string typeName(nv::DataType t) {
    if (t == nv::DataType::kFLOAT) return "fp32";
    if (t == nv::DataType::kHALF) return "fp16";
    return t == nv::DataType::kINT64 ? "int64" : "DataType " + std::to_string(static_cast<int>(t));
}

int64_t parseInt(std::string const& text, std::string const& what) {
    size_t used = 0;
    long long v = 0;
    try { v = std::stoll(text, &used, 10); } catch (std::exception const&) { used = 0; }
    if (used == 0 || used != text.size()) fail("invalid " + what + " '" + text + "' (expected an integer)");
    return v;
}

// Whitespace-separated ids; commas and brackets count as whitespace, so `print(ids)` output works.
std::vector<int64_t> readIds(std::istream& in, std::string const& source) {
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::replace_if(text.begin(), text.end(), [](char c) { return c == ',' || c == '[' || c == ']'; }, ' ');
    std::istringstream words(text);
    std::vector<int64_t> ids;
    for (std::string w; words >> w;) ids.push_back(parseInt(w, "token id in " + source));
    return ids;
}

struct Model {  // what the engine says about the model
    int layers = 0;
    int64_t kvHeads = 0, headDim = 0, vocab = 0, maxPrompt = 0, maxContext = 0;
    bool hasKvPrefix = false;
    std::vector<std::string> pastNames, presentNames;  // [2i] = key, [2i+1] = value of layer i
};

Model inspect(nv::ICudaEngine const& engine) {
    std::set<std::string> left;  // every I/O tensor must be one we bind, or enqueueV3 would fail
    for (int32_t i = 0; i < engine.getNbIOTensors(); ++i) left.insert(engine.getIOTensorName(i));
    auto expect = [&](std::string const& name, nv::TensorIOMode mode, nv::DataType type, int32_t rank) {
        char const* n = name.c_str();
        if (!left.erase(name)) fail("engine has no tensor '" + name + "': not an engine from `smoothrot build`?");
        if (engine.getTensorIOMode(n) != mode)
            fail("engine tensor '" + name + "' should be an " +
                 (mode == nv::TensorIOMode::kINPUT ? "input" : "output"));
        if (engine.getTensorDataType(n) != type)
            fail("engine tensor '" + name + "' has data type " + typeName(engine.getTensorDataType(n)) + ", expected " +
                 typeName(type));
        if (engine.getTensorShape(n).nbDims != rank)
            fail("engine tensor '" + name + "' has shape " + str(engine.getTensorShape(n)) + ", expected rank " +
                 std::to_string(rank));
    };
    auto const in = nv::TensorIOMode::kINPUT, out = nv::TensorIOMode::kOUTPUT;
    for (char const* name : {"input_ids", "attention_mask", "position_ids"}) expect(name, in, nv::DataType::kINT64, 2);
    expect("logits", out, nv::DataType::kFLOAT, 3);
    Model m;
    while (left.count("past." + std::to_string(m.layers) + ".key")) ++m.layers;
    if (m.layers == 0) fail("engine has no tensor 'past.0.key': not an engine from `smoothrot build`?");
    for (int i = 0; i < m.layers; ++i)
        for (char const* kv : {".key", ".value"}) {
            m.pastNames.push_back("past." + std::to_string(i) + kv);
            m.presentNames.push_back("present." + std::to_string(i) + kv);
            expect(m.pastNames.back(), in, nv::DataType::kHALF, 4);
            expect(m.presentNames.back(), out, nv::DataType::kHALF, 4);
        }
    m.hasKvPrefix = left.count("kv_fp_prefix") > 0;
    if (m.hasKvPrefix) expect("kv_fp_prefix", in, nv::DataType::kINT64, 0);
    if (!left.empty()) fail("engine has an I/O tensor this runner does not know: '" + *left.begin() + "'");

    if (engine.getNbOptimizationProfiles() < 2)
        fail("engine has " + std::to_string(engine.getNbOptimizationProfiles()) +
             " optimization profile(s); expected 2 (prefill, decode)");
    auto maxOf = [&](char const* name, int32_t profile) {
        return engine.getProfileShape(name, profile, nv::OptProfileSelector::kMAX);
    };
    nv::Dims const cacheMax = maxOf("past.0.key", 1);  // [1, kv_heads, max_context - 1, head_dim]
    m.kvHeads = cacheMax.d[1];
    m.headDim = cacheMax.d[3];
    m.vocab = engine.getTensorShape("logits").d[2];
    m.maxPrompt = maxOf("input_ids", 0).d[1];
    m.maxContext = std::min(cacheMax.d[2] + 1, maxOf("attention_mask", 1).d[1]);  // cache + the new token
    if (engine.getProfileShape("past.0.key", 0, nv::OptProfileSelector::kMIN).d[2] != 0 ||
        maxOf("input_ids", 1).d[1] != 1)
        fail("engine profiles are not (0: prefill with an empty cache, 1: decode one token)");
    if (m.vocab <= 0 || m.kvHeads <= 0 || m.headDim <= 0 || m.maxPrompt <= 0 || m.maxContext <= 1)
        fail("engine has unusable dimensions (logits " + str(engine.getTensorShape("logits")) + ", past " +
             str(cacheMax) + ")");
    return m;
}

// Runs prefill + greedy decode on one execution context, switching its profile (0 -> 1) rather
// than holding a second context and its activation memory. The KV cache lives in two sets of
// device buffers sized for the longest sequence of this run: a step reads `past` from one set and
// writes `present` into the other, then the roles swap, so the cache never leaves the GPU and is
// never copied. Only the last logits row comes back to the host, for the argmax.
class Generator {
public:
    Generator(nv::ICudaEngine& engine, Model const& m, int64_t promptLen, int64_t capacity, int64_t kvPrefix)
        : m_(m), kvPrefix_(kvPrefix), ids_(deviceAlloc(promptLen * 8)), pos_(deviceAlloc(promptLen * 8)),
          mask_(deviceAlloc(capacity * 8)), logits_(deviceAlloc(promptLen * m.vocab * 4)) {
        void* row = nullptr;  // page-locked, so that the logits row copy is a plain DMA
        CUDA_CHECK(cudaMallocHost(&row, m.vocab * sizeof(float)));
        row_.reset(static_cast<float*>(row));
        for (size_t j = 0; j < 2 * m.pastNames.size(); ++j)
            cache_.push_back(deviceAlloc(m.kvHeads * capacity * m.headDim * 2));  // fp16
        std::vector<int64_t> const ones(capacity, 1);  // attention_mask is all ones: upload once
        CUDA_CHECK(cudaMemcpy(mask_.get(), ones.data(), ones.size() * 8, cudaMemcpyHostToDevice));
        // kv_fp_prefix is read where the engine wants it: the GPU, or the host for a shape input.
        if (m.hasKvPrefix && engine.getTensorLocation("kv_fp_prefix") == nv::TensorLocation::kDEVICE) {
            prefixDev_ = deviceAlloc(8);
            CUDA_CHECK(cudaMemcpy(prefixDev_.get(), &kvPrefix_, 8, cudaMemcpyHostToDevice));
        }
        ctx_.reset(engine.createExecutionContext());
        trtCheck(ctx_ != nullptr, "createExecutionContext");
    }

    // Feeds `tokens` at positions past..past+S-1; returns the greedy next token.
    int64_t step(std::vector<int64_t> const& tokens, int64_t past, cudaStream_t stream) {
        auto const S = static_cast<int64_t>(tokens.size());
        int32_t const profile = past == 0 ? 0 : 1;
        if (profile != profile_) {  // every shape and address is set again below
            trtCheck(ctx_->setOptimizationProfileAsync(profile, stream), "setOptimizationProfileAsync");
            profile_ = profile;
        }
        std::vector<int64_t> positions(S);
        for (int64_t t = 0; t < S; ++t) positions[t] = past + t;
        // From pageable memory: the data is staged when the call returns, so the vectors may go.
        CUDA_CHECK(cudaMemcpyAsync(ids_.get(), tokens.data(), S * 8, cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaMemcpyAsync(pos_.get(), positions.data(), S * 8, cudaMemcpyHostToDevice, stream));
        bind("input_ids", ids_.get(), {1, S});
        bind("position_ids", pos_.get(), {1, S});
        bind("attention_mask", mask_.get(), {1, past + S});
        size_t const n = m_.pastNames.size();
        for (size_t j = 0; j < n; ++j) {  // flip_ picks the set that holds `past` this step
            // Even at P = 0 the input gets a real buffer: TensorRT wants a non-null address.
            bind(m_.pastNames[j], cache_[flip_ * n + j].get(), {1, m_.kvHeads, past, m_.headDim});
            bind(m_.presentNames[j], cache_[(1 - flip_) * n + j].get());
        }
        if (m_.hasKvPrefix) bind("kv_fp_prefix", prefixDev_ ? prefixDev_.get() : &kvPrefix_);
        bind("logits", logits_.get());
        if (!checked_[profile]) {  // once per profile: the engine's outputs fit our buffers
            std::string const lg = str(ctx_->getTensorShape("logits"));
            std::string const pr = str(ctx_->getTensorShape(m_.presentNames[0].c_str()));
            if (lg != str(makeDims({1, S, m_.vocab})) || pr != str(makeDims({1, m_.kvHeads, past + S, m_.headDim})))
                fail("engine output shapes logits " + lg + ", present " + pr + " differ from the contract");
            checked_[profile] = true;
        }
        trtCheck(ctx_->enqueueV3(stream), "enqueueV3");
        flip_ = 1 - flip_;  // this step's present is the next step's past

        float const* last = static_cast<float const*>(logits_.get()) + (S - 1) * m_.vocab;
        CUDA_CHECK(cudaMemcpyAsync(row_.get(), last, m_.vocab * sizeof(float), cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        float const* row = row_.get();
        int64_t best = -1;
        for (int64_t v = 0; v < m_.vocab; ++v)  // skips NaN, which compares false
            if (best < 0 ? !std::isnan(row[v]) : row[v] > row[best]) best = v;
        if (best < 0) fail("the logits are all NaN (fp16 overflow in the engine?)");
        return best;
    }

private:
    void bind(std::string const& name, void* ptr, std::initializer_list<int64_t> shape = {}) {
        if (shape.size() && !ctx_->setInputShape(name.c_str(), makeDims(shape)))
            fail("TensorRT: shape " + str(makeDims(shape)) + " of '" + name + "' is outside optimization profile " +
                 std::to_string(profile_));
        trtCheck(ctx_->setTensorAddress(name.c_str(), ptr), "setTensorAddress(" + name + ")");
    }

    Model const& m_;
    int64_t kvPrefix_;  // TensorRT reads it through its address if it is a host (shape) input
    DeviceBuffer ids_, pos_, mask_, logits_, prefixDev_;
    std::unique_ptr<float, CudaFreeHost> row_;
    std::vector<DeviceBuffer> cache_;  // [set 0: 2L buffers | set 1: 2L buffers]
    std::unique_ptr<nv::IExecutionContext> ctx_;  // declared last: destroyed before the buffers
    int32_t profile_ = -1;
    int flip_ = 0;
    bool checked_[2] = {false, false};
};

struct Options {
    std::string engine, idsFile;
    std::vector<int64_t> ids, eos;
    int64_t maxNew = 32;
    std::optional<int64_t> kvPrefix;
    bool warmup = false, verbose = false;
};

[[noreturn]] void usage(char const* error) {
    if (error) std::fprintf(stderr, "error: %s\n\n", error);
    std::fprintf(stderr,
        "usage: smoothrot_run ENGINE [options] [TOKEN_ID ...]\n"
        "  ENGINE                  engine.trt, or the `smoothrot build` directory holding it\n"
        "  -f, --ids-file FILE     prompt token ids, whitespace-separated ('-' = stdin)\n"
        "  -n, --max-new-tokens N  tokens to generate (default 32)\n"
        "  --eos ID                stop once ID is generated (repeatable)\n"
        "  --kv-fp-prefix K        quantized-KV engines: keep positions < K in fp16 (default 0)\n"
        "  --warmup                run one untimed prefill + decode step first\n"
        "  -v, --verbose           show TensorRT's info messages\n"
        "Prints the generated ids on stdout, timings on stderr.\n");
    std::exit(error ? 2 : 0);
}

Options parseArgs(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string const a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage((a + " needs a value").c_str());
            return argv[++i];
        };
        if (a == "-h" || a == "--help") usage(nullptr);
        else if (a == "-f" || a == "--ids-file") o.idsFile = value();
        else if (a == "-n" || a == "--max-new-tokens") o.maxNew = parseInt(value(), a);
        else if (a == "--eos") o.eos.push_back(parseInt(value(), a));
        else if (a == "--kv-fp-prefix") o.kvPrefix = parseInt(value(), a);
        else if (a == "--warmup") o.warmup = true;
        else if (a == "-v" || a == "--verbose") o.verbose = true;
        else if (a.size() > 1 && a[0] == '-' && !std::isdigit(static_cast<unsigned char>(a[1])))
            usage(("unknown option " + a).c_str());
        else if (o.engine.empty()) o.engine = a;
        else o.ids.push_back(parseInt(a, "token id"));
    }
    if (o.engine.empty()) usage("no engine given");
    if (!o.idsFile.empty() && !o.ids.empty()) usage("give the prompt ids in a file or as arguments, not both");
    if (o.maxNew < 1) usage("--max-new-tokens must be at least 1");
    if (o.kvPrefix && *o.kvPrefix < 0) usage("--kv-fp-prefix must be >= 0");
    return o;
}

std::vector<char> readEngine(std::string const& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("cannot open engine file '" + path + "'");
    std::vector<char> blob((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (blob.empty()) fail("engine file '" + path + "' is empty");
    return blob;
}

int run(Options const& o) {
    Logger logger;
    logger.verbose = o.verbose;
    std::vector<int64_t> prompt = o.ids;
    if (o.idsFile == "-") prompt = readIds(std::cin, "stdin");
    else if (!o.idsFile.empty()) {
        std::ifstream f(o.idsFile);
        if (!f) fail("cannot open ids file '" + o.idsFile + "'");
        prompt = readIds(f, o.idsFile);
    }
    if (prompt.empty()) fail("the prompt has no token ids (give them as arguments or with --ids-file)");
    std::string const enginePath = std::filesystem::is_directory(o.engine)
        ? (std::filesystem::path(o.engine) / "engine.trt").string() : o.engine;
    std::vector<char> const blob = readEngine(enginePath);

    int devices = 0;  // a plain "no GPU" message before TensorRT's own errors
    cudaError_t const found = cudaGetDeviceCount(&devices);
    if (found != cudaSuccess || devices == 0)
        fail(std::string("no usable NVIDIA GPU: ") + (found ? cudaGetErrorString(found) : "none found"));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::unique_ptr<nv::IRuntime> runtime(nv::createInferRuntime(logger));
    trtCheck(runtime != nullptr, "createInferRuntime (headers and library of different versions?)");
    std::unique_ptr<nv::ICudaEngine> engine(runtime->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine)
        fail("cannot deserialize '" + enginePath + "': an engine loads only with the TensorRT flavour and version "
             "it was built with, on the GPU model it was built for");
    Model const m = inspect(*engine);

    auto const promptLen = static_cast<int64_t>(prompt.size());
    if (promptLen > m.maxPrompt)
        fail("prompt has " + std::to_string(promptLen) + " tokens; this engine's prefill takes at most " +
             std::to_string(m.maxPrompt) + " (smoothrot build --max-prompt)");
    for (int64_t id : prompt)
        if (id < 0 || id >= m.vocab)
            fail("token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(m.vocab) + ")");
    if (o.kvPrefix && !m.hasKvPrefix) fail("--kv-fp-prefix: this engine has no quantized KV cache (no kv_fp_prefix)");
    // The last generated token is never fed back, so N new tokens need prompt + N - 1 positions.
    int64_t const maxNew = std::min(o.maxNew, std::max<int64_t>(1, m.maxContext - promptLen + 1));
    if (maxNew < o.maxNew)
        std::cerr << "warning: the engine's context holds " << m.maxContext << " positions: generating " << maxNew
                  << " tokens, not " << o.maxNew << "\n";
    std::cerr << "engine: " << m.layers << " layers, " << m.kvHeads << " KV heads x " << m.headDim << ", vocab "
              << m.vocab << ", max prompt " << m.maxPrompt << ", max context " << m.maxContext
              << (m.hasKvPrefix ? ", quantized KV cache" : "") << "; GPU: " << prop.name << "\n";

    cudaStream_t rawStream = nullptr;
    CUDA_CHECK(cudaStreamCreate(&rawStream));
    Stream const stream(rawStream);
    Generator gen(*engine, m, promptLen, promptLen + maxNew - 1, o.kvPrefix.value_or(0));
    if (o.warmup) {  // first runs pay one-time costs (lazy loading; TensorRT-RTX compiles kernels)
        int64_t const t = gen.step(prompt, 0, stream.get());
        if (maxNew > 1) gen.step({t}, promptLen, stream.get());  // only if the cache has room
    }
    auto const msSince = [](Clock::time_point t0) {
        return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    };
    auto t0 = Clock::now();
    std::vector<int64_t> out{gen.step(prompt, 0, stream.get())};
    double const prefillMs = msSince(t0);
    t0 = Clock::now();
    auto const isEos = [&](int64_t t) { return std::find(o.eos.begin(), o.eos.end(), t) != o.eos.end(); };
    while (static_cast<int64_t>(out.size()) < maxNew && !isEos(out.back()))
        out.push_back(gen.step({out.back()}, promptLen + static_cast<int64_t>(out.size()) - 1, stream.get()));
    double const decodeMs = msSince(t0);

    for (size_t i = 0; i < out.size(); ++i) std::cout << (i ? " " : "") << out[i];
    std::cout << std::endl;
    std::fprintf(stderr, "prefill: %lld tokens in %.2f ms\n", static_cast<long long>(promptLen), prefillMs);
    if (size_t const steps = out.size() - 1; steps > 0)  // the first new token came from the prefill
        std::fprintf(stderr, "decode: %zu tokens in %.2f ms = %.1f tokens/s\n", steps, decodeMs,
                     static_cast<double>(steps) * 1e3 / decodeMs);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parseArgs(argc, argv));
    } catch (std::exception const& e) {  // every failure ends here: one line, exit status 1
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
