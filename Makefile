# MoCE engine: one entry point.
#   make deps   install the Debian packages the project needs (no-op when present)
#   make all    build the library, the binaries and the test runner
#   make test   install what is missing (as make deps), build and run the CPU test suite (CUDA code is compiled
#               too when nvcc exists)
#   make bench  build and run the benchmarks
#   make clean
# Options: SANITIZE=1 (ASan+UBSan), DEBUG=1, CUDA=0 (skip the CUDA build even if nvcc is found)

SHELL := /bin/bash
BUILD ?= build$(if $(SANITIZE),-san)$(if $(DEBUG),-debug)
CXX ?= g++
CUDA_HOME ?= /usr/local/cuda
NVCC ?= $(shell command -v nvcc 2>/dev/null || ( [ -x $(CUDA_HOME)/bin/nvcc ] && echo $(CUDA_HOME)/bin/nvcc ))

# ---- what this machine has -------------------------------------------------------------------
# 1 when `#include <$(1)>` preprocesses (extra flags $(2)), else empty. The '#' comes from a variable: written as
# \# inside the function, GNU make 4.3 passes the backslash on, and "\#include" is no directive, so every header
# passed.
hash := \#
have_header = $(shell printf '$(hash)include <$(1)>\n' | $(CXX) -std=c++17 -E -x c++ - $(2) >/dev/null 2>&1 && echo 1)
HAVE_FMT     := $(call have_header,fmt/format.h)
HAVE_DOCTEST := $(call have_header,doctest/doctest.h)
HAVE_JSON    := $(call have_header,nlohmann/json.hpp)
HAVE_STB     := $(call have_header,stb/stb_image.h)
HAVE_ZLIB    := $(call have_header,zlib.h)
HAVE_OPENBLAS:= $(call have_header,cblas.h,-I/usr/include/x86_64-linux-gnu/openblas-pthread)
HAVE_OPENMP  := $(shell echo 'int main(){}' | $(CXX) -fopenmp -x c++ - -o /dev/null >/dev/null 2>&1 && echo 1)
HAVE_MPI     := $(shell command -v mpicxx >/dev/null 2>&1 && echo 1)
CUDA_INC     := $(CUDA_HOME)/include
CUDA_LIBDIRS := $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib
find_lib = $(firstword $(foreach d,$(CUDA_LIBDIRS),$(wildcard $(d)/lib$(1).so)))
HAVE_NVCC    := $(if $(NVCC),1)
HAVE_CUBLAS  := $(if $(call find_lib,cublas),1)
HAVE_CUDNN   := $(if $(call find_lib,cudnn),1)
HAVE_NCCL    := $(if $(call find_lib,nccl),1)
# Sanitizer builds are CPU-only: ASan's shadow memory and the CUDA runtime's address reservations clash.
CUDA ?= $(if $(SANITIZE),0,$(if $(and $(HAVE_NVCC),$(HAVE_CUBLAS)),1,0))

mark = $(if $(1),✓,✗)
$(info [config] g++ $(shell $(CXX) -dumpfullversion)  OpenMP $(call mark,$(HAVE_OPENMP))  fmt $(call mark,$(HAVE_FMT))  doctest $(call mark,$(HAVE_DOCTEST))  nlohmann-json $(call mark,$(HAVE_JSON))  stb $(call mark,$(HAVE_STB))  zlib $(call mark,$(HAVE_ZLIB))  OpenBLAS(bench) $(call mark,$(HAVE_OPENBLAS))  MPI $(call mark,$(HAVE_MPI)))
$(info [config] nvcc $(call mark,$(HAVE_NVCC))  cuBLAS $(call mark,$(HAVE_CUBLAS))  cuDNN $(call mark,$(HAVE_CUDNN))  NCCL $(call mark,$(HAVE_NCCL))  -> CUDA backend $(if $(filter 1,$(CUDA)),built,not built))

