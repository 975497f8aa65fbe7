#!/usr/bin/env bash
# Compile each CUDA kernel source to an object file against the installed torch headers, so a machine
# without a GPU (or with a CPU-only torch) can still prove that csrc/cuda/*.cu compile. Nothing is run.
#
#   csrc/cuda/compile_check.sh                   # every csrc/cuda/*.cu
#   csrc/cuda/compile_check.sh csrc/cuda/x.cu    # just these
#
# Environment: NVCC (default nvcc), PYTHON (python3), CB_CUDA_ARCH (sm_90), CB_JOBS (parallel
# compiles, default: number of CPUs). Exits non-zero, printing the compiler output, on any failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NVCC=${NVCC:-nvcc}
PYTHON=${PYTHON:-python3}
ARCH=${CB_CUDA_ARCH:-sm_90}
JOBS=${CB_JOBS:-$(nproc)}

command -v "$NVCC" >/dev/null || { echo "compile_check: '$NVCC' not found on PATH" >&2; exit 2; }

# nvcc may be a wrapper script: ask it where its toolkit lives rather than resolving links.
cuda_bin=$("$NVCC" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -1)
cuda_include=${CUDA_HOME:+$CUDA_HOME/include}
cuda_include=${cuda_include:-$(cd "$cuda_bin/.." && pwd)/include}

mapfile -t torch_includes < <("$PYTHON" -c \
  "from torch.utils.cpp_extension import include_paths; print(*include_paths(), sep='\n')")
abi=$("$PYTHON" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")

flags=(-std=c++17 "-arch=$ARCH" -O3 --expt-relaxed-constexpr "-D_GLIBCXX_USE_CXX11_ABI=$abi"
       -DCRYSBENCH_WITH_CUDA=1 "-I$here/.." "-I$cuda_include")
for inc in "${torch_includes[@]}"; do flags+=("-I$inc"); done
# A CPU-only torch wheel ships the c10/cuda headers without the header CMake generates for them
# (it only sets an export macro on Linux), so tell c10 not to look for it.
if [[ ! -f "${torch_includes[0]}/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
  flags+=(-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE)
fi

if (($# > 0)); then sources=("$@"); else sources=("$here"/*.cu); fi
[[ -e "${sources[0]}" ]] || { echo "compile_check: no .cu sources found" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

compile() {  # compile <source>: object and log in $tmp; prints one status line
  local src=$1 name start
  name=$(basename "$src" .cu)
  start=$SECONDS
  if "$NVCC" "${flags[@]}" -c "$src" -o "$tmp/$name.o" >"$tmp/$name.log" 2>&1; then
    echo "ok      $name.cu ($((SECONDS - start)) s, $(stat -c %s "$tmp/$name.o") bytes)"
  else
    echo "FAILED  $name.cu" && touch "$tmp/$name.failed"
  fi
}

echo "compile_check: $NVCC ($("$NVCC" --version | tail -1)), $ARCH, CUDA include $cuda_include," \
     "torch $("$PYTHON" -c 'import torch; print(torch.__version__)'), CXX11 ABI $abi, $JOBS jobs"
running=0
for src in "${sources[@]}"; do
  compile "$src" &
  running=$((running + 1))
  if ((running >= JOBS)); then wait -n; running=$((running - 1)); fi
done
wait

status=0
for src in "${sources[@]}"; do
  name=$(basename "$src" .cu)
  if [[ -e "$tmp/$name.failed" ]]; then
    echo "---------- $name.cu: nvcc output ----------" >&2
    grep -v "warning #20013-D\|expt-relaxed-constexpr" "$tmp/$name.log" >&2 || true
    status=1
  fi
done
if ((status)); then echo "compile_check: FAILED" >&2; else echo "compile_check: all ${#sources[@]} sources compile"; fi
exit $status