# ---- flags ---------------------------------------------------------------------------------------
CXXSTD   := -std=c++17
WARN     := -Wall -Wextra -Wno-unused-parameter
OPT      := $(if $(DEBUG),-O0 -g,-O3 -g1)
comma    := ,
SAN      := $(if $(SANITIZE),-fsanitize=address$(comma)undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
CPPFLAGS := -I. $(if $(filter 1,$(CUDA)),-DENGINE_WITH_CUDA=1 -I$(CUDA_INC))
CXXFLAGS := $(CXXSTD) $(WARN) $(OPT) -fno-math-errno -fopenmp -MMD -MP $(SAN)
LDFLAGS  := -fopenmp $(SAN)
LDLIBS   := -lfmt -lz -lpthread
ifeq ($(CUDA),1)
NVCCFLAGS := -std=c++17 -O3 -I. -DENGINE_WITH_CUDA=1 $(if $(HAVE_CUDNN),-DENG_WITH_CUDNN=1) --expt-relaxed-constexpr -Xcompiler -Wall,-Wextra,-Wno-unused-parameter \
             -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 $(if $(PROFILE),-lineinfo)
LDLIBS   += $(foreach d,$(CUDA_LIBDIRS),-L$(d) -Wl,-rpath,$(d)) -lcudart -lcublas -lcublasLt $(if $(HAVE_CUDNN),-lcudnn) $(if $(HAVE_NCCL),-lnccl)
endif
ifeq ($(CUDA),1)
# DEBUG=1: every kernel launch is followed by a sync that names the op (engine/backends/cuda/cuda_check.h).
NVCCFLAGS += $(if $(DEBUG),-g -lineinfo -DENG_CUDA_DEBUG=1)
# Per-element math shared with the CPU: no fused multiply-add, so these kernels give the CPU's bits.
$(BUILD)/engine/backends/cuda/cuda_elementwise.cu.o $(BUILD)/engine/backends/cuda/cuda_optim.cu.o \
$(BUILD)/engine/backends/cuda/cuda_random.cu.o: NVCCFLAGS += -fmad=false
endif

# ---- sources -------------------------------------------------------------------------------------
# The library: every .cpp under these folders, subfolders included, except the CUDA backend (its .cu files are
# CU_SRC) and the program's main (any main.cpp under moce/). The emulator build uses the same list.
LIB_DIRS := engine model moce data
LIB_SRC  := $(sort $(shell find $(LIB_DIRS) -name '*.cpp' -not -path 'engine/backends/cuda/*' \
                             -not \( -path 'moce/*' -name main.cpp \)))
# The program's main: moce/cmd/main.cpp, or moce/main.cpp where the tree still has it there.
MOCE_MAIN := $(firstword $(wildcard moce/cmd/main.cpp moce/main.cpp))
CU_SRC   := $(if $(filter 1,$(CUDA)),$(wildcard engine/backends/cuda/*.cu))
LIB_OBJ  := $(LIB_SRC:%.cpp=$(BUILD)/%.o) $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
TEST_SRC := $(wildcard tests/*.cpp)
TEST_OBJ := $(TEST_SRC:%.cpp=$(BUILD)/%.o)
LIB      := $(BUILD)/libengine.a
TEST_BIN := $(BUILD)/run_tests
BENCH_SRC:= $(wildcard bench/*.cpp)
BENCH_BIN:= $(BENCH_SRC:bench/%.cpp=$(BUILD)/bench/%)
MOCE_BIN := $(BUILD)/bin/moce

.PHONY: all deps test test-gpu bench clean fuzz run run-mae

# The main job on the built-in data (Debian's Fashion-MNIST): the whole MoCE method (scripts/moce_method.sh):
# pre-train a tiny MAE, cluster its features, continue it as MoCE and as dense, then for two downstream tasks search
# the expert, export it, fine-tune it beside the dense MAE* and the worst expert, and print the table. About 15 minutes
# on 2 cores; every step skips what its run folder already holds, so a second `make run` resumes.
RUN_DIR ?= runs/quickstart
run: $(MOCE_BIN)
	RUN_DIR=$(RUN_DIR) MOCE=$(MOCE_BIN) bash scripts/moce_method.sh

# MAE pre-training and its evaluation alone (PSNR, reconstructions PNG, k-NN and linear probe): a few minutes.
MAE_DIR ?= runs/mae-quickstart
run-mae: $(MOCE_BIN)
	$(MOCE_BIN) pretrain --data fashion-mnist --config mae_tiny_p4_32 --limit 10000 --epochs 2 --batch 128 \
	  --base-lr 1e-3 --warmup-epochs 1 --log-every 10 --force --out $(MAE_DIR)
	$(MOCE_BIN) eval-mae --checkpoint $(MAE_DIR)/checkpoint-last.safetensors --train-data fashion-mnist \
	  --test-data fashion-mnist --limit-train 5000 --limit-test 1000 --out $(MAE_DIR)/eval
	@echo "checkpoint: $(MAE_DIR)/checkpoint-last.safetensors"
	@echo "pictures:   $(MAE_DIR)/loss.png, $(MAE_DIR)/eval/reconstructions.png"
	@echo "figures:    $(MAE_DIR)/eval/eval.json, training metrics: $(MAE_DIR)/metrics.jsonl"

all: $(LIB) $(TEST_BIN) $(MOCE_BIN)

DEB_PKGS := build-essential python3 libfmt-dev doctest-dev nlohmann-json3-dev libstb-dev zlib1g-dev libopenblas-dev dataset-fashion-mnist
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "[deps] installing:" $$missing; \
	  $$( [ $$(id -u) -ne 0 ] && echo sudo ) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$( [ $$(id -u) -ne 0 ] && echo sudo ) apt-get install -y -qq $$missing >/dev/null; \
	else echo "[deps] all Debian packages present"; fi

# Checked again when compiling (the [config] line is read before `make deps run` installs anything): a missing
# library stops the build with one line naming its header and the package, not with a compiler error deep in a file.
REQUIRED_HEADERS := fmt/format.h:libfmt-dev nlohmann/json.hpp:nlohmann-json3-dev stb/stb_image.h:libstb-dev zlib.h:zlib1g-dev
.PHONY: check-headers
check-headers:
	@for hp in $(REQUIRED_HEADERS); do h=$${hp%%:*}; printf '$(hash)include <%s>\n' "$$h" | $(CXX) -std=c++17 -E -x c++ - >/dev/null 2>&1 \
	  || { echo "missing header <$$h> (Debian package $${hp##*:}): run 'make deps' first" >&2; exit 1; }; done

$(BUILD)/%.o: %.cpp | check-headers
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -c $< -o $@

$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -MF $(@:.o=.d) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(TEST_BIN): $(TEST_OBJ) $(LIB)
	$(CXX) $(LDFLAGS) $(TEST_OBJ) $(LIB) $(LDLIBS) -o $@

$(MOCE_BIN): $(MOCE_MAIN:%.cpp=$(BUILD)/%.o) $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bench/%: bench/%.cpp $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) $(if $(HAVE_OPENBLAS),-DHAVE_OPENBLAS=1 -I/usr/include/x86_64-linux-gnu/openblas-pthread) $< $(LIB) $(LDFLAGS) $(LDLIBS) $(if $(HAVE_OPENBLAS),-lopenblas) -o $@

# TEST_ARGS passes doctest options, e.g. make test TEST_ARGS='-ts=ops*'
# `make test` works on a fresh machine on its own: it installs what is missing first (the `deps` check is a no-op when
# everything is there), then builds in a second make, whose header detection sees the installed packages.
test:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory $(TEST_BIN)
	python3 tests/check_layout.py
	bash tests/check_makefile.sh
	$(TEST_BIN) $(TEST_ARGS)
	@$(MAKE) --no-print-directory fuzz-smoke

# Optional: the exports load in timm's VisionTransformer and give our features within 1e-5 (suite `export timm`,
# tests/fixtures/timm_features.py). The python is $(MOCE_TIMM_PYTHON), else python3; without timm and torch it skips.
.PHONY: test-timm
test-timm: $(TEST_BIN)
	$(TEST_BIN) -ts='export timm' $(TEST_ARGS)

bench: $(BENCH_BIN)
	bash bench/run_bench.sh $(BUILD)

fuzz:
	$(MAKE) -C fuzz

# A few seconds of each libFuzzer target over its seeds (fuzz/README.md), as part of `make test`; skipped, with a
# message, where no clang++ links a libFuzzer + ASan + UBSan program, or with FUZZ_SMOKE=0. The first run builds
# fuzz/build/ (about 10 minutes on 2 cores).
FUZZ_CLANGXX := $(shell command -v clang++-14 2>/dev/null || command -v clang++ 2>/dev/null)
.PHONY: fuzz-smoke
fuzz-smoke:
	@if [ "$(FUZZ_SMOKE)" = 0 ]; then echo "[fuzz-smoke] skipped: FUZZ_SMOKE=0"; \
	elif [ -n "$(FUZZ_CLANGXX)" ] && printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' | \
	    $(FUZZ_CLANGXX) -fsanitize=fuzzer,address,undefined -x c++ - -o /dev/null >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory -C fuzz smoke; \
	else echo "[fuzz-smoke] skipped: no clang++ with libFuzzer and the sanitizer runtimes (Debian: apt-get install clang)"; fi

# ---- GPU tests, GPU benchmark, profiling build -------------------------------------------------------
# build/run_tests_gpu: tests/gpu/*.cpp plus the registered op cases, run on CUDA against the CPU. Without a GPU
# (or without nvcc) it still builds, and its tests print a skip message and pass.
GPU_TEST_SRC := $(wildcard tests/gpu/*.cpp) tests/op_registry.cpp $(wildcard tests/test_ops_*.cpp) tests/main.cpp
GPU_TEST_OBJ := $(GPU_TEST_SRC:%.cpp=$(BUILD)/%.o)
GPU_TEST_BIN := $(BUILD)/run_tests_gpu

$(GPU_TEST_BIN): $(GPU_TEST_OBJ) $(LIB)
	$(CXX) $(LDFLAGS) $(GPU_TEST_OBJ) $(LIB) $(LDLIBS) -o $@

.PHONY: bench-gpu profile
test-gpu: $(GPU_TEST_BIN)
	$(GPU_TEST_BIN) -ts='gpu*' $(TEST_ARGS)

bench-gpu: $(BUILD)/bench/bench_gpu $(BUILD)/bench/bench_train_step
	bash bench/run_bench_gpu.sh $(BUILD)

# The same GPU tests with the CUDA backend's kernels emulated on the CPU (tests/gpu/emu): every GPU thread a fiber,
# real barriers and warp shuffles, host stand-ins for cuBLAS/cuBLASLt/CUB, AddressSanitizer on. Needs no GPU and no
# CUDA toolkit (python3 for the source transform); slow (minutes). Checks kernel logic, not speed or races.
EMU_BUILD := $(BUILD)-emu
EMU_CXXFLAGS := $(CXXSTD) -O1 -g -fopenmp -fno-math-errno -MMD -MP -DENGINE_WITH_CUDA=1 -Itests/gpu/emu/include -I. $(WARN) \
                -fsanitize=address,undefined -fno-omit-frame-pointer
EMU_LIB_SRC := $(LIB_SRC)
EMU_CU_SRC := $(wildcard engine/backends/cuda/*.cu)
EMU_OBJ := $(EMU_LIB_SRC:%.cpp=$(EMU_BUILD)/%.o) $(GPU_TEST_SRC:%.cpp=$(EMU_BUILD)/%.o) \
           $(EMU_CU_SRC:%.cu=$(EMU_BUILD)/%.emu.o) $(EMU_BUILD)/tests/gpu/emu/emu_globals.o

$(EMU_BUILD)/%.emu.cpp: %.cu tests/gpu/emu/transform.py
	@mkdir -p $(dir $@)
	python3 tests/gpu/emu/transform.py $< $@

$(EMU_BUILD)/%.emu.o: $(EMU_BUILD)/%.emu.cpp
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@

$(EMU_BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@

$(EMU_BUILD)/run_tests_gpu_emu: $(EMU_OBJ)
	$(CXX) $(EMU_CXXFLAGS) $^ -lfmt -lz -lpthread -o $@

.PRECIOUS: $(EMU_BUILD)/%.emu.cpp
.PHONY: test-gpu-emu test-gpu-emu-quick
test-gpu-emu: $(EMU_BUILD)/run_tests_gpu_emu
	ASAN_OPTIONS=detect_stack_use_after_return=0:detect_leaks=0 $< -ts='gpu*' $(TEST_ARGS)

# The part of it CI runs after make test, so that a change breaking the CUDA kernels' logic shows on a machine
# without a GPU: every registered op forward and backward on emulated CUDA against the CPU, the multi-tensor AdamW
# and device-side norm, the GEMM epilogues, bf16 attention on the tensor-core path, the attention implementation
# choice (own kernels vs cuDNN), deferred index errors and the golden MAE fixture in f32 and bf16. About 1.5
# minutes after a 5-minute build on 2 cores.
GPU_EMU_QUICK := every registered op*,multi-tensor*,GEMM epilogues*,attention_qkv in bf16*,attention implementation choice*,out-of-range*,golden MAE fixture*
test-gpu-emu-quick: $(EMU_BUILD)/run_tests_gpu_emu
	ASAN_OPTIONS=detect_stack_use_after_return=0:detect_leaks=0 $< -ts='gpu*' -tc='$(GPU_EMU_QUICK)'

# An Nsight-ready build in build-profile/: device code with -lineinfo, NVTX ranges around every CUDA op.
profile:
	$(MAKE) BUILD=build-profile PROFILE=1 build-profile/bench/bench_gpu build-profile/run_tests_gpu build-profile/bin/moce
	@echo "[profile] built build-profile/bin/moce, bench_gpu and run_tests_gpu; the nsys and ncu commands: README.md, 'Profiling on a GPU'"

clean:
	rm -rf $(BUILD)

-include $(LIB_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(GPU_TEST_OBJ:.o=.d) $(EMU_OBJ:.o=.d) $(MOCE_MAIN:%.cpp=$(BUILD)/%.d)
